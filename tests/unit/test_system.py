"""The whole-system checklist around the engine, with small fake parts and a real local HTTP
server for the webhook and the smoke checks: order, stop at the first failure (earlier parts
stay rolled back), announcements once each and never duplicated, the webhook URL never shown,
the report, the after-checks' exit 6, and the refusals before anything runs."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from doai_ansible import parts as registry
from doai_ansible import system
from doai_ansible.context import RunContext
from doai_ansible.errors import ExitStatus, UsageError
from doai_ansible.journal import Journal
from doai_ansible.model import Outcome, Part, Step, StepResult
from doai_ansible.part import PartBase, Request
from doai_ansible.settings import load_settings


class Fake(PartBase):
    def __init__(self, part: Part, calls: list[str], *, fail: str | None = None, configured: bool = True,
                 healthy_after: bool = True) -> None:
        self.part = part  # type: ignore[misc]
        self.calls = calls
        self.live = "bad"
        self.fail = fail
        self._configured = configured
        self.healthy_after = healthy_after
        self.needs = "fake settings"  # type: ignore[misc]

    def configured(self, ctx: RunContext) -> bool:
        return self._configured

    def status(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        self.calls.append(f"status {self.name}")
        hosts = {"h1": {"healthy": self.live != "bad"}} if self.part is Part.BACKEND else None
        st = {"part": self.name, "configured": True, "healthy": self.live != "bad", "reachable": True}
        return dict(st, hosts=hosts) if hosts else st

    def health(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        self.calls.append(f"health {self.name}")
        ok = self.live != "bad" and self.healthy_after
        return {"healthy": ok, "reachable": True, "targets": {"t": ok}}

    def status_lines(self, st: dict[str, Any]) -> list[str]:
        return []

    def request(self, **options: Any) -> Request:
        self.calls.append(f"request {self.name} " + ",".join(f"{k}={v}" for k, v in sorted(options.items())
                                                              if v not in (None, False) and k != "ctx"))
        return Request(to=options.get("to"))

    def plan(self, ctx: RunContext, request: Request) -> list[Step]:
        self.calls.append(f"plan {self.name}")
        return [Step(self.part, "t", self.live, request.to or "good")]

    def apply(self, ctx: RunContext, steps: list[Step], request: Request) -> list[StepResult]:
        self.calls.append(f"apply {self.name}")
        if self.fail:
            return [StepResult(s, Outcome(self.fail), "it failed", "2026-01-01T00:00:00.000Z",
                               "2026-01-01T00:00:01.000Z") for s in steps]
        self.live = steps[0].desired
        return [StepResult(s, Outcome.SUCCEEDED, "", "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.000Z")
                for s in steps]

    def revert(self, ctx: RunContext, results: list[StepResult], reason: str | None) -> list[StepResult]:
        self.calls.append(f"revert {self.name}")
        return results

    def undo_request(self, record: Mapping[str, Any]) -> Request | None:
        return None


class Hooks:
    """A webhook receiver and a smoke-check target: records POST bodies; answers as told."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.post_status = [200]
        self.smoke_status = 200
        self.smoke_body = b"DoAi dashboard ok"
        owner = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                owner.posts.append(json.loads(self.rfile.read(n)))
                code = owner.post_status.pop(0) if len(owner.post_status) > 1 else owner.post_status[0]
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                self.send_response(owner.smoke_status)
                self.send_header("Content-Length", str(len(owner.smoke_body)))
                self.end_headers()
                self.wfile.write(owner.smoke_body)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SECRET_HOOK_PATH = "/services/T000/B000/canary-webhook-token-3f9a"


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    yield h
    h.stop()


@pytest.fixture
def calls() -> list[str]:
    return []


def _real_class(part: Part) -> type[PartBase]:
    import importlib

    module, cls = registry.REGISTRY[part].split(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> dict[str, Fake]:
    made = {p: Fake(p, calls) for p in Part}
    for p, fake in made.items():  # the real parts' word on what their checks after wait for
        real = _real_class(p)
        fake.runs_playbooks, fake.read_changed_by = real.runs_playbooks, real.read_changed_by  # type: ignore[misc]
    monkeypatch.setattr(registry, "_loaded", dict(made))
    return {p.value: f for p, f in made.items()}


def make_ctx(tmp_path: Path, hooks: Hooks | None, *, smoke: bool = True) -> RunContext:
    inv = tmp_path / "hosts.yml"
    inv.write_text("all: {}\n")
    cfg = {"system": {"contacts": [{"role": "Backend", "name": "Kim", "contact": "+82 10 0000 0000"}]}}
    env = {}
    if hooks is not None:
        env["DOAI_WEBHOOK_URL"] = hooks.base + SECRET_HOOK_PATH
        if smoke:
            cfg["system"]["smoke_checks"] = [{"name": "dashboard", "url": hooks.base + "/", "status": 200,
                                              "contains": "DoAi"}]
    (tmp_path / "c.yml").write_text(json.dumps(cfg))
    settings = load_settings(tmp_path / "c.yml", inventory=inv, state_dir=tmp_path / "state", env=env)
    return RunContext.create(settings)


def records(ctx: RunContext) -> list[dict[str, Any]]:
    return list(Journal(ctx.settings.journal_path))


def test_whole_system_in_order_with_checklist_report_and_announcements(tmp_path, fakes, calls, hooks):
    ctx = make_ctx(tmp_path, hooks)
    req = system.request(ctx, reason="v3 broke everything", database_last=1)
    run = system.rollback(ctx, req)
    assert run.exit_status is ExitStatus.OK, run.message
    applies = [c for c in calls if c.startswith("apply")]
    assert applies == ["apply agent", "apply backend", "apply database", "apply dashboard"]
    # before: every part inspected (alongside the plans, under the locks) before the first change;
    # after: each part's health once no part left changes it, and no playbook part is left
    assert max(calls.index(f"status {p}") for p in ("agent", "backend", "database", "dashboard")) \
        < calls.index("apply agent")
    assert calls.index("apply backend") < calls.index("health agent")
    assert calls.index("apply database") < calls.index("health backend")
    assert calls.index("apply dashboard") < calls.index("health dashboard")
    assert "request database last=1,reason=v3 broke everything" in calls
    c = run.to_dict()["checklist"]
    assert c["before"]["scope"] == {"unhealthy": ["agent", "backend h1", "database", "dashboard"], "unreachable": []}
    assert Path(c["before"]["state_file"]).is_file()
    assert c["after"]["healthy"] and [s["ok"] for s in c["after"]["smoke"]] == [True]
    assert [a["event"] for a in c["announcements"]] == ["start", "end"] and all(a["sent"] for a in c["announcements"])
    assert len(hooks.posts) == 2 and "started" in hooks.posts[0]["text"] and "OK" in hooks.posts[1]["text"]
    # one journal record carries it all
    (rec,) = records(ctx)
    assert rec["run_id"] == run.run_id and rec["checklist"]["report"] == c["report"]
    md = Path(c["report"]["markdown"]).read_text()
    for needle in ("## Timeline", "## From -> to", "| dashboard | t | bad | good | succeeded |", "## Contacts",
                   "| Backend | Kim | +82 10 0000 0000 |", "## Root cause (to fill in)", f"undo {run.run_id}"):
        assert needle in md, needle
    assert Path(c["report"]["markdown"]).stat().st_mode & 0o077 == 0
    assert json.loads(Path(c["report"]["json"]).read_text())["run_id"] == run.run_id
    # the webhook URL carries a token: nowhere
    everything = md + Path(c["report"]["json"]).read_text() + ctx.settings.journal_path.read_text()
    assert "canary-webhook-token" not in everything


def test_failure_in_database_stops_there_earlier_parts_stay(tmp_path, fakes, calls, hooks):
    fakes["database"].fail = "restored"
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, reason="x", database_last=1))
    assert run.exit_status is ExitStatus.FAILED_RESTORED
    by_part = {r.step.part.value: r.outcome for r in run.results}
    assert by_part == {"agent": Outcome.SUCCEEDED, "backend": Outcome.SUCCEEDED, "database": Outcome.RESTORED,
                       "dashboard": Outcome.SKIPPED}
    assert "revert agent" not in calls and "revert backend" not in calls  # left rolled back
    assert fakes["agent"].live == "good" and fakes["dashboard"].live == "bad"
    c = run.to_dict()["checklist"]
    assert not c["after"]["healthy"]
    md = Path(c["report"]["markdown"]).read_text()
    assert "| database | t | bad | good | restored | it failed |" in md and "FAILED_RESTORED" in md
    assert "FAILED_RESTORED" in hooks.posts[-1]["text"]


def test_exit_3_names_the_failed_part_what_it_put_back_and_what_stays_rolled_back(tmp_path, fakes, calls, hooks):
    fakes["database"].fail = "failed"  # its one transaction rolled back: it never changed anything
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, reason="x", database_last=1))
    assert run.exit_status is ExitStatus.FAILED_RESTORED
    assert "back on what it had before" not in run.message  # the database was never changed
    assert run.message.startswith("FAILED at the database"), run.message
    assert "stay rolled back: agent t, backend t" in run.message and "not attempted: dashboard" in run.message
    where = run.to_dict()["where_parts_stand"]
    assert where == {"failed_part": "database", "not_restored": [], "put_back": [],
                     "left_as_they_were": ["database t"], "stay_rolled_back": ["agent t", "backend t"],
                     "not_attempted": ["dashboard"]}
    # the same words in the report and the end announcement
    md = Path(run.to_dict()["checklist"]["report"]["markdown"]).read_text()
    assert "FAILED at the database" in md and "FAILED at the database" in hooks.posts[-1]["text"]


def test_a_refusal_the_plan_knows_comes_before_any_change_in_any_part(tmp_path, fakes, calls, hooks):
    """The database's plan knows data is at risk and --accept-data-loss was not given: nothing
    anywhere is applied and nothing announced (it used to fire inside the database's apply,
    after the agent and the backend had been rolled back)."""
    from doai_ansible.errors import ValidationError

    fakes["database"].refuses = lambda ctx, steps, request: ValidationError(  # type: ignore[method-assign]
        "data at risk: public.t (3 rows) dropped", hint="add --accept-data-loss")
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, reason="x", database_last=1))
    assert run.exit_status is ExitStatus.USAGE, run.message
    assert not any(c.startswith("apply") for c in calls) and hooks.posts == []
    assert "REFUSED, nothing was changed: database: data at risk" in run.message
    assert fakes["agent"].live == "bad" and fakes["backend"].live == "bad"
    assert records(ctx)[0]["exit_status"] == 2
    # the dry run says the same, with the plan
    (tmp_path / "d").mkdir()
    dry = system.rollback(make_ctx(tmp_path / "d", hooks), system.request(ctx, reason="x", database_last=1),
                          dry_run=True)
    assert dry.exit_status is ExitStatus.USAGE and "REFUSED: database: data at risk" in dry.message
    assert {r.outcome for r in dry.results} == {Outcome.PLANNED}


def test_a_later_part_that_moved_since_the_plan_refuses_before_the_first_change(tmp_path, fakes, calls, hooks):
    from doai_ansible.errors import ValidationError

    def moved(ctx: RunContext, steps: list[Step], request: Request) -> None:
        calls.append("recheck dashboard")
        raise ValidationError("production of p is now dpl_other, not dpl_bad as planned")

    fakes["dashboard"].recheck = moved  # type: ignore[method-assign]
    ctx = make_ctx(tmp_path, hooks)
    confirmed: list[str] = []
    run = system.rollback(ctx, system.request(ctx, skip="database"), confirm=lambda plan: not confirmed.append("y"))
    assert confirmed == ["y"] and "recheck dashboard" in calls
    assert run.exit_status is ExitStatus.USAGE and "dashboard: production of p is now" in run.message
    assert not any(c.startswith("apply") for c in calls) and hooks.posts == []  # nothing changed, nothing announced


def test_unhealthy_after_a_successful_rollback_exits_6(tmp_path, fakes, calls, hooks):
    hooks.smoke_status = 503
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, skip="database"))
    assert run.exit_status is ExitStatus.UNHEALTHY
    assert "smoke checks failing: dashboard" in run.message
    assert records(ctx)[0]["exit_status"] == 6


def test_webhook_error_is_a_warning_and_never_resent(tmp_path, fakes, calls, hooks):
    hooks.post_status = [503, 200]  # the first POST may have been processed: it is not sent again
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, only="agent,backend"))
    assert run.exit_status is ExitStatus.OK
    assert len(hooks.posts) == 2  # start (answered 503) and end; no retry of the start
    start = run.to_dict()["checklist"]["announcements"][0]
    assert not start["sent"] and start["error"] == "the webhook answered HTTP 503"
    assert any("announcement of the start" in w for w in run.warnings)
    assert "canary-webhook-token" not in json.dumps(run.to_dict())


def test_dry_run_announces_nothing_and_writes_no_report(tmp_path, fakes, calls, hooks):
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, skip="database"), dry_run=True)
    assert run.exit_status is ExitStatus.OK and not any(c.startswith("apply") for c in calls)
    assert hooks.posts == [] and run.to_dict()["checklist"]["report"] is None
    assert not ctx.settings.report_dir.exists()


def test_declined_confirmation_changes_and_announces_nothing(tmp_path, fakes, calls, hooks):
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, skip="database"), confirm=lambda plan: False)
    assert run.exit_status is ExitStatus.INTERRUPTED
    assert hooks.posts == [] and not any(c.startswith("apply") for c in calls)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"only": "agent,frontend"}, "'frontend' is not a part"),
    ({"only": "agent", "skip": "agent"}, "both in --only and --skip"),
    ({"only": ","}, "name at least one part"),
    ({}, "--database-last N or --database-to VERSION"),
    ({"skip": "database", "database_last": 1}, "--database-last is for the database part"),
    ({"only": "agent", "backend_to": "main"}, "--backend-to is for the backend part"),
    ({"skip": "agent,backend,database,dashboard"}, "no part to roll back"),
])
def test_refused_before_anything_runs(tmp_path, fakes, calls, kwargs, needle):
    ctx = make_ctx(tmp_path, None)
    with pytest.raises(UsageError) as exc:
        system.request(ctx, **kwargs)
    assert needle in exc.value.message + (exc.value.hint or "")
    assert calls == []


def test_unconfigured_part_is_left_out_with_its_reason_unless_named(tmp_path, fakes, calls):
    fakes["dashboard"]._configured = False
    ctx = make_ctx(tmp_path, None)
    req = system.request(ctx, skip="database")
    assert req.parts == ("agent", "backend") and ("dashboard", "not configured (fake settings)") in req.skipped
    with pytest.raises(UsageError, match="not configured"):
        system.request(ctx, only="dashboard")


def test_scope_names_hosts_and_unreachable_parts():
    states = {"backend": {"hosts": {"a": {"healthy": True}, "b": {"healthy": False},
                                    "c": {"healthy": False, "error": "unreachable: ssh"}}},
              "database": {"healthy": False, "reachable": False}, "dashboard": {"healthy": True}}
    assert system.scope(states) == (["backend b"], ["backend c", "database"])


def test_report_escapes_table_cells(tmp_path, fakes, calls):
    ctx = make_ctx(tmp_path, None)
    req = dataclasses.replace(system.request(ctx, skip="database"), reason="a | b")
    run = system.rollback(ctx, req)
    md = Path(run.to_dict()["checklist"]["report"]["markdown"]).read_text()
    assert "- **Reason**: a | b" in md and "| (none configured" not in md


def test_a_fleet_part_that_tolerates_its_failures_lets_the_next_parts_go_on(tmp_path, fakes, calls, hooks):
    """A PC that was off does not keep the backend broken (the agent part's own rule, below)."""
    fakes["agent"].fail = "refused"
    fakes["agent"].blocks_next = lambda results, request: False  # type: ignore[method-assign]
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, skip="database"))
    assert [c for c in calls if c.startswith("apply")] == ["apply agent", "apply backend", "apply dashboard"]
    assert run.exit_status is ExitStatus.FAILED_RESTORED
    assert run.message.startswith("PARTLY DONE: every part was applied, but 1 target(s) were not rolled back")


def test_agent_part_blocks_the_next_parts_only_past_its_failure_share():
    from doai_ansible.parts.agent import AgentPart

    part = AgentPart()

    def res(target: str, outcome: Outcome) -> StepResult:
        host = target.split("/")[0]
        return StepResult(Step(Part.AGENT, target, "2.0.0", "1.9.0", details={"host": host}), outcome)

    ok, off = Outcome.SUCCEEDED, Outcome.FAILED
    fleet = [res("pc1/a", ok), res("pc1/b", ok), res("pc2/a", ok), res("pc3/*", off)]
    assert part.blocks_next(fleet, part.request()) is False  # 1 PC of 3 off: under the default 50 %
    assert part.blocks_next(fleet, part.request(max_fail_percent=20)) is True
    assert part.blocks_next([res("pc1/a", ok), res("pc2/a", off), res("pc3/a", Outcome.RESTORED)],
                            part.request()) is True  # 2 of 3
    assert part.blocks_next([res("pc1/a", ok), res("pc2/a", Outcome.NOT_RESTORED)],
                            part.request(max_fail_percent=100)) is True  # never past a PC left broken


def test_nothing_to_do_on_an_unhealthy_system_is_not_a_recovery(tmp_path, fakes, calls, hooks):
    for f in fakes.values():
        f.live = "good"
    fakes["backend"].healthy_after = False
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, skip="database"))
    assert run.exit_status is ExitStatus.UNHEALTHY and "unhealthy: backend" in run.message
    assert hooks.posts == []  # nothing was started: nothing to announce


def test_checks_after_that_break_still_end_in_a_report_and_an_announcement(tmp_path, fakes, calls, hooks, monkeypatch):
    def broken(ctx, req, started=None):
        raise RuntimeError("psycopg said postgresql://u:pw-canary@x")

    monkeypatch.setattr(system, "after", broken)
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, skip="database"))
    assert run.exit_status is ExitStatus.UNHEALTHY and "the checks could not run (RuntimeError)" in run.message
    c = run.to_dict()["checklist"]
    assert [a["event"] for a in c["announcements"]] == ["start", "end"] and Path(c["report"]["markdown"]).is_file()
    assert "pw-canary" not in json.dumps(run.to_dict()) + ctx.settings.journal_path.read_text()


def test_report_falls_back_to_the_log_bundle_and_keeps_the_warnings(tmp_path, fakes, calls, hooks):
    hooks.post_status = [500]
    ctx = make_ctx(tmp_path, hooks)
    ctx.settings.report_dir.parent.mkdir(parents=True, exist_ok=True)
    ctx.settings.report_dir.write_text("not a folder")
    run = system.rollback(ctx, system.request(ctx, skip="database"))
    report = run.to_dict()["checklist"]["report"]
    assert Path(report["markdown"]).parent == ctx.log_dir
    doc = json.loads(Path(report["json"]).read_text())
    assert any("webhook answered HTTP 500" in w for w in doc["warnings"])
    assert any("could not be written" in w for w in run.warnings)


def test_an_interrupt_during_the_checks_after_is_still_journaled(tmp_path, fakes, calls, hooks, monkeypatch):
    def interrupted(checks):
        raise KeyboardInterrupt

    monkeypatch.setattr(system, "smoke", interrupted)
    ctx = make_ctx(tmp_path, hooks)
    with pytest.raises(KeyboardInterrupt):
        system.rollback(ctx, system.request(ctx, skip="database"))
    (rec,) = records(ctx)
    assert rec["exit_status"] == int(ExitStatus.INTERRUPTED)
    assert {s["outcome"] for s in rec["steps"]} == {"succeeded"}  # what was done is on record


def test_the_state_is_read_under_the_locks(tmp_path, fakes, calls, hooks):
    ctx = make_ctx(tmp_path, hooks)
    other = RunContext.create(ctx.settings)
    with other.lock("backend").held(owner="someone else", reason="x", run_id=other.run_id):
        run = system.rollback(ctx, system.request(ctx, skip="database"))
    assert run.exit_status is ExitStatus.LOCKED
    assert not any(c.startswith("status") for c in calls)  # no minutes of reading before a refusal
    assert run.to_dict()["checklist"]["before"] is None and hooks.posts == []


@pytest.mark.parametrize(("kwargs", "typed", "own"), [
    ({"parts": ("database",), "options": {"database_to": "junk"}}, "--database-to", "--to"),
    ({"parts": ("dashboard",), "options": {"dashboard_to": " "}}, "--dashboard-to", "--to"),
    ({"parts": ("agent",), "options": {"agent_batch": "half"}}, "--agent-batch", "--batch"),
])
def test_errors_name_the_option_the_user_typed(tmp_path, kwargs, typed, own):
    """`system rollback --database-to junk` is refused naming --database-to, not the database part's --to."""
    from doai_ansible.errors import DoaiError

    ctx = make_ctx(tmp_path, None)
    req = system.SystemRequest(skipped=(), reason=None, **kwargs)
    with pytest.raises(DoaiError) as exc:
        system.jobs(ctx, req)
    text = exc.value.message + (exc.value.hint or "")
    assert typed in text and f" {own} " not in f" {text} " and not text.startswith(own), text


def test_with_yes_the_plans_are_not_read_again_before_the_first_change(tmp_path, fakes, calls, hooks):
    """Issue 20: the re-check exists for the time a confirmation takes; with --yes the plans were
    made a moment ago under the run's locks, and re-reading them would only delay the change."""
    def recheck(ctx: RunContext, steps: list[Step], request: Request) -> None:
        calls.append("recheck dashboard")

    fakes["dashboard"].recheck = recheck  # type: ignore[method-assign]
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, skip="database"))
    assert run.exit_status is ExitStatus.OK, run.message
    assert "recheck dashboard" not in calls and "apply dashboard" in calls


def test_the_checks_after_read_a_part_once_no_part_left_changes_it(tmp_path, fakes, calls, hooks):
    """Issue 20: the agents' health is read while the database and the dashboard are applied, the
    backend's while the dashboard is (the database can break it); the dashboard's apply here
    waits for both reads to have started, so this fails when they wait for the last part."""
    import time

    apply = fakes["dashboard"].apply

    def slow_apply(ctx: RunContext, steps: list[Step], request: Request) -> list[StepResult]:
        deadline = time.monotonic() + 10
        while not {"health agent", "health backend"} <= set(calls) and time.monotonic() < deadline:
            time.sleep(0.01)
        calls.append("dashboard applied" if {"health agent", "health backend"} <= set(calls) else "no early reads")
        return apply(ctx, steps, request)

    fakes["dashboard"].apply = slow_apply  # type: ignore[method-assign]
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, reason="x", database_last=1))
    assert run.exit_status is ExitStatus.OK, run.message
    assert "dashboard applied" in calls, calls
    assert calls.index("apply backend") < calls.index("health agent")
    assert calls.index("apply database") < calls.index("health backend")
    assert calls.count("health agent") == calls.count("health backend") == 1  # not read again after
    assert calls.index("dashboard applied") < calls.index("health dashboard")
    events = [e["event"] for e in run.to_dict()["checklist"]["timeline"]]
    assert "after: the agent read now (no part left changes it)" in events
    assert "after: the backend read now (no part left changes it)" in events
    assert run.to_dict()["checklist"]["after"]["healthy"]


def test_a_signal_during_a_later_part_still_ends_in_checks_after_that_use_the_early_reads(tmp_path, fakes, calls,
                                                                                          hooks):
    """Ctrl-C while the database is applied: the part at work finishes, the dashboard is not
    attempted, and the checks after use the reads started early (each part read once) before the
    run is journaled, with its report."""
    import os
    import signal

    apply = fakes["database"].apply

    def signalled(ctx: RunContext, steps: list[Step], request: Request) -> list[StepResult]:
        os.kill(os.getpid(), signal.SIGINT)
        return apply(ctx, steps, request)

    fakes["database"].apply = signalled  # type: ignore[method-assign]
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, reason="x", database_last=1))
    assert run.exit_status is ExitStatus.INTERRUPTED, run.message
    assert {r.step.part.value: r.outcome for r in run.results} == {
        "agent": Outcome.SUCCEEDED, "backend": Outcome.SUCCEEDED, "database": Outcome.SUCCEEDED,
        "dashboard": Outcome.SKIPPED}
    assert [calls.count(f"health {p}") for p in ("agent", "backend", "database", "dashboard")] == [1, 1, 1, 1]
    c = run.to_dict()["checklist"]
    assert set(c["after"]["parts"]) == {"agent", "backend", "database", "dashboard"}
    assert c["after"]["parts"]["agent"]["healthy"] and not c["after"]["parts"]["dashboard"]["healthy"]
    (rec,) = records(ctx)
    assert rec["exit_name"] == "INTERRUPTED" and Path(c["report"]["markdown"]).is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back


def test_a_second_signal_stops_the_reads_started_early_and_no_other(tmp_path, fakes, calls, hooks):
    """A second Ctrl-C ends the command at once: the reads the checklist started during the apply
    are stopped (the cancel callback of their playbook runs answers yes, in the read's thread and
    in the threads it hands on), the global stop of every read is not set (it would stop the
    apply's playbooks too), and the process does not wait for the reads at its exit."""
    import os
    import signal
    import time

    from doai_ansible import engine, runner

    def a_playbook_read() -> str:  # as run_playbook's runner loop asks its cancel callback
        reducer = runner._EventReducer(keep_events=False, on_event=None, secrets={})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if reducer.cancel():
                return "stopped"
            time.sleep(0.01)
        return "never stopped"

    seen: list[str] = []

    def backend_health(ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        calls.append("health backend")
        seen.extend(engine.in_parallel({"pm2": a_playbook_read, "docker": a_playbook_read}).values())
        return {"healthy": True, "reachable": True, "targets": {}}

    fakes["backend"].health = backend_health  # type: ignore[method-assign]
    apply = fakes["dashboard"].apply

    def signalled_twice(ctx: RunContext, steps: list[Step], request: Request) -> list[StepResult]:
        deadline = time.monotonic() + 10
        while "health backend" not in calls and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the second interrupts at once
        return apply(ctx, steps, request)

    fakes["dashboard"].apply = signalled_twice  # type: ignore[method-assign]
    ctx = make_ctx(tmp_path, hooks)
    with pytest.raises(KeyboardInterrupt):
        system.rollback(ctx, system.request(ctx, reason="x", database_last=1))
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["stopped", "stopped"]
    assert not runner.STOP_READS.is_set()
    assert records(ctx)[0]["exit_name"] == "INTERRUPTED"


def test_an_undo_reads_a_part_early_only_once_no_playbook_part_is_left(tmp_path, fakes, calls, hooks):
    """In the reverse order (dashboard, database, backend, agent) the backend's read waits for the
    agent's turn: beside the agents' playbook it would share the controller with the part at work.
    The API reads wait for the parts that can change them only (the dashboard's: the backend's)."""
    ctx = make_ctx(tmp_path, hooks)
    notes: list[str] = []
    early = system.EarlyReads(ctx, ("agent", "backend", "database", "dashboard"), notes.append)
    ok = [StepResult(Step(Part.DASHBOARD, "t", "a", "b"), Outcome.SUCCEEDED)]
    early.part_done("dashboard", ok)
    assert notes == []
    early.part_done("database", ok)
    assert notes == ["after: the database read now (no part left changes it)"]
    early.part_done("backend", ok)
    assert notes[1:] == ["after: the dashboard read now (no part left changes it)"]
    early.part_done("agent", ok)  # the last part: the checks after read what is left, at once
    assert len(notes) == 2


def test_a_read_started_early_is_read_again_when_its_part_was_put_back_since(tmp_path, fakes, calls, hooks):
    fakes["agent"].live = "good"
    ctx = make_ctx(tmp_path, hooks)
    early = system.EarlyReads(ctx, ("agent", "backend", "database", "dashboard"), lambda event: None)
    step = Step(Part.AGENT, "pc1/a", "2.0.0", "1.9.0")
    early.part_done("agent", [StepResult(step, Outcome.SUCCEEDED)])
    early.part_done("backend", [StepResult(Step(Part.BACKEND, "h1", "a", "b"), Outcome.SUCCEEDED)])
    assert "agent" in early.reads
    run = system.RunResult("r", "system rollback", False, None, "now", results=[StepResult(step, Outcome.SUCCEEDED)])
    assert list(early.usable(run)) == ["agent"]
    run.results = [StepResult(step, Outcome.RESTORED)]  # put back after the read started
    assert early.usable(run) == {}
    assert early.reads["agent"][1]()["healthy"] is True  # the early read itself ran (and is not used)


@pytest.mark.parametrize("module", ["system.py", "diagnose.py", "cli.py"])
def test_the_generic_modules_name_no_part(module):
    """Issue 21: each part brings its request options, commands and diagnose scenarios through
    the registry, so the generic modules hold no part's name and import no part module."""
    import ast

    import doai_ansible

    tree = ast.parse((Path(doai_ansible.__file__).parent / module).read_text(encoding="utf-8"))
    names = {p.value for p in Part}
    assert names == {"agent", "backend", "database", "dashboard"}
    literals = sorted({n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names})
    assert not literals, f"{module} names a part: {literals}"
    imported = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module:
            imported += [n.module] + [f"{n.module}.{a.name}" for a in n.names]
        elif isinstance(n, ast.Import):
            imported += [a.name for a in n.names]
    bad = sorted(m for m in imported if m.startswith("doai_ansible.parts.") and m != "doai_ansible.parts.__init__")
    assert not bad, f"{module} imports a part module: {bad}"
