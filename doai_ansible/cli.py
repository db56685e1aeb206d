"""The ``doai-rollback`` command: parse, call one core function, render. Nothing else.

The one error boundary is :func:`main`: every :class:`DoaiError` becomes a one-line message
and its exit status (a traceback only with ``--debug``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from doai_ansible import __version__, engine, render, validate
from doai_ansible import parts as parts_registry
from doai_ansible import state as state_store
from doai_ansible.clikit import (  # noqa: F401 (re-exported: the CLI's helpers, as tests and parts use them)
    DRY_RUN_POLICIES,
    Options,
    common_options,
    complete_part,
    complete_parts,
    complete_run_id,
    confirm_hook,
    dry_run,
    pass_opts,
    render_run,
    render_status,
    run_jobs,
)
from doai_ansible.errors import DoaiError, ExitStatus, UsageError
from doai_ansible.model import RunResult
from doai_ansible.part import Scenario
from doai_ansible.render import emit_json, short_ref

log = logging.getLogger("doai_ansible")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="doai-rollback")
@common_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Roll the DoAi system back after a failed deployment.

    Order of a whole-system rollback: agent -> backend -> database -> dashboard.
    Commands that change something show the plan and ask once on a terminal; without a
    terminal they need --yes. Exit codes: 0 ok, 2 usage/config/refused (nothing changed),
    3 failed but restored, 4 failed and NOT restored, 5 locked, 6 unhealthy, 7 unreachable,
    130 interrupted or not confirmed.
    """
    ctx.ensure_object(Options)


# -- each part's own commands, from the registry ------------------------------------------------
for _face in parts_registry.all_clis():
    _group = _face.commands()
    if _group is not None:
        cli.add_command(_group)


def part_system_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Every part's options of ``system rollback`` (``--backend-to`` ...), as the parts declare them."""
    for face in reversed(parts_registry.all_clis()):
        for opt in reversed(face.system_options):
            f = click.option(opt.flag, **opt.click)(f)
    return f


# -- the whole system ------------------------------------------------------------------------
@cli.group("system")
def system_group() -> None:
    """The whole system at once: the runbook's checklist (section 5) around the four parts."""


@system_group.command("rollback")
@click.option("--only", metavar="PARTS", default=None, shell_complete=complete_parts,
              help="Only these parts (comma-separated: " + ", ".join(parts_registry.names()) + ").")
@click.option("--skip", metavar="PARTS", default=None, shell_complete=complete_parts,
              help="Leave these parts out (comma-separated).")
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal, announcements, report).")
@part_system_options
@common_options
@pass_opts
@dry_run("plans")
def system_rollback_cmd(opts: Options, only: str | None, skip: str | None, reason: str | None,
                        **part_options: Any) -> ExitStatus:
    """Roll every configured part back, Agent -> Backend -> Database -> Dashboard, with the
    runbook's checklist. Before: the live state of every part kept, the error logs of backend
    hosts and agent PCs collected, the scope shown with the plan. During: the start announced
    (webhook from $DOAI_WEBHOOK_URL, if set), each part verified before the next, a stop at the
    first failure (the failing part is put back; the parts before it stay rolled back). After:
    health of every part, the smoke checks of the settings, an incident report (Markdown and
    JSON), the end announced. Exit 6 when the rollback went through but a check after it fails."""
    from doai_ansible import system

    ctx = opts.context()
    req = system.request(ctx, only=only, skip=skip, reason=reason, **part_options)
    hook = _with_checklist(opts, confirm_hook(opts, "Roll these parts back, in this order, as shown?"))
    run = system.rollback(ctx, req, dry_run=opts.dry_run, confirm=hook)
    return render_system_run(opts, run)


def _with_checklist(opts: Options, ask: engine.ConfirmHook | None) -> engine.ConfirmHook | None:
    """The confirmation of a checklisted run shows the checklist's lines (state found, scope) first."""
    if ask is None:
        return None
    from doai_ansible import system

    def hook(plan: RunResult) -> bool:
        for line in system.text_lines(plan):
            click.echo(line, err=opts.json)
        return ask(plan)

    return hook


def render_system_run(opts: Options, run: RunResult) -> ExitStatus:
    """A run with the whole-system checklist (``system rollback``, the undo of one)."""
    from doai_ansible import system

    if opts.json:
        return render_run(opts, run)
    # In the order things happened: the checklist's before, each part's steps, then the checks
    # after, the end's announcement and the report.
    before, after = _checklist_halves(run)
    for line in system.text_lines(before):
        click.echo(line)
    status = render_run(opts, run)
    for line in system.text_lines(after):
        click.echo(line)
    return status


def _checklist_halves(run: RunResult) -> tuple[RunResult, RunResult]:
    """The run twice, its checklist cut in two for ``system.text_lines``: what came before the
    parts were rolled back (the state found, the parts left out, the start's announcement), and
    what came after (the checks, the end's announcement, the report)."""
    c = run.extra.get("checklist") or {}
    said = c.get("announcements") or []
    first = dict(c, after=None, report=None, announcements=[x for x in said if x.get("event") == "start"])
    then = dict(c, before=None, skipped_parts=[], announcements=[x for x in said if x.get("event") != "start"])
    return (dataclasses.replace(run, extra=dict(run.extra, checklist=first)),
            dataclasses.replace(run, extra=dict(run.extra, checklist=then)))


# -- every part ------------------------------------------------------------------------------
@cli.command("status")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these hosts or groups.")
@common_options
@pass_opts
@dry_run("read-only")
def status_cmd(opts: Options, limit: str | None) -> ExitStatus:
    """Status of every configured part (exit 6 when one is unhealthy, 7 when one is unreachable)."""
    validate.host_limit(limit)
    return render_status(opts, engine.status(opts.context(), limit=limit))


@cli.command("health")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these hosts or groups.")
@common_options
@pass_opts
@dry_run("read-only")
def health_cmd(opts: Options, limit: str | None) -> ExitStatus:
    """Exit 0 when every configured part is healthy, 6 when one is not, 7 when one is unreachable."""
    validate.host_limit(limit)
    st = engine.health(opts.context(), limit=limit)
    if opts.json:
        emit_json(st)
    else:
        for name, h in st["parts"].items():
            targets = h.get("targets") or {name: h["healthy"]}
            states = h.get("states") or {}
            for target, ok in targets.items():
                state = states.get(target) or ("healthy" if ok else "UNHEALTHY")
                state = state.upper() if state == "unreachable" else state  # not "UNHEALTHY": unknown
                click.echo(f"{name} {target}: {state}" + (f" ({h['detail']})" if h.get("detail") else ""))
    return engine.status_exit(st)


# -- journal, undo, lock ----------------------------------------------------------------------
#: How many runs ``history`` shows without --max.
HISTORY_DEFAULT = 20


@cli.command("history")
@click.option("--max", "count", metavar="N", type=click.IntRange(1, 10000), default=None,
              help="How many runs, newest first (default 20).")
# The old spelling, kept working for scripts: --limit means hosts in every other command.
@click.option("--limit", "old_count", type=click.IntRange(1, 10000), default=None, hidden=True)
@click.option("--part", default=None, shell_complete=complete_part, help="Only runs that touched this part (" + ", ".join(parts_registry.names())
              + ").")
@common_options
@pass_opts
@dry_run("read-only")
def history(opts: Options, count: int | None, old_count: int | None, part: str | None) -> ExitStatus:
    """Runs from the journal, newest first (every run that reached a part, refused ones too)."""
    if old_count is not None:
        if count is not None:
            raise UsageError("--limit is the old spelling of --max: give --max only")
        click.echo("doai-rollback: warning: `history --limit N` is deprecated: use --max N "
                   "(--limit means hosts in every other command)", err=True)
        count = old_count
    runs = engine.history(opts.context(), limit=count or HISTORY_DEFAULT, part=part)
    if opts.json:
        emit_json(runs)
        return ExitStatus.OK
    if not runs:
        click.echo(f"no runs in {state_store.where(opts.settings())}")
    for r in runs:
        click.echo(f"{r['run_id']}  {r['started']}  {r['command']}{' (dry run)' if r.get('dry_run') else ''}"
                   f"  {r['exit_name']}  by {r.get('who')}" + (f"  why: {r['reason']}" if r.get("reason") else ""))
        if r.get("exit_status") not in (0, None) and r.get("message"):
            click.echo(f"    {r['message']}")
        for s in r.get("steps", []):
            click.echo(f"    {s['part']} {s['target']}: {short_ref(s.get('from'))} -> {short_ref(s.get('to'))}"
                       f"  {s['outcome']}")
    return ExitStatus.OK


@cli.command("undo")
@click.argument("run_id", shell_complete=complete_run_id)
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal and host ledger).")
@common_options
@pass_opts
@dry_run("plans")
def undo(opts: Options, run_id: str, reason: str | None) -> ExitStatus:
    """Roll forward to the state that run RUN_ID found (every part it changed)."""
    validate.run_id(run_id)
    validate.reason(reason)
    ctx = opts.context()
    record = ctx.journal.find(run_id)
    hook = confirm_hook(opts, f"Undo run {record['run_id']} as shown?")
    if record.get("command") == "system rollback":  # a service change too: the same checklist, announced, reported
        from doai_ansible import system

        run = system.undo(ctx, record, reason=reason, dry_run=opts.dry_run, confirm=_with_checklist(opts, hook))
        return render_system_run(opts, run)
    jobs = engine.undo_jobs(record, reason=reason)
    run = engine.run(ctx, jobs, command=f"undo {record['run_id']}", reason=reason or f"undo {record['run_id']}",
                     dry_run=opts.dry_run, confirm=hook, reverse=True)
    return render_run(opts, run)


@cli.group("lock")
def lock_group() -> None:
    """Inspect or release the rollback locks: the local ones (one per part, and `system`) and the
    host locks the backend hosts and agent PCs keep while a rollback changes them (a killed run
    can leave one behind: `lock status` shows it, `lock release PART --host HOST` removes it)."""


@lock_group.command("status")
@click.option("--local", "local_only", is_flag=True, help="Only the local locks (no connection to the hosts).")
@common_options
@pass_opts
@dry_run("read-only")
def lock_status(opts: Options, local_only: bool) -> ExitStatus:
    """The local locks and the locks on the hosts: owner, run, age, and whether that run is alive.

    Exit 5 while a lock is held by a live run (or one this controller cannot judge); else 7 when
    a host's lock could not be read (it may hold one: "unknown" is not "free"); else 0."""
    st = engine.locks(opts.context(), hosts=not local_only)
    unread = [f"{lk['part']} {lk['host']}" for lk in st["hosts"] if "error" in lk]
    status = ExitStatus.LOCKED if st["held"] else ExitStatus.UNREACHABLE if unread else ExitStatus.OK
    if opts.json:
        emit_json(dict(st, unread=unread, exit_status=int(status), exit_name=status.name))
        return status
    if not st["local"] and not st["hosts"]:
        click.echo("no locks held")
    for lk in st["local"]:
        click.echo(f"{lk['target']}: {lk['owner']} pid {lk['pid']} on {lk['host']} since {lk['acquired_iso']}"
                   + (f", reason: {lk['reason']}" if lk.get("reason") else "")
                   + (f" (STALE: {lk['stale']})" if lk["stale"] else ""))
    for lk in st["hosts"]:
        if "error" in lk:
            click.echo(f"{lk['part']} {lk['host']}: host lock unknown ({lk['error']})")
            continue
        run = {"alive": "its run is alive",
               "finished": "its run has ended: the lock is left over; `lock release "
                           f"{lk['part']} --host {lk['host']}` removes it",
               "unknown": "not a live run of this controller (another controller, or a killed run)"}[lk["run"]]
        click.echo(f"{lk['part']} {lk['host']}: host lock by {lk.get('owner')} (run {lk.get('run_id')}) "
                   f"since {lk.get('since')}, {lk.get('age_s', '?')} s ago; {run}")
    if unread:
        click.echo(f"doai-rollback: error: the host lock of {', '.join(unread)} could not be read: "
                   "a rollback may hold it", err=True)
    return status


@lock_group.command("release")
@click.argument("target", type=click.Choice(parts_registry.names() + ["system"]))
@click.option("--host", metavar="HOST", default=None,
              help="Release the lock a dead run left on this host (shown by `lock status`), not the local one.")
@click.option("--force", is_flag=True, help="Release a lock whose holder may still be alive.")
@common_options
@pass_opts
@dry_run("plans")
def lock_release(opts: Options, target: str, host: str | None, force: bool) -> ExitStatus:
    """Release a local lock, or with --host the lock a host keeps (after asking). With --dry-run:
    what would be released (refused as the release would be), nothing removed, nothing journaled."""
    if host is None:
        held = state_store.lock(opts.settings(), target).release(force=force, dry_run=opts.dry_run)
        if opts.dry_run:
            line = (f"dry run: would release {target} (held by {held.owner}, pid {held.pid} on {held.host}); "
                    "nothing was changed" if held else f"dry run: {target} is not locked; nothing to release")
        else:
            line = f"released {target} (held by {held.owner})" if held else f"{target} was not locked"
        click.echo(line, err=opts.json)
        return ExitStatus.OK
    validate.host_limit(host)
    ctx = opts.context()
    lk = engine.host_lock(ctx, target, host)
    if opts.dry_run:
        out = engine.release_host_lock(ctx, target, host, force=force, lock=lk, dry_run=True)
        if opts.json:
            emit_json(out)
        else:
            click.echo(f"{target} {host}: dry run: would release the {_host_lock_text(lk)}; nothing was changed")
        return ExitStatus.OK
    hook = confirm_hook(opts, f"Release the {target} lock on {host} held by run {lk.get('run_id')}?")
    if hook is not None:
        shown = RunResult(ctx.run_id, f"lock release {target} --host {host}", True, None, "",
                          message=f"{target} {host}: {_host_lock_text(lk)}")
        if not hook(shown):
            raise click.exceptions.Abort()
    out = engine.release_host_lock(ctx, target, host, force=force, lock=lk)
    if opts.json:
        emit_json(out)
    else:
        click.echo(f"{target} {host}: " + ("host lock released" if out["released"] else
                                           "not released: another run holds it now"))
    return ExitStatus.OK if out["released"] else ExitStatus.LOCKED


def _host_lock_text(lk: dict[str, Any]) -> str:
    """A host lock as the dry run and the confirmation show it."""
    return f"host lock by {lk.get('owner')} (run {lk.get('run_id')}) since {lk.get('since')}; its run: {lk['run']}"


# -- the configuration ------------------------------------------------------------------------------
@cli.group("config")
def config_group() -> None:
    """The configuration in effect."""


@config_group.command("show")
@common_options
@pass_opts
@dry_run("read-only")
def config_show(opts: Options) -> ExitStatus:
    """The settings in effect and where each came from (flag, variable, config file, default),
    the config file, inventory and state dir used; secrets only as set or unset. Exit 2 when the
    configuration cannot be loaded (the error names the key). Reads no state, contacts nothing."""
    from doai_ansible import config_report

    doc = config_report.report(config=opts.config, inventory=opts.inventory, state_dir=opts.state_dir,
                               state_backend=opts.state_backend)
    if opts.json:
        emit_json(dict(doc, exit_status=int(ExitStatus.OK), exit_name=ExitStatus.OK.name))
    else:
        for line in config_report.lines(doc):
            click.echo(line)
    return ExitStatus.OK


# -- the shared state store ----------------------------------------------------------------------
@cli.group("state")
def state_group() -> None:
    """The shared state store (state.backend: postgres): run records and locks for a team."""


@state_group.command("push")
@common_options
@pass_opts
@dry_run("plans")
def state_push(opts: Options) -> ExitStatus:
    """Add this machine's journal records (runs made with --state local, or kept locally when the
    store went away mid-run) to the shared store, each run once: a second push adds none."""
    out = state_store.push(opts.settings(), dry_run=opts.dry_run)
    out.update(exit_status=int(ExitStatus.OK), exit_name=ExitStatus.OK.name)
    if opts.json:
        emit_json(out)
    else:
        click.echo(f"{'dry run: would add' if opts.dry_run else 'added'} {out['added']} run record(s) from "
                   f"{out['journal']} to the shared store {out['store']}; {out['already']} were there already")
    return ExitStatus.OK


# -- diagnose ------------------------------------------------------------------------------------
@cli.group("diagnose")
def diagnose_group() -> None:
    """The runbook's scenarios A, B, C: findings and the next command to run. Changes nothing.

    Exit status: 0 nothing found, 6 a fault found, 7 a target could not be reached at all,
    2 bad input or configuration.
    """


def _diagnose(opts: Options, scenario: str, limit: str | None = None) -> ExitStatus:
    from doai_ansible import diagnose

    ctx = opts.context()
    result = diagnose.run(ctx, scenario, limit=limit)
    if opts.json:
        emit_json(result.to_dict())
    else:
        for line in result.lines():
            click.echo(line)
    for w in ctx.warnings:
        click.echo(f"doai-rollback: WARNING: {w}", err=True)
    return result.exit_status


def _diagnose_command(scenario: Scenario) -> click.Command:
    """``diagnose <scenario>``, as the part that runs it declares it (name, help, ``--limit``)."""

    def command(opts: Options, limit: str | None = None) -> ExitStatus:
        return _diagnose(opts, scenario.name, limit)

    command.__name__ = "diagnose_" + scenario.name.replace("-", "_")
    f = common_options(pass_opts(dry_run("read-only")(command)))
    if scenario.limit is not None:
        metavar, text = scenario.limit
        f = click.option("--limit", "-l", metavar=metavar, default=None, help=text)(f)
    return diagnose_group.command(scenario.name, help=scenario.help)(f)


for _scenario in parts_registry.scenarios():  # the runbook's order: A, B, C
    _diagnose_command(_scenario)


# -- demo ------------------------------------------------------------------------------------------
@cli.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to build the sandbox (default: a new temporary directory).")
@click.option("--keep", is_flag=True, help="Keep the sandbox's files (journal, report, logs); on a terminal, keep it "
              "running until Enter.")
@common_options
@pass_opts
@dry_run("refused")
def demo(opts: Options, workdir: Path | None, keep: bool) -> ExitStatus:
    """Build every part of DoAi that runs on this machine (backend under PM2 and, with a Docker
    engine, Compose; PostgreSQL; a Vercel API stand-in; stand-in agent PCs), deploy a failed
    release of all of them, run the whole-system rollback, and check every part's live state.
    On a terminal it first says what it will start and asks (--yes: it does not ask); without
    a terminal (CI) it starts right away."""
    from doai_ansible.sandbox.demo import run_demo

    echo = (lambda line: click.echo(line, err=True)) if opts.json else click.echo
    if not opts.yes and sys.stdin.isatty() and sys.stdout.isatty():
        for line in demo_notice(workdir, keep):
            echo(line)
        if not click.confirm("Start it?", default=False, err=True):
            raise click.exceptions.Abort()  # exit 130, "nothing was changed": nothing was started
    result = run_demo(workdir=workdir, keep=keep, echo=echo, verbose=bool(opts.verbose))
    if opts.json:
        emit_json(result)
    return ExitStatus(result["exit_status"])


def demo_notice(workdir: Path | None, keep: bool) -> list[str]:
    """What ``demo`` starts and removes, said before it starts on a terminal."""
    where = f"in {workdir}" if workdir else "in a new temporary directory"
    gone = ("its files stay (--keep)" if keep else
            "the temporary directory is removed" if workdir is None else f"its files in {workdir} are removed")
    return [
        "demo builds the DoAi system on this machine and runs it, every service on 127.0.0.1 only:",
        "  - an sshd (the VPS stand-in) with PM2 running the backend app, deployed from a local git repository",
        ("  - dockerd with a local registry and the backend as a Compose service (when a Docker engine can be "
        "started here)"),
        "  - a PostgreSQL cluster shaped like the Supabase project",
        "  - a Vercel API stand-in with the dashboard's health endpoint, and stand-in agent PCs",
        (f"{where}; then it deploys a failed release of every part and rolls the whole system back "
        "(a few minutes)."),
        f"At the end every process it started is stopped (by PID) and {gone}.",
    ]


def _configure_logging(opts: Options) -> None:
    level = logging.DEBUG if opts.debug else logging.INFO if opts.verbose else logging.WARNING
    logging.basicConfig(level=level, format="doai-rollback: %(levelname)s: %(name)s: %(message)s", stream=sys.stderr)


def json_requested(args: list[str]) -> bool:
    """Whether an argument list asks for ``--output json``, read as click would (the last one
    wins; before or after the subcommand), but without click: a command line click refuses must
    still get its error as JSON."""
    out = None
    it = iter(args)
    for arg in it:
        if arg == "--":
            break
        if arg in ("-o", "--output"):
            out = next(it, None)
        elif arg.startswith("--output="):
            out = arg.split("=", 1)[1]
        elif arg.startswith("-") and not arg.startswith("--") and "o" in arg[1:]:
            # A cluster of short flags ending in -o (``-yo json``, ``-ojson``, ``-yojson``).
            head, _, value = arg[1:].partition("o")
            if set(head) <= {"y", "n", "v"}:
                out = value or next(it, None)
    return out == "json"


def _error_json(opts: Options, status: ExitStatus, message: str, hint: str | None) -> None:
    """The error document on stdout with ``--output json`` (unless a document was printed already)."""
    if opts.json and render.emitted() == opts.documents_before:
        emit_json({"error": message, "hint": hint, "exit_status": int(status), "exit_name": status.name})


def _usage_error(exc: click.ClickException) -> tuple[str, str | None]:
    """A click usage error as (message, hint): what the error document says."""
    ctx = getattr(exc, "ctx", None)
    hint = f"see `{ctx.command_path} --help`" if ctx is not None else "see `doai-rollback --help`"
    no_args = getattr(click.exceptions, "NoArgsIsHelpError", None)
    if no_args is not None and isinstance(exc, no_args) and ctx is not None:
        # click's message here is the whole help text: name what is missing instead.
        return f"{ctx.command_path}: a command is needed ({', '.join(ctx.command.list_commands(ctx))})", hint
    return exc.format_message(), hint


#: The program's name, and the variable click's shell completion protocol reads
#: (``_DOAI_ROLLBACK_COMPLETE=bash_source doai-rollback`` prints the bash script; see the README).
PROG_NAME = "doai-rollback"
COMPLETE_VAR = "_DOAI_ROLLBACK_COMPLETE"


def main(argv: list[str] | None = None) -> int:
    """Entry point; the one place where errors become messages and exit codes. With
    ``--output json`` every outcome is one JSON document on stdout, click's own usage errors
    and Ctrl-C included. With ``$_DOAI_ROLLBACK_COMPLETE`` set, the shell asks for completions
    (click's protocol, which ``cli.main`` would run and this entry point must run itself)."""
    instruction = os.environ.get(COMPLETE_VAR)
    if instruction:
        return complete(instruction)
    args = list(sys.argv[1:] if argv is None else argv)
    opts = Options()
    if json_requested(args):
        opts.output = "json"  # before click parses: its errors must be JSON too
    try:
        return _main(opts, args)
    except BrokenPipeError:
        return _stdout_closed()


def complete(instruction: str) -> int:
    """Click's completion protocol: ``bash_source``/``zsh_source``/``fish_source`` print the
    shell's script, ``bash_complete``/``zsh_complete``/``fish_complete`` the candidates for
    ``COMP_WORDS``/``COMP_CWORD``. Nothing runs, nothing is locked or written; a failure gives
    no candidates (exit 1), never a traceback on the user's command line."""
    from click.shell_completion import shell_complete

    try:
        return shell_complete(cli, {"obj": Options()}, PROG_NAME, COMPLETE_VAR, instruction)
    except BrokenPipeError:
        return _stdout_closed()
    except Exception:
        log.debug("completion failed", exc_info=True)
        return 1


def _main(opts: Options, args: list[str]) -> int:
    with engine.interrupt_handlers():
        return _main_handled(opts, args)


def _main_handled(opts: Options, args: list[str]) -> int:
    try:
        with cli.make_context(PROG_NAME, args, obj=opts) as ctx:
            _configure_logging(opts)
            rv = cli.invoke(ctx)
        sys.stdout.flush()  # a reader gone (`| head`) shows here, not in the interpreter's exit
        return int(rv if isinstance(rv, int) else 0)
    except BrokenPipeError:
        raise
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.exceptions.Abort:  # the confirmation declined, or Ctrl-C at its prompt
        _error_json(opts, ExitStatus.INTERRUPTED, "aborted; nothing was changed", None)
        click.echo("doai-rollback: aborted; nothing was changed", err=True)
        return ExitStatus.INTERRUPTED
    except click.ClickException as exc:
        message, hint = _usage_error(exc)
        _error_json(opts, ExitStatus.USAGE, message, hint)
        exc.show()
        return ExitStatus.USAGE
    except DoaiError as exc:
        if opts.debug:
            log.exception("error")
        status = exc.exit_status
        _error_json(opts, status, exc.message, exc.hint)
        click.echo(f"doai-rollback: error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"doai-rollback: hint: {exc.hint}", err=True)
        return int(status)
    except engine.Interrupted as exc:
        if exc.run is not None:  # a run had begun: its record, journaled, is the document
            click.echo(f"doai-rollback: interrupted by {exc.signame}", err=True)
            return int(render_run(opts, exc.run))
        _error_json(opts, ExitStatus.INTERRUPTED, f"interrupted ({exc.signame})", None)
        click.echo(f"doai-rollback: interrupted by {exc.signame}", err=True)
        return ExitStatus.INTERRUPTED
    except KeyboardInterrupt:
        hint = "a run that had reached a part is in `doai-rollback history`"
        _error_json(opts, ExitStatus.INTERRUPTED, "interrupted (Ctrl-C)", hint)
        click.echo("doai-rollback: interrupted", err=True)
        return ExitStatus.INTERRUPTED
    except Exception as exc:  # a bug: say so, briefly, unless --debug
        if opts.debug:
            raise
        click.echo(f"doai-rollback: internal error: {type(exc).__name__}: {exc} (run again with --debug)", err=True)
        return ExitStatus.ERROR


#: The exit status when the reader of stdout went away (`doai-rollback history | head -1`):
#: 128 + SIGPIPE, what a shell reports for a writer that SIGPIPE ended. Not an error message.
STDOUT_CLOSED = 141


def _stdout_closed() -> int:
    """stdout's reader is gone: not an error of this tool. Whatever is still buffered goes to
    /dev/null (as the Python docs advise, so the interpreter's own flush at exit cannot fail
    again) and the command ends quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (a test's capture)
        pass
    return STDOUT_CLOSED


def run() -> None:
    sys.exit(main())
