"""The desktop agent's reinstall (roles/doai_agent, operation reinstall): decide_reinstall() and
its put-back over every state, the installer check, and the action plugin's module calls on a
Windows PC replayed from recorded module results (below, in the shape ansible.windows
win_powershell / win_get_url and community.windows win_scheduled_task return them). No Windows
host ran here: the PowerShell scripts themselves are not exercised (each call's script is its
file's text, parsed by tests/unit/test_powershell.py); the Linux stand-in PCs run
the whole flow in tests/integration/test_agent_reinstall.py."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The decisions (pure) from their own module; the action plugin (the executor) reuses it.
DECISIONS = ROOT / "plugins" / "module_utils" / "doai_agent_decide.py"
decisions = sys.modules.get("doai_agent_decide")
if decisions is None or decisions.__file__ != str(DECISIONS):
    _dspec = importlib.util.spec_from_file_location("doai_agent_decide", DECISIONS)
    decisions = importlib.util.module_from_spec(_dspec)
    _dspec.loader.exec_module(decisions)
    sys.modules["doai_agent_decide"] = decisions
_spec = importlib.util.spec_from_file_location("doai_agent_swap", ROOT / "plugins" / "action"
                                               / "doai_agent_swap.py")
swap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(swap)

STAMP = "20261127T031500Z"
KEPT = "app-replaced-" + STAMP
ROOT_A = "C:\\Users\\alice\\AppData\\Local\\DoAi-Desktop-Agent"
UNINSTALLER = "C:\\Users\\alice\\AppData\\Local\\DoAi-Desktop-Agent\\app-current\\Uninstall DoAi.exe"
SECRET = "canary-winrm-password-reinstall"
SHA = "c0ffee" + "0" * 58
URL = "https://downloads.example.org/agent/DoAi-Desktop-Agent-Setup-2.4.0.exe"
STAGED = f"C:\\ProgramData\\doai-rollback\\installers\\{STAMP}-run-7\\DoAi-Desktop-Agent-Setup-2.4.0.exe"
OPTS = {"stamp": STAMP, "run_id": "run-7", "installer_id": SHA, "installer_version": "2.4.0"}


def observed(running=True, config=True, current="2.4.1", marker=None, folder=True, uninstaller=UNINSTALLER):
    return {"user": "alice", "root": ROOT_A, "profile": True, "folder": folder, "running": running, "marker": marker,
            "dirs": {"app-current": None if current is None else {"version": current, "config": config},
                     "app-backup": {"version": "2.4.0", "config": True}, "app-failed": None},
            "uninstaller": uninstaller}


def ops(steps):
    out = []
    for s in steps:
        if s["op"] in ("rename", "set_aside", "keep_copy"):
            out.append("{} {} -> {}".format(s["op"], s["src"], s["dest"]))
        elif s["op"] == "marker":
            out.append("marker " + s["content"]["phase"])
        else:
            out.append(s["op"])
    return out


# ------------------------------------------------------------------------------------------
# decide_reinstall()
# ------------------------------------------------------------------------------------------

def test_running_agent_with_config_and_an_uninstaller():
    plan = decisions.decide_reinstall(observed(), OPTS)
    assert plan["status"] == "planned" and (plan["from"], plan["to"]) == ("2.4.1", "2.4.0")
    assert ops(plan["steps"]) == [
        "stop", "keep_copy app-current -> " + KEPT, "marker reinstalling", "uninstall",
        "set_aside app-current -> app-current-leftover-" + STAMP, "install", "copy_config", "start", "verify",
        "marker done"]
    assert plan["steps"][3] == {"op": "uninstall", "path": UNINSTALLER, "timeout": 600}
    assert plan["steps"][6] == {"op": "copy_config", "src": KEPT + "/config.json", "dest": "app-current/config.json",
                                "keep_as": "app-current/config.json.doai-" + STAMP}
    assert plan["steps"][8] == {"op": "verify", "version": "2.4.0", "timeout": 30}
    assert plan["steps"][2]["content"] == {"run_id": "run-7", "operation": "reinstall", "phase": "reinstalling",
                                           "from": "2.4.1", "to": "2.4.0", "installer": SHA, "kept_as": KEPT,
                                           "user": "alice", "at": STAMP}
    assert "kept as " + KEPT in plan["reason"]


def test_not_running_no_config_no_uninstaller():
    plan = decisions.decide_reinstall(observed(running=False, config=False, uninstaller=None), OPTS)
    assert plan["status"] == "planned"
    assert ops(plan["steps"]) == ["keep_copy app-current -> " + KEPT, "marker reinstalling",
                                  "set_aside app-current -> app-current-leftover-" + STAMP, "install", "start",
                                  "verify", "marker done"]
    for note in ("agent not running", "no config.json", "installing without uninstalling"):
        assert note in plan["reason"]


def test_refusals_touch_nothing():
    plan = decisions.decide_reinstall(observed(folder=False), OPTS)
    assert plan["status"] == "refused" and plan["steps"] == [] and plan["reason"].startswith("agent folder missing")
    plan = decisions.decide_reinstall(observed(current=None), OPTS)
    assert plan["status"] == "refused" and "app-current (nothing to keep" in plan["reason"]
    plan = decisions.decide_reinstall(observed(uninstaller={"unparsed": "msiexec /x {GUID}"}), OPTS)
    assert plan["status"] == "refused" and "msiexec /x {GUID}" in plan["reason"]
    bad = {"operation": "reinstall", "phase": "reinstalling", "kept_as": "..\\..\\Windows", "from": "2.4.1"}
    plan = decisions.decide_reinstall(observed(marker=bad), OPTS)
    assert plan["status"] == "refused" and "not one this tool writes" in plan["reason"]


def test_already_on_the_expected_version_is_unchanged_or_started():
    plan = decisions.decide_reinstall(observed(current="2.4.0"), OPTS)
    assert plan["status"] == "unchanged" and plan["steps"] == [] and plan["to"] == "2.4.0"
    plan = decisions.decide_reinstall(observed(current="2.4.0", running=False), OPTS)
    assert plan["status"] == "planned" and ops(plan["steps"]) == ["start", "verify"]


def test_a_second_run_with_the_same_installer_is_recognised_by_the_marker():
    done = {"operation": "reinstall", "phase": "done", "installer": SHA, "from": "2.4.1", "to": "2.3.0",
            "kept_as": KEPT, "run_id": "run-6"}
    opts = dict(OPTS, installer_version="")
    plan = decisions.decide_reinstall(observed(current="2.3.0", marker=done), opts)
    assert plan["status"] == "unchanged" and "installed by run run-6" in plan["reason"]
    other = decisions.decide_reinstall(observed(current="2.3.0", marker=dict(done, installer="f" * 64)), opts)
    assert other["status"] == "planned"  # another installer: reinstalled
    swap_marker = dict(done, operation=None, phase="done")
    assert decisions.decide_reinstall(observed(current="2.3.0", marker=swap_marker), opts)["status"] == "planned"


def test_a_half_finished_earlier_reinstall_is_put_back():
    half = {"operation": "reinstall", "phase": "reinstalling", "installer": SHA, "from": "2.4.1", "to": "2.4.0",
            "kept_as": "app-replaced-20261126T230000Z", "run_id": "run-5"}
    plan = decisions.decide_reinstall(observed(current=None, marker=half), OPTS)
    assert plan["status"] == "planned" and "run-5" in plan["reason"]
    assert ops(plan["steps"]) == ["stop", "set_aside app-current -> app-failed-reinstall-" + STAMP,
                                  "rename app-replaced-20261126T230000Z -> app-current", "marker put_back", "start",
                                  "verify"]
    assert plan["steps"][-1]["version"] == "2.4.1"


def test_undo_after_each_step():
    steps = decisions.decide_reinstall(observed(), OPTS)["steps"]
    # the stop failed: nothing done, nothing to undo
    assert decisions.undo_reinstall([], STAMP, OPTS, "2.4.1") == []
    # stopped, the copy failed: app-current untouched, the agent started again
    assert ops(decisions.undo_reinstall(steps[:1], STAMP, OPTS, "2.4.1")) == ["start", "verify"]
    # copied and marked, nothing else done: app-current untouched
    assert ops(decisions.undo_reinstall(steps[:3], STAMP, OPTS, "2.4.1")) == ["marker put_back", "start", "verify"]
    # the uninstaller failed: it may have removed part of app-current, so the kept install goes back
    undo = decisions.undo_reinstall(steps[:3], STAMP, OPTS, "2.4.1", failed=steps[3])
    assert ops(undo)[:3] == ["stop", "set_aside app-current -> app-failed-reinstall-" + STAMP,
                             f"rename {KEPT} -> app-current"]
    # uninstalled (or later): the kept install back
    for n in (4, 5, 6, 7, 9):
        undo = decisions.undo_reinstall(steps[:n], STAMP, OPTS, "2.4.1")
        assert ops(undo) == ["stop", "set_aside app-current -> app-failed-reinstall-" + STAMP,
                             f"rename {KEPT} -> app-current", "marker put_back", "start", "verify"], n
        assert undo[-1] == {"op": "verify", "version": "2.4.1", "timeout": 30}


# ------------------------------------------------------------------------------------------
# The installer and the uninstall string
# ------------------------------------------------------------------------------------------

def test_check_installer(tmp_path):
    f = tmp_path / "DoAi-Setup-2.4.0.exe"
    f.write_bytes(b"MZ installer")
    digest = hashlib.sha256(b"MZ installer").hexdigest()
    assert swap.check_installer(str(f)) == {"kind": "file", "value": str(f), "name": "DoAi-Setup-2.4.0.exe",
                                            "sha256": digest, "id": digest}
    assert swap.check_installer(str(f), digest.upper())["sha256"] == digest
    assert swap.check_installer(URL, SHA)["id"] == SHA
    assert swap.check_installer("http://127.0.0.1:8080/setup.exe", SHA)["kind"] == "url"
    for bad, why in [("", "empty"), ("relative.exe", "absolute path"), (str(tmp_path / "none.exe"), "does not exist"),
                     (str(tmp_path), "not a file"), ("http://dl.example.org/a.exe", "plain http"),
                     ("ftp://127.0.0.1/a.exe", "only https"), ("https://u:p@dl.example.org/a.exe", "credentials"),
                     ('https://dl.example.org/a".exe', "quotes"), (" " + URL, "surrounding spaces")]:
        with pytest.raises(ValueError, match=why):
            swap.check_installer(bad, SHA if "://" in bad else "")
    with pytest.raises(ValueError, match="not the"):
        swap.check_installer(str(f), "0" * 64)
    with pytest.raises(ValueError, match="64 hex"):
        swap.check_installer(str(f), "xyz")



def test_the_decisions_check_the_installer_by_its_text_and_the_plugin_reads_the_file(tmp_path):
    """The decisions read no file: a path is taken by its form (absolute, no quotes), the file
    itself is read and hashed by the plugin (check_installer) before anything is observed."""
    missing = str(tmp_path / "DoAi-Setup-2.4.0.exe")
    assert decisions.installer_form(missing, SHA.upper()) == {"kind": "file", "value": missing,
                                                         "name": "DoAi-Setup-2.4.0.exe", "sha256": SHA}
    assert decisions.installer_form(URL, SHA) == swap.check_installer(URL, SHA)
    assert decisions.check_options(task_args(installer=missing)) == []
    with pytest.raises(ValueError, match="does not exist"):
        swap.check_installer(missing)
    (tmp_path / "DoAi-Setup-2.4.0.exe").write_bytes(b"MZ")
    assert swap.check_installer(missing)["id"] == hashlib.sha256(b"MZ").hexdigest()
    # a bad form and a missing file: each reported once, with the other options' faults
    out, rec = run(task_args(installer="relative.exe", install_timeout=0))
    assert out["invalid_options"] == ["installer 'relative.exe': give an absolute path (or an https URL)",
                                      "install_timeout must be at least 1, not 0"]
    out, rec = run(task_args(installer=str(tmp_path / "none.exe"), install_timeout=0))
    assert out["invalid_options"] == ["install_timeout must be at least 1, not 0",
                                      "installer %s does not exist or is not a file" % (tmp_path / "none.exe")]
    assert rec.calls == []

def test_uninstall_strings():
    assert decisions.parse_uninstall_string(f'"{UNINSTALLER}" /currentuser') == UNINSTALLER
    assert decisions.parse_uninstall_string("C:\\Apps\\uninst.exe /S") == "C:\\Apps\\uninst.exe"
    for text in ("MsiExec.exe /X{1234}", "\\\\server\\share\\u.exe", '"C:\\x\\u.exe', "", None, "C:\\x\\u.bat"):
        assert decisions.parse_uninstall_string(text) is None, text


def test_reinstall_options_are_checked_and_named(tmp_path):
    args = task_args(installer=URL, installer_args=['/D="C:\\x"'], install_timeout=0, uninstall_key="..\\Run",
                     installer_version="2.4;0", windows_stage_dir="relative", posix_stage_dir="tmp",
                     posix_uninstall_command=[])
    bad = " | ".join(decisions.check_options(args))
    for name in ("installer_args", "install_timeout", "uninstall_key", "installer_version", "windows_stage_dir",
                 "posix_stage_dir", "posix_uninstall_command is empty"):
        assert name in bad
    out, rec = run(task_args(installer="/nonexistent/setup.exe"))
    assert out["failed"] is True and "does not exist" in out["msg"] and "nothing was changed" in out["msg"]
    assert rec.calls == []  # refused before the observe


# ------------------------------------------------------------------------------------------
# The plugin on a Windows PC, replayed from recorded module results
# ------------------------------------------------------------------------------------------

def ps_result(result=None, changed=True, error=None):
    out = {"changed": changed, "result": result, "host_out": "", "host_err": "", "output": [],
           "error": [], "warning": [], "verbose": [], "debug": [], "information": []}
    if error:
        out.update(failed=True, error=[{"output": error, "error_details": None, "exception": {"message": error}}])
    return out


OBSERVE_RESULT = ps_result([{"user": "alice", "root": ROOT_A, "profile": True, "folder": True,
                             "dirs": {"app-current": {"version": "2.4.1", "config": True},
                                      "app-backup": {"version": "2.4.0", "config": True}, "app-failed": None},
                             "running": True, "marker": None}], changed=False)
UNINSTALL_INFO = ps_result({"alice": {"uninstall_string": f'"{UNINSTALLER}" /currentuser',
                                      "display_version": "2.4.1"}}, changed=False)
GET_URL_OK = {"changed": True, "dest": STAGED, "checksum_dest": "a" * 40, "checksum_src": "a" * 40,
              "msg": "OK", "status_code": 200, "url": URL, "elapsed": 1}
GET_URL_MISMATCH = {"failed": True, "dest": STAGED, "url": URL, "status_code": 200,
                    "msg": "The checksum for {} did not match {}; it was {}.".format(STAGED, SHA, "b" * 64)}
TASK_OK = {"changed": True, "msg": ""}
VERIFY_NEW = ps_result({"version": "2.4.0", "running": True}, changed=False)
VERIFY_OLD = ps_result({"version": "2.4.1", "running": True}, changed=False)
RUN_TASK_FAILED = ps_result({"state": "Ready", "exit_code": 2}, error="DoAi-Desktop-Agent install (alice) exited with 2")

WIN_SCRIPTS = ROOT / "roles" / "doai_agent" / "files" / "windows"


def ps1(name):
    """A PowerShell script as its file holds it (read here, not through the plugin)."""
    with open(WIN_SCRIPTS / (name + ".ps1"), encoding="utf-8", newline="") as f:
        return f.read()


# Every script the plugin sends is named by its text: the file's text exactly (KeyError otherwise).
SCRIPT_NAMES = {ps1(n): n for n in swap.PS_PARAMS}
PS_RESULTS = {"observe": OBSERVE_RESULT, "uninstall_info": UNINSTALL_INFO,
              "check_file": ps_result({"sha256": SHA}, changed=False), "verify": VERIFY_NEW,
              "copy_config": ps_result({"copied": True, "kept": True}), "set_aside": ps_result({"moved": True})}


class Recorder:
    """A fake _execute_module (and _transfer_file): records every call and replays the recorded
    result for it; ``fail`` maps a call's index to the result that replaces it."""

    def __init__(self, fail=None):
        self.fail, self.calls = fail or {}, []

    def __call__(self, module_name=None, module_args=None, task_vars=None, **kw):
        i = len(self.calls)
        self.calls.append((module_name, copy.deepcopy(module_args)))
        if i in self.fail:
            return copy.deepcopy(self.fail[i])
        if module_name == swap.WIN_POWERSHELL:
            name = SCRIPT_NAMES[module_args["script"]]
            return copy.deepcopy(PS_RESULTS.get(name, ps_result()))
        return copy.deepcopy({swap.WIN_GET_URL: GET_URL_OK}.get(module_name, TASK_OK))

    def put(self, src, dest):
        self.calls.append(("put_file", {"src": src, "dest": dest}))

    def named(self):
        return [(SCRIPT_NAMES[a["script"]], a["parameters"]) if m == swap.WIN_POWERSHELL else (m, a)
                for m, a in self.calls]


def task_args(**over):
    args = {k: v.get("default") for k, v in decisions.ARGUMENT_SPEC.items()}
    args.update(stamp=STAMP, run_id="run-7", os="auto", operation="reinstall", installer=URL, installer_sha256=SHA,
                installer_version="2.4.0")
    args.update(over)
    return args


TASK_VARS = {"ansible_connection": "winrm", "ansible_user": "Administrator", "ansible_password": SECRET}


def run(args, fail=None, check=False):
    rec = Recorder(fail)
    action = object.__new__(swap.ActionModule)
    action._execute_module = rec
    action._transfer_file = rec.put
    out = action.swap(args, TASK_VARS, check)
    assert SECRET not in json.dumps(rec.calls) + json.dumps(out)
    return out, rec


def task(label, path, arguments):
    name = f"DoAi-Desktop-Agent {label} (alice)"
    return [(swap.WIN_SCHEDULED_TASK, {"name": name, "state": "present", "enabled": True,
                                       "actions": [{"path": path, "arguments": arguments}], "username": "alice",
                                       "logon_type": "interactive_token", "run_level": "limited",
                                       "multiple_instances": 2}),
            ("run_task", {"TaskName": name, "TimeoutSeconds": 600})]


def marker(phase, to="2.4.0"):
    return ("marker", {"Root": ROOT_A, "Marker": ".doai-rollback.json", "Content": json.dumps(
        {"at": STAMP, "from": "2.4.1", "installer": SHA, "kept_as": KEPT, "operation": "reinstall", "phase": phase,
         "run_id": "run-7", "to": to, "user": "alice"}, sort_keys=True)})


START = [(swap.WIN_SCHEDULED_TASK, {
    "name": "DoAi-Desktop-Agent (alice)", "state": "present", "enabled": True,
    "actions": [{"path": ROOT_A + "\\app-current\\DoAi-Desktop-Agent.exe", "working_directory": ROOT_A + "\\app-current"}],
    "username": "alice", "logon_type": "interactive_token", "run_level": "limited", "multiple_instances": 2}),
    ("start_task", {"TaskName": "DoAi-Desktop-Agent (alice)"})]


def verify(version):
    return ("verify", {"Root": ROOT_A, "VersionFile": "VERSION", "ExeName": "DoAi-Desktop-Agent.exe",
                          "Expected": version, "TimeoutSeconds": 30, "ServiceName": ""})


def set_aside(src, dest):
    return ("set_aside", {"Root": ROOT_A, "Path": src, "NewName": dest, "Retries": 10, "DelaySeconds": 3})


HEAD = [
    ("observe", {"Users": [], "FolderName": "DoAi-Desktop-Agent", "LocalPath": "AppData\\Local",
                    "VersionFile": "VERSION", "ExeName": "DoAi-Desktop-Agent.exe", "Marker": ".doai-rollback.json",
                    "ServiceName": ""}),
    ("uninstall_info", {"Users": ["alice"], "UninstallKey": "DoAi-Desktop-Agent"}),
    ("stage_dir", {"Dir": "C:\\ProgramData\\doai-rollback\\installers\\" + STAMP + "-run-7"}),
    (swap.WIN_GET_URL, {"url": URL, "dest": STAGED, "force": True, "validate_certs": True, "checksum": SHA,
                        "checksum_algorithm": "sha256"}),
    ("check_file", {"Path": STAGED, "Sha256": SHA, "Publisher": ""}),
]


def test_windows_reinstall_exact_module_calls():
    out, rec = run(task_args())
    assert out["os"] == "windows" and out["changed"] is True and "failed" not in out
    assert out["staged"] == STAGED and out["installer"] == {"kind": "url", "name": STAGED.rsplit("\\", 1)[-1],
                                                            "sha256": SHA}
    assert rec.named() == HEAD + [
        ("stop", {"Root": ROOT_A, "TimeoutSeconds": 30}),
        ("copy_tree", {"Root": ROOT_A, "Source": "app-current", "Dest": KEPT}),
        marker("reinstalling"),
        *task("uninstall", UNINSTALLER, "/S /currentuser"),
        set_aside("app-current", "app-current-leftover-" + STAMP),
        *task("install", STAGED, "/S /currentuser"),
        ("copy_config", {"Root": ROOT_A, "Source": KEPT + "\\config.json", "Dest": "app-current\\config.json",
                            "KeepAs": "app-current\\config.json.doai-" + STAMP}),
        *START,
        verify("2.4.0"),
        marker("done"),
    ]
    user = out["users"][0]
    assert user["status"] == "changed" and (user["from"], user["to"]) == ("2.4.1", "2.4.0")


def test_a_local_installer_is_copied_over_the_connection_and_checked(tmp_path):
    f = tmp_path / "DoAi-Setup 2.4.0.exe"
    f.write_bytes(b"MZ")
    digest = hashlib.sha256(b"MZ").hexdigest()
    staged = f"C:\\ProgramData\\doai-rollback\\installers\\{STAMP}-run-7\\DoAi-Setup 2.4.0.exe"
    out, rec = run(task_args(installer=str(f), installer_sha256="", installer_args=["/S", "/D={root}\\app-current"]))
    named = rec.named()
    assert named[2:5] == [("stage_dir", {"Dir": "C:\\ProgramData\\doai-rollback\\installers\\" + STAMP + "-run-7"}),
                          ("put_file", {"src": str(f), "dest": staged}),
                          ("check_file", {"Path": staged, "Sha256": digest, "Publisher": ""})]
    install = [a for m, a in named if m == swap.WIN_SCHEDULED_TASK and a["name"].endswith(" install (alice)")]
    assert install[0]["actions"] == [{"path": staged, "arguments": f"/S /D={ROOT_A}\\app-current"}]
    assert out["users"][0]["status"] == "changed"


def test_a_service_agent_runs_the_staged_installer_here_and_no_uninstaller_from_a_users_hive():
    out, rec = run(task_args(agent_kind="service"))
    runs = [p for n, p in rec.named() if n == "run_process"]
    # no uninstaller from a user's hive runs with the WinRM account's rights: only the staged installer
    assert "uninstall_info" not in [n for n, _ in rec.named()]
    assert runs == [{"Path": STAGED, "Arguments": ["/S", "/currentuser"], "TimeoutSeconds": 600}]
    assert "installing without uninstalling" in out["users"][0]["reason"]
    assert not [a for m, a in rec.calls if m == swap.WIN_SCHEDULED_TASK and "install" in a["name"]]


def test_check_mode_observes_and_plans_only():
    out, rec = run(task_args(), check=True)
    assert [n for n, _ in rec.named()] == ["observe", "uninstall_info"]
    assert out["changed"] is False and out["users"][0]["status"] == "planned"


def test_a_checksum_mismatch_on_the_pc_refuses_before_anything_changes():
    out, rec = run(task_args(), fail={3: GET_URL_MISMATCH})
    assert [n for n, _ in rec.named()] == ["observe", "uninstall_info", "stage_dir", swap.WIN_GET_URL]
    user = out["users"][0]
    assert out["changed"] is False and "failed" not in out
    assert user["status"] == "refused" and "did not match" in user["reason"]


def test_already_installed_is_unchanged_with_no_staging():
    observe = ps_result([dict(OBSERVE_RESULT["result"][0], dirs={"app-current": {"version": "2.4.0", "config": True},
                                                                 "app-backup": None, "app-failed": None})],
                        changed=False)
    out, rec = run(task_args(), fail={0: observe})
    assert [n for n, _ in rec.named()] == ["observe", "uninstall_info"]
    assert out["changed"] is False and out["users"][0]["status"] == "unchanged"


def test_a_failing_installer_puts_the_kept_install_back():
    # 0-4 head, 5 stop, 6 copy, 7 marker, 8-9 uninstall, 10 set aside, 11 task, 12 install fails.
    out, rec = run(task_args(), fail={12: RUN_TASK_FAILED})
    assert rec.named()[11][0] == swap.WIN_SCHEDULED_TASK and rec.named()[12][0] == "run_task"
    assert rec.named()[13:] == [
        ("stop", {"Root": ROOT_A, "TimeoutSeconds": 30}),
        set_aside("app-current", "app-failed-reinstall-" + STAMP),
        ("rename", {"Root": ROOT_A, "Path": KEPT, "NewName": "app-current", "Retries": 10, "DelaySeconds": 3}),
        marker("put_back"),
        *START,
        verify("2.4.1"),
    ]
    user = out["users"][0]
    assert out["failed"] is True and user["status"] == "failed" and user["restore"] == "restored"
    assert "exited with 2" in user["error"]


def test_a_put_back_that_fails_reports_not_restored():
    locked = ps_result(error="Rename-Item: The process cannot access the file because it is being used by another process.")
    out, rec = run(task_args(), fail={12: RUN_TASK_FAILED, 15: locked})
    user = out["users"][0]
    assert user["restore"] == "not_restored" and len(rec.calls) == 16
    assert "being used by another process" in user["undo_error"]


def test_scripts_take_values_as_parameters_only():
    _, rec = run(task_args())
    for module, args in rec.calls:
        if module == swap.WIN_POWERSHELL:
            assert args["script"] in SCRIPT_NAMES and set(args) == {"script", "parameters"}


def test_the_reinstall_scripts_refuse_junctions_and_symbolic_links():
    """The POSIX module refuses symlinks; the Windows scripts that read or move inside the
    user's folder refuse reparse points (junctions, symbolic links) the same way."""
    for name in ("copy_tree", "set_aside", "stage_dir", "check_file"):
        script = ps1(name)
        assert "ReparsePoint" in script and "refused" in script, name
    assert "$Ansible.Failed = $true" in ps1("copy_tree").split("Copy-Item")[0]  # checked before the copy
    # the swap's scripts: the folder and every path they rename, copy or write, before they do
    for name, paths, action in (("rename", "@($Root, $src)", "Rename-Item"),
                                ("copy_config", "@($Root, (Split-Path -Parent $src), $src, (Split-Path -Parent $dst), $dst)",
                                 "Copy-Item"),
                                ("marker", '@($Root, $path, "$path.tmp")', "WriteAllText")):
        script = ps1(name)
        assert "function Assert-NoLink" in script and "throw" in script, name
        assert script.index("Assert-NoLink " + paths) < script.index(action), name
    observe = ps1("observe")
    assert observe.index("ReparsePoint") < observe.index("$dirs = [ordered]@{}") and "link = $true" in observe


def test_a_linked_agent_folder_is_refused_by_both_decisions():
    obs = dict(observed(), folder=False, link=True)
    for decide in (decisions.decide, decisions.decide_reinstall):
        plan = decide(obs, OPTS)
        assert plan["status"] == "refused" and plan["steps"] == []
        assert plan["reason"] == f"agent folder {ROOT_A} is a junction or symbolic link: not followed, touching nothing"


# ------------------------------------------------------------------------------------------
# POSIX (stand-in) module calls
# ------------------------------------------------------------------------------------------

def test_posix_calls():
    ctx = dict(task_args(), root="/pcs/pc01/Users/alice/AppData/Local/DoAi-Desktop-Agent", user="alice",
               staged="/var/tmp/doai-rollback/x/setup", os="posix", stamp=STAMP)
    steps = decisions.decide_reinstall(observed(uninstaller=["{current}/uninstall"]), OPTS)["steps"]
    calls = {s["op"]: swap.posix_reinstall_calls(s, ctx)[0][1] for s in steps}
    root = ctx["root"]
    assert calls["keep_copy"] == {"op": "copy_tree", "root": root, "src": "app-current", "dest": KEPT}
    assert calls["uninstall"] == {"op": "run", "root": root, "command": ["{current}/uninstall"], "timeout": 600}
    assert calls["set_aside"] == {"op": "rename", "root": root, "src": "app-current",
                                  "dest": "app-current-leftover-" + STAMP, "retries": 10, "delay": 3,
                                  "missing_ok": True}
    assert calls["install"] == {"op": "run", "root": root, "command": [ctx["staged"], "--folder", root], "timeout": 600}
    dest, stage = swap.stage_calls(swap.check_installer(URL, SHA), dict(ctx, posix_stage_dir="/var/tmp/doai-rollback/"))
    assert dest == f"/var/tmp/doai-rollback/{STAMP}-run-7/DoAi-Desktop-Agent-Setup-2.4.0.exe"
    assert stage == [(swap.POSIX_MODULE, {"op": "stage_dir", "root": "/var/tmp/doai-rollback/" + STAMP + "-run-7"}),
                     (swap.POSIX_GET_URL, {"url": URL, "dest": dest, "force": True, "mode": "0755",
                                           "validate_certs": True, "checksum": "sha256:" + SHA}),
                     (swap.POSIX_MODULE, {"op": "check_file", "root": "/var/tmp/doai-rollback/" + STAMP + "-run-7",
                                          "src": "DoAi-Desktop-Agent-Setup-2.4.0.exe", "sha256": SHA})]
    unsafe, _ = swap.stage_calls(swap.check_installer(URL, SHA), dict(ctx, run_id="x/../y"))
    assert unsafe == f"/var/tmp/doai-rollback/{STAMP}/DoAi-Desktop-Agent-Setup-2.4.0.exe"  # a run id not fit for a path: the stamp only


@pytest.mark.parametrize("url", [URL, "http://127.0.0.1:8080/setup.exe"])
def test_an_installer_url_without_its_sha256_is_refused(url):
    """Each PC downloads the URL and runs it as each user: never without a checksum (issue 19 item 5)."""
    with pytest.raises(ValueError, match=r"needs its sha256 \(--sha256"):
        swap.check_installer(url)
    with pytest.raises(ValueError, match="needs its sha256"):
        swap.check_installer(url, "")
    # the plugin refuses it too (a playbook run without the CLI), before any module call
    out, rec = run(task_args(installer=url, installer_sha256=""))
    assert out["failed"] is True and "needs its sha256" in out["msg"] and "nothing was changed" in out["msg"]
    assert rec.calls == []


def test_the_expected_publisher_is_checked_on_the_pc_with_the_sha256():
    out, rec = run(task_args(installer_publisher="DoAi Inc."))
    assert rec.named()[:5] == HEAD[:4] + [("check_file", {"Path": STAGED, "Sha256": SHA, "Publisher": "DoAi Inc."})]
    assert out["users"][0]["status"] == "changed"
    # without one, Publisher is "" (every parameter is always passed): the script checks no signature
    _, rec = run(task_args())
    assert rec.named()[4] == ("check_file", {"Path": STAGED, "Sha256": SHA, "Publisher": ""})


def test_the_check_file_script_checks_the_authenticode_signature():
    script = ps1("check_file")
    assert "\nparam([string]$Path, [string]$Sha256, [string]$Publisher)\n" in script
    sig = script.index("Get-AuthenticodeSignature -LiteralPath $Path")
    assert script.index("if ($Publisher) {") < sig
    # status must be Valid (unchanged since signing, chain trusted), then the signer's common name must match
    assert "SignatureStatus]::Valid" in script[sig:] and "SimpleName" in script[sig:]
    assert "$signer -ne $Publisher" in script[sig:]
    assert script[sig:].count("$Ansible.Failed = $true") == 2
    # the publisher is a parameter, never spliced into the script
    assert "DoAi Inc." not in script


@pytest.mark.parametrize("bad", ['Evil"; Remove-Item C:\\ -Recurse; "', "DoAi\nInc", " DoAi", "x" * 201])
def test_a_bad_publisher_is_refused_before_anything(bad):
    with pytest.raises(ValueError, match="installer publisher"):
        decisions.check_publisher(bad)
    out, rec = run(task_args(installer_publisher=bad))
    assert out["failed"] is True and "installer publisher" in out["msg"] and rec.calls == []


def test_the_cli_part_requires_the_sha256_of_a_url_and_passes_the_publisher():
    from types import SimpleNamespace

    from doai_ansible import parts as parts_registry
    from doai_ansible.errors import ValidationError

    part = parts_registry.get("agent")
    with pytest.raises(ValidationError, match=r"--installer: .*needs its sha256 \(--sha256"):
        part.request(action="reinstall", installer=URL)
    with pytest.raises(ValidationError, match="--publisher"):
        part.request(action="reinstall", installer=URL, sha256=SHA, publisher='a"b')
    with pytest.raises(ValidationError, match="belong to `agent reinstall`"):
        part.request(action="rollback", publisher="DoAi Inc.")
    req = part.request(action="reinstall", installer=URL, sha256=SHA, publisher="DoAi Inc.")
    xv = part._vars(SimpleNamespace(run_id="run-7"), req)
    assert xv["doai_agent_installer_publisher"] == "DoAi Inc." and xv["doai_agent_installer_sha256"] == SHA
    plain = part._vars(SimpleNamespace(run_id="run-7"), part.request(action="reinstall", installer=URL, sha256=SHA))
    assert "doai_agent_installer_publisher" not in plain
