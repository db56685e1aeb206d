# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only helpers of the diagnose modules: the tail of a log file, the names an environment
sets, and the scrubbing of secret values out of text before it leaves the host."""

from __future__ import annotations

import os

# What is secret and how text is scrubbed: the one rule, shared with the controller.
from ansible_collections.doai.rollback.plugins.module_utils.doai_secrets import REDACTED, is_secret_name, scrub, secret_values  # noqa: F401


def tail(path, lines, max_bytes=4 * 1024 * 1024):
    """The last ``lines`` lines of a file (reads at most ``max_bytes`` from its end):
    (text, error)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except (OSError, IOError) as exc:
        return "", "%s: %s" % (path, exc.strerror or exc)
    text = data.decode("utf-8", "replace")
    if start > 0:
        text = text.split("\n", 1)[-1]
    kept = text.splitlines()[-lines:] if lines > 0 else []
    return "\n".join(kept), None


def proc_environ(pid):
    """The environment a running process started with (/proc/PID/environ): dict, or None when
    it cannot be read."""
    try:
        with open("/proc/%d/environ" % int(pid), "rb") as fh:
            raw = fh.read()
    except (OSError, IOError, ValueError, TypeError):
        return None
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    return env


def set_names(env):
    """The names ``env`` sets to a non-empty value (never the values)."""
    return sorted(k for k, v in env.items() if v not in (None, ""))
