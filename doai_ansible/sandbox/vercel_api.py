"""A local stand-in for the Vercel REST API, on 127.0.0.1, for our client and the official CLI.

It implements the endpoints that ``doai_ansible.clients.vercel`` and the official Vercel CLI (58.x) call for
``rollback``, ``rollback status``, ``promote``, ``promote status`` and ``list``, with bodies shaped
like the real API's: ``/v6/deployments`` items carry ``uid``/``created``/``state``,
``/v13/deployments/{idOrUrl}`` carries ``id``/``createdAt``/``readyState``, the project carries
``targets.production`` and, with ``?rollbackInfo=true``, ``lastAliasRequest``/``lastRollbackTarget``.

Behaviour worth knowing when writing tests:

* Auth: ``Authorization: Bearer <token>``; an unknown or missing token gets 401.
* Scope: ``teamId`` or ``slug`` selects a team the token's user belongs to (else 403); without
  either, the user's personal account. Projects are looked up by id or name inside that scope.
* ``/v6/deployments``: newest first; ``limit`` (default 20, max 100); ``until``/``since`` are
  exclusive bounds on ``created``; ``pagination = {count, next, prev}`` where ``next`` is the
  ``created`` of the page's last item when more remain, else ``null``.
* Alias jobs: a rollback/promote request sets ``lastAliasRequest`` with ``jobStatus`` "pending";
  it advances pending -> in-progress -> outcome, by the number of project polls that ask for
  ``rollbackInfo`` (``stage_polls`` per stage) or, when ``stage_seconds`` is set, by time. The
  outcome comes from ``queue_job_outcomes(...)`` (default "succeeded"). On "succeeded" production
  moves to the new deployment; on "failed" the aliases in ``failing_domains`` fail and production
  stays where it was (unless ``failure_moves_production``); "skipped" changes nothing. A request
  for the deployment that is already live is skipped, as Vercel does.
* Rollback eligibility: a deployment is a rollback candidate (``isRollbackCandidate``) once it has
  been live in production: built with auto-assign on, made live by ``live=``/``set_production`` or
  by a rollback/promote job. One added with ``staged=True`` (a production build made while
  auto-assign was off, ``readySubstate`` "STAGED") is not, until it is promoted. A rollback to a
  non-candidate is refused with 400 (the code and wording of that answer are our guess; the
  official CLI only shows the message). ``/v6/deployments?rollbackCandidate=true`` lists only
  candidates, unless ``ignored_filters`` names that filter (a server that ignores it).
* Faults, each for the next matching request(s):
  - ``arm_rate_limit()``: 429 + ``Retry-After``, before anything happens;
  - ``arm_unavailable()``: a 5xx (``retry_after=`` adds the header) before anything happens, or,
    with ``after_acting=True``, after doing what was asked ("process then answer 503");
  - ``arm_drop()``: close the connection without an answer, after acting by default ("process
    then drop the connection") or before;
  - ``arm_outage()``: act on the request (and answer it, unless ``answer=False``), then drop
    every later request ("API down after the POST"); ``for_requests=`` ends the outage after that
    many dropped requests, ``end_outage()`` ends it by hand.
  A dropped request is logged with status 0 (``DROPPED``); over HTTP the client sees the
  connection closed, through ``transport()`` an ``httpx.RemoteProtocolError``.
* ``requests`` logs every request (method, path, query, body, status) and never keeps the
  Authorization header; ``mutating_requests()`` leaves out the reads.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import random
import re
import string
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

_ALNUM = string.ascii_letters + string.digits
JOB_OUTCOMES = ("succeeded", "failed", "skipped")
READ_METHODS = ("GET", "HEAD", "OPTIONS")
DROPPED = 0  # the status logged for a request answered by closing the connection


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ApiFailure(Exception):
    """Raised inside a handler: becomes a Vercel-style ``{"error": {...}}`` answer."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"code": code, "message": message, **extra}}


# --------------------------------------------------------------------------------------------
# The data model
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class User:
    id: str
    username: str
    email: str
    name: str

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uid": self.id,
            "email": self.email,
            "name": self.name,
            "username": self.username,
            "avatar": None,
            "defaultTeamId": None,
            "billing": {"plan": "hobby"},
        }


@dataclasses.dataclass
class Team:
    id: str
    slug: str
    name: str
    creator_id: str
    created_at: int
    members: set[str] = dataclasses.field(default_factory=set)

    def body(self, user_id: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "slug": self.slug,
            "name": self.name,
            "creatorId": self.creator_id,
            "created": iso(self.created_at),
            "createdAt": self.created_at,
            "avatar": None,
            "membership": {"role": "OWNER" if user_id == self.creator_id else "MEMBER", "confirmed": True},
        }


@dataclasses.dataclass
class Project:
    id: str
    name: str
    account_id: str  # a team id or a user id
    created_at: int
    domains: list[str]
    production_id: str | None = None
    last_alias_request: dict[str, Any] | None = None
    last_rollback_target: dict[str, Any] | None = None
    auto_assign_custom_domains: bool = True
    # the aliases of the last alias job, for /rollback/aliases and /promote/aliases
    alias_statuses: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Deployment:
    id: str
    project_id: str
    name: str
    url: str
    owner_id: str
    creator: User
    created_at: int
    state: str = "READY"
    target: str | None = "production"
    meta: dict[str, str] = dataclasses.field(default_factory=dict)
    team: Team | None = None
    was_live: bool = False  # has been aliased to the production domains at some time

    @property
    def building_at(self) -> int:
        return self.created_at + 2_000

    @property
    def ready(self) -> int | None:
        return self.created_at + 45_000 if self.state == "READY" else None

    @property
    def rollback_candidate(self) -> bool:
        return self.state == "READY" and self.target == "production" and self.was_live

    @property
    def ready_substate(self) -> str | None:
        if self.state != "READY" or self.target != "production":
            return None
        return "PROMOTED" if self.was_live else "STAGED"

    def list_item(self) -> dict[str, Any]:
        """An item of ``GET /v6/deployments`` (the legacy shape: ``uid``, ``created``, ``state``)."""
        return {
            "uid": self.id,
            "name": self.name,
            "projectId": self.project_id,
            "url": self.url,
            "created": self.created_at,
            "source": "git",
            "state": self.state,
            "readyState": self.state,
            "readySubstate": self.ready_substate,
            "type": "LAMBDAS",
            "creator": {
                "uid": self.creator.id,
                "email": self.creator.email,
                "username": self.creator.username,
                "githubLogin": self.creator.username,
            },
            "inspectorUrl": f"https://vercel.com/{self.team.slug if self.team else self.creator.username}/"
            f"{self.name}/{self.id[4:]}",
            "meta": dict(self.meta),
            "target": self.target,
            "aliasError": None,
            "aliasAssigned": self.ready if self.target == "production" else None,
            "isRollbackCandidate": self.rollback_candidate,
            "createdAt": self.created_at,
            "buildingAt": self.building_at,
            "ready": self.ready,
            "projectSettings": {"framework": "nextjs"},
        }

    def full(self, aliases: list[str]) -> dict[str, Any]:
        """The body of ``GET /v13/deployments/{idOrUrl}``."""
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "url": self.url,
            "projectId": self.project_id,
            "ownerId": self.owner_id,
            "createdAt": self.created_at,
            "buildingAt": self.building_at,
            "ready": self.ready,
            "readyState": self.state,
            "readySubstate": self.ready_substate,
            "status": self.state,
            "target": self.target,
            "type": "LAMBDAS",
            "version": 2,
            "source": "git",
            "plan": "pro" if self.team else "hobby",
            "public": False,
            "regions": ["fra1"],
            "createdIn": "fra1",
            "meta": dict(self.meta),
            "alias": list(aliases),
            "aliasAssigned": self.ready if aliases else None,
            "aliasError": None,
            "isRollbackCandidate": self.rollback_candidate,
            "creator": {"uid": self.creator.id, "username": self.creator.username},
            "inspectorUrl": f"https://vercel.com/{self.team.slug if self.team else self.creator.username}/"
            f"{self.name}/{self.id[4:]}",
            "routes": None,
            "env": [],
            "build": {"env": []},
        }
        if self.team is not None:
            body["team"] = {"id": self.team.id, "name": self.team.name, "slug": self.team.slug}
        return body


@dataclasses.dataclass
class AliasJob:
    project_id: str
    type: str  # "rollback" | "promote"
    from_id: str | None
    to_id: str
    requested_at: int
    outcome: str
    started: float = dataclasses.field(default_factory=time.monotonic)
    polls: int = 0
    settled: bool = False


@dataclasses.dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0
    authorized: bool = False

    @property
    def mutating(self) -> bool:
        return self.method not in READ_METHODS


@dataclasses.dataclass
class _Fault:
    status: int
    remaining: int
    method: str | None
    path_prefix: str | None
    headers: dict[str, str]
    body: dict[str, Any]
    after: bool = False  # act on the request, then answer with the fault (a lost answer)
    outage: int | None = None  # then drop this many later requests (0: until end_outage())

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_prefix is None or path.startswith(self.path_prefix)
        )


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class VercelStandIn:
    """The stand-in: state, fault injection and the HTTP server (``with VercelStandIn() as api``)."""

    def __init__(self, *, seed: int = 7, stage_polls: int = 1, stage_seconds: float | None = None) -> None:
        self.rng = random.Random(seed)
        self.stage_polls = stage_polls
        self.stage_seconds = stage_seconds
        self.failing_domains: list[str] | None = None  # None: the first domain of the project fails
        self.failure_moves_production = False
        self.promote_queued = False  # answer promote with 202 (queued behind a rolling release)
        self.ignored_filters: set[str] = set()  # /v6/deployments query filters to ignore, e.g. "rollbackCandidate"
        self.users: dict[str, User] = {}
        self.tokens: dict[str, str] = {}  # token -> user id
        self.teams: dict[str, Team] = {}
        self.projects: dict[str, Project] = {}
        self.deployments: dict[str, Deployment] = {}
        self.jobs: dict[str, AliasJob] = {}  # project id -> last alias job
        self.requests: list[LoggedRequest] = []
        self.unhandled: list[str] = []
        self._outcomes: list[str] = []
        self._faults: list[_Fault] = []
        self._down: int | None = None  # during an outage: requests left to drop (0: until end_outage())
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> VercelStandIn:
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="vercel-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> VercelStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "the stand-in is not started"
        host, port = str(self._server.server_address[0]), self._server.server_address[1]
        return f"http://{host}:{port}"

    # -- building the world --------------------------------------------------------------------

    def new_id(self, prefix: str, n: int = 24) -> str:
        return prefix + "".join(self.rng.choice(_ALNUM) for _ in range(n))

    def add_user(self, username: str, token: str, *, email: str | None = None, name: str | None = None) -> User:
        user = User(self.new_id(""), username, email or f"{username}@example.com", name or username)
        with self._lock:
            self.users[user.id] = user
            self.tokens[token] = user.id
        return user

    def add_token(self, user: User, token: str) -> None:
        """Another token of ``user`` (the official CLI refuses tokens that contain a dash)."""
        with self._lock:
            self.tokens[token] = user.id

    def add_team(self, slug: str, name: str, *, owner: User, members: tuple[User, ...] = ()) -> Team:
        team = Team(self.new_id("team_"), slug, name, owner.id, now_ms() - 400 * 86_400_000)
        team.members = {owner.id, *(m.id for m in members)}
        with self._lock:
            self.teams[team.id] = team
        return team

    def add_project(self, name: str, *, owner: Team | User, domains: list[str] | None = None) -> Project:
        project = Project(
            id=self.new_id("prj_", 28),
            name=name,
            account_id=owner.id,
            created_at=now_ms() - 200 * 86_400_000,
            domains=domains if domains is not None else [f"{name}.vercel.app"],
        )
        with self._lock:
            self.projects[project.id] = project
        return project

    def add_deployment(
        self,
        project: Project,
        *,
        creator: User,
        age_s: float,
        state: str = "READY",
        target: str | None = "production",
        meta: dict[str, str] | None = None,
        live: bool = False,
        staged: bool = False,
    ) -> Deployment:
        """A deployment; a READY production one counts as once live unless ``staged``."""
        team = self.teams.get(project.account_id)
        scope = team.slug if team else creator.username
        host = f"{project.name}-{''.join(self.rng.choice(string.ascii_lowercase + string.digits) for _ in range(9))}"
        dep = Deployment(
            id=self.new_id("dpl_", 28),
            project_id=project.id,
            name=project.name,
            url=f"{host}-{scope}.vercel.app",
            owner_id=project.account_id,
            creator=creator,
            created_at=now_ms() - int(age_s * 1000),
            state=state,
            target=target,
            meta=dict(meta or {}),
            team=team,
            was_live=live or (state == "READY" and target == "production" and not staged),
        )
        with self._lock:
            if any(d.created_at == dep.created_at for d in self.deployments.values()):
                dep.created_at -= 1  # keep timestamps unique: pagination cuts on them
            self.deployments[dep.id] = dep
            if live:
                project.production_id = dep.id
        return dep

    # -- test controls -------------------------------------------------------------------------

    def queue_job_outcomes(self, *outcomes: str) -> None:
        for outcome in outcomes:
            if outcome not in JOB_OUTCOMES:
                raise ValueError(f"unknown job outcome {outcome!r}")
        with self._lock:
            self._outcomes.extend(outcomes)

    def arm_rate_limit(
        self, *, retry_after: str = "1", count: int = 1, method: str | None = None, path_prefix: str | None = None
    ) -> None:
        """The next ``count`` matching requests get 429 with this ``Retry-After`` (seconds or HTTP date)."""
        reset = int(time.time()) + 1
        self._arm(
            _Fault(
                429,
                count,
                method,
                path_prefix,
                {
                    "Retry-After": retry_after,
                    "X-RateLimit-Limit": "100",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(reset),
                },
                {
                    "error": {
                        "code": "rate_limited",
                        "message": "Rate limit exceeded",
                        "limit": {"remaining": 0, "reset": reset, "resetMs": reset * 1000, "total": 100},
                    }
                },
            )
        )

    def arm_unavailable(
        self,
        *,
        status: int = 503,
        count: int = 1,
        method: str | None = None,
        path_prefix: str | None = None,
        after_acting: bool = False,
        retry_after: str | None = None,
    ) -> None:
        """The next ``count`` matching requests get a 5xx (one-off by default).

        With ``after_acting`` the stand-in first does what the request asks and only the answer is
        replaced: the case of a gateway that times out after the API accepted a rollback.
        ``retry_after`` adds that ``Retry-After`` header.
        """
        self._arm(
            _Fault(
                status,
                count,
                method,
                path_prefix,
                {"Retry-After": retry_after} if retry_after is not None else {},
                {"error": {"code": "internal_server_error", "message": "Service Unavailable"}},
                after=after_acting,
            )
        )

    def arm_drop(
        self, *, count: int = 1, method: str | None = None, path_prefix: str | None = None, after_acting: bool = True
    ) -> None:
        """The next ``count`` matching requests are answered by closing the connection.

        ``after_acting`` (the default) does what the request asks first: the answer to an accepted
        rollback is lost on the way back. Without it the request is dropped unseen.
        """
        self._arm(_Fault(DROPPED, count, method, path_prefix, {}, {}, after=after_acting))

    def arm_outage(
        self,
        *,
        method: str | None = "POST",
        path_prefix: str | None = None,
        answer: bool = True,
        for_requests: int | None = None,
    ) -> None:
        """After the next matching request is acted on, the API goes down: later requests are dropped.

        ``answer`` False loses that request's answer too. ``for_requests`` ends the outage after
        that many dropped requests; otherwise it lasts until :meth:`end_outage`.
        """
        status = -1 if answer else DROPPED  # -1: the request's own answer
        self._arm(_Fault(status, 1, method, path_prefix, {}, {}, after=True, outage=for_requests or 0))

    def end_outage(self) -> None:
        with self._lock:
            self._down = None

    @property
    def down(self) -> bool:
        with self._lock:
            return self._down is not None

    def _arm(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def mutating_requests(self) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.requests if r.mutating and not r.path.startswith("/_telemetry")]

    def requests_to(self, method: str, path_re: str) -> list[LoggedRequest]:
        pattern = re.compile(path_re)
        with self._lock:
            return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]

    def production_of(self, project: Project | str) -> str | None:
        pid = project.id if isinstance(project, Project) else project
        with self._lock:
            return self.projects[pid].production_id

    def set_production(self, project: Project, deployment: Deployment) -> None:
        with self._lock:
            project.production_id = deployment.id
            deployment.was_live = True

    def restore_project(self, project: Project, live: Deployment, *, drop: tuple[Deployment, ...] = ()) -> None:
        """Back to a quiet project with ``live`` in production: no alias job, no rollback record,
        auto-assign on, ``drop`` deployments gone; no armed fault, queued outcome or logged request
        left. For rigs reused between tests (the system rig's reset)."""
        with self._lock:
            for dep in drop:
                self.deployments.pop(dep.id, None)
            self.jobs.pop(project.id, None)
            project.production_id = live.id
            live.was_live = True
            project.last_alias_request = None
            project.last_rollback_target = None
            project.auto_assign_custom_domains = True
            project.alias_statuses = []
            self._outcomes.clear()
            self._faults.clear()
            self._down = None
            self.requests.clear()
            self.unhandled.clear()

    def transport(self) -> Any:
        """An ``httpx.MockTransport`` answering from this stand-in in-process (no server needed).

        Unit tests use it with a fake clock; the integration tests use the real server (``url``).
        """
        import httpx  # only the unit tests need it; the server itself is stdlib only

        def answer(request: httpx.Request) -> httpx.Response:
            raw = request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            target = request.url.raw_path.decode("ascii")
            headers = {k.lower(): v for k, v in request.headers.items()}
            status, payload, extra = self.handle(request.method, target, headers, body)
            if status == DROPPED:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
            if payload is None:
                return httpx.Response(status, headers=extra)
            return httpx.Response(status, json=payload, headers=extra)

        return httpx.MockTransport(answer)

    # -- request handling ----------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(raw_path)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        entry = LoggedRequest(method, path, query, body)
        with self._lock:
            self.requests.append(entry)
            status, payload, extra = self._handle_locked(method, path, query, headers, body, entry)
            entry.status = status
        return status, payload, extra

    def _handle_locked(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any, entry: LoggedRequest
    ) -> tuple[int, Any, dict[str, str]]:
        if path.startswith("/_telemetry"):
            return 204, None, {}
        if self._down is not None:
            if self._down > 0:
                self._down -= 1
                if self._down == 0:
                    self._down = None
            return DROPPED, None, {}
        late: _Fault | None = None
        for fault in self._faults:
            if fault.remaining > 0 and fault.matches(method, path):
                fault.remaining -= 1
                if not fault.after:
                    return fault.status, fault.body or None, dict(fault.headers)
                late = fault
                break
        status, payload, extra = self._dispatch(method, path, query, headers, body, entry)
        if late is None:
            return status, payload, extra
        if late.outage is not None:
            self._down = late.outage
        if late.status == -1:
            return status, payload, extra
        return late.status, late.body or None, dict(late.headers)

    def _dispatch(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any, entry: LoggedRequest
    ) -> tuple[int, Any, dict[str, str]]:
        auth = headers.get("authorization", "")
        user_id = self.tokens.get(auth[7:]) if auth.lower().startswith("bearer ") else None
        if user_id is None:
            return 401, {"error": {"code": "forbidden", "message": "Not authorized", "invalidToken": True}}, {}
        entry.authorized = True
        user = self.users[user_id]
        for route_method, pattern, func in _ROUTES:
            if route_method != method:
                continue
            m = pattern.fullmatch(path)
            if m:
                try:
                    return func(self, user, query, body, *(unquote(g) for g in m.groups()))
                except ApiFailure as exc:
                    return exc.status, exc.body, {}
        self.unhandled.append(f"{method} {path}")
        return 404, {"error": {"code": "not_found", "message": "The requested URL was not found"}}, {}

    # -- helpers for the routes ----------------------------------------------------------------

    def _scope(self, user: User, query: dict[str, str]) -> str:
        """The account (team id or user id) a request acts on."""
        team_ref = query.get("teamId") or query.get("slug")
        if not team_ref:
            return user.id
        team = self.teams.get(team_ref) or next((t for t in self.teams.values() if t.slug == team_ref), None)
        if team is None or user.id not in team.members:
            raise ApiFailure(403, "forbidden", "Not authorized")
        return team.id

    def _project(self, user: User, query: dict[str, str], id_or_name: str) -> Project:
        account = self._scope(user, query)
        for project in self.projects.values():
            if project.account_id == account and id_or_name in (project.id, project.name):
                return project
        raise ApiFailure(404, "not_found", "Project not found")

    def _can_see(self, user: User, dep: Deployment) -> bool:
        team = self.teams.get(dep.owner_id)
        return dep.owner_id == user.id or (team is not None and user.id in team.members)

    def _aliases_of(self, dep: Deployment) -> list[str]:
        project = self.projects[dep.project_id]
        live = [s["alias"]["alias"] for s in project.alias_statuses if s["alias"]["deploymentId"] == dep.id]
        if project.production_id == dep.id:
            return sorted(set(project.domains) | set(live))
        return live

    def _advance(self, project: Project, *, poll: bool) -> None:
        job = self.jobs.get(project.id)
        if job is None or job.settled:
            return
        if self.stage_seconds:
            stage = int((time.monotonic() - job.started) // self.stage_seconds)
        else:
            if poll:
                job.polls += 1
            stage = max(0, job.polls - 1) // max(1, self.stage_polls)
        if stage == 0:
            status = "pending"
        elif stage == 1:
            status = "in-progress"
        else:
            status = job.outcome
            self._settle(project, job)
        assert project.last_alias_request is not None
        project.last_alias_request["jobStatus"] = status
        if job.type == "rollback" and project.last_rollback_target is not None:
            project.last_rollback_target["jobStatus"] = status

    def _settle(self, project: Project, job: AliasJob) -> None:
        job.settled = True
        stamp = now_ms()
        failing = set(self.failing_domains if self.failing_domains is not None else project.domains[:1])
        statuses = []
        dep_id: str | None
        for i, domain in enumerate(project.domains):
            if job.outcome == "succeeded":
                status, dep_id = "completed", job.to_id
            elif job.outcome == "failed":
                if domain in failing:
                    status, dep_id = "failed", job.from_id
                elif self.failure_moves_production:
                    status, dep_id = "completed", job.to_id
                else:
                    status, dep_id = "skipped", job.from_id
            else:
                status, dep_id = "skipped", job.from_id
            statuses.append(
                {
                    "alias": {"alias": domain, "deploymentId": dep_id},
                    "status": status,
                    "id": f"alias_{i}",
                    "createdAt": stamp - i,
                }
            )
        project.alias_statuses = statuses
        if job.outcome == "succeeded" or (job.outcome == "failed" and self.failure_moves_production):
            project.production_id = job.to_id
            self.deployments[job.to_id].was_live = True
            # after a rollback Vercel stops assigning new production deployments until a promote
            project.auto_assign_custom_domains = job.type == "promote"

    def _start_job(self, user: User, query: dict[str, str], project_ref: str, dep_id: str, kind: str) -> Project:
        project = self._project(user, query, project_ref)
        dep = self.deployments.get(dep_id)
        if dep is None or dep.project_id != project.id:
            raise ApiFailure(404, "not_found", "Deployment not found", id=dep_id)
        if dep.state != "READY":
            raise ApiFailure(400, "invalid_deployment", f"The deployment is not ready ({dep.state})")
        if dep.target != "production":
            raise ApiFailure(400, "invalid_deployment", f"Only production deployments can be used for a {kind}")
        if kind == "rollback" and not dep.rollback_candidate:
            raise ApiFailure(
                400,
                "not_rollback_candidate",
                "This deployment was never assigned to production and cannot be rolled back to",
            )
        self._advance(project, poll=False)
        running = self.jobs.get(project.id)
        if running is not None and not running.settled:
            raise ApiFailure(409, "conflict", "A rollback or promote is already in progress for this project")
        if dep.id == project.production_id:
            outcome = "skipped"
        else:
            outcome = self._outcomes.pop(0) if self._outcomes else "succeeded"
        job = AliasJob(project.id, kind, project.production_id, dep.id, now_ms(), outcome)
        self.jobs[project.id] = job
        project.last_alias_request = {
            "fromDeploymentId": job.from_id,
            "toDeploymentId": job.to_id,
            "jobStatus": "pending",
            "requestedAt": job.requested_at,
            "type": kind,
        }
        if kind == "rollback":
            project.last_rollback_target = {
                "fromDeploymentId": job.from_id,
                "toDeploymentId": job.to_id,
                "jobStatus": "pending",
                "requestedAt": job.requested_at,
            }
        project.alias_statuses = [
            {
                "alias": {"alias": d, "deploymentId": job.from_id},
                "status": "pending",
                "id": f"alias_{i}",
                "createdAt": job.requested_at - i,
            }
            for i, d in enumerate(project.domains)
        ]
        return project

    def project_body(self, project: Project, *, rollback_info: bool) -> dict[str, Any]:
        deps = sorted(
            (d for d in self.deployments.values() if d.project_id == project.id),
            key=lambda d: d.created_at,
            reverse=True,
        )

        def target_summary(dep: Deployment) -> dict[str, Any]:
            full = dep.full(self._aliases_of(dep))
            keep = (
                "id",
                "url",
                "name",
                "createdAt",
                "buildingAt",
                "readyState",
                "readySubstate",
                "target",
                "meta",
                "alias",
                "aliasAssigned",
                "aliasError",
                "creator",
                "type",
                "plan",
                "inspectorUrl",
            )
            out = {k: full[k] for k in keep}
            out["createdIn"] = "fra1"
            out["deploymentHostname"] = dep.url.removesuffix(".vercel.app")
            out["teamId"] = dep.team.id if dep.team else None
            out["userId"] = dep.creator.id
            return out

        body: dict[str, Any] = {
            "accountId": project.account_id,
            "id": project.id,
            "name": project.name,
            "framework": "nextjs",
            "nodeVersion": "20.x",
            "createdAt": project.created_at,
            "updatedAt": max([project.created_at, *(d.created_at for d in deps)]),
            "autoAssignCustomDomains": project.auto_assign_custom_domains,
            "live": False,
            "link": {"type": "github", "org": "doai-me", "repo": project.name, "productionBranch": "main"},
            "latestDeployments": [target_summary(d) for d in deps[:5]],
            "targets": {},
            "rollingRelease": None,
        }
        if project.production_id:
            body["targets"]["production"] = target_summary(self.deployments[project.production_id])
        previews = [d for d in deps if d.target != "production"]
        if previews:
            body["targets"]["preview"] = target_summary(previews[0])
        if rollback_info:
            body["lastAliasRequest"] = dict(project.last_alias_request) if project.last_alias_request else None
            body["lastRollbackTarget"] = dict(project.last_rollback_target) if project.last_rollback_target else None
        return body


# --------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------

Handler = Callable[..., tuple[int, Any, dict[str, str]]]
_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def deco(func: Handler) -> Handler:
        _ROUTES.append((method, re.compile(pattern), func))
        return func

    return deco


@route("GET", r"/v2/user")
def _get_user(s: VercelStandIn, user: User, q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
    return 200, {"user": user.body()}, {}


@route("GET", r"/(?:v1/|v2/)?teams/([^/]+)")
def _get_team(s: VercelStandIn, user: User, q: dict[str, str], body: Any, ref: str) -> tuple[int, Any, dict[str, str]]:
    team = s.teams.get(ref) or next((t for t in s.teams.values() if t.slug == ref), None)
    if team is None:
        raise ApiFailure(404, "not_found", "Team not found")
    if user.id not in team.members:
        raise ApiFailure(403, "forbidden", "Not authorized")
    return 200, team.body(user.id), {}


@route("GET", r"/(?:v1|v2)/teams")
def _list_teams(s: VercelStandIn, user: User, q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
    teams = [t.body(user.id) for t in s.teams.values() if user.id in t.members]
    return 200, {"teams": teams, "pagination": {"count": len(teams), "next": None, "prev": None}}, {}


@route("GET", r"/v9/projects/([^/]+)")
def _get_project(
    s: VercelStandIn, user: User, q: dict[str, str], body: Any, ref: str
) -> tuple[int, Any, dict[str, str]]:
    project = s._project(user, q, ref)
    rollback_info = q.get("rollbackInfo") == "true"
    s._advance(project, poll=rollback_info)
    return 200, s.project_body(project, rollback_info=rollback_info), {}


@route("GET", r"/v9/projects")
def _list_projects(s: VercelStandIn, user: User, q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
    account = s._scope(user, q)
    projects = [s.project_body(p, rollback_info=False) for p in s.projects.values() if p.account_id == account]
    return 200, {"projects": projects, "pagination": {"count": len(projects), "next": None, "prev": None}}, {}


@route("GET", r"/v13/deployments/([^/]+)")
def _get_deployment(
    s: VercelStandIn, user: User, q: dict[str, str], body: Any, ref: str
) -> tuple[int, Any, dict[str, str]]:
    dep = s.deployments.get(ref)
    if dep is None and "." in ref:
        host = ref.lower()
        dep = next((d for d in s.deployments.values() if d.url == host), None)
        if dep is None:  # a production domain resolves to the deployment it points at
            for project in s.projects.values():
                if project.production_id and host in project.domains:
                    dep = s.deployments[project.production_id]
    if dep is None or not s._can_see(user, dep):
        raise ApiFailure(404, "not_found", "Deployment not found", id=ref)
    return 200, dep.full(s._aliases_of(dep)), {}


def _int_param(q: dict[str, str], name: str) -> int | None:
    if name not in q or q[name] == "":
        return None
    try:
        return int(float(q[name]))
    except ValueError:
        raise ApiFailure(400, "bad_request", f"Invalid query parameter `{name}`") from None


@route("GET", r"/v6/deployments")
def _list_deployments(s: VercelStandIn, user: User, q: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
    account = s._scope(user, q)
    limit = _int_param(q, "limit") or 20
    if not 1 <= limit <= 100:
        raise ApiFailure(400, "bad_request", "Invalid query parameter `limit` (1-100)")
    until, since = _int_param(q, "until"), _int_param(q, "since")
    deps = [d for d in s.deployments.values() if d.owner_id == account]
    if q.get("projectId"):
        project = s._project(user, q, q["projectId"])
        deps = [d for d in deps if d.project_id == project.id]
    if q.get("target"):
        deps = [d for d in deps if (d.target or "preview") == q["target"]]
    if q.get("state"):
        wanted = {x.strip().upper() for x in q["state"].split(",")}
        deps = [d for d in deps if d.state in wanted]
    if q.get("rollbackCandidate") in ("true", "false") and "rollbackCandidate" not in s.ignored_filters:
        deps = [d for d in deps if d.rollback_candidate == (q["rollbackCandidate"] == "true")]
    if until is not None:
        deps = [d for d in deps if d.created_at < until]
    if since is not None:
        deps = [d for d in deps if d.created_at > since]
    deps.sort(key=lambda d: d.created_at, reverse=True)
    page, rest = deps[:limit], deps[limit:]
    pagination = {
        "count": len(page),
        "next": page[-1].created_at if page and rest else None,
        "prev": page[0].created_at if page else None,
    }
    return 200, {"deployments": [d.list_item() for d in page], "pagination": pagination}, {}


@route("POST", r"/v9/projects/([^/]+)/rollback/([^/]+)")
def _rollback(
    s: VercelStandIn, user: User, q: dict[str, str], body: Any, ref: str, dep: str
) -> tuple[int, Any, dict[str, str]]:
    project = s._start_job(user, q, ref, dep, "rollback")
    if q.get("description") and project.last_rollback_target is not None:
        project.last_rollback_target["description"] = q["description"]
    return 201, None, {}


@route("POST", r"/v10/projects/([^/]+)/promote/([^/]+)")
def _promote(
    s: VercelStandIn, user: User, q: dict[str, str], body: Any, ref: str, dep: str
) -> tuple[int, Any, dict[str, str]]:
    s._start_job(user, q, ref, dep, "promote")
    return (202 if s.promote_queued else 201), None, {}


@route("GET", r"/v9/projects/([^/]+)/(?:rollback|promote)/aliases")
def _job_aliases(
    s: VercelStandIn, user: User, q: dict[str, str], body: Any, ref: str
) -> tuple[int, Any, dict[str, str]]:
    project = s._project(user, q, ref)
    s._advance(project, poll=False)
    limit = _int_param(q, "limit") or 20
    until, since = _int_param(q, "until"), _int_param(q, "since")
    items = list(project.alias_statuses)
    if q.get("failedOnly") == "true":
        items = [a for a in items if a["status"] == "failed"]
    if until is not None:
        items = [a for a in items if a["createdAt"] < until]
    if since is not None:
        items = [a for a in items if a["createdAt"] > since]
    items.sort(key=lambda a: a["createdAt"], reverse=True)
    page, rest = items[:limit], items[limit:]
    pagination = {
        "count": len(page),
        "next": page[-1]["createdAt"] if page and rest else None,
        "prev": page[0]["createdAt"] if page else None,
    }
    return 200, {"aliases": page, "pagination": pagination}, {}


class _Handler(BaseHTTPRequestHandler):
    standin: VercelStandIn
    protocol_version = "HTTP/1.1"
    server_version = "vercel-standin"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is in standin.requests; stderr noise helps nobody

    def _read_body(self) -> Any:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                raw += self.rfile.read(size)
                self.rfile.readline()
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _serve(self) -> None:
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload, extra = self.standin.handle(self.command, self.path, headers, body)
        if status == DROPPED:
            self.close_connection = True  # no answer at all: the client sees the connection closed
            return
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-vercel-id", "fra1::standin")
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _serve


# --------------------------------------------------------------------------------------------
# The DoAi world most tests use
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DoaiWorld:
    """Handles on the DoAi fixture; ``expected_target`` is what a default rollback must pick."""

    token: str
    user: User
    team: Team
    other_team: Team
    project: Project
    other_project: Project
    personal_project: Project
    current: Deployment  # the bad production deployment that is live
    expected_target: Deployment  # newest READY production deployment older than ``current``
    older_ready: Deployment  # an even older READY production deployment
    staged: Deployment  # READY production, newer than ``expected_target``, never live: not a candidate
    building: Deployment  # a production build newer than ``current``, not ready
    preview: Deployment
    errored: Deployment
    canceled: Deployment
    other_project_deployment: Deployment
    other_team_deployment: Deployment


def _git_meta(rng: random.Random, ref: str, message: str) -> dict[str, str]:
    return {
        "githubCommitSha": "".join(rng.choice("0123456789abcdef") for _ in range(40)),
        "githubCommitRef": ref,
        "githubCommitMessage": message,
        "githubCommitAuthorName": "DoAi Dev",
        "githubOrg": "doai-me",
        "githubRepo": "doai-dashboard",
        "githubDeployment": "1",
    }


def build_doai_world(s: VercelStandIn, token: str) -> DoaiWorld:
    """DoAi's team with the dashboard project and its history, plus neighbours that must be ignored.

    Production deployments of ``doai-dashboard``, newest first: BUILDING, **current** (READY, bad),
    ERROR, CANCELED, ERROR, CANCELED, STAGED (READY but never live: not a rollback candidate),
    **expected target** (READY), READY, READY. Previews are interleaved, and another project of
    the same team deploys in between, so a client that forgets a filter, or stops after the first
    page, picks the wrong deployment.
    """
    rng = s.rng
    user = s.add_user("doai-ops", token, email="ops@doai.me", name="DoAi Ops")
    outsider = s.add_user("acme-dev", "token-of-someone-else")
    team = s.add_team("doai", "DoAi", owner=user)
    other_team = s.add_team("acme", "ACME", owner=outsider, members=(user,))
    project = s.add_project("doai-dashboard", owner=team, domains=["dashboard.doai.me", "doai-dashboard.vercel.app"])
    other_project = s.add_project("doai-landing", owner=team, domains=["doai.me", "www.doai.me"])
    acme = s.add_project("acme-web", owner=other_team)
    personal = s.add_project("ops-sandbox", owner=user)

    def dash(
        age_h: float,
        state: str = "READY",
        target: str | None = "production",
        ref: str = "main",
        msg: str = "chore: deploy",
        live: bool = False,
        staged: bool = False,
    ) -> Deployment:
        return s.add_deployment(
            project,
            creator=user,
            age_s=age_h * 3600,
            state=state,
            target=target,
            meta=_git_meta(rng, ref, msg),
            live=live,
            staged=staged,
        )

    older2 = dash(240, msg="release 1.2.0")
    older_ready = dash(120, msg="release 1.3.0")
    for i in range(4):
        dash(100 - i, target=None, ref=f"feat/charts-{i}", msg="wip charts")
    expected = dash(72, msg="release 1.3.1")
    s.add_deployment(other_project, creator=user, age_s=71 * 3600, meta=_git_meta(rng, "main", "landing"))
    dash(60, target=None, ref="feat/export", msg="export csv")
    staged = dash(55, msg="release 1.3.2 (staged, never promoted)", staged=True)
    dash(50, state="CANCELED", msg="release 1.4.0-rc1")
    dash(40, state="ERROR", msg="release 1.4.0-rc2")
    dash(30, target=None, ref="fix/login", msg="fix login")
    canceled = dash(20, state="CANCELED", msg="release 1.4.0-rc3")
    s.add_deployment(other_project, creator=user, age_s=15 * 3600, meta=_git_meta(rng, "main", "landing 2"), live=True)
    errored = dash(10, state="ERROR", msg="release 1.4.0-rc4")
    current = dash(2, msg="release 1.4.0", live=True)
    preview = dash(1, target=None, ref="feat/next", msg="next feature")
    building = dash(0.1, state="BUILDING", msg="release 1.4.1")
    other_team_dep = s.add_deployment(acme, creator=outsider, age_s=3 * 3600, live=True)
    s.add_deployment(personal, creator=user, age_s=5 * 3600, live=True)
    other_dep = next(d for d in s.deployments.values() if d.project_id == other_project.id)
    assert older2.created_at < older_ready.created_at < expected.created_at < staged.created_at < current.created_at
    return DoaiWorld(
        token=token,
        user=user,
        team=team,
        other_team=other_team,
        project=project,
        other_project=other_project,
        personal_project=personal,
        current=current,
        expected_target=expected,
        older_ready=older_ready,
        staged=staged,
        building=building,
        preview=preview,
        errored=errored,
        canceled=canceled,
        other_project_deployment=other_dep,
        other_team_deployment=other_team_dep,
    )


# --------------------------------------------------------------------------------------------
# The dashboard's own health endpoint
# --------------------------------------------------------------------------------------------


class HealthEndpoint:
    """An ``/api/health`` on 127.0.0.1 (a free port): ``status()`` decides each answer's code (it
    may be replaced at any time), ``describe()`` adds to its JSON body; ``hits`` counts the answers.
    ``stop()`` at the end."""

    def __init__(self, status: Callable[[], int], describe: Callable[[], dict[str, Any]] = dict) -> None:
        owner = self
        self.status, self.describe = status, describe
        self.hits: list[int] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/api/health":
                    code, payload = 404, {"status": "not found"}
                else:
                    code = owner.status()
                    payload = {"status": "ok" if code < 300 else "error", **owner.describe()}
                owner.hits.append(code)
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="health", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = str(self._server.server_address[0]), self._server.server_address[1]
        return f"http://{host}:{port}/api/health"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class DashboardHealth(HealthEndpoint):
    """The dashboard's health as its production deployment serves it: 200 ``{"status":"ok",
    "deployment":<id>}`` unless ``bad(production id)`` says that deployment is broken, then 500."""

    def __init__(self, api: VercelStandIn, project: Project, bad: Callable[[str | None], bool]) -> None:
        self.api, self.project, self.bad = api, project, bad
        super().__init__(lambda: 500 if bad(api.production_of(project)) else 200,
                         lambda: {"deployment": api.production_of(project)})
