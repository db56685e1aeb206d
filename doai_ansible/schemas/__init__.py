"""The JSON Schema of every document ``doai-rollback ... --output json`` prints (see README.md here).

``load()`` returns the schema; ``kind_of(words)`` names the document kind (a ``$defs`` key) a
command prints; ``validate(doc, kind)`` checks a document against that kind or the error
document (which any command prints when it stops before a run). Validation needs the
``jsonschema`` package (the ``test`` extra): the tool itself never validates its own output.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

SCHEMA_FILE = "doai-rollback.schema.json"

#: The document kind each command prints with ``--output json`` (besides the error document).
#: Commands not listed print nothing on stdout with ``--output json`` (``lock release`` without
#: ``--host``: its line goes to stderr).
COMMANDS: dict[tuple[str, ...], str] = {
    ("backend", "rollback"): "run",
    ("backend", "prepare"): "prepare",
    ("backend", "status"): "part_status",
    ("dashboard", "rollback"): "run",
    ("dashboard", "status"): "part_status",
    ("agent", "rollback"): "run",
    ("agent", "reinstall"): "run",
    ("agent", "status"): "part_status",
    ("database", "rollback"): "run",
    ("database", "restore"): "run",
    ("database", "status"): "part_status",
    ("database", "snapshot"): "snapshot",
    ("database", "snapshots"): "snapshots",
    ("system", "rollback"): "system_run",
    ("undo",): "run",
    ("status",): "status",
    ("health",): "health",
    ("history",): "history",
    ("lock", "status"): "locks",
    ("lock", "release"): "lock_release",
    ("diagnose", "api-errors"): "diagnose",
    ("diagnose", "migration-failure"): "diagnose",
    ("diagnose", "agent-connection"): "diagnose",
    ("demo",): "demo",
    ("state", "push"): "state_push",
    ("config", "show"): "config_show",
}


@functools.cache
def load() -> dict[str, Any]:
    """The schema (draft 2020-12), as shipped in the package."""
    text = resources.files(__name__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def kind_of(words: Sequence[str]) -> str | None:
    """The document kind of a command, given its words (``("backend", "rollback")``), or None."""
    return COMMANDS.get(tuple(words))


def command_words(args: Sequence[str]) -> tuple[str, ...]:
    """The subcommand words of a ``doai-rollback`` argument list, options and their values
    skipped, as click itself reads them (``["-o", "json", "backend", "rollback", "--to", "x"]``
    gives ``("backend", "rollback")``)."""
    import click

    from doai_ansible.cli import cli

    words: list[str] = []
    cmd: click.Command = cli
    it = iter(args)
    for arg in it:
        if arg == "--":
            break
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            opt = next((p for p in cmd.params if isinstance(p, click.Option) and name in p.opts + p.secondary_opts),
                       None)
            if opt is not None and "=" not in arg and not opt.is_flag and not opt.count:
                next(it, None)  # the option's value
            continue
        if isinstance(cmd, click.Group):
            sub = cmd.get_command(click.Context(cmd), arg)
            if sub is None:
                break
            words.append(arg)
            cmd = sub
        else:
            break  # an argument of the command
    return tuple(words)


def validator(kind: str | None = None) -> Any:
    """A jsonschema validator for one document kind plus the error document (``kind`` None:
    any kind)."""
    import jsonschema

    schema = load()
    if kind is not None:
        if kind not in schema["$defs"]:
            raise KeyError(f"no document kind {kind!r} in {SCHEMA_FILE}")
        schema = dict(schema, anyOf=[{"$ref": f"#/$defs/{kind}"}, {"$ref": "#/$defs/error"}])
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def errors(doc: Any, kind: str | None = None) -> list[str]:
    """Why ``doc`` is not a valid document of ``kind`` (nor an error document): [] when it is.
    The reasons name the key (``steps/0/outcome: 'done' is not one of [...]``)."""
    import jsonschema

    if not list(validator(kind).iter_errors(doc)):
        return []
    # anyOf hides the reasons: judge the document against the kind it claims to be.
    claimed = "error" if isinstance(doc, dict) and "error" in doc and "run_id" not in doc else kind
    schema = load() if claimed is None else dict(load(), anyOf=[{"$ref": f"#/$defs/{claimed}"}])
    leaves = [leaf for e in jsonschema.Draft202012Validator(schema).iter_errors(doc) for leaf in _leaves(e)]
    leaves.sort(key=jsonschema.exceptions.relevance, reverse=True)
    out = []
    for e in leaves:
        line = f"{'/'.join(str(p) for p in e.absolute_path) or '(document)'}: {e.message[:300]}"
        if line not in out:
            out.append(line)
    return out[:8] or [f"not a valid {claimed or 'doai-rollback'} document"]


def _leaves(error: Any) -> list[Any]:
    """The innermost reasons of an error (those of every branch of an anyOf/oneOf)."""
    if not error.context:
        return [error]
    return [leaf for sub in error.context for leaf in _leaves(sub)]


def json_output(args: Sequence[str]) -> bool:
    """Whether a ``doai-rollback`` argument list asks for ``--output json`` (the last one wins)."""
    out = None
    for i, arg in enumerate(args):
        if arg in ("-o", "--output") and i + 1 < len(args):
            out = args[i + 1]
        elif arg.startswith("--output="):
            out = arg.split("=", 1)[1]
        elif arg.startswith("-o") and len(arg) > 2 and not arg.startswith("--"):
            out = arg[2:]
    return out == "json"


def output_problems(args: Sequence[str], stdout: str, returncode: int | None = None) -> list[str]:
    """Why the stdout of ``doai-rollback ARGS`` is not the JSON document the schema promises for
    that command (and, given ``returncode``, why its ``exit_status`` is not the exit code): []
    when it is, or when the command did not ask for JSON or printed nothing."""
    args = [str(a) for a in args]
    if not json_output(args) or not stdout.strip():
        return []
    try:
        doc = json.loads(stdout)
    except ValueError as exc:
        return [f"stdout is not one JSON document ({exc}): {stdout[:300]!r}"]
    words = command_words(args)
    kind = kind_of(words)
    problems = [f"`{' '.join(words) or '(no command)'}` printed no valid {kind or 'doai-rollback'} document: {p}"
                for p in errors(doc, kind)]
    if returncode is not None and isinstance(doc, dict) and isinstance(doc.get("exit_status"), int) \
            and doc["exit_status"] != returncode:
        problems.append(f"exit_status {doc['exit_status']} in the document, but the command exited {returncode}")
    return problems
