# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Docker engine and Compose as the backend's Docker mode sees them, shared by the capture,
apply and inspect modules of doai_backend_docker.

Every call is an argv list (``module.run_command`` without a shell); DOCKER_HOST comes from the
role's ``doai_backend_docker_docker_host`` when set. Images are named by their *image id*
(``sha256:<64 hex>``, the digest of the image's config, the same on every host and in the
registry's manifest), never only by a tag: a tag can move, an id cannot.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess

from ansible_collections.doai.rollback.plugins.module_utils.doai_secrets import scrub, secret_values

# A tag (Docker's grammar), a repository with an optional registry prefix, an image id.
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?/)"
REPO_RE = re.compile(r"(?!-)%s?%s(?:/%s)*\Z" % (_REGISTRY, _COMPONENT, _COMPONENT))
IMAGE_ID_RE = re.compile(r"sha256:[0-9a-f]{12,64}\Z")
FULL_ID_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
VERSION_LABELS = ("org.opencontainers.image.version", "version")
_LIST_TYPES = ("application/vnd.docker.distribution.manifest.list.v2+json",
               "application/vnd.oci.image.index.v1+json")
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm"}


PROJECT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")


def short(image_id):
    """The 12 hex digits an operator sees in `docker images`."""
    return (image_id or "?").split(":", 1)[-1][:12]


class DockerError(Exception):
    """A docker or compose command failed; ``kind`` says which step (result key)."""

    def __init__(self, message, kind="docker_failed"):
        super(DockerError, self).__init__(message)
        self.kind = kind


def registry_of(repo):
    """The registry host of a repository ("" for Docker Hub's default)."""
    first = repo.split("/", 1)[0]
    if "/" in repo and ("." in first or ":" in first or first == "localhost"):
        return first
    return ""


def registry_is_loopback(repo):
    """Docker itself talks plain HTTP to registries on 127.0.0.0/8 and localhost; so do we."""
    host = registry_of(repo).rsplit(":", 1)[0] if registry_of(repo) else ""
    return host == "localhost" or host == "[::1]" or re.match(r"127(\.[0-9]{1,3}){3}\Z", host) is not None


def choose_compose(setting, docker_bin, v2_available, v1_path):
    """The argv prefix of Compose: ``setting`` auto (v2 plugin preferred, else v1), v2 or v1.
    ``v2_available``: whether ``docker compose version`` worked; ``v1_path``: the docker-compose
    executable found, or None. Raises DockerError(kind=compose_unavailable) when none fits."""
    if setting not in ("auto", "v1", "v2"):
        raise DockerError("compose must be auto, v1 or v2, not %r" % (setting,), "invalid_setting")
    if setting in ("auto", "v2") and v2_available:
        return [docker_bin, "compose"]
    if setting == "v2":
        raise DockerError("`docker compose` (the v2 plugin) is not available on this host", "compose_unavailable")
    if v1_path:
        return [v1_path]
    raise DockerError("neither `docker compose` (v2) nor docker-compose (v1) is available on this host"
                      if setting == "auto" else "docker-compose (v1) is not available on this host",
                      "compose_unavailable")


def _command_failed(argv, rc, out, err, kind):
    """The DockerError of a docker or Compose command that exited ``rc`` != 0."""
    return DockerError("%s: %s" % (" ".join(argv[:4]), (err or out).strip()[-800:] or "exit %d" % rc), kind)


def _raising(exc):
    def result():
        raise exc
    return result


class Docker(object):
    def __init__(self, module, docker_bin="docker", docker_host="", compose="auto", compose_v1_bin="docker-compose",
                 project_dir="", project_name="", service="", insecure_registry=False):
        self.module = module
        self.docker_bin = docker_bin
        self.env = {"DOCKER_HOST": docker_host} if docker_host else {}
        # Compose v1 reads these too; keep the user's own COMPOSE_* out of a rollback.
        self.env.update({"COMPOSE_INTERACTIVE_NO_CLI": "1", "DOCKER_CLI_HINTS": "false"})
        self.compose_setting = compose
        self.compose_v1_bin = compose_v1_bin
        # Compose records the directory as given, without a trailing slash: compare like with like.
        self.project_dir = os.path.normpath(project_dir) if project_dir else project_dir
        self.project_name = project_name
        self.service = service
        self.insecure_registry = insecure_registry
        self._compose = None
        self._memo = None  # {key: answer} once remember() is called
        self._inspected = {}  # container id -> its `docker inspect`, as container() last read it

    def remember(self):
        """From now on answer :meth:`image` and :meth:`container` for the same thing from the first
        read: for a module call that only reads (a plan), where reading the same thing again
        a moment later is a docker CLI start (~20-50 ms) for the same answer."""
        if self._memo is None:
            self._memo = {}
        return self

    def _remembered(self, key, read):
        if self._memo is None:
            return read()
        if key not in self._memo:
            self._memo[key] = read()
        return self._memo[key]

    # -- plumbing --------------------------------------------------------------------------
    def run(self, args, kind="docker_failed", check=True, cwd=None, argv0=None):
        argv = (argv0 or [self.docker_bin]) + list(args)
        rc, out, err = self.module.run_command(argv, environ_update=self.env, cwd=cwd)
        if check and rc != 0:
            raise _command_failed(argv, rc, out, err, kind)
        return rc, out, err

    def compose_argv(self):
        if self._compose is None:
            v2 = False
            if self.compose_setting in ("auto", "v2"):
                rc, _, _ = self.run(["compose", "version"], check=False)
                v2 = rc == 0
            v1 = None
            if self.compose_setting in ("auto", "v1"):
                v1 = self.module.get_bin_path(self.compose_v1_bin) if not os.path.isabs(self.compose_v1_bin) else (
                    self.compose_v1_bin if os.access(self.compose_v1_bin, os.X_OK) else None)
            self._compose = choose_compose(self.compose_setting, self.docker_bin, v2, v1)
        return self._compose

    def _compose_prefix(self):
        return self.compose_argv() + (["-p", self.project_name] if self.project_name else [])

    def compose(self, args, kind="compose_failed"):
        return self.run(args, kind=kind, cwd=self.project_dir, argv0=self._compose_prefix())

    # -- images ------------------------------------------------------------------------------
    def ping(self):
        """Raise DockerError(docker_unavailable) when the engine does not answer."""
        self.run(["version", "--format", "{{.Server.Version}}"], kind="docker_unavailable")

    def image(self, ref):
        """``docker image inspect`` of a tag or id: {id, version, tags} or None when absent."""
        return self._remembered(("image", ref), lambda: self._image(ref))

    def _image(self, ref):
        rc, out, err = self.run(["image", "inspect", ref], check=False)
        if rc != 0:
            if "No such image" in err or "No such object" in err:
                return None
            raise DockerError("docker image inspect %s: %s" % (ref, err.strip()[-800:]), "docker_unavailable")
        try:
            data = json.loads(out)[0]
        except (ValueError, IndexError, TypeError):
            return None
        labels = (data.get("Config") or {}).get("Labels") or {}
        version = next((labels[k] for k in VERSION_LABELS if labels.get(k)), None)
        return {"id": data.get("Id"), "version": version, "tags": data.get("RepoTags") or [],
                "created": data.get("Created")}

    def image_id(self, ref):
        info = self.image(ref)
        return info["id"] if info else None

    def remote_id(self, ref):
        """The image id the registry serves for ``ref`` (the manifest's config digest), without
        pulling: for a plan that changes nothing. Manifest lists pick this host's platform."""
        args = ["manifest", "inspect"] + (["--insecure"] if self.insecure_registry else [])
        _, out, _ = self.run(args + [ref], kind="registry_failed")
        manifest = _json_or_fail(out, ref)
        if manifest.get("mediaType") in _LIST_TYPES or "manifests" in manifest:
            arch = _ARCH.get(platform.machine(), platform.machine())
            chosen = [m for m in manifest.get("manifests") or []
                      if (m.get("platform") or {}).get("os") == "linux"
                      and (m.get("platform") or {}).get("architecture") == arch]
            if not chosen:
                raise DockerError("%s has no image for linux/%s" % (ref, arch), "registry_failed")
            repo = ref.rsplit("@", 1)[0]
            repo = repo if "/" in repo and ":" not in repo.rsplit("/", 1)[1] else repo.rsplit(":", 1)[0]
            _, out, _ = self.run(args + ["%s@%s" % (repo, chosen[0]["digest"])], kind="registry_failed")
            manifest = _json_or_fail(out, ref)
        digest = (manifest.get("config") or {}).get("digest")
        if not digest or not FULL_ID_RE.match(digest):
            raise DockerError("%s: the registry's manifest names no image config" % ref, "registry_failed")
        return digest

    def pull(self, ref):
        self.run(["pull", "--quiet", ref], kind="pull_failed")

    def tag(self, source, ref):
        self.run(["tag", source, ref], kind="retag_failed")

    # -- the service -------------------------------------------------------------------------
    def container(self):
        """The service's container (labels set by Compose v1 and v2): {id, name, image, running,
        status, restart_count, started_at, health}, or None."""
        return self._remembered(("container",), self._container)

    def _container(self):
        rc, out, err = self.run(["ps", "-a", "--no-trunc", "--format", "{{.ID}}",
                                 "--filter", "label=com.docker.compose.service=%s" % self.service,
                                 "--filter", "label=com.docker.compose.project.working_dir=%s" % self.project_dir],
                                kind="docker_unavailable")
        ids = [line.strip() for line in out.splitlines() if line.strip()]
        if not ids:
            return None
        _, out, _ = self.run(["inspect"] + ids, kind="docker_unavailable")
        try:
            inspected = json.loads(out)
        except ValueError:
            raise DockerError("docker inspect answered no JSON: %s" % out[:200], "docker_unavailable")
        found = []
        for c in inspected:
            self._inspected[c.get("Id")] = c
            state = c.get("State") or {}
            found.append({
                "id": c.get("Id"), "name": (c.get("Name") or "").lstrip("/"), "image": c.get("Image"),
                "running": bool(state.get("Running")) and not state.get("Restarting"),
                "status": state.get("Status"), "restart_count": c.get("RestartCount", 0),
                "started_at": state.get("StartedAt"), "exit_code": state.get("ExitCode"),
                "health": (state.get("Health") or {}).get("Status"),
            })
        # Several (scaled, or an orphan from a renamed project): the running one started last.
        found.sort(key=lambda c: (c["running"], c["started_at"] or ""), reverse=True)
        return found[0]

    def start_services(self):
        """The services of the Compose project (``compose config --services``: reads the file,
        changes nothing), started now and read later (Compose v1 is a Python program: ~0.3 s of
        start-up, while each docker CLI read takes ~20 ms): returns a function that waits for it
        and returns the names, or raises DockerError (compose_unavailable/invalid_target).
        Started here and not by ``run_command``, which would wait for it; the environment is
        the one ``run_command`` gives."""
        try:
            argv = self._compose_prefix()
        except DockerError as exc:
            return _raising(exc)
        argv = argv + ["config", "--services"]
        if self.project_dir and not os.path.isdir(self.project_dir):
            return _raising(DockerError("the Compose project directory %s does not exist" % self.project_dir,
                                        "invalid_target"))
        env = dict(os.environ, **(self.module.run_command_environ_update or {}))
        env.update(self.env)
        if env.get("PYTHONPATH"):  # as run_command: not the module's own payload (Compose v1 is Python)
            env["PYTHONPATH"] = ":".join(x for x in env["PYTHONPATH"].split(":")
                                         if x and not x.endswith(("/ansible_modlib.zip", "/debug_dir")))
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    cwd=self.project_dir or None, env=env)
        except OSError as exc:
            return _raising(DockerError("%s: %s" % (" ".join(argv[:4]), exc), "invalid_target"))

        def result():
            out, err = (x.decode("utf-8", "replace") for x in proc.communicate())
            if proc.returncode != 0:
                raise _command_failed(argv, proc.returncode, out, err, "invalid_target")
            return [line.strip() for line in out.splitlines() if line.strip()]
        return result

    def up(self):
        """``compose up -d --no-deps SERVICE``: recreates the container when the image behind
        its tag changed, nothing else (other services and their volumes are left alone)."""
        self.compose(["up", "-d", "--no-deps", self.service])

    def logs(self, container_id, lines):
        """The container's last ``lines`` log lines, scrubbed here on the host (doai_secrets:
        the values of the container's secret-named variables, then secrets by shape): no
        caller ever holds them raw."""
        rc, out, err = self.run(["logs", "--tail", str(int(lines)), "--timestamps", container_id], check=False)
        try:
            env = dict(item.partition("=")[::2] for item in (self.inspect(container_id).get("Config") or {}).get("Env") or [])
            values = secret_values(env)
        except (DockerError, ValueError, TypeError, AttributeError):
            values = []
        return scrub((out + err)[-65536:], values)

    def inspect(self, container_id):
        """``docker inspect`` of a container: as :meth:`container` read it a moment ago when it
        did (a container's configuration, its environment too, is fixed when it is created),
        else read now; raises DockerError(docker_unavailable)."""
        if container_id not in self._inspected:
            _, out, _ = self.run(["inspect", container_id], kind="docker_unavailable")
            try:
                self._inspected[container_id] = (json.loads(out) or [{}])[0]
            except (ValueError, IndexError, TypeError):
                raise DockerError("docker inspect answered no JSON", "docker_unavailable")
        return self._inspected[container_id]


def _json_or_fail(out, ref):
    try:
        data = json.loads(out)
    except ValueError:
        raise DockerError("%s: the registry answered no manifest (%s)" % (ref, out.strip()[:200]), "registry_failed")
    if not isinstance(data, dict):
        raise DockerError("%s: the registry answered no manifest" % ref, "registry_failed")
    return data
