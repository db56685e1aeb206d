"""The captures' action plugin (plugins/action/doai_backend_pm2_capture.py): in a rollback, while
the capture runs, the modules the rollback calls next are built into the payload cache of the
playbook run; a plan builds none; the capture's own result is untouched. A real ansible-playbook
run on this machine (connection local): the capture refuses at once (no docker, no git repo),
and a later task lists Ansible's cache of the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

CAPTURES = {
    "docker": ("doai.rollback.doai_backend_docker_capture",
               lambda tmp: {"lock_path": str(tmp / "backend.lock"), "run_id": "run-prebuild", "image": "127.0.0.1:1/x",
                            "project_dir": str(tmp), "service": "api", "health_url": "http://127.0.0.1:1/",
                            "docker_bin": str(tmp / "no-docker")},
               {"doai.rollback.doai_backend_docker_apply"}),
    "pm2": ("doai.rollback.doai_backend_pm2_capture",
            lambda tmp: {"path": str(tmp / "no-app"), "ledger_path": str(tmp / "ledger.jsonl"),
                         "lock_path": str(tmp / "backend.lock"), "run_id": "run-prebuild"},
            {"doai.rollback.doai_backend_pm2_apply", "doai.rollback.doai_backend_pm2_verify"}),
}


def run(tmp: Path, kind: str, plan_only: bool) -> tuple[dict, set[str]]:
    module, args, _ = CAPTURES[kind]
    out = tmp / "out.json"
    play = [{"hosts": "all", "gather_facts": False, "tasks": [
        {"name": "Capture", module: {**args(tmp), "plan_only": plan_only}, "register": "captured",
         "ignore_errors": True},
        # The child builds while the capture runs; a capture that refuses at once may end first.
        {"name": "Give a child of the capture's time to finish", "ansible.builtin.wait_for": {"timeout": 2},
         "delegate_to": "localhost"},
        # ansible-playbook's own temporary directory (ansible-local-*) is made below ANSIBLE_LOCAL_TEMP.
        {"name": "List the run's payload cache", "ansible.builtin.find": {
            "paths": str(tmp / "local"), "recurse": True, "patterns": "*"},
         "register": "cache", "delegate_to": "localhost"},
        {"name": "Keep both", "ansible.builtin.copy": {
            "dest": str(out), "content": "{{ {'captured': captured, 'cache': cache.files | map(attribute='path')"
                                         " | map('basename') | list} | to_json }}"}},
    ]}]
    pb = tmp / "play.yml"
    pb.write_text(json.dumps(play))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_LOCAL_TEMP=str(tmp / "local"))
    proc = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i", "host1,", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}", str(pb)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    # A module's entry is named by its Python name: ansible_collections.doai.rollback.plugins.modules.<name>-...
    built = {"doai.rollback." + name.split("-", 1)[0].rsplit(".", 1)[1] for name in data["cache"]
             if name.startswith("ansible_collections.doai.rollback.plugins.modules.") and not name.endswith(".lock")}
    assert built, data["cache"]  # the listing found the cache (the capture's own entry at least)
    return data["captured"], built


@pytest.mark.parametrize("kind", sorted(CAPTURES))
def test_a_rollback_builds_the_modules_that_come_next_while_it_captures(tmp_path, kind):
    module, _, following = CAPTURES[kind]
    captured, built = run(tmp_path, kind, plan_only=False)
    assert captured.get("failed")  # it refused at once, as it should here: the build did not wait for it
    assert built >= {module, *following}


@pytest.mark.parametrize("kind", sorted(CAPTURES))
def test_a_plan_builds_only_the_capture(tmp_path, kind):
    module, _, following = CAPTURES[kind]
    _, built = run(tmp_path, kind, plan_only=True)
    assert module in built and not built & following
