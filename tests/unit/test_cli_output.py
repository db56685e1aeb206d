"""The CLI's output contract (issue 17): a closed stdout, JSON for every outcome with
``-o json``, --dry-run per command, what a terminal shows. Real processes, real pipes and
ptys; no host is contacted unless a test says so (then a closed port on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")}
    inv = tmp_path / "hosts.yml"
    if not inv.exists():
        inv.write_text("all:\n  children:\n    backend:\n      hosts: {}\n")
    env.update(DOAI_INVENTORY=str(inv), DOAI_STATE_DIR=str(tmp_path / "state"), **extra)
    return env


def _journal_runs(tmp_path: Path, n: int) -> None:
    """``n`` runs in the journal, enough text for ``history`` to overflow a pipe's buffer."""
    from doai_ansible.journal import Journal
    from doai_ansible.model import Outcome, Part, RunResult, Step, StepResult

    journal = Journal(tmp_path / "state" / "journal.jsonl")
    for i in range(n):
        run = RunResult(f"20261126T0000{i % 60:02d}Z-{i:06x}", "backend rollback", False, "a reason " * 5,
                        "2026-11-26T00:00:00Z",
                        results=[StepResult(Step(Part.BACKEND, f"vps{k}", "a" * 40, "b" * 40), Outcome.SUCCEEDED)
                                 for k in range(3)])
        journal.append(run)


# -- item 12: a reader that stops early is not an internal error ---------------------------------
def test_history_into_a_pipe_closed_early_exits_quietly(tmp_path):
    """`doai-rollback history | head -1`: the reader goes away after one line; the command ends
    silently with 141 (128 + SIGPIPE, what a shell reports for a writer killed by SIGPIPE)."""
    (tmp_path / "state").mkdir()
    _journal_runs(tmp_path, 800)  # far more than a pipe holds (64 KiB)
    proc = subprocess.Popen([sys.executable, "-m", "doai_ansible", "history", "--max", "10000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=_env(tmp_path), cwd=ROOT)
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first.startswith(b"20261126T"), first
    assert stderr == "", stderr
    assert proc.returncode == 141


# -- item 11: with -o json, one JSON document on stdout whatever happens ---------------------------
@pytest.mark.parametrize("args", [
    ["-o", "json", "backend", "rollback", "--frobnicate"],  # unknown option, -o before the subcommand
    ["--output", "json", "frobnicate"],  # unknown command
    ["backend", "rollback", "--mode", "kubernetes", "--output=json"],  # bad choice, -o after
    ["system", "rollback", "--database-last", "0", "-ojson"],  # out of range
    ["history", "--max", "many", "-o", "json"],  # not a number
    ["-o", "json", "undo"],  # a missing argument
    ["-o", "json", "lock"],  # a group without its subcommand
])
def test_click_usage_errors_are_one_json_document(tmp_path, args):
    res = run_cli(*args, env={"DOAI_STATE_DIR": str(tmp_path / "state")})
    assert res.code == 2, res.stdout + res.stderr
    doc = res.json()
    assert doc["exit_status"] == 2 and doc["exit_name"] == "USAGE", doc
    assert doc["error"] and "hint" in doc, doc
    assert "Traceback" not in res.stderr and res.stderr.strip()  # the text is still there for a human
    assert not (tmp_path / "state").exists()  # nothing was written


def test_click_usage_error_without_json_prints_nothing_on_stdout(tmp_path):
    res = run_cli("backend", "rollback", "--frobnicate", env={"DOAI_STATE_DIR": str(tmp_path / "state")})
    assert res.code == 2 and res.stdout == "" and "--frobnicate" in res.stderr


def _playbook_running(ancestor: int) -> bool:
    """Whether an ansible-playbook process runs below process ``ancestor``."""
    return bool(_playbooks_below(ancestor))


def _playbooks_below(ancestor: int) -> list[int]:
    """The ansible-playbook processes running below process ``ancestor`` (their pids)."""
    parents: dict[int, int] = {}
    playbooks = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
            if b"ansible-playbook" in (entry / "cmdline").read_bytes():
                playbooks.append(int(entry.name))
        except (OSError, ValueError):  # gone meanwhile
            continue
    below = []
    for found in playbooks:
        pid = found
        while pid > 1:
            if pid == ancestor:
                below.append(found)
                break
            pid = parents.get(pid, 0)
    return below


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_while_planning_prints_a_json_document(tmp_path, signame):
    """SIGINT to the whole process group (as Ctrl-C on a terminal), or SIGTERM (a CI job
    cancelled), while the plan runs: the run journaled, its JSON document, exit 130, and no
    ansible-playbook of it left running. The inventory's host is a closed port on 127.0.0.1, so
    the plan stays on its SSH connection until the signal comes."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "hosts.yml").write_text(json.dumps({"all": {"children": {"backend": {"hosts": {"vps1": {
        "ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "root"}}}}}}))
    args = ["backend", "rollback", "--to", "main", "--dry-run", "-o", "json"]
    proc = subprocess.Popen([sys.executable, "-m", "doai_ansible", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=_env(tmp_path),
                            cwd=ROOT, start_new_session=True)
    try:
        # The plan is under way once its ansible-playbook runs (in the command's own session).
        while proc.poll() is None and not _playbook_running(proc.pid):
            time.sleep(0.05)
        children = _playbooks_below(proc.pid)
        os.killpg(proc.pid, getattr(signal, signame))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out + err
    assert out.strip(), err
    doc = json.loads(out)
    assert doc["exit_status"] == 130 and doc["exit_name"] == "INTERRUPTED", doc
    assert f"interrupted by {signame} before any change" in doc["message"], doc
    assert children and not [pid for pid in children if _alive(pid)]  # its playbooks were stopped
    (rec,) = [json.loads(line) for line in (tmp_path / "state" / "journal.jsonl").read_text().splitlines()]
    assert rec["run_id"] == doc["run_id"] and rec["exit_status"] == 130
    from doai_ansible.schemas import output_problems

    assert output_problems(args, out, proc.returncode) == []


# -- item 9: every command honours --dry-run or refuses it ----------------------------------------
def _commands() -> dict[str, object]:
    """Every command of the CLI by its words (``"database snapshots"``)."""
    import click

    from doai_ansible.cli import cli

    out: dict[str, object] = {}

    def walk(group: click.Group, prefix: str) -> None:
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                walk(cmd, f"{prefix}{name} ")
            else:
                out[f"{prefix}{name}"] = cmd
    walk(cli, "")
    return out


def _readme_dry_run_table() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### --dry-run per command", 1)[1].split("\n#", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    return {cells[1].strip().strip("`"): cells[2].strip() for cells in rows}


def test_every_command_declares_what_dry_run_does_and_the_readme_says_the_same():
    from doai_ansible.cli import DRY_RUN_POLICIES

    policies = {name: getattr(cmd.callback, "dry_run_policy", None) for name, cmd in _commands().items()}
    undeclared = [name for name, p in policies.items() if p not in DRY_RUN_POLICIES]
    assert not undeclared, f"commands that do not say what --dry-run does: {undeclared}"
    assert _readme_dry_run_table() == policies


@pytest.mark.parametrize("args", [["history"], ["lock", "status", "--local"], ["status", "-o", "json"]])
def test_read_only_commands_note_that_dry_run_does_not_apply(tmp_path, args):
    plain = run_cli(*args, env=_env(tmp_path))
    res = run_cli(*args, "--dry-run", env=_env(tmp_path))
    assert (res.code, res.stdout) == (plain.code, plain.stdout) and res.code == 0, res.stderr
    assert "--dry-run does not apply" in res.stderr and "error" not in res.stderr


@pytest.mark.parametrize("args", [["database", "snapshot"], ["demo", "--workdir"]])
def test_commands_without_a_dry_run_refuse_it(tmp_path, args):
    if args[-1] == "--workdir":
        args = [*args, str(tmp_path / "demo")]
    res = run_cli(*args, "--dry-run", "-o", "json", env=_env(tmp_path, DOAI_DATABASE_URL="postgresql://u@127.0.0.1:1/x"))
    assert res.code == 2 and "--dry-run" in res.json()["hint"], res.stdout + res.stderr
    assert not (tmp_path / "demo").exists() and not (tmp_path / "state" / "snapshots").exists()


def test_lock_release_dry_run_changes_nothing_and_journals_nothing(tmp_path):
    import socket

    locks = tmp_path / "state" / "locks"
    locks.mkdir(parents=True)
    lock = locks / "backend.lock"
    lock.write_text(json.dumps({"target": "backend", "owner": "ghost", "pid": 999999, "host": socket.gethostname(),
                                "acquired": 0, "reason": None, "run_id": None}))
    before = lock.read_text()
    res = run_cli("lock", "release", "backend", "--dry-run", env=_env(tmp_path))
    assert res.code == 0, res.stderr
    assert "would release backend" in res.stdout and "ghost" in res.stdout
    assert lock.read_text() == before
    assert not (tmp_path / "state" / "journal.jsonl").exists()
    res = run_cli("lock", "release", "system", "--dry-run", env=_env(tmp_path))
    assert res.code == 0 and "not locked" in res.stdout


def _snapshot(folder: Path, name: str, mtime: int) -> Path:
    import hashlib

    dump_file = folder / f"{name}.dump"
    dump_file.write_bytes(name.encode() * 100)
    dump_file.with_suffix(".json").write_text(json.dumps({
        "sha256": hashlib.sha256(dump_file.read_bytes()).hexdigest(), "schemas": ["public"], "row_counts": {},
        "created": f"2026-11-2{mtime}T00:00:00Z", "database": "doai@127.0.0.1", "last_migration": "20261120000000"}))
    os.utime(dump_file, (1_700_000_000 + mtime, 1_700_000_000 + mtime))
    return dump_file


def test_snapshots_prune_dry_run_lists_what_it_would_delete_and_deletes_nothing(tmp_path):
    folder = tmp_path / "snaps"
    folder.mkdir()
    files = [_snapshot(folder, f"s{i}", i) for i in range(3)]  # s2 is the newest
    env = _env(tmp_path, DOAI_DATABASE_SNAPSHOT_DIR=str(folder))
    res = run_cli("database", "snapshots", "--prune", "1", "--dry-run", "-o", "json", env=env)
    assert res.code == 0, res.stderr
    doc = res.json()
    assert doc["deleted"] == [] and doc["would_delete"] == [str(files[1]), str(files[0])]
    assert all(f.exists() and f.with_suffix(".json").exists() for f in files)
    res = run_cli("database", "snapshots", "--prune", "1", "--dry-run", env=env)
    assert res.code == 0 and res.stdout.count("would be deleted (dry run)") == 2 and "nothing was deleted" in res.stdout
    assert all(f.exists() for f in files)


# -- item 13: what a terminal shows ---------------------------------------------------------------
def _on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with stdin, stdout and stderr on one pty, as in an operator's terminal; what
    the terminal showed, and the exit status."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "doai_ansible", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=ROOT, start_new_session=True)
    os.close(slave)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
        proc.wait(timeout=120)
    return proc.returncode, shown.decode(errors="replace").replace("\r\n", "\n")


def test_a_refusal_is_shown_once_on_a_terminal(tmp_path):
    """A run refused before any change (here: another live run holds the backend's lock) prints
    its refusal in the run's text; stderr's copy of it is for when stdout goes elsewhere."""
    import socket

    locks = tmp_path / "state" / "locks"
    locks.mkdir(parents=True)
    holder = subprocess.Popen(["sleep", "300"])
    try:
        (locks / "backend.lock").write_text(json.dumps({
            "target": "backend", "owner": "alice", "pid": holder.pid, "host": socket.gethostname(),
            "acquired": time.time(), "reason": "hotfix", "run_id": "r1"}))
        code, shown = _on_a_terminal(["backend", "rollback", "--to", "main", "--yes"], _env(tmp_path))
        # stdout elsewhere (a file, CI): the refusal is on stderr as well, where the terminal is.
        piped = run_cli("backend", "rollback", "--to", "main", "--yes", env=_env(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert code == 5, shown
    assert shown.count("another rollback of backend is running") == 1, shown
    assert "lock release backend" in shown  # the hint is still there
    assert piped.code == 5 and "another rollback of backend is running" in piped.stderr


def test_the_plan_of_an_undo_names_the_run_it_goes_back_to():
    """An undo's targets are the states the run it undoes found, not a --to nobody gave."""
    from doai_ansible.model import Outcome, Part, RunResult, Step, StepResult
    from doai_ansible.render import run_text

    docker = Step(Part.BACKEND, "vps2", "sha256:" + "b" * 64, "sha256:" + "a" * 64, rule="--to image id",
                  notes=["target: sha256:aaaaaaaaaaaa (chosen by --to image id)", "the container is recreated"])
    pm2 = Step(Part.BACKEND, "vps1", "b" * 40, "a" * 40, rule="requested: " + "a" * 40)
    plan = RunResult("r2", "undo 20261126T092744Z-3d18d3", True, None, "t",
                     results=[StepResult(docker, Outcome.PLANNED), StepResult(pm2, Outcome.PLANNED)])
    for text in (run_text(plan), run_text(plan, confirming=True)):
        assert "--to" not in text and "requested" not in text, text
        assert text.count("target: what run 20261126T092744Z-3d18d3 found") == 2, text
        assert "the container is recreated" in text
    rollback = dataclasses.replace(plan, command="backend rollback")
    assert "target chosen by --to image id" in run_text(rollback)  # a rollback keeps its rule


# -- item 8: history prints no value cut into another valid-looking one ----------------------------
def test_history_text_cuts_no_version_or_id_into_another_valid_one(tmp_path):
    from doai_ansible.journal import Journal
    from doai_ansible.model import Outcome, Part, RunResult, Step, StepResult

    steps = [
        Step(Part.DATABASE, "doai@127.0.0.1", "20261120000000", "20261110000000"),  # 14 digits: never 12
        Step(Part.DASHBOARD, "doai-dashboard", "dpl_7Hk2mQpZx9aBcDeFgH", "dpl_1234567890abcdefXY"),
        Step(Part.BACKEND, "vps1", "a1" * 20, "b2" * 20),  # a commit: its usual 12-character abbreviation
        Step(Part.BACKEND, "vps2", "sha256:" + "c3" * 32, "sha256:" + "d4" * 32),  # an image id: sha256:<12 hex>
    ]
    run = RunResult("20261126T092744Z-3d18d3", "system rollback", False, None, "2026-11-26T09:27:44Z",
                    results=[StepResult(s, Outcome.SUCCEEDED) for s in steps])
    Journal(tmp_path / "state" / "journal.jsonl").append(run)
    res = run_cli("history", env=_env(tmp_path))
    assert res.code == 0, res.stderr
    assert "20261120000000 -> 20261110000000" in res.stdout, res.stdout
    assert "dpl_7Hk2mQpZx9aBcDeFgH -> dpl_1234567890abcdefXY" in res.stdout, res.stdout
    assert f"{'a1' * 6} -> {'b2' * 6}" in res.stdout and "a1" * 7 not in res.stdout, res.stdout
    assert f"sha256:{'c3' * 6} -> sha256:{'d4' * 6}" in res.stdout and "c3" * 7 not in res.stdout, res.stdout


# -- history --max: --limit means hosts everywhere else; the old spelling still works, with a warning ------------
def test_history_max_and_the_deprecated_limit(tmp_path):
    (tmp_path / "state").mkdir()
    _journal_runs(tmp_path, 5)
    new = run_cli("history", "--max", "2", "-o", "json", env=_env(tmp_path))
    assert new.code == 0 and len(new.json()) == 2 and new.stderr == "", new.stderr
    old = run_cli("history", "--limit", "2", "-o", "json", env=_env(tmp_path))
    assert (old.code, old.stdout) == (0, new.stdout)
    assert "deprecated" in old.stderr and "--max" in old.stderr
    assert len(run_cli("history", "-o", "json", env=_env(tmp_path)).json()) == 5
    both = run_cli("history", "--max", "2", "--limit", "2", "-o", "json", env=_env(tmp_path))
    assert both.code == 2 and "--max" in both.json()["error"]
    shown = run_cli("history", "--help", env=_env(tmp_path)).stdout
    assert "--max N" in shown and "--limit" not in shown
