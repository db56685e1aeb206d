"""The runbook's scenarios A, B and C (section 7) as read-only diagnostics, and the log bundle
the whole-system rollback collects before it starts.

* :func:`api_errors` (A, the API answers with errors): per backend host (PM2 or Docker, as the
  inventory says) the last log lines scanned for HTTP 5xx, stack traces and ``...Error:`` lines,
  the environment variables the backend needs (``diagnose.backend_env``; names only) checked in
  the running process's environment, the health URL's answer and the live release.
* :func:`migration_failure` (B, a migration failed): the migration state as ``database status``
  shows it, half-applied migrations (objects of a migration present while the history lacks it,
  or the history has it while its objects are missing), and the integrity checks.
* :func:`agent_connection` (C, agents cannot connect): the backend's Socket.IO endpoint answers
  an Engine.IO handshake, each agent PC reaches its port, the agent runs per PC and user.

Each returns a :class:`Diagnosis`: findings (check, ok, target, detail) and the commands to run
next. Nothing here changes a host or a database: the playbooks only read (``check_mode: false``
probes), the database session is read-only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from doai_ansible import validate
from doai_ansible.context import RunContext
from doai_ansible.errors import ExitStatus, UsageError
from doai_ansible.inventory import AGENTS_GROUP, BACKEND_GROUP
from doai_ansible.runner import PlaybookRun, run_playbook, task_progress
from doai_ansible.secrets import scrub_here
from doai_ansible.settings import write_private

log = logging.getLogger(__name__)

SCENARIOS = ("api-errors", "migration-failure", "agent-connection")
BACKEND_PLAYBOOK = "backend_diagnose.yml"
BACKEND_STATS_KEY = "doai_backend_diagnose"
AGENT_PLAYBOOK = "agent_diagnose.yml"
AGENT_STATS_KEY = "doai_agent_diagnose"
HANDSHAKE_TIMEOUT_S = 5.0
_SAMPLES = 3  # log lines quoted per host in a finding


@dataclasses.dataclass
class Finding:
    check: str
    ok: bool
    target: str
    detail: str
    unreachable: bool = False  # the target could not be examined at all

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "target": self.target, "detail": self.detail}


@dataclasses.dataclass
class Diagnosis:
    scenario: str
    findings: list[Finding] = dataclasses.field(default_factory=list)
    next: list[str] = dataclasses.field(default_factory=list)

    def add(self, check: str, ok: bool, target: str, detail: str, *, unreachable: bool = False) -> Finding:
        f = Finding(check, ok, target, detail, unreachable)
        self.findings.append(f)
        return f

    def suggest(self, command: str) -> None:
        if command not in self.next:
            self.next.append(command)

    @property
    def faults(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok and not f.unreachable]

    @property
    def healthy(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def exit_status(self) -> ExitStatus:
        """A fault found: 6 (even when another target could not be reached: the fault is the
        news); else a target not reached at all: 7; else 0."""
        if self.faults:
            return ExitStatus.UNHEALTHY
        if any(f.unreachable for f in self.findings):
            return ExitStatus.UNREACHABLE
        return ExitStatus.OK

    def to_dict(self) -> dict[str, Any]:
        status = self.exit_status
        return {"scenario": self.scenario, "healthy": self.healthy,
                "findings": [f.to_dict() for f in self.findings], "next": list(self.next),
                "exit_status": int(status), "exit_name": status.name}

    def lines(self) -> list[str]:
        out = [f"diagnose {self.scenario}: " + ("nothing found" if self.healthy else
                                                f"{len([f for f in self.findings if not f.ok])} problem(s)")]
        for f in self.findings:
            out.append(f"  {'ok   ' if f.ok else 'FAULT'} {f.check} [{f.target}]: {f.detail}")
        if self.next:
            out.append("next:")
            out += [f"  {c}" for c in self.next]
        return out


# -- log scanning (scenario A) ------------------------------------------------------------------
_METHODS = r"(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)"
_HTTP_5XX = re.compile(
    r"HTTP/\d(?:\.\d)?\"?\s+5\d\d\b"                                 # access log: "GET / HTTP/1.1" 500
    rf"|\b{_METHODS}\s+\S+\s+5\d\d\b"                                # morgan dev: GET /api/x 500 3.1 ms
    r"|\b(?:status(?:_?code)?|statusCode|code)[\"']?\s*[:=]\s*[\"']?5\d\d\b"  # status=500, "statusCode":503
    r"|\b5\d\d\s+(?:Internal Server Error|Bad Gateway|Service Unavailable|Gateway Timeout)\b",
    re.IGNORECASE)
_STACK_FRAME = re.compile(r"^\s+at\s+\S.*(?::\d+:\d+\)?|\(native\)|\(<anonymous>\))\s*$")
_ERROR_LINE = re.compile(r"(?:^|[\s\[:])(?:[A-Z][A-Za-z]*)?Error(?:\s*\[[A-Z0-9_]+\])?:\s|\bUnhandled(?:PromiseRejection|Rejection)\b"
                         r"|\buncaught exception\b", re.IGNORECASE)


@dataclasses.dataclass
class LogScan:
    http_5xx: int = 0
    stack_traces: int = 0
    errors: int = 0
    samples: list[str] = dataclasses.field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.http_5xx or self.stack_traces or self.errors)

    def merge(self, other: LogScan) -> LogScan:
        return LogScan(self.http_5xx + other.http_5xx, self.stack_traces + other.stack_traces,
                       self.errors + other.errors, (self.samples + other.samples)[:_SAMPLES])

    def summary(self) -> str:
        if not self.found:
            return "no HTTP 5xx, stack trace or error line"
        head = f"{self.http_5xx} HTTP 5xx line(s), {self.stack_traces} stack trace(s), {self.errors} error line(s)"
        return head + ("; e.g. " + " | ".join(self.samples) if self.samples else "")


def scan_log(text: str) -> LogScan:
    """Count what says the API failed in a log's last lines: HTTP 5xx answers, stack traces (a
    run of ``at ...`` frames counts once) and ``...Error:`` lines."""
    scan = LogScan()
    in_trace = False
    for line in text.splitlines():
        if _STACK_FRAME.match(line):
            if not in_trace:
                scan.stack_traces += 1
            in_trace = True
            continue
        in_trace = False
        hit = False
        if _HTTP_5XX.search(line):
            scan.http_5xx += 1
            hit = True
        if _ERROR_LINE.search(line):
            scan.errors += 1
            hit = True
        if hit and len(scan.samples) < _SAMPLES:
            scan.samples.append(line.strip()[:160])
    return scan


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Secrets replaced by ***: the values of this process's secret-named environment variables
    (the database URL, the Vercel token ...) and secrets by shape, by the same rule the hosts
    scrubbed their logs with (:mod:`doai_ansible.secrets`)."""
    return scrub_here(text, environ)


# -- the playbook runs ----------------------------------------------------------------------------
def _run(ctx: RunContext, playbook: str, extravars: dict[str, Any], limit: str | None, label: str,
         secrets: Mapping[str, Any] | None = None) -> PlaybookRun:
    pb = run_playbook(ctx.settings, playbook, extravars=extravars, limit=limit, log_dir=ctx.log_dir / label,
                      on_event=task_progress(ctx.progress, check=True), timeout_s=600, secrets=secrets)
    for w in pb.warnings:
        ctx.warn(w)
    return pb


def _per_host(pb: PlaybookRun, key: str) -> dict[str, dict[str, Any]]:
    """host -> its report, or ``{"error": ..., "unreachable": bool}`` for a host that failed."""
    stats: dict[str, Any] = pb.custom.get(key) or {}
    out: dict[str, dict[str, Any]] = {h: dict(v) for h, v in stats.items()}
    for f in pb.failures:
        out[f.host] = {"error": f"{f.task}: {f.message}" if not f.unreachable else f"unreachable: {f.message}",
                       "unreachable": f.unreachable}
    return dict(sorted(out.items()))


def backend_reports(ctx: RunContext, limit: str | None, *, env: Iterable[str], lines: int,
                     label: str) -> dict[str, dict[str, Any]]:
    pb = _run(ctx, BACKEND_PLAYBOOK, {"doai_backend_diagnose_env": list(env), "doai_backend_diagnose_lines": lines},
              limit, label)
    reps = _per_host(pb, BACKEND_STATS_KEY)
    if not reps and not pb.ok:
        raise pb.error("backend diagnose failed")
    return reps


def agent_reports(ctx: RunContext, limit: str | None, *, host: str, port: int | None, lines: int,
                   label: str) -> dict[str, dict[str, Any]]:
    xv: dict[str, Any] = {"doai_agent_diagnose_socketio_host": host, "doai_agent_diagnose_lines": lines}
    if port:
        xv["doai_agent_diagnose_socketio_port"] = port
    from doai_ansible.parts.agent import WINRM_PASSWORD_VAR, AgentPart

    # The WinRM password as the agent part gives it (typed at the playbook's prompt), else the inventory's.
    secrets = AgentPart().secrets()
    if not secrets:
        xv = dict(xv, **{WINRM_PASSWORD_VAR: ""})
    pb = _run(ctx, AGENT_PLAYBOOK, xv, limit, label, secrets=secrets or None)
    reps = _per_host(pb, AGENT_STATS_KEY)
    if not reps and not pb.ok:
        raise pb.error("agent diagnose failed")
    return reps


def group_hosts(ctx: RunContext, group: str, limit: str | None) -> dict[str, dict[str, Any]]:
    from doai_ansible.inventory import group_vars

    return group_vars(ctx.settings.inventory, group, limit)


# -- A: the API answers with errors ------------------------------------------------------------------
def api_errors(ctx: RunContext, *, limit: str | None = None) -> Diagnosis:
    limit = validate.host_limit(limit)
    d = Diagnosis("api-errors")
    names = ctx.settings.diagnose.backend_env
    if not group_hosts(ctx, BACKEND_GROUP, limit):
        raise UsageError(f"no backend hosts in {ctx.settings.inventory}" + (f" match --limit {limit}" if limit else ""),
                         hint="the inventory group `backend`")
    reps = backend_reports(ctx, limit, env=names, lines=ctx.settings.diagnose.log_lines, label="diagnose")
    bad_hosts = []
    for host, rep in reps.items():
        if rep.get("error"):
            d.add("reachable" if rep.get("unreachable") else "evidence", False, host, rep["error"],
                  unreachable=bool(rep.get("unreachable")))
            continue
        if _api_host(d, host, rep, names):
            bad_hosts.append(host)
    _api_next(d, bad_hosts, list(reps), limit)
    return d


def _api_host(d: Diagnosis, host: str, rep: Mapping[str, Any], names: tuple[str, ...]) -> bool:
    """The findings of one backend host; True when one of them is a fault."""
    before = len(d.faults)
    mode = rep.get("mode") or "pm2"
    raw = rep.get("health_status")
    code = int(str(raw)) if str(raw).lstrip("-").isdigit() else None
    answer = f"HTTP {code}" if code is not None else "no answer"
    body = (rep.get("health_body") or "").strip().replace("\n", " ")[:120]
    d.add("health", code is not None and 200 <= code < 300, host,
          f"{rep.get('health_url')}: {answer}" + (f" ({body})" if body and not (code and 200 <= code < 300) else ""))
    procs = rep.get("processes") or []
    if rep.get("runtime_error"):
        d.add("processes", False, host, f"{mode}: {rep['runtime_error']}")
    else:
        down = [p for p in procs if p.get("status") not in ("online", "running")]
        d.add("processes", bool(procs) and not down, host,
              ", ".join(f"{p.get('name')}{'' if p.get('pm_id') is None else '[' + str(p['pm_id']) + ']'} "
                        f"{p.get('status')} restarts={p.get('restarts')}" for p in procs) or "no process")
    if not names:
        d.add("environment", True, host, "not checked: diagnose.backend_env names no variable")
    else:
        missing = sorted({n for p in procs for n in p.get("missing_env") or []})
        source = ", ".join(sorted({str(p.get("env_source")) for p in procs})) or "-"
        d.add("environment", not missing and bool(procs), host,
              (f"missing or empty in the running process: {', '.join(missing)}" if missing
               else f"all {len(names)} set ({', '.join(names)})" if procs else "no process to read") +
              f" [from: {source}]")
    scan = LogScan()
    errors = []
    for entry in rep.get("logs") or []:
        if entry.get("error"):
            errors.append(entry["error"])
        scan = scan.merge(scan_log(scrub(entry.get("text") or "")))
    where = "container log" if mode == "docker" else "PM2 out/err logs"
    d.add("logs", not scan.found, host, f"{where}: {scan.summary()}" + (f"; unreadable: {'; '.join(errors)}" if errors else ""))
    release = rep.get("release") or rep.get("release_error") or "?"
    d.add("release", True, host, f"live {'image' if mode == 'docker' else 'commit'} {str(release)[:19]}"
          + (f" (version {rep.get('version')})" if rep.get("version") else ""))
    return len(d.faults) > before


def _api_next(d: Diagnosis, bad: list[str], hosts: list[str], limit: str | None) -> None:
    if not bad:
        return
    missing = [f for f in d.faults if f.check == "environment"]
    if missing:
        d.suggest("set the missing variables in the app's environment (PM2 ecosystem file / compose environment), "
                  "then reload it; or roll back to the release that ran with them:")
    where = "" if set(bad) == set(hosts) and not limit else f" --limit {','.join(bad)}"
    d.suggest(f"doai-rollback backend rollback{where} --dry-run")
    d.suggest(f"doai-rollback backend rollback{where}")


# -- B: a database migration failed ---------------------------------------------------------------------
def migration_objects(sql_text: str) -> tuple[list[tuple[str, ...]], set[tuple[str, ...]]]:
    """(objects a migration creates, objects it drops): ``("table", "s.t")``, ``("column", "s.t",
    "c")``, ``("index", "s", "i")``, read by PostgreSQL's parser exactly as the database part
    reads it (:mod:`doai_ansible.db.sqlread`: quoted names kept, unquoted lower-cased)."""
    from doai_ansible.db import sqlread

    made: list[tuple[str, ...]] = []
    dropped: set[tuple[str, ...]] = set()
    for e in sqlread.read(sql_text):
        if e.kind == "table" and e.table:
            obj: tuple[str, ...] = ("table", e.table)
        elif e.kind == "column" and e.table and e.column:
            obj = ("column", e.table, e.column)
        elif e.kind == "index":
            obj = ("index", *e.name.split(".", 1))
        else:
            continue
        if e.action == "created":
            made.append(obj)
        elif e.action == "dropped":
            dropped.add(obj)
    return made, dropped


def object_label(obj: tuple[str, ...]) -> str:
    kind = obj[0]
    return f"{obj[1]} (table)" if kind == "table" else f"{obj[1]}.{obj[2]} ({kind})"


def half_applied(applied: bool, present: dict[tuple[str, ...], bool]) -> tuple[list[str], list[str]] | None:
    """(present, missing) labels when a migration is half-applied: not in the history with some
    of its objects present, or in the history with some missing; else None."""
    have = [object_label(o) for o, p in present.items() if p]
    lack = [object_label(o) for o, p in present.items() if not p]
    if (not applied and have) or (applied and lack):
        return have, lack
    return None


def _exists(conn: Any, obj: tuple[str, ...]) -> bool:
    with conn.cursor() as cur:
        if obj[0] == "table":
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (_regclass(conn, obj[1]),))
        elif obj[0] == "column":
            schema, table = obj[1].split(".", 1)
            cur.execute("SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = %s "
                        "AND table_name = %s AND column_name = %s)", (schema, table, obj[2]))
        else:
            cur.execute("SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = %s)",
                        (obj[1], obj[2]))
        return bool(cur.fetchone()[0])


def _regclass(conn: Any, qualified: str) -> str:
    from psycopg import sql

    schema, name = qualified.split(".", 1)
    return sql.Identifier(schema, name).as_string(conn)


def migration_failure(ctx: RunContext) -> Diagnosis:
    from doai_ansible.db import migrations as mig
    from doai_ansible.db.conn import DbUrl
    from doai_ansible.parts.database import DatabasePart

    part = DatabasePart()
    if not part.configured(ctx):
        raise UsageError("the database is not configured", hint=part.needs)
    d = Diagnosis("migration-failure")
    st = part.status(ctx)
    target = st.get("database") or part.name
    if not st.get("reachable"):
        d.add("reachable", False, target, st.get("error") or "no connection", unreachable=True)
        return d
    _state_findings(d, target, st)
    db = ctx.settings.database
    files = mig.on_disk(db.migrations_path, db.rollbacks_path)
    url = DbUrl.parse(db.url)
    import psycopg

    try:
        with url.connect(autocommit=True) as conn:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")  # diagnose changes nothing
            # Production: the orphan scans are bounded, and never wait behind an app's locks for long.
            conn.execute(f"SET statement_timeout = {int(db.statement_timeout_s * 1000)}")
            conn.execute(f"SET lock_timeout = {int(db.lock_timeout_s * 1000)}")
            applied = {h["version"] for h in mig.history(conn)}
            broken = _half_applied_findings(d, target, conn, files, applied)
            fk = mig.invalid_foreign_keys(conn, db.schemas)
    except psycopg.OperationalError as exc:
        d.add("reachable", False, target, url.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else
                                                    type(exc).__name__), unreachable=True)
        return d
    except psycopg.Error as exc:  # a permission, a timeout: a finding, not a crash
        d.add("integrity checks", False, target, "could not run: " + url.scrub(
            (str(exc).strip().splitlines() or [type(exc).__name__])[0]))
        return d
    for p in fk:
        d.add("integrity", False, target, url.scrub(p))
    if not fk:
        d.add("integrity", True, target, f"foreign keys validated, no orphan rows (schemas {', '.join(db.schemas)})")
    _migration_next(d, st, broken, bool(fk), files, applied)
    return d


def _state_findings(d: Diagnosis, target: str, st: Mapping[str, Any]) -> None:
    rows = st.get("migrations") or []
    applied = [r["version"] for r in rows if r["applied"]]
    pending = [r["version"] for r in rows if r["local"] and not r["applied"]]
    d.add("migration state", True, target,
          f"{len(applied)} applied (last {st.get('last_applied') or 'none'}), "
          f"{len(pending)} local not applied{(': ' + ', '.join(pending)) if pending else ''}")
    if st.get("applied_not_local"):
        d.add("migration files", False, target,
              f"applied but not in the migrations folder: {', '.join(st['applied_not_local'])}")


def _half_applied_findings(d: Diagnosis, target: str, conn: Any, files: Mapping[str, Any],
                           applied: set[str]) -> list[tuple[str, bool]]:
    """One finding per local migration that is half-applied; (version, in history) of those."""
    broken: list[tuple[str, bool]] = []
    objects = {v: migration_objects(m.path.read_text(encoding="utf-8")) for v, m in files.items()}
    # A pending migration's CREATE ... IF NOT EXISTS of what an applied one made is no sign of it.
    made_by_applied = {o for v, (made, _) in objects.items() if v in applied for o in made}
    later_drops: set[tuple[str, ...]] = set()
    for version in sorted(files, reverse=True):  # newest first: what a later migration dropped is not missing
        m = files[version]
        made, dropped = objects[version]
        is_applied = version in applied
        if is_applied:
            present = {o: _exists(conn, o) for o in made if o not in later_drops}
            later_drops |= dropped
        else:
            present = {o: _exists(conn, o) for o in made if o not in made_by_applied}
        found = half_applied(is_applied, present)
        if found is None:
            continue
        have, lack = found
        broken.append((version, is_applied))
        if is_applied:
            text = f"{version} {m.name}: the history says applied, but missing: {', '.join(lack)}"
        else:
            text = (f"{version} {m.name}: not in the history, but its objects exist: {', '.join(have)}"
                    + (f"; missing: {', '.join(lack)}" if lack else ""))
        d.add("half-applied", False, target, text)
    if not broken:
        d.add("half-applied", True, target, f"{len(files)} local migration(s): objects agree with the history")
    return broken


def _migration_next(d: Diagnosis, st: Mapping[str, Any], broken: list[tuple[str, bool]], fk: bool,
                    files: Mapping[str, Any], applied: set[str]) -> None:
    if not d.faults:
        return
    in_history = [v for v, a in broken if a]
    outside = [v for v, a in broken if not a]
    last = st.get("last_applied")
    if outside or in_history or st.get("applied_not_local"):
        # The down files assume a migration applied whole: a half-applied one is put back from a snapshot.
        d.suggest("doai-rollback database snapshots")
        d.suggest("doai-rollback database restore SNAPSHOT  (the newest one taken before the failed migration)")
    elif fk and last and files.get(last) and files[last].down:
        d.suggest("doai-rollback database rollback --last 1 --dry-run")
        d.suggest("doai-rollback database rollback --last 1")
    elif fk:
        d.suggest("doai-rollback database snapshots")
        d.suggest("doai-rollback database restore SNAPSHOT")


# -- C: the agents cannot connect ------------------------------------------------------------------------
@dataclasses.dataclass
class SocketTarget:
    url: str  # the Socket.IO base URL as the controller reaches it
    host: str  # host and port the agents connect to
    port: int
    source: str  # which setting or inventory variable it came from


def _plain(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() and "{{" not in value else None


def socket_target(settings_url: str | None, agents: Mapping[str, Mapping[str, Any]],
                  backends: Mapping[str, Mapping[str, Any]]) -> SocketTarget | None:
    """Where the backend's Socket.IO is: ``diagnose.socketio_url``; else the agents'
    ``doai_agent_socketio_host``/``_port``; else a backend host's health URL (its host, or the
    host's ``ansible_host`` when the URL says localhost, as it does from the VPS itself)."""
    if settings_url:
        u = urlsplit(settings_url)
        return SocketTarget(settings_url.rstrip("/"), u.hostname or "", u.port or (443 if u.scheme == "https" else 80),
                            "diagnose.socketio_url")
    for name, hv in sorted(agents.items()):
        host = _plain(hv.get("doai_agent_socketio_host"))
        if host:
            port = int(hv.get("doai_agent_socketio_port") or 3001)
            return SocketTarget(f"http://{_url_host(host)}:{port}", host, port, f"doai_agent_socketio_host of {name}")
    for name, hv in sorted(backends.items()):
        mode = hv.get("doai_backend_mode") or "pm2"
        url = _plain(hv.get(f"doai_backend_{mode}_health_url")) or "http://localhost:3001/api/health"
        u = urlsplit(url)
        host = u.hostname or "localhost"
        if host in ("localhost", "127.0.0.1", "::1"):
            host = _plain(hv.get("ansible_host")) or name
        port = u.port or (443 if u.scheme == "https" else 80)
        return SocketTarget(f"{u.scheme or 'http'}://{_url_host(host)}:{port}", host, port, f"health URL of {name}")
    return None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_handshake(status: int, body: str) -> str | None:
    """None when ``body`` is an Engine.IO v4 open packet (``0{"sid": ...}``), else what is wrong."""
    if status != 200:
        return f"HTTP {status}"
    text = body.lstrip()
    if not text.startswith("0"):
        return f"not an Engine.IO open packet: {text[:60]!r}"
    try:
        data = json.loads(text[1:])
    except ValueError:
        return f"the open packet is not JSON: {text[:60]!r}"
    if not isinstance(data, dict) or not isinstance(data.get("sid"), str) or not data["sid"]:
        return "the open packet has no sid"
    return None


def handshake(url: str, *, timeout: float = HANDSHAKE_TIMEOUT_S, transport: Any = None) -> tuple[bool, str]:
    """GET <url>/socket.io/?EIO=4&transport=polling: (answered a handshake, detail)."""
    import httpx

    probe = f"{url.rstrip('/')}/socket.io/?EIO=4&transport=polling"
    try:
        with httpx.Client(timeout=timeout, transport=transport, follow_redirects=False, trust_env=False) as client:
            resp = client.get(probe)
    except httpx.HTTPError as exc:
        return False, f"{probe}: {type(exc).__name__}: {exc or 'no answer'}"
    problem = parse_handshake(resp.status_code, resp.text[:2000])
    return problem is None, f"{probe}: " + (problem or "Engine.IO handshake answered (sid given)")


def agent_connection(ctx: RunContext, *, limit: str | None = None) -> Diagnosis:
    limit = validate.host_limit(limit)
    d = Diagnosis("agent-connection")
    agents = group_hosts(ctx, AGENTS_GROUP, limit)
    backends = group_hosts(ctx, BACKEND_GROUP, None)
    if limit and not agents:
        raise UsageError(f"--limit {limit} matches no PC of the group `agents`")
    target = socket_target(ctx.settings.diagnose.socketio_url, agents, backends)
    if target is None:
        raise UsageError("where the backend's Socket.IO is cannot be told",
                         hint="set diagnose.socketio_url, or doai_agent_socketio_host in the inventory")
    ok, detail = handshake(target.url)
    d.add("socket.io endpoint", ok, target.url, f"{detail} (from {target.source})")
    closed: list[str] = []
    stopped: list[str] = []
    if agents:
        reps = agent_reports(ctx, limit, host=target.host, port=target.port,
                              lines=min(ctx.settings.diagnose.log_lines, 20), label="diagnose")
        for host, rep in reps.items():
            c, s = _agent_host(d, host, rep, target)
            closed += c
            stopped += s
    else:
        d.add("agents", True, "agents", "no PCs in the inventory group `agents`: only the endpoint was checked")
    _agent_next(d, ok, closed, stopped, target)
    return d


def _agent_host(d: Diagnosis, host: str, rep: Mapping[str, Any], target: SocketTarget) -> tuple[list[str], list[str]]:
    if rep.get("error"):
        d.add("reachable", False, host, rep["error"], unreachable=bool(rep.get("unreachable")))
        return [], []
    closed: list[str] = []
    stopped: list[str] = []
    tcp = rep.get("tcp") or {}
    if tcp:
        d.add("port from the PC", bool(tcp.get("ok")), host, f"TCP {target.host}:{target.port}: "
              + ("open" if tcp.get("ok") else f"not reachable ({tcp.get('error')})"))
        if not tcp.get("ok"):
            closed.append(host)
    users = rep.get("users")
    if users is None:
        d.add("agent processes", True, host, "NOT CHECKED on this Windows PC (this check reads POSIX processes only): `doai-rollback agent status` shows the folders")
        return closed, stopped
    if not users:
        d.add("agent processes", False, host, "no user has the agent folder on this PC")
        stopped.append(host)
    for u in users:
        last = [line for line in (u.get("log") or "").splitlines() if line.strip()][-1:]
        detail = (f"running (pid {u.get('pid')})" if u.get("running") else
                  "NOT running" if u.get("folder") else u.get("log_error") or "no agent folder")
        if last:
            detail += f"; last log line: {scrub(last[0])[:160]}"
        d.add("agent process", bool(u.get("running")), f"{host}/{u.get('user')}", detail)
        if not u.get("running"):
            stopped.append(host)
    return closed, sorted(set(stopped))


def _agent_next(d: Diagnosis, endpoint_ok: bool, closed: list[str], stopped: list[str], target: SocketTarget) -> None:
    if not endpoint_ok:
        d.suggest("start the backend (it does not answer the Socket.IO handshake): doai-rollback backend status")
        d.suggest("doai-rollback diagnose api-errors")
    elif closed:
        d.suggest(f"open the firewall: TCP {target.port} from the agent PCs ({', '.join(closed)}) to {target.host}")
    if stopped:
        pcs = ",".join(sorted(set(stopped)))
        d.suggest(f"doai-rollback agent rollback --limit {pcs} --dry-run")
        d.suggest(f"doai-rollback agent rollback --limit {pcs}")
        d.suggest(f"last resort: doai-rollback agent reinstall --limit {pcs} --installer INSTALLER --sha256 HEX --dry-run")


# -- the log bundle of the whole-system rollback ------------------------------------------------------------
def write_log(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, scrub(text))


def safe_name(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", host)[:100] or "_"


def collect_logs(ctx: RunContext, dest: Path, *, lines: int,
                 parts: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The log bundle: every part that keeps logs (:attr:`~doai_ansible.part.PartBase.collects_logs`;
    ``parts``: only these, so only their hosts are contacted) writes the last ``lines`` lines of
    its targets' logs into a file under ``dest`` (0600, secret values scrubbed). One entry per
    target ``{"part", "host", "file", "error"}``; a host that cannot be reached is an entry with
    its error, never an exception."""
    from doai_ansible import parts as registry

    entries: list[dict[str, Any]] = []
    for name in registry.names():
        if parts is None or name in parts:
            part = registry.get(name)
            if part.collects_logs:
                entries += part.collect_logs(ctx, Path(dest), lines=lines)
    return entries


def log_entry(part: str, host: str, file: Path | None = None, error: str | None = None) -> dict[str, Any]:
    """One entry of the log bundle."""
    return {"part": part, "host": host, "file": str(file) if file else None, "error": error}


RUNNERS = {"api-errors": api_errors, "agent-connection": agent_connection}


def run(ctx: RunContext, scenario: str, *, limit: str | None = None) -> Diagnosis:
    """One scenario by name (the CLI's entry point)."""
    if scenario == "migration-failure":
        if limit:
            raise UsageError("--limit does not apply to the database")
        return migration_failure(ctx)
    if scenario not in RUNNERS:
        raise UsageError(f"unknown scenario {scenario!r}", hint=f"one of {', '.join(SCENARIOS)}")
    return RUNNERS[scenario](ctx, limit=limit)
