"""Supabase migrations as files and as history: ``supabase/migrations/<14-digit version>_<name>.sql``,
their down files (``supabase/rollbacks/<same name>``), and the rows of
``supabase_migrations.schema_migrations`` (what ``supabase migration list`` calls remote)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

from doai_ansible.db.sqlsplit import split

FILE_RE = re.compile(r"(\d{14})_([A-Za-z0-9_.-]+)\.sql\Z")
VERSION_RE = re.compile(r"\d{14}\Z")
HISTORY = "supabase_migrations.schema_migrations"

_IDENT = r'(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QNAME = rf"{_IDENT}(?:\s*\.\s*{_IDENT})?"
_QLIST = rf"{_QNAME}(?:\s*,\s*{_QNAME})*"
_DROP_TABLE = re.compile(rf"^\s*DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?({_QLIST})", re.I)
_TRUNCATE = re.compile(rf"^\s*TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?({_QLIST})", re.I)
_DELETE = re.compile(rf"^\s*DELETE\s+FROM\s+(?:ONLY\s+)?({_QNAME})", re.I)
_DROP_COLUMN = re.compile(rf"^\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?({_QNAME})\s+.*?\bDROP\s+(?:COLUMN\s+)?"
                          rf"(?:IF\s+EXISTS\s+)?({_IDENT})", re.I | re.S)
_TOUCH = re.compile(rf"^\s*(?:CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?|ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?"
                    rf"(?:ONLY\s+)?|DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?|INSERT\s+INTO\s+|"
                    rf"CREATE\s+(?:UNIQUE\s+)?INDEX\s+.*?\bON\s+(?:ONLY\s+)?)({_QNAME})", re.I | re.S)
_CREATE_TABLE = re.compile(rf"^\s*CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?({_QNAME})", re.I)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def qualify(name: str, default_schema: str = "public") -> str:
    """``schema.table`` without quotes (quoted names keep their case)."""
    parts = [p.strip() for p in re.findall(_IDENT, name)]
    parts = [p[1:-1] if p.startswith('"') else p.lower() for p in parts]
    return ".".join(parts) if len(parts) == 2 else f"{default_schema}.{parts[0]}"


def _names(listing: str) -> list[str]:
    return [qualify(x) for x in re.findall(_QNAME, listing)]


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
        if not self.path:
            return []
        seen: list[str] = []
        for st in split(self.path.read_text(encoding="utf-8")):
            m = _TOUCH.match(st.sql)
            if m and qualify(m.group(1)) not in seen:
                seen.append(qualify(m.group(1)))
        return seen

    def creates(self) -> list[str]:
        if not self.path:
            return []
        return [qualify(m.group(1)) for st in split(self.path.read_text(encoding="utf-8"))
                if (m := _CREATE_TABLE.match(st.sql))]

    def at_risk(self) -> list[dict[str, Any]]:
        """What the down file would destroy: tables dropped, truncated or emptied, columns dropped."""
        if not self.down:
            return []
        out: list[dict[str, Any]] = []
        for st in split(self.down.read_text(encoding="utf-8")):
            if m := _DROP_TABLE.match(st.sql):
                out += [{"table": t, "what": "dropped"} for t in _names(m.group(1))]
            elif m := _TRUNCATE.match(st.sql):
                out += [{"table": t, "what": "truncated"} for t in _names(m.group(1))]
            elif m := _DELETE.match(st.sql):
                out.append({"table": qualify(m.group(1)), "what": "rows deleted"})
            elif m := _DROP_COLUMN.match(st.sql):
                col = m.group(2)
                col = col[1:-1] if col.startswith('"') else col.lower()
                out.append({"table": qualify(m.group(1)), "column": col, "what": f"column {col} dropped"})
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
