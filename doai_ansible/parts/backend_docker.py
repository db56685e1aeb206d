"""The backend part, Docker mode: the backend runs as a Compose service on the VPS hosts whose
inventory says ``doai_backend_mode: docker``.

The work on the hosts is done by ``playbooks/backend_docker_rollback.yml`` (role
``doai_backend_docker``) through :class:`PlaybookPart`, as for the PM2 mode: the plan resolves
every host's from -> to as *image ids* (the tag as the registry serves it now, read from its
manifest, nothing pulled); the apply pins those ids, so a ``:current`` or a registry tag that
moved since the plan refuses before any change; the journal and the host's ledger record ids,
so ``undo`` brings back exactly the image that was live.
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


def _int(value: Any, default: int = -1) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def short_id(image_id: str | None) -> str:
    return (image_id or "?").split(":", 1)[-1][:12]


def _label(image_id: str | None, version: str | None, ref: str | None = None) -> str:
    if not image_id:
        return "?"
    text = short_id(image_id)
    if ref and not ref.startswith("sha256:"):
        text = f"{ref.rsplit('/', 1)[-1]} {text}"
    return f"{text} ({version})" if version else text


class BackendDockerPart(PlaybookPart):
    part = Part.BACKEND
    mode = "docker"
    needs = "hosts in the inventory group `backend` with doai_backend_mode: docker"
    playbook = "backend_docker_rollback.yml"
    status_playbook = "backend_docker_status.yml"
    release_playbook = "backend_docker_release_lock.yml"
    stats_key = "doai_backend_docker"
    status_stats_key = "doai_backend_docker_status"
    release_stats_key = "doai_backend_docker_release"
    prepare_playbook = "backend_docker_prepare.yml"
    prepare_stats_key = "doai_backend_docker_prepare"
    # The apply's job reads the container's last log lines; its result carries them (scrubbed on
    # the host) once the job is done: the watch's, or the first call's when the job ended first.
    logs_along = ("Retag the target as current, recreate the container, wait until it is healthy",
                  "Watch the container for restarts")
    logs_name = "container"
    reports_run_ledger = True  # tasks/status.yml: doai_backend_docker_recover_run_id
    apply_modules = ("doai_backend_docker_apply",)
    var_prefix = "doai_backend_docker"
    group = BACKEND_GROUP

    def request(self, *, to: str | None = None, limit: str | None = None, reason: str | None = None,
                action: str = "rollback", targets: Mapping[str, str] | None = None,
                health_gate: bool = True) -> Request:
        targets = {validate.host_limit(h) or h: validate.image_ref(c, option="target") or c
                   for h, c in (targets or {}).items()}
        return Request(action=action, to=validate.image_ref(to), limit=validate.host_limit(limit),
                       targets=targets, health_gate=health_gate, options={"reason": validate.reason(reason)})

    def plan(self, ctx: RunContext, request: Request) -> list[Step]:
        if request.targets:  # undo: each host to its own image id
            by_image: dict[str, list[str]] = {}
            for host, image in request.targets.items():
                by_image.setdefault(image, []).append(host)
            steps = []
            for image, hosts in sorted(by_image.items()):
                steps += self.plan_hosts(ctx, request, {"target": image}, ",".join(sorted(hosts)))
            return sorted(steps, key=lambda s: s.target)
        return self.plan_hosts(ctx, request, {"target": request.to or ""}, request.limit)

    def step_from_report(self, host: str, st: Mapping[str, Any]) -> Step:
        container: dict[str, Any] = st["container"] if isinstance(st.get("container"), dict) else {}
        details = {
            "mode": self.mode,
            "from_label": _label(st.get("from"), st.get("from_version"), "current"),
            "to_label": _label(st.get("to"), st.get("to_version"), st.get("to_ref")),
            "from_version": st.get("from_version"),
            "to_version": st.get("to_version"),
            "to_ref": st.get("to_ref"),
            "from_health": st.get("from_health"),
            "container": container.get("name"),
            "container_image": container.get("image"),
        }
        notes = [f"target: {st.get('to_ref')} (chosen by {st.get('rule')})"]
        if st.get("container_differs"):
            notes.append(f"the container runs {short_id(container.get('image'))}, not :current: the rollback "
                         "recreates it on the target, a put-back on :current's image")
        return Step(Part.BACKEND, host, st.get("from"), st.get("to"), rule=st.get("rule") or "",
                    details=details, notes=notes)

    def pin(self, step: Step) -> dict[str, Any]:
        # The plan read the tag from the registry without pulling: the apply pulls it by this
        # ref and must find the planned id behind it.
        ref = step.details.get("to_ref")
        return {**super().pin(step), **({"ref": ref} if ref and not ref.startswith("sha256:") else {})}

    def prepare_lines(self, report: Mapping[str, Any]) -> list[str]:
        words = {"prepared": "prepared (pulled)", "already_prepared": "already prepared",
                 "would_prepare": "would pull"}
        lines = []
        for host, h in report["hosts"].items():
            if h.get("error"):
                lines.append(f"backend {host}: prepare FAILED: {h['error']} (the service was not touched)")
                continue
            lines.append(f"backend {host}: {words.get(h.get('status') or '', h.get('status'))}: "
                         f"{_label(h.get('target'), h.get('target_version'), h.get('target_ref'))} (by {h.get('rule')})")
        return lines

    def was_healthy(self, step: Step) -> bool:
        return 200 <= _int(step.details.get("from_health")) < 300

    def finish_details(self, result: StepResult, report: HostReport) -> None:
        st = report.stats
        for key in ("health_version", "container_id"):
            if st.get(key) is not None:
                result.step.details[key] = st.get(key)

    # -- status -----------------------------------------------------------------------------------
    def host_status(self, host: str, st: dict[str, Any], error: str | None) -> dict[str, Any]:
        code = _int(st.get("health_status"))
        container = st.get("container") or {}
        current = ((st.get("images") or {}).get((st.get("tags") or {}).get("current", "current")) or {})
        st["mode"] = self.mode
        st["image_id"] = container.get("image")
        st["healthy"] = bool(not error and not st.get("docker_error") and 200 <= code < 300
                             and container.get("running"))
        st["current_id"] = current.get("id")
        if not error and st.get("docker_error"):
            # dockerd did not answer: the tags and the container are not known, not gone.
            st["state"], st["state_detail"] = "unknown", f"docker not answering: {st['docker_error']}"
            st["images"] = None
        return st

    def status_lines(self, st: dict[str, Any]) -> list[str]:
        lines = []
        for host, h in st["hosts"].items():
            lines += self.host_lines(host, h)
        return lines or [f"backend: no Docker hosts ({self.needs})"]

    def host_lines(self, host: str, h: dict[str, Any]) -> list[str]:
        if h.get("state") == "unreachable":  # nothing was read: no image, container or health to show
            return [f"backend {host}: UNREACHABLE ({h.get('state_detail') or h.get('error')})"]
        c = h.get("container") or {}
        images = h.get("images") or {}
        tags = h.get("tags") or {}
        cur = images.get(tags.get("current", "current")) or {}
        if h.get("state") == "unknown":
            # dockerd did not answer: say so, rather than "no container" and every tag "(none)"
            unknown = f"unknown ({h.get('state_detail')})"
            lines = [f"backend {host}: UNKNOWN  docker image {unknown}  health {health_text(h)}",
                     f"    container: {unknown}"]
            lines += [f"    {h.get('image', '')}:{tag} -> unknown" for tag in tags.values()]
        else:
            state = "healthy" if h.get("healthy") else "UNHEALTHY"
            lines = [(f"backend {host}: {state}  docker image {short_id(c.get('image'))}"
                     f" ({cur.get('version') or '?'})  health {health_text(h)}")]
            if c:
                lines.append(f"    container {c.get('name')} {c.get('status')} restarts={c.get('restart_count')}")
            else:
                lines.append("    no container for the service")
            for role, tag in tags.items():
                img = images.get(tag)
                lines.append(f"    {h.get('image', '')}:{tag} -> {short_id(img.get('id')) if img else '(none)'}"
                             + (f" ({img.get('version')})" if img and img.get("version") else "")
                             + ("  <- running" if img and img.get("id") == c.get("image") and role == "current" else ""))
        if h.get("host_lock"):
            lines.append(f"    LOCKED by {h['host_lock'].get('owner')} since {h['host_lock'].get('since')}"
                         f" (run {h['host_lock'].get('run_id')})")
        if h.get("error"):
            lines.append(f"    error: {h['error']}")
        return lines
