#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only probe of a PM2 backend checkout: everything the rollback needs, in one task."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_pm2_inspect
short_description: Inspect a git-deployed PM2 backend and plan a rollback
description:
  - Reads the live commit, the working tree state, the last commits, the PM2 process list,
    the lockfile hash and the host's rollback ledger, and resolves the rollback target.
  - Never changes anything; runs the same in check mode.
options:
  path: {description: Git checkout of the app., type: path, required: true}
  target:
    description:
      - Commit SHA or ref to roll back to. Empty chooses the commit that was live before the
        current one (from the ledger, else the reflog), skipping commits rolled back from.
    type: str
    default: ''
  state_dir: {description: Directory of the ledger and the host lock., type: path, required: true}
  git_bin: {description: git executable., type: str, default: git}
  pm2_bin: {description: pm2 executable., type: str, default: pm2}
  pm2_home: {description: PM2_HOME for pm2 calls (empty = pm2 default)., type: str, default: ''}
  apps: {description: PM2 app names to report (empty = all)., type: list, elements: str, default: []}
  log_count: {description: How many recent commits to list., type: int, default: 5}
  health_url: {description: Health URL probed once (empty = not probed)., type: str, default: ''}
  lock_path:
    description:
      - Take the host lock (see doai_host_lock) before looking at anything, so that nothing
        changes between this capture and the apply. Empty takes no lock. In check mode the
        lock is only checked. The lock is released again if this module fails.
    type: path
  run_id: {description: This run (for the lock)., type: str, default: ''}
  owner: {description: Who (for the lock)., type: str, default: ''}
  reason: {description: Why (for the lock)., type: str, default: ''}
  lock_ttl: {description: Seconds after which a lock is stale., type: int, default: 3600}
  plan_only:
    description:
      - Only check the lock, never take it. The role runs this module with check_mode false
        (it must probe for real even under --check) and sets this to ansible_check_mode.
    type: bool
    default: false
author: doai-ansible contributors
"""

RETURN = r"""
current: {description: Full SHA of the live commit., type: str, returned: always}
target: {description: Full SHA of the resolved target., type: str, returned: always}
rule: {description: How the target was chosen., type: str, returned: always}
changes: {description: Whether the target differs from the live commit., type: bool, returned: always}
needs_install: {description: Whether npm ci must run., type: bool, returned: always}
recent: {description: The last commits (short sha and subject)., type: list, returned: always}
processes: {description: PM2 processes (name, status, restarts)., type: list, returned: always}
"""

import hashlib
import json
import os
import re
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.doai_lock import Locked, acquire, check, release
from ansible.module_utils.doai_pm2 import finish_jlist, start_jlist
from ansible.module_utils.urls import open_url
from ansible.module_utils.six.moves.urllib.error import HTTPError

# A ref or SHA an operator may name. Stricter than git-check-ref-format on purpose: no
# leading '-', no '..', no '@{', no spaces or shell metacharacters.
REF_RE = re.compile(r"(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)(?!.*\.lock\Z)(?!.*[/.]\Z)[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
LOCKFILES = ("package-lock.json", "npm-shrinkwrap.json")


def git(module, args, check=True):
    rc, out, err = module.run_command(
        [module.params["git_bin"], "-C", module.params["path"]] + args,
        environ_update={"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"},
    )
    if check and rc != 0:
        module.fail_json(msg="git %s failed: %s" % (args[0], (err or out).strip()), rc=rc)
    return rc, out, err


def read_ledger(path):
    entries = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        entries.append(json.loads(line))
                    except ValueError:
                        continue
    except (IOError, OSError):
        pass
    return entries


def version_at(module, sha):
    rc, out, _ = git(module, ["show", "%s:package.json" % sha], check=False)
    if rc != 0:
        return None
    try:
        v = json.loads(out).get("version")
    except ValueError:
        return None
    return v if isinstance(v, str) else None


def deps_missing(path, module, sha):
    """True when node_modules lacks a dependency the target's package.json names."""
    rc, out, _ = git(module, ["show", "%s:package.json" % sha], check=False)
    if rc != 0:
        return False
    try:
        deps = json.loads(out).get("dependencies") or {}
    except ValueError:
        return True
    for name in deps:
        if not os.path.isfile(os.path.join(path, "node_modules", name, "package.json")):
            return True
    return False


def resolve(module, ref):
    rc, out, _ = git(module, ["rev-parse", "--verify", "--quiet", "--end-of-options", ref + "^{commit}"], check=False)
    return out.strip() if rc == 0 else None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            target=dict(type="str", default=""),
            state_dir=dict(type="path", required=True),
            git_bin=dict(type="str", default="git"),
            pm2_bin=dict(type="str", default="pm2"),
            pm2_home=dict(type="str", default=""),
            apps=dict(type="list", elements="str", default=[]),
            log_count=dict(type="int", default=5),
            health_url=dict(type="str", default=""),
            lock_path=dict(type="path"),
            run_id=dict(type="str", default=""),
            owner=dict(type="str", default=""),
            reason=dict(type="str", default=""),
            lock_ttl=dict(type="int", default=3600),
            plan_only=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    lock = None
    if p["lock_path"]:
        try:
            if module.check_mode or p["plan_only"]:
                check(p["lock_path"], p["run_id"], p["lock_ttl"])
            else:
                holder, taken = acquire(p["lock_path"], p["run_id"], p["owner"], p["reason"], p["lock_ttl"], module.warn)
                lock = holder if taken else None
        except Locked as exc:
            module.fail_json(msg=str(exc), locked=True, holder=exc.holder)
        if lock is not None:
            # Whatever fails from here on, the lock this task took goes with it.
            fail = module.fail_json

            def fail_and_release(**kwargs):
                release(p["lock_path"], p["run_id"])
                fail(**kwargs)

            module.fail_json = fail_and_release
    inspect(module, lock)


def inspect(module, lock):
    p = module.params
    path = p["path"]
    if not os.path.isdir(path):
        module.fail_json(msg="%s does not exist on this host; set doai_backend_pm2_path" % path)
    rc, out, _ = git(module, ["rev-parse", "--show-toplevel"], check=False)
    if rc != 0 or os.path.realpath(out.strip()) != os.path.realpath(path):
        module.fail_json(msg="%s is not the top of a git checkout" % path)

    jlist = start_jlist(p["pm2_bin"], p["pm2_home"])
    current = git(module, ["rev-parse", "--verify", "HEAD^{commit}"])[1].strip()
    _, branch, _ = git(module, ["symbolic-ref", "--quiet", "--short", "HEAD"], check=False)
    _, porcelain, _ = git(module, ["status", "--porcelain=v1", "--untracked-files=normal"])
    dirty = [line for line in porcelain.splitlines() if line.strip()]
    _, log_out, _ = git(module, ["log", "--no-decorate", "--format=%h %s", "-n", str(p["log_count"])])
    recent = log_out.splitlines()

    ledger_path = os.path.join(p["state_dir"], "ledger.jsonl")
    ledger = read_ledger(ledger_path)
    rolled_back_from = set(
        e.get("from") for e in ledger if e.get("action") == "rollback" and e.get("result") == "succeeded"
    )

    target_in = p["target"]
    if target_in:
        if not REF_RE.fullmatch(target_in):
            module.fail_json(msg="target %r is not a commit SHA or ref name" % target_in, invalid_target=True)
        target = resolve(module, target_in)
        if not target:
            module.fail_json(
                msg="target %r is not a commit in %s (fetch it first?)" % (target_in, path), invalid_target=True
            )
        rule = "requested: %s" % target_in
    else:
        target, rule = None, None
        for e in reversed(ledger):
            if e.get("result") not in ("succeeded", "deployed"):
                continue
            cand = e.get("to")
            if cand and cand != current and cand not in rolled_back_from and resolve(module, cand) == cand:
                target = cand
                rule = "ledger: live before %s (%s %s by %s)" % (
                    current[:12], e.get("action", "deploy"), e.get("at", "?"), e.get("who", "?"))
                break
        if target is None:
            _, reflog, _ = git(module, ["reflog", "show", "--format=%H", "HEAD"], check=False)
            for n, cand in enumerate(reflog.split()):
                if cand != current and cand not in rolled_back_from and resolve(module, cand) == cand:
                    target = cand
                    rule = "reflog: HEAD@{%d}, the commit checked out before %s" % (n, current[:12])
                    break
        if target is None:
            module.fail_json(
                msg="no earlier release to roll back to in the ledger or the reflog; name one with --to",
                no_target=True, recent=recent, current=current,
            )

    changes = target != current
    lock_changed = False
    if changes:
        rc, _, _ = git(module, ["diff", "--quiet", current, target, "--"] + list(LOCKFILES), check=False)
        lock_changed = rc == 1
    missing = deps_missing(path, module, target)

    lock_hash = None
    lf = os.path.join(path, "package-lock.json")
    if os.path.isfile(lf):
        with open(lf, "rb") as fh:
            lock_hash = hashlib.sha256(fh.read()).hexdigest()

    procs, pm2_error = finish_jlist(jlist, p["apps"])

    host_lock = None
    lock_info = os.path.join(p["state_dir"], "backend.lock", "owner.json")
    if os.path.exists(os.path.dirname(lock_info)):
        try:
            with open(lock_info, encoding="utf-8") as fh:
                host_lock = json.load(fh)
        except (IOError, OSError, ValueError):
            host_lock = {"owner": "unknown"}
        host_lock["age_s"] = int(time.time() - os.stat(os.path.dirname(lock_info)).st_mtime)

    health_status = None
    if p["health_url"]:
        try:
            resp = open_url(p["health_url"], timeout=5, follow_redirects="safe")
            health_status = resp.getcode()
        except HTTPError as exc:
            health_status = exc.code
        except Exception:  # anything else that answers is no health endpoint (an SSH banner, TLS on HTTP, ...)
            health_status = None

    module.exit_json(
        changed=False,
        locked_by_us=lock is not None,
        health_status=health_status,
        healthy=health_status is not None and 200 <= health_status < 300,
        current=current,
        current_short=current[:12],
        branch=branch.strip() or None,
        dirty=dirty,
        recent=recent,
        target=target,
        target_short=target[:12],
        rule=rule,
        changes=changes,
        lockfile_changed=lock_changed,
        deps_missing=missing,
        needs_install=bool(changes and (lock_changed or missing)),
        lockfile_sha256=lock_hash,
        current_version=version_at(module, current),
        target_version=version_at(module, target),
        processes=procs,
        pm2_error=pm2_error,
        host_lock=host_lock,
        ledger_entries=len(ledger),
    )


if __name__ == "__main__":
    main()
