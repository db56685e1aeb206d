"""One rollback at a time per target.

The lock is a file created with ``O_EXCL`` holding who took it, when, from which process (its
pid and the process's start time, so that a pid the kernel gave to another process does not
count) and why. The run holding it refreshes it (``refreshed``) every quarter of the TTL while it
holds it. Whether a lock is stale:

* held from this machine: stale when its process is gone (or its pid now names another process),
  **never because of its age**: a live run is never taken over, however long its pg_dump;
* held from another machine (a shared state dir): stale when it was not refreshed for longer than
  the TTL (its holder died or lost the state dir), measured from the last refresh.

The next run takes a stale lock over and says so, so a crashed run never blocks the next one for
ever. An operator can read it (``doai-rollback lock status``: age, last refresh) and release it
(``lock release``). The hosts keep a lock of their own in the playbooks, for operators who run
them directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import threading
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
    #: The holder's process start (boot id and start time in clock ticks, from /proc), or None
    #: where there is no /proc (then a live pid counts as the holder).
    started: str | None = None
    #: When the holder last refreshed the lock (None: never, a lock of an older version).
    refreshed: float | None = None

    @property
    def last_sign_of_life(self) -> float:
        return max(self.acquired or 0.0, self.refreshed or 0.0)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["acquired_iso"] = _iso(self.acquired)
        d["refreshed_iso"] = _iso(self.refreshed) if self.refreshed else None
        d["age_s"] = max(0, int(time.time() - (self.acquired or 0.0)))
        d["since_refresh_s"] = max(0, int(time.time() - self.last_sign_of_life))
        return d

    def payload(self) -> bytes:
        """What the lock file holds."""
        d = dataclasses.asdict(self)
        d["acquired_iso"] = _iso(self.acquired)
        return json.dumps(d).encode()

    def stale_reason(self, ttl_s: float, now: float | None = None) -> str | None:
        """Why this lock is stale, or None while its holder may be alive. On this machine the
        process says it (alive: never stale, whatever the lock's age); from another machine,
        only a lock not refreshed for longer than the TTL is stale."""
        now = time.time() if now is None else now
        if self.host == socket.gethostname():
            if not _pid_alive(self.pid):
                return f"process {self.pid} is gone"
            if self.started and process_start(self.pid) not in (None, self.started):
                return f"process {self.pid} is gone (its pid now belongs to another process)"
            return None
        if now - self.last_sign_of_life > ttl_s:
            return f"not refreshed for more than {int(ttl_s)} s (held from {self.host})"
        return None


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def process_start(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks>`` of process ``pid`` (Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None


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

    def refresh(self, info: LockInfo) -> bool:
        """Rewrite the lock ``info`` holds with ``refreshed`` now (atomically: a reader never sees
        half a file); False, and nothing written, when the lock is no longer ``info``'s."""
        current = self.read_file(self.path)
        if current is None or (current.pid, current.host, current.acquired) != (info.pid, info.host, info.acquired):
            return False
        info.refreshed = time.time()
        tmp = self.path.with_name(f"{self.path.name}.refresh.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, info.payload())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        return True

    def acquire(self, *, owner: str, reason: str | None, run_id: str | None) -> LockInfo:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = time.time()
        info = LockInfo(self.target, owner, os.getpid(), socket.gethostname(), now, reason, run_id,
                        started=process_start(os.getpid()), refreshed=now)
        payload = info.payload()
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

    def _heartbeat(self, info: LockInfo, stop: threading.Event) -> None:
        """While the lock is held: refresh it every quarter of the TTL (a lock seen from another
        machine is stale only once it has gone unrefreshed for the whole TTL)."""
        every = max(self.ttl_s / 4, 0.01)
        while not stop.wait(every):
            try:
                if not self.refresh(info):
                    log.warning("the lock on %s is no longer this run's: not refreshing it", self.target)
                    return
            except OSError as exc:  # a full disk must not end the run; the next beat tries again
                log.warning("could not refresh the lock on %s: %s", self.target, exc)

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
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(info, stop), daemon=True,
                                name=f"doai-lock-{self.target}")
        beat.start()
        try:
            if self.taken_over is not None and on_takeover is not None:
                on_takeover(self.taken_over)
            yield info
        finally:
            stop.set()
            beat.join()
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
