# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One probe of a health URL, shared by the modules of every backend role (capture, inspect, verify)."""

from __future__ import annotations

import json

from ansible.module_utils.urls import open_url
from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError


def probe(url, timeout):
    """(HTTP status, body) of ``url``; (None, reason) when nothing answers HTTP."""
    try:
        resp = open_url(url, timeout=timeout, validate_certs=True, follow_redirects="safe")
        return resp.getcode(), resp.read(65536)
    except HTTPError as exc:
        try:
            body = exc.read(65536)
        except Exception:
            body = b""
        return exc.code, body
    except (URLError, OSError, ValueError) as exc:
        return None, str(exc).encode()
    except Exception as exc:  # an answer that is not HTTP (an SSH banner, TLS on HTTP, ...)
        return None, ("%s: %s" % (type(exc).__name__, exc)).encode()


def reported_version(body):
    """The "version" a JSON health body reports, or None."""
    try:
        data = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return None
    if isinstance(data, dict):
        version = data.get("version")
        return version if isinstance(version, str) else None
    return None
