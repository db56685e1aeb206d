#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Put a commit live: git checkout, npm ci when needed, PM2 reload -- in one task.

One task instead of three because every task costs a round trip, and this is the part of a
rollback an outage waits on. Each step is still reported (``steps``) and the first one that
fails stops the rest with its command and output.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_pm2_apply
short_description: Check out a commit, install dependencies if needed and reload PM2
description:
  - Runs, in order, C(git checkout --quiet --detach COMMIT), the dependency install (only when
    I(install) is true) and C(pm2 reload|restart APP) for each app.
  - Every command is an argument vector; nothing goes through a shell.
  - Does nothing in check mode (reports what it would run).
options:
  path: {description: Git checkout of the app., type: path, required: true}
  commit: {description: Full SHA to check out., type: str, required: true}
  install: {description: Run the dependency install., type: bool, default: false}
  install_argv: {description: The install command as a list., type: list, elements: str, required: true}
  pm2_bin: {description: pm2 executable., type: str, default: pm2}
  pm2_home: {description: PM2_HOME for pm2 calls., type: str, default: ''}
  pm2_mode: {description: reload or restart., type: str, choices: [reload, restart], default: reload}
  apps: {description: Apps to reload; empty means all., type: list, elements: str, default: []}
  git_bin: {description: git executable., type: str, default: git}
author: doai-ansible contributors
"""

RETURN = r"""
steps: {description: Each command run, its rc and seconds., type: list, returned: always}
"""

import time

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            commit=dict(type="str", required=True),
            install=dict(type="bool", default=False),
            install_argv=dict(type="list", elements="str", required=True),
            pm2_bin=dict(type="str", default="pm2"),
            pm2_home=dict(type="str", default=""),
            pm2_mode=dict(type="str", choices=["reload", "restart"], default="reload"),
            apps=dict(type="list", elements="str", default=[]),
            git_bin=dict(type="str", default="git"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not all(c in "0123456789abcdef" for c in p["commit"]) or len(p["commit"]) < 7:
        module.fail_json(msg="commit must be a hex SHA, got %r" % p["commit"])
    pm2_env = {"PM2_HOME": p["pm2_home"]} if p["pm2_home"] else {}
    plan = [("checkout", [p["git_bin"], "-C", p["path"], "checkout", "--quiet", "--detach", p["commit"]], {}, None)]
    if p["install"]:
        plan.append(("install", list(p["install_argv"]), {}, p["path"]))
    for app in p["apps"] or ["all"]:
        plan.append(("pm2 " + p["pm2_mode"], [p["pm2_bin"], p["pm2_mode"], app], pm2_env, p["path"]))

    if module.check_mode:
        module.exit_json(changed=True, steps=[{"step": n, "argv": a} for n, a, _, _ in plan])

    steps = []
    for name, argv, env, cwd in plan:
        t0 = time.monotonic()
        rc, out, err = module.run_command(argv, environ_update=env, cwd=cwd)
        steps.append({"step": name, "argv": argv, "rc": rc, "seconds": round(time.monotonic() - t0, 3)})
        if rc != 0:
            module.fail_json(
                msg="%s failed (rc %d): %s" % (name, rc, (err or out).strip()[-1000:]),
                steps=steps, failed_step=name, changed=True,
            )
    module.exit_json(changed=True, steps=steps)


if __name__ == "__main__":
    main()
