"""The agent part: the DoAi desktop agent on a fleet of PCs (group ``agents``), rolled back by
the runbook's rename swap, per PC and user (``playbooks/agent_rollback.yml``, role
``doai_agent``: its action plugin decides what to do for each observed folder in one place and
carries it out with the Windows modules, or POSIX ones on the Linux stand-in PCs).

Unlike the backend pool, a fleet is not all or nothing: a PC that is unreachable or refuses
(folder or backup missing) is reported, and the others go on. Each step is one PC and user;
the result table says which were rolled back, unchanged, refused, put back or not, and
``--rerun-failed RUN`` runs the PCs a run did not finish again (a swap left half done is
resumed from its marker file).

``agent reinstall --installer PATH_OR_URL`` is the runbook's other way back: per PC and user,
the current install kept aside whole, uninstall, the earlier installer run, config.json
restored, start, verify; a failed step puts the kept install back (``playbooks/agent_reinstall.yml``,
the same role and action plugin with ``doai_agent_operation: reinstall``). The installer is
checked here (path or URL, sha256) before any connection, and again on each PC before anything
there changes.

A confirmed plan is pinned: the apply hands each PC the versions confirmed per user, and a folder
that changed since is refused there (``check_pin``, in the agent's decisions:
plugins/module_utils/doai_agent_decide.py). Not done yet: a Windows host lock and ledger (the
marker file is the per-user record).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from doai_ansible import validate
from doai_ansible.context import RunContext
from doai_ansible.errors import DoaiError, UsageError, ValidationError
from doai_ansible.inventory import AGENTS_GROUP
from doai_ansible.model import Outcome, Part, Step, StepResult, utcnow
from doai_ansible.part import Request
from doai_ansible.parts.playbook import PlaybookPart, reports
from doai_ansible.runner import PlaybookRun
from doai_ansible.settings import Secret

WINRM_PASSWORD_ENV = "DOAI_WINRM_PASSWORD"
WINRM_PASSWORD_VAR = "doai_agent_winrm_password"
_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}\Z")
_BATCH_RE = re.compile(r"[1-9][0-9]{0,3}%?\Z")
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}\Z")


@functools.cache
def _plugin() -> Any:
    """The role's action plugin (its installer check is the one the playbook applies too; the
    decisions it re-exports, check_publisher among them, are plugins/module_utils/doai_agent_decide.py)."""
    from doai_ansible.settings import content_dir

    path = content_dir() / "plugins" / "action" / "doai_agent_swap.py"
    spec = importlib.util.spec_from_file_location("doai_agent_swap_plugin", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"the agent role's action plugin is missing: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_installer(installer: str | None, sha256: str | None) -> dict[str, Any]:
    """The installer as the role will take it (a file here, read and hashed; or an https URL),
    or ValidationError: before any connection."""
    if installer and "://" not in installer and not installer.startswith(("/", "\\")) and not re.match(r"[A-Za-z]:", installer):
        installer = os.path.abspath(installer)
    try:
        return dict(_plugin().check_installer(installer or "", sha256 or ""))
    except ValueError as exc:
        raise ValidationError(f"--installer: {exc}") from None


def _step(host: str, u: Mapping[str, Any], installer: Mapping[str, Any] | None = None, *, undo: bool = False) -> Step:
    user = u.get("user") or "?"
    to = u.get("to")
    if installer and u.get("status") in ("planned", "changed") and not to:
        to = f"installer {installer.get('name')}"  # the version is known once it is installed
    step = Step(Part.AGENT, f"{host}/{user}", u.get("from"), to if u.get("status") != "unchanged" else u.get("from"),
                rule=u.get("reason") or "", details={"host": host, "user": user, "root": u.get("root"),
                                                      "plan_status": u.get("status"),
                                                      "pin": {"from": u.get("from"), "to": u.get("to")},
                                                      "steps": [s.get("op") for s in u.get("steps") or []]})
    # What the folders hold now (the plugin reads them); the marker is only history.
    live: Mapping[str, Any] = u.get("live") or {}
    step.details["live"] = dict(live)
    step.details["history"] = u.get("history")
    status, ops = u.get("status"), step.details["steps"]
    step.details["from_label"] = (f"app-current {live.get('app-current') or 'none'}" if live
                                  else f"app-current {u.get('from') or '?'}")
    if installer:
        step.details["to_label"] = f"installer {installer.get('name')} ({u.get('to') or 'its version'})"
    elif status == "unchanged" or (status == "planned" and "rename" not in ops):
        # Nothing to swap (rolled back, or undone, already): app-current stays as it is.
        step.details["to_label"] = f"app-current {u.get('to') or '?'}" + ("" if status == "unchanged" else " (start)")
    elif undo:
        step.details["to_label"] = f"app-failed {u.get('to') or '?'} (undo)"
    elif status == "refused" and live:
        step.details["to_label"] = f"app-backup {live.get('app-backup') or 'none'}"
    else:
        step.details["to_label"] = f"app-backup {u.get('to') or '?'}"
    if u.get("status") == "planned":
        step.notes = ["; ".join(f"{s.get('op')} {s.get('src', '')}->{s.get('dest', '')}".replace(" ->", "")
                                for s in u.get("steps") or [])]
    return step


#: The most PCs ``--forks`` lets Ansible work on at once (each a process on the controller).
MAX_FORKS = 500


class AgentPart(PlaybookPart):
    part = Part.AGENT
    needs = "PCs in the inventory group `agents`"
    playbook = "agent_rollback.yml"
    stats_key = "doai_agent"
    var_prefix = "doai_agent"
    group = AGENTS_GROUP
    apply_modules = ("doai_agent_swap",)

    # -- the log bundle of the whole-system rollback -------------------------------------------------
    collects_logs = True

    def collect_logs(self, ctx: RunContext, dest: Path, *, lines: int) -> list[dict[str, Any]]:
        """Every reachable PC's agent logs, per user, one file per PC; a PC whose agents keep no
        log the tool can read (Windows): this part's status of it."""
        from doai_ansible import diagnose as dg
        from doai_ansible.parts.agent_diagnose import agent_reports

        try:
            if not dg.group_hosts(ctx, self.group, None):
                return []
            reps = self._logs_along(ctx)
            if reps is None:
                reps = agent_reports(ctx, None, host="", port=None, lines=lines, label="logs")
        except DoaiError as exc:
            return [dg.log_entry(self.name, "*", error=str(exc))]
        out = []
        # Windows PCs: no log this tool reads; the status instead, in ONE run for all of them.
        windows = sorted(h for h, rep in reps.items() if not rep.get("error") and rep.get("users") is None)
        status_text = self._status_texts(ctx, windows) if windows else {}
        for host, rep in reps.items():
            if rep.get("error"):
                out.append(dg.log_entry(self.name, host, error=rep["error"]))
                continue
            path = dest / f"{self.name}-{dg.safe_name(host)}.log"
            if rep.get("users") is None:
                text = status_text.get(host) or f"# {host}: no agent status"
            else:
                text = "\n".join(
                    f"## {host}/{u.get('user')}: {'running pid ' + str(u.get('pid')) if u.get('running') else 'not running'}\n"
                    + (u.get("log") if u.get("log") is not None else f"(no log: {u.get('log_error')})")
                    for u in rep["users"]) or f"# {host}: no user has the agent folder"
            dg.write_log(path, text + "\n")
            out.append(dg.log_entry(self.name, host, path))
        return out

    def _status_texts(self, ctx: RunContext, hosts: list[str]) -> dict[str, str]:
        """host -> this part's status lines of that PC, from one status run over ``hosts`` (in
        a whole-system run, the plan's run)."""
        try:
            st = self.status(ctx) if self._along(ctx) is not None else self.status(ctx, limit=",".join(hosts))
        except DoaiError as exc:
            return {h: f"# {h}: agent status failed: {exc}" for h in hosts}
        return {h: "\n".join(self.status_lines(dict(st, hosts={h: hst})))
                for h, hst in (st.get("hosts") or {}).items() if h in hosts}

    def _along(self, ctx: RunContext) -> Request | None:
        """The plan's request when the whole-system checklist reads the PCs' state and logs in
        its run (:meth:`RunContext.along`): a rollback of every user (a run limited to some
        users would not read the others)."""
        request = ctx.along(self.name)
        if (request is None or request.action != "rollback" or request.targets or request.limit
                or request.options.get("users")):
            return None
        return request

    def _logs_along(self, ctx: RunContext) -> dict[str, dict[str, Any]] | None:
        """Every PC's evidence, from the plan's run (None: not read along)."""
        from doai_ansible.diagnose import _per_host
        from doai_ansible.parts.agent_diagnose import AGENT_STATS_KEY

        request = self._along(ctx)
        if request is None:
            return None
        pb = self._run(ctx, request, check=True, label="plan")["pb"]
        return _per_host(pb, AGENT_STATS_KEY, reported_first=True)

    # -- a run -------------------------------------------------------------------------------------
    def request(self, *, limit: str | None = None, users: list[str] | tuple[str, ...] | None = None,
                batch: str | None = None, max_fail_percent: int | None = None, reason: str | None = None,
                action: str = "rollback", targets: Mapping[str, str] | None = None, health_gate: bool = True,
                to: str | None = None, installer: str | None = None, sha256: str | None = None,
                expect_version: str | None = None, undo_run: str | None = None,
                publisher: str | None = None, forks: int | None = None) -> Request:
        if to is not None:
            raise ValidationError("the agent goes back to each PC's own app-backup: there is no --to")
        if action not in ("rollback", "reinstall", "undo"):
            raise ValidationError(f"the agent cannot {action!r}: it rolls back, reinstalls or undoes a run's swaps")
        if (action == "undo") != (undo_run is not None):
            raise ValidationError("undoing the agent's swaps needs the run that made them (and only undo does)")
        if undo_run is not None:
            validate.run_id(undo_run)
        inst: dict[str, Any] | None = None
        if action == "reinstall":
            inst = check_installer(installer, sha256)
            if expect_version is not None and not _VERSION_RE.match(expect_version):
                raise ValidationError(f"--expect-version {expect_version!r} is not a version")
            try:
                publisher = _plugin().check_publisher(publisher) or None
            except ValueError as exc:
                raise ValidationError(f"--publisher: {exc}") from None
        elif installer or sha256 or expect_version or publisher:
            raise ValidationError("--installer, --sha256, --expect-version and --publisher belong to `agent reinstall`")
        for u in users or ():
            if not _USER_RE.match(u):
                raise ValidationError(f"--user {u!r} is not a user name")
        if batch is not None and not _BATCH_RE.match(str(batch)):
            raise ValidationError(f"--batch {batch!r}: a number of PCs or a percentage (10, 25%)")
        if max_fail_percent is not None and not 0 <= int(max_fail_percent) <= 100:
            raise ValidationError("--max-fail-percent must be 0..100")
        if forks is not None and not (isinstance(forks, int) and 1 <= forks <= MAX_FORKS):
            raise ValidationError(f"--forks {forks!r}: PCs worked on at once, 1..{MAX_FORKS}")
        return Request(action=action, limit=validate.host_limit(limit), health_gate=health_gate,
                       targets=dict(targets or {}),
                       options={"reason": validate.reason(reason), "users": list(dict.fromkeys(users or [])), "undo_run": undo_run,
                                "batch": batch, "max_fail_percent": max_fail_percent, "installer": inst,
                                "expect_version": expect_version, "publisher": publisher, "forks": forks})

    def secrets(self) -> dict[str, Any]:
        """The WinRM password, from DOAI_WINRM_PASSWORD only (else the inventory's, e.g. vault)."""
        value = os.environ.get(WINRM_PASSWORD_ENV)
        return {WINRM_PASSWORD_VAR: Secret(value)} if value else {}

    def _vars(self, ctx: RunContext, request: Request) -> dict[str, Any]:
        xv: dict[str, Any] = {"doai_agent_run_id": ctx.run_id}
        if not self.secrets():
            xv[WINRM_PASSWORD_VAR] = ""  # nothing to ask: the playbook's prompt is skipped
        if request.options.get("users"):
            xv["doai_agent_users"] = request.options["users"]
        if request.options.get("batch"):
            xv["doai_agent_serial"] = request.options["batch"]
        if request.options.get("max_fail_percent") is not None:
            xv["doai_agent_max_fail_percentage"] = int(request.options["max_fail_percent"])
        if request.options.get("undo_run"):
            xv["doai_agent_undo_run"] = request.options["undo_run"]
        if request.options.get("pins"):
            xv["doai_agent_pins"] = request.options["pins"]
        inst = request.options.get("installer")
        if inst:
            # The sha256 checked here travels with it: the PC runs the bytes that were checked.
            xv.update(doai_agent_installer=inst["value"], doai_agent_installer_sha256=inst["sha256"])
            if request.options.get("expect_version"):
                xv["doai_agent_installer_version"] = request.options["expect_version"]
            if request.options.get("publisher"):
                xv["doai_agent_installer_publisher"] = request.options["publisher"]
        return xv

    def _run(self, ctx: RunContext, request: Request, *, check: bool, label: str) -> dict[str, Any]:
        started: set[str] = set()
        runner = _Reinstall(self.fixed_vars) if request.action == "reinstall" else self
        xv = self._vars(ctx, request)

        if check and runner is self and self._along(ctx) == request:
            xv["doai_agent_read_logs"] = ctx.along_log_lines  # the checklist's logs, in this run

        def read() -> PlaybookRun:
            return runner.run(ctx, xv, limit=request.limit, check=check, label=label, started=started,
                              forks=request.options.get("forks"))

        if check:
            # The check-mode run is the agent's state and its plan at once: the whole-system
            # checklist's state of every PC and the plan share one run (RunContext.shared_read).
            key = ("agent", runner.playbook, json.dumps(xv, sort_keys=True, default=str), request.limit)
            pb = ctx.shared_read(key, read)
        else:
            pb = read()
        reps = reports(pb, self.stats_key)
        if not reps:
            raise self._no_hosts(ctx, pb, request.limit, request.action)
        return {"pb": pb, "reports": reps, "started": started}

    def plan(self, ctx: RunContext, request: Request) -> list[Step]:
        run = self._run(ctx, request, check=True, label="plan")
        steps: list[Step] = []
        for host, rep in run["reports"].items():
            users = rep.stats.get("users") or []
            if rep.unreachable or not users:
                why = rep.failure_text() if rep.failure is not None else (rep.stats.get("error") or "no user has the agent")
                kind = "unreachable" if rep.unreachable else "refused"
                step = Step(Part.AGENT, f"{host}/*", None, kind, rule="",
                            details={"host": host, "user": None, "plan_status": kind, "error": why,
                                     "from_label": "?", "to_label": f"{kind.upper()}: will not be rolled back"})
                step.notes = [f"{'UNREACHABLE' if rep.unreachable else 'refused'}: {why}"]
                steps.append(step)
                continue
            for u in users:
                step = _step(host, u, rep.stats.get("installer"), undo=request.action == "undo")
                if request.action == "undo" and step.target not in request.targets:
                    continue  # a user that run did not swap: not this undo's business
                if u.get("status") == "refused":
                    # Like an unreachable PC: a step of its own, so the apply reports it REFUSED
                    # (a plan that marked it "already there" would hide it as unchanged).
                    step.notes = [f"refused: {u.get('reason')}"]
                    step.desired = "refused"
                    step.details["to_label"] = "REFUSED: will not be touched"
                steps.append(step)
        return steps

    def one_pass(self, request: Request) -> bool:
        return request.action in ("rollback", "reinstall")

    def plan_and_apply(self, ctx: RunContext, request: Request) -> list[StepResult]:
        return self._apply(ctx, request)

    def apply(self, ctx: RunContext, steps: list[Step], request: Request) -> list[StepResult]:
        hosts = sorted({s.details["host"] for s in steps if s.details.get("plan_status") == "planned"})
        results = [StepResult(s, Outcome.UNCHANGED if s.details.get("plan_status") == "unchanged" else Outcome.REFUSED,
                              self._plan_message(s), utcnow(), utcnow())
                   for s in steps if s.details["host"] not in hosts]
        if hosts:
            import dataclasses

            # The confirmed plan goes along: a folder that changed since is refused, not acted on.
            pins: dict[str, dict[str, Any]] = {}
            for s in steps:
                if s.details.get("plan_status") == "planned" and s.details.get("user"):
                    pins.setdefault(s.details["host"], {})[s.details["user"]] = s.details.get("pin") or {}
            results += self._apply(ctx, dataclasses.replace(request, limit=",".join(hosts),
                                                            options={**request.options, "pins": pins}))
        return sorted(results, key=lambda r: r.step.target)

    @staticmethod
    def _plan_message(s: Step) -> str:
        status = s.details.get("plan_status")
        if status == "unchanged":
            return "already rolled back: nothing to do"
        return (s.details.get("error") or s.rule or status or "refused") + "; nothing was changed"

    def _apply(self, ctx: RunContext, request: Request) -> list[StepResult]:
        started = utcnow()
        run = self._run(ctx, request, check=False, label="apply")
        results: list[StepResult] = []
        for host, rep in run["reports"].items():
            users = rep.stats.get("users") or []
            if not users:
                step = Step(Part.AGENT, f"{host}/*", None, None, details={"host": host, "user": None})
                if not rep.unreachable and rep.failure is not None:
                    # The plugin reports its users once it has observed them: with none, it failed
                    # before any step (a bad role variable, the observe itself).
                    why = rep.stats.get("error") or rep.failure_text()
                    outcome, msg = Outcome.REFUSED, f"{why}; nothing was changed"
                elif host in run["started"]:
                    outcome, msg = Outcome.NOT_RESTORED, (
                        f"lost during the {request.action} ({rep.failure_text()}): " + (
                            "a half-done reinstall is put back from its marker by --rerun-failed"
                            if request.action == "reinstall" else
                            "a half-done swap is resumed from its marker by --rerun-failed"))
                else:
                    outcome, msg = Outcome.FAILED, f"{rep.failure_text()}; nothing was changed (--rerun-failed)"
                results.append(StepResult(step, outcome, msg, started, utcnow()))
                continue
            reinstall = request.action == "reinstall"
            for u in users:
                step = _step(host, u, rep.stats.get("installer"), undo=request.action == "undo")
                if request.action == "undo" and step.target not in request.targets:
                    continue
                status = u.get("status")
                if status == "changed":
                    outcome, msg = Outcome.SUCCEEDED, (f"app-current is now {u.get('to')}"
                                                       f"{' (reinstalled; config.json restored)' if reinstall else ''}"
                                                       "; agent running"
                                                       # an undo: what became of the user's settings
                                                       f"{'; ' + u['config'] if u.get('config') else ''}")
                elif status == "unchanged":
                    outcome, msg = Outcome.UNCHANGED, (f"{u.get('reason')}: nothing to do" if reinstall
                                                       else "already rolled back: nothing to do")
                elif status == "refused":
                    step.desired = step.current
                    outcome, msg = Outcome.REFUSED, f"{u.get('reason')}; nothing was changed"
                elif status == "failed" and not u.get("done"):
                    outcome, msg = Outcome.FAILED, f"{u.get('error')}; nothing was changed"
                elif status == "failed" and u.get("restored"):
                    outcome, msg = Outcome.RESTORED, f"{u.get('error')}; put back as it was"
                else:
                    outcome = Outcome.NOT_RESTORED
                    msg = f"{u.get('error')}; could NOT be put back: {u.get('undo_error') or '?'}"
                results.append(StepResult(step, outcome, msg, started, utcnow()))
        if results and all(r.outcome is Outcome.REFUSED for r in results):
            # Nothing was changed anywhere: a refusal (exit 2), like a plan that refuses.
            raise ValidationError("; ".join(sorted({f"{r.step.target}: {r.message}" for r in results}))[:2000])
        return sorted(results, key=lambda r: r.step.target)

    def revert(self, ctx: RunContext, results: list[StepResult], reason: str | None) -> list[StepResult]:
        if any(r.outcome is Outcome.SUCCEEDED for r in results):
            ctx.warn("the agent's swaps are not put back automatically when a later part fails: "
                     f"`doai-rollback undo {ctx.run_id}` swaps them back (each PC keeps app-failed)")
        return results

    def blocks_next(self, results: list[StepResult], request: Request) -> bool:
        """A fleet is not all or nothing: PCs that were off or refused do not stop the parts after
        the agent in a whole-system run, unless more than ``max_fail_percent`` (default 50) of the
        PCs were not rolled back; a PC that could NOT be put back always does."""
        if any(r.outcome is Outcome.NOT_RESTORED for r in results):
            return True
        pcs: dict[str, bool] = {}
        for r in results:
            host = r.step.details.get("host") or r.step.target.split("/")[0]
            pcs[host] = pcs.get(host, True) and r.outcome in (Outcome.SUCCEEDED, Outcome.UNCHANGED)
        limit = request.options.get("max_fail_percent")
        limit = 50 if limit is None else int(limit)
        failed = sum(1 for ok in pcs.values() if not ok)
        return failed * 100 > limit * max(len(pcs), 1)

    def undo_request(self, record: Mapping[str, Any]) -> Request | None:
        """Undo the swaps a journaled run finished (its succeeded PC/user steps): each folder goes
        back to what that run found, where it is still as that run left it."""
        # Only the folders that run swapped (one that was only started again has nothing to undo).
        steps = [s for s in self.steps_of(record) if (s.get("details") or {}).get("user")
                 and "rename" in ((s.get("details") or {}).get("steps") or [])]
        if not steps or str(record.get("command", "")).startswith("agent reinstall"):
            return None
        hosts = sorted({s["details"]["host"] for s in steps})
        users = sorted({s["details"]["user"] for s in steps})
        return self.request(action="undo", undo_run=str(record.get("run_id")), limit=",".join(hosts), users=users,
                            targets={s["target"]: s.get("from") or "?" for s in steps}, health_gate=False)

    def rerun_limit(self, record: Mapping[str, Any]) -> str:
        """The PCs a journaled run did not finish: failed, put back, not restored, unreachable."""
        bad = sorted({(s.get("details") or {}).get("host") or s["target"].split("/")[0]
                      for s in record.get("steps", [])
                      if s.get("part") == self.name and s.get("outcome") not in ("succeeded", "unchanged", "planned")})
        if not bad:
            raise UsageError(f"run {record.get('run_id')} left no agent PC to rerun")
        return ",".join(bad)

    # -- status: the plan of every PC, read-only ------------------------------------------------------
    def status(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        along = self._along(ctx) if limit is None else None
        steps = self.plan(ctx, along or self.request(limit=limit))
        hosts: dict[str, Any] = {}
        for s in steps:
            h = hosts.setdefault(s.details["host"], {"users": {}, "healthy": True})
            if s.details.get("user") is None:
                h.update(error=s.details.get("error"), healthy=False,
                         unreachable=s.details.get("plan_status") == "unreachable")
                continue
            # The folders as they are now; the marker's account of the last run only as history.
            live = s.details.get("live") or {}
            h["users"][s.details["user"]] = {
                "current": live.get("app-current") if live else s.current, "backup": live.get("app-backup"),
                "failed": live.get("app-failed"), "last_run": s.details.get("history"),
                "plan": s.details.get("plan_status"), "reason": s.rule}
        return {"part": self.name, "configured": bool(hosts), "hosts": hosts,
                "reachable": not any(h.get("unreachable") for h in hosts.values()),
                "healthy": all(h["healthy"] for h in hosts.values())}

    def host_status(self, host: str, st: dict[str, Any], error: str | None) -> dict[str, Any]:
        return st

    def status_lines(self, st: dict[str, Any]) -> list[str]:
        if not st.get("configured", True):
            return [f"agent: no PCs ({self.needs})"]
        lines = []
        for host, h in st["hosts"].items():
            if h.get("error"):
                lines.append(f"agent {host}: {'UNREACHABLE' if h.get('unreachable') else 'ERROR'}: {h['error']}")
                continue
            for user, u in h["users"].items():
                last = u.get("last_run") or {}
                history = (f"; last run {last.get('run_id') or '?'}: {last.get('phase') or '?'} "
                           f"{last.get('from') or '?'} -> {last.get('to') or '?'}" if last else "")
                lines.append(f"agent {host} {user}: app-current {u['current'] or 'none'}, "
                             f"app-backup {u.get('backup') or 'none'}, app-failed {u.get('failed') or 'none'}{history}; "
                             f"rollback would be: {u['plan']}{(' (' + u['reason'] + ')') if u['reason'] else ''}")
        return lines

    def health(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        st = self.status(ctx, limit=limit)
        out = {"healthy": st["healthy"], "reachable": st["reachable"],
               "targets": {h: v["healthy"] for h, v in st["hosts"].items()}}
        states = {h: "unreachable" for h, v in st["hosts"].items() if v.get("unreachable")}
        if states:  # a PC that was not reached is not "unhealthy": unknown
            out["states"] = states
        return out


class _Reinstall(AgentPart):
    """The reinstall's playbook run (same role, stats and modules; ``doai_agent_operation: reinstall``)."""

    playbook = "agent_reinstall.yml"
