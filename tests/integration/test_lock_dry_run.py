"""`lock release backend --host H --dry-run` on the loopback VPS: it says what it would release,
refuses as the release would, and changes nothing: the host lock stays, nothing is journaled."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def test_host_lock_release_dry_run_changes_nothing(sandbox, cli_env, state_dir):
    sb = sandbox
    lock = sb.host_state / "backend.lock"
    lock.mkdir(parents=True)
    (lock / "owner.json").write_text(json.dumps({"owner": "carol", "run_id": "killed-run", "since": "earlier"}))
    before = sorted(p.name for p in lock.iterdir())
    # An unknown run without --force: refused, as the release itself would be (exit 5).
    res = run_cli("lock", "release", "backend", "--host", sb.host_name, "--dry-run", env=cli_env)
    assert res.code == 5 and "--force" in res.stderr, res.stdout + res.stderr
    res = run_cli("lock", "release", "backend", "--host", sb.host_name, "--force", "--dry-run", env=cli_env)
    assert res.code == 0, res.stdout + res.stderr
    assert "would release" in res.stdout and "carol" in res.stdout and "killed-run" in res.stdout
    res = run_cli("lock", "release", "backend", "--host", sb.host_name, "--force", "--dry-run", "-o", "json",
                  env=cli_env)
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json()
    assert doc["released"] is False and doc["dry_run"] is True and doc["run_id"] == "killed-run"
    assert lock.is_dir() and sorted(p.name for p in lock.iterdir()) == before
    assert not (state_dir / "journal.jsonl").exists()
