#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only evidence for `doai-rollback diagnose agent-connection` on a POSIX agent PC."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_agent_diagnose
short_description: Whether a PC reaches the backend's Socket.IO port, and its agents per user
description:
  - Opens (and closes at once) a TCP connection from the PC to the backend's Socket.IO host
    and port, as the agent would.
  - Per user profile with the agent folder, whether the agent runs (its pid file names a live
    process) and the last lines of its log file. Nothing is followed out of the profile
    (symbolic links are not opened).
  - The log lines are scrubbed on the PC before they leave it (module_utils doai_secrets - the
    values of the running agent's secret-named variables, secret-named keys and their values,
    passwords in URLs, JWTs, bearer tokens).
  - Never changes anything.
options:
  profiles_root: {description: "Directory holding the user profiles.", type: path, required: true}
  local_path: {description: "The agent folder's parent, relative to a profile.", type: str, required: true}
  folder_name: {description: "The agent folder's name.", type: str, default: DoAi-Desktop-Agent}
  users: {description: "Users to read (empty = every profile with the agent folder).", type: list, elements: str, default: []}
  pid_file: {description: "The agent's pid file, relative to the agent folder.", type: str, default: agent.pid}
  log_file: {description: "The agent's log file, relative to the agent folder (empty = not read).", type: str, default: agent.log}
  lines: {description: "Lines of the log to read (0 = none).", type: int, default: 50}
  socketio_host: {description: "The backend's Socket.IO host (empty = not checked).", type: str, default: ''}
  socketio_port: {description: "Its port.", type: int, default: 3001}
  timeout: {description: "Seconds the TCP connect may take.", type: float, default: 5}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Read the agents and connect to the backend's Socket.IO port
  doai.rollback.doai_agent_diagnose:
    profiles_root: /home
    local_path: .local/share
    socketio_host: api.example.internal
    socketio_port: 3001
"""

RETURN = r"""
tcp: {description: "host, port, ok, error (null when not checked).", type: dict, returned: always}
users: {description: "Per user: user, folder, running, pid, log (last lines, scrubbed), log_error.", type: list, returned: always}
"""

import errno
import os
import re
import socket

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_diagnose import proc_environ
from ansible_collections.doai.rollback.plugins.module_utils.doai_secrets import scrub, secret_values

LEAF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")


def _read_nofollow(path, max_bytes):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - max_bytes))
        return fh.read(), size > max_bytes


def _pid(root, pid_file):
    try:
        data, _ = _read_nofollow(os.path.join(root, pid_file), 64)
        pid = int(data.decode("ascii", "replace").strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return pid if exc.errno == errno.EPERM else None
    return pid


def _tail(root, log_file, lines):
    if not log_file or lines <= 0:
        return None, None
    try:
        data, cut = _read_nofollow(os.path.join(root, log_file), 1024 * 1024)
    except OSError as exc:
        return None, "%s: %s" % (log_file, exc.strerror or exc)
    text = data.decode("utf-8", "replace")
    if cut:
        text = text.split("\n", 1)[-1]
    return "\n".join(text.splitlines()[-lines:]), None


def _tcp(host, port, timeout):
    if not host:
        return None
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
    except (OSError, socket.timeout) as exc:
        return {"host": host, "port": port, "ok": False, "error": str(exc) or type(exc).__name__}
    conn.close()
    return {"host": host, "port": port, "ok": True, "error": None}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            profiles_root=dict(type="path", required=True), local_path=dict(type="str", required=True),
            folder_name=dict(type="str", default="DoAi-Desktop-Agent"),
            users=dict(type="list", elements="str", default=[]),
            pid_file=dict(type="str", default="agent.pid"), log_file=dict(type="str", default="agent.log"),
            lines=dict(type="int", default=50), socketio_host=dict(type="str", default=""),
            socketio_port=dict(type="int", default=3001), timeout=dict(type="float", default=5),
        ),
        supports_check_mode=True,
    )
    p = module.params
    bad = [u for u in p["users"] if not LEAF_RE.match(u)]
    for name in ("folder_name", "pid_file"):
        if not LEAF_RE.match(p[name]):
            bad.append("%s %r" % (name, p[name]))
    if p["log_file"] and not LEAF_RE.match(p["log_file"]):
        bad.append("log_file %r" % p["log_file"])
    if os.path.isabs(p["local_path"]) or ".." in p["local_path"].split("/"):
        bad.append("local_path %r" % p["local_path"])
    if bad:
        module.fail_json(msg="not a plain name: %s" % ", ".join(bad), invalid_target=True)
    root_all = p["profiles_root"]
    try:
        found = sorted(os.listdir(root_all))
    except OSError:
        found = []
    users = p["users"] or [u for u in found if os.path.isdir(os.path.join(root_all, u, p["local_path"], p["folder_name"]))]
    out = []
    for user in users:
        root = os.path.join(root_all, user, p["local_path"], p["folder_name"])
        if os.path.islink(root) or not os.path.isdir(root):
            out.append({"user": user, "folder": False, "running": False, "pid": None, "log": None,
                        "log_error": "no agent folder %s" % root})
            continue
        pid = _pid(root, p["pid_file"])
        log, log_error = _tail(root, p["log_file"], p["lines"])
        if log:
            log = scrub(log, secret_values(proc_environ(pid) or {}) if pid else ())
        out.append({"user": user, "folder": True, "running": pid is not None, "pid": pid, "log": log,
                    "log_error": log_error})
    module.exit_json(changed=False, tcp=_tcp(p["socketio_host"], p["socketio_port"], p["timeout"]), users=out)


if __name__ == "__main__":
    main()
