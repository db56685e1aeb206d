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

import json
import os
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_checkout import Checkout
from ansible_collections.doai.rollback.plugins.module_utils.doai_diagnose import proc_environ, scrub, secret_values, set_names, tail
from ansible_collections.doai.rollback.plugins.module_utils.doai_health import probe, reported_version
from ansible_collections.doai.rollback.plugins.module_utils.doai_proc import pid_alive


def _daemon_pid(pm2_home):
    """The PM2 daemon's pid when it runs, else None: any pm2 command would start a daemon, and
    a diagnosis changes nothing."""
    home = pm2_home or os.environ.get("PM2_HOME") or os.path.join(os.path.expanduser("~"), ".pm2")
    try:
        with open(os.path.join(home, "pm2.pid")) as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def _jlist(pm2_bin, pm2_home, timeout=30):
    env = dict(os.environ)
    if pm2_home:
        env["PM2_HOME"] = pm2_home
    if _daemon_pid(pm2_home) is None:
        return None, "the PM2 daemon is not running (PM2_HOME %s): not started by this check" % (pm2_home or "default")
    try:
        proc = subprocess.Popen([pm2_bin, "jlist"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    except OSError as exc:
        return None, str(exc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, "pm2 jlist did not answer within %d s (a wedged daemon?)" % timeout
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    if proc.returncode != 0:
        return None, (err or out).strip()[-300:]
    start = out.find("[")
    try:
        return (json.loads(out[start:]) if start >= 0 else []), None
    except ValueError:
        return None, "pm2 jlist did not print JSON"


def _pm2_record(pm2_env):
    """The variables PM2 gives an app: its ``env`` and the string entries of its record."""
    env = dict((pm2_env or {}).get("env") or {})
    env.update({k: v for k, v in (pm2_env or {}).items() if isinstance(v, str)})
    return env


def _process_env(item):
    """(environment, source) of one PM2 process: the running process's own (/proc/PID/environ;
    in cluster mode PM2 hands the app's variables over in the ``pm2_env`` JSON there, which the
    worker sets before the app starts), else PM2's record of it."""
    pid = item.get("pid")
    env = proc_environ(pid) if pid else None
    if env is None:
        return _pm2_record(item.get("pm2_env")), "pm2"
    if env.get("pm2_env"):
        try:
            handed = json.loads(env["pm2_env"])
        except ValueError:
            handed = None
        if isinstance(handed, dict):
            env.update(_pm2_record(handed))
    env.pop("pm2_env", None)
    return env, "process"


def _release(module, path, git_bin):
    if not os.path.isdir(path):
        return None, None, "%s: no such directory" % path
    co = Checkout(module, path, git_bin)
    if not co.is_top():
        return None, None, "%s is not the top of a git checkout" % path
    commit = co.head()
    return commit, co.version_at(commit), None


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
    p = module.params
    raw, pm2_error = _jlist(p["pm2_bin"], p["pm2_home"])
    processes, logs, secrets, seen_paths = [], [], set(), set()
    for item in raw or []:
        if p["apps"] and item.get("name") not in p["apps"]:
            continue
        pm2_env = item.get("pm2_env") or {}
        env, source = _process_env(item)
        secrets.update(secret_values(env))
        present = set(set_names(env))
        processes.append({
            "name": item.get("name"), "pm_id": item.get("pm_id"), "status": pm2_env.get("status"),
            "pid": item.get("pid"), "restarts": pm2_env.get("restart_time", 0), "env_source": source,
            "missing_env": [n for n in p["required_env"] if n not in present],
        })
        for kind, key in (("out", "pm_out_log_path"), ("err", "pm_err_log_path")):
            path = pm2_env.get(key)
            if not path or path in seen_paths or path == "/dev/null":
                continue
            seen_paths.add(path)
            logs.append({"app": item.get("name"), "pm_id": item.get("pm_id"), "kind": kind, "path": path})
    ordered = sorted(secrets, key=len, reverse=True)
    for entry in logs:
        text, error = tail(entry["path"], p["lines"])
        entry["text"], entry["error"] = scrub(text, ordered), error
    if p["logs_only"]:
        module.exit_json(changed=False, processes=processes, logs=logs, pm2_error=pm2_error)
    status, body = probe(p["health_url"], timeout=5) if p["health_url"] else (None, b"")
    commit, version, release_error = _release(module, p["path"], p["git_bin"])
    module.exit_json(
        changed=False, commit=commit, version=version, release_error=release_error,
        processes=processes, logs=logs, pm2_error=pm2_error,
        health_status=status, health_version=reported_version(body) if status is not None else None,
        health_body=scrub(body.decode("utf-8", "replace")[:300], ordered),
    )


if __name__ == "__main__":
    main()
