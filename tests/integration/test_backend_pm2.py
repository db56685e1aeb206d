"""Backend PM2 rollback end to end: CLI -> ansible-runner -> ssh (loopback sshd) -> git/npm/PM2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CANARY, run_cli

pytestmark = pytest.mark.integration


def ledger(sb) -> list[dict]:
    return [json.loads(line) for line in sb.ledger.read_text().splitlines() if line.strip()]


def host_snapshot(sb) -> dict:
    """What a rollback could change on the host."""
    return {
        "head": sb.head(),
        "health": sb.health(),
        "restarts": [p["restarts"] for p in sb.pm2_processes()],
        "ledger": sb.ledger.read_text(),
        "node_modules": sorted(os.listdir(sb.app / "node_modules")),
    }


def test_rollback_v3_to_v2_keeps_dependencies(sandbox, cli_env):
    sb = sandbox
    assert sb.health() == (500, "3.0.0")
    ms_mtime = (sb.app / "node_modules" / "dayjs" / "package.json").stat().st_mtime_ns
    res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], "--reason", "v3 answers 500", "-o", "json",
                  env=cli_env)
    assert res.code == 0, res.stderr + res.stdout
    out = res.json()
    (step,) = out["steps"]
    assert step["outcome"] == "succeeded"
    assert step["from"] == sb.commits["v3"] and step["to"] == sb.commits["v2"]
    assert step["details"]["needs_install"] is False
    assert sb.health() == (200, "2.0.0")
    assert sb.head() == sb.commits["v2"]
    # npm ci did not run: node_modules was not rebuilt.
    assert (sb.app / "node_modules" / "dayjs" / "package.json").stat().st_mtime_ns == ms_mtime
    assert all(p["status"] == "online" for p in sb.pm2_processes())
    rec = ledger(sb)[-1]
    assert (rec["action"], rec["from"], rec["to"], rec["result"], rec["why"]) == (
        "rollback", sb.commits["v3"], sb.commits["v2"], "succeeded", "v3 answers 500")
    # The PM2 logs of the host are in the run's log bundle.
    assert list(Path(out["log_dir"]).glob("*-pm2.log"))


def test_rollback_v3_to_v1_reinstalls_dependencies(sandbox, cli_env):
    sb = sandbox
    assert (sb.app / "node_modules" / "dayjs").exists()
    res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v1"][:10], "-o", "json", env=cli_env)
    assert res.code == 0, res.stderr + res.stdout
    step = res.json()["steps"][0]
    assert step["details"]["needs_install"] is True
    assert sb.health() == (200, "1.0.0")
    # v1's lockfile has no `dayjs`: npm ci removed it.
    assert not (sb.app / "node_modules" / "dayjs").exists()


def test_default_target_then_history_and_undo(sandbox, cli_env):
    sb = sandbox
    res = run_cli("backend", "rollback", "--yes", "-o", "json", env=cli_env)
    assert res.code == 0, res.stderr
    step = res.json()["steps"][0]
    assert step["to"] == sb.commits["v2"] and step["rule"].startswith("ledger:")
    run_id = res.json()["run_id"]

    hist = run_cli("history", "-o", "json", env=cli_env)
    assert hist.code == 0 and hist.json()[0]["run_id"] == run_id

    # A second default rollback goes further back, never forward to the release rolled back from.
    plan = run_cli("backend", "rollback", "--dry-run", "-o", "json", env=cli_env)
    assert plan.code == 0, plan.stderr
    assert plan.json()["steps"][0]["to"] == sb.commits["v1"]

    undo = run_cli("undo", run_id, "--yes", "-o", "json", env=cli_env)
    assert undo.code == 0, undo.stderr
    assert sb.head() == sb.commits["v3"]
    assert sb.health() == (500, "3.0.0")  # undo restores exactly what the run found


def test_dry_run_changes_nothing(sandbox, cli_env):
    sb = sandbox
    before = host_snapshot(sb)
    res = run_cli("backend", "rollback", "--to", sb.commits["v1"], "--dry-run", env=cli_env)
    assert res.code == 0, res.stderr
    assert "dry run" in res.stdout and sb.commits["v1"][:12] in res.stdout
    assert "npm ci" in res.stdout  # v1's lockfile differs
    assert host_snapshot(sb) == before
    assert not (sb.host_state / "backend.lock").exists()


def test_second_run_with_same_target_changes_nothing(sandbox, cli_env):
    sb = sandbox
    assert run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], env=cli_env).code == 0
    before = host_snapshot(sb)
    res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], "-o", "json", env=cli_env)
    assert res.code == 0, res.stderr
    assert res.json()["steps"][0]["outcome"] == "unchanged"
    assert host_snapshot(sb) == before


def test_unknown_sha_is_a_usage_error_and_changes_nothing(sandbox, cli_env):
    sb = sandbox
    before = host_snapshot(sb)
    res = run_cli("backend", "rollback", "--yes", "--to", "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef", env=cli_env)
    assert res.code == 2, res.stderr
    assert "not a commit" in res.stderr
    assert host_snapshot(sb) == before


def test_failed_health_restores_the_original_commit(sandbox, cli_env):
    sb = sandbox
    # Start from a healthy v2 and "roll back" to the bad v3: the health gate must refuse it.
    sb.deploy("v2")
    sb.wait_health()
    sb.write_inventory(doai_backend_pm2_health_timeout=4)
    res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v3"], "-o", "json", env=cli_env)
    assert res.code == 3, res.stdout + res.stderr
    step = res.json()["steps"][0]
    assert step["outcome"] == "restored"
    assert "health" in step["message"]
    assert sb.head() == sb.commits["v2"]
    assert sb.health() == (200, "2.0.0")
    assert ledger(sb)[-1]["result"] == "restored"
    # The lock was released: the next run is not blocked.
    assert not (sb.host_state / "backend.lock").exists()


def test_second_rollback_while_locked(sandbox, cli_env, state_dir):
    sb = sandbox
    # Another operator's run holds the host lock (taken directly with ansible-playbook elsewhere).
    lock = sb.host_state / "backend.lock"
    lock.mkdir(parents=True)
    (lock / "owner.json").write_text(json.dumps({"owner": "alice", "run_id": "other", "since": "now"}))
    before = host_snapshot(sb)
    res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], env=cli_env)
    assert res.code == 5, res.stdout + res.stderr
    assert "alice" in res.stderr
    assert host_snapshot(sb) == before
    assert lock.exists()  # someone else's lock is never removed

    # The local lock: a live process holds it.
    lock.joinpath("owner.json").unlink()
    lock.rmdir()
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (state_dir / "locks").mkdir(exist_ok=True)
        (state_dir / "locks" / "backend.lock").write_text(json.dumps({
            "target": "backend", "owner": "bob@ci", "pid": holder.pid, "host": socket.gethostname(),
            "acquired": __import__("time").time(), "reason": "deploy fix", "run_id": "x"}))
        res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], env=cli_env)
        assert res.code == 5 and "bob@ci" in res.stderr
        assert sb.head() == sb.commits["v3"]
    finally:
        holder.kill()
        holder.wait()
    # Once its holder is gone the lock is stale and the next run proceeds.
    res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], env=cli_env)
    assert res.code == 0, res.stderr


def test_dirty_tree_is_refused(sandbox, cli_env):
    sb = sandbox
    (sb.app / "server.js").write_text((sb.app / "server.js").read_text() + "\n// hotfix on the box\n")
    before = host_snapshot(sb)
    res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], env=cli_env)
    assert res.code == 2, res.stdout + res.stderr  # refused before any change (was 3 before the engine)
    assert "server.js" in res.stderr and "REFUSED" in res.stdout
    assert host_snapshot(sb) == before
    assert "hotfix on the box" in (sb.app / "server.js").read_text()


def test_status_reports_commit_pm2_and_health(sandbox, cli_env):
    sb = sandbox
    res = run_cli("status", "-o", "json", env=cli_env)
    assert res.code == 6, res.stderr  # v3 is live and unhealthy
    host = res.json()["parts"]["backend"]["hosts"][sb.host_name]
    assert host["commit"] == sb.commits["v3"] and host["health_status"] == 500
    assert host["processes"] and all(p["status"] == "online" for p in host["processes"])
    assert run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], env=cli_env).code == 0
    res = run_cli("health", env=cli_env)
    assert res.code == 0 and "healthy" in res.stdout


def test_canary_secret_never_leaks(sandbox, cli_env, state_dir):
    sb = sandbox
    env = dict(cli_env, VERCEL_TOKEN=CANARY, DOAI_DATABASE_URL=f"postgresql://u:{CANARY}@127.0.0.1/db",
               DOAI_WINRM_PASSWORD=CANARY, DOAI_KEEP_ARTIFACTS="1")
    res = run_cli("-v", "backend", "rollback", "--yes", "--to", sb.commits["v2"], "-o", "json", env=env)
    assert res.code == 0, res.stderr
    assert CANARY not in res.stdout + res.stderr
    files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert any("runner" in str(p) for p in files), "artifacts were kept for inspection"
    assert any(p.name == "command" for p in files)  # ansible-runner's record of its environment
    for p in files:
        assert CANARY not in p.read_text(errors="replace"), p


@pytest.fixture
def two_hosts(tmp_path_factory, state_dir):
    """Two sandbox VPSes on v3 (v2 before it) in one inventory: vps-a and vps-b."""
    from doai_ansible.sandbox import Sandbox

    a, b = Sandbox(tmp_path_factory.mktemp("a")), Sandbox(tmp_path_factory.mktemp("b"))
    try:
        for sb in (a, b):
            sb.start(deploy="v2")
            sb.deploy("v3")

        def inventory() -> dict[str, str]:
            hosts = {name: json.loads(sb.inventory.read_text())["all"]["children"]["backend"]["hosts"][sb.host_name]
                     for name, sb in (("vps-a", a), ("vps-b", b))}
            inv = state_dir / "two.json"
            inv.write_text(json.dumps({"all": {"children": {"backend": {"hosts": hosts}}}}))
            return {"DOAI_INVENTORY": str(inv), "DOAI_STATE_DIR": str(state_dir)}

        yield a, b, inventory
    finally:
        a.stop()
        b.stop()


def test_one_host_fails_the_others_are_put_back(two_hosts):
    """The second host's health gate cannot pass. The pool must not be left on mixed
    releases: the host that rolled back is put back too, and the run says 'restored'.
    The put-back does not count as a rollback: the next default target is still v2."""
    from doai_ansible.sandbox import free_port

    a, b, inventory = two_hosts
    b.write_inventory(doai_backend_pm2_health_url=f"http://127.0.0.1:{free_port()}/nothing-listens-here",
                      doai_backend_pm2_health_timeout=3)
    env = inventory()
    res = run_cli("backend", "rollback", "--yes", "--to", "v2", "-o", "json", env=env)
    assert res.code == 3, res.stdout + res.stderr
    steps = {s["target"]: s for s in res.json()["steps"]}
    assert steps["vps-b"]["outcome"] == "restored"
    assert steps["vps-a"]["outcome"] == "restored" and "another host failed" in steps["vps-a"]["message"]
    for sb in (a, b):
        assert sb.head() == sb.commits["v3"]
        assert sb.health() == (500, "3.0.0")
    assert ledger(a)[-1]["action"] == "put-back"
    plan = run_cli("backend", "rollback", "--dry-run", "--limit", "vps-a", "-o", "json", env=env)
    assert plan.code == 0, plan.stdout + plan.stderr
    assert plan.json()["steps"][0]["to"] == a.commits["v2"]


def test_one_host_unreachable_changes_no_host(two_hosts, state_dir):
    """All or nothing: every host is planned first; one that cannot be reached stops the run
    before any host is changed (no reload on the others, no put-back)."""
    a, b, inventory = two_hosts
    env = inventory()
    os.kill(b.sshd_pid, 15)
    b.sshd_pid = None
    before = host_snapshot(a)
    res = run_cli("backend", "rollback", "--yes", "--to", "v2", "-o", "json", env=env)
    assert res.code == 7, res.stdout + res.stderr
    assert "vps-b" in res.json()["error"] and res.json()["steps"] == []
    assert host_snapshot(a) == before  # not even reloaded
    assert _journal(state_dir)[-1]["exit_name"] == "UNREACHABLE"


def test_undo_does_not_spoil_the_default_target(sandbox, cli_env):
    """v3 -> v2, undo (back to v3), then a rollback without --to goes to v2 again."""
    sb = sandbox
    first = run_cli("backend", "rollback", "--yes", "-o", "json", env=cli_env)
    assert first.code == 0 and first.json()["steps"][0]["to"] == sb.commits["v2"], first.stderr
    undo = run_cli("undo", first.json()["run_id"], "--yes", env=cli_env)
    assert undo.code == 0 and sb.head() == sb.commits["v3"], undo.stdout + undo.stderr
    assert ledger(sb)[-1]["action"] == "undo"
    again = run_cli("backend", "rollback", "--yes", "-o", "json", env=cli_env)
    assert again.code == 0, again.stdout + again.stderr
    assert again.json()["steps"][0]["to"] == sb.commits["v2"] and sb.health() == (200, "2.0.0")


def _spawn(env, *args):
    import sys

    import pexpect  # ansible-runner's own dependency: a real pseudo-terminal

    full = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")}
    full.update(env)
    return pexpect.spawn(sys.executable, ["-m", "doai_ansible", *args], env=full, encoding="utf-8", timeout=120)


def _journal(state_dir) -> list[dict]:
    path = state_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_terminal_confirmation_applies_the_plan_it_showed(sandbox, cli_env, state_dir):
    """One run id from the plan to the journal; the target shown is the target applied."""
    sb = sandbox
    child = _spawn(cli_env, "backend", "rollback", "--reason", "tty")
    child.expect(r"plan of run (\S+);")
    plan_run = child.match.group(1)
    child.expect(sb.commits["v2"][:12])
    child.expect(r"\[y/N\]")
    child.sendline("y")
    child.expect(pexpect_eof())
    child.close()
    assert child.exitstatus == 0, child.before
    assert sb.head() == sb.commits["v2"] and sb.health() == (200, "2.0.0")
    (record,) = _journal(state_dir)
    assert record["run_id"] == plan_run and record["steps"][0]["to"] == sb.commits["v2"]


def test_deploy_between_plan_and_confirmation_is_refused(sandbox, cli_env, state_dir):
    """Someone deploys while the operator reads the plan: apply refuses, exit 2, nothing changed."""
    sb = sandbox
    child = _spawn(cli_env, "backend", "rollback", "--to", "v2", "--reason", "tty")
    child.expect(r"\[y/N\]")
    sb.deploy("v1")  # the live commit moves under the plan
    sb.wait_health()
    before = host_snapshot(sb)
    child.sendline("y")
    child.expect(pexpect_eof())
    child.close()
    assert child.exitstatus == 2, child.before
    assert "as planned" in child.before
    assert host_snapshot(sb) == before
    assert not (sb.host_state / "backend.lock").exists()
    (record,) = _journal(state_dir)
    assert record["exit_name"] == "USAGE" and "as planned" in record["message"]


def test_refusals_are_journaled(sandbox, cli_env, state_dir):
    """Every run that reached a part is in the journal, refused ones too (audit trail)."""
    sb = sandbox
    res = run_cli("backend", "rollback", "--yes", "--to", "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef", env=cli_env)
    assert res.code == 2
    lock = sb.host_state / "backend.lock"
    lock.mkdir(parents=True)
    (lock / "owner.json").write_text(json.dumps({"owner": "alice", "run_id": "other", "since": "now"}))
    assert run_cli("backend", "rollback", "--yes", "--to", "v2", env=cli_env).code == 5
    assert [r["exit_name"] for r in _journal(state_dir)] == ["USAGE", "LOCKED"]
    hist = run_cli("history", env=cli_env)
    assert "LOCKED" in hist.stdout and "alice" in hist.stdout


def test_limit_matching_no_host_is_a_usage_error(sandbox, cli_env):
    res = run_cli("backend", "rollback", "--yes", "--to", "v2", "--limit", "no-such-host", env=cli_env)
    assert res.code == 2, res.stdout + res.stderr
    assert "matches no host" in res.stderr and sandbox.host_name in res.stderr  # it lists the group's hosts
    assert sandbox.head() == sandbox.commits["v3"]


def pexpect_eof():
    import pexpect

    return pexpect.EOF


def _host_lock(sb, run_id: str) -> Path:
    lock = sb.host_state / "backend.lock"
    lock.mkdir(parents=True)
    (lock / "owner.json").write_text(json.dumps({"owner": "carol", "run_id": run_id, "since": "earlier"}))
    return lock


def test_lock_status_shows_host_locks_and_release_needs_a_dead_run(sandbox, cli_env, state_dir):
    """A run killed mid-apply leaves its host lock: `lock status` shows it with whether its
    run is alive; `lock release backend --host` removes it, only when that run is dead."""
    sb = sandbox
    lock = _host_lock(sb, "killed-run")  # a run this controller does not know (another one, or killed)
    res = run_cli("lock", "status", env=cli_env)
    assert res.code == 5, res.stdout + res.stderr
    assert "carol" in res.stdout and "killed-run" in res.stdout and "not a live run" in res.stdout
    res = run_cli("lock", "release", "backend", "--host", sb.host_name, "--yes", env=cli_env)
    assert res.code == 5 and "--force" in res.stderr and lock.exists()
    res = run_cli("lock", "release", "backend", "--host", sb.host_name, "--yes", "--force", "-o", "json", env=cli_env)
    assert res.code == 0, res.stdout + res.stderr
    assert res.json()["released"] is True and not lock.exists()

    # A lock whose run is journaled (it ended) is left over: released without --force.
    assert run_cli("backend", "rollback", "--yes", "--to", "v2", env=cli_env).code == 0
    run_id = _journal(state_dir)[-1]["run_id"]
    lock = _host_lock(sb, run_id)
    res = run_cli("lock", "status", "-o", "json", env=cli_env)
    assert res.code == 0 and res.json()["hosts"][0]["run"] == "finished"
    assert run_cli("lock", "release", "backend", "--host", sb.host_name, "--yes", env=cli_env).code == 0
    assert not lock.exists()
    assert run_cli("lock", "release", "backend", "--host", "no-such-host", "--yes", env=cli_env).code == 2


def test_a_plan_refused_by_its_own_checks_still_reads_what_the_checklist_keeps(sandbox, state_dir):
    """Issue 20: the checklist's state and log lines come with the plan's capture; when the
    role's input checks refuse before the capture runs, they are read on their own after it
    (read-only), so the checklist keeps the host's live state whatever refused its plan."""
    from doai_ansible.runner import run_playbook
    from doai_ansible.settings import load_settings

    settings = load_settings(None, inventory=sandbox.inventory, state_dir=state_dir, env={})
    xv = {"doai_backend_pm2_target": "not a ref!", "doai_backend_pm2_read_status": True,
          "doai_backend_pm2_read_logs": 5}
    run = run_playbook(settings, "backend_pm2_rollback.yml", extravars=xv, check=True)
    assert not run.ok and sandbox.host_name in run.failed_hosts()
    status = run.custom["doai_backend_pm2_status"][sandbox.host_name]
    assert status["commit"] == sandbox.commits["v3"] and status["processes"], status
    evidence = run.custom["doai_backend_diagnose"][sandbox.host_name]
    assert evidence["release"] == sandbox.commits["v3"] and evidence["logs"], evidence
    # a read that fails (the path is no checkout, so the capture refuses too): its cause is reported
    bad = run_playbook(settings, "backend_pm2_rollback.yml", check=True,
                       extravars={"doai_backend_pm2_path": str(state_dir), "doai_backend_pm2_read_status": True,
                                  "doai_backend_pm2_read_logs": 5})
    assert not bad.ok and "doai_backend_pm2_status" not in bad.custom
    assert "not the top of a git checkout" in bad.read_failures("doai_backend_pm2_status")[sandbox.host_name]
    assert bad.custom["doai_backend_diagnose"][sandbox.host_name]["logs"]  # the log read did not need the checkout
    # and asked nothing, nothing is read
    plain = run_playbook(settings, "backend_pm2_rollback.yml", extravars={"doai_backend_pm2_target": "not a ref!"},
                         check=True)
    assert not plain.ok and "doai_backend_pm2_status" not in plain.custom and "doai_backend_diagnose" not in plain.custom
