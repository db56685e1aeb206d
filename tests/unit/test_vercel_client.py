"""Unit tests of doai_ansible.clients.vercel.VercelClient over httpx.MockTransport (no network, no sleeping)."""

from __future__ import annotations

import datetime as _dt
import email.utils
import logging
from collections.abc import Callable

import httpx
import pytest

from doai_ansible.errors import ApiError, ConfigError, ExitStatus, UnreachableError, ValidationError
from doai_ansible.settings import Secret, VercelSettings
from doai_ansible.clients.vercel import VercelApiError, VercelClient, parse_retry_after

TOKEN = "canary-unit-7f3a9c1e55d04b2b"
API = "http://127.0.0.1:9"  # never contacted: every test replaces the transport


class FakeTime:
    """sleep() advances clock() instead of waiting; every wait is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def settings(**kw: object) -> VercelSettings:
    base: dict[str, object] = {
        "api_url": API,
        "project": "doai-dashboard",
        "team_id": "team_abc123",
        "token": Secret(TOKEN),
        "timeout_s": 7.0,
        "max_retries": 3,
    }
    base.update(kw)
    return VercelSettings(**base)  # type: ignore[arg-type]


Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that answers from a list (the last answer repeats) and logs requests."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer


def client_for(rec: Recorder, fake: FakeTime | None = None, **kw: object) -> VercelClient:
    fake = fake or FakeTime()
    max_wait = kw.pop("max_wait_s", 30.0)
    return VercelClient(
        settings(**kw),
        transport=httpx.MockTransport(rec),
        sleep=fake.sleep,
        clock=fake.clock,
        max_wait_s=max_wait,  # type: ignore[arg-type]
    )


def ok(body: object = None, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body if body is not None else {}, headers=headers)


def err(status: int, code: str = "x", message: str = "m", **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


# ---------------------------------------------------------------------------------------------
# requests: paths, scope, auth, timeouts
# ---------------------------------------------------------------------------------------------


def test_get_project_sends_token_team_scope_rollback_info_and_timeout() -> None:
    rec = Recorder(ok({"id": "prj_1", "name": "doai-dashboard"}))
    with client_for(rec) as c:
        assert c.get_project()["id"] == "prj_1"
    (req,) = rec.requests
    assert req.method == "GET"
    assert req.url.path == "/v9/projects/doai-dashboard"
    assert dict(req.url.params) == {"teamId": "team_abc123", "rollbackInfo": "true"}
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.extensions["timeout"] == {"connect": 7.0, "read": 7.0, "write": 7.0, "pool": 7.0}


def test_team_slug_is_used_when_there_is_no_team_id() -> None:
    rec = Recorder(ok({"deployments": [], "pagination": {"count": 0, "next": None}}))
    with client_for(rec, team_id=None, team_slug="doai") as c:
        assert list(c.list_deployments(project_id="prj_1", limit=5)) == []
    params = dict(rec.requests[0].url.params)
    assert params == {"slug": "doai", "projectId": "prj_1", "target": "production", "limit": "5"}


def test_request_rollback_posts_reason_as_description_with_a_json_body() -> None:
    rec = Recorder(httpx.Response(201))
    with client_for(rec) as c:
        c.request_rollback("prj_1", "dpl_abcdefgh12", "bad release 1.4.0")
    (req,) = rec.requests
    assert (req.method, req.url.path) == ("POST", "/v9/projects/prj_1/rollback/dpl_abcdefgh12")
    assert req.url.params["description"] == "bad release 1.4.0"
    assert req.url.params["teamId"] == "team_abc123"
    assert req.content == b"{}"


@pytest.mark.parametrize(("status", "queued"), [(201, False), (202, True), (200, False)])
def test_promote_reports_whether_vercel_only_queued_it(status: int, queued: bool) -> None:
    rec = Recorder(httpx.Response(status))
    with client_for(rec) as c:
        assert c.promote("prj_1", "dpl_abcdefgh12") is queued
    assert rec.requests[0].url.path == "/v10/projects/prj_1/promote/dpl_abcdefgh12"


def test_get_deployment_by_host_uses_v13() -> None:
    rec = Recorder(ok({"id": "dpl_abcdefgh12"}))
    with client_for(rec) as c:
        assert c.get_deployment("doai-dashboard-abc-doai.vercel.app")["id"] == "dpl_abcdefgh12"
    assert rec.requests[0].url.path == "/v13/deployments/doai-dashboard-abc-doai.vercel.app"


@pytest.mark.parametrize("bad", ["../v2/user", "dpl_x?teamId=other", "a b", "", "x#y", "a%2Fb"])
def test_a_value_that_would_change_the_path_is_refused_before_any_request(bad: str) -> None:
    rec = Recorder(ok())
    with client_for(rec) as c, pytest.raises(ValidationError):
        c.get_deployment(bad)
    assert rec.requests == []


def test_missing_token_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        VercelClient(settings(token=None), transport=httpx.MockTransport(Recorder(ok())))
    assert info.value.key == "VERCEL_TOKEN"


# ---------------------------------------------------------------------------------------------
# pagination
# ---------------------------------------------------------------------------------------------


def _pages(request: httpx.Request) -> httpx.Response:
    """Three pages of two deployments, cut on ``until`` like the real API."""
    created = [600, 500, 400, 300, 200, 100]
    until = int(request.url.params.get("until", 10**9))
    rest = [c for c in created if c < until]
    page = rest[:2]
    nxt = page[-1] if len(rest) > 2 else None
    return ok(
        {
            "deployments": [{"uid": f"dpl_{c}", "created": c} for c in page],
            "pagination": {"count": len(page), "next": nxt, "prev": page[0] if page else None},
        }
    )


def test_list_deployments_follows_pagination_next_as_until() -> None:
    rec = Recorder(_pages)
    with client_for(rec) as c:
        ids = [d["uid"] for d in c.list_deployments(project_id="prj_1", limit=2)]
    assert ids == ["dpl_600", "dpl_500", "dpl_400", "dpl_300", "dpl_200", "dpl_100"]
    assert [r.url.params.get("until") for r in rec.requests] == [None, "500", "300"]


def test_list_deployments_is_lazy_and_stops_when_the_caller_has_enough() -> None:
    rec = Recorder(_pages)
    with client_for(rec) as c:
        it = c.list_deployments(project_id="prj_1", limit=2)
        assert [next(it)["uid"], next(it)["uid"], next(it)["uid"]] == ["dpl_600", "dpl_500", "dpl_400"]
    assert len(rec.requests) == 2


def test_pagination_that_does_not_advance_is_an_error_not_a_loop() -> None:
    stuck = ok({"deployments": [{"uid": "dpl_1", "created": 5}], "pagination": {"count": 1, "next": 5}})
    rec = Recorder(stuck)
    with client_for(rec) as c, pytest.raises(ApiError, match="does not advance"):
        list(c.list_deployments(project_id="prj_1"))
    assert len(rec.requests) == 2


def test_failed_aliases_reads_every_page_with_failed_only() -> None:
    page1 = ok(
        {
            "aliases": [{"alias": {"alias": "a.doai.me", "deploymentId": "dpl_1"}, "status": "failed"}],
            "pagination": {"count": 1, "next": 50, "prev": 60},
        }
    )
    page2 = ok(
        {
            "aliases": [{"alias": {"alias": "b.doai.me", "deploymentId": "dpl_1"}, "status": "failed"}],
            "pagination": {"count": 1, "next": None, "prev": 40},
        }
    )
    rec = Recorder(page1, page2)
    with client_for(rec) as c:
        got = c.failed_aliases("prj_1", kind="promote")
    assert [a["alias"]["alias"] for a in got] == ["a.doai.me", "b.doai.me"]
    assert rec.requests[0].url.path == "/v9/projects/prj_1/promote/aliases"
    assert rec.requests[0].url.params["failedOnly"] == "true"
    assert rec.requests[1].url.params["until"] == "50"


# ---------------------------------------------------------------------------------------------
# retries
# ---------------------------------------------------------------------------------------------


def test_429_waits_as_long_as_retry_after_says() -> None:
    fake = FakeTime()
    rec = Recorder(err(429, "rate_limited", **{"Retry-After": "3"}), ok({"id": "prj_1"}))
    with client_for(rec, fake) as c:
        assert c.get_project()["id"] == "prj_1"
    assert len(rec.requests) == 2
    assert len(fake.sleeps) == 1 and 3.0 <= fake.sleeps[0] <= 4.0


def test_retry_after_as_http_date_is_honoured() -> None:
    fake = FakeTime()
    when = email.utils.format_datetime(_dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=20), usegmt=True)
    rec = Recorder(err(429, **{"Retry-After": when}), ok({"id": "prj_1"}))
    with client_for(rec, fake) as c:
        c.get_project()
    # the date has a resolution of one second, and a little wall time passes before it is read
    assert 17.0 <= fake.sleeps[0] <= 21.0


def test_parse_retry_after() -> None:
    now = _dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=_dt.UTC)
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:05 GMT", now=now) == 5.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0  # in the past: now
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-3", now=now) == 0.0


def test_retry_after_is_capped_per_wait() -> None:
    fake = FakeTime()
    rec = Recorder(err(429, **{"Retry-After": "3600"}), ok({"id": "prj_1"}))
    with client_for(rec, fake, max_wait_s=10.0) as c:
        c.get_project()
    assert fake.sleeps == [10.0]


def test_one_off_503_is_retried() -> None:
    rec = Recorder(err(503), ok({"id": "prj_1"}))
    with client_for(rec) as c:
        assert c.get_project()["id"] == "prj_1"
    assert len(rec.requests) == 2


def test_5xx_retries_are_bounded_by_max_retries_and_back_off_exponentially() -> None:
    fake = FakeTime()
    rec = Recorder(err(502))
    with client_for(rec, fake, max_retries=5, max_wait_s=4.0) as c, pytest.raises(ApiError) as info:
        c.get_project()
    assert len(rec.requests) == 6
    assert info.value.status_code == 502
    assert info.value.exit_status == ExitStatus.UNREACHABLE
    assert len(fake.sleeps) == 5
    for attempt, slept in enumerate(fake.sleeps):
        step = min(4.0, 0.5 * 2**attempt)
        assert step / 2 <= slept <= step  # equal jitter: half fixed, half random, never above the cap


def test_transport_errors_are_retried_then_reported_unreachable() -> None:
    rec = Recorder(httpx.ConnectError("refused"))
    with client_for(rec, max_retries=2) as c, pytest.raises(UnreachableError) as info:
        c.get_project()
    assert len(rec.requests) == 3
    assert info.value.exit_status == ExitStatus.UNREACHABLE
    assert API in str(info.value)


def test_a_read_timeout_is_retried_for_a_read() -> None:
    rec = Recorder(httpx.ReadTimeout("slow"), ok({"id": "prj_1"}))
    with client_for(rec) as c:
        assert c.get_project()["id"] == "prj_1"


@pytest.mark.parametrize(
    "answer",
    [
        err(500),
        err(502),
        err(503, **{"Retry-After": "2"}),
        err(429, **{"Retry-After": "1"}),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ConnectError("refused"),
    ],
)
@pytest.mark.parametrize("send", ["rollback", "promote"])
def test_a_post_is_never_sent_twice_by_the_client(answer: httpx.Response | Exception, send: str) -> None:
    """Not even after a 503 or 429: Vercel may have acted before answering; the caller looks first."""
    fake = FakeTime()
    rec = Recorder(answer, httpx.Response(201))
    with client_for(rec, fake) as c, pytest.raises((ApiError, UnreachableError)):
        if send == "rollback":
            c.request_rollback("prj_1", "dpl_abcdefgh12", "why")
        else:
            c.promote("prj_1", "dpl_abcdefgh12")
    assert len(rec.requests) == 1
    assert fake.sleeps == []


@pytest.mark.parametrize(("answer", "retry_after"), [(err(503, **{"Retry-After": "7"}), 7.0), (err(503), None),
                                                     (err(429, **{"Retry-After": "3"}), 3.0)])
def test_the_error_of_a_post_carries_retry_after(answer: httpx.Response, retry_after: float | None) -> None:
    rec = Recorder(answer)
    with client_for(rec) as c, pytest.raises(VercelApiError) as info:
        c.request_rollback("prj_1", "dpl_abcdefgh12")
    assert info.value.retry_after == retry_after
    assert info.value.status_code == answer.status_code
    assert info.value.exit_status == ExitStatus.UNREACHABLE


def test_a_read_is_still_retried_after_a_dropped_connection() -> None:
    rec = Recorder(httpx.RemoteProtocolError("Server disconnected"), ok({"id": "prj_1"}))
    with client_for(rec) as c:
        assert c.get_project()["id"] == "prj_1"
    assert len(rec.requests) == 2


def test_rollback_candidate_filter_is_sent_only_when_asked() -> None:
    rec = Recorder(ok({"deployments": [], "pagination": {"count": 0, "next": None}}))
    with client_for(rec) as c:
        list(c.list_deployments(project_id="prj_1", limit=5, rollback_candidate=True))
        list(c.list_deployments(project_id="prj_1", limit=5))
    assert rec.requests[0].url.params["rollbackCandidate"] == "true"
    assert "rollbackCandidate" not in rec.requests[1].url.params


# ---------------------------------------------------------------------------------------------
# errors that say what to check
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "words", "exit_status"),
    [
        (err(401, "forbidden", "Not authorized"), ["token", "VERCEL_TOKEN"], ExitStatus.USAGE),
        (
            httpx.Response(
                403, json={"error": {"code": "forbidden", "message": "Not authorized", "invalidToken": True}}
            ),
            ["token", "VERCEL_TOKEN"],
            ExitStatus.USAGE,
        ),
        (err(403, "forbidden", "Not authorized"), ["team_abc123", "team_id", "member"], ExitStatus.USAGE),
        (err(404, "not_found", "Project not found"), ["doai-dashboard", "vercel.project", "team"], ExitStatus.USAGE),
        (err(400, "bad_request", "Invalid"), ["400", "Invalid"], ExitStatus.USAGE),
    ],
)
def test_client_errors_say_what_to_check(answer: httpx.Response, words: list[str], exit_status: ExitStatus) -> None:
    rec = Recorder(answer)
    with client_for(rec) as c, pytest.raises(ApiError) as info:
        c.get_project()
    assert len(rec.requests) == 1  # retrying would not help
    text = str(info.value)
    for word in words:
        assert word in text
    assert info.value.exit_status == exit_status


def test_a_body_that_is_not_json_is_an_api_error() -> None:
    rec = Recorder(httpx.Response(200, text="<html>captive portal</html>"))
    with client_for(rec) as c, pytest.raises(ApiError, match="not JSON"):
        c.get_project()


def test_the_token_is_in_no_error_log_line_or_repr(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [
        err(401),
        err(403),
        err(404),
        err(500),
        err(429, **{"Retry-After": "0"}),
        httpx.ConnectError("x"),
        httpx.Response(200, text="not json"),
    ]
    texts = []
    for answer in answers:
        rec = Recorder(answer)
        with client_for(rec, max_retries=1) as c:
            texts.append(repr(c))
            with pytest.raises((ApiError, UnreachableError)) as info:
                c.get_project()
            texts += [str(info.value), repr(info.value), info.value.hint or ""]
    texts.append(repr(settings()))
    texts.append(caplog.text)
    assert "retrying" in caplog.text  # the retries were logged...
    for text in texts:
        assert TOKEN not in text  # ...without the token
