"""The database stand-in itself (doai_ansible/sandbox/pg_rig.py): what the database part's tests
rely on. Real PostgreSQL, real Supabase CLI; nothing mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from doai_ansible.sandbox.rig import _running
from doai_ansible.sandbox.pg_rig import HISTORY_TABLE, SUPABASE_SHAPE, PgRig, parse_migration_list

pytestmark = pytest.mark.integration

VERSIONS = ["20261101000000", "20261110000000", "20261120000000"]


def test_initial_state(pg_rig) -> None:
    rig = pg_rig
    assert rig.url == rig.url_without_password.replace("postgres@", f"postgres:{rig.password}@")
    assert rig.url_without_password == f"postgresql://postgres@127.0.0.1:{rig.port}/doai?sslmode=disable"
    assert rig.tables() == ["public.device_issues", "public.devices", "public.system_logs"]
    assert rig.row_counts(("public", "auth", "storage")) == {
        "auth.users": 1, "storage.objects": 0,
        "public.devices": 3, "public.system_logs": 5, "public.device_issues": 2,
    }
    assert rig.applied_versions() == VERSIONS == sorted(PgRig.migrations())
    assert sorted(PgRig.down_files()) == VERSIONS
    history = rig.history()
    assert [h["name"] for h in history] == ["devices", "system_logs", "device_issues"]
    assert all(h["statements"] for h in history)  # the CLI keeps the statements it ran
    assert [c[0] for c in rig.catalog_fingerprint()["tables"]["public.devices"]["columns"]][-1] == "last_issue_at"
    roles = dict(rig.sql("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)",
                         ["anon", "authenticated", "service_role"]))
    assert roles == {"anon": False, "authenticated": False, "service_role": False}
    grants = rig.grants_on_public()
    for role in ("anon", "authenticated", "service_role"):
        assert f"{role}=U/" in grants["acl"]
    assert {d[1] for d in grants["default_privileges"]} == {"r", "S", "f"}
    acl = rig.catalog_fingerprint()["tables"]["public.system_logs"]["acl"]
    assert "anon=arwdDxt/postgres" in acl and "service_role=arwdDxt/postgres" in acl
    assert rig.sql("SELECT current_setting('listen_addresses'), host(inet_server_addr())") == [("127.0.0.1", "127.0.0.1")]


def test_password_auth_on_tcp(pg_rig) -> None:
    kw = pg_rig.dsn_kwargs()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**{**kw, "password": "wrong"}, connect_timeout=5)
    env_pw = os.environ.pop("PGPASSWORD", None)
    try:
        with pytest.raises(psycopg.OperationalError, match="no password supplied|password authentication"):
            psycopg.connect(**{**kw, "password": ""}, connect_timeout=5)
    finally:
        if env_pw is not None:
            os.environ["PGPASSWORD"] = env_pw
    with psycopg.connect(pg_rig.url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_cli_judge_sees_every_fixture_migration(pg_rig) -> None:
    assert pg_rig.supabase_applied() == set(VERSIONS)
    text = pg_rig.supabase("migration", "list")
    assert text.returncode == 0, text.stderr
    assert parse_migration_list(text.stdout) == set(VERSIONS)
    # The CLI's own repair agrees with the history table.
    proc = pg_rig.supabase("migration", "repair", "--status", "reverted", VERSIONS[-1])
    assert proc.returncode == 0, proc.stderr
    assert pg_rig.applied_versions() == VERSIONS[:2]
    assert pg_rig.supabase_applied() == set(VERSIONS[:2])


def test_supabase_gets_no_password_on_its_command_line(pg_rig) -> None:
    argv = pg_rig.supabase_argv("migration", "list")
    assert pg_rig.password not in " ".join(argv)
    assert argv[-2:] == ["--db-url", pg_rig.url_without_password]
    assert pg_rig.supabase_env()["PGPASSWORD"] == pg_rig.password


def test_reset_puts_everything_back(pg_rig) -> None:
    rig = pg_rig
    sums, fingerprint, history = rig.table_checksums(), rig.catalog_fingerprint(), rig.history()
    grants = rig.grants_on_public()
    rig.sql("DROP TABLE public.device_issues")
    rig.sql("ALTER TABLE public.devices DROP COLUMN last_issue_at")
    rig.sql(f"DELETE FROM {HISTORY_TABLE} WHERE version = %s", VERSIONS[-1])
    rig.sql("REVOKE USAGE ON SCHEMA public FROM anon")
    rig.fill_system_logs(1000)
    (rig.project_dir / "supabase" / "rollbacks" / f"{VERSIONS[0]}_devices.sql").unlink()
    assert rig.table_checksums() != sums and rig.catalog_fingerprint() != fingerprint
    t0 = time.monotonic()
    rig.reset()
    took = time.monotonic() - t0
    assert rig.table_checksums() == sums
    assert rig.catalog_fingerprint() == fingerprint
    assert rig.history() == history
    assert rig.grants_on_public() == grants
    assert sorted(PgRig.down_files(rig.project_dir)) == VERSIONS
    assert took < 3, took  # ~0.2 s here


def test_checksums_stable_across_resets(pg_rig) -> None:
    first = pg_rig.table_checksums(("public", "auth", "storage"))
    pg_rig.reset()
    assert pg_rig.table_checksums(("public", "auth", "storage")) == first
    assert len(first) == 5 and all(len(v) == 32 for v in first.values())


def test_fill_system_logs(pg_rig) -> None:
    before = pg_rig.table_checksums()
    pg_rig.fill_system_logs(20_000)
    assert pg_rig.row_counts()["public.system_logs"] == 20_005
    after = pg_rig.table_checksums()
    assert after["public.system_logs"] != before["public.system_logs"]
    assert after["public.devices"] == before["public.devices"]


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_down_files_undo_their_migrations_exactly(pg_rig, tmp_path: Path, keep: int) -> None:
    """The down files of the migrations after the first ``keep``, run newest first, give the
    schema a database gets from only those ``keep`` migrations (built anew by the CLI here)."""
    rig = pg_rig
    downs = PgRig.down_files()
    with rig.connect() as conn, conn.transaction():
        for version in reversed(VERSIONS[keep:]):
            conn.execute(downs[version].read_text())
    expected_db = f"doai_upto_{keep}"
    rig.sql(f"DROP DATABASE IF EXISTS {expected_db}", dbname="postgres")
    rig.sql(f"CREATE DATABASE {expected_db} TEMPLATE template0", dbname="postgres")
    try:
        with rig.connect(expected_db) as conn:
            conn.execute(SUPABASE_SHAPE)
        project = PgRig.project(tmp_path / "p", overrides={
            f"supabase/migrations/{p.name}": None for v, p in PgRig.migrations().items() if v in VERSIONS[keep:]})
        proc = rig.supabase("migration", "up", project=project, db=expected_db)
        assert proc.returncode == 0, proc.stderr
        assert rig.catalog_fingerprint() == rig.catalog_fingerprint(dbname=expected_db)
        assert rig.grants_on_public() == rig.grants_on_public(dbname=expected_db)
        kept_tables = rig.tables(dbname=expected_db)
        assert {t: s for t, s in rig.table_checksums().items() if t in kept_tables} == \
            rig.table_checksums(dbname=expected_db)
    finally:
        rig.sql(f"DROP DATABASE IF EXISTS {expected_db} WITH (FORCE)", dbname="postgres")


def test_variant_down_file_fails_half_way(pg_rig, tmp_path: Path) -> None:
    rig = pg_rig
    project = PgRig.project(tmp_path / "p", variant="down-fails")
    down = PgRig.down_files(project)[VERSIONS[-1]].read_text()
    fingerprint, sums = rig.catalog_fingerprint(), rig.table_checksums()
    with pytest.raises(psycopg.errors.UndefinedColumn), rig.connect() as conn, conn.transaction():
        conn.execute(down)
    assert rig.catalog_fingerprint() == fingerprint and rig.table_checksums() == sums
    # Run statement by statement without a transaction, it leaves the first one done.
    with rig.connect() as conn:
        conn.execute("DROP TABLE public.device_issues")
    assert "public.device_issues" not in rig.tables()


def test_variant_migration_without_down_file(pg_rig, tmp_path: Path) -> None:
    rig = pg_rig
    project = PgRig.project(tmp_path / "p", variant="no-down")
    extra = "20261125000000"
    assert sorted(PgRig.migrations(project)) == [*VERSIONS, extra]
    assert extra not in PgRig.down_files(project)
    assert rig.supabase_applied(project=project) == set(VERSIONS)  # not applied in the initial state
    proc = rig.supabase("migration", "up", project=project)
    assert proc.returncode == 0, proc.stderr
    assert rig.applied_versions() == [*VERSIONS, extra]
    assert rig.supabase_applied(project=project) == {*VERSIONS, extra}
    assert rig.row_counts()["public.system_logs"] == 4  # the debug row is gone for good
    overridden = PgRig.project(tmp_path / "q", overrides={"supabase/rollbacks/20261101000000_devices.sql": None})
    assert sorted(PgRig.down_files(overridden)) == VERSIONS[1:]


def _cmdlines(pids: list[int]) -> list[bytes]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            pass
    return out


def test_password_on_no_command_line(pg_rig) -> None:
    rig = pg_rig
    pids = rig.processes()
    assert len(pids) > 3 and pids[0] == rig.pid  # postmaster, checkpointer, walwriter, ...
    for cmdline in _cmdlines(pids):
        assert rig.password.encode() not in cmdline
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert rig.password not in ps
    assert f"-D {rig.data_dir}" in ps.replace("\0", " ") or str(rig.data_dir) in ps
    assert not (rig.run_dir / "pwfile").exists()
    assert (rig.workdir / "password").stat().st_mode & 0o077 == 0
    assert rig.password not in (rig.workdir / "pg-rig.json").read_text()
    if os.geteuid() == 0:
        assert Path(f"/proc/{rig.pid}").stat().st_uid != 0  # PostgreSQL does not run as root


def test_cli_start_describe_stop(tmp_path: Path) -> None:
    """``python -m doai_ansible.sandbox.pg_rig``: a second cluster of its own, stopped by PID."""
    workdir = tmp_path / "w"

    def run(*args: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "doai_ansible.sandbox.pg_rig", *args, "--workdir", str(workdir)],
                              capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    started = run("start")
    try:
        password = (workdir / "password").read_text().strip()
        assert password not in json.dumps(started)
        assert started["timings"]["start_s"] < 30
        described = run("describe")
        assert described["pid"] == started["pid"] and described["url"] == started["url"]
        rig = PgRig.load(workdir)
        assert rig.applied_versions() == VERSIONS
    finally:
        run("stop")
    assert not PgRig.load(workdir).running()
    assert not _running(started["pid"])  # gone, or a zombie until init reaps it
    assert not Path(started["run_dir"]).exists()
