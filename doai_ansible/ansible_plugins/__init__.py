"""The Ansible collection this package's content is (``doai.rollback``: galaxy.yml at the
content root, plugins/ beside playbooks/ and roles/), and the callback every run enables:
``runner.ansible_env`` for the CLI, the repo's ansible.cfg for direct ``ansible-playbook`` runs."""

from __future__ import annotations

COLLECTION = "doai.rollback"

# Enabled in every run (plugins/callback/doai_host_key_audit.py): warns about targeted hosts
# whose SSH host key checking is relaxed.
HOST_KEY_AUDIT = f"{COLLECTION}.doai_host_key_audit"
# Where that callback writes its findings (JSON) for run_playbook to read back.
HOST_KEY_AUDIT_FILE_ENV = "DOAI_HOST_KEY_AUDIT_FILE"
