"""doai_agent_posix acts in the user's folder through descriptors (issue 19 item 6).

The folder belongs to the user; the module runs as root. A user who swaps app-current (or the
folder itself) for a symlink between the module's checks and its act must not get a file written
where the link points. Each race test runs the module as Ansible runs it (a JSON args file, in
its own process) with one hook: the module's `_read_regular` (the read that comes after the
checks and before the write, in the old code and the new) is wrapped so that, once it has read,
the "user" swaps a directory for a symlink to an outside directory. The outside directory must
stay empty, and the module must fail saying why instead of writing there."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import COLLECTIONS, PLUGINS

LIBRARY = PLUGINS / "modules" / "doai_agent_posix.py"


def run_module(tmp_path: Path, args: dict, swap: tuple[str, str] | None = None) -> dict:
    """The module in its own process; with ``swap`` = (victim, outside), once ``_read_regular``
    has returned the directory ``victim`` is moved aside and replaced by a symlink to ``outside``."""
    argfile = tmp_path / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    hook = ""
    if swap:
        victim, outside = swap
        hook = (
            "import os as _os\n"
            "_orig = ns['_read_regular']\n"
            "def _racing(*a, **k):\n"
            "    out = _orig(*a, **k)\n"
            f"    _os.rename({victim!r}, {victim!r} + '.moved')\n"
            f"    _os.symlink({outside!r}, {victim!r})\n"
            "    return out\n"
            "ns['_read_regular'] = _racing\n"
        )
    boot = (
        f"import sys; sys.path.insert(0, {str(COLLECTIONS)!r})\n"
        f"sys.argv = ['module', {str(argfile)!r}]\n"
        "ns = {'__name__': 'doai_agent_posix'}\n"
        f"exec(compile(open({str(LIBRARY)!r}).read(), 'doai_agent_posix', 'exec'), ns)\n"
        + hook +
        "ns['main']()\n"
    )
    proc = subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, check=False, timeout=60)
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "home" / "alice" / ".local" / "share" / "DoAi-Desktop-Agent"
    for name, version in (("app-current", "2.4.0"), ("app-failed", "2.4.1")):
        (root / name).mkdir(parents=True)
        (root / name / "VERSION").write_text(version + "\n")
    (root / "app-failed" / "config.json").write_text('{"server": "user-settings"}')
    (root / "app-current" / "config.json").write_text('{"server": "backup-own"}')
    outside = tmp_path / "outside"  # where the user would like root to write
    outside.mkdir()
    return root, outside


def test_copy_config_does_not_follow_app_current_swapped_for_a_link_after_the_checks(tmp_path, folder):
    root, outside = folder
    out = run_module(tmp_path, {"op": "copy_config", "root": str(root), "src": "app-failed/config.json",
                                "dest": "app-current/config.json",
                                "keep_as": "app-current/config.json.doai-20261127T010500Z"},
                     swap=(str(root / "app-current"), str(outside)))
    assert (root / "app-current").is_symlink()  # the swap happened between the read and the write
    assert sorted(os.listdir(outside)) == [], out  # nothing written where the link points
    assert out.get("failed") is True and "symlink or not a directory" in out["msg"], out
    # the real app-current (moved aside by the user) is untouched too: the act stopped, nothing half done
    moved = root / "app-current.moved"
    assert sorted(os.listdir(moved)) == ["VERSION", "config.json"]
    assert (moved / "config.json").read_text() == '{"server": "backup-own"}'


def test_undo_config_does_not_follow_a_folder_swapped_for_a_link_after_the_checks(tmp_path, folder):
    root, outside = folder
    # after a rollback: app-backup holds the copy the rollback made, app-current the user's file
    (root / "app-backup").mkdir()
    (root / "app-backup" / "config.json").write_text('{"server": "copy"}')
    (root / "app-current" / "config.json").write_text('{"server": "changed-since"}')
    out = run_module(tmp_path, {"op": "undo_config", "root": str(root), "src": "app-backup/config.json",
                                "dest": "app-current/config.json",
                                "keep_as": "app-current/config.json.doai-20261127T010500Z"},
                     swap=(str(root / "app-current"), str(outside)))
    assert sorted(os.listdir(outside)) == [], out
    assert out.get("failed") is True, out
    assert (root / "app-current.moved" / "config.json").read_text() == '{"server": "changed-since"}'
    assert (root / "app-backup" / "config.json").read_text() == '{"server": "copy"}'


def test_the_marker_is_written_in_the_folder_opened_not_where_a_swapped_folder_points(tmp_path, folder):
    """The folder itself swapped for a link after it was opened: the marker lands in the folder
    the module opened (the user's, wherever they moved it), never in the link's target."""
    root, outside = folder
    args = {"op": "marker", "root": str(root), "content": {"phase": "swapping", "run_id": "r"}}
    # the marker op reads nothing: swap the folder through the same hook, called here explicitly
    argfile_hook = tmp_path / "hooked"
    argfile_hook.mkdir()
    out = run_module_with_swap_before_act(argfile_hook, args, str(root), str(outside))
    assert sorted(os.listdir(outside)) == [], out
    assert out.get("changed") is True, out
    marker = root.parent / (root.name + ".moved") / ".doai-rollback.json"
    assert json.loads(marker.read_text()) == {"phase": "swapping", "run_id": "r"}


def run_module_with_swap_before_act(tmp_path: Path, args: dict, victim: str, outside: str) -> dict:
    """The module with the folder swapped for a link right after its checks (the new module:
    after ``Folder`` opened it; the old one had no such step and wrote by path)."""
    argfile = tmp_path / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    boot = (
        f"import os as _os, sys; sys.path.insert(0, {str(COLLECTIONS)!r})\n"
        f"sys.argv = ['module', {str(argfile)!r}]\n"
        "ns = {'__name__': 'doai_agent_posix'}\n"
        f"exec(compile(open({str(LIBRARY)!r}).read(), 'doai_agent_posix', 'exec'), ns)\n"
        "def _swap():\n"
        f"    _os.rename({victim!r}, {victim!r} + '.moved')\n"
        f"    _os.symlink({outside!r}, {victim!r})\n"
        "if 'act' in ns:\n"
        "    _act = ns['act']\n"
        "    def _racing(module, folder, p):\n"
        "        _swap()\n"
        "        return _act(module, folder, p)\n"
        "    ns['act'] = _racing\n"
        "else:\n"
        "    _isdir = _os.path.isdir\n"
        "    _done = []\n"
        "    def _checked(path):\n"
        "        r = _isdir(path)\n"
        f"        if path == {victim!r} and not _done:\n"
        "            _done.append(1); _swap()\n"
        "        return r\n"
        "    _os.path.isdir = _checked\n"
        "ns['main']()\n"
    )
    proc = subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, check=False, timeout=60)
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def test_copy_tree_copies_links_as_links_and_keeps_owner_and_mode(tmp_path, folder):
    root, outside = folder
    secret = outside / "secret"
    secret.write_text("root's file")
    cur = root / "app-current"
    (cur / "resources").mkdir()
    (cur / "resources" / "app.asar").write_bytes(b"\x00asar")
    os.chmod(cur / "resources" / "app.asar", 0o640)
    os.symlink(str(secret), cur / "link-out")
    out = run_module(tmp_path, {"op": "copy_tree", "root": str(root), "src": "app-current",
                                "dest": "app-replaced-20261127T010500Z"})
    assert out.get("changed") is True, out
    kept = root / "app-replaced-20261127T010500Z"
    assert (kept / "resources" / "app.asar").read_bytes() == b"\x00asar"
    assert oct((kept / "resources" / "app.asar").stat().st_mode & 0o777) == oct(0o640)
    assert (kept / "link-out").is_symlink() and os.readlink(kept / "link-out") == str(secret)
    assert (kept / "config.json").read_text() == '{"server": "backup-own"}'


def test_copy_tree_refuses_a_source_swapped_for_a_link(tmp_path, folder):
    """The lower-level function with a prepared descriptor: app-current is a link to an outside
    directory by the time the copy opens it: refused, nothing of the outside read or written."""
    root, outside = folder
    (outside / "secret").write_text("root's file")
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))
    ns: dict = {"__name__": "doai_agent_posix_unit"}
    exec(compile(LIBRARY.read_text(), str(LIBRARY), "exec"), ns)
    f = ns["Folder"](str(root))
    try:
        os.rename(root / "app-current", root / "app-current.moved")
        os.symlink(str(outside), root / "app-current")
        with pytest.raises(ValueError, match="symlink or not a directory"):
            ns["copy_tree"](f, "app-current", "app-replaced-x")
        with pytest.raises(ValueError, match="symlink or not a directory"):
            ns["write_file"](f, "app-current/config.json", b"{}")
    finally:
        f.close()
    assert not (root / "app-replaced-x").exists()
    assert sorted(os.listdir(outside)) == ["secret"]


def test_a_folder_reached_through_a_user_made_symlink_is_refused(tmp_path, folder):
    root, outside = folder
    # the user replaces .local/share with a link to a tree of their choosing
    share = root.parent
    os.rename(share, share.parent / "share.real")
    os.symlink(str(share.parent / "share.real"), share)
    if os.geteuid() == 0:
        os.lchown(share, 1000, 1000)  # made by the user, as on a real PC
    out = run_module(tmp_path, {"op": "marker", "root": str(root), "content": {"phase": "x"}})
    assert out.get("failed") is True and "is a symlink" in out["msg"], out
    assert not (share.parent / "share.real" / root.name / ".doai-rollback.json").exists()


def test_steps_in_one_call_stop_at_the_first_failure_and_an_agent_that_dies_as_it_starts_fails_verify(tmp_path, folder):
    """op=steps (a user's steps in one call, issue 20): each step's result in order, up to the
    first that failed. An agent that exits as it starts is not "running" because verify looked
    at it in its first milliseconds, right after the start in the same process: it must stay up
    for ``settle`` seconds. Steps after the failure do not run (the marker is not written)."""
    root, _ = folder
    agent = root / "app-current" / "agent"
    agent.write_text("#!/bin/sh\nsleep 0.3\nexit 3\n")  # dies a moment after it starts
    agent.chmod(0o755)
    steps = [{"op": "start", "root": str(root), "command": ["{current}/agent"]},
             {"op": "verify", "root": str(root), "expected": "2.4.0", "timeout": 5},
             {"op": "marker", "root": str(root), "content": {"phase": "done"}}]
    out = run_module(tmp_path, {"op": "steps", "steps": steps})
    assert out.get("failed") is True and out["failed_index"] == 1, out
    assert [r.get("failed", False) for r in out["results"]] == [False, True], out
    assert out["results"][1]["running"] is False and "verify: running=False" in out["msg"], out
    assert not (root / ".doai-rollback.json").exists()

    # the same steps with an agent that keeps running: every step ran, in order
    agent.write_text("#!/bin/sh\nexec sleep 30\n")
    out = run_module(tmp_path, {"op": "steps", "steps": steps})
    try:
        assert not out.get("failed") and [r.get("changed") for r in out["results"]] == [True, False, True], out
        assert out["results"][1]["running"] is True and out["results"][1]["version"] == "2.4.0"
        assert json.loads((root / ".doai-rollback.json").read_text()) == {"phase": "done"}
    finally:
        os.kill(out["results"][0]["pid"], 15)


def test_a_step_that_is_not_a_valid_call_runs_nothing(tmp_path, folder):
    root, _ = folder
    out = run_module(tmp_path, {"op": "steps", "steps": [
        {"op": "marker", "root": str(root), "content": {"phase": "x"}},
        {"op": "rename", "root": str(root)}]})  # rename without src/dest
    assert out.get("failed") is True and "steps[1] (rename)" in out["msg"] and "nothing was run" in out["msg"], out
    assert not (root / ".doai-rollback.json").exists()
    out = run_module(tmp_path, {"op": "steps", "steps": [{"op": "observe"}]})
    assert out.get("failed") is True and "steps[0]: op must be one of" in out["msg"], out


def test_batches_run_the_users_side_by_side_each_stopping_at_its_own_failure(tmp_path, folder):
    """op=batches (issue 20 goal 4): the users of one PC in one call, side by side. Proved
    without a clock: bob's list waits (verify) for an agent that only alice's list starts, so a
    module that ran the lists one after the other would fail bob's verify at its timeout. A list
    that fails stops there and leaves the others alone; an invalid step anywhere runs nothing."""
    root, _ = folder
    agent = root / "app-current" / "agent"
    agent.write_text("#!/bin/sh\nexec sleep 30\n")
    agent.chmod(0o755)
    other = tmp_path / "home" / "carol" / ".local" / "share" / "DoAi-Desktop-Agent"
    (other / "app-current").mkdir(parents=True)
    waits = [{"op": "verify", "root": str(root), "expected": "2.4.0", "timeout": 20, "settle": 0.2}]
    starts = [{"op": "stop", "root": str(other), "timeout": 5},
              {"op": "start", "root": str(root), "command": ["{current}/agent"]},
              {"op": "marker", "root": str(root), "content": {"phase": "started"}}]
    fails = [{"op": "rename", "root": str(other), "src": "app-backup", "dest": "app-current"},
             {"op": "marker", "root": str(other), "content": {"phase": "never"}}]
    out = run_module(tmp_path, {"op": "batches", "batches": [waits, starts, fails]})
    try:
        assert not out.get("failed"), out
        first, second, third = out["batches"]
        assert first["failed_index"] is None and first["results"][0]["running"] is True, first
        assert second["failed_index"] is None and [r.get("changed") for r in second["results"]] == [False, True, True]
        assert third["failed_index"] == 0 and len(third["results"]) == 1, third  # stopped at its own failure
        assert not (other / ".doai-rollback.json").exists()
        assert json.loads((root / ".doai-rollback.json").read_text()) == {"phase": "started"}
    finally:
        os.kill(out["batches"][1]["results"][1]["pid"], 15)
    out = run_module(tmp_path, {"op": "batches", "batches": [starts, [{"op": "rename", "root": str(root)}]]})
    assert out.get("failed") is True and "batches[1].steps[0] (rename)" in out["msg"] and "nothing was run" in out["msg"]


def test_a_user_named_twice_is_observed_once(tmp_path, folder):
    """The users of a PC run side by side (op=batches), one thread per folder: the same user
    twice (``--user alice --user alice``) must not give two threads on one folder."""
    root, _ = folder
    profiles = root.parents[3]
    out = run_module(tmp_path, {"op": "observe", "users": ["alice", "alice"], "profiles_root": str(profiles)})
    assert [u["user"] for u in out["users"]] == ["alice"], out


def test_the_request_names_each_user_once():
    from doai_ansible.parts.agent import AgentPart

    assert AgentPart().request(users=["alice", "bob", "alice"]).options["users"] == ["alice", "bob"]


def test_observe_reads_the_checklists_log_lines_in_the_same_call(tmp_path, folder):
    """Issue 20: the whole-system checklist's log lines of a POSIX PC come in the swap's observe
    call, as doai_agent_diagnose reads them (scrubbed, nothing followed out of the folder); a bad
    name among them is kept with its cause and the observe goes on."""
    root, _ = folder
    profiles = root.parents[3]
    (root / "agent.log").write_text("".join(f"line {i} token=sekret{i}\n" for i in range(10)))
    args = {"op": "observe", "users": ["alice", "alice"], "profiles_root": str(profiles)}
    out = run_module(tmp_path, dict(args, lines=3))
    assert [u["user"] for u in out["users"]] == ["alice"], out
    read = (f"import sys, json; sys.path.insert(0, {str(COLLECTIONS)!r}); "
            "from ansible_collections.doai.rollback.plugins.module_utils.doai_agent_read import evidence; "
            f"print(json.dumps(evidence({str(profiles)!r}, '.local/share', 'DoAi-Desktop-Agent', ['alice'], "
            "'agent.pid', 'agent.log', 3)))")
    diag = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, check=True)
    assert out["checklist"] == {"evidence": json.loads(diag.stdout), "evidence_error": None}
    log = out["checklist"]["evidence"]["users"][0]["log"]
    assert log.splitlines()[0].startswith("line 7") and "sekret" not in log, log
    assert "checklist" not in run_module(tmp_path, args)
    bad = run_module(tmp_path, dict(args, lines=3, log_file="../../../etc/passwd"))
    assert not bad.get("failed") and bad["users"][0]["user"] == "alice", bad
    assert bad["checklist"]["evidence"] is None and "log_file" in bad["checklist"]["evidence_error"]
