# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host lock shared by doai_host_lock and the parts' capture modules (doai_backend_pm2_capture).

A directory created atomically (mkdir) with owner.json inside: who, why, since when, which
run, when it was last refreshed and, once the run's detached job works under it, that job's
process (pid, its start time in clock ticks since boot - /proc/<pid>/stat field 22 - and the
boot id, so a recycled pid is not taken for the job). A lock is stale, and taken over, only
when its job process is gone (or was never recorded) AND it was not refreshed for the TTL
(counted from ``refreshed``; from ``since`` or the directory's mtime for a lock written
before ``refreshed`` existed): a crashed run never blocks for ever, a long live one is never
taken over. The job refreshes the lock every TTL/4 while it runs (:func:`keep_fresh`);
taking the lock again with the same run id refreshes it too.
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import threading
import time


class Locked(Exception):
    def __init__(self, message, holder):
        super(Locked, self).__init__(message)
        self.holder = holder


def _now_iso():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _epoch(iso):
    try:
        return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return None


def read_owner(path):
    try:
        with open(os.path.join(path, "owner.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (IOError, OSError, ValueError):
        return None


def _write_owner(path, holder):
    tmp = os.path.join(path, ".owner.json.%d.tmp" % os.getpid())
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(holder, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, os.path.join(path, "owner.json"))


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as fh:
            return fh.read().strip()
    except (IOError, OSError):
        return ""


def start_ticks(pid):
    """Field 22 of /proc/<pid>/stat (the process's start, in clock ticks since boot), or None."""
    try:
        with open("/proc/%d/stat" % int(pid), encoding="utf-8") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (IOError, OSError, IndexError, ValueError):
        return None
    if fields[0] == "Z":  # exited, not yet reaped
        return None
    return int(fields[19])  # fields[0] is field 3 (the state)


def job_alive(holder):
    """Whether the job process the lock records still runs (same boot, same pid, same start)."""
    job = (holder or {}).get("job") or {}
    pid, started = job.get("pid"), job.get("start_ticks")
    if not pid or started is None:
        return False
    if job.get("boot_id") and job.get("boot_id") != boot_id():
        return False
    return start_ticks(pid) == started


def age_of(path, holder):
    """Seconds since the lock was last refreshed (taken, re-taken or refreshed by its job)."""
    for key in ("refreshed", "since"):
        at = _epoch((holder or {}).get(key))
        if at is not None:
            return time.time() - at
    return time.time() - os.stat(path).st_mtime


def is_stale(path, holder, ttl):
    return not job_alive(holder) and age_of(path, holder) > ttl


def _describe(holder, path):
    alive = " (its job, pid %s, still runs)" % holder["job"]["pid"] if job_alive(holder) else ""
    return "locked by %s since %s (run %s, reason: %s)%s; wait for it, or remove %s if that run is dead" % (
        holder.get("owner", "unknown"), holder.get("since", "?"), holder.get("run_id", "?"),
        holder.get("reason") or "-", alive, path)


def check(path, run_id, ttl):
    """Raise Locked when another live run holds the lock (for check mode); never changes anything."""
    if not os.path.isdir(path):
        return None
    holder = read_owner(path) or {}
    if holder.get("run_id") == run_id:
        return holder
    try:
        if not is_stale(path, holder, ttl):
            raise Locked(_describe(holder, path), holder)
    except FileNotFoundError:
        return None
    return None


def refresh(path, run_id, **more):
    """Mark the lock held by ``run_id`` as refreshed now (plus ``more`` keys); False when this
    run does not hold it (released, or taken over)."""
    holder = read_owner(path)
    if not holder or holder.get("run_id") != run_id:
        return False
    holder.update(more, refreshed=_now_iso())
    try:
        _write_owner(path, holder)
    except (IOError, OSError):
        return False
    return True


def adopt(path, run_id, pid=None):
    """Record the detached job ``pid`` (default: this process) as the lock's holder process."""
    pid = pid or os.getpid()
    return refresh(path, run_id, job={"pid": pid, "start_ticks": start_ticks(pid), "boot_id": boot_id()})


def keep_fresh(path, run_id, ttl):
    """In a detached job: record this process in the lock, then refresh it every ttl/4 from a
    daemon thread for as long as the process runs."""
    if not path or not run_id:
        return
    adopt(path, run_id)
    interval = max(1.0, float(ttl) / 4)

    def loop():
        while True:
            time.sleep(interval)
            if not refresh(path, run_id):
                return

    t = threading.Thread(target=loop, name="doai-lock-refresh")
    t.daemon = True
    t.start()


def acquire(path, run_id, owner, reason, ttl, warn):
    """Take the lock; returns (holder, changed). Raises Locked when another live run holds it."""
    now = _now_iso()
    holder = {
        "run_id": run_id, "owner": owner, "reason": reason,
        "pid": os.getppid(), "since": now, "refreshed": now,
    }
    parent = os.path.dirname(path)
    for _ in range(3):
        try:
            if not os.path.isdir(parent):
                os.makedirs(parent, 0o700)
            os.mkdir(path, 0o700)
        except FileExistsError:
            existing = read_owner(path) or {}
            if existing.get("run_id") == run_id:
                refresh(path, run_id)
                return read_owner(path) or existing, False
            try:
                age = age_of(path, existing)
            except FileNotFoundError:
                continue
            if job_alive(existing) or age <= ttl:
                raise Locked(_describe(existing, path), existing)
            stale = "%s.stale-%d" % (path, int(time.time()))
            try:
                os.rename(path, stale)
                shutil.rmtree(stale, ignore_errors=True)
            except FileNotFoundError:
                pass
            warn("took over a stale lock (%d s without a refresh, its job gone) held by %s" % (
                age, existing.get("owner", "unknown")))
            continue
        _write_owner(path, holder)
        return holder, True
    raise Locked("could not take the lock %s" % path, {})


def release(path, run_id, force=False):
    """Remove the lock if this run holds it (or force); returns (holder, removed)."""
    if not os.path.isdir(path):
        return None, False
    holder = read_owner(path)
    if holder and holder.get("run_id") != run_id and not force:
        return holder, False
    shutil.rmtree(path, ignore_errors=True)
    return holder, True


def holder_of(path):
    """The lock's owner.json with its age in seconds since its last refresh (``age_s``) and
    whether its job process runs (``job_alive``), or None when nobody holds it."""
    if not os.path.isdir(path):
        return None
    holder = read_owner(path) or {"owner": "unknown"}
    try:
        holder["age_s"] = int(age_of(path, holder))
    except FileNotFoundError:
        return None
    holder["job_alive"] = job_alive(holder)
    return holder
