#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prepare a host for a fast rollback: the node_modules tree of the commit a rollback would go
to, installed into the cache ahead of time. Never touches the live app or PM2."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_pm2_prepare
short_description: Install the node_modules a rollback would need into the cache, ahead of time
description:
  - Resolves the target exactly as the rollback's capture does (the requested ref, else the
    release live before, from the ledger, else the reflog), read only, without the host lock.
  - When the live node_modules was not installed for the target's lockfile and the cache
    (C(doai_backend_pm2_node_modules_cache_dir)) holds no tree for it, runs the install
    command in a staging directory of its own holding the target's package.json, lockfile and
    .npmrc (from C(git show)), and renames the finished tree into the cache in one step. A
    rollback to that lockfile then takes it by rename instead of running npm ci.
  - Never changes the app's checkout, its node_modules or PM2; safe beside a running rollback
    (the staging directory is its own, the rename is atomic, and pruning happens only while no
    apply holds the checkout's flock).
  - Refuses, changing nothing, with C(bad_path), C(invalid_target) or C(no_target).
options:
  path: {description: "Git checkout of the app.", type: path, required: true}
  target: {description: "Commit SHA or ref; empty chooses the release live before the current one.", type: str, default: ''}
  ledger_path: {description: "The host's ledger (JSON lines).", type: path, required: true}
  install_argv: {description: "The install command.", type: list, elements: str, default: [npm, ci, --omit=dev]}
  cache_dir: {description: "The node_modules cache (must be on the app's filesystem).", type: path, default: ''}
  cache_keep: {description: "How many trees the cache keeps (0 disables it).", type: int, default: 3}
  git_bin: {description: "git executable.", type: str, default: git}
  log_count: {description: "How many recent commits to list in a refusal.", type: int, default: 5}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Install the default target's node_modules into the cache, ahead of a rollback
  doai.rollback.doai_backend_pm2_prepare:
    path: /srv/doai-backend
    target: ""
    ledger_path: /var/lib/doai-rollback/ledger.jsonl
    cache_dir: /var/lib/doai-rollback/node_modules
"""

RETURN = r"""
status: {description: "prepared, already_prepared, not_needed, would_prepare (check mode), no_lockfile or cache_disabled.", type: str, returned: success}
head: {description: "Full SHA of the live commit.", type: str, returned: success}
target: {description: "Full SHA of the resolved target.", type: str, returned: success}
rule: {description: "How the target was chosen.", type: str, returned: success}
lockfile_sha256: {description: "The sha256 of the target's lockfile (the cache key).", type: str, returned: success}
install_seconds: {description: "How long npm ran (prepared only).", type: float, returned: success}
pruned: {description: "Cache entries dropped (oldest first) to keep cache_keep.", type: list, returned: success}
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_checkout import Checkout
from ansible_collections.doai.rollback.plugins.module_utils.doai_npm import PREPARED, InstallError, prepare_cache
from ansible_collections.doai.rollback.plugins.module_utils.doai_target import resolve_target


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            target=dict(type="str", default=""),
            ledger_path=dict(type="path", required=True),
            install_argv=dict(type="list", elements="str", default=["npm", "ci", "--omit=dev"]),
            cache_dir=dict(type="path", default=""),
            cache_keep=dict(type="int", default=3),
            git_bin=dict(type="str", default="git"),
            log_count=dict(type="int", default=5),
        ),
        supports_check_mode=True,
    )
    p = module.params
    co = Checkout(module, p["path"], p["git_bin"]).require_top()
    head = co.head()
    target, rule = resolve_target(module, co, head)
    info = dict(head=head, head_short=head[:12], target=target, target_short=target[:12], rule=rule,
                target_version=co.version_at(target), current_version=co.version_at(head))
    t0 = time.monotonic()
    try:
        res = prepare_cache(p["path"], p["cache_dir"], p["cache_keep"], p["install_argv"],
                            lambda argv, cwd=None: module.run_command(argv, cwd=cwd), target,
                            git_bin=p["git_bin"], check_mode=module.check_mode)
    except (InstallError, OSError) as exc:
        module.fail_json(msg="%s; the app was not touched" % exc, install_failed=True, **info)
    install = [s for s in res["steps"] if s.get("step") == "install"]
    module.exit_json(
        changed=res["status"] == PREPARED, status=res["status"], lockfile_sha256=res["key"],
        lockfile=res["lockfile"], cache_dir=res["cache_dir"], cache_entry=os.path.join(res["cache_dir"], res["key"] or ""),
        install_seconds=install[0]["seconds"] if install else None, seconds=round(time.monotonic() - t0, 3),
        pruned=res["pruned"], prune_skipped=res["prune_skipped"], steps=res["steps"], **info)


if __name__ == "__main__":
    main()
