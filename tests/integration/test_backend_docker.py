"""The backend's Docker mode against the real thing: a dockerd of the tests' own (vfs, host
networking), a local registry, images built FROM scratch with a static busybox serving
/api/health with a version, Compose v1, the "VPS" reached over the loopback sshd."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from doai_ansible.sandbox.docker_rig import DOCKER, SERVICE
from tests.conftest import run_cli, run_module

pytestmark = pytest.mark.integration


@pytest.fixture
def env(docker_rig, state_dir: Path) -> dict[str, str]:
    return {"DOAI_INVENTORY": str(docker_rig.write_inventory()), "DOAI_STATE_DIR": str(state_dir)}


def ids(rig) -> dict[str, str | None]:
    repo = rig.image_repo
    return {tag: rig.image_id(f"{repo}:{tag}") for tag in ("current", "previous", "rollback")} | {
        "running": rig.container_image_id()}


def snapshot(rig) -> dict[str, object]:
    """What a refusal must leave exactly as it was."""
    return {"ids": ids(rig), "health": rig.health(), "container": rig.api_container()}


def journal(state_dir: Path) -> list[dict]:
    path = state_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def ledger(rig) -> list[dict]:
    path = Path(rig.host_state) / "docker-ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_rollback_to_previous_retags_and_serves_the_previous_version(docker_rig, env, state_dir):
    rig = docker_rig
    v2, v3 = rig.image_ids["v2"], rig.image_ids["v3"]
    assert rig.health() == (200, "3.0.0") and rig.container_image_id() == v3
    res = run_cli("backend", "rollback", "--yes", "--reason", "500s after deploy", "-o", "json", env=env)
    assert res.code == 0, res.stderr
    assert rig.health() == (200, "2.0.0")
    after = ids(rig)
    assert after["current"] == v2 and after["running"] == v2
    assert after["rollback"] == v3  # the failed release, kept
    data = res.json()
    (step,) = data["steps"]
    assert step["from"] == v3 and step["to"] == v2 and step["details"]["mode"] == "docker"
    assert step["details"]["health_version"] == "2.0.0"
    (record,) = journal(state_dir)
    assert record["steps"][0]["from"] == v3 and record["steps"][0]["to"] == v2
    (entry,) = ledger(rig)
    assert entry["from"] == v3 and entry["to"] == v2 and entry["result"] == "succeeded"
    assert entry["why"] == "500s after deploy"
    # the container's last log lines are in the run's log bundle
    assert list((state_dir / "runs" / data["run_id"]).rglob("*-container.log"))
    # a second run changes nothing
    again = run_cli("backend", "rollback", "--yes", "-o", "json", env=env)
    assert again.code == 0, again.stderr
    assert again.json()["steps"][0]["outcome"] == "unchanged"
    assert ids(rig) == after and len(ledger(rig)) == 1


def test_undo_brings_back_exactly_the_image_that_was_live(docker_rig, env, state_dir):
    rig = docker_rig
    v3 = rig.image_ids["v3"]
    first = run_cli("backend", "rollback", "--yes", "-o", "json", env=env)
    assert first.code == 0, first.stderr
    # the registry's tags move on meanwhile: undo goes by image id, not by tag
    rig.registry_tag("current", "v1")
    undo = run_cli("undo", first.json()["run_id"], "--yes", "-o", "json", env=env)
    assert undo.code == 0, undo.stderr
    assert rig.container_image_id() == v3 and rig.image_id(f"{rig.image_repo}:current") == v3
    assert rig.health() == (200, "3.0.0")
    assert [e["action"] for e in ledger(rig)] == ["rollback", "undo"]


def test_dry_run_shows_tags_and_ids_and_changes_nothing(docker_rig, env, state_dir):
    rig = docker_rig
    before = snapshot(rig)
    res = run_cli("backend", "rollback", "--dry-run", env=env)
    assert res.code == 0, res.stderr
    v2, v3 = rig.image_ids["v2"], rig.image_ids["v3"]
    assert v3.split(":")[1][:12] in res.stdout and v2.split(":")[1][:12] in res.stdout
    assert "previous" in res.stdout
    assert snapshot(rig) == before  # not even pulled: resolved from the registry's manifest
    assert not (Path(rig.host_state) / "backend.lock").exists()


def test_pull_of_a_missing_tag_changes_nothing(docker_rig, env, state_dir):
    rig = docker_rig
    before = snapshot(rig)
    res = run_cli("backend", "rollback", "--to", "no-such-tag", "--yes", env=env)
    assert res.code == 2, (res.stdout, res.stderr)
    assert "pull of" in res.stderr and "nothing was changed" in res.stderr
    assert snapshot(rig) == before
    assert not (Path(rig.host_state) / "backend.lock").exists()
    assert journal(state_dir)[0]["exit_name"] == "USAGE"


def test_registry_down_changes_nothing(docker_rig, env, state_dir):
    rig = docker_rig
    before = snapshot(rig)
    rig.stop_registry()
    try:
        res = run_cli("backend", "rollback", "--yes", env=env)
        plan = run_cli("backend", "rollback", "--dry-run", env=env)
    finally:
        rig.start_registry()
    assert res.code == 2, (res.stdout, res.stderr)
    assert "pull of" in res.stderr and "current container still serves" in res.stderr
    assert plan.code == 2 and "cannot resolve" in plan.stderr and "sha256:" in plan.stderr
    assert snapshot(rig) == before


def test_unhealthy_previous_image_puts_the_original_back(docker_rig, env, state_dir):
    rig = docker_rig
    v3 = rig.image_ids["v3"]
    rig.registry_tag("previous", "bad")
    res = run_cli("backend", "rollback", "--yes", "-o", "json", env=env)
    assert res.code == 3, (res.stdout, res.stderr)
    (step,) = res.json()["steps"]
    assert step["outcome"] == "restored" and "not healthy" in step["message"]
    assert rig.image_id(f"{rig.image_repo}:current") == v3 and rig.container_image_id() == v3
    assert rig.health() == (200, "3.0.0")
    assert rig.image_id(f"{rig.image_repo}:rollback") is None  # it had none before: nothing left pointing at bad
    assert ledger(rig)[-1]["result"] == "restored"
    assert not (Path(rig.host_state) / "backend.lock").exists()


def test_an_image_that_exits_at_once_is_put_back_by_its_restarts(docker_rig, env, state_dir):
    """:crash exits as it starts (restart: unless-stopped makes it a loop) and never answers: the
    health gate finds it by its restarts or its exit, not by the 60 s health timeout, and v3 is
    put back running and healthy."""
    rig = docker_rig
    v3 = rig.image_ids["v3"]
    rig.registry_tag("previous", "crash")
    res = run_cli("backend", "rollback", "--yes", "-o", "json", env=env)
    assert res.code == 3, (res.stdout, res.stderr)
    (step,) = res.json()["steps"]
    assert step["outcome"] == "restored" and "crash-loops" in step["message"], step
    assert "not healthy within" not in step["message"], step
    assert rig.image_id(f"{rig.image_repo}:current") == v3 and rig.container_image_id() == v3
    assert rig.health() == (200, "3.0.0")
    assert ledger(rig)[-1]["result"] == "restored"


@pytest.mark.parametrize("bad", ["bad tag", "-x", "sha256:zz", "a/b:c", "$(id)", "x" * 200, "previous;id"])
def test_bad_target_is_a_usage_error_before_any_command(docker_rig, env, state_dir, bad):
    rig = docker_rig
    before = snapshot(rig)
    res = run_cli("backend", "rollback", f"--to={bad}", "--yes", env=env)
    assert res.code == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("doai-rollback: error: --to")
    assert not (state_dir / "runs").exists()  # no playbook was started
    assert snapshot(rig) == before


def test_bad_image_setting_is_refused_on_the_controller(docker_rig, state_dir):
    rig = docker_rig
    inv = rig.write_inventory(doai_backend_docker_image="Registry/UPPER case")
    before = snapshot(rig)
    res = run_cli("backend", "rollback", "--yes", env={"DOAI_INVENTORY": str(inv), "DOAI_STATE_DIR": str(state_dir)})
    assert res.code == 2, (res.stdout, res.stderr)
    assert "doai_backend_docker_image" in res.stderr
    assert snapshot(rig) == before


def test_status_shows_image_tag_and_health(docker_rig, env):
    rig = docker_rig
    res = run_cli("backend", "status", env=env)
    assert res.code == 0, res.stderr
    v3 = rig.image_ids["v3"]
    assert "healthy" in res.stdout and v3.split(":")[1][:12] in res.stdout and "3.0.0" in res.stdout
    data = run_cli("backend", "status", "-o", "json", env=env).json()
    host = data["hosts"]["sandbox-docker"]
    assert host["mode"] == "docker" and host["image_id"] == v3 and host["healthy"] is True


def test_a_plans_capture_reads_each_thing_once_and_answers_as_the_read_modules(docker_rig, tmp_path):
    """Issue 20: the plan's capture makes the checklist's reads too (state and log lines), in one
    module call. A plan takes no lock and changes nothing, so an image or the container read for
    the checklist is not read again for the plan, and Compose's reading of its file runs
    alongside. Each read is what the status and diagnose modules answer on their own."""
    rig = docker_rig
    calls = tmp_path / "docker-calls"
    shim = tmp_path / "docker"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {DOCKER} "$@"\n')
    shim.chmod(0o755)
    where = dict(docker_bin=str(shim), docker_host=rig.docker_host, project_dir=str(rig.project_dir),
                 service=SERVICE, health_url=rig.health_url)
    lock = str(tmp_path / "backend.lock")
    out = run_module("doai_backend_docker_capture", tmp_path, image=rig.image_repo, lock_path=lock, run_id="r1", plan_only=True,
                     read_status=True, read_lines=5, **where)
    assert not out.get("failed"), out
    assert out["current"] == rig.image_ids["v3"] and out["changes"] and not out["locked_by_us"], out
    said = calls.read_text().splitlines()
    assert said.count(f"image inspect {rig.image_repo}:current") == 1, said
    assert sum(line.startswith("ps ") for line in said) == 1, said
    container_id = out["container"]["id"]
    assert said.count(f"inspect {container_id}") == 1, said  # the container's, kept for the log read
    assert not Path(lock).exists() and ids(rig)["current"] == rig.image_ids["v3"]  # a plan changes nothing

    alone = {k: v for k, v in run_module("doai_backend_docker_inspect", tmp_path, image=rig.image_repo,
                                         tags=["current", "previous", "rollback"], lock_path=lock, **where).items()
             if k not in ("changed", "invocation")}
    assert out["checklist"]["status"] == alone and out["checklist"]["status_error"] is None
    diagnose = run_module("doai_backend_docker_diagnose", tmp_path, lines=5, **where)
    evidence = out["checklist"]["evidence"]
    assert out["checklist"]["evidence_error"] is None
    for key in ("image_id", "version", "processes", "docker_error", "health_status", "health_version"):
        assert evidence[key] == diagnose[key], key
    assert evidence["logs"][0]["app"] == diagnose["logs"][0]["app"] and evidence["logs"][0]["error"] is None


def test_current_moved_between_plan_and_confirmation_is_refused(docker_rig, env, state_dir):
    """The confirmed plan pins image ids: a deploy while the operator reads it refuses the apply."""
    import pexpect

    rig = docker_rig
    full = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")} | env
    child = pexpect.spawn(sys.executable, ["-m", "doai_ansible", "backend", "rollback"], env=full,
                          encoding="utf-8", timeout=180)
    child.expect(r"\[y/N\]")
    rig.docker("pull", f"{rig.image_repo}:v1", check=True)
    v1 = rig.image_ids["v1"]
    rig.docker("tag", v1, f"{rig.image_repo}:current", check=True)  # someone deploys v1
    rig.compose("up", "-d", check=True)
    rig.wait_health()
    before = snapshot(rig)
    child.sendline("y")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2, child.before
    assert "as planned" in child.before
    assert snapshot(rig) == before
    assert not (Path(rig.host_state) / "backend.lock").exists()


def test_playbook_runs_directly_and_skips_pm2_hosts(docker_rig, state_dir, tmp_path):
    """Operators run the playbook without the CLI; a PM2 host in the same group is left alone."""
    import subprocess

    rig = docker_rig
    inv = json.loads(Path(rig.write_inventory()).read_text())
    inv["all"]["children"]["backend"]["hosts"]["pm2-host"] = {"ansible_host": "127.0.0.1", "ansible_port": 1}
    path = tmp_path / "mixed.yml"
    path.write_text(json.dumps(inv))
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(path),
                           str(root / "playbooks" / "backend_docker_rollback.yml")],
                          capture_output=True, text=True, cwd=root, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert rig.health() == (200, "2.0.0")
    assert "unreachable=1" not in proc.stdout  # the PM2 host was never contacted


# -- the SSH link drops in the middle of the apply ------------------------------------------------
def _cut_when_healthy(rig, seconds: float, box: dict) -> None:
    """Cut the link once the apply job on the host reports the target healthy (the controller
    then waits on the job's restart watch); remember whether the job outlived the cut."""
    import time

    jobs = Path(rig.host_state) / "jobs"
    end = time.monotonic() + 120
    while time.monotonic() < end:
        for path in jobs.glob("*-apply.json"):
            try:
                job = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if job.get("state") == "running" and "healthy" in (job.get("progress") or {}):
                box["killed"] = rig.vps.cut_ssh(seconds)
                box["job"] = path
                return
        time.sleep(0.05)


@pytest.mark.parametrize(("seconds", "resumed"), [(4, False), (20, True)])
def test_link_cut_during_the_restart_watch(docker_rig, state_dir, seconds, resumed):
    """A short drop is ridden out by attaching to the job again; a long one loses the host,
    and the CLI resumes this run's work when it is back. Either way the run ends whole."""
    import threading

    rig = docker_rig
    inv = rig.write_inventory(doai_backend_docker_stable_seconds=8)
    box: dict = {}
    fault = threading.Thread(target=_cut_when_healthy, args=(rig, seconds, box), daemon=True)
    fault.start()
    res = run_cli("backend", "rollback", "--yes", "-o", "json",
                  env={"DOAI_INVENTORY": str(inv), "DOAI_STATE_DIR": str(state_dir)})
    fault.join(timeout=150)
    assert box.get("killed"), "the link was never cut"
    assert res.code == 0, res.stdout + res.stderr
    (step,) = res.json()["steps"]
    assert step["outcome"] == "succeeded"
    assert ("resumed" in step["message"]) is resumed, step
    assert json.loads(box["job"].read_text())["result"]["status"] == "succeeded"  # the job outlived the cut
    assert rig.health() == (200, "2.0.0") and rig.container_image_id() == rig.image_ids["v2"]
    assert rig.image_id(f"{rig.image_repo}:rollback") == rig.image_ids["v3"]
    assert not (Path(rig.host_state) / "backend.lock").exists()
    assert [e["result"] for e in ledger(rig)] == ["succeeded"]


def test_prepare_pulls_the_rollback_image_and_changes_nothing_live(docker_rig, env):
    rig = docker_rig
    before = snapshot(rig)
    plan = run_cli("backend", "prepare", "--dry-run", "-o", "json", env=env)
    assert plan.code == 0, plan.stderr
    assert plan.json()["hosts"]["sandbox-docker"]["status"] == "would_prepare"
    assert snapshot(rig) == before
    res = run_cli("backend", "prepare", "-o", "json", env=env)
    assert res.code == 0, res.stderr
    host = res.json()["hosts"]["sandbox-docker"]
    assert host["status"] == "prepared" and host["target"] == rig.image_ids["v2"] and host["mode"] == "docker"
    after = snapshot(rig)
    assert after["ids"]["previous"] == rig.image_ids["v2"]  # pulled ...
    assert {k: v for k, v in after["ids"].items() if k != "previous"} == \
        {k: v for k, v in before["ids"].items() if k != "previous"}  # ... and nothing the service uses moved
    assert after["health"] == before["health"] and after["container"] == before["container"]
    again = run_cli("backend", "prepare", env=env)
    assert again.code == 0 and "already prepared" in again.stdout
    # the rollback then finds the image there
    assert run_cli("backend", "rollback", "--yes", env=env).code == 0
    assert rig.health() == (200, "2.0.0")


@pytest.mark.parametrize(("var", "value", "named"), [
    ("doai_backend_docker_service", "nope", "service 'nope' is not in the Compose project"),
    ("doai_backend_docker_project_name", "Bad Name", "doai_backend_docker_project_name"),
    ("doai_backend_docker_health_url", "ftp://127.0.0.1/x", "doai_backend_docker_health_url"),
    ("doai_backend_docker_compose", "v3", "doai_backend_docker_compose"),
    # a refusal of the capture's, after it took the host lock: released again
    ("doai_backend_docker_project_dir", "/nonexistent/doai", "Compose project directory /nonexistent/doai does not exist"),
])
def test_a_wrong_inventory_value_is_refused_before_the_retag(docker_rig, state_dir, var, value, named):
    rig = docker_rig
    before = snapshot(rig)
    env = {"DOAI_INVENTORY": str(rig.write_inventory(**{var: value})), "DOAI_STATE_DIR": str(state_dir)}
    res = run_cli("backend", "rollback", "--yes", env=env)
    assert res.code == 2, (res.stdout, res.stderr)
    assert named in res.stderr
    assert snapshot(rig) == before
    assert not (Path(rig.host_state) / "backend.lock").exists()
