"""The backend part, PM2 mode: a git-deployed Node API under PM2 on the VPS hosts.

The work on the hosts is done by ``playbooks/backend_pm2_rollback.yml`` (role
``doai_backend_pm2``) through the ansible-runner wrapper, by way of :class:`PlaybookPart`:

* plan: the playbook in check mode; each host reports from -> to (full SHAs) in its stats. All
  or nothing: when any host is unreachable or refuses, no host is changed.
* apply: the playbook with the planned SHAs pinned per host (``doai_backend_pm2_pins``); a host
  whose live commit moved since the plan refuses before changing anything. A host that failed
  puts its own commit back (the role's rescue); when one host failed, the hosts that did roll
  back are put back too, so the pool never serves mixed releases.
* a host whose SSH link dropped after it started is resumed when it comes back: the role
  (``doai_backend_pm2_resume``) finishes or undoes the work of this run and releases its lock.
* prepare (:meth:`BackendPart.prepare`, ``playbooks/backend_pm2_prepare.yml``): not a rollback;
  installs the node_modules tree of the commit a rollback would go to into each host's cache,
  so that rollback is a rename instead of an ``npm ci``. Changes neither the app nor PM2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from doai_ansible import validate
from doai_ansible.context import RunContext
from doai_ansible.inventory import BACKEND_GROUP
from doai_ansible.model import Part, Step, StepResult
from doai_ansible.part import Request
from doai_ansible.parts.playbook import HostReport, PlaybookPart, health_text

ROLLBACK_PLAYBOOK = "backend_pm2_rollback.yml"
STATUS_PLAYBOOK = "backend_pm2_status.yml"
RELEASE_PLAYBOOK = "backend_pm2_release_lock.yml"
PREPARE_PLAYBOOK = "backend_pm2_prepare.yml"
PREPARE_STATS_KEY = "doai_backend_pm2_prepare"
# What the prepare reports per host, as an operator reads it.
PREPARE_WORDS = {
    "prepared": "prepared",
    "already_prepared": "already prepared",
    "not_needed": "not needed (the live node_modules is the target's lockfile)",
    "would_prepare": "would prepare (dry run)",
    "no_lockfile": "not possible (the target has no lockfile)",
    "cache_disabled": "not possible (doai_backend_pm2_node_modules_cache_keep is 0)",
}
STATS_KEY = "doai_backend_pm2"
STATUS_STATS_KEY = "doai_backend_pm2_status"
PM2_LOGS_TASK = "Read the last PM2 log lines"


def _int(value: Any, default: int = -1) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _label(sha: str | None, version: str | None) -> str:
    if not sha:
        return "?"
    return f"{sha[:12]} ({version})" if version else sha[:12]


class BackendPart(PlaybookPart):
    part = Part.BACKEND
    needs = "hosts in the inventory group `backend`"
    playbook = ROLLBACK_PLAYBOOK
    status_playbook = STATUS_PLAYBOOK
    stats_key = STATS_KEY
    status_stats_key = STATUS_STATS_KEY
    release_playbook = RELEASE_PLAYBOOK
    release_stats_key = "doai_backend_pm2_release"
    logs_task = PM2_LOGS_TASK
    logs_along = ("Watch PM2 for restarts",)
    logs_name = "pm2"
    reports_run_ledger = True  # tasks/status.yml: doai_backend_pm2_recover_run_id
    apply_modules = ("doai_backend_pm2_apply",)
    var_prefix = "doai_backend_pm2"
    group = BACKEND_GROUP

    # -- request and plan -------------------------------------------------------------------------
    def request(self, *, to: str | None = None, limit: str | None = None, reason: str | None = None,
                action: str = "rollback", targets: Mapping[str, str] | None = None,
                health_gate: bool = True) -> Request:
        targets = {validate.host_limit(h) or h: validate.git_ref(c, option="target") or c
                   for h, c in (targets or {}).items()}
        return Request(action=action, to=validate.git_ref(to), limit=validate.host_limit(limit),
                       targets=targets, health_gate=health_gate, options={"reason": validate.reason(reason)})

    def plan(self, ctx: RunContext, request: Request) -> list[Step]:
        if request.targets:  # undo: each host to its own commit; one check run per commit
            by_commit: dict[str, list[str]] = {}
            for host, commit in request.targets.items():
                by_commit.setdefault(commit, []).append(host)
            steps = []
            for commit, hosts in sorted(by_commit.items()):
                steps += self.plan_hosts(ctx, request, {f"{self.var_prefix}_target": commit}, ",".join(sorted(hosts)))
            return sorted(steps, key=lambda s: s.target)
        return self.plan_hosts(ctx, request, {f"{self.var_prefix}_target": request.to or ""}, request.limit)

    def step_from_report(self, host: str, st: Mapping[str, Any]) -> Step:
        details: dict[str, Any] = {
            "from_label": _label(st.get("from"), st.get("from_version")),
            "to_label": _label(st.get("to"), st.get("to_version")),
            "from_version": st.get("from_version"),
            "to_version": st.get("to_version"),
            "needs_install": bool(st.get("needs_install")),
            "install_from_cache": bool(st.get("install_from_cache")),
            "recent": st.get("recent") or [],
            "processes": st.get("processes") or [],
            "lockfile_sha256": st.get("lockfile_sha256"),
            "from_health": st.get("from_health"),
        }
        deps = ("node_modules from the cache (rename)" if details["install_from_cache"] else "npm ci") \
            if details["needs_install"] else "unchanged"
        notes = [f"dependencies: {deps}"]
        if details["recent"]:
            notes.append("last commits: " + "; ".join(details["recent"]))
        return Step(Part.BACKEND, host, st.get("from"), st.get("to"), rule=st.get("rule") or "",
                    details=details, notes=notes)

    def was_healthy(self, step: Step) -> bool:
        return 200 <= _int(step.details.get("from_health")) < 300

    def finish_details(self, result: StepResult, report: HostReport) -> None:
        st = report.stats
        if st.get("health_version") is not None:
            result.step.details["health_version"] = st.get("health_version")
        if isinstance(st.get("node_modules"), Mapping):  # source: cache (a rename) or install (npm ci)
            result.step.details["node_modules"] = dict(st["node_modules"])

    # -- status -----------------------------------------------------------------------------------
    def host_status(self, host: str, st: dict[str, Any], error: str | None) -> dict[str, Any]:
        code = _int(st.get("health_status"))
        procs = st.get("processes") or []
        st["healthy"] = bool(
            not error and 200 <= code < 300 and procs and all(p.get("status") == "online" for p in procs)
        )
        if not error and st.get("pm2_error"):
            # PM2 did not answer: its processes are not known, not gone.
            st["state"], st["state_detail"] = "unknown", f"pm2 not answering: {st['pm2_error']}"
        return st

    def status_lines(self, st: dict[str, Any]) -> list[str]:
        if not st.get("configured", True):
            return [f"backend: not configured ({self.needs})"]
        lines = []
        for host, h in st["hosts"].items():
            if h.get("state") == "unreachable":  # nothing was read: no commit, PM2 or health to show
                lines.append(f"backend {host}: UNREACHABLE ({h.get('state_detail') or h.get('error')})")
                continue
            state = {"healthy": "healthy", "unknown": "UNKNOWN"}.get(h.get("state") or "", "UNHEALTHY")
            commit = (h.get("commit") or "?")[:12]
            lines.append(f"backend {host}: {state}  commit {commit} ({h.get('version') or '?'})"
                         f"  health {health_text(h)}")
            for p in h.get("processes") or []:
                lines.append(f"    pm2 {p.get('name')}[{p.get('pm_id')}] {p.get('status')} restarts={p.get('restarts')}")
            if h.get("pm2_error"):
                lines.append(f"    pm2 processes: unknown (pm2 not answering: {h['pm2_error']})")
            if h.get("dirty"):
                lines.append(f"    uncommitted changes: {', '.join(h['dirty'])}")
            if h.get("host_lock"):
                lines.append(f"    LOCKED by {h['host_lock'].get('owner')} since {h['host_lock'].get('since')}"
                             f" (run {h['host_lock'].get('run_id')})")
            if h.get("error"):
                lines.append(f"    error: {h['error']}")
        return lines or [f"backend: no hosts in the inventory ({self.needs})"]


    # -- prepare: the node_modules a rollback would need, installed ahead of time -------------------
    prepare_playbook = PREPARE_PLAYBOOK
    prepare_stats_key = PREPARE_STATS_KEY

    def prepare_lines(self, report: Mapping[str, Any]) -> list[str]:
        lines = []
        for host, h in report["hosts"].items():
            if h.get("error"):
                lines.append(f"backend {host}: prepare FAILED: {h['error']} (the app was not touched)")
                continue
            target = _label(h.get("target"), h.get("target_version"))
            key = (h.get("lockfile_sha256") or "-")[:12]
            secs = h.get("install_seconds")
            took = f", npm ci {float(secs):.1f} s" if secs not in (None, "", "None") else ""
            lines.append(f"backend {host}: {PREPARE_WORDS.get(h.get('status') or '', h.get('status'))}: target {target}"
                         f" (by {h.get('rule') or '?'}), lockfile sha256 {key}{took}")
        return lines
