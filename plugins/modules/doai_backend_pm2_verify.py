#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health gate for a PM2 backend: health URL 2xx (and the right version), apps online, no restart loop."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_pm2_verify
short_description: Wait until a PM2 backend is healthy on the expected version
description:
  - Polls the health URL with exponential backoff until it answers 2xx (and, when it reports a
    version and one is expected, that version) or the deadline passes.
  - Then checks that every PM2 app is online and that no restart counter grows during a short
    stability window (a restart loop).
  - With I(job), runs as a job detached from the SSH session (module_utils doai_job) - a
    dropped connection does not stop it, and the same task run again attaches to it. With
    I(until=healthy) the module returns as soon as health is good (result keys C(healthy), C(reached=healthy)) while
    the job watches PM2 on; a second call with the job id and I(until=stable) returns the end.
  - Changes nothing. Skipped in check mode.
options:
  health_url: {description: "URL probed from the host.", type: str, required: true}
  deadline: {description: "Seconds to wait for health.", type: float, default: 60}
  expect_version: {description: "Version the health body must report (empty = any).", type: str, default: ''}
  crash_restarts:
    description:
      - While health is not good yet, C(pm2 jlist) is read about every second; a process that
        restarted this many times since the first read, or that PM2 marked C(errored), fails the
        gate at once (C(crash_loop) in the result). 0 turns it off.
    type: int
    default: 3
  stable_seconds: {description: "Seconds the PM2 restart counters must stay still (from I(since), else from health good).", type: float, default: 3}
  require_health:
    description:
      - When false, the health URL is probed once and reported but not required to be 2xx
        (undo returns to a state that may have been unhealthy); PM2 must still be stable.
    type: bool
    default: true
  pm2_bin: {description: "pm2 executable.", type: str, default: pm2}
  pm2_home: {description: "PM2_HOME for pm2 calls.", type: str, default: ''}
  apps: {description: "PM2 apps that must be online (empty = all).", type: list, elements: str, default: []}
  job: {description: "Run as this job, detached from the SSH session, or attach to it; empty runs in the module.", type: str, default: ''}
  job_dir: {description: "Directory of the job files on the host.", type: path, default: /var/lib/doai-rollback/jobs}
  timeout: {description: "Seconds the job may run.", type: int, default: 180}
  reconnect_timeout:
    description:
      - Used by the role's action plugin, on the controller - seconds, from the first failure of
        the task's connection after SSH's own retries, during which the task is run again once a
        second to attach to the job (0 - not at all).
    type: float
    default: 0
  since:
    description:
      - Epoch seconds (host clock) the restart watch counts from - when PM2 started the release
        (the apply's C(live_since)) - so that a release that crashes within I(stable_seconds) of
        its start fails; 0 - from health good. The counters are compared from health good on, at
        least once more, whenever the window ends.
    type: float
    default: 0
  until:
    description: With I(job), return when the backend is C(healthy), or when the watch is over (C(stable)).
    type: str
    choices: [healthy, stable]
    default: stable
  log_lines:
    description:
      - With I(until=stable) - the last lines of the apps' PM2 logs, read while the job watches and
        scrubbed on the host like doai_backend_pm2_diagnose's, returned once PM2 stayed stable
        (C(logs), C(pm2_error)) - the run's evidence, read in this round trip rather than by a task
        of its own. 0 - not read.
    type: int
    default: 0
  record:
    description:
      - With I(until=stable), once PM2 stayed stable - this record (action, from, to, who, why,
        run_id) with C(result=succeeded) in the host's ledger I(ledger_path), once per run (a call
        that attaches again adds nothing), then the host lock I(release_lock) released if the
        record's run holds it (doai_ledger's, in the same round trip); empty - none.
    type: dict
  ledger_path: {description: "The host's ledger, for I(record).", type: path}
  release_lock: {description: "The host lock released after I(record) (empty - none).", type: path}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Wait until the backend is healthy on 2.4.0 and PM2 stays still
  doai.rollback.doai_backend_pm2_verify:
    health_url: http://127.0.0.1:3000/api/health
    deadline: 60
    expect_version: 2.4.0
    stable_seconds: 3
    apps: [doai-api]
"""

RETURN = r"""
status: {description: "Last HTTP status of the health URL.", type: int, returned: always}
version: {description: "Version the health body reported.", type: str, returned: when reported}
elapsed: {description: "Seconds until healthy.", type: float, returned: always}
processes: {description: "PM2 processes after the window (when healthy, at its start).", type: list, returned: always}
healthy: {description: "Health is good; the restart watch goes on in the job.", type: bool, returned: with until=healthy}
reached: {description: "C(healthy) when the module returned at health good, the watch going on.", type: str, returned: with until=healthy}
stable_seconds: {description: "The length of the restart watch.", type: float, returned: with until=healthy}
logs: {description: "The apps' last log lines (app, pm_id, kind, path, text, error), scrubbed.", type: list, returned: with log_lines after a stable watch}
pm2_error: {description: "Why PM2 could not list the apps for their logs.", type: str, returned: with log_lines after a stable watch}
recorded: {description: "The record is in the ledger (written now or by an earlier call of this run).", type: bool, returned: with record after a stable watch}
lock_released: {description: "The host lock was released.", type: bool, returned: with record and release_lock after a stable watch}
"""

import threading
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_health import probe, reported_version
from ansible_collections.doai.rollback.plugins.module_utils.doai_history import LEDGER_ACTIONS, record_once
from ansible_collections.doai.rollback.plugins.module_utils.doai_job import run_job
from ansible_collections.doai.rollback.plugins.module_utils.doai_lock import release
from ansible_collections.doai.rollback.plugins.module_utils.doai_pm2 import crash_looping, finish_jlist, start_jlist
from ansible_collections.doai.rollback.plugins.module_utils.doai_pm2_read import evidence


def pm2_list(module, started=None):
    p = module.params
    procs, error = finish_jlist(started or start_jlist(p["pm2_bin"], p["pm2_home"]), p["apps"])
    if error is not None:
        module.fail_json(msg="pm2 jlist failed: %s" % error)
    return procs


def main():
    module = AnsibleModule(
        argument_spec=dict(
            health_url=dict(type="str", required=True),
            deadline=dict(type="float", default=60.0),
            expect_version=dict(type="str", default=""),
            stable_seconds=dict(type="float", default=3.0),
            require_health=dict(type="bool", default=True),
            pm2_bin=dict(type="str", default="pm2"),
            pm2_home=dict(type="str", default=""),
            apps=dict(type="list", elements="str", default=[]),
            job=dict(type="str", default=""),
            job_dir=dict(type="path", default="/var/lib/doai-rollback/jobs"),
            timeout=dict(type="int", default=180),
            reconnect_timeout=dict(type="float", default=0),
            since=dict(type="float", default=0),
            until=dict(type="str", choices=["healthy", "stable"], default="stable"),
            crash_restarts=dict(type="int", default=3),
            log_lines=dict(type="int", default=0),
            record=dict(type="dict"),
            ledger_path=dict(type="path"),
            release_lock=dict(type="path"),
        ),
        required_by={"record": ("ledger_path",)},
        supports_check_mode=True,
    )
    p = module.params
    if p["record"] and p["record"].get("action") not in LEDGER_ACTIONS:
        module.fail_json(msg="record action must be one of %s, got %r" % (", ".join(LEDGER_ACTIONS), p["record"].get("action")))
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, msg="health gate not run in check mode")
    logs = {}
    if p["until"] == "stable" and p["log_lines"] > 0:
        # Read while the job watches (the window is seconds long): off the command's tail.
        reader = threading.Thread(target=read_logs, args=(module, logs), daemon=True)
        reader.start()
        logs["reader"] = reader
    run_job(module, p["job_dir"], p["job"], lambda progress: verify(module, progress), p["timeout"],
            until="healthy" if p["until"] == "healthy" else None,
            on_done=lambda result: after_watch(module, result, logs) if p["until"] == "stable" else None)


def read_logs(module, into):
    p = module.params
    try:
        read = evidence(module, "", pm2_bin=p["pm2_bin"], pm2_home=p["pm2_home"], apps=p["apps"],
                        lines=p["log_lines"], logs_only=True)
        into.update(logs=read["logs"], pm2_error=read["pm2_error"])
    except Exception as exc:  # noqa: BLE001 - evidence never fails the rollback
        into.update(logs=[], pm2_error="the logs could not be read: %s: %s" % (type(exc).__name__, exc))


def after_watch(module, result, logs):
    """The run's last steps on the host once the watch is over and PM2 stayed stable, in this
    round trip: the log lines kept as evidence (read while the job watched), the record in the
    ledger, the lock released."""
    p = module.params
    if result.get("failed"):
        return
    if logs:
        logs["reader"].join()
        result.update(logs=logs.get("logs", []), pm2_error=logs.get("pm2_error"))
    if p["record"]:
        try:
            record = record_once(p["ledger_path"], dict(p["record"], result="succeeded"))
        except (IOError, OSError) as exc:
            result.update(failed=True, msg="the rollback could not be recorded in %s: %s" % (p["ledger_path"], exc))
            return
        result.update(record=record, recorded=True, changed=True)
        if p["release_lock"] and record.get("run_id"):
            result["lock_released"] = release(p["release_lock"], record["run_id"])[1]


def verify(module, progress):
    p = module.params
    start = time.monotonic()
    start_epoch = time.time()
    deadline = start + p["deadline"]
    # Short polls: the probe is local and cheap, and every moment healthy but not yet seen is
    # added to what the operator waits for.
    delay = 0.05
    status, version, last = None, None, ""
    # While health is not good, the restart counters are read about every second (in the
    # background: node's start-up is most of a jlist): an app that keeps restarting, or that PM2
    # gave up on, fails the gate at once rather than at the deadline.
    watch = p["crash_restarts"] > 0
    counters = start_jlist(p["pm2_bin"], p["pm2_home"]) if watch else None
    baseline, next_look = None, start + 1.0
    while True:
        status, body = probe(p["health_url"], timeout=max(1.0, min(10.0, deadline - time.monotonic())))
        version = reported_version(body) if status else None
        healthy = status is not None and 200 <= status < 300
        right_version = not p["expect_version"] or version is None or version == p["expect_version"]
        if (healthy and right_version) or not p["require_health"]:
            break
        if status is None:
            last = "no answer (%s)" % body.decode("utf-8", "replace")[:200]
        elif not healthy:
            last = "HTTP %s" % status
        else:
            last = "reports version %s, expected %s" % (version, p["expect_version"])
        if counters is not None and (isinstance(counters, OSError) or counters.poll() is not None):
            procs, _ = finish_jlist(counters, p["apps"])
            counters = None
            if procs is not None and baseline is None:
                baseline = dict((x["pm_id"], x["restarts"] or 0) for x in procs)
            elif procs is not None:
                looping = crash_looping(procs, baseline, p["crash_restarts"])
                if looping:
                    module.fail_json(
                        msg="the release crash-loops: %s, %.1f s into the health check (%s)"
                        % ("; ".join(looping), time.monotonic() - start, last),
                        status=status, version=version, unhealthy=True, crash_loop=True, processes=procs,
                    )
        if watch and counters is None and time.monotonic() >= next_look:
            counters, next_look = start_jlist(p["pm2_bin"], p["pm2_home"]), time.monotonic() + 1.0
        if time.monotonic() + delay > deadline:
            module.fail_json(
                msg="health check %s failed after %.0f s: %s" % (p["health_url"], p["deadline"], last),
                status=status, version=version, unhealthy=True,
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    elapsed = time.monotonic() - start
    if counters is not None and not isinstance(counters, OSError):
        counters.kill()
        counters.communicate()
    jlist_run = start_jlist(p["pm2_bin"], p["pm2_home"])
    # What an operator waits for: the outage is over. The watch for restarts goes on.
    progress(healthy=True, status=status, version=version, elapsed=round(elapsed, 3),
             stable_seconds=p["stable_seconds"])
    t_list = time.monotonic()
    before = pm2_list(module, jlist_run)
    list_s = time.monotonic() - t_list  # most of it node's start-up, before PM2 answers
    if not before:
        module.fail_json(msg="no PM2 apps found%s" % (" named %s" % ", ".join(p["apps"]) if p["apps"] else ""))
    down = [x["name"] for x in before if x["status"] != "online"]
    # The window counts from when PM2 started the release (since), else from healthy.
    live = start - (start_epoch - p["since"]) if 0 < p["since"] <= start_epoch else start + elapsed
    window_end = live + p["stable_seconds"]
    looked = False
    while not down and (not looked or time.monotonic() < window_end - 0.1):
        looked = True
        # Watch the counters through the window; a looping app shows up as soon as it restarts.
        # The last look is started so that PM2 answers it about when the window ends.
        time.sleep(min(0.5, max(0.0, window_end - time.monotonic() - list_s)))
        t_list = time.monotonic()
        after = pm2_list(module)
        list_s = time.monotonic() - t_list
        grown = [
            a["name"] for a in after for b in before if a["pm_id"] == b["pm_id"] and a["restarts"] > b["restarts"]
        ]
        down = [x["name"] for x in after if x["status"] != "online"] or grown
        before = after if not down else before
    if down:
        module.fail_json(
            msg="PM2 apps not stable (not online or restarting): %s" % ", ".join(sorted(set(down))),
            processes=before, unhealthy=True,
        )
    module.exit_json(changed=False, status=status, version=version, elapsed=round(elapsed, 3), processes=before)


if __name__ == "__main__":
    main()
