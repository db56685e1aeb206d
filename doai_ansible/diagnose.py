"""The shared machinery of the runbook's diagnose scenarios (section 7), and the log bundle the
whole-system rollback collects before it starts.

Each part brings its scenarios through the registry (:attr:`~doai_ansible.part.PartCli.scenarios`:
name, help, whether ``--limit`` applies, the function that runs it): the backend's ``api-errors``
(A, :mod:`doai_ansible.parts.backend_diagnose`), the database's ``migration-failure`` (B,
:mod:`doai_ansible.parts.database_diagnose`), the agent's ``agent-connection`` (C,
:mod:`doai_ansible.parts.agent_diagnose`). :func:`run` runs one by name; this module names no part.

Each returns a :class:`Diagnosis`: findings (check, ok, target, detail) and the commands to run
next. Nothing here changes a host or a database: the playbooks only read (``check_mode: false``
probes), the database session is read-only.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from doai_ansible import parts as registry
from doai_ansible.context import RunContext
from doai_ansible.errors import ExitStatus, UsageError
from doai_ansible.runner import PlaybookRun, run_playbook, task_progress
from doai_ansible.secrets import scrub_here
from doai_ansible.settings import write_private

log = logging.getLogger(__name__)

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


def _per_host(pb: PlaybookRun, key: str, *, reported_first: bool = False) -> dict[str, dict[str, Any]]:
    """host -> its report, or ``{"error": ..., "unreachable": bool}`` for a host that failed.
    ``reported_first``: the run went on after the report (the checklist's reads in a plan's
    run), so a host that reported keeps its report whatever failed on it later, and a host
    that ran without reporting has an error."""
    stats: dict[str, Any] = pb.custom.get(key) or {}
    out: dict[str, dict[str, Any]] = {h: dict(v) for h, v in stats.items()}
    for f in pb.failures:
        if reported_first and f.host in stats:
            continue
        out[f.host] = {"error": f"{f.task}: {f.message}" if not f.unreachable else f"unreachable: {f.message}",
                       "unreachable": f.unreachable}
    if reported_first:  # a host that ran on without reporting: its read failed (ignored there)
        causes = pb.read_failures(key)
        for host in set(pb.hosts) - set(out):
            out[host] = {"error": "its logs could not be read" + causes.get(host, ""), "unreachable": False}
    return dict(sorted(out.items()))


def group_hosts(ctx: RunContext, group: str, limit: str | None) -> dict[str, dict[str, Any]]:
    from doai_ansible.inventory import group_vars

    return group_vars(ctx.settings.inventory, group, limit)


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


def run(ctx: RunContext, scenario: str, *, limit: str | None = None) -> Diagnosis:
    """One scenario by name (the CLI's entry point): the part that declares it runs it."""
    sc = registry.scenario(scenario)
    if sc.limit is None:
        if limit:
            raise UsageError(sc.no_limit or f"--limit does not apply to `diagnose {sc.name}`")
        result: Diagnosis = registry.scenario_function(sc.function)(ctx)
    else:
        result = registry.scenario_function(sc.function)(ctx, limit=limit)
    return result
