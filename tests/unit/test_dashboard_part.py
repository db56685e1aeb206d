"""Unit tests of DashboardPart: the dashboard as the engine drives it (doai_ansible.part).

The Vercel stand-in answers through httpx.MockTransport on a fake clock, and the health probe
answers from a list, so every path (gate passed, gate failed, API lost) runs in-process.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from doai_ansible import parts
from doai_ansible.clients.vercel import VercelClient
from doai_ansible.context import RunContext
from doai_ansible.errors import ConfigError, ExitStatus, ValidationError
from doai_ansible.model import Outcome, Part, RunResult, Step, StepResult, utcnow
from doai_ansible.part import Request
from doai_ansible.parts.dashboard import DashboardPart
from doai_ansible.settings import Secret, Settings, VercelSettings
from tests.standins.vercel_api import DoaiWorld, VercelStandIn, build_doai_world

TOKEN = "canary-part-3c5e7a9b1d2f4e6a"
HEALTH_URL = "http://127.0.0.1:9/api/health"


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now


@dataclasses.dataclass
class Rig:
    api: VercelStandIn
    world: DoaiWorld
    ctx: RunContext
    time: FakeTime
    said: list[str]  # what the part told the operator (ctx.say)
    health: list[bool] = dataclasses.field(default_factory=lambda: [True])  # the last answer repeats
    probes: int = 0

    @property
    def part(self) -> DashboardPart:
        return DashboardPart(
            client_factory=lambda s: VercelClient(
                s, transport=self.api.transport(), sleep=self.time.sleep, clock=self.time.clock
            ),
            probe=self.probe,
        )

    def probe(self, url: str, timeout_s: float) -> tuple[bool, str]:
        assert url == HEALTH_URL
        self.probes += 1
        ok = self.health[min(self.probes, len(self.health)) - 1]
        return ok, "HTTP 200" if ok else "HTTP 503"

    def posts(self) -> list[str]:
        return [r.path.split("/")[-2] for r in self.api.mutating_requests()]

    @property
    def production(self) -> str | None:
        return self.api.production_of(self.world.project)


def make_ctx(tmp_path: Path, vercel: VercelSettings, said: list[str]) -> RunContext:
    settings = Settings(
        config_path=None, inventory=tmp_path / "hosts.yml", state_dir=tmp_path / "state", content_dir=tmp_path,
        vercel=vercel,
    )
    return RunContext(settings, "20260101T000000Z-abcdef", "tester", note=said.append)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    api = VercelStandIn()
    world = build_doai_world(api, TOKEN)
    vercel = VercelSettings(
        api_url="http://127.0.0.1:9",  # not contacted: the transport answers in-process
        project="doai-dashboard",
        team_id=world.team.id,
        token=Secret(TOKEN),
        health_url=HEALTH_URL,
        job_deadline_s=60.0,
        health_deadline_s=30.0,
    )
    said: list[str] = []
    yield Rig(api, world, make_ctx(tmp_path, vercel, said), FakeTime(), said)


def run(rig: Rig, request: Request) -> tuple[list[Step], list[StepResult]]:
    steps = rig.part.plan(rig.ctx, request)
    return steps, rig.part.apply(rig.ctx, steps, request)


def journaled(results: list[StepResult]) -> dict:
    """The record ``undo`` reads back from the journal (through JSON, like the journal file)."""
    record = RunResult("20260101T000000Z-abcdef", "rollback", False, "bad release", utcnow(), results=results)
    return json.loads(json.dumps(record.to_dict()))


# ---------------------------------------------------------------------------------------------
# registry, configuration, request
# ---------------------------------------------------------------------------------------------


def test_the_registry_gives_the_dashboard_part() -> None:
    part = parts.get("dashboard")
    assert isinstance(part, DashboardPart)
    assert part.part is Part.DASHBOARD and part.lock_target == "dashboard"
    assert "VERCEL_TOKEN" in part.needs and "vercel.project" in part.needs


@pytest.mark.parametrize(
    ("project", "token", "configured"),
    [("doai-dashboard", Secret(TOKEN), True), (None, Secret(TOKEN), False), ("doai-dashboard", None, False)],
)
def test_configured_needs_a_project_and_a_token_and_no_network(
    tmp_path: Path, project: str | None, token: Secret | None, configured: bool
) -> None:
    api = VercelStandIn()
    part = DashboardPart(client_factory=lambda s: VercelClient(s, transport=api.transport()))
    ctx = make_ctx(tmp_path, VercelSettings(project=project, token=token), [])
    assert part.configured(ctx) is configured
    assert api.requests == []


@pytest.mark.parametrize("blank", ["", "   "])
def test_an_empty_to_is_refused(blank: str) -> None:
    with pytest.raises(ValidationError, match="--to is empty"):
        DashboardPart().request(to=blank)


@pytest.mark.parametrize(
    "options",
    [
        {"to": "dpl_abc; rm -rf /"},
        {"to": "https://x.vercel.app/api/health"},
        {"action": "deploy"},
        {"action": "undo"},  # undo needs the pinned target
        {"action": "undo", "targets": {"doai-dashboard": "dpl_abcdefgh1234"}, "to": "dpl_abcdefgh1234"},
        {"action": "undo", "targets": {"doai-dashboard": "../../v2/user"}},
        {"targets": {"doai-dashboard": "dpl_abcdefgh1234"}},  # a rollback takes --to
        {"reason": "two\nlines"},
    ],
)
def test_request_refuses_bad_options_before_any_request(options: dict) -> None:
    with pytest.raises(ValidationError) as info:
        DashboardPart().request(**options)
    assert info.value.exit_status == ExitStatus.USAGE


def test_request_normalizes_the_target_and_keeps_the_reason() -> None:
    req = DashboardPart().request(to="https://Doai-Dashboard-9jaeg38me-doai.vercel.app/", reason=" 1.4.0 breaks login ")
    assert req == Request(
        action="rollback", to="doai-dashboard-9jaeg38me-doai.vercel.app", options={"reason": "1.4.0 breaks login"}
    )


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------


def test_plan_pins_the_ids_and_says_what_will_happen(rig: Rig) -> None:
    (step,) = rig.part.plan(rig.ctx, rig.part.request())
    current, target = rig.world.current, rig.world.expected_target
    assert (step.part, step.target) == (Part.DASHBOARD, "doai-dashboard")
    assert (step.current, step.desired) == (current.id, target.id)  # full ids, not "previous"
    assert step.details["from_label"] == f"{current.id} ({current.meta['githubCommitSha'][:12]})"
    assert step.details["to_label"] == f"{target.id} ({target.meta['githubCommitSha'][:12]})"
    text = "\n".join(step.notes)
    assert HEALTH_URL in text and f"{current.id} is promoted back" in text
    assert "stops assigning new production deployments" in text
    json.dumps(step.to_dict())
    assert rig.api.mutating_requests() == []


def test_plan_refuses_a_to_that_was_never_live(rig: Rig) -> None:
    with pytest.raises(ValidationError, match="never live in production"):
        rig.part.plan(rig.ctx, rig.part.request(to=rig.world.staged.id))
    assert rig.api.mutating_requests() == []


def test_plan_to_the_live_deployment_changes_nothing(rig: Rig) -> None:
    (step,) = rig.part.plan(rig.ctx, rig.part.request(to="dashboard.doai.me"))
    assert step.current == step.desired == rig.world.current.id
    assert not step.changes and "nothing to do" in step.notes[0]
    (result,) = rig.part.apply(rig.ctx, [step], rig.part.request(to="dashboard.doai.me"))
    assert result.outcome is Outcome.UNCHANGED
    assert rig.api.mutating_requests() == []


def test_plan_needs_the_token(rig: Rig, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, dataclasses.replace(rig.ctx.settings.vercel, token=None), [])
    with pytest.raises(ConfigError) as info:
        rig.part.plan(ctx, rig.part.request())
    assert info.value.key == "VERCEL_TOKEN"


# ---------------------------------------------------------------------------------------------
# apply
# ---------------------------------------------------------------------------------------------


def test_apply_rolls_back_with_the_reason_and_passes_the_gate(rig: Rig) -> None:
    rig.health = [False, True]
    _, (result,) = run(rig, rig.part.request(reason="1.4.0 breaks login"))
    assert result.outcome is Outcome.SUCCEEDED
    assert rig.production == rig.world.expected_target.id
    (post,) = rig.api.mutating_requests()
    assert post.query["description"] == "1.4.0 breaks login"
    assert rig.probes == 2
    assert any("rollback job: succeeded" in s for s in rig.said)


def test_apply_refuses_when_production_changed_since_the_plan(rig: Rig) -> None:
    request = rig.part.request()
    steps = rig.part.plan(rig.ctx, request)
    rig.api.set_production(rig.world.project, rig.world.older_ready)  # someone else acted meanwhile
    with pytest.raises(ValidationError) as info:
        rig.part.apply(rig.ctx, steps, request)
    assert (
        f"production of doai-dashboard is now {rig.world.older_ready.id}, not {rig.world.current.id} as planned"
        in str(info.value)
    )
    assert info.value.exit_status == ExitStatus.USAGE
    assert rig.api.mutating_requests() == []


def test_a_failed_health_gate_is_a_restored_result_not_an_exception(rig: Rig) -> None:
    rig.health = [False]
    _, (result,) = run(rig, rig.part.request())
    assert result.outcome is Outcome.RESTORED
    assert "health gate failed" in result.message
    assert rig.production == rig.world.current.id
    assert rig.posts() == ["rollback", "promote"]


def test_api_lost_after_the_post_is_a_not_restored_result_with_the_commands(rig: Rig) -> None:
    rig.api.arm_outage(method="POST")
    _, (result,) = run(rig, rig.part.request())
    assert result.outcome is Outcome.NOT_RESTORED
    team = rig.world.team.id
    assert f"vercel rollback status doai-dashboard --scope {team}" in result.message
    assert f"vercel promote {rig.world.current.id} --scope {team}" in result.message


def test_an_ambiguous_answer_is_followed_and_gated(rig: Rig) -> None:
    rig.api.arm_unavailable(status=503, method="POST", after_acting=True, retry_after="1")
    _, (result,) = run(rig, rig.part.request())
    assert result.outcome is Outcome.SUCCEEDED
    assert rig.posts() == ["rollback"]
    assert rig.probes >= 1


# ---------------------------------------------------------------------------------------------
# undo and revert
# ---------------------------------------------------------------------------------------------


def test_undo_request_comes_from_the_journaled_run_and_reports_health_only(rig: Rig) -> None:
    _, results = run(rig, rig.part.request())
    assert results[0].outcome is Outcome.SUCCEEDED
    undo = rig.part.undo_request(journaled(results))
    assert undo == Request(action="undo", targets={"doai-dashboard": rig.world.current.id}, health_gate=False)

    rig.health = [False]  # 1.4.0 is still broken: undo goes back to it anyway, and says so
    (step,), (result,) = run(rig, undo)
    assert (step.current, step.desired) == (rig.world.expected_target.id, rig.world.current.id)
    assert result.outcome is Outcome.SUCCEEDED
    assert rig.production == rig.world.current.id
    assert rig.posts() == ["rollback", "promote"]
    assert any("reported, not required" in s for s in rig.said)
    # health shown is health observed: "not required" is not "healthy"
    assert "NOT healthy" in result.message and "not required" in result.message, result.message
    assert result.step.details["health"]["healthy"] is False


def test_undo_request_is_none_without_a_succeeded_dashboard_step(rig: Rig) -> None:
    rig.health = [False]
    _, results = run(rig, rig.part.request())
    assert results[0].outcome is Outcome.RESTORED
    backend = StepResult(Step(Part.BACKEND, "vps1", "a" * 40, "b" * 40), Outcome.SUCCEEDED)
    assert rig.part.undo_request(journaled([*results, backend])) is None


def test_undo_of_another_project_is_refused_at_plan_time(rig: Rig) -> None:
    undo = rig.part.request(action="undo", targets={"doai-landing": rig.world.current.id}, health_gate=False)
    with pytest.raises(ValidationError, match="doai-landing"):
        rig.part.plan(rig.ctx, undo)


def test_revert_puts_a_succeeded_rollback_back(rig: Rig) -> None:
    _, results = run(rig, rig.part.request())
    backend = StepResult(Step(Part.BACKEND, "vps1", "a" * 40, "b" * 40), Outcome.SUCCEEDED)
    reverted = rig.part.revert(rig.ctx, [*results, backend], "the backend failed")
    assert [r.outcome for r in reverted] == [Outcome.RESTORED]
    assert "the backend failed" in reverted[0].message
    assert backend.outcome is Outcome.SUCCEEDED  # not the dashboard's to touch
    assert rig.production == rig.world.current.id
    assert rig.posts() == ["rollback", "promote"]


def test_revert_without_vercel_is_not_restored_with_the_commands(rig: Rig) -> None:
    _, results = run(rig, rig.part.request())
    rig.api.arm_drop(count=10**6, after_acting=False)  # nothing answers any more
    (reverted,) = rig.part.revert(rig.ctx, results, "the backend failed")
    assert reverted.outcome is Outcome.NOT_RESTORED
    assert f"vercel promote {rig.world.current.id} --scope {rig.world.team.id}" in reverted.message


# ---------------------------------------------------------------------------------------------
# status and health
# ---------------------------------------------------------------------------------------------


def test_status_has_the_old_shape_plus_configured_and_reachable(rig: Rig) -> None:
    rig.health = [False]
    st = rig.part.status(rig.ctx)
    assert {"project", "production", "lastAliasRequest", "autoAssignCustomDomains", "part", "health_url",
            "healthy", "health"} <= set(st)
    assert (st["part"], st["configured"], st["reachable"], st["healthy"]) == ("dashboard", True, True, False)
    assert st["production"]["id"] == rig.world.current.id
    lines = rig.part.status_lines(json.loads(json.dumps(st)))
    assert lines[0] == f"dashboard doai-dashboard: UNHEALTHY (HTTP 503 from {HEALTH_URL})"
    assert rig.world.current.id in lines[1]
    assert rig.api.mutating_requests() == []


def test_status_when_vercel_cannot_be_reached_is_a_dict_not_an_exception(rig: Rig) -> None:
    rig.api.arm_drop(count=10**6, after_acting=False)
    st = rig.part.status(rig.ctx)
    assert (st["reachable"], st["configured"], st["healthy"]) == (False, True, True)
    assert "cannot reach the Vercel API" in st["error"]
    assert any("UNREACHABLE" in line for line in rig.part.status_lines(st))


def test_health_probes_only_the_health_url(rig: Rig) -> None:
    rig.health = [False]
    h = rig.part.health(rig.ctx)
    assert h == {"healthy": False, "reachable": True, "targets": {HEALTH_URL: False}, "detail": "HTTP 503",
                 "health_url": HEALTH_URL}
    assert rig.api.requests == []
