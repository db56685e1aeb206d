"""The database part: Supabase migrations on PostgreSQL, rolled back by their down files.

Supabase has no down migrations (``migration repair --status reverted`` only deletes history
rows; ``migration down`` resets the whole database). Here a migration
``supabase/migrations/<version>_<name>.sql`` is undone by its down file
``supabase/rollbacks/<version>_<name>.sql``:

* plan (read-only): the migrations to undo, newest first, their down files and checksums, and
  the data at risk (tables dropped or emptied, columns dropped, with row counts);
* apply: refuses when data is at risk without ``--accept-data-loss`` and when the history or a
  down file changed since the plan; takes a snapshot (``pg_dump -Fc``) and refuses to go on
  without it; then every down statement and the matching history deletes run in ONE
  transaction with a lock timeout and a statement timeout, rolled back whole on any error
  (which names the file, statement and line); then verifies (history, tables gone or intact
  with their row counts, foreign keys valid) and restores the snapshot if that fails;
* revert and ``undo``: restore the snapshot the run took (after a snapshot of the present).

A run (not a dry run) holds a session-level advisory lock on the target database from before
its plan to its end (:meth:`DatabasePart.session`), on a connection of its own whose
``application_name`` says who holds it: two controllers with separate state dirs (CI and a
laptop) never plan or apply on one database at once; the second exits 5 naming the first. A
controller that dies releases it with its connection.

The password in ``DOAI_DATABASE_URL`` never reaches a message, a command line or a child's
environment (:mod:`doai_ansible.db.conn`).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from doai_ansible import validate
from doai_ansible.context import RunContext
from doai_ansible.db import dump
from doai_ansible.db import migrations as mig
from doai_ansible.db import sqlread
from doai_ansible.db.conn import DbUrl, ToolError
from doai_ansible.db.sqlsplit import split
from doai_ansible.errors import DoaiError, LockedError, UnreachableError, UsageError, ValidationError
from doai_ansible.model import Outcome, Part, Step, StepResult, utcnow
from doai_ansible.part import PartBase, Request

MAX_LAST = 100
# Statements that would end or split the rollback's one transaction.
TX_CONTROL = re.compile(r"(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE\s+TRANSACTION"
                        r"|COMMIT\s+PREPARED|ROLLBACK\s+PREPARED)\b", re.I)


#: The advisory lock every doai-rollback run takes on the target database (per database: the
#: same key in another database of the server is another lock). A fixed bigint, so that every
#: version of the tool and every server agrees on it.
ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"doai-rollback:database").digest()[:8], "big", signed=True)
#: What the holder's connection is called (``application_name``): the prefix, then its run id and who.
HOLDER_PREFIX = "doai-rollback-lock"
#: PostgreSQL keeps ``application_name`` to NAMEDATALEN - 1 bytes.
_APP_NAME_MAX = 63


class DownFailed(DoaiError):
    pass


def holder_name(run_id: str, operator: str) -> str:
    """``application_name`` of the lock's connection: ``doai-rollback-lock <run id> <who>``, who
    being ``user@host`` (the host added to a ``DOAI_OPERATOR`` without one), ASCII, cut to fit."""
    who = operator if "@" in operator else f"{operator}@{socket.gethostname()}"
    text = f"{HOLDER_PREFIX} {run_id} {who}".encode("ascii", "replace").decode()
    return "".join(c if c.isprintable() else "?" for c in text)[:_APP_NAME_MAX]


def _key_parts(key: int) -> tuple[int, int]:
    """How pg_locks shows a bigint advisory key: (classid, objid), the high and low 32 bits."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def advisory_holder(conn: Any) -> dict[str, Any] | None:
    """Who holds the run lock on ``conn``'s database (another session): its backend pid, its
    ``application_name`` (run id and who), since when; None when nobody does."""
    classid, objid = _key_parts(ADVISORY_KEY)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT l.pid, a.application_name, a.backend_start, a.client_addr::text FROM pg_locks l "
            "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.objsubid = 1 "
            "AND l.pid <> pg_backend_pid() LIMIT 1", (classid, objid))
        row = cur.fetchone()
    if row is None:
        return None
    pid, app, since, addr = row
    out: dict[str, Any] = {"pid": pid, "application_name": app or "", "since": since.isoformat() if since else None,
                           "client_addr": addr}
    parts = (app or "").split(" ", 2)
    if len(parts) == 3 and parts[0] == HOLDER_PREFIX:
        out["run_id"], out["who"] = parts[1], parts[2]
    return out


def _holder_text(h: dict[str, Any]) -> str:
    if "run_id" in h:
        text = f"run {h['run_id']} by {h['who']}"
    else:  # not a doai-rollback run's lock connection (or its name was changed)
        text = f"PostgreSQL session {h['pid']} ({h['application_name'] or 'no application_name'})"
    if h.get("since"):
        text += f", connected since {h['since']}"
    return text


def _version(value: str | None, option: str = "--to") -> str | None:
    if value is None:
        return None
    if not mig.VERSION_RE.match(value):
        raise ValidationError(f"{option} {value[:40]!r} is not a migration version (14 digits, e.g. 20261120000000)",
                              hint="`doai-rollback database status` lists them")
    return value


_OBJECTS = ("index", "constraint", "view", "function", "sequence", "extension")


def _risk_text(at_risk: list[dict[str, Any]]) -> str | None:
    """The plan's "data at risk": every item with rows or values, and every item that needs the
    flag whatever its rows (a statement that cannot be read, what CASCADE takes along)."""
    items = []
    for r in at_risk:
        if not (r.get("rows") or r.get("always")):
            continue
        what = r["what"] + (" with CASCADE" if r.get("cascade") and r.get("kind") == "table" else "")
        if r.get("action") == "unreadable" or r.get("constraint") or (r.get("cascade_of") and not r.get("rows")
                                                                        and r.get("kind") not in ("table", "column")):
            items.append(f"{r['table']} ({what})")
        else:
            items.append(f"{r['table']} ({what}, {r.get('rows') or 0:,} {'values' if r.get('column') else 'rows'})")
    return "; ".join(items) or None


def _table_cascade(conn: Any, table: str) -> list[dict[str, Any]]:
    """What ``DROP TABLE table CASCADE`` takes along: the other tables' foreign keys to it (with
    the rows that use them) and, through pg_depend, the views built on it or on those views."""
    fks = [d for d in mig.cascade_dependents(conn, table) if d.get("constraint")]
    views = [g for g in mig.cascade_objects(conn, "table", table)
             if g.get("kind") in ("view", "materialized view", "table", "column") and g.get("table") != table]
    return fks + views


def _with_catalog(conn: Any, r: dict[str, Any]) -> list[dict[str, Any]]:
    """One item a down file puts at risk, with its row counts and what its CASCADE takes along
    (from the catalog, at plan time)."""
    kind, action, cascade = r.get("kind"), r.get("action"), r.get("cascade")
    if action == "unreadable":
        return [dict(r, rows=0)]
    if kind == "column":
        out = [dict(r, rows=mig.values_in_column(conn, r["table"], r["column"]))]
        if action == "dropped" and cascade:
            out += mig.cascade_dependents(conn, r["table"], r["column"])
        return out
    if kind == "table":
        out = [dict(r, rows=mig.row_count(conn, r["table"]) or 0)]
        if cascade and action == "dropped":
            out += _table_cascade(conn, r["table"])
        elif cascade and action == "truncated":
            out += [{"table": d["table"], "what": f"truncated by CASCADE ({d['what'].split(' dropped')[0]})",
                     "rows": mig.row_count(conn, d["table"]) or 0, "kind": "table", "action": "truncated",
                     "always": True} for d in mig.cascade_dependents(conn, r["table"]) if d.get("constraint")]
        return out
    if kind == "schema":
        out = [dict(r, rows=0, always=bool(cascade))]
        for t in mig.tables_in_schema(conn, r["name"]):
            out.append({"table": t, "what": f"dropped (schema {r['name']} dropped)", "kind": "table", "action": "dropped",
                        "schema": r["name"],
                        "gone": True, "rows": mig.row_count(conn, t) or 0, "cascade": cascade})
            if cascade:
                out += [d for d in _table_cascade(conn, t) if d.get("schema") != r["name"]]
        return out
    if cascade and action == "dropped":  # a type, view, function, extension, index, constraint ... CASCADE
        return [dict(r, rows=0), *mig.cascade_objects(conn, kind or "", r["name"], r.get("on"))]
    return [dict(r, rows=0)]


class DatabasePart(PartBase):
    part = Part.DATABASE
    needs = "DOAI_DATABASE_URL and the supabase/migrations folder (database.project_dir)"

    def __init__(self) -> None:
        #: The run lock's connection of each run under way (by run id), from :meth:`session`.
        self._run_locks: dict[str, Any] = {}

    def _url(self, ctx: RunContext) -> DbUrl:
        url = DbUrl.parse(ctx.settings.database.url)
        if url.tls.warning:  # the operator weakened TLS to a remote database: said in every run, journaled
            ctx.warn(url.tls.warning)
        return url

    def configured(self, ctx: RunContext) -> bool:
        db = ctx.settings.database
        return bool(db.url) and db.migrations_path.is_dir()

    # -- status ------------------------------------------------------------------------------------
    def status(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        db = ctx.settings.database
        url = self._url(ctx)
        files = mig.on_disk(db.migrations_path, db.rollbacks_path)
        st: dict[str, Any] = {"part": self.name, "configured": True, "database": url.label,
                              "migrations_dir": str(db.migrations_path), "rollbacks_dir": str(db.rollbacks_path)}
        try:
            conn = url.connect(autocommit=True)
        except DoaiError as exc:
            return dict(st, reachable=False, healthy=False, error=str(exc), migrations=[])
        with conn:
            hist = mig.history(conn)
            applied = {h["version"]: h for h in hist}
            rows = []
            for version in sorted(set(files) | set(applied)):
                m = files.get(version)
                rows.append({"version": version, "name": (m.name if m else applied[version].get("name")),
                             "local": m is not None, "applied": version in applied,
                             "down_file": str(m.down) if m and m.down else None,
                             "touches": m.touches() if m else []})
            not_valid = mig.foreign_keys_not_valid(conn, db.schemas)
            server = dump.server_version(conn)
        missing = [r["version"] for r in rows if r["applied"] and not r["local"]]
        st.update(reachable=True, server_version=server, migrations=rows,
                  last_applied=hist[-1]["version"] if hist else None,
                  applied_not_local=missing, foreign_key_problems=not_valid,
                  healthy=not not_valid)
        return st

    def status_lines(self, st: dict[str, Any]) -> list[str]:
        if not st.get("configured", True):
            return [f"database: not configured ({self.needs})"]
        if not st.get("reachable"):
            return [f"database {st.get('database')}: UNREACHABLE: {st.get('error')}"]
        state = "healthy" if st.get("healthy") else "UNHEALTHY"
        lines = [(f"database {st['database']}: {state}  PostgreSQL {st.get('server_version')}"
                 f"  last applied {st.get('last_applied') or '(none)'}")]
        for r in st.get("migrations") or []:
            where = "applied" if r["applied"] else "pending"
            if not r["local"]:
                where += ", NOT in the migrations folder"
            down = "down file" if r["down_file"] else "no down file (restore only)"
            touches = ", ".join(r["touches"]) or "-"
            lines.append(f"    {r['version']} {r['name'] or '?'}: {where}; {down}; tables: {touches}")
        for p in st.get("foreign_key_problems") or []:
            lines.append(f"    {p}")
        return lines

    # -- a run -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self, ctx: RunContext, request: Request) -> Iterator[None]:
        """The run lock on the target database, from before the plan to the run's end: a
        session-level ``pg_try_advisory_lock`` on a connection kept open for the run (autocommit,
        idle), named after the run and its operator so that a second controller can say who
        holds it. Never waits: held by another, the run is refused (exit 5) before it plans."""
        import psycopg

        url = self._url(ctx)
        conn = url.connect(autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT set_config('application_name', %s, false)", (holder_name(ctx.run_id, ctx.operator),))
                # A controller that vanishes without closing its connection (a laptop's lid, a
                # cut network) must not hold the lock for the kernel's default 2 hours.
                for name, value in (("tcp_keepalives_idle", "30"), ("tcp_keepalives_interval", "10"),
                                    ("tcp_keepalives_count", "3")):
                    cur.execute("SELECT set_config(%s, %s, false)", (name, value))
                cur.execute("SELECT pg_try_advisory_lock(%s::bigint)", (ADVISORY_KEY,))
                got = bool(cur.fetchone()[0])
                holder = None if got else advisory_holder(conn)
        except psycopg.Error as exc:
            conn.close()
            raise UnreachableError(f"database {url.label}: could not take the run lock: "
                                   f"{url.scrub(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
                                   hint="check DOAI_DATABASE_URL, the network and the server") from None
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            who = _holder_text(holder) if holder else "another session (it has just ended: try again)"
            raise LockedError(
                f"another rollback of the database {url.label} is running: {who}; nothing was changed",
                hint="wait for it to end (`doai-rollback history` on its controller); the lock is PostgreSQL's "
                     "own and goes with that run's connection, also when its controller dies")
        self._run_locks[ctx.run_id] = conn
        try:
            yield
        finally:
            self._run_locks.pop(ctx.run_id, None)
            with contextlib.suppress(Exception):  # closing the session releases the lock in any case
                conn.execute("SELECT pg_advisory_unlock(%s::bigint)", (ADVISORY_KEY,))
            conn.close()

    def _still_locked(self, ctx: RunContext) -> None:
        """Before the first change: the run lock's session is still there and holds the lock (a
        server restart or a cut connection would have freed it for another controller)."""
        conn = self._run_locks.get(ctx.run_id)
        if conn is None:  # not run by the engine (no session): nothing to check
            return
        classid, objid = _key_parts(ADVISORY_KEY)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                            "AND pid = pg_backend_pid() AND classid = %s::bigint::oid AND objid = %s::bigint::oid "
                            "AND objsubid = 1", (classid, objid))
                held = cur.fetchone()[0] > 0
        except Exception:  # noqa: BLE001 - the session is gone, and the lock with it
            held = False
        if not held:
            raise LockedError(f"the run lock on the database {self._url(ctx).label} was lost (its connection "
                              "ended): another controller may be at work there; nothing was changed",
                              hint="check `doai-rollback database status`, then run again")

    def request(self, *, to: str | None = None, last: int | None = None, accept_data_loss: bool = False,
                reason: str | None = None, action: str = "rollback", targets: Mapping[str, str] | None = None,
                health_gate: bool = True, restore_file: str | None = None, limit: str | None = None) -> Request:
        if action == "rollback" and restore_file is None:
            if (to is None) == (last is None):
                raise UsageError("give --to VERSION or --last N (the migrations to undo)")
            to = _version(to)
            if last is not None and not 1 <= int(last) <= MAX_LAST:
                raise ValidationError(f"--last must be 1..{MAX_LAST}")
        options: dict[str, Any] = {"reason": validate.reason(reason), "accept_data_loss": bool(accept_data_loss),
                                   "last": int(last) if last is not None else None}
        if restore_file is not None:
            options["restore_file"] = str(Path(restore_file).expanduser().absolute())
        return Request(action=action, to=to, targets=dict(targets or {}), health_gate=health_gate, options=options)

    def plan(self, ctx: RunContext, request: Request) -> list[Step]:
        db = ctx.settings.database
        url = self._url(ctx)
        restore_file = request.options.get("restore_file") or (
            next(iter(request.targets.values())) if request.action in ("undo", "put-back") and request.targets else None)
        with url.connect(autocommit=True) as conn:
            dump.preflight_tools(conn, db)
            hist = mig.history(conn)
            if restore_file:
                return [self._plan_restore(conn, url, Path(restore_file), hist, request, tuple(db.schemas))]
            return [self._plan_rollback(conn, url, db, hist, request)]

    def _plan_restore(self, conn: Any, url: DbUrl, path: Path, hist: list[dict[str, Any]], request: Request,
                      schemas: tuple[str, ...]) -> Step:
        manifest = dump.read_manifest(path, schemas)
        if manifest.get("database") != url.label:
            raise ValidationError(f"{path.name} is a snapshot of {manifest.get('database')}, not of {url.label}")
        current = hist[-1]["version"] if hist else "(none)"
        # A restore always changes the database: from its live history to the snapshot (by file).
        step = Step(Part.DATABASE, url.label, current, f"snapshot {path.name}",
                    rule=f"{request.action}: the snapshot {path.name} taken {manifest.get('created')}",
                    details={"restore_file": str(path), "manifest": manifest, "kind": "restore",
                             "from_label": f"migrations up to {current}",
                             "to_label": f"snapshot {path.name} (migrations up to {manifest.get('last_migration')})"})
        step.at_risk = (f"everything in {', '.join(manifest['schemas'])} is replaced by the snapshot of "
                        f"{manifest.get('created')}: rows written since then are lost (a snapshot of now is taken first)")
        step.notes = [f"checksum {manifest['sha256'][:12]} verified", "one transaction: all of it or nothing"]
        return step

    def _plan_rollback(self, conn: Any, url: DbUrl, db: Any, hist: list[dict[str, Any]], request: Request) -> Step:
        applied = [h["version"] for h in hist]
        if not applied:
            raise ValidationError(f"{url.label} has no applied migration ({mig.HISTORY} is empty or missing)")
        if request.to is not None:
            if request.to not in applied:
                raise ValidationError(f"--to {request.to} is not an applied migration of {url.label}",
                                      hint=f"applied: {', '.join(applied[-8:])}")
            undo = [v for v in applied if v > request.to]
            rule = f"--to {request.to}"
        else:
            n = request.options["last"]
            if n > len(applied):
                raise ValidationError(f"--last {n}: only {len(applied)} migration(s) are applied")
            undo = applied[-n:]
            rule = f"--last {n}"
        target = request.to if request.to is not None else (applied[-len(undo) - 1] if len(applied) > len(undo) else "(none)")
        current = applied[-1]
        if not undo:
            return Step(Part.DATABASE, url.label, current, target, rule=rule,
                        details={"kind": "rollback", "migrations": [], "from_label": current, "to_label": target})
        files = mig.on_disk(db.migrations_path, db.rollbacks_path)
        missing = [v for v in undo if v not in files]
        if missing:
            raise ValidationError(f"migration(s) {', '.join(missing)} are applied but not in {db.migrations_path}",
                                  hint="run from the project's checkout at the deployed commit")
        covered = set(db.schemas) | {dump.HISTORY_SCHEMA}
        for v in undo:
            m = files[v]
            if m.down is None:
                continue
            outside = sorted(sqlread.schemas_touched(m.down.read_text(encoding="utf-8")) - covered)
            if outside:
                raise ValidationError(
                    f"{m.down.name} changes schema(s) {', '.join(outside)}, which the snapshot taken first would not "
                    f"hold (database.schemas: {', '.join(db.schemas)}); nothing was changed",
                    hint="add them to database.schemas (an application schema, not Supabase's own) or change the down file")
        no_down = [files[v].file_name for v in undo if files[v].down is None]
        for v in undo:
            m = files[v]
            if m.down is None:
                continue
            for st in split(m.down.read_text(encoding="utf-8")):
                if TX_CONTROL.match(st.sql):
                    raise ValidationError(
                        f"{m.down.name}, statement {st.index} (line {st.line}): {st.first_line!r} controls the "
                        "transaction; down files run inside the rollback's one transaction: remove it")
        if no_down:
            raise ValidationError(
                f"no down file for {', '.join(no_down)} in {db.rollbacks_path}: it cannot be undone by SQL",
                hint="restore a snapshot taken before it: `doai-rollback database restore FILE` "
                     "(snapshots are in the state dir's snapshots/ folder)")
        items, at_risk = [], []
        for v in sorted(undo, reverse=True):
            m = files[v]
            assert m.down is not None  # every one has a down file (refused above otherwise)
            items.append({"version": v, "name": m.name, "file": str(m.path), "sha256": m.sha256,
                          "down_file": str(m.down), "down_sha256": m.down_sha256,
                          "statements": len(split(m.down.read_text(encoding="utf-8"))), "creates": m.creates()})
            for r in m.at_risk():
                r["migration"] = v
                at_risk += [dict(x, migration=v) for x in _with_catalog(conn, r)]
        beyond = sorted({r["table"] for r in at_risk if r.get("schema") and r["schema"] not in covered})
        if beyond:
            raise ValidationError(f"the down files would change {', '.join(beyond)} (with CASCADE), outside the schemas "
                                  f"the snapshot holds ({', '.join(db.schemas)}); nothing was changed",
                                  hint="add the schema to database.schemas or drop the dependent objects explicitly")
        gone = {r["table"] for r in at_risk if r.get("gone")}
        # A foreign key of a table that goes too is no loss of its own.
        at_risk = [r for r in at_risk if not (r.get("constraint") and r["table"] in gone)]
        step = Step(Part.DATABASE, url.label, current, target, rule=rule,
                    details={"kind": "rollback", "migrations": items, "at_risk_tables": at_risk,
                             "tables": mig.tables(conn, db.schemas), "applied": applied, "schemas": list(db.schemas),
                             "from_label": f"{current} ({len(applied)} applied)",
                             "to_label": f"{target} (undo {len(undo)}: {', '.join(i['version'] + ' ' + i['name'] for i in items)})"})
        step.at_risk = _risk_text(at_risk)
        step.notes = [f"undo {i['version']} {i['name']} with {Path(i['down_file']).name} ({i['statements']} statements)"
                      for i in items]
        step.notes.append("a snapshot is taken first; then one transaction (lock timeout "
                          f"{db.lock_timeout_s:g} s, statement timeout {db.statement_timeout_s:g} s)")
        objects = [f"{r['name']} ({r['kind']})" for r in at_risk
                   if r.get("name") and r.get("kind") in _OBJECTS and r.get("action") == "dropped"]
        if objects:
            step.notes.append("objects dropped (no rows of their own): " + ", ".join(objects))
        if step.at_risk:
            step.notes.append("data at risk (below): running it needs --accept-data-loss")
        return step

    def apply(self, ctx: RunContext, steps: list[Step], request: Request) -> list[StepResult]:
        if any(s.part is Part.DATABASE and s.changes for s in steps):
            self._still_locked(ctx)  # a refusal: nothing was changed
        results = []
        for step in steps:
            if step.part is not Part.DATABASE:
                continue
            if step.details.get("kind") == "restore":
                results.append(self._apply_restore(ctx, step, request))
            elif not step.changes:
                results.append(StepResult(step, Outcome.UNCHANGED, "nothing to undo", utcnow(), utcnow()))
            else:
                results.append(self._apply_rollback(ctx, step, request))
        return results

    def _snapshot(self, ctx: RunContext, url: DbUrl, conn: Any, label: str) -> dict[str, Any]:
        ctx.say(f"database {url.label}: snapshot before any change")
        return dump.snapshot(url, conn, ctx.settings.database, ctx.settings.snapshot_dir, label=label)

    def refuses(self, ctx: RunContext, steps: list[Step], request: Request) -> DoaiError | None:
        for step in steps:
            if step.part is not Part.DATABASE or not step.changes:
                continue
            try:
                if step.details.get("kind") == "restore":
                    self._snapshot_as_planned(ctx, step)
                else:
                    self._files_as_planned(step, request)
            except DoaiError as exc:
                return exc
        return None

    @staticmethod
    def _snapshot_as_planned(ctx: RunContext, step: Step) -> dict[str, Any]:
        path = Path(step.details["restore_file"])
        manifest = dump.read_manifest(path, tuple(ctx.settings.database.schemas))  # again: as confirmed, unchanged
        if manifest["sha256"] != step.details["manifest"]["sha256"]:
            raise ValidationError(f"{path} changed since the plan; nothing was changed")
        return manifest

    def recheck(self, ctx: RunContext, steps: list[Step], request: Request) -> None:
        url = self._url(ctx)
        for step in steps:
            if step.part is Part.DATABASE and step.changes and step.details.get("kind") == "rollback":
                with url.connect(autocommit=True) as conn:
                    self._history_as_planned(conn, url, step)

    @staticmethod
    def _files_as_planned(step: Step, request: Request) -> None:
        """Refuse what the plan knows: data at risk without the flag, a file changed since it was read."""
        if step.at_risk and not request.options.get("accept_data_loss"):
            raise ValidationError(f"data at risk: {step.at_risk}; once you have read the plan, run it with "
                                  "--accept-data-loss (a snapshot is taken first)")
        for item in step.details["migrations"]:  # the files the operator confirmed
            for key, sha in (("down_file", item["down_sha256"]), ("file", item["sha256"])):
                if not Path(item[key]).is_file() or mig.sha256_file(Path(item[key])) != sha:
                    raise ValidationError(f"{item[key]} changed since the plan; nothing was changed",
                                          hint="plan again and read the new plan")

    @staticmethod
    def _history_as_planned(conn: Any, url: DbUrl, step: Step) -> None:
        if [h["version"] for h in mig.history(conn)] != step.details["applied"]:
            raise ValidationError(f"the migration history of {url.label} changed since the plan, not as planned; "
                                  "nothing was changed", hint="plan again")

    def _apply_rollback(self, ctx: RunContext, step: Step, request: Request) -> StepResult:
        db = ctx.settings.database
        url = self._url(ctx)
        started = utcnow()
        self._files_as_planned(step, request)
        with url.connect(autocommit=True) as conn:
            self._history_as_planned(conn, url, step)
            try:
                snap = self._snapshot(ctx, url, conn, ctx.run_id)
            except (DoaiError, OSError) as exc:
                return StepResult(step, Outcome.FAILED, f"the snapshot failed, so nothing was changed: {exc}",
                                  started, utcnow())
            step.details["snapshot"] = snap["file"]
            try:
                self._run_down(conn, step, db)
            except DownFailed as exc:
                return StepResult(step, Outcome.FAILED, f"{exc}; the transaction was rolled back: nothing was changed",
                                  started, utcnow())
            except ValidationError:
                raise  # the history moved under the lock: nothing was changed
            except Exception as exc:  # noqa: BLE001 - the connection broke: did the commit land?
                return self._settle(ctx, url, step, started, exc)
        ctx.say(f"database {url.label}: rolled back to {step.desired}; verified")
        return StepResult(step, Outcome.SUCCEEDED, f"snapshot {Path(snap['file']).name}", started, utcnow())

    def _settle(self, ctx: RunContext, url: DbUrl, step: Step, started: str, exc: BaseException) -> StepResult:
        """The connection broke around the commit: the history on a new connection says whether
        the rollback committed (then it is the target) or not (then it is the plan's)."""
        why = url.scrub(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        undone = {i["version"] for i in step.details["migrations"]}
        try:
            with url.connect(autocommit=True) as conn:
                applied = [h["version"] for h in mig.history(conn)]
        except DoaiError as again:
            return StepResult(step, Outcome.NOT_RESTORED, f"the connection broke ({why}) and the database cannot be "
                              f"read again ({again}): check `doai-rollback database status`; the snapshot is "
                              f"{step.details.get('snapshot')}", started, utcnow())
        if applied == step.details["applied"]:
            return StepResult(step, Outcome.FAILED, f"the connection broke ({why}); the transaction did not commit: "
                              "nothing was changed", started, utcnow())
        if applied == [v for v in step.details["applied"] if v not in undone]:
            ctx.warn(f"database {url.label}: the connection broke at the commit ({why}); the history shows it committed")
            return StepResult(step, Outcome.SUCCEEDED, f"committed (the connection broke after the commit); snapshot "
                              f"{Path(step.details['snapshot']).name}", started, utcnow())
        return StepResult(step, Outcome.NOT_RESTORED, f"the connection broke ({why}) and the history is neither the "
                          f"plan's nor the target: restore {step.details.get('snapshot')}", started, utcnow())

    def _run_down(self, conn: Any, step: Step, db: Any) -> None:
        import psycopg
        from psycopg import sql

        with conn.transaction(), conn.cursor() as cur:
            cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(db.lock_timeout_s * 1000)}ms")))
            cur.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
                sql.Literal(f"{int(db.statement_timeout_s * 1000)}ms")))
            try:
                cur.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier("supabase_migrations",
                                                                                             "schema_migrations")))
            except psycopg.Error as exc:
                raise DownFailed(f"could not lock {mig.HISTORY}: {str(exc).strip()}") from None
            cur.execute(f"SELECT version FROM {mig.HISTORY} ORDER BY version")  # noqa: S608 - fixed name
            if [r[0] for r in cur.fetchall()] != step.details["applied"]:
                raise ValidationError("the migration history changed since the plan, not as planned; nothing was changed")
            for item in step.details["migrations"]:
                down = Path(item["down_file"])
                raw = down.read_bytes()  # what runs is what was checked against the plan
                if hashlib.sha256(raw).hexdigest() != item["down_sha256"]:
                    raise ValidationError(f"{down} changed since the plan; nothing was changed")
                for st in split(raw.decode("utf-8")):
                    try:
                        cur.execute(st.sql.encode())  # bytes: no placeholder interpretation
                    except psycopg.Error as exc:
                        raise DownFailed(f"statement {st.index} (line {st.line}) of {down.name} failed: "
                                         f"{str(exc).strip().splitlines()[0]} [{st.first_line}]") from None
                cur.execute(f"DELETE FROM {mig.HISTORY} WHERE version = %s", (item["version"],))  # noqa: S608
            # Verified before the commit, in the transaction: a failed check changes nothing, and
            # what the app writes meanwhile (other sessions) cannot fail it.
            problems = self._verify(conn, step, db)
            if problems:
                raise DownFailed("verify failed: " + "; ".join(problems))

    def _verify(self, conn: Any, step: Step, db: Any) -> list[str]:
        """History at the target; the tables the undone migrations created gone, every other
        table still there; foreign keys validated (PostgreSQL then guarantees no orphan)."""
        problems = []
        applied = [h["version"] for h in mig.history(conn)]
        undone = {i["version"] for i in step.details["migrations"]}
        want = [v for v in step.details["applied"] if v not in undone]
        if applied != want:
            problems.append(f"history is {applied[-3:]}, expected {want[-3:]}")
        created = {t for i in step.details["migrations"] for t in i["creates"]}
        dropped = {r["table"] for r in step.details["at_risk_tables"] if r.get("gone") or r["what"] == "dropped"}
        left = set(mig.tables(conn, tuple(db.schemas)))
        problems += [f"{t} still exists" for t in sorted(created & left)]
        problems += [f"{t} is gone" for t in sorted(set(step.details["tables"]) - created - dropped - left)]
        problems += mig.foreign_keys_not_valid(conn, tuple(db.schemas))
        return problems

    def _restore_result(self, ctx: RunContext, url: DbUrl, conn: Any, step: Step, path: Path,
                        manifest: dict[str, Any], started: str, why: str) -> StepResult:
        try:
            dump.restore(url, conn, ctx.settings.database, path, manifest)
            bad = self._verify_restore(conn, manifest)
            if bad:
                raise DoaiError("; ".join(bad))
        except (DoaiError, OSError) as exc:
            return StepResult(step, Outcome.NOT_RESTORED,
                              f"{why}; restoring {path} FAILED: {url.scrub(str(exc))} — restore it by hand: "
                              f"doai-rollback database restore {path}", started, utcnow())
        return StepResult(step, Outcome.RESTORED, f"{why}; the snapshot {path.name} was restored", started, utcnow())

    @staticmethod
    def _verify_restore(conn: Any, manifest: dict[str, Any]) -> list[str]:
        """After the commit (row counts and history were checked inside the restore's transaction):
        every table of the snapshot is there."""
        have = set(mig.tables(conn, tuple(manifest.get("schemas") or ())))
        return [f"{t} is missing after the restore" for t in manifest.get("row_counts") or {} if t not in have]

    def _apply_restore(self, ctx: RunContext, step: Step, request: Request) -> StepResult:
        url = self._url(ctx)
        started = utcnow()
        path = Path(step.details["restore_file"])
        manifest = self._snapshot_as_planned(ctx, step)
        with url.connect(autocommit=True) as conn:
            try:
                before = self._snapshot(ctx, url, conn, f"{ctx.run_id}-before-restore")
            except (DoaiError, OSError) as exc:
                return StepResult(step, Outcome.FAILED, f"the snapshot of the present failed, so nothing was changed: {exc}",
                                  started, utcnow())
            step.details["snapshot"] = before["file"]
            try:
                dump.restore(url, conn, ctx.settings.database, path, manifest)
            except (ToolError, OSError) as exc:
                return StepResult(step, Outcome.FAILED, f"{url.scrub(str(exc))}; the restore ran in one transaction: "
                                  "nothing was changed", started, utcnow())
            bad = self._verify_restore(conn, manifest)
            if bad:
                return self._restore_result(ctx, url, conn, step, Path(before["file"]), before, started,
                                            "verify after the restore failed: " + "; ".join(bad))
        return StepResult(step, Outcome.SUCCEEDED, f"restored {path.name}; the state before is in "
                          f"{Path(before['file']).name}", started, utcnow())

    def revert(self, ctx: RunContext, results: list[StepResult], reason: str | None) -> list[StepResult]:
        out = []
        url = self._url(ctx)
        for r in results:
            snap = r.step.details.get("snapshot")
            if r.outcome is not Outcome.SUCCEEDED or not snap:
                out.append(r)
                continue
            ctx.say(f"database {url.label}: restoring the snapshot {Path(snap).name} ({reason or 'revert'})")
            with url.connect(autocommit=True) as conn:
                back = self._restore_result(ctx, url, conn, r.step, Path(snap), dump.read_manifest(Path(snap)),
                                            r.started or utcnow(), reason or "revert")
            out.append(back)
        return out

    def undo_request(self, record: Mapping[str, Any]) -> Request | None:
        for s in self.steps_of(record):
            snap = (s.get("details") or {}).get("snapshot")
            if snap:
                return self.request(action="undo", targets={s["target"]: snap}, health_gate=False)
        return None

    def take_snapshot(self, ctx: RunContext) -> dict[str, Any]:
        """``database snapshot``: a snapshot now (changes nothing)."""
        url = self._url(ctx)
        with url.connect(autocommit=True) as conn:
            return self._snapshot(ctx, url, conn, ctx.run_id)

    def snapshots(self, ctx: RunContext) -> list[dict[str, Any]]:
        """The snapshots in the snapshot folder, newest first, each with its manifest and
        whether the file still matches its checksum."""
        out = []
        folder = ctx.settings.snapshot_dir
        for dump_file in sorted(folder.glob("*.dump"), key=lambda p: p.stat().st_mtime, reverse=True) \
                if folder.is_dir() else []:
            try:
                manifest = dump.read_manifest(dump_file)
                ok, problem = True, None
            except ValidationError as exc:
                manifest, ok, problem = {}, False, exc.message
            out.append({"file": str(dump_file), "bytes": dump_file.stat().st_size, "intact": ok, "problem": problem,
                        "created": manifest.get("created"), "database": manifest.get("database"),
                        "last_migration": manifest.get("last_migration"), "label": manifest.get("label")})
        return out

    def prune_snapshots(self, ctx: RunContext, keep: int, snaps: list[dict[str, Any]] | None = None) -> list[str]:
        """Delete all but the ``keep`` newest intact snapshots (and their manifests); a damaged
        one is never deleted by this (a human looks at it). ``snaps``: the listing the operator
        confirmed (else listed, and every dump hashed, now). Returns the files deleted."""
        if keep < 1:
            raise ValidationError("--prune must be at least 1: the newest snapshot is never pruned")
        gone = []
        for snap in [s for s in (self.snapshots(ctx) if snaps is None else snaps) if s["intact"]][keep:]:
            path = Path(snap["file"])
            path.unlink()
            dump.manifest_path(path).unlink(missing_ok=True)
            gone.append(str(path))
        return gone

    def health(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        st = self.status(ctx)
        return {"healthy": st["healthy"], "reachable": st["reachable"], "targets": {st["database"]: st["healthy"]}}

