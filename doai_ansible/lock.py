"""One rollback at a time per target.

The lock is a file created with ``O_EXCL`` holding who took it, when, from which process and
why. A lock whose process is gone (same machine) or that is older than the TTL is stale: the
next run takes it over and says so, so a crashed run never blocks the next one for ever. An
operator can read it (``doai-rollback lock status``) and release it (``lock release``).
The hosts keep a lock of their own in the playbooks, for operators who run them directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from doai_ansible.errors import LockedError, UsageError

log = logging.getLogger(__name__)

_TARGET_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


@dataclasses.dataclass
class LockInfo:
    target: str
    owner: str
    pid: int
    host: str
    acquired: float
    reason: str | None
    run_id: str | None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["acquired_iso"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.acquired))
        return d

    def stale_reason(self, ttl_s: float, now: float | None = None) -> str | None:
        now = time.time() if now is None else now
        if now - self.acquired > ttl_s:
            return f"older than {int(ttl_s)} s"
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return f"process {self.pid} is gone"
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    def __init__(self, directory: Path, target: str, ttl_s: float) -> None:
        if not _TARGET_RE.fullmatch(target):
            raise UsageError(f"invalid lock target {target!r}")
        self.directory = directory
        self.target = target
        self.ttl_s = ttl_s
        self.path = directory / f"{target}.lock"
        self.taken_over: LockInfo | None = None  # the stale lock the last acquire replaced

    def read(self) -> LockInfo | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return LockInfo(**{f.name: data.get(f.name) for f in dataclasses.fields(LockInfo)})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            # Half-written or damaged: treat as held by nobody we can name, stale after the TTL.
            st = self.path.stat() if self.path.exists() else None
            return LockInfo(self.target, "unknown", -1, "unknown", st.st_mtime if st else 0.0, None, None)

    def acquire(self, *, owner: str, reason: str | None, run_id: str | None) -> LockInfo:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = LockInfo(self.target, owner, os.getpid(), socket.gethostname(), time.time(), reason, run_id)
        payload = json.dumps(info.to_dict()).encode()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                held = self.read()
                if held is None:
                    continue
                stale = held.stale_reason(self.ttl_s)
                if not stale:
                    raise LockedError(
                        f"another rollback of {self.target} is running: {held.owner} (pid {held.pid} on "
                        f"{held.host}) since {held.to_dict()['acquired_iso']}"
                        + (f", reason: {held.reason}" if held.reason else ""),
                        hint=f"wait for it, or if it is dead: doai-rollback lock release {self.target}",
                    ) from None
                log.warning("taking over stale lock on %s held by %s (%s)", self.target, held.owner, stale)
                self._remove_if_same(held)
                self.taken_over = held
                continue
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            return info
        raise LockedError(f"could not take the lock {self.path}")

    def _remove_if_same(self, held: LockInfo) -> None:
        # Rename first so two runs taking over the same stale lock do not both delete it.
        tomb = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
        try:
            os.rename(self.path, tomb)
        except FileNotFoundError:
            return
        try:
            now = self.read_file(tomb)
            if now and (now.pid, now.acquired) != (held.pid, held.acquired):
                # Someone re-took it between our read and rename: put theirs back.
                os.rename(tomb, self.path)
                return
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tomb)

    @staticmethod
    def read_file(path: Path) -> LockInfo | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return LockInfo(**{f.name: data.get(f.name) for f in dataclasses.fields(LockInfo)})
        except (OSError, ValueError, TypeError):
            return None

    def release(self, *, force: bool = False, dry_run: bool = False) -> LockInfo | None:
        """Remove the lock unless a live run holds it (``force``: even then); the lock that was
        (``dry_run``: would be) released, or None when there is none. A dry run refuses as the
        real release would and removes nothing."""
        held = self.read()
        if held is None:
            return None
        if not force and held.pid != os.getpid() and not held.stale_reason(self.ttl_s):
            raise LockedError(
                f"the lock on {self.target} is held by a live run ({held.owner}, pid {held.pid})",
                hint="add --force only if you are sure that run is dead",
            )
        if not dry_run:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        return held

    @contextlib.contextmanager
    def held(self, *, owner: str, reason: str | None, run_id: str | None,
             on_takeover: Callable[[LockInfo], None] | None = None) -> Iterator[LockInfo]:
        """Hold the lock for a block; ``on_takeover`` hears of a stale lock it replaced (a dead run)."""
        info = self.acquire(owner=owner, reason=reason, run_id=run_id)
        if self.taken_over is not None and on_takeover is not None:
            on_takeover(self.taken_over)
        try:
            yield info
        finally:
            current = self.read()
            if current and current.pid == info.pid and current.acquired == info.acquired:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()


def all_locks(directory: Path, ttl_s: float) -> list[tuple[LockInfo, str | None]]:
    out = []
    for p in sorted(directory.glob("*.lock")) if directory.exists() else []:
        info = Lock(directory, p.stem, ttl_s).read()
        if info:
            out.append((info, info.stale_reason(ttl_s)))
    return out
