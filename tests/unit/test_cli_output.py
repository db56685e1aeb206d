"""The CLI's output contract (issue 17): a closed stdout, JSON for every outcome with
``-o json``, --dry-run per command, what a terminal shows. Real processes, real pipes and
ptys; no host is contacted unless a test says so (then a closed port on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
