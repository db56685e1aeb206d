"""TLS to the database against the real PostgreSQL rig (issue 19, item 3): the session's server
gets a certificate from a CA made here (ssl switched on by ALTER SYSTEM + reload, off again
after); ``database snapshot`` then connects with psycopg AND runs pg_dump under
``sslmode=verify-full`` and ``channel_binding=require``, the CA given the usual libpq way
(PGSSLROOTCERT), and a wrong CA is refused before anything is written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from doai_ansible.sandbox.pg_rig import OS_USER
from tests import certs
from tests.conftest import run_cli
from tests.integration.test_database import env_for

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_rig(pg_rig, tmp_path):
    """The rig's server with ssl on (its key owned by the server's user, 0600); (rig, CA, wrong CA)."""
    import psycopg

    rig = pg_rig
    ca_key, ca = certs.ca("doai test CA")
    _, wrong = certs.ca("someone else's CA")
    key, cert = certs.signed(ca_key, ca, "127.0.0.1", ["127.0.0.1", "localhost"])
    server_dir = rig.run_dir / "tls"
    server_dir.mkdir(exist_ok=True)
    (server_dir / "server.crt").write_bytes(certs.pem(cert))
    fd = os.open(server_dir / "server.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(certs.pem(key))
    if os.geteuid() == 0:
        for p in (server_dir, server_dir / "server.crt", server_dir / "server.key"):
            shutil.chown(p, OS_USER, OS_USER)
    (tmp_path / "ca.crt").write_bytes(certs.pem(ca))
    (tmp_path / "wrong-ca.crt").write_bytes(certs.pem(wrong))
    with rig.connect("postgres") as conn:
        conn.execute(f"ALTER SYSTEM SET ssl_cert_file = '{server_dir / 'server.crt'}'")
        conn.execute(f"ALTER SYSTEM SET ssl_key_file = '{server_dir / 'server.key'}'")
        conn.execute("ALTER SYSTEM SET ssl = on")
        conn.execute("SELECT pg_reload_conf()")
    try:
        for _ in range(200):  # the postmaster takes the reload in its own time: wait for it, no timing asserted
            try:
                with psycopg.connect(**dict(rig.dsn_kwargs(), sslmode="require"), connect_timeout=5):
                    break
            except psycopg.OperationalError:
                import time
                time.sleep(0.05)
        else:
            pytest.fail("the rig's server did not take ssl = on")
        yield rig, tmp_path / "ca.crt", tmp_path / "wrong-ca.crt"
    finally:
        with rig.connect("postgres") as conn:
            for name in ("ssl", "ssl_cert_file", "ssl_key_file"):
                conn.execute(f"ALTER SYSTEM RESET {name}")
            conn.execute("SELECT pg_reload_conf()")


def _tls_env(rig, project: Path, state_dir: Path, ca: Path) -> dict[str, str]:
    env = env_for(rig, project, state_dir)
    env["DOAI_DATABASE_URL"] = rig.url.replace("sslmode=disable", "sslmode=verify-full&channel_binding=require")
    env["PGSSLROOTCERT"] = str(ca)  # the operator's libpq variable: psycopg and pg_dump alike
    env["HOME"] = str(state_dir)  # no ~/.postgresql/root.crt to fall back on
    return env


def test_verify_full_with_the_right_ca_snapshots_through_psycopg_and_pg_dump(tls_rig, tmp_path, state_dir):
    rig, ca, _ = tls_rig
    env = _tls_env(rig, rig.project_dir, state_dir, ca)
    res = run_cli("database", "snapshot", "-o", "json", env=env)
    assert res.code == 0, res.stdout + res.stderr
    assert list((state_dir / "snapshots").glob("*.dump")), res.stdout  # pg_dump connected and dumped
    status = run_cli("database", "status", env=env)
    assert status.code == 0 and "WARNING" not in status.stdout + status.stderr, status.stdout + status.stderr


def test_a_wrong_ca_is_refused_and_nothing_is_written(tls_rig, tmp_path, state_dir):
    rig, _, wrong = tls_rig
    env = _tls_env(rig, rig.project_dir, state_dir, wrong)
    res = run_cli("database", "snapshot", env=env)
    assert res.code != 0, res.stdout + res.stderr
    assert "certificate verify failed" in res.stdout + res.stderr
    snaps = state_dir / "snapshots"
    assert not snaps.exists() or not list(snaps.iterdir())
    assert rig.password not in res.stdout + res.stderr
