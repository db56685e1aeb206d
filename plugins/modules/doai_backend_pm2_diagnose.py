#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only evidence for `doai-rollback diagnose api-errors` on a PM2 host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_pm2_diagnose
short_description: Read a PM2 backend's logs, its processes' environment names, health and live release
description:
  - Reads the last lines of every PM2 out and error log of the apps, which of the required
    environment variables each app process has set (from /proc/PID/environ of the running
    process, else PM2's record of it), one probe of the health URL and the live commit.
  - Returns variable names only, never values; the values of secret-named variables are
    replaced by *** in the log lines before they leave the host.
  - Never changes anything and takes no lock.
options:
  path: {description: "Git checkout of the app.", type: path, required: true}
  git_bin: {description: "git executable.", type: str, default: git}
  pm2_bin: {description: "pm2 executable.", type: str, default: pm2}
  pm2_home: {description: "PM2_HOME for pm2 calls (empty = pm2 default).", type: str, default: ''}
  apps: {description: "PM2 app names (empty = all).", type: list, elements: str, default: []}
  health_url: {description: "Health URL probed once (empty = not probed).", type: str, default: ''}
  lines: {description: "Lines of each log file to read.", type: int, default: 200}
  required_env: {description: "Environment variable names the app needs.", type: list, elements: str, default: []}
  logs_only:
    description: Only the log lines (the rollback's log bundle); no health probe, no git.
    type: bool
    default: false
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: The last 50 log lines of every PM2 app, scrubbed on the host
  doai.rollback.doai_backend_pm2_diagnose:
    path: /srv/doai-backend
    lines: 50
    logs_only: true
  register: logs
"""

RETURN = r"""
commit: {description: "Full SHA of the live commit, or null.", type: str, returned: always}
version: {description: "package.json's version at the live commit, or null.", type: str, returned: always}
processes: {description: "Per PM2 process: name, pm_id, status, pid, restarts, env_source, missing_env.", type: list, returned: always}
logs: {description: "Per log file: app, pm_id, kind (out or err), path, text (scrubbed), error.", type: list, returned: always}
pm2_error: {description: "Why pm2 jlist failed, or null.", type: str, returned: always}
health_status: {description: "HTTP status of the health URL, or null.", type: int, returned: always}
health_version: {description: "Version the health body reports, or null.", type: str, returned: always}
health_body: {description: "The start of the health answer (scrubbed).", type: str, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_pm2_read import evidence


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            git_bin=dict(type="str", default="git"),
            pm2_bin=dict(type="str", default="pm2"),
            pm2_home=dict(type="str", default=""),
            apps=dict(type="list", elements="str", default=[]),
            health_url=dict(type="str", default=""),
            lines=dict(type="int", default=200),
            required_env=dict(type="list", elements="str", default=[]),
            logs_only=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    module.exit_json(changed=False, **evidence(module, **module.params))


if __name__ == "__main__":
    main()
