"""The step/result model shared by every part and the engine.

A run is a list of :class:`Step` s (one per part and host, produced by a part's ``plan``),
applied by the engine (:mod:`doai_ansible.engine`) in the runbook's order; each step ends as a
:class:`StepResult` with an :class:`Outcome`. :class:`RunResult` is what a command did: it is
rendered as text or JSON and appended to the journal. The same steps drive ``--dry-run``,
the confirmation, the real run, the journal and ``undo``: a step pins the resolved values
(``current`` and ``desired`` are full ids: commit SHAs, deployment ids) so that what was
confirmed is what is applied.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
from typing import Any

from doai_ansible.errors import ExitStatus


def utcnow() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Part(enum.StrEnum):
    """The four parts of the runbook, in its rollback order (Agent -> Backend -> Database -> Dashboard)."""

    AGENT = "agent"
    BACKEND = "backend"
    DATABASE = "database"
    DASHBOARD = "dashboard"

    @property
    def order(self) -> int:
        return list(Part).index(self)


class Outcome(enum.StrEnum):
    PLANNED = "planned"  # dry run: what would happen
    UNCHANGED = "unchanged"  # already on the target
    SUCCEEDED = "succeeded"
    RESTORED = "restored"  # failed, put back as it was
    NOT_RESTORED = "not_restored"  # failed, could not be put back: a human must act
    FAILED = "failed"  # failed before anything was changed
    REFUSED = "refused"  # refused before anything was changed (bad input, drift, lock, unreachable)
    SKIPPED = "skipped"  # not attempted: an earlier part failed, or the confirmation was declined


@dataclasses.dataclass
class Step:
    """One part (and host) of a plan: where it is, where it goes, and why."""

    part: Part
    target: str  # host name, project, database
    current: str | None  # what inspect saw live ("from")
    desired: str | None  # where the step goes ("to")
    rule: str = ""  # how the target was chosen
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    at_risk: str | None = None  # data that could be lost
    notes: list[str] = dataclasses.field(default_factory=list)  # plan lines shown to the operator

    @property
    def changes(self) -> bool:
        return self.current != self.desired

    def to_dict(self) -> dict[str, Any]:
        return {
            "part": self.part.value,
            "target": self.target,
            "from": self.current,
            "to": self.desired,
            "rule": self.rule,
            "changes": self.changes,
            "at_risk": self.at_risk,
            "notes": self.notes,
            "details": self.details,
        }


@dataclasses.dataclass
class StepResult:
    step: Step
    outcome: Outcome
    message: str = ""
    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None
    logs: str | None = None  # where this step's logs were kept

    def to_dict(self) -> dict[str, Any]:
        d = self.step.to_dict()
        d.update(
            outcome=self.outcome.value,
            message=self.message,
            started=self.started,
            finished=self.finished,
            duration_s=None if self.duration_s is None else round(self.duration_s, 3),
            logs=self.logs,
        )
        return d


@dataclasses.dataclass
class RunResult:
    """What a command did; rendered as text or JSON and appended to the journal."""

    run_id: str
    command: str
    dry_run: bool
    reason: str | None
    started: str
    finished: str | None = None
    results: list[StepResult] = dataclasses.field(default_factory=list)
    exit_status: ExitStatus = ExitStatus.OK
    message: str = ""
    log_dir: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    hint: str | None = None  # what to do next, when the run was refused
    parts: list[str] = dataclasses.field(default_factory=list)  # the parts this run was about
    # More of the run's record, by key (the whole-system rollback's "checklist"); never replaces
    # one of the keys above.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "run_id": self.run_id,
            "command": self.command,
            "dry_run": self.dry_run,
            "reason": self.reason,
            "started": self.started,
            "finished": self.finished,
            "exit_status": int(self.exit_status),
            "exit_name": self.exit_status.name,
            "message": self.message,
            "log_dir": self.log_dir,
            "parts": self.parts,
            "warnings": self.warnings,
            "hint": self.hint,
            "steps": [r.to_dict() for r in self.results],
        }
        d.update((k, v) for k, v in self.extra.items() if k not in d)
        return d


def overall_status(results: list[StepResult]) -> ExitStatus:
    """The exit status a set of step results adds up to (worst wins)."""
    outcomes = {r.outcome for r in results}
    if Outcome.NOT_RESTORED in outcomes:
        return ExitStatus.FAILED_NOT_RESTORED
    if Outcome.RESTORED in outcomes or Outcome.FAILED in outcomes:
        return ExitStatus.FAILED_RESTORED
    return ExitStatus.OK


def new_run_id() -> str:
    """Sortable and unique enough for a journal: UTC time plus 6 random hex digits."""
    import secrets

    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
