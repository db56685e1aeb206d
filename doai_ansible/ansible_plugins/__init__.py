"""Ansible plugins shipped with the package; ``runner.ansible_env`` enables them for every run
(and the repo's ansible.cfg for direct ``ansible-playbook`` runs)."""

from __future__ import annotations

from pathlib import Path

CALLBACK_DIR = Path(__file__).resolve().parent / "callback"

# Enabled in every run: warns about targeted hosts whose SSH host key checking is relaxed.
HOST_KEY_AUDIT = "doai_host_key_audit"
# Where that callback writes its findings (JSON) for run_playbook to read back.
HOST_KEY_AUDIT_FILE_ENV = "DOAI_HOST_KEY_AUDIT_FILE"
