# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The read-only reads of a Docker backend: its status (the inspect module's) and its evidence (the
diagnose module's); the capture module makes them too when the checklist asks (doai_checklist)."""

from __future__ import annotations

from ansible_collections.doai.rollback.plugins.module_utils.doai_diagnose import scrub, secret_values, set_names
from ansible_collections.doai.rollback.plugins.module_utils.doai_docker import VERSION_LABELS, Docker, DockerError
from ansible_collections.doai.rollback.plugins.module_utils.doai_health import probe, reported_version
from ansible_collections.doai.rollback.plugins.module_utils.doai_lock import holder_of


def status(module, image, tags, project_dir, service, health_url, lock_path, docker_bin="docker", docker_host="",
           docker=None):
    """The image ids and versions behind ``tags``, the service's container, one health probe and
    who holds the host lock; a docker that cannot be read is reported in ``docker_error``.
    ``docker``: the caller's :class:`Docker` of the same service (its remembered reads)."""
    docker = docker or Docker(module, docker_bin, docker_host, project_dir=project_dir, service=service)
    images, container, error = {}, None, None
    try:
        for tag in tags:
            info = docker.image("%s:%s" % (image, tag))
            images[tag] = {"id": info["id"], "version": info["version"]} if info else None
        container = docker.container()
    except DockerError as exc:
        error = str(exc)
    code, body = probe(health_url, 3)
    return dict(images=images, container=container, docker_error=error,
                health_status=code if code is not None else -1,
                health_version=reported_version(body) if code is not None else None,
                host_lock=holder_of(lock_path))


def _env_of(inspected):
    env = {}
    for item in (inspected.get("Config") or {}).get("Env") or []:
        k, _, v = item.partition("=")
        env[k] = v
    return env


def evidence(module, project_dir, service, health_url="", lines=200, required_env=(), docker_bin="docker", docker_host="",
             docker=None):
    """The service's container with the names its environment lacks (never values), the last
    ``lines`` of its log scrubbed of secret values, one health probe and the live image.
    ``docker``: the caller's :class:`Docker` of the same service (its remembered reads)."""
    docker = docker or Docker(module, docker_bin, docker_host, project_dir=project_dir, service=service)
    image_id = version = error = None
    processes, logs = [], []
    try:
        c = docker.container()
        if c is None:
            error = "no container for service %s in %s" % (service, project_dir)
        else:
            inspected = docker.inspect(c["id"])
            env = _env_of(inspected)
            secrets = secret_values(env)
            image_id = c.get("image")
            labels = (inspected.get("Config") or {}).get("Labels") or {}
            version = next((labels[k] for k in VERSION_LABELS if labels.get(k)), None)
            present = set(set_names(env))
            processes.append({"name": c.get("name"), "pm_id": None, "status": c.get("status"),
                              "pid": (inspected.get("State") or {}).get("Pid"), "restarts": c.get("restart_count"),
                              "env_source": "container",
                              "missing_env": [n for n in required_env if n not in present]})
            text = docker.logs(c["id"], lines)
            logs.append({"app": c.get("name"), "pm_id": None, "kind": "container", "path": None,
                         "text": scrub(text, secrets), "error": None})
    except DockerError as exc:
        error = str(exc)
        secrets = []
    code, body = probe(health_url, timeout=5) if health_url else (None, b"")
    return dict(
        image_id=image_id, version=version, processes=processes, logs=logs, docker_error=error,
        health_status=code, health_version=reported_version(body) if code is not None else None,
        health_body=scrub(body.decode("utf-8", "replace")[:300], secrets),
    )
