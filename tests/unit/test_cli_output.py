"""The CLI's output contract (issue 17): a closed stdout, JSON for every outcome with
``-o json``, --dry-run per command, what a terminal shows. Real processes, real pipes and
ptys; no host is contacted unless a test says so (then a closed port on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")}
    inv = tmp_path / "hosts.yml"
    if not inv.exists():
        inv.write_text("all:\n  children:\n    backend:\n      hosts: {}\n")
    env.update(DOAI_INVENTORY=str(inv), DOAI_STATE_DIR=str(tmp_path / "state"), **extra)
    return env


def _journal_runs(tmp_path: Path, n: int) -> None:
    """``n`` runs in the journal, enough text for ``history`` to overflow a pipe's buffer."""
    from doai_ansible.journal import Journal
    from doai_ansible.model import Outcome, Part, RunResult, Step, StepResult

    journal = Journal(tmp_path / "state" / "journal.jsonl")
    for i in range(n):
        run = RunResult(f"20261126T0000{i % 60:02d}Z-{i:06x}", "backend rollback", False, "a reason " * 5,
                        "2026-11-26T00:00:00Z",
                        results=[StepResult(Step(Part.BACKEND, f"vps{k}", "a" * 40, "b" * 40), Outcome.SUCCEEDED)
                                 for k in range(3)])
        journal.append(run)


# -- item 12: a reader that stops early is not an internal error ---------------------------------
def test_history_into_a_pipe_closed_early_exits_quietly(tmp_path):
    """`doai-rollback history | head -1`: the reader goes away after one line; the command ends
    silently with 141 (128 + SIGPIPE, what a shell reports for a writer killed by SIGPIPE)."""
    (tmp_path / "state").mkdir()
    _journal_runs(tmp_path, 800)  # far more than a pipe holds (64 KiB)
    proc = subprocess.Popen([sys.executable, "-m", "doai_ansible", "history", "--limit", "10000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=_env(tmp_path), cwd=ROOT)
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first.startswith(b"20261126T"), first
    assert stderr == "", stderr
    assert proc.returncode == 141


# -- item 11: with -o json, one JSON document on stdout whatever happens ---------------------------
@pytest.mark.parametrize("args", [
    ["-o", "json", "backend", "rollback", "--frobnicate"],  # unknown option, -o before the subcommand
    ["--output", "json", "frobnicate"],  # unknown command
    ["backend", "rollback", "--mode", "kubernetes", "--output=json"],  # bad choice, -o after
    ["system", "rollback", "--database-last", "0", "-ojson"],  # out of range
    ["history", "--limit", "many", "-o", "json"],  # not a number
    ["-o", "json", "undo"],  # a missing argument
    ["-o", "json", "lock"],  # a group without its subcommand
])
def test_click_usage_errors_are_one_json_document(tmp_path, args):
    res = run_cli(*args, env={"DOAI_STATE_DIR": str(tmp_path / "state")})
    assert res.code == 2, res.stdout + res.stderr
    doc = res.json()
    assert doc["exit_status"] == 2 and doc["exit_name"] == "USAGE", doc
    assert doc["error"] and "hint" in doc, doc
    assert "Traceback" not in res.stderr and res.stderr.strip()  # the text is still there for a human
    assert not (tmp_path / "state").exists()  # nothing was written


def test_click_usage_error_without_json_prints_nothing_on_stdout(tmp_path):
    res = run_cli("backend", "rollback", "--frobnicate", env={"DOAI_STATE_DIR": str(tmp_path / "state")})
    assert res.code == 2 and res.stdout == "" and "--frobnicate" in res.stderr


def test_ctrl_c_while_planning_prints_a_json_document(tmp_path):
    """SIGINT to the whole process group (as Ctrl-C on a terminal) while the plan runs: one JSON
    document, exit 130. The inventory's host is a closed port on 127.0.0.1, so the plan stays
    on its SSH connection until the signal comes."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "hosts.yml").write_text(json.dumps({"all": {"children": {"backend": {"hosts": {"vps1": {
        "ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "root"}}}}}}))
    args = ["backend", "rollback", "--to", "main", "--dry-run", "-o", "json"]
    proc = subprocess.Popen([sys.executable, "-m", "doai_ansible", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=_env(tmp_path),
                            cwd=ROOT, start_new_session=True)
    runs = tmp_path / "state" / "runs"
    try:
        # The plan has started once the run's log directory exists.
        while proc.poll() is None and not (runs.is_dir() and any(runs.iterdir())):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out + err
    doc = json.loads(out)
    assert doc["exit_status"] == 130 and doc["exit_name"] == "INTERRUPTED" and doc["error"], doc
    from doai_ansible.schemas import output_problems

    assert output_problems(args, out, proc.returncode) == []
