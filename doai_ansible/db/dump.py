"""Snapshots (``pg_dump -Fc`` of the application schemas and the migration history, with a
checksum and a manifest) and restores (one transaction, owners and grants of the schemas left as
they are, independent of what else ``public`` holds)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from doai_ansible.db import migrations as mig
from doai_ansible.db.conn import DbUrl, ToolError, run_tool, tool, tool_major
from doai_ansible.errors import ConfigError, UnreachableError, ValidationError
from doai_ansible.settings import DatabaseSettings, ensure_private_dir

HISTORY_SCHEMA = "supabase_migrations"
# A TOC entry of `pg_restore -l`: "<id>; <catalog oid> <oid> <DESC ...> <schema> <name> <owner>"
_TOC_SCHEMA = re.compile(r"^\d+;\s+\d+\s+\d+\s+(?:SCHEMA|COMMENT|ACL)\s+-\s+(?:SCHEMA\s+)?(\S+)")


def server_major(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SHOW server_version_num")
        return int(cur.fetchone()[0]) // 10000


def preflight_tools(conn: Any, db: DatabaseSettings,
                    names: tuple[str, ...] = ("pg_dump", "pg_restore", "psql")) -> dict[str, str]:
    """pg_dump, pg_restore and psql of at least the server's major version, or a clear refusal."""
    major = server_major(conn)
    found = {}
    for name in names:
        path = tool(name, db.pg_bin_dir)
        have = tool_major(path)
        if have < major:
            raise ConfigError(
                name, f"{path} is version {have}, older than the server's {major}: it cannot dump or restore it",
                hint=f"install postgresql-client-{major} (Debian/Ubuntu: the PGDG repository apt.postgresql.org) "
                     f"and point database.pg_bin_dir (or DOAI_PG_BIN_DIR) at /usr/lib/postgresql/{major}/bin")
        found[name] = path
    return found


def snapshot(url: DbUrl, conn: Any, db: DatabaseSettings, directory: Path, *, label: str) -> dict[str, Any]:
    """Dump the application schemas and the migration history; returns the manifest. The row
    counts and the history in the manifest are read in the very snapshot pg_dump dumps
    (``pg_export_snapshot`` + ``pg_dump --snapshot``): exact even while the app writes. They are
    read before the dump, which keeps every table from being dropped until the dump is done.

    All or nothing on disk: the dump is written under a ``.partial`` name (not a snapshot: never
    listed) and gets its ``.dump`` name only after its manifest is in place; a failure at any
    point (pg_dump, the connection, an interrupt) leaves no file of it behind, so ``database
    snapshots`` never lists a half-made snapshot as damaged."""
    import psycopg

    tools = preflight_tools(conn, db, ("pg_dump",))
    ensure_private_dir(directory, parents=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    # A run id (the usual label) starts with its own UTC time: the name says it once.
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", url.dbname)
    path = directory / (f"{base}-{label}.dump" if re.match(r"\d{8}T\d{6}Z-", label) else f"{base}-{stamp}-{label}.dump")
    if path.exists() or path.with_suffix(".json").exists():
        path = path.with_name(f"{path.stem}-{stamp}.dump")
    partial = path.with_name(path.name + ".partial")
    mpartial = manifest_path(path).with_name(manifest_path(path).name + ".partial")
    schemas = tuple(db.schemas) + (HISTORY_SCHEMA,)
    published: list[Path] = []
    try:
        try:
            with url.connect() as sconn:
                sconn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                sconn.read_only = True
                with sconn.cursor() as cur:
                    cur.execute("SELECT pg_export_snapshot()")
                    exported = cur.fetchone()[0]
                hist = mig.history(sconn)
                counts = _counts_in_snapshot(sconn, mig.tables(sconn, schemas))
                version = server_version(sconn)
                argv = [tools["pg_dump"], "--format=custom", "--no-password", f"--snapshot={exported}",
                        f"--file={partial}"]
                argv += [f"--schema={s}" for s in schemas]
                run_tool(url, argv, what="pg_dump")
                with contextlib.suppress(psycopg.Error):  # the dump is whole: a connection lost now costs nothing
                    sconn.close()
        except psycopg.OperationalError as exc:
            raise UnreachableError(f"database {url.label}: the connection broke while the snapshot was taken "
                                   f"({_first_line(url, exc)}); no snapshot was kept") from None
        except psycopg.Error as exc:
            raise ToolError(f"the snapshot of {url.label} could not be taken ({type(exc).__name__}: "
                            f"{_first_line(url, exc)}); no snapshot was kept") from None
        os.chmod(partial, 0o600)
        manifest = {
            "file": str(path), "sha256": mig.sha256_file(partial), "bytes": partial.stat().st_size,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "database": url.label, "server_version": version, "schemas": list(schemas),
            "last_migration": hist[-1]["version"] if hist else None,
            "applied": [h["version"] for h in hist],
            "row_counts": counts,
            "label": label,
        }
        fd = os.open(mpartial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(manifest, indent=2) + "\n")
        # The manifest first: a manifest without its dump is never listed; a dump without one would be.
        os.replace(mpartial, manifest_path(path))
        published.append(manifest_path(path))
        os.replace(partial, path)
        published.append(path)
    except BaseException:
        for leftover in (partial, mpartial, *([] if path in published else published)):
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise
    return manifest


def _first_line(url: DbUrl, exc: BaseException) -> str:
    text = url.scrub(str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _counts_in_snapshot(conn: Any, tables: list[str]) -> dict[str, int]:
    """Exact rows of every table, read in ``conn``'s transaction (its snapshot); each count holds
    the table (ACCESS SHARE) until the transaction ends. A table dropped meanwhile is an error,
    not 0 rows: the manifest would not match the dump."""
    from psycopg import sql

    out = {}
    with conn.cursor() as cur:
        for table in tables:
            schema, name = table.split(".", 1)
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))
            out[table] = int(cur.fetchone()[0])
    return out


def server_version(conn: Any) -> str:
    with conn.cursor() as cur:
        cur.execute("SHOW server_version")
        return str(cur.fetchone()[0])


def manifest_path(dump: Path) -> Path:
    return dump.with_suffix(".json")


def read_manifest(dump: Path, schemas: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The manifest of a snapshot, after checking the file against its checksum and the
    manifest's shape; with ``schemas`` (the application's), a manifest naming any other schema
    (auth, storage: a restore drops what is in the manifest's schemas) is refused."""
    if not dump.is_file():
        raise ValidationError(f"{dump}: no such snapshot file")
    try:
        manifest = json.loads(manifest_path(dump).read_text())
    except (OSError, ValueError):
        raise ValidationError(f"{dump}: its manifest {manifest_path(dump).name} is missing or unreadable",
                              hint="restore only snapshots taken by `doai-rollback database snapshot`") from None
    have = mig.sha256_file(dump)
    if have != manifest.get("sha256"):
        raise ValidationError(f"{dump}: checksum {have[:12]} does not match its manifest's {str(manifest.get('sha256'))[:12]}"
                              ": the file is damaged or was changed; not restoring it")
    named = manifest.get("schemas")
    counts = manifest.get("row_counts")
    if (not isinstance(named, list) or not named or not all(isinstance(x, str) for x in named)
            or not isinstance(counts, dict) or not all(isinstance(n, int) for n in counts.values())):
        raise ValidationError(f"{dump}: its manifest is not one this tool writes (schemas, row_counts)")
    if schemas is not None and not set(named) <= set(schemas) | {HISTORY_SCHEMA}:
        raise ValidationError(f"{dump}: its manifest names schemas {sorted(set(named) - set(schemas))} that are not the "
                              f"application's ({', '.join(schemas)}); not restoring it")
    return manifest


def _drop_statements(conn: Any, schemas: list[str]) -> list[str]:
    """DROP ... CASCADE for every object in ``schemas`` that no extension owns (the schemas
    themselves, their owners and grants stay as they are)."""
    from psycopg import sql

    not_ext = ("NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {cls}::regclass AND d.objid = {oid} "
               "AND d.deptype = 'e')")
    out: list[str] = []
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.relkind, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = ANY(%s) AND c.relkind IN ('v', 'm', 'r', 'p', 'f', 'S') AND "
            + not_ext.format(cls="'pg_class'", oid="c.oid")
            + " AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
              "AND d.objid = c.oid AND d.deptype IN ('a', 'i')))"
            " ORDER BY CASE c.relkind WHEN 'v' THEN 0 WHEN 'm' THEN 1 WHEN 'S' THEN 3 ELSE 2 END, 2, 3", (schemas,))
        kinds = {"v": "VIEW", "m": "MATERIALIZED VIEW", "r": "TABLE", "p": "TABLE", "f": "FOREIGN TABLE", "S": "SEQUENCE"}
        for kind, sch, name in cur.fetchall():
            out.append(sql.SQL("DROP {} IF EXISTS {} CASCADE").format(sql.SQL(kinds[kind]), sql.Identifier(sch, name))
                       .as_string(conn))
        cur.execute(
            "SELECT p.oid::regprocedure::text, p.prokind FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = ANY(%s) AND " + not_ext.format(cls="'pg_proc'", oid="p.oid"), (schemas,))
        for sig, kind in cur.fetchall():
            word = {"p": "PROCEDURE", "a": "AGGREGATE"}.get(kind, "FUNCTION")
            out.append(f"DROP {word} IF EXISTS {sig} CASCADE")
        cur.execute(
            "SELECT n.nspname, t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = ANY(%s) AND t.typtype IN ('e', 'd', 'c', 'r') AND "
            "(t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c') AND "
            + not_ext.format(cls="'pg_type'", oid="t.oid"), (schemas,))
        for sch, name in cur.fetchall():
            out.append(sql.SQL("DROP TYPE IF EXISTS {} CASCADE").format(sql.Identifier(sch, name)).as_string(conn))
    return out


def _checks(conn: Any, manifest: dict[str, Any]) -> str:
    """The restore's verify, at the end of its own transaction (what the app writes after the
    commit cannot make it fail): every table with the snapshot's row count, the history as in
    the snapshot. A mismatch raises, and the whole restore rolls back."""
    from psycopg import sql

    lines = []
    for table, n in sorted((manifest.get("row_counts") or {}).items()):
        schema, name = table.split(".", 1)
        lines.append(sql.SQL("DO $doai$ BEGIN IF (SELECT count(*) FROM {}) <> {} THEN RAISE EXCEPTION {}; END IF; END $doai$;")
                     .format(sql.Identifier(schema, name), sql.Literal(int(n)),
                             sql.Literal(f"restore check: {table} does not hold the snapshot's {n} rows")).as_string(conn))
    versions = manifest.get("applied")
    if versions is not None:
        lines.append(sql.SQL("DO $doai$ BEGIN IF (SELECT coalesce(array_agg(version ORDER BY version), '{{}}') FROM {}) "
                             "<> {}::text[] THEN RAISE EXCEPTION 'restore check: the migration history differs from "
                             "the snapshot''s'; END IF; END $doai$;")
                     .format(sql.Identifier("supabase_migrations", "schema_migrations"), sql.Literal(list(versions)))
                     .as_string(conn))
    return "\n" + "\n".join(lines) + "\n"


def existing_schemas(conn: Any, names: list[str]) -> set[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (names,))
        return {r[0] for r in cur.fetchall()}


def restore(url: DbUrl, conn: Any, db: DatabaseSettings, dump: Path, manifest: dict[str, Any]) -> None:
    """Replace the snapshot's schemas' contents with the snapshot, in ONE transaction (psql
    --single-transaction): every object of those schemas is dropped first (what else `public`
    held does not make it fail), then the dump's objects, data, owners and table grants are
    created; the schemas themselves, their owners and grants are left as they are."""
    tools = preflight_tools(conn, db)
    schemas = list(manifest["schemas"])
    keep = existing_schemas(conn, schemas)
    toc = run_tool(url, [tools["pg_restore"], "--list", str(dump)], what="pg_restore --list", connect=False).stdout
    lines = [line for line in toc.splitlines()
             if not ((m := _TOC_SCHEMA.match(line)) and m.group(1) in keep)]
    with tempfile.TemporaryDirectory(prefix="doai-restore-") as d:
        listing = Path(d) / "toc.list"
        listing.write_text("\n".join(lines) + "\n")
        body = run_tool(url, [tools["pg_restore"], "--no-password", f"--use-list={listing}", "--file=-", str(dump)],
                        what="pg_restore", connect=False).stdout
        script = Path(d) / "restore.sql"
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"SET LOCAL lock_timeout = '{int(db.lock_timeout_s * 1000)}ms';\n")
            for stmt in _drop_statements(conn, schemas):
                fh.write(stmt + ";\n")
            fh.write(body)
            fh.write(_checks(conn, manifest))
        run_tool(url, [tools["psql"], "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1",
                       "--single-transaction", f"--file={script}"], what="the restore (psql, one transaction)")
