"""What SQL does, read by PostgreSQL's own parser (pglast): the one reading used by the database
part (data at risk in a down file, tables a migration creates or touches) and by ``diagnose
migration-failure`` (objects a migration makes or drops). Names come out as PostgreSQL resolves
them: unquoted lower-cased, quoted kept as written, unqualified in ``public``.

A statement this module cannot classify (a ``DO`` block, a procedure ``CALL``, a function called
by a ``SELECT``, anything it does not know, anything the parser refuses) is never taken as
harmless: it is an effect of kind ``unreadable`` (``cannot be read: <first line>``), which the
rollback treats as data at risk."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from doai_ansible.db.sqlsplit import Statement, split

DEFAULT_SCHEMA = "public"


@dataclasses.dataclass(frozen=True)
class Effect:
    """One thing a statement does. ``action``: created, dropped, truncated, rows deleted, rows
    updated, type changed, unreadable. ``kind``: table, column, schema, type, index, view,
    constraint, sequence, function, object, statement. ``table``: ``schema.name`` for table and
    column effects; ``name``: the object's own (qualified where it has a schema)."""

    action: str
    kind: str
    name: str
    table: str | None = None
    column: str | None = None
    cascade: bool = False
    statement: int = 0
    line: int = 0
    why: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "column":
            return f"{self.table}.{self.column}"
        return self.name

    def describe(self) -> str:
        if self.action == "unreadable":
            return f"cannot be read: {self.name} ({self.why})"
        cascade = " with CASCADE" if self.cascade else ""
        if self.kind == "column":
            return f"column {self.column} {self.action}{cascade}"
        if self.kind == "table":
            return f"{self.action}{cascade}"
        return f"{self.kind} {self.name} {self.action}{cascade}"


def qualified(schema: str | None, name: str) -> str:
    return f"{schema or DEFAULT_SCHEMA}.{name}"


def _rv(rv: Any) -> str:
    return qualified(rv.schemaname, rv.relname)


def _strings(node: Any) -> list[str]:
    """A name list (``String`` nodes) as plain strings."""
    out = []
    for n in node if isinstance(node, (list, tuple)) else [node]:
        if hasattr(n, "sval"):
            out.append(n.sval)
        elif hasattr(n, "names"):  # TypeName
            out += _strings(n.names)
    return out


def _name(parts: list[str]) -> str:
    return qualified(parts[-2], parts[-1]) if len(parts) >= 2 else qualified(None, parts[0])


def _walk(node: Any) -> Iterator[Any]:
    """Every parse node under ``node`` (itself included)."""
    from pglast import ast

    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (list, tuple)):
            stack.extend(n)
        elif isinstance(n, ast.Node):
            yield n
            for attr in n:
                v = getattr(n, attr)
                if isinstance(v, (ast.Node, list, tuple)):
                    stack.append(v)


_DROP_KINDS = {
    "OBJECT_TABLE": "table", "OBJECT_FOREIGN_TABLE": "table", "OBJECT_SCHEMA": "schema", "OBJECT_TYPE": "type",
    "OBJECT_DOMAIN": "type", "OBJECT_INDEX": "index", "OBJECT_VIEW": "view", "OBJECT_MATVIEW": "view",
    "OBJECT_SEQUENCE": "sequence", "OBJECT_FUNCTION": "function", "OBJECT_PROCEDURE": "function",
    "OBJECT_EXTENSION": "extension",
}
# Statements that change no data and drop nothing.
_HARMLESS = {
    "CreateStmt", "IndexStmt", "CommentStmt", "GrantStmt", "GrantRoleStmt", "CreateFunctionStmt", "ViewStmt",
    "CreateSeqStmt", "AlterSeqStmt", "VariableSetStmt", "CreateEnumStmt", "AlterEnumStmt", "CreatePolicyStmt",
    "AlterPolicyStmt", "CreateTrigStmt", "CreateSchemaStmt", "CompositeTypeStmt", "CreateDomainStmt",
    "AlterOwnerStmt", "AlterDefaultPrivilegesStmt", "LockStmt", "CreateExtensionStmt", "AlterFunctionStmt",
    "CreateTableAsStmt", "RefreshMatViewStmt", "RenameStmt", "AlterObjectSchemaStmt", "InsertStmt",
    "SelectStmt", "CreateRoleStmt", "AlterRoleStmt", "RuleStmt", "CreateCastStmt", "DefineStmt",
    "AlterDomainStmt", "CreatePublicationStmt", "AlterPublicationStmt", "NotifyStmt",
}
# ALTER TABLE subcommands that keep every row and value (everything else is read below or unreadable).
_HARMLESS_AT = {
    "AT_AddColumn", "AT_ColumnDefault", "AT_DropNotNull", "AT_SetNotNull", "AT_AddConstraint", "AT_AddIndex",
    "AT_ValidateConstraint", "AT_EnableRowSecurity", "AT_DisableRowSecurity", "AT_ForceRowSecurity",
    "AT_NoForceRowSecurity", "AT_ChangeOwner", "AT_EnableTrig", "AT_DisableTrig", "AT_EnableTrigAll",
    "AT_DisableTrigAll", "AT_EnableTrigUser", "AT_DisableTrigUser", "AT_SetStatistics", "AT_SetStorage",
    "AT_SetOptions", "AT_ResetOptions", "AT_SetRelOptions", "AT_ResetRelOptions", "AT_ReplicaIdentity",
    "AT_AddIdentity", "AT_DropIdentity", "AT_SetIdentity", "AT_AttachPartition", "AT_DetachPartition",
    "AT_AddInherit", "AT_DropInherit", "AT_SetLogged", "AT_SetUnLogged", "AT_ClusterOn", "AT_DropCluster",
    "AT_GenericOptions", "AT_AlterConstraint", "AT_CookedColumnDefault", "AT_SetCompression",
    "AT_SetExpression", "AT_DropExpression",
}


def read_statement(st: Statement) -> list[Effect]:
    """What one statement does (possibly nothing a rollback must know)."""
    import pglast
    from pglast import ast

    def eff(action: str, kind: str, name: str, **kw: Any) -> Effect:
        return Effect(action, kind, name, statement=st.index, line=st.line, **kw)

    def unreadable(why: str) -> list[Effect]:
        return [eff("unreadable", "statement", st.first_line, why=why)]

    try:
        parsed = pglast.parse_sql(st.sql)
    except pglast.parser.ParseError as exc:
        return unreadable(f"PostgreSQL's parser refuses it: {exc}")
    out: list[Effect] = []
    for raw in parsed:
        node = raw.stmt
        kind = type(node).__name__
        calls: list[Effect] = []
        # Data changed anywhere in the statement, a WITH included.
        for sub in _walk(node):
            if isinstance(sub, ast.DeleteStmt):
                out.append(eff("rows deleted", "table", _rv(sub.relation), table=_rv(sub.relation)))
            elif isinstance(sub, ast.UpdateStmt):
                out.append(eff("rows updated", "table", _rv(sub.relation), table=_rv(sub.relation)))
            elif isinstance(sub, ast.MergeStmt):
                out.append(eff("rows updated", "table", _rv(sub.relation), table=_rv(sub.relation)))
            elif isinstance(sub, ast.InsertStmt) and sub.onConflictClause is not None \
                    and sub.onConflictClause.action.name.endswith("UPDATE"):
                out.append(eff("rows updated", "table", _rv(sub.relation), table=_rv(sub.relation)))
            elif isinstance(sub, ast.FuncCall) and kind == "SelectStmt" and not calls:  # SELECT f(): f may do anything
                calls = unreadable(f"it calls {'.'.join(_strings(sub.funcname))}(), whose effect cannot be read")
        out += calls
        if isinstance(node, ast.CreateStmt):
            out.append(eff("created", "table", _rv(node.relation), table=_rv(node.relation)))
        elif isinstance(node, ast.CreateTableAsStmt):
            t = _rv(node.into.rel)
            out.append(eff("created", "table" if node.objtype.name.endswith("TABLE") else "view", t, table=t))
        elif isinstance(node, ast.IndexStmt):
            t = _rv(node.relation)
            schema = t.split(".", 1)[0]
            if node.idxname:
                out.append(eff("created", "index", f"{schema}.{node.idxname}", table=t))
        elif isinstance(node, ast.ViewStmt):
            out.append(eff("created", "view", _rv(node.view)))
        elif isinstance(node, ast.TruncateStmt):
            out += [eff("truncated", "table", _rv(r), table=_rv(r), cascade=_cascade(node.behavior))
                    for r in node.relations]
        elif isinstance(node, ast.DropStmt):
            what = _DROP_KINDS.get(node.removeType.name)
            cascade = _cascade(node.behavior)
            if what is None:
                if not cascade:
                    continue  # a trigger, a policy, a rule...: no data, nothing else dropped
                return out + unreadable(f"DROP {node.removeType.name.removeprefix('OBJECT_')} ... CASCADE: what it takes along "
                                  "cannot be read")
            for obj in node.objects:
                if what in ("schema", "extension"):
                    name = _strings(obj)[0]
                elif what == "function":
                    name = _name(_strings(obj.objname))
                else:
                    name = _name(_strings(obj))
                if what == "index":
                    out.append(eff("dropped", "index", name, cascade=cascade))
                else:
                    out.append(eff("dropped", what, name, table=name if what == "table" else None, cascade=cascade))
        elif isinstance(node, ast.AlterTableStmt):
            t = _rv(node.relation)
            objtype = node.objtype.name
            for cmd in node.cmds:
                sub = cmd.subtype.name
                if sub == "AT_DropColumn":
                    out.append(eff("dropped", "column", f"{t}.{cmd.name}", table=t, column=cmd.name,
                                   cascade=_cascade(cmd.behavior)))
                elif sub == "AT_AlterColumnType":
                    out.append(eff("type changed", "column", f"{t}.{cmd.name}", table=t, column=cmd.name))
                elif sub == "AT_DropConstraint":
                    out.append(eff("dropped", "constraint", f"{t}.{cmd.name}", table=t, cascade=_cascade(cmd.behavior)))
                elif sub == "AT_AddColumn":
                    col = cmd.def_.colname if cmd.def_ is not None else None
                    if col and objtype == "OBJECT_TABLE":
                        out.append(eff("created", "column", f"{t}.{col}", table=t, column=col))
                elif sub not in _HARMLESS_AT:
                    return out + unreadable(f"ALTER TABLE {sub.removeprefix('AT_')}: its effect on data cannot be read")
            if objtype == "OBJECT_TABLE" and not any(e.table == t for e in out):
                out.append(eff("altered", "table", t, table=t))
        elif isinstance(node, ast.InsertStmt):
            out.append(eff("inserted", "table", _rv(node.relation), table=_rv(node.relation)))
        elif isinstance(node, (ast.DeleteStmt, ast.UpdateStmt, ast.MergeStmt)):
            pass  # read above
        elif isinstance(node, ast.DoStmt):
            return out + unreadable("a DO block runs code whose effect cannot be read")
        elif isinstance(node, ast.CallStmt):
            return out + unreadable("a CALL runs a procedure whose effect cannot be read")
        elif isinstance(node, ast.ExecuteStmt):
            return out + unreadable("EXECUTE runs a prepared statement whose effect cannot be read")
        elif kind not in _HARMLESS:
            return out + unreadable(f"{kind.removesuffix('Stmt')} is not a statement this tool can classify")
    return out


def _cascade(behavior: Any) -> bool:
    return behavior is not None and behavior.name.endswith("CASCADE")


def read(sql_text: str) -> list[Effect]:
    """Every effect of every statement of ``sql_text``, in order."""
    return [e for st in split(sql_text) for e in read_statement(st)]


def at_risk(sql_text: str) -> list[Effect]:
    """What running ``sql_text`` can destroy or change: the effects that lose data or objects."""
    return [e for e in read(sql_text)
            if e.action in ("dropped", "truncated", "rows deleted", "rows updated", "type changed", "unreadable")]


def schemas_touched(sql_text: str) -> set[str]:
    """The schemas the statements name (unqualified names: public)."""
    out = set()
    for e in read(sql_text):
        if e.action == "unreadable":
            continue
        if e.kind == "schema":
            out.add(e.name)
        elif e.table:
            out.add(e.table.split(".", 1)[0])
        elif "." in e.name:
            out.add(e.name.split(".", 1)[0])
    return out
