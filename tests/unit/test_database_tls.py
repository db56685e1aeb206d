"""TLS to the database (issue 19, item 3), computed without a connection: one place decides
the effective settings, psycopg and every client tool get exactly those, a remote host gets a
verified certificate by default, and weakening it is refused or said loudly."""

from __future__ import annotations

import os

import pytest

from doai_ansible.db.conn import DbUrl, run_tool, tls_params
from doai_ansible.errors import ConfigError
from doai_ansible.settings import Secret

REMOTE = "db.example.org"  # a documentation name: nothing connects in these tests


@pytest.fixture
def certs(tmp_path) -> dict[str, str]:
    paths = {}
    for name in ("ca.crt", "client.crt", "client.key", "crl.pem"):
        p = tmp_path / name
        p.write_text(f"-- {name} --\n")
        paths[name] = str(p)
    os.chmod(paths["client.key"], 0o600)
    return paths


def parse(url: str) -> DbUrl:
    return DbUrl.parse(Secret(url))


@pytest.fixture(autouse=True)
def _no_operator_tls(monkeypatch):
    for var in ("PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLCRL", "PGCHANNELBINDING",
                "PGSSLNEGOTIATION", "DOAI_DATABASE_INSECURE_TLS"):
        monkeypatch.delenv(var, raising=False)


def test_a_remote_host_without_sslmode_gets_verify_full_in_psycopg_and_the_tools(certs):
    u = parse(f"postgresql://postgres:pw@{REMOTE}:5432/postgres?sslrootcert={certs['ca.crt']}")
    kw = u.connect_kwargs()
    assert (kw["sslmode"], kw["sslrootcert"]) == ("verify-full", certs["ca.crt"])
    with u.client_env() as env:
        assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", certs["ca.crt"])
    assert u.tls.warning is None


def test_a_loopback_host_keeps_what_the_url_says():
    assert tls_params("127.0.0.1", {}, environ={}).params == ()  # libpq's own default, as before
    assert dict(tls_params("localhost", {"sslmode": "disable"}, environ={}).params) == {"sslmode": "disable"}
    assert tls_params("::1", {"sslmode": "prefer"}, environ={}).warning is None


def test_verify_full_without_a_ca_is_refused_with_where_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt
    with pytest.raises(ConfigError) as exc:
        parse(f"postgresql://postgres:pw@{REMOTE}:5432/postgres")
    assert "sslrootcert" in str(exc.value) and "Supabase" in str(exc.value.hint)


def test_client_certificates_and_channel_binding_reach_every_tool(certs):
    u = parse(f"postgresql://postgres:pw@{REMOTE}:5432/postgres?sslmode=verify-full&sslrootcert={certs['ca.crt']}"
              f"&sslcert={certs['client.crt']}&sslkey={certs['client.key']}&sslcrl={certs['crl.pem']}"
              "&channel_binding=require")
    want = {"sslmode": "verify-full", "sslrootcert": certs["ca.crt"], "sslcert": certs["client.crt"],
            "sslkey": certs["client.key"], "sslcrl": certs["crl.pem"], "channel_binding": "require"}
    kw = u.connect_kwargs()
    assert {k: kw[k] for k in want} == want
    with u.client_env() as env:
        assert {k: env[v] for k, v in (("sslmode", "PGSSLMODE"), ("sslrootcert", "PGSSLROOTCERT"),
                                       ("sslcert", "PGSSLCERT"), ("sslkey", "PGSSLKEY"), ("sslcrl", "PGSSLCRL"),
                                       ("channel_binding", "PGCHANNELBINDING"))} == want


def test_the_operators_pgssl_variables_reach_the_tools_as_they_reach_psycopg(certs, monkeypatch):
    monkeypatch.setenv("PGSSLROOTCERT", certs["ca.crt"])
    monkeypatch.setenv("PGCHANNELBINDING", "require")
    u = parse(f"postgresql://postgres:pw@{REMOTE}:5432/postgres")
    assert u.connect_kwargs()["sslrootcert"] == certs["ca.crt"]
    with u.client_env() as env:
        assert env["PGSSLROOTCERT"] == certs["ca.crt"] and env["PGCHANNELBINDING"] == "require"
        assert env["PGSSLMODE"] == "verify-full"


@pytest.mark.parametrize("query, text", [
    ("sslrootcert=/nonexistent/ca.crt", "is not a file"),
    ("sslcert={crt}", "both sslcert and sslkey"),
    ("sslcert={crt}&sslkey={key}", "readable by others"),
    ("channel_binding=maybe", "not a valid value"),
    ("sslnegotiation=later", "not a valid value"),
    ("sslpassword=x", "unsupported parameter"),
    ("sslmode=require&sslmode=disable", "twice"),
])
def test_bad_tls_settings_are_refused(certs, query, text):
    os.chmod(certs["client.key"], 0o644)
    q = query.format(crt=certs["client.crt"], key=certs["client.key"])
    with pytest.raises(ConfigError, match=text):
        parse(f"postgresql://postgres:pw@{REMOTE}:5432/postgres?sslrootcert={certs['ca.crt']}&{q}"
              if "sslrootcert" not in q else f"postgresql://postgres:pw@{REMOTE}:5432/postgres?{q}")


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer"])
def test_plaintext_to_a_remote_host_is_refused_unless_the_operator_says_so(mode, monkeypatch):
    with pytest.raises(ConfigError, match="unencrypted"):
        parse(f"postgresql://postgres:pw@{REMOTE}:5432/postgres?sslmode={mode}")
    monkeypatch.setenv("DOAI_DATABASE_INSECURE_TLS", "1")
    u = parse(f"postgresql://postgres:pw@{REMOTE}:5432/postgres?sslmode={mode}")
    assert u.connect_kwargs()["sslmode"] == mode and "weakened" in u.tls.warning


@pytest.mark.parametrize("mode", ["require", "verify-ca"])
def test_an_unverified_remote_is_allowed_with_a_warning(mode, certs):
    u = parse(f"postgresql://postgres:pw@{REMOTE}:5432/postgres?sslmode={mode}&sslrootcert={certs['ca.crt']}")
    assert "weakened" in u.tls.warning and "verify-full" in u.tls.warning


def test_what_a_spawned_tool_receives(certs, tmp_path, monkeypatch):
    """A fake pg_dump writes the environment it was given: the TLS settings, never the password."""
    monkeypatch.setenv("PGSSLCERT", certs["client.crt"])
    monkeypatch.setenv("PGSSLKEY", certs["client.key"])
    out = tmp_path / "env.txt"
    fake = tmp_path / "pg_dump"
    fake.write_text(f"#!/bin/sh\nenv > {out}\n")
    fake.chmod(0o755)
    u = parse(f"postgresql://postgres:canary-pw@{REMOTE}:5432/postgres?sslrootcert={certs['ca.crt']}"
              "&channel_binding=require")
    run_tool(u, [str(fake)], what="pg_dump")
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["PGSSLMODE"] == "verify-full" and env["PGSSLROOTCERT"] == certs["ca.crt"]
    assert env["PGSSLCERT"] == certs["client.crt"] and env["PGSSLKEY"] == certs["client.key"]
    assert env["PGCHANNELBINDING"] == "require"
    assert "canary-pw" not in out.read_text()


def test_a_weakened_tls_is_a_warning_of_the_run(certs):
    from types import SimpleNamespace

    from doai_ansible.parts.database import DatabasePart

    warned: list[str] = []
    url = Secret(f"postgresql://postgres:pw@{REMOTE}:5432/postgres?sslmode=require")
    ctx = SimpleNamespace(settings=SimpleNamespace(database=SimpleNamespace(url=url)), warn=warned.append)
    DatabasePart()._url(ctx)
    assert len(warned) == 1 and "sslmode=require" in warned[0] and REMOTE in warned[0]
