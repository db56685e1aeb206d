"""The database part against a real PostgreSQL shaped like a Supabase project (tests/fixtures/
supabase, applied by the real Supabase CLI), through the CLI as a user runs it; the Supabase CLI
is the independent judge of what is applied."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from doai_ansible.sandbox.pg_rig import PgRig
from tests.conftest import run_cli

pytestmark = pytest.mark.integration

V1, V2, V3 = "20261101000000", "20261110000000", "20261120000000"


def env_for(rig, project: Path, state_dir: Path) -> dict[str, str]:
    return {"DOAI_DATABASE_URL": rig.url, "DOAI_DATABASE_PROJECT_DIR": str(project), "DOAI_STATE_DIR": str(state_dir)}


@pytest.fixture
def project(tmp_path) -> Path:
    return PgRig.project(tmp_path / "project")


@pytest.fixture
def env(pg_rig, project, state_dir) -> dict[str, str]:
    return env_for(pg_rig, project, state_dir)


def state(rig) -> dict[str, object]:
    """Everything a refused or failed run must leave exactly as it was."""
    return {"history": rig.applied_versions(), "checksums": rig.table_checksums(),
            "catalog": rig.catalog_fingerprint(), "grants": rig.grants_on_public()}


def journal(state_dir: Path) -> list[dict]:
    path = state_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_status_lists_applied_migrations_down_files_and_tables(pg_rig, env):
    res = run_cli("database", "status", env=env)
    assert res.code == 0, res.stderr
    assert f"last applied {V3}" in res.stdout
    data = run_cli("database", "status", "-o", "json", env=env).json()
    rows = {m["version"]: m for m in data["migrations"]}
    assert set(rows) == {V1, V2, V3} and all(r["applied"] and r["down_file"] for r in rows.values())
    assert "public.device_issues" in rows[V3]["touches"] and "public.devices" in rows[V3]["touches"]
    assert {v for v, r in rows.items() if r["applied"]} == pg_rig.supabase_applied()


def test_rollback_of_the_last_migration_and_the_supabase_cli_agrees(pg_rig, env, project, state_dir):
    rig = pg_rig
    before = rig.catalog_fingerprint()
    plan = run_cli("database", "rollback", "--last", "1", "--dry-run", env=env)
    # The plan is shown, and the dry run exits as the real run would: refused without the flag.
    assert plan.code == 2, plan.stderr
    assert "device_issues" in plan.stdout and "at risk" in plan.stdout and "--accept-data-loss" in plan.stdout
    assert "REFUSED" in plan.stdout + plan.stderr
    accepted = run_cli("database", "rollback", "--last", "1", "--dry-run", "--accept-data-loss", env=env)
    assert accepted.code == 0 and "at risk" in accepted.stdout, accepted.stderr
    res = run_cli("database", "rollback", "--last", "1", "--yes", "--accept-data-loss", "-o", "json", env=env)
    assert res.code == 0, res.stdout + res.stderr
    assert rig.applied_versions() == [V1, V2]
    assert rig.supabase_applied(project) == {V1, V2}  # the judge sees the same history
    assert "public.device_issues" not in rig.row_counts()
    columns = [r[0] for r in rig.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'devices'")]
    assert "last_issue_at" not in columns  # the whole migration undone, not only its table
    (step,) = res.json()["steps"]
    snap = Path(step["details"]["snapshot"])
    assert snap.is_file() and json.loads(snap.with_suffix(".json").read_text())["last_migration"] == V3
    assert len(re.findall(r"\d{8}T\d{6}Z", snap.name)) == 1, snap.name  # its time said once, not twice
    assert step["duration_s"] is not None and step["duration_s"] >= 0  # the journal's timings are whole
    # Round trip: Supabase rolls forward cleanly, to the very schema the rollback started from.
    up = rig.supabase("migration", "up", project=project)
    assert up.returncode == 0, up.stdout + up.stderr
    assert rig.applied_versions() == [V1, V2, V3]
    assert rig.catalog_fingerprint() == before


def test_a_down_file_failing_half_way_changes_nothing(pg_rig, tmp_path, state_dir):
    rig = pg_rig
    project = PgRig.project(tmp_path / "p", variant="down-fails")
    before = state(rig)
    res = run_cli("database", "rollback", "--last", "1", "--yes", "--accept-data-loss", "-o", "json",
                  env=env_for(rig, project, state_dir))
    assert res.code == 3, res.stdout + res.stderr  # failed, and as it was
    (step,) = res.json()["steps"]
    assert step["outcome"] == "failed"
    assert "statement 2" in step["message"] and f"{V3}_device_issues.sql" in step["message"]
    assert "rolled back" in step["message"] and "nothing was changed" in step["message"]
    assert state(rig) == before
    assert rig.supabase_applied(project) == {V1, V2, V3}


def test_snapshot_then_restore_gives_the_same_data_and_keeps_grants(pg_rig, env):
    rig = pg_rig
    rig.sql("DO $$ BEGIN CREATE ROLE reporter NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    rig.sql("GRANT USAGE ON SCHEMA public TO reporter")
    rig.sql("GRANT SELECT ON public.devices TO reporter")
    before = state(rig)
    snap = run_cli("database", "snapshot", "-o", "json", env=env)
    assert snap.code == 0, snap.stderr
    manifest = snap.json()
    assert manifest["row_counts"]["public.system_logs"] == rig.row_counts()["public.system_logs"]
    assert not any(s in manifest["schemas"] for s in ("auth", "storage"))
    # Later: rows written, a table dropped, an object the snapshot does not hold.
    rig.sql("INSERT INTO public.system_logs (device_id, level, message) SELECT id, 'info', 'later' FROM public.devices")
    rig.sql("DROP TABLE public.device_issues")
    rig.sql("CREATE TABLE public.scratch (x int)")
    res = run_cli("database", "restore", manifest["file"], "--yes", "-o", "json", env=env)
    assert res.code == 0, res.stdout + res.stderr
    after = state(rig)
    assert after["checksums"] == before["checksums"] and after["history"] == before["history"]
    assert after["grants"] == before["grants"]
    assert rig.sql("SELECT has_schema_privilege('reporter', 'public', 'USAGE'), "
                   "has_table_privilege('reporter', 'public.devices', 'SELECT')")[0] == (True, True)
    assert rig.sql("SELECT count(*) FROM auth.users")[0][0] == 1  # Supabase's schemas untouched
    # the present was kept before it was replaced
    (step,) = res.json()["steps"]
    assert Path(step["details"]["snapshot"]).is_file()


def test_a_damaged_snapshot_is_refused(pg_rig, env):
    snap = run_cli("database", "snapshot", "-o", "json", env=env).json()
    with open(snap["file"], "ab") as fh:
        fh.write(b"x")
    before = state(pg_rig)
    res = run_cli("database", "restore", snap["file"], "--yes", env=env)
    assert res.code == 2 and "checksum" in res.stderr
    assert state(pg_rig) == before


def test_data_at_risk_needs_accept_data_loss(pg_rig, env, state_dir):
    before = state(pg_rig)
    res = run_cli("database", "rollback", "--to", V2, "--yes", env=env)
    assert res.code == 2, res.stdout + res.stderr
    assert "data at risk" in res.stderr and "--accept-data-loss" in res.stderr
    assert state(pg_rig) == before
    assert not list((state_dir / "snapshots").glob("*.dump")) if (state_dir / "snapshots").exists() else True
    assert journal(state_dir)[-1]["exit_name"] == "USAGE"


def test_a_migration_without_down_file_points_to_restore(pg_rig, tmp_path, state_dir):
    rig = pg_rig
    project = PgRig.project(tmp_path / "p", variant="no-down")
    up = rig.supabase("migration", "up", project=project)
    assert up.returncode == 0, up.stdout + up.stderr
    before = state(rig)
    res = run_cli("database", "rollback", "--last", "1", "--yes", "--accept-data-loss",
                  env=env_for(rig, project, state_dir))
    assert res.code == 2, res.stdout + res.stderr
    assert "cannot be undone by SQL" in res.stderr and "database restore" in res.stderr
    assert state(rig) == before


def test_undo_restores_what_the_rollback_found(pg_rig, env):
    rig = pg_rig
    before = state(rig)
    res = run_cli("database", "rollback", "--to", V1, "--yes", "--accept-data-loss", "-o", "json", env=env)
    assert res.code == 0, res.stdout + res.stderr
    assert rig.applied_versions() == [V1]
    undo = run_cli("undo", res.json()["run_id"], "--yes", env=env)
    assert undo.code == 0, undo.stdout + undo.stderr
    after = state(rig)
    assert after["history"] == before["history"] and after["checksums"] == before["checksums"]


@pytest.mark.parametrize(("args", "text"), [
    (["--to", "2026"], "14 digits"), (["--to", "20990101000000"], "not an applied migration"),
    (["--last", "9"], "only 3"), ([], "--to VERSION or --last N"),
])
def test_bad_targets_are_refused(pg_rig, env, args, text):
    before = state(pg_rig)
    res = run_cli("database", "rollback", *args, "--yes", env=env)
    assert res.code == 2, res.stdout + res.stderr
    assert text in res.stderr
    assert state(pg_rig) == before


def test_transaction_pooler_url_is_refused(pg_rig, env):
    bad = dict(env, DOAI_DATABASE_URL=pg_rig.url.replace(f":{pg_rig.port}/", ":6543/"))
    res = run_cli("database", "status", env=bad)
    assert res.code == 2 and "transaction pooler" in res.stderr and "session pooler" in res.stderr


def test_the_password_never_leaks(pg_rig, env, state_dir):
    """Not in any output, journal, log, snapshot manifest, nor on any process's command line or
    in its environment while the tool and its pg_dump/psql children run."""
    password = pg_rig.password
    assert password.startswith("canary-")
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        me = os.getpid()
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) == me:
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    environ = Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    continue
                # The tool itself holds DOAI_DATABASE_URL: the operator gave it so. Its children
                # (pg_dump, pg_restore, psql) and everything else must not.
                if b"doai_ansible" in cmdline or b"pytest" in cmdline:
                    continue
                for name, data in (("cmdline", cmdline), ("environ", environ)):
                    if password.encode() in data:
                        seen.append(f"{pid} {name}: {cmdline[:200]!r}")
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    bad_env = dict(env, DOAI_DATABASE_URL=env["DOAI_DATABASE_URL"].replace("@127.0.0.1", "x@127.0.0.1"))
    outputs = [
        run_cli("database", "status", env=env), run_cli("database", "snapshot", env=env),
        run_cli("database", "rollback", "--last", "2", "--yes", "--accept-data-loss", "-o", "json", env=env),
        run_cli("database", "status", env=bad_env),  # a wrong password: the error must not echo it
        run_cli("history", "-o", "json", env=env),
    ]
    stop.set()
    t.join()
    # the child processes were looked at: the run's own command lines are in what was scanned
    assert outputs[2].code == 0, outputs[2].stderr
    assert outputs[3].code != 0
    assert not seen, seen
    for res in outputs:
        assert password not in res.stdout and password not in res.stderr
    leaked = [str(p) for p in state_dir.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert leaked == []


def test_a_lock_held_by_the_app_times_out_and_changes_nothing(pg_rig, project, state_dir, tmp_path):
    """Mid-run fault: the app holds a lock on a table the down file drops; the rollback waits
    only the lock timeout, then rolls the whole transaction back."""
    import psycopg

    cfg = tmp_path / "c.yml"
    cfg.write_text(f"database:\n  project_dir: {project}\n  lock_timeout: 1\n")
    env = dict(env_for(pg_rig, project, state_dir), DOAI_CONFIG=str(cfg))
    before = state(pg_rig)
    with psycopg.connect(**pg_rig.dsn_kwargs()) as holder:
        holder.execute("LOCK TABLE public.device_issues IN ACCESS SHARE MODE")  # a long-running reader
        t0 = time.monotonic()
        res = run_cli("database", "rollback", "--last", "1", "--yes", "--accept-data-loss", "-o", "json", env=env)
        waited = time.monotonic() - t0
        holder.rollback()
    assert res.code == 3, res.stdout + res.stderr
    (step,) = res.json()["steps"]
    assert "lock timeout" in step["message"] and "nothing was changed" in step["message"]
    assert waited < 60  # bounded by the lock timeout, not by the reader
    assert state(pg_rig) == before


def test_client_tools_older_than_the_server_are_refused_with_what_to_install(pg_rig, env, tmp_path):
    bindir = tmp_path / "oldbin"
    bindir.mkdir()
    for name in ("pg_dump", "pg_restore", "psql"):
        (bindir / name).write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) 12.22'\n")
        (bindir / name).chmod(0o755)
    before = state(pg_rig)
    res = run_cli("database", "rollback", "--last", "1", "--yes", "--accept-data-loss", env=dict(env, DOAI_PG_BIN_DIR=str(bindir)))
    assert res.code == 2, res.stdout + res.stderr
    assert "older than the server's 15" in res.stderr and "postgresql-client-15" in res.stderr
    assert state(pg_rig) == before


def test_the_app_keeps_writing_during_snapshot_rollback_and_restore(pg_rig, env):
    """A live database: devices log all the time. The rollback's checks and the snapshot's
    manifest must hold anyway, and no row written meanwhile to a table the rollback leaves
    alone is lost."""
    import psycopg

    rig = pg_rig
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        with psycopg.connect(**rig.dsn_kwargs(), autocommit=True) as c:
            while not stop.is_set():
                c.execute("INSERT INTO public.system_logs (device_id, level, message) "
                          "SELECT min(id), 'info', 'live' FROM public.devices")
                written.append(1)
                time.sleep(0.005)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        res = run_cli("database", "rollback", "--last", "1", "--yes", "--accept-data-loss", "-o", "json", env=env)
        snap = run_cli("database", "snapshot", "-o", "json", env=env)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    assert res.code == 0, res.stdout + res.stderr
    assert rig.applied_versions() == [V1, V2]
    assert rig.sql("SELECT count(*) FROM public.system_logs WHERE message = 'live'")[0][0] == len(written)
    manifest = snap.json()
    # the manifest's counts are those of the dump itself: a restore of it checks out exactly
    res = run_cli("database", "restore", manifest["file"], "--yes", env=env)
    assert res.code == 0, res.stdout + res.stderr
    assert rig.row_counts()["public.system_logs"] == manifest["row_counts"]["public.system_logs"]


def test_snapshots_are_listed_and_pruned_only_when_asked(pg_rig, env, state_dir):
    files = [run_cli("database", "snapshot", "-o", "json", env=env).json()["file"] for _ in range(3)]
    listed = run_cli("database", "snapshots", "-o", "json", env=env).json()
    assert [s["file"] for s in listed["snapshots"]] == files[::-1] and all(s["intact"] for s in listed["snapshots"])
    # deleting needs an explicit yes; without one nothing is deleted
    refused = run_cli("database", "snapshots", "--prune", "1", env=env)
    assert refused.code == 2 and all(Path(f).exists() for f in files)
    with open(files[0], "ab") as fh:  # a damaged one is left for a human, never pruned
        fh.write(b"x")
    pruned = run_cli("database", "snapshots", "--prune", "1", "--yes", "-o", "json", env=env).json()
    assert pruned["deleted"] == [files[1]]
    assert Path(files[2]).exists() and Path(files[0]).exists() and not Path(files[1]).exists()
    assert not Path(files[1]).with_suffix(".json").exists()


def test_the_connection_killed_mid_transaction_changes_nothing(pg_rig, env, state_dir):
    """The server drops the tool's connection while its transaction waits on the app's lock:
    nothing was committed, the run says so (exit 3), and a second run right after succeeds."""
    import psycopg

    before = state(pg_rig)

    def kill_when_waiting() -> None:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            rows = pg_rig.sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'doai-rollback' "
                              "AND wait_event_type = 'Lock'")
            if rows:
                pg_rig.sql("SELECT pg_terminate_backend(%s)", rows[0][0])
                return
            time.sleep(0.05)

    with psycopg.connect(**pg_rig.dsn_kwargs()) as holder:
        holder.execute("LOCK TABLE public.device_issues IN ACCESS SHARE MODE")
        killer = threading.Thread(target=kill_when_waiting, daemon=True)
        killer.start()
        res = run_cli("database", "rollback", "--last", "1", "--yes", "--accept-data-loss", "-o", "json", env=env)
        killer.join()
        holder.rollback()
    assert res.code == 3, res.stdout + res.stderr
    (step,) = res.json()["steps"]
    assert step["outcome"] == "failed" and "nothing was changed" in step["message"], step
    assert state(pg_rig) == before
    again = run_cli("database", "rollback", "--last", "1", "--yes", "--accept-data-loss", env=env)
    assert again.code == 0, again.stdout + again.stderr
    assert pg_rig.applied_versions() == [V1, V2]


def test_a_down_file_that_commits_is_refused_before_anything_runs(pg_rig, tmp_path, state_dir):
    rig = pg_rig
    down = f"supabase/rollbacks/{V3}_device_issues.sql"
    project = PgRig.project(tmp_path / "p", overrides={
        down: "DROP TABLE public.device_issues;\nCOMMIT;\nALTER TABLE public.devices DROP COLUMN last_issue_at;\n"})
    before = state(rig)
    res = run_cli("database", "rollback", "--last", "1", "--yes", "--accept-data-loss",
                  env=env_for(rig, project, state_dir))
    assert res.code == 2, res.stdout + res.stderr
    assert "controls the transaction" in res.stderr and "statement 2" in res.stderr
    assert state(rig) == before


def test_a_manifest_naming_other_schemas_is_refused(pg_rig, env):
    snap = run_cli("database", "snapshot", "-o", "json", env=env).json()
    mpath = Path(snap["file"]).with_suffix(".json")
    manifest = json.loads(mpath.read_text())
    manifest["schemas"] = ["public", "auth"]  # a restore drops what is in the manifest's schemas
    mpath.write_text(json.dumps(manifest))
    before = state(pg_rig)
    res = run_cli("database", "restore", snap["file"], "--yes", env=env)
    assert res.code == 2 and "not the application's" in res.stderr, res.stdout + res.stderr
    assert state(pg_rig) == before and pg_rig.sql("SELECT count(*) FROM auth.users")[0][0] == 1


# -- two controllers on one database (issue 18 item 4) ---------------------------------------------
# The run lock's key, computed here as the README states it (a bigint from "doai-rollback:database"):
# every controller, of any version, must agree on it.
RUN_LOCK_KEY = int.from_bytes(__import__("hashlib").sha256(b"doai-rollback:database").digest()[:8], "big", signed=True)
ROLLBACK = ("database", "rollback", "--last", "1", "--yes", "--accept-data-loss", "-o", "json")


def _snapshot_files(state_dir: Path) -> list[Path]:
    d = state_dir / "snapshots"
    return sorted(d.iterdir()) if d.exists() else []


def _gated_bin(rig, bindir: Path, gate: Path, *, after_dump: str = "", on_version: str = "") -> Path:
    """A pg_bin_dir whose pg_dump is the real one, run, then ``after_dump`` (shell), then held
    until ``gate`` exists (at most 120 s); ``pg_dump --version`` (the plan's preflight) runs
    ``on_version`` first; pg_restore and psql are the real ones."""
    bindir.mkdir(parents=True, exist_ok=True)
    for name in ("pg_restore", "psql"):
        (bindir / name).symlink_to(rig.pg_bin / name)
    real = rig.pg_bin / "pg_dump"
    (bindir / "pg_dump").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then {on_version}\n exec {real} --version; fi\n'
        f'{real} "$@" || exit $?\n'
        f"{after_dump}\n"
        "i=0\n"
        f'while [ ! -e {gate} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n')
    (bindir / "pg_dump").chmod(0o755)
    return bindir


def test_a_database_locked_by_another_controller_refuses_with_exit_5_naming_it(pg_rig, env, state_dir):
    """Another controller (its own state dir, so no local lock in common) holds the database's
    run lock: the rollback exits 5 before it plans, names the holder, changes nothing, leaves
    no snapshot, and is journaled as locked. A dry run takes no lock and is not blocked."""
    import psycopg

    before = state(pg_rig)
    other = "20261206T120000Z-a1b2c3"
    with psycopg.connect(**pg_rig.dsn_kwargs(), autocommit=True,
                         application_name=f"doai-rollback-lock {other} ci-job@runner7") as holder:
        holder.execute("SELECT pg_advisory_lock(%s::bigint)", (RUN_LOCK_KEY,))
        res = run_cli(*ROLLBACK, env=env)
        dry = run_cli("database", "rollback", "--last", "1", "--accept-data-loss", "--dry-run", env=env)
    assert res.code == 5, res.stdout + res.stderr
    doc = res.json()
    assert doc["exit_name"] == "LOCKED" and other in doc["message"] and "ci-job@runner7" in doc["message"]
    assert other in res.stderr
    assert not [s for s in doc["steps"] if s["outcome"] == "planned"]
    assert state(pg_rig) == before and _snapshot_files(state_dir) == []
    (rec,) = [r for r in journal(state_dir) if r["run_id"] == doc["run_id"]]
    assert rec["exit_status"] == 5 and rec["exit_name"] == "LOCKED" and other in rec["message"]
    assert dry.code == 0, dry.stdout + dry.stderr
    assert pg_rig.password not in res.stdout + res.stderr
    # The holder gone (its session ended), the same command goes through.
    again = run_cli(*ROLLBACK, env=env)
    assert again.code == 0, again.stdout + again.stderr
    assert pg_rig.applied_versions() == [V1, V2]
    held = pg_rig.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0]
    assert held == 0  # released at the end of the run


def test_two_controllers_started_together_one_wins_the_other_exits_5(pg_rig, project, tmp_path):
    """CI and a laptop, separate state dirs, the same rollback started at the same time: one
    rolls back, the other exits 5 naming it, changes nothing, leaves no snapshot, and its journal
    says 5. The winner's pg_dump is held at a gate (bounded) until the loser has ended, so the two
    runs overlap in every round whatever the machine's load."""
    import subprocess
    import sys

    from doai_ansible.schemas import output_problems

    for rnd in range(3):
        if rnd:
            pg_rig.reset()
        gate = tmp_path / f"gate{rnd}"
        bindir = _gated_bin(pg_rig, tmp_path / f"bin{rnd}", gate)
        dirs = [tmp_path / f"ci{rnd}", tmp_path / f"laptop{rnd}"]
        base = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")}
        procs = []
        for d, who in zip(dirs, ("ci-job", "alice@laptop"), strict=True):
            d.mkdir()
            e = dict(base, **env_for(pg_rig, project, d), DOAI_PG_BIN_DIR=str(bindir), DOAI_OPERATOR=who)
            procs.append(subprocess.Popen([sys.executable, "-m", "doai_ansible", *ROLLBACK], env=e, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL))
        try:
            deadline = time.monotonic() + 90
            while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            gate.touch()
        outs = [p.communicate(timeout=300) for p in procs]
        codes = [p.returncode for p in procs]
        for (out, _err), code in zip(outs, codes, strict=True):
            assert not output_problems(ROLLBACK, out, code), out
        assert sorted(codes) == [0, 5], (rnd, codes, [o[1][-800:] for o in outs])
        win, lose = (0, 1) if codes[0] == 0 else (1, 0)
        won, lost = json.loads(outs[win][0]), json.loads(outs[lose][0])
        assert won["run_id"] in lost["message"] and ("ci-job" if win == 0 else "alice@laptop") in lost["message"]
        assert pg_rig.applied_versions() == [V1, V2]  # the one rollback's result
        assert _snapshot_files(dirs[lose]) == []
        for d in dirs:
            listed = run_cli("database", "snapshots", "-o", "json",
                             env=dict(env_for(pg_rig, project, d))).json()["snapshots"]
            assert all(s["intact"] for s in listed), listed
        assert len(_snapshot_files(dirs[win])) == 2  # the dump and its manifest, nothing half made
        rec = journal(dirs[lose])[-1]
        assert rec["exit_status"] == 5 and rec["exit_name"] == "LOCKED"
        assert not [s for s in rec.get("steps", []) if s.get("outcome") == "planned"]
        assert journal(dirs[win])[-1]["exit_status"] == 0


def test_a_snapshot_whose_connection_breaks_after_the_dump_leaves_no_damaged_file(pg_rig, env, state_dir, tmp_path):
    """The server ends the tool's sessions right after pg_dump wrote its file (a network cut, a
    failover): `database snapshots` must never list a half-made snapshot of the tool's own as
    DAMAGED; the snapshot is either whole (dump and manifest) or not there at all."""
    gate = tmp_path / "open"
    gate.touch()
    kill = (f"{pg_rig.pg_bin / 'psql'} -qAtX -c \"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'doai-rollback' AND pid <> pg_backend_pid()\" >/dev/null")
    bindir = _gated_bin(pg_rig, tmp_path / "bin", gate, after_dump=kill)
    res = run_cli("database", "snapshot", "-o", "json", env=dict(env, DOAI_PG_BIN_DIR=str(bindir)))
    assert "internal error" not in res.stderr, res.stderr
    listed = run_cli("database", "snapshots", "-o", "json", env=env).json()["snapshots"]
    assert all(s["intact"] for s in listed), listed
    files = _snapshot_files(state_dir)
    if res.code == 0:
        assert [Path(s["file"]) for s in listed] == [Path(res.json()["file"])]
        assert len(files) == 2
    else:
        assert files == [] and "no snapshot was kept" in res.stderr


def test_a_run_whose_database_lock_was_lost_before_the_apply_changes_nothing(pg_rig, env, state_dir, tmp_path):
    """The run lock's session ends while the run plans (a server restart, a cut connection): the
    lock is free for another controller, so the apply refuses (exit 5) before any change."""
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_rig.port}:*:postgres:{pg_rig.password}\n")
    pgpass.chmod(0o600)
    end_lock = (f"PGPASSFILE={pgpass} {pg_rig.pg_bin / 'psql'} -h 127.0.0.1 -p {pg_rig.port} -U postgres -d doai "
                "-qAtX -c \"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'doai-rollback-lock %'\" >/dev/null")
    gate = tmp_path / "open"
    gate.touch()
    bindir = _gated_bin(pg_rig, tmp_path / "bin", gate, on_version=end_lock)
    before = state(pg_rig)
    res = run_cli(*ROLLBACK, env=dict(env, DOAI_PG_BIN_DIR=str(bindir)))
    assert res.code == 5, res.stdout + res.stderr
    assert "was lost" in res.json()["message"]
    assert state(pg_rig) == before and _snapshot_files(state_dir) == []
    assert journal(state_dir)[-1]["exit_name"] == "LOCKED"
