"""The database part without a server: the URL (password kept out of everything), SQL
statement splitting, what a down file puts at risk, the settings."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from doai_ansible.db import migrations as mig
from doai_ansible.db.conn import DbUrl, tool_major
from doai_ansible.db.sqlsplit import split
from doai_ansible.errors import ConfigError, UsageError, ValidationError
from doai_ansible.parts.database import DatabasePart
from doai_ansible.settings import Secret, load_settings

PW = "s3cr:et/p@ss word"


def url(text: str) -> DbUrl:
    return DbUrl.parse(Secret(text))


def test_url_is_parsed_and_the_password_never_shown():
    u = url("postgresql://postgres:s3cr%3Aet%2Fp%40ss%20word@db.example.supabase.co:5432/postgres?sslmode=require")
    assert (u.host, u.port, u.user, u.dbname) == ("db.example.supabase.co", 5432, "postgres", "postgres")
    assert u.password.reveal() == PW
    assert PW not in repr(u) and PW not in u.label and PW not in u.masked()
    assert u.scrub(f"FATAL: password {PW} and s3cr%3Aet%2Fp%40ss%20word") == "FATAL: password *** and ***"
    assert u.connect_kwargs()["sslmode"] == "require"


def test_transaction_pooler_is_refused_with_what_to_use():
    with pytest.raises(ConfigError) as exc:
        url("postgresql://postgres.abc:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres")
    assert "transaction pooler" in str(exc.value) and "session pooler" in str(exc.value)
    assert "pw" not in str(exc.value).replace("pooler", "")


@pytest.mark.parametrize("bad", ["", "mysql://x@y/z", "postgresql:///nohost", "postgresql://u:p@h:99999/db",
                                 "postgresql://u:p@h/db?host=/tmp/evil"])
def test_bad_urls_are_configuration_errors(bad):
    with pytest.raises(ConfigError):
        DbUrl.parse(Secret(bad) if bad else None)


def test_client_tools_get_the_password_in_a_private_file_only(tmp_path):
    u = url("postgresql://postgres:pw%3Awith%5Ccolon@127.0.0.1:5432/doai")  # pw:with\colon
    os.environ["DOAI_DATABASE_URL"] = "postgresql://postgres:leak@x/y"
    try:
        with u.client_env() as env:
            path = Path(env["PGPASSFILE"])
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert path.read_text() == "127.0.0.1:5432:doai:postgres:pw\\:with\\\\colon\n"
            assert "DOAI_DATABASE_URL" not in env and "PGPASSWORD" not in env
            assert not any("pw:with" in v for k, v in env.items())
        assert not path.exists() and not path.parent.exists()
    finally:
        del os.environ["DOAI_DATABASE_URL"]


def test_tool_version_is_read(tmp_path):
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)'\n")
    fake.chmod(0o755)
    assert tool_major(str(fake)) == 15


# -- statements ------------------------------------------------------------------------------------
def test_split_keeps_strings_bodies_and_comments_together():
    sql = """-- header
CREATE TABLE a (x text DEFAULT ';');
/* a ; comment */ INSERT INTO a VALUES ('it''s; fine');
CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$;

DROP TABLE "odd;name";
-- trailing"""
    sts = split(sql)
    assert [s.index for s in sts] == [1, 2, 3, 4]
    assert sts[0].sql == "CREATE TABLE a (x text DEFAULT ';')" and sts[0].line == 2
    assert sts[1].sql == "INSERT INTO a VALUES ('it''s; fine')"
    assert sts[2].sql.endswith("END $body$ LANGUAGE plpgsql") or "$body$ BEGIN RETURN 1; END $body$" in sts[2].sql
    assert sts[3].sql == 'DROP TABLE "odd;name"' and sts[3].line == 6


# -- what a down file puts at risk ------------------------------------------------------------------
def test_at_risk_from_down_files(tmp_path):
    mdir, rdir = tmp_path / "migrations", tmp_path / "rollbacks"
    mdir.mkdir()
    rdir.mkdir()
    (mdir / "20261120000000_device_issues.sql").write_text(
        "CREATE TABLE device_issues (id int);\nALTER TABLE devices ADD COLUMN last_issue_at timestamptz;\n")
    (rdir / "20261120000000_device_issues.sql").write_text(
        "DROP TABLE IF EXISTS public.device_issues, \"Logs\" CASCADE;\nTRUNCATE TABLE ONLY system_logs;\n"
        "ALTER TABLE devices DROP COLUMN IF EXISTS last_issue_at;\nDELETE FROM audit.events WHERE true;\n")
    (mdir / "20261125000000_no_down.sql").write_text("SELECT 1;\n")
    (mdir / "README.md").write_text("not a migration")
    found = mig.on_disk(mdir, rdir)
    assert sorted(found) == ["20261120000000", "20261125000000"]
    assert found["20261125000000"].down is None
    m = found["20261120000000"]
    assert m.creates() == ["public.device_issues"]
    assert m.touches() == ["public.device_issues", "public.devices"]
    assert [(r["table"], r["what"]) for r in m.at_risk()] == [
        ("public.device_issues", "dropped"), ("public.Logs", "dropped"), ("public.system_logs", "truncated"),
        ("public.devices", "column last_issue_at dropped"), ("audit.events", "rows deleted")]


# -- the request and the settings ----------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "err"), [
    ({}, UsageError), ({"to": "2026", "last": 1}, UsageError), ({"to": "20261120000000; DROP"}, ValidationError),
    ({"to": "../../etc"}, ValidationError), ({"last": 0}, ValidationError), ({"last": 1000}, ValidationError),
])
def test_bad_rollback_requests_are_refused_before_any_connection(kwargs, err):
    with pytest.raises(err):
        DatabasePart().request(**kwargs)


def test_database_settings(tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text("database:\n  project_dir: app\n  schemas: [public, api]\n  lock_timeout: 2\n")
    s = load_settings(cfg, state_dir=tmp_path / "st", env={"DOAI_DATABASE_URL": "postgresql://u:p@h/d"})
    assert s.database.project_dir == tmp_path / "app" and s.database.schemas == ("public", "api")
    assert s.database.migrations_path == tmp_path / "app" / "supabase" / "migrations"
    assert s.snapshot_dir == tmp_path / "st" / "snapshots" and s.database.lock_timeout_s == 2
    assert "p@h" not in repr(s)
    for bad, key in (("database:\n  url: postgresql://u:p@h/d\n", "database.url"),
                     ("database:\n  schemas: [auth]\n", "database.schemas"),
                     ("database:\n  migrations_dir: ../x\n", "database.migrations_dir"),
                     ("database:\n  nope: 1\n", "database.nope")):
        cfg.write_text(bad)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_settings(cfg, state_dir=tmp_path / "st", env={})


@pytest.mark.parametrize("query", ["sslmode=bogus", "connect_timeout=abc", "connect_timeout=0",
                                   "target_session_attrs=x"])
def test_bad_url_parameter_values_are_configuration_errors(query):
    with pytest.raises(ConfigError, match="DOAI_DATABASE_URL"):
        url(f"postgresql://u:p@h:5432/d?{query}")


def test_url_parameters_reach_the_client_tools_too(tmp_path):
    (tmp_path / "ca.crt").write_text("a CA")
    u = url(f"postgresql://u:p@h:5432/d?sslmode=verify-full&options=-c%20search_path%3Dapp&connect_timeout=3"
            f"&sslrootcert={tmp_path}/ca.crt")
    with u.client_env() as env:
        assert env["PGSSLMODE"] == "verify-full" and env["PGOPTIONS"] == "-c search_path=app"
        assert env["PGSSLROOTCERT"] == f"{tmp_path}/ca.crt"
        assert env["PGCONNECT_TIMEOUT"] == "3"


@pytest.mark.parametrize("value", ["nan", "inf", "0.0001", "1e12", "-1"])
def test_database_timeouts_out_of_range_are_refused(tmp_path, value):
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"database:\n  lock_timeout: {value}\n")
    with pytest.raises(ConfigError, match="database.lock_timeout"):
        load_settings(cfg, state_dir=tmp_path / "st", env={})


def test_the_run_lock_holder_name_fits_postgres_and_says_who():
    """The run lock's connection is named after its run and operator (``application_name``,
    which PostgreSQL cuts at 63 bytes): a DOAI_OPERATOR without a host gets this host."""
    import socket

    from doai_ansible.parts.database import ADVISORY_KEY, HOLDER_PREFIX, _key_parts, holder_name

    run_id = "20261206T120000Z-a1b2c3"
    name = holder_name(run_id, "ci-job")
    assert name.startswith(f"{HOLDER_PREFIX} {run_id} ci-job@") and len(name.encode()) <= 63
    assert socket.gethostname()[:10] in name or len(name.encode()) == 63
    long = holder_name(run_id, "a-very-long-operator-name@" + "h" * 80 + "\n\u00e9")
    assert len(long.encode()) <= 63 and long.isprintable() and long.isascii() and run_id in long
    assert holder_name(run_id, "alice@laptop").endswith(" alice@laptop")
    # pg_locks shows a bigint key as its high and low 32 bits (classid, objid)
    hi, lo = _key_parts(ADVISORY_KEY)
    assert ((hi << 32) | lo) == ADVISORY_KEY & 0xFFFFFFFFFFFFFFFF and 0 <= hi < 2**32 and 0 <= lo < 2**32
