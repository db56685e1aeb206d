#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A lock on the host, so two rollbacks of the same thing never overlap."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_host_lock
short_description: Take or release a rollback lock on the host
description:
  - The lock is a directory created atomically (mkdir) with an owner.json inside naming who
    holds it, why, since when and for which run.
  - A lock older than I(ttl) seconds is stale and is taken over (a crashed run does not block
    the next one for ever).
  - Release removes the lock only when I(run_id) matches, unless I(force).
options:
  path: {description: Lock directory., type: path, required: true}
  state: {description: present takes the lock, absent releases it., type: str, choices: [present, absent], default: present}
  run_id: {description: Identifier of this run., type: str, required: true}
  owner: {description: Who takes the lock., type: str, default: ''}
  reason: {description: Why., type: str, default: ''}
  ttl: {description: Seconds after which a lock is stale., type: int, default: 3600}
  force: {description: Release a lock held by another run., type: bool, default: false}
author: doai-ansible contributors
"""

RETURN = r"""
holder: {description: The owner.json of the lock found or taken., type: dict, returned: always}
"""

import json
import os
import shutil
import time

from ansible.module_utils.basic import AnsibleModule


def read_owner(path):
    try:
        with open(os.path.join(path, "owner.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (IOError, OSError, ValueError):
        return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            run_id=dict(type="str", required=True),
            owner=dict(type="str", default=""),
            reason=dict(type="str", default=""),
            ttl=dict(type="int", default=3600),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    path = p["path"]

    if p["state"] == "absent":
        holder = read_owner(path)
        if not os.path.isdir(path):
            module.exit_json(changed=False, holder=None)
        if holder and holder.get("run_id") != p["run_id"] and not p["force"]:
            module.exit_json(changed=False, holder=holder, msg="lock held by another run; left in place")
        if not module.check_mode:
            shutil.rmtree(path, ignore_errors=True)
        module.exit_json(changed=True, holder=holder)

    parent = os.path.dirname(path)
    holder = {
        "run_id": p["run_id"], "owner": p["owner"], "reason": p["reason"],
        "pid": os.getppid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for _ in range(3):
        if module.check_mode:
            existing = read_owner(path) if os.path.isdir(path) else None
            if existing and existing.get("run_id") != p["run_id"]:
                age = time.time() - os.stat(path).st_mtime
                if age <= p["ttl"]:
                    module.fail_json(msg="locked by %s since %s (run %s, reason: %s)" % (
                        existing.get("owner"), existing.get("since"), existing.get("run_id"),
                        existing.get("reason") or "-"), locked=True, holder=existing)
            # The lock is transient: taking it is not a change worth reporting in a plan.
            module.exit_json(changed=False, holder=holder, msg="lock is free")
        try:
            if not os.path.isdir(parent):
                os.makedirs(parent, 0o700)
            os.mkdir(path, 0o700)
        except FileExistsError:
            existing = read_owner(path) or {}
            if existing.get("run_id") == p["run_id"]:
                module.exit_json(changed=False, holder=existing)
            try:
                age = time.time() - os.stat(path).st_mtime
            except FileNotFoundError:
                continue
            if age <= p["ttl"]:
                module.fail_json(
                    msg="locked by %s since %s (run %s, reason: %s); wait for it, or remove %s if that run is dead"
                    % (existing.get("owner", "unknown"), existing.get("since", "?"), existing.get("run_id", "?"),
                       existing.get("reason") or "-", path),
                    locked=True, holder=existing,
                )
            stale = "%s.stale-%d" % (path, int(time.time()))
            try:
                os.rename(path, stale)
                shutil.rmtree(stale, ignore_errors=True)
            except FileNotFoundError:
                pass
            module.warn("took over a stale lock (%d s old) held by %s" % (age, existing.get("owner", "unknown")))
            continue
        tmp = os.path.join(path, ".owner.json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(holder, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, os.path.join(path, "owner.json"))
        module.exit_json(changed=True, holder=holder)
    module.fail_json(msg="could not take the lock %s" % path, locked=True)


if __name__ == "__main__":
    main()
