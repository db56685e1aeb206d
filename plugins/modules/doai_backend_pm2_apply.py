#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Put a commit live: git checkout, npm ci when needed, PM2 reload -- in one task.

One task instead of three because every task costs a round trip, and this is the part of a
rollback an outage waits on. Each step is still reported (``steps``) and the first one that
fails stops the rest with its command and output.

With I(job), the steps run as a job detached from the SSH session (the collection's doai_job):
a dropped connection does not stop them, and the same task run again (SSH's retries, the
role's action plugin) attaches to the job instead of starting another. A resumed run starts a
new job while the first may still work: an exclusive flock on the checkout makes it wait.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_pm2_apply
short_description: Check out a commit, install dependencies if needed and reload PM2
description:
  - Runs, in order, the dependency install (when I(install) is true, or with
    I(install_if_stale) when node_modules was not installed for the lockfile of COMMIT) into a
    staging directory, or takes COMMIT's node_modules from I(cache_dir) by rename; C(git
    checkout --quiet --detach COMMIT); the swap of node_modules by rename (the previous one
    kept in I(cache_dir)); C(pm2 reload|restart APP) for each app; the pruning of the cache.
  - Holds an exclusive flock on I(path) throughout; another apply on the same checkout waits
    for it (up to I(lock_wait) seconds).
  - Every command is an argument vector; nothing goes through a shell.
  - Does nothing in check mode (reports what it would run).
options:
  path: {description: "Git checkout of the app.", type: path, required: true}
  commit: {description: "Full SHA to check out.", type: str, required: true}
  install: {description: "Run the dependency install.", type: bool, default: false}
  install_if_stale:
    description:
      - After the checkout, run the install when node_modules was not installed for the
        checked-out lockfile (npm's record, node_modules/.package-lock.json) or a dependency of
        package.json is missing. For a resumed run and for the restore, where what an
        interrupted job left is not known in advance.
    type: bool
    default: false
  install_argv: {description: "The install command as a list.", type: list, elements: str, required: true}
  cache_dir:
    description:
      - Cache of node_modules trees, keyed by the sha256 of their lockfile. Before the checkout
        the target's tree is taken from it by rename, or installed with I(install_argv) in a
        staging directory there (the app keeps its node_modules meanwhile); after the checkout
        the app's tree moves into it under the previous lockfile's hash and the target's is
        renamed in. Empty, or on another filesystem than I(path), uses C(.<name>.node_modules)
        next to I(path).
    type: path
    default: ''
  cache_keep: {description: "Trees kept in the cache (oldest dropped first); 0 keeps none.", type: int, default: 3}
  pm2_bin: {description: "pm2 executable.", type: str, default: pm2}
  pm2_home: {description: "PM2_HOME for pm2 calls.", type: str, default: ''}
  pm2_mode: {description: "reload or restart.", type: str, choices: [reload, restart], default: reload}
  apps: {description: "Apps to reload; empty means all.", type: list, elements: str, default: []}
  crash_restarts:
    description:
      - While PM2 reloads, C(pm2 jlist) is read about every 0.5 s; when a process restarted this
        many times more than the reload itself restarts it, or PM2 gave up on it (C(errored)),
        the release crash-loops - the reload is stopped and the step fails at once (C(crash_loop)
        in the result) instead of waiting out PM2's C(listen_timeout) per process and the health
        deadline. 0 turns the watch off.
    type: int
    default: 3
  git_bin: {description: "git executable.", type: str, default: git}
  lock_wait: {description: "Seconds to wait for another apply on the same checkout.", type: int, default: 600}
  job:
    description:
      - Run the steps as this job, detached from the SSH session, and wait for its result; a job
        of that id that exists already is attached to, not started again. Empty runs the steps in
        the module itself.
    type: str
    default: ''
  job_dir: {description: "Directory of the job files on the host.", type: path, default: /var/lib/doai-rollback/jobs}
  timeout: {description: "Seconds the job may run; then it is stopped and fails.", type: int, default: 900}
  record:
    description:
      - The job's own record in the host's ledger, written by the detached job once the commit is
        live (C(result) applied, C(by) job), so that a controller killed meanwhile leaves the
        change on record (action, from, to, who, why, run_id); empty - none.
    type: dict
  ledger_path: {description: "The host's ledger, for I(record).", type: path}
  lock_path:
    description:
      - The host lock the job works under (held by I(record)'s run_id) - the job records its
        process in it and refreshes it every I(lock_ttl)/4 while it runs.
    type: path
  lock_ttl: {description: "The host lock's TTL in seconds.", type: int, default: 3600}
  reconnect_timeout:
    description:
      - Used by the role's action plugin, on the controller - seconds, from the first failure of
        the task's connection after SSH's own retries, during which the task is run again once a
        second to attach to the job (0 - not at all).
    type: float
    default: 0
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Check out the target commit, install its dependencies, reload PM2
  doai.rollback.doai_backend_pm2_apply:
    path: /srv/doai-backend
    commit: 0123456789abcdef0123456789abcdef01234567
    install_if_stale: true
    install_argv: [npm, ci, --omit=dev]
    pm2_bin: pm2
    apps: [doai-api]
    job: 20261127T030000Z-1a2b-apply
"""

RETURN = r"""
steps:
  description:
    - Each command run, its rc and seconds.
    - A PM2 action the daemon refused for a process it was still replacing (C(Process <id> not found), e.g. right
      after a reload stopped half way by a crash loop) is tried again, up to 6 times a second apart; each try is a
      step, the later ones with C(try).
  type: list
  returned: always
installed: {description: "Whether the dependency install ran.", type: bool, returned: always}
node_modules:
  description: How node_modules was made ready - source (cache, install or null), installed, cache_dir, key, pruned.
  type: dict
  returned: success
waited: {description: "Seconds spent waiting for another apply on the checkout.", type: float, returned: success}
live_since: {description: "When the PM2 reload started (epoch seconds on the host).", type: float, returned: when a job reached the reload}
crash_loop: {description: "The reload was stopped because the release crash-loops.", type: bool, returned: on that failure}
job: {description: "The job id (with I(job)).", type: str, returned: when a job ran}
attached: {description: "Whether this call attached to a job started earlier.", type: bool, returned: when a job ran}
"""

import fcntl
import os
import re
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_history import job_recorder
from ansible_collections.doai.rollback.plugins.module_utils.doai_job import run_job
from ansible_collections.doai.rollback.plugins.module_utils.doai_npm import InstallError, NodeModules
from ansible_collections.doai.rollback.plugins.module_utils.doai_pm2 import crash_looping, finish_jlist, start_jlist


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            commit=dict(type="str", required=True),
            install=dict(type="bool", default=False),
            install_if_stale=dict(type="bool", default=False),
            install_argv=dict(type="list", elements="str", required=True),
            cache_dir=dict(type="path", default=""),
            cache_keep=dict(type="int", default=3),
            pm2_bin=dict(type="str", default="pm2"),
            pm2_home=dict(type="str", default=""),
            pm2_mode=dict(type="str", choices=["reload", "restart"], default="reload"),
            apps=dict(type="list", elements="str", default=[]),
            crash_restarts=dict(type="int", default=3),
            git_bin=dict(type="str", default="git"),
            lock_wait=dict(type="int", default=600),
            job=dict(type="str", default=""),
            job_dir=dict(type="path", default="/var/lib/doai-rollback/jobs"),
            timeout=dict(type="int", default=900),
            reconnect_timeout=dict(type="float", default=0),
            record=dict(type="dict"), ledger_path=dict(type="path"), lock_path=dict(type="path"),
            lock_ttl=dict(type="int", default=3600),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not all(c in "0123456789abcdef" for c in p["commit"]) or len(p["commit"]) < 7:
        module.fail_json(msg="commit must be a hex SHA, got %r" % p["commit"])
    pm2_env = {"PM2_HOME": p["pm2_home"]} if p["pm2_home"] else {}
    checkout = ("checkout", [p["git_bin"], "-C", p["path"], "checkout", "--quiet", "--detach", p["commit"]], {}, None)
    install = ("install", list(p["install_argv"]), {}, "<staging>")
    reloads = [("pm2 " + p["pm2_mode"], [p["pm2_bin"], p["pm2_mode"], app], pm2_env, p["path"]) for app in p["apps"] or ["all"]]

    if module.check_mode:
        plan = [checkout] + ([install] if p["install"] else []) + reloads
        module.exit_json(changed=True, installed=False, steps=[{"step": n, "argv": a} for n, a, _, _ in plan])

    run_job(module, p["job_dir"], p["job"], lambda progress: apply(module, checkout, install, reloads, progress),
            p["timeout"], **job_hooks(p, lambda done: None if done.get("failed") else "applied"))


def job_hooks(p, result_of):
    """The job's record in the ledger and its hold on the host lock, when the task asks for them."""
    record = dict(p["record"] or {}, job=p["job"])
    run_id = record.get("run_id")
    return {"on_result": job_recorder(p["ledger_path"], p["record"] and record, result_of),
            "lock": (p["lock_path"], run_id, p["lock_ttl"]) if p["lock_path"] and run_id else None}


def apply(module, checkout, install, reloads, progress=lambda **values: None):
    p = module.params
    waited = hold_checkout(module)
    steps = []
    # The restart counters before the reload, read while the install and checkout run: the
    # crash-loop watch compares with them (an app that is not running yet has none).
    counters = start_jlist(p["pm2_bin"], p["pm2_home"]) if p["crash_restarts"] > 0 else None
    # node_modules is made ready before the checkout (the running release keeps its own while
    # npm works) and swapped in by rename after it; see doai_npm.NodeModules.
    deps = NodeModules(p["path"], p["cache_dir"], p["cache_keep"], p["install_argv"], steps=steps,
                       run=lambda argv, cwd=None: module.run_command(argv, cwd=cwd), git_bin=p["git_bin"])
    try:
        deps.prepare(p["commit"], force=p["install"], if_stale=p["install_if_stale"])
    except (InstallError, OSError) as exc:
        module.fail_json(msg="%s; nothing was changed" % exc, steps=steps, failed_step="install",
                         changed=False, installed=deps.installed)
    run(module, checkout, steps)
    try:
        deps.swap_in()
    except OSError as exc:
        module.fail_json(msg="node_modules swap failed: %s" % exc, steps=steps, failed_step="node_modules swap",
                         changed=True, installed=deps.installed)
    # When PM2 starts the release: the health gate's restart watch counts from here.
    progress(live_since=time.time())
    baseline = None
    if counters is not None:
        procs, _ = finish_jlist(counters, p["apps"])
        baseline = dict((x["pm_id"], x["restarts"] or 0) for x in procs or [])
    for step in reloads:
        if baseline is None:
            run(module, step, steps)
        else:
            run_watched(module, step, steps, baseline)
    deps.finish()
    module.exit_json(changed=True, steps=steps, installed=deps.installed, node_modules=deps.report(), waited=waited)


def hold_checkout(module):
    """Take an exclusive flock on the checkout directory for the rest of this process (another
    apply there waits); returns the seconds waited."""
    p = module.params
    try:
        # Kept open (and, as every fd Python opens, not inherited by npm or pm2): the flock
        # lasts until this module exits.
        fd = os.open(p["path"], os.O_RDONLY)
    except OSError as exc:
        module.fail_json(msg="cannot open %s: %s; nothing was changed" % (p["path"], exc), steps=[], installed=False)
    start = time.monotonic()
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return round(time.monotonic() - start, 3)
        except (IOError, OSError):
            if time.monotonic() - start > p["lock_wait"]:
                module.fail_json(msg="another apply is still running on %s after %d s; nothing was changed by this one"
                                 % (p["path"], p["lock_wait"]), steps=[], installed=False)
            time.sleep(0.2)


# PM2's client says "Process <id> not found" for whatever its daemon answered about that process
# id, including a process it is still replacing: after a crash loop stopped the reload half way,
# the daemon goes on swapping the cluster's workers for a moment, and a `pm2 restart` (the
# put-back) that comes at that moment fails although the next one, a second later, succeeds. An
# app name PM2 does not know is another message ("Process or Namespace <name> not found"), and is
# never retried.
PM2_BUSY_RE = re.compile(r"Process \d+ not found")
PM2_BUSY_TRIES = 6
PM2_BUSY_PAUSE_S = 1.0


def _tried(steps, name, argv, rc, t0, tries):
    """The step's entry for one try (``try`` from the second on)."""
    steps.append(dict({"step": name, "argv": argv, "rc": rc, "seconds": round(time.monotonic() - t0, 3)},
                      **({"try": tries} if tries > 1 else {})))


def _pm2_busy(name, text, tries):
    """Whether this failed try of a PM2 step is PM2 still replacing a process (try again)."""
    return name.startswith("pm2 ") and tries < PM2_BUSY_TRIES and PM2_BUSY_RE.search(text) is not None


def _step_failed(module, steps, name, rc, tries, text):
    module.fail_json(
        msg="%s failed (rc %d%s): %s" % (name, rc, ", %d tries" % tries if tries > 1 else "", text.strip()[-1000:]),
        steps=steps, failed_step=name, changed=True, installed=name == "install",
    )


def run(module, step, steps):
    name, argv, env, cwd = step
    tries = 0
    while True:
        tries += 1
        t0 = time.monotonic()
        rc, out, err = module.run_command(argv, environ_update=env, cwd=cwd)
        _tried(steps, name, argv, rc, t0, tries)
        if rc == 0:
            return
        if _pm2_busy(name, (out or "") + (err or ""), tries):
            time.sleep(PM2_BUSY_PAUSE_S)
            continue
        _step_failed(module, steps, name, rc, tries, err or out)


def run_watched(module, step, steps, baseline):
    """``run`` for a PM2 reload, watching the restart counters meanwhile: a release that
    crash-loops stops the reload (the pm2 client; the put-back restarts the app) and fails the
    step at once, instead of after PM2's listen_timeout per process and the health deadline.
    A PM2 that is still replacing a process is tried again, as in ``run``."""
    tries = 1
    while not _run_watched_once(module, step, steps, baseline, tries):
        tries += 1
        time.sleep(PM2_BUSY_PAUSE_S)


def _run_watched_once(module, step, steps, baseline, tries):
    """One try of ``run_watched``: True when done, False to try again (PM2 busy)."""
    p = module.params
    name, argv, env, cwd = step
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=dict(os.environ, **env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # The client's output is small (a few lines per process): read by communicate() at the end.
    probe = None
    next_probe = t0 + 0.5
    while proc.poll() is None:
        now = time.monotonic()
        if probe is None and now >= next_probe:
            probe = start_jlist(p["pm2_bin"], p["pm2_home"])
        if probe is not None and (isinstance(probe, OSError) or probe.poll() is not None):
            procs, _ = finish_jlist(probe, p["apps"])
            probe, next_probe = None, time.monotonic() + 0.5
            looping = crash_looping(procs or [], baseline, p["crash_restarts"], allowed=1)  # the reload's own
            if looping:
                proc.terminate()
                try:
                    proc.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                seconds = round(time.monotonic() - t0, 3)
                steps.append({"step": name, "argv": argv, "rc": None, "seconds": seconds, "stopped": "crash loop"})
                module.fail_json(
                    msg="the release crash-loops: %s, %.1f s into the %s; the reload was stopped"
                    % ("; ".join(looping), seconds, name),
                    steps=steps, failed_step=name, changed=True, crash_loop=True, processes=procs,
                )
        time.sleep(0.05)
    if probe is not None and not isinstance(probe, OSError):
        probe.kill()
        probe.communicate()
    out, _ = proc.communicate()
    rc = proc.returncode
    text = out.decode("utf-8", "replace")
    _tried(steps, name, argv, rc, t0, tries)
    if rc == 0:
        return True
    if _pm2_busy(name, text, tries):
        return False
    _step_failed(module, steps, name, rc, tries, text)


if __name__ == "__main__":
    main()
