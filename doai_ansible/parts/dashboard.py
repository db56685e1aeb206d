"""The dashboard part (Vercel): inspect, plan, apply, verify and revert a production rollback.

Runbook section 1 does ``vercel rollback [deployment-id]`` (or a promote in Vercel's dashboard) and
then ``curl -I https://dashboard.doai.me/api/health``. Here the same happens through the REST API:

* :func:`dashboard_status` - what is live in production and the state of the last rollback/promote.
* :func:`plan_dashboard_rollback` - current -> target as a :class:`~doai_ansible.model.Step`;
  reads only, so ``--dry-run`` is this function and nothing else. The default target is the newest
  *rollback candidate* older than the live deployment: Vercel rolls back only to deployments that
  were once aliased to production (``isRollbackCandidate``), not to a build staged while
  auto-assign was off.
* :func:`apply_dashboard_rollback` - ask Vercel to roll back, follow the alias job, then the health
  gate; if the gate fails, promote the original deployment back.
* :func:`plan_dashboard_promote` / :func:`promote_dashboard` - the same for ``undo``: promote the
  deployment that was live before (Vercel's documented way to undo a rollback).
* :func:`revert_dashboard` - put a rollback that succeeded back (another part failed).
* :func:`wait_healthy` - the health gate on its own.
* :class:`DashboardPart` - all of it behind the part interface (:mod:`doai_ansible.part`).

The POST is sent once. A 5xx, a 429, a timeout or a dropped connection does not tell whether
Vercel acted (it may have started the alias job and failed to answer), so after one of those the
project's ``lastAliasRequest`` is read and compared with the one seen before the POST: a job of
ours that started is followed (health gate and restore as usual); one that verifiably did not
start is asked for once more only after a 429/503 with ``Retry-After``; when the project cannot
be read the step ends NOT_RESTORED with the Vercel CLI commands to check and undo by hand
(:func:`by_hand_commands`), never "nothing was changed".

Return or raise: ``apply``/``promote`` return a :class:`~doai_ansible.model.StepResult` on success
(outcome SUCCEEDED, or UNCHANGED when the target is already live). Once Vercel may have acted and
something failed they raise :class:`~doai_ansible.errors.RollbackFailed` with the StepResult in
``.result`` (outcome RESTORED when production serves the original deployment again, NOT_RESTORED
when it could not be put back or its state is unknown). Errors raised before Vercel accepted
anything (:class:`ValidationError`, :class:`ApiError`, :class:`UnreachableError`,
:class:`LockedError`) carry no result: nothing was changed. :class:`DashboardPart` turns
RollbackFailed into the returned result, as the engine expects.

Vercel notes: on the Hobby plan only the previous production deployment can be a rollback target;
after a rollback Vercel stops assigning new production deployments to the production domains until
a deployment is promoted (``autoAssignCustomDomains`` in the status shows it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import httpx

from doai_ansible import validate
from doai_ansible.clients.vercel import USER_AGENT, Clock, Sleep, VercelClient
from doai_ansible.errors import (
    ApiError,
    DoaiError,
    ExitStatus,
    LockedError,
    RollbackFailed,
    UnreachableError,
    ValidationError,
)
from doai_ansible.model import Outcome, Part, Step, StepResult, utcnow
from doai_ansible.part import ACTIONS, PartBase, Request
from doai_ansible.settings import VercelSettings

if TYPE_CHECKING:
    from doai_ansible.context import RunContext

log = logging.getLogger(__name__)

PAGE_SIZE = 20  # deployments per page when looking for the default target (the CLI's default)
POLL_FIRST_S = 0.25  # first wait between polls of the alias job / the health URL
POLL_FACTOR = 1.6
POLL_MAX_S = 5.0
JOB_RUNNING = ("pending", "in-progress")
COMMIT_SHA_KEYS = ("githubCommitSha", "gitlabCommitSha", "bitbucketCommitSha", "gitCommitSha")

# ``--to``: a deployment id, or a deployment URL / host name (what ``vercel list`` prints)
_DPL_ID_RE = re.compile(r"dpl_[A-Za-z0-9]{8,64}")
_HOST_RE = re.compile(r"(?=.{4,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")

Progress = Callable[[str], None]
# One probe of the dashboard's health: healthy or not, or (healthy, what was seen).
HealthCheck = Callable[[], "bool | tuple[bool, str]"]


class ReportOnly:
    """A health check whose answer is observed and reported, not required (an undo goes back to a
    deployment that was live, most likely unhealthy): the step says what the probe saw."""

    def __init__(self, observe: Callable[[], tuple[bool, str]]) -> None:
        self.observe = observe

    def __call__(self) -> tuple[bool, str]:
        return self.observe()


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _using(settings: VercelSettings, client: VercelClient | None) -> Iterator[VercelClient]:
    """Use the caller's client, or make one for this call and close it afterwards."""
    if client is not None:
        yield client
        return
    with VercelClient(settings) as own:
        yield own


def _say(progress: Progress | None, message: str) -> None:
    log.info("%s", message)
    if progress is not None:
        progress(message)


def _iso_ms(ms: Any) -> str | None:
    if not isinstance(ms, (int, float)):
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _dep_id(d: dict[str, Any]) -> str | None:
    return d.get("id") or d.get("uid")  # /v13 and targets say id, /v6 says uid


def _dep_created(d: dict[str, Any]) -> int | None:
    value = d.get("createdAt", d.get("created"))
    return int(value) if isinstance(value, (int, float)) else None


def _dep_state(d: dict[str, Any]) -> str | None:
    return d.get("readyState") or d.get("state")


def commit_sha(meta: dict[str, Any] | None) -> str | None:
    """The git commit of a deployment, from the git provider's ``meta`` keys."""
    for key in COMMIT_SHA_KEYS:
        value = (meta or {}).get(key)
        if value:
            return str(value)
    return None


def deployment_view(d: dict[str, Any]) -> dict[str, Any]:
    """The fields of a deployment an operator (and the journal) cares about."""
    meta = d.get("meta") or {}
    return {
        "id": _dep_id(d),
        "url": d.get("url"),
        "created": _iso_ms(_dep_created(d)),
        "state": _dep_state(d),
        "target": d.get("target"),
        "commit": commit_sha(meta),
        "ref": meta.get("githubCommitRef") or meta.get("gitlabCommitRef") or meta.get("bitbucketCommitRef"),
        "message": meta.get("githubCommitMessage") or meta.get("gitlabCommitMessage"),
    }


def alias_request_view(lar: dict[str, Any] | None) -> dict[str, Any] | None:
    if not lar:
        return None
    return {
        "type": lar.get("type"),
        "fromDeploymentId": lar.get("fromDeploymentId"),
        "toDeploymentId": lar.get("toDeploymentId"),
        "jobStatus": lar.get("jobStatus"),
        "requestedAt": _iso_ms(lar.get("requestedAt")),
    }


def _production(project: dict[str, Any]) -> dict[str, Any] | None:
    prod = (project.get("targets") or {}).get("production")
    return prod if isinstance(prod, dict) and _dep_id(prod) else None


def _production_id(project: dict[str, Any]) -> str | None:
    prod = _production(project)
    return _dep_id(prod) if prod else None


def normalize_deployment_ref(value: str) -> str:
    """Check the syntax of ``--to`` before any request: a ``dpl_`` id or a deployment URL/host.

    ``https://host/`` is accepted (what ``vercel list`` prints) and reduced to ``host``. Anything
    with a path, spaces or shell characters is refused.
    """
    if not isinstance(value, str):
        raise ValidationError("--to must be a deployment id or URL")
    ref = value.strip()
    for scheme in ("https://", "http://"):
        if ref.lower().startswith(scheme):
            ref = ref[len(scheme) :]
            ref = ref.removesuffix("/")
            break
    if _DPL_ID_RE.fullmatch(ref):
        return ref
    if _HOST_RE.fullmatch(ref.lower()):
        return ref.lower()
    raise ValidationError(
        f"--to {value!r} is not a deployment id (dpl_...) or a deployment URL",
        hint="copy one from `doai-rollback dashboard status` or `vercel list --prod`",
    )


# --------------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------------


def dashboard_status(settings: VercelSettings, client: VercelClient | None = None) -> dict[str, Any]:
    """What is live: the production deployment and the last rollback/promote (reads only).

    Returns ``{"project": {id, name}, "production": {id, url, created, state, target, commit, ref,
    message} | None, "lastAliasRequest": {type, fromDeploymentId, toDeploymentId, jobStatus,
    requestedAt} | None, "autoAssignCustomDomains": bool | None}``.
    Raises ApiError / UnreachableError / ConfigError.
    """
    with _using(settings, client) as c:
        project = c.get_project(settings.project, rollback_info=True)
        prod = _production(project)
        production = None
        if prod is not None:
            try:
                # the project's summary may lack meta; the deployment itself has everything
                production = deployment_view(c.get_deployment(_dep_id(prod) or ""))
            except ApiError as exc:
                if exc.status_code != 404:
                    raise
                production = deployment_view(prod)
        return {
            "project": {"id": project.get("id"), "name": project.get("name")},
            "production": production,
            "lastAliasRequest": alias_request_view(project.get("lastAliasRequest")),
            "autoAssignCustomDomains": project.get("autoAssignCustomDomains"),
        }


# --------------------------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------------------------


def _default_target(
    c: VercelClient, project_id: str, current_id: str, current_created: int, page_size: int
) -> dict[str, Any] | None:
    """Newest rollback candidate (READY, production, once live) older than the current one, across pages.

    Vercel rolls back only to deployments that were once aliased to production
    (``isRollbackCandidate``): a production build staged while auto-assign was off is not one.
    """
    listing = c.list_deployments(
        project_id=project_id, target="production", until=current_created, limit=page_size, rollback_candidate=True
    )
    for d in listing:
        # The API already filters on target, candidacy and ``until``; check again so a server that
        # ignores a filter cannot make us pick a preview, a staged build or a newer deployment.
        created = _dep_created(d)
        if _dep_id(d) == current_id or created is None or created >= current_created:
            continue
        if d.get("target") != "production" or _dep_state(d) != "READY" or d.get("isRollbackCandidate") is not True:
            continue
        return d
    return None


def _validated_target(c: VercelClient, project: dict[str, Any], ref: str, *, what: str) -> dict[str, Any]:
    """The deployment ``ref`` names, if it is READY, production and of this project."""
    try:
        dep = c.get_deployment(ref)
    except ApiError as exc:
        if exc.status_code in (400, 404):
            raise ValidationError(
                f"{what} {ref}: no such deployment in {c.scope_text}",
                hint="check the id/URL with `vercel list --prod`, and the team scope",
            ) from None
        raise
    dep_id = _dep_id(dep) or ref
    if dep.get("projectId") != project.get("id"):
        raise ValidationError(
            f"{what} {ref}: deployment {dep_id} belongs to project {dep.get('name')!r}, not to {project.get('name')!r}"
        )
    state = _dep_state(dep)
    if state != "READY":
        raise ValidationError(f"{what} {ref}: deployment {dep_id} is {state}, not READY")
    if dep.get("target") != "production":
        raise ValidationError(
            f"{what} {ref}: deployment {dep_id} is a preview deployment, not a production one",
            hint="only earlier production deployments can be rolled back to",
        )
    return dep


def _check_rollback_candidate(dep: dict[str, Any], ref: str) -> str | None:
    """Refuse a deployment Vercel says it cannot roll back to; a note when Vercel does not say."""
    dep_id = _dep_id(dep) or ref
    candidate = dep.get("isRollbackCandidate")
    if candidate is False:
        raise ValidationError(
            f"--to {ref}: deployment {dep_id} was never live in production (not a rollback candidate); "
            "Vercel cannot roll back to it",
            hint="pick one that was live (`doai-rollback dashboard rollback --dry-run` shows the default), "
            f"or promote it instead (`vercel promote {dep_id}`)",
        )
    if candidate is None:  # an API answer without the field: Vercel itself refuses a non-candidate
        return f"Vercel did not say whether {dep_id} is a rollback candidate; it refuses the rollback if not"
    return None


def _project_details(c: VercelClient, project: dict[str, Any]) -> dict[str, Any]:
    return {
        "project_id": project.get("id"),
        "project_name": project.get("name"),
        "scope": c.scope_text,
        "lastAliasRequest": alias_request_view(project.get("lastAliasRequest")),
    }


def plan_dashboard_rollback(
    settings: VercelSettings,
    to: str | None = None,
    client: VercelClient | None = None,
    *,
    page_size: int = PAGE_SIZE,
) -> Step:
    """Where production is and where a rollback takes it; sends only GET requests.

    ``to`` None picks the newest rollback candidate older than the live one: READY, production
    and once live (previews, ERROR, CANCELED, BUILDING and staged builds skipped, following
    pagination). An explicit ``to`` must be a deployment of this project that is READY,
    production and a rollback candidate. ``step.current == step.desired`` (no change) when ``to``
    is already live.
    Raises ValidationError (bad ``to``, nothing to roll back to), ApiError, UnreachableError.
    """
    ref = normalize_deployment_ref(to) if to is not None else None  # before any request
    with _using(settings, client) as c:
        project = c.get_project(settings.project, rollback_info=True)
        name = str(project.get("name") or settings.project)
        prod = _production(project)
        if prod is None:
            raise ValidationError(f"Vercel project {name!r} has no production deployment: nothing to roll back")
        current_id = str(_dep_id(prod))
        current_created = _dep_created(prod)
        if current_created is None:
            current_created = _dep_created(c.get_deployment(current_id))
        details = _project_details(c, project)
        details["from_deployment"] = deployment_view(prod)
        if ref is None:
            target = _default_target(c, str(project["id"]), current_id, current_created or 0, page_size)
            if target is None:
                raise ValidationError(
                    f"no rollback candidate of {name!r} (a READY production deployment that was once live) "
                    f"is older than the live one ({current_id})",
                    hint="nothing to roll back to; pass --to DEPLOYMENT to choose one",
                )
            rule = "newest rollback candidate (READY production, once live) older than the live one"
        else:
            target = _validated_target(c, project, ref, what="--to")
            if _dep_id(target) != current_id:  # the live one needs no rollback (and may not be a candidate)
                note = _check_rollback_candidate(target, ref)
                if note:
                    details["candidate_note"] = note
            rule = f"--to {to}"
        details["to_deployment"] = deployment_view(target)
        return Step(
            part=Part.DASHBOARD,
            target=name,
            current=current_id,
            desired=_dep_id(target),
            rule=rule,
            details=details,
        )


def plan_dashboard_promote(
    settings: VercelSettings, to: str, client: VercelClient | None = None, *, rule: str = "undo"
) -> Step:
    """The step that promotes ``to`` (for ``undo``: the deployment that was live before); reads only."""
    ref = normalize_deployment_ref(to)
    with _using(settings, client) as c:
        project = c.get_project(settings.project, rollback_info=True)
        name = str(project.get("name") or settings.project)
        target = _validated_target(c, project, ref, what="promote")
        prod = _production(project)
        details = _project_details(c, project)
        details["from_deployment"] = deployment_view(prod) if prod else None
        details["to_deployment"] = deployment_view(target)
        return Step(
            part=Part.DASHBOARD,
            target=name,
            current=_dep_id(prod) if prod else None,
            desired=_dep_id(target),
            rule=rule,
            details=details,
        )


# --------------------------------------------------------------------------------------------
# verify: the health gate
# --------------------------------------------------------------------------------------------


def probe_health(url: str, timeout_s: float, *, transport: httpx.BaseTransport | None = None) -> tuple[bool, str]:
    """One GET of the health URL: (answered 2xx, what happened). Never sends the Vercel token."""
    try:
        with httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        ) as http:
            response = http.get(url)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}"
    return 200 <= response.status_code < 300, f"HTTP {response.status_code}"


def wait_healthy(
    settings: VercelSettings,
    *,
    health_check: HealthCheck | None = None,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
    progress: Progress | None = None,
) -> tuple[bool, str]:
    """Poll the dashboard health URL (or ``health_check``) with backoff until 2xx or the deadline.

    Returns ``(healthy, detail)``; never raises for an unhealthy or unreachable URL.
    """
    url = settings.health_url
    deadline = clock() + settings.health_deadline_s
    delay = POLL_FIRST_S
    probes = 0
    detail = "not probed"
    while True:
        probes += 1
        remaining = deadline - clock()
        if health_check is not None:
            try:
                answer = health_check()
                ok, detail = (bool(answer[0]), str(answer[1])) if isinstance(answer, tuple) else (bool(answer), "health check")
            except Exception as exc:  # noqa: BLE001 - a probe that blows up is an unhealthy answer, not a crash
                ok, detail = False, f"health check raised {type(exc).__name__}"
        else:
            ok, detail = probe_health(url, max(0.5, min(settings.timeout_s, remaining)))
        if ok:
            return True, f"{url} healthy ({detail}) after {probes} probe(s)"
        remaining = deadline - clock()
        if remaining <= 0:
            return False, f"{url} not healthy within {settings.health_deadline_s:g} s ({detail}, {probes} probe(s))"
        if probes == 1:
            _say(progress, f"waiting for {url} to answer 2xx (last: {detail})")
        sleep(min(delay, remaining))
        delay = min(delay * POLL_FACTOR, POLL_MAX_S)


# --------------------------------------------------------------------------------------------
# apply / revert
# --------------------------------------------------------------------------------------------


class _JobNotDone(Exception):
    def __init__(self, status: str | None, project: dict[str, Any], superseded: bool = False) -> None:
        super().__init__(status)
        self.status = status
        self.project = project
        self.superseded = superseded


class _StateUnknown(Exception):
    """The POST got an ambiguous answer and the project could not be read: Vercel may have acted."""


_ANY_REQUEST = object()  # a "before" no requestedAt equals: any job of that type and target counts


def _is_ours(lar: dict[str, Any] | None, kind: str, to: str, before: Any) -> bool:
    # Compare with the request seen before ours rather than with our clock: the server's clock
    # and ours need not agree.
    if not lar:
        return False
    return lar.get("type") == kind and lar.get("toDeploymentId") == to and lar.get("requestedAt") != before


def _wait_for_job(
    c: VercelClient,
    project_id: str,
    kind: str,
    to: str,
    before: Any,
    deadline_s: float,
    progress: Progress | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Poll ``lastAliasRequest`` until our job leaves pending/in-progress: (alias request, project).

    Raises _JobNotDone (deadline, or another job replaced ours) and whatever reading the project
    raises (ApiError, UnreachableError).
    """
    deadline = c.clock() + deadline_s
    delay = POLL_FIRST_S
    last: str | None = None
    while True:
        project = c.get_project(project_id, rollback_info=True)
        lar = project.get("lastAliasRequest") or {}
        if _is_ours(lar, kind, to, before):
            status = str(lar.get("jobStatus"))
            if status != last:
                _say(progress, f"Vercel {kind} job: {status}")
                last = status
            if status not in JOB_RUNNING:
                return lar, project
        elif lar and lar.get("requestedAt") != before and lar.get("toDeploymentId") != to:
            raise _JobNotDone(last, project, superseded=True)  # someone else asked for another one
        remaining = deadline - c.clock()
        if remaining <= 0:
            raise _JobNotDone(last, project)
        c.sleep(min(delay, remaining))
        delay = min(delay * POLL_FACTOR, POLL_MAX_S)


def _request_change(c: VercelClient, kind: str, project_id: str, to: str, reason: str | None) -> bool:
    """Send the rollback/promote once; True when Vercel only queued it (promote 202)."""
    if kind == "rollback":
        c.request_rollback(project_id, to, reason)
        return False
    return c.promote(project_id, to)


def _answered(error: DoaiError, kind: str) -> str:
    """What came back for the POST, as the start of a sentence."""
    if isinstance(error, ApiError) and error.status_code is not None:
        return f"Vercel answered the {kind} request with HTTP {error.status_code}"
    return f"Vercel gave no answer to the {kind} request"


def _ambiguous(error: ApiError) -> bool:
    """An answer that does not prove Vercel did not act: 5xx, 429 (a proxy's), or none."""
    return error.status_code is None or error.status_code >= 500 or error.status_code == 429


def _refused(error: ApiError, kind: str, to: str, *, checked: bool = False) -> DoaiError:
    """The error to raise for a POST Vercel refused (nothing changed)."""
    if error.status_code == 409:
        return LockedError(
            f"Vercel refused the {kind} to {to}: another rollback or promote is in progress",
            hint="wait for it to finish (`vercel rollback status`), then plan again",
        )
    if error.status_code == 402:
        return ApiError(
            error.message,
            status_code=402,
            hint="on Vercel's Hobby plan only the previous production deployment can be rolled back to",
        )
    if checked:
        return ApiError(
            f"{error.message}; Vercel did not start the {kind} (checked its last alias request): nothing was changed",
            status_code=error.status_code,
            hint=error.hint,
        )
    return error


def _started(c: VercelClient, kind: str, project_id: str, to: str, before: Any, error: DoaiError) -> bool:
    """After an ambiguous answer: did Vercel start our job? Raises _StateUnknown when it cannot tell."""
    try:
        project = c.get_project(project_id, rollback_info=True)
    except DoaiError as exc:
        raise _StateUnknown(
            f"{_answered(error, kind)}, and the project could not be read afterwards ({exc.message}): "
            f"the {kind} to {to} may or may not have started"
        ) from None
    return _is_ours(project.get("lastAliasRequest"), kind, to, before)


def _send(
    c: VercelClient, kind: str, project_id: str, to: str, reason: str | None, before: Any, progress: Progress | None
) -> bool:
    """Ask Vercel for the rollback/promote; True when it only queued it (promote 202).

    The client sends a POST once. After an ambiguous answer (5xx, 429, a timeout or a dropped
    connection) this reads ``lastAliasRequest`` and compares it with ``before`` (the one seen
    before the POST): a job of ours that started is followed (returns False). One that
    verifiably did not start is asked for once more, only after a 429/503 that said
    ``Retry-After``, and only if it still has not started after that wait.

    Raises, with nothing changed: LockedError (409), ApiError (a refusal, or no job after an
    error answer), UnreachableError (no job after no answer). Raises _StateUnknown when Vercel
    may have acted and the project cannot be read.
    """
    resent = False
    while True:
        error: DoaiError
        try:
            return _request_change(c, kind, project_id, to, reason)
        except ApiError as exc:
            # A 409 to the second POST may be the first one's job, started late: look first.
            if not _ambiguous(exc) and not (resent and exc.status_code == 409):
                raise _refused(exc, kind, to) from None
            error = exc
        except UnreachableError as exc:
            error = exc
        if _started(c, kind, project_id, to, before, error):
            _say(progress, f"{_answered(error, kind)} but started the job: following it")
            return False
        wait = getattr(error, "retry_after", None)
        status = error.status_code if isinstance(error, ApiError) else None
        if resent or wait is None or status not in (429, 503):
            if isinstance(error, ApiError):
                raise _refused(error, kind, to, checked=True) from None
            raise UnreachableError(
                f"{error.message}; Vercel did not start the {kind} (checked its last alias request): "
                "nothing was changed",
                hint=error.hint,
            ) from None
        wait = min(wait, c.max_wait_s)
        _say(progress, f"{_answered(error, kind)} and did not start it; asking again in {wait:g} s, as it said")
        c.sleep(wait)
        if _started(c, kind, project_id, to, before, error):
            return False
        resent = True


def _finish(result: StepResult, t0: float, clock: Clock, outcome: Outcome, message: str) -> StepResult:
    result.outcome = outcome
    result.message = message
    result.finished = utcnow()
    result.duration_s = clock() - t0
    return result


def by_hand_commands(settings: VercelSettings, kind: str, project: str, original: str | None) -> list[str]:
    """The Vercel CLI commands that show the last ``kind`` job and put ``original`` back."""
    scope = settings.team_slug or settings.team_id
    tail = f" --scope {scope}" if scope else ""
    commands = [f"vercel {kind} status {project}{tail}"]
    if original:
        commands.append(f"vercel promote {original}{tail}")
    return commands


def _put_back(
    c: VercelClient,
    settings: VercelSettings,
    project_id: str,
    original: str,
    progress: Progress | None,
    details: dict[str, Any],
) -> bool:
    """Promote ``original`` back (after any running alias job ends); True when production serves it."""
    _say(progress, f"putting back {original}: promoting it")
    try:
        project = c.get_project(project_id, rollback_info=True)
        lar = project.get("lastAliasRequest") or {}
        if lar.get("jobStatus") in JOB_RUNNING:  # a promote now would be refused (409)
            _say(progress, f"waiting for the running Vercel {lar.get('type')} job to end first")
            _, project = _wait_for_job(
                c,
                project_id,
                str(lar.get("type")),
                str(lar.get("toDeploymentId")),
                _ANY_REQUEST,
                settings.job_deadline_s,
                progress,
            )
        if _production_id(project) == original:
            details["revert"] = {"status": "not needed", "production": original}
            return True
        before = (project.get("lastAliasRequest") or {}).get("requestedAt")
        _send(c, "promote", project_id, original, None, before, progress)
        lar, project = _wait_for_job(c, project_id, "promote", original, before, settings.job_deadline_s, progress)
        live = _production_id(project)
        details["revert"] = {"jobStatus": lar.get("jobStatus"), "production": live}
        return live == original
    except _JobNotDone as exc:
        details["revert"] = {"jobStatus": exc.status, "production": _production_id(exc.project), "timedOut": True}
        return False
    except (DoaiError, _StateUnknown) as exc:
        log.error("could not promote %s back: %s", original, exc)
        details["revert"] = {"error": str(exc)}
        return False


@dataclasses.dataclass
class _Change:
    """A rollback/promote Vercel may have acted on: what following, verifying and putting back need."""

    c: VercelClient
    settings: VercelSettings
    kind: str
    project_id: str
    name: str
    to: str
    original: str
    before: Any  # ``requestedAt`` of the last alias request seen before our POST
    result: StepResult
    t0: float
    progress: Progress | None

    @property
    def details(self) -> dict[str, Any]:
        return self.result.step.details

    def say(self, message: str) -> None:
        _say(self.progress, message)

    def end(self, outcome: Outcome, message: str) -> StepResult:
        return _finish(self.result, self.t0, self.c.clock, outcome, message)

    def fail(self, restored: bool, message: str, hint: str | None = None) -> NoReturn:
        """End the step RESTORED or NOT_RESTORED and raise RollbackFailed carrying it.

        NOT_RESTORED says, in the message itself, the commands to check and undo by hand.
        """
        if not restored:
            commands = by_hand_commands(self.settings, self.kind, self.name, self.original)
            self.details["by_hand"] = commands
            message = f"{message}; check with `{commands[0]}`, put production back with `{commands[1]}`"
            hint = f"promote {self.original} in Vercel now: `{commands[1]}`"
        self.end(Outcome.RESTORED if restored else Outcome.NOT_RESTORED, message)
        raise RollbackFailed(message, restored=restored, hint=hint, result=self.result)

    def put_back_and_fail(self, why: str, hint: str | None = None) -> NoReturn:
        """Production may have moved and something failed: promote the original back, then raise."""
        restored = _put_back(self.c, self.settings, self.project_id, self.original, self.progress, self.details)
        outcome = f"promoted {self.original} back" if restored else f"could NOT put {self.original} back"
        self.fail(restored, f"{why}; {outcome}", hint if restored else None)


def _preflight(c: VercelClient, settings: VercelSettings, step: Step) -> tuple[dict[str, Any], Any] | None:
    """Check production is still what the plan saw: (project, requestedAt before), None when done.

    Raises LockedError (an alias job is running) or ValidationError (production changed).
    """
    project = c.get_project(settings.project, rollback_info=True)
    name = str(project.get("name") or step.target)
    lar = project.get("lastAliasRequest") or {}
    if lar.get("jobStatus") in JOB_RUNNING:
        raise LockedError(
            f"a Vercel {lar.get('type')} of {name} to {lar.get('toDeploymentId')} is still {lar.get('jobStatus')}",
            hint="wait for it to finish (`vercel rollback status`), then plan again",
        )
    live = _production_id(project)
    if live == step.desired:
        return None
    if live != step.current:
        raise ValidationError(
            f"production of {name} is now {live}, not {step.current} as planned",
            hint="someone changed it meanwhile: plan again",
        )
    return project, lar.get("requestedAt")


def _follow(ch: _Change) -> tuple[str, str | None]:
    """Follow our alias job to its end: (jobStatus, live deployment). Raises RollbackFailed."""
    try:
        lar, project = _wait_for_job(
            ch.c, ch.project_id, ch.kind, ch.to, ch.before, ch.settings.job_deadline_s, ch.progress
        )
    except _JobNotDone as exc:
        live = _production_id(exc.project)
        ch.details["job"] = {"jobStatus": exc.status, "production": live, "superseded": exc.superseded}
        why = (
            "another rollback/promote replaced ours"
            if exc.superseded
            else f"the alias job was still {exc.status or 'not started'} after {ch.settings.job_deadline_s:g} s"
        )
        ch.fail(False, f"{ch.kind} of {ch.name} to {ch.to}: {why}; production: {live}")
    except DoaiError as exc:
        ch.details["job"] = {"error": str(exc)}
        ch.put_back_and_fail(f"lost track of the Vercel {ch.kind} job of {ch.name} to {ch.to} ({exc.message})")
    status = str(lar.get("jobStatus"))
    live = _production_id(project)
    ch.details["job"] = {"jobStatus": status, "production": live}
    return status, live


def _failed_aliases(ch: _Change) -> list[dict[str, Any]]:
    try:
        return [
            {
                "alias": (a.get("alias") or {}).get("alias"),
                "deploymentId": (a.get("alias") or {}).get("deploymentId"),
                "status": a.get("status"),
            }
            for a in ch.c.failed_aliases(ch.project_id, kind=ch.kind)
        ]
    except DoaiError as exc:
        log.warning("could not list the failed aliases: %s", exc)
        return []


def _check_job(ch: _Change, status: str, live: str | None) -> None:
    """Raise RollbackFailed when the job did not put ``to`` live cleanly."""
    # "failed" is a failure even when production moved: some aliases still point elsewhere.
    # "skipped" is fine when the target is live anyway (someone else did it).
    if status != "failed" and (status == "succeeded" or live == ch.to):
        return
    failed = _failed_aliases(ch) if status == "failed" else []
    ch.details["failedAliases"] = failed
    names = ", ".join(str(a["alias"]) for a in failed) or "unknown aliases"
    why = f"Vercel {ch.kind} job {status} (failed aliases: {names})"
    if live == ch.original:
        ch.fail(
            True,
            f"{why}; production still serves {ch.original}",
            hint="nothing changed; see the failed aliases in Vercel's domains settings",
        )
    ch.put_back_and_fail(why)


def _verify(ch: _Change, health_check: HealthCheck | None) -> StepResult:
    """The health gate; on failure promote the original back."""
    ch.say(f"{ch.name} now serves {ch.to}; checking {ch.settings.health_url}")
    if isinstance(health_check, ReportOnly):  # undo: health observed and shown, not required
        ok, seen = health_check.observe()
        ch.details["health"] = {"url": ch.settings.health_url, "healthy": ok, "detail": seen, "required": False}
        state = "healthy" if ok else "NOT healthy"
        return ch.end(Outcome.SUCCEEDED, f"{ch.name} serves {ch.to}; health {state} ({seen}; not required for an undo)")
    healthy, detail = wait_healthy(
        ch.settings, health_check=health_check, sleep=ch.c.sleep, clock=ch.c.clock, progress=ch.progress
    )
    ch.details["health"] = {"url": ch.settings.health_url, "healthy": healthy, "detail": detail}
    if healthy:
        return ch.end(Outcome.SUCCEEDED, f"{ch.name} serves {ch.to}; {detail}")
    ch.put_back_and_fail(f"health gate failed: {detail}")


def _apply(
    kind: str,
    step: Step,
    settings: VercelSettings,
    reason: str | None,
    client: VercelClient | None,
    health_check: HealthCheck | None,
    progress: Progress | None,
) -> StepResult:
    """Preflight, send, follow, verify; see :func:`apply_dashboard_rollback` for returns and raises."""
    if step.part != Part.DASHBOARD or not step.desired:
        raise ValidationError("not a dashboard step with a target deployment")
    step = dataclasses.replace(step, details=dict(step.details))  # the caller's plan stays as planned
    with _using(settings, client) as c:
        t0 = c.clock()
        result = StepResult(step=step, outcome=Outcome.FAILED, started=utcnow())
        seen = _preflight(c, settings, step) if step.changes else None
        if seen is None:
            return _finish(result, t0, c.clock, Outcome.UNCHANGED, f"{step.desired} is already live")
        project, before = seen
        ch = _Change(
            c=c,
            settings=settings,
            kind=kind,
            project_id=str(project["id"]),
            name=str(project.get("name") or step.target),
            to=str(step.desired),
            original=str(step.current),
            before=before,
            result=result,
            t0=t0,
            progress=progress,
        )
        ch.say(f"requesting Vercel {kind} of {ch.name}: {ch.original} -> {ch.to}")
        try:
            queued = _send(c, kind, ch.project_id, ch.to, (reason or "").strip() or None, before, progress)
        except _StateUnknown as exc:
            ch.fail(False, str(exc))
        # From here on Vercel has accepted the change: every way out is a StepResult.
        if queued:
            ch.say("Vercel queued the promotion behind an active rolling release")
        ch.details["requested"] = {"type": kind, "to": ch.to, "reason": reason, "queued": queued}
        try:
            status, live = _follow(ch)
            _check_job(ch, status, live)
            return _verify(ch, health_check)
        except RollbackFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - after an accepted change a crash must still say what to do
            log.exception("unexpected error after Vercel accepted the %s", kind)
            ch.fail(False, f"unexpected error after Vercel accepted the {kind} ({type(exc).__name__}: {exc})")


def apply_dashboard_rollback(
    step: Step,
    settings: VercelSettings,
    reason: str | None,
    client: VercelClient | None = None,
    health_check: HealthCheck | None = None,
    progress: Progress | None = None,
) -> StepResult:
    """Roll production back to ``step.desired``, follow the alias job, then the health gate.

    ``reason`` goes to Vercel as the rollback's description. ``health_check`` replaces the GET of
    ``settings.health_url`` (one probe; it is polled until the deadline).
    Returns the StepResult (SUCCEEDED / UNCHANGED). Raises RollbackFailed with ``.result``
    (RESTORED / NOT_RESTORED) once Vercel may have acted: after an ambiguous answer to the POST
    that it cannot check, the result is NOT_RESTORED and its message has the commands to check
    and undo by hand. Raises ValidationError, LockedError, ApiError or UnreachableError when
    nothing was changed.
    """
    return _apply("rollback", step, settings, reason, client, health_check, progress)


def promote_dashboard(
    step: Step,
    settings: VercelSettings,
    reason: str | None = None,
    client: VercelClient | None = None,
    health_check: HealthCheck | None = None,
    progress: Progress | None = None,
) -> StepResult:
    """Promote ``step.desired`` (``undo``), follow the job and the health gate, like the rollback.

    On failure it promotes ``step.current`` back. Same returns and raises as
    :func:`apply_dashboard_rollback`. ``reason`` is only recorded (the promote API takes none).
    """
    return _apply("promote", step, settings, reason, client, health_check, progress)


def revert_dashboard(
    result: StepResult,
    settings: VercelSettings,
    reason: str | None = None,
    client: VercelClient | None = None,
    progress: Progress | None = None,
) -> StepResult:
    """Put a SUCCEEDED dashboard step back on ``step.current`` (promote; no health gate: as it was).

    Returns a new StepResult, RESTORED or NOT_RESTORED (with the commands to do it by hand).
    """
    step = dataclasses.replace(result.step, details=dict(result.step.details))
    original = str(step.current)
    why = f"rolled back, then put back ({reason})" if reason else "rolled back, then put back"
    with _using(settings, client) as c:
        t0 = c.clock()
        out = dataclasses.replace(result, step=step)
        try:
            project_id = step.details.get("project_id") or str(c.get_project(settings.project)["id"])
            restored = _put_back(c, settings, str(project_id), original, progress, step.details)
        except DoaiError as exc:
            step.details["revert"] = {"error": str(exc)}
            restored = False
        if restored:
            out.outcome, out.message = Outcome.RESTORED, f"{why}: production serves {original} again"
        else:
            kind = str((step.details.get("requested") or {}).get("type") or "rollback")
            commands = by_hand_commands(settings, kind, step.target, original)
            step.details["by_hand"] = commands
            out.outcome = Outcome.NOT_RESTORED
            out.message = (
                f"{why}: could NOT put {original} back; check with `{commands[0]}`, "
                f"put production back with `{commands[1]}`"
            )
        out.finished = utcnow()
        out.duration_s = (result.duration_s or 0.0) + (c.clock() - t0)
        return out


# --------------------------------------------------------------------------------------------
# the part, as the engine drives it
# --------------------------------------------------------------------------------------------


def step_labels(step: Step) -> None:
    """``details["from_label"]`` / ``["to_label"]``: the deployment id and its commit (or URL)."""
    for side, key in (("from", "from_deployment"), ("to", "to_deployment")):
        dep = step.details.get(key) or {}
        dep_id = dep.get("id") or (step.current if side == "from" else step.desired)
        extra = dep.get("commit") or dep.get("url")
        step.details[f"{side}_label"] = f"{dep_id} ({str(extra)[:12]})" if dep_id and extra else (dep_id or "?")


def _plan_notes(step: Step, settings: VercelSettings, action: str, health_gate: bool) -> list[str]:
    if not step.changes:
        return [f"{step.desired} is already live in production: nothing to do"]
    verb = "roll production back to" if action == "rollback" else "promote"
    gate = (
        f"then {settings.health_url} must answer 2xx within {settings.health_deadline_s:g} s, "
        f"else {step.current} is promoted back"
        if health_gate
        else f"then {settings.health_url} is probed and reported, not required"
    )
    notes = [f"Vercel will {verb} {step.details.get('to_label', step.desired)}; {gate}"]
    if action == "rollback":
        notes.append("after a rollback Vercel stops assigning new production deployments to the domains "
                     "until one is promoted (`doai-rollback undo` does that)")
    if step.details.get("candidate_note"):
        notes.append(str(step.details["candidate_note"]))
    lar = step.details.get("lastAliasRequest")
    if lar:
        notes.append(f"last alias job: {lar.get('type')} to {lar.get('toDeploymentId')} {lar.get('jobStatus')} "
                     f"at {lar.get('requestedAt')}")
    return notes


class DashboardPart(PartBase):
    """The dashboard on Vercel: roll production back (or promote for undo) through the REST API.

    ``client_factory`` and ``probe`` replace the Vercel client and the health GET in tests
    (``probe(url, timeout_s) -> (healthy, detail)``, like :func:`probe_health`).
    """

    part = Part.DASHBOARD
    needs = "vercel.project in the config file and VERCEL_TOKEN"
    read_changed_by = (Part.DATABASE, Part.BACKEND)  # its health page may read through them

    def __init__(
        self,
        *,
        client_factory: Callable[[VercelSettings], VercelClient] | None = None,
        probe: Callable[[str, float], tuple[bool, str]] | None = None,
    ) -> None:
        self._client_factory = client_factory or VercelClient
        self._probe = probe

    # -- helpers ---------------------------------------------------------------------------------
    def _client(self, settings: VercelSettings) -> VercelClient:
        return self._client_factory(settings)

    def _probe_once(self, settings: VercelSettings) -> tuple[bool, str]:
        return (self._probe or probe_health)(settings.health_url, settings.timeout_s)

    def _health_check(self, ctx: RunContext, health_gate: bool) -> HealthCheck | None:
        vs = ctx.settings.vercel
        if not health_gate:
            # Undo returns to a deployment that was live when the rollback started, most likely
            # unhealthy (that is why it was rolled back): report its health, do not require it.
            def observe() -> tuple[bool, str]:
                ok, detail = self._probe_once(vs)
                ctx.say(f"dashboard health: {detail} ({'healthy' if ok else 'unhealthy'}; reported, not required)")
                return ok, detail

            return ReportOnly(observe)
        if self._probe is None:
            return None  # wait_healthy probes the URL itself, each probe bounded by the time left
        probe = self._probe
        return lambda: probe(vs.health_url, vs.timeout_s)

    # -- configuration and status ----------------------------------------------------------------
    def configured(self, ctx: RunContext) -> bool:
        vs = ctx.settings.vercel
        return bool(vs.project and vs.token)

    @staticmethod
    def _health_answered(detail: str) -> bool:
        """Whether the health probe got an HTTP answer (``HTTP <code>``), whatever its status."""
        return detail.startswith("HTTP ")

    def status(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        """What is live on Vercel and the health URL's answer; ``reachable`` False when the API or
        the health URL is not (``health_state``: healthy, unhealthy or unreachable)."""
        vs = ctx.settings.vercel
        vs.require()
        try:
            with self._client(vs) as c:
                st = dashboard_status(vs, client=c)
            st["reachable"] = True
        except (ApiError, UnreachableError) as exc:
            if exc.exit_status is not ExitStatus.UNREACHABLE:
                raise  # a wrong token, project or team: the operator must fix the configuration
            st = {
                "project": {"id": None, "name": vs.project},
                "production": None,
                "lastAliasRequest": None,
                "autoAssignCustomDomains": None,
                "reachable": False,
                "error": str(exc),
            }
        healthy, detail = self._probe_once(vs)
        answered = self._health_answered(detail)
        st.update(part=self.name, configured=True, health_url=vs.health_url, healthy=healthy, health=detail,
                  # the health URL not answering is not an unhealthy answer: it is not reached (exit 7)
                  health_state="healthy" if healthy else "unhealthy" if answered else "unreachable")
        st["reachable"] = st["reachable"] and answered
        return st

    def status_lines(self, st: dict[str, Any]) -> list[str]:
        if not st.get("configured", True):
            return [f"dashboard: not configured ({self.needs})"]
        project = st.get("project") or {}
        if st.get("health_state") == "unreachable":
            lines = [(f"dashboard {project.get('name')}: UNREACHABLE (the health URL {st.get('health_url')} did not "
                      f"answer: {st.get('health')})")]
        else:
            health = "healthy" if st.get("healthy") else "UNHEALTHY"
            lines = [f"dashboard {project.get('name')}: {health} ({st.get('health')} from {st.get('health_url')})"]
        if st.get("error"):  # the Vercel API was not reached: what is live there is not known
            lines.append(f"    Vercel API UNREACHABLE: {st.get('error')}")
            return lines
        prod = st.get("production") or {}
        lines.append(
            f"    production {prod.get('id', '?')} {prod.get('url', '')} created {prod.get('created', '?')}"
            f" commit {(prod.get('commit') or '?')[:12]}"
        )
        lar = st.get("lastAliasRequest")
        if lar:
            lines.append(
                f"    last {lar.get('type')}: {lar.get('fromDeploymentId')} -> {lar.get('toDeploymentId')}"
                f" {lar.get('jobStatus')} at {lar.get('requestedAt')}"
            )
        if st.get("autoAssignCustomDomains") is False:
            lines.append(
                "    note: production domains are pinned after a rollback; new deploys are not assigned until a promote"
            )
        return lines

    def health(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        """One GET of the health URL (no Vercel API call)."""
        vs = ctx.settings.vercel
        ok, detail = self._probe_once(vs)
        answered = self._health_answered(detail)  # it answered, whatever the status
        out = {
            "healthy": ok,
            "reachable": answered,
            "targets": {vs.health_url: ok},
            "detail": detail,
            "health_url": vs.health_url,
        }
        if not answered:  # not reached: a renderer must not call it UNHEALTHY
            out["states"] = {vs.health_url: "unreachable"}
        return out

    # -- a run -------------------------------------------------------------------------------------
    def request(
        self,
        *,
        to: str | None = None,
        action: str = "rollback",
        targets: Mapping[str, str] | None = None,
        health_gate: bool = True,
        limit: str | None = None,  # backend hosts: nothing to limit on Vercel
        **options: Any,
    ) -> Request:
        if action not in ACTIONS:
            raise ValidationError(f"the dashboard cannot {action!r}", hint=f"actions: {', '.join(ACTIONS)}")
        if to is not None and not str(to).strip():
            raise ValidationError("--to is empty: give a deployment id or URL, or leave --to out")
        ref = normalize_deployment_ref(to) if to is not None else None
        pinned: dict[str, str] = {}
        for project, dep in (targets or {}).items():
            pinned[str(project)] = normalize_deployment_ref(dep)
        if action == "rollback" and pinned:
            raise ValidationError("a dashboard rollback takes --to, not pinned targets")
        if action != "rollback":
            if ref is not None or len(pinned) != 1:
                raise ValidationError(f"a dashboard {action} needs exactly one project and the deployment to promote")
        if "reason" in options:
            options["reason"] = validate.reason(options["reason"])
        return Request(action=action, to=ref, targets=pinned, health_gate=health_gate, options=options)

    def plan(self, ctx: RunContext, request: Request) -> list[Step]:
        vs = ctx.settings.vercel
        vs.require()
        with self._client(vs) as c:
            if request.action == "rollback":
                step = plan_dashboard_rollback(vs, request.to, client=c)
            else:
                ((project, dep),) = request.targets.items()
                step = plan_dashboard_promote(vs, dep, client=c, rule=f"{request.action}: back to {dep}")
                if project not in (step.target, step.details.get("project_id")):
                    raise ValidationError(
                        f"the {request.action} is for Vercel project {project!r}, "
                        f"but vercel.project is {step.target!r}",
                        hint="check vercel.project in the config file",
                    )
        step_labels(step)
        step.notes = _plan_notes(step, vs, request.action, request.health_gate)
        return [step]

    def apply(self, ctx: RunContext, steps: list[Step], request: Request) -> list[StepResult]:
        vs = ctx.settings.vercel
        reason = request.options.get("reason")
        health_check = self._health_check(ctx, request.health_gate)
        run = apply_dashboard_rollback if request.action == "rollback" else promote_dashboard
        results: list[StepResult] = []
        with self._client(vs) as c:
            for step in steps:
                if step.part is not Part.DASHBOARD:
                    continue
                try:
                    results.append(run(step, vs, reason, client=c, health_check=health_check, progress=ctx.say))
                except RollbackFailed as exc:  # Vercel acted: the result says how it ended
                    results.append(
                        exc.result
                        if isinstance(exc.result, StepResult)
                        else StepResult(step, Outcome.RESTORED if exc.restored else Outcome.NOT_RESTORED, str(exc))
                    )
        return results

    def recheck(self, ctx: RunContext, steps: list[Step], request: Request) -> None:
        """Production is still what the plan saw and no alias job runs (one API read)."""
        vs = ctx.settings.vercel
        changing = [s for s in steps if s.part is Part.DASHBOARD and s.changes]
        if changing:
            with self._client(vs) as c:
                for step in changing:
                    _preflight(c, vs, step)

    def revert(self, ctx: RunContext, results: list[StepResult], reason: str | None) -> list[StepResult]:
        vs = ctx.settings.vercel
        out: list[StepResult] = []
        with self._client(vs) as c:
            for r in results:
                if r.step.part is not Part.DASHBOARD or r.outcome is not Outcome.SUCCEEDED or not r.step.current:
                    continue
                ctx.say(f"dashboard {r.step.target}: putting {r.step.current} back ({reason or 'asked to'})")
                back = revert_dashboard(r, vs, reason, client=c, progress=ctx.say)
                r.step, r.outcome, r.message = back.step, back.outcome, back.message
                r.finished, r.duration_s = back.finished, back.duration_s
                out.append(r)
        return out

    def undo_request(self, record: Mapping[str, Any]) -> Request | None:
        for s in self.steps_of(record, Outcome.SUCCEEDED.value):
            if s.get("from") and s.get("target"):
                return self.request(action="undo", targets={str(s["target"]): str(s["from"])}, health_gate=False)
        return None
