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
  path: {description: "Lock directory.", type: path, required: true}
  state: {description: "present takes the lock, absent releases it.", type: str, choices: [present, absent], default: present}
  run_id: {description: "Identifier of this run.", type: str, required: true}
  owner: {description: "Who takes the lock.", type: str, default: ''}
  reason: {description: "Why.", type: str, default: ''}
  ttl: {description: "Seconds after which a lock is stale.", type: int, default: 3600}
  force: {description: "Release a lock held by another run.", type: bool, default: false}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Take the host lock for this run
  doai.rollback.doai_host_lock:
    path: /var/lib/doai-rollback/backend.lock
    run_id: 20261127T030000Z-1a2b
    owner: alice@laptop
    reason: v3 breaks logins

- name: Release it
  doai.rollback.doai_host_lock:
    path: /var/lib/doai-rollback/backend.lock
    run_id: 20261127T030000Z-1a2b
    state: absent
"""

RETURN = r"""
holder: {description: "The owner.json of the lock found or taken.", type: dict, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_lock import Locked, acquire, check, release


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
    if p["state"] == "absent":
        if module.check_mode:
            module.exit_json(changed=False)
        holder, removed = release(p["path"], p["run_id"], p["force"])
        module.exit_json(changed=removed, holder=holder,
                         msg="" if removed or holder is None else "lock held by another run; left in place")
    try:
        if module.check_mode:
            # The lock is transient: taking it is not a change worth reporting in a plan.
            module.exit_json(changed=False, holder=check(p["path"], p["run_id"], p["ttl"]), msg="lock is free")
        holder, changed = acquire(p["path"], p["run_id"], p["owner"], p["reason"], p["ttl"], module.warn)
    except Locked as exc:
        module.fail_json(msg=str(exc), locked=True, holder=exc.holder)
    module.exit_json(changed=changed, holder=holder)


if __name__ == "__main__":
    main()
