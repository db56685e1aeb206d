"""The append-only run journal: one JSON object per line, one line per run.

Appends take an exclusive ``flock`` and are fsync'ed, so concurrent runs never interleave
lines and a crash never leaves half a record behind a good one. Nothing here rewrites or
truncates the file.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doai_ansible.errors import UsageError
from doai_ansible.model import RunResult

log = logging.getLogger(__name__)


def operator() -> str:
    """Who runs this: ``user@host`` (``DOAI_OPERATOR`` overrides, e.g. the CI job's name)."""
    who = os.environ.get("DOAI_OPERATOR")
    if who:
        return who
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, run: RunResult, *, who: str | None = None) -> dict[str, Any]:
        record = run.to_dict()
        record["who"] = who or operator()
        return self.append_record(record)

    def append_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one run record (a dict shaped like ``RunResult.to_dict`` plus ``who``)."""
        line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        log.debug("journal: appended run %s to %s", record.get("run_id"), self.path)
        return record

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    log.warning("journal %s: line %d is not JSON, skipped", self.path, n)

    def runs(self, *, limit: int | None = None, part: str | None = None) -> list[dict[str, Any]]:
        runs = list(self)
        if part:
            runs = [r for r in runs if any(s.get("part") == part for s in r.get("steps", []))]
        runs.reverse()  # newest first
        return runs[:limit] if limit else runs

    def find(self, run_id: str) -> dict[str, Any]:
        matches = [r for r in self if r.get("run_id", "").startswith(run_id)] if run_id else []
        if not matches:
            raise UsageError(f"no run {run_id!r} in the journal {self.path}", hint="see `doai-rollback history`")
        ids = {r["run_id"] for r in matches}
        if len(ids) > 1:
            raise UsageError(f"run id {run_id!r} is ambiguous: {', '.join(sorted(ids))}")
        return matches[-1]
