#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_docker_capture
short_description: Take the host lock, capture the live image and plan a Docker rollback
description:
  - One round trip. Takes the host lock (the collection's doai_lock; in check mode only checks it), then
    reads the image id behind C(IMAGE:current), the service's container and health, and resolves
    the target to an image id - the pinned one, C(--to sha256:ID) (a local image), or a tag
    (C(previous) by default). In check mode the tag is resolved from the registry's manifest
    without pulling; otherwise the tag is pulled here, while the current container still serves,
    so that a pull that fails changes nothing.
  - Refuses before any change, releasing the lock, with a result key saying why - C(locked),
    C(invalid_target), C(no_current), C(not_found), C(drifted), C(pull_failed), C(registry_failed),
    C(docker_unavailable), C(compose_unavailable).
options:
  lock_path: {description: "The host lock directory.", type: path, required: true}
  run_id: {description: "This run's id.", type: str, required: true}
  owner: {description: "Who holds the lock.", type: str, default: ""}
  reason: {description: "Why (in the lock).", type: str, default: ""}
  lock_ttl: {description: "Seconds after which a lock is stale.", type: int, default: 3600}
  plan_only: {description: "Check the lock, do not take it; resolve tags without pulling.", type: bool, default: false}
  resume: {description: "Resume this run (the live image may be the pinned from or to).", type: bool, default: false}
  image: {description: "Repository with its registry prefix.", type: str, required: true}
  current_tag: {description: "The tag the service runs.", type: str, default: current}
  previous_tag: {description: "The default target tag.", type: str, default: previous}
  rollback_tag: {description: "The tag that keeps the replaced image.", type: str, default: rollback}
  target: {description: "A tag or sha256 image id; empty for previous_tag.", type: str, default: ""}
  pin_from: {description: "The confirmed plan's from image id.", type: str, default: ""}
  pin_to: {description: "The confirmed plan's to image id.", type: str, default: ""}
  pin_ref: {description: "The IMAGE:TAG the plan resolved pin_to from (pulled when pin_to is not on the host).", type: str, default: ""}
  docker_bin: {description: "The docker client.", type: str, default: docker}
  docker_host: {description: "DOCKER_HOST for every call; empty for the default.", type: str, default: ""}
  insecure_registry: {description: "Plain HTTP to the registry (always for a loopback registry).", type: bool, default: false}
  project_dir: {description: "The Compose project directory.", type: path, required: true}
  project_name: {description: "Compose project name; empty for Compose's default.", type: str, default: ""}
  compose: {description: "auto (v2 plugin preferred), v2 or v1.", type: str, default: auto}
  compose_v1_bin: {description: "The docker-compose (v1) executable.", type: str, default: docker-compose}
  service: {description: "The Compose service.", type: str, required: true}
  health_url: {description: "Health URL probed from the host.", type: str, required: true}
  read_status:
    description:
      - Also read the host's status for the whole-system checklist (what doai_backend_docker_inspect
        returns), after the inputs are checked and before the lock; returned in C(checklist.status),
        or its cause in C(checklist.status_error). A read that fails never stops the plan.
    type: bool
    default: false
  read_lines:
    description:
      - Also read the last I(read_lines) lines of the container's log for the checklist (what
        doai_backend_docker_diagnose returns); returned in C(checklist.evidence), or its cause in
        C(checklist.evidence_error). 0 reads none.
    type: int
    default: 0
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Capture
  doai.rollback.doai_backend_docker_capture:
    lock_path: /var/lib/doai-rollback/backend.lock
    run_id: manual-1
    image: registry.example.com/doai-backend
    project_dir: /opt/doai-backend
    service: backend
    health_url: http://localhost:3001/api/health
"""

RETURN = r"""
current: {description: "Image id behind IMAGE:current_tag.", type: str, returned: success}
target: {description: "Image id to roll back to.", type: str, returned: success}
target_ref: {description: "The tag or id it was resolved from.", type: str, returned: success}
changes: {description: "Whether the rollback has anything to do.", type: bool, returned: success}
container: {description: "The service's container (id, image, running, restart_count...).", type: dict, returned: success}
checklist:
  description: "What I(read_status) and I(read_lines) read (status, evidence, and their causes status_error, evidence_error)."
  type: dict
  returned: when I(read_status) or I(read_lines) asks, also on a refusal
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_checklist import read_along
from ansible_collections.doai.rollback.plugins.module_utils.doai_docker import (
    FULL_ID_RE, IMAGE_ID_RE, PROJECT_NAME_RE, REPO_RE, SERVICE_RE, TAG_RE, Docker, DockerError, registry_is_loopback, short)
from ansible_collections.doai.rollback.plugins.module_utils.doai_docker_read import evidence, status
from ansible_collections.doai.rollback.plugins.module_utils.doai_health import probe, reported_version
from ansible_collections.doai.rollback.plugins.module_utils.doai_lock import Locked, acquire, check, release


def main():
    module = AnsibleModule(
        argument_spec=dict(
            lock_path=dict(type="path", required=True), run_id=dict(type="str", required=True),
            owner=dict(type="str", default=""), reason=dict(type="str", default=""),
            lock_ttl=dict(type="int", default=3600), plan_only=dict(type="bool", default=False),
            resume=dict(type="bool", default=False), image=dict(type="str", required=True),
            current_tag=dict(type="str", default="current"), previous_tag=dict(type="str", default="previous"),
            rollback_tag=dict(type="str", default="rollback"), target=dict(type="str", default=""),
            pin_from=dict(type="str", default=""), pin_to=dict(type="str", default=""),
            pin_ref=dict(type="str", default=""),
            docker_bin=dict(type="str", default="docker"), docker_host=dict(type="str", default=""),
            insecure_registry=dict(type="bool", default=False),
            project_dir=dict(type="path", required=True), service=dict(type="str", required=True),
            project_name=dict(type="str", default=""), compose=dict(type="str", default="auto"),
            compose_v1_bin=dict(type="str", default="docker-compose"),
            health_url=dict(type="str", required=True),
            read_status=dict(type="bool", default=False), read_lines=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    p = module.params

    def refuse(kind, msg, **extra):
        if locked_by_us and not p["plan_only"]:
            release(p["lock_path"], p["run_id"])
        module.fail_json(msg=msg + "; nothing was changed", **dict(extra, **{kind: True, "changed": False}))

    locked_by_us = False
    # Inputs first: nothing runs on a bad one.
    for name in ("current_tag", "previous_tag", "rollback_tag"):
        if not TAG_RE.match(p[name]):
            refuse("invalid_target", "%s %r is not a Docker tag" % (name, p[name]))
    if len({p["current_tag"], p["previous_tag"], p["rollback_tag"]}) != 3:
        refuse("invalid_target", "current_tag, previous_tag and rollback_tag must be three different tags")
    if not REPO_RE.match(p["image"]):
        refuse("invalid_target", "image %r is not a repository name (e.g. registry.example.com/doai-backend)" % p["image"])
    target = p["target"]
    if target and not (IMAGE_ID_RE.match(target) or TAG_RE.match(target)):
        refuse("invalid_target", "target %r is neither a tag nor an image id (sha256:<hex>)" % target)
    for name in ("pin_from", "pin_to"):
        if p[name] and not FULL_ID_RE.match(p[name]):
            refuse("invalid_target", "%s %r is not a full image id (sha256:<64 hex>)" % (name, p[name]))
    if p["pin_ref"] and not (p["pin_ref"].startswith(p["image"] + ":") and TAG_RE.match(p["pin_ref"].rsplit(":", 1)[1])):
        refuse("invalid_target", "pin ref %r is not %s:<tag>" % (p["pin_ref"], p["image"]))
    if not SERVICE_RE.match(p["service"]):
        refuse("invalid_target", "service %r is not a Compose service name" % p["service"])
    if p["project_name"] and not PROJECT_NAME_RE.match(p["project_name"]):
        refuse("invalid_target", "project_name %r is not a Compose project name (lower case, digits, _ -)"
               % p["project_name"])

    docker = Docker(module, p["docker_bin"], p["docker_host"], p["compose"], p["compose_v1_bin"], p["project_dir"],
                    p["project_name"], p["service"],
                    insecure_registry=p["insecure_registry"] or registry_is_loopback(p["image"]))
    if p["plan_only"]:
        # A plan takes no lock and changes nothing: the checklist's reads of the images and
        # the container a moment ago are the plan's too (one read each, one answer).
        docker.remember()
    # Compose's reading of its file (the slowest probe: a Python program) runs alongside the rest.
    services = docker.start_services()
    read_for_checklist(module, docker if p["plan_only"] else None)
    try:
        if p["plan_only"]:
            check(p["lock_path"], p["run_id"], p["lock_ttl"])
        else:
            _, taken = acquire(p["lock_path"], p["run_id"], p["owner"], p["reason"], p["lock_ttl"], module.warn)
            locked_by_us = True
    except Locked as exc:
        module.fail_json(msg=str(exc), locked=True, holder=exc.holder, changed=False)

    current_ref = "%s:%s" % (p["image"], p["current_tag"])
    try:
        docker.ping()
        # Compose, its file and the service, read now: a mistake here must refuse before the
        # retag, not fail the `up -d` after it.
        if p["service"] not in services():
            refuse("invalid_target", "service %r is not in the Compose project at %s" % (p["service"], p["project_dir"]))
        cur = docker.image(current_ref)
        if cur is None:
            refuse("no_current", "%s is not on this host: nothing to roll back from" % current_ref)
        container = docker.container()
        rollback_prev = docker.image_id("%s:%s" % (p["image"], p["rollback_tag"]))

        # A confirmed plan whose live image moved: refuse before pulling anything.
        if p["pin_from"] and cur["id"] != p["pin_from"] and not (p["resume"] and cur["id"] == p["pin_to"]):
            refuse("drifted", "%s is now %s, not %s as planned: someone deployed since the plan"
                   % (current_ref, short(cur["id"]), short(p["pin_from"])))
        # The target, as an image id.
        if p["pin_to"]:
            rule = "the confirmed plan"
            # On the host already (an undo, a put-back, a resumed run), else pulled by the
            # plan's ref; the id behind it must still be the planned one.
            ref = p["pin_to"] if docker.image(p["pin_to"]) or not p["pin_ref"] else p["pin_ref"].rsplit(":", 1)[1]
        elif target and IMAGE_ID_RE.match(target):
            rule = "--to image id"
            ref = target
        else:
            rule = "--to tag" if target else "the %r tag (the runbook's default)" % p["previous_tag"]
            ref = target or p["previous_tag"]
        is_id = IMAGE_ID_RE.match(ref) is not None
        full_ref = ref if is_id else "%s:%s" % (p["image"], ref)
        pulled = False
        if is_id:
            info = docker.image(ref)
            if info is None:
                refuse("not_found", "image %s is not on this host (ids are local: `docker images --digests`)" % ref)
            target_id, target_version = info["id"], info["version"]
        elif p["plan_only"]:
            try:
                target_id = docker.remote_id(full_ref)
            except DockerError as exc:
                refuse("registry_failed", "cannot resolve %s in the registry (%s); to roll back to an image this host "
                       "has, give --to sha256:<id>" % (full_ref, exc))
            local = docker.image(full_ref)
            target_version = local["version"] if local and local["id"] == target_id else None
        else:
            before = docker.image_id(full_ref)
            try:
                docker.pull(full_ref)
            except DockerError as exc:
                refuse("pull_failed", "pull of %s failed (%s); the current container still serves" % (full_ref, exc))
            info = docker.image(full_ref)
            if info is None:
                refuse("pull_failed", "%s is not on this host after the pull" % full_ref)
            target_id, target_version = info["id"], info["version"]
            pulled = before != target_id  # the pull brought (or moved the local tag to) another image
        if p["pin_to"] and target_id != p["pin_to"]:
            refuse("drifted", "%s is now %s, not %s as planned: the registry's tag moved since the plan"
                   % (full_ref, short(target_id), short(p["pin_to"])))
        from_id = p["pin_from"] if (p["resume"] and p["pin_from"]) else cur["id"]
        running_target = bool(container and container["running"] and container["image"] == target_id)
        changes = not (cur["id"] == target_id and running_target)
        if p["resume"]:
            changes = True  # finish or undo this run's work: the apply is idempotent
        code, body = probe(p["health_url"], 3)
    except DockerError as exc:
        refuse(exc.kind, str(exc))
    except (ValueError, KeyError, TypeError) as exc:  # an answer we cannot read: refuse, release the lock
        refuse("docker_unavailable", "unexpected answer from docker: %s" % exc)

    module.exit_json(
        changed=pulled, current=from_id, current_short=short(from_id), current_version=cur["version"],
        target=target_id, target_short=short(target_id), target_ref=full_ref, target_version=target_version,
        rollback_prev=rollback_prev, container=container, changes=changes, rule=rule, pulled=pulled,
        health_status=code if code is not None else -1,
        health_version=reported_version(body) if code is not None else None,
        locked_by_us=locked_by_us,
        container_differs=bool(container and container["image"] != cur["id"]),
    )


def read_for_checklist(module, docker=None):
    """The checklist's reads, after the inputs are checked and before the lock: the host's
    status and the container's last log lines. ``docker``: the plan's own (its reads shared)."""
    p = module.params
    where = dict(project_dir=p["project_dir"], service=p["service"], health_url=p["health_url"],
                 docker_bin=p["docker_bin"], docker_host=p["docker_host"], docker=docker)
    reads = []
    if p["read_status"]:
        tags = [p["current_tag"], p["previous_tag"], p["rollback_tag"]]
        reads.append(("status", lambda: status(module, p["image"], tags, lock_path=p["lock_path"], **where)))
    if p["read_lines"] > 0:
        reads.append(("evidence", lambda: evidence(module, lines=p["read_lines"], **where)))
    read_along(module, reads)


if __name__ == "__main__":
    main()
