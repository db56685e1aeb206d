"""Backend API on the VPS under PM2: status, rollback (plan/apply/verify/restore), undo.

The work on the hosts is done by ``playbooks/backend-pm2-rollback.yml`` (role
``doai_backend_pm2``) through the ansible-runner wrapper; this module validates the inputs
first, holds the local lock, reads each host's outcome back from the playbook's stats, puts
hosts that did roll back forward again when another host failed, and journals the run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from doai_ansible import validate
from doai_ansible.context import RunContext
from doai_ansible.errors import ExitStatus, LockedError, UnreachableError, ValidationError
from doai_ansible.model import Outcome, Part, RunResult, Step, StepResult, overall_status, utcnow
from doai_ansible.runner import HostFailure, PlaybookRun, run_playbook

log = logging.getLogger(__name__)

ROLLBACK_PLAYBOOK = "backend-pm2-rollback.yml"
STATUS_PLAYBOOK = "backend-pm2-status.yml"
LOCK_TARGET = "backend"

_STATUS_OUTCOME = {
    "planned": Outcome.PLANNED,
    "unchanged": Outcome.UNCHANGED,
    "succeeded": Outcome.SUCCEEDED,
    "restored": Outcome.RESTORED,
    "not_restored": Outcome.NOT_RESTORED,
}
# Tasks whose failure means "bad input", nothing changed.
_USAGE_TASKS = ("Check the rollback target is a commit SHA or ref name", "Check the app path is absolute")


def _int(value: Any, default: int = -1) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _label(sha: str | None, version: str | None) -> str:
    if not sha:
        return "?"
    return f"{sha[:12]} ({version})" if version else sha[:12]


def _step(host: str, st: dict[str, Any]) -> Step:
    return Step(
        part=Part.BACKEND,
        target=host,
        current=st.get("from"),
        desired=st.get("to"),
        rule=st.get("rule") or "",
        details={
            "from_label": _label(st.get("from"), st.get("from_version")),
            "to_label": _label(st.get("to"), st.get("to_version")),
            "from_version": st.get("from_version"),
            "to_version": st.get("to_version"),
            "needs_install": bool(st.get("needs_install")),
            "recent": st.get("recent") or [],
            "processes": st.get("processes") or [],
            "lockfile_sha256": st.get("lockfile_sha256"),
            "health_version": st.get("health_version"),
            "from_health": st.get("from_health"),
        },
    )


def _reduce(run: PlaybookRun, started: str, elapsed: float, logs: str | None) -> tuple[list[StepResult], list[HostFailure]]:
    """Per-host results from the stats the role reports; failures the role did not classify."""
    stats: dict[str, dict[str, Any]] = run.custom.get("doai_backend_pm2", {}) or {}
    failures = {f.host: f for f in run.failures}
    results, unclassified = [], []
    for host in sorted(set(stats) | set(failures) | set(run.hosts)):
        st = stats.get(host, {})
        f = failures.get(host)
        status = st.get("status")
        step = _step(host, st)
        outcome = _STATUS_OUTCOME.get(status or "")
        message = ""
        if outcome in (Outcome.RESTORED, Outcome.NOT_RESTORED):
            message = st.get("failure", "")
            if outcome is Outcome.NOT_RESTORED and st.get("restore_error"):
                message += f"; restore failed: {st['restore_error']}"
        elif f is not None:
            if status == "started":
                # Failed after changing something, and the role could not say it restored it.
                outcome, message = Outcome.NOT_RESTORED, f"{f.task}: {f.message} (state unknown)"
            else:
                unclassified.append(f)
                continue
        elif outcome is None:
            continue  # a host with no rollback work (e.g. skipped by a limit)
        results.append(StepResult(step, outcome, message, started, utcnow(), elapsed, logs))
    return results, unclassified


def _raise_for_preflight(failures: list[HostFailure], changed: bool) -> None:
    """Failures before any change: bad input, lock held, host unreachable."""
    usage = [f for f in failures if f.flags.get("invalid_target") or f.flags.get("no_target") or f.task in _USAGE_TASKS]
    locked = [f for f in failures if f.flags.get("locked")]
    dark = [f for f in failures if f.unreachable]
    if changed:
        return
    if locked:
        raise LockedError(
            "; ".join(f"{f.host}: {f.message}" for f in locked),
            hint="another rollback is running on the host",
        )
    if usage and len(usage) == len(failures):
        raise ValidationError("; ".join(f"{f.host}: {f.message}" for f in usage))
    if dark and len(dark) == len(failures):
        raise UnreachableError(
            "unreachable: " + "; ".join(f"{f.host}: {f.message}" for f in dark),
            hint="check the inventory address, SSH key and known_hosts",
        )


def _extravars(ctx: RunContext, to: str | None, reason: str | None, *, health_gate: bool = True) -> dict[str, Any]:
    return {
        "doai_backend_pm2_health_gate": health_gate,
        "doai_backend_pm2_target": to or "",
        "doai_backend_pm2_reason": reason or "",
        "doai_backend_pm2_operator": ctx.operator,
        "doai_backend_pm2_run_id": ctx.run_id,
    }


PM2_LOGS_TASK = "Read the last PM2 log lines"


def _keep_pm2_logs(ctx: RunContext, log_dir: Path) -> Callable[[dict[str, Any]], None]:
    """Progress display, plus each host's `pm2 logs` written into the run's log bundle.

    Read from the event stream rather than copied by a task on the controller: that copy
    would cost every rollback another second.
    """

    def on_event(event: dict[str, Any]) -> None:
        data = event.get("event_data") or {}
        if event.get("event") == "runner_on_ok" and data.get("task") == PM2_LOGS_TASK and data.get("host"):
            res = data.get("res") or {}
            log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = log_dir / f"{data['host']}-pm2.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(f"{res.get('stdout', '')}\n{res.get('stderr', '')}\n")
        if ctx.progress is not None:
            ctx.progress(event)

    return on_event


def rollback(
    ctx: RunContext,
    *,
    to: str | None = None,
    limit: str | None = None,
    reason: str | None = None,
    dry_run: bool = False,
    command: str = "backend rollback",
    health_gate: bool = True,
) -> RunResult:
    """Roll the backend hosts back to ``to`` (or each host's previous release).

    Raises ValidationError / LockedError / UnreachableError when nothing was changed;
    otherwise returns a RunResult whose ``exit_status`` says how it ended. ``health_gate``
    False (undo) reports health without requiring it: the state undone to may have been
    unhealthy.
    """
    to = validate.git_ref(to)
    limit = validate.host_limit(limit)
    reason = validate.reason(reason)
    run = RunResult(ctx.run_id, command, dry_run, reason, utcnow(), log_dir=str(ctx.log_dir))
    if dry_run:
        _apply(ctx, run, to=to, limit=limit, reason=reason, check=True, health_gate=health_gate)
        return run
    with ctx.lock(LOCK_TARGET).held(owner=ctx.operator, reason=reason, run_id=ctx.run_id):
        try:
            _apply(ctx, run, to=to, limit=limit, reason=reason, check=False, health_gate=health_gate)
        finally:
            if run.results:
                ctx.journal.append(run, who=ctx.operator)
    return run


def _apply(
    ctx: RunContext,
    run: RunResult,
    *,
    to: str | None,
    limit: str | None,
    reason: str | None,
    check: bool,
    health_gate: bool = True,
) -> None:
    started, t0 = utcnow(), time.monotonic()
    ctx.say(f"{'planning' if check else 'rolling back'} the backend ({'to ' + to if to else 'previous release'})")
    pb = run_playbook(
        ctx.settings,
        ROLLBACK_PLAYBOOK,
        extravars=_extravars(ctx, to, reason, health_gate=health_gate),
        limit=limit,
        check=check,
        log_dir=ctx.log_dir,
        on_event=_keep_pm2_logs(ctx, ctx.log_dir),
    )
    logs = str(pb.log_file) if pb.log_file else None
    results, unclassified = _reduce(pb, started, time.monotonic() - t0, logs)
    changed = any(r.outcome not in (Outcome.PLANNED, Outcome.UNCHANGED, Outcome.FAILED) for r in results)
    _raise_for_preflight(unclassified, changed)
    for f in unclassified:  # failed before changing anything (dirty tree, unknown target, ...)
        step = Step(Part.BACKEND, f.host, None, None)
        msg = f"{f.task}: {f.message}" if not f.unreachable else f"unreachable: {f.message}"
        results.append(StepResult(step, Outcome.FAILED, msg, started, utcnow(), time.monotonic() - t0, logs))
    if not results and not pb.ok:
        raise pb.error("backend rollback playbook failed")
    run.results = sorted(results, key=lambda r: r.step.target)

    if not check and any(r.outcome in (Outcome.RESTORED, Outcome.NOT_RESTORED, Outcome.FAILED) for r in results):
        _revert_succeeded(ctx, run, reason)
    run.exit_status = overall_status(run.results)
    run.finished = utcnow()
    run.message = _summary(run)


def _revert_succeeded(ctx: RunContext, run: RunResult, reason: str | None) -> None:
    """Another host failed: put the hosts that did roll back on their captured commit again,
    so the backend pool is never left on mixed releases."""
    for r in [r for r in run.results if r.outcome is Outcome.SUCCEEDED]:
        ctx.say(f"{r.step.target}: putting {r.step.current} back (another host failed)")
        # "As it was": require health only if the host had it before (it was likely on the bad release).
        was_healthy = 200 <= _int(r.step.details.get("from_health")) < 300
        pb = run_playbook(
            ctx.settings,
            ROLLBACK_PLAYBOOK,
            extravars=_extravars(ctx, r.step.current, f"revert: {reason or 'another host failed'}",
                                 health_gate=was_healthy),
            limit=r.step.target,
            log_dir=ctx.log_dir / f"revert-{r.step.target}",
            on_event=_keep_pm2_logs(ctx, ctx.log_dir / f"revert-{r.step.target}"),
        )
        back = (pb.custom.get("doai_backend_pm2", {}) or {}).get(r.step.target, {}).get("status")
        if pb.ok and back in ("succeeded", "unchanged"):
            r.outcome, r.message = Outcome.RESTORED, "rolled back, then put back because another host failed"
        else:
            r.outcome = Outcome.NOT_RESTORED
            r.message = f"rolled back, and could NOT be put back after another host failed: {pb.error('revert').message}"


def _summary(run: RunResult) -> str:
    s = run.exit_status
    if run.dry_run:
        n = sum(1 for r in run.results if r.outcome is Outcome.PLANNED)
        return f"{n} host(s) would roll back; run without --dry-run to apply"
    if s is ExitStatus.OK:
        n = sum(1 for r in run.results if r.outcome is Outcome.SUCCEEDED)
        return f"backend rolled back on {n} host(s)" if n else "backend already on the target: nothing to do"
    if s is ExitStatus.FAILED_RESTORED:
        return "ROLLBACK FAILED; every host is back on the release it had before"
    bad = ", ".join(r.step.target for r in run.results if r.outcome is Outcome.NOT_RESTORED)
    return f"ROLLBACK FAILED AND NOT RESTORED on {bad}: a human must act now (see the logs)"


def status(ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
    """Live commit, PM2 processes and health per backend host. Changes nothing."""
    limit = validate.host_limit(limit)
    pb = run_playbook(ctx.settings, STATUS_PLAYBOOK, limit=limit, on_event=ctx.progress)
    stats: dict[str, dict[str, Any]] = pb.custom.get("doai_backend_pm2_status", {}) or {}
    hosts = {}
    for host in sorted(set(stats) | set(pb.hosts)):
        st = dict(stats.get(host, {}))
        failure = next((f for f in pb.failures if f.host == host), None)
        if failure:
            st["error"] = f"{failure.task}: {failure.message}" if not failure.unreachable else "unreachable"
        code = _int(st.get("health_status"))
        procs = st.get("processes") or []
        st["healthy"] = bool(
            not failure and 200 <= code < 300 and procs and all(p.get("status") == "online" for p in procs)
        )
        hosts[host] = st
    if not hosts and not pb.ok:
        raise pb.error("backend status playbook failed")
    # An inventory without backend hosts has no backend to be unhealthy; `configured` says so.
    return {"part": "backend", "hosts": hosts, "configured": bool(hosts),
            "healthy": all(h["healthy"] for h in hosts.values())}


def undo_steps(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(host, commit) pairs that put the backend back to the state a journaled run found."""
    out = []
    for s in record.get("steps", []):
        if s.get("part") == Part.BACKEND.value and s.get("outcome") == Outcome.SUCCEEDED.value and s.get("from"):
            out.append((s["target"], s["from"]))
    return out
