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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_docker_read import evidence


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
    module.exit_json(changed=False, **evidence(module, **module.params))


if __name__ == "__main__":
    main()
