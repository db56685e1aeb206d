"""A small client for the Vercel REST API (httpx), covering what a production rollback needs.

Endpoints and parameters are the ones the official Vercel CLI uses for ``vercel rollback``,
``vercel promote`` and ``vercel list`` (vercel 58.x):

==========================================================  ==========================================
``GET  /v9/projects/{idOrName}?rollbackInfo=true``          project, ``targets.production``,
                                                            ``lastAliasRequest``
``GET  /v6/deployments?projectId=&target=&limit=&until=``   deployments, newest first, paginated
  ``[&rollbackCandidate=true]``                              (only those Vercel can roll back to)
``GET  /v13/deployments/{idOrUrl}``                         one deployment
``POST /v9/projects/{projectId}/rollback/{deploymentId}``   roll back (``?description=`` the reason)
``POST /v10/projects/{projectId}/promote/{deploymentId}``   promote (201 done/started, 202 queued)
``GET  /v9/projects/{projectId}/{rollback|promote}/aliases`` aliases of the last alias job
  ``?failedOnly=true&limit=20[&until=]``
==========================================================  ==========================================

Every request carries the team scope (``teamId`` or ``slug``) and a timeout. A read is retried
with exponential backoff and jitter on 429, 5xx and transport errors, honouring ``Retry-After``.
A request that changes something (the rollback and promote POSTs) is sent exactly once: a 503
or a lost answer does not prove that Vercel did not act (it may have started the alias job and
failed afterwards), and a second POST would then race the job the first one started. The error
says what came back (:attr:`VercelApiError.retry_after` included) and the caller decides, after
looking at the project's ``lastAliasRequest`` (see :mod:`doai_ansible.parts.dashboard`).

The token is only ever placed in the Authorization header; it is not in any message, log line or
``repr``.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Self

import httpx

from doai_ansible.errors import ApiError, ConfigError, UnreachableError, ValidationError
from doai_ansible.settings import VercelSettings

log = logging.getLogger(__name__)

USER_AGENT = "doai-rollback"
DEFAULT_MAX_WAIT_S = 30.0  # cap on one wait between retries, Retry-After included
BACKOFF_BASE_S = 0.5
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

Sleep = Callable[[float], None]
Clock = Callable[[], float]


def parse_retry_after(value: str | None, *, now: _dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    now = now or _dt.datetime.now(_dt.UTC)
    return max(0.0, (when - now).total_seconds())


def _error_fields(response: httpx.Response) -> dict[str, Any]:
    """Vercel answers errors as ``{"error": {"code": ..., "message": ...}}``; tolerate anything."""
    try:
        body = response.json()
    except ValueError:
        return {}
    err = body.get("error") if isinstance(body, dict) else None
    return err if isinstance(err, dict) else {}


class VercelApiError(ApiError):
    """An error answer of the Vercel API; ``retry_after`` is its ``Retry-After`` in seconds, if any."""

    def __init__(
        self, message: str, *, status_code: int | None = None, hint: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code, hint=hint)
        self.retry_after = retry_after


class VercelClient:
    """A plain client over httpx; one instance per run (``with VercelClient(settings) as c:``).

    ``transport`` replaces the network (``httpx.MockTransport`` in unit tests); ``sleep`` and
    ``clock`` are used for every wait, here and by :mod:`doai_ansible.dashboard`, so tests neither
    sleep nor depend on timing.
    """

    def __init__(
        self,
        settings: VercelSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        rng: random.Random | None = None,
    ) -> None:
        settings.require()
        assert settings.token is not None and settings.project is not None  # for the type checker
        self.settings = settings
        self.project = settings.project
        self.sleep = sleep
        self.clock = clock
        self.max_wait_s = max_wait_s
        self._rng = rng or random.Random()
        self._scope: dict[str, str] = {}
        if settings.team_id:
            self._scope["teamId"] = settings.team_id
        elif settings.team_slug:
            self._scope["slug"] = settings.team_slug
        self._http = httpx.Client(
            base_url=settings.api_url,
            timeout=httpx.Timeout(settings.timeout_s),
            transport=transport,
            headers={
                "Authorization": f"Bearer {settings.token.reveal()}",
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
            follow_redirects=False,  # a redirect would carry the bearer token elsewhere
        )

    def __repr__(self) -> str:
        return f"VercelClient(api_url={self.settings.api_url!r}, project={self.project!r}, scope={self._scope!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def scope_text(self) -> str:
        if "teamId" in self._scope:
            return f"team {self._scope['teamId']}"
        if "slug" in self._scope:
            return f"team {self._scope['slug']}"
        return "the token's personal account (no team_id/team_slug set)"

    # -- transport -----------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random, capped."""
        delay = min(self.max_wait_s, BACKOFF_BASE_S * (2**attempt))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        what: str = "resource",
    ) -> httpx.Response:
        """Send one API request with scope, retries and error mapping; returns a 2xx response.

        ``what`` names the thing asked for ("project doai-dashboard") in error messages.
        Raises :class:`VercelApiError` for an answer retrying will not fix (or retries ran out, or
        the request changes something) and :class:`UnreachableError` when no answer came.
        """
        query = {**self._scope, **{k: v for k, v in (params or {}).items() if v is not None}}
        # A POST is never sent twice from here: see the module docstring.
        mutating = method.upper() not in ("GET", "HEAD", "OPTIONS")
        attempts = 1 if mutating else self.settings.max_retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            started = self.clock()
            try:
                response = self._http.request(method, path, params=query, json=json)
            except httpx.TransportError as exc:
                if last:
                    raise UnreachableError(
                        f"cannot reach the Vercel API at {self.settings.api_url} "
                        f"({method} {path}: {type(exc).__name__})",
                        hint="check network access and vercel.api_url; try again later",
                    ) from None
                delay = self._backoff(attempt)
                log.warning(
                    "Vercel API %s %s failed (%s); retrying in %.1f s (attempt %d of %d)",
                    method,
                    path,
                    type(exc).__name__,
                    delay,
                    attempt + 2,
                    attempts,
                )
                self.sleep(delay)
                continue
            log.debug("Vercel API %s %s -> %d (%.2f s)", method, path, response.status_code, self.clock() - started)
            status = response.status_code
            if status < 400:
                return response
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if status in RETRY_STATUSES and not last:
                delay = self._backoff(attempt)
                if retry_after is not None:
                    # the server said when; add a little jitter so parallel clients spread out
                    delay = retry_after + self._rng.uniform(0, min(1.0, delay / 2))
                delay = min(delay, self.max_wait_s)
                log.warning(
                    "Vercel API %s %s answered %d; retrying in %.1f s (attempt %d of %d)",
                    method,
                    path,
                    status,
                    delay,
                    attempt + 2,
                    attempts,
                )
                self.sleep(delay)
                continue
            raise self._error(method, path, response, what=what, retry_after=retry_after)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _error(
        self, method: str, path: str, response: httpx.Response, *, what: str, retry_after: float | None = None
    ) -> VercelApiError:
        status = response.status_code
        fields = _error_fields(response)
        code = fields.get("code")
        detail = fields.get("message") or response.reason_phrase
        said = f"{detail} ({code})" if code else str(detail)
        if status == 401 or (status == 403 and fields.get("invalidToken")):
            return VercelApiError(
                f"Vercel rejected the access token ({status}: {said})",
                status_code=status,
                hint="check VERCEL_TOKEN: it may be mistyped, expired or revoked",
            )
        if status == 403:
            return VercelApiError(
                f"Vercel denied access to {what} in {self.scope_text} ({status}: {said})",
                status_code=status,
                hint="check vercel.team_id / vercel.team_slug and that the token's user is a member of that "
                "team with access to the project",
            )
        if status == 404:
            return VercelApiError(
                f"Vercel has no {what} in {self.scope_text} ({said})",
                status_code=status,
                hint="check vercel.project (id or name) and the team scope: a team's project needs "
                "vercel.team_id or vercel.team_slug",
            )
        if status == 429:
            return VercelApiError(
                f"Vercel rate-limited {method} {path} ({status}: {said})",
                status_code=status,
                hint="wait a minute and try again",
                retry_after=retry_after,
            )
        if status >= 500:
            return VercelApiError(
                f"Vercel API failed on {method} {path} ({status}: {said})",
                status_code=status,
                hint="Vercel may be having an incident (https://www.vercel-status.com); try again later",
                retry_after=retry_after,
            )
        return VercelApiError(f"Vercel refused {method} {path} ({status}: {said})", status_code=status)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if not response.content:
            return {}
        try:
            body = response.json()
        except ValueError:
            raise ApiError(
                f"Vercel API answered {response.request.method} {response.request.url.path} with a body "
                "that is not JSON",
                status_code=response.status_code,
                hint="check vercel.api_url points at the Vercel API",
            ) from None
        if not isinstance(body, dict):
            raise ApiError("Vercel API answered with an unexpected body", status_code=response.status_code)
        return body

    # -- the API -------------------------------------------------------------------------------

    def get_user(self) -> dict[str, Any]:
        """``GET /v2/user``: the token's user (a cheap way to check the token)."""
        return self._json(self.request("GET", "/v2/user", what="user for this token")).get("user", {})

    def get_project(self, project: str | None = None, *, rollback_info: bool = True) -> dict[str, Any]:
        """``GET /v9/projects/{idOrName}``; with ``rollback_info`` the body has ``lastAliasRequest``."""
        ref = project or self.project
        params = {"rollbackInfo": "true"} if rollback_info else None
        return self._json(self.request("GET", f"/v9/projects/{_seg(ref)}", params=params, what=f"project {ref!r}"))

    def list_deployments_page(
        self,
        *,
        project_id: str | None = None,
        target: str | None = "production",
        until: int | None = None,
        limit: int = 20,
        state: str | None = None,
        rollback_candidate: bool | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One page of ``GET /v6/deployments`` (newest first): ``(deployments, pagination)``.

        ``rollback_candidate`` True lists only deployments Vercel can roll back to (those that
        were once aliased to production), False only the others.
        """
        if not 1 <= limit <= 100:
            raise ConfigError("limit", "must be between 1 and 100")
        ref = project_id or self.project
        candidate = None if rollback_candidate is None else str(bool(rollback_candidate)).lower()
        body = self._json(
            self.request(
                "GET",
                "/v6/deployments",
                params={
                    "projectId": ref,
                    "target": target,
                    "until": until,
                    "limit": limit,
                    "state": state,
                    "rollbackCandidate": candidate,
                },
                what=f"deployments of project {ref!r}",
            )
        )
        deployments = body.get("deployments")
        if not isinstance(deployments, list):
            raise ApiError("Vercel API answered /v6/deployments without a deployments list")
        return deployments, body.get("pagination") or {}

    def list_deployments(
        self,
        *,
        project_id: str | None = None,
        target: str | None = "production",
        until: int | None = None,
        limit: int = 20,
        state: str | None = None,
        rollback_candidate: bool | None = None,
        max_pages: int = 50,
    ) -> Iterator[dict[str, Any]]:
        """Deployments newest first, following ``pagination.next`` as ``until``, lazily.

        Stop iterating as soon as you found what you need: no further page is fetched.
        ``max_pages`` bounds a runaway listing (a server that never stops paging).
        """
        for _ in range(max_pages):
            page, pagination = self.list_deployments_page(
                project_id=project_id,
                target=target,
                until=until,
                limit=limit,
                state=state,
                rollback_candidate=rollback_candidate,
            )
            yield from page
            nxt = pagination.get("next")
            if not nxt or not page:
                return
            if until is not None and nxt >= until:
                raise ApiError("Vercel API pagination does not advance (pagination.next did not decrease)")
            until = int(nxt)
        raise ApiError(f"gave up listing deployments after {max_pages} pages", hint="pass an explicit deployment")

    def get_deployment(self, id_or_url: str) -> dict[str, Any]:
        """``GET /v13/deployments/{idOrUrl}`` (an id ``dpl_...`` or a deployment host name)."""
        return self._json(self.request("GET", f"/v13/deployments/{_seg(id_or_url)}", what=f"deployment {id_or_url!r}"))

    def request_rollback(self, project_id: str, deployment_id: str, description: str | None = None) -> None:
        """``POST /v9/projects/{projectId}/rollback/{deploymentId}``: starts the alias job (201).

        Sent once; after an error answer or none, look at ``lastAliasRequest`` before anything else.
        """
        self.request(
            "POST",
            f"/v9/projects/{_seg(project_id)}/rollback/{_seg(deployment_id)}",
            params={"description": description or None},
            json={},  # the CLI sends an empty JSON body: the endpoint requires one
            what=f"deployment {deployment_id!r} of project {project_id!r}",
        )

    def promote(self, project_id: str, deployment_id: str) -> bool:
        """``POST /v10/projects/{projectId}/promote/{deploymentId}``; True when only queued (202).

        202 means Vercel queued the promotion behind an active rolling release. Sent once, like
        :meth:`request_rollback`.
        """
        response = self.request(
            "POST",
            f"/v10/projects/{_seg(project_id)}/promote/{_seg(deployment_id)}",
            json={},
            what=f"deployment {deployment_id!r} of project {project_id!r}",
        )
        return response.status_code == 202

    def failed_aliases(self, project_id: str, *, kind: str = "rollback", limit: int = 20) -> list[dict[str, Any]]:
        """Aliases the last rollback (or promote) job failed to move, all pages.

        ``GET /v9/projects/{projectId}/{kind}/aliases?failedOnly=true&limit=`` (``until`` for the
        next page), as the CLI does. Items look like ``{"alias": {"alias", "deploymentId"}, "status"}``.
        """
        if kind not in ("rollback", "promote"):
            raise ValueError(f"kind must be 'rollback' or 'promote', not {kind!r}")
        out: list[dict[str, Any]] = []
        until: int | None = None
        for _ in range(50):
            body = self._json(
                self.request(
                    "GET",
                    f"/v9/projects/{_seg(project_id)}/{kind}/aliases",
                    params={"failedOnly": "true", "limit": limit, "until": until},
                    what=f"{kind} aliases of project {project_id!r}",
                )
            )
            out.extend(a for a in body.get("aliases") or [] if isinstance(a, dict))
            nxt = (body.get("pagination") or {}).get("next")
            if not nxt or (until is not None and nxt >= until):
                break
            until = int(nxt)
        return out


def _seg(value: str) -> str:
    """A path segment: refuse anything that would change the path rather than quote it silently."""
    if not value or any(c in value for c in "/?#%\\ \t\r\n"):
        raise ValidationError(f"{value!r} is not a valid Vercel id or name")
    return value
