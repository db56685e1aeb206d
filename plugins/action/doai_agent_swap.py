# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""doai_agent_swap: the desktop agent's rename-swap rollback (runbook section 4), per PC and user.

The executor of the agent's decisions: it observes every target user's agent folder, asks the
decisions what to do, and turns the steps into module calls per OS.

* The decisions are pure and live apart, in ``plugins/module_utils/doai_agent_decide.py``
  (``doai.rollback``'s module_utils once this is a collection): ``check_options``,
  ``decide(observed, options)`` (the plan: ``planned``/``unchanged``/``refused``, a reason, and
  the steps as data), ``undo_steps(done, prior)``, ``check_pin``, the reinstall's
  ``decide_reinstall`` / ``undo_reinstall``. They are imported below and re-exported from here.
* ``windows_calls(step, ctx)`` / ``posix_calls(step, ctx)`` - pure: the module calls of one step
  (module name, arguments). Windows: ``ansible.windows`` modules, named as strings (the collection
  is not imported here); the PowerShell scripts are the role's files/windows/*.ps1, and every
  value reaches one as a parameter (``PS_PARAMS``), never spliced into its text. POSIX (the Linux stand-in PCs): this role's ``doai_agent_posix`` module.
* ``ActionModule`` - observes every target user of the PC in one call, decides, and unless in
  check mode executes the steps; after a failed step it executes the undo steps and reports
  ``restored`` or ``not_restored``.

Nothing is ever deleted: an ``app-failed`` from an earlier incident is kept as
``app-failed-<stamp>``, a ``config.json`` that a copy replaces is kept as
``config.json.doai-<stamp>``, and an undo moves a copied file aside instead of removing it. The
one exception: the undo of a run (``undo_config``) removes the copy of config.json that run made
when it is still byte for byte the file it was copied from, which stays.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import re
import sys
import time

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase


# The decisions (pure): plugins/module_utils/doai_agent_decide.py of the same tree as this
# plugin - the file of that name in the first ancestor that holds one (the collection's root,
# installed or the repository; the wheel's _content), loaded once per process. The same tree
# first: a doai.rollback installed elsewhere on the collections path is not mixed in.
DECIDE_FILE = ("plugins", "module_utils", "doai_agent_decide.py")
DECIDE_MODULE = "doai_agent_decide"


def _load_decisions():
    d = os.path.dirname(os.path.abspath(__file__))
    while True:
        path = os.path.join(d, *DECIDE_FILE)
        if os.path.isfile(path):
            break
        parent = os.path.dirname(d)
        if parent == d:
            raise ImportError("doai_agent_swap: the agent's decisions (%s) are not found above %s"
                              % ("/".join(DECIDE_FILE), os.path.dirname(os.path.abspath(__file__))))
        d = parent
    cached = sys.modules.get(DECIDE_MODULE)
    if cached is not None and getattr(cached, "__file__", None) == path:
        return cached
    spec = importlib.util.spec_from_file_location(DECIDE_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if cached is None:  # another tree's copy (a test's) is kept where it is
        sys.modules[DECIDE_MODULE] = module
    return module


decisions = _load_decisions()

# Re-exported: the decisions are also read from this module (doai_ansible, the tests).
ARGUMENT_SPEC = decisions.ARGUMENT_SPEC
BACKUP = decisions.BACKUP
CONFIG = decisions.CONFIG
CURRENT = decisions.CURRENT
DECIDE_DEFAULTS = decisions.DECIDE_DEFAULTS
FAILED = decisions.FAILED
KEPT_AS_RE = decisions.KEPT_AS_RE
KEPT_CONFIG_RE = decisions.KEPT_CONFIG_RE
MARKER = decisions.MARKER
REINSTALL_DEFAULTS = decisions.REINSTALL_DEFAULTS
REPLACED = decisions.REPLACED
REPLACED_RE = decisions.REPLACED_RE
RUN_ID_RE = decisions.RUN_ID_RE
STAMP_RE = decisions.STAMP_RE
_leaf = decisions._leaf
check_options = decisions.check_options
check_pin = decisions.check_pin
check_publisher = decisions.check_publisher
check_reinstall_options = decisions.check_reinstall_options
config_note = decisions.config_note
installer_form = decisions.installer_form
decide = decisions.decide
decide_reinstall = decisions.decide_reinstall
parse_uninstall_string = decisions.parse_uninstall_string
put_back_reinstall = decisions.put_back_reinstall
undo_reinstall = decisions.undo_reinstall
undo_steps = decisions.undo_steps


# --------------------------------------------------------------------------------------------
# Module calls per OS (pure)
# --------------------------------------------------------------------------------------------

WIN_POWERSHELL = "ansible.windows.win_powershell"
WIN_SERVICE = "ansible.windows.win_service"
WIN_SCHEDULED_TASK = "community.windows.win_scheduled_task"
POSIX_MODULE = "doai.rollback.doai_agent_posix"

# The PowerShell scripts are files of the role: roles/doai_agent/files/windows/<name>.ps1, each
# a literal script whose param() block takes every value (win_powershell's `parameters`, never
# spliced into the text). PS_PARAMS is the one list of what each script is passed: _ps refuses
# any other set of names, and tests/unit/test_powershell.py checks it against every file's
# param() block and parses every .ps1 of the repository with the tree-sitter PowerShell grammar.
PS_PARAMS = {
    # the swap
    "observe": ("Users", "FolderName", "LocalPath", "VersionFile", "ExeName", "Marker", "ServiceName"),
    "stop": ("Root", "TimeoutSeconds"),
    "rename": ("Root", "Path", "NewName", "Retries", "DelaySeconds"),
    "copy_config": ("Root", "Source", "Dest", "KeepAs"),
    "undo_config": ("Root", "Copy", "Dest", "Kept", "KeepAs"),
    "move": ("Root", "Path", "Dest"),
    "marker": ("Root", "Marker", "Content"),
    "start_task": ("TaskName",),
    "reach": ("Host_", "Port", "TimeoutSeconds"),
    "verify": ("Root", "VersionFile", "ExeName", "Expected", "TimeoutSeconds", "ServiceName"),
    # the reinstall
    "uninstall_info": ("Users", "UninstallKey"),
    "stage_dir": ("Dir",),
    "check_file": ("Path", "Sha256", "Publisher"),
    "copy_tree": ("Root", "Source", "Dest"),
    "set_aside": ("Root", "Path", "NewName", "Retries", "DelaySeconds"),
    "run_task": ("TaskName", "TimeoutSeconds"),
    "run_process": ("Path", "Arguments", "TimeoutSeconds"),
}
SCRIPTS_SUBDIR = ("roles", "doai_agent", "files", "windows")
_SCRIPTS = {}  # name -> text: each file read once per process


def scripts_dir():
    """roles/doai_agent/files/windows of the content this plugin ships with: the first ancestor
    of the plugin's directory that holds it (the repository or the wheel's _content, from
    roles/doai_agent/action_plugins/; a collection's root, from plugins/action/). Not the
    task's search path: a playbook's own files/windows/ never stands in for the role's."""
    d = os.path.dirname(os.path.abspath(__file__))
    while True:
        found = os.path.join(d, *SCRIPTS_SUBDIR)
        if os.path.isdir(found):
            return found
        parent = os.path.dirname(d)
        if parent == d:
            raise AnsibleError("doai_agent_swap: the PowerShell scripts (%s) are not found above %s"
                               % ("/".join(SCRIPTS_SUBDIR), os.path.dirname(os.path.abspath(__file__))))
        d = parent


def script_text(name):
    """The text of ``<name>.ps1``, as the file holds it (read once, then cached)."""
    if name not in PS_PARAMS:
        raise AnsibleError("doai_agent_swap: no PowerShell script %r" % name)
    text = _SCRIPTS.get(name)
    if text is None:
        path = os.path.join(scripts_dir(), name + ".ps1")
        try:
            with open(path, encoding="utf-8", newline="") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise AnsibleError("doai_agent_swap: the PowerShell script %s cannot be read: %s" % (path, exc))
        _SCRIPTS[name] = text
    return text


def load_scripts():
    """Every script read, before anything is observed on a Windows PC: a missing or unreadable
    file is an error then, not after the agent was stopped."""
    for name in PS_PARAMS:
        script_text(name)


def _ps(name, **parameters):
    """The win_powershell call of ``<name>.ps1`` with ``parameters``: exactly the names in
    PS_PARAMS[name] (a name its param() block does not have would fail on the PC, after the
    steps before it ran; one left out would be $null there)."""
    want = PS_PARAMS.get(name)
    if want is None or set(parameters) != set(want):
        raise AnsibleError("doai_agent_swap: script %r called with parameters %s, it takes %s"
                           % (name, sorted(parameters), sorted(want or ())))
    return (WIN_POWERSHELL, {"script": script_text(name), "parameters": parameters})


def _win(rel):
    return rel.replace("/", "\\")


def windows_calls(step, ctx):
    """The ``(module, args)`` calls of one step on a Windows PC. ``ctx``: the task's options plus
    ``root`` and ``user``."""
    op, root = step["op"], ctx["root"]
    service = ctx["agent_kind"] == "service"
    if op == "stop":
        if service:
            return [(WIN_SERVICE, {"name": ctx["service_name"], "state": "stopped"})]
        return [_ps("stop", Root=root, TimeoutSeconds=step["timeout"])]
    if op == "rename":
        return [_ps("rename", Root=root, Path=_win(step["src"]), NewName=_leaf(step["dest"]),
                    Retries=step["retries"], DelaySeconds=step["delay"])]
    if op == "copy_config":
        return [_ps("copy_config", Root=root, Source=_win(step["src"]), Dest=_win(step["dest"]),
                    KeepAs=_win(step["keep_as"]))]
    if op == "undo_config":
        return [_ps("undo_config", Root=root, Copy=_win(step["src"]), Dest=_win(step["dest"]),
                    Kept=_win(step["kept"]), KeepAs=_win(step["keep_as"]))]
    if op == "move":
        return [_ps("move", Root=root, Path=_win(step["src"]), Dest=_win(step["dest"]))]
    if op == "marker":
        return [_ps("marker", Root=root, Marker=MARKER, Content=_json(step["content"]))]
    if op == "start":
        if service:
            return [(WIN_SERVICE, {"name": ctx["service_name"], "state": "started"})]
        task = "%s (%s)" % (ctx["task_name"], ctx["user"])
        exe = "%s\\%s\\%s" % (root, CURRENT, ctx["exe_name"])
        return [(WIN_SCHEDULED_TASK, {"name": task, "state": "present", "enabled": True,
                                      "actions": [{"path": exe, "working_directory": "%s\\%s" % (root, CURRENT)}],
                                      "username": ctx["user"], "logon_type": "interactive_token",
                                      "run_level": "limited", "multiple_instances": 2}),
                _ps("start_task", TaskName=task)]
    if op == "reach":
        return [_ps("reach", Host_=step["host"], Port=step["port"], TimeoutSeconds=step["timeout"])]
    if op == "verify":
        return [_ps("verify", Root=root, VersionFile=ctx["version_file"], ExeName=ctx["exe_name"],
                    Expected=step["version"] or "", TimeoutSeconds=step["timeout"],
                    ServiceName=ctx["service_name"] if service else "")]
    raise AnsibleError("doai_agent_swap: unknown step %r" % op)


def windows_observe_call(ctx):
    return _ps("observe", Users=list(ctx["users"]), FolderName=ctx["folder_name"],
               LocalPath=ctx["windows_local_path"], VersionFile=ctx["version_file"], ExeName=ctx["exe_name"],
               Marker=MARKER, ServiceName=ctx["service_name"] if ctx["agent_kind"] == "service" else "")


def posix_calls(step, ctx):
    args = {"op": step["op"], "root": ctx["root"]}
    op = step["op"]
    if op == "stop":
        args.update(pid_file=ctx["pid_file"], timeout=step["timeout"])
    elif op == "rename":
        args.update(src=step["src"], dest=step["dest"], retries=step["retries"], delay=step["delay"])
    elif op == "copy_config":
        args.update(src=step["src"], dest=step["dest"], keep_as=step["keep_as"])
    elif op == "undo_config":
        args.update(src=step["src"], dest=step["dest"], kept=step["kept"], keep_as=step["keep_as"])
    elif op == "move":  # a rename from one app directory into another
        args.update(op="rename", src=step["src"], dest=step["dest"], retries=1, delay=0)
    elif op == "reach":
        args.update(host=step["host"], port=step["port"], timeout=step["timeout"])
    elif op == "marker":
        args.update(marker=MARKER, content=step["content"])
    elif op == "start":
        args.update(pid_file=ctx["pid_file"], command=list(ctx["posix_start_command"]))
    elif op == "verify":
        args.update(pid_file=ctx["pid_file"], version_file=ctx["version_file"], expected=step["version"] or "",
                    timeout=step["timeout"])
    else:
        raise AnsibleError("doai_agent_swap: unknown step %r" % op)
    return [(POSIX_MODULE, args)]


def posix_observe_call(ctx):
    args = {"op": "observe", "users": list(ctx["users"]), "profiles_root": ctx["posix_profiles_root"],
            "local_path": ctx["posix_local_path"], "folder_name": ctx["folder_name"],
            "version_file": ctx["version_file"], "pid_file": ctx["pid_file"], "marker": MARKER}
    if ctx.get("read_lines", 0) > 0:  # the checklist's log lines, in the same call
        args.update(lines=ctx["read_lines"], log_file=ctx["read_log_file"])
    return (POSIX_MODULE, args)


def _error_text(record):
    """win_powershell's error records: the text Write-Error was given, else the exception's message."""
    if not isinstance(record, dict):
        return str(record)
    return str(record.get("output") or (record.get("exception") or {}).get("message") or record)


def _json(value):
    import json
    return json.dumps(value, sort_keys=True)


def target_os(option, task_vars):
    if option != "auto":
        return option
    tv = task_vars or {}
    if tv.get("ansible_connection") in ("winrm", "psrp", "ansible.builtin.winrm", "ansible.builtin.psrp") \
            or tv.get("ansible_os_family") == "Windows" or tv.get("ansible_shell_type") == "powershell":
        return "windows"
    return "posix"


# --------------------------------------------------------------------------------------------
# The reinstall: the installer read here, its module calls per OS (the decisions: doai_agent_decide)
# --------------------------------------------------------------------------------------------

def check_installer(installer, sha256=""):
    """What the installer is: ``{"kind": "url"|"file", "value", "name", "sha256", "id"}``, or a
    ``ValueError`` that says what is wrong. A file is read here, on the controller (its sha256
    computed and, when given, compared); a URL is checked by its text (``installer_form``).
    Nothing is contacted."""
    form = installer_form(installer, sha256)
    if form["kind"] == "url":
        return form
    if not os.path.isfile(installer):
        raise ValueError("installer %s does not exist or is not a file" % installer)
    h = hashlib.sha256()
    try:
        with open(installer, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise ValueError("installer %s cannot be read: %s" % (installer, exc.strerror))
    if form["sha256"] and h.hexdigest() != form["sha256"]:
        raise ValueError("installer %s has sha256 %s, not the %s expected" % (installer, h.hexdigest(), form["sha256"]))
    return dict(form, sha256=h.hexdigest(), id=h.hexdigest())


# The reinstall's Windows scripts are files/windows/*.ps1 as well (PS_PARAMS above).

WIN_GET_URL = "ansible.windows.win_get_url"
POSIX_GET_URL = "ansible.builtin.get_url"


def _win_args(args):
    """A task's argument string: each switch as given, quoted when it holds a space (switches
    with quotes or control characters are refused by check_reinstall_options)."""
    return " ".join('"%s"' % a if " " in a else a for a in args)


def _subst(args, ctx):
    return [a.replace("{root}", ctx["root"]) for a in args]


def _run_as_user(label, path, args, timeout, ctx):
    """Windows: run ``path args`` as the user (scheduled task) or, for a service agent, here."""
    if ctx["agent_kind"] == "service":
        return [_ps("run_process", Path=path, Arguments=list(args), TimeoutSeconds=timeout)]
    task = "%s %s (%s)" % (ctx["task_name"], label, ctx["user"])
    return [(WIN_SCHEDULED_TASK, {"name": task, "state": "present", "enabled": True,
                                  "actions": [{"path": path, "arguments": _win_args(args)}],
                                  "username": ctx["user"], "logon_type": "interactive_token",
                                  "run_level": "limited", "multiple_instances": 2}),
            _ps("run_task", TaskName=task, TimeoutSeconds=timeout)]


def windows_reinstall_calls(step, ctx):
    op, root = step["op"], ctx["root"]
    if op == "keep_copy":
        return [_ps("copy_tree", Root=root, Source=_win(step["src"]), Dest=_win(step["dest"]))]
    if op == "set_aside":
        return [_ps("set_aside", Root=root, Path=_win(step["src"]), NewName=_leaf(step["dest"]),
                    Retries=step["retries"], DelaySeconds=step["delay"])]
    if op == "uninstall":
        return _run_as_user("uninstall", step["path"], _subst(ctx["uninstall_args"], ctx), step["timeout"], ctx)
    if op == "install":
        return _run_as_user("install", ctx["staged"], _subst(ctx["installer_args"], ctx), step["timeout"], ctx)
    return windows_calls(step, ctx)


def posix_reinstall_calls(step, ctx):
    op = step["op"]
    args = {"op": op, "root": ctx["root"]}
    if op == "keep_copy":
        args.update(op="copy_tree", src=step["src"], dest=step["dest"])
    elif op == "set_aside":
        args.update(op="rename", src=step["src"], dest=step["dest"], retries=step["retries"], delay=step["delay"],
                    missing_ok=True)
    elif op == "uninstall":
        args.update(op="run", command=_subst(list(ctx["posix_uninstall_command"]), ctx), timeout=step["timeout"])
    elif op == "install":
        args.update(op="run", command=[ctx["staged"]] + _subst(list(ctx["posix_installer_args"]), ctx),
                    timeout=step["timeout"])
    else:
        return posix_calls(step, ctx)
    return [(POSIX_MODULE, args)]


def stage_calls(installer, ctx):
    """Where the installer goes on the PC, and the calls that put it there and check it (before
    any folder is touched). A ``("put_file", {"src", "dest"})`` entry is the controller's copy
    over the connection (ActionBase._transfer_file), not a module. The directory is the run's
    own (``<stamp>-<run id>``): one that exists already is refused."""
    run_id = ctx.get("run_id") or ""
    sub = "%s-%s" % (ctx["stamp"], run_id) if re.match(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z", run_id) else ctx["stamp"]
    if ctx["os"] == "windows":
        d = "%s\\%s" % (ctx["windows_stage_dir"].rstrip("\\"), sub)
        dest = "%s\\%s" % (d, installer["name"])
        calls = [_ps("stage_dir", Dir=d)]
        if installer["kind"] == "url":
            get = {"url": installer["value"], "dest": dest, "force": True, "validate_certs": True}
            if installer["sha256"]:
                get.update(checksum=installer["sha256"], checksum_algorithm="sha256")
            calls.append((WIN_GET_URL, get))
        else:
            calls.append(("put_file", {"src": installer["value"], "dest": dest}))
        # Publisher "": no signature is checked (as when the parameter is not passed).
        calls.append(_ps("check_file", Path=dest, Sha256=installer["sha256"],
                         Publisher=ctx.get("installer_publisher") or ""))
        return dest, calls
    d = "%s/%s" % (ctx["posix_stage_dir"].rstrip("/"), sub)
    dest = "%s/%s" % (d, installer["name"])
    calls = [(POSIX_MODULE, {"op": "stage_dir", "root": d})]
    if installer["kind"] == "url":
        get = {"url": installer["value"], "dest": dest, "force": True, "mode": "0755", "validate_certs": True}
        if installer["sha256"]:
            get["checksum"] = "sha256:" + installer["sha256"]
        calls.append((POSIX_GET_URL, get))
    else:
        calls.append(("put_file", {"src": installer["value"], "dest": dest}))
    calls.append((POSIX_MODULE, {"op": "check_file", "root": d, "src": installer["name"],
                                 "sha256": installer["sha256"]}))
    return dest, calls


# --------------------------------------------------------------------------------------------
# The action plugin
# --------------------------------------------------------------------------------------------

class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        result.update(self.swap(args, task_vars or {}, bool(self._task.check_mode)))
        return result

    def _call(self, module, args, task_vars, calls):
        calls.append(module)
        out = self._execute_module(module_name=module, module_args=copy.deepcopy(args), task_vars=task_vars)
        return out

    def _run_step(self, step, ctx, task_vars, calls):
        """Execute one step (one or two module calls); return (ok, message, module result)."""
        if ctx.get("operation") == "reinstall":
            maker = windows_reinstall_calls if ctx["os"] == "windows" else posix_reinstall_calls
        else:
            maker = windows_calls if ctx["os"] == "windows" else posix_calls
        return self._run_calls(maker(step, ctx), task_vars, calls)

    def _run_batches(self, jobs, task_vars, calls):
        """The steps of several users of a POSIX PC in one module call (op=batches: each user's
        steps in order, stopping at their first failure, as _run_step one by one would; the
        users side by side, each their own folder and agent): one round trip for the PC instead
        of one per step and user, and the users' waits (stop, verify's settle) overlap. ``jobs``
        is a list of (steps, user ctx); returns, per job, one (ok, message, result) per step that
        ran, or None when what ran is not known here (the call failed without results: the
        connection lost)."""
        batches = []
        for steps, ctx in jobs:
            batch = []
            for step in steps:
                pairs = posix_calls(step, ctx)
                if len(pairs) != 1 or pairs[0][0] != POSIX_MODULE:
                    raise AnsibleError("doai_agent_swap: step %r cannot be batched" % step.get("op"))
                batch.append(pairs[0][1])
            batches.append(batch)
        out = self._call(POSIX_MODULE, {"op": "batches", "batches": batches}, task_vars, calls)
        got = out.get("batches")
        if not isinstance(got, list) or len(got) != len(jobs):
            if out.get("failed") and not out.get("unreachable") and "nothing was run" in str(out.get("msg")):
                return [[(False, "%s: %s" % (POSIX_MODULE, out.get("msg")), out)]] * len(jobs)
            return [None] * len(jobs)
        done_all = []
        for one in got:
            results = one.get("results") if isinstance(one, dict) else None
            if not isinstance(results, list):
                done_all.append(None)
                continue
            done = []
            for res in results:
                if res.get("failed"):
                    done.append((False, "%s: %s" % (POSIX_MODULE, res.get("msg") or "failed"), res))
                    break
                done.append((True, "", res))
            done_all.append(done)
        return done_all

    def _run_calls(self, pairs, task_vars, calls):
        out = {}
        for module, args in pairs:
            if module == "put_file":  # the controller's copy of a local installer, over the connection
                calls.append(module)
                try:
                    self._transfer_file(args["src"], args["dest"])
                except Exception as exc:  # the connection's own errors: any kind
                    return False, "copying the installer to the PC failed: %s" % exc, {}
                continue
            out = self._call(module, args, task_vars, calls)
            if out.get("failed") or out.get("unreachable"):
                msg = out.get("msg") or "; ".join(_error_text(e) for e in out.get("error") or []) or "failed"
                return False, "%s: %s" % (module, msg), out
        return True, "", out

    def _observe(self, ctx, task_vars, calls):
        if ctx["os"] == "windows":
            module, margs = windows_observe_call(ctx)
        else:
            module, margs = posix_observe_call(ctx)
        seen = self._call(module, margs, task_vars, calls)
        if "checklist" in seen:
            ctx["checklist"] = seen["checklist"]
        if seen.get("failed"):
            return None, {"failed": True, "msg": "observe failed: %s" % (seen.get("msg") or seen.get("error")),
                          "observe": seen}
        observed = (seen.get("result") if ctx["os"] == "windows" else seen.get("users")) or []
        if ctx["operation"] != "reinstall":
            return observed, None
        if ctx["os"] == "posix":
            for obs in observed:
                obs["uninstaller"] = list(ctx["posix_uninstall_command"])
            return observed, None
        users = [o.get("user") for o in observed if o.get("profile") is not False and o.get("folder")]
        if ctx["agent_kind"] == "service":
            # A path from a user's own hive never runs with the WinRM account's rights.
            for obs in observed:
                obs["uninstaller"] = None
            return observed, None
        if users:
            info = self._call(*_ps("uninstall_info", Users=users, UninstallKey=ctx["uninstall_key"]),
                              task_vars=task_vars, calls=calls)
            if info.get("failed"):
                return None, {"failed": True, "msg": "reading the uninstall entries failed: %s" % (
                    info.get("msg") or "; ".join(_error_text(e) for e in info.get("error") or []))}
            for obs in observed:
                entry = (info.get("result") or {}).get(obs.get("user")) or {}
                text = entry.get("uninstall_string")
                obs["uninstaller"] = (parse_uninstall_string(text) or {"unparsed": text}) if text else None
        return observed, None

    def swap(self, args, task_vars, check_mode):
        """The rollback (rename swap) or, with ``operation: reinstall``, the reinstall."""
        bad = check_options(args)
        reinstall = args["operation"] == "reinstall"
        installer = None
        if reinstall:
            # The options checked the installer's name; the file itself is read here.
            try:
                installer = check_installer(args["installer"], args["installer_sha256"])
            except ValueError as exc:
                if str(exc) not in bad:
                    bad.append(str(exc))
        if bad:
            return {"failed": True, "msg": "; ".join(bad) + "; nothing was changed", "invalid_options": bad}
        ctx = dict(args)
        ctx["os"] = target_os(args["os"], task_vars)
        if ctx["os"] == "windows":
            try:
                load_scripts()
            except AnsibleError as exc:
                return {"failed": True, "msg": "%s; nothing was changed" % exc}
        stamp = args["stamp"] or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        ctx["stamp"] = stamp
        opts = {k: args[k] for k in DECIDE_DEFAULTS if k in args}
        opts["stamp"] = stamp
        if reinstall:
            opts.update(installer_id=installer["id"], installer_version=args["installer_version"],
                        install_timeout=args["install_timeout"])
        calls = []
        observed, failure = self._observe(ctx, task_vars, calls)
        checklist = {"checklist": ctx["checklist"]} if "checklist" in ctx else {}
        if failure:
            return dict(failure, **checklist)
        users, plans = [], []
        for obs in observed:
            if obs.get("profile") is False:
                users.append({"user": obs.get("user"), "status": "refused",
                              "reason": "no user profile %s on this PC" % obs.get("user"), "steps": []})
                plans.append(None)
                continue
            plan = decide_reinstall(obs, opts) if reinstall else decide(obs, opts)
            if not check_mode:
                plan = check_pin(plan, args["pins"])
            entry = {k: plan[k] for k in ("user", "root", "status", "reason", "from", "to")}
            # What the folders hold now and the marker's history: what status and plans show.
            entry.update({k: plan[k] for k in ("live", "history") if k in plan})
            entry["steps"] = plan["steps"]
            users.append(entry)
            plans.append(plan)
        out = {"changed": False, "os": ctx["os"], "stamp": stamp, "users": users, "module_calls": calls}
        out.update(checklist)
        if reinstall:
            out["installer"] = {k: installer[k] for k in ("kind", "name", "sha256")}
        if check_mode:
            return out
        if reinstall and any(p and p["status"] == "planned" and any(s["op"] == "install" for s in p["steps"])
                             for p in plans):
            # Put the installer on the PC and check it before any folder is touched.
            ctx["staged"], stage = stage_calls(installer, ctx)
            ok, msg, _ = self._run_calls(stage, task_vars, calls)
            out["staged"] = ctx["staged"] if ok else None
            if not ok:
                for entry, plan in zip(users, plans):
                    if plan and plan["status"] == "planned" and any(s["op"] == "install" for s in plan["steps"]):
                        entry.update(status="refused", reason="the installer could not be put on the PC and "
                                                              "checked: %s" % msg)
                        plan["status"] = "refused"
        changed = failed = False
        # On a POSIX PC the swap's or undo's steps of every user go in one call, the users side
        # by side (a reinstall's marker needs the version its install left, so it goes step by
        # step, as every Windows step does).
        batched_of = {}
        if ctx["os"] == "posix" and not reinstall:
            todo = [(i, plan["steps"], dict(ctx, root=obs["root"], user=obs["user"]))
                    for i, (plan, obs) in enumerate(zip(plans, observed))
                    if plan is not None and plan["status"] == "planned" and plan["steps"]]
            if todo:
                got = self._run_batches([(steps, uctx) for _, steps, uctx in todo], task_vars, calls)
                batched_of = {i: g for (i, _, _), g in zip(todo, got)}
        for index_, (entry, plan, obs) in enumerate(zip(users, plans, observed)):
            if plan is None or plan["status"] != "planned":
                continue
            uctx = dict(ctx, root=obs["root"], user=obs["user"])
            done, installed = [], None
            batched = batched_of.get(index_, False)
            if batched is None:
                entry.update(status="failed", error="the connection was lost while the steps ran: which of them "
                             "ran is not known here; nothing was put back (the next run reads the folders as "
                             "they are)", restored=False, restore="not_restored", done=[])
                failed = True
                continue
            for index, step in enumerate(plan["steps"]):
                if step["op"] == "marker" and reinstall and step["content"].get("to") is None and installed:
                    step = dict(step, content=dict(step["content"], to=installed))
                if batched:
                    ok, msg, res = batched[index]
                else:
                    ok, msg, res = self._run_step(step, uctx, task_vars, calls)
                res_ = (res.get("result") if ctx["os"] == "windows" else res) or {}
                if step["op"] == "undo_config" and isinstance(res_, dict):
                    # What it did, for a put-back (also the moves done before a failure).
                    step = dict(step, settings=res_.get("settings"), kept_as=res_.get("kept_as"),
                                actions=[a for a in res_.get("actions") or [] if isinstance(a, dict)])
                    if step["actions"] and not ok:
                        done.append(step)
                if not ok:
                    entry.update(status="failed", failed_step=step, error=msg)
                    break
                if step["op"] == "copy_config":
                    step = dict(step, kept=bool(res_.get("kept")))
                if step["op"] == "undo_config":
                    entry["config"] = config_note(step)
                if step["op"] == "verify":
                    installed = ((res.get("result") if ctx["os"] == "windows" else res) or {}).get("version")
                done.append(step)
            entry["done"] = done
            changed = changed or bool(done)
            if entry["status"] == "failed":
                failed = True
                if reinstall:
                    undo = undo_reinstall(done, stamp, opts, plan["from"], entry.get("failed_step"))
                else:
                    undo = undo_steps(done, plan["prior"], stamp, args["verify_timeout"], plan["from"])
                entry["undo"], entry["undone"] = undo, []
                restored = True
                for step in undo:
                    ok, msg, _ = self._run_step(step, uctx, task_vars, calls)
                    if not ok:
                        restored = False
                        entry["undo_error"] = msg
                        break
                    entry["undone"].append(step)
                entry["restored"] = restored
                entry["restore"] = "restored" if restored else "not_restored"
            else:
                entry["status"] = "changed"
                if reinstall and installed:
                    entry["to"] = installed
        out["changed"] = changed
        if failed:
            out["failed"] = True
            out["msg"] = "; ".join("%s: %s (%s)" % (u["user"], u.get("error"), u.get("restore"))
                                   for u in users if u["status"] == "failed")
        return out
