"""The ``doai-rollback`` command: parse, call one core function, render. Nothing else.

The one error boundary is :func:`main`: every :class:`DoaiError` becomes a one-line message
and its exit status (a traceback only with ``--debug``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from doai_ansible import __version__, validate
from doai_ansible.parts import backend_pm2 as backend_core
from doai_ansible.context import RunContext
from doai_ansible.errors import DoaiError, ExitStatus, UsageError
from doai_ansible.lock import Lock, all_locks
from doai_ansible.model import RunResult
from doai_ansible.render import Progress, emit_json, run_text
from doai_ansible.settings import Settings, load_settings

log = logging.getLogger("doai_ansible")


class Options:
    """Global options; each may also be given after the subcommand."""

    def __init__(self) -> None:
        self.config: str | None = None
        self.inventory: str | None = None
        self.state_dir: str | None = None
        self.output = "text"
        self.dry_run = False
        self.yes = False
        self.verbose = 0
        self.debug = False
        self._settings: Settings | None = None

    @property
    def json(self) -> bool:
        return self.output == "json"

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config, inventory=self.inventory, state_dir=self.state_dir)
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
                     help="Ansible inventory (default: $DOAI_INVENTORY, the config's, inventory/example)."),
        click.option("--state-dir", type=click.Path(file_okay=False), expose_value=False, callback=_set("state_dir"),
                     help="Journal, locks and run logs (default: ~/.local/state/doai-rollback)."),
        click.option("--output", "-o", type=click.Choice(["text", "json"]), default=None, expose_value=False,
                     callback=_set("output"), help="Result as text (default) or one JSON document on stdout."),
        click.option("--dry-run", "-n", is_flag=True, expose_value=False, callback=_set("dry_run"),
                     help="Show the plan (check mode); change nothing."),
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


def render_run(opts: Options, run: RunResult) -> ExitStatus:
    if opts.json:
        emit_json(run.to_dict())
    else:
        click.echo(run_text(run))
    return run.exit_status


def plan_confirm_apply(opts: Options, run: Callable[..., RunResult], question: str) -> ExitStatus:
    """``run(ctx, dry_run=...)`` once as asked; on a terminal without --yes, first the plan and
    one confirmation (pyinfra's way: facts -> changes -> confirm -> apply)."""
    if not opts.dry_run and not opts.yes and sys.stdin.isatty():
        plan = run(opts.context(), dry_run=True)
        render_run(opts, plan)
        if not any(r.step.changes for r in plan.results):
            return ExitStatus.OK
        confirm(opts, question)
    return render_run(opts, run(opts.context(), dry_run=opts.dry_run))


def render_status(opts: Options, st: dict[str, Any], text: Callable[[dict[str, Any]], str]) -> ExitStatus:
    if opts.json:
        emit_json(st)
    else:
        click.echo(text(st))
    return ExitStatus.OK if st["healthy"] else ExitStatus.UNHEALTHY


def confirm(opts: Options, question: str) -> None:
    """Ask once, on a terminal, unless --yes. Without a terminal, --yes is required."""
    if opts.yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question}: confirmation needed and there is no terminal", hint="add --yes")
    if not click.confirm(question, default=False, err=True):
        raise click.exceptions.Abort()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="doai-rollback")
@common_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Roll the DoAi system back after a failed deployment.

    Order of a whole-system rollback: agent -> backend -> database -> dashboard.
    Exit codes: 0 ok, 2 usage/config, 3 failed but restored, 4 failed and NOT restored,
    5 locked, 6 unhealthy, 7 unreachable, 130 interrupted.
    """
    ctx.ensure_object(Options)


# -- backend --------------------------------------------------------------------------------
@cli.group()
def backend() -> None:
    """Backend API on the VPS (git + PM2)."""


@backend.command("rollback")
@click.option("--to", "to", metavar="REF", default=None,
              help="Commit SHA or ref (default: the release live before the current one).")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these hosts or groups (comma-separated).")
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal and host ledger).")
@common_options
@pass_opts
def backend_rollback(opts: Options, to: str | None, limit: str | None, reason: str | None) -> ExitStatus:
    """Check out an earlier commit, reinstall dependencies if the lockfile differs, reload
    PM2 and wait for health; on failure put the previous commit back."""
    validate.git_ref(to)
    validate.host_limit(limit)
    validate.reason(reason)
    return plan_confirm_apply(
        opts,
        lambda ctx, dry_run: backend_core.rollback(ctx, to=to, limit=limit, reason=reason, dry_run=dry_run),
        "Roll the backend back as shown?",
    )


def _backend_status_text(st: dict[str, Any]) -> str:
    lines = []
    for host, h in st["hosts"].items():
        state = "healthy" if h.get("healthy") else "UNHEALTHY"
        commit = (h.get("commit") or "?")[:12]
        lines.append(f"backend {host}: {state}  commit {commit} ({h.get('version') or '?'})"
                     f"  health HTTP {h.get('health_status')} version {h.get('health_version') or '?'}")
        for p in h.get("processes") or []:
            lines.append(f"    pm2 {p.get('name')}[{p.get('pm_id')}] {p.get('status')} restarts={p.get('restarts')}")
        if h.get("dirty"):
            lines.append(f"    uncommitted changes: {', '.join(h['dirty'])}")
        if h.get("host_lock"):
            lines.append(f"    LOCKED by {h['host_lock'].get('owner')} since {h['host_lock'].get('since')}")
        if h.get("error"):
            lines.append(f"    error: {h['error']}")
    return "\n".join(lines) or "backend: no hosts in the inventory (group `backend`)"


@backend.command("status")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these hosts or groups.")
@common_options
@pass_opts
def backend_status(opts: Options, limit: str | None) -> ExitStatus:
    """Live commit, PM2 processes and health of each backend host."""
    return render_status(opts, backend_core.status(opts.context(), limit=limit), _backend_status_text)


@cli.command("status")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these backend hosts or groups.")
@common_options
@pass_opts
def status_cmd(opts: Options, limit: str | None) -> ExitStatus:
    """Status of every configured part (backend hosts; dashboard when configured)."""
    parts: dict[str, Any] = {"backend": backend_core.status(opts.context(), limit=limit)}
    if _dashboard_configured(opts):
        parts["dashboard"] = dashboard_run.status(opts.context())
    healthy = all(p.get("healthy", True) for p in parts.values())
    if opts.json:
        emit_json({"healthy": healthy, "parts": parts})
    else:
        click.echo(_backend_status_text(parts["backend"]))
        if "dashboard" in parts:
            click.echo(_dashboard_status_text(parts["dashboard"]))
        else:
            click.echo("dashboard: not configured (vercel.project in the config file and VERCEL_TOKEN)")
    return ExitStatus.OK if healthy else ExitStatus.UNHEALTHY


@cli.command("health")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these backend hosts or groups.")
@common_options
@pass_opts
def health_cmd(opts: Options, limit: str | None) -> ExitStatus:
    """Exit 0 when every part is healthy, 6 when one is not (for scripts and CI)."""
    st = backend_core.status(opts.context(), limit=limit)
    out: dict[str, Any] = {"backend": {h: v["healthy"] for h, v in st["hosts"].items()}}
    healthy = st["healthy"]
    if _dashboard_configured(opts):
        from doai_ansible.parts.dashboard import probe_health

        vs = opts.settings().vercel
        ok, detail = probe_health(vs.health_url, vs.timeout_s)
        out["dashboard"] = {"healthy": ok, "health_url": vs.health_url, "detail": detail}
        healthy = healthy and ok
    out["healthy"] = healthy
    if opts.json:
        emit_json(out)
    else:
        for host, ok in out["backend"].items():
            click.echo(f"backend {host}: {'healthy' if ok else 'UNHEALTHY'}")
        if "dashboard" in out:
            d = out["dashboard"]
            click.echo(f"dashboard {d['health_url']}: {'healthy' if d['healthy'] else 'UNHEALTHY'} ({d['detail']})")
    return ExitStatus.OK if healthy else ExitStatus.UNHEALTHY


# -- dashboard ------------------------------------------------------------------------------
class _LazyDashboard:
    """doai_ansible.dashboard_run, imported on first use: httpx costs every backend command time."""

    def __getattr__(self, name: str) -> Any:
        from doai_ansible import dashboard_run as mod

        return getattr(mod, name)


dashboard_run = _LazyDashboard()


def _dashboard_configured(opts: Options) -> bool:
    vs = opts.settings().vercel
    return bool(vs.project and vs.token)


def _dashboard_status_text(st: dict[str, Any]) -> str:
    prod = st.get("production") or {}
    lines = [
        (f"dashboard {st['project'].get('name')}: {'healthy' if st.get('healthy') else 'UNHEALTHY'} "
        f"({st.get('health')} from {st.get('health_url')})"),
        (f"    production {prod.get('id', '?')} {prod.get('url', '')} created {prod.get('created', '?')}"
        f" commit {(prod.get('commit') or '?')[:12]}"),
    ]
    lar = st.get("lastAliasRequest")
    if lar:
        lines.append(f"    last {lar.get('type')}: {lar.get('fromDeploymentId')} -> {lar.get('toDeploymentId')}"
                     f" {lar.get('jobStatus')} at {lar.get('requestedAt')}")
    if st.get("autoAssignCustomDomains") is False:
        lines.append("    note: production domains are pinned after a rollback; new deploys are not assigned until a promote")
    return "\n".join(lines)


@cli.group()
def dashboard() -> None:
    """Dashboard on Vercel (REST API).

    On Vercel's Hobby plan only the previous production deployment can be rolled back to.
    """


@dashboard.command("status")
@common_options
@pass_opts
def dashboard_status_cmd(opts: Options) -> ExitStatus:
    """Production deployment, last rollback/promote job, health."""
    return render_status(opts, dashboard_run.status(opts.context()), _dashboard_status_text)


@dashboard.command("rollback")
@click.option("--to", "to", metavar="DEPLOYMENT", default=None,
              help="Deployment id (dpl_...) or URL (default: the previous READY production deployment).")
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal and Vercel's description).")
@common_options
@pass_opts
def dashboard_rollback_cmd(opts: Options, to: str | None, reason: str | None) -> ExitStatus:
    """Roll production back to an earlier deployment, wait for the alias job and the health gate;
    if the gate fails, promote the original deployment back."""
    validate.reason(reason)
    return plan_confirm_apply(
        opts,
        lambda ctx, dry_run: dashboard_run.rollback(ctx, to=to, reason=reason, dry_run=dry_run),
        "Roll the dashboard back as shown?",
    )


# -- journal, undo, lock ----------------------------------------------------------------------
@cli.command("history")
@click.option("--limit", "count", type=click.IntRange(1, 10000), default=20, help="How many runs (newest first).")
@click.option("--part", type=click.Choice(["agent", "backend", "database", "dashboard"]), default=None)
@common_options
@pass_opts
def history(opts: Options, count: int, part: str | None) -> ExitStatus:
    """Runs from the journal, newest first."""
    from doai_ansible.journal import Journal

    runs = Journal(opts.settings().journal_path).runs(limit=count, part=part)
    if opts.json:
        emit_json(runs)
        return ExitStatus.OK
    if not runs:
        click.echo(f"no runs in {opts.settings().journal_path}")
    for r in runs:
        click.echo(f"{r['run_id']}  {r['started']}  {r['command']}{' (dry run)' if r.get('dry_run') else ''}"
                   f"  {r['exit_name']}  by {r.get('who')}" + (f"  why: {r['reason']}" if r.get("reason") else ""))
        for s in r.get("steps", []):
            click.echo(f"    {s['part']} {s['target']}: {(s.get('from') or '?')[:12]} -> {(s.get('to') or '?')[:12]}"
                       f"  {s['outcome']}")
    return ExitStatus.OK


@cli.command("undo")
@click.argument("run_id")
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal and host ledger).")
@common_options
@pass_opts
def undo(opts: Options, run_id: str, reason: str | None) -> ExitStatus:
    """Roll forward to the state that run RUN_ID found."""
    from doai_ansible.journal import Journal

    validate.run_id(run_id)
    record = Journal(opts.settings().journal_path).find(run_id)
    pairs = backend_core.undo_steps(record)
    dpl = dashboard_run.undo_target(record)
    if not pairs and not dpl:
        raise UsageError(f"run {record['run_id']} changed nothing that undo can put back")
    why = reason or f"undo {record['run_id']}"
    if not opts.dry_run:
        what = [f"{h} back on {c[:12]}" for h, c in pairs] + ([f"dashboard back on {dpl}"] if dpl else [])
        confirm(opts, f"Put {', '.join(what)}?")
    worst = ExitStatus.OK
    if dpl:
        run = dashboard_run.promote(opts.context(), to=dpl, reason=why, dry_run=opts.dry_run,
                                    command=f"undo {record['run_id']}")
        worst = max(worst, render_run(opts, run))
    for host, commit in pairs:
        # The state undone to may have been unhealthy (that is why it was rolled back):
        # PM2 must be stable, health is reported but not required.
        run = backend_core.rollback(opts.context(), to=commit, limit=host, reason=why, dry_run=opts.dry_run,
                                    command=f"undo {record['run_id']}", health_gate=False)
        status = render_run(opts, run)
        worst = max(worst, status)
    return worst


@cli.group("lock")
def lock_group() -> None:
    """Inspect or release the local rollback locks."""


@lock_group.command("status")
@common_options
@pass_opts
def lock_status(opts: Options) -> ExitStatus:
    s = opts.settings()
    locks = all_locks(s.locks_dir, s.lock_ttl_s)
    if opts.json:
        emit_json([dict(info.to_dict(), stale=stale) for info, stale in locks])
    elif not locks:
        click.echo("no locks held")
    for info, stale in locks if not opts.json else []:
        click.echo(f"{info.target}: {info.owner} pid {info.pid} on {info.host} since {info.to_dict()['acquired_iso']}"
                   + (f", reason: {info.reason}" if info.reason else "") + (f" (STALE: {stale})" if stale else ""))
    return ExitStatus.LOCKED if any(not stale for _, stale in locks) else ExitStatus.OK


@lock_group.command("release")
@click.argument("target", type=click.Choice(["backend", "dashboard", "database", "agent", "system"]))
@click.option("--force", is_flag=True, help="Release a lock whose holder still looks alive.")
@common_options
@pass_opts
def lock_release(opts: Options, target: str, force: bool) -> ExitStatus:
    s = opts.settings()
    held = Lock(s.locks_dir, target, s.lock_ttl_s).release(force=force)
    click.echo(f"released {target} (held by {held.owner})" if held else f"{target} was not locked", err=opts.json)
    return ExitStatus.OK


# -- demo ------------------------------------------------------------------------------------------
@cli.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to build the sandbox (default: a new temporary directory).")
@click.option("--keep", is_flag=True, help="Leave the sandbox running afterwards.")
@common_options
@pass_opts
def demo(opts: Options, workdir: Path | None, keep: bool) -> ExitStatus:
    """Build a local sandbox VPS (loopback sshd, git-deployed app under PM2), deploy a bad
    release, roll it back with this tool, and show health before and after."""
    from doai_ansible.sandbox.demo import run_demo

    echo = (lambda line: click.echo(line, err=True)) if opts.json else click.echo
    result = run_demo(workdir=workdir, keep=keep, echo=echo, verbose=bool(opts.verbose))
    if opts.json:
        emit_json(result)
    return ExitStatus(result["exit_status"])


def _configure_logging(opts: Options) -> None:
    level = logging.DEBUG if opts.debug else logging.INFO if opts.verbose else logging.WARNING
    logging.basicConfig(level=level, format="doai-rollback: %(levelname)s: %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point; the one place where errors become messages and exit codes."""
    opts = Options()
    try:
        with cli.make_context("doai-rollback", list(sys.argv[1:] if argv is None else argv), obj=opts) as ctx:
            _configure_logging(opts)
            rv = cli.invoke(ctx)
        return int(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("doai-rollback: aborted; nothing was changed", err=True)
        return ExitStatus.INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return ExitStatus.USAGE
    except DoaiError as exc:
        if opts.debug:
            log.exception("error")
        status = exc.exit_status
        if opts.json:
            emit_json({"error": exc.message, "hint": exc.hint, "exit_status": int(status), "exit_name": status.name})
        click.echo(f"doai-rollback: error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"doai-rollback: hint: {exc.hint}", err=True)
        return int(status)
    except KeyboardInterrupt:
        click.echo("doai-rollback: interrupted", err=True)
        return ExitStatus.INTERRUPTED
    except Exception as exc:  # a bug: say so, briefly, unless --debug
        if opts.debug:
            raise
        click.echo(f"doai-rollback: internal error: {type(exc).__name__}: {exc} (run again with --debug)", err=True)
        return ExitStatus.ERROR


def run() -> None:
    sys.exit(main())
