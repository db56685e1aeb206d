"""The local sandbox: the test rig, the demo and the benchmark's hosts. Not part of the core.

``Sandbox`` builds a VPS stand-in on this machine (a loopback sshd, a git-deployed Node app
under PM2); ``python -m doai_ansible.sandbox start|stop|deploy`` drives it from a shell.
"""

from doai_ansible.sandbox.rig import Sandbox, SandboxError, free_port, http_health, wait_port

__all__ = ["Sandbox", "SandboxError", "free_port", "http_health", "wait_port"]
