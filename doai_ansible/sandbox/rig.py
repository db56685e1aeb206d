"""A local stand-in for the DoAi VPS: a loopback sshd, a git-deployed Node app under PM2.

Used by ``doai-rollback demo``, the integration tests, the Molecule scenario and the
benchmarks, so all of them exercise the same real parts: OpenSSH, git, npm, PM2 in cluster
mode. Every process it starts listens on 127.0.0.1 only and is stopped by PID in
:meth:`Sandbox.stop`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from doai_ansible.errors import DoaiError

log = logging.getLogger(__name__)

APP_SRC = Path(__file__).resolve().parent / "app"
# v1 good, v2 good (other lockfile), v3 bad (health 500), v4 healthy at first but its server
# exits 6 s after it starts (PM2 restarts it, and again): a crash the health gate's restart
# watch must catch. v4 is a commit on top of v3 that HEAD never pointed at (tag only): the
# history that v1..v3's tests read (log, reflog) is as it was without it. v5 (also a tag only, on
# top of v3) dies as it starts: a crash loop that never answers health, which the restart count
# must catch long before the health deadline.
VERSIONS = ("v1", "v2", "v3", "v4", "v5")
CRASH_AFTER_S = 6
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd")


class SandboxError(DoaiError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str, env_var: str) -> str:
    found = os.environ.get(env_var) or shutil.which(name)
    if not found:
        raise SandboxError(f"{name} not found", hint=f"install it (see .ci/setup) or set {env_var}")
    return str(Path(found).resolve()) if env_var != "DOAI_SSHD" else found


def _run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise SandboxError(f"{' '.join(argv[:3])} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-800:]}")
    return proc.stdout


def wait_port(port: int, deadline_s: float = 15.0) -> None:
    end = time.monotonic() + deadline_s
    delay = 0.02
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise SandboxError(f"nothing listens on 127.0.0.1:{port} after {deadline_s:.0f} s")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (our own child, killed and not reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _descendants(root: int) -> list[int]:
    """Pids below ``root`` in the process tree (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def http_health(url: str, timeout: float = 2.0) -> tuple[int | None, str | None]:
    """(status, reported version) of a health URL; (None, None) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    except (urllib.error.URLError, OSError):
        return None, None
    try:
        version = json.loads(body).get("version")
    except (ValueError, AttributeError):
        version = None
    return status, version


def wait_health(url: str, *, expect_ok: bool | None = True, deadline_s: float = 30.0) -> tuple[int | None, str | None]:
    """Wait until ``url`` answers: 2xx when ``expect_ok``, not 2xx when False, anything when None."""
    end = time.monotonic() + deadline_s
    delay = 0.05
    status, version = None, None
    while time.monotonic() < end:
        status, version = http_health(url)
        if status is not None and (expect_ok is None or (200 <= status < 300) == expect_ok):
            return status, version
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise SandboxError(f"health {url} still {status} after {deadline_s:.0f} s")


class Sandbox:
    """The rig. ``Sandbox(workdir).start()``; then ``deploy('v3')``; ``stop()`` at the end."""

    host_name = "sandbox-vps"

    def __init__(self, workdir: Path, *, instances: int = 2) -> None:
        self.workdir = Path(workdir).absolute()
        self.instances = instances
        self.ssh_dir = self.workdir / "ssh"
        self.app = self.workdir / "srv" / "doai-backend"
        self.pm2_home = self.workdir / "pm2"
        self.host_state = self.workdir / "host-state"
        self.inventory_dir = self.workdir / "inventory"
        self.ssh_port = 0
        self.app_port = 0
        self.sshd_pid: int | None = None
        self.commits: dict[str, str] = {}
        self.pm2 = _which("pm2", "DOAI_PM2_BIN")
        self.npm = _which("npm", "DOAI_NPM_BIN")
        self.git = _which("git", "DOAI_GIT_BIN")

    # -- environment -------------------------------------------------------------------
    @property
    def pm2_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PM2_")}
        env["PM2_HOME"] = str(self.pm2_home)
        return env

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}/api/health"

    @property
    def inventory(self) -> Path:
        return self.inventory_dir / "hosts.yml"

    @property
    def ledger(self) -> Path:
        return self.host_state / "ledger.jsonl"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, *, deploy: str = "v2") -> Sandbox:
        self.start_ssh()
        self.app_port = free_port()
        self._make_repo()
        self.write_inventory()
        self._checkout(deploy)
        _run([self.npm, "ci", "--omit=dev", "--no-audit", "--no-fund"], cwd=self.app)
        self._start_pm2()
        self.record_deploy(None, self.commits[deploy])
        self.save()
        return self

    def start_ssh(self) -> Sandbox:
        """Only the VPS's sshd (keys, known_hosts, config) on a free loopback port: no app, no
        PM2. ``start`` begins with it; the Docker rig (docker_rig.py) uses it alone."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ssh_port = free_port()
        self._start_sshd()
        return self

    def describe(self) -> dict[str, object]:
        return {
            "workdir": str(self.workdir), "ssh_port": self.ssh_port, "app_port": self.app_port,
            "sshd_pid": self.sshd_pid, "commits": self.commits, "inventory": str(self.inventory),
            "app": str(self.app), "pm2_home": str(self.pm2_home), "health_url": self.health_url,
            "host_state": str(self.host_state), "ssh_dir": str(self.ssh_dir),
            "private_key": str(self.ssh_dir / "client_ed25519"), "known_hosts": str(self.ssh_dir / "known_hosts"),
        }

    def save(self) -> None:
        (self.workdir / "sandbox.json").write_text(json.dumps(self.describe(), indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> Sandbox:
        data = json.loads((Path(workdir) / "sandbox.json").read_text())
        sb = cls(Path(workdir))
        sb.ssh_port, sb.app_port = int(data["ssh_port"]), int(data["app_port"])
        sb.sshd_pid, sb.commits = data.get("sshd_pid"), dict(data["commits"])
        return sb

    def stop(self) -> None:
        if self.pm2_home.exists():
            with contextlib.suppress(Exception):
                subprocess.run([self.pm2, "kill"], env=self.pm2_env, capture_output=True, timeout=30, check=False)
        if self.sshd_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.sshd_pid, signal.SIGTERM)
            self.sshd_pid = None

    # -- sshd ---------------------------------------------------------------------------
    def _start_sshd(self) -> None:
        d = self.ssh_dir
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        for key in ("host_ed25519", "client_ed25519"):
            if not (d / key).exists():
                _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"doai-sandbox-{key}", "-f", str(d / key)])
        shutil.copyfile(d / "client_ed25519.pub", d / "authorized_keys")
        os.chmod(d / "authorized_keys", 0o600)
        host_pub = (d / "host_ed25519.pub").read_text().split()
        (d / "known_hosts").write_text(f"[127.0.0.1]:{self.ssh_port} {host_pub[0]} {host_pub[1]}\n")
        (d / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {self.ssh_port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {d / 'host_ed25519'}",
                    f"PidFile {d / 'sshd.pid'}",
                    f"AuthorizedKeysFile {d / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "MaxSessions 64",
                    "MaxStartups 64:30:128",
                    "Subsystem sftp internal-sftp",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        self._spawn_sshd()

    def _spawn_sshd(self) -> None:
        """Start sshd with the sandbox's config (port, host key) and wait until it listens."""
        sshd = next((c for c in SSHD_CANDIDATES if os.access(c, os.X_OK)), None)
        if sshd is None:
            raise SandboxError("sshd not found", hint="apt-get install openssh-server")
        d = self.ssh_dir
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
        proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(d / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=open(d / "sshd.log", "ab"),  # noqa: SIM115 (owned by the child)
            start_new_session=True,
        )
        self.sshd_pid = proc.pid
        wait_port(self.ssh_port)

    def cut_ssh(self, seconds: float) -> list[int]:
        """A dropped link: every SSH connection to the sandbox is cut and new ones are refused
        for ``seconds``, then sshd listens again on the same port with the same host key.

        Kills the listening sshd and its session processes (the sshd processes below it), as
        an outage or an sshd crash would; what the sessions started keeps running, as it does
        on a real host (a detached job survives, a foreground command loses its pipes).
        Returns the pids killed."""
        if not self.sshd_pid:
            raise SandboxError("sshd is not running")
        os.kill(self.sshd_pid, signal.SIGSTOP)  # accept no new session while we look
        sessions = [pid for pid in _descendants(self.sshd_pid) if _comm(pid).startswith("sshd")]
        killed = []
        for pid in [self.sshd_pid, *sessions]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.sshd_pid, 0)  # our child: reap it
        log.info("sandbox sshd down (killed %s) for %.1f s", killed, seconds)
        time.sleep(seconds)
        self._spawn_sshd()
        self.save()
        return killed

    def app_processes(self) -> list[tuple[int, list[str]]]:
        """(pid, argv) of the processes working in the app's checkout (``ps`` with cwd)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(entry / "cwd") == os.path.realpath(self.app):
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                    found.append((int(entry.name), [a.decode(errors="replace") for a in argv if a]))
        return found

    def ssh_argv(self, *command: str) -> list[str]:
        d = self.ssh_dir
        return [
            "ssh", "-p", str(self.ssh_port), "-i", str(d / "client_ed25519"),
            "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "root@127.0.0.1", *command,
        ]

    # -- the app --------------------------------------------------------------------------
    def _git(self, *args: str) -> str:
        env = dict(os.environ, GIT_AUTHOR_NAME="DoAi Dev", GIT_AUTHOR_EMAIL="dev@doai.invalid",
                   GIT_COMMITTER_NAME="DoAi Dev", GIT_COMMITTER_EMAIL="dev@doai.invalid")
        return _run([self.git, "-C", str(self.app), *args], env=env)

    def _make_repo(self) -> None:
        if (self.app / ".git").exists():
            raise SandboxError(f"{self.app} exists already; use a new workdir")
        self.app.mkdir(parents=True)
        self._git("init", "-q", "-b", "main")
        shutil.copyfile(APP_SRC / "server.js", self.app / "server.js")
        shutil.copyfile(APP_SRC / ".gitignore", self.app / ".gitignore")
        for i, version in enumerate(VERSIONS):
            src = APP_SRC / ("v1" if version == "v1" else "v2")  # v3 and v4 keep v2's lockfile
            pkg = json.loads((src / "package.json").read_text())
            pkg["version"] = f"{i + 1}.0.0"
            (self.app / "package.json").write_text(json.dumps(pkg, indent=2) + "\n")
            # The lockfile is committed as generated: v3 shares v2's byte for byte.
            shutil.copyfile(src / "package-lock.json", self.app / "package-lock.json")
            (self.app / "release.json").write_text(json.dumps({"broken": version == "v3"}) + "\n")
            if version == "v5":
                shutil.copyfile(APP_SRC / "server.js", self.app / "server.js")
                with (self.app / "server.js").open("a", encoding="utf-8") as fh:
                    fh.write("\n// v5's bug: the worker dies as it starts.\nprocess.exit(1);\n")
            if version == "v4":
                with (self.app / "server.js").open("a", encoding="utf-8") as fh:
                    fh.write(f"\n// v4's bug: the worker dies {CRASH_AFTER_S} s after it starts.\n"
                             f"setTimeout(() => process.exit(1), {CRASH_AFTER_S * 1000});\n")
            self._git("add", "-A")
            subject = {"v1": "v1: first release", "v2": "v2: add dayjs dependency", "v3": "v3: bad release",
                       "v4": f"v4: crashes {CRASH_AFTER_S} s after start",
                       "v5": "v5: crashes as it starts"}[version]
            if version in ("v4", "v5"):  # beside the branch: not in HEAD's reflog, the default target's fallback
                tree = self._git("write-tree").strip()
                self.commits[version] = self._git("commit-tree", tree, "-p", "HEAD", "-m", subject).strip()
                self._git("tag", version, self.commits[version])
                self._git("reset", "-q", "--hard")
                continue
            self._git("commit", "-q", "-m", subject)
            self._git("tag", version)  # releases are tagged: `--to v2` works on every host
            self.commits[version] = self._git("rev-parse", "HEAD").strip()

    def _checkout(self, version: str) -> None:
        self._git("checkout", "-q", "--detach", self.commits.get(version, version))

    def _start_pm2(self) -> None:
        eco = self.workdir / "ecosystem.config.js"
        eco.write_text(
            (APP_SRC / "ecosystem.config.js.tmpl")
            .read_text()
            .replace("__APP__", json.dumps(str(self.app)))
            .replace("__PORT__", str(self.app_port))
            .replace("instances: 2", f"instances: {self.instances}")
        )
        _run([self.pm2, "start", str(eco)], env=self.pm2_env, timeout=60)
        self.wait_health(expect_ok=None)

    def head(self) -> str:
        return self._git("rev-parse", "HEAD").strip()

    def record_deploy(self, from_sha: str | None, to_sha: str) -> None:
        """What a deployment pipeline writes to the host's ledger (see the role README)."""
        self.host_state.mkdir(parents=True, exist_ok=True, mode=0o700)
        rec = {
            "action": "deploy", "from": from_sha, "to": to_sha, "result": "deployed",
            "who": "sandbox-ci", "why": "sandbox deployment",
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with self.ledger.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")

    def deploy(self, version: str) -> None:
        """Deploy a version the way the team's pipeline does (not through the rollback tool)."""
        before = self.head()
        target = self.commits[version]
        lock_changed = subprocess.run(
            [self.git, "-C", str(self.app), "diff", "--quiet", before, target, "--", "package-lock.json"],
            check=False,
        ).returncode == 1
        self._checkout(version)
        if lock_changed:
            _run([self.npm, "ci", "--omit=dev", "--no-audit", "--no-fund"], cwd=self.app)
        _run([self.pm2, "reload", "all"], env=self.pm2_env, timeout=60)
        self.record_deploy(before, target)

    def reset(self, *, deploy: str | None = "v3") -> Sandbox:
        """Back to what ``start(deploy="v2")`` then ``deploy("v3")`` leaves (``deploy=None``: v2
        live, healthy, nothing deployed over it; the system rig's good state), for the next test:
        quicker than a new rig (sshd, the repo and PM2 stay up) and as independent (the host
        state -- ledger, locks, jobs, node_modules cache --, the checkout, the reflog the default
        target falls back on, node_modules, the inventory and the served release are made anew)."""
        if not self.sshd_pid or not _running(self.sshd_pid):
            self._spawn_sshd()
        self._git("reset", "-q", "--hard")
        self._git("clean", "-q", "-f", "-d", "-x", "-e", "node_modules")
        # The reflog a fresh rig has: v1, then v2 (a checkout of the commit HEAD is on logs nothing).
        self._checkout("v2")
        self._git("reflog", "expire", "--expire=now", "--all")
        for version in ("v1", "v2"):
            self._checkout(version)
        if not self._node_modules_match():
            _run([self.npm, "ci", "--omit=dev", "--no-audit", "--no-fund"], cwd=self.app)
        shutil.rmtree(self.host_state, ignore_errors=True)
        self.write_inventory()
        if any(p.get("status") != "online" for p in self.pm2_processes()) or not self.pm2_processes():
            subprocess.run([self.pm2, "delete", "all"], env=self.pm2_env, capture_output=True, timeout=60, check=False)
            self._start_pm2()
        else:
            _run([self.pm2, "reload", "all"], env=self.pm2_env, timeout=60)
        self.record_deploy(None, self.commits["v2"])
        if deploy is None:
            self.wait_health(expect_ok=True)
        else:
            self.deploy(deploy)
            self.wait_health(expect_ok=deploy != "v3")
        self.save()
        return self

    def _node_modules_match(self) -> bool:
        """node_modules was installed from the checkout's lockfile (npm's own record of it)."""
        try:
            want = json.loads((self.app / "package-lock.json").read_text()).get("packages", {})
            have = json.loads((self.app / "node_modules" / ".package-lock.json").read_text()).get("packages", {})
        except (OSError, ValueError):
            return False
        return {k: v.get("version") for k, v in want.items() if k} == {k: v.get("version") for k, v in have.items()}

    def pm2_processes(self) -> list[dict[str, object]]:
        out = _run([self.pm2, "jlist"], env=self.pm2_env)
        raw = json.loads(out[out.find("["):])
        return [
            {"name": p["name"], "pm_id": p["pm_id"], "status": p["pm2_env"]["status"],
             "restarts": p["pm2_env"].get("restart_time", 0)}
            for p in raw
        ]

    def health(self) -> tuple[int | None, str | None]:
        return http_health(self.health_url)

    def wait_health(self, *, expect_ok: bool | None = True, deadline_s: float = 30.0) -> tuple[int | None, str | None]:
        return wait_health(self.health_url, expect_ok=expect_ok, deadline_s=deadline_s)

    def write_inventory(self, **overrides: object) -> Path:
        """An inventory for the sandbox host; ``overrides`` become host variables (None drops one:
        the role's default then applies, e.g. ``doai_backend_pm2_stable_seconds=None``)."""
        self.inventory_dir.mkdir(parents=True, exist_ok=True)
        d = self.ssh_dir
        hostvars: dict[str, object] = {
            "ansible_host": "127.0.0.1",
            "ansible_port": self.ssh_port,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(d / "client_ed25519"),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={d / 'known_hosts'} -o StrictHostKeyChecking=yes "
            "-o IdentitiesOnly=yes",
            # The system Python: a version manager's shim costs every task a little.
            "ansible_python_interpreter": "/usr/bin/python3" if os.path.exists("/usr/bin/python3")
            else (shutil.which("python3") or "python3"),
            "doai_backend_pm2_path": str(self.app),
            "doai_backend_pm2_home": str(self.pm2_home),
            "doai_backend_pm2_bin": self.pm2,
            "doai_backend_pm2_npm_bin": self.npm,
            "doai_backend_pm2_git_bin": self.git,
            "doai_backend_pm2_health_url": self.health_url,
            "doai_backend_pm2_state_dir": str(self.host_state),
            "doai_backend_pm2_health_timeout": 20,
            # Short, to keep the test suite quick; a test of the default window drops it (None).
            "doai_backend_pm2_stable_seconds": 2,
        }
        hostvars.update(overrides)
        hostvars = {k: v for k, v in hostvars.items() if v is not None}  # None: the role's default
        inv = {"all": {"children": {"backend": {"hosts": {self.host_name: hostvars}}}}}
        self.inventory.write_text(json.dumps(inv, indent=2) + "\n")  # JSON is YAML
        return self.inventory


def _main(argv: list[str] | None = None) -> int:
    """``python -m doai_ansible.sandbox start|stop|deploy|describe|cut-ssh --workdir DIR``: the rig
    for Molecule, the benchmarks and manual trials. ``start`` prints the sandbox as JSON;
    ``cut-ssh`` drops every SSH connection and refuses new ones for ``--seconds``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m doai_ansible.sandbox")
    ap.add_argument("action", choices=["start", "stop", "deploy", "describe", "cut-ssh"])
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--version", default="v3", choices=list(VERSIONS), help="for start: deployed over v2; deploy: this")
    ap.add_argument("--seconds", type=float, default=5.0, help="for cut-ssh: how long sshd stays down")
    args = ap.parse_args(argv)
    if args.action == "start":
        sb = Sandbox(args.workdir).start(deploy="v2")
        if args.version != "v2":
            sb.deploy(args.version)
        print(json.dumps(sb.describe(), indent=2))
    elif args.action == "stop":
        if (args.workdir / "sandbox.json").exists():
            Sandbox.load(args.workdir).stop()
    elif args.action == "deploy":
        sb = Sandbox.load(args.workdir)
        sb.deploy(args.version)
        print(json.dumps(sb.describe(), indent=2))
    elif args.action == "cut-ssh":
        Sandbox.load(args.workdir).cut_ssh(args.seconds)
    else:
        print(json.dumps(Sandbox.load(args.workdir).describe(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
