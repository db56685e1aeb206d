"""Unit tests of doai_ansible.dashboard against the Vercel stand-in, in-process, on a fake clock.

The stand-in answers through an httpx.MockTransport (no sockets); alias jobs advance by polls, and
every wait goes through FakeTime, so deadlines are reached without sleeping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import pytest

from doai_ansible.parts import dashboard
from doai_ansible.errors import ApiError, ExitStatus, LockedError, RollbackFailed, ValidationError
from doai_ansible.model import Outcome, Part
from doai_ansible.settings import Secret, VercelSettings
from doai_ansible.clients.vercel import VercelClient
from tests.standins.vercel_api import DoaiWorld, VercelStandIn, build_doai_world

TOKEN = "canary-dash-0b9d1f27c4e6a8"


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@dataclasses.dataclass
class Rig:
    api: VercelStandIn
    world: DoaiWorld
    settings: VercelSettings
    client: VercelClient
    time: FakeTime
    health: list[bool]  # answers of the health check, the last one repeats
    health_calls: int = 0

    def health_check(self) -> bool:
        self.health_calls += 1
        return self.health[min(self.health_calls, len(self.health)) - 1]

    def posts(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.api.mutating_requests()]


@pytest.fixture
def rig() -> Iterator[Rig]:
    api = VercelStandIn()
    world = build_doai_world(api, TOKEN)
    settings = VercelSettings(
        api_url="http://127.0.0.1:9",  # not contacted: the transport answers in-process
        project="doai-dashboard",
        team_id=world.team.id,
        token=Secret(TOKEN),
        health_url="http://127.0.0.1:9/api/health",
        job_deadline_s=60.0,
        health_deadline_s=30.0,
    )
    fake = FakeTime()
    with VercelClient(settings, transport=api.transport(), sleep=fake.sleep, clock=fake.clock) as client:
        yield Rig(api, world, settings, client, fake, health=[True])


# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------


def test_status_reports_the_live_deployment_with_its_commit(rig: Rig) -> None:
    status = dashboard.dashboard_status(rig.settings, client=rig.client)
    current = rig.world.current
    assert status["project"] == {"id": rig.world.project.id, "name": "doai-dashboard"}
    assert status["production"]["id"] == current.id
    assert status["production"]["url"] == current.url
    assert status["production"]["commit"] == current.meta["githubCommitSha"]
    assert status["production"]["created"].endswith("Z")
    assert status["lastAliasRequest"] is None
    assert rig.api.mutating_requests() == []


def test_status_shows_the_last_alias_request(rig: Rig) -> None:
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    dashboard.apply_dashboard_rollback(
        step, rig.settings, "bad release", client=rig.client, health_check=rig.health_check
    )
    lar = dashboard.dashboard_status(rig.settings, client=rig.client)["lastAliasRequest"]
    assert lar["type"] == "rollback"
    assert lar["fromDeploymentId"] == rig.world.current.id
    assert lar["toDeploymentId"] == rig.world.expected_target.id
    assert lar["jobStatus"] == "succeeded"
    assert lar["requestedAt"].endswith("Z")


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1, 2, 20])
def test_default_target_is_the_newest_ready_production_deployment_older_than_live(rig: Rig, page_size: int) -> None:
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client, page_size=page_size)
    assert step.part is Part.DASHBOARD
    assert step.target == "doai-dashboard"
    assert step.current == rig.world.current.id
    assert step.desired == rig.world.expected_target.id
    assert step.changes
    assert "older than the live one" in step.rule
    assert step.details["to_deployment"]["commit"] == rig.world.expected_target.meta["githubCommitSha"]
    pages = rig.api.requests_to("GET", "/v6/deployments")
    if page_size < 4:  # ERROR and CANCELED builds sit between the live and the target deployment
        assert len(pages) > 1
    assert rig.api.mutating_requests() == []


def test_default_target_moves_on_after_a_rollback(rig: Rig) -> None:
    """Once 1.3.1 is live, the newer READY 1.4.0 must not be picked; 1.3.0 is next."""
    rig.api.set_production(rig.world.project, rig.world.expected_target)
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client, page_size=2)
    assert step.desired == rig.world.older_ready.id


def test_no_older_ready_deployment_is_a_validation_error(rig: Rig) -> None:
    oldest = min(
        (
            d
            for d in rig.api.deployments.values()
            if d.project_id == rig.world.project.id and d.state == "READY" and d.target == "production"
        ),
        key=lambda d: d.created_at,
    )
    rig.api.set_production(rig.world.project, oldest)
    with pytest.raises(ValidationError, match="nothing to roll back to|no READY production"):
        dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)


def test_to_by_id_url_and_host(rig: Rig) -> None:
    target = rig.world.older_ready
    for ref in (target.id, f"https://{target.url}", f"https://{target.url}/", target.url):
        step = dashboard.plan_dashboard_rollback(rig.settings, ref, client=rig.client)
        assert step.desired == target.id
        assert step.rule == f"--to {ref}"


@pytest.mark.parametrize(
    "bad",
    [
        "dpl_abc; rm -rf /",
        "../../v2/user",
        "dpl_ab cd1234",
        "https://x.vercel.app/api/health",
        "",
        "$(id)",
        "dpl_`whoami`",
        "doai-dashboard",
        "dpl_short",
    ],
)
def test_to_with_bad_syntax_is_refused_before_any_request(rig: Rig, bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        dashboard.plan_dashboard_rollback(rig.settings, bad, client=rig.client)
    assert "--to" in str(info.value)
    assert rig.api.requests == []


@pytest.mark.parametrize(
    ("pick", "words"),
    [
        (lambda w: "dpl_doesNotExist1234567890", "no such deployment"),
        (lambda w: w.preview.id, "preview"),
        (lambda w: w.errored.id, "ERROR, not READY"),
        (lambda w: w.canceled.id, "CANCELED, not READY"),
        (lambda w: w.building.id, "BUILDING, not READY"),
        (lambda w: w.other_project_deployment.id, "belongs to project 'doai-landing'"),
        (lambda w: w.other_team_deployment.id, "belongs to project 'acme-web'"),
        (lambda w: "www.doai.me", "belongs to project 'doai-landing'"),
    ],
)
def test_to_must_be_a_ready_production_deployment_of_this_project(rig: Rig, pick, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        dashboard.plan_dashboard_rollback(rig.settings, pick(rig.world), client=rig.client)
    assert words in str(info.value)
    assert info.value.exit_status == ExitStatus.USAGE
    assert rig.api.mutating_requests() == []


def test_to_the_live_deployment_plans_no_change_and_applies_nothing(rig: Rig) -> None:
    step = dashboard.plan_dashboard_rollback(rig.settings, "dashboard.doai.me", client=rig.client)
    assert step.current == step.desired == rig.world.current.id
    assert not step.changes
    result = dashboard.apply_dashboard_rollback(
        step, rig.settings, "x", client=rig.client, health_check=rig.health_check
    )
    assert result.outcome is Outcome.UNCHANGED
    assert rig.api.mutating_requests() == []


def test_wrong_project_name_says_what_to_check(rig: Rig) -> None:
    settings = dataclasses.replace(rig.settings, project="doai-dashbaord")
    with pytest.raises(ApiError) as info:
        dashboard.plan_dashboard_rollback(settings, client=rig.client)
    assert info.value.status_code == 404
    assert "vercel.project" in str(info.value)


# ---------------------------------------------------------------------------------------------
# apply
# ---------------------------------------------------------------------------------------------


def test_rollback_follows_the_job_then_the_health_gate(rig: Rig) -> None:
    rig.health = [False, False, True]
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    seen: list[str] = []
    result = dashboard.apply_dashboard_rollback(
        step, rig.settings, "1.4.0 breaks login", client=rig.client, health_check=rig.health_check, progress=seen.append
    )
    assert result.outcome is Outcome.SUCCEEDED
    assert rig.api.production_of(rig.world.project) == rig.world.expected_target.id
    (post,) = rig.api.mutating_requests()
    assert post.path == f"/v9/projects/{rig.world.project.id}/rollback/{rig.world.expected_target.id}"
    assert post.query["description"] == "1.4.0 breaks login"
    assert post.query["teamId"] == rig.world.team.id
    assert any("pending" in s for s in seen) and any("succeeded" in s for s in seen)
    assert rig.health_calls == 3
    assert result.step.details["job"]["jobStatus"] == "succeeded"
    assert result.step.details["health"]["healthy"] is True
    assert result.duration_s is not None and result.finished is not None
    assert "job" not in step.details  # the plan handed in is not modified


def failing_rollback(rig: Rig) -> pytest.ExceptionInfo[RollbackFailed]:
    """Plan the default rollback, apply it, and return the RollbackFailed it must raise."""
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    with pytest.raises(RollbackFailed) as info:
        dashboard.apply_dashboard_rollback(step, rig.settings, "r", client=rig.client, health_check=rig.health_check)
    return info


def test_a_failed_job_that_left_production_alone_is_restored(rig: Rig) -> None:
    rig.api.queue_job_outcomes("failed")
    info = failing_rollback(rig)
    exc = info.value
    assert exc.restored is True
    assert exc.exit_status == ExitStatus.FAILED_RESTORED
    assert exc.result.outcome is Outcome.RESTORED
    assert exc.result.step.details["failedAliases"] == [
        {"alias": "dashboard.doai.me", "deploymentId": rig.world.current.id, "status": "failed"}
    ]
    assert "dashboard.doai.me" in str(exc)
    assert rig.api.production_of(rig.world.project) == rig.world.current.id
    assert rig.health_calls == 0
    assert rig.api.requests_to("GET", r"/v9/projects/[^/]+/rollback/aliases")


def test_a_failed_job_that_moved_production_is_promoted_back(rig: Rig) -> None:
    rig.api.queue_job_outcomes("failed", "succeeded")
    rig.api.failure_moves_production = True
    info = failing_rollback(rig)
    assert info.value.restored is True
    assert info.value.result.outcome is Outcome.RESTORED
    assert rig.api.production_of(rig.world.project) == rig.world.current.id
    assert [r.path.split("/")[-2] for r in rig.api.mutating_requests()] == ["rollback", "promote"]


def test_failed_health_gate_promotes_the_original_back(rig: Rig) -> None:
    rig.health = [False]
    info = failing_rollback(rig)
    exc = info.value
    assert exc.restored is True and exc.result.outcome is Outcome.RESTORED
    assert "health gate failed" in str(exc)
    assert rig.api.production_of(rig.world.project) == rig.world.current.id
    promote = rig.api.mutating_requests()[-1]
    assert promote.path == f"/v10/projects/{rig.world.project.id}/promote/{rig.world.current.id}"
    assert rig.health_calls > 3
    assert rig.time.now >= rig.settings.health_deadline_s  # it waited for the whole deadline...
    assert max(rig.time.sleeps) <= dashboard.POLL_MAX_S  # ...polling with backoff, not one long sleep


def test_failed_health_gate_and_failed_promote_back_is_not_restored(rig: Rig) -> None:
    rig.health = [False]
    rig.api.queue_job_outcomes("succeeded", "failed")
    info = failing_rollback(rig)
    exc = info.value
    assert exc.restored is False
    assert exc.exit_status == ExitStatus.FAILED_NOT_RESTORED
    assert exc.result.outcome is Outcome.NOT_RESTORED
    assert rig.world.current.id in (exc.hint or "")
    assert rig.api.production_of(rig.world.project) == rig.world.expected_target.id


def test_a_job_that_never_finishes_hits_the_deadline(rig: Rig) -> None:
    rig.api.stage_polls = 10**6
    info = failing_rollback(rig)
    assert info.value.restored is False
    assert "still pending" in str(info.value)
    assert rig.settings.job_deadline_s <= rig.time.now < rig.settings.job_deadline_s + dashboard.POLL_MAX_S + 1


def test_a_running_alias_job_blocks_the_rollback(rig: Rig) -> None:
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    rig.client.request_rollback(rig.world.project.id, rig.world.older_ready.id, "someone else")
    before = len(rig.api.mutating_requests())
    with pytest.raises(LockedError):
        dashboard.apply_dashboard_rollback(step, rig.settings, "r", client=rig.client, health_check=rig.health_check)
    assert len(rig.api.mutating_requests()) == before


def test_production_changed_since_the_plan_is_refused(rig: Rig) -> None:
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    rig.api.set_production(rig.world.project, rig.world.older_ready)
    with pytest.raises(ValidationError, match="plan again"):
        dashboard.apply_dashboard_rollback(step, rig.settings, "r", client=rig.client, health_check=rig.health_check)
    assert rig.api.mutating_requests() == []


def test_a_rollback_refused_before_acting_changes_nothing(rig: Rig) -> None:
    rig.api.arm_unavailable(status=500, method="POST")
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    with pytest.raises(ApiError) as info:
        dashboard.apply_dashboard_rollback(step, rig.settings, "r", client=rig.client, health_check=rig.health_check)
    assert info.value.status_code == 500
    assert len(rig.api.mutating_requests()) == 1  # a 500 on a POST is not replayed blindly
    assert rig.api.production_of(rig.world.project) == rig.world.current.id


def test_a_lost_answer_after_vercel_accepted_is_followed_not_repeated(rig: Rig) -> None:
    rig.api.arm_unavailable(status=502, method="POST", after_acting=True)
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    result = dashboard.apply_dashboard_rollback(
        step, rig.settings, "r", client=rig.client, health_check=rig.health_check
    )
    assert result.outcome is Outcome.SUCCEEDED
    assert len(rig.api.mutating_requests()) == 1
    assert rig.api.production_of(rig.world.project) == rig.world.expected_target.id


def test_undo_promotes_the_deployment_that_was_live_before(rig: Rig) -> None:
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    dashboard.apply_dashboard_rollback(step, rig.settings, "r", client=rig.client, health_check=rig.health_check)
    undo = dashboard.plan_dashboard_promote(rig.settings, step.current or "", client=rig.client)
    assert (undo.current, undo.desired) == (rig.world.expected_target.id, rig.world.current.id)
    result = dashboard.promote_dashboard(undo, rig.settings, client=rig.client, health_check=rig.health_check)
    assert result.outcome is Outcome.SUCCEEDED
    assert rig.api.production_of(rig.world.project) == rig.world.current.id
    assert (
        rig.api.mutating_requests()[-1].path == f"/v10/projects/{rig.world.project.id}/promote/{rig.world.current.id}"
    )


def test_a_queued_promote_is_followed_until_done(rig: Rig) -> None:
    rig.api.promote_queued = True
    undo = dashboard.plan_dashboard_promote(rig.settings, rig.world.older_ready.id, client=rig.client)
    seen: list[str] = []
    result = dashboard.promote_dashboard(
        undo, rig.settings, client=rig.client, health_check=rig.health_check, progress=seen.append
    )
    assert result.outcome is Outcome.SUCCEEDED
    assert any("queued" in s for s in seen)
    assert result.step.details["requested"]["queued"] is True


# ---------------------------------------------------------------------------------------------
# the health gate on its own, and --to syntax
# ---------------------------------------------------------------------------------------------


def test_wait_healthy_polls_with_growing_waits_until_healthy() -> None:
    fake = FakeTime()
    answers = iter([False, False, False, True])
    ok, detail = dashboard.wait_healthy(
        VercelSettings(health_deadline_s=60), health_check=lambda: next(answers), sleep=fake.sleep, clock=fake.clock
    )
    assert ok and "after 4 probe(s)" in detail
    assert fake.sleeps == sorted(fake.sleeps) and fake.sleeps[0] < fake.sleeps[-1]


def test_a_health_check_that_raises_counts_as_unhealthy() -> None:
    fake = FakeTime()

    def boom() -> bool:
        raise ConnectionError("refused")

    ok, detail = dashboard.wait_healthy(
        VercelSettings(health_deadline_s=5), health_check=boom, sleep=fake.sleep, clock=fake.clock
    )
    assert not ok and "ConnectionError" in detail


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (204, True), (301, False), (503, False)])
def test_probe_health_wants_2xx(status: int, healthy: bool) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, headers={"Location": "/login"} if status == 301 else {})

    ok, detail = dashboard.probe_health("http://127.0.0.1:9/api/health", 1.0, transport=httpx.MockTransport(answer))
    assert ok is healthy and str(status) in detail
    assert "authorization" not in seen[0].headers  # the Vercel token never goes to the health URL


@pytest.mark.parametrize(
    ("value", "ref"),
    [
        ("dpl_2euZBFqxYdDMDG1jTrHFnNZ2eUVa", "dpl_2euZBFqxYdDMDG1jTrHFnNZ2eUVa"),
        ("https://Doai-Dashboard-9jaeg38me-doai.vercel.app/", "doai-dashboard-9jaeg38me-doai.vercel.app"),
        (" doai-dashboard-9jaeg38me-doai.vercel.app ", "doai-dashboard-9jaeg38me-doai.vercel.app"),
    ],
)
def test_normalize_deployment_ref(value: str, ref: str) -> None:
    assert dashboard.normalize_deployment_ref(value) == ref
