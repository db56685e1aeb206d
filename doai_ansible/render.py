"""Text and JSON rendering of results, and the progress display on a terminal."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import IO, Any

from doai_ansible.model import Outcome, RunResult

_MARK = {
    Outcome.PLANNED: "plan",
    Outcome.UNCHANGED: "same",
    Outcome.SUCCEEDED: "ok",
    Outcome.RESTORED: "RESTORED",
    Outcome.NOT_RESTORED: "NOT RESTORED",
    Outcome.FAILED: "FAILED",
    Outcome.REFUSED: "REFUSED",
    Outcome.SKIPPED: "skip",
}


class Progress:
    """Streams ansible-runner events as one line per task and host result, on stderr.

    Quiet unless stderr is a terminal (and never with ``--output json``): a CI log gets the
    JSON result and the run's log file instead.
    """

    def __init__(self, stream: IO[str] | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.t0 = time.monotonic()

    def note(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"[{time.monotonic() - self.t0:6.1f}s] {text}\n")
            self.stream.flush()

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        kind = event.get("event")
        data = event.get("event_data") or {}
        task = data.get("task", "")
        host = data.get("host", "")
        res = data.get("res") or {}
        if kind == "runner_on_ok" and res.get("reached") == "healthy" and res.get("stable_seconds") is not None:
            # A role's health gate reports health as soon as it is good, then watches for restarts:
            # the operator learns here that the outage is over.
            version = f" on {res['version']}" if res.get("version") else ""
            self.note(f"{host}: healthy{version} at {time.monotonic() - self.t0:.1f} s, "
                      f"watching for restarts for {float(res['stable_seconds']):g} s")
        elif kind == "runner_on_ok" and res.get("changed"):
            self.note(f"{host}: {task} (changed)")
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            msg = (data.get("res") or {}).get("msg", "")
            self.note(f"{host}: {task} FAILED {str(msg)[:200]}")
        elif kind == "runner_on_unreachable":
            self.note(f"{host}: UNREACHABLE")
        elif kind == "playbook_on_task_start" and task and not task.startswith(("Report", "Name this")):
            self.note(task)


_emitted = 0  # documents printed on stdout by this process


def emit_json(data: Any, stream: IO[str] | None = None) -> None:
    global _emitted
    if stream is None or stream is sys.stdout:
        _emitted += 1
    (stream or sys.stdout).write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def emitted() -> int:
    """How many JSON documents went to stdout so far (``--output json`` promises one per command)."""
    return _emitted


_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_IMAGE_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")


def short_ref(value: str | None) -> str:
    """A journaled from/to as a human reads it: a full commit SHA as its 12-character
    abbreviation, a full image id as ``sha256:<12 hex>`` (both name the same object: git and
    ``--to`` take them); anything else whole: a cut migration version, deployment id or snapshot
    name would read as another valid one."""
    if not value:
        return "?"
    if _COMMIT_RE.fullmatch(value):
        return value[:12]
    if _IMAGE_ID_RE.fullmatch(value):
        return value[: len("sha256:") + 12]
    return value


def run_text(run: RunResult, *, confirming: bool = False) -> str:
    """The run as text; ``confirming``: the plan shown before the one question."""
    lines = []
    if confirming:
        head = f"{run.command} (plan of run {run.run_id}; nothing changed yet)"
    else:
        head = f"{run.command} ({'dry run, nothing changed' if run.dry_run else 'run ' + run.run_id})"
    lines.append(head)
    for w in run.warnings:
        lines.append(f"  WARNING: {w}")
    # An undo goes back to what the run it undoes found: that is its target's only rule (the
    # parts pass those states on as requested targets, which their rules call "--to" or
    # "requested", words the operator never typed).
    undone = run.command.removeprefix("undo ").strip() if run.command.startswith("undo ") else None
    for r in run.results:
        s = r.step
        frm = s.details.get("from_label") or (s.current or "?")
        to = s.details.get("to_label") or (s.desired or "?")
        lines.append(f"  [{_MARK[r.outcome]:>8}] {s.part.value} {s.target}: {frm} -> {to}")
        if undone:
            lines.append(f"             target: what run {undone} found")
        elif s.rule:
            lines.append(f"             target chosen by {s.rule}")
        if run.dry_run:
            lines.extend(f"             {n}" for n in s.notes if not (undone and n.startswith("target: ")))
        if s.at_risk:
            lines.append(f"             at risk: {s.at_risk}")
        if r.message:
            lines.append(f"             {r.message}")
        if r.duration_s is not None and not run.dry_run:
            lines.append(f"             took {r.duration_s:.1f} s")
    if run.message:
        lines.append(run.message)
    if run.log_dir and not run.dry_run:
        lines.append(f"logs: {run.log_dir}")
    return "\n".join(lines)
