"""What one command run carries around: settings, run id, log bundle, progress, journal."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from doai_ansible import state
from doai_ansible.journal import operator
from doai_ansible.lock import Lock
from doai_ansible.model import new_run_id
from doai_ansible.settings import Settings, ensure_private_dir


@dataclasses.dataclass
class RunContext:
    settings: Settings
    run_id: str
    operator: str
    progress: Callable[[dict[str, Any]], None] | None = None
    note: Callable[[str], None] | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        progress: Callable[[dict[str, Any]], None] | None = None,
        note: Callable[[str], None] | None = None,
    ) -> RunContext:
        settings.ensure_state_dir()  # 0700: journal, locks and run logs are nobody else's business
        return cls(settings, new_run_id(), operator(), progress, note)

    @property
    def log_dir(self) -> Path:
        d = self.settings.runs_dir / self.run_id
        if not d.exists():
            ensure_private_dir(self.settings.runs_dir, parents=True)
            ensure_private_dir(d)
        return d

    @property
    def journal(self) -> state.JournalLike:
        """The run records, where the settings keep them (``state.backend``: local or postgres)."""
        return state.journal(self.settings)

    def lock(self, target: str) -> Lock | state.PgLock:
        """The lock of a part, where the settings keep it (a file, or the shared store's)."""
        return state.lock(self.settings, target)

    def say(self, text: str) -> None:
        if self.note is not None:
            self.note(text)

    def warn(self, text: str) -> None:
        """A warning for this run: shown with its result and kept in the journal."""
        if text not in self.warnings:
            self.warnings.append(text)
            self.say(f"WARNING: {text}")
