"""The desktop agent's stand-in PCs themselves (doai_ansible/sandbox/agent_rig.py): what the
agent role's end-to-end tests rely on. Linux stand-ins over a real loopback sshd, real
processes; this is not Windows coverage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from doai_ansible.sandbox.agent_rig import AGENT_PYTHON, AgentRig
from doai_ansible.sandbox.rig import _running

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / ".venv" / "bin" / "ansible"


def _ansible_ping(rig: AgentRig, *pattern: str, forks: int = 5) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    return subprocess.run(
        [str(ANSIBLE), "-i", str(rig.inventory), *pattern, "-m", "ansible.builtin.ping", "-f", str(forks)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env, check=False,
    )


def test_fleet_starts_with_every_agent_on_2_0_0(agent_fleet) -> None:
    rig = agent_fleet(n=4, unreachable=1)
    assert rig.pcs == ["pc01", "pc02", "pc03", "pc04"]
    assert rig.unreachable == ["pc04"] and rig.reachable == ["pc01", "pc02", "pc03"]
    pids = set()
    for pc in rig.pcs:
        for user in ("alice", "bob"):
            assert rig.agent_running(pc, user), (pc, user)
            assert rig.agent_version(pc, user) == "2.0.0"
            pid = rig.agent_pid(pc, user)
            pids.add(pid)
            folder = rig.folder(pc, user)
            # It runs from app-current, keeps VERSION open and holds app-current's lock.
            assert os.readlink(f"/proc/{pid}/cwd") == str(folder / "app-current")
            open_files = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            assert str(folder / "app-current" / "VERSION") in open_files
            assert rig.locked(pc, user)
            assert (folder / "app-current" / ".locked").read_text().split() == [str(pid)]
    assert len(pids) == 8 and sorted(pids) == sorted(rig.agent_processes())


def test_folder_layout(agent_fleet) -> None:
    rig = agent_fleet(n=2, unreachable=0)
    root = rig.profiles_root("pc01")
    assert root == rig.workdir / "pcs" / "pc01" / "Users"
    assert sorted(p.name for p in root.iterdir()) == ["alice", "bob", "guest"]
    assert not (root / "guest" / "AppData" / "Local" / "DoAi-Desktop-Agent").exists()
    folder = rig.folder("pc01", "alice")
    assert folder == root / "alice" / "AppData" / "Local" / "DoAi-Desktop-Agent"
    assert sorted(p.name for p in folder.iterdir()) == [
        "agent.log", "agent.pid", "agent.status.json", "app-backup", "app-current"]
    state = rig.folder_state("pc01", "alice")
    assert {k: state[k] for k in ("app-current", "app-backup", "app-failed", "extra")} == {
        "app-current": "2.0.0", "app-backup": "1.9.0", "app-failed": None, "extra": []}
    cfg = state["config"]
    assert cfg["user"] == "alice" and cfg["pc"] == "pc01" and cfg["settings_rev"] == 2
    # Unique per PC and user; the backup holds the older settings (rev 1).
    tokens = {rig.folder_state(pc, u)["config"]["device_token"] for pc in rig.pcs for u in rig.users}
    assert len(tokens) == 4
    backup_cfg = json.loads((folder / "app-backup" / "config.json").read_text())
    assert backup_cfg["settings_rev"] == 1 and backup_cfg["device_token"] == cfg["device_token"]
    assert rig.config_checksum("pc01", "alice") == rig.config_checksums["pc01/alice"]
    assert rig.config_checksum("pc01", "alice") != rig.config_checksum("pc01", "bob")
    # The host variables the role reads.
    inv = json.loads(rig.inventory.read_text())
    hv = inv["all"]["children"]["agents"]["hosts"]["pc01"]
    assert hv["doai_agent_os"] == "posix"
    assert hv["doai_agent_profiles_root"] == str(root)
    assert hv["doai_agent_config_file"] == "app-current/config.json"
    assert hv["ansible_host"] == "127.0.0.1" and hv["ansible_port"] == rig.ssh_port and hv["ansible_user"] == "root"
    assert "StrictHostKeyChecking=yes" in hv["ansible_ssh_common_args"]
    assert hv["ansible_control_path"] == "%(directory)s/pc01-%%C"


def test_options_app_failed_and_config_beside_the_apps(agent_fleet) -> None:
    rig = agent_fleet(n=1, unreachable=0, app_failed=True, config_location="folder", users=("carol",))
    state = rig.folder_state("pc01", "carol")
    assert (state["app-current"], state["app-backup"], state["app-failed"]) == ("2.0.0", "1.9.0", "1.9.5")
    assert state["config"]["user"] == "carol"
    assert (rig.folder("pc01", "carol") / "config.json").exists()
    assert not (rig.folder("pc01", "carol") / "app-current" / "config.json").exists()
    assert rig.agent_version("pc01", "carol") == "2.0.0"
    hv = json.loads(rig.inventory.read_text())["all"]["children"]["agents"]["hosts"]["pc01"]
    assert hv["doai_agent_config_file"] == "config.json"


def test_unreachable_pc_refuses_ssh_and_ansible_reaches_the_others(agent_fleet) -> None:
    rig = agent_fleet(n=4, unreachable=1)
    proc = subprocess.run(rig.ssh_argv("pc04", "true"), capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 255 and "Connection refused" in proc.stderr, proc.stderr
    proc = subprocess.run(rig.ssh_argv("pc01", "cat", str(rig.folder("pc01", "alice") / "app-current" / "VERSION")),
                          capture_output=True, text=True, timeout=30, check=False)
    assert (proc.returncode, proc.stdout) == (0, "2.0.0\n"), proc.stderr
    ping = _ansible_ping(rig, "agents", "--limit", "!pc04")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    for pc in rig.reachable:
        assert f"{pc} | SUCCESS" in ping.stdout


def test_slow_exit_and_locks(agent_fleet) -> None:
    rig = agent_fleet(n=1, unreachable=0)
    pid = rig.agent_pid("pc01", "alice")
    rig.set_slow_exit("pc01", "alice", 1.5)
    t0 = time.monotonic()
    os.kill(pid, 15)
    time.sleep(0.5)
    assert rig.agent_running("pc01", "alice") and rig.locked("pc01", "alice")
    assert json.loads((rig.folder("pc01", "alice") / "agent.status.json").read_text())["state"] == "stopping"
    while rig.agent_running("pc01", "alice") and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    assert 1.4 < time.monotonic() - t0 < 5
    assert not rig.locked("pc01", "alice") and not (rig.folder("pc01", "alice") / "app-current" / ".locked").exists()
    assert not (rig.folder("pc01", "alice") / "agent.pid").exists()
    # bob's agent stops at once; an outside holder (an antivirus scan) keeps the lock for 1 s.
    holder = rig.lock("pc01", "bob", seconds=1)
    assert rig.stop_agent("pc01", "bob", deadline_s=2)
    assert rig.locked("pc01", "bob")
    time.sleep(1.3)
    assert not rig.locked("pc01", "bob") and not _running(holder)
    # A holder without end, released by unlock.
    rig.lock("pc01", "bob", "app-backup")
    assert rig.locked("pc01", "bob", "app-backup")
    rig.unlock("pc01", "bob", "app-backup")
    assert not rig.locked("pc01", "bob", "app-backup")


def test_agent_started_the_way_the_role_does(agent_fleet) -> None:
    """Over SSH, detached (setsid -f): the agent outlives the session and reports its version."""
    rig = agent_fleet(n=1, unreachable=0)
    assert rig.stop_agent("pc01", "alice")
    folder = rig.folder("pc01", "alice")
    (folder / "app-current").rename(folder / "app-failed")
    (folder / "app-backup").rename(folder / "app-current")
    cmd = f"setsid -f {AGENT_PYTHON} {folder}/app-current/agent.py </dev/null >/dev/null 2>&1"
    proc = subprocess.run(rig.ssh_argv("pc01", cmd), capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    end = time.monotonic() + 10
    while rig.agent_version("pc01", "alice") is None and time.monotonic() < end:
        time.sleep(0.05)
    assert rig.agent_version("pc01", "alice") == "1.9.0"
    assert rig.folder_state("pc01", "alice")["app-failed"] == "2.0.0"


def test_reset_restores(agent_fleet) -> None:
    rig = agent_fleet(n=2, unreachable=0)
    before = {(pc, u): rig.folder_state(pc, u) for pc in rig.pcs for u in rig.users}
    rig.stop_agent("pc01", "alice")
    folder = rig.folder("pc01", "alice")
    (folder / "app-current").rename(folder / "app-failed")
    (folder / "junk").mkdir()
    rig.config_path("pc02", "bob").write_text("{}")
    rig.set_slow_exit("pc02", "alice", 30)
    rig.lock("pc02", "alice")
    t0 = time.monotonic()
    rig.reset()
    assert time.monotonic() - t0 < 10  # the slow exit and the lock holder were cleared, not waited for
    assert {(pc, u): rig.folder_state(pc, u) for pc in rig.pcs for u in rig.users} == before
    assert all(rig.agent_version(pc, u) == "2.0.0" for pc in rig.pcs for u in rig.users)
    assert rig.holder_pids == [] and len(rig.agent_processes()) == 4


def test_cli_48_pcs_and_nothing_left_after_stop(tmp_path_factory) -> None:
    """The CLI the demo and benchmark use; 48 PCs over one sshd, every one reached by ansible."""
    workdir = tmp_path_factory.mktemp("agcli")
    cli = [sys.executable, "-m", "doai_ansible.sandbox.agent_rig"]
    out = subprocess.run([*cli, "start", "--workdir", str(workdir), "--pcs", "48", "--unreachable", "1"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    try:
        assert out.returncode == 0, out.stderr
        desc = json.loads(out.stdout)
        assert len(desc["pcs"]) == 48 and desc["unreachable"] == ["pc48"]
        assert all(desc["agents"].values()) and len(desc["agents"]) == 96
        rig = AgentRig.load(workdir)
        assert len(rig.agent_processes()) == 96
        ping = _ansible_ping(rig, "agents", "--limit", "!pc48", forks=48)
        assert ping.returncode == 0, ping.stdout[-2000:] + ping.stderr[-2000:]
        assert ping.stdout.count("| SUCCESS") == 47
        sshd_pid = desc["sshd_pid"]
    finally:
        stop = subprocess.run([*cli, "stop", "--workdir", str(workdir)], capture_output=True, text=True,
                              timeout=120, cwd=ROOT, check=False)
    assert stop.returncode == 0, stop.stderr
    assert AgentRig.load(workdir).agent_processes() == []
    assert not _running(sshd_pid)
    mark = str(workdir).encode()
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark in (entry / "cmdline").read_bytes() and _running(int(entry.name)):
                    left.append(int(entry.name))
            except OSError:
                pass
    assert left == []
