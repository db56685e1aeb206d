"""The whole-system rollback: the runbook's checklist (section 5) around the engine.

Before
    every part in scope is inspected and its live state kept (``before-status.json`` in the run's
    log bundle, a summary in the journal record); the error logs of every backend host and agent
    PC are collected into the bundle; the scope (unhealthy and unreachable parts and hosts) is
    shown with the plan.
During
    the start is announced (optional webhook, Slack-compatible JSON, URL only from the
    environment) once the plan is confirmed; the engine rolls back in the runbook's order, Agent
    -> Backend -> Database -> Dashboard, each part verified by its own health gate before the
    next starts; on the first failure it stops: the parts already rolled back stay rolled back,
    the failing part puts itself back (or says loudly that it could not), the rest is skipped.
After
    the health of every part, the smoke checks of the settings, an incident report (Markdown and
    JSON: timeline, from -> to per part and host, the log bundle, the contacts table, a root-cause
    section to fill in), and the end is announced.

Everything lands in ONE journal record (the run's, key ``checklist``), so ``history``, ``undo``
and the report agree. The checks around the run never change anything and never fail the run:
a webhook or log collection that fails is a warning. A run that succeeded but whose parts are
not all healthy afterwards (or whose smoke checks fail) exits 6 (unhealthy).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from doai_ansible import engine, runner, validate
from doai_ansible import parts as registry
from doai_ansible.context import RunContext
from doai_ansible.errors import DoaiError, ExitStatus, UsageError
from doai_ansible.model import Outcome, RunResult, utcnow
from doai_ansible.settings import SmokeCheck, ensure_private_dir, write_private

log = logging.getLogger(__name__)

#: The ``--only``/``--skip`` spelling of the parts, in the runbook's order.
PART_NAMES = tuple(registry.names())


@dataclasses.dataclass(frozen=True)
class SystemRequest:
    """What the operator asked of ``system rollback``; every value validated by :func:`request`.

    ``options`` holds the parts' own options of the run by their Python name (``backend_to``,
    ``database_last`` ...: each part's :attr:`~doai_ansible.part.PartCli.system_options`).
    """

    parts: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (part, why) for the parts left out
    reason: str | None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def parse_parts(value: str | None, option: str) -> list[str]:
    """``agent,backend`` -> the part names, each checked."""
    if value is None:
        return []
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise UsageError(f"{option}: name at least one part ({', '.join(PART_NAMES)})")
    for n in names:
        if n not in PART_NAMES:
            raise UsageError(f"{option}: {n!r} is not a part", hint=f"parts: {', '.join(PART_NAMES)}")
    return names


def request(ctx: RunContext, *, only: str | None = None, skip: str | None = None, reason: str | None = None,
            **part_options: Any) -> SystemRequest:
    """Validate the options and choose the parts (no network): the configured parts in the
    runbook's order, narrowed by ``--only`` and ``--skip``. A part named by ``--only`` that is
    not configured is an error; one that is merely not configured is left out with the reason.
    ``part_options``: the parts' options of the run (``backend_to=...``), as the parts declare
    them (:attr:`~doai_ansible.part.PartCli.system_options`); another name is a TypeError."""
    owner = {o.dest: (o, face.name) for face in registry.all_clis() for o in face.system_options}
    unknown = sorted(set(part_options) - set(owner))
    if unknown:
        raise TypeError(f"system.request() got unexpected part options {', '.join(unknown)}")
    only_l, skip_l = parse_parts(only, "--only"), parse_parts(skip, "--skip")
    both = set(only_l) & set(skip_l)
    if both:
        raise UsageError(f"{', '.join(sorted(both))} both in --only and --skip")
    chosen: list[str] = []
    skipped: list[tuple[str, str]] = []
    for part in registry.all_parts():
        if only_l and part.name not in only_l:
            skipped.append((part.name, "not in --only"))
        elif part.name in skip_l:
            skipped.append((part.name, "--skip"))
        elif not part.configured(ctx):
            if part.name in only_l:
                raise UsageError(f"--only {part.name}: the {part.name} part is not configured ({part.needs})")
            skipped.append((part.name, f"not configured ({part.needs})"))
        else:
            chosen.append(part.name)
    if not chosen:
        raise UsageError("no part to roll back", hint="configure the parts (see the README) or check --only/--skip")
    for dest, (opt, name) in owner.items():
        if part_options.get(dest) not in (None, False) and name not in chosen:
            raise UsageError(f"{opt.flag} is for the {name} part, which this run leaves out")
    for name in chosen:
        registry.cli_of(name).system_check(part_options)
    return SystemRequest(parts=tuple(chosen), skipped=tuple(skipped), reason=validate.reason(reason),
                         options=dict(part_options))


def jobs(ctx: RunContext, req: SystemRequest) -> list[engine.Job]:
    """One job per part, each request validated by its part (still no network, except the
    backend's in-process inventory read)."""
    out = []
    for name in req.parts:
        part, face = registry.get(name), registry.cli_of(name)
        spelled = face.spelled()
        try:
            r = part.request(**face.system_request_options(ctx, req.options, req.reason))
        except DoaiError as exc:
            raise engine.as_typed(exc, spelled) from None
        out.append(engine.Job(part, r, spelled))
    return out


# -- before -------------------------------------------------------------------------------------------------
def before(ctx: RunContext, req: SystemRequest) -> dict[str, Any]:
    """Inspect every part in scope (kept whole in the log bundle), collect the logs, derive the
    scope. Never raises for a part that cannot be read: that part is unreachable in the scope."""
    ctx.say("before: inspecting every part and collecting the error logs (the state found is kept in the "
            "run's log bundle)")

    def status_of(name: str) -> dict[str, Any]:
        try:
            return registry.get(name).status(ctx)
        except DoaiError as exc:
            return {"part": name, "configured": True, "healthy": False, "reachable": False, "error": exc.message}

    # Read-only and independent of each other: at once, not one after the other (minutes of an outage).
    found = engine.in_parallel({**{name: functools.partial(status_of, name) for name in req.parts},
                         " logs": functools.partial(collect_logs, ctx, req)})
    logs = found.pop(" logs")
    states = {name: found[name] for name in req.parts}
    write_private(ctx.log_dir / "before-status.json", json.dumps(states, indent=2, default=str) + "\n")
    unhealthy, unreachable = scope(states)
    return {"healthy": all(s.get("healthy", True) for s in states.values()),
            "reachable": all(s.get("reachable", True) for s in states.values()),
            "scope": {"unhealthy": unhealthy, "unreachable": unreachable},
            "state_file": str(ctx.log_dir / "before-status.json"),
            "logs": logs}


def scope(states: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """``(unhealthy, unreachable)``: "part" or "part host" for each target found so."""
    unhealthy: list[str] = []
    unreachable: list[str] = []
    for name, st in states.items():
        hosts = st.get("hosts")
        if isinstance(hosts, Mapping) and hosts:
            for host, h in hosts.items():
                err = str((h or {}).get("error") or "")
                if err.startswith("unreachable"):
                    unreachable.append(f"{name} {host}")
                elif not (h or {}).get("healthy", True):
                    unhealthy.append(f"{name} {host}")
            continue
        if not st.get("reachable", True):
            unreachable.append(name)
        elif not st.get("healthy", True):
            unhealthy.append(name)
    return unhealthy, unreachable


def collect_logs(ctx: RunContext, req: SystemRequest) -> list[dict[str, Any]]:
    """The error logs of the backend hosts and agent PCs into ``<log bundle>/logs``; a failure is
    an entry with an error (and a warning), never the end of the run."""
    collectors = [p for p in (registry.get(name) for name in req.parts) if p.collects_logs]
    if not collectors or ctx.settings.system.log_lines == 0:
        return []
    dest = ensure_private_dir(ctx.log_dir / "logs")
    entries: list[dict[str, Any]] = []
    try:
        for part in collectors:  # only the hosts of the parts in scope are contacted
            entries += part.collect_logs(ctx, dest, lines=ctx.settings.system.log_lines)
    except DoaiError as exc:
        ctx.warn(f"the logs could not be collected: {exc.message}")
        return [{"part": "system", "host": "-", "file": None, "error": exc.message}]
    return entries


# -- during: announcements ------------------------------------------------------------------------------
def announce(ctx: RunContext, event: str, text: str) -> dict[str, Any]:
    """POST ``{"text": ...}`` (Slack's incoming-webhook shape) to the webhook, once: an
    announcement that may have arrived is not sent again (no duplicate alarms). The URL holds a
    token: it is never shown, not even in an error."""
    hook = ctx.settings.system.webhook
    out: dict[str, Any] = {"event": event, "sent": False, "error": None, "at": utcnow()}
    if hook is None:
        out["error"] = f"no webhook (set {ctx.settings.system.webhook_env} to announce)"
        return out
    try:
        with httpx.Client(timeout=ctx.settings.system.webhook_timeout_s, follow_redirects=False,
                          trust_env=False) as client:
            resp = client.post(hook.reveal(), json={"text": text})
        if 200 <= resp.status_code < 300:
            out["sent"] = True
        else:
            out["error"] = f"the webhook answered HTTP {resp.status_code}"
    except httpx.HTTPError as exc:
        out["error"] = f"the webhook could not be reached ({type(exc).__name__})"
    if out["error"]:
        ctx.warn(f"announcement of the {event}: {out['error']}")
    return out


def announcement(req: SystemRequest, run: RunResult, event: str, ctx: RunContext, what: str = "rollback") -> str:
    why = f" Reason: {req.reason}." if req.reason else ""
    if event == "start":
        return (f":rotating_light: DoAi {what} started by {ctx.operator} (run {run.run_id}): "
                f"{' -> '.join(run.parts or req.parts)}; service may be interrupted.{why}")
    mark = ":white_check_mark:" if run.exit_status is ExitStatus.OK else ":x:"
    return f"{mark} DoAi {what} {run.run_id} ended: {run.exit_status.name}. {run.message}"


# -- after ------------------------------------------------------------------------------------------------
def smoke(checks: tuple[SmokeCheck, ...]) -> list[dict[str, Any]]:
    """The smoke checks of the settings: GET, expected status, expected text."""
    out = []
    for c in checks:
        entry: dict[str, Any] = {"name": c.name, "url": c.url, "ok": False, "status": None, "detail": ""}
        try:
            with httpx.Client(timeout=c.timeout_s, follow_redirects=True, trust_env=False) as client:
                resp = client.get(c.url)
            entry["status"] = resp.status_code
            if resp.status_code != c.status:
                entry["detail"] = f"HTTP {resp.status_code}, expected {c.status}"
            elif c.contains is not None and c.contains not in resp.text:
                entry["detail"] = f"the answer does not contain {c.contains!r}"
            else:
                entry["ok"] = True
                entry["detail"] = f"HTTP {resp.status_code}" + (f", contains {c.contains!r}" if c.contains else "")
        except httpx.HTTPError as exc:
            entry["detail"] = f"no answer ({type(exc).__name__})"
        out.append(entry)
    return out


def health_of(ctx: RunContext, name: str) -> dict[str, Any]:
    """One part's health, read live; a refusal of the read is an unhealthy, unreachable part."""
    try:
        return registry.get(name).health(ctx)
    except DoaiError as exc:
        return {"healthy": False, "reachable": False, "targets": {}, "error": exc.message}


def after(ctx: RunContext, req: SystemRequest,
          started: Mapping[str, Callable[[], dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The checks after: every part's health and the smoke checks, at once. ``started``: the
    parts whose read is already under way (:class:`EarlyReads`), each a function of its answer."""
    ctx.say("after: health of every part and the smoke checks")
    started = started or {}
    found = engine.in_parallel({**{name: started.get(name) or functools.partial(health_of, ctx, name)
                                   for name in req.parts},
                         " smoke": functools.partial(smoke, ctx.settings.system.smoke_checks)})
    health = {name: found[name] for name in req.parts}
    return {"healthy": all(h.get("healthy", False) for h in health.values()),
            "reachable": all(h.get("reachable", False) for h in health.values()),
            "parts": health, "smoke": found[" smoke"]}


class EarlyReads:
    """The checks after, read early: a part's health read may start before the run's last part is
    done, once every part it waits for has had its turn in the apply:
    - every part whose change can change what it reads (itself, its ``read_changed_by``: the
      database can break the backend; nothing after the agent touches a PC);
    - for a part whose read is a playbook run (``runs_playbooks``), every part of the run that
      runs playbooks too: beside them the read would share this controller with the part at
      work (bench/README, fourth round: starting a part's playbook early slowed the critical
      path). What is left then are API calls. An API read (the database, the dashboard) waits
      for the parts that can change it only.

    Each read runs in a daemon thread (:class:`engine.Background`); a second Ctrl-C stops them
    (:meth:`cancel`). The checks after use it only while its part's results are those it was started on: a
    part put back since is read again."""

    def __init__(self, ctx: RunContext, parts: tuple[str, ...], note: Callable[[str], None]) -> None:
        self.ctx, self.parts, self.note = ctx, parts, note
        self.done: dict[str, list[tuple[str, Outcome]]] = {}
        self.reads: dict[str, tuple[list[tuple[str, Outcome]], Callable[[], dict[str, Any]]]] = {}
        self.stop = threading.Event()

    def part_done(self, name: str, results: list[Any]) -> None:
        """The engine's ``after_part``: start every read whose parts are all done now (none once
        the last part is done: the checks after start them all at once)."""
        self.done[name] = _outcomes(results)
        if set(self.parts) <= set(self.done):
            return
        heavy = [p for p in self.parts if registry.get(p).runs_playbooks]
        for part in self.parts:
            waits = {part, *(p.value for p in registry.get(part).read_changed_by),
                     *(heavy if registry.get(part).runs_playbooks else ())}
            if part not in self.reads and all(w in self.done for w in waits if w in self.parts):
                self.note(f"after: the {part} read now (no part left changes it)")
                read = functools.partial(_reading, self.stop, functools.partial(health_of, self.ctx, part))
                self.reads[part] = (self.done[part], engine.Background(read, name=f"doai-after-{part}").result)

    def cancel(self) -> None:
        """Stop the reads still at work (the run was interrupted): their playbooks end at their
        next check (``runner.STOP_CHECK_S``); the apply's are not theirs to stop."""
        self.stop.set()

    def usable(self, run: RunResult) -> dict[str, Callable[[], dict[str, Any]]]:
        """The reads started early whose parts' results have not changed since."""
        now: dict[str, list[Any]] = {}
        for r in run.results:
            now.setdefault(r.step.part.value, []).append(r)
        return {part: answer for part, (seen, answer) in self.reads.items() if _outcomes(now.get(part, [])) == seen}


def _outcomes(results: list[Any]) -> list[tuple[str, Outcome]]:
    return [(r.step.target, r.outcome) for r in results]


def _reading(stop: threading.Event, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``call`` with its playbook runs stopped by ``stop`` (this thread's context: its reads, and
    those it hands on)."""
    runner.READ_STOP.set(stop)
    return call()


# -- the run ---------------------------------------------------------------------------------------------
ConfirmHook = Callable[[RunResult], bool]


def rollback(ctx: RunContext, req: SystemRequest, *, dry_run: bool = False,
             confirm: ConfirmHook | None = None) -> RunResult:
    """The checklist around one engine run; returns the journaled run (``extra["checklist"]``)."""
    job_list = jobs(ctx, req)  # every part's request validated before anything is contacted
    return checklisted(ctx, req, job_list, command="system rollback", dry_run=dry_run, confirm=confirm)


def undo(ctx: RunContext, record: Mapping[str, Any], *, reason: str | None, dry_run: bool = False,
         confirm: ConfirmHook | None = None) -> RunResult:
    """Undo a whole-system run: a service change like the rollback, with the same checklist
    (state kept, logs, the start and end announced, health and smoke checks, incident report),
    every part it changed rolled forward to what it found, newest part first."""
    run_id = str(record["run_id"])
    reason = validate.reason(reason) or f"undo {run_id}"
    job_list = engine.undo_jobs(dict(record), reason=reason)
    req = SystemRequest(parts=tuple(j.part.name for j in job_list), skipped=(), reason=reason)
    return checklisted(ctx, req, job_list, command=f"undo {run_id}", dry_run=dry_run, confirm=confirm,
                       reverse=True, what=f"undo of rollback {run_id}")


def checklisted(ctx: RunContext, req: SystemRequest, job_list: list[engine.Job], *, command: str,
                dry_run: bool = False, confirm: ConfirmHook | None = None, reverse: bool = False,
                what: str = "rollback") -> RunResult:
    """One engine run of ``job_list`` inside the runbook's checklist (module docstring)."""
    checklist: dict[str, Any] = {"skipped_parts": [{"part": p, "why": w} for p, w in req.skipped],
                                 "before": None, "after": None, "announcements": [], "report": None}
    timeline: list[dict[str, str]] = []
    checklist["timeline"] = timeline
    started = {"announced": False}

    def before_plan() -> None:  # under the run's locks: the state kept is the state planned against
        checklist["before"] = before(ctx, req)
        timeline.append({"at": utcnow(), "event": "before: state kept, logs collected, scope "
                         + _scope_text(checklist["before"]["scope"])})

    def hook(plan: RunResult) -> bool:  # only when someone confirms (the engine re-reads after it)
        if confirm is not None and not confirm(plan):
            return False
        timeline.append({"at": utcnow(), "event": "plan confirmed"})
        return True

    def start(plan: RunResult) -> None:  # every part planned, confirmed and re-checked: the first change is next
        if confirm is None:
            timeline.append({"at": utcnow(), "event": "plan accepted (--yes)"})
        checklist["announcements"].append(announce(ctx, "start", announcement(req, plan, "start", ctx, what)))
        started["announced"] = True
        timeline.append({"at": utcnow(), "event": "start announced" if checklist["announcements"][-1]["sent"]
                         else "start not announced (" + str(checklist["announcements"][-1]["error"]) + ")"})

    def note(event: str) -> None:
        ctx.say(event)
        timeline.append({"at": utcnow(), "event": event})

    early = EarlyReads(ctx, req.parts, note)

    def check_after(run: RunResult) -> None:
        try:
            checklist["after"] = after(ctx, req, started=early.usable(run))
        except Exception as exc:  # never the end of the run's record; the type only (texts may hold a DSN)
            log.debug("after-checks", exc_info=True)
            checklist["after"] = {"healthy": False, "reachable": False, "parts": {}, "smoke": [],
                                  "error": f"the checks could not run ({type(exc).__name__})"}
        timeline.append({"at": utcnow(), "event": "after: " + _after_text(checklist["after"])})
        if reverse and not _after_ok(checklist["after"]):
            # An undo returns to the state a rollback found, most likely unhealthy (that is why it
            # was rolled back): the checks are observed and shown, not required.
            run.message = (f"{run.message}; the checks after it (shown, not required for an undo): "
                           f"{_after_text(checklist['after'])}")
        elif run.exit_status is ExitStatus.OK and not _after_ok(checklist["after"]):
            run.exit_status = ExitStatus.UNHEALTHY
            run.message = (f"{run.message}; BUT the checks after the rollback fail: "
                           f"{_after_text(checklist['after'])}")

    def finish(run: RunResult) -> None:
        if run.dry_run:
            return
        if not started["announced"]:
            # Nothing was applied: a refusal or a decline says so itself; "nothing to do" on a
            # system that is still unhealthy must not pass for a recovery.
            if run.exit_status is ExitStatus.OK and checklist["before"] is not None:
                check_after(run)
            return
        for r in run.results:
            if r.started:
                timeline.append({"at": r.started, "event": f"{r.step.part.value} {r.step.target}: started"})
            if r.finished:
                timeline.append({"at": r.finished, "event": f"{r.step.part.value} {r.step.target}: {r.outcome.value}"})
        check_after(run)
        run.finished = utcnow()
        checklist["announcements"].append(announce(ctx, "end", announcement(req, run, "end", ctx, what)))
        timeline.append({"at": utcnow(), "event": "end announced" if checklist["announcements"][-1]["sent"]
                         else "end not announced"})
        timeline.sort(key=lambda e: e["at"])
        run.warnings = list(ctx.warnings)
        try:
            checklist["report"] = write_report(ctx, req, run, checklist, ctx.settings.report_dir)
        except (OSError, DoaiError) as exc:
            ctx.warn(f"the report could not be written to {ctx.settings.report_dir} ({type(exc).__name__}); "
                     "it is in the run's log bundle instead")
            run.warnings = list(ctx.warnings)
            checklist["report"] = write_report(ctx, req, run, checklist, ctx.log_dir)

    # A part whose plan is one check-mode run on its hosts reads the state and the logs kept
    # here in that run (one round trip per host before anything changes); every read after
    # the plans is fresh.
    ctx.read_along({j.part.name: j.request for j in job_list}, log_lines=ctx.settings.system.log_lines)
    try:
        return engine.run(ctx, job_list, command=command, reason=req.reason, dry_run=dry_run,
                          confirm=hook if not dry_run and confirm is not None else None,
                          extra={"checklist": checklist}, reverse=reverse,
                          before_plan=before_plan, before_apply=start, before_close=finish,
                          after_part=early.part_done)
    except BaseException:  # a second Ctrl-C: the process ends now, without waiting for its reads
        early.cancel()
        raise


def _after_ok(after_doc: Mapping[str, Any]) -> bool:
    return bool(after_doc["healthy"]) and all(s["ok"] for s in after_doc["smoke"])


def _scope_text(sc: Mapping[str, list[str]]) -> str:
    bits = []
    if sc["unhealthy"]:
        bits.append("unhealthy: " + ", ".join(sc["unhealthy"]))
    if sc["unreachable"]:
        bits.append("unreachable: " + ", ".join(sc["unreachable"]))
    return "; ".join(bits) or "every part healthy"


def _after_text(a: Mapping[str, Any]) -> str:
    if a.get("error"):
        return a["error"]
    bad = [n for n, h in a["parts"].items() if not h.get("healthy")]
    smoke_bad = [s["name"] for s in a["smoke"] if not s["ok"]]
    if not bad and not smoke_bad:
        return f"every part healthy, {len(a['smoke'])} smoke check(s) passed"
    return "; ".join(filter(None, ["unhealthy: " + ", ".join(bad) if bad else "",
                                   "smoke checks failing: " + ", ".join(smoke_bad) if smoke_bad else ""]))


# -- the incident report ------------------------------------------------------------------------------
def write_report(ctx: RunContext, req: SystemRequest, run: RunResult, checklist: Mapping[str, Any],
                 where: Path) -> dict[str, str]:
    """``<where>/<run id>.md`` and ``.json`` (0600 in a 0700 folder)."""
    d = ensure_private_dir(where, parents=True)
    md_path, json_path = d / f"{run.run_id}.md", d / f"{run.run_id}.json"
    paths = {"markdown": str(md_path), "json": str(json_path)}
    doc = dict(run.to_dict(), who=ctx.operator)
    doc["checklist"] = dict(checklist, report=paths)
    write_private(json_path, json.dumps(doc, indent=2, default=str) + "\n")
    write_private(md_path, report_markdown(doc, ctx))
    return paths


def report_markdown(doc: Mapping[str, Any], ctx: RunContext) -> str:
    c = doc["checklist"]
    lines = [f"# Incident report: DoAi {doc.get('command') or 'rollback'} (run {doc['run_id']})", "",
             f"- **Result**: {doc['exit_name']} (exit {doc['exit_status']}): {doc['message']}",
             f"- **Operator**: {doc.get('who')}",
             f"- **Reason**: {doc.get('reason') or '(none given)'}",
             f"- **Started / finished**: {doc['started']} / {doc.get('finished')}",
             f"- **Parts, in order**: {' -> '.join(doc['parts']) or '(none)'}"]
    for s in c.get("skipped_parts", []):
        lines.append(f"- **Left out**: {s['part']} ({s['why']})")
    lines += ["", "## Scope before the rollback", "", _scope_text(c["before"]["scope"]), "",
              f"State found: `{c['before'].get('state_file')}`", "", "## Timeline", "", "| time (UTC) | event |",
              "| --- | --- |"]
    lines += [f"| {e['at']} | {_cell(e['event'])} |" for e in c.get("timeline", [])]
    lines += ["", "## From -> to, per part and host", "", "| part | target | from | to | outcome | message |",
              "| --- | --- | --- | --- | --- | --- |"]
    for s in doc["steps"]:
        det = s.get("details") or {}
        frm = det.get("from_label") or s.get("from") or "?"
        to = det.get("to_label") or s.get("to") or "?"
        lines.append(f"| {s['part']} | {_cell(s['target'])} | {_cell(str(frm))} | {_cell(str(to))} | "
                     f"{s['outcome']} | {_cell(s.get('message') or '')} |")
    a = c.get("after")
    lines += ["", "## After the rollback", ""]
    if a is None:
        lines.append("Not checked (nothing was applied).")
    else:
        lines += ["| part | healthy | reachable |", "| --- | --- | --- |"]
        lines += [f"| {n} | {'yes' if h.get('healthy') else 'NO'} | {'yes' if h.get('reachable') else 'NO'} |"
                  for n, h in a["parts"].items()]
        lines += ["", "Smoke checks:", ""]
        lines += [f"- {'ok' if s['ok'] else 'FAILED'}: {s['name']} ({s['url']}): {s['detail']}" for s in a["smoke"]]
        if not a["smoke"]:
            lines.append("- none configured (`system.smoke_checks` in the config file)")
    lines += ["", "## Logs", "", f"Run log bundle: `{doc.get('log_dir')}`", ""]
    for e in c["before"].get("logs", []):
        lines.append(f"- {e['part']} {e['host']}: " + (f"`{e['file']}`" if e.get("file") else f"not collected: "
                                                        f"{e.get('error')}"))
    lines += ["", "## Announcements", ""]
    lines += [f"- {x['event']}: " + ("sent" if x["sent"] else f"not sent ({x['error']})")
              for x in c.get("announcements", [])]
    lines += ["", "## Contacts", "", "| role | name | contact |", "| --- | --- | --- |"]
    contacts = ctx.settings.system.contacts or ()
    lines += [f"| {_cell(k.role)} | {_cell(k.name)} | {_cell(k.contact)} |" for k in contacts]
    if not contacts:
        lines.append("| (none configured: `system.contacts`) | | |")
    changed = any(s["outcome"] == Outcome.SUCCEEDED.value for s in doc["steps"])
    lines += ["", "## Next steps", ""]
    if doc["exit_status"] == int(ExitStatus.FAILED_NOT_RESTORED):
        lines.append("- A part could NOT be put back: act on the NOT RESTORED rows above first.")
    if changed:
        lines.append(f"- To return to the state this run found: `doai-rollback undo {doc['run_id']}`.")
    lines += ["- Check the monitoring figures and run a user test (runbook section 5).",
              "", "## Root cause (to fill in)", "", "- What failed in the deployment:", "- Why it was not caught:",
              "- What changes so it does not happen again:", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def text_lines(run: RunResult) -> list[str]:
    """The checklist's own lines, around the engine's run text."""
    c = run.extra.get("checklist") or {}
    out = []
    b = c.get("before")
    if b:
        out.append(f"before: {_scope_text(b['scope'])}; state kept in {b.get('state_file')}")
        for e in b.get("logs", []):
            out.append(f"    logs {e['part']} {e['host']}: " + (e.get("file") or f"not collected ({e.get('error')})"))
    for s in c.get("skipped_parts", []):
        if s["why"].startswith("not configured"):
            out.append(f"    {s['part']}: left out, {s['why']}")
    a = c.get("after")
    if a:
        out.append(f"after: {_after_text(a)}")
        for s in a["smoke"]:
            out.append(f"    smoke {'ok' if s['ok'] else 'FAILED'}: {s['name']}: {s['detail']}")
    for x in c.get("announcements", []):
        if x["sent"]:
            out.append(f"announced the {x['event']}")
    if c.get("report"):
        out.append(f"incident report: {c['report']['markdown']} (and {Path(c['report']['json']).name})")
    return out

