"""The desktop agent's rename swap (roles/doai_agent): decide() and undo_steps() over every state,
the action plugin's module calls on Windows PCs replayed from recorded module results
(tests/fixtures/agent_windows/*.json), and one real run of the role on POSIX.

The Windows results are in the shape ansible.windows.win_powershell / win_service and
community.windows.win_scheduled_task return them; no Windows host ran here (there is none), so
the PowerShell scripts themselves are not exercised by these tests: each call's script is checked
to be its file's text (roles/doai_agent/files/windows), which tests/unit/test_powershell.py parses.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "doai_agent"
FIX = ROOT / "tests" / "fixtures" / "agent_windows"

# The decisions (pure) from their own module; the action plugin (the executor) reuses it.
DECISIONS = ROOT / "plugins" / "module_utils" / "doai_agent_decide.py"
decisions = sys.modules.get("doai_agent_decide")
if decisions is None or decisions.__file__ != str(DECISIONS):
    _dspec = importlib.util.spec_from_file_location("doai_agent_decide", DECISIONS)
    decisions = importlib.util.module_from_spec(_dspec)
    _dspec.loader.exec_module(decisions)
    sys.modules["doai_agent_decide"] = decisions
_spec = importlib.util.spec_from_file_location("doai_agent_swap", ROOT / "plugins" / "action" / "doai_agent_swap.py")
swap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(swap)

STAMP = "20261127T014500Z"
OPTS = {"stamp": STAMP, "run_id": "run-2"}
ROOT_A = "C:\\Users\\alice\\AppData\\Local\\DoAi-Desktop-Agent"
SECRET = "canary-winrm-password-7f3a"


def fixture(name):
    return json.loads((FIX / (name + ".json")).read_text())


def observed(name, i=0):
    return fixture(name)["result"][i]


def ops(plan):
    out = []
    for s in plan["steps"]:
        if s["op"] == "rename":
            out.append("rename {} -> {}".format(s["src"], s["dest"]))
        elif s["op"] == "marker":
            out.append("marker " + s["content"]["phase"])
        else:
            out.append(s["op"])
    return out


# ------------------------------------------------------------------------------------------
# decide()
# ------------------------------------------------------------------------------------------

def test_ready_running_with_config():
    plan = decisions.decide(observed("observe_ready"), OPTS)
    assert plan["status"] == "planned"
    assert (plan["from"], plan["to"]) == ("2.4.1", "2.4.0")
    assert ops(plan) == ["stop", "marker swapping", "rename app-current -> app-failed",
                         "rename app-backup -> app-current", "copy_config", "start", "verify", "marker done"]
    assert plan["steps"][0] == {"op": "stop", "timeout": 30}
    assert plan["steps"][2] == {"op": "rename", "src": "app-current", "dest": "app-failed", "retries": 10, "delay": 3}
    assert plan["steps"][4] == {"op": "copy_config", "src": "app-failed/config.json",
                                "dest": "app-current/config.json",
                                "keep_as": f"app-current/config.json.doai-{STAMP}"}
    assert plan["steps"][6] == {"op": "verify", "version": "2.4.0", "timeout": 30}
    assert plan["steps"][1]["content"] == {"run_id": "run-2", "phase": "swapping", "from": "2.4.1", "to": "2.4.0",
                                           "failed_kept_as": None, "user": "alice", "at": STAMP}


def test_earlier_app_failed_is_kept_under_a_timestamped_name():
    plan = decisions.decide(observed("observe_failed_present"), OPTS)
    assert plan["status"] == "planned"
    assert ops(plan)[:3] == ["stop", f"rename app-failed -> app-failed-{STAMP}", "marker swapping"]
    assert plan["steps"][2]["content"]["failed_kept_as"] == "app-failed-" + STAMP
    assert "kept as app-failed-" + STAMP in plan["reason"]


def test_agent_not_running_no_stop_but_started():
    plan = decisions.decide(observed("observe_not_running"), OPTS)
    assert plan["status"] == "planned"
    assert "stop" not in ops(plan) and "start" in ops(plan)
    assert "agent not running" in plan["reason"]


def test_config_missing_swaps_without_copy_or_refuses_when_required():
    plan = decisions.decide(observed("observe_no_config"), OPTS)
    assert plan["status"] == "planned" and "copy_config" not in ops(plan)
    assert "no config.json in app-current" in plan["reason"]
    plan = decisions.decide(observed("observe_no_config"), dict(OPTS, config_required=True))
    assert plan["status"] == "refused" and plan["steps"] == []
    assert plan["reason"] == f"missing in {ROOT_A}: app-current/config.json"


def test_folder_missing_and_backup_missing_refuse_naming_what_is_missing():
    bob, carol = observed("observe_refusals", 0), observed("observe_refusals", 1)
    plan = decisions.decide(bob, OPTS)
    assert plan["status"] == "refused" and plan["steps"] == []
    assert plan["reason"] == "agent folder missing: C:\\Users\\bob\\AppData\\Local\\DoAi-Desktop-Agent"
    plan = decisions.decide(carol, OPTS)
    assert plan["status"] == "refused" and plan["steps"] == []
    assert plan["reason"] == "missing in C:\\Users\\carol\\AppData\\Local\\DoAi-Desktop-Agent: app-backup"
    both = dict(carol, dirs={"app-current": None, "app-backup": None, "app-failed": None})
    assert decisions.decide(both, OPTS)["reason"].endswith(": app-current, app-backup")


def test_same_version_in_backup_refuses():
    obs = observed("observe_ready")
    obs["dirs"]["app-backup"]["version"] = "2.4.1"
    plan = decisions.decide(obs, OPTS)
    assert plan["status"] == "refused" and "same version" in plan["reason"]


def test_already_swapped_is_unchanged_and_started_when_not_running():
    plan = decisions.decide(observed("observe_swapped"), OPTS)
    assert plan["status"] == "unchanged" and plan["steps"] == []
    assert plan["reason"] == "already swapped by run run-1: app-current holds 2.4.0"
    obs = dict(observed("observe_swapped"), running=False)
    plan = decisions.decide(obs, OPTS)
    assert plan["status"] == "planned" and ops(plan) == ["start", "verify"]


def test_a_folder_rolled_back_already_is_shown_as_it_is_the_marker_as_history():
    """Issue 17 item 4: after the swap app-current holds 2.4.0: that is its "from" in a plan or
    a status, not the marker's "from" (2.4.1, what the run found)."""
    plan = decisions.decide(observed("observe_swapped"), OPTS)
    assert (plan["status"], plan["from"], plan["to"]) == ("unchanged", "2.4.0", "2.4.0")
    assert plan["live"] == {"app-current": "2.4.0", "app-backup": None, "app-failed": "2.4.1"}
    assert plan["history"] == {"run_id": "run-1", "phase": "done", "from": "2.4.1", "to": "2.4.0"}
    started = decisions.decide(dict(observed("observe_swapped"), running=False), OPTS)
    assert (started["from"], started["to"], started["steps"][-1]["version"]) == ("2.4.0", "2.4.0", "2.4.0")
    # a version that cannot be read is "?", an absent folder None; the user's marker is taken as short strings only
    obs = observed("observe_ready")
    obs["dirs"]["app-backup"]["version"] = None
    obs["marker"] = {"run_id": "x" * 500, "phase": ["done"], "from": 1}
    plan = decisions.decide(obs, OPTS)
    assert plan["live"] == {"app-current": "2.4.1", "app-backup": "?", "app-failed": None}
    assert plan["history"] == {"run_id": "x" * 100}


def test_half_finished_earlier_swap_resume_and_put_back():
    obs = observed("observe_half_finished")
    plan = decisions.decide(obs, OPTS)
    assert plan["status"] == "planned" and "resuming" in plan["reason"]
    assert ops(plan) == ["rename app-backup -> app-current", "copy_config", "start", "verify", "marker done"]
    assert [(s["src"], s["dest"]) for s in plan["prior"]] == [("app-current", "app-failed")]
    assert plan["steps"][-1]["content"]["from"] == "2.4.1"
    plan = decisions.decide(obs, dict(OPTS, half_finished="put_back"))
    assert ops(plan) == ["rename app-failed -> app-current", "marker put_back", "start", "verify"]
    assert plan["steps"][-1]["version"] == "2.4.1"


def test_half_finished_after_both_renames_and_unrecognised_state():
    marker = observed("observe_half_finished")["marker"]
    both = observed("observe_swapped")
    both["marker"] = dict(marker, failed_kept_as="app-failed-20261126T230000Z")
    both["running"] = False
    plan = decisions.decide(both, OPTS)
    assert ops(plan) == ["copy_config", "start", "verify", "marker done"]
    assert [(s["src"], s["dest"]) for s in plan["prior"]] == [
        ("app-failed", "app-failed-20261126T230000Z"), ("app-current", "app-failed"), ("app-backup", "app-current")]
    odd = dict(observed("observe_half_finished"))
    odd["dirs"] = {"app-current": None, "app-backup": None, "app-failed": {"version": "2.4.1", "config": True}}
    plan = decisions.decide(odd, OPTS)
    assert plan["status"] == "refused" and plan["steps"] == []
    assert "does not recognise" in plan["reason"] and "app-backup absent" in plan["reason"]


def test_half_finished_when_only_app_failed_was_kept_is_a_fresh_swap():
    obs = observed("observe_ready")
    obs["marker"] = {"run_id": "run-earlier", "phase": "swapping", "from": "2.4.1", "to": "2.4.0",
                     "failed_kept_as": "app-failed-20261126T010000Z"}
    assert ops(decisions.decide(obs, OPTS))[:3] == ["stop", "marker swapping", "rename app-current -> app-failed"]


def test_undo_steps_reverse_everything_and_restart():
    plan = decisions.decide(observed("observe_failed_present"), OPTS)
    done = [dict(s, kept=True) if s["op"] == "copy_config" else s for s in plan["steps"][:7]]  # through start
    undo = decisions.undo_steps(done, stamp=STAMP, version=plan["from"])
    names = [("rename {} -> {}".format(s["src"], s["dest"])) if s["op"] == "rename" else
             ("marker " + s["content"]["phase"]) if s["op"] == "marker" else s["op"] for s in undo]
    assert names == [
        "stop",
        f"rename app-current/config.json -> app-current/config.json.doai-undone-{STAMP}",
        f"rename app-current/config.json.doai-{STAMP} -> app-current/config.json",
        "rename app-current -> app-backup", "rename app-failed -> app-current",
        "marker put_back", f"rename app-failed-{STAMP} -> app-failed", "start", "verify"]
    assert undo[-1]["version"] == "2.4.1"
    # Nothing done: nothing to undo; only a stop: start again.
    assert decisions.undo_steps([]) == []
    assert [s["op"] for s in decisions.undo_steps([{"op": "stop", "timeout": 30}], version="2.4.1")] == ["start", "verify"]


# ------------------------------------------------------------------------------------------
# The action plugin against recorded Windows module results
# ------------------------------------------------------------------------------------------

WIN_SCRIPTS = ROOT / "roles" / "doai_agent" / "files" / "windows"


def ps1(name):
    """A PowerShell script as its file holds it (read here, not through the plugin)."""
    with open(WIN_SCRIPTS / (name + ".ps1"), encoding="utf-8", newline="") as f:
        return f.read()


# Every script the plugin sends is named by its text: the file's text exactly (KeyError otherwise).
SCRIPT_NAMES = {ps1(n): n for n in swap.PS_PARAMS}
STEP_FIXTURE = {"stop": "stop_ok", "rename": "rename_ok", "copy_config": "copy_config_kept",
                "marker": "marker_ok", "start_task": "start_task_ok", "verify": "verify_ok",
                "undo_config": "undo_config_unchanged", "move": "rename_ok"}


class Recorder:
    """A fake _execute_module: records every call, replays the recorded result for it; ``fail``
    maps a call's index (0 = the observe) to a fixture that replaces the recorded success."""

    def __init__(self, observe, fail=None):
        self.observe, self.fail, self.calls = observe, fail or {}, []

    def __call__(self, module_name=None, module_args=None, task_vars=None, **kw):
        i = len(self.calls)
        self.calls.append((module_name, copy.deepcopy(module_args)))
        if i in self.fail:
            return fixture(self.fail[i])
        if i == 0:
            return fixture(self.observe)
        if module_name == swap.WIN_POWERSHELL:
            return fixture(STEP_FIXTURE[SCRIPT_NAMES[module_args["script"]]])
        return fixture({swap.WIN_SCHEDULED_TASK: "scheduled_task_ok", swap.WIN_SERVICE: "service_ok"}[module_name])

    def named(self):
        """Calls with the script named instead of its text."""
        out = []
        for module, args in self.calls:
            if module == swap.WIN_POWERSHELL:
                out.append((SCRIPT_NAMES[args["script"]], args["parameters"]))
            else:
                out.append((module, args))
        return out


def plugin(recorder):
    action = object.__new__(swap.ActionModule)
    action._execute_module = recorder
    return action


def task_args(**over):
    args = {k: v.get("default") for k, v in decisions.ARGUMENT_SPEC.items()}
    args.update(stamp=STAMP, run_id="run-2", os="auto")
    args.update(over)
    return args


TASK_VARS = {"ansible_connection": "winrm", "ansible_user": "Administrator", "ansible_password": SECRET,
             "ansible_winrm_transport": "ntlm"}


def run(observe, fail=None, check=False, **over):
    rec = Recorder(observe, fail)
    out = plugin(rec).swap(task_args(**over), TASK_VARS, check)
    assert SECRET not in json.dumps(rec.calls) and SECRET not in json.dumps(out)
    assert "password" not in json.dumps(rec.calls).lower()
    return out, rec


def marker_params(phase, frm="2.4.1", to="2.4.0", kept=None, at=STAMP, **more):
    return {"Root": ROOT_A, "Marker": ".doai-rollback.json", "Content": json.dumps(
        {"at": at, "failed_kept_as": kept, "from": frm, "phase": phase, "run_id": "run-2", "to": to,
         "user": "alice", **more}, sort_keys=True)}


def rename_params(path, new, retries=10, delay=3):
    return {"Root": ROOT_A, "Path": path, "NewName": new, "Retries": retries, "DelaySeconds": delay}


TASK = "DoAi-Desktop-Agent (alice)"
SCHEDULED_TASK = (swap.WIN_SCHEDULED_TASK, {
    "name": TASK, "state": "present", "enabled": True,
    "actions": [{"path": ROOT_A + "\\app-current\\DoAi-Desktop-Agent.exe", "working_directory": ROOT_A + "\\app-current"}],
    "username": "alice", "logon_type": "interactive_token", "run_level": "limited", "multiple_instances": 2})
OBSERVE = ("observe", {"Users": [], "FolderName": "DoAi-Desktop-Agent", "LocalPath": "AppData\\Local",
                          "VersionFile": "VERSION", "ExeName": "DoAi-Desktop-Agent.exe",
                          "Marker": ".doai-rollback.json", "ServiceName": ""})


def verify_params(version):
    return {"Root": ROOT_A, "VersionFile": "VERSION", "ExeName": "DoAi-Desktop-Agent.exe", "Expected": version,
            "TimeoutSeconds": 30, "ServiceName": ""}


def test_windows_swap_exact_module_calls():
    out, rec = run("observe_failed_present")
    assert out["os"] == "windows" and out["changed"] is True and "failed" not in out
    assert rec.named() == [
        OBSERVE,
        ("stop", {"Root": ROOT_A, "TimeoutSeconds": 30}),
        ("rename", rename_params("app-failed", "app-failed-" + STAMP)),
        ("marker", marker_params("swapping", kept="app-failed-" + STAMP)),
        ("rename", rename_params("app-current", "app-failed")),
        ("rename", rename_params("app-backup", "app-current")),
        ("copy_config", {"Root": ROOT_A, "Source": "app-failed\\config.json", "Dest": "app-current\\config.json",
                            "KeepAs": "app-current\\config.json.doai-" + STAMP}),
        SCHEDULED_TASK,
        ("start_task", {"TaskName": TASK}),
        ("verify", verify_params("2.4.0")),
        ("marker", marker_params("done", kept="app-failed-" + STAMP, config_carried=True,
                                    config_kept_as="config.json.doai-" + STAMP)),
    ]
    user = out["users"][0]
    assert user["status"] == "changed" and (user["from"], user["to"]) == ("2.4.1", "2.4.0")
    assert [s["op"] for s in user["done"]] == ["stop", "rename", "marker", "rename", "rename", "copy_config",
                                               "start", "verify", "marker"]
    assert user["done"][5]["kept"] is True


def test_windows_users_passed_as_parameters_and_service_mode():
    out, rec = run("observe_ready", users=["alice"], agent_kind="service")
    named = rec.named()
    assert named[0] == ("observe", dict(OBSERVE[1], Users=["alice"], ServiceName="DoAiDesktopAgent"))
    assert named[1] == (swap.WIN_SERVICE, {"name": "DoAiDesktopAgent", "state": "stopped"})
    assert named[-3] == (swap.WIN_SERVICE, {"name": "DoAiDesktopAgent", "state": "started"})
    assert named[-2] == ("verify", dict(verify_params("2.4.0"), ServiceName="DoAiDesktopAgent"))
    assert out["users"][0]["status"] == "changed"


def test_check_mode_observes_and_plans_only():
    out, rec = run("observe_failed_present", check=True)
    assert rec.named() == [OBSERVE]
    assert out["changed"] is False and out["users"][0]["status"] == "planned"
    assert [s["op"] for s in out["users"][0]["steps"]][:2] == ["stop", "rename"]


def test_refusals_touch_nothing():
    out, rec = run("observe_refusals")
    assert rec.named() == [OBSERVE] and out["changed"] is False and "failed" not in out
    assert [(u["user"], u["status"]) for u in out["users"]] == [("bob", "refused"), ("carol", "refused"),
                                                                 ("dave", "refused")]
    assert out["users"][2]["reason"] == "no user profile dave on this PC"


def test_second_run_unchanged():
    out, rec = run("observe_swapped")
    assert rec.named() == [OBSERVE] and out["changed"] is False
    assert out["users"][0]["status"] == "unchanged"


def test_agent_that_does_not_stop_in_time_fails_with_nothing_to_undo():
    out, rec = run("observe_ready", fail={1: "stop_timeout"})
    assert [n for n, _ in rec.named()] == ["observe", "stop"]
    user = out["users"][0]
    assert out["failed"] is True and user["status"] == "failed" and user["done"] == []
    assert user["undo"] == [] and user["restore"] == "restored"
    assert "agent still running after 30 s: 4312" in user["error"]


def test_locked_folder_on_second_rename_is_put_back():
    # 0 observe, 1 stop, 2 marker, 3 rename current, 4 rename backup (locked after its 10 tries).
    out, rec = run("observe_ready", fail={4: "rename_locked"})
    named = rec.named()
    assert named[4] == ("rename", rename_params("app-backup", "app-current"))
    assert named[5:] == [
        ("rename", rename_params("app-failed", "app-current")),
        ("marker", marker_params("put_back")),
        SCHEDULED_TASK,
        ("start_task", {"TaskName": TASK}),
        ("verify", verify_params("2.4.1")),
    ]
    user = out["users"][0]
    assert out["failed"] is True and user["status"] == "failed" and user["restore"] == "restored"
    assert "failed after 10 attempts" in user["error"] and "being used by another process" in user["error"]
    assert "alice" in out["msg"] and "(restored)" in out["msg"]


def test_failed_verify_after_full_swap_is_put_back_and_failed_undo_reports_not_restored():
    # 0 observe, 1 stop, 2 marker, 3-4 renames, 5 copy, 6-7 start, 8 verify fails.
    out, rec = run("observe_ready", fail={8: "stop_timeout"})
    assert [n for n, _ in rec.named()[9:]] == ["stop", "rename", "rename", "rename", "rename",
                                               "marker", swap.WIN_SCHEDULED_TASK, "start_task", "verify"]
    assert rec.named()[10][1] == rename_params("app-current\\config.json",
                                               "config.json.doai-undone-" + STAMP, retries=1, delay=0)
    assert rec.named()[11][1] == rename_params("app-current\\config.json.doai-" + STAMP, "config.json",
                                               retries=1, delay=0)
    assert out["users"][0]["restore"] == "restored"
    # The undo's own rename of app-current back to app-backup fails: not_restored, and it stops there.
    out, rec = run("observe_ready", fail={8: "stop_timeout", 12: "rename_locked"})
    user = out["users"][0]
    assert user["restore"] == "not_restored" and len(rec.calls) == 13
    assert "being used by another process" in user["undo_error"]


def test_half_finished_resume_on_windows_puts_back_prior_steps_on_failure():
    # 0 observe, 1 rename backup, 2 copy, 3-4 start, 5 verify fails.
    out, rec = run("observe_half_finished", fail={5: "stop_timeout"})
    named = rec.named()
    assert named[1] == ("rename", rename_params("app-backup", "app-current"))
    undo = [(n, p.get("Path"), p.get("NewName")) for n, p in named[6:]]
    assert undo == [("stop", None, None),
                    ("rename", "app-current\\config.json", "config.json.doai-undone-" + STAMP),
                    ("rename", "app-current\\config.json.doai-" + STAMP, "config.json"),
                    ("rename", "app-current", "app-backup"),
                    ("rename", "app-failed", "app-current"),
                    (swap.WIN_SCHEDULED_TASK, None, None), ("start_task", None, None), ("verify", None, None)]
    assert named[-1][1]["Expected"] == "2.4.1"


def test_os_from_connection_or_facts():
    assert swap.target_os("auto", {"ansible_connection": "psrp"}) == "windows"
    assert swap.target_os("auto", {"ansible_os_family": "Windows", "ansible_connection": "ssh"}) == "windows"
    assert swap.target_os("auto", {"ansible_connection": "ssh"}) == "posix"
    assert swap.target_os("windows", {}) == "windows"


@pytest.mark.parametrize("hostvars", [
    {}, {"ansible_connection": "ssh"}, {"ansible_connection": "winrm"}, {"ansible_connection": "ansible.builtin.psrp"},
    {"ansible_connection": "ssh", "ansible_shell_type": "powershell"},  # Windows over OpenSSH
    {"ansible_connection": "ssh", "ansible_os_family": "Windows"},
    {"doai_agent_os": "posix", "ansible_connection": "winrm"}, {"doai_agent_os": "windows"},
])
def test_the_evidence_read_takes_the_swaps_os(hostvars):
    """playbooks/tasks/agent-evidence.yml (the checklist's and diagnose's read of a PC) picks
    Windows or POSIX as the swap does: a PC over OpenSSH with the PowerShell shell is Windows to
    both, not sent the POSIX module by one."""
    import yaml
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    block = yaml.safe_load((ROOT / "playbooks" / "tasks" / "agent-evidence.yml").read_text())[0]
    expr = trust_as_template(block["vars"]["doai_agent_diagnose__windows"])
    windows = Templar(loader=DataLoader(), variables=dict(hostvars)).template(expr)
    assert windows is (swap.target_os(hostvars.get("doai_agent_os", "auto"), hostvars) == "windows")


def test_scripts_take_values_as_parameters_only():
    """No value reaches a script's text: every script sent is one of the role's .ps1 files, as it is."""
    _, rec = run("observe_failed_present")
    for module, args in rec.calls:
        if module == swap.WIN_POWERSHELL:
            assert args["script"] in SCRIPT_NAMES and set(args) == {"script", "parameters"}


# ------------------------------------------------------------------------------------------
# One real run on POSIX (loopback, ansible_connection=local). NOT Windows coverage.
# ------------------------------------------------------------------------------------------

def _make_app(d: Path, version: str, agent: str, config: str | None):
    d.mkdir(parents=True)
    (d / "VERSION").write_text(version + "\n")
    (d / "agent").write_text(agent)
    (d / "agent").chmod(0o755)
    if config is not None:
        (d / "config.json").write_text(config)


GOOD = "#!/bin/sh\nexec sleep 300\n"
BAD = "#!/bin/sh\nexit 3\n"


def _playbook(tmp: Path, home: Path, check=False):
    result = tmp / ("result-check.json" if check else "result.json")
    play = [{"name": "agent swap", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "Swap", "ansible.builtin.import_role": {"name": "doai_agent"}, "ignore_errors": True},
        {"name": "Keep the result", "ansible.builtin.copy": {
            "content": "{{ doai_agent__swap | to_json }}", "dest": str(result)}, "check_mode": False}]}]
    pb = tmp / "play.yml"
    pb.write_text(json.dumps(play))
    vars_ = {"doai_agent_os": "posix", "doai_agent_posix_profiles_root": str(home), "doai_agent_verify_timeout": 2,
             "doai_agent_stop_timeout": 5, "doai_agent_rename_retries": 2, "doai_agent_rename_delay": 1,
             "doai_agent_run_id": "run-e2e", "ansible_python_interpreter": sys.executable}
    (tmp / "vars.json").write_text(json.dumps(vars_))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    cmd = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", "pc1,", "-c", "local",
           "-e", "@" + str(tmp / "vars.json"), str(pb)] + (["--check"] if check else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(result.read_text())


def _pid(root: Path):
    try:
        pid = int((root / "agent.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def test_posix_end_to_end(tmp_path):
    """The role for real on this machine: two users in a temp home, a `sleep` standing in for the
    agent (pid file). alice's swap succeeds (config carried over, second run unchanged); bob's
    backup agent dies at once, so verify fails and the swap is put back and bob's agent runs again.
    Linux stand-in only: this is not Windows coverage."""
    home = tmp_path / "home"
    roots = {u: home / u / ".local" / "share" / "DoAi-Desktop-Agent" for u in ("alice", "bob")}
    for user, root in roots.items():
        _make_app(root / "app-current", "2.4.1", GOOD, f'{{"user": "{user}", "server": "wss://x"}}')
        _make_app(root / "app-backup", "2.4.0", BAD if user == "bob" else GOOD, '{"stale": true}')
    _make_app(roots["alice"] / "app-failed", "2.3.9", GOOD, None)
    started = []
    for root in roots.values():
        proc = subprocess.Popen([str(root / "app-current" / "agent")], cwd=root / "app-current", start_new_session=True)
        (root / "agent.pid").write_text(f"{proc.pid}\n")
        started.append(proc)
    try:
        plan = _playbook(tmp_path, home, check=True)
        assert [(u["user"], u["status"]) for u in plan["users"]] == [("alice", "planned"), ("bob", "planned")]
        assert (roots["alice"] / "app-backup").is_dir()  # check mode changed nothing

        out = _playbook(tmp_path, home)
        alice, bob = out["users"]
        assert alice["status"] == "changed", alice
        a = roots["alice"]
        assert (a / "app-current" / "VERSION").read_text().strip() == "2.4.0"
        assert (a / "app-failed" / "VERSION").read_text().strip() == "2.4.1"
        assert (a / "app-failed-" / "VERSION").exists() is False
        kept = [p.name for p in a.iterdir() if p.name.startswith("app-failed-")]
        assert len(kept) == 1 and (a / kept[0] / "VERSION").read_text().strip() == "2.3.9"
        assert json.loads((a / "app-current" / "config.json").read_text())["user"] == "alice"
        assert [p.name for p in (a / "app-current").glob("config.json.doai-*")]  # the backup's own, kept
        pid = _pid(a)
        assert pid and pid != started[0].pid
        assert json.loads((a / ".doai-rollback.json").read_text())["phase"] == "done"

        assert bob["status"] == "failed" and bob["restore"] == "restored", bob
        b = roots["bob"]
        assert (b / "app-current" / "VERSION").read_text().strip() == "2.4.1"
        assert (b / "app-backup" / "VERSION").read_text().strip() == "2.4.0"
        assert json.loads((b / "app-current" / "config.json").read_text())["user"] == "bob"
        assert json.loads((b / "app-backup" / "config.json").read_text()) == {"stale": True}
        assert _pid(b) is not None
        assert json.loads((b / ".doai-rollback.json").read_text())["phase"] == "put_back"

        again = _playbook(tmp_path, home)
        assert again["users"][0]["status"] == "unchanged" and _pid(a) == pid
    finally:
        for root in roots.values():
            p = _pid(root)
            if p:
                os.kill(p, signal.SIGTERM)
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        time.sleep(0.1)


@pytest.mark.parametrize("name", sorted(p.stem for p in FIX.glob("*.json")))
def test_fixtures_are_valid_json(name):
    assert isinstance(fixture(name), dict)


def test_socketio_reach_is_checked_after_verify_when_configured():
    obs = {"user": "alice", "root": "C:\\Users\\alice\\AppData\\Local\\DoAi-Desktop-Agent", "folder": True,
           "dirs": {"app-current": {"version": "2.0.0", "config": True}, "app-backup": {"version": "1.9.0", "config": True},
                    "app-failed": None}, "running": True, "marker": None}
    without = decisions.decide(obs, {})
    assert "reach" not in [s["op"] for s in without["steps"]]
    plan = decisions.decide(obs, {"socketio_host": "api.doai.me", "socketio_port": 443, "socketio_timeout": 4})
    ops = [s["op"] for s in plan["steps"]]
    assert ops.index("reach") == ops.index("verify") + 1 and ops[-1] == "marker"
    step = plan["steps"][ops.index("reach")]
    ((module, args),) = swap.windows_calls(step, {"root": obs["root"], "user": "alice", "agent_kind": "process"})
    assert module == "ansible.windows.win_powershell" and args["script"] == ps1("reach")
    assert args["parameters"] == {"Host_": "api.doai.me", "Port": 443, "TimeoutSeconds": 4}
    ((module, args),) = swap.posix_calls(step, {"root": "/home/alice/x"})
    assert args == {"op": "reach", "root": "/home/alice/x", "host": "api.doai.me", "port": 443, "timeout": 4}


# ------------------------------------------------------------------------------------------
# decide() for an undo of a finished swap (`doai-rollback undo RUN`)
# ------------------------------------------------------------------------------------------
UNDO = dict(OPTS, undo_run="run-1")


def test_undo_of_a_finished_swap_swaps_back_and_puts_config_back():
    plan = decisions.decide(observed("observe_swapped"), UNDO)
    assert plan["status"] == "planned" and (plan["from"], plan["to"]) == ("2.4.0", "2.4.1")
    assert ops(plan) == ["stop", "marker undoing", "rename app-current -> app-backup", "rename app-failed -> app-current",
                         "undo_config", "start", "verify", "marker undone"]
    assert plan["steps"][1]["content"]["undoes"] == "run-1"
    # a marker from before the config fields: the backup's own config.json was kept under the run's stamp
    assert plan["steps"][1]["content"]["config_kept_as"] == "config.json.doai-20261127T010000Z"
    assert plan["steps"][4] == {"op": "undo_config", "src": "app-backup/config.json",
                                "dest": "app-current/config.json",
                                "kept": "app-backup/config.json.doai-20261127T010000Z",
                                "keep_as": f"app-current/config.json.doai-{STAMP}"}
    assert plan["steps"][6] == {"op": "verify", "version": "2.4.1", "timeout": 30}
    assert plan["steps"][-1]["content"] == {"run_id": "run-2", "phase": "undone", "from": "2.4.0", "to": "2.4.1",
                                            "failed_kept_as": None, "user": "alice", "at": STAMP, "undoes": "run-1"}
    # what a failed step of it would put back: the undo's own steps, reversed
    undone = decisions.undo_steps(plan["steps"][:4], (), STAMP, 30, "2.4.0")
    assert [(s["op"], s.get("src"), s.get("dest")) for s in undone][:2] == [
        ("rename", "app-current", "app-failed"), ("rename", "app-backup", "app-current")]


def test_undo_brings_back_the_app_failed_that_run_kept_aside():
    obs = copy.deepcopy(observed("observe_swapped"))
    obs["marker"]["failed_kept_as"] = "app-failed-20261127T010000Z"
    plan = decisions.decide(obs, UNDO)
    assert ops(plan)[:5] == ["stop", "marker undoing", "rename app-current -> app-backup",
                             "rename app-failed -> app-current", "rename app-failed-20261127T010000Z -> app-failed"]


@pytest.mark.parametrize(("dirs", "expected"), [
    # killed after the first rename
    ({"app-current": None, "app-backup": "2.4.0", "app-failed": "2.4.1"},
     ["rename app-failed -> app-current", "rename app-failed-20261127T010000Z -> app-failed"]),
    # killed after both renames, before the kept one
    ({"app-current": "2.4.1", "app-backup": "2.4.0", "app-failed": None},
     ["rename app-failed-20261127T010000Z -> app-failed"]),
    # killed after every rename
    ({"app-current": "2.4.1", "app-backup": "2.4.0", "app-failed": "2.3.0"}, []),
    # killed before the first rename (or put back after a failure)
    ({"app-current": "2.4.0", "app-backup": None, "app-failed": "2.4.1"},
     ["rename app-current -> app-backup", "rename app-failed -> app-current",
      "rename app-failed-20261127T010000Z -> app-failed"]),
])
def test_an_undo_killed_half_way_is_finished_by_the_next(dirs, expected):
    obs = copy.deepcopy(observed("observe_swapped"))
    obs["running"] = False
    obs["dirs"] = {k: (None if v is None else {"version": v, "config": True}) for k, v in dirs.items()}
    obs["marker"] = {"run_id": "run-3", "phase": "undoing", "undoes": "run-1", "from": "2.4.1", "to": "2.4.0",
                     "failed_kept_as": "app-failed-20261127T010000Z", "user": "alice", "at": STAMP}
    plan = decisions.decide(obs, UNDO)
    assert plan["status"] == "planned", plan["reason"]
    assert ops(plan) == expected + ["undo_config", "start", "verify", "marker undone"]
    assert plan["steps"][-2]["version"] == "2.4.1"
    odd = dict(obs, dirs={"app-current": None, "app-backup": None, "app-failed": {"version": "2.4.1"}})
    assert decisions.decide(odd, UNDO)["status"] == "refused"


def test_undo_is_unchanged_once_done_and_refused_where_the_folder_moved_on():
    obs = copy.deepcopy(observed("observe_swapped"))
    obs["dirs"] = {"app-current": {"version": "2.4.1", "config": True}, "app-backup": {"version": "2.4.0", "config": True},
                   "app-failed": None}
    obs["marker"] = {"run_id": "run-2", "phase": "undone", "undoes": "run-1", "from": "2.4.0", "to": "2.4.1",
                     "failed_kept_as": None, "user": "alice", "at": STAMP}
    plan = decisions.decide(obs, UNDO)
    assert plan["status"] == "unchanged" and plan["reason"] == "run run-1 already undone: app-current holds 2.4.1"
    assert ops(decisions.decide(dict(obs, running=False), UNDO)) == ["start", "verify"]
    # another run swapped this folder since: its swap is not ours to undo
    later = copy.deepcopy(observed("observe_swapped"))
    later["marker"]["run_id"] = "run-9"
    plan = decisions.decide(later, UNDO)
    assert plan["status"] == "refused" and plan["steps"] == []
    assert plan["reason"] == "this folder's last rollback is run run-9 (done), not run run-1's finished swap: touching nothing"
    # the marker says done, but the folders were changed by hand since
    moved = copy.deepcopy(observed("observe_swapped"))
    moved["dirs"]["app-backup"] = {"version": "2.3.0", "config": True}
    plan = decisions.decide(moved, UNDO)
    assert plan["status"] == "refused" and plan["reason"].startswith("not as run run-1 left it (app-current present (2.4.0)")
    # no marker at all: never swapped by this tool
    plan = decisions.decide(dict(observed("observe_ready"), marker=None), UNDO)
    assert plan["status"] == "refused" and "last rollback is none recorded" in plan["reason"]


def test_the_decisions_are_pure_and_the_plugin_re_exports_them():
    """plugins/module_utils/doai_agent_decide.py imports no Ansible and opens nothing (the plugin
    observes and calls the modules); the action plugin loads that one file (outside a collection,
    found above it) and its names are the decisions' own objects."""
    import ast

    tree = ast.parse(DECISIONS.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"__future__", "os", "re", "urllib.parse"}
    calls = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not calls & {"open", "isfile", "exists", "listdir", "stat", "system", "urlopen"}
    assert swap.decisions is decisions
    for name in ("ARGUMENT_SPEC", "CURRENT", "MARKER", "check_options", "decide", "undo_steps", "check_pin",
                 "config_note", "decide_reinstall", "undo_reinstall", "parse_uninstall_string", "check_publisher",
                 "installer_form"):
        assert getattr(swap, name) is getattr(decisions, name), name
    assert not hasattr(decisions, "ActionModule") and not hasattr(decisions, "windows_calls")

def test_undo_run_is_checked_and_not_for_the_reinstall():
    args = {k: v["default"] for k, v in decisions.ARGUMENT_SPEC.items()}
    assert decisions.check_options(dict(args, undo_run="20261127T035648Z-c306ff")) == []
    assert decisions.check_options(dict(args, undo_run="x; rm -rf /")) == ["undo_run 'x; rm -rf /' is not a run id"]


def test_the_checklists_log_read_never_refuses_the_swap():
    """The log lines the whole-system checklist asks of the observe call are a read: a log file
    name that is empty (``doai_agent_diagnose_log_file: ''``, "not read") or wrong is the read's
    to report (doai_agent_read), never a refusal of the plan; a negative count is a bad option."""
    args = {k: v["default"] for k, v in decisions.ARGUMENT_SPEC.items()}
    assert decisions.check_options(dict(args, read_lines=50, read_log_file="")) == []
    assert decisions.check_options(dict(args, read_lines=50, read_log_file="../x")) == []
    assert decisions.check_options(dict(args, read_lines=-1)) == ["read_lines must be at least 0, not -1"]


def test_a_folder_that_changed_since_the_confirmed_plan_is_refused():
    plan = decisions.decide(observed("observe_ready"), OPTS)  # 2.4.1 -> 2.4.0
    assert decisions.check_pin(plan, {}) is plan  # no pins (no confirmed plan): decided from what is found
    assert decisions.check_pin(plan, {"alice": {"from": "2.4.1", "to": "2.4.0"}}) is plan
    moved = decisions.check_pin(plan, {"alice": {"from": "2.4.1", "to": "2.3.9"}})
    assert moved["status"] == "refused" and moved["steps"] == []
    assert moved["reason"].startswith("changed since the confirmed plan (2.4.1 -> 2.3.9 there, 2.4.1 -> 2.4.0 now)")
    new_user = decisions.check_pin(plan, {"bob": {"from": "2.4.1", "to": "2.4.0"}})
    assert new_user["status"] == "refused" and "not in the confirmed plan" in new_user["reason"]
    unchanged = decisions.decide(observed("observe_swapped"), OPTS)
    assert decisions.check_pin(unchanged, {"bob": {}}) is unchanged  # nothing to do is never refused


def test_undo_config_follows_what_the_rollback_recorded_in_its_marker():
    """Issue 17 item 14: the rollback's marker says whether it carried the user's config.json and
    where it kept the backup's own; the undo puts exactly that back (nothing when nothing was
    carried), and a name this tool does not write is refused."""
    obs = copy.deepcopy(observed("observe_swapped"))
    obs["marker"].update(config_carried=True, config_kept_as="config.json.doai-20261127T010500Z")
    (step,) = [s for s in decisions.decide(obs, UNDO)["steps"] if s["op"] == "undo_config"]
    assert step["kept"] == "app-backup/config.json.doai-20261127T010500Z"
    obs["marker"].update(config_carried=True, config_kept_as=None)  # the backup had no config.json
    (step,) = [s for s in decisions.decide(obs, UNDO)["steps"] if s["op"] == "undo_config"]
    assert step["kept"] == ""
    obs["marker"].update(config_carried=False)  # app-current had none to carry: the undo has none to move
    assert "undo_config" not in ops(decisions.decide(obs, UNDO))
    obs["marker"].update(config_carried=True, config_kept_as="../../etc/passwd")
    plan = decisions.decide(obs, UNDO)
    assert plan["status"] == "refused" and plan["steps"] == [] and "not one this tool writes" in plan["reason"]


def test_a_failed_undo_moves_the_config_back_as_undo_config_found_it():
    step = {"op": "undo_config", "src": "app-backup/config.json", "dest": "app-current/config.json",
            "kept": "app-backup/config.json.doai-K", "keep_as": "app-current/config.json.doai-U",
            "actions": [{"op": "remove", "path": "app-backup/config.json", "same_as": "app-current/config.json"},
                        {"op": "rename", "src": "app-backup/config.json.doai-K", "dest": "app-backup/config.json"}]}
    assert decisions.undo_steps([step], stamp=STAMP) == [
        {"op": "move", "src": "app-backup/config.json", "dest": "app-backup/config.json.doai-K"},
        {"op": "copy_config", "src": "app-current/config.json", "dest": "app-backup/config.json",
         "keep_as": "app-backup/config.json.doai-undone-" + STAMP}]
    ((module, args),) = swap.posix_calls(decisions.undo_steps([step], stamp=STAMP)[0], {"root": "/r"})
    assert args == {"op": "rename", "root": "/r", "src": "app-backup/config.json",
                    "dest": "app-backup/config.json.doai-K", "retries": 1, "delay": 0}


RUN_1 = "20261127T010000Z-0a1b2c"


def run_undo(fail=None):
    """The plugin undoing run RUN_1 on the folder of observe_swapped (that run's marker)."""
    seen = fixture("observe_swapped")
    seen["result"][0]["marker"]["run_id"] = RUN_1

    class Undo(Recorder):
        def __call__(self, module_name=None, module_args=None, task_vars=None, **kw):
            if not self.calls:
                self.calls.append((module_name, copy.deepcopy(module_args)))
                return copy.deepcopy(seen)
            return super().__call__(module_name, module_args, task_vars, **kw)

    rec = Undo("observe_swapped", fail)
    out = plugin(rec).swap(task_args(undo_run=RUN_1), TASK_VARS, False)
    assert SECRET not in json.dumps(rec.calls) and SECRET not in json.dumps(out)
    return out, rec


def test_windows_undo_exact_calls_config_unchanged_and_carried_then_put_back():
    out, rec = run_undo()
    named = rec.named()
    assert [n for n, _ in named] == ["observe", "stop", "marker", "rename", "rename", "undo_config",
                                     swap.WIN_SCHEDULED_TASK, "start_task", "verify", "marker"]
    assert named[5][1] == {"Root": ROOT_A, "Copy": "app-backup\\config.json", "Dest": "app-current\\config.json",
                           "Kept": "app-backup\\config.json.doai-20261127T010000Z",
                           "KeepAs": "app-current\\config.json.doai-" + STAMP}
    user = out["users"][0]
    assert user["status"] == "changed" and "failed" not in out
    assert user["config"].startswith("config.json unchanged since the rollback")
    # the settings changed since the rollback (carried), then the verify fails: every move undone
    out, rec = run_undo(fail={5: "undo_config_carried", 8: "stop_timeout"})
    user = out["users"][0]
    assert user["status"] == "failed" and user["restore"] == "restored", user
    moves = [(n, p.get("Path"), p.get("Dest")) for n, p in rec.named()[9:13]]
    assert moves == [
        ("stop", None, None),
        ("move", "app-backup\\config.json", "app-backup\\config.json.doai-20261127T010000Z"),
        ("move", "app-current\\config.json", "app-backup\\config.json"),
        ("move", "app-current\\config.json.doai-" + STAMP, "app-current\\config.json")]
    assert [n for n, _ in rec.named()[13:]] == ["rename", "rename", swap.WIN_SCHEDULED_TASK, "start_task",
                                                "verify"]
