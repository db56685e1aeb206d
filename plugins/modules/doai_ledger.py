#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Append one record to the host's deployment/rollback ledger (JSON lines, append-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_ledger
short_description: Append a record to the host's rollback ledger
description:
  - Appends one JSON object as one line, with O_APPEND and fsync; never rewrites the file.
  - The ledger is what the default rollback target is read from (module_utils/doai_history
    holds the rule, for every role).
  - C(action) is one of C(deploy) (written by deployment pipelines), C(rollback), C(undo),
    C(put-back) (a host returned to where it was because another host failed) and C(resume)
    (a rollback finished by a resumed run).
  - With I(release_lock), then releases the host lock (doai_host_lock's) held by the record's
    C(run_id), in the same round trip - the last step of a run, after its record.
options:
  path: {description: "Ledger file.", type: path, required: true}
  record:
    description: The record (action, from, to, result, who, why, run_id); C(at) is added when missing.
    type: dict
    required: true
  release_lock:
    description: After the record, release this host lock if the record's C(run_id) holds it (empty - no).
    type: path
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Record the rollback and release the run's host lock
  doai.rollback.doai_ledger:
    path: /var/lib/doai-rollback/ledger.jsonl
    release_lock: /var/lib/doai-rollback/backend.lock
    record:
      action: rollback
      from: 0123456789abcdef0123456789abcdef01234567
      to: 89abcdef0123456789abcdef0123456789abcdef
      result: succeeded
      who: alice@laptop
      why: v3 breaks logins
      run_id: 20261127T030000Z-1a2b
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_history import LEDGER_ACTIONS as ACTIONS, append
from ansible_collections.doai.rollback.plugins.module_utils.doai_lock import release


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", required=True), record=dict(type="dict", required=True),
                           release_lock=dict(type="path")),
        supports_check_mode=True,
    )
    record = dict(module.params["record"])
    if record.get("action") not in ACTIONS:
        module.fail_json(msg="record action must be one of %s, got %r" % (", ".join(ACTIONS), record.get("action")))
    record.setdefault("at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if module.check_mode:
        module.exit_json(changed=True, record=record)
    record = append(module.params["path"], record)
    released = False
    if module.params["release_lock"] and record.get("run_id"):
        released = release(module.params["release_lock"], record["run_id"])[1]
    module.exit_json(changed=True, record=record, lock_released=released)


if __name__ == "__main__":
    main()
