"""The agent's diagnose: the runbook's scenario C (section 7, the agents cannot connect).

:func:`agent_connection`: the backend's Socket.IO endpoint answers an Engine.IO handshake, each
agent PC reaches its port, the agent runs per PC and user. What it needs of the backend (its
hosts, where their health URL says they listen) it asks the registry for. Read-only: the
playbook only reads. Declared by :class:`~doai_ansible.parts.agent_cli.AgentCli`; the shared
machinery is :mod:`doai_ansible.diagnose`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from doai_ansible import parts as parts_registry
from doai_ansible import validate
from doai_ansible.context import RunContext
from doai_ansible.diagnose import Diagnosis, _per_host, _run, group_hosts, scrub
from doai_ansible.errors import UsageError
from doai_ansible.inventory import AGENTS_GROUP
from doai_ansible.model import Part

if TYPE_CHECKING:
    from doai_ansible.parts.backend import BackendPart

AGENT_PLAYBOOK = "agent_diagnose.yml"
AGENT_STATS_KEY = "doai_agent_diagnose"
HANDSHAKE_TIMEOUT_S = 5.0


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
    backends = _backend_hosts(ctx)
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


def _backend_hosts(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """The backend's hosts and their variables (where its Socket.IO listens), as the registry's
    backend part names its inventory group."""
    backend = cast("BackendPart", parts_registry.get(Part.BACKEND))
    return group_hosts(ctx, backend.group, None)


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
