"""`doai-rollback dashboard ...` end to end: the CLI process against the Vercel API stand-in."""

from __future__ import annotations

import json
import os
import sys

import pexpect  # ansible-runner's own dependency: a real pseudo-terminal
import pytest

from tests.conftest import run_cli

pytest_plugins = ["tests.integration.conftest_vercel"]
pytestmark = pytest.mark.integration


@pytest.fixture
def env(vercel_rig, tmp_path):
    cfg = tmp_path / "doai-rollback.yml"
    inv = tmp_path / "hosts.yml"
    inv.write_text("all: {}\n")
    cfg.write_text(json.dumps({
        "inventory": str(inv),
        "vercel": {"api_url": vercel_rig.api.url, "project": "doai-dashboard", "team_id": vercel_rig.world.team.id,
                   "health_url": vercel_rig.health.url, "timeout": 5, "job_deadline": 20, "health_deadline": 5},
    }))
    return {"DOAI_CONFIG": str(cfg), "DOAI_STATE_DIR": str(tmp_path / "state"), "VERCEL_TOKEN": vercel_rig.token}


def test_rollback_journal_and_undo(vercel_rig, env, tmp_path):
    api, world = vercel_rig.api, vercel_rig.world
    res = run_cli("dashboard", "rollback", "--yes", "--reason", "dashboard 503s", "-o", "json", env=env)
    assert res.code == 0, res.stderr
    out = res.json()
    (step,) = out["steps"]
    assert (step["from"], step["to"], step["outcome"]) == (world.current.id, world.expected_target.id, "succeeded")
    assert api.production_of(world.project) == world.expected_target.id
    assert vercel_rig.health.hits and vercel_rig.health.hits[-1] == 200  # the gate was really hit
    posts = api.requests_to("POST", r"/v9/projects/[^/]+/rollback/" + world.expected_target.id)
    assert len(posts) == 1 and posts[0].query.get("description") == "dashboard 503s"

    hist = run_cli("history", "--part", "dashboard", "-o", "json", env=env)
    assert hist.json()[0]["run_id"] == out["run_id"]

    undo = run_cli("undo", out["run_id"], "--yes", "-o", "json", env=env)
    assert undo.code == 0, undo.stderr
    assert api.production_of(world.project) == world.current.id
    assert api.requests_to("POST", r"/v10/projects/[^/]+/promote/" + world.current.id)

    for text in (res.stdout, res.stderr, undo.stdout, undo.stderr, (tmp_path / "state" / "journal.jsonl").read_text()):
        assert vercel_rig.token not in text


def test_dry_run_and_bad_to_send_nothing_that_changes(vercel_rig, env):
    api, world = vercel_rig.api, vercel_rig.world
    res = run_cli("dashboard", "rollback", "--dry-run", env=env)
    assert res.code == 0, res.stderr
    assert world.expected_target.id in res.stdout and "dry run" in res.stdout
    for bad in (world.preview.id, world.errored.id, world.other_project_deployment.id, "dpl_doesnotexist123", "a;b", ""):
        res = run_cli("dashboard", "rollback", "--to", bad, "--yes", env=env)
        assert res.code == 2, (bad, res.stderr)
        assert "Traceback" not in res.stderr
    assert api.mutating_requests() == []
    assert api.production_of(world.project) == world.current.id


def test_failed_job_is_reported_restored(vercel_rig, env):
    vercel_rig.api.queue_job_outcomes("failed")
    res = run_cli("dashboard", "rollback", "--yes", "-o", "json", env=env)
    assert res.code == 3, res.stdout + res.stderr
    step = res.json()["steps"][0]
    assert step["outcome"] == "restored" and "alias" in step["message"].lower()
    assert vercel_rig.api.production_of(vercel_rig.world.project) == vercel_rig.world.current.id


def test_status_and_missing_token(vercel_rig, env):
    res = run_cli("dashboard", "status", "-o", "json", env=env)
    assert res.code == 6, res.stderr  # the bad deployment is live: health 503
    assert res.json()["production"]["id"] == vercel_rig.world.current.id
    no_token = {k: v for k, v in env.items() if k != "VERCEL_TOKEN"}
    res = run_cli("dashboard", "status", env=no_token)
    assert res.code == 2 and "VERCEL_TOKEN" in res.stderr


def _spawn(env, *args):
    full = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")}
    full.update(env)
    return pexpect.spawn(sys.executable, ["-m", "doai_ansible", *args], env=full, encoding="utf-8", timeout=60)


def test_terminal_shows_the_plan_and_asks_once(vercel_rig, env):
    """On a terminal: the plan first, one question; 'no' changes nothing (exit 130)."""
    api, world = vercel_rig.api, vercel_rig.world
    child = _spawn(env, "dashboard", "rollback", "--reason", "tty")
    child.expect(world.expected_target.id)
    child.expect(r"Roll the dashboard back as shown\? \[y/N\]")
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert api.mutating_requests() == []

    child = _spawn(env, "dashboard", "rollback", "--reason", "tty")
    child.expect(r"\[y/N\]")
    child.sendline("y")
    child.expect("done and verified")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert api.production_of(world.project) == world.expected_target.id
