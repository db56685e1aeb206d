# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host lock shared by doai_host_lock and the parts' capture modules (doai_backend_pm2_capture).

A directory created atomically (mkdir) with owner.json inside: who, why, since when, which
run. Older than the TTL it is stale and taken over (a crashed run never blocks for ever).
"""

from __future__ import annotations

import json
import os
import shutil
import time


class Locked(Exception):
    def __init__(self, message, holder):
        super(Locked, self).__init__(message)
        self.holder = holder


def read_owner(path):
    try:
        with open(os.path.join(path, "owner.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (IOError, OSError, ValueError):
        return None


def _describe(holder, path):
    return "locked by %s since %s (run %s, reason: %s); wait for it, or remove %s if that run is dead" % (
        holder.get("owner", "unknown"), holder.get("since", "?"), holder.get("run_id", "?"),
        holder.get("reason") or "-", path)


def check(path, run_id, ttl):
    """Raise Locked when another live run holds the lock (for check mode); never changes anything."""
    if not os.path.isdir(path):
        return None
    holder = read_owner(path) or {}
    if holder.get("run_id") == run_id:
        return holder
    if time.time() - os.stat(path).st_mtime <= ttl:
        raise Locked(_describe(holder, path), holder)
    return None


def acquire(path, run_id, owner, reason, ttl, warn):
    """Take the lock; returns (holder, changed). Raises Locked when another live run holds it."""
    holder = {
        "run_id": run_id, "owner": owner, "reason": reason,
        "pid": os.getppid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
                return existing, False
            try:
                age = time.time() - os.stat(path).st_mtime
            except FileNotFoundError:
                continue
            if age <= ttl:
                raise Locked(_describe(existing, path), existing)
            stale = "%s.stale-%d" % (path, int(time.time()))
            try:
                os.rename(path, stale)
                shutil.rmtree(stale, ignore_errors=True)
            except FileNotFoundError:
                pass
            warn("took over a stale lock (%d s old) held by %s" % (age, existing.get("owner", "unknown")))
            continue
        tmp = os.path.join(path, ".owner.json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(holder, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, os.path.join(path, "owner.json"))
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
    """The lock's owner.json with its age in seconds (``age_s``), or None when nobody holds it."""
    if not os.path.isdir(path):
        return None
    holder = read_owner(path) or {"owner": "unknown"}
    try:
        holder["age_s"] = int(time.time() - os.stat(path).st_mtime)
    except FileNotFoundError:
        return None
    return holder
