"""The one engine every command that changes something runs through.

validate -> lock (per part, once, for the whole run) -> plan every part -> confirm (the CLI's
hook) -> apply in the runbook's order (Agent -> Backend -> Database -> Dashboard) -> on the
first failure stop, and revert what this run completed (in reverse order) when asked to ->
one journal record -> release.

The plan the operator confirmed is the plan applied: the steps returned by ``plan`` (with
their pinned values) are handed to ``apply`` unchanged, under one run id, and each part refuses
to apply when the live state moved since its plan.

Every run that reached a part is journaled, whatever its end (refused, locked, unreachable,
declined, interrupted): the journal is the audit trail of who tried what.

Exit status of a run: 0 when every step succeeded or had nothing to do; the refusal's own
status (2 usage/drift, 5 locked, 7 unreachable) when the run was refused before anything
changed; 3 when something failed and the failing part is as it was (and, with revert, every
part); 4 when a part could not be put back; 130 when the confirmation was declined.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import json
import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from doai_ansible import parts as registry
from doai_ansible import state as state_store
from doai_ansible import validate
from doai_ansible.context import RunContext
from doai_ansible.errors import DoaiError, ExitStatus, LockedError, UnreachableError, UsageError
from doai_ansible.lock import LockInfo
from doai_ansible.model import Outcome, RunResult, Step, StepResult, utcnow
from doai_ansible.part import PartBase, Request

log = logging.getLogger(__name__)

#: Shown the plan (a dry-run RunResult), returns whether to go ahead.
ConfirmHook = Callable[[RunResult], bool]

_DONE = (Outcome.SUCCEEDED, Outcome.UNCHANGED)
_UNTOUCHED = (Outcome.PLANNED, Outcome.UNCHANGED, Outcome.REFUSED, Outcome.SKIPPED, Outcome.FAILED)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM outside an apply (while planning or reading): the reads at work are
    stopped at once (their playbooks' process groups killed), the run, if one had begun, is
    journaled, and ``run`` is its record (the CLI prints it, exit 130)."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame
        self.run: RunResult | None = None


def _interrupt_now(signum: int, frame: object) -> None:
    from doai_ansible import runner

    runner.STOP_READS.set()
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def interrupt_handlers() -> Iterator[None]:
    """For one command: SIGINT and SIGTERM interrupt it at once, except during an apply (see
    :class:`_StopRequest`): the playbooks reading are stopped, the run journaled. The handlers
    before are put back at the end (in the main thread only)."""
    from doai_ansible import runner

    runner.STOP_READS.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _interrupt_now) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@dataclasses.dataclass
class Job:
    """One part's share of a run."""

    part: PartBase
    request: Request
    #: The options as the user typed them when they differ from the part's own (``system
    #: rollback --database-to`` is the database part's ``--to``): errors name what was typed.
    spelled: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def as_typed(self, exc: DoaiError) -> DoaiError:
        return as_typed(exc, self.spelled)


def as_typed(exc: DoaiError, spelled: Mapping[str, str]) -> DoaiError:
    """``exc`` with the part's option names replaced by the ones the user typed (in place)."""
    for own, typed in spelled.items():
        pattern = re.compile(r"(?<![\w-])" + re.escape(own) + r"(?![\w-])")
        exc.message = pattern.sub(typed, exc.message)
        if exc.hint:
            exc.hint = pattern.sub(typed, exc.hint)
    return exc


@dataclasses.dataclass
class _Planned:
    job: Job
    steps: list[Step]
    results: list[StepResult] = dataclasses.field(default_factory=list)


def run(
    ctx: RunContext,
    jobs: list[Job],
    *,
    command: str,
    reason: str | None,
    dry_run: bool = False,
    confirm: ConfirmHook | None = None,
    revert_on_failure: bool = False,
    reverse: bool = False,
    extra: dict[str, Any] | None = None,
    before_plan: Callable[[], None] | None = None,
    before_apply: Callable[[RunResult], None] | None = None,
    before_close: Callable[[RunResult], None] | None = None,
    after_part: Callable[[str, list[StepResult]], None] | None = None,
) -> RunResult:
    """Plan and (unless ``dry_run``) apply ``jobs``; always returns the journaled RunResult.

    ``reverse`` applies in the reverse of the runbook's order (undo rolls forward). ``extra``
    goes into the run's record as more keys. ``before_plan`` is called once the locks are held,
    before anything is planned (a refusal it raises refuses the run). ``before_close`` is called
    with the run once it has ended, still under the locks, before it is journaled: checks after
    the run that belong in its record. An error in it is a warning; an interrupt in it is
    journaled like any other (the run's record is never lost). ``before_apply`` is called once
    every part's plan is confirmed and re-checked, right before the first change (the start's
    announcement): a run refused before that point announces nothing. ``after_part`` is called
    with a part's name and results each time a part's turn in the apply is over (applied,
    unchanged or skipped), before the next part's turn; an error in it ends nothing but itself.

    Every refusal a plan can know comes before the first change, for every part: a part's
    :meth:`~doai_ansible.part.PartBase.refuses` (no network) right after the plans, before the
    confirmation; its :meth:`~doai_ansible.part.PartBase.recheck` (the live state still as
    planned) after the confirmation, for every part but the first to change (whose apply checks
    its pins itself before it changes anything).
    """
    reason = validate.reason(reason)
    ordered = sorted(jobs, key=lambda j: j.part.part.order, reverse=reverse)
    run = RunResult(ctx.run_id, command, dry_run, reason, utcnow(), log_dir=str(ctx.log_dir),
                    parts=[j.part.name for j in ordered], extra=extra if extra is not None else {})
    try:
        with _locks(ctx, ordered, reason, dry_run):
            if (not dry_run and confirm is None and before_apply is None and len(ordered) == 1
                    and ordered[0].part.one_pass(ordered[0].request)):
                if before_plan is not None:
                    before_plan()
                ctx.fresh_reads()
                _one_pass(ctx, ordered[0], run)
            else:
                planned = _plan(ctx, ordered, run, alongside=before_plan)
                if planned is not None:
                    _decide(ctx, planned, run, confirm, revert_on_failure, reason, before_apply, after_part)
            _durations(run)  # before the checks after: the report they write has the steps' times too
            if before_close is not None:
                _checks_after(ctx, run, before_close)
    except DoaiError as exc:  # the lock, or a refusal while planning: nothing was changed
        _refused(run, exc)
    except BaseException as exc:  # Ctrl-C, SIGTERM, a bug: journal what is known, then let it go on
        run.exit_status = ExitStatus.INTERRUPTED
        applying = (ctx.log_dir / PLAN_FILE).exists()
        if isinstance(exc, Interrupted) and not applying:
            run.results = [r for r in run.results if r.outcome is not Outcome.PLANNED]
            run.message = f"interrupted by {exc.signame} before any change: nothing was changed"
        elif isinstance(exc, KeyboardInterrupt) and not applying:
            run.message = "interrupted before any change: nothing was changed"
        else:
            run.message = run.message or "interrupted; see the steps for what had been done"
        _close(ctx, run)
        if isinstance(exc, Interrupted):
            exc.run = run
        raise
    _close(ctx, run)
    return run


def _checks_after(ctx: RunContext, run: RunResult, checks: Callable[[RunResult], None]) -> None:
    """The caller's checks after the run: whatever they raise, the run itself is over and its
    record must be written (an interrupt still propagates, after the outer handler journals)."""
    try:
        checks(run)
    except Exception as exc:
        log.debug("checks after the run", exc_info=True)
        # The type only: an exception's text may carry a connection string.
        ctx.warn(f"the checks after the run could not finish ({type(exc).__name__}); see the log with --debug")


@contextlib.contextmanager
def _locks(ctx: RunContext, jobs: list[Job], reason: str | None, dry_run: bool) -> Iterator[None]:
    """The local lock of every part of the run, taken once in a fixed order (no deadlock), then
    each part's own :meth:`~doai_ansible.part.PartBase.session` (the database's advisory lock)."""
    with contextlib.ExitStack() as stack:
        state_store.check(ctx.settings)  # a shared store that is down stops the run here (exit 7), dry runs too
        if not dry_run:
            for target in sorted({j.part.lock_target for j in jobs}):
                stack.enter_context(ctx.lock(target).held(owner=ctx.operator, reason=reason, run_id=ctx.run_id,
                                                          on_takeover=lambda held: _killed_run(ctx, held)))
            for job in jobs:
                stack.enter_context(job.part.session(ctx, job.request))
        yield


PLAN_FILE = "plan.json"


def _save_plan(ctx: RunContext, run: RunResult) -> None:
    """The confirmed plan, kept in the run's log dir before anything changes: if this process is
    killed (SIGKILL), the next run that takes the lock over journals what it was doing. With a
    shared state store the plan goes there too (a controller elsewhere may take the lock over),
    and the run's locks there are checked to be still its own."""
    state_store.save_plan(ctx.settings, ctx.run_id, dict(run.to_dict(), who=ctx.operator))
    path = ctx.log_dir / PLAN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(dict(run.to_dict(), who=ctx.operator), fh)


def _killed_run(ctx: RunContext, held: LockInfo) -> None:
    """A run died holding the lock (its process is gone) without journaling: record it now."""
    journal = ctx.journal
    if not held.run_id or any(r.get("run_id") == held.run_id for r in journal):
        return
    try:
        plan = json.loads((ctx.settings.runs_dir / held.run_id / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        plan = state_store.saved_plan(ctx.settings, held.run_id)  # its controller was elsewhere
    if plan is not None and not plan.get("steps"):  # killed in a one-pass run: what it did is unknown
        plan["steps"] = [{"part": p, "target": "?", "from": None, "to": None, "changes": True}
                         for p in plan.get("parts", [])]
    if plan is None and held.host != socket.gethostname():  # its plan is on its own controller
        message = (f"KILLED (its controller {held.host} lost its lock's session; found when run {{}} took the lock "
                   "over): whether it changed anything is unknown here; check `doai-rollback status`")
        steps: list[dict[str, Any]] = []
    elif plan is None:  # killed before its plan was confirmed: it changed nothing
        message = "killed before it applied anything (found when run {} took its lock over)"
        steps = []
    else:
        steps = _killed_steps(ctx, held.run_id, plan)
        unknown = sum(1 for st in steps if st.get("target") == "?" or "state unknown" in st.get("message", ""))
        message = ("KILLED DURING ITS APPLY (found when run {} took its lock over): "
                   + ("the state of its steps is unknown" if unknown == len(steps) else
                      "its steps as its hosts recorded them" + (f" ({unknown} unknown)" if unknown else "")
                      + ", not verified by its controller")
                   + "; check `doai-rollback status` and `lock status` (its host locks may remain)")
    record = dict(plan or {}, run_id=held.run_id, exit_status=int(ExitStatus.INTERRUPTED),
                  exit_name=ExitStatus.INTERRUPTED.name, message=message.format(ctx.run_id), steps=steps,
                  finished=utcnow(), who=(plan or {}).get("who") or held.owner, found_killed_by=ctx.run_id)
    record.setdefault("command", "(unknown command)")
    record.setdefault("started", held.to_dict()["acquired_iso"])
    journal.append_record(record)
    ctx.warn(f"run {held.run_id} by {held.owner} was killed and had not been journaled: " + message.format(ctx.run_id))


def _killed_steps(ctx: RunContext, run_id: str, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps of a killed run: each part's targets as they recorded the run
    (:meth:`~doai_ansible.part.PartBase.recover`: a host's job outlives its controller and
    writes its outcome), from and to pinned by the plan when it had steps; "state unknown"
    for what no target recorded."""
    parts = list(dict.fromkeys([*plan.get("parts", []), *(st.get("part") for st in plan.get("steps", []))]))
    found: dict[tuple[Any, Any], dict[str, Any]] = {}
    for name in parts:
        try:
            got = registry.get(name).recover(ctx, dict(plan, run_id=run_id))
        except Exception as exc:  # noqa: BLE001 - the record is written all the same, as unknown
            log.debug("recover %s of run %s", name, run_id, exc_info=True)
            ctx.warn(f"what run {run_id} did to the {name} could not be read from its targets ({type(exc).__name__}: "
                     f"{exc}); its steps are journaled as unknown")
            continue
        found.update(((st["part"], st["target"]), st) for st in got)
    steps = []
    for st in plan.get("steps", []):
        if not st.get("changes"):
            continue
        rec = found.pop((st.get("part"), st.get("target")), None)
        if rec is not None:  # the plan's pins stand; the target says what became of them
            steps.append(dict(st, outcome=rec["outcome"], message=rec["message"],
                              details=dict(st.get("details") or {}, **rec.get("details", {}))))
        elif st.get("target") == "?" and any(part == st.get("part") for part, _ in found):
            continue  # a one-pass run: its targets are the ones that recorded it (below)
        else:
            steps.append(dict(st, outcome=Outcome.NOT_RESTORED.value,
                              message="state unknown: the run was killed while applying"))
    return steps + list(found.values())


def _one_pass(ctx: RunContext, job: Job, run: RunResult) -> None:
    """One part, nothing to confirm: plan and apply in one go (a separate plan run would delay
    the moment the outage ends); refusals raise before anything changed, as a plan's do."""
    _save_plan(ctx, run)  # no steps yet: a killed run is recorded as "state unknown" all the same
    ctx.say(f"rolling back the {job.part.name} ({job.request.action})")
    with _deferred_signals(ctx) as stop:
        run.results = job.part.plan_and_apply(ctx, job.request)
    run.exit_status = _exit_status(run.results, None)
    run.message = _summary(run, None, job.part.name if job.part.blocks_next(run.results, job.request) else None)
    if stop.signal is not None and run.exit_status is ExitStatus.OK:
        run.exit_status = ExitStatus.INTERRUPTED
        run.message = f"stopped by {stop.signal} after the step at work finished: " + run.message


def _plan(ctx: RunContext, jobs: list[Job], run: RunResult,
          alongside: Callable[[], None] | None = None) -> list[_Planned] | None:
    for job in jobs:
        ctx.say(f"planning the {job.part.name} {job.request.action}")
    # Plans only read, each part its own hosts or API: the parts are planned at once (the plan of
    # a whole-system run is otherwise the sum of four), and ``alongside`` (the checklist's state
    # and logs: read-only too, under the same locks) with them; a read both need is made once
    # (RunContext.shared_read), and from here on every read is fresh. A plan that raises refuses
    # the run, as before: the first refusal in the runbook's order is the one reported (the
    # checklist's own refusal first).
    try:
        planned = [_Planned(job, steps) for job, steps in zip(jobs, _plan_all(ctx, jobs, alongside), strict=True)]
    finally:
        ctx.fresh_reads()
    run.results = [StepResult(s, Outcome.PLANNED if s.changes else Outcome.UNCHANGED,
                              "" if s.changes else "already there: nothing to do")
                   for p in planned for s in p.steps]
    refusal = _refusal(ctx, planned)
    if run.dry_run:
        n = sum(1 for r in run.results if r.outcome is Outcome.PLANNED)
        run.message = (f"{n} step(s) would change; run without --dry-run to apply" if n
                       else "already on the target: nothing to do")
        if refusal is not None:  # the dry run says what the real run would do: refuse, before any change
            run.exit_status, run.hint = refusal.exit_status, refusal.hint
            run.message = f"{n} step(s) would change, but a run with these options is REFUSED: {refusal.message}"
        return None
    if refusal is not None:
        raise refusal
    if not any(s.changes for p in planned for s in p.steps):
        run.message = "already on the target: nothing to do"
        return None
    return planned


def _refusal(ctx: RunContext, planned: list[_Planned]) -> DoaiError | None:
    """The first refusal, in the runbook's order, that a part's plan already knows."""
    for p in planned:
        exc = p.job.part.refuses(ctx, [s for s in p.steps if s.changes], p.job.request)
        if exc is not None:
            exc = p.job.as_typed(exc)
            exc.message = f"{p.job.part.name}: {exc.message}"
            return exc
    return None


def _recheck(ctx: RunContext, planned: list[_Planned]) -> None:
    """After the confirmation, before the first change: every part but the first to change
    (its own apply checks its pins before it changes anything) still finds the state planned."""
    changing = [p for p in planned if any(s.changes for s in p.steps)]
    if len(changing) < 2:
        return

    def check(p: _Planned) -> None:
        try:
            p.job.part.recheck(ctx, [s for s in p.steps if s.changes], p.job.request)
        except DoaiError as exc:
            exc = p.job.as_typed(exc)
            exc.message = f"{p.job.part.name}: {exc.message}"
            raise

    ctx.say("checking that every part is still as planned")
    in_parallel({str(i): functools.partial(check, p) for i, p in enumerate(changing[1:])})


def _plan_of(ctx: RunContext, job: Job) -> list[Step]:
    try:
        return job.part.plan(ctx, job.request)
    except DoaiError as exc:
        raise job.as_typed(exc) from None


def _plan_all(ctx: RunContext, jobs: list[Job], alongside: Callable[[], None] | None = None) -> list[list[Step]]:
    calls: dict[str, Callable[[], Any]] = {" alongside": alongside} if alongside is not None else {}
    calls.update({str(i): functools.partial(_plan_of, ctx, job) for i, job in enumerate(jobs)})
    done = in_parallel(calls)
    return [done[str(i)] for i in range(len(jobs))]


def in_parallel(calls: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run read-only calls at once (each part's playbook or API reads); their results by key.
    Every call ends before an exception (the first, in the calls' order) is raised."""
    if len(calls) <= 1:
        return {k: f() for k, f in calls.items()}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="doai-read") as pool:
        # each call in a copy of the caller's context (runner.READ_STOP: whose reads these are)
        futures = {k: pool.submit(contextvars.copy_context().run, f) for k, f in calls.items()}
    return {k: fut.result() for k, fut in futures.items()}


class Background:
    """A call at work in a daemon thread (a second SIGINT/SIGTERM ends the process without
    waiting for it); :meth:`result` waits for its answer, or raises what it raised."""

    def __init__(self, call: Callable[[], Any], *, name: str) -> None:
        self._box: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._work, args=(call,), name=name, daemon=True)
        self._thread.start()

    def _work(self, call: Callable[[], Any]) -> None:
        try:
            self._box["answer"] = call()
        except BaseException as exc:  # handed to the thread that waits
            self._box["error"] = exc

    def join(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self._thread.join()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["answer"]


def at_once(calls: Mapping[str, Callable[[], Any]], *, name: str = "doai-apply") -> dict[str, Any]:
    """Run calls that change hosts at once, each in its own thread (the backend's two modes,
    each on its own hosts); their results by key, or the first exception in the calls' order
    once every call has ended. The threads are daemons (:class:`Background`): a second
    SIGINT/SIGTERM, which interrupts the wait here at once (see ``_StopRequest``), lets the
    process end as when a playbook run in the main thread is interrupted (the hosts' detached
    jobs go on and record what they did; the next run recovers it), instead of waiting at exit
    for the threads."""
    if len(calls) <= 1:
        return {k: f() for k, f in calls.items()}
    running = {k: Background(f, name=f"{name}-{k}") for k, f in calls.items()}
    for b in running.values():
        b.join()
    return {k: b.result() for k, b in running.items()}


def _decide(ctx: RunContext, planned: list[_Planned], run: RunResult, confirm: ConfirmHook | None,
            revert_on_failure: bool, reason: str | None,
            before_apply: Callable[[RunResult], None] | None = None,
            after_part: Callable[[str, list[StepResult]], None] | None = None) -> None:
    if confirm is not None:
        shown = dataclasses.replace(run, dry_run=True, results=list(run.results), warnings=list(ctx.warnings))
        if not confirm(shown):
            run.results = [dataclasses.replace(r, outcome=Outcome.SKIPPED, message="not confirmed")
                           if r.outcome is Outcome.PLANNED else r for r in run.results]
            run.exit_status = ExitStatus.INTERRUPTED
            run.message = "not confirmed; nothing was changed"
            return
    if confirm is not None:
        # Only a confirmation leaves time for the live state to move: with --yes the plans were
        # made a moment ago under the run's locks, and a re-read would only delay the change.
        _recheck(ctx, planned)  # a refusal raises: nothing changed anywhere, nothing announced
    if before_apply is not None:
        before_apply(run)
    _save_plan(ctx, run)
    try:
        refusal = _apply(ctx, planned, after_part)
    except _Stopped as stopped:
        run.results = [r for p in planned for r in p.results]
        worst = _exit_status(run.results, None)
        run.exit_status = worst if worst is ExitStatus.FAILED_NOT_RESTORED else ExitStatus.INTERRUPTED
        run.message = (f"stopped by {stopped.signame} after the step at work finished"
                       + _where_text(where_parts_stand(run)))
        return
    failed_part = next((p.job.part.name for p in planned
                        if p.results and p.job.part.blocks_next(p.results, p.job.request)), None)
    if revert_on_failure and failed_part is not None:
        _revert(ctx, planned, reason)
    run.results = [r for p in planned for r in p.results]
    run.exit_status = _exit_status(run.results, refusal)
    run.message = _summary(run, refusal, failed_part)


class _StopRequest:
    """SIGINT/SIGTERM while parts are being applied: the part at work finishes (it restores
    itself on failure and its remote work is bounded by deadlines), the next ones are not
    started, and the run is journaled. A second signal interrupts at once."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.signal: str | None = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        self.ctx.warn(f"{self.signal} received: finishing the step at work, then stopping "
                      "(send it again to interrupt at once)")


@contextlib.contextmanager
def _deferred_signals(ctx: RunContext) -> Iterator[_StopRequest]:
    stop = _StopRequest(ctx)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _apply(ctx: RunContext, planned: list[_Planned],
           after_part: Callable[[str, list[StepResult]], None] | None = None) -> DoaiError | None:
    """Apply in order, stop at the first failure; the refusal that stopped it, if any."""
    with _deferred_signals(ctx) as stop:
        refusal = _apply_in_order(ctx, planned, stop, after_part)
    if stop.signal is not None:
        raise _Stopped(stop.signal)
    return refusal


class _Stopped(Exception):
    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


def _apply_in_order(ctx: RunContext, planned: list[_Planned], stop: _StopRequest,
                    after_part: Callable[[str, list[StepResult]], None] | None = None) -> DoaiError | None:
    refusal: DoaiError | None = None
    for p in planned:
        refusal = _turn(ctx, p, planned, stop, refusal)
        if after_part is not None:
            try:
                after_part(p.job.part.name, list(p.results))
            except Exception:  # the caller's hook (a read it starts early): never the apply's end
                log.debug("after_part", exc_info=True)
    return refusal


def _turn(ctx: RunContext, p: _Planned, planned: list[_Planned], stop: _StopRequest,
          refusal: DoaiError | None) -> DoaiError | None:
    """One part's turn in the apply (``p.results`` set); the refusal that stops the parts after it, if any."""
    unchanged = [StepResult(s, Outcome.UNCHANGED, "already there: nothing to do") for s in p.steps if not s.changes]
    changing = [s for s in p.steps if s.changes]
    if refusal is not None or _blocked(planned) or stop.signal is not None:
        why = f"not attempted: stopped by {stop.signal}" if stop.signal else "not attempted: an earlier part failed"
        p.results = unchanged + [StepResult(s, Outcome.SKIPPED, why) for s in changing]
        return refusal
    if not changing:
        p.results = unchanged
        return refusal
    ctx.say(f"applying the {p.job.part.name} {p.job.request.action}")
    started = utcnow()
    try:
        results = p.job.part.apply(ctx, changing, p.job.request)
    except DoaiError as exc:  # the part refused before changing anything
        refusal = p.job.as_typed(exc)
        results = [StepResult(s, Outcome.REFUSED, exc.message, started, utcnow()) for s in changing]
    p.results = unchanged + results
    return refusal


def _blocked(planned: list[_Planned]) -> bool:
    """Whether a part applied so far stops the ones after it (each part says: a fleet part may
    go on past a few PCs that were off)."""
    return any(p.results and p.job.part.blocks_next(p.results, p.job.request) for p in planned)


def _revert(ctx: RunContext, planned: list[_Planned], reason: str | None) -> None:
    """Put back, newest first, the parts this run completed before one failed."""
    for p in reversed(planned):
        done = [r for r in p.results if r.outcome is Outcome.SUCCEEDED]
        if not done:
            continue
        ctx.say(f"putting the {p.job.part.name} back (a later part failed)")
        reverted = {id(r.step): r for r in p.job.part.revert(ctx, done, reason)}
        p.results = [reverted.get(id(r.step), r) for r in p.results]


def _exit_status(results: list[StepResult], refusal: DoaiError | None) -> ExitStatus:
    outcomes = {r.outcome for r in results}
    if Outcome.NOT_RESTORED in outcomes:
        return ExitStatus.FAILED_NOT_RESTORED
    if refusal is not None and outcomes <= set(_UNTOUCHED):
        return refusal.exit_status  # refused before anything changed
    if outcomes & {Outcome.RESTORED, Outcome.FAILED, Outcome.REFUSED, Outcome.SKIPPED}:
        return ExitStatus.FAILED_RESTORED
    return ExitStatus.OK


def _summary(run: RunResult, refusal: DoaiError | None, failed_part: str | None = None) -> str:
    s = run.exit_status
    if s is ExitStatus.OK:
        n = sum(1 for r in run.results if r.outcome is Outcome.SUCCEEDED)
        return f"{', '.join(run.parts)}: {n} step(s) done and verified" if n else "already on the target: nothing to do"
    if refusal is not None and s is refusal.exit_status:
        return f"REFUSED, nothing was changed: {refusal.message}"
    where = where_parts_stand(run, failed_part)
    run.extra["where_parts_stand"] = where
    tail = _where_text(where)
    if s is ExitStatus.FAILED_RESTORED:
        if not any(r.outcome is Outcome.SUCCEEDED for r in run.results):
            return "ROLLBACK FAILED; every target is back on (or still on) what it had before" + tail
        if failed_part is None:
            left = sum(1 for r in run.results if r.outcome not in _DONE)
            return (f"PARTLY DONE: every part was applied, but {left} target(s) were not rolled back (refused, "
                    "unreachable or put back as they were)" + tail)
        return f"FAILED at the {failed_part}" + tail
    return (f"ROLLBACK FAILED AND NOT RESTORED{' at the ' + failed_part if failed_part else ''}: a human must act "
            "now (see the steps and the logs)" + tail)


def _names(results: list[StepResult], *outcomes: Outcome) -> list[str]:
    return [f"{r.step.part.value} {r.step.target}" for r in results if r.outcome in outcomes]


def where_parts_stand(run: RunResult, failed_part: str | None = None) -> dict[str, Any]:
    """Where each target of a run that did not end OK stands, by name: the part that failed (whose
    results stopped the parts after it), the targets put back as they were, those that failed
    before changing anything, those NOT put back, those rolled back that stay so, and the parts
    not attempted."""
    by_part: dict[str, list[StepResult]] = {}
    for r in run.results:
        by_part.setdefault(r.step.part.value, []).append(r)
    return {
        "failed_part": failed_part,
        "not_restored": _names(run.results, Outcome.NOT_RESTORED),
        "put_back": _names(run.results, Outcome.RESTORED),
        "left_as_they_were": _names(run.results, Outcome.FAILED, Outcome.REFUSED),
        "stay_rolled_back": _names(run.results, Outcome.SUCCEEDED),
        "not_attempted": [p for p in run.parts if any(r.outcome is Outcome.SKIPPED for r in by_part.get(p, []))],
    }


def _where_text(w: Mapping[str, Any]) -> str:
    def listed(items: list[str]) -> str:
        return ", ".join(items[:20]) + (f" and {len(items) - 20} more" if len(items) > 20 else "")

    bits = []
    for key, label in (("not_restored", "NOT PUT BACK (act now)"), ("put_back", "put back as it was"),
                       ("left_as_they_were", "not changed (failed or refused before any change)"),
                       ("stay_rolled_back", "stay rolled back")):
        if w.get(key):
            bits.append(f"{label}: {listed(w[key])}")
    if w.get("not_attempted"):
        bits.append(f"not attempted: {', '.join(w['not_attempted'])}")
    return ("; " + "; ".join(bits)) if bits else ""


def _refused(run: RunResult, exc: DoaiError) -> None:
    run.exit_status = exc.exit_status
    run.message = f"REFUSED, nothing was changed: {exc.message}"
    run.hint = exc.hint
    run.results = [r for r in run.results if r.outcome is not Outcome.PLANNED] if run.results else []


def _close(ctx: RunContext, run: RunResult) -> None:
    run.finished = utcnow()
    _durations(run)
    run.warnings = list(ctx.warnings)
    try:
        ctx.journal.append(run, who=ctx.operator)
    except OSError as exc:  # the run happened; losing its record must be loud, not fatal
        log.error("could not write the journal %s: %s", state_store.where(ctx.settings), exc)
        run.warnings.append(f"NOT JOURNALED: {exc}")


def _durations(run: RunResult) -> None:
    for r in run.results:  # every part gives its steps' times; the duration follows from them
        if r.duration_s is None and r.started and r.finished:
            r.duration_s = _seconds_between(r.started, r.finished)


def _seconds_between(started: str, finished: str) -> float | None:
    import datetime as dt

    try:
        a, b = (dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (started, finished))
    except ValueError:
        return None
    return max(0.0, (b - a).total_seconds())


# -- undo and history ------------------------------------------------------------------------------
def undo_jobs(record: dict[str, Any], *, reason: str | None = None) -> list[Job]:
    """The jobs that roll every part of a journaled run forward to what that run found; the
    undo's ``reason`` goes with each part's request (to the host ledgers, Vercel, the markers)."""
    why = validate.reason(reason) or f"undo {record.get('run_id')}"
    jobs = []
    for part in registry.all_parts():
        req = part.undo_request(record)
        if req is not None:
            jobs.append(Job(part, dataclasses.replace(req, options={**req.options, "reason": why})))
    if not jobs:
        raise UsageError(f"run {record.get('run_id')} changed nothing that undo can put back")
    return jobs


def undo(ctx: RunContext, run_id: str, *, reason: str | None, dry_run: bool = False,
         confirm: ConfirmHook | None = None) -> RunResult:
    """Roll the parts of run ``run_id`` forward to the state it found, newest part first."""
    record = ctx.journal.find(validate.run_id(run_id))
    jobs = undo_jobs(record, reason=reason)
    return run(ctx, jobs, command=f"undo {record['run_id']}", reason=reason or f"undo {record['run_id']}",
               dry_run=dry_run, confirm=confirm, reverse=True)


def history(ctx: RunContext, *, limit: int = 20, part: str | None = None) -> list[dict[str, Any]]:
    if part is not None:
        registry.get(part)  # a part that does not exist is a usage error
    return ctx.journal.runs(limit=limit, part=part)


# -- locks ---------------------------------------------------------------------------------------------
def locks(ctx: RunContext, *, hosts: bool = True) -> dict[str, Any]:
    """Every lock: the local ones, and (``hosts``) those the parts' hosts hold, each with whether
    the run that holds it is still alive from this controller's view (``alive``, ``finished``:
    journaled, so the lock is left over, or ``unknown``: another controller, or a killed run)."""
    local = state_store.locks(ctx.settings)
    live_runs = {info.run_id for info, stale in local if not stale and info.run_id}
    # A journaled run has ended; so has one whose local lock outlived its process (killed).
    journaled = {r.get("run_id") for r in ctx.journal}
    journaled |= {info.run_id for info, stale in local if stale and info.run_id}
    out: dict[str, Any] = {"local": [dict(i.to_dict(), stale=stale) for i, stale in local], "hosts": []}
    for part in registry.all_parts() if hosts else []:
        if not part.configured(ctx):
            continue
        for lk in part.host_locks(ctx):
            run_id = lk.get("run_id")
            state = ("alive" if run_id in live_runs else "finished" if run_id in journaled else "unknown")
            out["hosts"].append(dict(lk, part=part.name, run=None if "error" in lk else state))
    out["held"] = any(not lk["stale"] for lk in out["local"]) or any(
        lk.get("run") in ("alive", "unknown") for lk in out["hosts"])
    return out


def host_lock(ctx: RunContext, part: str, host: str) -> dict[str, Any]:
    """The lock ``host`` holds for ``part``, with the state of its run (see :func:`locks`)."""
    found = [lk for lk in locks(ctx)["hosts"] if lk["part"] == part and lk["host"] == host]
    if not found:
        raise UsageError(f"{part} {host}: no host lock", hint="`doai-rollback lock status` lists them")
    if "error" in found[0]:
        raise UnreachableError(f"{part} {host}: the host lock could not be read ({found[0]['error']})")
    return found[0]


def release_host_lock(ctx: RunContext, part: str, host: str, *, force: bool = False,
                      lock: dict[str, Any] | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Release the lock ``host`` holds for ``part`` (``lock``: as :func:`host_lock` found it), if
    the run holding it is dead (``force``: also when this controller cannot tell); journaled.
    ``dry_run``: refuse as the release would, else say what would be released; nothing is
    changed on the host and nothing is journaled (no run took place)."""
    validate.host_limit(host)
    lk = lock or host_lock(ctx, part, host)
    if lk["run"] == "alive" or (lk["run"] == "unknown" and not force):
        raise LockedError(
            f"{part} {host}: the host lock of run {lk.get('run_id')} ({lk.get('owner')}) may belong to a live run",
            hint="add --force only if you are sure that run is dead" if lk["run"] == "unknown" else
            "that run is alive on this controller: wait for it")
    if dry_run:
        return {"host": host, "run_id": str(lk.get("run_id") or ""), "released": False, "holder": lk.get("owner"),
                "lock": lk, "dry_run": True}
    released = registry.get(part).release_host_lock(ctx, host, str(lk.get("run_id") or ""))
    run = RunResult(ctx.run_id, f"lock release {part} --host {host}", False, f"release the lock of run "
                    f"{lk.get('run_id')}", utcnow(), parts=[part],
                    message=("released" if released["released"] else "not released: another run holds it now"))
    _close(ctx, run)
    return dict(released, lock=lk)


# -- status and health ---------------------------------------------------------------------------------
def status(ctx: RunContext, *, only: list[str] | None = None, limit: str | None = None) -> dict[str, Any]:
    """Status of every configured part (or ``only`` these); changes nothing."""
    out: dict[str, Any] = {}
    for part in _selected(only):
        if not part.configured(ctx):
            out[part.name] = {"part": part.name, "configured": False, "healthy": True, "reachable": True,
                              "needs": part.needs}
            continue
        out[part.name] = part.status(ctx, limit=limit)
    return dict(_overall(out), warnings=list(ctx.warnings))


def health(ctx: RunContext, *, only: list[str] | None = None, limit: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in _selected(only):
        if part.configured(ctx):
            out[part.name] = part.health(ctx, limit=limit)
    if not out:
        raise UsageError("no part is configured: there is nothing to check",
                         hint="name the hosts in the inventory and the APIs in the config file (see the README)")
    return dict(_overall(out), warnings=list(ctx.warnings))


def _selected(only: list[str] | None) -> list[PartBase]:
    return [registry.get(n) for n in only] if only else registry.all_parts()


def _overall(parts: dict[str, Any]) -> dict[str, Any]:
    return {
        "healthy": all(p.get("healthy", True) for p in parts.values()),
        "reachable": all(p.get("reachable", True) for p in parts.values()),
        "parts": parts,
    }


def status_exit(st: dict[str, Any]) -> ExitStatus:
    """7 when a part could not be reached, 6 when one is unhealthy, else 0."""
    if not st.get("reachable", True):
        return ExitStatus.UNREACHABLE
    return ExitStatus.OK if st.get("healthy") else ExitStatus.UNHEALTHY
