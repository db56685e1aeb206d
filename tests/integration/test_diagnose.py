"""`doai-rollback diagnose` (the runbook's scenarios A, B, C) against the real rigs: each finds the
fault planted for it and nothing on a healthy rig, and changes nothing; ``collect_logs`` writes the
system rollback's log bundle."""

from __future__ import annotations

import json

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from doai_ansible.sandbox.pg_rig import PgRig
from tests.conftest import CANARY, run_cli

pytestmark = pytest.mark.integration

V3 = "20261120000000"
# What a backend that lost its database connection writes: an error with its stack, 500s.
PLANTED_ERR = ("Error: connect ECONNREFUSED 127.0.0.1:5432\n"
               "    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1555:16)\n"
               "    at process.processTicksAndRejections (node:internal/process/task_queues:82:21)\n")
PLANTED_OUT = (f"connecting to postgres://app:{CANARY}@db.internal:5432/doai\n"
               "GET /api/devices 500 12.345 ms - 21\n"
               "POST /api/tasks 500 3.101 ms - 21\n")


def write_config(tmp_path: Path, **diagnose: object) -> Path:
    import yaml

    path = tmp_path / "doai-rollback.yml"
    path.write_text(yaml.safe_dump({"diagnose": diagnose}))
    return path


def findings(doc: dict) -> dict[tuple[str, str], dict]:
    return {(f["check"], f["target"]): f for f in doc["findings"]}


def flush_pm2_logs(sb) -> None:
    """Empty the PM2 logs (the module's rig keeps them from test to test)."""
    subprocess.run([sb.pm2, "flush"], env=sb.pm2_env, check=True, capture_output=True, timeout=60)


def plant_pm2_errors(sb) -> None:
    flush_pm2_logs(sb)
    logs = sb.pm2_home / "logs"
    with (logs / "doai-backend-error-0.log").open("a") as fh:
        fh.write(PLANTED_ERR)
    with (logs / "doai-backend-out-1.log").open("a") as fh:
        fh.write(PLANTED_OUT)


def backend_state(sb) -> dict[str, object]:
    """What a diagnose must leave as it found it on the VPS."""
    procs = [(p["name"], p["pm_id"], p["status"], p["restarts"]) for p in sb.pm2_processes()]
    host_state = sorted(str(p.relative_to(sb.host_state)) for p in sb.host_state.rglob("*"))
    return {"head": sb.head(), "procs": procs, "ledger": sb.ledger.read_text(), "host_state": host_state,
            "git_status": subprocess.run(["git", "-C", str(sb.app), "status", "--porcelain"], capture_output=True,
                                         text=True, check=True).stdout}


# -- A ---------------------------------------------------------------------------------------------------
def test_api_errors_finds_the_missing_variable_the_500s_and_changes_nothing(sandbox, state_dir, tmp_path):
    plant_pm2_errors(sandbox)  # v3, the bad release, is live: health answers 500
    cfg = write_config(tmp_path, backend_env=["PORT", "DOAI_SUPABASE_URL"], log_lines=50)
    before = backend_state(sandbox)
    res = run_cli("diagnose", "api-errors", "-c", str(cfg), "-i", str(sandbox.inventory), "--state-dir",
                  str(state_dir), "-o", "json")
    assert res.code == 6, res.stdout + res.stderr
    doc = res.json()
    f = findings(doc)
    host = sandbox.host_name
    assert doc["healthy"] is False and doc["scenario"] == "api-errors"
    env = f[("environment", host)]
    assert not env["ok"] and "DOAI_SUPABASE_URL" in env["detail"] and "PORT" not in env["detail"].split(":", 1)[1]
    logs = f[("logs", host)]
    assert not logs["ok"] and "2 HTTP 5xx" in logs["detail"] and "1 stack trace" in logs["detail"]
    assert not f[("health", host)]["ok"] and "HTTP 500" in f[("health", host)]["detail"]
    assert f[("release", host)]["detail"].startswith(f"live commit {sandbox.commits['v3'][:12]}")
    assert "doai-rollback backend rollback" in doc["next"]
    assert CANARY not in res.stdout + res.stderr  # the password in a logged URL is scrubbed
    assert not [p for p in state_dir.rglob("*") if p.is_file() and CANARY in p.read_text(errors="replace")]
    assert backend_state(sandbox) == before

    text = run_cli("diagnose", "api-errors", "-c", str(cfg), "-i", str(sandbox.inventory), "--state-dir",
                   str(state_dir))
    assert text.code == 6 and "FAULT environment" in text.stdout and "next:" in text.stdout


def test_api_errors_finds_nothing_on_a_healthy_backend(sandbox, state_dir, tmp_path):
    sandbox.deploy("v2")
    sandbox.wait_health()
    flush_pm2_logs(sandbox)
    cfg = write_config(tmp_path, backend_env=["PORT"])
    res = run_cli("diagnose", "api-errors", "-c", str(cfg), "-i", str(sandbox.inventory), "--state-dir",
                  str(state_dir), "-o", "json")
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json()
    assert doc["healthy"] is True and doc["next"] == [] and doc["exit_name"] == "OK"
    assert {f["check"] for f in doc["findings"]} == {"health", "processes", "environment", "logs", "release"}


def test_api_errors_refuses_bad_input_before_any_host(sandbox, state_dir):
    res = run_cli("diagnose", "api-errors", "--limit", "sandbox-vps;touch /tmp/x", "-i", str(sandbox.inventory),
                  "--state-dir", str(state_dir))
    assert res.code == 2, res.stdout + res.stderr
    res = run_cli("diagnose", "api-errors", "--limit", "nohost", "-i", str(sandbox.inventory), "--state-dir",
                  str(state_dir), "-o", "json")
    assert res.code == 2 and "no backend hosts" in res.json()["error"]


# -- B ---------------------------------------------------------------------------------------------------
def db_state(rig) -> dict[str, object]:
    return {"history": rig.applied_versions(), "checksums": rig.table_checksums(),
            "catalog": rig.catalog_fingerprint()}


@pytest.mark.parametrize("plant, expect", [
    # V3 ran (its table and column are there) but its history row is missing.
    (f"DELETE FROM supabase_migrations.schema_migrations WHERE version = '{V3}'", "not in the history"),
    # The history says V3 is applied, but the column it added is gone.
    ("ALTER TABLE public.devices DROP COLUMN last_issue_at", "the history says applied, but missing"),
])
def test_migration_failure_finds_a_half_applied_migration(pg_rig, state_dir, tmp_path, plant, expect):
    project = PgRig.project(tmp_path / "project")
    env = {"DOAI_DATABASE_URL": pg_rig.url, "DOAI_DATABASE_PROJECT_DIR": str(project), "DOAI_STATE_DIR": str(state_dir)}
    pg_rig.sql(plant)
    before = db_state(pg_rig)
    res = run_cli("diagnose", "migration-failure", "-o", "json", env=env)
    assert res.code == 6, res.stdout + res.stderr
    doc = res.json()
    bad = [f for f in doc["findings"] if f["check"] == "half-applied" and not f["ok"]]
    assert len(bad) == 1 and bad[0]["detail"].startswith(V3) and expect in bad[0]["detail"]
    assert "doai-rollback database snapshots" in doc["next"]
    assert any(f["check"] == "integrity" and f["ok"] for f in doc["findings"])
    assert db_state(pg_rig) == before
    assert CANARY not in res.stdout + res.stderr


def test_migration_failure_finds_orphan_rows_and_nothing_on_a_healthy_database(pg_rig, state_dir, tmp_path):
    project = PgRig.project(tmp_path / "project")
    env = {"DOAI_DATABASE_URL": pg_rig.url, "DOAI_DATABASE_PROJECT_DIR": str(project), "DOAI_STATE_DIR": str(state_dir)}
    res = run_cli("diagnose", "migration-failure", "-o", "json", env=env)
    assert res.code == 0, res.stdout + res.stderr
    assert res.json()["healthy"] is True and res.json()["next"] == []
    # A foreign key made NOT VALID after rows that break it went in: the integrity check says so.
    pg_rig.sql("ALTER TABLE public.device_issues DROP CONSTRAINT device_issues_device_id_fkey")
    pg_rig.sql("INSERT INTO public.device_issues (device_id, kind) VALUES (999999, 'orphan')")
    pg_rig.sql("ALTER TABLE public.device_issues ADD CONSTRAINT device_issues_device_id_fkey "
               "FOREIGN KEY (device_id) REFERENCES public.devices (id) NOT VALID")
    res = run_cli("diagnose", "migration-failure", "-o", "json", env=env)
    assert res.code == 6, res.stdout + res.stderr
    integrity = [f for f in res.json()["findings"] if f["check"] == "integrity"]
    assert integrity and not integrity[0]["ok"] and "NOT VALID" in integrity[0]["detail"]
    assert "doai-rollback database rollback --last 1" in res.json()["next"]


def test_migration_failure_without_a_database_is_a_usage_error(state_dir, tmp_path):
    res = run_cli("diagnose", "migration-failure", env={"DOAI_STATE_DIR": str(state_dir),
                                                        "DOAI_DATABASE_PROJECT_DIR": str(tmp_path)})
    assert res.code == 2, res.stdout + res.stderr


# -- C ---------------------------------------------------------------------------------------------------
def combined_inventory(tmp_path: Path, sb, fleet) -> Path:
    """The backend VPS and the agent PCs in one inventory (a directory: Ansible reads every file)."""
    inv = tmp_path / "inventory"
    inv.mkdir()
    shutil.copyfile(sb.inventory, inv / "backend.yml")
    shutil.copyfile(fleet.write_inventory(), inv / "agents.yml")
    return inv


def fleet_state(fleet) -> dict[str, object]:
    return {(pc, u): (fleet.folder_state(pc, u), fleet.agent_pid(pc, u))
            for pc in fleet.reachable for u in ("alice", "bob")}


def test_agent_connection_healthy_then_backend_stopped(sandbox, agent_fleet, state_dir, tmp_path):
    fleet = agent_fleet(n=2, unreachable=0)
    inv = combined_inventory(tmp_path, sandbox, fleet)
    args = ("diagnose", "agent-connection", "-i", str(inv), "--state-dir", str(state_dir), "-o", "json")
    res = run_cli(*args)
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json()
    assert doc["healthy"] and doc["next"] == []
    f = findings(doc)
    assert f[("port from the PC", "pc01")]["ok"] and f[("agent process", "pc02/bob")]["ok"]

    # Scenario C: the backend is down, so the Socket.IO port is closed.
    subprocess.run([sandbox.pm2, "stop", "all"], env=sandbox.pm2_env, check=True, capture_output=True, timeout=60)
    assert fleet.stop_agent("pc01", "bob")  # and one agent is not running
    before = fleet_state(fleet)
    res = run_cli(*args)
    assert res.code == 6, res.stdout + res.stderr
    doc = res.json()
    f = findings(doc)
    endpoint = [x for x in doc["findings"] if x["check"] == "socket.io endpoint"]
    assert len(endpoint) == 1 and not endpoint[0]["ok"]
    assert not f[("port from the PC", "pc01")]["ok"] and not f[("port from the PC", "pc02")]["ok"]
    assert any(n.startswith("start the backend") for n in doc["next"])
    assert not f[("agent process", "pc01/bob")]["ok"] and f[("agent process", "pc01/alice")]["ok"]
    assert "doai-rollback agent rollback --limit pc01" in doc["next"]
    assert fleet_state(fleet) == before
    assert all(p["status"] == "stopped" for p in sandbox.pm2_processes())


# -- the log bundle ------------------------------------------------------------------------------------
def test_collect_logs_writes_every_reachable_target_and_an_error_for_the_unreachable(
        sandbox, agent_fleet, state_dir, tmp_path):
    from doai_ansible import diagnose
    from doai_ansible.context import RunContext
    from doai_ansible.settings import load_settings

    fleet = agent_fleet(n=2, unreachable=1)
    plant_pm2_errors(sandbox)
    inv = combined_inventory(tmp_path, sandbox, fleet)
    ctx = RunContext.create(load_settings(None, inventory=str(inv), state_dir=str(state_dir)))
    dest = tmp_path / "bundle"
    entries = diagnose.collect_logs(ctx, dest, lines=20)
    by = {(e["part"], e["host"]): e for e in entries}
    assert set(by) == {("backend", sandbox.host_name), ("agent", "pc01"), ("agent", "pc02")}
    (dark,) = fleet.unreachable
    assert by[("agent", dark)]["file"] is None and "unreachable" in by[("agent", dark)]["error"]
    files = [Path(e["file"]) for e in entries if e["file"]]
    assert len(files) == 2
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    backend = Path(by[("backend", sandbox.host_name)]["file"]).read_text()
    assert "ECONNREFUSED" in backend and "GET /api/devices 500" in backend and CANARY not in backend
    (lit,) = fleet.reachable
    assert f"{lit}/alice: running" in Path(by[("agent", lit)]["file"]).read_text()


def test_api_errors_on_a_docker_host_reads_the_container(docker_rig, state_dir, tmp_path):
    rig = docker_rig
    cfg = write_config(tmp_path, backend_env=["DOAI_SUPABASE_URL"], log_lines=20)
    before = (rig.api_container(), rig.container_image_id(), rig.image_id(f"{rig.image_repo}:current"))
    res = run_cli("diagnose", "api-errors", "-c", str(cfg), "-i", str(rig.inventory), "--state-dir", str(state_dir),
                  "-o", "json")
    assert res.code == 6, res.stdout + res.stderr
    f = {x["check"]: x for x in res.json()["findings"]}
    assert not f["environment"]["ok"] and "DOAI_SUPABASE_URL" in f["environment"]["detail"]
    assert "[from: container]" in f["environment"]["detail"]
    assert f["processes"]["ok"] and "running" in f["processes"]["detail"]
    assert f["logs"]["detail"].startswith("container log:")
    assert f["release"]["detail"].startswith(f"live image {before[1][:19]}")
    assert (rig.api_container(), rig.container_image_id(), rig.image_id(f"{rig.image_repo}:current")) == before


def test_agent_connection_keeps_the_winrm_safeguards_of_the_agent_playbooks(sandbox, agent_fleet, state_dir, tmp_path):
    """The diagnose playbook takes the WinRM password at its prompt like the rollback (never in a
    file or artifact), and refuses basic authentication over plain HTTP before reaching a PC."""
    from tests.conftest import CANARY

    fleet = agent_fleet(n=1, unreachable=0)
    password = CANARY + "-winrm-diagnose"
    env = {"DOAI_WINRM_PASSWORD": password, "DOAI_KEEP_ARTIFACTS": "1"}
    inv = combined_inventory(tmp_path, sandbox, fleet)
    res = run_cli("diagnose", "agent-connection", "-i", str(inv), "--state-dir", str(state_dir), "-o", "json", env=env)
    assert res.code == 0, res.stdout + res.stderr
    files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert any("artifacts" in str(p) for p in files)
    assert password not in res.stdout + res.stderr
    assert [str(p) for p in files if password.encode() in p.read_bytes()] == []
    # the same PC as a Windows PC over WinRM basic auth on plain HTTP: refused, the password never sent
    insecure = tmp_path / "insecure.yml"
    insecure.write_text(json.dumps({"all": {"children": {"agents": {"hosts": {"pc01": {
        "ansible_host": "127.0.0.1", "ansible_port": 5985, "ansible_connection": "winrm",
        "ansible_winrm_transport": "basic", "ansible_winrm_scheme": "http", "ansible_user": "admin",
        "doai_agent_socketio_host": "127.0.0.1", "doai_agent_socketio_port": 9}}}}}}))
    res = run_cli("diagnose", "agent-connection", "-i", str(insecure), "--state-dir", str(state_dir), env=env)
    assert res.code != 0 and "basic authentication over plain HTTP" in res.stdout + res.stderr, res.stdout + res.stderr
