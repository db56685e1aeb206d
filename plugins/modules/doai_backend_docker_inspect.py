#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_docker_inspect
short_description: Read the backend's image tags, container, health and host lock (changes nothing)
description:
  - For C(doai-rollback backend status) on Docker hosts - the image ids behind the current,
    previous and rollback tags, the service's container (the image it runs, state, restarts),
    health and the version it reports, and the host lock.
options:
  image: {description: "Repository with its registry prefix.", type: str, required: true}
  tags: {description: "Tags to read (current first).", type: list, elements: str, required: true}
  docker_bin: {description: "The docker client.", type: str, default: docker}
  docker_host: {description: "DOCKER_HOST; empty for the default.", type: str, default: ""}
  project_dir: {description: "The Compose project directory.", type: path, required: true}
  service: {description: "The Compose service.", type: str, required: true}
  health_url: {description: "Health URL probed from the host.", type: str, required: true}
  lock_path: {description: "The host lock directory.", type: path, required: true}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Inspect
  doai.rollback.doai_backend_docker_inspect:
    image: registry.example.com/doai-backend
    tags: [current, previous, rollback]
    project_dir: /opt/doai-backend
    service: backend
    health_url: http://localhost:3001/api/health
    lock_path: /var/lib/doai-rollback/backend.lock
"""

RETURN = r"""
images: {description: "tag -> {id, version} (null when absent).", type: dict, returned: always}
container: {description: "The service's container.", type: dict, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_docker_read import status


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="str", required=True), tags=dict(type="list", elements="str", required=True),
            docker_bin=dict(type="str", default="docker"), docker_host=dict(type="str", default=""),
            project_dir=dict(type="path", required=True), service=dict(type="str", required=True),
            health_url=dict(type="str", required=True), lock_path=dict(type="path", required=True),
        ),
        supports_check_mode=True,
    )
    module.exit_json(changed=False, **status(module, **module.params))


if __name__ == "__main__":
    main()
