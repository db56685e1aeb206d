#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only evidence for `doai-rollback diagnose agent-connection` on a POSIX agent PC."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_agent_diagnose
short_description: Whether a PC reaches the backend's Socket.IO port, and its agents per user
description:
  - Opens (and closes at once) a TCP connection from the PC to the backend's Socket.IO host
    and port, as the agent would.
  - Per user profile with the agent folder, whether the agent runs (its pid file names a live
    process) and the last lines of its log file. Nothing is followed out of the profile
    (symbolic links are not opened).
  - The log lines are scrubbed on the PC before they leave it (module_utils doai_secrets - the
    values of the running agent's secret-named variables, secret-named keys and their values,
    passwords in URLs, JWTs, bearer tokens).
  - Never changes anything.
options:
  profiles_root: {description: "Directory holding the user profiles.", type: path, required: true}
  local_path: {description: "The agent folder's parent, relative to a profile.", type: str, required: true}
  folder_name: {description: "The agent folder's name.", type: str, default: DoAi-Desktop-Agent}
  users: {description: "Users to read (empty = every profile with the agent folder).", type: list, elements: str, default: []}
  pid_file: {description: "The agent's pid file, relative to the agent folder.", type: str, default: agent.pid}
  log_file: {description: "The agent's log file, relative to the agent folder (empty = not read).", type: str, default: agent.log}
  lines: {description: "Lines of the log to read (0 = none).", type: int, default: 50}
  socketio_host: {description: "The backend's Socket.IO host (empty = not checked).", type: str, default: ''}
  socketio_port: {description: "Its port.", type: int, default: 3001}
  timeout: {description: "Seconds the TCP connect may take.", type: float, default: 5}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Read the agents and connect to the backend's Socket.IO port
  doai.rollback.doai_agent_diagnose:
    profiles_root: /home
    local_path: .local/share
    socketio_host: api.example.internal
    socketio_port: 3001
"""

RETURN = r"""
tcp: {description: "host, port, ok, error (null when not checked).", type: dict, returned: always}
users: {description: "Per user: user, folder, running, pid, log (last lines, scrubbed), log_error.", type: list, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_agent_read import evidence


def main():
    module = AnsibleModule(
        argument_spec=dict(
            profiles_root=dict(type="path", required=True), local_path=dict(type="str", required=True),
            folder_name=dict(type="str", default="DoAi-Desktop-Agent"),
            users=dict(type="list", elements="str", default=[]),
            pid_file=dict(type="str", default="agent.pid"), log_file=dict(type="str", default="agent.log"),
            lines=dict(type="int", default=50), socketio_host=dict(type="str", default=""),
            socketio_port=dict(type="int", default=3001), timeout=dict(type="float", default=5),
        ),
        supports_check_mode=True,
    )
    try:
        found = evidence(**module.params)
    except ValueError as exc:
        module.fail_json(msg=str(exc), invalid_target=True)
    module.exit_json(changed=False, **found)


if __name__ == "__main__":
    main()
