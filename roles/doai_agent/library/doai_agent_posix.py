#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_agent_posix
short_description: The desktop agent's primitives on a Linux stand-in PC (observe, stop, rename, copy, mark, start, verify)
description:
  - Called by the doai_agent_swap action plugin, one step per call, on POSIX hosts that stand in for the
    Windows PCs. C(observe) changes nothing. Nothing is ever deleted.
options:
  op:
    description: The primitive.
    type: str
    required: true
    choices: [observe, stop, rename, copy_config, undo_config, marker, start, verify, reach, copy_tree, run, stage_dir,
              check_file]
  root: {description: "The user's agent folder (every op but observe; stage_dir, check_file - the staging directory).", type: path}
  users: {description: observe - target users; empty for every profile that has the folder., type: list, elements: str, default: []}
  profiles_root: {description: observe - the directory holding the user profiles., type: path, default: /home}
  local_path: {description: observe - the folder's parent inside a profile., type: str, default: .local/share}
  folder_name: {description: observe - the agent folder's name., type: str, default: DoAi-Desktop-Agent}
  version_file: {description: The version file inside an app folder., type: str, default: VERSION}
  pid_file: {description: The agent's pid file, relative to root., type: str, default: agent.pid}
  lock_file: {description: "A file in a folder listing the pids that hold it open (stand-in PCs only: a rename waits until none runs).", type: str, default: .locked}
  marker: {description: The marker file, relative to root., type: str, default: .doai-rollback.json}
  host: {description: reach - the backend's Socket.IO host., type: str, default: ""}
  port: {description: reach - its port., type: int, default: 0}
  content: {description: marker - the marker's content., type: dict}
  src: {description: "rename, copy_config - source relative to root; undo_config - the copy of the user's config.json the rollback made (now in app-backup).", type: str}
  dest: {description: "rename, copy_config - destination relative to root; undo_config - the user's config.json from before the rollback (app-current).", type: str}
  keep_as: {description: copy_config, undo_config - where an existing destination is kept, relative to root., type: str}
  kept: {description: "undo_config - where the rollback kept the backup's own config.json (empty - it kept none).", type: str, default: ""}
  retries: {description: rename - attempts., type: int, default: 1}
  delay: {description: rename - seconds between attempts., type: float, default: 1}
  timeout: {description: stop, verify - seconds to wait., type: float, default: 30}
  command: {description: "start, run - argv; the element C({current}) or a prefix C({current}/) names app-current.", type: list, elements: str}
  expected: {description: verify - the version app-current must hold (empty - any)., type: str, default: ""}
  missing_ok: {description: rename - a missing source is no error (nothing moved)., type: bool, default: false}
  sha256: {description: check_file - the sha256 the file must have (empty - any; reported)., type: str, default: ""}
author: doai-ansible contributors
"""

EXAMPLES = r"""
- name: Observe every profile that has the agent folder
  doai_agent_posix:
    op: observe
    profiles_root: /home
"""

RETURN = r"""
users: {description: observe - per user the folder, app dirs (version, config), running, marker., type: list, returned: success}
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.doai_proc import pid_alive

DIRS = ("app-current", "app-backup", "app-failed")


def _read_version(d, version_file):
    try:
        with open(os.path.join(d, version_file)) as f:
            return f.readline().strip() or None
    except OSError:
        return None


def _pid(root, pid_file):
    try:
        with open(os.path.join(root, pid_file)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def observe(p):
    root_all = p["profiles_root"]
    for u in p["users"]:
        if not LEAF_RE.match(u):
            raise ValueError("user %r is not a user name" % u)
    if not LEAF_RE.match(p["folder_name"]) or os.path.isabs(p["local_path"]) or ".." in p["local_path"].split("/"):
        raise ValueError("folder_name must be a name and local_path a relative path without '..'")
    users = p["users"] or sorted(u for u in _listdir(root_all)
                                 if os.path.isdir(os.path.join(root_all, u, p["local_path"], p["folder_name"])))
    out = []
    for user in users:
        home = os.path.join(root_all, user)
        if not os.path.isdir(home):
            out.append({"user": user, "root": None, "profile": False, "folder": False})
            continue
        root = os.path.join(home, p["local_path"], p["folder_name"])
        if os.path.islink(root):
            out.append({"user": user, "root": root, "profile": True, "folder": False, "link": True})  # not followed
            continue
        dirs = {}
        for name in DIRS:
            d = os.path.join(root, name)
            dirs[name] = ({"version": _read_version(d, p["version_file"]),
                           "config": os.path.isfile(os.path.join(d, "config.json"))} if os.path.isdir(d) else None)
        marker = None
        try:
            fd = os.open(os.path.join(root, p["marker"]), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as f:
                marker = json.load(f)
        except (OSError, ValueError):
            pass
        out.append({"user": user, "root": root, "profile": True, "folder": os.path.isdir(root), "dirs": dirs,
                    "running": _pid(root, p["pid_file"]) is not None, "marker": marker})
    return out


def _lock_holders(d, lock_file):
    """The live pids a lock file in ``d`` names: the stand-in PCs' way of saying "files in use"
    (Windows refuses to rename a folder whose files a process holds open; Linux does not, so
    the stand-ins write their pid into <app dir>/<lock_file> and the rename waits them out)."""
    if not lock_file:
        return []
    try:
        with open(os.path.join(d, lock_file)) as f:
            pids = [int(x) for x in f.read().split() if x.strip().isdigit()]
    except (IOError, OSError):
        return []
    return [pid for pid in pids if pid_alive(pid)]


LEAF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}\Z")


def _inside(root, rel):
    """``root``/``rel`` when it stays inside ``root`` (no absolute path, no '..', no symlink out):
    the folder belongs to the user, and this module runs with more rights than they have."""
    if not rel or os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        raise ValueError("%r is not a path inside the agent folder" % rel)
    path = os.path.join(root, rel)
    real_root = os.path.realpath(root)
    if os.path.realpath(path) != real_root and not os.path.realpath(path).startswith(real_root + os.sep):
        raise ValueError("%r leads out of the agent folder %s (a symlink?)" % (rel, root))
    return path


def _write_new(path, data, like=None):
    """Write ``data`` to ``path`` through a new temporary file that follows no symlink; with
    ``like`` (an ``os.stat_result``) the file gets its owner and permission bits: a copy of the
    user's file stays the user's (this module runs as root; the agent runs as the user)."""
    tmp = "%s.doai-%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        if like is not None:
            if os.geteuid() == 0 and (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(f.fileno(), like.st_uid, like.st_gid)
            os.fchmod(f.fileno(), like.st_mode & 0o777)
        os.fsync(f.fileno())
    return tmp


def _read_regular(path):
    """A regular file's bytes and stat (no symlink followed), or (None, None) when it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None, None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, None
        return f.read(), st


def undo_config(module, at, p):
    """An undo's config.json, in a folder the undo has swapped back: ``src`` the copy the rollback
    made of the user's config.json (the rolled-back agent's settings, now in app-backup), ``dest``
    the user's config.json from before the rollback (app-current), ``kept`` the backup's own
    config.json the rollback kept aside (or none), ``keep_as`` where ``dest`` is kept when the
    settings changed since the rollback. Unchanged settings: the copy (byte for byte the file
    that stays) is removed and the backup's own put back - the folders as before the rollback.
    Changed: they are moved into app-current, the earlier ones kept as ``keep_as``. Every action
    is returned (a failed undo puts them back); a second call finds nothing to do."""
    copy_, dest, keep_as = at(p["src"]), at(p["dest"]), at(p["keep_as"])
    kept = at(p["kept"]) if p["kept"] else None
    for path in (copy_, dest, keep_as) + ((kept,) if kept else ()):
        if os.path.islink(path):
            module.fail_json(msg="refused: %s is a symlink" % os.path.relpath(path, p["root"]))
    actions = []

    def move(src_rel, dest_rel):
        src_, dst_ = at(src_rel), at(dest_rel)
        if os.path.lexists(dst_):
            module.fail_json(msg="refused: %s exists" % dest_rel, actions=actions)
        os.rename(src_, dst_)
        actions.append({"op": "rename", "src": src_rel, "dest": dest_rel})

    def backup_own_back():
        if kept:
            move(p["kept"], p["src"])

    if kept and not os.path.lexists(kept):
        module.exit_json(changed=False, settings="done", actions=[])  # put back already (an undo run again)
    data, _ = _read_regular(copy_)
    if data is None:
        if os.path.lexists(copy_):
            module.fail_json(msg="refused: %s is not a regular file" % p["src"])
        backup_own_back()
        module.exit_json(changed=bool(actions), settings="none", actions=actions)
    original, _ = _read_regular(dest)
    if original is not None and original == data:
        # The copy holds the bytes of the file that stays: nothing the user had is lost.
        os.unlink(copy_)
        actions.append({"op": "remove", "path": p["src"], "same_as": p["dest"]})
        backup_own_back()
        module.exit_json(changed=True, settings="unchanged", actions=actions)
    if os.path.lexists(dest):
        move(p["dest"], p["keep_as"])
    move(p["src"], p["dest"])  # a rename: the user's owner and mode go with the file
    backup_own_back()
    module.exit_json(changed=True, settings="carried", actions=actions,
                     kept_as=p["keep_as"] if actions[0]["dest"] == p["keep_as"] else None)


def _is_agent(pid, root):
    """Whether ``pid`` runs from the agent folder (its working directory or its command line):
    a pid file the user can write must not make this module signal any other process."""
    real_root = os.path.realpath(root)
    try:
        cwd = os.path.realpath(os.readlink("/proc/%d/cwd" % pid))
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().decode("utf-8", "replace").split("\0")
    except (OSError, ValueError):
        return False
    inside = [a for a in [cwd] + argv if a == real_root or os.path.realpath(a).startswith(real_root + os.sep)]
    return bool(inside)


def _listdir(d):
    try:
        return os.listdir(d)
    except OSError:
        return []


def stage_dir(module, d):
    """The directory an installer is put in (never a symlink; readable, as the installer runs as the user)."""
    if os.path.lexists(d):
        module.fail_json(msg="refused: %s exists already (not made by this run)" % d)
    parent = os.path.dirname(d.rstrip("/"))
    os.makedirs(parent, mode=0o755, exist_ok=True)
    if os.path.islink(parent) or os.stat(parent).st_uid != os.geteuid():
        module.fail_json(msg="refused: %s is a symlink or not owned by the account this runs as" % parent)
    os.mkdir(d, 0o755)
    module.exit_json(changed=True, path=d)


def check_file(module, d, p):
    """The staged installer: a regular file (no symlink), executable, of the expected sha256."""
    path = os.path.join(d, p["src"])
    if not LEAF_RE.match(p["src"]) or os.path.islink(path) or not os.path.isfile(path):
        module.fail_json(msg="the installer %s is not a regular file on the PC" % path)
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if p["sha256"] and h.hexdigest() != p["sha256"].lower():
        module.fail_json(msg="the installer on the PC has sha256 %s, not %s" % (h.hexdigest(), p["sha256"]))
    os.chmod(path, 0o755)
    module.exit_json(changed=False, sha256=h.hexdigest(), path=path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            op=dict(type="str", required=True,
                    choices=["observe", "stop", "rename", "copy_config", "undo_config", "marker", "start", "verify",
                             "reach", "copy_tree", "run", "stage_dir", "check_file"]),
            host=dict(type="str", default=""), port=dict(type="int", default=0),
            root=dict(type="path"), users=dict(type="list", elements="str", default=[]),
            profiles_root=dict(type="path", default="/home"), local_path=dict(type="str", default=".local/share"),
            folder_name=dict(type="str", default="DoAi-Desktop-Agent"),
            version_file=dict(type="str", default="VERSION"), pid_file=dict(type="str", default="agent.pid"),
            lock_file=dict(type="str", default=".locked"),
            marker=dict(type="str", default=".doai-rollback.json"), content=dict(type="dict"),
            src=dict(type="str"), dest=dict(type="str"), keep_as=dict(type="str"), kept=dict(type="str", default=""),
            retries=dict(type="int", default=1), delay=dict(type="float", default=1),
            timeout=dict(type="float", default=30), command=dict(type="list", elements="str"),
            expected=dict(type="str", default=""), missing_ok=dict(type="bool", default=False),
            sha256=dict(type="str", default=""),
        ),
        required_if=[("op", "stop", ["root"]), ("op", "rename", ["root", "src", "dest"]),
                     ("op", "copy_config", ["root", "src", "dest", "keep_as"]),
                     ("op", "undo_config", ["root", "src", "dest", "keep_as"]), ("op", "marker", ["root", "content"]),
                     ("op", "start", ["root", "command"]), ("op", "verify", ["root"]),
                     ("op", "copy_tree", ["root", "src", "dest"]), ("op", "run", ["root", "command"]),
                     ("op", "stage_dir", ["root"]), ("op", "check_file", ["root", "src"])],
        supports_check_mode=True,
    )
    p = module.params
    op = p["op"]
    if op == "observe":
        try:
            module.exit_json(changed=False, users=observe(p))
        except ValueError as exc:
            module.fail_json(msg=str(exc))
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, msg="check mode: %s not run" % op)
    root = p["root"]
    if op == "stage_dir":
        stage_dir(module, root)
    if op == "check_file":
        check_file(module, root, p)
    if os.path.islink(root) or not os.path.isdir(root):
        module.fail_json(msg="%s is not the agent folder (missing, or a symlink)" % root)

    def at(rel):
        try:
            return _inside(root, rel)
        except ValueError as exc:
            module.fail_json(msg=str(exc))

    if op == "stop":
        pid = _pid(root, p["pid_file"])
        if pid is None:
            module.exit_json(changed=False, stopped=[])
        if not _is_agent(pid, root):
            module.fail_json(msg="pid %d named by %s does not run from the agent folder: not signalled" % (pid, p["pid_file"]))
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + p["timeout"]
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            module.fail_json(msg="agent still running after %s s: %d" % (p["timeout"], pid), still_running=[pid])
        module.exit_json(changed=True, stopped=[pid])

    if op == "rename":
        src, dest = at(p["src"]), at(p["dest"])
        if p["missing_ok"] and not os.path.lexists(src):
            module.exit_json(changed=False, moved=False)
        if os.path.islink(src):
            module.fail_json(msg="refused: %s is a symlink" % p["src"])
        attempt = 0
        while True:
            attempt += 1
            try:
                if os.path.lexists(dest):
                    raise FileExistsError("%s exists" % dest)
                holders = _lock_holders(src, p["lock_file"])
                if holders:
                    raise OSError("%s is in use (locked by pid %s)" % (p["src"], ", ".join(map(str, holders))))
                os.rename(src, dest)
                break
            except OSError as exc:
                if attempt >= max(1, p["retries"]):
                    module.fail_json(msg="rename %s -> %s failed after %d attempts: %s"
                                     % (p["src"], p["dest"], attempt, exc), attempts=attempt)
                time.sleep(p["delay"])
        module.exit_json(changed=True, attempts=attempt)

    if op == "copy_config":
        src, dest, keep_as = at(p["src"]), at(p["dest"]), at(p["keep_as"])
        if os.path.islink(src) or not os.path.isfile(src):
            module.exit_json(changed=False, copied=False, kept=False)
        data, like = _read_regular(src)
        if data is None:
            module.exit_json(changed=False, copied=False, kept=False)
        # The new file first, then the swap: a failure before the last rename leaves dest as it was.
        # It is the user's file, with the user's owner and mode (not root's 0600).
        tmp = _write_new(dest, data, like=like)
        kept = False
        if os.path.lexists(dest):
            os.rename(dest, keep_as)
            kept = True
        os.rename(tmp, dest)
        module.exit_json(changed=True, copied=True, kept=kept)

    if op == "undo_config":
        undo_config(module, at, p)

    if op == "copy_tree":
        src, dest = at(p["src"]), at(p["dest"])
        if os.path.islink(src) or not os.path.isdir(src):
            module.fail_json(msg="%s is not a directory (missing, or a symlink)" % p["src"])
        if os.path.lexists(dest):
            module.fail_json(msg="%s exists already" % p["dest"])
        # Links are copied as links, never followed: the folder is the user's.
        shutil.copytree(src, dest, symlinks=True)
        module.exit_json(changed=True)

    if op == "run":
        current = at("app-current")
        argv = [current + a[len("{current}"):] if a == "{current}" or a.startswith("{current}/") else a
                for a in p["command"]]
        if not os.path.isfile(argv[0]):
            module.fail_json(msg="%s does not exist" % argv[0])
        # In the user's context, as a per-user installer runs on Windows: as the folder's owner
        # (a file the user can write never runs with more rights than the user has).
        owner = os.stat(root)
        as_owner = {"user": owner.st_uid, "group": owner.st_gid, "extra_groups": []} \
            if os.geteuid() == 0 and owner.st_uid != 0 else {}
        try:
            proc = subprocess.run(argv, cwd=root, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=p["timeout"], check=False, **as_owner)
        except subprocess.TimeoutExpired:
            module.fail_json(msg="%s still running after %s s: stopped" % (os.path.basename(argv[0]), p["timeout"]))
        tail = (proc.stdout + proc.stderr).decode("utf-8", "replace")[-1000:]
        if proc.returncode != 0:
            module.fail_json(msg="%s exited with %d: %s" % (os.path.basename(argv[0]), proc.returncode, tail.strip()),
                             rc=proc.returncode)
        module.exit_json(changed=True, rc=0, output=tail)

    if op == "marker":
        path = at(p["marker"])
        os.rename(_write_new(path, json.dumps(p["content"], sort_keys=True).encode()), path)
        module.exit_json(changed=True)

    if op == "start":
        current = at("app-current")
        argv = [current + a[len("{current}"):] if a == "{current}" or a.startswith("{current}/") else a
                for a in p["command"]]
        with open(os.devnull, "rb") as devnull_in, open(os.devnull, "wb") as devnull_out:
            proc = subprocess.Popen(argv, cwd=current, stdin=devnull_in, stdout=devnull_out, stderr=devnull_out,
                                    start_new_session=True, close_fds=True)
        pid_path = at(p["pid_file"])
        os.rename(_write_new(pid_path, ("%d\n" % proc.pid).encode()), pid_path)
        module.exit_json(changed=True, pid=proc.pid)

    if op == "reach":  # read-only: answered in check mode too
        try:
            socket.create_connection((p["host"], p["port"]), timeout=p["timeout"]).close()
        except (OSError, ValueError) as exc:
            module.fail_json(msg="the backend's Socket.IO port %s:%s is not reachable from this PC: %s"
                             % (p["host"], p["port"], exc))
        module.exit_json(changed=False, reachable=True)

    if op == "verify":
        deadline = time.monotonic() + p["timeout"]
        while True:
            pid = _pid(root, p["pid_file"])
            if pid is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        version = _read_version(at("app-current"), p["version_file"])
        result = dict(changed=False, running=pid is not None, pid=pid, version=version)
        if pid is None or (p["expected"] and version != p["expected"]):
            module.fail_json(msg="verify: running=%s, app-current version %s, expected %s"
                             % (pid is not None, version, p["expected"] or "any"), **result)
        module.exit_json(**result)


if __name__ == "__main__":
    main()
