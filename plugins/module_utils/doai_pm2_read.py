# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The read-only reads of a PM2 backend: its status (the inspect module's) and its evidence (the
diagnose module's); the capture module makes them too when the checklist asks (doai_checklist)."""

from __future__ import annotations

import json
import os

from ansible_collections.doai.rollback.plugins.module_utils.doai_checkout import Checkout
from ansible_collections.doai.rollback.plugins.module_utils.doai_diagnose import proc_environ, scrub, secret_values, set_names, tail
from ansible_collections.doai.rollback.plugins.module_utils.doai_health import probe, reported_version
from ansible_collections.doai.rollback.plugins.module_utils.doai_lock import holder_of
from ansible_collections.doai.rollback.plugins.module_utils.doai_pm2 import finish_jlist, read_jlist, start_jlist, summarize
from ansible_collections.doai.rollback.plugins.module_utils.doai_proc import pid_alive


def status(module, path, git_bin="git", pm2_bin="pm2", pm2_home="", apps=(), log_count=5, health_url="", lock_path=None,
           jlist=None):
    """The live commit, branch, working tree, last commits, PM2 processes, health and who holds
    the host lock. Fails (module.fail_json) when ``path`` is not the top of a checkout.
    ``jlist``: a function giving the answer of a `pm2 jlist` shared with :func:`evidence`."""
    co = Checkout(module, path, git_bin).require_top()
    pm2 = start_jlist(pm2_bin, pm2_home) if jlist is None else None
    current = co.head()
    code, body = probe(health_url, timeout=5) if health_url else (None, b"")
    processes, pm2_error = finish_jlist(pm2, list(apps)) if jlist is None else summarize(*jlist(), apps=list(apps))
    return dict(
        current=current,
        current_short=current[:12],
        current_version=co.version_at(current),
        branch=co.branch(),
        dirty=co.dirty(),
        recent=co.recent(log_count),
        processes=processes,
        pm2_error=pm2_error,
        health_status=code,
        health_version=reported_version(body) if code is not None else None,
        host_lock=holder_of(lock_path) if lock_path else None,
    )


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


def daemon_running(pm2_home):
    """Whether the PM2 daemon of ``pm2_home`` runs (read from its pid file; starts nothing)."""
    return _daemon_pid(pm2_home) is not None


def _jlist(pm2_bin, pm2_home, timeout=30):
    if _daemon_pid(pm2_home) is None:
        return None, "the PM2 daemon is not running (PM2_HOME %s): not started by this check" % (pm2_home or "default")
    return read_jlist(start_jlist(pm2_bin, pm2_home), timeout)


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


def evidence(module, path, git_bin="git", pm2_bin="pm2", pm2_home="", apps=(), health_url="", lines=200,
             required_env=(), logs_only=False, jlist=None):
    """The PM2 processes with the names their environment lacks (never values), the last
    ``lines`` of their logs scrubbed of secret values, and (unless ``logs_only``) one health
    probe and the live commit. Never starts a PM2 daemon itself. ``jlist``: a function giving
    the answer of a `pm2 jlist` shared with :func:`status` (read in the same module call)."""
    raw, pm2_error = _jlist(pm2_bin, pm2_home) if jlist is None else jlist()
    processes, logs, secrets, seen_paths = [], [], set(), set()
    for item in raw or []:
        if apps and item.get("name") not in apps:
            continue
        pm2_env = item.get("pm2_env") or {}
        env, source = _process_env(item)
        secrets.update(secret_values(env))
        present = set(set_names(env))
        processes.append({
            "name": item.get("name"), "pm_id": item.get("pm_id"), "status": pm2_env.get("status"),
            "pid": item.get("pid"), "restarts": pm2_env.get("restart_time", 0), "env_source": source,
            "missing_env": [n for n in required_env if n not in present],
        })
        for kind, key in (("out", "pm_out_log_path"), ("err", "pm_err_log_path")):
            log_path = pm2_env.get(key)
            if not log_path or log_path in seen_paths or log_path == "/dev/null":
                continue
            seen_paths.add(log_path)
            logs.append({"app": item.get("name"), "pm_id": item.get("pm_id"), "kind": kind, "path": log_path})
    ordered = sorted(secrets, key=len, reverse=True)
    for entry in logs:
        text, error = tail(entry["path"], lines)
        entry["text"], entry["error"] = scrub(text, ordered), error
    if logs_only:
        return dict(processes=processes, logs=logs, pm2_error=pm2_error)
    code, body = probe(health_url, timeout=5) if health_url else (None, b"")
    commit, version, release_error = _release(module, path, git_bin)
    return dict(
        commit=commit, version=version, release_error=release_error,
        processes=processes, logs=logs, pm2_error=pm2_error,
        health_status=code, health_version=reported_version(body) if code is not None else None,
        health_body=scrub(body.decode("utf-8", "replace")[:300], ordered),
    )
