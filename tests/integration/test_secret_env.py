"""Secrets in the controller's environment reach no child process (issue 19, item 2): not
ansible-playbook's environment, not ansible-runner's artifacts (kept on purpose here), not an
inventory script. A real ansible-playbook run on this machine (connection local), no rig."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from doai_ansible import inventory
from doai_ansible.runner import run_playbook
from doai_ansible.settings import load_settings

pytestmark = pytest.mark.integration

CANARIES = {
    "SUPABASE_SERVICE_ROLE_KEY": "canary-srk-5f1e2d",
    "SUPABASE_ANON_KEY": "canary-anon-8b7c6a",
    "SENTRY_DSN": "https://canary-dsn-3c4d@o1.ingest.sentry.io/1",
    "VERCEL_TOKEN": "canary-vercel-9e8f7a",
    "DOAI_DATABASE_URL": "postgresql://postgres:canary-dbpw-1a2b@127.0.0.1:5432/postgres",
    "MY_APP_API_KEY": "canary-myapi-4d5e6f",
}
VALUES = [v for v in CANARIES.values()] + ["canary-dbpw-1a2b", "canary-dsn-3c4d"]


def _found_under(root: Path) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            hits += [f"{p}: {v}" for v in VALUES if v.encode() in data]
    return hits


@pytest.fixture
def canaries(monkeypatch):
    for k, v in CANARIES.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LC_DOAI_PROBE", "kept")  # an allow-listed name still passes
    return CANARIES


def test_no_secret_reaches_ansible_playbook_nor_its_artifacts(canaries, tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": str(Path(os.sys.executable))}}}}))
    dump = tmp_path / "env-of-ansible-playbook"
    pb = tmp_path / "dump-env.yml"
    # A local task's module is a child of ansible-playbook: it sees ansible-playbook's environment.
    pb.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: Dump the environment\n"
        f"      ansible.builtin.shell: env -0 > {dump} && cat /proc/$PPID/environ >> {dump}\n"
    )
    state = tmp_path / "state"
    settings = dataclasses.replace(load_settings(None, inventory=inv, state_dir=state, env={}), keep_artifacts=True)
    run = run_playbook(settings, str(pb), log_dir=state / "runs" / "r1")
    assert run.ok, run.failures
    env = dict(item.split("=", 1) for item in dump.read_text().split("\0") if "=" in item)
    assert not set(CANARIES) & set(env), sorted(set(CANARIES) & set(env))
    assert env.get("LC_DOAI_PROBE") == "kept" and env.get("HOME") and env.get("PATH")
    assert run.artifacts is not None and (run.artifacts / "artifacts").is_dir()  # kept, and read below
    assert _found_under(state) == []
    assert _found_under(tmp_path) == []


def test_the_inventory_is_read_without_the_secrets(canaries, tmp_path):
    seen = tmp_path / "env-of-inventory-script"
    script = tmp_path / "inventory.py"
    script.write_text(
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        f"open({str(seen)!r}, 'a').write(json.dumps(dict(os.environ)) + '\\n')\n"
        "print(json.dumps({'backend': {'hosts': ['vps1']},"
        " '_meta': {'hostvars': {'vps1': {'doai_backend_mode': 'docker'}}}}) if '--list' in sys.argv else '{}')\n"
    )
    script.chmod(0o755)
    assert inventory.backend_modes(script) == {"vps1": "docker"}
    runs = [json.loads(line) for line in seen.read_text().splitlines()]
    assert runs, "the inventory script was not run"
    for env in runs:
        assert not set(CANARIES) & set(env), sorted(set(CANARIES) & set(env))
    assert _found_under(tmp_path) == []
