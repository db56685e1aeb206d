# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The read-only evidence of an agent PC (POSIX): per user whether the agent runs and the last
lines of its log, and a TCP connect to the backend's Socket.IO port. The diagnose module's, and
the observe of doai_agent_posix when the whole-system checklist asks for the log lines."""

from __future__ import annotations

import errno
import os
import re
import socket

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


def bad_names(users, folder_name, pid_file, log_file, local_path):
    """What is not a plain name (or a relative path without '..') among the read's inputs."""
    bad = [u for u in users if not LEAF_RE.match(u)]
    for name, value in (("folder_name", folder_name), ("pid_file", pid_file)):
        if not LEAF_RE.match(value):
            bad.append("%s %r" % (name, value))
    if log_file and not LEAF_RE.match(log_file):
        bad.append("log_file %r" % log_file)
    if os.path.isabs(local_path) or ".." in local_path.split("/"):
        bad.append("local_path %r" % local_path)
    return bad


def evidence(profiles_root, local_path, folder_name, users, pid_file, log_file, lines,
             socketio_host="", socketio_port=3001, timeout=5):
    """``{"tcp": ..., "users": [...]}``: per user (``users``, else every profile with the agent
    folder) whether the agent runs and the last ``lines`` of its log, scrubbed of the running
    agent's secret values; nothing followed out of the profile. ValueError on a bad name."""
    bad = bad_names(users, folder_name, pid_file, log_file, local_path)
    if bad:
        raise ValueError("not a plain name: %s" % ", ".join(bad))
    try:
        found = sorted(os.listdir(profiles_root))
    except OSError:
        found = []
    users = users or [u for u in found if os.path.isdir(os.path.join(profiles_root, u, local_path, folder_name))]
    out = []
    for user in users:
        root = os.path.join(profiles_root, user, local_path, folder_name)
        if os.path.islink(root) or not os.path.isdir(root):
            out.append({"user": user, "folder": False, "running": False, "pid": None, "log": None,
                        "log_error": "no agent folder %s" % root})
            continue
        pid = _pid(root, pid_file)
        log, log_error = _tail(root, log_file, lines)
        if log:
            log = scrub(log, secret_values(proc_environ(pid) or {}) if pid else ())
        out.append({"user": user, "folder": True, "running": pid is not None, "pid": pid, "log": log,
                    "log_error": log_error})
    return {"tcp": _tcp(socketio_host, socketio_port, timeout), "users": out}
