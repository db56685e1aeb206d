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
  - The ledger is what the default rollback target is read from.
options:
  path: {description: Ledger file., type: path, required: true}
  record: {description: The record (action, from, to, result, who, why, run_id)., type: dict, required: true}
author: doai-ansible contributors
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", required=True), record=dict(type="dict", required=True)),
        supports_check_mode=True,
    )
    record = dict(module.params["record"])
    record.setdefault("at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if module.check_mode:
        module.exit_json(changed=True, record=record)
    path = module.params["path"]
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent, 0o700)
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    module.exit_json(changed=True, record=record)


if __name__ == "__main__":
    main()
