#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read the host ledger's entries of one run (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_ledger_read
short_description: Read the entries one run wrote to the host's rollback ledger
description:
  - Returns the ledger entries whose C(run_id) is I(run_id), oldest first, and the one that
    counts (C(last) - the controller's record when there is one, else the run's detached job's
    own record, C(by) job). Changes nothing.
  - The CLI reads them to journal a run whose controller was killed (SIGKILL) while the host's
    job applied its change.
options:
  path: {description: "Ledger file.", type: path, required: true}
  run_id: {description: "The run whose entries to read.", type: str, required: true}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: What a killed run recorded on this host
  doai.rollback.doai_ledger_read:
    path: /var/lib/doai-rollback/ledger.jsonl
    run_id: 20261127T030000Z-1a2b
  register: recovered
"""

RETURN = r"""
entries: {description: "The run's entries, oldest first.", type: list, returned: always}
last: {description: "The entry that counts (the newest), or null.", type: dict, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_history import read_ledger


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", required=True), run_id=dict(type="str", required=True)),
        supports_check_mode=True,
    )
    run_id = module.params["run_id"]
    entries = [e for e in read_ledger(module.params["path"]) if run_id and e.get("run_id") == run_id]
    module.exit_json(changed=False, entries=entries, last=entries[-1] if entries else None)


if __name__ == "__main__":
    main()
