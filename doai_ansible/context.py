"""What one command run carries around: settings, run id, log bundle, progress, journal."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
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
    # Reads shared before the first change (see shared_read); None once reads must be fresh.
    _reads: dict[Any, concurrent.futures.Future[Any]] | None = dataclasses.field(default_factory=dict, repr=False)
    _reads_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)
    # The whole-system checklist's reads made in the plan's run (see read_along): part -> request.
    _along: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    along_log_lines: int = 0

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

    def shared_read(self, key: Any, read: Callable[[], Any]) -> Any:
        """``read()``, once per ``key`` while the run has changed nothing and not yet been
        confirmed: the checklist's state of a part and that part's plan are then one read of
        the hosts, not two (a caller that comes while the read is under way waits for it). After
        :meth:`fresh_reads` every call reads again: the re-check after a confirmation and every
        check after a change must see the live state."""
        waiting: concurrent.futures.Future[Any] | None = None
        with self._reads_lock:
            if self._reads is None:
                fut = None
            elif key in self._reads:
                waiting = self._reads[key]
            else:
                fut = self._reads[key] = concurrent.futures.Future()
        if waiting is not None:  # outside the lock: other reads go on meanwhile
            return waiting.result()
        if fut is None:
            return read()
        try:
            value = read()
        except BaseException as exc:
            fut.set_exception(exc)
            with self._reads_lock:  # a failed read is not kept: the next caller tries again
                if self._reads is not None:
                    self._reads.pop(key, None)
            raise
        fut.set_result(value)
        return value

    def read_along(self, requests: dict[str, Any], *, log_lines: int) -> None:
        """The whole-system checklist reads the state (and ``log_lines`` lines of the logs) of
        the parts in ``requests`` (part name -> its request) before the plan: a part whose plan
        is one check-mode run on its hosts reads both in that run, one round trip per host
        (:meth:`along`), as long as the reads are shared."""
        self._along = dict(requests)
        self.along_log_lines = log_lines

    def along(self, part: str) -> Any:
        """The request of ``part`` whose plan run also reads the checklist's state and logs, or
        None: not a whole-system run, or the reads must be fresh now (after the plan)."""
        with self._reads_lock:
            return None if self._reads is None else self._along.get(part)

    def fresh_reads(self) -> None:
        """From now on nothing is shared: the run's plan is confirmed or a change is coming."""
        with self._reads_lock:
            self._reads = None

    def say(self, text: str) -> None:
        if self.note is not None:
            self.note(text)

    def warn(self, text: str) -> None:
        """A warning for this run: shown with its result and kept in the journal."""
        if text not in self.warnings:
            self.warnings.append(text)
            self.say(f"WARNING: {text}")
