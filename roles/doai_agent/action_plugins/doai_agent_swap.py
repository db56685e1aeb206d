# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""doai_agent_swap: the desktop agent's rename-swap rollback (runbook section 4), per PC and user.

The one place on the controller that decides what to do for an observed state of a user's
agent folder, and the one place that turns those decisions into module calls per OS:

* ``decide(observed, options)`` - pure: the plan (``planned``/``unchanged``/``refused``, a reason,
  and the steps as data) for one user's folder.
* ``undo_steps(done, prior)`` - pure: the steps that put back what ``done`` (and, for a resumed
  swap, what an earlier run did: ``prior``) changed.
* ``windows_calls(step, ctx)`` / ``posix_calls(step, ctx)`` - pure: the module calls of one step
  (module name, arguments). Windows: ``ansible.windows`` modules, named as strings (the collection
  is not imported here); every value reaches a PowerShell script as a parameter, never spliced
  into its text. POSIX (the Linux stand-in PCs): this role's ``doai_agent_posix`` module.
* ``ActionModule`` - observes every target user of the PC in one call, decides, and unless in
  check mode executes the steps; after a failed step it executes the undo steps and reports
  ``restored`` or ``not_restored``.

Nothing is ever deleted: an ``app-failed`` from an earlier incident is kept as
``app-failed-<stamp>``, a ``config.json`` that a copy replaces is kept as
``config.json.doai-<stamp>``, and an undo moves a copied file aside instead of removing it.
"""

from __future__ import annotations

import copy
import re
import time

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

CURRENT, BACKUP, FAILED = "app-current", "app-backup", "app-failed"
MARKER = ".doai-rollback.json"
CONFIG = "config.json"

ARGUMENT_SPEC = dict(
    os=dict(type="str", default="auto", choices=["auto", "windows", "posix"]),
    users=dict(type="list", elements="str", default=[]),
    folder_name=dict(type="str", default="DoAi-Desktop-Agent"),
    windows_local_path=dict(type="str", default="AppData\\Local"),
    posix_profiles_root=dict(type="str", default="/home"),
    posix_local_path=dict(type="str", default=".local/share"),
    agent_kind=dict(type="str", default="process", choices=["process", "service"]),
    service_name=dict(type="str", default="DoAiDesktopAgent"),
    exe_name=dict(type="str", default="DoAi-Desktop-Agent.exe"),
    task_name=dict(type="str", default="DoAi-Desktop-Agent"),
    version_file=dict(type="str", default="VERSION"),
    posix_start_command=dict(type="list", elements="str", default=["{current}/agent"]),
    pid_file=dict(type="str", default="agent.pid"),
    stop_timeout=dict(type="int", default=30),
    rename_retries=dict(type="int", default=10),
    rename_delay=dict(type="int", default=3),
    verify_timeout=dict(type="int", default=30),
    half_finished=dict(type="str", default="resume", choices=["resume", "put_back"]),
    config_required=dict(type="bool", default=False),
    run_id=dict(type="str", default=""),
    stamp=dict(type="str", default=""),
    # Verify also that the PC reaches the backend's Socket.IO port (host empty: not checked).
    socketio_host=dict(type="str", default=""),
    socketio_port=dict(type="int", default=3001),
    socketio_timeout=dict(type="int", default=5),
)

DECIDE_DEFAULTS = dict({k: ARGUMENT_SPEC[k]["default"] for k in (
    "run_id", "half_finished", "config_required", "stop_timeout", "rename_retries", "rename_delay", "verify_timeout",
    "socketio_host", "socketio_port", "socketio_timeout")}, stamp="19700101T000000Z")
KEPT_AS_RE = re.compile(r"app-failed-\d{8}T\d{6}Z\Z")
_LEAF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}\Z")


def check_options(args):
    """Every option's value, before anything is observed: a list of what is wrong, naming it."""
    bad = []
    for name, low in (("stop_timeout", 1), ("rename_retries", 1), ("rename_delay", 0), ("verify_timeout", 1),
                      ("socketio_timeout", 1)):
        if args[name] < low:
            bad.append("%s must be at least %d, not %r" % (name, low, args[name]))
    if not 1 <= args["socketio_port"] <= 65535:
        bad.append("socketio_port %r is not a port" % args["socketio_port"])
    for name in ("folder_name", "version_file", "pid_file", "exe_name", "service_name", "task_name"):
        if not _LEAF_RE.match(args[name] or ""):
            bad.append("%s %r must be a plain name" % (name, args[name]))
    bad += ["user %r is not a user name" % u for u in args["users"] if not _LEAF_RE.match(u)]
    if not args["posix_start_command"]:
        bad.append("posix_start_command is empty")
    if args["socketio_host"] and not re.match(r"[A-Za-z0-9.:\[\]-]{1,253}\Z", args["socketio_host"]):
        bad.append("socketio_host %r is not a host name or address" % args["socketio_host"])
    return bad


# --------------------------------------------------------------------------------------------
# The decision (pure)
# --------------------------------------------------------------------------------------------

def _version(d):
    return (d or {}).get("version")


def decide(observed, options=None):
    """The plan for one user's agent folder.

    ``observed``: ``{"user", "root", "folder": bool, "dirs": {name: None | {"version", "config"}},
    "running": bool, "marker": None | {"run_id", "phase", "from", "to", "failed_kept_as"}}``
    (``dirs`` holds app-current, app-backup and app-failed; ``config`` says whether config.json is
    in it). Returns ``{"status": planned|unchanged|refused, "reason", "from", "to", "steps",
    "prior"}``: ``prior`` are the steps an earlier, half-finished run did, for ``undo_steps``.
    """
    o = dict(DECIDE_DEFAULTS, **(options or {}))
    root = observed.get("root") or "?"
    out = {"user": observed.get("user"), "root": root, "status": "refused", "reason": "", "from": None, "to": None,
           "steps": [], "prior": []}
    if not observed.get("folder"):
        out["reason"] = "agent folder missing: %s" % root
        return out
    dirs = observed.get("dirs") or {}
    cur, bak, fail = dirs.get(CURRENT), dirs.get(BACKUP), dirs.get(FAILED)
    marker = observed.get("marker") or {}
    phase = marker.get("phase")
    running = bool(observed.get("running"))
    # The marker lives in the user's own folder: only a name this tool writes is taken from it.
    kept_as = marker.get("failed_kept_as")
    if kept_as is not None and not (isinstance(kept_as, str) and KEPT_AS_RE.match(kept_as)):
        out["reason"] = "the marker file names %r as the kept app-failed: not one this tool writes; check it by hand" % (
            kept_as,)
        return out
    stamp = o["stamp"]

    def rename(src, dest):
        return {"op": "rename", "src": src, "dest": dest, "retries": o["rename_retries"], "delay": o["rename_delay"]}

    def stop():
        return [{"op": "stop", "timeout": o["stop_timeout"]}] if running else []

    def mark(phase_, frm, to, kept=None):
        return {"op": "marker", "content": {"run_id": o["run_id"], "phase": phase_, "from": frm, "to": to,
                                            "failed_kept_as": kept, "user": observed.get("user"), "at": stamp}}

    def config_copy():
        return {"op": "copy_config", "src": "%s/%s" % (FAILED, CONFIG), "dest": "%s/%s" % (CURRENT, CONFIG),
                "keep_as": "%s/%s.doai-%s" % (CURRENT, CONFIG, stamp)}

    def reach():
        # The agent talks Socket.IO to the backend: where configured, the PC must reach its port.
        if not o["socketio_host"]:
            return []
        return [{"op": "reach", "host": o["socketio_host"], "port": o["socketio_port"], "timeout": o["socketio_timeout"]}]

    def tail(frm, to, kept, carry_config):
        steps = [config_copy()] if carry_config else []
        return steps + [{"op": "start"}, {"op": "verify", "version": to, "timeout": o["verify_timeout"]}] + reach() + \
            [mark("done", frm, to, kept)]

    def put_back_tail(frm, to, kept):
        return [mark("put_back", frm, to, kept), {"op": "start"},
                {"op": "verify", "version": frm, "timeout": o["verify_timeout"]}]

    if phase == "swapping":
        frm, to, kept = marker.get("from"), marker.get("to"), marker.get("failed_kept_as")
        out["from"], out["to"] = frm, to
        prior = [rename(FAILED, kept)] if kept else []
        earlier = "half-finished earlier swap (run %s)" % (marker.get("run_id") or "?")
        if cur is None and fail is not None and bak is not None:
            out["prior"] = prior + [rename(CURRENT, FAILED)]
            if o["half_finished"] == "resume":
                out["steps"] = stop() + [rename(BACKUP, CURRENT)] + tail(frm, to, kept, fail.get("config"))
                out["reason"] = "%s: app-current was renamed to app-failed, app-backup not yet: resuming" % earlier
            else:
                out["steps"] = stop() + [rename(FAILED, CURRENT)] + put_back_tail(frm, to, kept)
                out["reason"] = "%s: app-current was renamed to app-failed, app-backup not yet: putting back" % earlier
            out["status"] = "planned"
            return out
        if cur is not None and bak is None and fail is not None and _version(cur) == to:
            out["prior"] = prior + [rename(CURRENT, FAILED), rename(BACKUP, CURRENT)]
            if o["half_finished"] == "resume":
                out["steps"] = stop() + tail(frm, to, kept, fail.get("config"))
                out["reason"] = "%s: both renames done, not yet started and verified: resuming" % earlier
            else:
                out["steps"] = stop() + [rename(CURRENT, BACKUP), rename(FAILED, CURRENT)] + put_back_tail(frm, to, kept)
                out["reason"] = "%s: both renames done, not yet started and verified: putting back" % earlier
            out["status"] = "planned"
            return out
        if not (cur is not None and bak is not None and fail is None):
            out["reason"] = ("%s in a state this tool does not recognise (app-current %s, app-backup %s, app-failed %s):"
                             " touching nothing" % (earlier, _state(cur), _state(bak), _state(fail)))
            return out
        # Only the earlier app-failed was kept aside: a fresh swap below.
    if phase == "done" and cur is not None and bak is None and fail is not None \
            and _version(cur) == marker.get("to") and _version(fail) == marker.get("from"):
        out["from"], out["to"] = marker.get("from"), marker.get("to")
        if running:
            out["status"], out["reason"] = "unchanged", "already swapped by run %s: app-current holds %s" % (
                marker.get("run_id") or "?", marker.get("to"))
        else:
            out["status"] = "planned"
            out["reason"] = "already swapped by run %s; the agent is not running: starting it" % (
                marker.get("run_id") or "?")
            out["steps"] = [{"op": "start"}, {"op": "verify", "version": marker.get("to"),
                                              "timeout": o["verify_timeout"]}]
        return out

    missing = [name for name, d in ((CURRENT, cur), (BACKUP, bak)) if d is None]
    if missing:
        out["reason"] = "missing in %s: %s" % (root, ", ".join(missing))
        return out
    if not cur.get("config") and o["config_required"]:
        out["reason"] = "missing in %s: %s/%s" % (root, CURRENT, CONFIG)
        return out
    frm, to = _version(cur), _version(bak)
    out["from"], out["to"] = frm, to
    if frm is not None and frm == to:
        out["reason"] = "app-backup holds the same version as app-current (%s): nothing to roll back to" % frm
        return out
    kept = "%s-%s" % (FAILED, stamp) if fail is not None else None
    steps = stop()
    if kept:
        steps.append(rename(FAILED, kept))
    steps += [mark("swapping", frm, to, kept), rename(CURRENT, FAILED), rename(BACKUP, CURRENT)]
    steps += tail(frm, to, kept, cur.get("config"))
    notes = []
    if kept:
        notes.append("app-failed from an earlier incident kept as %s" % kept)
    if not running:
        notes.append("agent not running")
    if not cur.get("config"):
        notes.append("no config.json in app-current: nothing to carry over")
    out.update(status="planned", steps=steps, reason="swap %s -> %s%s" % (
        frm, to, "".join("; " + n for n in notes)))
    return out


def _state(d):
    return "absent" if d is None else "present (%s)" % (d.get("version") or "version unknown")


def undo_steps(done, prior=(), stamp="19700101T000000Z", verify_timeout=30, version=None):
    """The steps that put back ``prior`` + ``done`` (in execution order), newest first.

    ``done`` entries are the executed steps; a ``copy_config`` carries ``kept`` (whether it kept
    an existing config.json aside). The copied file is moved aside, never removed. When the agent
    was stopped, it is started again and verified on the version it ran before.
    """
    undo, restart, frm = [], False, version
    for step in reversed(list(prior) + list(done)):
        op = step["op"]
        if op == "rename":
            undo.append(dict(step, src=step["dest"], dest=step["src"]))
        elif op == "copy_config":
            undo.append({"op": "rename", "src": step["dest"], "dest": "%s.doai-undone-%s" % (step["dest"], stamp),
                         "retries": 1, "delay": 0})
            if step.get("kept"):
                undo.append({"op": "rename", "src": step["keep_as"], "dest": step["dest"], "retries": 1, "delay": 0})
        elif op == "marker" and step["content"].get("phase") == "swapping":
            frm = step["content"].get("from")
            undo.append({"op": "marker", "content": dict(step["content"], phase="put_back", at=stamp)})
        elif op == "start":
            undo.append({"op": "stop", "timeout": step.get("timeout", DECIDE_DEFAULTS["stop_timeout"])})
        elif op == "stop":
            restart = True
    for step in prior:
        if step["op"] == "rename" and step["src"] == CURRENT:
            restart = True  # an earlier run stopped the agent before its first rename
    if restart:
        undo.append({"op": "start"})
        undo.append({"op": "verify", "version": frm, "timeout": verify_timeout})
    return undo


# --------------------------------------------------------------------------------------------
# Module calls per OS (pure)
# --------------------------------------------------------------------------------------------

WIN_POWERSHELL = "ansible.windows.win_powershell"
WIN_SERVICE = "ansible.windows.win_service"
WIN_SCHEDULED_TASK = "community.windows.win_scheduled_task"
POSIX_MODULE = "doai_agent_posix"

# Every script takes its values as parameters (win_powershell's `parameters`), never as text.
PS_OBSERVE = r"""[CmdletBinding(SupportsShouldProcess)]
param([string[]]$Users, [string]$FolderName, [string]$LocalPath, [string]$VersionFile, [string]$ExeName,
      [string]$Marker, [string]$ServiceName)
$ErrorActionPreference = 'Stop'
$Ansible.Changed = $false
# The PC's user profiles, not this WinRM session's %LOCALAPPDATA%.
$profiles = @(Get-CimInstance -ClassName Win32_UserProfile -Filter 'Special = FALSE' | ForEach-Object { $_.LocalPath })
if (-not $profiles) {
    $key = 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList'
    $profiles = @(Get-ChildItem -LiteralPath $key | ForEach-Object { (Get-ItemProperty -LiteralPath $_.PSPath).ProfileImagePath })
}
$byUser = @{}
foreach ($p in $profiles) { if ($p) { $byUser[(Split-Path -Leaf $p)] = $p } }
$wanted = if ($Users) { $Users } else {
    @($byUser.Keys | Where-Object { Test-Path -LiteralPath (Join-Path (Join-Path $byUser[$_] $LocalPath) $FolderName) })
}
$procs = @(Get-CimInstance -ClassName Win32_Process | Where-Object { $_.ExecutablePath })
$service = if ($ServiceName) { Get-Service -Name $ServiceName -ErrorAction SilentlyContinue } else { $null }
$out = foreach ($u in $wanted) {
    if (-not $byUser.ContainsKey($u)) { [ordered]@{ user = $u; root = $null; profile = $false; folder = $false }; continue }
    $root = Join-Path (Join-Path $byUser[$u] $LocalPath) $FolderName
    $dirs = [ordered]@{}
    foreach ($name in 'app-current', 'app-backup', 'app-failed') {
        $d = Join-Path $root $name
        if (-not (Test-Path -LiteralPath $d -PathType Container)) { $dirs[$name] = $null; continue }
        $vf = Join-Path $d $VersionFile
        $exe = Join-Path $d $ExeName
        $version = if (Test-Path -LiteralPath $vf) { (Get-Content -LiteralPath $vf -TotalCount 1).Trim() }
                   elseif (Test-Path -LiteralPath $exe) { (Get-Item -LiteralPath $exe).VersionInfo.ProductVersion }
                   else { $null }
        $dirs[$name] = [ordered]@{ version = $version; config = (Test-Path -LiteralPath (Join-Path $d 'config.json')) }
    }
    $mf = Join-Path $root $Marker
    $marker = if (Test-Path -LiteralPath $mf) { Get-Content -LiteralPath $mf -Raw | ConvertFrom-Json } else { $null }
    $prefix = $root.TrimEnd('\') + '\'
    $running = if ($service) { $service.Status -eq 'Running' } else {
        [bool]@($procs | Where-Object { $_.ExecutablePath.StartsWith($prefix, [StringComparison]::OrdinalIgnoreCase) }).Count
    }
    [ordered]@{ user = $u; root = $root; profile = $true; folder = (Test-Path -LiteralPath $root -PathType Container)
                dirs = $dirs; running = $running; marker = $marker }
}
$Ansible.Result = @($out)
"""

PS_STOP = r"""param([string]$Root, [int]$TimeoutSeconds)
$ErrorActionPreference = 'Stop'
$prefix = $Root.TrimEnd('\') + '\'
function Get-Agent { @(Get-CimInstance -ClassName Win32_Process | Where-Object {
    $_.ExecutablePath -and $_.ExecutablePath.StartsWith($prefix, [StringComparison]::OrdinalIgnoreCase) }) }
$found = Get-Agent
foreach ($p in $found) { Stop-Process -Id $p.ProcessId -Force -ErrorAction SilentlyContinue }
$deadline = (Get-Date).AddSeconds($TimeoutSeconds)
while ((Get-Agent).Count -and (Get-Date) -lt $deadline) { Start-Sleep -Milliseconds 500 }
$left = @(Get-Agent | ForEach-Object { $_.ProcessId })
$Ansible.Changed = [bool]$found.Count
$Ansible.Result = @{ stopped = @($found | ForEach-Object { $_.ProcessId }); still_running = $left }
if ($left.Count) { $Ansible.Failed = $true; Write-Error "agent still running after $TimeoutSeconds s: $($left -join ', ')" }
"""

PS_RENAME = r"""param([string]$Root, [string]$Path, [string]$NewName, [int]$Retries, [int]$DelaySeconds)
$ErrorActionPreference = 'Stop'
$src = Join-Path $Root $Path
$attempt = 0
while ($true) {
    $attempt++
    try { Rename-Item -LiteralPath $src -NewName $NewName; break }
    catch {
        if ($attempt -ge $Retries) {
            $Ansible.Failed = $true
            $Ansible.Result = @{ attempts = $attempt; error = $_.Exception.Message }
            Write-Error "rename $Path -> $NewName failed after $attempt attempts: $($_.Exception.Message)"
            return
        }
        Start-Sleep -Seconds $DelaySeconds
    }
}
$Ansible.Changed = $true
$Ansible.Result = @{ attempts = $attempt }
"""

PS_COPY_CONFIG = r"""param([string]$Root, [string]$Source, [string]$Dest, [string]$KeepAs)
$ErrorActionPreference = 'Stop'
$src = Join-Path $Root $Source
$dst = Join-Path $Root $Dest
if (-not (Test-Path -LiteralPath $src)) { $Ansible.Result = @{ copied = $false; kept = $false }; return }
$kept = $false
if (Test-Path -LiteralPath $dst) { Rename-Item -LiteralPath $dst -NewName (Split-Path -Leaf $KeepAs); $kept = $true }
Copy-Item -LiteralPath $src -Destination $dst
$Ansible.Changed = $true
$Ansible.Result = @{ copied = $true; kept = $kept }
"""

PS_MARKER = r"""param([string]$Root, [string]$Marker, [string]$Content)
$ErrorActionPreference = 'Stop'
$path = Join-Path $Root $Marker
$tmp = "$path.tmp"
[IO.File]::WriteAllText($tmp, $Content)
Move-Item -LiteralPath $tmp -Destination $path -Force
$Ansible.Changed = $true
"""

PS_START_TASK = r"""param([string]$TaskName)
$ErrorActionPreference = 'Stop'
Start-ScheduledTask -TaskName $TaskName
$Ansible.Changed = $true
"""

PS_REACH = r"""param([string]$Host_, [int]$Port, [int]$TimeoutSeconds)
$ErrorActionPreference = 'Stop'
$client = New-Object System.Net.Sockets.TcpClient
try {
  $wait = $client.BeginConnect($Host_, $Port, $null, $null)
  if (-not $wait.AsyncWaitHandle.WaitOne($TimeoutSeconds * 1000) -or -not $client.Connected) {
    throw "the backend's Socket.IO port ${Host_}:$Port is not reachable from this PC"
  }
  $client.EndConnect($wait)
} finally { $client.Close() }
$Ansible.Changed = $false
"""

PS_VERIFY = r"""param([string]$Root, [string]$VersionFile, [string]$ExeName, [string]$Expected, [int]$TimeoutSeconds,
      [string]$ServiceName)
$ErrorActionPreference = 'Stop'
$cur = Join-Path $Root 'app-current'
$vf = Join-Path $cur $VersionFile
$exe = Join-Path $cur $ExeName
$version = if (Test-Path -LiteralPath $vf) { (Get-Content -LiteralPath $vf -TotalCount 1).Trim() }
           elseif (Test-Path -LiteralPath $exe) { (Get-Item -LiteralPath $exe).VersionInfo.ProductVersion } else { $null }
$prefix = $cur.TrimEnd('\') + '\'
$deadline = (Get-Date).AddSeconds($TimeoutSeconds)
do {
    $running = if ($ServiceName) { (Get-Service -Name $ServiceName).Status -eq 'Running' } else {
        [bool]@(Get-CimInstance -ClassName Win32_Process | Where-Object {
            $_.ExecutablePath -and $_.ExecutablePath.StartsWith($prefix, [StringComparison]::OrdinalIgnoreCase) }).Count }
    if ($running) { break }
    Start-Sleep -Seconds 1
} while ((Get-Date) -lt $deadline)
$Ansible.Changed = $false
$Ansible.Result = @{ version = $version; running = $running }
if (-not $running -or ($Expected -and $version -ne $Expected)) {
    $Ansible.Failed = $true
    Write-Error "verify: running=$running, app-current version $version, expected $Expected"
}
"""


def _ps(script, **parameters):
    return (WIN_POWERSHELL, {"script": script, "parameters": parameters})


def _leaf(rel):
    return rel.rsplit("/", 1)[-1]


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
        return [_ps(PS_STOP, Root=root, TimeoutSeconds=step["timeout"])]
    if op == "rename":
        return [_ps(PS_RENAME, Root=root, Path=_win(step["src"]), NewName=_leaf(step["dest"]),
                    Retries=step["retries"], DelaySeconds=step["delay"])]
    if op == "copy_config":
        return [_ps(PS_COPY_CONFIG, Root=root, Source=_win(step["src"]), Dest=_win(step["dest"]),
                    KeepAs=_win(step["keep_as"]))]
    if op == "marker":
        return [_ps(PS_MARKER, Root=root, Marker=MARKER, Content=_json(step["content"]))]
    if op == "start":
        if service:
            return [(WIN_SERVICE, {"name": ctx["service_name"], "state": "started"})]
        task = "%s (%s)" % (ctx["task_name"], ctx["user"])
        exe = "%s\\%s\\%s" % (root, CURRENT, ctx["exe_name"])
        return [(WIN_SCHEDULED_TASK, {"name": task, "state": "present", "enabled": True,
                                      "actions": [{"path": exe, "working_directory": "%s\\%s" % (root, CURRENT)}],
                                      "username": ctx["user"], "logon_type": "interactive_token",
                                      "run_level": "limited", "multiple_instances": 2}),
                _ps(PS_START_TASK, TaskName=task)]
    if op == "reach":
        return [_ps(PS_REACH, Host_=step["host"], Port=step["port"], TimeoutSeconds=step["timeout"])]
    if op == "verify":
        return [_ps(PS_VERIFY, Root=root, VersionFile=ctx["version_file"], ExeName=ctx["exe_name"],
                    Expected=step["version"] or "", TimeoutSeconds=step["timeout"],
                    ServiceName=ctx["service_name"] if service else "")]
    raise AnsibleError("doai_agent_swap: unknown step %r" % op)


def windows_observe_call(ctx):
    return _ps(PS_OBSERVE, Users=list(ctx["users"]), FolderName=ctx["folder_name"],
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
    return (POSIX_MODULE, {"op": "observe", "users": list(ctx["users"]), "profiles_root": ctx["posix_profiles_root"],
                           "local_path": ctx["posix_local_path"], "folder_name": ctx["folder_name"],
                           "version_file": ctx["version_file"], "pid_file": ctx["pid_file"], "marker": MARKER})


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
        maker = windows_calls if ctx["os"] == "windows" else posix_calls
        out = {}
        for module, args in maker(step, ctx):
            out = self._call(module, args, task_vars, calls)
            if out.get("failed") or out.get("unreachable"):
                msg = out.get("msg") or "; ".join(_error_text(e) for e in out.get("error") or []) or "failed"
                return False, "%s: %s" % (module, msg), out
        return True, "", out

    def swap(self, args, task_vars, check_mode):
        bad = check_options(args)
        if bad:
            return {"failed": True, "msg": "; ".join(bad) + "; nothing was changed", "invalid_options": bad}
        ctx = dict(args)
        ctx["os"] = target_os(args["os"], task_vars)
        stamp = args["stamp"] or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        opts = {k: args[k] for k in DECIDE_DEFAULTS if k in args}
        opts["stamp"] = stamp
        calls = []
        if ctx["os"] == "windows":
            module, margs = windows_observe_call(ctx)
        else:
            module, margs = posix_observe_call(ctx)
        seen = self._call(module, margs, task_vars, calls)
        if seen.get("failed"):
            return {"failed": True, "msg": "observe failed: %s" % (seen.get("msg") or seen.get("error")),
                    "observe": seen}
        observed = seen.get("result") if ctx["os"] == "windows" else seen.get("users")
        users, changed, failed = [], False, False
        for obs in observed or []:
            if obs.get("profile") is False:
                users.append({"user": obs.get("user"), "status": "refused",
                              "reason": "no user profile %s on this PC" % obs.get("user"), "steps": []})
                continue
            plan = decide(obs, opts)
            entry = {k: plan[k] for k in ("user", "root", "status", "reason", "from", "to")}
            entry["steps"] = plan["steps"]
            users.append(entry)
            if plan["status"] != "planned" or check_mode:
                continue
            uctx = dict(ctx, root=obs["root"], user=obs["user"])
            done = []
            for step in plan["steps"]:
                ok, msg, out = self._run_step(step, uctx, task_vars, calls)
                if not ok:
                    entry.update(status="failed", failed_step=step, error=msg)
                    break
                if step["op"] == "copy_config":
                    res = out.get("result") if ctx["os"] == "windows" else out
                    step = dict(step, kept=bool((res or {}).get("kept")))
                done.append(step)
            entry["done"] = done
            changed = changed or bool(done)
            if entry["status"] == "failed":
                failed = True
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
        out = {"changed": changed, "os": ctx["os"], "stamp": stamp, "users": users, "module_calls": calls}
        if failed:
            out["failed"] = True
            out["msg"] = "; ".join("%s: %s (%s)" % (u["user"], u.get("error"), u.get("restore"))
                                   for u in users if u["status"] == "failed")
        return out
