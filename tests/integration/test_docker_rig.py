"""The Docker VPS stand-in itself (doai_ansible/sandbox/docker_rig.py): what the Docker mode's
tests rely on. Real dockerd, registry, docker-compose and sshd; nothing mocked."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from doai_ansible.sandbox.docker_rig import DOCKER, IMAGE_VERSIONS


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_initial_state(docker_rig) -> None:
    rig = docker_rig
    assert rig.health() == (200, "3.0.0")
    assert _status(rig.root_url) == 200
    v3 = rig.image_ids["v3"]
    assert rig.container_image_id() == v3
    assert rig.image_id(f"{rig.image_repo}:current") == v3
    for tag in ("previous", "rollback", "v1", "v2", "v3", "bad"):
        assert rig.image_id(f"{rig.image_repo}:{tag}") is None, tag
    local = rig.docker("images", "-a", "-q", "--no-trunc", check=True).stdout.split()
    assert local == [v3]  # a VPS has what it pulled: nothing else
    assert rig.image_repo == f"127.0.0.1:{rig.registry_port}/doai-backend"
    assert len(rig.docker_host) < 100 and rig.docker_host.startswith("unix:///tmp/")
    assert sorted(p.name for p in rig.project_dir.iterdir()) == ["docker-compose.yml"]
    assert rig.project_dir.name == "doai"
    assert list(rig.host_state.iterdir()) == []
    ps = rig.compose("ps", "-q", check=True).stdout.split()
    assert ps == [rig.api_container()]


def test_images_are_distinct_and_tagged_in_the_registry(docker_rig) -> None:
    rig = docker_rig
    assert set(rig.image_ids) == set(IMAGE_VERSIONS)
    assert len(set(rig.image_ids.values())) == len(IMAGE_VERSIONS)
    assert len(set(rig.digests.values())) == len(IMAGE_VERSIONS)
    for name in IMAGE_VERSIONS:
        assert rig.registry_digest(name) == rig.digests[name]
    assert rig.registry_digest("previous") == rig.digests["v2"]
    assert rig.registry_digest("current") == rig.digests["v3"]
    assert rig.registry_digest("rollback") is None
    # What a pull brings is the image that was pushed (same id).
    rig.docker("pull", "-q", f"{rig.image_repo}:previous", check=True)
    assert rig.image_id(f"{rig.image_repo}:previous") == rig.image_ids["v2"]


@pytest.mark.parametrize(("name", "status", "version"), [
    ("v1", 200, "1.0.0"), ("v2", 200, "2.0.0"), ("v3", 200, "3.0.0"), ("bad", 404, None),
])
def test_each_release_through_compose(docker_rig, name: str, status: int, version: str | None) -> None:
    rig = docker_rig
    rig.registry_tag("current", name)
    rig.compose("pull", "-q", check=True)
    rig.compose("up", "-d", check=True)
    assert rig.container_image_id() == rig.image_ids[name]
    got = rig.wait_health(expect_ok=status == 200, deadline_s=15)
    assert got == (status, version)
    assert _status(rig.root_url) == 200  # the server runs, even the bad release's


def test_reset_undoes_what_a_test_did(docker_rig) -> None:
    rig = docker_rig
    repo = rig.image_repo
    rig.docker("pull", "-q", f"{repo}:previous", check=True)
    rig.docker("tag", f"{repo}:current", f"{repo}:rollback", check=True)
    rig.registry_tag("current", "bad")
    rig.registry_tag("previous", "v1")
    rig.compose("pull", "-q", check=True)
    rig.compose("up", "-d", check=True)
    rig.docker("run", "-d", "--network", "host", f"{repo}:previous", "/bin/busybox", "sleep", "600", check=True)
    (rig.project_dir / ".env").write_text("X=1\n")
    (rig.host_state / "ledger.jsonl").write_text("{}\n")
    (rig.host_state / "lock").mkdir()
    rig.stop_registry()
    rig.wait_health(expect_ok=False)

    t0 = time.monotonic()
    rig.reset()
    took = time.monotonic() - t0
    assert took < 5, f"reset took {took:.1f} s"
    assert rig.health() == (200, "3.0.0")
    assert rig.container_image_id() == rig.image_ids["v3"]
    assert rig.image_id(f"{repo}:previous") is None
    assert rig.image_id(f"{repo}:rollback") is None
    assert rig.docker("images", "-a", "-q", "--no-trunc").stdout.split() == [rig.image_ids["v3"]]
    assert rig.docker("ps", "-a", "-q", "--no-trunc").stdout.split() == [rig.api_container()]
    assert rig.registry_running()
    assert rig.registry_digest("current") == rig.digests["v3"]
    assert rig.registry_digest("previous") == rig.digests["v2"]
    assert list(rig.host_state.iterdir()) == []
    assert sorted(p.name for p in rig.project_dir.iterdir()) == ["docker-compose.yml"]


def test_reset_restarts_a_stopped_service(docker_rig) -> None:
    rig = docker_rig
    rig.compose("stop", check=True)
    assert rig.container_image_id() is None
    assert rig.health() == (None, None)
    rig.reset()
    assert rig.health() == (200, "3.0.0")


def test_registry_stop_makes_pulls_fail_and_start_brings_it_back(docker_rig) -> None:
    rig = docker_rig
    port = rig.registry_port
    rig.stop_registry()
    assert not rig.registry_running()
    failed = rig.docker("pull", f"{rig.image_repo}:previous")
    assert failed.returncode != 0
    assert "connection refused" in failed.stderr.lower()
    rig.start_registry()
    assert rig.registry_port == port
    rig.docker("pull", "-q", f"{rig.image_repo}:previous", check=True)  # same storage: the tags are there
    assert rig.image_id(f"{rig.image_repo}:previous") == rig.image_ids["v2"]


def test_inventory_and_the_vps_over_ssh(docker_rig) -> None:
    rig = docker_rig
    inv = json.loads(rig.write_inventory(doai_backend_docker_stable_seconds=None, extra_var="x").read_text())
    hosts = inv["all"]["children"]["backend"]["hosts"]
    assert list(hosts) == ["sandbox-docker"]
    hv = hosts["sandbox-docker"]
    assert {k: v for k, v in hv.items() if k.startswith("doai_")} == {
        "doai_backend_mode": "docker",
        "doai_backend_docker_image": rig.image_repo,
        "doai_backend_docker_project_dir": str(rig.project_dir),
        "doai_backend_docker_service": "api",
        "doai_backend_docker_health_url": rig.health_url,
        "doai_backend_docker_docker_host": rig.docker_host,
        "doai_backend_docker_docker_bin": DOCKER,
        "doai_backend_docker_state_dir": str(rig.host_state),
        "doai_backend_docker_health_timeout": 20,
    }
    assert hv["extra_var"] == "x"
    assert hv["ansible_host"] == "127.0.0.1" and hv["ansible_user"] == "root"
    assert "StrictHostKeyChecking=yes" in hv["ansible_ssh_common_args"]
    rig.write_inventory()
    # The "VPS" reached the way Ansible does: ssh with the key, then the docker client there.
    out = subprocess.run(
        rig.vps.ssh_argv(DOCKER, "-H", rig.docker_host, "ps", "--format", "{{.Image}}"),
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    assert out == [f"{rig.image_repo}:current"]


def test_cli_describe(docker_rig) -> None:
    rig = docker_rig
    rig.save()
    proc = subprocess.run(
        [sys.executable, "-m", "doai_ansible.sandbox.docker_rig", "describe", "--workdir", str(rig.workdir)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    d = json.loads(proc.stdout)
    assert d["docker_host"] == rig.docker_host
    assert d["image_repo"] == rig.image_repo
    assert d["health_url"] == rig.health_url
    assert d["dockerd_pid"] == rig.dockerd_pid and d["registry_pid"] == rig.registry_pid
    assert Path(d["inventory"]) == rig.inventory
    assert d["ssh"]["ssh_port"] == rig.vps.ssh_port
