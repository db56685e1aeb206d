"""The database URL: parsed once, its password kept in a :class:`~doai_ansible.settings.Secret`,
masked in every message, handed to psycopg as a keyword (never in a DSN string that an error
could echo) and to the client tools through a 0600 ``PGPASSFILE`` that is removed afterwards:
never on a command line, never in a child's environment."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

from doai_ansible.errors import ConfigError, DoaiError, UnreachableError
from doai_ansible.settings import Secret, is_secret_env_name

TRANSACTION_POOLER_PORT = 6543
CONNECT_TIMEOUT_S = 10
#: The operator's explicit "yes, no verified TLS to a remote database" (see :func:`tls_params`).
INSECURE_ENV = "DOAI_DATABASE_INSECURE_TLS"
# The URL's parameters this tool passes on to psycopg and to the client tools (as PG* variables).
_TLS_ENV = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
            "sslcrl": "PGSSLCRL", "channel_binding": "PGCHANNELBINDING", "sslnegotiation": "PGSSLNEGOTIATION"}
_PARAM_ENV = {"connect_timeout": "PGCONNECT_TIMEOUT", "application_name": "PGAPPNAME", "options": "PGOPTIONS",
              "target_session_attrs": "PGTARGETSESSIONATTRS", **_TLS_ENV}
_ALLOWED_PARAMS = set(_PARAM_ENV)
_PARAM_VALUES = {
    "sslmode": re.compile(r"(disable|allow|prefer|require|verify-ca|verify-full)\Z"),
    "channel_binding": re.compile(r"(disable|prefer|require)\Z"),
    "sslnegotiation": re.compile(r"(postgres|direct)\Z"),
    "connect_timeout": re.compile(r"[1-9][0-9]{0,3}\Z"),
    "target_session_attrs": re.compile(r"(any|read-write|read-only|primary|standby|prefer-standby)\Z"),
}
_PLAINTEXT_MODES = ("disable", "allow", "prefer")  # the password may travel in clear
_UNVERIFIED_MODES = ("require", "verify-ca")  # encrypted, but the server (or its name) is not checked


@dataclasses.dataclass(frozen=True)
class Tls:
    """The effective TLS settings of a connection: the same for psycopg and for every client tool."""

    params: tuple[tuple[str, str], ...]
    warning: str | None = None  # said loudly in every run that uses it

    def env(self) -> dict[str, str]:
        return {_TLS_ENV[k]: v for k, v in self.params}


def tls_params(host: str, url_params: dict[str, str], environ: Any = None) -> Tls:
    """The one place that decides TLS to the database. Each setting (sslmode, sslrootcert,
    sslcert, sslkey, sslcrl, channel_binding, sslnegotiation) is the URL's, else libpq's own
    variable (PGSSLMODE, PGSSLROOTCERT, ...) from this process's environment. For a host outside
    loopback sslmode defaults to ``verify-full`` (libpq's own default, ``prefer``, checks no
    certificate and accepts plaintext); ``disable``/``allow``/``prefer`` there are refused unless
    DOAI_DATABASE_INSECURE_TLS=1, and they and ``require``/``verify-ca`` come with a warning.
    Files must exist; a private key must be private (0600, or 0640 owned by root, as libpq asks).
    Raises ConfigError (nothing connects)."""
    from doai_ansible.settings import is_loopback_host

    environ = os.environ if environ is None else environ
    chosen: dict[str, str] = {}
    source: dict[str, str] = {}
    for key, var in _TLS_ENV.items():
        if url_params.get(key):
            chosen[key], source[key] = url_params[key], f"the URL's {key}"
        elif environ.get(var):
            chosen[key], source[key] = environ[var], var
    for key, value in chosen.items():
        if key in _PARAM_VALUES and not _PARAM_VALUES[key].match(value):
            raise ConfigError("DOAI_DATABASE_URL", f"{source[key]}={value!r} is not a valid value")
    local = is_loopback_host(host)
    if not local and "sslmode" not in chosen:
        chosen["sslmode"], source["sslmode"] = "verify-full", "the default for a host outside loopback"
    for key in ("sslrootcert", "sslcert", "sslkey", "sslcrl"):
        if key not in chosen or (key == "sslrootcert" and chosen[key] == "system"):
            continue
        path = Path(chosen[key]).expanduser().absolute()
        if not path.is_file():
            raise ConfigError("DOAI_DATABASE_URL", f"{source[key]}: {path} is not a file")
        chosen[key] = str(path)
    if ("sslcert" in chosen) != ("sslkey" in chosen):
        raise ConfigError("DOAI_DATABASE_URL", "a client certificate needs both sslcert and sslkey")
    if "sslkey" in chosen:
        st = Path(chosen["sslkey"]).stat()
        if st.st_mode & (0o037 if st.st_uid == 0 else 0o077):
            raise ConfigError("DOAI_DATABASE_URL", f"{source['sslkey']}: {chosen['sslkey']} is readable by others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o})", hint=f"chmod 600 {chosen['sslkey']}")
    mode = chosen.get("sslmode")
    if mode in ("verify-ca", "verify-full") and "sslrootcert" not in chosen \
            and not (Path.home() / ".postgresql" / "root.crt").is_file():
        raise ConfigError("DOAI_DATABASE_URL", f"sslmode={mode} ({source['sslmode']}) needs the server's CA "
                          "certificate and none is given",
                          hint="download the CA (Supabase: Project Settings > Database > SSL configuration) and add "
                               "?sslrootcert=/path/to/ca.crt to the URL (or export PGSSLROOTCERT)")
    warning = None
    if not local and mode in _PLAINTEXT_MODES:
        if environ.get(INSECURE_ENV) != "1":
            raise ConfigError("DOAI_DATABASE_URL", f"sslmode={mode} ({source['sslmode']}) to {host}: the password and "
                              "the data may travel unencrypted and the server is not verified",
                              hint=f"use sslmode=verify-full with sslrootcert (or, knowingly, {INSECURE_ENV}=1)")
        warning = (f"TLS to the database {host} is weakened: sslmode={mode} ({source['sslmode']}, allowed by "
                   f"{INSECURE_ENV}=1): the password and the data may travel unencrypted")
    elif not local and mode in _UNVERIFIED_MODES:
        what = "the server's certificate is not checked" if mode == "require" else "the server's name is not checked"
        warning = (f"TLS to the database {host} is weakened: sslmode={mode} ({source['sslmode']}): {what}, so a "
                   "machine in between can pose as the server; use sslmode=verify-full with sslrootcert")
    return Tls(tuple(sorted(chosen.items())), warning)


@dataclasses.dataclass(frozen=True)
class DbUrl:
    host: str
    port: int
    user: str
    dbname: str
    password: Secret = dataclasses.field(repr=False)
    params: tuple[tuple[str, str], ...] = ()  # the URL's, TLS ones excluded (they are in ``tls``)
    tls: Tls = Tls(())

    @classmethod
    def parse(cls, secret: Secret | None) -> DbUrl:
        if not secret:
            raise ConfigError("DOAI_DATABASE_URL", "environment variable is not set",
                              hint="export the direct (port 5432) or session-pooler connection string")
        raw = secret.reveal()
        try:
            u = urlsplit(raw)
            port = u.port or 5432
        except ValueError:
            raise ConfigError("DOAI_DATABASE_URL", "is not a postgresql:// URL") from None
        if u.scheme not in ("postgresql", "postgres") or not u.hostname:
            raise ConfigError("DOAI_DATABASE_URL", "is not a postgresql://user:password@host:port/db URL")
        params = tuple(parse_qsl(u.query))
        if len({k for k, _ in params}) != len(params):
            raise ConfigError("DOAI_DATABASE_URL", "a parameter is given twice")
        bad = sorted({k for k, _ in params} - _ALLOWED_PARAMS)
        for key, value in params:
            if key in _PARAM_VALUES and not _PARAM_VALUES[key].match(value):
                raise ConfigError("DOAI_DATABASE_URL", f"{key}={value!r} is not a valid value")
        if bad:
            raise ConfigError("DOAI_DATABASE_URL", f"unsupported parameter {bad[0]!r}",
                              hint=f"supported: {', '.join(sorted(_ALLOWED_PARAMS))}")
        if port == TRANSACTION_POOLER_PORT:
            raise ConfigError(
                "DOAI_DATABASE_URL",
                f"port {port} is Supabase's transaction pooler, which pg_dump and pg_restore cannot use "
                "(and which cannot hold the rollback's transaction settings)",
                hint="use the direct connection (db.<project>.supabase.co:5432) or the session pooler (port 5432)")
        return cls(host=u.hostname, port=port, user=unquote(u.username or "postgres"),
                   dbname=unquote(u.path.lstrip("/") or "postgres"), password=Secret(unquote(u.password or "")),
                   params=tuple((k, v) for k, v in params if k not in _TLS_ENV),
                   tls=tls_params(u.hostname, {k: v for k, v in params if k in _TLS_ENV}))

    @property
    def label(self) -> str:
        """Where, for messages and the journal: no user, no password."""
        return f"{self.host}:{self.port}/{self.dbname}"

    def masked(self) -> str:
        return f"postgresql://{self.user}:***@{self.label}"

    def scrub(self, text: str) -> str:
        """``text`` with the password (raw and URL-encoded) replaced by ***."""
        pw = self.password.reveal()
        if pw:
            for form in {pw, quote(pw, safe=""), quote_plus(pw)}:
                text = text.replace(form, "***")
        return text

    def connect_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user, "dbname": self.dbname,
                              "connect_timeout": CONNECT_TIMEOUT_S, "application_name": "doai-rollback"}
        kw.update(dict(self.params))
        kw.update(dict(self.tls.params))  # the same TLS settings as the client tools get
        if self.password:
            kw["password"] = self.password.reveal()
        return kw

    def connect(self, *, autocommit: bool = False):  # psycopg is imported here, lazily: its connection is untyped here
        import psycopg

        try:
            return psycopg.connect(autocommit=autocommit, **self.connect_kwargs())
        except psycopg.ProgrammingError as exc:  # a connection parameter psycopg refuses
            raise ConfigError("DOAI_DATABASE_URL", self.scrub(str(exc)).strip()) from None
        except psycopg.OperationalError as exc:
            raise UnreachableError(f"database {self.label}: {self.scrub(str(exc)).strip()}",
                                   hint="check DOAI_DATABASE_URL, the network and the server") from None

    @contextlib.contextmanager
    def client_env(self) -> Iterator[dict[str, str]]:
        """The environment for pg_dump / pg_restore / psql: connection by PG* variables, the
        password in a 0600 PGPASSFILE removed on exit; no secret-named variable of ours."""
        env = plain_env()
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGDATABASE=self.dbname,
                   PGAPPNAME="doai-rollback", PGCONNECT_TIMEOUT=str(CONNECT_TIMEOUT_S))
        for key, value in self.params:  # the same connection as psycopg's
            env[_PARAM_ENV[key]] = value
        env.update(self.tls.env())  # and the same TLS (plain_env removed the operator's PG* variables)
        d = tempfile.mkdtemp(prefix="doai-pgpass-")
        try:
            path = Path(d) / "pgpass"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

            def esc(v: str) -> str:
                return v.replace("\\", "\\\\").replace(":", "\\:")

            with os.fdopen(fd, "w") as fh:
                fh.write(":".join([esc(self.host), str(self.port), esc(self.dbname), esc(self.user),
                                   esc(self.password.reveal())]) + "\n")
            env["PGPASSFILE"] = str(path)
            yield env
        finally:
            shutil.rmtree(d, ignore_errors=True)


class ToolError(DoaiError):
    """A PostgreSQL client tool failed."""


def tool(name: str, bin_dir: Path | None) -> str:
    """The path of pg_dump / pg_restore / psql."""
    if bin_dir is not None:
        p = bin_dir / name
        if not os.access(p, os.X_OK):
            raise ConfigError("database.pg_bin_dir", f"{p} is not an executable")
        return str(p)
    found = shutil.which(name)
    if not found:
        raise ConfigError(name, "not found on PATH",
                          hint="apt-get install postgresql-client (the server's major version or newer)")
    return found


def plain_env() -> dict[str, str]:
    """This process's environment without any secret-named variable (DOAI_DATABASE_URL, tokens)
    and without PG* connection settings: what a child that needs no connection gets."""
    return {k: v for k, v in os.environ.items() if not is_secret_env_name(k) and not k.startswith("PG")}


@functools.lru_cache(maxsize=16)
def tool_major(path: str) -> int:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False,
                         env=plain_env()).stdout
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    if not m:
        raise ConfigError(path, f"cannot tell its version from {out.strip()!r}")
    return int(m.group(1))


def run_tool(url: DbUrl, argv: list[str], *, timeout: float = 3600, what: str,
             connect: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a client tool with the connection in its environment (``connect`` False: a tool that
    only reads a file gets none of it); raise ToolError (scrubbed), also when it overruns."""
    with contextlib.ExitStack() as stack:
        env = stack.enter_context(url.client_env()) if connect else plain_env()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ToolError(f"{what} did not finish in {timeout:.0f} s and was stopped") from None
    if proc.returncode != 0:
        raise ToolError(f"{what} failed (exit {proc.returncode}): {url.scrub(proc.stderr.strip())[-1500:]}")
    return proc
