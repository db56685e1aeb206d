"""Unreachable (or not answering) is its own state, in text and JSON: never "UNHEALTHY", "HTTP
None", "no container" or every image tag "(none)", which would claim the app is broken or gone.

Real parts: the sandbox VPS's sshd (a Docker-mode host whose docker client points at a socket
no daemon listens on), a backend host on a closed loopback port, the Vercel API stand-in with a
health URL on a closed loopback port.
"""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from tests.conftest import run_cli

pytest_plugins = ["tests.integration.conftest_vercel"]
pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env_hosts(sandbox, tmp_path):
    """An inventory of two backend hosts: ``docker-down`` (reached over the sandbox sshd; its
    dockerd does not answer) and ``gone`` (nothing listens on its SSH port)."""
    base = json.loads(sandbox.write_inventory().read_text())["all"]["children"]["backend"]["hosts"][sandbox.host_name]
    ssh = {k: v for k, v in base.items() if k.startswith("ansible_")}
    (tmp_path / "project").mkdir()
    hosts = {
        "docker-down": {
            **ssh, "doai_backend_mode": "docker", "doai_backend_docker_image": "127.0.0.1:5999/doai-backend",
            "doai_backend_docker_docker_bin": shutil.which("docker") or "docker",
            "doai_backend_docker_docker_host": f"unix://{tmp_path}/no-dockerd.sock",
            "doai_backend_docker_project_dir": str(tmp_path / "project"),
            "doai_backend_docker_state_dir": str(tmp_path / "host-state"),
            "doai_backend_docker_health_url": f"http://127.0.0.1:{_closed_port()}/api/health",
        },
        "gone": {"ansible_host": "127.0.0.1", "ansible_port": _closed_port(), "ansible_ssh_retries": 0,
                 "ansible_user": "root"},
    }
    inv = tmp_path / "hosts.yml"
    inv.write_text(json.dumps({"all": {"children": {"backend": {"hosts": hosts}}}}))
    return {"DOAI_INVENTORY": str(inv), "DOAI_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)}


def test_backend_status_says_unreachable_and_docker_unknown(env_hosts):
    res = run_cli("backend", "status", env=env_hosts)
    assert res.code == 7, res.stdout + res.stderr
    by_host: dict[str, list[str]] = {}
    for line in res.stdout.splitlines():
        if line.startswith("backend "):
            host = line.split()[1].rstrip(":")
        by_host.setdefault(host, []).append(line)
    gone, down = "\n".join(by_host["gone"]), "\n".join(by_host["docker-down"])
    assert by_host["gone"][0].startswith("backend gone: UNREACHABLE (") and len(by_host["gone"]) == 1, gone
    assert "UNHEALTHY" not in gone and "HTTP None" not in gone, gone
    assert "docker not answering" in down, down
    assert "no container" not in down and "(none)" not in down and "UNHEALTHY" not in down, down
    assert "HTTP -1" not in down and "health no answer" in down, down

    doc = run_cli("backend", "status", "-o", "json", env=env_hosts).json()
    assert doc["hosts"]["gone"]["state"] == "unreachable"
    down = doc["hosts"]["docker-down"]
    assert down["state"] == "unknown" and down["state_detail"].startswith("docker not answering: ")
    assert down["images"] is None  # not known, rather than no tag at all


def test_health_json_marks_the_unreachable_and_unknown_hosts(env_hosts):
    res = run_cli("health", "-o", "json", env=env_hosts)
    assert res.code == 7, res.stdout + res.stderr
    backend = res.json()["parts"]["backend"]
    assert backend["states"]["gone"] == "unreachable"
    assert backend["states"]["docker-down"].startswith("unknown (docker not answering: ")
    # the text says the same: not reached is not "UNHEALTHY"
    text = run_cli("health", env=env_hosts)
    assert text.code == 7, text.stdout + text.stderr
    lines = {x.split(":")[0]: x for x in text.stdout.splitlines()}
    assert lines["backend gone"].startswith("backend gone: UNREACHABLE"), text.stdout
    assert lines["backend docker-down"].startswith("backend docker-down: unknown (docker not answering"), text.stdout


def test_backend_status_without_an_inventory_exits_2_saying_how_to_set_one(tmp_path):
    env = {"DOAI_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)}
    res = run_cli("backend", "status", env=env)
    assert res.code == 2, res.stdout + res.stderr
    assert "--inventory" in res.stderr and "DOAI_INVENTORY" in res.stderr


@pytest.fixture
def env_dashboard(vercel_rig, tmp_path):
    cfg = tmp_path / "doai-rollback.yml"
    inv = tmp_path / "hosts.yml"
    inv.write_text("all: {}\n")  # no hosts: only the dashboard is configured
    cfg.write_text(json.dumps({
        "inventory": str(inv),
        "vercel": {"api_url": vercel_rig.api.url, "project": "doai-dashboard", "team_id": vercel_rig.world.team.id,
                   "timeout": 5, "job_deadline": 20, "health_deadline": 5},
    }))
    url = f"http://127.0.0.1:{_closed_port()}/api/health"
    return {"DOAI_CONFIG": str(cfg), "DOAI_STATE_DIR": str(tmp_path / "state"), "VERCEL_TOKEN": vercel_rig.token,
            "DOAI_DASHBOARD_HEALTH_URL": url, "HOME": str(tmp_path)}, url


def test_dashboard_whose_health_url_does_not_answer_is_unreachable(env_dashboard):
    env, url = env_dashboard
    res = run_cli("status", env=env)
    assert res.code == 7, res.stdout + res.stderr  # not reached: 7, as `health` says, not 6
    (line,) = [x for x in res.stdout.splitlines() if x.startswith("dashboard doai-dashboard:")]
    assert line.startswith(f"dashboard doai-dashboard: UNREACHABLE (the health URL {url} did not answer"), line
    assert "UNHEALTHY" not in res.stdout
    doc = run_cli("status", "-o", "json", env=env).json()["parts"]["dashboard"]
    assert (doc["health_state"], doc["reachable"]) == ("unreachable", False)
    assert doc["production"]["id"]  # the API answered: what is live is still shown
    h = run_cli("health", "-o", "json", env=env)
    assert h.code == 7 and h.json()["parts"]["dashboard"]["states"] == {url: "unreachable"}
