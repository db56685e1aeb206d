#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only status of a PM2 backend checkout, in one task (the status playbook's)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_pm2_inspect
short_description: Report a git-deployed PM2 backend's live commit, PM2 state, health and host lock
description:
  - Reads the live commit and its version, the branch, the working tree state, the last
    commits, the PM2 process list, one probe of the health URL and who holds the host lock.
  - Never changes anything and takes no lock (doai_backend_pm2_capture does, for a rollback);
    runs the same in check mode.
options:
  path: {description: "Git checkout of the app.", type: path, required: true}
  git_bin: {description: "git executable.", type: str, default: git}
  pm2_bin: {description: "pm2 executable.", type: str, default: pm2}
  pm2_home: {description: "PM2_HOME for pm2 calls (empty = pm2 default).", type: str, default: ''}
  apps: {description: "PM2 app names to report (empty = all).", type: list, elements: str, default: []}
  log_count: {description: "How many recent commits to list.", type: int, default: 5}
  health_url: {description: "Health URL probed once (empty = not probed).", type: str, default: ''}
  lock_path: {description: "The host lock directory, to report who holds it (empty = not reported).", type: path}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Live commit, PM2 processes, health and the host lock (read only)
  doai.rollback.doai_backend_pm2_inspect:
    path: /srv/doai-backend
    health_url: http://127.0.0.1:3000/api/health
    lock_path: /var/lib/doai-rollback/backend.lock
  register: status
"""

RETURN = r"""
current: {description: "Full SHA of the live commit.", type: str, returned: success}
current_version: {description: "package.json's version at the live commit.", type: str, returned: success}
branch: {description: "Checked-out branch, or null when HEAD is detached.", type: str, returned: success}
dirty: {description: "Uncommitted changes (git status --porcelain lines).", type: list, returned: success}
recent: {description: "The last commits (short sha and subject).", type: list, returned: success}
processes: {description: "PM2 processes (name, status, restarts); null when pm2 failed.", type: list, returned: success}
pm2_error: {description: "Why pm2 jlist failed, or null.", type: str, returned: success}
health_status: {description: "HTTP status of the health URL, or null when nothing answered.", type: int, returned: success}
health_version: {description: "Version the health body reports, or null.", type: str, returned: success}
host_lock: {description: "The host lock's owner record with its age (age_s), or null.", type: dict, returned: success}
bad_path: {description: "The path is missing or not the top of a git checkout.", type: bool, returned: failure}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_pm2_read import status


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            git_bin=dict(type="str", default="git"),
            pm2_bin=dict(type="str", default="pm2"),
            pm2_home=dict(type="str", default=""),
            apps=dict(type="list", elements="str", default=[]),
            log_count=dict(type="int", default=5),
            health_url=dict(type="str", default=""),
            lock_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    module.exit_json(changed=False, **status(module, **module.params))


if __name__ == "__main__":
    main()
