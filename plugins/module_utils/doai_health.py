# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One probe of a health URL, shared by the modules of every backend role (capture, inspect, verify).

The standard library's urllib, not ansible.module_utils.urls: the probe needs a GET and nothing
of what that module brings (it and its imports are ~0.04 s more to import on the host and
~75 KB more in every module's payload, on the path an outage waits on). What the probe
relies on is set here, not left to a default: http(s) URLs only (urllib also opens file:// and
ftp://), certificates and host names verified with the system's CAs (an explicit context:
some distributions let PYTHONHTTPSVERIFY=0 switch urllib's default off), redirects followed
for this GET as urllib does (to http(s) targets only, at most 10), the environment's proxies,
no ~/.netrc credentials; credentials in the URL itself are sent to that URL only.
tests/unit/test_health_probe.py holds each of these against real servers."""

from __future__ import annotations

import base64
import json
import ssl
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import HTTPRedirectHandler, HTTPSHandler, Request, build_opener

_OPENER = None


class _Redirects(HTTPRedirectHandler):
    """urllib's redirects, but to http(s) only (urllib would follow one to ftp:// too)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme not in ("http", "https"):
            return None  # urllib then raises the 3xx as an HTTPError: not healthy
        return HTTPRedirectHandler.redirect_request(self, req, fp, code, msg, headers, newurl)


def _opener():
    global _OPENER
    if _OPENER is None:
        _OPENER = build_opener(HTTPSHandler(context=ssl.create_default_context()), _Redirects())
    return _OPENER


def _request(parts):
    """The GET of ``parts``; credentials in the URL (user:password@) become a basic
    Authorization header that is not sent on to a redirect's target (as open_url sent them)."""
    req = Request(urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])),
                  headers={"User-Agent": "doai-rollback-health"})
    if parts.username is not None:
        pair = "%s:%s" % (unquote(parts.username), unquote(parts.password or ""))
        req.add_unredirected_header("Authorization", "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii"))
    return req


def probe(url, timeout):
    """(HTTP status, body) of ``url``; (None, reason) when nothing answers HTTP."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return None, b"not an http(s) URL"
    try:
        req = _request(parts)
        resp = _opener().open(req, timeout=timeout)
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
