"""Linux stand-in PCs for the desktop agent's rollback (issue 10). Not Windows coverage.

One loopback sshd (a :class:`~doai_ansible.sandbox.rig.Sandbox`'s ``start_ssh``) serves every
stand-in PC. Each PC is an inventory host (``pc01``, ``pc02`` ...) in group ``agents`` that
points at ``127.0.0.1:<sshd port>`` as root with the rig's key and known_hosts
(StrictHostKeyChecking=yes); its own host variables give it its own filesystem root::

    <workdir>/pcs/pc01/Users/                      doai_agent_profiles_root
        alice/AppData/Local/DoAi-Desktop-Agent/    the agent folder (the Windows layout)
            app-current/   VERSION "2.0.0", agent.py, config.json (the user's settings)
            app-backup/    VERSION "1.9.0", agent.py, config.json (older settings: rev 1)
            app-failed/    only with ``app_failed=True``: VERSION "1.9.5" (an earlier incident)
            agent.pid      the running agent's pid (written by the agent)
            agent.status.json  {"pid", "version", "app_dir", "state": running|stopping|stopped}
            agent.log      the agent's stderr
        bob/AppData/Local/DoAi-Desktop-Agent/      the same, other settings
        guest/AppData/Local/                       a profile without the agent (discovery skips it)
    <workdir>/pcs/pc01/standin/<user>.json         the rig's knobs for that agent (slow exit)

Where config.json lives: the seed names it among the folder's entries and says it must be
restored after a reinstall; it does not say whether the app directory or the folder holds it.
The rig puts it in ``app-current`` by default (the harder case: the swap must carry the user's
file over into the new app-current, app-backup holds an older copy with ``settings_rev`` 1);
``config_location="folder"`` puts it beside the app directories instead. The host variable
``doai_agent_config_file`` says which (relative to the agent folder).

The stand-in agent (``agent.py``, run from app-current with /usr/bin/python3) reads VERSION at
start and keeps it open, works in its app directory, writes ``agent.pid`` and
``agent.status.json``, and exits on SIGTERM.

* "Locked" (Windows refuses to rename a directory whose files are in use; Linux does not): the
  file ``<app dir>/.locked`` holds one pid per line; the directory counts as locked while the
  file exists and any pid in it runs (``kill -0``). A dead holder releases its lock, as on
  Windows. The running agent holds its own app directory's lock (its pid, removed when it
  exits); :meth:`AgentRig.lock` adds an outside holder (an "antivirus scan": a ``sleep``
  process, for ``seconds`` or until the rig stops). The role's POSIX primitive must refuse to
  rename a locked directory and retry within its deadline.
* "Slow exit": ``<pc>/standin/<user>.json`` ``{"slow_exit_s": N}`` (:meth:`AgentRig.set_slow_exit`)
  makes the agent, on SIGTERM, keep running (and holding its lock) for N more seconds; the
  file is read when the signal arrives, so it applies to agents the role started too.

Starting the agent on a stand-in PC (what the role's POSIX "start" does), as root:
``setsid -f /usr/bin/python3 <folder>/app-current/agent.py </dev/null >>/dev/null 2>&1``
(the agent appends its own stderr to ``<folder>/agent.log``). Stopping: SIGTERM to the pid in
``agent.pid``, then wait until it is gone.

The reinstall's stand-ins (not Windows installers): every app directory holds ``uninstall``,
an uninstaller that removes its own app directory (as an NSIS uninstaller removes the install
dir); :meth:`AgentRig.make_installer` writes an "installer" (a Python script) that, run with
``--folder <agent folder>``, writes ``app-current`` with its version, the agent, the uninstaller
and the installer's default ``config.json`` (``settings_rev`` 0: the user's must be restored);
its failing variant writes half an ``app-current`` and exits 3. The role puts it in
``<pc>/stage/<stamp>/`` (``doai_agent_posix_stage_dir``) and runs it there.

Every process the rig starts (sshd, agents, lock holders) is stopped by PID in :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from doai_ansible.sandbox.rig import Sandbox, SandboxError, _comm, _descendants, _running, wait_port

log = logging.getLogger(__name__)

AGENT_DIR = Path("AppData") / "Local" / "DoAi-Desktop-Agent"
APP_DIRS = ("app-current", "app-backup", "app-failed")
RIG_FILES = ("config.json", "agent.pid", "agent.status.json", "agent.log")
# Written by a running agent (pid, status, log, its app directory's lock) or by the role (its
# marker): not part of what a rollback and its undo must leave as they found it.
RUNTIME_FILES = ("agent.pid", "agent.status.json", "agent.log", ".locked", ".doai-rollback.json")
VERSIONS = {"app-current": "2.0.0", "app-backup": "1.9.0", "app-failed": "1.9.5"}
DEFAULT_USERS = ("alice", "bob")
BARE_USERS = ("guest",)  # a profile without the agent
AGENT_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else (shutil.which("python3") or "python3")
# One sshd for every PC: each PC has a connection of its own (own ControlPath), so up to
# ``forks`` connections start at once; well above the 64 of the Sandbox's config.
SSHD_LIMITS = {"MaxSessions": "256", "MaxStartups": "256:30:512"}

AGENT_PY = r'''"""DoAi desktop agent STAND-IN (doai_ansible/sandbox/agent_rig.py): a Linux test double."""
import json, os, signal, sys, time
from pathlib import Path

APP = Path(__file__).resolve().parent
FOLDER = APP.parent
USER = FOLDER.parents[2].name
CONTROL = FOLDER.parents[4] / "standin" / (USER + ".json")
LOCK = APP / ".locked"
PID = os.getpid()


def write_json(path, data):
    tmp = path.with_name(path.name + ".%d.tmp" % PID)
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


def lock_edit(add):
    pids = []
    try:
        pids = [p for p in LOCK.read_text().split() if p != str(PID)]
    except OSError:
        pass
    if add:
        pids.append(str(PID))
    if pids:
        tmp = LOCK.with_name(".locked.%d.tmp" % PID)
        tmp.write_text("\n".join(pids) + "\n")
        os.replace(tmp, LOCK)
    else:
        try:
            LOCK.unlink()
        except OSError:
            pass


os.chdir(APP)
held = open(APP / "VERSION")  # kept open while the agent runs
version = held.read().strip()
config = None
for candidate in (APP / "config.json", FOLDER / "config.json"):
    if candidate.exists():
        config = str(candidate)
        break
lock_edit(True)
(FOLDER / "agent.pid").write_text("%d\n" % PID)
status = {"pid": PID, "version": version, "app_dir": str(APP), "config": config,
          "started_at": time.time(), "state": "running"}
write_json(FOLDER / "agent.status.json", status)
exit_at = None


def on_term(signum, frame):
    global exit_at
    if exit_at is not None:
        return
    slow = 0.0
    try:
        slow = float(json.loads(CONTROL.read_text()).get("slow_exit_s") or 0)
    except (OSError, ValueError, AttributeError):
        pass
    exit_at = time.monotonic() + slow
    status["state"] = "stopping"
    write_json(FOLDER / "agent.status.json", status)


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
while exit_at is None or time.monotonic() < exit_at:
    time.sleep(0.05)
lock_edit(False)
try:
    if (FOLDER / "agent.pid").read_text().strip() == str(PID):
        (FOLDER / "agent.pid").unlink()
except OSError:
    pass
status["state"] = "stopped"
write_json(FOLDER / "agent.status.json", status)
held.close()
'''


UNINSTALL_PY = r'''"""DoAi desktop agent uninstaller STAND-IN: removes its own app directory."""
import shutil, sys
from pathlib import Path

app = Path(__file__).resolve().parent
shutil.rmtree(app)
print("uninstalled", app)
'''

INSTALLER_PY = r'''"""DoAi desktop agent installer STAND-IN (doai_ansible/sandbox/agent_rig.py), version @VERSION@."""
import json, os, sys
from pathlib import Path

VERSION, FAIL = "@VERSION@", @FAIL@
AGENT_PY, UNINSTALL_PY = @AGENT_PY@, @UNINSTALL_PY@
args = sys.argv[1:]
if len(args) != 2 or args[0] != "--folder":
    sys.exit("usage: installer --folder <agent folder>")
app = Path(args[1]) / "app-current"
if app.exists():
    sys.exit("%s exists: uninstall first" % app)
app.mkdir(parents=True)
(app / "agent.py").write_text(AGENT_PY)
if FAIL:
    sys.exit("installer %s: installation failed half way" % VERSION)
(app / "uninstall").write_text("#!@PYTHON@\n" + UNINSTALL_PY)
os.chmod(app / "uninstall", 0o755)
(app / "resources").mkdir()
(app / "resources" / "app.bin").write_bytes(("doai-agent %s\n" % VERSION).encode() * 64)
(app / "config.json").write_text(json.dumps({"settings_rev": 0, "server_url": "http://127.0.0.1:3001"}) + "\n")
(app / "VERSION").write_text(VERSION + "\n")
print("installed", VERSION, "in", app)
'''


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _reap_or_wait(pid: int, procs: dict[int, subprocess.Popen[bytes]], deadline: float) -> bool:
    """True once ``pid`` is gone (reaped when it is our child) before ``deadline`` (monotonic)."""
    while time.monotonic() < deadline:
        proc = procs.get(pid)
        if proc is not None:
            if proc.poll() is not None:
                procs.pop(pid, None)
                return True
        elif not _running(pid):
            return True
        time.sleep(0.02)
    return False


class AgentRig:
    """``AgentRig(workdir, pcs=4, unreachable=1).start()``; ``reset()`` before each test;
    ``stop()`` and ``cleanup()`` at the end. PCs are named ``pc01`` ...; the unreachable ones
    are the last ``unreachable`` of them (their ``ansible_port`` is a closed port)."""

    group = "agents"

    def __init__(self, workdir: Path, *, pcs: int = 4, unreachable: int = 0,
                 users: tuple[str, ...] = DEFAULT_USERS, bare_users: tuple[str, ...] = BARE_USERS,
                 app_failed: bool = False, config_location: str = "app-current") -> None:
        self.workdir = Path(workdir).absolute()
        self._configure(pcs=pcs, unreachable=unreachable, users=users, bare_users=bare_users,
                        app_failed=app_failed, config_location=config_location)
        self.vps = Sandbox(self.workdir / "ssh-host")  # its sshd only
        self.inventory_dir = self.workdir / "inventory"
        self.closed_port = 0
        self._closed_sock: socket.socket | None = None
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self.holder_pids: list[int] = []
        self.config_checksums: dict[str, str] = {}  # "pc/user" -> sha256 of the seeded config
        self.timings: dict[str, float] = {}

    def _configure(self, *, pcs: int, unreachable: int, users: tuple[str, ...], bare_users: tuple[str, ...],
                   app_failed: bool, config_location: str) -> None:
        if config_location not in ("app-current", "folder"):
            raise SandboxError(f"config_location must be app-current or folder, not {config_location!r}")
        if not 0 <= unreachable <= pcs or pcs > 99:
            raise SandboxError(f"unreachable={unreachable} with pcs={pcs}")
        self.n_pcs = pcs
        self.n_unreachable = unreachable
        self.users = tuple(users)
        self.bare_users = tuple(bare_users)
        self.app_failed = app_failed
        self.config_location = config_location

    def options(self) -> dict[str, object]:
        return {"pcs": self.n_pcs, "unreachable": self.n_unreachable, "users": self.users,
                "bare_users": self.bare_users, "app_failed": self.app_failed,
                "config_location": self.config_location}

    # -- names -------------------------------------------------------------------------------
    @property
    def pcs(self) -> list[str]:
        return [f"pc{i:02d}" for i in range(1, self.n_pcs + 1)]

    @property
    def unreachable(self) -> list[str]:
        return self.pcs[self.n_pcs - self.n_unreachable:] if self.n_unreachable else []

    @property
    def reachable(self) -> list[str]:
        return [pc for pc in self.pcs if pc not in self.unreachable]

    @property
    def inventory(self) -> Path:
        return self.inventory_dir / "hosts.yml"

    @property
    def ssh_port(self) -> int:
        return self.vps.ssh_port

    def pc_dir(self, pc: str) -> Path:
        return self.workdir / "pcs" / pc

    def profiles_root(self, pc: str) -> Path:
        return self.pc_dir(pc) / "Users"

    def folder(self, pc: str, user: str) -> Path:
        return self.profiles_root(pc) / user / AGENT_DIR

    def config_path(self, pc: str, user: str) -> Path:
        folder = self.folder(pc, user)
        return folder / "app-current" / "config.json" if self.config_location == "app-current" else folder / "config.json"

    def control_file(self, pc: str, user: str) -> Path:
        return self.pc_dir(pc) / "standin" / f"{user}.json"

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> AgentRig:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.save()  # from here on `stop` finds what to stop
        self.vps.start_ssh()
        self._raise_sshd_limits()
        self.vps.save()
        self._hold_closed_port()
        self.timings["sshd_s"] = time.monotonic() - t0
        self._seed_all()
        self.start_all_agents()
        self.write_inventory()
        self.timings["start_s"] = time.monotonic() - t0
        self.save()
        return self

    def _raise_sshd_limits(self) -> None:
        cfg = self.vps.ssh_dir / "sshd_config"
        lines = [ln for ln in cfg.read_text().splitlines() if ln.split(" ", 1)[0] not in SSHD_LIMITS]
        lines += [f"{k} {v}" for k, v in SSHD_LIMITS.items()]
        cfg.write_text("\n".join(ln for ln in lines if ln) + "\n")
        self._restart_sshd()

    def _restart_sshd(self) -> None:
        if self.vps.sshd_pid and _running(self.vps.sshd_pid):
            os.kill(self.vps.sshd_pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.vps.sshd_pid, 0)
        self.vps._spawn_sshd()

    def _hold_closed_port(self) -> None:
        """A port that refuses connections for as long as this process lives: bound, never
        listening (nothing else can take it meanwhile)."""
        if self._closed_sock is None:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            self._closed_sock = s
            self.closed_port = s.getsockname()[1]

    def stop(self) -> None:
        """Every stand-in agent and lock holder, then the sshd, by PID."""
        self.kill_all()
        pid = self.vps.sshd_pid
        if pid and _running(pid) and "sshd" in " ".join(_cmdline(pid)):
            # Its sessions too (ansible's ControlPersist keeps them open): they outlive the
            # listener otherwise.
            os.kill(pid, signal.SIGSTOP)
            for session in _descendants(pid):
                if _comm(session).startswith("sshd"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(session, signal.SIGTERM)
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)
            end = time.monotonic() + 10
            while time.monotonic() < end:
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        break
                if not _running(pid):
                    break
                time.sleep(0.02)
        self.vps.sshd_pid = None
        if self.vps.ssh_port:
            self.vps.save()
        if self._closed_sock is not None:
            self._closed_sock.close()
            self._closed_sock = None
        self.save()

    def cleanup(self) -> None:
        """Remove what :meth:`start` made in the workdir (after :meth:`stop`)."""
        for sub in ("pcs", "inventory", "ssh-host"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.workdir / "agent-rig.json").unlink()

    def reset(self, **options: object) -> AgentRig:
        """Back to the initial state for the next test: every agent stopped (slow exits and
        lock holders cleared), every PC's folders made anew, the agents started again, the
        sshd up (started again if a test cut it), the inventory anew. ``options`` (the
        constructor's: ``pcs``, ``unreachable``, ``users``, ``bare_users``, ``app_failed``,
        ``config_location``) change the fleet; the ones not given keep their values."""
        t0 = time.monotonic()
        self.kill_all()
        if options:
            unknown = set(options) - set(self.options())
            if unknown:
                raise SandboxError(f"unknown fleet options {sorted(unknown)}")
            self._configure(**{**self.options(), **options})  # type: ignore[arg-type]
        if not self.vps.sshd_pid or not _running(self.vps.sshd_pid):
            self.vps._spawn_sshd()
            self.vps.save()
        self._seed_all()
        self.start_all_agents()
        self.write_inventory()
        self.timings["reset_s"] = time.monotonic() - t0
        self.save()
        return self

    def describe(self) -> dict[str, object]:
        return {
            "workdir": str(self.workdir),
            "pcs": self.pcs,
            "unreachable": self.unreachable,
            "users": list(self.users),
            "bare_users": list(self.bare_users),
            "app_failed": self.app_failed,
            "config_location": self.config_location,
            "group": self.group,
            "inventory": str(self.inventory),
            "ssh_port": self.ssh_port,
            "closed_port": self.closed_port,
            "sshd_pid": self.vps.sshd_pid,
            "private_key": str(self.vps.ssh_dir / "client_ed25519"),
            "known_hosts": str(self.vps.ssh_dir / "known_hosts"),
            "agent_python": AGENT_PYTHON,
            "agents": {f"{pc}/{u}": self.agent_pid(pc, u) for pc in self.pcs for u in self.users},
            "holder_pids": self.holder_pids,
            "config_checksums": self.config_checksums,
            "timings": self.timings,
        }

    def save(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "agent-rig.json").write_text(json.dumps(self.describe(), indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> AgentRig:
        data = json.loads((Path(workdir) / "agent-rig.json").read_text())
        rig = cls(Path(workdir), pcs=len(data["pcs"]), unreachable=len(data["unreachable"]),
                  users=tuple(data["users"]), bare_users=tuple(data["bare_users"]),
                  app_failed=bool(data["app_failed"]), config_location=data["config_location"])
        rig.closed_port = int(data.get("closed_port") or 0)
        rig.holder_pids = list(data.get("holder_pids") or [])
        rig.config_checksums = dict(data.get("config_checksums") or {})
        rig.timings = dict(data.get("timings") or {})
        if (rig.vps.workdir / "sandbox.json").exists():
            rig.vps = Sandbox.load(rig.vps.workdir)
        return rig

    # -- the PCs' folders ------------------------------------------------------------------------
    def _seed_all(self) -> None:
        shutil.rmtree(self.workdir / "pcs", ignore_errors=True)
        for pc in self.pcs:
            (self.pc_dir(pc) / "standin").mkdir(parents=True)
            for user in self.bare_users:
                (self.profiles_root(pc) / user / "AppData" / "Local").mkdir(parents=True)
            for user in self.users:
                self._seed_user(pc, user)

    def user_config(self, pc: str, user: str, *, rev: int = 2) -> dict[str, object]:
        """The user's settings as seeded: rev 2 in app-current, rev 1 (before the update) in
        app-backup. ``device_token`` is unique per PC and user."""
        token = hashlib.sha256(f"{self.workdir}/{pc}/{user}".encode()).hexdigest()[:16]
        cfg: dict[str, object] = {
            "user": user, "pc": pc, "device_token": f"{pc}-{user}-{token}",
            "server_url": "http://127.0.0.1:3001", "settings_rev": rev,
        }
        if rev >= 2:
            cfg["theme"] = "dark" if user < "b" else "light"
        return cfg

    def _seed_user(self, pc: str, user: str) -> None:
        folder = self.folder(pc, user)
        apps = ["app-current", "app-backup"] + (["app-failed"] if self.app_failed else [])
        for app in apps:
            d = folder / app
            d.mkdir(parents=True)
            (d / "VERSION").write_text(VERSIONS[app] + "\n")
            (d / "agent.py").write_text(AGENT_PY)
            (d / "uninstall").write_text(f"#!{AGENT_PYTHON}\n" + UNINSTALL_PY)
            (d / "uninstall").chmod(0o755)
            (d / "resources").mkdir()
            (d / "resources" / "app.bin").write_bytes(f"doai-agent {VERSIONS[app]}\n".encode() * 64)
        current = json.dumps(self.user_config(pc, user), indent=2, sort_keys=True) + "\n"
        self.config_path(pc, user).write_text(current)
        self.config_checksums[f"{pc}/{user}"] = hashlib.sha256(current.encode()).hexdigest()
        if self.config_location == "app-current":
            (folder / "app-backup" / "config.json").write_text(
                json.dumps(self.user_config(pc, user, rev=1), indent=2, sort_keys=True) + "\n")

    def make_installer(self, path: Path, version: str = "1.9.0", *, fail: bool = False) -> Path:
        """A stand-in installer at ``path`` that installs ``version`` into ``--folder``; with
        ``fail`` it writes half an app-current and exits 3."""
        text = (INSTALLER_PY.replace("@VERSION@", version).replace("@FAIL@", repr(bool(fail)))
                .replace("@AGENT_PY@", repr(AGENT_PY)).replace("@UNINSTALL_PY@", repr(UNINSTALL_PY))
                .replace("@PYTHON@", AGENT_PYTHON))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!{AGENT_PYTHON}\n" + text)
        path.chmod(0o755)
        return path

    def staged_installers(self, pc: str) -> list[Path]:
        """The installers the role put on ``pc`` (kept, never deleted)."""
        return sorted(p for p in (self.pc_dir(pc) / "stage").glob("*/*") if p.is_file())

    # -- the agents --------------------------------------------------------------------------------
    def start_agent(self, pc: str, user: str, *, wait: bool = True) -> int:
        """Start the stand-in agent from app-current (as the role's POSIX start does); its pid."""
        folder = self.folder(pc, user)
        with open(folder / "agent.log", "ab") as err:
            proc = subprocess.Popen(
                [AGENT_PYTHON, str(folder / "app-current" / "agent.py")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True, cwd=folder / "app-current",
            )
        self._procs[proc.pid] = proc
        if wait:
            self._wait_started({(pc, user): proc.pid})
        return proc.pid

    def start_all_agents(self) -> None:
        started = {(pc, u): self.start_agent(pc, u, wait=False) for pc in self.pcs for u in self.users}
        self._wait_started(started)

    def _wait_started(self, started: dict[tuple[str, str], int], deadline_s: float = 30.0) -> None:
        end = time.monotonic() + deadline_s
        todo = dict(started)
        while todo and time.monotonic() < end:
            for key, pid in list(todo.items()):
                st = self._status(*key)
                if st and st.get("pid") == pid and st.get("state") == "running":
                    del todo[key]
                elif pid in self._procs and self._procs[pid].poll() is not None:
                    raise SandboxError(f"stand-in agent {key} exited ({self._procs[pid].returncode}): "
                                       f"{self.folder(*key) / 'agent.log'}")
            if todo:
                time.sleep(0.02)
        if todo:
            raise SandboxError(f"stand-in agents not up after {deadline_s:.0f} s: {sorted(todo)}")

    def _status(self, pc: str, user: str) -> dict[str, object] | None:
        try:
            return json.loads((self.folder(pc, user) / "agent.status.json").read_text())
        except (OSError, ValueError):
            return None

    def agent_pid(self, pc: str, user: str) -> int | None:
        """The pid in ``agent.pid`` when that process is a stand-in agent of this user's folder."""
        try:
            pid = int((self.folder(pc, user) / "agent.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        if not _running(pid):
            return None
        argv = _cmdline(pid)
        folder = str(self.folder(pc, user)) + "/"
        return pid if any(a.startswith(folder) and a.endswith("/agent.py") for a in argv) else None

    def agent_running(self, pc: str, user: str) -> bool:
        return self.agent_pid(pc, user) is not None

    def agent_version(self, pc: str, user: str) -> str | None:
        """The version the running agent read at its start (None when none runs)."""
        pid = self.agent_pid(pc, user)
        st = self._status(pc, user)
        if pid is None or not st or st.get("pid") != pid:
            return None
        return str(st.get("version"))

    def agent_processes(self) -> list[int]:
        """Every stand-in agent of this rig that runs, however started (by the rig or the role)."""
        mark = str(self.workdir / "pcs") + "/"
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                argv = _cmdline(int(entry.name))
                if any(a.startswith(mark) and a.endswith("/agent.py") for a in argv) and _running(int(entry.name)):
                    found.append(int(entry.name))
        return found

    def stop_agent(self, pc: str, user: str, *, deadline_s: float = 10.0) -> bool:
        """SIGTERM to the user's agent; True once it is gone (SIGKILL after ``deadline_s``)."""
        pid = self.agent_pid(pc, user)
        if pid is None:
            return True
        return self._terminate([pid], deadline_s)

    def _terminate(self, pids: list[int], deadline_s: float) -> bool:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + deadline_s
        clean = True
        for pid in pids:
            if not _reap_or_wait(pid, self._procs, end):
                clean = False
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _reap_or_wait(pid, self._procs, time.monotonic() + 5)
        return clean

    def kill_all(self) -> None:
        """Stop every stand-in agent (slow exits cleared first) and every lock holder, by PID."""
        for pc in self.pcs:
            with contextlib.suppress(OSError):
                for f in (self.pc_dir(pc) / "standin").glob("*.json"):
                    f.unlink()
        pids = set(self.agent_processes()) | {p for p, proc in self._procs.items() if proc.poll() is None}
        holders = [p for p in self.holder_pids if _running(p) and _cmdline(p)[:1] == ["sleep"]]
        self._terminate(sorted(pids) + holders, 5.0)
        for proc in list(self._procs.values()):
            proc.poll()
        self._procs = {p: proc for p, proc in self._procs.items() if proc.returncode is None}
        self.holder_pids = []

    # -- knobs ----------------------------------------------------------------------------------------
    def set_slow_exit(self, pc: str, user: str, seconds: float) -> None:
        """On SIGTERM the agent keeps running (and holding its lock) ``seconds`` more (0: none)."""
        self.control_file(pc, user).write_text(json.dumps({"slow_exit_s": seconds}) + "\n")

    def lock(self, pc: str, user: str, app: str = "app-current", *, seconds: float | None = None) -> int:
        """An outside holder (an antivirus scan) locks ``app`` for ``seconds`` (None: until the
        rig stops or :meth:`unlock`); its pid."""
        proc = subprocess.Popen(["sleep", str(seconds if seconds is not None else 86400)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self._procs[proc.pid] = proc
        self.holder_pids.append(proc.pid)
        lock = self.folder(pc, user) / app / ".locked"
        with lock.open("a", encoding="utf-8") as fh:
            fh.write(f"{proc.pid}\n")
        return proc.pid

    def unlock(self, pc: str, user: str, app: str = "app-current") -> None:
        """End every outside holder of ``app``'s lock (the agent's own stays)."""
        ours = set(self.holder_pids)
        with contextlib.suppress(OSError):
            pids = [int(p) for p in (self.folder(pc, user) / app / ".locked").read_text().split() if p.isdigit()]
            self._terminate([p for p in pids if p in ours], 5.0)
            self.holder_pids = [p for p in self.holder_pids if p not in pids]

    def locked(self, pc: str, user: str, app: str = "app-current") -> bool:
        """The rule the role's POSIX primitive applies: ``.locked`` exists and a pid in it runs."""
        try:
            pids = (self.folder(pc, user) / app / ".locked").read_text().split()
        except OSError:
            return False
        return any(p.isdigit() and _running(int(p)) for p in pids)

    # -- inspection -----------------------------------------------------------------------------------
    def folder_state(self, pc: str, user: str) -> dict[str, object]:
        """``{"app-current": version or None, "app-backup": ..., "app-failed": ..., "extra":
        [other entries, sorted], "config": the parsed config.json the agent reads (None when
        absent or unreadable)}``. The agent's pid, status and log files are not "extra"."""
        folder = self.folder(pc, user)
        state: dict[str, object] = {}
        for app in APP_DIRS:
            try:
                state[app] = (folder / app / "VERSION").read_text().strip()
            except OSError:
                state[app] = "" if (folder / app).exists() else None  # "": a directory without VERSION
        entries = sorted(e.name for e in folder.iterdir()) if folder.exists() else []
        state["extra"] = [e for e in entries if e not in APP_DIRS and e not in RIG_FILES]
        try:
            state["config"] = json.loads(self.config_path(pc, user).read_text())
        except (OSError, ValueError):
            state["config"] = None
        return state

    def snapshot(self, pc: str, user: str) -> dict[str, tuple[object, ...]]:
        """Every file and directory of the user's agent folder, by path relative to it: ``(kind,
        sha256 of a file's content or None, mode, uid, gid)``; links are not followed. The
        runtime files (the agent's pid, status, log and lock files) and the role's marker are left
        out: they change whenever an agent starts, and the marker is the role's history."""
        folder = self.folder(pc, user)
        out: dict[str, tuple[object, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in sorted(dirnames) + sorted(filenames):
                path = Path(dirpath) / name
                rel = str(path.relative_to(folder))
                if name in RUNTIME_FILES or (name.endswith(".tmp") and name.startswith(RUNTIME_FILES)):
                    continue
                st = path.lstat()
                if path.is_symlink():
                    kind, digest = "link", os.readlink(path)
                elif path.is_dir():
                    kind, digest = "dir", None
                else:
                    kind, digest = "file", hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = (kind, digest, oct(st.st_mode & 0o7777), st.st_uid, st.st_gid)
        return dict(sorted(out.items()))

    def give_folder_to(self, pc: str, user: str, uid: int, gid: int) -> None:
        """The user's agent folder owned by ``uid:gid``, as a real user owns theirs (the rig
        runs as root and seeds root's files; the role acts as root too)."""
        folder = self.folder(pc, user)
        os.lchown(folder, uid, gid)
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                os.lchown(Path(dirpath) / name, uid, gid)

    def config_checksum(self, pc: str, user: str) -> str | None:
        """sha256 of the config.json the agent reads now (compare with ``config_checksums``)."""
        try:
            return hashlib.sha256(self.config_path(pc, user).read_bytes()).hexdigest()
        except OSError:
            return None

    # -- inventory ------------------------------------------------------------------------------------
    def host_vars(self, pc: str) -> dict[str, object]:
        if not self.vps.ssh_port:
            raise SandboxError("the rig's sshd is not started")
        base = json.loads(self.vps.write_inventory().read_text())
        ssh_vars = {k: v for k, v in base["all"]["children"]["backend"]["hosts"][self.vps.host_name].items()
                    if k.startswith("ansible_")}
        hv: dict[str, object] = {
            **ssh_vars,
            # A connection per PC, as with real PCs (ansible's default ControlPath hashes
            # host:port:user, the same for every stand-in PC).
            "ansible_control_path": f"%(directory)s/{pc}-%%C",
            "doai_agent_os": "posix",
            "doai_agent_profiles_root": str(self.profiles_root(pc)),
            "doai_agent_folder_rel": str(AGENT_DIR),
            "doai_agent_config_file": "app-current/config.json" if self.config_location == "app-current"
            else "config.json",
            "doai_agent_pid_file": "agent.pid",
            "doai_agent_lock_file": ".locked",
            "doai_agent_posix_python": AGENT_PYTHON,
            # The same under the names of roles/doai_agent/defaults/main.yml as of this commit.
            "doai_agent_posix_profiles_root": str(self.profiles_root(pc)),
            "doai_agent_posix_local_path": str(AGENT_DIR.parent),
            "doai_agent_posix_start_command": [AGENT_PYTHON, "{current}/agent.py"],
            # The reinstall: where the installer is put on this PC (uninstaller and installer
            # arguments: the role's defaults, {current}/uninstall and --folder {root}).
            "doai_agent_posix_stage_dir": str(self.pc_dir(pc) / "stage"),
        }
        if pc in self.unreachable:
            hv["ansible_port"] = self.closed_port
            # A PC that is off for good: without SSH's retry window (11 s a playbook run; the window
            # itself is tested against the backend in tests/integration/test_runner_security.py).
            hv["ansible_ssh_retries"] = 0
        return hv

    def write_inventory(self, **overrides: object) -> Path:
        """Every PC in group ``agents``; ``overrides`` become host variables of every PC (None
        drops one: the role's default then applies)."""
        hosts = {}
        for pc in self.pcs:
            hv = {**self.host_vars(pc), **overrides}
            hosts[pc] = {k: v for k, v in hv.items() if v is not None}
        inv = {"all": {"children": {self.group: {"hosts": hosts}}}}
        self.inventory_dir.mkdir(parents=True, exist_ok=True)
        self.inventory.write_text(json.dumps(inv, indent=2) + "\n")  # JSON is YAML
        return self.inventory

    def ssh_argv(self, pc: str, *command: str) -> list[str]:
        """ssh to a stand-in PC (the unreachable ones: to the closed port)."""
        argv = self.vps.ssh_argv(*command)
        argv[2] = str(self.closed_port if pc in self.unreachable else self.ssh_port)
        return argv

    def wait_ssh(self) -> None:
        wait_port(self.ssh_port)


def _main(argv: list[str] | None = None) -> int:
    """``python -m doai_ansible.sandbox.agent_rig start|stop|reset|describe --workdir DIR [--pcs N]``:
    the stand-in PCs for demos and benchmarks; prints the rig as JSON."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m doai_ansible.sandbox.agent_rig")
    ap.add_argument("action", choices=["start", "stop", "reset", "describe"])
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--pcs", type=int, default=4)
    ap.add_argument("--unreachable", type=int, default=0)
    ap.add_argument("--users", default=",".join(DEFAULT_USERS), help="comma-separated")
    ap.add_argument("--app-failed", action="store_true", help="an app-failed from an earlier incident")
    ap.add_argument("--config-location", choices=["app-current", "folder"], default="app-current")
    args = ap.parse_args(argv)
    if args.action == "start":
        rig = AgentRig(args.workdir, pcs=args.pcs, unreachable=args.unreachable,
                       users=tuple(u for u in args.users.split(",") if u), app_failed=args.app_failed,
                       config_location=args.config_location)
        try:
            rig.start()
        except BaseException:
            rig.stop()
            raise
        print(json.dumps(rig.describe(), indent=2))
    elif args.action == "stop":
        if (args.workdir / "agent-rig.json").exists():
            AgentRig.load(args.workdir).stop()
    elif args.action == "reset":
        rig = AgentRig.load(args.workdir)
        rig.reset()
        print(json.dumps(rig.describe(), indent=2))
    else:
        print(json.dumps(AgentRig.load(args.workdir).describe(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
