"""A local stand-in for the DoAi Supabase database: a PostgreSQL of its own, shaped like a
Supabase project, with the fixture migrations applied by the real Supabase CLI.

What it starts, on 127.0.0.1 only, stopped by PID in :meth:`PgRig.stop`:

* Debian's PostgreSQL (``initdb`` + ``pg_ctl``; as root it runs as the OS user ``postgres``),
  its data directory and unix socket in a short directory under /tmp that user owns; TCP on a
  free loopback port with ``scram-sha-256`` password auth (pg_hba: ``host all all 127.0.0.1/32
  scram-sha-256``; the local socket is ``trust``, for nobody but the rig's own admin use).
  The superuser ``postgres`` has the rig's password (random unless given); it is written to a
  0600 file for ``initdb --pwfile`` and deleted again: never on a command line.

The cluster (built once, in :meth:`PgRig.start`):

* roles ``anon``, ``authenticated``, ``service_role`` (NOLOGIN), cluster-wide;
* a database ``doai_template`` shaped like a Supabase project: ``GRANT USAGE ON SCHEMA public``
  to the three roles, Supabase's default privileges in ``public`` (ALL on tables, sequences,
  functions to anon, authenticated, service_role), the managed schemas ``auth`` (``auth.users``
  with one row) and ``storage`` (``storage.objects``, empty) that a snapshot must leave out, and
  every migration of the fixture project (tests/fixtures/supabase) applied by
  ``supabase migration up --db-url ...``: the CLI creates ``supabase_migrations.schema_migrations``
  and writes its own history rows;
* ``doai``, made from it: :meth:`PgRig.reset` drops it (``WITH (FORCE)``) and creates it again
  ``TEMPLATE doai_template``.

The fixture project (see tests/fixtures/supabase/README.md): ``supabase/migrations/<version>_<name>.sql``
and their down files ``supabase/rollbacks/<same name>``; variants for failure tests live in
tests/fixtures/supabase-variants/<name>/ as files laid over a copy of the project
(:meth:`PgRig.project`).

``python -m doai_ansible.sandbox.pg_rig start|stop|reset|describe --workdir DIR`` drives it from a shell.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from doai_ansible.sandbox.rig import SandboxError, _running, free_port

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURE_PROJECT = REPO_ROOT / "tests" / "fixtures" / "supabase"
FIXTURE_VARIANTS = REPO_ROOT / "tests" / "fixtures" / "supabase-variants"
SUPABASE_BIN = REPO_ROOT / "tests" / "node" / "node_modules" / ".bin" / "supabase"
DBNAME = "doai"
TEMPLATE = "doai_template"
OS_USER = "postgres"  # who runs PostgreSQL when we are root
API_ROLES = ("anon", "authenticated", "service_role")
MANAGED_SCHEMAS = ("auth", "storage")
HISTORY_TABLE = "supabase_migrations.schema_migrations"
_VERSION_RE = re.compile(r"^(\d{14})_.+\.sql$")

# A Supabase project's database, minus what the platform runs (GoTrue, Storage): the roles
# and grants the migrations meet there. Applied as the superuser, before the migrations.
SUPABASE_SHAPE = """
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;

CREATE SCHEMA auth;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
CREATE TABLE auth.users (
  id uuid PRIMARY KEY,
  email text UNIQUE,
  created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO auth.users (id, email, created_at)
  VALUES ('00000000-0000-4000-8000-000000000001', 'operator@doai.example', '2026-10-01 00:00:00+00');

CREATE SCHEMA storage;
GRANT USAGE ON SCHEMA storage TO anon, authenticated, service_role;
CREATE TABLE storage.objects (
  id uuid PRIMARY KEY,
  bucket_id text NOT NULL,
  name text NOT NULL,
  owner uuid REFERENCES auth.users (id),
  created_at timestamptz NOT NULL DEFAULT now()
);
"""


def find_pg_bin() -> Path:
    """The newest Debian PostgreSQL's bin directory (or $DOAI_PG_BIN)."""
    env = os.environ.get("DOAI_PG_BIN")
    if env:
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise SandboxError("PostgreSQL not found (/usr/lib/postgresql/*/bin/initdb)",
                           hint="apt-get install postgresql (see .ci/setup), or set DOAI_PG_BIN")
    return Path(found[-1]).parent


def _kill_wait(pid: int, deadline_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``deadline_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not _running(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgRig:
    """``PgRig(workdir).start()``; ``reset()`` before each test; ``stop()`` and ``cleanup()`` at the end."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.workdir = Path(workdir).absolute()
        self.password = password or secrets.token_urlsafe(18)
        self.port = 0
        self.run_dir: Path | None = None  # short, owned by the OS user: data dir, socket, log
        self.pid: int | None = None  # the postmaster
        self.pg_bin: Path | None = None
        self.project_dir = self.workdir / "project"  # a copy of the fixture project (the CLI writes .temp/ there)
        self.timings: dict[str, float] = {}

    # -- names ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.run_dir
        return self.run_dir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.run_dir
        return self.run_dir

    @property
    def log_file(self) -> Path:
        assert self.run_dir
        return self.run_dir / "postgres.log"

    def url_for(self, dbname: str = DBNAME, *, with_password: bool = True) -> str:
        auth = "postgres"
        if with_password:
            auth += ":" + urllib.parse.quote(self.password, safe="")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}?sslmode=disable"

    @property
    def url(self) -> str:
        """``postgresql://postgres:<pw>@127.0.0.1:<port>/doai?sslmode=disable``."""
        return self.url_for()

    @property
    def url_without_password(self) -> str:
        return self.url_for(with_password=False)

    def dsn_kwargs(self, dbname: str = DBNAME) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect``: TCP, password auth, as ``postgres``."""
        return {"host": "127.0.0.1", "port": self.port, "user": "postgres", "password": self.password,
                "dbname": dbname, "sslmode": "disable"}

    # -- processes ---------------------------------------------------------------------------
    def _as_os_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", OS_USER, "--", *argv]
        return argv

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        assert self.pg_bin
        proc = subprocess.run(self._as_os_user([str(self.pg_bin / tool), *args]), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False, env=self._pg_env())
        if proc.returncode != 0:
            raise SandboxError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    @staticmethod
    def _pg_env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        return env

    def start(self) -> PgRig:
        """initdb, pg_ctl start, the template database (roles, Supabase's shape, the fixture
        migrations by the CLI), ``doai`` from it."""
        t0 = time.monotonic()
        self.pg_bin = find_pg_bin()
        if not os.access(SUPABASE_BIN, os.X_OK):
            raise SandboxError(f"{SUPABASE_BIN} not found", hint="npm ci --prefix tests/node (see .ci/setup)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix="doai-pg-", dir="/tmp"))
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.run_dir, OS_USER, OS_USER)
        self.save()  # from here on `stop` finds what to stop
        self._initdb()
        self.timings["initdb_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        self._pg("pg_ctl", "start", "-w", "-t", "30", "-D", str(self.data_dir), "-l", str(self.log_file))
        self.pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        self.save()
        self.timings["pg_start_s"] = time.monotonic() - t1
        t2 = time.monotonic()
        self._build_template()
        self.timings["template_s"] = time.monotonic() - t2
        self.reset()
        self.timings["start_s"] = time.monotonic() - t0
        self.save()
        return self

    def _initdb(self) -> None:
        assert self.run_dir
        pwfile = self.run_dir / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, OS_USER, OS_USER)
        try:
            self._pg("initdb", "-D", str(self.data_dir), "-U", "postgres", f"--pwfile={pwfile}",
                     "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
                     "--no-sync", "--no-instructions")
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(
                "\n# doai-ansible PgRig\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "password_encryption = 'scram-sha-256'\n"
                "ssl = off\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"  # a throwaway cluster
                "max_connections = 50\nshared_buffers = 32MB\n"
                "log_min_messages = warning\nlog_line_prefix = '%m [%p] %u@%d '\n"
            )
        (self.data_dir / "pg_hba.conf").write_text(
            "# doai-ansible PgRig: the socket for the rig's own admin use, TCP with a password\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; the postmaster killed by PID if it is still there."""
        if self.pid and _running(self.pid):
            if self.pg_bin and self.run_dir and self.data_dir.exists():
                with contextlib.suppress(SandboxError, subprocess.TimeoutExpired):
                    self._pg("pg_ctl", "stop", "-m", "fast", "-w", "-t", "20", "-D", str(self.data_dir), timeout=30)
            if _running(self.pid):
                _kill_wait(self.pid)
        self.pid = None
        if self.workdir.exists():
            self.save()

    def cleanup(self) -> None:
        """Remove the data directory (after :meth:`stop`) and the project copy."""
        if self.run_dir and self.run_dir.exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.project_dir, ignore_errors=True)

    def running(self) -> bool:
        return bool(self.pid) and _running(self.pid)  # type: ignore[arg-type]

    def processes(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, ...)."""
        if not self.pid:
            return []
        found = [self.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == self.pid:
                        found.append(int(entry.name))
        return found

    # -- the database --------------------------------------------------------------------------
    def connect(self, dbname: str = DBNAME, **kwargs: Any):  # -> psycopg.Connection
        import psycopg

        return psycopg.connect(**self.dsn_kwargs(dbname), autocommit=True, connect_timeout=10, **kwargs)

    def sql(self, query: str, *params: Any, dbname: str = DBNAME) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit); its rows, or [] when it returns none."""
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def _build_template(self) -> None:
        self.sql("CREATE ROLE anon NOLOGIN; CREATE ROLE authenticated NOLOGIN; "
                 "CREATE ROLE service_role NOLOGIN BYPASSRLS", dbname="postgres")
        self.sql(f"CREATE DATABASE {TEMPLATE}", dbname="postgres")
        with self.connect(TEMPLATE) as conn:
            conn.execute(SUPABASE_SHAPE)
        self.project_dir = self.project(self.workdir / "project")
        proc = self.supabase("migration", "up", db=TEMPLATE, timeout=120)
        if proc.returncode != 0:
            raise SandboxError(f"supabase migration up failed ({proc.returncode}): {proc.stderr.strip()}")
        self.sql(f"ALTER DATABASE {TEMPLATE} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false", dbname="postgres")

    def reset(self) -> PgRig:
        """``doai`` anew from the template: the fixture migrations applied, their rows, the CLI's
        history rows; roles are cluster-wide and stay. The project copy is put back too."""
        t0 = time.monotonic()
        self.sql(f"DROP DATABASE IF EXISTS {DBNAME} WITH (FORCE)", dbname="postgres")
        self.sql(f"CREATE DATABASE {DBNAME} TEMPLATE {TEMPLATE} STRATEGY FILE_COPY", dbname="postgres")
        if not (self.project_dir / "supabase").is_dir() or self._project_changed():
            self.project(self.project_dir)
        self.timings["reset_s"] = time.monotonic() - t0
        return self

    def _project_changed(self) -> bool:
        def files(root: Path) -> dict[str, bytes]:
            base = root / "supabase"
            return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*")
                    if p.is_file() and ".temp" not in p.relative_to(base).parts}
        return files(self.project_dir) != files(FIXTURE_PROJECT)

    # -- the fixture project ----------------------------------------------------------------------
    @staticmethod
    def variants() -> list[str]:
        return sorted(p.name for p in FIXTURE_VARIANTS.iterdir() if p.is_dir()) if FIXTURE_VARIANTS.is_dir() else []

    @staticmethod
    def project(dest: Path, variant: str | None = None,
                overrides: Mapping[str, str | None] | None = None) -> Path:
        """A copy of the fixture project at ``dest`` (replaced if there), with the files of
        ``variant`` (tests/fixtures/supabase-variants/<variant>/) laid over it, then
        ``overrides``: path relative to the project -> new content, or None to delete the file.
        Returns ``dest`` (the directory holding ``supabase/``)."""
        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(FIXTURE_PROJECT, dest, ignore=shutil.ignore_patterns(".temp", "README.md"))
        if variant:
            src = FIXTURE_VARIANTS / variant
            if not src.is_dir():
                raise SandboxError(f"no such fixture variant: {variant}", hint=f"one of {PgRig.variants()}")
            shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README.md"))
        for rel, content in (overrides or {}).items():
            path = dest / rel
            if content is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
        return dest

    @staticmethod
    def migrations(project: Path | None = None) -> dict[str, Path]:
        """version -> migration file of a project (the fixture project by default)."""
        base = Path(project or FIXTURE_PROJECT) / "supabase" / "migrations"
        return {m.group(1): p for p in sorted(base.iterdir()) if (m := _VERSION_RE.match(p.name))}

    @staticmethod
    def down_files(project: Path | None = None) -> dict[str, Path]:
        """version -> down file (supabase/rollbacks/<same name>) of a project."""
        base = Path(project or FIXTURE_PROJECT) / "supabase" / "rollbacks"
        if not base.is_dir():
            return {}
        return {m.group(1): p for p in sorted(base.iterdir()) if (m := _VERSION_RE.match(p.name))}

    # -- the Supabase CLI -----------------------------------------------------------------------------
    def supabase_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SUPABASE_"))}
        env["PGPASSWORD"] = self.password  # the CLI's --db-url carries no password
        env["NO_UPDATE_NOTIFIER"] = "1"
        env["DO_NOT_TRACK"] = "1"
        env["SUPABASE_TELEMETRY_DISABLED"] = "1"
        env["HOME"] = str(self.workdir / "home")  # ~/.supabase stays in the rig
        return env

    def supabase_argv(self, *args: str, db: str | None = DBNAME) -> list[str]:
        """The command line :meth:`supabase` runs: ``--agent no`` (the same output whoever runs
        it), then ``--db-url`` without the password unless ``db`` is None."""
        argv = [str(SUPABASE_BIN), *args, "--agent", "no"]
        if db is not None:
            argv += ["--db-url", self.url_for(db, with_password=False)]
        return argv

    def supabase(self, *args: str, project: Path | None = None, db: str | None = DBNAME,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the pinned Supabase CLI in ``project`` (the rig's copy of the fixture project by
        default) with ``--db-url <url without password>`` appended unless ``db`` is None; the
        password reaches it as PGPASSWORD."""
        (self.workdir / "home").mkdir(parents=True, exist_ok=True)
        return subprocess.run(self.supabase_argv(*args, db=db), cwd=project or self.project_dir, env=self.supabase_env(), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)

    def supabase_applied(self, project: Path | None = None, db: str = DBNAME) -> set[str]:
        """The versions ``supabase migration list`` shows in its Remote column (asked for
        ``--output-format json``: ``{"migrations": [{"local", "remote", "time"}, ...]}``)."""
        proc = self.supabase("migration", "list", "--output-format", "json", project=project, db=db)
        if proc.returncode != 0:
            raise SandboxError(f"supabase migration list failed ({proc.returncode}): {proc.stderr.strip()}")
        return {m["remote"] for m in json.loads(proc.stdout)["migrations"] if m.get("remote")}

    # -- looking at the database -------------------------------------------------------------------------
    def tables(self, schemas: Iterable[str] = ("public",), dbname: str = DBNAME) -> list[str]:
        rows = self.sql("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s) ORDER BY 1", list(schemas), dbname=dbname)
        return [r[0] for r in rows]

    def table_checksums(self, schemas: Iterable[str] = ("public",), dbname: str = DBNAME) -> dict[str, str]:
        """``{"schema.table": md5 of its rows as text, sorted}``."""
        out = {}
        with self.connect(dbname) as conn:
            for name in self.tables(schemas, dbname):
                s, t = name.split(".", 1)
                q = (f"SELECT md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) "
                     f"FROM {_ident(s)}.{_ident(t)} x")
                out[name] = conn.execute(q).fetchone()[0]
        return out

    def row_counts(self, schemas: Iterable[str] = ("public",), dbname: str = DBNAME) -> dict[str, int]:
        """``{"schema.table": rows}``."""
        out = {}
        with self.connect(dbname) as conn:
            for name in self.tables(schemas, dbname):
                s, t = name.split(".", 1)
                out[name] = conn.execute(f"SELECT count(*) FROM {_ident(s)}.{_ident(t)}").fetchone()[0]
        return out

    def applied_versions(self, dbname: str = DBNAME) -> list[str]:
        """The versions in supabase_migrations.schema_migrations, sorted ([] without the table)."""
        if not self.sql("SELECT to_regclass(%s)", HISTORY_TABLE, dbname=dbname)[0][0]:
            return []
        return [r[0] for r in self.sql(f"SELECT version FROM {HISTORY_TABLE} ORDER BY version", dbname=dbname)]

    def history(self, dbname: str = DBNAME) -> list[dict[str, Any]]:
        """The history rows as the CLI wrote them (every column)."""
        if not self.sql("SELECT to_regclass(%s)", HISTORY_TABLE, dbname=dbname)[0][0]:
            return []
        from psycopg.rows import dict_row

        with self.connect(dbname, row_factory=dict_row) as conn:
            return conn.execute(f"SELECT * FROM {HISTORY_TABLE} ORDER BY version").fetchall()

    def fill_system_logs(self, n: int, dbname: str = DBNAME) -> None:
        """Add ``n`` rows to public.system_logs in one statement (for benchmarks)."""
        self.sql("INSERT INTO public.system_logs (device_id, level, message, created_at)"
                 " SELECT 1 + (g %% 3), (ARRAY['debug','info','warn','error'])[1 + g %% 4], 'bench row ' || g,"
                 " timestamptz '2026-11-21 00:00:00+00' + g * interval '1 second'"
                 " FROM generate_series(1, %s) AS g", n, dbname=dbname)

    def catalog_fingerprint(self, schemas: Iterable[str] = ("public",), dbname: str = DBNAME) -> dict[str, Any]:
        """A comparable description of the schemas: per table its columns (name, type, default,
        not null, identity), constraints (name, definition), indexes (name, definition) and ACL;
        the sequences; the functions. Equal fingerprints: the same schema, grants included."""
        schemas = list(schemas)
        tables: dict[str, Any] = {}
        for name in self.tables(schemas, dbname):
            tables[name] = {"columns": [], "constraints": [], "indexes": [], "acl": None}
        if not tables:
            return {"tables": {}, "sequences": [], "functions": []}
        rel = ("(SELECT rn.nspname || '.' || rc.relname FROM pg_class rc JOIN pg_namespace rn ON rn.oid = rc.relnamespace"
               " WHERE rc.oid = {})")
        for t, col, typ, dflt, notnull, ident, gen in self.sql(
                "SELECT " + rel.format("a.attrelid") + ", a.attname, format_type(a.atttypid, a.atttypmod),"
                " pg_get_expr(d.adbin, d.adrelid), a.attnotnull, a.attidentity, a.attgenerated"
                " FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
                " WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attrelid = ANY(%s::regclass[])"
                " ORDER BY 1, a.attnum", list(tables), dbname=dbname):
            tables[t]["columns"].append([col, typ, dflt, notnull, ident, gen])
        for t, name, definition in self.sql(
                "SELECT " + rel.format("conrelid") + ", conname, pg_get_constraintdef(oid)"
                " FROM pg_constraint WHERE conrelid = ANY(%s::regclass[]) ORDER BY 1, 2", list(tables), dbname=dbname):
            tables[t]["constraints"].append([name, definition])
        for t, name, definition in self.sql(
                "SELECT schemaname || '.' || tablename, indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = ANY(%s) ORDER BY 1, 2", schemas, dbname=dbname):
            if t in tables:
                tables[t]["indexes"].append([name, definition])
        for t, acl in self.sql("SELECT " + rel.format("c.oid") + ", c.relacl::text FROM pg_class c"
                               " WHERE c.oid = ANY(%s::regclass[])", list(tables), dbname=dbname):
            tables[t]["acl"] = acl
        sequences = [list(r) for r in self.sql(
            "SELECT schemaname || '.' || sequencename, data_type::text, start_value, increment_by FROM pg_sequences"
            " WHERE schemaname = ANY(%s) ORDER BY 1", schemas, dbname=dbname)]
        functions = [list(r) for r in self.sql(
            "SELECT p.oid::regprocedure::text, pg_get_function_result(p.oid) FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ANY(%s) ORDER BY 1", schemas,
            dbname=dbname)]
        return {"tables": tables, "sequences": sequences, "functions": functions}

    def grants_on_public(self, dbname: str = DBNAME) -> dict[str, Any]:
        """Owner and ACL of schema public, and the default privileges in it."""
        owner, acl = self.sql("SELECT pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace"
                              " WHERE nspname = 'public'", dbname=dbname)[0]
        defaults = self.sql("SELECT pg_get_userbyid(d.defaclrole), d.defaclobjtype::text, d.defaclacl::text"
                            " FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace"
                            " WHERE n.nspname = 'public' ORDER BY 1, 2", dbname=dbname)
        return {"owner": owner, "acl": acl, "default_privileges": [list(r) for r in defaults]}

    # -- state on disk ---------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "data_dir": str(self.data_dir) if self.run_dir else None,
            "socket_dir": str(self.socket_dir) if self.run_dir else None,
            "log_file": str(self.log_file) if self.run_dir else None,
            "pg_bin": str(self.pg_bin) if self.pg_bin else None,
            "pid": self.pid,
            "port": self.port,
            "database": DBNAME,
            "template": TEMPLATE,
            "url": self.url_without_password if self.port else None,
            "password_file": str(self.workdir / "password"),
            "project_dir": str(self.project_dir),
            "supabase": str(SUPABASE_BIN),
            "timings": self.timings,
        }

    def save(self) -> None:
        """pg-rig.json (no password) and the password in a 0600 file next to it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        pw = self.workdir / "password"
        fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.password + "\n")
        (self.workdir / "pg-rig.json").write_text(json.dumps(self.describe(), indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> PgRig:
        workdir = Path(workdir)
        data = json.loads((workdir / "pg-rig.json").read_text())
        rig = cls(workdir, password=(workdir / "password").read_text().strip())
        rig.run_dir = Path(data["run_dir"]) if data.get("run_dir") else None
        rig.pg_bin = Path(data["pg_bin"]) if data.get("pg_bin") else None
        rig.pid, rig.port = data.get("pid"), int(data.get("port") or 0)
        rig.project_dir = Path(data["project_dir"])
        rig.timings = dict(data.get("timings") or {})
        return rig


def parse_migration_list(text: str) -> set[str]:
    """The Remote column of ``supabase migration list``'s text output (a table, its cells in
    backticks when stdout is not a terminal)."""
    applied = set()
    for line in text.splitlines():
        cells = [c.strip().strip("`") for c in line.split("|")]
        if len(cells) >= 2 and re.fullmatch(r"\d{14}", cells[1]):
            applied.add(cells[1])
    return applied


def _main(argv: list[str] | None = None) -> int:
    """``python -m doai_ansible.sandbox.pg_rig start|stop|reset|describe --workdir DIR``: the
    database stand-in for the demo, the benchmarks and manual trials; prints it as JSON (the
    password is in DIR/password, not in the output)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m doai_ansible.sandbox.pg_rig")
    ap.add_argument("action", choices=["start", "stop", "reset", "describe"])
    ap.add_argument("--workdir", required=True, type=Path)
    args = ap.parse_args(argv)
    if args.action == "start":
        rig = PgRig(args.workdir)
        try:
            rig.start()
        except BaseException:
            rig.stop()
            rig.cleanup()
            raise
        print(json.dumps(rig.describe(), indent=2))
    elif args.action == "stop":
        if (args.workdir / "pg-rig.json").exists():
            rig = PgRig.load(args.workdir)
            rig.stop()
            rig.cleanup()
            print(json.dumps(rig.describe(), indent=2))
    elif args.action == "reset":
        rig = PgRig.load(args.workdir)
        rig.reset()
        rig.save()
        print(json.dumps(rig.describe(), indent=2))
    else:
        print(json.dumps(PgRig.load(args.workdir).describe(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
