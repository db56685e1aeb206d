"""The Python side shared by every part whose work a playbook does on hosts (backend PM2 and
Docker, agent): extra vars, the run, the role's ``set_stats`` contract, failure kinds.

The contract with a role (``<prefix>`` is the role's variable prefix, e.g. ``doai_backend_pm2``):

* extra vars it reads: ``<prefix>_target`` (empty: the role's default target), ``<prefix>_pins``
  (host -> ``{"from": ..., "to": ...}``: the plan being applied; a host whose live value is no
  longer ``from`` refuses with ``drifted``), ``<prefix>_resume`` (finish or undo this run's work
  on a host that dropped out), ``<prefix>_action`` (rollback | undo | put-back, for the host's
  ledger), ``<prefix>_health_gate``, ``<prefix>_reason``, ``<prefix>_operator``, ``<prefix>_run_id``;
* stats it reports (``set_stats`` under ``stats_key``): per host ``status`` (planned, unchanged,
  started, succeeded, restored, not_restored), ``from``, ``to``, ``rule``, ``failure``,
  ``restore_error`` and its own details;
* failures before ``started`` change nothing: they are refusals. The failing module says why with
  result keys (``locked``, ``drifted``, ``invalid_target``, ...); an unreachable host is unreachable.

A subclass names its playbooks, stats keys and prefix, and turns one host's report into a
:class:`~doai_ansible.model.Step` (``step_from_report``) and a status line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from doai_ansible.context import RunContext
from doai_ansible.errors import DoaiError, ExitStatus, LockedError, UnreachableError, UsageError, ValidationError
from doai_ansible.model import Outcome, Step, StepResult, utcnow
from doai_ansible.part import PartBase, Request
from doai_ansible.runner import HostFailure, PlaybookRun, run_playbook, task_progress
from doai_ansible.secrets import scrub_here as scrub

_STATUS_OUTCOME = {
    "succeeded": Outcome.SUCCEEDED,
    "unchanged": Outcome.UNCHANGED,
    "restored": Outcome.RESTORED,
    "not_restored": Outcome.NOT_RESTORED,
}


@dataclasses.dataclass
class HostReport:
    """What one host said in one playbook run: its stats and its failure, if any."""

    host: str
    stats: dict[str, Any]
    failure: HostFailure | None

    @property
    def status(self) -> str | None:
        return self.stats.get("status")

    @property
    def started(self) -> bool:
        """The host got past its preflight: something may have changed on it."""
        return self.status in ("started", "succeeded", "restored", "not_restored")

    @property
    def unreachable(self) -> bool:
        return self.failure is not None and self.failure.unreachable

    def failure_text(self) -> str:
        f = self.failure
        if f is None:
            return self.stats.get("failure") or "failed"
        return f"unreachable: {f.message}" if f.unreachable else f"{f.task}: {f.message}"


def reports(pb: PlaybookRun, key: str) -> dict[str, HostReport]:
    stats: dict[str, dict[str, Any]] = pb.custom.get(key, {}) or {}
    failures = {f.host: f for f in pb.failures}
    return {h: HostReport(h, dict(stats.get(h, {})), failures.get(h))
            for h in sorted(set(stats) | set(failures) | set(pb.hosts))}


def refusal_error(refused: list[HostReport], part: str | None = None) -> DoaiError:
    """One error for hosts that refused before changing anything: locked (5), unreachable (7), else 2.
    Hosts stopped only because another one failed (all or nothing) say nothing of their own.
    A host lock names the command that clears it when its run is dead (``part``: the CLI's name)."""
    refused = [r for r in refused if r.failure is not None] or refused
    text = "; ".join(f"{r.host}: {r.failure_text()}" for r in refused)
    locked = [r.host for r in refused if r.failure is not None and r.failure.flags.get("locked")]
    if locked:
        clear = "; ".join(f"doai-rollback lock release {part or '<part>'} --host {h}" for h in locked)
        return LockedError(text + f" (if that run is dead: {clear})",
                           hint=f"another run holds the host lock: wait for it; `doai-rollback lock status` says "
                                f"whether its run is dead, and then `{clear}` removes a lock it left")
    if all(r.unreachable for r in refused):
        return UnreachableError(text, hint="check the inventory address, the SSH key and known_hosts")
    return ValidationError(text)


def recovered_step(part: str, host: str, entries: list[Mapping[str, Any]]) -> dict[str, Any]:
    """A journal step for a killed run from its ledger entries on ``host`` (oldest first; the
    last counts: the controller's record, else the detached job's own, ``by: job``)."""
    last = entries[-1]
    result, by_job = str(last.get("result") or ""), last.get("by") == "job"
    who = "the host's job" if by_job else "the run on the host"
    after = ("after the controller was killed; not verified by the controller: `doai-rollback status` "
             "shows the live state")
    if result == "applied":
        outcome, message = Outcome.SUCCEEDED, f"applied by {who} {after}"
    elif result == "succeeded":
        outcome = Outcome.SUCCEEDED
        message = (f"applied and found healthy by {who} {after}" if by_job
                   else "recorded on the host as succeeded before the controller was killed")
    elif result == "restored" or last.get("action") == "put-back":
        outcome, message = Outcome.RESTORED, f"failed and put back by {who} ({last.get('error') or result}) {after}"
    else:
        outcome = Outcome.NOT_RESTORED
        message = f"{result or 'unknown'} per {who} ({last.get('error') or '-'}) {after}: ACT NOW"
    return {"part": part, "target": host, "from": last.get("from"), "to": last.get("to"), "rule": "",
            "changes": True, "at_risk": None, "notes": [], "details": {"ledger": dict(last)},
            "outcome": outcome.value, "message": message, "started": None, "finished": last.get("at"),
            "duration_s": None, "logs": None}


def group_hosts(ctx: RunContext, group: str) -> list[str]:
    """The hosts of an inventory group (for error messages only), [] when it cannot be read."""
    from doai_ansible.inventory import group_vars

    try:
        return sorted(group_vars(ctx.settings.inventory, group))
    except DoaiError:
        return []


def locks_of(st: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The host locks a status report shows (``host_locks``), or the error of a host not read."""
    out = []
    for host, h in st["hosts"].items():
        if h.get("host_lock"):
            out.append(dict(h["host_lock"], host=host))
        elif h.get("error"):
            out.append({"host": host, "error": h["error"]})
    return out


def health_of(st: Mapping[str, Any]) -> dict[str, Any]:
    """A host part's health from its status: ``targets`` host -> healthy, and ``states`` for the
    hosts that are neither healthy nor unhealthy but not known (``unreachable``, or ``unknown (...)``
    when the host answered and its service manager did not): a renderer must not call them
    UNHEALTHY."""
    states = {}
    for host, h in st["hosts"].items():
        state = h.get("state")
        if state == "unreachable":
            states[host] = "unreachable"
        elif state == "unknown":
            states[host] = f"unknown ({h.get('state_detail')})" if h.get("state_detail") else "unknown"
    out = {"healthy": st["healthy"], "reachable": st["reachable"],
           "targets": {h: v["healthy"] for h, v in st["hosts"].items()}}
    if states:
        out["states"] = states
    return out


def health_text(h: Mapping[str, Any]) -> str:
    """The health URL's answer as seen from the host: ``HTTP 200 version 2.0.0``, or ``no answer``
    (never "HTTP None" / "HTTP -1")."""
    code = h.get("health_status")
    try:
        answered = code is not None and int(code) >= 0
    except (TypeError, ValueError):
        answered = False
    return f"HTTP {int(code or 0)} version {h.get('health_version') or '?'}" if answered else "no answer"


def log_text(res: Mapping[str, Any]) -> str:
    """The log bundle's file of one host from a logs task's result: its ``logs`` entries
    (``{app, kind, path, text, error}``, scrubbed on the host by the collection's doai_secrets),
    passed through the same scrubber here (defence in depth: nothing unscrubbed is kept)."""
    parts = []
    for e in res.get("logs") or []:
        parts.append(f"## {e.get('app') or ''} {e.get('kind') or ''} {e.get('path') or ''}".rstrip())
        parts.append(e.get("text") or (f"(unreadable: {e['error']})" if e.get("error") else "(empty)"))
    for key in ("pm2_error", "docker_error"):
        if res.get(key):
            parts.append(f"## error\n{res[key]}")
    if not parts and res.get("msg"):
        parts.append(f"## not read\n{res['msg']}")
    return scrub("\n".join(parts)) + "\n"


class PlaybookPart(PartBase):
    """A part whose work is one role's playbook; see the module docstring for the contract."""

    runs_playbooks = True
    #: The inventory group the playbooks target by default.
    group: ClassVar[str] = ""

    playbook: ClassVar[str]
    status_playbook: ClassVar[str]
    stats_key: ClassVar[str]
    status_stats_key: ClassVar[str]
    var_prefix: ClassVar[str]
    logs_task: ClassVar[str | None] = None  # a task whose stdout is kept in the run's log bundle ...
    logs_name: ClassVar[str] = "logs"  # ... as <host>-<logs_name>.log
    #: Tasks whose result carries the same log lines when it has ``logs`` (a module call that
    #: reads them along with its own work, e.g. the restart watch).
    logs_along: ClassVar[tuple[str, ...]] = ()
    #: Modules that change a host: once one started on a host, that host is "started" even if the
    #: run was cut before it could report (the stats only arrive at the end of a playbook).
    apply_modules: ClassVar[tuple[str, ...]] = ()
    #: Wall-clock bound of one playbook run that changes hosts (a host that stays dark must not
    #: hold the run for hours: its async job goes on, and the run resumes it).
    apply_run_timeout_s: ClassVar[int] = 1800
    resume_deadline_s: ClassVar[float] = 120.0
    resume_pause_s: ClassVar[float] = 3.0

    def __init__(self, fixed_vars: Mapping[str, Any] | None = None) -> None:
        #: Extra vars every playbook run of this part gets (the backend dispatcher passes the
        #: mode it chose, so a playbook's own host filter agrees with it).
        self.fixed_vars: dict[str, Any] = dict(fixed_vars or {})

    # -- to be provided by a subclass --------------------------------------------------------------
    def step_from_report(self, host: str, st: Mapping[str, Any]) -> Step:
        raise NotImplementedError

    def host_status(self, host: str, st: dict[str, Any], error: str | None) -> dict[str, Any]:
        """Add ``healthy`` (and anything else) to one host's status report."""
        raise NotImplementedError

    def was_healthy(self, step: Step) -> bool:
        """Whether the host was healthy when planned (a put-back then requires health)."""
        return True

    def secrets(self) -> dict[str, Any]:
        """Secrets the playbook asks for (``vars_prompt``), typed at Ansible's own prompt by the
        runner: never in extra vars, files or the environment Ansible records."""
        return {}

    def finish_details(self, result: StepResult, report: HostReport) -> None:
        """Copy what the apply reported into the result's details."""

    def pin(self, step: Step) -> dict[str, Any]:
        """A step's entry in ``<prefix>_pins``: the plan's values the apply must find and reach."""
        return {"from": step.current, "to": step.desired}

    def configured(self, ctx: RunContext) -> bool:
        """Whether the inventory has hosts in this part's group (read locally, no connection)."""
        from doai_ansible.inventory import has_hosts

        return has_hosts(ctx.settings.inventory, self.group)

    # -- running the playbook -----------------------------------------------------------------------
    def extravars(self, ctx: RunContext, request: Request, **more: Any) -> dict[str, Any]:
        p = self.var_prefix
        xv: dict[str, Any] = dict(self.fixed_vars)
        xv.update({
            f"{p}_health_gate": request.health_gate,
            f"{p}_reason": request.options.get("reason") or "",
            f"{p}_operator": ctx.operator,
            f"{p}_run_id": ctx.run_id,
            f"{p}_action": request.action,
        })
        xv.update({f"{p}_{k}" if not k.startswith(p) else k: v for k, v in more.items()})
        return xv

    def run(self, ctx: RunContext, extravars: dict[str, Any], *, limit: str | None, check: bool = False,
            label: str = "", started: set[str] | None = None, forks: int | None = None) -> PlaybookRun:
        """One playbook run; ``started`` collects the hosts an apply module started on; ``forks``
        how many hosts Ansible works on at once (None: Ansible's own setting)."""
        log_dir = ctx.log_dir / label if label else ctx.log_dir
        pb = run_playbook(ctx.settings, self.playbook, extravars=extravars, limit=limit, check=check,
                          log_dir=log_dir, on_event=self._on_event(ctx, log_dir, started, check=check),
                          timeout_s=None if check else self.apply_run_timeout_s, secrets=self.secrets() or None,
                          forks=forks)
        self._warn(ctx, pb)
        return pb

    def _progress(self, ctx: RunContext, *, check: bool = False) -> Callable[[dict[str, Any]], None] | None:
        """The run's progress with only the task names that mean something (see
        :class:`~doai_ansible.runner.TaskProgress`): the role's own modules are announced when
        they start (they are the long work), other tasks once a host ran them; in a check run
        (a plan), every task once a host ran it."""
        prefix = f"{self.var_prefix}_" if getattr(self, "var_prefix", "") else None
        return task_progress(ctx.progress, check=check,
                             at_start=(lambda action: action.startswith(prefix)) if prefix else None)

    def _on_event(self, ctx: RunContext, log_dir: Path,
                  started: set[str] | None = None, *, check: bool = False) -> Callable[[dict[str, Any]], None]:
        """Progress, the hosts an apply module started on, and the log lines of ``logs_task`` kept
        per host in the run's log bundle (read from the event stream: a copy task on the
        controller would cost a second)."""
        progress = self._progress(ctx, check=check)

        def on_event(event: dict[str, Any]) -> None:
            data = event.get("event_data") or {}
            if started is not None and data.get("task_action") in self.apply_modules and data.get("host"):
                # A skipped task starts too (its condition is checked on the worker): only an
                # apply that was not skipped may have changed the host.
                if event.get("event") == "runner_on_start":
                    started.add(data["host"])
                elif event.get("event") == "runner_on_skipped":
                    started.discard(data["host"])
            if (event.get("event") == "runner_on_ok" and data.get("host") and data.get("task")
                    and (data["task"] == self.logs_task
                         or (data["task"] in self.logs_along and "logs" in (data.get("res") or {})))):
                log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(log_dir / f"{data['host']}-{self.logs_name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(log_text(data.get("res") or {}))
            if progress is not None:
                progress(event)

        return on_event

    def _warn(self, ctx: RunContext, pb: PlaybookRun) -> None:
        for w in pb.warnings:  # e.g. a host whose SSH host key checking the inventory turned off
            ctx.warn(w)

    # -- plan ----------------------------------------------------------------------------------------
    def plan_hosts(self, ctx: RunContext, request: Request, target_vars: dict[str, Any],
                   limit: str | None) -> list[Step]:
        """Plan on every host (check mode); all or nothing: any refusal refuses the whole plan."""
        pb = self.check_run(ctx, request, target_vars, limit)
        reps = reports(pb, self.stats_key)
        if not reps:
            raise self._no_hosts(ctx, pb, limit, "plan")
        refused = [r for r in reps.values() if r.failure is not None or r.status not in ("planned", "unchanged")]
        if refused:
            raise refusal_error(refused, self.name)
        return [self.step_from_report(h, r.stats) for h, r in reps.items()]

    def check_run(self, ctx: RunContext, request: Request, target_vars: dict[str, Any],
                  limit: str | None) -> PlaybookRun:
        """The plan's check-mode run. In a whole-system run (:meth:`RunContext.along`) it also
        reads what the checklist keeps of these hosts, their state and their last log lines
        (``<prefix>_read_status``, ``<prefix>_read_logs``: the playbook's first, read-only
        tasks), and is made once for the plan, :meth:`status` and the logs: one round trip
        per host before anything changes instead of three playbook runs."""
        xv = self.extravars(ctx, request, **target_vars)
        if ctx.along(self.name) is None or request.targets:  # an undo's per-host plans: read on their own
            return self.run(ctx, xv, limit=limit, check=True, label="plan")
        p = self.var_prefix
        xv.update({f"{p}_read_status": True, f"{p}_read_logs": ctx.along_log_lines})
        key = (self.name, self.playbook, json.dumps(xv, sort_keys=True, default=str), limit)
        return ctx.shared_read(key, lambda: self.run(ctx, xv, limit=limit, check=True, label="plan"))

    def along_run(self, ctx: RunContext, request: Request) -> PlaybookRun:
        """The check-mode run of a plain plan of ``request`` (no per-host targets), as
        :meth:`plan` makes it: the whole-system checklist's state and logs come from it."""
        return self.check_run(ctx, request, {"target": request.to or ""}, request.limit)

    def _no_hosts(self, ctx: RunContext, pb: PlaybookRun, limit: str | None, what: str) -> DoaiError:
        """Why a run reported no host: a --limit that matches none (its group's hosts listed),
        a failed run, or an empty group."""
        if limit:
            hosts = group_hosts(ctx, self.group)
            return UsageError(f"--limit {limit} matches no host of the {self.name} group `{self.group}`",
                              hint=f"its hosts: {', '.join(hosts)}" if hosts else f"the group `{self.group}` is empty")
        if not pb.ok:
            return pb.error(f"{self.name} {what} failed")
        return UsageError(f"no {self.name} hosts in the inventory {ctx.settings.inventory}", hint=self.needs)

    # -- one pass: plan and apply in one playbook run ------------------------------------------------
    def one_pass(self, request: Request) -> bool:
        """Whether a request can be planned and applied in one run (nothing to confirm): the
        capture on every host comes first and stops them all when one refuses (all or nothing)."""
        return request.action == "rollback" and not request.targets

    def plan_and_apply(self, ctx: RunContext, request: Request) -> list[StepResult]:
        """The plan and the apply of :meth:`one_pass` requests in one playbook run: it saves the
        second ansible-playbook start and capture. Raises like ``plan`` when nothing changed."""
        started, t0 = utcnow(), time.monotonic()
        begun: set[str] = set()
        pb = self.run(ctx, self.extravars(ctx, request, target=request.to or ""), limit=request.limit, started=begun)
        reps = reports(pb, self.stats_key)
        if not reps:
            raise self._no_hosts(ctx, pb, request.limit, "rollback")
        for host in begun:  # cut before it could report (a host that reported, e.g. refused, said so)
            if not reps[host].status:
                reps[host].stats["status"] = "started"
        refused = [r for r in reps.values() if not r.started and r.status != "unchanged"]
        if refused and not any(r.started for r in reps.values()):
            raise refusal_error(refused, self.name)
        results = []
        for host, rep in reps.items():
            step = self.step_from_report(host, rep.stats)
            if rep.status == "unchanged":
                results.append(StepResult(step, Outcome.UNCHANGED, "already there: nothing to do"))
            elif not rep.started:
                results.append(StepResult(step, Outcome.REFUSED, rep.failure_text(), started, utcnow()))
            elif rep.status == "started":
                results.append(self._resume(ctx, step, request, rep, started))
            else:
                results.append(self._result(step, rep, started, time.monotonic() - t0, pb))
        if any(r.outcome not in (Outcome.SUCCEEDED, Outcome.UNCHANGED) for r in results):
            results = self._put_back_others(ctx, results, request)
        return sorted(results, key=lambda r: r.step.target)

    # -- apply ---------------------------------------------------------------------------------------
    def apply(self, ctx: RunContext, steps: list[Step], request: Request) -> list[StepResult]:
        started, t0 = utcnow(), time.monotonic()
        by_host = {s.target: s for s in steps}
        pins = {s.target: self.pin(s) for s in steps}
        # The pins decide; the common target is passed too, for a role that reads only that.
        common = {s.desired for s in steps}
        target = common.pop() if len(common) == 1 else ""
        begun: set[str] = set()
        pb = self.run(ctx, self.extravars(ctx, request, pins=pins, target=target), limit=",".join(sorted(by_host)),
                      started=begun)
        reps = reports(pb, self.stats_key)
        for host in begun:  # cut before it could report: it may have changed
            if host in reps and not reps[host].status:
                reps[host].stats["status"] = "started"
        results: list[StepResult] = []
        refused: list[HostReport] = []
        for host, step in sorted(by_host.items()):
            rep = reps.get(host) or HostReport(host, {}, None)
            if not rep.started:
                refused.append(rep)
                continue
            if rep.status == "started":  # changed, then lost (SSH drop) or an unclassified failure
                results.append(self._resume(ctx, step, request, rep, started))
                continue
            results.append(self._result(step, rep, started, time.monotonic() - t0, pb))
        if refused and not results:
            raise refusal_error(refused, self.name)  # nothing was changed on any host
        for rep in refused:
            results.append(StepResult(by_host[rep.host], Outcome.REFUSED, rep.failure_text(), started, utcnow()))
        if any(r.outcome not in (Outcome.SUCCEEDED, Outcome.UNCHANGED) for r in results):
            results = self._put_back_others(ctx, results, request)
        return sorted(results, key=lambda r: r.step.target)

    def _result(self, step: Step, rep: HostReport, started: str, elapsed: float, pb: PlaybookRun) -> StepResult:
        outcome = _STATUS_OUTCOME.get(rep.status or "", Outcome.NOT_RESTORED)
        message = ""
        if outcome in (Outcome.RESTORED, Outcome.NOT_RESTORED):
            message = rep.stats.get("failure") or rep.failure_text()
            if outcome is Outcome.NOT_RESTORED and rep.stats.get("restore_error"):
                message += f"; restore failed: {rep.stats['restore_error']}"
        result = StepResult(step, outcome, message, started, utcnow(), elapsed,
                            str(pb.log_file) if pb.log_file else None)
        self.finish_details(result, rep)
        return result

    def _resume(self, ctx: RunContext, step: Step, request: Request, first: HostReport, started: str) -> StepResult:
        """The host dropped out after it started: when it is back, finish or undo this run's work."""
        t0 = time.monotonic()
        deadline = t0 + self.resume_deadline_s
        pins = {step.target: self.pin(step)}
        last = first
        attempt = 0
        ctx.warn(f"{step.target}: lost during the {request.action} ({first.failure_text()}); resuming it")
        while True:
            attempt += 1
            pb = self.run(ctx, self.extravars(ctx, request, pins=pins, resume=True, target=step.desired),
                          limit=step.target,
                          label=f"resume-{step.target}-{attempt}")
            rep = reports(pb, self.stats_key).get(step.target) or HostReport(step.target, {}, None)
            if rep.status in ("succeeded", "restored", "not_restored", "unchanged"):
                result = self._result(step, rep, started, time.monotonic() - t0, pb)
                result.message = (f"SSH link lost mid-{request.action}; resumed: " + (result.message or "finished")).rstrip()
                return result
            last = rep
            if not rep.unreachable or time.monotonic() + self.resume_pause_s > deadline:
                break
            time.sleep(self.resume_pause_s)
        return StepResult(step, Outcome.NOT_RESTORED, self._by_hand(ctx, step, last), started, utcnow(),
                          time.monotonic() - t0)

    def _by_hand(self, ctx: RunContext, step: Step, rep: HostReport) -> str:
        pins = json.dumps({f"{self.var_prefix}_pins": {step.target: self.pin(step)}})
        return (f"state unknown after the SSH link was lost ({rep.failure_text()}); when {step.target} is "
                f"reachable, finish or undo this run's work with: ansible-playbook -i {ctx.settings.inventory} "
                f"{ctx.settings.playbook(self.playbook)} -l {step.target} -e {self.var_prefix}_resume=true "
                f"-e {self.var_prefix}_run_id={ctx.run_id} -e '{pins}'")

    def _put_back_others(self, ctx: RunContext, results: list[StepResult], request: Request) -> list[StepResult]:
        """A host failed: put the hosts that did roll back back too (no mixed releases in the pool)."""
        done = [r for r in results if r.outcome is Outcome.SUCCEEDED]
        if not done:
            return results
        back = {id(r.step): r for r in self.revert(ctx, done, "another host failed")}
        for r in back.values():
            r.message = ("rolled back, then put back because another host failed" if r.outcome is Outcome.RESTORED
                         else f"rolled back, and could NOT be put back after another host failed: {r.message}")
        return [back.get(id(r.step), r) for r in results]

    # -- revert and undo -------------------------------------------------------------------------------
    def revert(self, ctx: RunContext, results: list[StepResult], reason: str | None) -> list[StepResult]:
        out = []
        for r in results:
            if r.outcome is not Outcome.SUCCEEDED:
                out.append(r)
                continue
            s = r.step
            ctx.say(f"{s.target}: putting {s.current} back ({reason or 'revert'})")
            # "As it was": require health only if the host had it (it was likely on the bad release).
            req = Request(action="put-back", health_gate=self.was_healthy(s),
                          options={"reason": f"put back: {reason or 'revert'}"})
            pins = {s.target: {"from": s.desired, "to": s.current}}
            pb = self.run(ctx, self.extravars(ctx, req, pins=pins, target=s.current), limit=s.target, label=f"put-back-{s.target}")
            rep = reports(pb, self.stats_key).get(s.target)
            ok = rep is not None and rep.status in ("succeeded", "unchanged")
            out.append(dataclasses.replace(
                r, outcome=Outcome.RESTORED if ok else Outcome.NOT_RESTORED,
                message="put back" if ok else f"could NOT be put back: {rep.failure_text() if rep else 'no report'}",
                finished=utcnow()))
        return out

    def undo_request(self, record: Mapping[str, Any]) -> Request | None:
        targets = {s["target"]: s["from"] for s in self.steps_of(record) if s.get("from")}
        if not targets:
            return None
        return self.request(action="undo", targets=targets, health_gate=False)

    # -- status --------------------------------------------------------------------------------------
    def status(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        pb = run_playbook(ctx.settings, self.status_playbook, limit=limit, on_event=self._progress(ctx, check=True),
                          extravars=dict(self.fixed_vars) or None)
        self._warn(ctx, pb)
        return self.status_of(pb, limit)

    def status_along(self, ctx: RunContext, request: Request) -> dict[str, Any]:
        """:meth:`status` of the hosts of ``request``, read in its plan's run (:meth:`check_run`)."""
        return self.status_of(self.along_run(ctx, request), request.limit)

    def status_of(self, pb: PlaybookRun, limit: str | None) -> dict[str, Any]:
        """The status from a run that reported ``status_stats_key``; a host that reported it
        has its state, whatever failed on it later in that run (a plan's refusal)."""
        reps = reports(pb, self.status_stats_key)
        if not reps and limit:
            raise UsageError(f"--limit {limit} matches no host of the {self.name} group")
        if not reps and not pb.ok:
            raise pb.error(f"{self.name} status playbook failed")
        hosts = {}
        causes = pb.read_failures(self.status_stats_key)
        for host, rep in reps.items():
            st = rep.stats
            error = None
            if rep.failure is not None and not st:
                error = st["error"] = "unreachable: " + rep.failure.message if rep.unreachable else rep.failure_text()
            elif not st:  # e.g. the read in a plan's run failed (ignored there, so the plan went on)
                error = st["error"] = "its state could not be read" + causes.get(host, "")
            hosts[host] = h = self.host_status(host, st, error)
            # What is known, in one word: a host not reached, or one whose service manager did not
            # answer (``unknown``, set by host_status), is neither unhealthy nor without its app.
            if rep.unreachable and error:
                h["state"], h["state_detail"] = "unreachable", rep.failure.message if rep.failure else ""
            h.setdefault("state", "healthy" if h.get("healthy") else "unhealthy")
        return {"part": self.name, "configured": bool(hosts), "hosts": hosts,
                "reachable": not any(r.unreachable for r in reps.values()),
                "healthy": all(h["healthy"] for h in hosts.values())}

    def host_locks(self, ctx: RunContext) -> list[dict[str, Any]]:
        return locks_of(self.status(ctx))

    # -- a killed run: what its hosts' jobs recorded --------------------------------------------------
    #: Whether the role's status playbook reports a run's ledger entries (``run_ledger``, asked
    #: with ``<prefix>_recover_run_id``): only then does :meth:`recover` run it.
    reports_run_ledger: ClassVar[bool] = False

    def recover(self, ctx: RunContext, killed: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The steps of run ``killed["run_id"]`` as its hosts' ledgers record them (the status
        playbook reads each host's entries of that run): a detached job outlives a controller
        killed mid-apply and records what it did. [] when no host recorded anything."""
        run_id = str(killed.get("run_id") or "")
        if not run_id or not self.reports_run_ledger:
            return []
        pb = run_playbook(ctx.settings, self.status_playbook, log_dir=ctx.log_dir / "recover",
                          on_event=self._progress(ctx, check=True),
                          extravars={**self.fixed_vars, f"{self.var_prefix}_recover_run_id": run_id})
        steps = []
        for host, rep in reports(pb, self.status_stats_key).items():
            entries = [e for e in rep.stats.get("run_ledger") or [] if isinstance(e, Mapping)]
            if entries:
                steps.append(recovered_step(self.name, host, entries))
        return steps

    release_playbook: ClassVar[str | None] = None
    release_stats_key: ClassVar[str] = ""

    def release_host_lock(self, ctx: RunContext, host: str, run_id: str) -> dict[str, Any]:
        if not self.release_playbook:
            return super().release_host_lock(ctx, host, run_id)
        pb = run_playbook(ctx.settings, self.release_playbook, limit=host, log_dir=ctx.log_dir / "release-lock",
                          extravars={**self.fixed_vars, f"{self.var_prefix}_release_run_id": run_id},
                          on_event=self._progress(ctx))
        self._warn(ctx, pb)
        rep = reports(pb, self.release_stats_key).get(host)
        if rep is None:
            raise UsageError(f"{host} is not a host of the {self.name} group")
        if rep.failure is not None:
            raise refusal_error([rep], self.name)
        return {"host": host, "run_id": run_id, "released": bool(rep.stats.get("released")),
                "holder": rep.stats.get("holder")}

    # -- prepare: what a rollback would fetch, fetched ahead of time (no change to the live app) ------
    prepare_playbook: ClassVar[str | None] = None
    prepare_stats_key: ClassVar[str] = ""

    def prepare(self, ctx: RunContext, request: Request, *, check: bool = False) -> dict[str, Any]:
        """On each host: resolve the target as a rollback would (``request.to``, else the role's
        default) and fetch what the rollback would need (PM2: the node_modules into the cache;
        Docker: the image). Returns ``{"part", "dry_run", "hosts": {host: report}, "ok",
        "exit_status"}``; raises like a plan when no host got that far (bad target, unreachable,
        --limit matching nothing)."""
        if not self.prepare_playbook:
            raise UsageError(f"the {self.name} part has nothing to prepare")
        pb = run_playbook(ctx.settings, self.prepare_playbook,
                          extravars={**self.fixed_vars, f"{self.var_prefix}_target": request.to or ""},
                          limit=request.limit, check=check, log_dir=ctx.log_dir / "prepare",
                          on_event=self._progress(ctx, check=check),
                          timeout_s=self.apply_run_timeout_s)
        self._warn(ctx, pb)
        reps = reports(pb, self.prepare_stats_key)
        if not reps:
            raise self._no_hosts(ctx, pb, request.limit, "prepare")
        failed = [r for r in reps.values() if r.failure is not None or not r.status]
        if failed and len(failed) == len(reps) and all(r.unreachable or r.failure is None or r.failure.flags
                                                       for r in failed):
            raise refusal_error(failed, self.name)  # nothing ran anywhere: a refusal, exit 2 (or 5, 7)
        hosts: dict[str, dict[str, Any]] = {}
        worst = ExitStatus.OK
        for host, rep in reps.items():
            st = dict(rep.stats)
            if rep.failure is not None or not rep.status:
                st["status"] = "unreachable" if rep.unreachable else "failed"
                st["error"] = rep.failure_text()
                code = (ExitStatus.UNREACHABLE if rep.unreachable
                        else ExitStatus.USAGE if rep.failure is not None and rep.failure.flags else ExitStatus.ERROR)
                worst = max(worst, code)
            hosts[host] = st
        return {"part": self.name, "command": "backend prepare", "dry_run": check, "hosts": hosts,
                "ok": worst == ExitStatus.OK, "exit_status": int(worst), "exit_name": worst.name,
                "log_file": str(pb.log_file) if pb.log_file else None}

    def prepare_lines(self, report: Mapping[str, Any]) -> list[str]:
        return [f"{self.name} {host}: {h.get('status')}" for host, h in report["hosts"].items()]

    def health(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        return health_of(self.status(ctx, limit=limit))
