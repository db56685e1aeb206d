"""The shared state backend (state.backend: postgres) with a real PostgreSQL (the pg rig) and the
real PM2 backend rig: two controllers with separate state dirs and one DOAI_STATE_DATABASE_URL
share the run records and the part locks."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doai_ansible import engine, state
from doai_ansible.context import RunContext
from doai_ansible.parts import get as get_part
from doai_ansible.sandbox.pg_rig import PgRig
from doai_ansible.settings import load_settings
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def state_db(pg_server) -> Iterator[tuple[str, str]]:
    """A database of its own on the session's PostgreSQL for the shared store, and a role of its
    own whose password is a canary: (url, password). Dropped at the end."""
    name = "doai_state_" + secrets.token_hex(4)
    role = "state_" + secrets.token_hex(4)
    password = "canary-state-" + secrets.token_hex(8)
    pg_server.sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'", dbname="postgres")
    pg_server.sql(f"CREATE DATABASE {name} OWNER {role}", dbname="postgres")
    try:
        yield f"postgresql://{role}:{password}@127.0.0.1:{pg_server.port}/{name}?sslmode=disable", password
    finally:
        pg_server.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", dbname="postgres")
        pg_server.sql(f"DROP ROLE IF EXISTS {role}", dbname="postgres")


def controller(tmp_path: Path, name: str, url: str, **extra: str) -> dict[str, str]:
    """The environment of one controller: its own state dir, the shared store's URL."""
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    return {"DOAI_STATE_DIR": str(d), "DOAI_STATE_DATABASE_URL": url, "DOAI_STATE_BACKEND": "postgres", **extra}


def store_rows(pg_server, url: str) -> list[dict]:
    dbname = url.rsplit("/", 1)[1].split("?")[0]
    return [r[0] for r in pg_server.sql("SELECT record FROM doai_rollback.runs ORDER BY seq", dbname=dbname)]


def test_a_run_of_one_controller_is_listed_and_undone_by_another(sandbox, state_db, tmp_path):
    sb = sandbox
    url, _ = state_db
    a = controller(tmp_path, "ci", url, DOAI_INVENTORY=str(sb.inventory), DOAI_OPERATOR="ci-job")
    b = controller(tmp_path, "laptop", url, DOAI_INVENTORY=str(sb.inventory), DOAI_OPERATOR="alice@laptop")
    res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], "--reason", "deploy 42", "-o", "json",
                  env=a)
    assert res.code == 0, res.stderr
    run_id = res.json()["run_id"]
    assert sb.head() == sb.commits["v2"]
    assert not (tmp_path / "ci" / "journal.jsonl").exists()  # the record is in the shared store only

    hist = run_cli("history", "-o", "json", env=b)
    assert hist.code == 0, hist.stderr
    assert hist.json()[0]["run_id"] == run_id and hist.json()[0]["who"] == "ci-job"
    assert hist.json()[0]["log_dir"].startswith(str(tmp_path / "ci"))  # the logs stay where they were written

    undo = run_cli("undo", run_id[:18], "--yes", "-o", "json", env=b)
    assert undo.code == 0, undo.stderr + undo.stdout
    assert sb.head() == sb.commits["v3"]
    seen = run_cli("history", "-o", "json", env=a).json()
    assert [r["run_id"] for r in seen[:2]] == [undo.json()["run_id"], run_id]
    assert seen[0]["who"] == "alice@laptop"


def test_a_lock_held_by_another_controller_refuses_the_run(sandbox, state_db, tmp_path):
    """Controller A (this test, through the same code as the CLI) holds the backend's lock in the
    shared store; controller B, with a state dir of its own, exits 5 naming A and changes nothing."""
    sb = sandbox
    url, _ = state_db
    b = controller(tmp_path, "laptop", url, DOAI_INVENTORY=str(sb.inventory))
    settings_a = load_settings(env=controller(tmp_path, "ci", url))
    with state.lock(settings_a, "backend").held(owner="ci-job@runner", reason="deploy 42 failed",
                                                run_id="20261206T000000Z-aaaaaa"):
        res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], "-o", "json", env=b)
        assert res.code == 5, res.stderr + res.stdout
        assert "ci-job@runner" in res.json()["message"] and "deploy 42 failed" in res.json()["message"]
        assert sb.head() == sb.commits["v3"]
        st = run_cli("lock", "status", "--local", "-o", "json", env=b)
        assert st.code == 5 and st.json()["local"][0]["owner"] == "ci-job@runner"
        assert run_cli("lock", "release", "backend", env=b).code == 5  # a live holder: refused
    assert sb.head() == sb.commits["v3"]
    res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], env=b)
    assert res.code == 0, res.stderr
    assert run_cli("lock", "status", "--local", env=b).stdout.strip() == "no locks held"


_KILLED_HOLDER = """
import json, os, signal, sys
from doai_ansible import state
from doai_ansible.settings import load_settings
settings = load_settings()
with state.lock(settings, "dashboard").held(owner="bob@far", reason="killed mid-run",
                                            run_id="20261206T000000Z-bbbbbb"):
    if len(sys.argv) > 1:  # killed in its apply: its plan was saved before the first change
        state.save_plan(settings, "20261206T000000Z-bbbbbb", json.loads(sys.argv[1]))
    os.kill(os.getpid(), signal.SIGKILL)
"""

KILLED_PLAN = {"run_id": "20261206T000000Z-bbbbbb", "command": "dashboard rollback", "dry_run": False,
               "reason": "killed mid-run", "started": "2026-12-06T00:00:00Z", "parts": ["dashboard"],
               "who": "bob@far", "steps": [{"part": "dashboard", "target": "doai-dashboard", "from": "dpl_new",
                                            "to": "dpl_old", "changes": True, "outcome": "planned"}]}


def _killed_holder(pg_server, env: dict[str, str], dbname: str, plan: dict | None = None) -> None:
    """A controller that takes the dashboard's lock in the shared store (and saves ``plan`` as
    a run does before its first change) and is SIGKILLed holding it; returns once PostgreSQL
    has ended its session."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")}
    argv = [sys.executable, "-c", _KILLED_HOLDER] + ([json.dumps(plan)] if plan else [])
    proc = subprocess.run(argv, env=dict(full, **env), check=False,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    for _ in range(600):  # its server process notices the closed socket and ends, releasing the lock
        if not pg_server.sql("SELECT 1 FROM pg_stat_activity WHERE datname = %s AND application_name LIKE "
                             "'doai-rollback-state 20261206T000000Z-bbbbbb%%'", dbname, dbname="postgres"):
            return
        time.sleep(0.05)
    pytest.fail("the killed controller's session did not end")


def test_a_controller_that_dies_releases_its_lock_and_the_next_run_records_it(pg_server, state_db, tmp_path):
    """SIGKILLed holding the lock: PostgreSQL ends its session and the lock with it; its row
    says who it was (stale), `lock release` removes the row, and a run of another controller (no
    plan.json of that run on its disk) that takes the lock over records the dead run once, with
    the plan it had saved in the store: from and to, so `undo` can work on it."""
    url, _ = state_db
    dbname = url.rsplit("/", 1)[1].split("?")[0]
    a = controller(tmp_path, "ci", url)
    b = controller(tmp_path, "laptop", url)
    _killed_holder(pg_server, a, dbname)
    st = run_cli("lock", "status", "--local", "-o", "json", env=b)
    assert st.code == 0, st.stdout + st.stderr  # nobody holds it any more
    (row,) = st.json()["local"]
    assert row["owner"] == "bob@far" and row["stale"] and row["reason"] == "killed mid-run"
    rel = run_cli("lock", "release", "dashboard", env=b)
    assert rel.code == 0 and "released dashboard (held by bob@far)" in rel.stdout, rel.stdout + rel.stderr
    assert run_cli("lock", "status", "--local", env=b).stdout.strip() == "no locks held"

    _killed_holder(pg_server, a, dbname, KILLED_PLAN)
    settings = load_settings(env=b)
    ctx = RunContext.create(settings)
    for _ in range(2):
        with state.lock(settings, "dashboard").held(owner="me", reason=None, run_id=ctx.run_id,
                                                    on_takeover=lambda held: engine._killed_run(ctx, held)):
            pass
    recs = [r for r in state.journal(settings) if r["run_id"] == "20261206T000000Z-bbbbbb"]
    assert len(recs) == 1 and recs[0]["exit_name"] == "INTERRUPTED" and recs[0]["who"] == "bob@far"
    assert "KILLED DURING ITS APPLY" in recs[0]["message"]
    (step,) = recs[0]["steps"]
    assert (step["from"], step["to"], step["outcome"]) == ("dpl_new", "dpl_old", "not_restored")
    assert state.locks(settings) == []
    assert state.saved_plan(settings, "20261206T000000Z-bbbbbb") is None  # journaled: the plan is dropped
    by_part = run_cli("history", "--part", "dashboard", "-o", "json", env=b).json()
    assert [r["run_id"] for r in by_part] == ["20261206T000000Z-bbbbbb"]
    assert run_cli("history", "--part", "backend", "-o", "json", env=b).json() == []


def test_the_store_unreachable_stops_the_run_then_local_then_push_once(sandbox, state_db, tmp_path):
    sb = sandbox
    url, password = state_db
    closed = url.replace(url.split("@")[1].split("/")[0], f"127.0.0.1:{_closed_port()}")
    env = controller(tmp_path, "laptop", closed, DOAI_INVENTORY=str(sb.inventory))
    res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], "-o", "json", env=env)
    assert res.code == 7, res.stderr + res.stdout
    assert "--state local" in res.json()["hint"]
    assert sb.head() == sb.commits["v3"]  # nothing changed
    assert password not in res.stdout + res.stderr

    local = run_cli("--state", "local", "backend", "rollback", "--yes", "--to", sb.commits["v2"], "-o", "json",
                    env=env)
    assert local.code == 0, local.stderr
    assert sb.head() == sb.commits["v2"]
    journal = tmp_path / "laptop" / "journal.jsonl"
    ids = [json.loads(line)["run_id"] for line in journal.read_text().splitlines()]
    assert local.json()["run_id"] in ids

    env["DOAI_STATE_DATABASE_URL"] = url  # the store is back
    pushed = run_cli("state", "push", "-o", "json", env=env)
    assert pushed.code == 0, pushed.stderr
    assert pushed.json()["added"] == len(ids) and pushed.json()["already"] == 0
    again = run_cli("state", "push", env=env)
    assert again.code == 0 and "added 0 run record(s)" in again.stdout, again.stdout
    hist = run_cli("history", "-o", "json", env=env).json()
    assert [r["run_id"] for r in hist].count(local.json()["run_id"]) == 1


def _closed_port() -> int:
    from doai_ansible.sandbox.rig import free_port

    return free_port()  # bound, then closed: nothing listens there


def test_the_store_gone_mid_run_keeps_the_record_locally_and_says_so(pg_rig, state_db, tmp_path):
    """After the locks, before the record is written, the store goes away (its role may no longer
    log in, its sessions ended): the run's record is in the local journal, the run says so, and
    `state push` adds it."""
    url, _ = state_db
    role = url.split("//")[1].split(":")[0]
    project = PgRig.project(tmp_path / "project")
    env = controller(tmp_path, "ci", url, DOAI_DATABASE_URL=pg_rig.url, DOAI_DATABASE_PROJECT_DIR=str(project))
    ctx = RunContext.create(load_settings(env=env))
    part = get_part("database")
    job = engine.Job(part, part.request(last=1, accept_data_loss=True))

    def store_gone(run) -> None:
        pg_rig.sql(f"ALTER ROLE {role} NOLOGIN", dbname="postgres")
        pg_rig.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", role,
                   dbname="postgres")

    run = engine.run(ctx, [job], command="database rollback", reason="mid-run", before_close=store_gone)
    assert run.exit_status == 0, run.message
    journal = tmp_path / "ci" / "journal.jsonl"
    assert [w for w in run.warnings if "NOT in the shared store" in w and str(journal) in w
            and "state push" in w]
    (rec,) = [json.loads(line) for line in journal.read_text().splitlines()]
    assert rec["run_id"] == run.run_id

    pg_rig.sql(f"ALTER ROLE {role} LOGIN", dbname="postgres")
    pushed = run_cli("state", "push", "-o", "json", env=env)
    assert pushed.code == 0 and pushed.json()["added"] == 1, pushed.stderr + pushed.stdout
    assert [r["run_id"] for r in store_rows(pg_rig, url)] == [run.run_id]


def test_database_rollback_and_restore_leave_the_state_schema_alone(pg_rig, tmp_path):
    """The store in the Supabase project's own database: the database part's snapshot, rollback and
    restore never touch the schema doai_rollback."""
    project = PgRig.project(tmp_path / "project")
    env = {"DOAI_STATE_DIR": str(tmp_path / "st"), "DOAI_STATE_DATABASE_URL": pg_rig.url,
           "DOAI_DATABASE_URL": pg_rig.url, "DOAI_DATABASE_PROJECT_DIR": str(project)}
    (tmp_path / "st").mkdir()
    rb = run_cli("--state", "postgres", "database", "rollback", "--last", "1", "--accept-data-loss", "--yes",
                 "-o", "json", env=env)
    assert rb.code == 0, rb.stderr + rb.stdout
    before = pg_rig.sql("SELECT run_id, record FROM doai_rollback.runs ORDER BY seq")
    assert [r[0] for r in before] == [rb.json()["run_id"]]
    snaps = sorted((tmp_path / "st" / "snapshots").glob("*.dump"))
    assert snaps
    manifest = json.loads(snaps[0].with_suffix(".json").read_text())
    assert "doai_rollback" not in manifest["schemas"]
    rs = run_cli("--state", "postgres", "database", "restore", str(snaps[0]), "--yes", "-o", "json", env=env)
    assert rs.code == 0, rs.stderr + rs.stdout
    assert all("doai_rollback" not in (s.get("at_risk") or "") for s in rs.json()["steps"])
    after = pg_rig.sql("SELECT run_id, record FROM doai_rollback.runs ORDER BY seq")
    assert after[:1] == before and [r[0] for r in after[1:]] == [rs.json()["run_id"]]
    assert pg_rig.sql("SELECT value FROM doai_rollback.meta WHERE key = 'schema_version'") == [
        (str(state.SCHEMA_VERSION),)]


def test_the_store_password_never_leaks(sandbox, pg_server, state_db, tmp_path):
    """The URL's password (a canary): not in stdout/stderr of any command, the journal, the run
    logs or ansible-runner's artifacts."""
    sb = sandbox
    url, password = state_db
    env = controller(tmp_path, "ci", url, DOAI_INVENTORY=str(sb.inventory), DOAI_KEEP_ARTIFACTS="1")
    bad = dict(env, DOAI_STATE_DATABASE_URL=url.replace(":canary", ":wrong-canary"))
    outputs = [
        run_cli("-v", "backend", "rollback", "--yes", "--to", sb.commits["v2"], "-o", "json", env=env),
        run_cli("history", env=env), run_cli("lock", "status", "--local", env=env),
        run_cli("history", env=bad),  # a wrong password: the error must not echo the URL's
        run_cli("--state", "local", "backend", "rollback", "--yes", "--to", sb.commits["v3"], env=env),
        run_cli("state", "push", env=env),
    ]
    assert outputs[0].code == 0, outputs[0].stderr
    assert outputs[3].code == 7 and "--state local" in outputs[3].stderr
    for res in outputs:
        assert password not in res.stdout + res.stderr
    files = [p for p in (tmp_path / "ci").rglob("*") if p.is_file()]
    assert any(p.name == "command" for p in files)  # ansible-runner's record of its environment
    for p in files:
        assert password.encode() not in p.read_bytes(), p
    rows = store_rows(pg_server, url)
    assert len(rows) == 2 and password not in json.dumps(rows)


def test_a_store_of_a_newer_schema_is_refused(pg_server, state_db, tmp_path):
    """The tool made the tables and recorded their version; a store another, newer tool migrated
    further is refused (exit 2, saying so) before any change, and left as it is."""
    url, _ = state_db
    dbname = url.rsplit("/", 1)[1].split("?")[0]
    env = controller(tmp_path, "ci", url)
    assert run_cli("history", env=env).code == 0  # creates the tables
    assert pg_server.sql("SELECT value FROM doai_rollback.meta WHERE key = 'schema_version'", dbname=dbname) == [
        (str(state.SCHEMA_VERSION),)]
    newer = state.SCHEMA_VERSION + 1
    pg_server.sql("UPDATE doai_rollback.meta SET value = %s WHERE key = 'schema_version'", str(newer), dbname=dbname)
    for args in (("history",), ("lock", "status", "--local", "-o", "json"), ("state", "push")):
        res = run_cli(*args, env=env)
        assert res.code == 2, (args, res.stdout, res.stderr)
        assert f"version {newer}, newer than this tool knows" in res.stderr
    assert pg_server.sql("SELECT value FROM doai_rollback.meta WHERE key = 'schema_version'", dbname=dbname) == [
        (str(newer),)]


def test_two_controllers_started_together_never_both_change_the_backend(sandbox, state_db, tmp_path):
    """Two `backend rollback --yes` with separate state dirs and one shared store, started
    together: one rolls back; the other either exits 5 naming the first and changes nothing, or
    (when it started after the first ended) finds nothing to do. Never two changes."""
    sb = sandbox
    url, _ = state_db
    full = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")}
    procs = []
    for name in ("ci", "laptop"):
        env = dict(full, **controller(tmp_path, name, url, DOAI_INVENTORY=str(sb.inventory), DOAI_OPERATOR=name))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "doai_ansible", "backend", "rollback", "--yes", "--to", sb.commits["v2"], "-o",
             "json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True))
    outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    docs = [json.loads(out) for _, out, _ in outs]
    assert sorted(code for code, _, _ in outs) in ([0, 0], [0, 5]), outs
    changed = [d for d in docs if any(s["outcome"] == "succeeded" for s in d["steps"])]
    assert len(changed) == 1
    for i, ((code, _, _), doc) in enumerate(zip(outs, docs, strict=True)):
        if code == 5:  # it names the winner (the other controller's operator)
            winner = ("ci", "laptop")[1 - i]
            assert f"another rollback of backend is running: {winner} (pid" in doc["message"], doc["message"]
            assert not doc["steps"]
    assert sb.head() == sb.commits["v2"]
    hist = run_cli("history", "-o", "json", env=controller(tmp_path, "ci", url)).json()
    assert sorted(r["run_id"] for r in hist) == sorted(d["run_id"] for d in docs)


def test_a_store_of_an_older_schema_is_migrated(pg_server, state_db, tmp_path):
    """A store made by the tool's first version (schema 1) is migrated to this one's on first
    use, its records kept."""
    url, _ = state_db
    dbname = url.rsplit("/", 1)[1].split("?")[0]
    role = url.split("//")[1].split(":")[0]
    pg_server.sql(f"CREATE SCHEMA doai_rollback AUTHORIZATION {role}", dbname=dbname)
    pg_server.sql(state.MIGRATIONS[0], dbname=dbname)
    pg_server.sql("INSERT INTO doai_rollback.meta VALUES ('schema_version', '1'); INSERT INTO doai_rollback.runs "
                  "(run_id, record) VALUES ('20261206T000000Z-cccccc', '{\"run_id\": \"20261206T000000Z-cccccc\", "
                  "\"command\": \"backend rollback\", \"started\": \"x\", \"exit_name\": \"OK\", "
                  "\"steps\": []}')", dbname=dbname)
    pg_server.sql(f"GRANT ALL ON ALL TABLES IN SCHEMA doai_rollback TO {role}; "
                  f"GRANT ALL ON ALL SEQUENCES IN SCHEMA doai_rollback TO {role}", dbname=dbname)
    res = run_cli("history", env=controller(tmp_path, "ci", url))
    assert res.code == 0 and "20261206T000000Z-cccccc" in res.stdout, res.stdout + res.stderr
    assert pg_server.sql("SELECT value FROM doai_rollback.meta WHERE key = 'schema_version'", dbname=dbname) == [
        (str(state.SCHEMA_VERSION),)]
    assert pg_server.sql("SELECT to_regclass('doai_rollback.plans') IS NOT NULL", dbname=dbname) == [(True,)]


def test_a_lock_lost_before_the_first_change_refuses_the_run(pg_rig, state_db, tmp_path):
    """The session holding the run's lock in the shared store ends after the plan was confirmed
    (a store restart, a cut connection: the lock is then free for another controller): the run
    is refused before its first change (exit 5), the database untouched."""
    url, _ = state_db
    project = PgRig.project(tmp_path / "project")
    env = controller(tmp_path, "ci", url, DOAI_DATABASE_URL=pg_rig.url, DOAI_DATABASE_PROJECT_DIR=str(project))
    ctx = RunContext.create(load_settings(env=env))
    part = get_part("database")
    job = engine.Job(part, part.request(last=1, accept_data_loss=True))
    before = pg_rig.applied_versions()

    def lock_session_ends(run) -> None:
        ended = pg_rig.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
                           f"doai-rollback-state {ctx.run_id}%", dbname="postgres")
        assert ended == [(True,)]

    run = engine.run(ctx, [job], command="database rollback", reason="lost", confirm=lambda plan: True,
                     before_apply=lock_session_ends)
    assert run.exit_status == 5, run.message
    assert "was lost" in run.message and "nothing was changed" in run.message
    assert pg_rig.applied_versions() == before
    assert [r["run_id"] for r in state.journal(ctx.settings)] == [run.run_id]


def test_the_store_connection_notices_a_vanished_server(state_db, tmp_path):
    """TCP keepalives on every connection to the store: a server that vanishes without closing the
    connection (a cut network) is noticed in about a minute, so releasing a lock never hangs."""
    url, password = state_db
    conn = state.store(load_settings(env=controller(tmp_path, "ci", url))).connect()
    try:
        params = conn.info.get_parameters()
    finally:
        conn.close()
    assert (params["keepalives"], params["keepalives_idle"], params["keepalives_count"]) == ("1", "30", "3")
    assert password not in json.dumps(params)
