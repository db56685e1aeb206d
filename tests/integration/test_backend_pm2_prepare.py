"""`doai-rollback backend prepare` on the sandbox: the tree a rollback needs is installed into the
host's cache ahead of time, so a changed-lockfile rollback is a rename; nothing live changes."""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def lock_key(sb, version: str) -> str:
    text = sb._git("show", f"{sb.commits[version]}:package-lock.json")
    return hashlib.sha256(text.encode()).hexdigest()


def express_inode(root) -> int:
    return (root / "node_modules" / "express" / "package.json").stat().st_ino


def live_state(sb) -> dict[str, object]:
    """What prepare must never change: the checkout, its node_modules, PM2, the ledger, the lock."""
    return {
        "head": sb.head(),
        "status": sb._git("status", "--porcelain"),
        "node_modules": ((sb.app / "node_modules").stat().st_ino, express_inode(sb.app)),
        "pm2": [(p["pm_id"], p["status"], p["restarts"]) for p in sb.pm2_processes()],
        "pids": sorted(pid for pid, _ in sb.app_processes()),
        "health": sb.health(),
        "ledger": sb.ledger.read_text(),
        "lock": (sb.host_state / "backend.lock").exists(),
    }


def prepare(cli_env, *args: str):
    res = run_cli("backend", "prepare", *args, "-o", "json", env=cli_env)
    assert res.code == 0, res.stderr + res.stdout
    (host,) = res.json()["hosts"].values()
    return host


def test_prepare_then_changed_lockfile_rollback_is_a_rename_and_undo_too(sandbox, cli_env):
    sb = sandbox
    cache = sb.host_state / "node_modules"
    before = live_state(sb)
    v3_tree = express_inode(sb.app)

    out = prepare(cli_env, "--to", sb.commits["v1"])
    assert out["status"] == "prepared" and out["target"] == sb.commits["v1"] and out["target_version"] == "1.0.0"
    assert out["lockfile_sha256"] == lock_key(sb, "v1") and float(out["install_seconds"]) > 0
    assert live_state(sb) == before  # the app, its node_modules and PM2 untouched
    entry = cache / lock_key(sb, "v1")
    assert sorted(p.name for p in cache.iterdir()) == [entry.name]  # no staging left behind
    prepared = express_inode(entry)

    # Idempotent: a second run says so and changes nothing (the same tree, npm not run).
    res = run_cli("backend", "prepare", "--to", sb.commits["v1"], env=cli_env)
    assert res.code == 0 and "already prepared" in res.stdout, res.stderr + res.stdout
    assert express_inode(entry) == prepared and live_state(sb) == before

    # v3 -> v1: the plan and the apply say the tree came from the cache; it is the prepared one.
    res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v1"], "-o", "json", env=cli_env)
    assert res.code == 0, res.stderr + res.stdout
    step = res.json()["steps"][0]
    assert step["details"]["needs_install"] and step["details"]["install_from_cache"]
    assert "dependencies: node_modules from the cache (rename)" in step["notes"]
    assert step["details"]["node_modules"]["source"] == "cache" and step["details"]["node_modules"]["installed"] is False
    assert sb.health() == (200, "1.0.0") and express_inode(sb.app) == prepared
    assert not (sb.app / "node_modules" / "dayjs").exists()
    # The tree it replaced is parked under v3's lockfile: undo is a rename too.
    assert sorted(p.name for p in cache.iterdir()) == [lock_key(sb, "v3")]
    assert express_inode(cache / lock_key(sb, "v3")) == v3_tree
    undo = run_cli("undo", res.json()["run_id"], "--yes", "-o", "json", env=cli_env)
    assert undo.code == 0, undo.stderr + undo.stdout
    assert undo.json()["steps"][0]["details"]["node_modules"]["source"] == "cache"
    assert sb.head() == sb.commits["v3"] and express_inode(sb.app) == v3_tree


def test_prepare_resolves_the_default_target_as_a_rollback_does(sandbox, cli_env):
    sb = sandbox
    before = live_state(sb)
    plan = run_cli("backend", "rollback", "--dry-run", "-o", "json", env=cli_env)
    assert plan.code == 0, plan.stderr + plan.stdout
    out = prepare(cli_env)
    assert out["target"] == plan.json()["steps"][0]["to"] == sb.commits["v2"]
    assert out["rule"].startswith("ledger: live before")
    assert out["status"] == "not_needed"  # v2 has v3's lockfile: the live tree is it
    assert live_state(sb) == before and not (sb.host_state / "node_modules").exists()
    res = run_cli("backend", "prepare", env=cli_env)
    assert res.code == 0 and "not needed" in res.stdout, res.stderr + res.stdout


def test_prepare_dry_run_changes_nothing(sandbox, cli_env):
    sb = sandbox
    before = live_state(sb)
    out = prepare(cli_env, "--dry-run", "--to", sb.commits["v1"])
    assert out["status"] == "would_prepare" and out["lockfile_sha256"] == lock_key(sb, "v1")
    assert live_state(sb) == before and not (sb.host_state / "node_modules").exists()


@pytest.mark.parametrize("ref", ["..bad", "-x", "nosuchref"])
def test_bad_target_is_a_usage_error_and_nothing_is_prepared(sandbox, cli_env, state_dir, ref):
    sb = sandbox
    before = live_state(sb)
    res = run_cli("backend", "prepare", f"--to={ref}", "-o", "json", env=cli_env)
    assert res.code == 2, res.stderr + res.stdout
    assert res.json()["exit_name"] == "USAGE" and ref in res.stderr
    if ref != "nosuchref":  # refused before anything ran: no playbook, no run directory
        assert not (state_dir / "runs").exists() or not any((state_dir / "runs").iterdir())
    assert live_state(sb) == before and not (sb.host_state / "node_modules").exists()


def test_limit_matching_no_host_is_a_usage_error(sandbox, cli_env):
    res = run_cli("backend", "prepare", "--limit", "nosuchhost", env=cli_env)
    assert res.code == 2 and "matches no host" in res.stderr, res.stderr + res.stdout
