# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""doai_agent_decide: the desktop agent's decisions (runbook section 4), per PC and user: pure.

What the ``doai_agent_swap`` action plugin (roles/doai_agent) does for an observed state of a
user's agent folder, as data: the task's options and their check, the rename swap and its undo
(``decide``, ``undo_steps``), the undo of a finished run's swap (``undo_run``), the confirmed
plan's pins (``check_pin``), and the reinstall (``decide_reinstall``, ``put_back_reinstall``,
``undo_reinstall``). Nothing here reads a file, contacts a host or calls a module: the action
plugin observes, calls the Windows or POSIX modules for each step, and reads the installer.

Used on the controller only (by the action plugin and by the ``doai-rollback`` CLI), never
shipped to a PC.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

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
    # The whole-system checklist (POSIX): also the last read_lines lines of each user's agent log
    # (read_log_file), read in the observe call before anything changes; 0: not read.
    read_lines=dict(type="int", default=0),
    read_log_file=dict(type="str", default="agent.log"),
    # rollback: the rename swap; reinstall: uninstall, run an earlier installer, config.json back.
    operation=dict(type="str", default="rollback", choices=["rollback", "reinstall"]),
    # rollback only: undo the swap that run finished (app-current back to app-backup, app-failed
    # back to app-current), in the folders that run left as it left them; empty: a swap.
    undo_run=dict(type="str", default=""),
    # The confirmed plan, per user: {"from": version, "to": version}. When given, a user whose
    # decision now differs (the folder changed since the plan) or who was not in it is refused.
    pins=dict(type="dict", default={}),
    # reinstall: a file on the controller (copied to the PC) or an https URL (http only for
    # loopback) fetched on the PC; its sha256 (checked on the PC before anything changes) and
    # the version it installs (empty: any; then the marker recognises a second run).
    installer=dict(type="str", default=""),
    installer_sha256=dict(type="str", default=""),
    installer_version=dict(type="str", default=""),
    # Windows: the publisher the installer must be validly Authenticode-signed by (the signer
    # certificate's common name, Get-AuthenticodeSignature on the PC); empty: not checked.
    installer_publisher=dict(type="str", default=""),
    installer_args=dict(type="list", elements="str", default=["/S", "/currentuser"]),
    uninstall_key=dict(type="str", default="DoAi-Desktop-Agent"),
    uninstall_args=dict(type="list", elements="str", default=["/S", "/currentuser"]),
    posix_installer_args=dict(type="list", elements="str", default=["--folder", "{root}"]),
    posix_uninstall_command=dict(type="list", elements="str", default=["{current}/uninstall"]),
    windows_stage_dir=dict(type="str", default="C:\\ProgramData\\doai-rollback\\installers"),
    posix_stage_dir=dict(type="str", default="/var/tmp/doai-rollback"),
    install_timeout=dict(type="int", default=600),
)

DECIDE_DEFAULTS = dict({k: ARGUMENT_SPEC[k]["default"] for k in (
    "run_id", "half_finished", "config_required", "stop_timeout", "rename_retries", "rename_delay", "verify_timeout",
    "socketio_host", "socketio_port", "socketio_timeout", "undo_run")}, stamp="19700101T000000Z")
RUN_ID_RE = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}\Z")
KEPT_AS_RE = re.compile(r"app-failed-\d{8}T\d{6}Z\Z")
KEPT_CONFIG_RE = re.compile(r"config\.json\.doai-\d{8}T\d{6}Z\Z")
STAMP_RE = re.compile(r"\d{8}T\d{6}Z\Z")
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
    if args.get("read_lines", 0) < 0:
        bad.append("read_lines must be at least 0, not %r" % args["read_lines"])
    if not args["posix_start_command"]:
        bad.append("posix_start_command is empty")
    if args["socketio_host"] and not re.match(r"[A-Za-z0-9.:\[\]-]{1,253}\Z", args["socketio_host"]):
        bad.append("socketio_host %r is not a host name or address" % args["socketio_host"])
    if args.get("undo_run") and not RUN_ID_RE.match(args["undo_run"]):
        bad.append("undo_run %r is not a run id" % args["undo_run"])
    if args.get("undo_run") and args.get("operation") == "reinstall":
        bad.append("undo_run is for the rollback (swap), not the reinstall")
    if args.get("operation") == "reinstall":
        bad += check_reinstall_options(args)
    return bad


# --------------------------------------------------------------------------------------------
# The decision (pure)
# --------------------------------------------------------------------------------------------

def _version(d):
    return (d or {}).get("version")


def _live(d):
    """What a folder holds now, as status and plans show it: its version, "?" when it has none
    that could be read, None when it is absent."""
    return None if d is None else (_version(d) or "?")


_HISTORY_KEYS = ("run_id", "phase", "from", "to", "undoes")


def _history(marker):
    """The marker as history (the last run that wrote it, what it did): shown, never taken for
    what the folders hold. Only short strings are taken from it (the file is the user's)."""
    if not isinstance(marker, dict) or not marker:
        return None
    return {k: marker[k][:100] for k in _HISTORY_KEYS
            if isinstance(marker.get(k), str) and (k != "undoes" or marker.get(k))}


def decide(observed, options=None):
    """The plan for one user's agent folder.

    ``observed``: ``{"user", "root", "folder": bool, "dirs": {name: None | {"version", "config"}},
    "running": bool, "marker": None | {"run_id", "phase", "from", "to", "failed_kept_as"}}``
    (``dirs`` holds app-current, app-backup and app-failed; ``config`` says whether config.json is
    in it). Returns ``{"status": planned|unchanged|refused, "reason", "from", "to", "steps",
    "prior", "live", "history"}``: ``prior`` are the steps an earlier, half-finished run did, for
    ``undo_steps``; ``live`` what app-current, app-backup and app-failed hold now (``_live``) and
    ``history`` the marker's account of the last run (``_history``). ``from`` and ``to`` are
    read from the folders (the marker only says what a run did, and is checked against them).
    """
    o = dict(DECIDE_DEFAULTS, **(options or {}))
    root = observed.get("root") or "?"
    out = {"user": observed.get("user"), "root": root, "status": "refused", "reason": "", "from": None, "to": None,
           "steps": [], "prior": []}
    if not observed.get("folder"):
        out["reason"] = _no_folder(observed, root)
        return out
    dirs = observed.get("dirs") or {}
    cur, bak, fail = dirs.get(CURRENT), dirs.get(BACKUP), dirs.get(FAILED)
    marker = observed.get("marker") or {}
    phase = marker.get("phase")
    running = bool(observed.get("running"))
    out["live"] = {name: _live(d) for name, d in ((CURRENT, cur), (BACKUP, bak), (FAILED, fail))}
    out["history"] = _history(marker)
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

    def tail(frm, to, kept, carry_config, backup_config):
        steps = [config_copy()] if carry_config else []
        done = mark("done", frm, to, kept)
        # What an undo needs to give config.json back as it was: whether the user's was carried
        # over, and the name the backup's own was kept under (None: it had none).
        done["content"].update(config_carried=bool(carry_config), config_kept_as="%s.doai-%s" % (CONFIG, stamp)
                               if carry_config and backup_config else None)
        return steps + [{"op": "start"}, {"op": "verify", "version": to, "timeout": o["verify_timeout"]}] + reach() + \
            [done]

    def put_back_tail(frm, to, kept):
        return [mark("put_back", frm, to, kept), {"op": "start"},
                {"op": "verify", "version": frm, "timeout": o["verify_timeout"]}]

    if o.get("undo_run"):
        return _decide_undo(out, o, cur, bak, fail, marker, running, rename, stop, mark, reach)

    if phase == "swapping":
        frm, to, kept = marker.get("from"), marker.get("to"), marker.get("failed_kept_as")
        out["from"], out["to"] = frm, to
        prior = [rename(FAILED, kept)] if kept else []
        earlier = "half-finished earlier swap (run %s)" % (marker.get("run_id") or "?")
        if cur is None and fail is not None and bak is not None:
            # What the folders hold, not what the marker says they held.
            frm, to = _version(fail), _version(bak)
            out["from"], out["to"] = frm, to
            out["prior"] = prior + [rename(CURRENT, FAILED)]
            if o["half_finished"] == "resume":
                out["steps"] = stop() + [rename(BACKUP, CURRENT)] + tail(frm, to, kept, fail.get("config"),
                                                                         bak.get("config"))
                out["reason"] = "%s: app-current was renamed to app-failed, app-backup not yet: resuming" % earlier
            else:
                out["steps"] = stop() + [rename(FAILED, CURRENT)] + put_back_tail(frm, to, kept)
                out["reason"] = "%s: app-current was renamed to app-failed, app-backup not yet: putting back" % earlier
            out["status"] = "planned"
            return out
        if cur is not None and bak is None and fail is not None and _version(cur) == to:
            frm = _version(fail)
            out["from"] = frm
            out["prior"] = prior + [rename(CURRENT, FAILED), rename(BACKUP, CURRENT)]
            if o["half_finished"] == "resume":
                out["steps"] = stop() + tail(frm, to, kept, fail.get("config"), cur.get("config"))
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
        # Rolled back already: app-current holds what it holds (the marker is only the history).
        out["from"] = out["to"] = _version(cur)
        if running:
            out["status"], out["reason"] = "unchanged", "already swapped by run %s: app-current holds %s" % (
                marker.get("run_id") or "?", _version(cur))
        else:
            out["status"] = "planned"
            out["reason"] = "already swapped by run %s; the agent is not running: starting it" % (
                marker.get("run_id") or "?")
            out["steps"] = [{"op": "start"}, {"op": "verify", "version": _version(cur),
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
    steps += tail(frm, to, kept, cur.get("config"), bak.get("config"))
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


def _decide_undo(out, o, cur, bak, fail, marker, running, rename, stop, mark, reach):
    """Undo the swap run ``o["undo_run"]`` finished, where the folder is as that run left it:
    app-current -> app-backup, app-failed -> app-current, the app-failed it kept aside back to
    app-failed, config.json as it was (``undo_config``: the backup's own back in app-backup; the
    user's settings carried into app-current only when they changed since the rollback), start,
    verify on the version that run found."""
    run = o["undo_run"]
    phase, frm, to, kept = marker.get("phase"), marker.get("from"), marker.get("to"), marker.get("failed_kept_as")
    if phase == "undone" and marker.get("undoes") == run and cur is not None and _version(cur) == to:
        out["from"] = out["to"] = _version(cur)
        if running:
            out["status"], out["reason"] = "unchanged", "run %s already undone: app-current holds %s" % (run, to)
        else:
            out["status"], out["reason"] = "planned", "run %s already undone; the agent is not running: starting it" % run
            out["steps"] = [{"op": "start"}, {"op": "verify", "version": to, "timeout": o["verify_timeout"]}]
        return out
    # What the rollback did to config.json, from its marker (one written before these fields:
    # the user's was carried when a folder holds one, the backup's own kept under the run's stamp).
    if "config_carried" in marker:
        carried, kept_cfg = bool(marker.get("config_carried")), marker.get("config_kept_as")
        if kept_cfg is not None and not (isinstance(kept_cfg, str) and KEPT_CONFIG_RE.match(kept_cfg)):
            out["reason"] = ("the marker file names %r as the kept config.json: not one this tool writes; check it"
                             " by hand" % (kept_cfg,))
            return out
    else:
        carried = bool((fail or {}).get("config") or (cur or {}).get("config"))
        at = marker.get("at")
        kept_cfg = "%s.doai-%s" % (CONFIG, at) if carried and isinstance(at, str) and STAMP_RE.match(at) else None
    carry = []
    if carried:
        carry = [{"op": "undo_config", "src": "%s/%s" % (BACKUP, CONFIG), "dest": "%s/%s" % (CURRENT, CONFIG),
                  "kept": "%s/%s" % (BACKUP, kept_cfg) if kept_cfg else "",
                  "keep_as": "%s/%s.doai-%s" % (CURRENT, CONFIG, o["stamp"])}]
    done = mark("undone", to, frm, None)
    done["content"]["undoes"] = run
    finish = [{"op": "start"}, {"op": "verify", "version": frm, "timeout": o["verify_timeout"]}] + reach() + [done]
    if phase == "undoing" and marker.get("undoes") == run:
        # An undo of this run that stopped half way (killed): finish it from where it stands.
        out["from"], out["to"] = to, frm
        earlier = "half-finished undo of run %s" % run
        if cur is None and bak is not None and fail is not None and _version(bak) == to and _version(fail) == frm:
            steps = stop() + [rename(FAILED, CURRENT)] + ([rename(kept, FAILED)] if kept else [])
            out["reason"] = "%s: app-current was renamed to app-backup, app-failed not yet: resuming" % earlier
        elif cur is not None and bak is not None and _version(cur) == frm and _version(bak) == to:
            steps = stop() + ([rename(kept, FAILED)] if kept and fail is None else [])
            out["reason"] = "%s: both renames done, not yet started and verified: resuming" % earlier
        elif cur is not None and bak is None and fail is not None and _version(cur) == to and _version(fail) == frm:
            steps = stop() + [rename(CURRENT, BACKUP), rename(FAILED, CURRENT)] + ([rename(kept, FAILED)] if kept else [])
            out["reason"] = "%s: nothing renamed yet: undoing" % earlier
        else:
            out["reason"] = ("%s in a state this tool does not recognise (app-current %s, app-backup %s, app-failed %s):"
                             " touching nothing" % (earlier, _state(cur), _state(bak), _state(fail)))
            return out
        out.update(status="planned", steps=steps + carry + finish)
        return out
    if phase != "done" or marker.get("run_id") != run:
        last = "run %s (%s)" % (marker.get("run_id") or "?", phase) if marker else "none recorded"
        out["reason"] = "this folder's last rollback is %s, not run %s's finished swap: touching nothing" % (last, run)
        return out
    if not (cur is not None and bak is None and fail is not None and _version(cur) == to and _version(fail) == frm):
        out["reason"] = ("not as run %s left it (app-current %s, app-backup %s, app-failed %s): touching nothing"
                         % (run, _state(cur), _state(bak), _state(fail)))
        return out
    out["from"], out["to"] = to, frm
    # The marker first: an undo killed half way is recognised (and finished) by the next one.
    undoing = mark("undoing", frm, to, kept)
    undoing["content"].update(undoes=run, config_carried=carried, config_kept_as=kept_cfg)
    steps = stop() + [undoing, rename(CURRENT, BACKUP), rename(FAILED, CURRENT)]
    if kept:
        steps.append(rename(kept, FAILED))
    out.update(status="planned", steps=steps + carry + finish, reason="undo run %s: %s -> %s%s" % (
        run, to, frm, "; %s back to app-failed" % kept if kept else ""))
    return out


def config_note(step):
    """What an undo did with config.json (``undo_config``'s result), in words for the operator."""
    settings = step.get("settings")
    if settings == "unchanged":
        return "config.json unchanged since the rollback: the backup's own put back, as before the rollback"
    if settings == "carried":
        kept = step.get("kept_as")
        return "config.json changed since the rollback: carried into app-current%s" % (
            " (the one from before the rollback kept as %s)" % _leaf(kept.replace("\\", "/")) if kept else "")
    if settings == "done":
        return "config.json put back already"
    return "no copy of config.json in app-backup: nothing to carry"


def check_pin(plan, pins):
    """``plan`` refused when ``pins`` (the confirmed plan, by user) is given and this user's
    planned change is not the one confirmed; else ``plan`` as it is."""
    if not pins or plan.get("status") != "planned":
        return plan
    pin = pins.get(plan.get("user"))
    if not isinstance(pin, dict):
        why = "not in the confirmed plan (the folder changed since): touching nothing; plan and confirm again"
    elif pin.get("from") != plan.get("from") or (pin.get("to") is not None and plan.get("to") is not None
                                                 and pin.get("to") != plan.get("to")):
        why = ("changed since the confirmed plan (%s -> %s there, %s -> %s now): touching nothing; plan and confirm again"
               % (pin.get("from"), pin.get("to"), plan.get("from"), plan.get("to")))
    else:
        return plan
    return dict(plan, status="refused", reason=why, steps=[], prior=[])


def _no_folder(observed, root):
    if observed.get("link"):
        return "agent folder %s is a junction or symbolic link: not followed, touching nothing" % root
    return "agent folder missing: %s" % root


def _state(d):
    return "absent" if d is None else "present (%s)" % (d.get("version") or "version unknown")


def _strings(d, *keys):
    return all(isinstance(d.get(k), str) and d.get(k) for k in keys)


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
        elif op == "undo_config":
            # What it did, newest first: a move back; a copy it removed (byte for byte the file
            # that stayed) made again from that file, with its owner and mode.
            for action in reversed(step.get("actions") or []):
                if action.get("op") == "rename" and _strings(action, "src", "dest"):
                    undo.append({"op": "move", "src": action["dest"], "dest": action["src"]})
                elif action.get("op") == "remove" and _strings(action, "path", "same_as"):
                    undo.append({"op": "copy_config", "src": action["same_as"], "dest": action["path"],
                                 "keep_as": "%s.doai-undone-%s" % (action["path"], stamp)})
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


def _leaf(rel):
    return rel.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------
# The reinstall (pure): an earlier installer over the current install, kept aside first
# --------------------------------------------------------------------------------------------

REPLACED = "app-replaced"  # app-replaced-<stamp>: the install a reinstall replaced, kept whole
REPLACED_RE = re.compile(r"app-replaced-\d{8}T\d{6}Z\Z")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}\Z")
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}\Z")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_BAD_ARG_RE = re.compile(r"[\"\x00-\x1f\x7f]")


def installer_form(installer, sha256=""):
    """What the installer is, from its text alone: ``{"kind": "url"|"file", "value", "name",
    "sha256"}`` (a URL's ``id`` too: its sha256), or a ``ValueError`` that says what is wrong. A
    URL must be https (http only for a loopback host), without credentials in it, and come with
    its sha256; a file must be an absolute path (``sha256`` is the one expected, may be empty:
    the action plugin's ``check_installer`` reads and hashes it). Nothing is read or contacted."""
    if not installer or not isinstance(installer, str):
        raise ValueError("installer is empty: give a file on this machine or an https URL")
    if _BAD_ARG_RE.search(installer) or installer != installer.strip():
        raise ValueError("installer %r holds control characters, quotes or surrounding spaces" % installer)
    if sha256 and not _SHA256_RE.match(sha256):
        raise ValueError("installer sha256 %r is not 64 hex digits" % sha256)
    sha256 = (sha256 or "").lower()
    if "://" in installer:
        parts = urlsplit(installer)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("installer URL %r: only https (http for a loopback host) is fetched" % installer)
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
            raise ValueError("installer URL %r is plain http: use https (http only for 127.0.0.1/localhost)" % installer)
        if parts.username or parts.password:
            raise ValueError("installer URL holds credentials: they would be logged; refused")
        if not sha256:
            # Each PC downloads it and runs it as each user: never bytes nobody checked.
            raise ValueError("installer URL %r needs its sha256 (--sha256 / doai_agent_installer_sha256): "
                             "each PC would run whatever it downloads" % installer)
        name = parts.path.rsplit("/", 1)[-1]
        return {"kind": "url", "value": installer, "name": name if _LEAF_RE.match(name) else "installer",
                "sha256": sha256, "id": sha256 or installer}
    if not os.path.isabs(installer):
        raise ValueError("installer %r: give an absolute path (or an https URL)" % installer)
    name = os.path.basename(installer)
    return {"kind": "file", "value": installer, "name": name if _LEAF_RE.match(name) else "installer",
            "sha256": sha256}


def check_publisher(publisher):
    """The expected Authenticode publisher (a signer certificate's common name), or a
    ``ValueError``: a name of printable characters, no quotes, at most 200 of them."""
    if publisher is None or publisher == "":
        return ""
    if (not isinstance(publisher, str) or _BAD_ARG_RE.search(publisher) or publisher != publisher.strip()
            or len(publisher) > 200):
        raise ValueError("installer publisher %r: a certificate common name (no quotes, control characters or "
                         "surrounding spaces, at most 200 characters)" % (publisher,))
    return publisher


def check_reinstall_options(args):
    bad = []
    try:
        installer_form(args["installer"], args["installer_sha256"])
    except ValueError as exc:
        bad.append(str(exc))
    try:
        check_publisher(args.get("installer_publisher", ""))
    except ValueError as exc:
        bad.append(str(exc))
    if args["installer_version"] and not _VERSION_RE.match(args["installer_version"]):
        bad.append("installer_version %r is not a version" % args["installer_version"])
    if args["install_timeout"] < 1:
        bad.append("install_timeout must be at least 1, not %r" % args["install_timeout"])
    if not _LEAF_RE.match(args["uninstall_key"] or ""):
        bad.append("uninstall_key %r must be a plain name" % args["uninstall_key"])
    for name in ("installer_args", "uninstall_args", "posix_installer_args", "posix_uninstall_command"):
        bad += ["%s: %r holds a quote or a control character" % (name, a) for a in args[name] if _BAD_ARG_RE.search(a)]
    if not args["posix_uninstall_command"]:
        bad.append("posix_uninstall_command is empty")
    if not args["posix_stage_dir"].startswith("/"):
        bad.append("posix_stage_dir %r is not an absolute path" % args["posix_stage_dir"])
    if not re.match(r"[A-Za-z]:\\[^\"\x00-\x1f]*\Z", args["windows_stage_dir"]):
        bad.append("windows_stage_dir %r is not an absolute Windows path" % args["windows_stage_dir"])
    return bad


def parse_uninstall_string(text):
    """The uninstaller's path in an UninstallString (``"C:\\...\\Uninstall DoAi.exe" /currentuser``
    or unquoted): None when it is not a plain absolute path to an .exe. Its own arguments are
    not used: the configured silent switches are."""
    if not text or not isinstance(text, str):
        return None
    text = text.strip()
    m = re.match(r'"([A-Za-z]:\\[^"\x00-\x1f]*?\.exe)"', text, re.I) or \
        re.match(r"([A-Za-z]:\\[^\"\x00-\x1f]*?\.exe)(\s|\Z)", text, re.I)
    return m.group(1) if m else None


REINSTALL_DEFAULTS = dict(DECIDE_DEFAULTS, installer_id="", installer_version="", install_timeout=600)


def decide_reinstall(observed, options=None):
    """The reinstall plan for one user's agent folder (same shape as :func:`decide`).

    ``observed`` as for ``decide``, plus ``uninstaller``: the uninstaller's path (Windows: from
    the user's Uninstall registry key; POSIX: the configured command), None when there is none,
    or ``{"unparsed": text}`` for an uninstall string that is not understood. ``options``:
    ``installer_id`` (the installer's sha256, else its URL), ``installer_version`` (expected,
    may be empty), ``install_timeout`` and the swap's options.
    """
    o = dict(REINSTALL_DEFAULTS, **(options or {}))
    root = observed.get("root") or "?"
    out = {"user": observed.get("user"), "root": root, "status": "refused", "reason": "", "from": None,
           "to": o["installer_version"] or None, "steps": [], "prior": []}
    if not observed.get("folder"):
        out["reason"] = _no_folder(observed, root)
        return out
    dirs = observed.get("dirs") or {}
    cur = dirs.get(CURRENT)
    marker = observed.get("marker") or {}
    running = bool(observed.get("running"))
    stamp, expected = o["stamp"], o["installer_version"] or None
    out["from"] = _version(cur)

    def mark(phase, frm, to, kept):
        return {"op": "marker", "content": {"run_id": o["run_id"], "operation": "reinstall", "phase": phase,
                                            "from": frm, "to": to, "installer": o["installer_id"],
                                            "kept_as": kept, "user": observed.get("user"), "at": stamp}}

    def start_verify(version):
        return [{"op": "start"}, {"op": "verify", "version": version, "timeout": o["verify_timeout"]}]

    if marker.get("operation") == "reinstall" and marker.get("phase") == "reinstalling":
        kept = marker.get("kept_as")
        if not (isinstance(kept, str) and REPLACED_RE.match(kept)):
            out["reason"] = "the marker file names %r as the kept install: not one this tool writes; check it by hand" % (
                kept,)
            return out
        out["from"], out["to"] = marker.get("from"), marker.get("from")
        out["status"] = "planned"
        out["reason"] = ("half-finished earlier reinstall (run %s): putting the kept install %s back; run again to "
                         "reinstall" % (marker.get("run_id") or "?", kept))
        out["steps"] = put_back_reinstall(kept, marker.get("from"), stamp, o, marker=mark("put_back", marker.get("from"),
                                                                                          marker.get("to"), kept))
        return out
    if cur is None:
        out["reason"] = "missing in %s: %s (nothing to keep for a put-back: install by hand)" % (root, CURRENT)
        return out
    done_before = (marker.get("operation") == "reinstall" and marker.get("phase") == "done"
                   and marker.get("installer") == o["installer_id"] and _version(cur) is not None
                   and _version(cur) == marker.get("to"))
    if (expected is not None and _version(cur) == expected) or done_before:
        out["to"] = _version(cur)
        if running:
            out["status"] = "unchanged"
            out["reason"] = "app-current already holds %s%s" % (
                _version(cur), " (installed by run %s)" % (marker.get("run_id") or "?") if done_before else "")
        else:
            out["status"] = "planned"
            out["reason"] = "app-current already holds %s; the agent is not running: starting it" % _version(cur)
            out["steps"] = start_verify(_version(cur))
        return out
    uninstaller = observed.get("uninstaller")
    if isinstance(uninstaller, dict):
        out["reason"] = "the uninstall entry %r is not a path to an .exe: uninstall by hand" % uninstaller.get("unparsed")
        return out
    frm = _version(cur)
    kept = "%s-%s" % (REPLACED, stamp)
    steps = [{"op": "stop", "timeout": o["stop_timeout"]}] if running else []
    # The marker once the copy is whole: a run cut before leaves a partial copy (a new stamp next
    # time), never a marker naming a copy that a put-back could not use.
    steps += [{"op": "keep_copy", "src": CURRENT, "dest": kept}, mark("reinstalling", frm, expected, kept)]
    if uninstaller:
        steps.append({"op": "uninstall", "path": uninstaller, "timeout": o["install_timeout"]})
    steps += [{"op": "set_aside", "src": CURRENT, "dest": "%s-leftover-%s" % (CURRENT, stamp),
               "retries": o["rename_retries"], "delay": o["rename_delay"]},
              {"op": "install", "timeout": o["install_timeout"]}]
    if cur.get("config"):
        steps.append({"op": "copy_config", "src": "%s/%s" % (kept, CONFIG), "dest": "%s/%s" % (CURRENT, CONFIG),
                      "keep_as": "%s/%s.doai-%s" % (CURRENT, CONFIG, stamp)})
    steps += start_verify(expected)
    if o["socketio_host"]:
        steps.append({"op": "reach", "host": o["socketio_host"], "port": o["socketio_port"],
                      "timeout": o["socketio_timeout"]})
    steps.append(mark("done", frm, expected, kept))
    notes = ["the current install kept as %s" % kept]
    if not uninstaller:
        notes.append("no uninstall entry found: installing without uninstalling")
    if not running:
        notes.append("agent not running")
    if not cur.get("config"):
        notes.append("no config.json in app-current: nothing to restore")
    out.update(status="planned", steps=steps, reason="reinstall %s -> %s; %s" % (
        frm, expected or "the installer's version", "; ".join(notes)))
    return out


def put_back_reinstall(kept, version, stamp, options, marker=None):
    """The steps that put the install kept as ``kept`` back as app-current: stop whatever runs,
    move what is in app-current now aside (never deleted), rename the kept folder back (its
    config.json with it), start, verify the earlier version."""
    o = dict(REINSTALL_DEFAULTS, **(options or {}))
    steps = [{"op": "stop", "timeout": o["stop_timeout"]},
             {"op": "set_aside", "src": CURRENT, "dest": "app-failed-reinstall-%s" % stamp,
              "retries": o["rename_retries"], "delay": o["rename_delay"]},
             {"op": "rename", "src": kept, "dest": CURRENT, "retries": o["rename_retries"], "delay": o["rename_delay"]}]
    if marker is not None:
        steps.append(marker)
    return steps + [{"op": "start"}, {"op": "verify", "version": version, "timeout": o["verify_timeout"]}]


def undo_reinstall(done, stamp, options=None, version=None, failed=None):
    """What puts back a reinstall that failed after ``done`` (executed steps, in order) at
    ``failed``: a failed uninstaller or installer may have changed app-current half way, so it
    counts as done."""
    ops_done = [s["op"] for s in done] + ([failed["op"]] if failed else [])
    marker = next((s for s in done if s["op"] == "marker"), None)
    put_back = None if marker is None else {
        "op": "marker", "content": dict(marker["content"], phase="put_back", at=stamp)}
    o = dict(REINSTALL_DEFAULTS, **(options or {}))
    if "keep_copy" in ops_done and set(ops_done) - {"stop", "marker", "keep_copy"}:
        kept = next(s["dest"] for s in done if s["op"] == "keep_copy")
        return put_back_reinstall(kept, version, stamp, o, marker=put_back)
    undo = [put_back] if put_back else []
    if "stop" in ops_done:  # app-current untouched: the agent only needs starting again
        undo += [{"op": "start"}, {"op": "verify", "version": version, "timeout": o["verify_timeout"]}]
    return undo
