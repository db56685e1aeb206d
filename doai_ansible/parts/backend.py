"""The backend part: the Node API on the VPS hosts, run under PM2 (a git checkout) or Docker
(a Compose service), host by host as the inventory says (``doai_backend_mode``: pm2, the
default, or docker; per host or per group). ``--mode`` overrides the inventory for one run.

This class only dispatches: each host goes to the part of its mode
(:class:`~doai_ansible.parts.backend_pm2.BackendPart`,
:class:`~doai_ansible.parts.backend_docker.BackendDockerPart`), which runs that mode's playbook
limited to those hosts. A fleet with both modes is planned in both (all or nothing), applied
in both side by side (each mode its own hosts, playbook and host locks), and a failure in one
puts the other's hosts back too: the pool never stays on mixed releases.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from doai_ansible import validate
from doai_ansible.context import RunContext
from doai_ansible.errors import DoaiError, ExitStatus, UsageError, ValidationError
from doai_ansible.inventory import BACKEND_GROUP, MODE_VAR, MODES, backend_modes, declares_modes
from doai_ansible.model import Outcome, Part, Step, StepResult, utcnow
from doai_ansible.part import PartBase, Request
from doai_ansible.parts.backend_docker import BackendDockerPart
from doai_ansible.parts.backend_pm2 import BackendPart as BackendPM2Part
from doai_ansible.parts.playbook import PlaybookPart, health_of, locks_of


def _commit_or_image(value: str, option: str) -> str:
    """Before the mode of each host is known: a value one of the two modes can take."""
    try:
        return validate.git_ref(value, option=option) or value
    except ValidationError:
        try:
            return validate.image_ref(value, option=option) or value
        except ValidationError:
            raise ValidationError(
                f"{option} {value[:80]!r} is neither a commit SHA or ref (PM2 hosts) nor a Docker tag or image id "
                "(Docker hosts)", hint="letters, digits and . _ / - only; an image id as sha256:<hex>") from None


class BackendPart(PartBase):
    part = Part.BACKEND
    needs = "hosts in the inventory group `backend`"
    group = BACKEND_GROUP
    runs_playbooks = True  # each mode's
    read_changed_by = (Part.DATABASE,)  # a migration rolled back under it can break it

    def __init__(self) -> None:
        self.modes: dict[str, PlaybookPart] = {
            "pm2": BackendPM2Part(fixed_vars={MODE_VAR: "pm2"}),
            "docker": BackendDockerPart(fixed_vars={MODE_VAR: "docker"}),
        }
        self._splits: dict[tuple[Any, ...], dict[str, list[str]]] = {}

    def configured(self, ctx: RunContext) -> bool:
        """Whether the inventory has backend hosts (read locally, no connection)."""
        from doai_ansible.inventory import has_hosts

        return has_hosts(ctx.settings.inventory, self.group)

    collects_logs = True

    def collect_logs(self, ctx: RunContext, dest: Path, *, lines: int) -> list[dict[str, Any]]:
        """Every backend host's last log lines (PM2 out/err, or the container's), read by the
        backend's diagnose playbook, one file per host."""
        from doai_ansible import diagnose as dg
        from doai_ansible.parts.backend_diagnose import backend_reports

        try:
            if not dg.group_hosts(ctx, self.group, None):
                return []
            reps = self._logs_along(ctx)
            if reps is None:
                reps = backend_reports(ctx, None, env=(), lines=max(lines, 1), label="logs")
        except DoaiError as exc:
            return [dg.log_entry(self.name, "*", error=str(exc))]
        out = []
        for host, rep in reps.items():
            if rep.get("error"):
                out.append(dg.log_entry(self.name, host, error=rep["error"]))
                continue
            parts = [(f"# {host}: backend ({rep.get('mode')}), release {rep.get('release')} ({rep.get('version')}), "
                      f"health HTTP {rep.get('health_status')}")]
            for e in rep.get("logs") or []:
                name = e.get("path") or e.get("kind")
                parts.append(f"\n## {e.get('app')} {e.get('kind')} {name}\n")
                parts.append(e.get("text") or (f"(unreadable: {e['error']})" if e.get("error") else "(empty)"))
            if rep.get("runtime_error"):
                parts.append(f"\n## runtime error\n{rep['runtime_error']}")
            path = dest / f"{self.name}-{dg.safe_name(host)}.log"
            dg.write_log(path, "\n".join(parts) + "\n")
            out.append(dg.log_entry(self.name, host, path))
        return out

    def _along(self, ctx: RunContext) -> list[tuple[str, Request]] | None:
        """(mode, request) of each mode's plan run that also reads the checklist's state and
        logs (:meth:`RunContext.along`), or None: read them on their own."""
        request = ctx.along(self.name)
        if request is None or request.targets or request.limit:
            return None
        return self._plan_split(ctx, request)

    def _logs_along(self, ctx: RunContext) -> dict[str, dict[str, Any]] | None:
        """Every host's evidence, from its mode's plan run (None: not read along)."""
        from doai_ansible.engine import in_parallel
        from doai_ansible.parts.backend_diagnose import reports_of

        subs = self._along(ctx)
        if subs is None:
            return None
        runs = in_parallel({mode: functools.partial(self.modes[mode].along_run, ctx, sub) for mode, sub in subs})
        reps: dict[str, dict[str, Any]] = {}
        for mode, _ in subs:
            reps.update(reports_of(runs[mode]))
        return dict(sorted(reps.items()))

    # -- which hosts run which mode ------------------------------------------------------------------
    def split(self, ctx: RunContext, limit: str | None, override: str | None = None,
              hosts: list[str] | None = None) -> dict[str, list[str]]:
        """mode -> hosts, for the hosts ``limit`` (or the list ``hosts``) selects; raises when none."""
        pattern = ",".join(hosts) if hosts else limit
        modes = backend_modes(ctx.settings.inventory, pattern, group=self.group)
        if hosts:
            missing = sorted(set(hosts) - set(modes))
            if missing:
                raise UsageError(f"{', '.join(missing)}: not in the backend group of {ctx.settings.inventory}")
        if not modes:
            if limit:
                every = sorted(backend_modes(ctx.settings.inventory, None, group=self.group))
                raise UsageError(f"--limit {limit} matches no host of the backend group `{self.group}`",
                                 hint=f"its hosts: {', '.join(every)}" if every else f"the group `{self.group}` is empty")
            raise UsageError(f"no backend hosts in the inventory {ctx.settings.inventory}", hint=self.needs)
        out: dict[str, list[str]] = {}
        for host, mode in sorted(modes.items()):
            out.setdefault(override or mode, []).append(host)
        return {m: out[m] for m in MODES if m in out}

    def _sub_request(self, mode: str, request: Request, hosts: list[str] | None) -> Request:
        """The request for one mode's part: its hosts (None: the request's own --limit)."""
        to = request.to
        if to is not None:  # strict now that the mode is known
            to = validate.image_ref(to) if mode == "docker" else validate.git_ref(to)
        targets = {h: t for h, t in request.targets.items() if hosts is None or h in hosts}
        for host, value in targets.items():
            if mode == "docker":
                validate.image_ref(value, option=f"target of {host}")
            else:
                validate.git_ref(value, option=f"target of {host}")
        return dataclasses.replace(request, to=to, limit=request.limit if hosts is None else ",".join(hosts),
                                   targets=targets)

    def _plan_split(self, ctx: RunContext, request: Request) -> list[tuple[str, Request]]:
        """(mode, request for its hosts) for each mode, every value checked for its mode; the
        inventory is read once per request (the CLI's check and the plan share it)."""
        ctx.settings.require_inventory()  # none configured: exit 2 before anything, never a default
        if (not request.options.get("mode") and not request.targets
                and not declares_modes(ctx.settings.inventory)):
            # Every host runs PM2: no need to read the inventory first (the PM2 part says what a
            # --limit that matches no host should say, from its own run).
            return [("pm2", self._sub_request("pm2", request, None))]
        key = (str(ctx.settings.inventory), request.limit, request.options.get("mode"), tuple(sorted(request.targets)))
        if key not in self._splits:
            self._splits[key] = self.split(ctx, request.limit, request.options.get("mode"),
                                           sorted(request.targets) or None)
        return [(mode, self._sub_request(mode, request, hosts)) for mode, hosts in self._splits[key].items()]

    @staticmethod
    def _mark(mode: str, steps: list[Step]) -> list[Step]:
        for s in steps:
            s.details["mode"] = mode
        return steps

    # -- a run ---------------------------------------------------------------------------------------
    def request(self, *, to: str | None = None, limit: str | None = None, reason: str | None = None,
                action: str = "rollback", targets: Mapping[str, str] | None = None,
                health_gate: bool = True, mode: str | None = None, ctx: RunContext | None = None) -> Request:
        """With ``ctx`` (the CLI passes it) the inventory is read now: a --limit that matches no
        backend host and a --to the hosts' mode cannot take are refused before anything runs;
        without it, the same checks come at the plan, still before any host is contacted."""
        if mode is not None and mode not in MODES:
            raise ValidationError(f"--mode {mode!r}: one of {', '.join(MODES)}")
        if to is not None:
            _commit_or_image(to, "--to")
        checked = {validate.host_limit(host) or host: _commit_or_image(value, f"target of {host}")
                   for host, value in (targets or {}).items()}
        req = Request(action=action, to=to, limit=validate.host_limit(limit), targets=checked,
                      health_gate=health_gate, options={"reason": validate.reason(reason), "mode": mode})
        if ctx is not None:
            self._plan_split(ctx, req)
        return req

    def plan(self, ctx: RunContext, request: Request) -> list[Step]:
        return sorted(self._plan_modes(ctx, self._plan_split(ctx, request)), key=lambda s: s.target)

    def _plan_modes(self, ctx: RunContext, subs: list[tuple[str, Request]]) -> list[Step]:
        """Every mode's plan, side by side (each reads its own hosts only; all validated before
        the first runs); a refusal is the first in the modes' order, after every plan ended."""
        from doai_ansible.engine import in_parallel

        done = in_parallel({mode: functools.partial(self.modes[mode].plan, ctx, sub) for mode, sub in subs})
        steps: list[Step] = []
        for mode, _ in subs:
            steps += self._mark(mode, done[mode])
        return steps

    def one_pass(self, request: Request) -> bool:
        return request.action == "rollback" and not request.targets

    def plan_and_apply(self, ctx: RunContext, request: Request) -> list[StepResult]:
        subs = self._plan_split(ctx, request)
        if len(subs) == 1:
            mode, sub = subs[0]
            results = self.modes[mode].plan_and_apply(ctx, sub)
            self._mark(mode, [r.step for r in results])
            return results
        # Both modes: plan every host first (all or nothing), then apply both side by side.
        return self.apply(ctx, self._plan_modes(ctx, subs), request)

    def apply(self, ctx: RunContext, steps: list[Step], request: Request) -> list[StepResult]:
        """Each mode's hosts by that mode's part, the modes side by side (each its own hosts,
        playbook and host locks: a fleet with both is back as soon as the slower mode is).
        All or nothing across the modes: when one mode's hosts fail or refuse, the other
        mode's hosts that were rolled back are put back. A mode refuses (raises) only before it
        changed anything; when every mode refused, the first refusal is raised."""
        by_mode: dict[str, list[Step]] = {}
        for s in steps:
            by_mode.setdefault(s.details.get("mode") or "pm2", []).append(s)
        modes = [m for m in MODES if m in by_mode]

        def one(mode: str) -> list[StepResult] | BaseException:
            sub = self._sub_request(mode, request, [s.target for s in by_mode[mode]])
            try:
                done = self.modes[mode].apply(ctx, by_mode[mode], sub)
            except DoaiError as exc:  # refused before it changed anything on its hosts
                return exc
            except Exception as exc:  # not a refusal (a bug, an I/O error): what it did is not known here
                return exc
            self._mark(mode, [r.step for r in done])
            return done

        if len(modes) == 1:
            only = one(modes[0])
            if isinstance(only, BaseException):
                raise only
            return sorted(only, key=lambda r: r.step.target)
        from doai_ansible.engine import at_once

        done = at_once({mode: functools.partial(one, mode) for mode in modes})
        broken = [done[m] for m in modes if isinstance(done[m], Exception) and not isinstance(done[m], DoaiError)]
        if broken:
            # One mode ended in an error that is not a refusal: the run ends with it, as it did
            # when the modes went one after the other, but not before the other mode's hosts
            # that went through are put back (the fleet must not stay on mixed releases).
            went = [r for m in modes if isinstance(done[m], list) for r in done[m]]
            if any(r.outcome is Outcome.SUCCEEDED for r in went):
                self._put_back(ctx, went)
            raise broken[0]
        refusals = [done[m] for m in modes if isinstance(done[m], DoaiError)]
        if len(refusals) == len(modes):
            raise refusals[0]  # nothing changed anywhere
        results: list[StepResult] = []
        for mode in modes:
            got = done[mode]
            if isinstance(got, DoaiError):
                now = utcnow()
                results += [StepResult(s, Outcome.REFUSED, f"refused: {got}", now, now) for s in by_mode[mode]]
            else:
                results += got
        if any(r.outcome not in (Outcome.SUCCEEDED, Outcome.UNCHANGED) for r in results):
            # All or nothing: the hosts of a mode that went through go back with the other's.
            ok_modes = [m for m in modes if not isinstance(done[m], DoaiError)
                        and all(r.outcome in (Outcome.SUCCEEDED, Outcome.UNCHANGED) for r in done[m])]
            back = [r for r in results if (r.step.details.get("mode") or "pm2") in ok_modes]
            if back:
                keep = [r for r in results if r not in back]
                results = keep + self._put_back(ctx, back)
        return sorted(results, key=lambda r: r.step.target)

    def _put_back(self, ctx: RunContext, results: list[StepResult]) -> list[StepResult]:
        back = self.revert(ctx, results, "a host of the other mode failed")
        for r in back:
            if r.outcome is Outcome.RESTORED:
                r.message = "rolled back, then put back because a host of the other mode failed"
        return back

    def revert(self, ctx: RunContext, results: list[StepResult], reason: str | None) -> list[StepResult]:
        out: list[StepResult] = []
        for mode in MODES:
            mine = [r for r in results if (r.step.details.get("mode") or "pm2") == mode]
            if mine:
                out += self.modes[mode].revert(ctx, mine, reason)
        return sorted(out, key=lambda r: r.step.target)

    def undo_request(self, record: Mapping[str, Any]) -> Request | None:
        targets = {s["target"]: s["from"] for s in self.steps_of(record) if s.get("from")}
        if not targets:
            return None
        return self.request(action="undo", targets=targets, health_gate=False)

    def recover(self, ctx: RunContext, killed: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Each mode's hosts' ledger entries of the killed run (see PlaybookPart.recover)."""
        steps: list[dict[str, Any]] = []
        for mode in self.split(ctx, None):
            for st in self.modes[mode].recover(ctx, killed):
                st["details"]["mode"] = mode
                steps.append(st)
        return sorted(steps, key=lambda st: st["target"])

    # -- prepare (PM2 hosts: the node_modules a rollback needs, into each host's cache) -----------
    def prepare(self, ctx: RunContext, request: Request, *, check: bool = False) -> dict[str, Any]:
        """Each host prepared by its mode (PM2: node_modules into the cache; Docker: the image
        pulled); one report, the worst exit status of the modes."""
        reports = [(mode, self.modes[mode].prepare(ctx, sub, check=check))
                   for mode, sub in self._plan_split(ctx, request)]
        merged = dict(reports[0][1], hosts={})
        for mode, rep in reports:
            for host, h in rep["hosts"].items():
                merged["hosts"][host] = dict(h, mode=mode)
        worst = max(int(rep["exit_status"]) for _, rep in reports)
        merged.update(exit_status=worst, ok=worst == 0, exit_name=ExitStatus(worst).name,
                      log_file=[rep.get("log_file") for _, rep in reports][0])
        return merged

    def prepare_lines(self, report: Mapping[str, Any]) -> list[str]:
        lines: list[str] = []
        for host, h in report["hosts"].items():
            lines += self.modes[h.get("mode") or "pm2"].prepare_lines({"hosts": {host: h}})
        return lines

    # -- status and locks ----------------------------------------------------------------------------
    def status(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        try:
            split = self.split(ctx, limit)
        except UsageError:
            if limit:
                raise
            return {"part": self.name, "configured": False, "hosts": {}, "reachable": True, "healthy": True}
        hosts: dict[str, Any] = {}
        reachable = True
        from doai_ansible.engine import in_parallel

        subs = self._along(ctx) if limit is None else None
        if subs is not None:  # the whole-system checklist: read in each mode's plan run
            found = in_parallel({mode: functools.partial(self.modes[mode].status_along, ctx, sub) for mode, sub in subs})
        else:
            found = in_parallel({mode: functools.partial(self.modes[mode].status, ctx, limit=",".join(names))
                                 for mode, names in split.items()})  # each mode its own hosts: side by side
        for mode in found:
            st = found[mode]
            reachable = reachable and st.get("reachable", True)
            for host, h in st["hosts"].items():
                h["mode"] = mode
                hosts[host] = h
        return {"part": self.name, "configured": bool(hosts), "hosts": dict(sorted(hosts.items())),
                "reachable": reachable, "healthy": all(h["healthy"] for h in hosts.values())}

    def status_lines(self, st: dict[str, Any]) -> list[str]:
        if not st.get("configured", True):
            return [f"backend: not configured ({self.needs})"]
        lines: list[str] = []
        for host, h in st["hosts"].items():
            mode = h.get("mode") or "pm2"
            lines += self.modes[mode].status_lines({"configured": True, "hosts": {host: h}})
        return lines or [f"backend: no hosts in the inventory ({self.needs})"]

    def health(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        return health_of(self.status(ctx, limit=limit))

    def host_locks(self, ctx: RunContext) -> list[dict[str, Any]]:
        return locks_of(self.status(ctx))

    def release_host_lock(self, ctx: RunContext, host: str, run_id: str) -> dict[str, Any]:
        split = self.split(ctx, None, hosts=[host])
        mode = next(iter(split))
        return self.modes[mode].release_host_lock(ctx, host, run_id)
