"""Unit tests of doai_ansible.parts.dashboard against the Vercel stand-in, in-process, on a fake clock.

The stand-in answers through an httpx.MockTransport (no sockets); alias jobs advance by polls, and
every wait goes through FakeTime, so deadlines are reached without sleeping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import pytest

from doai_ansible.parts import dashboard
from doai_ansible.errors import ApiError, ExitStatus, LockedError, RollbackFailed, UnreachableError, ValidationError
from doai_ansible.model import Outcome, Part, StepResult
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
@pytest.mark.parametrize("server_filters", [True, False], ids=["server-filters", "server-ignores-rollbackCandidate"])
def test_default_target_is_the_newest_rollback_candidate_older_than_live(
    rig: Rig, page_size: int, server_filters: bool
) -> None:
    """Not the staged 1.3.2 (READY, production, never live), although it is newer than 1.3.1."""
    if not server_filters:
        rig.api.ignored_filters.add("rollbackCandidate")
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client, page_size=page_size)
    assert step.part is Part.DASHBOARD
    assert step.target == "doai-dashboard"
    assert step.current == rig.world.current.id
    assert step.desired == rig.world.expected_target.id != rig.world.staged.id
    assert step.changes
    assert "older than the live one" in step.rule and "rollback candidate" in step.rule
    assert step.details["to_deployment"]["commit"] == rig.world.expected_target.meta["githubCommitSha"]
    pages = rig.api.requests_to("GET", "/v6/deployments")
    assert all(p.query["rollbackCandidate"] == "true" and p.query["target"] == "production" for p in pages)
    if server_filters:
        assert len(pages) == 1  # the first candidate older than the live one is the target
    elif page_size < 5:  # ERROR, CANCELED and the staged build sit between the live and the target
        assert len(pages) > 1
        assert all("until" in p.query for p in pages)
    assert rig.api.mutating_requests() == []


def test_the_listing_of_the_stand_in_marks_a_staged_build_as_no_candidate(rig: Rig) -> None:
    items = {d["uid"]: d for d in rig.client.list_deployments(project_id=rig.world.project.id, limit=100)}
    assert items[rig.world.staged.id]["isRollbackCandidate"] is False
    assert items[rig.world.staged.id]["readySubstate"] == "STAGED"
    assert items[rig.world.expected_target.id]["isRollbackCandidate"] is True
    candidates = list(rig.client.list_deployments(project_id=rig.world.project.id, rollback_candidate=True))
    assert rig.world.staged.id not in {d["uid"] for d in candidates}


def test_an_explicit_to_that_was_never_live_is_refused_at_plan_time(rig: Rig) -> None:
    staged = rig.world.staged
    for ref in (staged.id, staged.url):
        with pytest.raises(ValidationError) as info:
            dashboard.plan_dashboard_rollback(rig.settings, ref, client=rig.client)
        why = f"deployment {staged.id} was never live in production (not a rollback candidate); Vercel cannot"
        assert f"{why} roll back to it" in str(info.value)
        assert info.value.exit_status == ExitStatus.USAGE
    assert rig.api.mutating_requests() == []


def test_a_staged_build_is_a_candidate_once_it_was_promoted(rig: Rig) -> None:
    staged = rig.world.staged
    promote = dashboard.plan_dashboard_promote(rig.settings, staged.id, client=rig.client)
    assert dashboard.promote_dashboard(promote, rig.settings, client=rig.client,
                                       health_check=rig.health_check).outcome is Outcome.SUCCEEDED
    rig.api.set_production(rig.world.project, rig.world.current)  # a newer release went live again
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    assert step.desired == staged.id


@pytest.mark.parametrize(("field", "refused", "noted"), [(False, True, False), (None, False, True), (True, False, False)])
def test_rollback_candidacy_as_vercel_reports_it(field: bool | None, refused: bool, noted: bool) -> None:
    dep = {"id": "dpl_abcdefgh1234", "target": "production", "readyState": "READY"}
    if field is not None:
        dep["isRollbackCandidate"] = field
    if refused:
        with pytest.raises(ValidationError, match="not a rollback candidate"):
            dashboard._check_rollback_candidate(dep, "dpl_abcdefgh1234")
    else:
        note = dashboard._check_rollback_candidate(dep, "dpl_abcdefgh1234")
        assert (note is not None) is noted


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
    with pytest.raises(ValidationError, match="nothing to roll back to") as info:
        dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    assert "no rollback candidate" in str(info.value)


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
    assert "did not start the rollback" in str(info.value) and "nothing was changed" in str(info.value)
    assert len(rig.api.mutating_requests()) == 1  # a 500 on a POST is not replayed blindly
    assert rig.api.production_of(rig.world.project) == rig.world.current.id


# ---------------------------------------------------------------------------------------------
# ambiguous answers to the POST: look at lastAliasRequest, never send it again blindly
# ---------------------------------------------------------------------------------------------


def apply_default(rig: Rig) -> StepResult:
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    return dashboard.apply_dashboard_rollback(step, rig.settings, "r", client=rig.client, health_check=rig.health_check)


def kinds(rig: Rig) -> list[str]:
    return [r.path.split("/")[-2] for r in rig.api.mutating_requests()]


@pytest.mark.parametrize(
    "arm",
    [
        lambda api: api.arm_unavailable(status=503, method="POST", after_acting=True, retry_after="2"),
        lambda api: api.arm_unavailable(status=503, method="POST", after_acting=True),
        lambda api: api.arm_unavailable(status=502, method="POST", after_acting=True),
        lambda api: api.arm_drop(method="POST"),
    ],
    ids=["processed-then-503-retry-after", "processed-then-503", "processed-then-502", "processed-then-dropped"],
)
def test_an_accepted_post_with_a_lost_answer_is_followed_not_sent_again(rig: Rig, arm) -> None:
    """The defect: a re-sent POST got 409 and the run ended LOCKED while the first job ran ungated."""
    arm(rig.api)
    rig.health = [False, True]
    result = apply_default(rig)
    assert result.outcome is Outcome.SUCCEEDED
    assert kinds(rig) == ["rollback"]  # one POST
    assert rig.api.production_of(rig.world.project) == rig.world.expected_target.id
    assert rig.health_calls == 2  # the health gate ran on the job we followed
    assert result.step.details["job"]["jobStatus"] == "succeeded"


def test_an_accepted_post_with_a_lost_answer_still_has_its_health_gate_and_restore(rig: Rig) -> None:
    rig.api.arm_unavailable(status=503, method="POST", after_acting=True, retry_after="1")
    rig.health = [False]
    info = failing_rollback(rig)
    assert info.value.restored is True and info.value.result.outcome is Outcome.RESTORED
    assert kinds(rig) == ["rollback", "promote"]
    assert rig.api.production_of(rig.world.project) == rig.world.current.id


@pytest.mark.parametrize(
    ("arm", "wait"),
    [
        (lambda api: api.arm_unavailable(status=503, method="POST", retry_after="4"), 4.0),
        (lambda api: api.arm_rate_limit(method="POST", retry_after="3"), 3.0),
    ],
    ids=["503", "429"],
)
def test_a_post_that_verifiably_did_not_start_is_sent_once_more_after_retry_after(rig: Rig, arm, wait: float) -> None:
    arm(rig.api)
    result = apply_default(rig)
    assert result.outcome is Outcome.SUCCEEDED
    assert kinds(rig) == ["rollback", "rollback"]
    assert [r.status for r in rig.api.mutating_requests()] == [503 if wait == 4.0 else 429, 201]
    assert wait in rig.time.sleeps  # it waited as long as Vercel said
    assert rig.api.production_of(rig.world.project) == rig.world.expected_target.id


def test_a_post_refused_twice_ends_with_nothing_changed(rig: Rig) -> None:
    rig.api.arm_unavailable(status=503, method="POST", retry_after="1", count=2)
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    with pytest.raises(ApiError) as info:
        dashboard.apply_dashboard_rollback(step, rig.settings, "r", client=rig.client, health_check=rig.health_check)
    assert info.value.exit_status == ExitStatus.UNREACHABLE and "nothing was changed" in str(info.value)
    assert kinds(rig) == ["rollback", "rollback"]  # once more, not more
    assert rig.api.production_of(rig.world.project) == rig.world.current.id


@pytest.mark.parametrize(
    ("arm", "error"),
    [
        (lambda api: api.arm_unavailable(status=503, method="POST"), ApiError),  # no Retry-After: no second POST
        (lambda api: api.arm_drop(method="POST", after_acting=False), UnreachableError),
    ],
    ids=["503-without-retry-after", "dropped-unseen"],
)
def test_a_post_that_verifiably_did_not_start_and_may_not_be_resent_changes_nothing(rig: Rig, arm, error) -> None:
    arm(rig.api)
    step = dashboard.plan_dashboard_rollback(rig.settings, client=rig.client)
    with pytest.raises(error) as info:
        dashboard.apply_dashboard_rollback(step, rig.settings, "r", client=rig.client, health_check=rig.health_check)
    assert "did not start the rollback" in str(info.value) and "nothing was changed" in str(info.value)
    assert kinds(rig) == ["rollback"]
    assert rig.api.projects[rig.world.project.id].last_alias_request is None


def assert_by_hand(rig: Rig, exc: RollbackFailed) -> None:
    """NOT_RESTORED, and the message has the exact commands to check and to undo."""
    team = rig.world.team.id
    assert exc.restored is False
    assert exc.exit_status == ExitStatus.FAILED_NOT_RESTORED  # never UNREACHABLE ("nothing was changed")
    assert exc.result.outcome is Outcome.NOT_RESTORED
    assert f"`vercel rollback status doai-dashboard --scope {team}`" in exc.result.message
    assert f"`vercel promote {rig.world.current.id} --scope {team}`" in exc.result.message
    assert exc.result.step.details["by_hand"] == [
        f"vercel rollback status doai-dashboard --scope {team}",
        f"vercel promote {rig.world.current.id} --scope {team}",
    ]


def test_api_down_right_after_an_accepted_post_is_not_restored_with_the_commands(rig: Rig) -> None:
    rig.api.arm_outage(method="POST")  # the POST is answered 201, then nothing answers
    info = failing_rollback(rig)
    assert_by_hand(rig, info.value)
    assert "lost track of the Vercel rollback job" in info.value.result.message
    assert kinds(rig) == ["rollback"]
    rig.api.end_outage()  # the rollback did happen: Vercel finishes the job once we look again
    for _ in range(3):
        dashboard.dashboard_status(rig.settings, client=rig.client)
    assert rig.api.production_of(rig.world.project) == rig.world.expected_target.id


def test_api_down_with_the_answer_of_the_post_lost_is_not_restored_with_the_commands(rig: Rig) -> None:
    rig.api.arm_outage(method="POST", answer=False)
    info = failing_rollback(rig)
    assert_by_hand(rig, info.value)
    assert "may or may not have started" in info.value.result.message
    assert kinds(rig) == ["rollback"]
    assert rig.api.projects[rig.world.project.id].last_alias_request is not None  # it had started


def test_errors_while_following_the_job_end_not_restored_not_unreachable(rig: Rig) -> None:
    # reads of the project by id (the job's polls) fail; the preflight reads it by name
    rig.api.arm_unavailable(status=503, method="GET", path_prefix=f"/v9/projects/{rig.world.project.id}", count=10**6)
    info = failing_rollback(rig)
    assert_by_hand(rig, info.value)
    assert kinds(rig) == ["rollback"]


def test_lost_api_while_following_that_comes_back_is_restored(rig: Rig) -> None:
    # the follow's first read and its 5 retries are dropped; then the API answers again
    rig.api.arm_outage(method="POST", for_requests=rig.settings.max_retries + 1)
    info = failing_rollback(rig)
    assert info.value.restored is True and info.value.result.outcome is Outcome.RESTORED
    assert "lost track" in info.value.result.message
    assert kinds(rig) == ["rollback", "promote"]  # waited for the running job, then promoted back
    assert rig.api.production_of(rig.world.project) == rig.world.current.id
    assert rig.health_calls == 0


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
