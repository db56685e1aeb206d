"""The engine with small fake parts: order, stop at the first failure, revert in reverse, one
journal record per run, the lock held for the run, the undo plan, a declined confirmation."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from doai_ansible import engine
from doai_ansible import parts as registry
from doai_ansible.context import RunContext
from doai_ansible.errors import ExitStatus, LockedError, UnreachableError, ValidationError
from doai_ansible.journal import Journal
from doai_ansible.lock import Lock, process_start
from doai_ansible.model import Outcome, Part, Step, StepResult
from doai_ansible.part import PartBase, Request
from doai_ansible.settings import load_settings


class FakePart(PartBase):
    """A part whose live value is a variable; records every call in a shared list."""

    def __init__(self, part: Part, calls: list[str], *, live: str = "v3", fail: str | None = None,
                 plan_error: Exception | None = None, apply_error: Exception | None = None,
                 revert_ok: bool = True, ctx_lock_dir: Path | None = None) -> None:
        self.part = part  # type: ignore[misc]
        self.calls = calls
        self.live = live
        self.fail = fail  # "restored" / "not_restored": apply fails that way
        self.plan_error = plan_error
        self.apply_error = apply_error
        self.revert_ok = revert_ok
        self.lock_dir = ctx_lock_dir
        self.locked_during_apply: bool | None = None

    def configured(self, ctx: RunContext) -> bool:
        return True

    def status(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        return {"part": self.name, "configured": True, "healthy": self.live != "v3", "reachable": True}

    def status_lines(self, st: dict[str, Any]) -> list[str]:
        return [f"{self.name}: {st['healthy']}"]

    def request(self, **options: Any) -> Request:
        return Request(**options)

    def plan(self, ctx: RunContext, request: Request) -> list[Step]:
        self.calls.append(f"plan {self.name}")
        if self.plan_error:
            raise self.plan_error
        to = request.targets.get("t") or request.to or "v2"
        return [Step(self.part, "t", self.live, to)]

    def apply(self, ctx: RunContext, steps: list[Step], request: Request) -> list[StepResult]:
        self.calls.append(f"apply {self.name}")
        if self.lock_dir is not None:
            self.locked_during_apply = Lock(self.lock_dir, self.lock_target, 60).read() is not None
        if self.apply_error:
            raise self.apply_error
        if self.fail:
            return [StepResult(s, Outcome(self.fail), "failed") for s in steps]
        self.live = steps[0].desired
        return [StepResult(s, Outcome.SUCCEEDED) for s in steps]

    def revert(self, ctx: RunContext, results: list[StepResult], reason: str | None) -> list[StepResult]:
        self.calls.append(f"revert {self.name}")
        if self.revert_ok:
            self.live = results[0].step.current
        return [dataclasses.replace(r, outcome=Outcome.RESTORED if self.revert_ok else Outcome.NOT_RESTORED)
                for r in results]

    def undo_request(self, record: Mapping[str, Any]) -> Request | None:
        steps = self.steps_of(record)
        return Request(action="undo", targets={"t": steps[0]["from"]}) if steps else None


@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    inv = tmp_path / "hosts.yml"
    inv.write_text("all: {}\n")
    settings = load_settings(None, inventory=inv, state_dir=tmp_path / "state", env={})
    return RunContext.create(settings)


def journal(ctx: RunContext) -> list[dict[str, Any]]:
    return list(Journal(ctx.settings.journal_path))


def jobs(*parts: FakePart) -> list[engine.Job]:
    return [engine.Job(p, Request()) for p in parts]


def test_applies_in_runbook_order_under_one_run_id(ctx):
    calls: list[str] = []
    dash, back, agent = (FakePart(p, calls) for p in (Part.DASHBOARD, Part.BACKEND, Part.AGENT))
    run = engine.run(ctx, jobs(dash, back, agent), command="system rollback", reason="test")
    assert run.exit_status is ExitStatus.OK
    # every part planned (at once: in any order) before the first apply; applied in the runbook's order
    assert sorted(calls[:3]) == ["plan agent", "plan backend", "plan dashboard"]
    # nothing confirmed (--yes): the plans a moment ago are the ones applied, not read again
    assert calls[3:] == ["apply agent", "apply backend", "apply dashboard"]
    records = journal(ctx)
    assert len(records) == 1 and records[0]["run_id"] == ctx.run_id
    assert [s["outcome"] for s in records[0]["steps"]] == ["succeeded"] * 3


def test_after_a_confirmation_every_part_but_the_first_to_change_is_read_again(ctx):
    calls: list[str] = []
    dash, back, agent = (FakePart(p, calls) for p in (Part.DASHBOARD, Part.BACKEND, Part.AGENT))
    run = engine.run(ctx, jobs(dash, back, agent), command="system rollback", reason="test",
                     confirm=lambda plan: True)
    assert run.exit_status is ExitStatus.OK
    assert sorted(calls[:3]) == ["plan agent", "plan backend", "plan dashboard"]
    # the time the confirmation took: every part but the first to change is planned again (nothing moved)
    assert sorted(calls[3:5]) == ["plan backend", "plan dashboard"]
    assert calls[5:] == ["apply agent", "apply backend", "apply dashboard"]


def test_a_part_that_moved_since_the_plan_refuses_before_the_first_change(ctx):
    """The default re-check plans again: the backend's live commit moved after the plan (someone
    deployed while the operator read it): refused before the agent, the first part, changes."""
    calls: list[str] = []
    agent, back = FakePart(Part.AGENT, calls), FakePart(Part.BACKEND, calls)

    def confirm(plan):
        back.live = "v9"  # a deploy lands while the plan is on screen
        return True

    run = engine.run(ctx, jobs(agent, back), command="system rollback", reason="test", confirm=confirm)
    assert run.exit_status is ExitStatus.USAGE, run.message
    assert "backend: moved since the plan: t: v3 -> v2 planned, now v9 -> v2" in run.message
    assert not [c for c in calls if c.startswith("apply")]


def test_stops_at_first_failure_and_reverts_in_reverse(ctx):
    calls: list[str] = []
    agent = FakePart(Part.AGENT, calls)
    back = FakePart(Part.BACKEND, calls)
    db = FakePart(Part.DATABASE, calls, fail="restored")
    dash = FakePart(Part.DASHBOARD, calls)
    run = engine.run(ctx, jobs(agent, back, db, dash), command="x", reason=None, revert_on_failure=True)
    assert "apply dashboard" not in calls
    assert calls[-2:] == ["revert backend", "revert agent"]
    assert agent.live == back.live == "v3"
    assert {r.step.part: r.outcome for r in run.results} == {
        Part.AGENT: Outcome.RESTORED, Part.BACKEND: Outcome.RESTORED,
        Part.DATABASE: Outcome.RESTORED, Part.DASHBOARD: Outcome.SKIPPED}
    assert run.exit_status is ExitStatus.FAILED_RESTORED
    assert len(journal(ctx)) == 1


def test_after_part_follows_each_turn_before_the_next_and_its_errors_end_nothing(ctx):
    calls: list[str] = []
    agent, back, db, dash = (FakePart(p, calls) for p in (Part.AGENT, Part.BACKEND, Part.DATABASE, Part.DASHBOARD))
    db.fail = "restored"

    def after_part(name: str, results: list[StepResult]) -> None:
        calls.append(f"done {name}: " + ",".join(r.outcome.value for r in results))
        if name == "agent":
            raise RuntimeError("a broken hook")

    run = engine.run(ctx, jobs(agent, back, db, dash), command="x", reason=None, after_part=after_part)
    assert calls[4:] == ["apply agent", "done agent: succeeded", "apply backend", "done backend: succeeded",
                         "apply database", "done database: restored", "done dashboard: skipped"]
    assert run.exit_status is ExitStatus.FAILED_RESTORED and len(journal(ctx)) == 1


def test_without_revert_the_completed_parts_stay(ctx):
    calls: list[str] = []
    back = FakePart(Part.BACKEND, calls)
    dash = FakePart(Part.DASHBOARD, calls, fail="not_restored")
    run = engine.run(ctx, jobs(back, dash), command="x", reason=None)
    assert back.live == "v2" and "revert backend" not in calls
    assert run.exit_status is ExitStatus.FAILED_NOT_RESTORED
    assert "NOT RESTORED" in run.message and "dashboard t" in run.message


def test_a_revert_that_fails_is_not_restored(ctx):
    calls: list[str] = []
    back = FakePart(Part.BACKEND, calls, revert_ok=False)
    dash = FakePart(Part.DASHBOARD, calls, fail="restored")
    run = engine.run(ctx, jobs(back, dash), command="x", reason=None, revert_on_failure=True)
    assert run.exit_status is ExitStatus.FAILED_NOT_RESTORED


def test_lock_is_held_for_the_whole_run_and_released(ctx):
    calls: list[str] = []
    back = FakePart(Part.BACKEND, calls, ctx_lock_dir=ctx.settings.locks_dir)
    engine.run(ctx, jobs(back), command="x", reason=None)
    assert back.locked_during_apply is True
    assert Lock(ctx.settings.locks_dir, "backend", 60).read() is None


def test_a_held_lock_refuses_and_is_journaled(ctx):
    calls: list[str] = []
    held = Lock(ctx.settings.locks_dir, "backend", 3600)
    with held.held(owner="someone", reason="busy", run_id="other"):
        # The same process holds it: take it over only if stale, so fake another live holder
        # (pid 1, with its own start time: a pid with another process's start time is recycled).
        info = json.loads(held.path.read_text())
        info["pid"], info["started"] = 1, process_start(1)
        held.path.write_text(json.dumps(info))
        run = engine.run(ctx, jobs(FakePart(Part.BACKEND, calls)), command="x", reason=None)
        held.path.unlink()
    assert run.exit_status is ExitStatus.LOCKED and calls == []
    assert journal(ctx)[0]["exit_name"] == "LOCKED"


@pytest.mark.parametrize("error,status", [
    (ValidationError("bad target"), ExitStatus.USAGE),
    (UnreachableError("host down"), ExitStatus.UNREACHABLE),
    (LockedError("host lock"), ExitStatus.LOCKED),
])
def test_a_plan_refusal_changes_nothing_anywhere_and_is_journaled(ctx, error, status):
    calls: list[str] = []
    back = FakePart(Part.BACKEND, calls)
    dash = FakePart(Part.DASHBOARD, calls, plan_error=error)
    run = engine.run(ctx, jobs(back, dash), command="x", reason=None)
    assert run.exit_status is status
    assert not any(c.startswith("apply") for c in calls)
    rec = journal(ctx)[0]
    assert rec["exit_status"] == int(status) and error.message in rec["message"]


def test_drift_at_apply_is_a_refusal_with_nothing_changed(ctx):
    calls: list[str] = []
    back = FakePart(Part.BACKEND, calls, apply_error=ValidationError("live commit is v4, not v3 as planned"))
    run = engine.run(ctx, jobs(back), command="x", reason=None)
    assert run.exit_status is ExitStatus.USAGE
    assert run.results[0].outcome is Outcome.REFUSED and "v4" in run.message


def test_declined_confirmation_changes_nothing(ctx):
    calls: list[str] = []
    back = FakePart(Part.BACKEND, calls)
    shown = []
    run = engine.run(ctx, jobs(back), command="x", reason=None, confirm=lambda plan: shown.append(plan) or False)
    assert calls == ["plan backend"] and back.live == "v3"
    assert run.exit_status is ExitStatus.INTERRUPTED
    assert shown[0].run_id == run.run_id and shown[0].results[0].step.desired == "v2"
    assert journal(ctx)[0]["steps"][0]["outcome"] == "skipped"


def test_the_confirmed_plan_is_the_applied_plan(ctx):
    """Confirmation happens between plan and apply of ONE run: no second plan."""
    calls: list[str] = []
    back = FakePart(Part.BACKEND, calls)
    seen: list[str] = []

    def confirm(plan):
        seen.append(plan.results[0].step.desired)
        back.live = "v3"  # nothing moves, but the plan must not be made again
        return True

    run = engine.run(ctx, jobs(back), command="x", reason=None, confirm=confirm)
    assert calls == ["plan backend", "apply backend"] and seen == ["v2"]
    assert run.results[0].step.desired == "v2" and len(journal(ctx)) == 1


def test_dry_run_plans_only_takes_no_lock(ctx):
    calls: list[str] = []
    back = FakePart(Part.BACKEND, calls)
    run = engine.run(ctx, jobs(back), command="x", reason=None, dry_run=True)
    assert calls == ["plan backend"] and run.results[0].outcome is Outcome.PLANNED
    assert not ctx.settings.locks_dir.exists() or not any(ctx.settings.locks_dir.iterdir())


def test_nothing_to_do(ctx):
    calls: list[str] = []
    back = FakePart(Part.BACKEND, calls, live="v2")
    run = engine.run(ctx, jobs(back), command="x", reason=None)
    assert run.exit_status is ExitStatus.OK and calls == ["plan backend"]
    assert run.results[0].outcome is Outcome.UNCHANGED


def test_undo_plan_from_the_journal(ctx, monkeypatch):
    calls: list[str] = []
    back = FakePart(Part.BACKEND, calls)
    dash = FakePart(Part.DASHBOARD, calls)
    run = engine.run(ctx, jobs(back, dash), command="x", reason=None)
    monkeypatch.setattr(registry, "all_parts", lambda: [back, dash])
    undo_jobs = engine.undo_jobs(journal(ctx)[0])
    assert [(j.part.name, dict(j.request.targets)) for j in undo_jobs] == [
        ("backend", {"t": "v3"}), ("dashboard", {"t": "v3"})]
    ctx2 = RunContext.create(ctx.settings)
    calls.clear()
    undo = engine.run(ctx2, undo_jobs, command=f"undo {run.run_id}", reason=None, reverse=True,
                      confirm=lambda plan: True)
    assert undo.exit_status is ExitStatus.OK and back.live == dash.live == "v3"
    assert sorted(calls[:2]) == ["plan backend", "plan dashboard"] and calls[2:] == [
        "plan backend", "apply dashboard", "apply backend"]  # undo: newest part first; the later one re-read


def test_undo_of_a_run_that_changed_nothing(ctx, monkeypatch):
    calls: list[str] = []
    back = FakePart(Part.BACKEND, calls, live="v2")
    engine.run(ctx, jobs(back), command="x", reason=None)
    monkeypatch.setattr(registry, "all_parts", lambda: [back])
    with pytest.raises(Exception, match="changed nothing"):
        engine.undo_jobs(journal(ctx)[0])


def test_registry_knows_the_parts_in_runbook_order():
    assert registry.names() == sorted(registry.names(), key=lambda n: Part(n).order)
    assert "backend" in registry.names() and "dashboard" in registry.names()
    with pytest.raises(Exception, match="no part"):
        registry.get("frontend")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_mid_apply_finishes_the_part_at_work_then_stops_and_journals(ctx, signame):
    import os
    import signal

    calls: list[str] = []

    class Signalled(FakePart):
        def apply(self, ctx, steps, request):
            os.kill(os.getpid(), getattr(signal, signame))  # the operator's Ctrl-C / a CI timeout
            return super().apply(ctx, steps, request)

    back = Signalled(Part.BACKEND, calls)
    dash = FakePart(Part.DASHBOARD, calls)
    run = engine.run(ctx, jobs(back, dash), command="x", reason=None)
    assert back.live == "v2"  # the step at work was finished, not cut in half
    assert "apply dashboard" not in calls
    assert run.exit_status is ExitStatus.INTERRUPTED
    assert {r.step.part: r.outcome for r in run.results} == {Part.BACKEND: Outcome.SUCCEEDED,
                                                             Part.DASHBOARD: Outcome.SKIPPED}
    rec = journal(ctx)[0]
    assert rec["exit_name"] == "INTERRUPTED" and rec["steps"][0]["outcome"] == "succeeded"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back


def test_a_killed_run_is_journaled_by_the_next_run(ctx):
    """SIGKILL leaves the local lock (its pid gone) and the plan it confirmed: the next run that
    takes the lock over journals the killed run, steps as 'state unknown'."""
    import socket
    import subprocess

    calls: list[str] = []
    first = RunContext.create(ctx.settings)
    # What a killed run leaves: its plan file and its lock, held by a process that is gone.
    dead = subprocess.Popen(["true"])
    dead.wait()
    plan = engine.RunResult(first.run_id, "backend rollback", False, "r", "t",
                            results=[StepResult(Step(Part.BACKEND, "vps1", "a" * 40, "b" * 40), Outcome.PLANNED)])
    engine._save_plan(first, plan)
    ctx.settings.locks_dir.mkdir(parents=True, exist_ok=True)
    (ctx.settings.locks_dir / "backend.lock").write_text(json.dumps({
        "target": "backend", "owner": "dave", "pid": dead.pid, "host": socket.gethostname(), "acquired": 1.0,
        "reason": "r", "run_id": first.run_id}))
    assert engine.locks(ctx, hosts=False)["held"] is False  # its process is gone

    run = engine.run(ctx, jobs(FakePart(Part.BACKEND, calls)), command="backend rollback", reason=None)
    assert run.exit_status is ExitStatus.OK
    killed, new = journal(ctx)
    assert killed["run_id"] == first.run_id and killed["exit_name"] == "INTERRUPTED"
    assert "KILLED DURING ITS APPLY" in killed["message"] and killed["who"] == first.operator
    assert [(s["target"], s["outcome"]) for s in killed["steps"]] == [("vps1", "not_restored")]
    assert new["run_id"] == ctx.run_id and any(first.run_id in w for w in new["warnings"])


def test_a_killed_one_pass_run_is_journaled_from_what_its_targets_recorded(ctx, monkeypatch):
    """Issue 18 item 1: a one-pass run (plan.json without steps) killed while its host's job
    applied: the next run journals it from what the part's targets recorded (PartBase.recover:
    the host ledger's entries of that run), so that `undo` works on it."""
    import socket
    import subprocess

    calls: list[str] = []
    first = RunContext.create(ctx.settings)
    dead = subprocess.Popen(["true"])
    dead.wait()
    engine._save_plan(first, engine.RunResult(first.run_id, "backend rollback", False, "r", "t", parts=["backend"]))
    ctx.settings.locks_dir.mkdir(parents=True, exist_ok=True)
    (ctx.settings.locks_dir / "backend.lock").write_text(json.dumps({
        "target": "backend", "owner": "dave", "pid": dead.pid, "host": socket.gethostname(), "acquired": 1.0,
        "reason": "r", "run_id": first.run_id}))
    asked: list[str] = []

    class Recorded(FakePart):
        def recover(self, ctx, killed):
            asked.append(killed["run_id"])
            return [{"part": "backend", "target": "vps1", "from": "a" * 40, "to": "b" * 40, "changes": True,
                     "details": {}, "outcome": "succeeded",
                     "message": "applied by the host's job after the controller was killed; not verified"}]

    real_get = registry.get
    monkeypatch.setattr(registry, "get", lambda name: Recorded(Part.BACKEND, calls) if name == "backend"
                        else real_get(name))
    run = engine.run(ctx, jobs(FakePart(Part.BACKEND, calls)), command="backend rollback", reason=None)
    assert run.exit_status is ExitStatus.OK and asked == [first.run_id]
    killed, _new = journal(ctx)
    assert [(s["target"], s["from"], s["to"], s["outcome"]) for s in killed["steps"]] == [
        ("vps1", "a" * 40, "b" * 40, "succeeded")]
    assert "as its hosts recorded them" in killed["message"]
    monkeypatch.setattr(registry, "get", real_get)
    (undo,) = engine.undo_jobs(killed)
    assert undo.part.name == "backend" and dict(undo.request.targets) == {"vps1": "a" * 40}


def test_parts_are_planned_at_once_and_the_first_refusal_in_order_wins(ctx):
    """Plans only read: they run at the same time; a refusal is still the first in the runbook's order."""
    import threading

    barrier = threading.Barrier(2, timeout=5)  # both plans must be running together to pass it

    class Waiting(FakePart):
        def plan(self, ctx, request):
            barrier.wait()
            return super().plan(ctx, request)

    calls: list[str] = []
    run = engine.run(ctx, jobs(Waiting(Part.AGENT, calls), Waiting(Part.BACKEND, calls)), command="x", reason=None,
                     dry_run=True)
    assert run.exit_status is ExitStatus.OK and sorted(calls) == ["plan agent", "plan backend"]
    calls.clear()
    first, second = ValidationError("agent says no"), UnreachableError("backend is gone")
    run = engine.run(ctx, jobs(FakePart(Part.BACKEND, calls, plan_error=second),
                               FakePart(Part.AGENT, calls, plan_error=first)), command="x", reason=None)
    assert run.exit_status is ExitStatus.USAGE and "agent says no" in run.message
    assert not any(c.startswith("apply") for c in calls)


def test_a_read_is_shared_before_the_plan_is_confirmed_and_fresh_after(ctx):
    """Issue 20: the checklist's state of a part and its plan are one read of the hosts while the
    run has changed nothing (a concurrent caller waits for it, a failed read is not kept); after
    fresh_reads() (the plans are done: the re-check and the checks after a change) every call reads."""
    import threading
    import time

    reads: list[str] = []
    gate = threading.Event()

    def slow() -> str:
        reads.append("slow")
        gate.wait(5)
        return "state"

    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(ctx.shared_read("k", slow)))
    t.start()
    while not reads:
        time.sleep(0.01)
    waiter = threading.Thread(target=lambda: got.append(ctx.shared_read("k", lambda: reads.append("again") or "x")))
    waiter.start()
    gate.set()
    t.join(5)
    waiter.join(5)
    assert got == ["state", "state"] and reads == ["slow"]

    def boom() -> str:
        reads.append("boom")
        raise UnreachableError("no route")

    with pytest.raises(UnreachableError):
        ctx.shared_read("b", boom)
    assert ctx.shared_read("b", lambda: "ok") == "ok"  # a failure is not kept

    ctx.fresh_reads()
    assert ctx.shared_read("k", lambda: "live") == "live"
    assert ctx.shared_read("k", lambda: "live again") == "live again"


def test_a_caller_waiting_for_one_shared_read_does_not_hold_up_the_others(ctx):
    """The agent's state and plan share one read while the backend's plan makes its own: a
    caller waiting for the first must not keep the second from starting (it did, the
    whole-system dry run's host reads went one part after the other)."""
    import threading

    gate = threading.Event()
    started = threading.Event()

    def slow() -> str:
        started.set()
        gate.wait(10)
        return "agent"

    first = threading.Thread(target=lambda: ctx.shared_read("agent", slow))
    first.start()
    started.wait(5)
    waiter = threading.Thread(target=lambda: ctx.shared_read("agent", lambda: "again"))
    waiter.start()
    waiter.join(0.2)  # the waiter is blocked on the agent's read now
    done = threading.Event()
    other = threading.Thread(target=lambda: (ctx.shared_read("backend", lambda: "backend"), done.set()))
    other.start()
    try:
        assert done.wait(5), "another key's read waited for the agent's"
    finally:
        gate.set()
        for t in (first, waiter, other):
            t.join(5)


def test_the_checklist_reads_alongside_the_plans_and_every_read_is_fresh_after(ctx):
    """The engine runs ``before_plan`` with the plans (both read-only, under the locks): a read
    both make is made once, and every read is fresh once the plans are done, so nothing after
    them (confirmation, re-check, apply, checks after) is served from what was read before."""
    reads: list[int] = []
    seen: dict[str, Any] = {}

    def read_live() -> int:
        reads.append(len(reads) + 1)
        return reads[-1]

    class Reading(FakePart):
        def plan(self, ctx: RunContext, request: Request) -> list[Step]:
            seen["plan"] = ctx.shared_read("live", read_live)
            return super().plan(ctx, request)

    calls: list[str] = []
    part = Reading(Part.BACKEND, calls)

    def before() -> None:
        seen["before"] = ctx.shared_read("live", read_live)

    run = engine.run(ctx, [engine.Job(part, part.request())], command="t", reason=None, dry_run=True,
                     before_plan=before)
    assert run.dry_run and calls == ["plan backend"]
    assert seen == {"before": 1, "plan": 1} and reads == [1]  # one read for both
    assert ctx.shared_read("live", read_live) == 2  # after the plans: read again
