"""What every command of ``doai-rollback`` shares: the global options, the ``--dry-run`` rule,
the confirmation rule and the renderers of a run and of a status.

:mod:`doai_ansible.cli` builds the command tree with these; each part's own commands (the
``cli`` module of the part's registry entry, e.g. :mod:`doai_ansible.parts.backend_cli`) use
them too, so this module imports no part and no part's commands.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from click.shell_completion import CompletionItem

from doai_ansible import engine, render
from doai_ansible import parts as parts_registry
from doai_ansible.context import RunContext
from doai_ansible.errors import ExitStatus, UsageError
from doai_ansible.model import RunResult
from doai_ansible.render import Progress, emit_json, run_text
from doai_ansible.settings import Settings, config_search_order, load_settings


class Options:
    """Global options; each may also be given after the subcommand."""

    def __init__(self) -> None:
        self.config: str | None = None
        self.inventory: str | None = None
        self.state_dir: str | None = None
        self.state_backend: str | None = None
        self.output = "text"
        self.dry_run = False
        self.yes = False
        self.verbose = 0
        self.debug = False
        self._settings: Settings | None = None
        self.documents_before = render.emitted()  # JSON documents printed before this command

    @property
    def json(self) -> bool:
        return self.output == "json"

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config, inventory=self.inventory, state_dir=self.state_dir,
                                           state_backend=self.state_backend)
        return self._settings

    def context(self) -> RunContext:
        progress = Progress(enabled=None if not self.json else False)
        if self.verbose and not self.json:
            progress.enabled = True
        return RunContext.create(self.settings(), progress=progress, note=progress.note)


def _set(attr: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        opts = ctx.find_object(Options)
        if opts is not None and value not in (None, False, 0, ()):
            setattr(opts, attr, value)
        return value

    return callback


def common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options accepted before or after the subcommand."""
    decorators = [
        click.option("--config", "-c", type=click.Path(dir_okay=False), expose_value=False, callback=_set("config"),
                     help="Config file (else the first found of: " + ", ".join(config_search_order()[1:]) + ")."),
        click.option("--inventory", "-i", type=click.Path(), expose_value=False, callback=_set("inventory"),
                     help="Ansible inventory (or $DOAI_INVENTORY, or the config key `inventory`; no default)."),
        click.option("--state-dir", type=click.Path(file_okay=False), expose_value=False, callback=_set("state_dir"),
                     help="Journal, locks and run logs (default: ~/.local/state/doai-rollback)."),
        click.option("--state", type=click.Choice(["local", "postgres"]), default=None, expose_value=False,
                     callback=_set("state_backend"), help="Where run records and locks live, for this run: local "
                     "files, or the team's shared store ($DOAI_STATE_DATABASE_URL) (default: the setting state.backend)."),
        click.option("--output", "-o", type=click.Choice(["text", "json"]), default=None, expose_value=False,
                     callback=_set("output"), help="Result as text (default) or one JSON document on stdout."),
        click.option("--dry-run", "-n", is_flag=True, expose_value=False, callback=_set("dry_run"),
                     help="Show what would be done; change nothing (read-only commands: a note that it does not "
                   "apply; `database snapshot` and `demo` refuse it)."),
        click.option("--yes", "-y", is_flag=True, expose_value=False, callback=_set("yes"),
                     help="Do not ask for confirmation."),
        click.option("--verbose", "-v", count=True, expose_value=False, callback=_set("verbose"),
                     help="More output (progress even when not on a terminal)."),
        click.option("--debug", is_flag=True, expose_value=False, callback=_set("debug"),
                     help="Debug logging and tracebacks."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


pass_opts = click.make_pass_decorator(Options, ensure=True)

#: What ``--dry-run`` does, per command (every command declares one; the README's table
#: "--dry-run per command" lists them): "plans" (shows what it would do, changes nothing),
#: "read-only" (it changes nothing anyway: a note on stderr says --dry-run does not apply) or
#: "refused" (it cannot show without doing: exit 2, nothing done).
DRY_RUN_POLICIES = ("plans", "read-only", "refused")


def dry_run(policy: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare what ``--dry-run`` does for a command (see :data:`DRY_RUN_POLICIES`)."""
    if policy not in DRY_RUN_POLICIES:
        raise ValueError(f"unknown --dry-run policy {policy!r}")

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def command(opts: Options, *args: Any, **kwargs: Any) -> Any:
            if opts.dry_run and policy != "plans":
                name = click.get_current_context().command_path.removeprefix("doai-rollback ")
                if policy == "refused":
                    raise UsageError(f"`{name}` has no dry run: it cannot show what it would do without doing it",
                                     hint="leave --dry-run out")
                click.echo(f"doai-rollback: note: --dry-run does not apply to `{name}`: it changes nothing",
                           err=True)
            return f(opts, *args, **kwargs)

        command.dry_run_policy = policy  # type: ignore[attr-defined]
        return command

    return decorate


# -- rendering and confirmation: one rule for every command that changes something ------------
def render_run(opts: Options, run: RunResult) -> ExitStatus:
    refused = run.message.startswith("REFUSED")
    if opts.json:
        d = run.to_dict()
        if refused:
            d["error"] = run.message.removeprefix("REFUSED, nothing was changed: ")
        emit_json(d)
    else:
        click.echo(run_text(run))
    if refused:
        # The run's text (stdout) ends with the refusal already; stderr repeats it for when
        # stdout goes elsewhere (a file, a pipe, JSON), not on the terminal that just showed it.
        if opts.json or not _same_terminal():
            click.echo(f"doai-rollback: error: {run.message}", err=True)
        if run.hint:
            click.echo(f"doai-rollback: hint: {run.hint}", err=True)
    return run.exit_status


def _same_terminal() -> bool:
    """Whether stdout and stderr are the one terminal (what is written to both is seen twice)."""
    try:
        return (sys.stdout.isatty() and sys.stderr.isatty()
                and os.path.samestat(os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())))
    except (OSError, ValueError, AttributeError):  # a stream without a file descriptor
        return False


def confirm_hook(opts: Options, question: str) -> engine.ConfirmHook | None:
    """The confirmation rule, for rollback and undo alike: ``--dry-run`` never asks; ``--yes``
    never asks; otherwise, on a terminal, the plan is shown and confirmed once; without a
    terminal (CI) ``--yes`` is required, so nothing changes without an explicit yes."""
    if opts.dry_run or opts.yes:
        return None
    if not sys.stdin.isatty():
        raise UsageError(f"{question}: confirmation needed and there is no terminal", hint="add --yes")

    def ask(plan: RunResult) -> bool:
        # With --output json stdout carries only the result: the plan goes to the terminal via stderr.
        click.echo(run_text(plan, confirming=True), err=opts.json)
        return click.confirm(question, default=False, err=True)

    return ask


def run_jobs(opts: Options, jobs: list[engine.Job], *, command: str, reason: str | None, question: str) -> ExitStatus:
    hook = confirm_hook(opts, question)
    run = engine.run(opts.context(), jobs, command=command, reason=reason, dry_run=opts.dry_run, confirm=hook)
    return render_run(opts, run)


def render_status(opts: Options, st: dict[str, Any], *, one: str | None = None) -> ExitStatus:
    """``engine.status`` output: JSON as is (``one``: that part's own document), or each part's lines."""
    if opts.json:
        emit_json(st["parts"][one] if one else st)
    else:
        for name, pst in st["parts"].items():
            if not pst.get("configured", True) and pst.get("needs"):
                click.echo(f"{name}: not configured ({pst['needs']})")
                continue
            for line in parts_registry.get(name).status_lines(pst):
                click.echo(line)
    for w in st.get("warnings") or []:
        click.echo(f"doai-rollback: WARNING: {w}", err=True)
    return engine.status_exit(st)


# -- shell completion: candidates that depend on the registry or on the state ------------------------
def complete_part(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """One part name (``history --part``)."""
    return [CompletionItem(n) for n in parts_registry.names() if n.startswith(incomplete)]


def complete_parts(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """A comma-separated list of part names (``--only agent,ba`` -> ``agent,backend``), each once."""
    head, comma, last = incomplete.rpartition(",")
    named = set(head.split(",")) if comma else set()
    return [CompletionItem(head + comma + n) for n in parts_registry.names()
            if n.startswith(last) and n not in named]


def complete_run_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The run ids of the journal, newest first, read as ``history`` reads them (the settings of
    the command line typed so far: --config, --state-dir, --state): no lock, nothing written. A
    journal or configuration that cannot be read gives no candidates, never an error."""
    try:
        opts = ctx.find_object(Options) or Options()
        from doai_ansible import state as state_store

        runs = state_store.journal(opts.settings()).runs(limit=COMPLETE_RUNS)
    except Exception:  # completion must never break the shell's line: no candidates instead
        return []
    return [CompletionItem(str(r["run_id"]), help=f"{r.get('started', '')} {r.get('command', '')}".strip())
            for r in runs if isinstance(r, dict) and str(r.get("run_id", "")).startswith(incomplete)]


#: How many of the newest runs ``undo`` and ``--rerun-failed`` complete.
COMPLETE_RUNS = 100
