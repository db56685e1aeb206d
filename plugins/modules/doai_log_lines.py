#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Log lines a module read on the host, through the one scrubber, as the log bundle's entries."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_log_lines
short_description: Scrub log lines on the host and return them as log entries
description:
  - Takes log text another module of the run read on this host (e.g. the container's logs in
    doai_backend_docker_apply's result), keeps its last O(lines) lines, and replaces every
    secret in them by *** with the collection's doai_secrets (secret-named keys and their values,
    passwords in URLs, JWTs, bearer tokens, known token formats), on the host.
  - Returns them as RV(logs) entries, the shape of the diagnose modules' C(logs), which
    doai-rollback writes to the run's log bundle. Log data never travels through a C(debug) task.
  - Changes nothing.
options:
  text: {description: "The log text.", type: str, default: ''}
  app: {description: "What wrote it (an app or container name).", type: str, default: ''}
  kind: {description: "Which log (out, err, container).", type: str, default: log}
  lines: {description: "Lines kept (the last ones; 0 = none).", type: int, default: 50}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Read the last container log lines
  doai.rollback.doai_log_lines:
    text: "{{ applied.logs | default('') }}"
    app: api
    kind: container
    lines: 50
"""

RETURN = r"""
logs: {description: "One entry: app, pm_id (null), kind, path (null), text (scrubbed), error (null).", type: list, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_secrets import scrub_lines


def main():
    module = AnsibleModule(
        argument_spec=dict(
            text=dict(type="str", default=""), app=dict(type="str", default=""),
            kind=dict(type="str", default="log"), lines=dict(type="int", default=50),
        ),
        supports_check_mode=True,
    )
    p = module.params
    text = scrub_lines(p["text"] or "", (), max(0, p["lines"]))
    # The arguments are not echoed back (the text would be twice in every record of the result).
    module.exit_json(changed=False, invocation={"module_args": {"app": p["app"], "kind": p["kind"], "lines": p["lines"]}},
                     logs=[{"app": p["app"], "pm_id": None, "kind": p["kind"], "path": None, "text": text, "error": None}])


if __name__ == "__main__":
    main()
