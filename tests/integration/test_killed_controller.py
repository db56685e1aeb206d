"""A controller killed (SIGKILL, the CLI and every process it started) while the host's detached
job applies its change (issue 18 item 1), on the real rigs: PM2 (sshd, git, npm, PM2) and Docker
(dockerd, registry, Compose). The job outlives the controller and records what it did in the
host's ledger; the next run journals the killed run from that record (from, to: undo works on
it), is refused by the host lock the killed run left with the command that clears it, and a
default PM2 rollback never returns to the release the killed run rolled back from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _job(host_state: Path, kind: str = "apply") -> dict | None:
    for path in (host_state / "jobs").glob(f"*-{kind}.json"):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def _wait(what, deadline_s: float, why: str):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(why)


def kill_controller_once(args: list[str], env: dict[str, str], caught, what: str) -> None:
    """Start the CLI and SIGKILL it and every process it started once ``caught()`` holds (the
    run must still be going then)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")} | env
    proc = subprocess.Popen([sys.executable, "-m", "doai_ansible", *args], cwd=ROOT, env=full_env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: caught() or proc.poll() is not None, 300, f"{what} never started")
        assert proc.poll() is None, f"the run ended before {what} could be caught"
        for pid in [proc.pid, *_descendants(proc.pid)]:  # the controller dies, ansible-playbook and ssh with it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def kill_controller_while_the_job_applies(args: list[str], env: dict[str, str], host_state: Path) -> str:
    """Start the CLI, SIGKILL it and every process it started once the host's apply job runs,
    wait (bounded) for the job to finish by itself; returns the killed run's id."""
    kill_controller_once(args, env, lambda: (_job(host_state) or {}).get("state") == "running", "the apply job")
    _wait(lambda: (_job(host_state) or {}).get("state") == "done", 300, "the host's job never finished")
    (run_dir,) = [p for p in (Path(env["DOAI_STATE_DIR"]) / "runs").iterdir() if (p / "plan.json").exists()]
    return run_dir.name


def _read_ledger(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _after_the_kill(env: dict[str, str], host: str, killed: str, frm: str, to: str) -> None:
    """The next run journals the killed run (from, to, outcome from the host's record), is refused
    by the host lock it left (naming the command that clears it); history shows the killed run."""
    nxt = run_cli("backend", "rollback", "--yes", "-o", "json", env=env)
    assert nxt.code == 5, nxt.stdout + nxt.stderr
    doc = nxt.json()
    assert f"doai-rollback lock release backend --host {host}" in doc["message"] + (doc.get("hint") or ""), doc
    assert any(killed in w for w in doc["warnings"]), doc["warnings"]
    hist = run_cli("history", "-o", "json", env=env)
    assert hist.code == 0, hist.stderr
    runs = hist.json()
    runs = runs["runs"] if isinstance(runs, dict) else runs
    (record,) = [r for r in runs if r["run_id"] == killed]
    (step,) = record["steps"]
    assert (step["target"], step["from"], step["to"], step["outcome"]) == (host, frm, to, "succeeded"), step
    assert "after the controller was killed" in step["message"] and "not verified by the controller" in step["message"]
    released = run_cli("lock", "release", "backend", "--host", host, "--yes", env=env)
    assert released.code == 0, released.stdout + released.stderr


def test_pm2_controller_killed_mid_apply_is_recorded_by_the_job_and_undoable(fresh_sandbox, state_dir):
    sb = fresh_sandbox
    env = {"DOAI_INVENTORY": str(sb.inventory), "DOAI_STATE_DIR": str(state_dir)}
    v1, v2, v3 = (sb.commits[v] for v in ("v1", "v2", "v3"))
    assert sb.head() == v3
    killed = kill_controller_while_the_job_applies(
        ["backend", "rollback", "--yes", "--to", "v1", "--reason", "500s after deploy"], env, sb.host_state)
    assert sb.head() == v1
    assert sb.wait_health(expect_ok=None)[1] == "1.0.0"
    (entry,) = [e for e in _read_ledger(sb.ledger) if e.get("run_id") == killed]
    assert (entry["action"], entry["from"], entry["to"], entry["result"], entry["by"]) == (
        "rollback", v3, v1, "applied", "job"), entry
    assert entry["who"] and entry["why"] == "500s after deploy"
    _after_the_kill(env, sb.host_name, killed, v3, v1)
    # The default rollback from v1 never returns to v3, the release the killed run left.
    plan = run_cli("backend", "rollback", "--dry-run", "-o", "json", env=env)
    assert plan.code == 0, plan.stdout + plan.stderr
    (step,) = plan.json()["steps"]
    assert step["from"] == v1 and step["to"] == v2, step
    # And the killed run is undone like any other.
    undo = run_cli("undo", killed, "--yes", "-o", "json", env=env)
    assert undo.code == 0, undo.stdout + undo.stderr
    assert sb.head() == v3 and sb.wait_health(expect_ok=None)[1] == "3.0.0"
    assert _read_ledger(sb.ledger)[-1]["action"] == "undo"


def test_docker_controller_killed_mid_apply_is_recorded_by_the_job_and_undoable(docker_rig, state_dir):
    rig = docker_rig
    env = {"DOAI_INVENTORY": str(rig.write_inventory()), "DOAI_STATE_DIR": str(state_dir)}
    v2, v3 = rig.image_ids["v2"], rig.image_ids["v3"]
    assert rig.container_image_id() == v3
    killed = kill_controller_while_the_job_applies(
        ["backend", "rollback", "--yes", "--reason", "500s after deploy"], env, Path(rig.host_state))
    assert rig.container_image_id() == v2 and rig.health() == (200, "2.0.0")
    (entry,) = [e for e in _read_ledger(Path(rig.host_state) / "docker-ledger.jsonl") if e.get("run_id") == killed]
    assert (entry["action"], entry["from"], entry["to"], entry["result"], entry["by"]) == (
        "rollback", v3, v2, "succeeded", "job"), entry
    assert entry["who"] and entry["why"] == "500s after deploy"
    _after_the_kill(env, rig.host_name, killed, v3, v2)
    undo = run_cli("undo", killed, "--yes", "-o", "json", env=env)
    assert undo.code == 0, undo.stdout + undo.stderr
    assert rig.container_image_id() == v3 and rig.health() == (200, "3.0.0")


def _age_host_lock(lock: Path, job_pid: int) -> None:
    """Make the host lock look taken (and last refreshed) in 1970 by a run whose job is ``job_pid``."""
    fields = Path(f"/proc/{job_pid}/stat").read_text().rsplit(")", 1)[1].split()
    owner = json.loads((lock / "owner.json").read_text())
    owner.update(since="1970-01-01T00:00:00Z", refreshed="1970-01-01T00:00:00Z",
                 job={"pid": job_pid, "start_ticks": int(fields[19]),
                      "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip()})
    (lock / "owner.json").write_text(json.dumps(owner))
    os.utime(lock, (1, 1))


def test_a_host_lock_older_than_the_ttl_holds_while_its_job_lives(sandbox, state_dir):
    """Issue 18 item 3: a host lock far older than the TTL whose job still runs is not taken over
    (exit 5, nothing changed); once that job is gone, the same lock is taken over."""
    sb = sandbox
    env = {"DOAI_INVENTORY": str(sb.inventory), "DOAI_STATE_DIR": str(state_dir)}
    lock = sb.host_state / "backend.lock"
    lock.mkdir(parents=True, mode=0o700)
    (lock / "owner.json").write_text(json.dumps({"run_id": "20200101T000000Z-000001", "owner": "ci",
                                                 "reason": "a 40-minute pg_dump"}))
    job = subprocess.Popen(["sleep", "300"])  # the other run's job, alive on the host
    try:
        _age_host_lock(lock, job.pid)
        refused = run_cli("backend", "rollback", "--yes", "-o", "json", env=env)
        assert refused.code == 5, refused.stdout + refused.stderr
        assert sb.head() == sb.commits["v3"]
        assert json.loads((lock / "owner.json").read_text())["run_id"] == "20200101T000000Z-000001"
    finally:
        job.kill()
        job.wait()
    done = run_cli("backend", "rollback", "--yes", "-o", "json", env=env)
    assert done.code == 0, done.stdout + done.stderr
    assert sb.head() == sb.commits["v2"] and not lock.exists()


def test_pm2_controller_killed_during_the_restart_watch(fresh_sandbox, state_dir):
    """The controller killed (SIGKILL, with every process it started) after the backend is healthy
    on the target, while the host's job watches PM2 for restarts: the release stays (it is
    healthy), and the host ends in one of two true states, never in between. Either the watch's
    own call outlived the SSH session and finished the run's last steps (the record ``succeeded``
    in the ledger, the host lock released), or it did not (no such record, the lock kept, the next
    run refused naming the command that clears it). Either way the next run journals the killed
    run from the host's records with from and to."""
    sb = fresh_sandbox
    sb.write_inventory(doai_backend_pm2_stable_seconds=8)  # a watch long enough to be caught in
    env = {"DOAI_INVENTORY": str(sb.inventory), "DOAI_STATE_DIR": str(state_dir)}
    v1, v3 = sb.commits["v1"], sb.commits["v3"]
    watching = {}

    def caught() -> bool:  # healthy on the target, the job still watching for restarts
        job = _job(sb.host_state, "verify") or {}
        watching.update(job)
        return bool((job.get("progress") or {}).get("healthy"))

    kill_controller_once(["backend", "rollback", "--yes", "--to", "v1", "--reason", "killed while watched"], env,
                         caught, "the restart watch")
    assert watching.get("state") == "running", watching
    _wait(lambda: (_job(sb.host_state, "verify") or {}).get("state") == "done", 60, "the watch never finished")
    (run_dir,) = [p for p in (state_dir / "runs").iterdir() if (p / "plan.json").exists()]
    killed = run_dir.name
    assert sb.head() == v1 and sb.wait_health(expect_ok=None)[1] == "1.0.0"  # the healthy release stays
    time.sleep(3)  # a call that outlived its session has finished by now (it returns at the watch's end)
    mine = [e for e in _read_ledger(sb.ledger) if e.get("run_id") == killed]
    lock = sb.host_state / "backend.lock"
    finished = [e for e in mine if e.get("result") == "succeeded"]
    if finished:  # the watch's call finished the run's last steps on the host
        assert not lock.exists(), "the run was recorded as succeeded but its host lock was kept"
        (entry,) = finished
        assert (entry["action"], entry["from"], entry["to"]) == ("rollback", v3, v1), entry
    else:
        assert lock.is_dir(), "no record of the watch's end, yet the host lock is gone"
        assert json.loads((lock / "owner.json").read_text())["run_id"] == killed
    nxt = run_cli("backend", "rollback", "--yes", "-o", "json", env=env)
    doc = nxt.json()
    assert any(killed in w for w in doc["warnings"]), doc["warnings"]
    hist = run_cli("history", "-o", "json", env=env).json()
    runs = hist["runs"] if isinstance(hist, dict) else hist
    (record,) = [r for r in runs if r["run_id"] == killed]
    (step,) = record["steps"]
    assert (step["from"], step["to"]) == (v3, v1), step
    if not finished:
        assert nxt.code == 5 and f"doai-rollback lock release backend --host {sb.host_name}" in (
            doc["message"] + (doc.get("hint") or "")), doc
