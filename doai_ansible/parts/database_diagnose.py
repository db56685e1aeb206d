"""The database's diagnose: the runbook's scenario B (section 7, a migration failed).

:func:`migration_failure`: the migration state as ``database status`` shows it, half-applied
migrations (objects of a migration present while the history lacks it, or the history has it
while its objects are missing), and the integrity checks. The database session is read-only.
Declared by :class:`~doai_ansible.parts.database_cli.DatabaseCli`; the shared machinery is
:mod:`doai_ansible.diagnose`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from doai_ansible.context import RunContext
from doai_ansible.diagnose import Diagnosis
from doai_ansible.errors import UsageError


def migration_objects(sql_text: str) -> tuple[list[tuple[str, ...]], set[tuple[str, ...]]]:
    """(objects a migration creates, objects it drops): ``("table", "s.t")``, ``("column", "s.t",
    "c")``, ``("index", "s", "i")``, read by PostgreSQL's parser exactly as the database part
    reads it (:mod:`doai_ansible.db.sqlread`: quoted names kept, unquoted lower-cased)."""
    from doai_ansible.db import sqlread

    made: list[tuple[str, ...]] = []
    dropped: set[tuple[str, ...]] = set()
    for e in sqlread.read(sql_text):
        if e.kind == "table" and e.table:
            obj: tuple[str, ...] = ("table", e.table)
        elif e.kind == "column" and e.table and e.column:
            obj = ("column", e.table, e.column)
        elif e.kind == "index":
            obj = ("index", *e.name.split(".", 1))
        else:
            continue
        if e.action == "created":
            made.append(obj)
        elif e.action == "dropped":
            dropped.add(obj)
    return made, dropped


def object_label(obj: tuple[str, ...]) -> str:
    kind = obj[0]
    return f"{obj[1]} (table)" if kind == "table" else f"{obj[1]}.{obj[2]} ({kind})"


def half_applied(applied: bool, present: dict[tuple[str, ...], bool]) -> tuple[list[str], list[str]] | None:
    """(present, missing) labels when a migration is half-applied: not in the history with some
    of its objects present, or in the history with some missing; else None."""
    have = [object_label(o) for o, p in present.items() if p]
    lack = [object_label(o) for o, p in present.items() if not p]
    if (not applied and have) or (applied and lack):
        return have, lack
    return None


def _exists(conn: Any, obj: tuple[str, ...]) -> bool:
    with conn.cursor() as cur:
        if obj[0] == "table":
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (_regclass(conn, obj[1]),))
        elif obj[0] == "column":
            schema, table = obj[1].split(".", 1)
            cur.execute("SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = %s "
                        "AND table_name = %s AND column_name = %s)", (schema, table, obj[2]))
        else:
            cur.execute("SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = %s)",
                        (obj[1], obj[2]))
        return bool(cur.fetchone()[0])


def _regclass(conn: Any, qualified: str) -> str:
    from psycopg import sql

    schema, name = qualified.split(".", 1)
    return sql.Identifier(schema, name).as_string(conn)


def migration_failure(ctx: RunContext) -> Diagnosis:
    from doai_ansible.db import migrations as mig
    from doai_ansible.db.conn import DbUrl
    from doai_ansible.parts.database import DatabasePart

    part = DatabasePart()
    if not part.configured(ctx):
        raise UsageError("the database is not configured", hint=part.needs)
    d = Diagnosis("migration-failure")
    st = part.status(ctx)
    target = st.get("database") or part.name
    if not st.get("reachable"):
        d.add("reachable", False, target, st.get("error") or "no connection", unreachable=True)
        return d
    _state_findings(d, target, st)
    db = ctx.settings.database
    files = mig.on_disk(db.migrations_path, db.rollbacks_path)
    url = DbUrl.parse(db.url)
    import psycopg

    try:
        with url.connect(autocommit=True) as conn:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")  # diagnose changes nothing
            # Production: the orphan scans are bounded, and never wait behind an app's locks for long.
            conn.execute(f"SET statement_timeout = {int(db.statement_timeout_s * 1000)}")
            conn.execute(f"SET lock_timeout = {int(db.lock_timeout_s * 1000)}")
            applied = {h["version"] for h in mig.history(conn)}
            broken = _half_applied_findings(d, target, conn, files, applied)
            fk = mig.invalid_foreign_keys(conn, db.schemas)
    except psycopg.OperationalError as exc:
        d.add("reachable", False, target, url.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else
                                                    type(exc).__name__), unreachable=True)
        return d
    except psycopg.Error as exc:  # a permission, a timeout: a finding, not a crash
        d.add("integrity checks", False, target, "could not run: " + url.scrub(
            (str(exc).strip().splitlines() or [type(exc).__name__])[0]))
        return d
    for p in fk:
        d.add("integrity", False, target, url.scrub(p))
    if not fk:
        d.add("integrity", True, target, f"foreign keys validated, no orphan rows (schemas {', '.join(db.schemas)})")
    _migration_next(d, st, broken, bool(fk), files, applied)
    return d


def _state_findings(d: Diagnosis, target: str, st: Mapping[str, Any]) -> None:
    rows = st.get("migrations") or []
    applied = [r["version"] for r in rows if r["applied"]]
    pending = [r["version"] for r in rows if r["local"] and not r["applied"]]
    d.add("migration state", True, target,
          f"{len(applied)} applied (last {st.get('last_applied') or 'none'}), "
          f"{len(pending)} local not applied{(': ' + ', '.join(pending)) if pending else ''}")
    if st.get("applied_not_local"):
        d.add("migration files", False, target,
              f"applied but not in the migrations folder: {', '.join(st['applied_not_local'])}")


def _half_applied_findings(d: Diagnosis, target: str, conn: Any, files: Mapping[str, Any],
                           applied: set[str]) -> list[tuple[str, bool]]:
    """One finding per local migration that is half-applied; (version, in history) of those."""
    broken: list[tuple[str, bool]] = []
    objects = {v: migration_objects(m.path.read_text(encoding="utf-8")) for v, m in files.items()}
    # A pending migration's CREATE ... IF NOT EXISTS of what an applied one made is no sign of it.
    made_by_applied = {o for v, (made, _) in objects.items() if v in applied for o in made}
    later_drops: set[tuple[str, ...]] = set()
    for version in sorted(files, reverse=True):  # newest first: what a later migration dropped is not missing
        m = files[version]
        made, dropped = objects[version]
        is_applied = version in applied
        if is_applied:
            present = {o: _exists(conn, o) for o in made if o not in later_drops}
            later_drops |= dropped
        else:
            present = {o: _exists(conn, o) for o in made if o not in made_by_applied}
        found = half_applied(is_applied, present)
        if found is None:
            continue
        have, lack = found
        broken.append((version, is_applied))
        if is_applied:
            text = f"{version} {m.name}: the history says applied, but missing: {', '.join(lack)}"
        else:
            text = (f"{version} {m.name}: not in the history, but its objects exist: {', '.join(have)}"
                    + (f"; missing: {', '.join(lack)}" if lack else ""))
        d.add("half-applied", False, target, text)
    if not broken:
        d.add("half-applied", True, target, f"{len(files)} local migration(s): objects agree with the history")
    return broken


def _migration_next(d: Diagnosis, st: Mapping[str, Any], broken: list[tuple[str, bool]], fk: bool,
                    files: Mapping[str, Any], applied: set[str]) -> None:
    if not d.faults:
        return
    in_history = [v for v, a in broken if a]
    outside = [v for v, a in broken if not a]
    last = st.get("last_applied")
    if outside or in_history or st.get("applied_not_local"):
        # The down files assume a migration applied whole: a half-applied one is put back from a snapshot.
        d.suggest("doai-rollback database snapshots")
        d.suggest("doai-rollback database restore SNAPSHOT  (the newest one taken before the failed migration)")
    elif fk and last and files.get(last) and files[last].down:
        d.suggest("doai-rollback database rollback --last 1 --dry-run")
        d.suggest("doai-rollback database rollback --last 1")
    elif fk:
        d.suggest("doai-rollback database snapshots")
        d.suggest("doai-rollback database restore SNAPSHOT")
