"""A local stand-in for a DoAi VPS that runs the backend with Docker Compose.

What it starts, all on 127.0.0.1 and all stopped by PID in :meth:`DockerRig.stop`:

* a dockerd of its own (Debian's, as root, ``vfs`` storage, no bridge, no iptables), its
  socket and exec root in a short directory under /tmp (unix socket paths are limited to
  ~107 bytes), its data root under the workdir; it starts its own containerd;
* a local registry (Debian's ``docker-registry``) on a free loopback port;
* the sshd of a :class:`~doai_ansible.sandbox.rig.Sandbox` (``start_ssh``: no app, no PM2),
  the way Ansible reaches the "VPS".

Images are made ``FROM scratch`` (a ``docker save`` archive written here and loaded with
``docker load``: quicker than ``docker build``), two layers each: the static /bin/busybox and
``/www`` (docker_app/www), served with ``busybox httpd -f -p 127.0.0.1:<app_port> -h /www``:
``v1``/``v2``/``v3`` answer ``GET /api/health`` with 200 and
``{"status":"ok","version":"1.0.0"|"2.0.0"|"3.0.0"}``; ``bad`` runs the same server but has no
health file, so ``/api/health`` is a 404 (and ``/`` a 200): a release that starts and fails
its health check. They are pushed to the registry as ``doai-backend:v1|v2|v3|bad``, and
``:previous`` -> v2, ``:current`` -> v3. The host then keeps only what a real VPS would have:
``:current`` (v3) pulled and running under ``docker-compose up -d`` (project ``doai``, service
``api``, host network, ``init: true``); no ``:previous``, no ``:rollback``, no other image.

Known leftovers of Debian's dockerd 20.10 outside the workdir (hard-coded paths there, no
flag for them): the empty directories /run/docker/plugins and /run/containerd/s (the shims'
sockets, removed with the containers). Its daemon.json and key.json are the workdir's (not
/etc/docker's); the docker client's config is the workdir's too (DOCKER_CONFIG in ``env``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from doai_ansible.sandbox.rig import Sandbox, SandboxError, _running, free_port, http_health, wait_health, wait_port

log = logging.getLogger(__name__)

APP_SRC = Path(__file__).resolve().parent / "docker_app"
DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's client: the one at /usr/local/bin is newer than the daemon
COMPOSE = "/usr/bin/docker-compose"
REGISTRY = "/usr/bin/docker-registry"
BUSYBOX = "/bin/busybox"  # busybox-static
PROJECT = "doai"  # the compose project: the project directory's name
SERVICE = "api"
REPO_NAME = "doai-backend"
IMAGE_VERSIONS = {"v1": "1.0.0", "v2": "2.0.0", "v3": "3.0.0", "bad": None,  # None: no health file (404)
                  "crash": "4.0.0"}
# Images whose process exits at once (entrypoint `busybox false`, before the command Compose
# gives): with `restart: unless-stopped` the container crash-loops and never answers.
CRASHING = {"crash"}
REGISTRY_TAGS = {"previous": "v2", "current": "v3"}
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
])


def _kill_wait(pid: int, deadline_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``deadline_s``; reaps it when it is our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not _running(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _unmount_below(*dirs: Path) -> None:
    """Unmount what dockerd left mounted below ``dirs`` (the default netns, container rootfs)."""
    prefixes = [str(d).rstrip("/") + "/" for d in dirs]
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point.startswith(p) for p in prefixes):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


class DockerRig:
    """``DockerRig(workdir).start()``; ``reset()`` before each test; ``stop()`` at the end."""

    host_name = "sandbox-docker"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir).absolute()
        self.sock_dir: Path | None = None  # short: the daemon socket and exec root
        self.data_root = self.workdir / "docker-data"
        self.docker_config = self.workdir / "docker-config"  # the client's, not ~/.docker
        self.registry_dir = self.workdir / "registry"
        self.build_dir = self.workdir / "build"
        self.project_dir = self.workdir / PROJECT
        self.host_state = self.workdir / "host-state"
        self.inventory_dir = self.workdir / "inventory"
        self.vps = Sandbox(self.workdir / "vps")  # its sshd only
        self.app_port = 0
        self.registry_port = 0
        self.dockerd_pid: int | None = None
        self.registry_pid: int | None = None
        self.image_ids: dict[str, str] = {}  # version -> sha256:... (config digest)
        self.digests: dict[str, str] = {}  # version -> manifest digest in the registry
        self.timings: dict[str, float] = {}

    # -- names ---------------------------------------------------------------------------
    @property
    def docker_host(self) -> str:
        if self.sock_dir is None:
            raise SandboxError("the docker rig is not started")
        return f"unix://{self.sock_dir / 'docker.sock'}"

    @property
    def env(self) -> dict[str, str]:
        """The environment for a docker/docker-compose subprocess: our daemon, our client config."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        env["DOCKER_HOST"] = self.docker_host
        env["DOCKER_CONFIG"] = str(self.docker_config)
        return env

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def image_repo(self) -> str:
        return f"{self.registry}/{REPO_NAME}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}/api/health"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}/"

    @property
    def inventory(self) -> Path:
        return self.inventory_dir / "hosts.yml"

    @property
    def compose_file(self) -> Path:
        return self.project_dir / "docker-compose.yml"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, *, ssh: bool = True) -> DockerRig:
        """dockerd, the registry, the images (built, pushed, removed again), :current up.
        ``ssh``: also the VPS's sshd and the inventory (the tests of the rig alone skip it)."""
        t0 = time.monotonic()
        for tool in (DOCKERD, DOCKER, COMPOSE, REGISTRY, BUSYBOX):
            if not os.access(tool, os.X_OK):
                raise SandboxError(f"{tool} not found",
                                   hint="apt-get install docker.io docker-compose docker-registry busybox-static")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sock_dir = Path(tempfile.mkdtemp(prefix="doai-dk-", dir="/tmp"))
        self.app_port = free_port()
        self.registry_port = free_port()
        self.save()  # from here on `stop` finds what to stop
        self._start_dockerd()
        self.timings["dockerd_s"] = time.monotonic() - t0
        self.start_registry()
        t1 = time.monotonic()
        self._build_and_push()
        self.timings["images_s"] = time.monotonic() - t1
        if ssh:
            self.vps.start_ssh()
            self.vps.save()
        self.reset()
        self.timings["start_s"] = time.monotonic() - t0
        self.save()
        return self

    def stop(self) -> None:
        """Stop the registry, dockerd (its containers with it) and containerd, and the sshd."""
        if self.registry_pid:
            _kill_wait(self.registry_pid)
            self.registry_pid = None
        if self.dockerd_pid:
            kids = _children(self.dockerd_pid)  # containerd
            if _running(self.dockerd_pid):
                if self.sock_dir and (self.sock_dir / "docker.sock").exists():
                    # Containers first, quickly (dockerd waits --shutdown-timeout otherwise).
                    with contextlib.suppress(Exception):
                        ids = self.docker("ps", "-q", timeout=10).stdout.split()
                        if ids:
                            self.docker("rm", "-f", *ids, timeout=30)
                _kill_wait(self.dockerd_pid, 30)
            for kid in kids:
                _kill_wait(kid, 10)
            self.dockerd_pid = None
        for pid in self._own_processes():  # shims of containers left behind (killed dockerd)
            _kill_wait(pid, 10)
        self.vps.stop()
        if self.sock_dir:
            _unmount_below(self.sock_dir, self.data_root)
        self.save()

    def _own_processes(self) -> list[int]:
        """Processes whose command line names our socket directory (dockerd, containerd, the
        shims: they are children of init once started): the directory is unique to this rig."""
        if not self.sock_dir:
            return []
        mark = str(self.sock_dir).encode() + b"/"
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if mark in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
        return found

    def cleanup(self) -> None:
        """Remove the short socket directory (after :meth:`stop`)."""
        if self.sock_dir and self.sock_dir.exists():
            shutil.rmtree(self.sock_dir, ignore_errors=True)

    def describe(self) -> dict[str, object]:
        return {
            "workdir": str(self.workdir),
            "sock_dir": str(self.sock_dir) if self.sock_dir else None,
            "docker_host": self.docker_host if self.sock_dir else None,
            "docker_config": str(self.docker_config),
            "data_root": str(self.data_root),
            "dockerd_pid": self.dockerd_pid,
            "dockerd_log": str(self.workdir / "dockerd.log"),
            "registry": self.registry,
            "registry_port": self.registry_port,
            "registry_pid": self.registry_pid,
            "registry_dir": str(self.registry_dir),
            "image_repo": self.image_repo,
            "image_ids": self.image_ids,
            "digests": self.digests,
            "project_dir": str(self.project_dir),
            "compose_file": str(self.compose_file),
            "project": PROJECT,
            "service": SERVICE,
            "app_port": self.app_port,
            "health_url": self.health_url,
            "host_state": str(self.host_state),
            "inventory": str(self.inventory),
            "ssh": self.vps.describe() if self.vps.ssh_port else None,
            "timings": self.timings,
        }

    def save(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "docker-rig.json").write_text(json.dumps(self.describe(), indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> DockerRig:
        data = json.loads((Path(workdir) / "docker-rig.json").read_text())
        rig = cls(Path(workdir))
        rig.sock_dir = Path(data["sock_dir"]) if data.get("sock_dir") else None
        rig.app_port, rig.registry_port = int(data["app_port"]), int(data["registry_port"])
        rig.dockerd_pid, rig.registry_pid = data.get("dockerd_pid"), data.get("registry_pid")
        rig.image_ids, rig.digests = dict(data["image_ids"]), dict(data["digests"])
        rig.timings = dict(data.get("timings") or {})
        if (rig.vps.workdir / "sandbox.json").exists():
            rig.vps = Sandbox.load(rig.vps.workdir)
        return rig

    # -- dockerd -----------------------------------------------------------------------------
    def _start_dockerd(self) -> None:
        assert self.sock_dir is not None
        d = self.sock_dir
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.docker_config.mkdir(parents=True, exist_ok=True)
        (self.docker_config / "config.json").write_text("{}\n")
        # Our own daemon.json, not /etc/docker/daemon.json; the key dockerd 20.10 writes
        # (unused) in the workdir, not in /etc/docker/key.json (a config key, no flag).
        (self.workdir / "daemon.json").write_text(
            json.dumps({"deprecated-key-path": str(self.workdir / "key.json")}) + "\n")
        argv = [
            DOCKERD,
            "--config-file", str(self.workdir / "daemon.json"),
            "--storage-driver=vfs", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
            "--bridge=none", f"--host=unix://{d / 'docker.sock'}",
            "--data-root", str(self.data_root), "--exec-root", str(d / "exec"),
            "--pidfile", str(d / "docker.pid"),
            "--shutdown-timeout", "3",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "dockerd.log", "ab"),  # noqa: SIM115 (owned by the child)
            env=env, start_new_session=True,
        )
        self.dockerd_pid = proc.pid
        self.save()
        end = time.monotonic() + 60
        delay = 0.05
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise SandboxError(f"dockerd exited ({proc.returncode}); see {self.workdir / 'dockerd.log'}")
            if self.docker("info", "--format", "{{.ServerVersion}}", timeout=10).returncode == 0:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        raise SandboxError(f"dockerd does not answer on {self.docker_host}; see {self.workdir / 'dockerd.log'}")

    def docker(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
        """``/usr/bin/docker *args`` against our daemon (argv, no shell)."""
        proc = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        if check and proc.returncode != 0:
            raise SandboxError(f"docker {' '.join(args[:3])} failed ({proc.returncode}): {proc.stderr[-800:]}")
        return proc

    def compose(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
        """``docker-compose *args`` in the project directory, against our daemon."""
        proc = subprocess.run([COMPOSE, *args], cwd=self.project_dir, env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        if check and proc.returncode != 0:
            raise SandboxError(f"docker-compose {' '.join(args[:3])} failed ({proc.returncode}): {proc.stderr[-800:]}")
        return proc

    def image_id(self, ref: str) -> str | None:
        """The full image id (sha256:...) of a local image reference; None when absent."""
        proc = self.docker("image", "inspect", "--format", "{{.Id}}", ref)
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    def api_container(self, *, running: bool = True) -> str | None:
        """The id of the compose service's container (the running one when ``running``)."""
        args = ["ps", "-q", "--no-trunc", "--filter", f"label=com.docker.compose.project={PROJECT}",
                "--filter", f"label=com.docker.compose.service={SERVICE}"]
        if not running:
            args.insert(1, "-a")
        ids = self.docker(*args).stdout.split()
        return ids[0] if ids else None

    def container_image_id(self) -> str | None:
        """The image id the running ``api`` container was created from; None when none runs."""
        cid = self.api_container()
        if cid is None:
            return None
        proc = self.docker("inspect", "--format", "{{.Image}}", cid)
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    # -- registry ----------------------------------------------------------------------------
    def start_registry(self) -> None:
        """Start the registry (again): same port, same storage."""
        if self.registry_pid and _running(self.registry_pid):
            return
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "registry.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.registry_dir / "data")},
                        "delete": {"enabled": True}, "cache": {"blobdescriptor": "inmemory"}},
            "http": {"addr": self.registry, "secret": "doai-sandbox-registry"},
        }, indent=2) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        proc = subprocess.Popen(
            [REGISTRY, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "registry.log", "ab"),  # noqa: SIM115 (owned by the child)
            env=env, start_new_session=True,
        )
        self.registry_pid = proc.pid
        self.save()
        wait_port(self.registry_port, 15)

    def stop_registry(self) -> None:
        """Stop the registry: pulls and pushes fail (connection refused) until start_registry."""
        if self.registry_pid:
            _kill_wait(self.registry_pid)
            self.registry_pid = None
            self.save()

    def registry_running(self) -> bool:
        return bool(self.registry_pid and _running(self.registry_pid))

    def _registry_request(self, method: str, path: str, *, data: bytes | None = None,
                          headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
        req = urllib.request.Request(f"http://{self.registry}/v2/{REPO_NAME}/{path}", data=data,
                                     method=method, headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read(), dict(resp.headers)

    def registry_digest(self, tag: str) -> str | None:
        """The manifest digest a registry tag points at; None when the tag does not exist."""
        try:
            _, headers = self._registry_request("HEAD", f"manifests/{tag}", headers={"Accept": MANIFEST_TYPES})
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return headers.get("Docker-Content-Digest")

    def registry_tag(self, tag: str, image_version: str) -> None:
        """Point the registry's ``tag`` at the built image ``image_version`` (v1, v2, v3, bad):
        the manifest is copied byte for byte, so the digest and the image id stay the same."""
        if image_version not in IMAGE_VERSIONS:
            raise SandboxError(f"no image {image_version!r}; one of {', '.join(IMAGE_VERSIONS)}")
        body, headers = self._registry_request(
            "GET", f"manifests/{self.digests[image_version]}", headers={"Accept": MANIFEST_TYPES})
        self._registry_request("PUT", f"manifests/{tag}", data=body,
                               headers={"Content-Type": headers.get("Content-Type", MANIFEST_TYPES.split(",")[0])})

    # -- images --------------------------------------------------------------------------------
    def _image_tarball(self, path: Path) -> None:
        """Every release in one ``docker save`` archive, made here rather than with ``docker
        build`` (~2 s an image with the classic builder and vfs; a load of all is well under 1 s).
        An image is two layers: /bin/busybox (shared) and /www (the release's files)."""
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        index = (APP_SRC / "www" / "index.html").read_text()
        blobs: dict[str, bytes] = {}

        def layer(files: dict[str, bytes | None], modes: dict[str, int]) -> tuple[str, str]:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.mtime, info.uid, info.gid = 0, 0, 0
                    if data is None:
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                    else:
                        info.size, info.mode = len(data), modes.get(name, 0o644)
                        tar.addfile(info, io.BytesIO(data))
            raw = buf.getvalue()
            digest = hashlib.sha256(raw).hexdigest()
            blobs[f"{digest}/layer.tar"] = raw
            return f"sha256:{digest}", f"{digest}/layer.tar"

        busybox = layer({"bin/": None, "bin/busybox": Path(BUSYBOX).read_bytes()}, {"bin/busybox": 0o755})
        manifest = []
        for name, version in IMAGE_VERSIONS.items():
            www: dict[str, bytes | None] = {
                "www/": None, "www/index.html": index.replace("__VERSION__", version or name).encode(),
                "www/api/": None,
            }
            if version is not None:  # bad: no health file, so /api/health is a 404
                www["www/api/health"] = (json.dumps({"status": "ok", "version": version}) + "\n").encode()
            files = layer(www, {})
            image_config: dict[str, object] = {
                "Cmd": ["/bin/busybox", "httpd", "-f", "-p", f"127.0.0.1:{self.app_port}", "-h", "/www"],
                "Labels": {"org.opencontainers.image.title": REPO_NAME,
                           "org.opencontainers.image.version": version or name},
            }
            if name in CRASHING:
                image_config["Entrypoint"] = ["/bin/busybox", "false"]
            config = json.dumps({
                "architecture": "amd64", "os": "linux", "created": created,
                "config": image_config,
                "rootfs": {"type": "layers", "diff_ids": [busybox[0], files[0]]},
                "history": [{"created": created, "created_by": "COPY /bin/busybox /bin/busybox"},
                            {"created": created, "created_by": f"COPY www-{name} /www"}],
            }, sort_keys=True).encode()
            config_name = hashlib.sha256(config).hexdigest() + ".json"
            blobs[config_name] = config
            manifest.append({"Config": config_name, "RepoTags": [f"{self.image_repo}:{name}"],
                             "Layers": [busybox[1], files[1]]})
        blobs["manifest.json"] = json.dumps(manifest).encode()
        with tarfile.open(path, "w") as tar:
            for name, data in blobs.items():
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))

    def _build_and_push(self) -> None:
        self.build_dir.mkdir(parents=True, exist_ok=True)
        archive = self.build_dir / "images.tar"
        self._image_tarball(archive)
        self.docker("load", "-q", "-i", str(archive), timeout=300, check=True)
        for name in IMAGE_VERSIONS:
            self.image_ids[name] = self.image_id(f"{self.image_repo}:{name}") or ""
        self.docker("push", "-q", "--all-tags", self.image_repo, timeout=300, check=True)
        for name in IMAGE_VERSIONS:
            self.digests[name] = self.registry_digest(name) or ""
        if len(set(self.image_ids.values())) != len(IMAGE_VERSIONS) or not all(self.digests.values()):
            raise SandboxError(f"images not distinct or not pushed: {self.image_ids} {self.digests}")
        for tag, version in REGISTRY_TAGS.items():
            self.registry_tag(tag, version)
        # The host has what it pulled, nothing it built: reset pulls :current.
        self.docker("rmi", "-f", *self.image_ids.values(), check=True)
        self.save()

    def write_compose(self) -> Path:
        self.project_dir.mkdir(parents=True, exist_ok=True)
        self.compose_file.write_text(
            "\n".join([
                "# The DoAi backend on the Docker VPS stand-in (written by docker_rig.py).",
                'version: "2.4"',
                "services:",
                f"  {SERVICE}:",
                f'    image: "{self.image_repo}:current"',
                "    network_mode: host",
                "    init: true",
                "    restart: unless-stopped",
                f'    command: ["/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:{self.app_port}", "-h", "/www"]',
                "",
            ])
        )
        return self.compose_file

    # -- reset -----------------------------------------------------------------------------------
    def reset(self) -> DockerRig:
        """Back to the initial state, for the next test, without building anything:

        * dockerd and the registry run (started again if a test stopped them);
        * the registry's :v1/:v2/:v3/:bad and :previous -> v2, :current -> v3 (tags a test
          pushed or moved are put back; other tags it created stay);
        * the project directory holds only docker-compose.yml, as written at start;
        * no container but the ``api`` one, created from v3 and running; no local image but
          v3, tagged ``:current`` only (so no :previous, no :rollback);
        * the host state directory (the role's ledger, lock) is empty; the inventory anew."""
        t0 = time.monotonic()
        if not self.dockerd_pid or not _running(self.dockerd_pid):
            log.warning("docker rig: dockerd is not running; starting it again")
            self._start_dockerd()
        self.start_registry()
        for name in IMAGE_VERSIONS:
            if self.registry_digest(name) != self.digests[name]:
                self.registry_tag(name, name)
        for tag, version in REGISTRY_TAGS.items():
            if self.registry_digest(tag) != self.digests[version]:
                self.registry_tag(tag, version)
        # The project directory: only our compose file.
        if self.project_dir.exists():
            for entry in self.project_dir.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry != self.compose_file:
                    entry.unlink()
        self.write_compose()
        v3 = self.image_ids["v3"]
        current = f"{self.image_repo}:current"
        # Containers: keep the api one only if it runs v3; everything else goes.
        api = self.api_container()
        keep = api if api and self.container_image_id() == v3 else None
        others = [c for c in self.docker("ps", "-aq", "--no-trunc").stdout.split() if c != keep]
        if others:
            self.docker("rm", "-f", *others, check=True)
        if self.image_id(current) != v3:
            self.docker("pull", "-q", current, timeout=120, check=True)
        # Images: untag everything but :current, then drop what is not v3.
        listing = self.docker("images", "-a", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
        refs, ids = [], set()
        for line in listing.splitlines():
            ref, _, image = line.rpartition(" ")
            if ref != current and not ref.endswith(":<none>") and not ref.startswith("<none>"):
                refs.append(ref)
            if image != v3:
                ids.add(image)
        if refs:
            self.docker("rmi", "--no-prune", *refs)
        if ids:
            self.docker("rmi", "-f", *sorted(ids))
        self.compose("up", "-d", "--remove-orphans", timeout=120, check=True)
        if self.container_image_id() != v3:
            raise SandboxError(f"api runs {self.container_image_id()}, not v3 {v3}")
        shutil.rmtree(self.host_state, ignore_errors=True)
        self.host_state.mkdir(parents=True, mode=0o700)
        if self.vps.ssh_port:
            if not self.vps.sshd_pid or not _running(self.vps.sshd_pid):
                self.vps._spawn_sshd()
            self.write_inventory()
        code, seen = self.wait_health(expect_ok=True)
        if seen != IMAGE_VERSIONS["v3"]:
            raise SandboxError(f"after reset the health says {code} {seen}, not v3")
        self.timings["reset_s"] = time.monotonic() - t0
        return self

    # -- the app ------------------------------------------------------------------------------------
    def health(self) -> tuple[int | None, str | None]:
        return http_health(self.health_url)

    def wait_health(self, *, expect_ok: bool | None = True, deadline_s: float = 30.0) -> tuple[int | None, str | None]:
        return wait_health(self.health_url, expect_ok=expect_ok, deadline_s=deadline_s)

    def write_inventory(self, **overrides: object) -> Path:
        """An inventory for the Docker VPS (reached over the sandbox sshd); ``overrides`` become
        host variables (None drops one: the role's default then applies)."""
        if not self.vps.ssh_port:
            raise SandboxError("the VPS sshd is not started (start(ssh=True))")
        # The Sandbox's SSH host variables; none of its PM2 ones.
        base = json.loads(self.vps.write_inventory().read_text())
        ssh_vars = {k: v for k, v in base["all"]["children"]["backend"]["hosts"][self.vps.host_name].items()
                    if k.startswith("ansible_")}
        hostvars: dict[str, object] = {
            **ssh_vars,
            "doai_backend_mode": "docker",
            "doai_backend_docker_image": self.image_repo,
            "doai_backend_docker_project_dir": str(self.project_dir),
            "doai_backend_docker_service": SERVICE,
            "doai_backend_docker_health_url": self.health_url,
            "doai_backend_docker_docker_host": self.docker_host,
            "doai_backend_docker_docker_bin": DOCKER,
            "doai_backend_docker_state_dir": str(self.host_state),
            "doai_backend_docker_health_timeout": 20,
            "doai_backend_docker_stable_seconds": 2,
        }
        hostvars.update(overrides)
        hostvars = {k: v for k, v in hostvars.items() if v is not None}
        inv = {"all": {"children": {"backend": {"hosts": {self.host_name: hostvars}}}}}
        self.inventory_dir.mkdir(parents=True, exist_ok=True)
        self.inventory.write_text(json.dumps(inv, indent=2) + "\n")  # JSON is YAML
        return self.inventory


def _main(argv: list[str] | None = None) -> int:
    """``python -m doai_ansible.sandbox.docker_rig start|stop|reset|describe --workdir DIR``: the
    Docker VPS stand-in for Molecule, the benchmarks and manual trials; prints it as JSON."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m doai_ansible.sandbox.docker_rig")
    ap.add_argument("action", choices=["start", "stop", "reset", "describe"])
    ap.add_argument("--workdir", required=True, type=Path)
    args = ap.parse_args(argv)
    if args.action == "start":
        rig = DockerRig(args.workdir)
        try:
            rig.start()
        except BaseException:
            rig.stop()
            rig.cleanup()
            raise
        print(json.dumps(rig.describe(), indent=2))
    elif args.action == "stop":
        if (args.workdir / "docker-rig.json").exists():
            rig = DockerRig.load(args.workdir)
            rig.stop()
            rig.cleanup()
    elif args.action == "reset":
        rig = DockerRig.load(args.workdir)
        rig.reset()
        rig.save()
        print(json.dumps(rig.describe(), indent=2))
    else:
        print(json.dumps(DockerRig.load(args.workdir).describe(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
