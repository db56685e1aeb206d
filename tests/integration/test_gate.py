"""The collection's doai_gate in a real ansible-playbook run: a playbook started early waits on the
controller until its gate file says go, and changes nothing when it says stop or when the process
that started it is gone (issue 20: the next part's playbook starts while the part before works)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.collection import BIN, clean_env
from tests.conftest import COLLECTIONS

pytestmark = pytest.mark.integration

PLAYBOOK = """\
- name: A part's playbook started early
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Wait for the go of the run that started this playbook early
      doai.rollback.doai_gate:
        path: "{{ doai_gate }}"
        pid: "{{ doai_gate_pid }}"
    - name: The first change
      ansible.builtin.file:
        path: "{{ marker }}"
        state: touch
        mode: "0600"
"""


def _run(tmp_path: Path, pid: int, *, then: str | None = None, after_s: float = 0.0) -> tuple[subprocess.CompletedProcess, Path]:
    book, gate, marker = tmp_path / "part.yml", tmp_path / "gate", tmp_path / "changed"
    book.write_text(PLAYBOOK)
    if then is not None:
        threading.Timer(after_s, gate.write_text, args=(then + "\n",)).start()
    env = clean_env(tmp_path / "ansible-home", ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS))
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", str(book), "-e", f"doai_gate={gate}",
                           "-e", f"doai_gate_pid={pid}", "-e", f"marker={marker}",
                           "-e", f"ansible_python_interpreter={sys.executable}"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    return proc, marker


def test_the_playbook_waits_for_the_go_then_changes(tmp_path):
    import os

    t0 = time.monotonic()
    proc, marker = _run(tmp_path, os.getpid(), then="go", after_s=3.0)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marker.exists() and time.monotonic() - t0 >= 3.0
    assert (tmp_path / "gate.passed").exists()  # how doai-rollback knows it is past its start-up


def test_stop_changes_nothing_and_says_why(tmp_path):
    import os

    proc, marker = _run(tmp_path, os.getpid(), then="stop: an earlier part failed", after_s=1.0)
    assert proc.returncode != 0 and not marker.exists()
    assert "not started: an earlier part failed; nothing was changed" in proc.stdout
    assert not (tmp_path / "gate.passed").exists()


def test_the_process_that_started_it_gone_changes_nothing(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no process has now (no go will ever come from it)
    proc, marker = _run(tmp_path, gone.pid)
    assert proc.returncode != 0 and not marker.exists()
    assert f"the run that started this playbook (pid {gone.pid}) is gone; nothing was changed" in proc.stdout
