# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only helpers of the diagnose modules: the tail of a log file, the names an environment
sets, and the scrubbing of secret values out of text before it leaves the host."""

from __future__ import annotations

import os
import re

# The same rule as doai_ansible.settings.is_secret_env_name: a name that says it holds a secret.
SECRET_NAME_RE = re.compile(
    r"TOKEN|PASSWORD|PASSWD|PASSPHRASE|SECRET|DATABASE_URL|_DB_URL|PRIVATE_KEY|API_KEY|WEBHOOK|(?<!_ASK)_PASS$|"
    r"_KEY$|CREDENTIAL|DSN$", re.IGNORECASE)
_FILE_NAME_RE = re.compile(r"_(FILE|PATH)$", re.IGNORECASE)
# Credentials in a URL (scheme://user:password@host): the password part, whatever the name.
_URL_PASSWORD_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)([^@\s/]+)(@)", re.IGNORECASE)
REDACTED = "***"


def is_secret_name(name):
    return bool(SECRET_NAME_RE.search(name)) and not _FILE_NAME_RE.search(name)


def secret_values(env):
    """The values of ``env`` (a dict) held by secret-named variables, longest first (a value
    that contains another is replaced whole); values shorter than 4 characters are left out
    (scrubbing "1" would garble every line)."""
    vals = set(str(v) for k, v in env.items() if is_secret_name(str(k)) and v is not None and len(str(v)) >= 4)
    return sorted(vals, key=len, reverse=True)


def scrub(text, values):
    for v in values:
        text = text.replace(v, REDACTED)
    return _URL_PASSWORD_RE.sub(r"\1" + REDACTED + r"\3", text)


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
