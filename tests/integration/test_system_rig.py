"""The whole-system rig itself (doai_ansible/sandbox/system_rig.py): what the system rollback's
tests, the demo and the benchmark rely on. Every part real; the state read from the rigs, and
the tool's own ``status`` run against them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from doai_ansible.sandbox.system_rig import BAD_MIGRATION, BAD_MIGRATION_FILE, CONTACT_ROLES, docker_unavailable
from doai_ansible.settings import load_settings
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def test_starts_on_the_good_deployment_with_one_inventory_and_config(system_rig, state_dir: Path) -> None:
    rig = system_rig
    assert rig.state() == rig.expected_good()
    if docker_unavailable() is None:  # Docker can run here: it must be in the rig, not silently skipped
        assert rig.docker is not None, rig.skipped
    else:
        assert "backend:docker" in rig.skipped
    inv = json.loads(rig.inventory().read_text())["all"]["children"]
    backend = inv["backend"]["hosts"]
    assert sorted(backend) == sorted(rig.backend_hosts) and len(set(backend)) == len(backend)
    assert backend["sandbox-vps"].get("doai_backend_mode", "pm2") == "pm2"
    if rig.docker:
        assert backend["sandbox-docker"]["doai_backend_mode"] == "docker"
        assert backend["sandbox-docker"]["ansible_port"] != backend["sandbox-vps"]["ansible_port"]
    assert sorted(inv["agents"]["hosts"]) == rig.agents.pcs == ["pc01", "pc02"]
    assert not set(inv["agents"]["hosts"]) & set(backend)

    settings = load_settings(None, env=rig.env(state_dir))
    assert settings.inventory == rig.inventory()
    assert settings.vercel.api_url == rig.api.url and settings.vercel.health_url == rig.dashboard.url
    assert settings.database.project_dir == rig.pg.project_dir
    assert (settings.database.rollbacks_path / "20261120000000_device_issues.sql").is_file()
    assert [c.role for c in settings.system.contacts] == list(CONTACT_ROLES)
    assert {(c.name, c.contact) for c in settings.system.contacts} == {("TBD", "TBD")}
    urls = {c.url for c in settings.system.smoke_checks}
    assert rig.sandbox.health_url in urls and rig.dashboard.url in urls
    assert (rig.docker.health_url in urls) if rig.docker else len(urls) == 2
    assert settings.diagnose.backend_env == ("PORT",)
    for secret in rig.secrets():  # secrets only in the environment, never in the files
        assert secret not in rig.config().read_text() and secret not in rig.inventory().read_text()


def test_break_all_is_the_failed_deployment_and_reset_undoes_it(system_rig) -> None:
    rig = system_rig
    rig.break_all()
    bad = rig.state()
    assert bad == rig.expected_bad()
    assert bad != rig.expected_good()
    # what each part's rollback will need is there, as the pipeline leaves it
    assert (rig.pg.project_dir / "supabase" / "rollbacks" / BAD_MIGRATION_FILE).is_file()
    assert BAD_MIGRATION in rig.pg.supabase_applied()  # the Supabase CLI sees it applied
    for pc in rig.agents.pcs:
        for user in rig.agents.users:
            folder = rig.agents.folder_state(pc, user)
            assert (folder["app-current"], folder["app-backup"]) == ("2.0.0", "1.9.0")
    if rig.docker:
        assert rig.docker.registry_digest("previous") == rig.docker.digests["v3"]
        assert rig.docker.registry_digest("current") == rig.docker.digests["bad"]
    assert rig.api.production_of(rig.world.project) == rig.bad_deployments[-1].id

    rig.reset()
    assert rig.state() == rig.expected_good()
    assert not (rig.pg.project_dir / "supabase" / "migrations" / BAD_MIGRATION_FILE).exists()
    assert rig.bad_deployments == [] and rig.api.requests == []
    rig.break_all()  # and again: a reset rig breaks the same way
    assert rig.state() == rig.expected_bad()


def test_status_of_every_part_through_the_cli(system_rig, state_dir: Path) -> None:
    rig = system_rig
    env = rig.env(state_dir)
    good = run_cli("status", "-o", "json", env=env)
    assert good.code == 0, good.stdout[-2000:] + good.stderr
    parts = good.json()["parts"]
    assert set(parts) == {"agent", "backend", "database", "dashboard"}
    assert all(p["configured"] and p["healthy"] for p in parts.values()), parts
    assert sorted(parts["backend"]["hosts"]) == sorted(rig.backend_hosts)
    assert parts["backend"]["hosts"]["sandbox-vps"]["commit"] == rig.sandbox.commits["v2"]
    assert parts["database"]["last_applied"] == rig.expected_good()["database"]["last"]
    assert parts["dashboard"]["production"]["id"] == rig.world.current.id
    assert sorted(parts["agent"]["hosts"]) == rig.agents.pcs

    rig.break_all()
    bad = run_cli("status", "-o", "json", env=env)
    assert bad.code == 6, bad.stdout[-2000:] + bad.stderr  # unhealthy
    parts = bad.json()["parts"]
    hosts = parts["backend"]["hosts"]
    assert hosts["sandbox-vps"]["commit"] == rig.sandbox.commits["v3"] and not hosts["sandbox-vps"]["healthy"]
    if rig.docker:
        assert hosts["sandbox-docker"]["image_id"] == rig.docker.image_ids["bad"]
        assert not hosts["sandbox-docker"]["healthy"]
    assert parts["database"]["last_applied"] == BAD_MIGRATION
    assert parts["dashboard"]["production"]["id"] == rig.bad_deployments[-1].id and not parts["dashboard"]["healthy"]
    swaps = {(pc, user): u["reason"] for pc, h in parts["agent"]["hosts"].items() for user, u in h["users"].items()}
    assert set(swaps) == {(pc, u) for pc in rig.agents.pcs for u in rig.agents.users}
    assert all(r == "swap 2.0.0 -> 1.9.0" for r in swaps.values()), swaps
    for text in (good.stdout, good.stderr, bad.stdout, bad.stderr):
        for secret in rig.secrets():
            assert secret not in text
