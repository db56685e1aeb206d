# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`pm2 jlist`, shared by the capture, inspect, apply and verify modules, and the crash-loop rule."""

from __future__ import annotations

import json
import os
import subprocess


def start_jlist(pm2_bin, pm2_home):
    """Start `pm2 jlist` in the background (node's start-up is the slowest probe); returns
    the process, or the OSError when pm2 cannot be started."""
    env = dict(os.environ)
    if pm2_home:
        env["PM2_HOME"] = pm2_home
    try:
        return subprocess.Popen([pm2_bin, "jlist"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    except OSError as exc:
        return exc


def read_jlist(proc, timeout=None):
    """(PM2's whole list as it printed it, error) from a started `pm2 jlist`; ``timeout``:
    seconds it may take (a wedged daemon), None - no bound."""
    if isinstance(proc, OSError):
        return None, str(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, "pm2 jlist did not answer within %d s (a wedged daemon?)" % timeout
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    if proc.returncode != 0:
        return None, (err or out).strip()[-300:]
    # pm2 may print a banner before the JSON when it has just started its daemon.
    start = out.find("[")
    try:
        return (json.loads(out[start:]) if start >= 0 else []), None
    except ValueError:
        return None, "pm2 jlist did not print JSON"


def summarize(raw, error, apps):
    """(processes, error) from read_jlist's answer; only ``apps`` when given."""
    if raw is None:
        return None, error
    procs = []
    for item in raw:
        env_ = item.get("pm2_env", {}) or {}
        if apps and item.get("name") not in apps:
            continue
        procs.append(
            {
                "name": item.get("name"),
                "pm_id": item.get("pm_id"),
                "status": env_.get("status"),
                "restarts": env_.get("restart_time", 0),
                "unstable_restarts": env_.get("unstable_restarts", 0),
                "exec_mode": env_.get("exec_mode"),
            }
        )
    return procs, None


def finish_jlist(proc, apps):
    """(processes, error) from a started `pm2 jlist`; only ``apps`` when given."""
    raw, error = read_jlist(proc)
    return summarize(raw, error, apps)


def jlist(pm2_bin, pm2_home, apps):
    return finish_jlist(start_jlist(pm2_bin, pm2_home), apps)


def unknown_apps(processes, apps):
    """The names in ``apps`` that match no process of ``processes`` (all of PM2's) by name or id."""
    known = set(str(x["name"]) for x in processes) | set(str(x["pm_id"]) for x in processes)
    return [a for a in apps if a != "all" and a not in known]


def crash_looping(procs, baseline, limit, allowed=0):
    """The processes (``name (id N): status, K restarts``) that restarted ``limit`` times more
    than the ``allowed`` restarts (a reload's own: 1) since ``baseline`` ({pm_id: restarts}), or
    that PM2 gave up on (errored): the one rule of the apply's reload watch and the verify's."""
    looping = []
    for x in procs:
        since = (x["restarts"] or 0) - baseline.get(x["pm_id"], 0)
        if x["status"] == "errored" or since - allowed >= limit:
            looping.append("%s (id %s): %s, %d restarts" % (x["name"], x["pm_id"], x["status"], max(0, since)))
    return looping
