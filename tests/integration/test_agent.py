"""The agent rollback end to end through the CLI, against Linux stand-in PCs over the loopback
sshd (doai_ansible/sandbox/agent_rig.py). This is NOT Windows coverage: it runs the role's POSIX
primitives and the one decision both OSes share; the Windows module calls are covered by
tests/unit/test_agent_decide.py with recorded results, and molecule/agent_windows is for a real
Windows host."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

FAST = {"doai_agent_rename_delay": 1, "doai_agent_rename_retries": 3, "doai_agent_stop_timeout": 10,
        "doai_agent_verify_timeout": 10}


def env_for(rig, state_dir: Path, **hostvars: object) -> dict[str, str]:
    return {"DOAI_INVENTORY": str(rig.write_inventory(**{**FAST, **hostvars})), "DOAI_STATE_DIR": str(state_dir)}


def by_target(res) -> dict[str, dict]:
    return {s["target"]: s for s in res.json()["steps"]}


def test_fleet_rollback_keeps_config_and_goes_on_past_an_unreachable_pc(agent_fleet, state_dir):
    rig = agent_fleet(n=3, unreachable=1)
    env = env_for(rig, state_dir)
    plan = run_cli("agent", "rollback", "--dry-run", env=env)
    assert plan.code == 0, plan.stderr
    assert "UNREACHABLE" in plan.stdout and rig.folder_state("pc01", "alice")["app-current"] == "2.0.0"
    res = run_cli("agent", "rollback", "--yes", "--reason", "agent 2.0.0 crashes", "-o", "json", env=env)
    assert res.code == 3, res.stdout + res.stderr  # one PC failed (unreachable), nothing changed on it
    steps = by_target(res)
    for pc in ("pc01", "pc02"):
        for user in ("alice", "bob"):
            assert steps[f"{pc}/{user}"]["outcome"] == "succeeded", steps[f"{pc}/{user}"]
            st = rig.folder_state(pc, user)
            assert (st["app-current"], st["app-backup"], st["app-failed"]) == ("1.9.0", None, "2.0.0")
            assert rig.config_checksum(pc, user) == rig.config_checksums[f"{pc}/{user}"]  # the user's config kept
            assert rig.agent_running(pc, user) and rig.agent_version(pc, user) == "1.9.0"
    assert steps["pc03/*"]["outcome"] == "failed" and "nothing was changed" in steps["pc03/*"]["message"]
    assert "guest" not in str(steps)  # a profile without the agent is not a target
    # a fleet partly done is not "back on what it had before": the message names where each stands
    doc = res.json()
    assert "back on what it had before" not in doc["message"], doc["message"]
    assert "stay rolled back: agent pc01/alice" in doc["message"] and "agent pc03/*" in doc["message"]
    assert doc["where_parts_stand"]["left_as_they_were"] == ["agent pc03/*"]
    # health: the PC that is off is UNREACHABLE, not UNHEALTHY
    health = run_cli("health", env=env)
    assert health.code == 7, health.stdout + health.stderr
    (line,) = [x for x in health.stdout.splitlines() if x.startswith("agent pc03")]
    assert "UNREACHABLE" in line and "UNHEALTHY" not in line, line
    # a second run changes nothing on the PCs it rolled back
    again = run_cli("agent", "rollback", "--yes", "--limit", "pc01,pc02", "-o", "json", env=env)
    assert again.code == 0, again.stdout + again.stderr
    assert {s["outcome"] for s in again.json()["steps"]} == {"unchanged"}
    # the PC comes back: only it is run again
    rig.reset(pcs=3, unreachable=0, users=("alice", "bob"), bare_users=("guest",))
    rerun = run_cli("agent", "rollback", "--yes", "--rerun-failed", res.json()["run_id"], "-o", "json",
                    env=env_for(rig, state_dir))
    assert rerun.code == 0, rerun.stdout + rerun.stderr
    assert {s["target"].split("/")[0] for s in rerun.json()["steps"]} == {"pc03"}
    assert rig.folder_state("pc03", "alice")["app-current"] == "1.9.0"


def test_a_folder_locked_for_good_is_put_back_and_the_agent_runs_again(agent_fleet, state_dir):
    rig = agent_fleet(n=1, unreachable=0)
    rig.lock("pc01", "bob", app="app-backup")  # an antivirus scan holding the backup open
    res = run_cli("agent", "rollback", "--yes", "-o", "json", env=env_for(rig, state_dir))
    assert res.code == 3, res.stdout + res.stderr
    steps = by_target(res)
    assert steps["pc01/alice"]["outcome"] == "succeeded"
    assert steps["pc01/bob"]["outcome"] == "restored", steps["pc01/bob"]
    assert "in use" in steps["pc01/bob"]["message"]
    st = rig.folder_state("pc01", "bob")
    assert (st["app-current"], st["app-backup"]) == ("2.0.0", "1.9.0")  # as it was
    assert rig.agent_running("pc01", "bob") and rig.agent_version("pc01", "bob") == "2.0.0"
    assert rig.config_checksum("pc01", "bob") == rig.config_checksums["pc01/bob"]


def test_a_short_lock_and_a_slow_exit_are_waited_out(agent_fleet, state_dir):
    rig = agent_fleet(n=1, unreachable=0)
    rig.set_slow_exit("pc01", "alice", 2)
    rig.lock("pc01", "bob", app="app-current", seconds=1.5)
    res = run_cli("agent", "rollback", "--yes", "-o", "json", env=env_for(rig, state_dir))
    assert res.code == 0, res.stdout + res.stderr
    assert {s["outcome"] for s in res.json()["steps"]} == {"succeeded"}
    assert rig.folder_state("pc01", "bob")["app-current"] == "1.9.0"


def test_a_missing_backup_is_refused_for_that_user_only_and_an_old_failed_is_kept(agent_fleet, state_dir):
    rig = agent_fleet(n=1, unreachable=0, app_failed=True)
    shutil.rmtree(rig.folder("pc01", "bob") / "app-backup")
    before_bob = rig.folder_state("pc01", "bob")
    res = run_cli("agent", "rollback", "--yes", "-o", "json", env=env_for(rig, state_dir))
    steps = by_target(res)
    assert steps["pc01/bob"]["outcome"] == "refused" and "app-backup" in steps["pc01/bob"]["message"]
    assert rig.folder_state("pc01", "bob") == before_bob
    assert steps["pc01/alice"]["outcome"] == "succeeded"
    extra = rig.folder_state("pc01", "alice")["extra"]
    assert any(e.startswith("app-failed-") for e in extra), extra  # the earlier incident's app-failed, kept


def test_one_user_and_batches(agent_fleet, state_dir):
    rig = agent_fleet(n=3, unreachable=0)
    res = run_cli("agent", "rollback", "--yes", "--user", "alice", "--batch", "1", "-o", "json",
                  env=env_for(rig, state_dir))
    assert res.code == 0, res.stdout + res.stderr
    assert sorted(by_target(res)) == ["pc01/alice", "pc02/alice", "pc03/alice"]
    assert rig.folder_state("pc02", "bob")["app-current"] == "2.0.0"


def test_forks_reach_ansible_playbook(agent_fleet, state_dir, tmp_path):
    """--forks N: how many PCs Ansible works on at once, on the ansible-playbook command line
    as ansible-runner ran it (its artifacts, kept by keep_artifacts)."""
    import json

    rig = agent_fleet(n=2, unreachable=0)
    cfg = tmp_path / "doai.yml"
    cfg.write_text("keep_artifacts: true\n")
    res = run_cli("agent", "rollback", "--dry-run", "--forks", "3", "-o", "json",
                  env=dict(env_for(rig, state_dir), DOAI_CONFIG=str(cfg)))
    assert res.code == 0, res.stdout + res.stderr
    (command,) = list((state_dir / "runs").rglob("artifacts/run/command"))
    argv = json.loads(command.read_text())["command"]
    assert argv[argv.index("--forks") + 1] == "3", argv


@pytest.mark.parametrize("args", [["--user", "al;ice"], ["--batch", "ten"], ["--max-fail-percent", "120"],
                                  ["--forks", "0"],
                                  ["--to", "1.9.0"], ["--limit", "pc01;rm"]])
def test_bad_input_is_refused_before_any_connection(agent_fleet, state_dir, args):
    rig = agent_fleet(n=1, unreachable=0)
    before = rig.folder_state("pc01", "alice")
    res = run_cli("agent", "rollback", *args, "--yes", env=env_for(rig, state_dir))
    assert res.code == 2, res.stdout + res.stderr
    assert not (state_dir / "runs").exists()
    assert rig.folder_state("pc01", "alice") == before


def test_the_winrm_password_never_leaks(agent_fleet, state_dir):
    """DOAI_WINRM_PASSWORD reaches Ansible only at its own prompt (the stand-in PCs speak SSH
    with keys, so it is set for WinRM/psrp and unused here): not in any output, journal, log or
    kept ansible-runner artifact."""
    from tests.conftest import CANARY

    rig = agent_fleet(n=2, unreachable=0)
    password = CANARY + "-winrm"
    env = dict(env_for(rig, state_dir), DOAI_WINRM_PASSWORD=password, DOAI_KEEP_ARTIFACTS="1")
    res = run_cli("agent", "rollback", "--yes", "-o", "json", env=env)
    assert res.code == 0, res.stdout + res.stderr
    assert password not in res.stdout + res.stderr
    files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert any("artifacts" in str(p) for p in files)  # the runner's files were kept, and read
    assert [str(p) for p in files if password.encode() in p.read_bytes()] == []


def test_a_pc_that_cannot_reach_the_backends_socketio_port_is_put_back(agent_fleet, state_dir):
    """Scenario C's check in the verify: with the backend's Socket.IO port closed the swap is
    put back; with it listening the rollback succeeds."""
    import socket

    rig = agent_fleet(n=1, unreachable=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    res = run_cli("agent", "rollback", "--yes", "--user", "alice", "-o", "json",
                  env=env_for(rig, state_dir, doai_agent_socketio_host="127.0.0.1", doai_agent_socketio_port=closed))
    assert res.code == 3, res.stdout + res.stderr
    (step,) = res.json()["steps"]
    assert step["outcome"] == "restored" and "Socket.IO" in step["message"]
    assert rig.folder_state("pc01", "alice")["app-current"] == "2.0.0" and rig.agent_running("pc01", "alice")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ok = run_cli("agent", "rollback", "--yes", "--user", "alice", "-o", "json",
                     env=env_for(rig, state_dir, doai_agent_socketio_host="127.0.0.1", doai_agent_socketio_port=port))
    assert ok.code == 0, ok.stdout + ok.stderr
    assert rig.folder_state("pc01", "alice")["app-current"] == "1.9.0"


@pytest.mark.parametrize(("var", "value", "named"), [
    # a wrong type or choice (the role's argument spec)
    ("doai_agent_os", "solaris", "os"), ("doai_agent_kind", "daemon", "agent_kind"),
    ("doai_agent_stop_timeout", "soon", "stop_timeout"), ("doai_agent_half_finished", "guess", "half_finished"),
    # a wrong value (the plugin's own checks)
    ("doai_agent_posix_start_command", [], "posix_start_command is empty"),
    ("doai_agent_stop_timeout", -1, "stop_timeout must be at least 1"),
    ("doai_agent_pid_file", "../../../etc/x.pid", "pid_file"),
    ("doai_agent_users", ["../root"], "is not a user name"),
])
def test_a_wrong_role_variable_is_a_refusal_that_names_it(agent_fleet, state_dir, var, value, named):
    rig = agent_fleet(n=1, unreachable=0)
    before = rig.folder_state("pc01", "alice")
    res = run_cli("agent", "rollback", "--yes", env=env_for(rig, state_dir, **{var: value}))
    assert res.code == 2, res.stdout + res.stderr
    assert named in res.stderr and "nothing was changed" in res.stderr
    assert rig.folder_state("pc01", "alice") == before and rig.agent_running("pc01", "alice")


def test_the_users_own_files_cannot_steer_the_tool_out_of_the_folder(agent_fleet, state_dir, tmp_path):
    """The folder belongs to the user; the tool acts with more rights. A marker naming a path
    outside, or a pid file naming another process, is refused for that user, touching nothing."""
    import json
    import subprocess

    rig = agent_fleet(n=1, unreachable=0)
    outside = tmp_path / "precious"
    outside.mkdir()
    (rig.folder("pc01", "alice") / ".doai-rollback.json").write_text(json.dumps(
        {"phase": "swapping", "run_id": "x", "from": "2.0.0", "to": "1.9.0", "failed_kept_as": str(outside)}))
    bystander = subprocess.Popen(["sleep", "60"])  # not the agent
    try:
        rig.stop_agent("pc01", "bob")
        (rig.folder("pc01", "bob") / "agent.pid").write_text(f"{bystander.pid}\n")
        res = run_cli("agent", "rollback", "--yes", "-o", "json", env=env_for(rig, state_dir))
        assert bystander.poll() is None  # never signalled
    finally:
        bystander.kill()
    steps = by_target(res)
    assert steps["pc01/alice"]["outcome"] == "refused" and "not one this tool writes" in steps["pc01/alice"]["message"]
    assert steps["pc01/bob"]["outcome"] == "failed" and "does not run from the agent folder" in steps["pc01/bob"]["message"]
    assert outside.is_dir() and rig.folder_state("pc01", "bob")["app-current"] == "2.0.0"


def test_undo_puts_the_swaps_of_a_run_back_where_that_run_left_them(agent_fleet, state_dir):
    rig = agent_fleet(n=2, unreachable=0)
    env = env_for(rig, state_dir)
    res = run_cli("agent", "rollback", "--yes", "--user", "alice", "-o", "json", env=env)
    assert res.code == 0, res.stdout + res.stderr
    run_id = res.json()["run_id"]
    # pc02/alice is swapped forward by hand since: the undo must leave that folder alone
    rig.stop_agent("pc02", "alice")
    folder = rig.folder("pc02", "alice")
    (folder / "app-current").rename(folder / "app-backup")
    (folder / "app-failed").rename(folder / "app-current")
    undo = run_cli("undo", run_id, "--yes", "-o", "json", env=env)
    steps = by_target(undo)
    assert set(steps) == {"pc01/alice", "pc02/alice"}  # bob was not swapped by that run: not a target
    assert steps["pc01/alice"]["outcome"] == "succeeded", steps
    assert steps["pc02/alice"]["outcome"] == "refused" and "not as run" in steps["pc02/alice"]["message"]
    assert undo.code == 3, undo.stdout + undo.stderr  # one folder could not be undone; nothing changed on it
    st = rig.folder_state("pc01", "alice")
    assert (st["app-current"], st["app-backup"], st["app-failed"]) == ("2.0.0", "1.9.0", None)
    assert rig.agent_running("pc01", "alice") and rig.agent_version("pc01", "alice") == "2.0.0"
    assert rig.config_checksum("pc01", "alice") == rig.config_checksums["pc01/alice"]
    st2 = rig.folder_state("pc02", "alice")
    assert (st2["app-current"], st2["app-backup"]) == ("2.0.0", "1.9.0")  # as the hand left it
    # a second undo of the same run: nothing more to do on pc01
    again = run_cli("undo", run_id, "--yes", "-o", "json", env=env)
    assert by_target(again)["pc01/alice"]["outcome"] == "unchanged", again.stdout + again.stderr


def test_the_confirmed_plan_is_the_plan_applied(agent_fleet, state_dir):
    """A PC that changes between the plan and the apply (here: while the operator reads the plan,
    alice's app-backup on pc01 is replaced) is refused there, not rolled back to what nobody confirmed."""
    import os

    from doai_ansible import engine, parts
    from doai_ansible.context import RunContext
    from doai_ansible.settings import load_settings

    rig = agent_fleet(n=2, unreachable=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")}
    env.update(env_for(rig, state_dir))
    ctx = RunContext.create(load_settings(None, env=env))
    part = parts.get("agent")

    def confirm(plan) -> bool:
        assert {r.step.target: r.step.desired for r in plan.results}["pc01/alice"] == "1.9.0"
        (rig.folder("pc01", "alice") / "app-backup" / "VERSION").write_text("1.8.0\n")
        return True

    run = engine.run(ctx, [engine.Job(part, part.request())], command="agent rollback", reason=None, confirm=confirm)
    outcomes = {r.step.target: r for r in run.results}
    assert outcomes["pc01/alice"].outcome.value == "refused", outcomes["pc01/alice"].message
    assert "changed since the confirmed plan (2.0.0 -> 1.9.0 there, 2.0.0 -> 1.8.0 now)" in outcomes["pc01/alice"].message
    assert rig.folder_state("pc01", "alice")["app-current"] == "2.0.0"  # untouched
    for target in ("pc01/bob", "pc02/alice", "pc02/bob"):
        assert outcomes[target].outcome.value == "succeeded", outcomes[target].message


def _line(text: str, *words: str) -> str:
    (line,) = [ln for ln in text.splitlines() if all(w in ln for w in words)]
    return line


def test_after_a_rollback_status_plans_and_a_second_run_show_the_live_folders(agent_fleet, state_dir):
    """Issue 17 item 4: once alice's folder is rolled back (app-current 1.9.0, app-failed 2.0.0,
    no app-backup), `agent status`, a dry run and a second run say what the folders hold; the
    run's marker is history (named as such), not the source of the versions shown."""
    rig = agent_fleet(n=1, unreachable=0)
    env = env_for(rig, state_dir)
    res = run_cli("agent", "rollback", "--yes", "--user", "alice", "-o", "json", env=env)
    assert res.code == 0, res.stdout + res.stderr
    run_id = res.json()["run_id"]
    st = rig.folder_state("pc01", "alice")
    assert (st["app-current"], st["app-backup"], st["app-failed"]) == ("1.9.0", None, "2.0.0")

    status = run_cli("agent", "status", "-o", "json", env=env)
    assert status.code == 0, status.stdout + status.stderr
    users = status.json()["hosts"]["pc01"]["users"]
    assert users["alice"]["current"] == "1.9.0", users["alice"]  # not the marker's "from" (2.0.0)
    assert (users["alice"]["current"], users["alice"]["backup"], users["alice"]["failed"]) == ("1.9.0", None, "2.0.0")
    assert users["alice"]["last_run"] == {"run_id": run_id, "phase": "done", "from": "2.0.0", "to": "1.9.0"}
    assert (users["bob"]["current"], users["bob"]["backup"], users["bob"]["failed"]) == ("2.0.0", "1.9.0", None)
    text = run_cli("agent", "status", env=env)
    line = _line(text.stdout, "pc01 alice")
    assert "app-current 1.9.0, app-backup none, app-failed 2.0.0" in line, text.stdout
    assert f"last run {run_id}: done 2.0.0 -> 1.9.0" in line, text.stdout
    assert "app-current 2.0.0" not in line
    assert "app-current 2.0.0, app-backup 1.9.0" in _line(text.stdout, "pc01 bob"), text.stdout

    plan = run_cli("agent", "rollback", "--dry-run", "-o", "json", env=env)
    assert plan.code == 0, plan.stdout + plan.stderr
    alice = by_target(plan)["pc01/alice"]
    assert (alice["from"], alice["to"]) == ("1.9.0", "1.9.0"), alice
    assert alice["details"]["from_label"] == "app-current 1.9.0", alice
    assert (by_target(plan)["pc01/bob"]["from"], by_target(plan)["pc01/bob"]["to"]) == ("2.0.0", "1.9.0")
    text = run_cli("agent", "rollback", "--dry-run", env=env)
    assert "app-current 2.0.0" not in _line(text.stdout, "pc01/alice"), text.stdout

    again = run_cli("agent", "rollback", "--yes", "--user", "alice", "-o", "json", env=env)
    assert again.code == 0, again.stdout + again.stderr
    (step,) = again.json()["steps"]
    assert step["outcome"] == "unchanged" and (step["from"], step["to"]) == ("1.9.0", "1.9.0"), step
    assert step["details"]["from_label"] == "app-current 1.9.0", step
    assert rig.folder_state("pc01", "alice") == st


def test_undo_with_nothing_changed_since_the_rollback_puts_the_folders_back_byte_for_byte(agent_fleet, state_dir):
    """Issue 17 item 14: every file of the user's folder (content, mode, owner) is as it was before
    the rollback once it is undone, when nothing changed in between: no copy of the user's
    config.json left in the backup, no extra config.json.doai-<stamp>, no 0600 root-owned file in
    a folder the user owns. The rollback itself keeps the owner and mode of the config it carries."""
    import os

    rig = agent_fleet(n=1, unreachable=0)
    rig.give_folder_to("pc01", "alice", 4242, 4343)  # a user's own folder, not root's
    before = rig.snapshot("pc01", "alice")
    assert before["app-current/config.json"][2:] == ("0o644", 4242, 4343)
    env = env_for(rig, state_dir)
    res = run_cli("agent", "rollback", "--yes", "--user", "alice", "-o", "json", env=env)
    assert res.code == 0, res.stdout + res.stderr
    carried = os.stat(rig.folder("pc01", "alice") / "app-current" / "config.json")
    assert (oct(carried.st_mode & 0o7777), carried.st_uid, carried.st_gid) == ("0o644", 4242, 4343)
    assert rig.config_checksum("pc01", "alice") == rig.config_checksums["pc01/alice"]
    undo = run_cli("undo", res.json()["run_id"], "--yes", "-o", "json", env=env)
    assert undo.code == 0, undo.stdout + undo.stderr
    (step,) = undo.json()["steps"]
    assert step["outcome"] == "succeeded" and "config.json unchanged since the rollback" in step["message"], step
    after = rig.snapshot("pc01", "alice")
    assert {k: v for k, v in after.items() if before.get(k) != v} == {} and after == before
    assert rig.agent_running("pc01", "alice") and rig.agent_version("pc01", "alice") == "2.0.0"


def test_undo_carries_settings_changed_since_the_rollback_and_says_so(agent_fleet, state_dir):
    """Issue 17 item 14: alice changed her settings on the rolled-back agent; the undo takes them
    forward into app-current (the ones from before the rollback kept beside them), gives the
    backup its own config.json back, and says so."""
    import json
    import os

    rig = agent_fleet(n=1, unreachable=0)
    rig.give_folder_to("pc01", "alice", 4242, 4343)
    before = rig.snapshot("pc01", "alice")
    env = env_for(rig, state_dir)
    res = run_cli("agent", "rollback", "--yes", "--user", "alice", "-o", "json", env=env)
    assert res.code == 0, res.stdout + res.stderr
    folder = rig.folder("pc01", "alice")
    changed = dict(rig.user_config("pc01", "alice"), theme="solarized", settings_rev=3)
    (folder / "app-current" / "config.json").write_text(json.dumps(changed) + "\n")  # as alice: mode and owner stay
    undo = run_cli("undo", res.json()["run_id"], "--yes", "-o", "json", env=env)
    assert undo.code == 0, undo.stdout + undo.stderr
    (step,) = undo.json()["steps"]
    assert step["outcome"] == "succeeded", step
    assert "config.json changed since the rollback: carried into app-current" in step["message"], step
    assert rig.folder_state("pc01", "alice")["config"] == changed  # what the agent reads now
    st = os.stat(folder / "app-current" / "config.json")
    assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == ("0o644", 4242, 4343)
    after = rig.snapshot("pc01", "alice")
    kept = [k for k in after if k.startswith("app-current/config.json.doai-")]
    assert len(kept) == 1 and after[kept[0]] == before["app-current/config.json"]  # the earlier settings, kept
    differs = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert differs == {"app-current/config.json", kept[0]}, differs  # the backup is as it was
    assert rig.agent_running("pc01", "alice") and rig.agent_version("pc01", "alice") == "2.0.0"


def test_an_undo_that_fails_after_putting_config_back_leaves_the_folder_as_the_rollback_left_it(agent_fleet, state_dir):
    """Issue 17 item 14, the put-back: the undo removed the copy of config.json and gave the
    backup its own back, then the Socket.IO check fails; every file (content, mode, owner) is
    again as the rollback left it, and the agent runs the rolled-back version."""
    import socket

    rig = agent_fleet(n=1, unreachable=0)
    rig.give_folder_to("pc01", "alice", 4242, 4343)
    res = run_cli("agent", "rollback", "--yes", "--user", "alice", "-o", "json", env=env_for(rig, state_dir))
    assert res.code == 0, res.stdout + res.stderr
    rolled_back = rig.snapshot("pc01", "alice")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    undo = run_cli("undo", res.json()["run_id"], "--yes", "-o", "json",
                   env=env_for(rig, state_dir, doai_agent_socketio_host="127.0.0.1", doai_agent_socketio_port=closed))
    assert undo.code == 3, undo.stdout + undo.stderr
    (step,) = undo.json()["steps"]
    assert step["outcome"] == "restored" and "Socket.IO" in step["message"], step
    after = rig.snapshot("pc01", "alice")
    assert {k: (rolled_back.get(k), after.get(k)) for k in set(rolled_back) | set(after)
            if rolled_back.get(k) != after.get(k)} == {}
    assert rig.agent_running("pc01", "alice") and rig.agent_version("pc01", "alice") == "1.9.0"


def test_a_swap_refused_by_its_own_checks_still_reads_the_agents_logs_the_checklist_keeps(agent_fleet, state_dir):
    """Issue 20: the checklist's log lines of a POSIX PC come in the swap's observe call; when the
    swap refuses its options before it observes, agent_rollback.yml reads them on their own
    (read-only), so the checklist keeps them whatever refused the plan."""
    from doai_ansible.runner import run_playbook
    from doai_ansible.settings import load_settings

    rig = agent_fleet(n=1, unreachable=0)
    before = rig.folder_state("pc01", "alice")
    settings = load_settings(None, inventory=rig.write_inventory(**FAST), state_dir=state_dir, env={})
    xv = {"doai_agent_winrm_password": "", "doai_agent_read_logs": 5}
    refused = run_playbook(settings, "agent_rollback.yml", extravars=dict(xv, doai_agent_stop_timeout=-1), check=True)
    assert not refused.ok and "pc01" in refused.failed_hosts()
    users = {u["user"]: u for u in refused.custom["doai_agent_diagnose"]["pc01"]["users"]}
    assert users["alice"]["running"] and users["alice"]["folder"], users
    planned = run_playbook(settings, "agent_rollback.yml", extravars=xv, check=True)
    assert planned.ok
    assert planned.custom["doai_agent_diagnose"]["pc01"]["users"] == refused.custom["doai_agent_diagnose"]["pc01"]["users"]
    assert planned.custom["doai_agent_diagnose"]["pc01"]["os"] == "posix"
    # a read that fails (a log file name that leaves the folder) never stops the plan, and says why
    from doai_ansible.diagnose import _per_host

    bad = run_playbook(settings, "agent_rollback.yml", extravars=dict(xv, doai_agent_diagnose_log_file="../../x"),
                       check=True)
    assert bad.ok and "doai_agent_diagnose" not in bad.custom
    why = _per_host(bad, "doai_agent_diagnose", reported_first=True)["pc01"]["error"]
    assert why.startswith("its logs could not be read: ") and "log_file '../../x'" in why, why
    assert rig.folder_state("pc01", "alice") == before and rig.agent_running("pc01", "alice")
