"""The Vercel API stand-in now ships with the package (the demo needs it): doai_ansible.sandbox.vercel_api."""

from doai_ansible.sandbox.vercel_api import *  # noqa: F403
