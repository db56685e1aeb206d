#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only evidence for `doai-rollback diagnose api-errors` on a Docker host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_docker_diagnose
short_description: Read a Compose service's container logs, environment names, health and live image
description:
  - Reads `docker logs --tail N` of the service's container, which of the required environment
    variables its configuration (docker inspect, Config.Env) sets, one probe of the health URL
    and the image the container runs.
  - Returns variable names only, never values; the values of secret-named variables are
    replaced by *** in the log lines before they leave the host.
  - Never changes anything.
options:
  docker_bin: {description: "docker executable.", type: str, default: docker}
  docker_host: {description: "DOCKER_HOST (empty = docker's default).", type: str, default: ''}
  project_dir: {description: "The Compose project's directory.", type: path, required: true}
  service: {description: "The backend's Compose service.", type: str, required: true}
  health_url: {description: "Health URL probed once (empty = not probed).", type: str, default: ''}
  lines: {description: "Lines of the container's log to read.", type: int, default: 200}
  required_env: {description: "Environment variable names the app needs.", type: list, elements: str, default: []}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: The container's logs, its environment's variable names, health and live image
  doai.rollback.doai_backend_docker_diagnose:
    project_dir: /srv/doai
    service: api
    health_url: http://127.0.0.1:3000/api/health
    lines: 200
    required_env: [DATABASE_URL, JWT_SECRET]
"""

RETURN = r"""
image_id: {description: "The image id the container runs, or null.", type: str, returned: always}
version: {description: "The image's version label (org.opencontainers.image.version), or null.", type: str, returned: always}
processes: {description: "The container: name, status, pid, restarts, env_source, missing_env.", type: list, returned: always}
logs: {description: "One entry: kind container, text (scrubbed), error.", type: list, returned: always}
docker_error: {description: "Why docker could not be read, or null.", type: str, returned: always}
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_diagnose import scrub, secret_values, set_names
from ansible_collections.doai.rollback.plugins.module_utils.doai_docker import VERSION_LABELS, Docker, DockerError
from ansible_collections.doai.rollback.plugins.module_utils.doai_health import probe, reported_version


def _inspect(docker, container_id):
    _, out, _ = docker.run(["inspect", container_id], kind="docker_unavailable")
    try:
        return (json.loads(out) or [{}])[0]
    except (ValueError, IndexError):
        raise DockerError("docker inspect answered no JSON", "docker_unavailable")


def _env_of(inspected):
    env = {}
    for item in (inspected.get("Config") or {}).get("Env") or []:
        k, _, v = item.partition("=")
        env[k] = v
    return env


def main():
    module = AnsibleModule(
        argument_spec=dict(
            docker_bin=dict(type="str", default="docker"), docker_host=dict(type="str", default=""),
            project_dir=dict(type="path", required=True), service=dict(type="str", required=True),
            health_url=dict(type="str", default=""), lines=dict(type="int", default=200),
            required_env=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    docker = Docker(module, p["docker_bin"], p["docker_host"], project_dir=p["project_dir"], service=p["service"])
    image_id = version = error = None
    processes, logs = [], []
    try:
        c = docker.container()
        if c is None:
            error = "no container for service %s in %s" % (p["service"], p["project_dir"])
        else:
            inspected = _inspect(docker, c["id"])
            env = _env_of(inspected)
            secrets = secret_values(env)
            image_id = c.get("image")
            labels = (inspected.get("Config") or {}).get("Labels") or {}
            version = next((labels[k] for k in VERSION_LABELS if labels.get(k)), None)
            present = set(set_names(env))
            processes.append({"name": c.get("name"), "pm_id": None, "status": c.get("status"),
                              "pid": (inspected.get("State") or {}).get("Pid"), "restarts": c.get("restart_count"),
                              "env_source": "container",
                              "missing_env": [n for n in p["required_env"] if n not in present]})
            text = docker.logs(c["id"], p["lines"])
            logs.append({"app": c.get("name"), "pm_id": None, "kind": "container", "path": None,
                         "text": scrub(text, secrets), "error": None})
    except DockerError as exc:
        error = str(exc)
        secrets = []
    status, body = probe(p["health_url"], timeout=5) if p["health_url"] else (None, b"")
    module.exit_json(
        changed=False, image_id=image_id, version=version, processes=processes, logs=logs, docker_error=error,
        health_status=status, health_version=reported_version(body) if status is not None else None,
        health_body=scrub(body.decode("utf-8", "replace")[:300], secrets),
    )


if __name__ == "__main__":
    main()
