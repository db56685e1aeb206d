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
  - Changes nothing. Skipped in check mode.
options:
  health_url: {description: URL probed from the host., type: str, required: true}
  deadline: {description: Seconds to wait for health., type: float, default: 60}
  expect_version: {description: Version the health body must report (empty = any)., type: str, default: ''}
  stable_seconds: {description: Seconds the PM2 restart counters must stay still., type: float, default: 3}
  require_health:
    description:
      - When false, the health URL is probed once and reported but not required to be 2xx
        (undo returns to a state that may have been unhealthy); PM2 must still be stable.
    type: bool
    default: true
  pm2_bin: {description: pm2 executable., type: str, default: pm2}
  pm2_home: {description: PM2_HOME for pm2 calls., type: str, default: ''}
  apps: {description: PM2 apps that must be online (empty = all)., type: list, elements: str, default: []}
author: doai-ansible contributors
"""

RETURN = r"""
status: {description: Last HTTP status of the health URL., type: int, returned: always}
version: {description: Version the health body reported., type: str, returned: when reported}
elapsed: {description: Seconds until healthy., type: float, returned: always}
processes: {description: PM2 processes after the window., type: list, returned: always}
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.doai_pm2 import jlist
from ansible.module_utils.urls import open_url
from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError


def probe(url, timeout):
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
    try:
        data = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return None
    if isinstance(data, dict):
        v = data.get("version")
        return v if isinstance(v, str) else None
    return None


def pm2_list(module):
    p = module.params
    procs, error = jlist(p["pm2_bin"], p["pm2_home"], p["apps"])
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
        ),
        supports_check_mode=True,
    )
    p = module.params
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, msg="health gate not run in check mode")

    start = time.monotonic()
    deadline = start + p["deadline"]
    delay = 0.1
    status, version, last = None, None, ""
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
        if time.monotonic() + delay > deadline:
            module.fail_json(
                msg="health check %s failed after %.0f s: %s" % (p["health_url"], p["deadline"], last),
                status=status, version=version, unhealthy=True,
            )
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    elapsed = time.monotonic() - start

    before = pm2_list(module)
    if not before:
        module.fail_json(msg="no PM2 apps found%s" % (" named %s" % ", ".join(p["apps"]) if p["apps"] else ""))
    down = [x["name"] for x in before if x["status"] != "online"]
    window_end = time.monotonic() + p["stable_seconds"]
    while not down and time.monotonic() < window_end:
        # Watch the counters through the window; a looping app shows up as soon as it restarts.
        time.sleep(min(0.5, max(0.0, window_end - time.monotonic())))
        after = pm2_list(module)
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
