#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_docker_prepare
short_description: Pull the image a Docker rollback would go to, ahead of time
description:
  - Resolves the target as a rollback would (C(target), else the previous tag) and pulls it, so
    that a later rollback's pull is a no-op. Changes no tag the service uses, nor the container;
    takes no host lock. In check mode the tag is resolved from the registry's manifest only.
options:
  image: {description: "Repository with its registry prefix.", type: str, required: true}
  previous_tag: {description: "The default target tag.", type: str, default: previous}
  target: {description: "A tag or sha256 image id; empty for previous_tag.", type: str, default: ""}
  docker_bin: {description: "The docker client.", type: str, default: docker}
  docker_host: {description: "DOCKER_HOST; empty for the default.", type: str, default: ""}
  insecure_registry: {description: "Plain HTTP to the registry for check mode (always for a loopback one).", type: bool, default: false}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Prepare
  doai.rollback.doai_backend_docker_prepare:
    image: registry.example.com/doai-backend
"""

RETURN = r"""
status: {description: "prepared, already_prepared or would_prepare.", type: str, returned: success}
target: {description: "The target's image id.", type: str, returned: success}
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_docker import IMAGE_ID_RE, REPO_RE, TAG_RE, Docker, DockerError, registry_is_loopback


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="str", required=True), previous_tag=dict(type="str", default="previous"),
            target=dict(type="str", default=""), docker_bin=dict(type="str", default="docker"),
            docker_host=dict(type="str", default=""), insecure_registry=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    target = p["target"] or p["previous_tag"]
    if not REPO_RE.match(p["image"]) or not (IMAGE_ID_RE.match(target) or TAG_RE.match(target)):
        module.fail_json(msg="image %r / target %r: not a repository and a tag or image id; nothing was changed"
                         % (p["image"], target), invalid_target=True)
    docker = Docker(module, p["docker_bin"], p["docker_host"],
                    insecure_registry=p["insecure_registry"] or registry_is_loopback(p["image"]))
    ref = target if IMAGE_ID_RE.match(target) else "%s:%s" % (p["image"], target)
    rule = "--to" if p["target"] else "the %r tag (the runbook's default)" % p["previous_tag"]
    t0 = time.monotonic()
    try:
        before = docker.image(ref)
        if IMAGE_ID_RE.match(target):
            if before is None:
                module.fail_json(msg="image %s is not on this host (an id cannot be pulled)" % ref, not_found=True)
            module.exit_json(changed=False, status="already_prepared", target=before["id"], target_ref=ref,
                             target_version=before["version"], rule=rule, seconds=0.0)
        if module.check_mode:
            remote = docker.remote_id(ref)
            have = before is not None and before["id"] == remote
            module.exit_json(changed=not have, status="already_prepared" if have else "would_prepare", target=remote,
                             target_ref=ref, target_version=before["version"] if have else None, rule=rule,
                             seconds=round(time.monotonic() - t0, 2))
        docker.pull(ref)
        after = docker.image(ref)
    except DockerError as exc:
        module.fail_json(msg="%s; nothing the service uses was changed" % exc, **{exc.kind: True})
    fresh = before is None or before["id"] != after["id"]
    module.exit_json(changed=fresh, status="prepared" if fresh else "already_prepared", target=after["id"],
                     target_ref=ref, target_version=after["version"], rule=rule,
                     seconds=round(time.monotonic() - t0, 2))


if __name__ == "__main__":
    main()
