"""Dashboard runs: plan -> lock -> apply -> journal, and undo, on top of :mod:`doai_ansible.dashboard`."""

from __future__ import annotations

from typing import Any

from doai_ansible import validate
from doai_ansible.parts import dashboard
from doai_ansible.context import RunContext
from doai_ansible.errors import ExitStatus, RollbackFailed, UsageError
from doai_ansible.model import Outcome, Part, RunResult, Step, StepResult, overall_status, utcnow
from doai_ansible.clients.vercel import VercelClient

LOCK_TARGET = "dashboard"


def _labels(step: Step) -> None:
    for side, key in (("from", "from_deployment"), ("to", "to_deployment")):
        dep = step.details.get(key) or {}
        dep_id = dep.get("id") or (step.current if side == "from" else step.desired)
        extra = dep.get("commit") or dep.get("url")
        step.details[f"{side}_label"] = f"{dep_id} ({str(extra)[:12]})" if dep_id and extra else (dep_id or "?")


def _run(ctx: RunContext, *, command: str, reason: str | None, dry_run: bool, plan, apply) -> RunResult:
    settings = ctx.settings.vercel
    settings.require()
    run = RunResult(ctx.run_id, command, dry_run, reason, utcnow())
    with VercelClient(settings) as client:
        step = plan(client)
        _labels(step)
        if dry_run or not step.changes:
            outcome = Outcome.PLANNED if (dry_run and step.changes) else Outcome.UNCHANGED
            run.results = [StepResult(step, outcome, "" if step.changes else "already live: nothing to do")]
            run.finished = utcnow()
            run.message = ("dashboard would roll back; run without --dry-run to apply" if outcome is Outcome.PLANNED
                           else "dashboard already on the target: nothing to do")
            return run
        with ctx.lock(LOCK_TARGET).held(owner=ctx.operator, reason=reason, run_id=ctx.run_id):
            try:
                result = apply(step, client)
            except RollbackFailed as exc:
                result = exc.result if isinstance(exc.result, StepResult) else StepResult(
                    step, Outcome.RESTORED if exc.restored else Outcome.NOT_RESTORED, exc.message)
            run.results = [result]
            run.exit_status = overall_status(run.results)
            run.finished = utcnow()
            run.message = {
                ExitStatus.OK: "dashboard rolled back and healthy",
                ExitStatus.FAILED_RESTORED: "DASHBOARD ROLLBACK FAILED; production serves the deployment it had before",
            }.get(run.exit_status, "DASHBOARD ROLLBACK FAILED AND NOT RESTORED: a human must act now")
            ctx.journal.append(run, who=ctx.operator)
    return run


def rollback(ctx: RunContext, *, to: str | None = None, reason: str | None = None, dry_run: bool = False) -> RunResult:
    """Roll production back to ``to`` (or the previous READY production deployment)."""
    reason = validate.reason(reason)
    if to is not None and not to.strip():
        raise UsageError("--to is empty: give a deployment id or URL, or leave --to out")
    vs = ctx.settings.vercel
    return _run(
        ctx, command="dashboard rollback", reason=reason, dry_run=dry_run,
        plan=lambda c: dashboard.plan_dashboard_rollback(vs, to, client=c),
        apply=lambda step, c: dashboard.apply_dashboard_rollback(step, vs, reason, client=c, progress=ctx.say),
    )


def promote(ctx: RunContext, *, to: str, reason: str | None, dry_run: bool, command: str) -> RunResult:
    """Promote ``to`` back to production (undo of a dashboard rollback).

    The deployment undone to was live when the rollback started, most likely unhealthy (that
    is why it was rolled back): its health is probed and reported, not required.
    """
    reason = validate.reason(reason)
    vs = ctx.settings.vercel

    def report_only() -> bool:
        ok, detail = dashboard.probe_health(vs.health_url, vs.timeout_s)
        ctx.say(f"dashboard health after undo: {detail} ({'healthy' if ok else 'unhealthy'}; reported, not required)")
        return True

    return _run(
        ctx, command=command, reason=reason, dry_run=dry_run,
        plan=lambda c: dashboard.plan_dashboard_promote(vs, to, client=c),
        apply=lambda step, c: dashboard.promote_dashboard(
            step, vs, reason, client=c, health_check=report_only, progress=ctx.say),
    )


def undo_target(record: dict[str, Any]) -> str | None:
    for s in record.get("steps", []):
        if s.get("part") == Part.DASHBOARD.value and s.get("outcome") == Outcome.SUCCEEDED.value and s.get("from"):
            return str(s["from"])
    return None


def status(ctx: RunContext) -> dict[str, Any]:
    vs = ctx.settings.vercel
    st = dashboard.dashboard_status(vs)
    healthy, detail = dashboard.probe_health(vs.health_url, vs.timeout_s)
    st.update(part="dashboard", health_url=vs.health_url, healthy=healthy, health=detail)
    return st
