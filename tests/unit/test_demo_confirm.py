"""``demo`` on a terminal says what it will start (sshd, PM2, dockerd, PostgreSQL, on 127.0.0.1)
and asks first: "n" or end of input starts nothing (no rig process, no directory). A real pty,
as the README's first command runs it for a human; CI runs it without a terminal, unchanged."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _spawn(tmp_path: Path, *args: str) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")}
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env.update(TMPDIR=str(tmp), DOAI_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT))
    return pexpect.spawn(sys.executable, ["-m", "doai_ansible", "demo", *args], env=env, cwd=str(tmp_path),
                         encoding="utf-8", timeout=60, dimensions=(50, 200))


def _processes_under(path: Path) -> list[str]:
    """Command lines of this machine's processes that name ``path`` (a rig's would)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            out.append(cmd)
    return out


@pytest.mark.parametrize("answer", ["n", "EOF"])
@pytest.mark.parametrize("workdir", [False, True])
def test_declined_on_a_terminal_starts_nothing(tmp_path, answer, workdir):
    args = ["--workdir", str(tmp_path / "wd")] if workdir else []
    child = _spawn(tmp_path, *args)
    child.expect(r"Start it\? \[y/N\]")
    notice = child.before
    for needle in ("sshd", "PM2", "dockerd", "PostgreSQL", "127.0.0.1", "Vercel API stand-in",
                   str(tmp_path / "wd") if workdir else "temporary directory", "removed"):
        assert needle in notice, (needle, notice)
    if answer == "n":
        child.sendline("n")
    else:
        child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130, child.before
    assert "nothing was changed" in child.before
    assert "building" not in child.before  # the demo's first step never began
    assert not (tmp_path / "wd").exists()
    assert list((tmp_path / "tmp").iterdir()) == []  # no doai-demo-* directory
    assert not (tmp_path / "state").exists()
    assert _processes_under(tmp_path) == []


def test_dry_run_is_refused_before_the_question(tmp_path):
    """--dry-run is refused before the question (exit 2); nothing is asked, nothing started."""
    child = _spawn(tmp_path, "--dry-run")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2 and "Start it?" not in child.before
    assert list((tmp_path / "tmp").iterdir()) == []
