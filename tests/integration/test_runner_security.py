"""The runner against a real sshd (the sandbox VPS): host keys are checked, a relaxed host is
reported, and the SSH retries bridge a short sshd outage."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from doai_ansible.runner import run_playbook
from doai_ansible.sandbox.rig import SSHD_CANDIDATES
from doai_ansible.settings import load_settings
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def sandbox(fresh_sandbox):
    """A rig of its own per test: an SSH master connection that an earlier test left open
    (ControlPersist) would be reused without a new host key check, hiding a wrong known_hosts."""
    return fresh_sandbox

STATUS = "backend_pm2_status.yml"


def wrong_known_hosts(sb, tmp_path: Path) -> Path:
    """A known_hosts file that pins another key to the sandbox's address: what a client sees
    when someone else answers on that address."""
    key = tmp_path / "impostor_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, blob = (tmp_path / "impostor_ed25519.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts_wrong"
    known.write_text(f"[127.0.0.1]:{sb.ssh_port} {kind} {blob}\n")
    return known


def pin(sb, known_hosts: Path, **overrides: object) -> Path:
    """The sandbox inventory with ``known_hosts`` as the only source of host keys. It does not set
    StrictHostKeyChecking itself: checking the key is the runner's job."""
    args = f"-o UserKnownHostsFile={known_hosts} -o IdentitiesOnly=yes"
    return sb.write_inventory(ansible_ssh_common_args=args, **overrides)


def host_snapshot(sb) -> dict:
    """What a run on the host could change."""
    return {"head": sb.head(), "health": sb.health(), "restarts": [p["restarts"] for p in sb.pm2_processes()],
            "ledger": sb.ledger.read_text()}


def test_wrong_host_key_is_unreachable_and_nothing_runs(sandbox, tmp_path):
    sb = sandbox
    inv = pin(sb, wrong_known_hosts(sb, tmp_path))
    before = host_snapshot(sb)
    events: list[dict] = []
    run = run_playbook(load_settings(None, inventory=inv, state_dir=tmp_path / "state", env={}), STATUS,
                       on_event=events.append)
    assert not run.ok
    assert run.unreachable_hosts() == [sb.host_name] and run.failed_hosts() == {}
    assert "Host key verification failed" in run.failures[0].message
    assert run.error("status").exit_status == 7
    # Nothing ran on the host: no result after the refused connection, no status from it, and
    # the host is as it was.
    results = [e["event"] for e in events if e.get("event_data", {}).get("host") == sb.host_name
               and e["event"] in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable")]
    assert results[-1:] == ["runner_on_unreachable"] and results.count("runner_on_unreachable") == 1
    assert sb.host_name not in run.custom.get("doai_backend_pm2_status", {})
    assert host_snapshot(sb) == before
    assert run.warnings == []


def test_right_host_key_connects(sandbox, tmp_path):
    sb = sandbox
    inv = pin(sb, sb.ssh_dir / "known_hosts")
    run = run_playbook(load_settings(None, inventory=inv, state_dir=tmp_path / "state", env={}), STATUS)
    assert run.ok, run.failures
    assert run.custom["doai_backend_pm2_status"][sb.host_name]["commit"] == sb.commits["v3"]
    assert run.warnings == []


def test_relaxed_host_key_checking_connects_and_warns(sandbox, tmp_path):
    sb = sandbox
    inv = pin(sb, wrong_known_hosts(sb, tmp_path), ansible_host_key_checking=False)
    run = run_playbook(load_settings(None, inventory=inv, state_dir=tmp_path / "state", env={}), STATUS)
    assert run.ok, run.failures  # the wrong key was not checked: that is what the warning is for
    assert sb.host_name in run.custom["doai_backend_pm2_status"]
    assert run.warnings == [
        f"host {sb.host_name}: SSH host key checking is OFF (inventory variable ansible_host_key_checking)"
    ]


def test_rollback_to_a_host_with_a_wrong_key_exits_7_and_changes_nothing(sandbox, cli_env, tmp_path):
    sb = sandbox
    pin(sb, wrong_known_hosts(sb, tmp_path))
    before = host_snapshot(sb)
    res = run_cli("backend", "rollback", "--yes", "--to", "v2", env=cli_env)
    assert res.code == 7, res.stdout + res.stderr
    assert host_snapshot(sb) == before
    assert sb.head() == sb.commits["v3"]


def _restart_sshd_later(sb, delay_s: float) -> threading.Thread:
    """Start the sandbox's sshd again (same config, port and keys) after ``delay_s``."""
    sshd = next(c for c in SSHD_CANDIDATES if os.access(c, os.X_OK))

    def start() -> None:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(sb.ssh_dir / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        sb.sshd_pid = proc.pid  # the fixture stops it

    timer = threading.Timer(delay_s, start)
    timer.start()
    return timer


def wait_port_closed(port: int, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"127.0.0.1:{port} still accepts connections after {deadline_s} s")


def test_ssh_retries_bridge_a_short_sshd_outage(sandbox, tmp_path):
    sb = sandbox
    os.kill(sb.sshd_pid, signal.SIGTERM)
    sb.sshd_pid = None
    wait_port_closed(sb.ssh_port)  # really down
    timer = _restart_sshd_later(sb, 5.0)
    try:
        # A fresh state dir: no ControlMaster left over that could hide the outage.
        run = run_playbook(load_settings(None, inventory=sb.inventory, state_dir=tmp_path / "state", env={}), STATUS)
    finally:
        timer.join()
    assert run.ok, run.failures
    assert run.custom["doai_backend_pm2_status"][sb.host_name]["commit"] == sb.commits["v3"]
