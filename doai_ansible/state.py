"""Where the run records and the part locks live: the one place the engine, the context and the
CLI get them from (``state.journal(settings)``, ``state.lock(settings, target)``).

* ``local`` (the default): the journal file and the lock files under the state dir
  (:mod:`doai_ansible.journal`, :mod:`doai_ansible.lock`), as always.
* ``postgres``: a PostgreSQL shared by every controller of a team (the URL in
  ``DOAI_STATE_DATABASE_URL``, a secret), everything in the schema ``doai_rollback`` (which may
  live in the Supabase project's own database: the database part never snapshots, restores or
  rolls it back). Every run record (the journal's, plan included) is a row (``runs.record``,
  jsonb); a part's lock is a session-level ``pg_try_advisory_lock`` on a connection kept open
  for the run (a controller that dies releases it with its connection), plus a row in
  ``locks`` that says who holds it, why and since when. The tables are created and migrated by
  the tool; ``meta.schema_version`` says which version they are (a newer one than this tool
  knows is refused, exit 2).

A shared store that cannot be reached never makes a run go local by itself: it stops with exit 7
before any change, and the hint says how to go on with ``--state local``. A store that goes away
mid-run (after the locks, before the record is written) leaves the run's record in the local
journal, and the run says so; ``doai-rollback state push`` adds such records to the store later,
each once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from doai_ansible.errors import ConfigError, DoaiError, LockedError, UnreachableError, UsageError
from doai_ansible.journal import Journal, operator
from doai_ansible.lock import _TARGET_RE, Lock, LockInfo, all_locks
from doai_ansible.model import RunResult
from doai_ansible.settings import STATE_SCHEMA, Secret, Settings

log = logging.getLogger(__name__)

BACKENDS = ("local", "postgres")
URL_ENV = "DOAI_STATE_DATABASE_URL"
SCHEMA = STATE_SCHEMA
#: The version of the tables this tool writes; a store of a newer version is refused.
SCHEMA_VERSION = 2
#: How to go on when the shared store is down.
LOCAL_HINT = ("the shared state store could not be reached: nothing was changed. To go on without it, run again "
              "with --state local (the record is kept in this machine's journal), then `doai-rollback state push` "
              "once the store is back")

# One migration per version: MIGRATIONS[n - 1] takes the tables from version n - 1 to n.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE IF NOT EXISTS {SCHEMA}.meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE IF NOT EXISTS {SCHEMA}.runs (
        seq bigserial PRIMARY KEY,
        run_id text NOT NULL UNIQUE,
        started text,
        command text,
        who text,
        exit_status integer,
        record jsonb NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        recorded_from text
    );
    CREATE TABLE IF NOT EXISTS {SCHEMA}.locks (
        target text PRIMARY KEY,
        owner text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        started text,
        run_id text,
        reason text,
        acquired double precision NOT NULL,
        refreshed double precision,
        backend_pid integer NOT NULL
    );
    """,
    # 2: the plan a run confirmed, kept from before its first change until its record is written,
    # so that a controller on another machine that finds it killed journals what it was doing.
    f"""
    CREATE TABLE IF NOT EXISTS {SCHEMA}.plans (
        run_id text PRIMARY KEY,
        plan jsonb NOT NULL,
        saved_at timestamptz NOT NULL DEFAULT now()
    );
    """,
)


class StoreError(UnreachableError):
    """The shared store could not be reached or answered with an error (exit 7)."""


# -- the interface -------------------------------------------------------------------------------
class JournalLike(Protocol):
    def append(self, run: RunResult, *, who: str | None = None) -> dict[str, Any]: ...
    def append_record(self, record: dict[str, Any]) -> dict[str, Any]: ...
    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def runs(self, *, limit: int | None = None, part: str | None = None) -> list[dict[str, Any]]: ...
    def find(self, run_id: str) -> dict[str, Any]: ...


def backend(settings: Settings) -> str:
    return getattr(getattr(settings, "state", None), "backend", "local")


def journal(settings: Settings) -> JournalLike:
    """The run records of this settings' backend."""
    if backend(settings) == "postgres":
        return PgJournal(store(settings), Journal(settings.journal_path))
    return Journal(settings.journal_path)


def lock(settings: Settings, target: str) -> Lock | PgLock:
    """The lock of ``target`` (a part, or ``system``) in this settings' backend."""
    if backend(settings) == "postgres":
        return PgLock(store(settings), target)
    return Lock(settings.locks_dir, target, settings.lock_ttl_s)


def locks(settings: Settings) -> list[tuple[LockInfo, str | None]]:
    """Every lock the backend knows, each with why it is stale (None: its holder may be alive)."""
    if backend(settings) == "postgres":
        return store(settings).all_locks()
    return all_locks(settings.locks_dir, settings.lock_ttl_s)


def check(settings: Settings) -> None:
    """Before a run: the shared store answers and its tables are this tool's (exit 7, exit 2)."""
    if backend(settings) == "postgres":
        store(settings).ready()


def save_plan(settings: Settings, run_id: str, plan: dict[str, Any]) -> None:
    """Before a run's first change: its confirmed plan into the shared store, and its locks there
    checked to be still its own (a lock whose session ended is free for another controller:
    then the run is refused, exit 5, nothing changed). Nothing to do for local files."""
    if backend(settings) != "postgres":
        return
    from psycopg.types.json import Jsonb

    st = store(settings)
    with st.session() as conn:
        lost = [r[0] for r in conn.execute(
            f"SELECT l.target FROM {SCHEMA}.locks l WHERE l.run_id = %s AND NOT EXISTS (SELECT 1 FROM pg_locks p "
            "WHERE p.locktype = 'advisory' AND p.granted AND p.pid = l.backend_pid)", (run_id,)).fetchall()]
        if lost:
            raise LockedError(f"the lock of {', '.join(lost)} in the shared state store {st.label} was lost (its "
                              "session ended): another controller may be at work; nothing was changed",
                              hint="check `doai-rollback lock status`, then run again")
        conn.execute(f"INSERT INTO {SCHEMA}.plans (run_id, plan) VALUES (%s, %s) ON CONFLICT (run_id) "
                     "DO UPDATE SET plan = EXCLUDED.plan, saved_at = now()", (run_id, Jsonb(plan)))


def saved_plan(settings: Settings, run_id: str) -> dict[str, Any] | None:
    """The plan a run saved in the shared store (see :func:`save_plan`), or None."""
    if backend(settings) != "postgres":
        return None
    with store(settings).session() as conn:
        row = conn.execute(f"SELECT plan FROM {SCHEMA}.plans WHERE run_id = %s", (run_id,)).fetchone()
    return row[0] if row else None


def where(settings: Settings) -> str:
    """Where the run records are, for messages (never a password)."""
    if backend(settings) == "postgres":
        return f"the shared state store {store(settings).label} (schema {SCHEMA})"
    return str(settings.journal_path)


# -- postgres ------------------------------------------------------------------------------------
def lock_key(target: str) -> int:
    """The advisory lock key of a part's lock: a fixed bigint from the target's name (every
    version of the tool and every controller agree on it; not the database part's own key)."""
    return int.from_bytes(hashlib.sha256(f"doai-rollback:state-lock:{target}".encode()).digest()[:8], "big",
                          signed=True)


_MIGRATE_KEY = int.from_bytes(hashlib.sha256(b"doai-rollback:state-migrate").digest()[:8], "big", signed=True)
_READY: set[tuple[str, int, str, str]] = set()  # stores found ready by this process


def _key_parts(key: int) -> tuple[int, int]:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def _url(secret: Secret | None) -> Any:
    from doai_ansible.db.conn import DbUrl

    if not secret:
        raise ConfigError(URL_ENV, "environment variable is not set, and state.backend is postgres",
                          hint=f"export {URL_ENV}=postgresql://user:password@host:5432/db, or use --state local")
    try:
        return DbUrl.parse(secret)
    except ConfigError as exc:
        raise ConfigError(URL_ENV, exc.message.split(": ", 1)[-1].replace("DOAI_DATABASE_URL", URL_ENV),
                          hint=(exc.hint or "").replace("DOAI_DATABASE_URL", URL_ENV) or None) from None


def store(settings: Settings) -> PgStore:
    return PgStore(_url(settings.state.url))


class PgStore:
    """The shared store: one PostgreSQL, the schema :data:`SCHEMA`."""

    def __init__(self, url: Any) -> None:
        self.url = url  # a DbUrl: the password is a Secret, masked in every message

    @property
    def label(self) -> str:
        return self.url.label

    def _error(self, exc: BaseException, doing: str) -> StoreError:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StoreError(f"shared state store {self.label}: {doing}: {self.url.scrub(text)}", hint=LOCAL_HINT)

    def connect(self, *, app: str = "doai-rollback-state") -> Any:
        """An autocommit connection (exit 7 with the --state local hint when it cannot be had)."""
        import psycopg

        # keepalives: a store that vanishes without closing the connection (a cut network) is
        # noticed in about a minute, not the kernel's two hours (a lock's release must not hang).
        kw = dict(self.url.connect_kwargs(), application_name=app, connect_timeout=10, keepalives=1,
                  keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
        try:
            return psycopg.connect(autocommit=True, **kw)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(URL_ENV, self.url.scrub(str(exc)).strip()) from None
        except psycopg.Error as exc:
            raise self._error(exc, "could not connect") from None

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """A connection to a store whose tables are ready; errors on it are StoreErrors."""
        import psycopg

        conn = self.connect()
        try:
            self._migrate(conn)
            yield conn
        except psycopg.Error as exc:
            raise self._error(exc, "failed") from None
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def ready(self) -> None:
        with self.session():
            pass

    def _version(self, conn: Any) -> int:
        row = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.meta",)).fetchone()
        if row[0] is None:
            return 0
        got = conn.execute(f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'").fetchone()
        return int(got[0]) if got else 0

    def _migrate(self, conn: Any) -> None:
        """Create or migrate the tables (once per process and store), under a transaction-level
        advisory lock so that two controllers starting together migrate once; refuse a newer
        schema than this tool's."""
        key = (self.url.host, self.url.port, self.url.dbname, self.url.user)
        if key in _READY:
            return
        version = self._version(conn)
        if version < SCHEMA_VERSION:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (_MIGRATE_KEY,))
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                version = self._version(conn)
                for n in range(version, SCHEMA_VERSION):
                    conn.execute(MIGRATIONS[n])
                conn.execute(f"INSERT INTO {SCHEMA}.meta (key, value) VALUES ('schema_version', %s) "
                             "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (str(SCHEMA_VERSION),))
                log.info("shared state store %s: schema %s migrated from version %d to %d", self.label, SCHEMA,
                         version, SCHEMA_VERSION)
                version = SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise UsageError(f"the shared state store {self.label} has schema {SCHEMA} version {version}, newer than "
                             f"this tool knows (version {SCHEMA_VERSION}): nothing was changed",
                             hint="upgrade doai-ansible to the version your team uses (or --state local)")
        _READY.add(key)

    # -- records
    def insert(self, record: dict[str, Any], *, replace: bool) -> bool:
        """Add one run record; ``replace``: a record of the same run is replaced (a later record
        of a run wins, as in the journal), else it is kept and this one dropped. Whether it was written."""
        from psycopg.types.json import Jsonb

        conflict = ("DO UPDATE SET record = EXCLUDED.record, started = EXCLUDED.started, command = EXCLUDED.command, "
                    "who = EXCLUDED.who, exit_status = EXCLUDED.exit_status, recorded_at = now(), "
                    "recorded_from = EXCLUDED.recorded_from" if replace else
                    # a record another run wrote for a run it found killed gives way to that run's own
                    f"DO UPDATE SET record = EXCLUDED.record, exit_status = EXCLUDED.exit_status, recorded_at = now() "
                    f"WHERE {SCHEMA}.runs.record->>'found_killed_by' IS NOT NULL "
                    "AND EXCLUDED.record->>'found_killed_by' IS NULL")
        with self.session() as conn:
            cur = conn.execute(
                f"INSERT INTO {SCHEMA}.runs (run_id, started, command, who, exit_status, record, recorded_from) "
                f"VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) {conflict}",
                (record.get("run_id"), record.get("started"), record.get("command"), record.get("who"),
                 record.get("exit_status"), Jsonb(record), socket.gethostname()))
            written = cur.rowcount > 0
            conn.execute(f"DELETE FROM {SCHEMA}.plans WHERE run_id = %s", (record.get("run_id"),))
            return written

    def records(self, *, limit: int | None = None, part: str | None = None, prefix: str | None = None,
                newest_first: bool = True) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        if part is not None:
            where.append("record->'steps' @> jsonb_build_array(jsonb_build_object('part', %s::text))")
            params.append(part)
        if prefix is not None:
            where.append("starts_with(run_id, %s)")
            params.append(prefix)
        q = (f"SELECT record FROM {SCHEMA}.runs" + (" WHERE " + " AND ".join(where) if where else "")
             + f" ORDER BY seq {'DESC' if newest_first else 'ASC'}" + (" LIMIT %s" if limit else ""))
        if limit:
            params.append(limit)
        with self.session() as conn:
            return [row[0] for row in conn.execute(q, params).fetchall()]

    # -- locks
    def all_locks(self) -> list[tuple[LockInfo, str | None]]:
        with self.session() as conn:
            rows = conn.execute(f"SELECT {_LOCK_COLS} FROM {SCHEMA}.locks ORDER BY target").fetchall()
            out = []
            for row in rows:
                info = _info(row)
                live = _holder_pid(conn, info.target)
                out.append((info, None if live is not None else "its controller's session is gone (killed, or its "
                            "connection cut): the lock itself went with it"))
            return out


_LOCK_COLS = "target, owner, pid, host, acquired, reason, run_id, started, refreshed, backend_pid"


def _info(row: tuple[Any, ...]) -> LockInfo:
    return LockInfo(*row[:9])


def _holder_pid(conn: Any, target: str) -> int | None:
    """The backend pid of the session holding ``target``'s advisory lock in this database, or None."""
    classid, objid = _key_parts(lock_key(target))
    row = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) AND classid = %s::bigint::oid "
        "AND objid = %s::bigint::oid AND objsubid = 1 LIMIT 1", (classid, objid)).fetchone()
    return row[0] if row else None


class PgJournal:
    """The run records in the shared store; ``fallback`` (the local journal) keeps a record the
    store could not take (it went away mid-run), and says so in the run's warnings."""

    def __init__(self, store: PgStore, fallback: Journal) -> None:
        self.store = store
        self.fallback = fallback
        self.where = f"the shared state store {store.label} (schema {SCHEMA})"

    def append(self, run: RunResult, *, who: str | None = None) -> dict[str, Any]:
        record = dict(run.to_dict(), who=who or operator())
        try:
            self.store.insert(record, replace=True)
            return record
        except DoaiError as exc:
            log.debug("shared store: %s", exc.message)
            run.warnings.append(f"this run's record is NOT in the shared store ({exc.message}): kept in "
                                f"{self.fallback.path}; run `doai-rollback state push` once the store is back")
            return self.fallback.append_record(dict(run.to_dict(), who=who or operator()))

    def append_record(self, record: dict[str, Any]) -> dict[str, Any]:
        try:
            self.store.insert(record, replace=True)
        except DoaiError as exc:
            log.warning("run %s: NOT in the shared store (%s): kept in %s; run `doai-rollback state push`",
                        record.get("run_id"), exc.message, self.fallback.path)
            self.fallback.append_record(record)
        return record

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.store.records(newest_first=False))

    def runs(self, *, limit: int | None = None, part: str | None = None) -> list[dict[str, Any]]:
        return self.store.records(limit=limit, part=part)

    def find(self, run_id: str) -> dict[str, Any]:
        matches = self.store.records(prefix=run_id) if run_id else []
        if not matches:
            raise UsageError(f"no run {run_id!r} in {self.where}", hint="see `doai-rollback history`")
        ids = {r["run_id"] for r in matches}
        if len(ids) > 1:
            raise UsageError(f"run id {run_id!r} is ambiguous: {', '.join(sorted(ids))}")
        return matches[0]


def _app_name(run_id: str | None, owner: str) -> str:
    who = owner if "@" in owner else f"{owner}@{socket.gethostname()}"
    text = f"doai-rollback-state {run_id or '-'} {who}".encode("ascii", "replace").decode()
    return "".join(c if c.isprintable() else "?" for c in text)[:63]


class PgLock:
    """One part's lock in the shared store: a session-level advisory lock held on a connection
    kept open for the run, and a row saying who holds it (see the module's docstring)."""

    def __init__(self, store: PgStore, target: str) -> None:
        if not _TARGET_RE.fullmatch(target):
            raise UsageError(f"invalid lock target {target!r}")
        self.store = store
        self.target = target
        self.key = lock_key(target)
        self.taken_over: LockInfo | None = None  # the row of a holder whose session had ended

    def read(self) -> LockInfo | None:
        with self.store.session() as conn:
            row = conn.execute(f"SELECT {_LOCK_COLS} FROM {SCHEMA}.locks WHERE target = %s",
                               (self.target,)).fetchone()
        return _info(row) if row else None

    def _locked(self, conn: Any) -> LockedError:
        # The holder writes its row right after it takes the lock: a loser of a close race waits
        # for that row (briefly, bounded) so that it names the holder, not an older row's.
        deadline = time.monotonic() + 3.0
        while True:
            pid = _holder_pid(conn, self.target)
            row = conn.execute(f"SELECT {_LOCK_COLS} FROM {SCHEMA}.locks WHERE target = %s",
                               (self.target,)).fetchone()
            if row is not None and (pid is None or row[9] == pid):
                break
            if time.monotonic() > deadline:
                row = None
                break
            time.sleep(0.05)
        if row is None:
            who = "another controller (it has just taken it or let it go: try again)"
        else:
            held = _info(row)
            who = (f"{held.owner} (pid {held.pid} on {held.host}, run {held.run_id}) since "
                   f"{held.to_dict()['acquired_iso']}" + (f", reason: {held.reason}" if held.reason else ""))
        return LockedError(
            f"another rollback of {self.target} is running: {who}; nothing was changed",
            hint="wait for it (`doai-rollback lock status` from any controller); the lock is PostgreSQL's own "
                 "and goes with that run's connection, also when its controller dies")

    @contextlib.contextmanager
    def held(self, *, owner: str, reason: str | None, run_id: str | None,
             on_takeover: Callable[[LockInfo], None] | None = None) -> Iterator[LockInfo]:
        import psycopg

        from doai_ansible.lock import process_start

        conn = self.store.connect(app=_app_name(run_id, owner))
        try:
            self.store._migrate(conn)
            with conn.cursor() as cur:
                # A controller that vanishes without closing its connection (a laptop's lid, a cut
                # network) must not hold the lock for the kernel's default 2 hours.
                for name, value in (("tcp_keepalives_idle", "30"), ("tcp_keepalives_interval", "10"),
                                    ("tcp_keepalives_count", "3")):
                    cur.execute("SELECT set_config(%s, %s, false)", (name, value))
            got = bool(conn.execute("SELECT pg_try_advisory_lock(%s::bigint)", (self.key,)).fetchone()[0])
            if not got:
                raise self._locked(conn)
            row = conn.execute(f"SELECT {_LOCK_COLS} FROM {SCHEMA}.locks WHERE target = %s",
                               (self.target,)).fetchone()
            self.taken_over = _info(row) if row else None  # its holder's session ended: a dead run
            now = time.time()
            info = LockInfo(self.target, owner, os.getpid(), socket.gethostname(), now, reason, run_id,
                            started=process_start(os.getpid()), refreshed=now)
            conn.execute(
                f"INSERT INTO {SCHEMA}.locks ({_LOCK_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "pg_backend_pid()) ON CONFLICT (target) DO UPDATE SET owner = EXCLUDED.owner, pid = EXCLUDED.pid, "
                "host = EXCLUDED.host, acquired = EXCLUDED.acquired, reason = EXCLUDED.reason, "
                "run_id = EXCLUDED.run_id, started = EXCLUDED.started, refreshed = EXCLUDED.refreshed, "
                "backend_pid = EXCLUDED.backend_pid",
                (self.target, owner, info.pid, info.host, now, reason, run_id, info.started, now))
        except psycopg.Error as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise self.store._error(exc, f"could not take the lock of {self.target}") from None
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        try:
            if self.taken_over is not None and on_takeover is not None:
                log.warning("lock of %s: the session of %s (run %s) had ended without releasing it",
                            self.target, self.taken_over.owner, self.taken_over.run_id)
                on_takeover(self.taken_over)
            yield info
        finally:
            # The row first, then the lock: a controller that gets the lock never finds the row
            # of a run that ended well. A store gone mid-run: its session, and the lock, are gone.
            with contextlib.suppress(Exception):
                conn.execute(f"DELETE FROM {SCHEMA}.locks WHERE target = %s AND backend_pid = pg_backend_pid()",
                             (self.target,))
                conn.execute("SELECT pg_advisory_unlock(%s::bigint)", (self.key,))
            with contextlib.suppress(Exception):
                conn.close()

    def release(self, *, force: bool = False, dry_run: bool = False) -> LockInfo | None:
        """Remove the row a dead holder left (its lock went with its session); a live holder is
        refused, unless ``force``: then its session is ended (``pg_terminate_backend``, which
        needs the holder's role or pg_signal_backend), which ends its lock."""
        with self.store.session() as conn:
            row = conn.execute(f"SELECT {_LOCK_COLS} FROM {SCHEMA}.locks WHERE target = %s",
                               (self.target,)).fetchone()
            live = _holder_pid(conn, self.target)
            held = _info(row) if row else None
            if held is None and live is None:
                return None
            if live is not None and not force:
                who = f"{held.owner}, pid {held.pid} on {held.host}" if held else f"session {live}"
                raise LockedError(f"the lock on {self.target} is held by a live run ({who})",
                                  hint="add --force only if you are sure that run is dead (its database session "
                                       "is then ended)")
            if dry_run:
                return held or LockInfo(self.target, "unknown", -1, "unknown", 0.0, None, None)
            if live is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (live,))
            conn.execute(f"DELETE FROM {SCHEMA}.locks WHERE target = %s", (self.target,))
        return held or LockInfo(self.target, "unknown", -1, "unknown", 0.0, None, None)


# -- state push ------------------------------------------------------------------------------------
def push(settings: Settings, *, dry_run: bool = False) -> dict[str, Any]:
    """Add this machine's journal records to the shared store, each run once (by run id): the
    runs made with ``--state local`` or kept locally when the store went away. ``dry_run``: how
    many would be added, nothing written."""
    if backend(settings) != "postgres":
        raise UsageError("state.backend is local: there is no shared store to push to",
                         hint=f"set `state: {{backend: postgres}}` in the config file or add --state postgres, "
                              f"with {URL_ENV} exported")
    st = store(settings)
    st.ready()
    local = list(Journal(settings.journal_path))
    if dry_run:
        with st.session() as conn:
            there = {r[0] for r in conn.execute(f"SELECT run_id FROM {SCHEMA}.runs WHERE run_id = ANY(%s)",
                                                ([r.get("run_id") for r in local],)).fetchall()}
        added = len({r.get("run_id") for r in local if r.get("run_id")} - there)
    else:
        added = sum(1 for record in local if record.get("run_id") and st.insert(record, replace=False))
    return {"added": added, "dry_run": dry_run, "already": len(local) - added, "local_records": len(local),
            "journal": str(settings.journal_path), "store": f"{st.label} (schema {SCHEMA})"}
