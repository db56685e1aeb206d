"""The ``doai-rollback`` command: parse, call one core function, render. Nothing else.

The one error boundary is :func:`main`: every :class:`DoaiError` becomes a one-line message
and its exit status (a traceback only with ``--debug``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from doai_ansible import __version__, engine, render, validate
from doai_ansible import state as state_store
from doai_ansible import parts as parts_registry
from doai_ansible.context import RunContext
from doai_ansible.errors import DoaiError, ExitStatus, UsageError
from doai_ansible.model import RunResult
from doai_ansible.render import Progress, emit_json, run_text, short_ref
from doai_ansible.settings import Settings, load_settings

log = logging.getLogger("doai_ansible")


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
                     help="Config file (default: ./doai-rollback.yml, $DOAI_CONFIG, ~/.config/doai-rollback/config.yml)."),
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


# -- backend --------------------------------------------------------------------------------
@cli.group()
def backend() -> None:
    """Backend API on the VPS: git + PM2, or Docker Compose (doai_backend_mode in the inventory)."""


@backend.command("rollback")
@click.option("--to", "to", metavar="REF|TAG|IMAGE_ID", default=None,
              help="PM2 hosts: a commit SHA or ref (default: the release live before the current one). "
              "Docker hosts: a tag or an image id sha256:<hex> (default: the `previous` tag).")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these hosts or groups (comma-separated).")
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal and host ledger).")
@click.option("--mode", type=click.Choice(["pm2", "docker"]), default=None,
              help="Override the inventory's doai_backend_mode for the hosts of this run.")
@common_options
@pass_opts
@dry_run("plans")
def backend_rollback(opts: Options, to: str | None, limit: str | None, reason: str | None,
                     mode: str | None) -> ExitStatus:
    """Roll every backend host back (all or nothing) and wait for health; on failure put the
    previous release back. PM2 hosts: check out an earlier commit, reinstall dependencies if the
    lockfile differs, reload PM2. Docker hosts: pull the target image while the current
    container serves, tag :current as :rollback and the target as :current, `compose up -d`."""
    part = parts_registry.get("backend")
    job = engine.Job(part, part.request(to=to, limit=limit, reason=reason, mode=mode, ctx=opts.context()))
    return run_jobs(opts, [job], command="backend rollback", reason=reason, question="Roll the backend back as shown?")


@backend.command("prepare")
@click.option("--to", "to", metavar="REF|TAG", default=None,
              help="The rollback's target, as for `backend rollback` (default: the same default).")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these hosts or groups (comma-separated).")
@common_options
@pass_opts
@dry_run("plans")
def backend_prepare(opts: Options, to: str | None, limit: str | None) -> ExitStatus:
    """Fetch what a rollback would need ahead of time. PM2 hosts: the target's node_modules into
    the host's cache, so the rollback is a rename, not an npm ci. Docker hosts: the target image
    pulled, so the rollback's pull has nothing to fetch. Changes nothing live: run it at the end
    of every deploy, or at any time. --dry-run says what it would do."""
    part = parts_registry.get("backend")
    report = part.prepare(opts.context(), part.request(to=to, limit=limit), check=opts.dry_run)
    if opts.json:
        emit_json(report)
    else:
        for line in part.prepare_lines(report):
            click.echo(line)
    return ExitStatus(report["exit_status"])


@backend.command("status")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these hosts or groups.")
@common_options
@pass_opts
@dry_run("read-only")
def backend_status(opts: Options, limit: str | None) -> ExitStatus:
    """Per backend host: live commit and PM2 processes, or running image and container; health."""
    validate.host_limit(limit)
    opts.settings().require_inventory()  # asked for the backend by name: no inventory is exit 2, with how to set one
    return render_status(opts, engine.status(opts.context(), only=["backend"], limit=limit), one="backend")


# -- the whole system ------------------------------------------------------------------------
@cli.group("system")
def system_group() -> None:
    """The whole system at once: the runbook's checklist (section 5) around the four parts."""


@system_group.command("rollback")
@click.option("--only", metavar="PARTS", default=None,
              help="Only these parts (comma-separated: " + ", ".join(parts_registry.names()) + ").")
@click.option("--skip", metavar="PARTS", default=None, help="Leave these parts out (comma-separated).")
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal, announcements, report).")
@click.option("--backend-to", metavar="REF|TAG|IMAGE_ID", default=None,
              help="The backend's target (default: as `backend rollback`).")
@click.option("--database-last", type=click.IntRange(1, 100), default=None,
              help="Undo the last N migrations (the database part needs this or --database-to).")
@click.option("--database-to", metavar="VERSION", default=None, help="Undo every migration applied after this one.")
@click.option("--accept-data-loss", is_flag=True, help="As for `database rollback`: needed when the plan lists data at risk.")
@click.option("--dashboard-to", metavar="DEPLOYMENT", default=None,
              help="The dashboard's target (default: as `dashboard rollback`).")
@click.option("--agent-max-fail-percent", type=click.IntRange(0, 100), default=None,
              help="Agent PCs that may fail (off, refused, put back) before the parts after the agent are not "
                   "started (default 50; a PC that could not be put back always stops the run).")
@common_options
@pass_opts
@dry_run("plans")
def system_rollback_cmd(opts: Options, only: str | None, skip: str | None, reason: str | None,
                        backend_to: str | None, database_last: int | None, database_to: str | None,
                        accept_data_loss: bool, dashboard_to: str | None,
                        agent_max_fail_percent: int | None) -> ExitStatus:
    """Roll every configured part back, Agent -> Backend -> Database -> Dashboard, with the
    runbook's checklist. Before: the live state of every part kept, the error logs of backend
    hosts and agent PCs collected, the scope shown with the plan. During: the start announced
    (webhook from $DOAI_WEBHOOK_URL, if set), each part verified before the next, a stop at the
    first failure (the failing part is put back; the parts before it stay rolled back). After:
    health of every part, the smoke checks of the settings, an incident report (Markdown and
    JSON), the end announced. Exit 6 when the rollback went through but a check after it fails."""
    from doai_ansible import system

    ctx = opts.context()
    req = system.request(ctx, only=only, skip=skip, reason=reason, backend_to=backend_to,
                         dashboard_to=dashboard_to, database_to=database_to, database_last=database_last,
                         accept_data_loss=accept_data_loss, agent_max_fail_percent=agent_max_fail_percent)
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


# -- dashboard ------------------------------------------------------------------------------
@cli.group()
def dashboard() -> None:
    """Dashboard on Vercel (REST API).

    On Vercel's Hobby plan only the previous production deployment can be rolled back to.
    """


@dashboard.command("status")
@common_options
@pass_opts
@dry_run("read-only")
def dashboard_status_cmd(opts: Options) -> ExitStatus:
    """Production deployment, last rollback/promote job, health."""
    opts.settings().vercel.require()
    return render_status(opts, engine.status(opts.context(), only=["dashboard"]), one="dashboard")


@dashboard.command("rollback")
@click.option("--to", "to", metavar="DEPLOYMENT", default=None,
              help="Deployment id (dpl_...) or URL (default: the newest earlier production deployment "
                   "Vercel can roll back to).")
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal and Vercel's description).")
@common_options
@pass_opts
@dry_run("plans")
def dashboard_rollback_cmd(opts: Options, to: str | None, reason: str | None) -> ExitStatus:
    """Roll production back to an earlier deployment, wait for the alias job and the health gate;
    if the gate fails, promote the original deployment back."""
    part = parts_registry.get("dashboard")
    job = engine.Job(part, part.request(to=to, reason=validate.reason(reason)))
    return run_jobs(opts, [job], command="dashboard rollback", reason=reason,
                    question="Roll the dashboard back as shown?")


# -- agent ---------------------------------------------------------------------------------------
@cli.group()
def agent() -> None:
    """Desktop agent on the PCs (group `agents`): the runbook's rename swap, per PC and user.

    Windows PCs over WinRM (HTTPS, certificate validation, NTLM/Kerberos; the password only from
    DOAI_WINRM_PASSWORD or vault); the same role runs on Linux stand-in PCs for tests.
    """


def _rerun_limit(opts: Options, part: Any, rerun: str | None, limit: str | None) -> str | None:
    """``--rerun-failed RUN``: the PCs that run did not finish (instead of a --limit)."""
    if rerun is None:
        return limit
    if limit:
        raise UsageError("--rerun-failed chooses the PCs itself: leave --limit out")
    return str(part.rerun_limit(state_store.journal(opts.settings()).find(validate.run_id(rerun))))


def fleet_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of every command that works on the agent PCs, batch by batch."""
    decorators = [
        click.option("--limit", "-l", metavar="PCS", default=None, help="Only these PCs or groups (comma-separated)."),
        click.option("--user", "users", metavar="USER", multiple=True,
                     help="Only this user's folder (repeatable; default: every profile that has the agent)."),
        click.option("--batch", metavar="N|N%", default=None, help="PCs per batch (default: all, bounded by forks)."),
        click.option("--max-fail-percent", type=int, default=None,
                     help="Stop after a batch whose failed PCs exceed this percentage (default: never stop)."),
        click.option("--rerun-failed", "rerun", metavar="RUN", default=None,
                     help="Only the PCs that run did not finish (failed, put back, unreachable)."),
        click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal)."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


@agent.command("rollback")
@fleet_options
@common_options
@pass_opts
@dry_run("plans")
def agent_rollback_cmd(opts: Options, limit: str | None, users: tuple[str, ...], batch: str | None,
                       max_fail_percent: int | None, rerun: str | None, reason: str | None) -> ExitStatus:
    """Swap app-backup in for app-current on every PC (an unreachable or refusing PC does not
    stop the others): stop the agent, keep config.json, start it again and verify; a failed
    step puts that user's folder back. Ends with a result per PC and user."""
    part = parts_registry.get("agent")
    limit = _rerun_limit(opts, part, rerun, limit)
    job = engine.Job(part, part.request(limit=limit, users=list(users), batch=batch,  # type: ignore[call-arg]
                                        max_fail_percent=max_fail_percent, reason=reason))
    return run_jobs(opts, [job], command="agent rollback", reason=reason, question="Roll the agent back as shown?")


@agent.command("status")
@click.option("--limit", "-l", metavar="PCS", default=None, help="Only these PCs or groups.")
@common_options
@pass_opts
@dry_run("read-only")
def agent_status_cmd(opts: Options, limit: str | None) -> ExitStatus:
    """Per PC and user: app-current and app-backup versions and what a rollback would do."""
    return render_status(opts, engine.status(opts.context(), only=["agent"], limit=limit), one="agent")


@agent.command("reinstall")
@click.option("--installer", required=True, metavar="PATH|URL",
              help="The earlier installer: a file on this machine (copied to each PC) or an https URL "
                   "(http only for 127.0.0.1/localhost) each PC fetches.")
@click.option("--sha256", metavar="HEX", default=None,
              help="The installer's sha256, checked here (a file) and on each PC before anything changes; "
                   "required for a URL.")
@click.option("--publisher", metavar="NAME", default=None,
              help="Windows PCs: the publisher (signer certificate common name) the installer must carry a valid "
                   "Authenticode signature of, checked on each PC before anything changes.")
@click.option("--expect-version", metavar="VERSION", default=None,
              help="The version the installer installs: verified after it, and a PC already on it is unchanged.")
@fleet_options
@common_options
@pass_opts
@dry_run("plans")
def agent_reinstall_cmd(opts: Options, installer: str, sha256: str | None, publisher: str | None,
                        expect_version: str | None,
                        limit: str | None, users: tuple[str, ...], batch: str | None, max_fail_percent: int | None,
                        rerun: str | None, reason: str | None) -> ExitStatus:
    """Reinstall an earlier agent on every PC (an unreachable or refusing PC does not stop the
    others): stop the agent, keep the current install with its config.json (copied aside whole
    as app-replaced-<stamp>; nothing is deleted), uninstall, run the installer silently as the
    user, restore config.json, start and verify; a failed step puts the kept install back. Ends
    with a result per PC and user."""
    part = parts_registry.get("agent")
    limit = _rerun_limit(opts, part, rerun, limit)
    job = engine.Job(part, part.request(action="reinstall", installer=installer, sha256=sha256,  # type: ignore[call-arg]
                                        expect_version=expect_version, publisher=publisher, limit=limit,
                                        users=list(users), batch=batch,
                                        max_fail_percent=max_fail_percent, reason=reason))
    return run_jobs(opts, [job], command="agent reinstall", reason=reason,
                    question="Reinstall the agent as shown?")


# -- database ------------------------------------------------------------------------------------
@cli.group()
def database() -> None:
    """Supabase database (PostgreSQL): migrations undone by their down files, snapshots, restore.

    The connection string comes only from DOAI_DATABASE_URL (direct or session-pooler
    connection); its password is never printed, passed on a command line or to a child's
    environment.
    """


@database.command("status")
@common_options
@pass_opts
@dry_run("read-only")
def database_status_cmd(opts: Options) -> ExitStatus:
    """Applied and local migrations (as `supabase migration list`), down files, tables touched."""
    return render_status(opts, engine.status(opts.context(), only=["database"]), one="database")


@database.command("snapshot")
@common_options
@pass_opts
@dry_run("refused")
def database_snapshot_cmd(opts: Options) -> ExitStatus:
    """pg_dump -Fc of the application schemas and the migration history, with a checksum and a
    manifest (time, server version, last migration, row counts). Changes nothing."""
    part = parts_registry.get("database")
    manifest = part.take_snapshot(opts.context())  # type: ignore[attr-defined]
    if opts.json:
        emit_json(manifest)
    else:
        click.echo(f"snapshot {manifest['file']}")
        click.echo(f"    sha256 {manifest['sha256']}  {manifest['bytes']:,} bytes  last migration "
                   f"{manifest['last_migration']}  tables: {len(manifest['row_counts'])}")
    return ExitStatus.OK


@database.command("snapshots")
@click.option("--prune", "keep", type=click.IntRange(1), default=None, metavar="KEEP",
              help="Delete all but the KEEP newest intact snapshots (asks; --yes without a terminal).")
@common_options
@pass_opts
@dry_run("plans")
def database_snapshots_cmd(opts: Options, keep: int | None) -> ExitStatus:
    """The snapshots taken so far (by `snapshot`, before every rollback and restore), newest
    first, each checked against its checksum; --prune KEEP removes the older ones (with
    --dry-run: lists the ones it would remove, removes nothing)."""
    part = parts_registry.get("database")
    ctx = opts.context()
    if opts.dry_run and keep is None:
        click.echo("doai-rollback: note: --dry-run does not apply to `database snapshots` without --prune: "
                   "listing changes nothing", err=True)
    snaps = part.snapshots(ctx)  # type: ignore[attr-defined]
    doomed = [s["file"] for s in snaps if s["intact"]][keep:] if keep is not None else []
    deleted: list[str] = []
    if doomed and not opts.dry_run:
        if not opts.yes:
            if not sys.stdin.isatty():
                raise UsageError("--prune deletes snapshots: add --yes to confirm")
            if not click.confirm(f"Delete {len(doomed)} snapshot(s), keeping the {keep} newest?", default=False):
                return ExitStatus.INTERRUPTED
        deleted = part.prune_snapshots(ctx, keep, snaps)  # type: ignore[attr-defined]
    would = doomed if opts.dry_run else []
    if opts.json:
        emit_json({"snapshots": snaps, "deleted": deleted, "dry_run": opts.dry_run, "would_delete": would})
        return ExitStatus.OK
    for s in snaps:
        state = ("deleted" if s["file"] in deleted else "would be deleted (dry run)" if s["file"] in would
                 else "ok" if s["intact"] else f"DAMAGED: {s['problem']}")
        click.echo(f"{s['created'] or '?'}  {s['database'] or '?'}  last migration {s['last_migration'] or '?'}"
                   f"  {s['bytes']:,} bytes  {state}\n    {s['file']}")
    if not snaps:
        click.echo(f"no snapshots in {ctx.settings.snapshot_dir}")
    if opts.dry_run and keep is not None:
        click.echo(f"dry run: {len(would)} snapshot(s) would be deleted, keeping the {keep} newest intact; "
                   "nothing was deleted")
    return ExitStatus.OK


@database.command("rollback")
@click.option("--to", "to", metavar="VERSION", default=None, help="Undo every migration applied after this one.")
@click.option("--last", "last", type=click.IntRange(1, 100), default=None, help="Undo the last N migrations.")
@click.option("--accept-data-loss", is_flag=True,
              help="Needed when a down file drops or empties tables or columns that hold rows (the plan lists them).")
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal).")
@common_options
@pass_opts
@dry_run("plans")
def database_rollback_cmd(opts: Options, to: str | None, last: int | None, accept_data_loss: bool,
                          reason: str | None) -> ExitStatus:
    """Undo migrations with their down files (supabase/rollbacks/), newest first: a snapshot
    first, then every down statement and history delete in ONE transaction, then verify."""
    part = parts_registry.get("database")
    job = engine.Job(part, part.request(to=to, last=last, accept_data_loss=accept_data_loss, reason=reason))
    return run_jobs(opts, [job], command="database rollback", reason=reason,
                    question="Undo these migrations as shown?")


@database.command("restore")
@click.argument("snapshot", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal).")
@common_options
@pass_opts
@dry_run("plans")
def database_restore_cmd(opts: Options, snapshot: Path, reason: str | None) -> ExitStatus:
    """Restore a snapshot (checksum checked first) in one transaction, after a snapshot of the
    present; then verify row counts and history."""
    part = parts_registry.get("database")
    job = engine.Job(part, part.request(restore_file=str(snapshot), reason=reason))
    return run_jobs(opts, [job], command="database restore", reason=reason,
                    question="Replace the database's application schemas with this snapshot?")


# -- journal, undo, lock ----------------------------------------------------------------------
@cli.command("history")
@click.option("--limit", "count", type=click.IntRange(1, 10000), default=20, help="How many runs (newest first).")
@click.option("--part", default=None, help="Only runs that touched this part (" + ", ".join(parts_registry.names())
              + ").")
@common_options
@pass_opts
@dry_run("read-only")
def history(opts: Options, count: int, part: str | None) -> ExitStatus:
    """Runs from the journal, newest first (every run that reached a part, refused ones too)."""
    runs = engine.history(opts.context(), limit=count, part=part)
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
@click.argument("run_id")
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
    """Inspect or release the local rollback locks."""


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


@diagnose_group.command("api-errors")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these backend hosts (Ansible pattern).")
@common_options
@pass_opts
@dry_run("read-only")
def diagnose_api_errors(opts: Options, limit: str | None) -> ExitStatus:
    """A: PM2 or container logs scanned for errors, the environment variables the backend needs
    (names only), health and the live release; proposes the backend rollback."""
    return _diagnose(opts, "api-errors", limit)


@diagnose_group.command("migration-failure")
@common_options
@pass_opts
@dry_run("read-only")
def diagnose_migration_failure(opts: Options) -> ExitStatus:
    """B: migration state, half-applied migrations and the integrity checks; proposes a database
    rollback or restore."""
    return _diagnose(opts, "migration-failure")


@diagnose_group.command("agent-connection")
@click.option("--limit", "-l", metavar="PCS", default=None, help="Only these agent PCs (Ansible pattern).")
@common_options
@pass_opts
@dry_run("read-only")
def diagnose_agent_connection(opts: Options, limit: str | None) -> ExitStatus:
    """C: the backend's Socket.IO handshake, its port from each agent PC, the agents per PC and
    user; proposes the firewall, the backend, an agent rollback or reinstall."""
    return _diagnose(opts, "agent-connection", limit)


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
    release of all of them, run the whole-system rollback, and check every part's live state."""
    from doai_ansible.sandbox.demo import run_demo

    echo = (lambda line: click.echo(line, err=True)) if opts.json else click.echo
    result = run_demo(workdir=workdir, keep=keep, echo=echo, verbose=bool(opts.verbose))
    if opts.json:
        emit_json(result)
    return ExitStatus(result["exit_status"])


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


def main(argv: list[str] | None = None) -> int:
    """Entry point; the one place where errors become messages and exit codes. With
    ``--output json`` every outcome is one JSON document on stdout, click's own usage errors
    and Ctrl-C included."""
    args = list(sys.argv[1:] if argv is None else argv)
    opts = Options()
    if json_requested(args):
        opts.output = "json"  # before click parses: its errors must be JSON too
    try:
        return _main(opts, args)
    except BrokenPipeError:
        return _stdout_closed()


def _main(opts: Options, args: list[str]) -> int:
    with engine.interrupt_handlers():
        return _main_handled(opts, args)


def _main_handled(opts: Options, args: list[str]) -> int:
    try:
        with cli.make_context("doai-rollback", args, obj=opts) as ctx:
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
