"""The CLI's contract for users and CI: exit codes, one-line errors, JSON errors, no remote
command before input is valid. The inventory points at a closed port on 127.0.0.1: had the
CLI tried to reach the host, the exit code would be 7 (unreachable), not 2."""

from __future__ import annotations

import json
import socket

import pytest

from tests.conftest import run_cli


@pytest.fixture
def closed_env(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again once the socket is gone
    inv = tmp_path / "hosts.yml"
    # No SSH retries: a closed port is refused at once, and the tool's retries (11 s of backoff,
    # tests/integration/test_runner_security.py) would only make each test that reaches it wait.
    inv.write_text(json.dumps({"all": {"children": {"backend": {"hosts": {"vps1": {
        "ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "root", "ansible_ssh_retries": 0}}}}}}))
    return {"DOAI_INVENTORY": str(inv), "DOAI_STATE_DIR": str(tmp_path / "state")}


@pytest.mark.parametrize(
    "bad",
    ["abc; touch /tmp/pwned", "$(id)", "../x", "", "--upload-pack=x", "a..b", "HEAD@{1}", "x y"],
)
def test_bad_to_is_a_usage_error_before_any_connection(closed_env, tmp_path, bad):
    res = run_cli("backend", "rollback", f"--to={bad}", "--yes", env=closed_env)
    assert res.code == 2, res.stderr
    assert res.stderr.startswith("doai-rollback: error: --to")
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "state" / "runs").exists()  # no playbook was started


def test_bad_to_json_error_for_ci(closed_env):
    res = run_cli("backend", "rollback", "--to", "$(id)", "-o", "json", env=closed_env)
    assert res.code == 2
    err = res.json()
    assert err["exit_status"] == 2 and err["exit_name"] == "USAGE" and "--to" in err["error"]


def test_unreachable_host_exit_code(closed_env):
    res = run_cli("backend", "rollback", "--to", "main", "--yes", "-o", "json", env=closed_env)
    assert res.code == 7, res.stdout + res.stderr
    assert res.json()["exit_name"] == "UNREACHABLE"


def test_bad_limit(closed_env):
    res = run_cli("backend", "rollback", "--limit", "a;b", env=closed_env)
    assert res.code == 2 and "--limit" in res.stderr


def test_unknown_config_key_names_it(tmp_path, closed_env):
    cfg = tmp_path / "c.yml"
    cfg.write_text("vercel:\n  projekt: x\n")
    res = run_cli("--config", str(cfg), "history", env=closed_env)
    assert res.code == 2 and "vercel.projekt" in res.stderr


def test_missing_config_file(closed_env):
    res = run_cli("history", "--config", "/nonexistent.yml", env=closed_env)
    assert res.code == 2 and "/nonexistent.yml" in res.stderr


def test_unknown_option_is_usage(closed_env):
    res = run_cli("backend", "rollback", "--frobnicate", env=closed_env)
    assert res.code == 2


def test_help_and_version():
    assert run_cli("--help").code == 0
    res = run_cli("--version")
    assert res.code == 0 and "doai-rollback" in res.stdout


def test_history_empty_and_undo_unknown(closed_env):
    res = run_cli("history", env=closed_env)
    assert res.code == 0 and "no runs" in res.stdout
    res = run_cli("undo", "nope", "--yes", env=closed_env)
    assert res.code == 2 and "no run" in res.stderr


def test_lock_status_and_release(closed_env, tmp_path):
    assert run_cli("lock", "status", "--local", env=closed_env).stdout.strip() == "no locks held"
    locks = tmp_path / "state" / "locks"
    locks.mkdir(parents=True)
    (locks / "backend.lock").write_text(json.dumps({
        "target": "backend", "owner": "ghost", "pid": 999999, "host": socket.gethostname(),
        "acquired": 0, "reason": None, "run_id": None}))
    res = run_cli("lock", "status", "--local", env=closed_env)
    assert res.code == 0 and "ghost" in res.stdout and "STALE" in res.stdout
    assert run_cli("lock", "release", "backend", env=closed_env).code == 0
    assert not (locks / "backend.lock").exists()


def test_confirmation_required_without_terminal(closed_env):
    """Undo changes hosts: without a terminal to ask on, --yes is required."""
    from doai_ansible.journal import Journal
    from doai_ansible.model import Outcome, Part, RunResult, Step, StepResult

    state = closed_env["DOAI_STATE_DIR"]
    run = RunResult("r1", "backend rollback", False, None, "t",
                    results=[StepResult(Step(Part.BACKEND, "vps1", "a" * 40, "b" * 40), Outcome.SUCCEEDED)])
    Journal(__import__("pathlib").Path(state) / "journal.jsonl").append(run)
    res = run_cli("undo", "r1", env=closed_env)
    assert res.code == 2 and "--yes" in res.stderr


def test_status_without_backend_hosts(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  children:\n    backend:\n      hosts: {}\n")
    res = run_cli("status", "-o", "json", env={"DOAI_INVENTORY": str(inv), "DOAI_STATE_DIR": str(tmp_path / "s")})
    assert res.code == 0, res.stderr
    backend = res.json()["parts"]["backend"]
    assert backend["configured"] is False and "backend" in backend["needs"]
    # health has nothing to check: that is not "healthy" (a CI monitor must not pass on it)
    res = run_cli("health", "-o", "json", env={"DOAI_INVENTORY": str(inv), "DOAI_STATE_DIR": str(tmp_path / "s")})
    assert res.code == 2 and "no part is configured" in res.stderr


def test_lock_status_host_lock_unread_is_not_no_lock(closed_env, tmp_path):
    """A host whose lock could not be read (here: its SSH port is closed) may hold one: a CI
    gate on "no lock held" must not pass. Exit 7 (unreachable), or 5 when a lock is held."""
    res = run_cli("lock", "status", env=closed_env)
    assert res.code == 7, res.stdout + res.stderr
    assert "vps1: host lock unknown" in res.stdout and "could not be read" in res.stderr
    locks = tmp_path / "state" / "locks"
    locks.mkdir(parents=True)
    holder = __import__("subprocess").Popen(["sleep", "300"])
    try:
        (locks / "backend.lock").write_text(json.dumps({
            "target": "backend", "owner": "alice", "pid": holder.pid, "host": socket.gethostname(),
            "acquired": __import__("time").time(), "reason": None, "run_id": "r9"}))
        res = run_cli("lock", "status", "-o", "json", env=closed_env)
    finally:
        holder.kill()
        holder.wait()
    assert res.code == 5, res.stdout + res.stderr
    doc = res.json()
    assert doc["held"] is True and doc["unread"] == ["backend vps1"] and doc["exit_status"] == 5
