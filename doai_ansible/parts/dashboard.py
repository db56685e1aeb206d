"""The dashboard part (Vercel): inspect, plan, apply, verify and revert a production rollback.

Runbook section 1 does ``vercel rollback [deployment-id]`` (or a promote in Vercel's dashboard) and
then ``curl -I https://dashboard.doai.me/api/health``. Here the same happens through the REST API:

* :func:`dashboard_status` - what is live in production and the state of the last rollback/promote.
* :func:`plan_dashboard_rollback` - current -> target as a :class:`~doai_ansible.model.Step`;
  reads only, so ``--dry-run`` is this function and nothing else.
* :func:`apply_dashboard_rollback` - ask Vercel to roll back, follow the alias job, then the health
  gate; if the gate fails, promote the original deployment back.
* :func:`plan_dashboard_promote` / :func:`promote_dashboard` - the same for ``undo``: promote the
  deployment that was live before (Vercel's documented way to undo a rollback).
* :func:`wait_healthy` - the health gate on its own.

Return or raise: ``apply``/``promote`` return a :class:`~doai_ansible.model.StepResult` on success
(outcome SUCCEEDED, or UNCHANGED when the target is already live). When Vercel accepted the change
and something failed afterwards they raise :class:`~doai_ansible.errors.RollbackFailed` with the
StepResult in ``.result`` (outcome RESTORED when production serves the original deployment again,
NOT_RESTORED when it could not be put back). Errors raised before Vercel accepted anything
(:class:`ValidationError`, :class:`ApiError`, :class:`UnreachableError`, :class:`LockedError`) carry no
result: nothing was changed.

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
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from doai_ansible.errors import ApiError, DoaiError, LockedError, RollbackFailed, UnreachableError, ValidationError
from doai_ansible.model import Outcome, Part, Step, StepResult, utcnow
from doai_ansible.settings import VercelSettings
from doai_ansible.clients.vercel import USER_AGENT, Clock, Sleep, VercelClient

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
HealthCheck = Callable[[], bool]


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
    """Newest READY production deployment older than the current one, across pages."""
    for d in c.list_deployments(project_id=project_id, target="production", until=current_created, limit=page_size):
        # The API already filters on target and ``until``; check again so a server that ignores
        # a filter cannot make us pick a preview or a newer deployment.
        created = _dep_created(d)
        if _dep_id(d) == current_id or created is None or created >= current_created:
            continue
        if d.get("target") != "production" or _dep_state(d) != "READY":
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

    ``to`` None picks the newest READY production deployment older than the live one (previews,
    ERROR, CANCELED and BUILDING skipped, following pagination). An explicit ``to`` must be a
    deployment of this project that is READY and production. ``step.current == step.desired``
    (no change) when ``to`` is already live.
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
                    f"no READY production deployment of {name!r} is older than the live one ({current_id})",
                    hint="nothing to roll back to; pass --to DEPLOYMENT to choose one",
                )
            rule = "newest READY production deployment older than the live one"
        else:
            target = _validated_target(c, project, ref, what="--to")
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
                ok, detail = bool(health_check()), "health check"
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
    """Poll ``lastAliasRequest`` until our job leaves pending/in-progress: (alias request, project)."""
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
    """Send the rollback/promote; True when Vercel only queued it (promote 202)."""
    if kind == "rollback":
        c.request_rollback(project_id, to, reason)
        return False
    return c.promote(project_id, to)


def _finish(result: StepResult, t0: float, clock: Clock, outcome: Outcome, message: str) -> StepResult:
    result.outcome = outcome
    result.message = message
    result.finished = utcnow()
    result.duration_s = clock() - t0
    return result


def _revert(
    c: VercelClient,
    settings: VercelSettings,
    project_id: str,
    original: str,
    progress: Progress | None,
    details: dict[str, Any],
) -> bool:
    """Promote ``original`` back; True when production serves it again."""
    _say(progress, f"putting back {original}: promoting it")
    try:
        project = c.get_project(project_id, rollback_info=True)
        if _production_id(project) == original:
            details["revert"] = {"status": "not needed", "production": original}
            return True
        before = (project.get("lastAliasRequest") or {}).get("requestedAt")
        c.promote(project_id, original)
        lar, project = _wait_for_job(c, project_id, "promote", original, before, settings.job_deadline_s, progress)
        live = _production_id(project)
        details["revert"] = {"jobStatus": lar.get("jobStatus"), "production": live}
        return live == original
    except _JobNotDone as exc:
        details["revert"] = {"jobStatus": exc.status, "production": _production_id(exc.project), "timedOut": True}
        return False
    except DoaiError as exc:
        log.error("could not promote %s back: %s", original, exc)
        details["revert"] = {"error": str(exc)}
        return False


def _revert_and_raise(
    c: VercelClient,
    settings: VercelSettings,
    project_id: str,
    original: str,
    progress: Progress | None,
    details: dict[str, Any],
    result: StepResult,
    t0: float,
    why: str,
    hint_if_not_restored: str,
) -> None:
    """Production moved and then failed: promote ``original`` back and raise what came of it."""
    restored = _revert(c, settings, project_id, original, progress, details)
    _finish(
        result,
        t0,
        c.clock,
        Outcome.RESTORED if restored else Outcome.NOT_RESTORED,
        f"{why}; " + (f"promoted {original} back" if restored else f"could NOT put {original} back"),
    )
    raise RollbackFailed(
        result.message, restored=restored, hint=None if restored else hint_if_not_restored, result=result
    )


def _apply(
    kind: str,
    step: Step,
    settings: VercelSettings,
    reason: str | None,
    client: VercelClient | None,
    health_check: HealthCheck | None,
    progress: Progress | None,
) -> StepResult:
    if step.part != Part.DASHBOARD or not step.desired:
        raise ValidationError("not a dashboard step with a target deployment")
    to = step.desired
    original = step.current
    step = dataclasses.replace(step, details=dict(step.details))  # the caller's plan stays as planned
    details = step.details
    with _using(settings, client) as c:
        t0 = c.clock()
        result = StepResult(step=step, outcome=Outcome.FAILED, started=utcnow())
        if not step.changes:
            return _finish(result, t0, c.clock, Outcome.UNCHANGED, f"{to} is already live")

        # -- preflight: production must still be what the plan saw ----------------------------
        project = c.get_project(settings.project, rollback_info=True)
        project_id = str(project["id"])
        name = str(project.get("name") or step.target)
        lar = project.get("lastAliasRequest") or {}
        if lar.get("jobStatus") in JOB_RUNNING:
            raise LockedError(
                f"a Vercel {lar.get('type')} of {name} to {lar.get('toDeploymentId')} is still {lar.get('jobStatus')}",
                hint="wait for it to finish (`vercel rollback status`), then plan again",
            )
        live = _production_id(project)
        if live == to:
            return _finish(result, t0, c.clock, Outcome.UNCHANGED, f"{to} is already live")
        if live != original:
            raise ValidationError(
                f"production of {name} is now {live}, not {original} as planned",
                hint="someone changed it meanwhile: plan again",
            )
        before = lar.get("requestedAt")

        # -- apply --------------------------------------------------------------------------------
        _say(progress, f"requesting Vercel {kind} of {name}: {original} -> {to}")
        try:
            queued = _request_change(c, kind, project_id, to, (reason or "").strip() or None)
        except ApiError as exc:
            if exc.status_code == 409:
                raise LockedError(
                    f"Vercel refused the {kind}: another rollback or promote is in progress for {name}",
                    hint="wait for it to finish, then plan again",
                ) from None
            if exc.status_code == 402:
                raise ApiError(
                    exc.message,
                    status_code=402,
                    hint="on Vercel's Hobby plan only the previous production deployment can be rolled back to",
                ) from None
            if exc.status_code is not None and exc.status_code < 500:
                raise
            queued = _accepted_anyway(c, project_id, kind, to, before, exc)
        except UnreachableError as exc:
            queued = _accepted_anyway(c, project_id, kind, to, before, exc)
        if queued:
            _say(progress, "Vercel queued the promotion behind an active rolling release")
        details["requested"] = {"type": kind, "to": to, "reason": reason, "queued": queued}

        # -- follow the alias job ---------------------------------------------------------------
        try:
            lar, project = _wait_for_job(c, project_id, kind, to, before, settings.job_deadline_s, progress)
        except _JobNotDone as exc:
            live = _production_id(exc.project)
            details["job"] = {"jobStatus": exc.status, "production": live, "superseded": exc.superseded}
            why = (
                "another rollback/promote replaced ours"
                if exc.superseded
                else f"the alias job was still {exc.status or 'not started'} after {settings.job_deadline_s:g} s"
            )
            _finish(result, t0, c.clock, Outcome.NOT_RESTORED, f"{kind} of {name} to {to}: {why}; production: {live}")
            raise RollbackFailed(
                result.message,
                restored=False,
                hint=f"check `vercel {kind} status`; to go back, promote {original}",
                result=result,
            ) from None
        status = str(lar.get("jobStatus"))
        live = _production_id(project)
        details["job"] = {"jobStatus": status, "production": live}

        # "failed" is a failure even when production moved: some aliases still point elsewhere.
        # "skipped" is fine when the target is live anyway (someone else did it).
        if status == "failed" or (status != "succeeded" and live != to):
            failed: list[dict[str, Any]] = []
            if status == "failed":
                try:
                    failed = [
                        {
                            "alias": (a.get("alias") or {}).get("alias"),
                            "deploymentId": (a.get("alias") or {}).get("deploymentId"),
                            "status": a.get("status"),
                        }
                        for a in c.failed_aliases(project_id, kind=kind)
                    ]
                except DoaiError as exc:
                    log.warning("could not list the failed aliases: %s", exc)
            details["failedAliases"] = failed
            names = ", ".join(str(a["alias"]) for a in failed) or "unknown aliases"
            if live == original:
                _finish(
                    result,
                    t0,
                    c.clock,
                    Outcome.RESTORED,
                    f"Vercel {kind} job {status} (failed aliases: {names}); production still serves {original}",
                )
                raise RollbackFailed(
                    result.message,
                    restored=True,
                    hint="nothing changed; see the failed aliases in Vercel's domains settings",
                    result=result,
                )
            _revert_and_raise(c, settings, project_id, str(original), progress, details, result, t0,
                              f"Vercel {kind} job {status} (failed aliases: {names})",
                              f"promote {original} in Vercel now")

        # -- verify: the health gate -----------------------------------------------------------
        _say(progress, f"{name} now serves {to}; checking {settings.health_url}")
        healthy, health_detail = wait_healthy(
            settings, health_check=health_check, sleep=c.sleep, clock=c.clock, progress=progress
        )
        details["health"] = {"url": settings.health_url, "healthy": healthy, "detail": health_detail}
        if healthy:
            return _finish(result, t0, c.clock, Outcome.SUCCEEDED, f"{name} serves {to}; {health_detail}")
        _revert_and_raise(c, settings, project_id, str(original), progress, details, result, t0,
                          f"health gate failed: {health_detail}",
                          f"promote {original} in Vercel now, or pick another target")


def _accepted_anyway(c: VercelClient, project_id: str, kind: str, to: str, before: Any, error: DoaiError) -> bool:
    """After an ambiguous failure of the request, look whether Vercel started the job anyway.

    Returns False (not queued) when it did; re-raises ``error`` when it verifiably did not; raises
    RollbackFailed(restored=False) when it cannot tell.
    """
    try:
        project = c.get_project(project_id, rollback_info=True)
    except DoaiError:
        raise RollbackFailed(
            f"could not tell whether Vercel accepted the {kind} to {to} ({error})",
            restored=False,
            hint=f"check `vercel {kind} status` before doing anything else",
        ) from None
    if _is_ours(project.get("lastAliasRequest"), kind, to, before):
        log.warning("the %s request failed (%s) but Vercel started the job; following it", kind, error)
        return False
    raise error


def apply_dashboard_rollback(
    step: Step,
    settings: VercelSettings,
    reason: str,
    client: VercelClient | None = None,
    health_check: HealthCheck | None = None,
    progress: Progress | None = None,
) -> StepResult:
    """Roll production back to ``step.desired``, follow the alias job, then the health gate.

    ``reason`` goes to Vercel as the rollback's description. ``health_check`` replaces the GET of
    ``settings.health_url`` (one probe, True when healthy; it is polled until the deadline).
    Returns the StepResult (SUCCEEDED / UNCHANGED); raises RollbackFailed with ``.result`` (RESTORED
    / NOT_RESTORED) after a change went wrong; ValidationError, LockedError, ApiError or
    UnreachableError when nothing was changed.
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
