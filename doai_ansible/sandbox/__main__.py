import sys

from doai_ansible.sandbox.rig import _main

sys.exit(_main())
