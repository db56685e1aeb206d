#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start of a rollback on one host: take the host lock, capture the live state, plan.

One task on purpose: every task costs a round trip (~0.3-0.4 s over SSH), and an outage
waits on this one. The steps are still separate and named, in this order: take the host
lock; check the checkout; resolve the target (pinned plan, requested ref, or the release
live before); plan the dependency install; check PM2 lists the apps; refuse a dirty tree;
probe health. A refusal releases the lock this task took and says why in a result key.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_pm2_capture
short_description: Take the host lock, capture a PM2 backend's live state and plan a rollback
description:
  - B(Step 1, the only change:) takes the host lock I(lock_path) (the lock of doai_host_lock,
    module_utils doai_lock) so that nothing changes between this capture and the apply. A lock held
    by the same I(run_id) is this run's (a resumed run continues under it). In check mode, or
    with I(plan_only), the lock is only checked. If any later step fails, the lock this task
    holds is released before the module returns.
  - Then, read only - the live commit, working tree, last commits, PM2 process list, lockfile
    hash, health and the host's ledger - and resolves the target and the dependency install.
  - Refuses, changing nothing, with a result key naming the kind of refusal - C(locked),
    C(bad_path), C(invalid_target), C(no_target), C(drifted), C(dirty_tree), C(unknown_app),
    C(pm2_unavailable).
options:
  path: {description: "Git checkout of the app.", type: path, required: true}
  target:
    description:
      - Commit SHA or ref to roll back to. Empty chooses the release live before the current
        one (from the ledger, else the reflog); see the role README for the rule. Ignored when
        I(pin_to) is set.
    type: str
    default: ''
  pin_from:
    description:
      - The live commit the confirmed plan started from (full SHA). With I(pin_to), the target
        is I(pin_to) and the live commit must be I(pin_from), else the module refuses with
        C(drifted).
    type: str
    default: ''
  pin_to: {description: "The target the confirmed plan pinned (full SHA).", type: str, default: ''}
  resume:
    description:
      - Continue a run that lost its host midway (same I(run_id)). Needs I(pin_from) and
        I(pin_to); the live commit may be either. The plan always has changes (the apply runs
        again, as a no-op where it is done), and the install is planned when node_modules was
        not installed for the target's lockfile.
    type: bool
    default: false
  refuse_dirty:
    description: Refuse (C(dirty_tree)) when there is work to do and the checkout has uncommitted changes.
    type: bool
    default: true
  ledger_path: {description: "The host's ledger (JSON lines).", type: path, required: true}
  install_argv: {description: "The install command (tells whether dev dependencies count).", type: list, elements: str, default: [npm, ci, --omit=dev]}
  cache_dir: {description: "The node_modules cache (tells whether a planned install is a rename from it).", type: path, default: ''}
  git_bin: {description: "git executable.", type: str, default: git}
  pm2_bin: {description: "pm2 executable.", type: str, default: pm2}
  pm2_home: {description: "PM2_HOME for pm2 calls (empty = pm2 default).", type: str, default: ''}
  apps: {description: "PM2 apps the rollback reloads (empty = all); each must be listed by PM2.", type: list, elements: str, default: []}
  log_count: {description: "How many recent commits to list.", type: int, default: 5}
  health_url: {description: "Health URL probed once (empty = not probed).", type: str, default: ''}
  lock_path: {description: "The host lock directory; empty takes no lock.", type: path}
  run_id: {description: "This run (the lock's owner id).", type: str, default: ''}
  owner: {description: "Who (for the lock).", type: str, default: ''}
  reason: {description: "Why (for the lock).", type: str, default: ''}
  lock_ttl: {description: "Seconds after which a lock is stale.", type: int, default: 3600}
  plan_only:
    description:
      - Only check the lock, never take it. The role runs this module with check_mode false
        (it must probe for real even under --check) and sets this to ansible_check_mode.
    type: bool
    default: false
  read_status:
    description:
      - Also read the host's status for the whole-system checklist (what doai_backend_pm2_inspect
        returns), before the lock; returned in C(checklist.status), or its cause in
        C(checklist.status_error). A read that fails never stops the plan.
    type: bool
    default: false
  read_lines:
    description:
      - Also read the last I(read_lines) lines of the PM2 logs for the checklist (what
        doai_backend_pm2_diagnose returns), before the lock; returned in C(checklist.evidence), or
        its cause in C(checklist.evidence_error). 0 reads none.
    type: int
    default: 0
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Take the host lock, capture the live state and plan the rollback to the default target
  doai.rollback.doai_backend_pm2_capture:
    lock_path: /var/lib/doai-rollback/backend.lock
    run_id: 20261127T030000Z-1a2b
    owner: alice@laptop
    reason: v3 breaks logins
    path: /srv/doai-backend
    target: ""
    ledger_path: /var/lib/doai-rollback/ledger.jsonl
    refuse_dirty: true
  register: plan
"""

RETURN = r"""
current: {description: "Full SHA the plan starts from (the live commit; on resume, I(pin_from)).", type: str, returned: success}
head: {description: "Full SHA of the live commit now.", type: str, returned: always}
target: {description: "Full SHA of the resolved target.", type: str, returned: success}
rule: {description: "How the target was chosen.", type: str, returned: success}
changes: {description: "Whether there is work to do (target differs from the live commit, or resume).", type: bool, returned: success}
needs_install: {description: "Whether new node_modules are planned (npm ci, or a tree from the cache).", type: bool, returned: success}
install_from_cache: {description: "Whether the planned node_modules is in the cache now (a rename, no npm ci).", type: bool, returned: success}
recent: {description: "The last commits (short sha and subject).", type: list, returned: success}
processes: {description: "PM2 processes of the apps (name, status, restarts).", type: list, returned: success}
locked_by_us: {description: "Whether this run holds the host lock.", type: bool, returned: success}
locked: {description: "Refused, another run holds the host lock (see holder).", type: bool, returned: failure}
bad_path: {description: "Refused, the path is missing or not the top of a git checkout.", type: bool, returned: failure}
invalid_target: {description: "Refused, the target or the plan names no commit of the checkout.", type: bool, returned: failure}
no_target: {description: "Refused, no earlier release found in the ledger or the reflog.", type: bool, returned: failure}
drifted: {description: "Refused, the live commit is not the one the plan started from.", type: bool, returned: failure}
dirty_tree: {description: "Refused, the checkout has uncommitted changes (see dirty).", type: bool, returned: failure}
unknown_app: {description: "Refused, an app of I(apps) is not listed by PM2 (see unknown), or PM2 lists none.", type: bool, returned: failure}
pm2_unavailable: {description: "Refused, pm2 jlist failed (see pm2_error).", type: bool, returned: failure}
checklist:
  description: "What I(read_status) and I(read_lines) read (status, evidence, and their causes status_error, evidence_error)."
  type: dict
  returned: when I(read_status) or I(read_lines) asks, also on a refusal
"""

import functools
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_checklist import read_along
from ansible_collections.doai.rollback.plugins.module_utils.doai_checkout import FULL_SHA_RE, Checkout
from ansible_collections.doai.rollback.plugins.module_utils.doai_health import probe
from ansible_collections.doai.rollback.plugins.module_utils.doai_lock import Locked, acquire, check, release
from ansible_collections.doai.rollback.plugins.module_utils.doai_npm import LOCKFILES, cached_tree, deps_missing, file_sha256, installed_matches, omits_dev
from ansible_collections.doai.rollback.plugins.module_utils.doai_pm2 import read_jlist, start_jlist, summarize, unknown_apps
from ansible_collections.doai.rollback.plugins.module_utils.doai_pm2_read import daemon_running, evidence, status
from ansible_collections.doai.rollback.plugins.module_utils.doai_target import resolve_target


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            target=dict(type="str", default=""),
            pin_from=dict(type="str", default=""),
            pin_to=dict(type="str", default=""),
            resume=dict(type="bool", default=False),
            refuse_dirty=dict(type="bool", default=True),
            ledger_path=dict(type="path", required=True),
            install_argv=dict(type="list", elements="str", default=["npm", "ci", "--omit=dev"]),
            cache_dir=dict(type="path", default=""),
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
            read_status=dict(type="bool", default=False),
            read_lines=dict(type="int", default=0),
        ),
        required_together=[("pin_from", "pin_to")],
        supports_check_mode=True,
    )
    shared_jlist = read_for_checklist(module)
    holder = take_lock(module)
    # A plan takes no lock and changes nothing: the checklist's `pm2 jlist` of a moment ago is
    # the plan's too (node's start-up is the slowest probe; one read, one answer).
    plan = capture(module, jlist=shared_jlist if module.check_mode or module.params["plan_only"] else None)
    module.exit_json(changed=False, locked_by_us=holder is not None, **plan)


def read_for_checklist(module):
    """The checklist's reads, before the lock: the host's status and the last log lines.
    Returns the function giving their shared `pm2 jlist`'s answer, or None."""
    p = module.params
    where = dict(path=p["path"], git_bin=p["git_bin"], pm2_bin=p["pm2_bin"], pm2_home=p["pm2_home"], apps=p["apps"],
                 health_url=p["health_url"])
    shared = {}
    if p["read_status"] and p["read_lines"] > 0 and daemon_running(p["pm2_home"]):
        # One `pm2 jlist` for both reads (node's start-up is most of its cost), started now so
        # that it runs while the status reads git. Not when no PM2 daemon runs: the log read
        # says so on its own, and never starts one.
        shared["run"] = start_jlist(p["pm2_bin"], p["pm2_home"])

        def jlist():
            if "answer" not in shared:
                shared["answer"] = read_jlist(shared["run"], timeout=30)  # as the log read's own
            return shared["answer"]

        where["jlist"] = jlist
    reads = []
    if p["read_status"]:
        reads.append(("status", lambda: status(module, log_count=p["log_count"], lock_path=p["lock_path"], **where)))
    if p["read_lines"] > 0:
        reads.append(("evidence", lambda: evidence(module, lines=p["read_lines"], **where)))
    read_along(module, reads)
    return where.get("jlist")


def take_lock(module):
    """Step 1: the host lock. Returns its owner record when this run holds it, else None;
    from then on a failing step releases it."""
    p = module.params
    if not p["lock_path"]:
        return None
    try:
        if module.check_mode or p["plan_only"]:
            check(p["lock_path"], p["run_id"], p["lock_ttl"])
            return None
        holder, _taken = acquire(p["lock_path"], p["run_id"], p["owner"], p["reason"], p["lock_ttl"], module.warn)
    except Locked as exc:
        module.fail_json(msg=str(exc), locked=True, holder=exc.holder)
    fail = module.fail_json

    def fail_and_release(**kwargs):
        release(p["lock_path"], p["run_id"])
        fail(**kwargs)

    module.fail_json = fail_and_release
    return holder


def capture(module, jlist=None):
    """Steps 2-7, read only: the live state and the plan, or a refusal. ``jlist``: a function
    giving the answer of a `pm2 jlist` already read in this call (else one is started)."""
    p = module.params
    co = Checkout(module, p["path"], p["git_bin"]).require_top()
    if jlist is None:  # node's start-up is the slowest probe: started now, read after the git reads
        jlist = functools.partial(read_jlist, start_jlist(p["pm2_bin"], p["pm2_home"]))
    head = co.head()
    if p["pin_to"] or p["resume"]:
        base, target, rule = pinned_target(module, co, head)
    else:
        base = head
        target, rule = resolve_target(module, co, head)  # shared with the prepare module
    changes = p["resume"] or target != head
    plan = dict(current=base, current_short=base[:12], head=head, target=target, target_short=target[:12],
                rule=rule, changes=changes, branch=co.branch(), recent=co.recent(p["log_count"]),
                current_version=co.version_at(base), target_version=co.version_at(target))
    plan.update(plan_install(module, co, base, target, changes))
    plan["processes"] = check_apps(module, jlist)
    plan["dirty"] = co.dirty()
    if changes and plan["dirty"] and p["refuse_dirty"]:
        module.fail_json(
            msg="%s has uncommitted changes (%s); commit or stash them first; nothing was changed"
            % (p["path"], ", ".join(plan["dirty"])),
            dirty_tree=True, dirty=plan["dirty"], head=head,
        )
    status = probe(p["health_url"], timeout=5)[0] if p["health_url"] else None
    plan.update(health_status=status, healthy=status is not None and 200 <= status < 300)
    return plan


def pinned_target(module, co, head):
    """The confirmed plan: (from, to, rule); refuses when the live commit moved since."""
    p = module.params
    pin_from, pin_to = p["pin_from"], p["pin_to"]
    if not (pin_from and pin_to):
        module.fail_json(msg="resume needs the confirmed plan (doai_backend_pm2_pins for this host); nothing was changed",
                         invalid_target=True, head=head)
    for name, sha in (("from", pin_from), ("to", pin_to)):
        if not FULL_SHA_RE.fullmatch(sha) or co.resolve(sha) != sha:
            module.fail_json(msg="the plan's %s %r is not a full commit SHA of %s; nothing was changed"
                             % (name, sha, p["path"]), invalid_target=True, head=head)
    allowed = (pin_from, pin_to) if p["resume"] else (pin_from,)
    if head not in allowed:
        module.fail_json(
            msg="live commit is %s, not %s as planned (someone deployed meanwhile); plan again"
            % (head[:12], " or ".join(sha[:12] for sha in allowed)),
            drifted=True, head=head, planned_from=pin_from,
        )
    return pin_from, pin_to, "confirmed plan: %s -> %s%s" % (pin_from[:12], pin_to[:12], ", resumed" if p["resume"] else "")


def plan_install(module, co, base, target, changes):
    """Whether `npm ci` is planned: the lockfile differs between the two commits or a
    dependency is missing; on resume, node_modules was not installed for the target's lockfile."""
    p = module.params
    lock_changed = changes and base != target and co.differ(base, target, LOCKFILES)
    package_json = co.show(target, "package.json")
    missing = deps_missing(p["path"], package_json)
    lockfile = None
    if p["resume"] or lock_changed or missing:
        lockfile = next((text for text in (co.show(target, name) for name in LOCKFILES) if text is not None), None)
    if p["resume"]:
        stale = lockfile is not None and not installed_matches(p["path"], lockfile, omits_dev(p["install_argv"]))
        needs = stale or missing
    else:
        needs = changes and (lock_changed or missing)
    # A tree in the cache (kept by an earlier rollback, or by `prepare`): the apply renames it in.
    from_cache = bool(needs) and cached_tree(p["path"], p["cache_dir"], lockfile, package_json,
                                             omits_dev(p["install_argv"])) is not None
    return dict(lockfile_changed=lock_changed, deps_missing=missing, needs_install=bool(needs),
                install_from_cache=from_cache,
                lockfile_sha256=file_sha256(os.path.join(p["path"], "package-lock.json")))


def check_apps(module, jlist):
    """PM2's processes of the apps; refuses when pm2 fails, or an app is not listed. ``jlist``: a
    function giving the answer of a `pm2 jlist`."""
    p = module.params
    everything, error = summarize(*jlist(), apps=[])
    if error is not None:
        module.fail_json(msg="pm2 jlist failed: %s; nothing was changed" % error, pm2_unavailable=True, pm2_error=error)
    unknown = unknown_apps(everything, p["apps"])
    if unknown or not everything:
        module.fail_json(
            msg="PM2 does not list %s (it lists: %s; is PM2_HOME right?); nothing was changed"
            % (", ".join(unknown) or "any app", ", ".join(sorted(set(str(x["name"]) for x in everything))) or "nothing"),
            unknown_app=True, unknown=unknown, processes=everything,
        )
    wanted = [a for a in p["apps"] if a != "all"]
    return [x for x in everything if not wanted or x["name"] in wanted or str(x["pm_id"]) in wanted]


if __name__ == "__main__":
    main()
