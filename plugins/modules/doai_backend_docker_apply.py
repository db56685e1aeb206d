#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_backend_docker_apply
short_description: Retag, recreate and verify the backend's container; put the captured image back on failure
description:
  - The runbook's Docker rollback after the pull (done by the capture), as one job detached from
    the SSH session (the collection's doai_job) - C(IMAGE:current) is tagged C(IMAGE:rollback), the
    target id is tagged C(IMAGE:current), C(compose up -d --no-deps SERVICE) recreates the
    container, then the health gate - the container runs the target id, health answers 2xx with
    the image's version within C(deadline), and the container neither restarts nor stops for
    C(stable_seconds).
  - Idempotent for a resumed run - when C(IMAGE:current) is already the target, the retag is
    skipped.
  - On any failure after the retag, C(IMAGE:current) (and C(IMAGE:rollback)) point at the
    captured ids again, C(up -d) recreates the container and its health is checked - the result's
    C(status) says succeeded, restored or not_restored. Nothing is ever pruned or deleted.
  - With C(until=healthy) the module returns as soon as the target is healthy, while the job goes
    on watching; a second call with the same C(job) returns the job's result.
options:
  image: {description: "Repository with its registry prefix.", type: str, required: true}
  current_tag: {description: "The tag the service runs.", type: str, default: current}
  rollback_tag: {description: "The tag that keeps the replaced image.", type: str, default: rollback}
  from_id: {description: "The captured image id of IMAGE:current.", type: str, required: true}
  to_id: {description: "The target image id.", type: str, required: true}
  rollback_prev: {description: "The image id IMAGE:rollback had before (restored on failure).", type: str, default: ""}
  docker_bin: {description: "The docker client.", type: str, default: docker}
  docker_host: {description: "DOCKER_HOST; empty for the default.", type: str, default: ""}
  compose: {description: "auto (v2 plugin preferred), v2 or v1.", type: str, default: auto}
  compose_v1_bin: {description: "The docker-compose (v1) executable.", type: str, default: docker-compose}
  project_dir: {description: "The Compose project directory.", type: path, required: true}
  project_name: {description: "Compose project name; empty for Compose's default.", type: str, default: ""}
  service: {description: "The Compose service.", type: str, required: true}
  health_url: {description: "Health URL probed from the host.", type: str, required: true}
  deadline: {description: "Seconds for the container to run the target and health to answer 2xx.", type: int, default: 60}
  expect_version: {description: "The version health must report (empty - not checked).", type: str, default: ""}
  stable_seconds: {description: "Seconds the container must keep running without a restart.", type: int, default: 10}
  crash_restarts:
    description:
      - While waiting for health, a container of the awaited image that restarted this many times, or
        that exited and was not restarted, fails the wait at once (a crash loop); 0 waits for the deadline.
    type: int
    default: 3
  require_health: {description: "Fail on bad health (false - report it only).", type: bool, default: true}
  restore_requires_health: {description: "Whether the put-back must be healthy too.", type: bool, default: true}
  log_lines: {description: "Container log lines kept in the result.", type: int, default: 50}
  job: {description: "Job id (attach when it exists).", type: str, default: ""}
  job_dir: {description: "Where job files live.", type: path, required: true}
  timeout: {description: "Seconds the job may run.", type: int, default: 900}
  until: {description: "Return at this progress key (healthy).", type: str, default: ""}
  record:
    description:
      - The job's own record in the host's ledger, written by the detached job once the commit is
        live (C(result) applied, C(by) job), so that a controller killed meanwhile leaves the
        change on record (action, from, to, who, why, run_id); empty - none.
    type: dict
  ledger_path: {description: "The host's ledger, for I(record).", type: path}
  lock_path:
    description:
      - The host lock the job works under (held by I(record)'s run_id) - the job records its
        process in it and refreshes it every I(lock_ttl)/4 while it runs.
    type: path
  lock_ttl: {description: "The host lock's TTL in seconds.", type: int, default: 3600}
  release_lock:
    description:
      - Once the job is done and its outcome on record (C(recorded)), release the host lock
        I(lock_path) if the record's run holds it, in this round trip (C(lock_released)) - the run's
        last step on the host. A call that returns at I(until) releases nothing.
    type: bool
    default: false
  reconnect_timeout: {description: "Used by the action plugin.", type: float, default: 0}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Apply
  doai.rollback.doai_backend_docker_apply:
    image: registry.example.com/doai-backend
    from_id: "sha256:..."
    to_id: "sha256:..."
    project_dir: /opt/doai-backend
    service: backend
    health_url: http://localhost:3001/api/health
    job_dir: /var/lib/doai-rollback/jobs
"""

RETURN = r"""
status: {description: "succeeded, restored or not_restored.", type: str, returned: always}
health_status: {description: "Last HTTP status of the health URL.", type: int, returned: always}
health_version: {description: "The version health reported.", type: str, returned: always}
logs:
  description:
    - The container's last I(log_lines) log lines, scrubbed on the host by the collection's
      doai_secrets, as one entry (app, pm_id null, kind C(container), path null, text, error null) -
      the shape of the diagnose modules' C(logs), kept in the run's log bundle.
  type: list
  returned: when the job is done
lock_released: {description: "The host lock was released (I(release_lock)).", type: bool, returned: with release_lock}
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.doai.rollback.plugins.module_utils.doai_docker import Docker, DockerError, short
from ansible_collections.doai.rollback.plugins.module_utils.doai_health import probe, reported_version
from ansible_collections.doai.rollback.plugins.module_utils.doai_history import job_recorder
from ansible_collections.doai.rollback.plugins.module_utils.doai_job import run_job
from ansible_collections.doai.rollback.plugins.module_utils.doai_lock import release
from ansible_collections.doai.rollback.plugins.module_utils.doai_secrets import scrub_lines


class Failed(Exception):
    pass


def wait_healthy(docker, p, image_id, deadline_s, expect_version, require_health, progress=None):
    """Until the container runs ``image_id`` and health is good (or, not required, answers at all).
    A container of ``image_id`` that exits (and is not restarted) or restarts ``crash_restarts``
    times fails at once: a crash loop is found by its restarts, not by the deadline."""
    t0 = time.monotonic()
    end = t0 + deadline_s
    last = "no container yet"
    code, version = None, None
    seen = {}  # container id -> the restart count first seen: a recreated container starts at 0
    while True:
        c = docker.container()
        if c and c["image"] == image_id:
            first = seen.setdefault(c["id"], c["restart_count"] or 0)
            restarts = (c["restart_count"] or 0) - first
            if p["crash_restarts"] > 0 and (restarts >= p["crash_restarts"]
                                            or (c["status"] in ("exited", "dead") and c["started_at"]
                                                and not c["started_at"].startswith("0001-"))):
                raise Failed("the container crash-loops: %s %s (exit code %s, %d restarts) %.1f s after it was "
                             "recreated" % (c["name"], c["status"], c["exit_code"], restarts, time.monotonic() - t0))
        if c and c["image"] == image_id and c["running"]:
            code, body = probe(p["health_url"], 2)
            version = reported_version(body) if code is not None else None
            good = code is not None and 200 <= code < 300 and (not expect_version or version == expect_version)
            if good or (not require_health and code is not None):
                return c, code, version, round(time.monotonic() - t0, 2)
            last = "health %s%s" % (code if code is not None else "no answer",
                                    (" version %s, expected %s" % (version, expect_version))
                                    if code and expect_version and version != expect_version else "")
        elif c:
            last = "container %s %s on %s" % (c["name"], c["status"], short(c["image"]))
        if time.monotonic() > end:
            raise Failed("not healthy within %d s: %s" % (deadline_s, last))
        time.sleep(0.1)


def watch(docker, first, seconds):
    """The container keeps running, not restarted, for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.25)
        c = docker.container()
        if not c or c["id"] != first["id"] or not c["running"] or c["restart_count"] != first["restart_count"] \
                or c["started_at"] != first["started_at"]:
            state = "gone" if not c else "%s, restarts %s" % (c["status"], c["restart_count"])
            raise Failed("the container did not stay up for %d s (%s)" % (seconds, state))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="str", required=True), current_tag=dict(type="str", default="current"),
            rollback_tag=dict(type="str", default="rollback"), from_id=dict(type="str", required=True),
            to_id=dict(type="str", required=True), rollback_prev=dict(type="str", default=""),
            docker_bin=dict(type="str", default="docker"), docker_host=dict(type="str", default=""),
            compose=dict(type="str", default="auto"), compose_v1_bin=dict(type="str", default="docker-compose"),
            project_dir=dict(type="path", required=True), project_name=dict(type="str", default=""),
            service=dict(type="str", required=True), health_url=dict(type="str", required=True),
            deadline=dict(type="int", default=60), expect_version=dict(type="str", default=""),
            stable_seconds=dict(type="int", default=10), crash_restarts=dict(type="int", default=3),
            require_health=dict(type="bool", default=True),
            restore_requires_health=dict(type="bool", default=True), log_lines=dict(type="int", default=50),
            job=dict(type="str", default=""), job_dir=dict(type="path", required=True),
            timeout=dict(type="int", default=900), until=dict(type="str", default=""),
            reconnect_timeout=dict(type="float", default=0),
            record=dict(type="dict"), ledger_path=dict(type="path"), lock_path=dict(type="path"),
            lock_ttl=dict(type="int", default=3600), release_lock=dict(type="bool", default=False),
        ),
        supports_check_mode=False,
    )
    p = module.params
    docker = Docker(module, p["docker_bin"], p["docker_host"], p["compose"], p["compose_v1_bin"],
                    p["project_dir"], p["project_name"], p["service"])
    current_ref = "%s:%s" % (p["image"], p["current_tag"])
    rollback_ref = "%s:%s" % (p["image"], p["rollback_tag"])

    def work(progress):
        t0 = time.monotonic()
        result = {"changed": False, "from": p["from_id"], "to": p["to_id"]}
        container = None
        try:
            live = docker.image_id(current_ref)
            if live == p["from_id"] and p["from_id"] != p["to_id"]:
                docker.tag(p["from_id"], rollback_ref)  # the failed release, kept for forensics
                result["changed"] = True
                docker.tag(p["to_id"], current_ref)
            elif live != p["to_id"]:
                module.exit_json(status="refused", drifted=True, changed=False,
                                 failure="%s is %s, neither %s nor %s: moved since the capture; nothing was changed"
                                 % (current_ref, short(live), short(p["from_id"]), short(p["to_id"])))
            result["changed"] = True
            progress(retagged=round(time.monotonic() - t0, 2))
            docker.up()
            progress(up=round(time.monotonic() - t0, 2))
            container, code, version, _ = wait_healthy(docker, p, p["to_id"], p["deadline"], p["expect_version"],
                                                       p["require_health"])
            result.update(health_status=code, health_version=version, container=container["id"],
                          health_elapsed=round(time.monotonic() - t0, 2))
            progress(healthy=result["health_elapsed"], health_status=code, health_version=version)
            watch(docker, container, p["stable_seconds"])
            result["logs"] = docker.logs(container["id"], p["log_lines"])
            module.exit_json(status="succeeded", **result)
        except (Failed, DockerError) as exc:
            failure = str(exc)
        result["failure"] = failure
        try:  # forensics only: nothing here may keep the put-back from running
            if container is None:
                container = docker.container() if _safe(docker) else None
            if container:
                result["logs"] = docker.logs(container["id"], p["log_lines"])
        except Exception as exc:  # noqa: BLE001
            result["logs"] = "container logs not read: %s" % exc
        # Put the captured image back: :current (and :rollback as it was), recreate, verify.
        try:
            docker.tag(p["from_id"], current_ref)
            if p["rollback_prev"]:
                docker.tag(p["rollback_prev"], rollback_ref)
            elif docker.image_id(rollback_ref) == p["from_id"]:
                # There was no :rollback before: drop the tag this run added. Only a tag goes
                # (:current holds the same image), never an image.
                docker.run(["image", "rm", "--no-prune", rollback_ref], kind="retag_failed")
            docker.up()
            c, code, version, _ = wait_healthy(docker, p, p["from_id"], p["deadline"], "",
                                               p["restore_requires_health"])
            result.update(health_status=code, health_version=version, container=c["id"])
            module.exit_json(status="restored", **result)
        except (Failed, DockerError) as exc:
            module.exit_json(status="not_restored", restore_error=str(exc), **result)

    # The job's own record: its whole outcome (it checks health and puts back on failure itself).
    record = dict(p["record"] or {}, job=p["job"])
    run_id = record.get("run_id")
    run_job(module, p["job_dir"], p["job"], work, p["timeout"], until=p["until"] or None,
            on_result=job_recorder(p["ledger_path"], p["record"] and record,
                                   lambda done: None if done.get("status") in (None, "refused") else done["status"]),
            lock=(p["lock_path"], run_id, p["lock_ttl"]) if p["lock_path"] and run_id else None,
            on_done=lambda done: finish(p, done, run_id))


def finish(p, done, run_id):
    """The job's result as this call returns it: the log lines scrubbed on the host, as a log
    entry; with I(release_lock), the host lock released once the outcome is on record."""
    text = done.get("logs")
    if isinstance(text, str):
        done["logs"] = [{"app": p["service"], "pm_id": None, "kind": "container", "path": None,
                         "text": scrub_lines(text, (), max(0, p["log_lines"])), "error": None}]
    if p["release_lock"] and p["lock_path"] and run_id and done.get("recorded"):
        done["lock_released"] = release(p["lock_path"], run_id)[1]


def _safe(docker):
    try:
        docker.ping()
        return True
    except DockerError:
        return False


if __name__ == "__main__":
    main()
