"""Our Vercel client and dashboard core against the stand-in over real HTTP, with a real health URL."""

from __future__ import annotations

import datetime as _dt
import email.utils
import json
import logging
from typing import TYPE_CHECKING

import pytest

from doai_ansible.parts import dashboard
from doai_ansible.errors import ApiError, ExitStatus, RollbackFailed, ValidationError
from doai_ansible.model import Outcome
from doai_ansible.settings import Secret
from doai_ansible.clients.vercel import VercelClient

if TYPE_CHECKING:  # imported by pytest_plugins; importing it here first would defeat assert rewriting
    from tests.integration.conftest_vercel import VercelRig

pytest_plugins = ["tests.integration.conftest_vercel"]
pytestmark = pytest.mark.integration


def test_rollback_picks_the_target_across_pages_follows_the_job_and_passes_the_health_gate(
    vercel_rig: VercelRig,
) -> None:
    rig = vercel_rig
    settings = rig.settings()
    rig.api.ignored_filters.add("rollbackCandidate")  # so the client's own checks and paging are exercised
    step = dashboard.plan_dashboard_rollback(settings, page_size=2)
    assert (step.current, step.desired) == (rig.world.current.id, rig.world.expected_target.id)
    assert step.desired != rig.world.staged.id  # newer, READY, production, but never live
    pages = rig.api.requests_to("GET", "/v6/deployments")
    assert len(pages) >= 2 and "until" in pages[1].query
    assert all(p.query["projectId"] == rig.world.project.id and p.query["target"] == "production" for p in pages)
    assert all(p.query["rollbackCandidate"] == "true" for p in pages)
    assert rig.api.mutating_requests() == []
    assert rig.health.hits == []

    result = dashboard.apply_dashboard_rollback(step, settings, "1.4.0 breaks the login page")

    assert result.outcome is Outcome.SUCCEEDED
    assert rig.api.production_of(rig.world.project) == rig.world.expected_target.id
    polls = rig.api.requests_to("GET", rf"/v9/projects/{rig.world.project.id}")
    assert [p.query.get("rollbackInfo") for p in polls].count("true") >= 3  # pending, in-progress, succeeded
    assert rig.health.hits and rig.health.hits[-1] == 200
    status = dashboard.dashboard_status(settings)
    assert status["production"]["id"] == rig.world.expected_target.id
    assert status["lastAliasRequest"]["jobStatus"] == "succeeded"


def test_a_failed_job_reports_the_failed_aliases_and_the_failed_exit_code(vercel_rig: VercelRig) -> None:
    rig = vercel_rig
    rig.api.queue_job_outcomes("failed")
    settings = rig.settings()
    step = dashboard.plan_dashboard_rollback(settings)
    with pytest.raises(RollbackFailed) as info:
        dashboard.apply_dashboard_rollback(step, settings, "bad release")
    exc = info.value
    assert exc.exit_status == ExitStatus.FAILED_RESTORED
    assert exc.result.outcome is Outcome.RESTORED
    assert "dashboard.doai.me" in exc.message
    assert [a["alias"] for a in exc.result.step.details["failedAliases"]] == ["dashboard.doai.me"]
    (aliases,) = rig.api.requests_to("GET", rf"/v9/projects/{rig.world.project.id}/rollback/aliases")
    assert aliases.query["failedOnly"] == "true"
    assert rig.api.production_of(rig.world.project) == rig.world.current.id
    assert rig.health.hits == []  # no gate after a failed job


def test_an_unhealthy_target_is_promoted_back(vercel_rig: VercelRig) -> None:
    rig = vercel_rig
    rig.health.status = lambda: 503
    settings = rig.settings(health_deadline_s=1.0)
    step = dashboard.plan_dashboard_rollback(settings)
    with pytest.raises(RollbackFailed) as info:
        dashboard.apply_dashboard_rollback(step, settings, "bad release")
    assert info.value.exit_status == ExitStatus.FAILED_RESTORED
    assert len(rig.health.hits) >= 2
    assert rig.api.production_of(rig.world.project) == rig.world.current.id
    assert [r.method + " " + r.path.split("/")[4] for r in rig.api.mutating_requests()] == [
        "POST rollback",
        "POST promote",
    ]


def test_rate_limit_and_a_one_off_503_are_retried(vercel_rig: VercelRig) -> None:
    rig = vercel_rig
    rig.api.arm_rate_limit(retry_after="1", path_prefix="/v6/deployments")
    rig.api.arm_unavailable(path_prefix="/v9/projects")
    step = dashboard.plan_dashboard_rollback(rig.settings())
    assert step.desired == rig.world.expected_target.id
    statuses = [(r.path.split("/")[2], r.status) for r in rig.api.requests]
    assert ("projects", 503) in statuses and ("deployments", 429) in statuses
    assert statuses.index(("deployments", 429)) < statuses.index(("deployments", 200))


def test_retry_after_as_an_http_date(vercel_rig: VercelRig) -> None:
    rig = vercel_rig
    when = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=1)
    rig.api.arm_rate_limit(retry_after=email.utils.format_datetime(when, usegmt=True))
    assert dashboard.dashboard_status(rig.settings())["production"]["id"] == rig.world.current.id
    assert [r.status for r in rig.api.requests][:2] == [429, 200]


def test_retries_are_bounded(vercel_rig: VercelRig) -> None:
    rig = vercel_rig
    rig.api.arm_unavailable(count=100)
    with pytest.raises(ApiError) as info:
        dashboard.dashboard_status(rig.settings(max_retries=2))
    assert info.value.exit_status == ExitStatus.UNREACHABLE
    assert len(rig.api.requests) == 3


@pytest.mark.parametrize(
    "pick",
    [
        lambda w: "dpl_x && curl evil",
        lambda w: "dpl_DoesNotExist0123456789",
        lambda w: w.preview.id,
        lambda w: w.errored.id,
        lambda w: w.other_project_deployment.url,
        lambda w: w.other_team_deployment.id,
        lambda w: w.staged.id,
    ],
    ids=["shell", "unknown", "preview", "error", "other-project", "other-team", "never-live"],
)
def test_an_invalid_to_is_refused_with_no_mutating_request(vercel_rig: VercelRig, pick) -> None:
    rig = vercel_rig
    with pytest.raises(ValidationError) as info:
        dashboard.plan_dashboard_rollback(rig.settings(), pick(rig.world))
    assert info.value.exit_status == ExitStatus.USAGE
    assert rig.api.mutating_requests() == []
    assert rig.api.production_of(rig.world.project) == rig.world.current.id


def test_a_rollback_processed_then_answered_503_is_followed_once_over_http(vercel_rig: VercelRig) -> None:
    """The defect: the client re-sent the POST, got 409, and the run ended LOCKED with no health gate."""
    rig = vercel_rig
    settings = rig.settings()
    rig.api.arm_unavailable(status=503, method="POST", after_acting=True, retry_after="1")
    step = dashboard.plan_dashboard_rollback(settings)
    result = dashboard.apply_dashboard_rollback(step, settings, "1.4.0 breaks the login page")
    assert result.outcome is Outcome.SUCCEEDED
    assert [(r.method, r.status) for r in rig.api.mutating_requests()] == [("POST", 503)]
    assert rig.api.production_of(rig.world.project) == rig.world.expected_target.id
    assert rig.health.hits and rig.health.hits[-1] == 200  # the gate ran on the job it followed


def test_a_rollback_whose_connection_drops_after_acting_is_followed_once_over_http(vercel_rig: VercelRig) -> None:
    rig = vercel_rig
    settings = rig.settings()
    rig.api.arm_drop(method="POST")
    step = dashboard.plan_dashboard_rollback(settings)
    result = dashboard.apply_dashboard_rollback(step, settings, "bad release")
    assert result.outcome is Outcome.SUCCEEDED
    assert [(r.method, r.status) for r in rig.api.mutating_requests()] == [("POST", 0)]  # 0: no answer
    assert rig.api.production_of(rig.world.project) == rig.world.expected_target.id


def test_api_down_after_the_post_ends_not_restored_with_commands_over_http(vercel_rig: VercelRig) -> None:
    rig = vercel_rig
    settings = rig.settings(max_retries=1)
    rig.api.arm_outage(method="POST")
    step = dashboard.plan_dashboard_rollback(settings)
    with pytest.raises(RollbackFailed) as info:
        dashboard.apply_dashboard_rollback(step, settings, "bad release")
    exc = info.value
    assert exc.exit_status == ExitStatus.FAILED_NOT_RESTORED
    assert exc.result.outcome is Outcome.NOT_RESTORED
    team = rig.world.team.id
    assert f"vercel rollback status doai-dashboard --scope {team}" in exc.result.message
    assert f"vercel promote {rig.world.current.id} --scope {team}" in exc.result.message
    assert len(rig.api.mutating_requests()) == 1


def test_the_token_never_appears_in_logs_errors_or_results(
    vercel_rig: VercelRig, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = vercel_rig
    caplog.set_level(logging.DEBUG)  # httpx and httpcore too: they log every request
    texts: list[str] = []
    settings = rig.settings(health_deadline_s=1.0)
    with VercelClient(settings) as client:
        texts.append(repr(client))
        texts.append(repr(settings))
        texts.append(json.dumps(dashboard.dashboard_status(settings, client=client)))
        rig.api.arm_rate_limit(retry_after="0")
        rig.api.arm_unavailable()
        step = dashboard.plan_dashboard_rollback(settings, client=client)
        texts.append(json.dumps(step.to_dict()))
        rig.health.status = lambda: 503
        with pytest.raises(RollbackFailed) as failed:
            dashboard.apply_dashboard_rollback(step, settings, "canary check", client=client, progress=print)
        texts += [str(failed.value), repr(failed.value), json.dumps(failed.value.result.to_dict())]
        with pytest.raises(ValidationError) as invalid:
            dashboard.plan_dashboard_rollback(settings, "dpl_nope0000000000000", client=client)
        texts.append(str(invalid.value))
    wrong = rig.settings(token=Secret(rig.token + "x"))  # a wrong token: 401
    with pytest.raises(ApiError) as denied:
        dashboard.dashboard_status(wrong)
    assert "VERCEL_TOKEN" in str(denied.value)
    texts += [str(denied.value), repr(denied.value), denied.value.hint or ""]
    out = capsys.readouterr()
    texts += [caplog.text, out.out, out.err]
    assert "HTTP Request" in caplog.text and "retrying" in caplog.text  # the logs did capture requests
    for text in texts:
        assert rig.token not in text
