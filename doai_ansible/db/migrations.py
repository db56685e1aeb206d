"""Supabase migrations as files and as history: ``supabase/migrations/<14-digit version>_<name>.sql``,
their down files (``supabase/rollbacks/<same name>``), and the rows of
``supabase_migrations.schema_migrations`` (what ``supabase migration list`` calls remote)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

from doai_ansible.db import sqlread

FILE_RE = re.compile(r"(\d{14})_([A-Za-z0-9_.-]+)\.sql\Z")
VERSION_RE = re.compile(r"\d{14}\Z")
HISTORY = "supabase_migrations.schema_migrations"

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass
class Migration:
    version: str
    name: str
    path: Path | None  # None: in the history, not in the folder
    down: Path | None

    @property
    def file_name(self) -> str:
        return f"{self.version}_{self.name}.sql"

    @property
    def sha256(self) -> str | None:
        return sha256_file(self.path) if self.path else None

    @property
    def down_sha256(self) -> str | None:
        return sha256_file(self.down) if self.down else None

    def touches(self) -> list[str]:
        """The tables the migration creates, alters, fills or drops (PostgreSQL's parser reads it)."""
        if not self.path:
            return []
        seen: list[str] = []
        for e in sqlread.read(self.path.read_text(encoding="utf-8")):
            if e.table and e.table not in seen and e.kind in ("table", "column", "index", "constraint"):
                seen.append(e.table)
        return seen

    def creates(self) -> list[str]:
        if not self.path:
            return []
        return [e.table for e in sqlread.read(self.path.read_text(encoding="utf-8"))
                if e.action == "created" and e.kind == "table" and e.table]

    def at_risk(self) -> list[dict[str, Any]]:
        """What the down file would destroy or change, as PostgreSQL's parser reads it: tables,
        schemas, types dropped (CASCADE noted), tables truncated or emptied, rows updated,
        columns dropped or retyped, constraints and indexes dropped, and every statement that
        cannot be read (``always``: it needs --accept-data-loss whatever the row counts)."""
        if not self.down:
            return []
        out: list[dict[str, Any]] = []
        for e in sqlread.at_risk(self.down.read_text(encoding="utf-8")):
            item: dict[str, Any] = {"table": e.label if e.action != "unreadable"
                                    else f"{self.down.name} statement {e.statement} (line {e.line})",
                                    "what": e.describe(), "kind": e.kind, "action": e.action, "cascade": e.cascade,
                                    "name": e.name, "on": e.table,
                                    "schema": (None if e.action == "unreadable" else e.name if e.kind == "schema"
                                               else (e.table or e.name).split(".", 1)[0]
                                               if "." in (e.table or e.name) else None)}
            if e.kind == "column":
                item["table"], item["column"] = e.table, e.column
            if e.action == "dropped" and e.kind == "table":
                item["what"], item["gone"] = "dropped", True
            if e.action == "unreadable":
                item["always"] = True
            out.append(item)
        return out


def on_disk(migrations_dir: Path, rollbacks_dir: Path) -> dict[str, Migration]:
    """version -> Migration for every migration file (down file when one exists)."""
    found: dict[str, Migration] = {}
    if not migrations_dir.is_dir():
        return found
    for p in sorted(migrations_dir.iterdir()):
        m = FILE_RE.match(p.name)
        if not m or not p.is_file():
            continue
        down = rollbacks_dir / p.name
        found[m.group(1)] = Migration(m.group(1), m.group(2), p, down if down.is_file() else None)
    return found


def history(conn: Any) -> list[dict[str, Any]]:
    """Applied migrations, oldest first: [{version, name}]. [] when the table does not exist."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (HISTORY,))
        if not cur.fetchone()[0]:
            return []
        cur.execute("SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = 'supabase_migrations' AND table_name = 'schema_migrations'")
        cols = {r[0] for r in cur.fetchall()}
        name = "name" if "name" in cols else "NULL"
        cur.execute(f"SELECT version, {name} FROM {HISTORY} ORDER BY version")  # noqa: S608 - fixed names
        return [{"version": v, "name": n} for v, n in cur.fetchall()]


def row_count(conn: Any, table: str) -> int | None:
    """Exact rows of ``schema.table``; None when it does not exist."""
    from psycopg import sql

    schema, name = table.split(".", 1)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, name).as_string(conn),))
        if not cur.fetchone()[0]:
            return None
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))
        return int(cur.fetchone()[0])


def values_in_column(conn: Any, table: str, column: str) -> int:
    """Rows whose ``column`` holds a value (not NULL): what dropping it loses; 0 when absent."""
    from psycopg import sql

    schema, name = table.split(".", 1)
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                    "AND column_name = %s", (schema, name, column))
        if cur.fetchone() is None:
            return 0
        cur.execute(sql.SQL("SELECT count({}) FROM {}").format(sql.Identifier(column), sql.Identifier(schema, name)))
        return int(cur.fetchone()[0])


def tables(conn: Any, schemas: tuple[str, ...]) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s) ORDER BY 1", (list(schemas),))
        return [r[0] for r in cur.fetchall()]


def invalid_foreign_keys(conn: Any, schemas: tuple[str, ...]) -> list[str]:
    """Foreign keys not validated, or with rows that point nowhere (checked by a query each)."""
    from psycopg import sql

    problems: list[str] = []
    with conn.cursor() as cur:
        cur.execute(
            "SELECT con.conname, n.nspname, c.relname, fn.nspname, fc.relname, con.convalidated, "
            "ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, i) "
            "      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i), "
            "ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, i) "
            "      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.i) "
            "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_class fc ON fc.oid = con.confrelid JOIN pg_namespace fn ON fn.oid = fc.relnamespace "
            "WHERE con.contype = 'f' AND n.nspname = ANY(%s)", (list(schemas),))
        fks = cur.fetchall()
        for name, sch, tab, fsch, ftab, valid, cols, fcols in fks:
            if not valid:
                problems.append(f"{sch}.{tab}: foreign key {name} is NOT VALID")
                continue
            cond = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(x)) for x in cols)
            join = sql.SQL(" AND ").join(sql.SQL("p.{} = c.{}").format(sql.Identifier(f), sql.Identifier(x))
                                         for x, f in zip(cols, fcols, strict=True))
            cur.execute(sql.SQL("SELECT count(*) FROM {} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})").format(
                sql.Identifier(sch, tab), cond, sql.Identifier(fsch, ftab), join))
            orphans = cur.fetchone()[0]
            if orphans:
                problems.append(f"{sch}.{tab}: {orphans} row(s) break foreign key {name}")
    return problems


def foreign_keys_not_valid(conn: Any, schemas: tuple[str, ...]) -> list[str]:
    """The quick check for status: foreign keys marked NOT VALID (no table is scanned)."""
    with conn.cursor() as cur:
        cur.execute("SELECT n.nspname || '.' || c.relname, con.conname FROM pg_constraint con "
                    "JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE con.contype = 'f' AND NOT con.convalidated AND n.nspname = ANY(%s)", (list(schemas),))
        return [f"{t}: foreign key {name} is NOT VALID" for t, name in cur.fetchall()]


def tables_in_schema(conn: Any, schema: str) -> list[str]:
    return tables(conn, (schema,))


def cascade_dependents(conn: Any, table: str, column: str | None = None) -> list[dict[str, Any]]:
    """What ``DROP TABLE table CASCADE`` (or ``DROP COLUMN column CASCADE``) takes along that the
    statement does not name, from the catalog: the foreign keys of other tables that reference it
    (with the rows that use them) and the views and materialized views built on it."""
    from psycopg import sql

    schema, name = table.split(".", 1)
    reg = sql.Identifier(schema, name).as_string(conn)
    out: list[dict[str, Any]] = []
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)::oid", (reg,))
        oid = cur.fetchone()[0]
        if oid is None:
            return out
        attnum = None
        if column is not None:
            cur.execute("SELECT attnum FROM pg_attribute WHERE attrelid = %s AND attname = %s AND NOT attisdropped",
                        (oid, column))
            row = cur.fetchone()
            if row is None:
                return out
            attnum = row[0]
        cur.execute(
            "SELECT con.conname, n.nspname, c.relname, ARRAY(SELECT a.attname FROM unnest(con.conkey) k(n) "
            "JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n) "
            "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE con.contype = 'f' AND con.confrelid = %s AND con.conrelid <> con.confrelid "
            "AND (%s::int IS NULL OR %s::int = ANY(con.confkey)) ORDER BY 2, 3, 1", (oid, attnum, attnum))
        for conname, sch, tab, cols in cur.fetchall():
            cond = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in cols)
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(sql.Identifier(sch, tab), cond))
            rows = int(cur.fetchone()[0])
            out.append({"table": f"{sch}.{tab}", "constraint": conname, "rows": rows, "always": True, "schema": sch,
                        "what": f"foreign key {conname} ({', '.join(cols)} -> {table}) dropped by CASCADE; "
                                f"{rows:,} rows reference {table}"})
        cur.execute(
            "SELECT DISTINCT vn.nspname, v.relname, v.relkind FROM pg_depend d "
            "JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid "
            "JOIN pg_class v ON v.oid = r.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace "
            "WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s AND v.oid <> %s "
            "AND (%s::int IS NULL OR d.refobjsubid = %s::int) ORDER BY 1, 2", (oid, oid, attnum, attnum))
        for sch, view, kind in cur.fetchall():
            label = "materialized view" if kind == "m" else "view"
            view_rows = row_count(conn, f"{sch}.{view}") if kind == "m" else 0
            out.append({"table": f"{sch}.{view}", "rows": view_rows or 0, "always": True, "schema": sch,
                        "what": f"{label} dropped by CASCADE (built on {table}{'.' + column if column else ''})"})
    return out


def _object_oids(conn: Any, kind: str, name: str, table: str | None = None) -> list[tuple[str, int]]:
    """(catalog, oid) of the object a down file drops, as the catalog has it now ([] if absent)."""
    from psycopg import sql

    def ident(qualified: str) -> str:
        return sql.Identifier(*qualified.split(".", 1)).as_string(conn)

    with conn.cursor() as cur:
        if kind in ("table", "view", "sequence", "index"):
            cur.execute("SELECT 'pg_class', to_regclass(%s)::oid", (ident(name),))
        elif kind == "type":
            cur.execute("SELECT 'pg_type', to_regtype(%s)::oid", (ident(name),))
        elif kind == "function":
            schema, fn = name.split(".", 1)
            cur.execute("SELECT 'pg_proc', p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE n.nspname = %s AND p.proname = %s", (schema, fn))
        elif kind == "extension":
            cur.execute("SELECT 'pg_extension', oid FROM pg_extension WHERE extname = %s", (name,))
        elif kind == "constraint" and table:
            cur.execute("SELECT 'pg_constraint', oid FROM pg_constraint WHERE conrelid = to_regclass(%s) "
                        "AND conname = %s", (ident(table), name.rsplit(".", 1)[-1]))
        else:
            return []
        return [(c, o) for c, o in cur.fetchall() if o is not None]


def cascade_objects(conn: Any, kind: str, name: str, table: str | None = None) -> list[dict[str, Any]]:
    """Everything ``DROP <kind> <name> CASCADE`` takes along, from pg_depend as PostgreSQL's own
    drop follows it (normal and automatic dependents, and the object an internal part belongs
    to: a view through its rewrite rule), with the rows or values of each table or column."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for catalog, oid in _object_oids(conn, kind, name, table):
        with conn.cursor() as cur:
            cur.execute(
                "WITH RECURSIVE dep(classid, objid, objsubid, lvl) AS ("
                "  SELECT %s::regclass::oid, %s::oid, 0, 0"
                "  UNION"
                "  SELECT CASE WHEN d.deptype = 'i' AND d.objid = dep.objid AND d.classid = dep.classid"
                "              THEN d.refclassid ELSE d.classid END,"
                "         CASE WHEN d.deptype = 'i' AND d.objid = dep.objid AND d.classid = dep.classid"
                "              THEN d.refobjid ELSE d.objid END,"
                "         CASE WHEN d.deptype = 'i' AND d.objid = dep.objid AND d.classid = dep.classid"
                "              THEN 0 ELSE d.objsubid END, dep.lvl + 1"
                "  FROM dep JOIN pg_depend d ON"
                "   (d.refclassid = dep.classid AND d.refobjid = dep.objid"
                "    AND (dep.objsubid = 0 OR d.refobjsubid = dep.objsubid) AND d.deptype IN ('n', 'a', 'e'))"
                "   OR (d.classid = dep.classid AND d.objid = dep.objid AND d.deptype = 'i')"
                "  WHERE dep.lvl < 12)"
                "SELECT DISTINCT (pg_identify_object_as_address(classid, objid, objsubid)).*, "
                "       (pg_identify_object(classid, objid, objsubid)).identity FROM dep "
                "WHERE lvl > 0 AND NOT (classid = %s::regclass::oid AND objid = %s::oid)",
                (catalog, oid, catalog, oid))
            rows = cur.fetchall()
        for typ, names, _args, identity in rows:
            described = f"{typ} {identity}"
            if typ in ("rule", "toast table", "type") or described in seen:  # a view's rule, a table's row type
                continue
            seen.add(described)
            why = f"dropped by CASCADE (DROP {kind.upper()} {name})"
            item: dict[str, Any] = {"what": why, "always": True, "rows": 0, "cascade_of": name,
                                    "schema": names[0] if names and len(names) > 1 else None}
            if typ == "table column" and len(names) == 3:
                t = f"{names[0]}.{names[1]}"
                item.update(table=t, column=names[2], kind="column", action="dropped", what=f"column {names[2]} {why}",
                            rows=values_in_column(conn, t, names[2]))
            elif typ in ("table", "materialized view") and len(names) == 2:
                item.update(table=f"{names[0]}.{names[1]}", kind="table", action="dropped",
                            rows=row_count(conn, f"{names[0]}.{names[1]}") or 0, gone=typ == "table")
            else:
                item.update(table=described, kind=typ, action="dropped")
            out.append(item)
    return out
