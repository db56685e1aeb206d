"""The controller-side inventory read (doai_ansible/inventory.py): answers, never Ansible's
warnings on our stderr."""

from __future__ import annotations

from pathlib import Path

import pytest

from doai_ansible.errors import ConfigError
from doai_ansible.inventory import backend_modes, declares_modes, group_vars, has_hosts
from tests.conftest import run_cli


@pytest.fixture
def backend_only(tmp_path: Path) -> Path:
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  children:\n    backend:\n      hosts:\n        vps1: {ansible_host: 127.0.0.1}\n")
    return inv


def test_an_absent_group_or_unmatched_limit_is_no_hosts_without_a_warning(backend_only, capfd):
    assert has_hosts(backend_only, "agents") is False
    assert group_vars(backend_only, "backend", "nohost") == {}
    assert backend_modes(backend_only, "nohost") == {}
    assert list(group_vars(backend_only, "backend")) == ["vps1"]
    err = capfd.readouterr().err
    assert "Could not match supplied host pattern" not in err and "WARNING" not in err


def test_no_inventory_is_not_configured_and_a_read_says_how_to_set_one():
    assert has_hosts(None, "backend") is False
    for read in (lambda: group_vars(None, "backend"), lambda: declares_modes(None), lambda: backend_modes(None)):
        with pytest.raises(ConfigError, match="DOAI_INVENTORY"):
            read()


def test_lock_status_on_an_inventory_without_agents_prints_no_ansible_warning(tmp_path):
    """`lock status` (and `status`, `lock release`) read every part's group: one the inventory
    lacks is a part not configured, not "[WARNING]: Could not match supplied host pattern"."""
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  children:\n    backend:\n      hosts: {}\n")
    env = {"DOAI_INVENTORY": str(inv), "DOAI_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)}
    for args in (("lock", "status"), ("status",), ("lock", "release", "backend")):
        res = run_cli(*args, env=env, timeout=120)
        assert res.code == 0, (args, res.stdout, res.stderr)
        assert "Could not match" not in res.stdout + res.stderr and "[WARNING]" not in res.stderr, args
