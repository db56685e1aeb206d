"""Nothing configured: no silent fallback to the bundled inventory/example.

The CLI runs from the repository root with no DOAI_INVENTORY, no config file and an empty HOME.
Its content dir (DOAI_CONTENT_DIR) is a copy whose inventory/example names one host on a closed
loopback port, and ``ssh`` on PATH is a stand-in that records every call: a run that fell back to
the example inventory would call it (and name the host); a run that does not, never does.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

EXAMPLE_HOST = "example-vps-fallback"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def bare(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """(environment, ssh call log): nothing configured, ssh recorded."""
    content = tmp_path / "content"
    (content / "inventory" / "example").mkdir(parents=True)
    # The content is the collection doai.rollback: the roles call its plugins/ by FQCN.
    for sub in ("playbooks", "roles", "plugins", "meta", "galaxy.yml"):
        (content / sub).symlink_to(ROOT / sub)
    (content / "inventory" / "example" / "hosts.yml").write_text(
        "all:\n  children:\n    backend:\n      hosts:\n"
        f"        {EXAMPLE_HOST}: {{ansible_host: 127.0.0.1, ansible_port: {_closed_port()}, ansible_ssh_retries: 0}}\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "ssh-calls"
    ssh = bin_dir / "ssh"
    ssh.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 255\n')
    ssh.chmod(ssh.stat().st_mode | stat.S_IXUSR)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_STATE_HOME": str(home / ".local/state"),
        "DOAI_CONTENT_DIR": str(content), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    assert not (ROOT / "doai-rollback.yml").exists() and not (ROOT / "doai-rollback.yaml").exists()
    return env, calls


def _run(env: dict[str, str], *args: str):
    old = os.getcwd()
    os.chdir(ROOT)  # from the repository root, as an operator would
    try:
        return run_cli(*args, env=env, timeout=120)
    finally:
        os.chdir(old)


def test_backend_rollback_without_inventory_exits_2_and_contacts_nothing(bare):
    env, calls = bare
    res = _run(env, "backend", "rollback", "--yes", "--reason", "no inventory")
    assert res.code == 2, res.stdout + res.stderr
    assert not calls.exists(), f"ssh was called: {calls.read_text()}"
    out = res.stdout + res.stderr
    assert EXAMPLE_HOST not in out
    assert "--inventory" in res.stderr and "DOAI_INVENTORY" in res.stderr and "`inventory" in res.stderr


def test_status_without_inventory_shows_parts_not_configured(bare):
    env, calls = bare
    res = _run(env, "status")
    assert not calls.exists(), f"ssh was called: {calls.read_text()}"
    assert res.code == 0, res.stdout + res.stderr
    assert "backend: not configured" in res.stdout
    assert EXAMPLE_HOST not in res.stdout + res.stderr


def test_the_example_inventory_is_read_when_named(bare):
    """The check above can fail: named, the example inventory is used (ssh called, host unreachable)."""
    env, calls = bare
    res = _run(env, "backend", "status", "-i", str(Path(env["DOAI_CONTENT_DIR"]) / "inventory" / "example" / "hosts.yml"))
    assert res.code == 7, res.stdout + res.stderr
    assert calls.exists()
    assert EXAMPLE_HOST in res.stdout
