"""The progress lines (-v) name only what runs: no bookkeeping task, nothing a host skipped, and
in a plan no step the plan does not take (the sandbox VPS: real sshd, git, PM2)."""

from __future__ import annotations

from tests.conftest import run_cli

BOOKKEEPING = ("Validating arguments against arg spec", "Leave out the hosts", "Report the", "Name this run",
               "Show the plan", "Check the rollback target")
APPLY_STEPS = ("Check out the target commit", "Wait until the backend is healthy", "Watch PM2 for restarts")


def _tasks(stderr: str) -> list[str]:
    """The progress lines, without their time stamp."""
    return [line.split("] ", 1)[1] for line in stderr.splitlines() if line.startswith("[") and "] " in line]


def test_dry_run_progress_shows_no_lock_and_no_skipped_or_bookkeeping_task(sandbox, cli_env):
    res = run_cli("backend", "rollback", "--dry-run", "-v", env=cli_env)
    assert res.code == 0, res.stdout + res.stderr
    lines = _tasks(res.stderr)
    assert any(line.startswith("Capture the live state and plan the rollback") for line in lines), lines
    for line in lines:
        assert not line.startswith("Take the host lock"), lines  # a plan takes none
        assert "Release the host lock" not in line, lines
        assert not line.startswith(BOOKKEEPING + APPLY_STEPS), lines


def test_rollback_progress_shows_the_work_and_not_the_skipped_steps(sandbox, cli_env):
    res = run_cli("backend", "rollback", "--yes", "-v", "--reason", "progress lines", env=cli_env)
    assert res.code == 0, res.stdout + res.stderr
    lines = _tasks(res.stderr)
    for step in APPLY_STEPS:
        assert any(line.startswith(step) for line in lines), (step, lines)
    for line in lines:
        assert not line.startswith(BOOKKEEPING), lines
        # the record released the host lock: the always-section's release is skipped, not run
        assert line != "Release the host lock", lines
