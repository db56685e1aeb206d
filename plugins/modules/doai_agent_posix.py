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
  - Called by the doai_agent_swap action plugin on POSIX hosts that stand in for the Windows PCs, one step
    per call, or (C(op=steps)) a user's whole sequence of steps in one call, in order, stopping at the first
    that fails - one round trip instead of one per step - or (C(op=batches)) the sequences of several users
    of the PC side by side, each a user's own folder. C(observe) changes nothing. Nothing is ever deleted.
options:
  op:
    description: The primitive.
    type: str
    required: true
    choices: [observe, stop, rename, copy_config, undo_config, marker, start, verify, reach, copy_tree, run, stage_dir,
              check_file, steps, batches]
  batches:
    description:
      - batches - several users' C(steps) lists, every step of every list validated before any runs; the lists
        run side by side (each in its own thread - a user's own folder and agent, nothing shared), each in order
        stopping at its first failure. The result's C(batches) holds, per list, its C(results),
        C(failed_index) (null when none failed) and C(changed).
    type: list
    elements: list
    default: []
  steps:
    description:
      - steps - the steps to run in order, each the options of one call (its own C(op), any op but observe,
        steps, stage_dir and check_file), validated as a call of its own. The result's C(results) holds each
        step's result up to the first that failed; C(failed_index) names that one.
    type: list
    elements: dict
    default: []
  root: {description: "The user's agent folder (every op but observe; stage_dir, check_file - the staging directory).", type: path}
  users: {description: "observe - target users; empty for every profile that has the folder.", type: list, elements: str, default: []}
  profiles_root: {description: "observe - the directory holding the user profiles.", type: path, default: /home}
  local_path: {description: "observe - the folder's parent inside a profile.", type: str, default: .local/share}
  folder_name: {description: "observe - the agent folder's name.", type: str, default: DoAi-Desktop-Agent}
  version_file: {description: "The version file inside an app folder.", type: str, default: VERSION}
  pid_file: {description: "The agent's pid file, relative to root.", type: str, default: agent.pid}
  lock_file:
    description: "A file in a folder listing the pids that hold it open (stand-in PCs only: a rename waits until none runs)."
    type: str
    default: .locked
  marker: {description: "The marker file, relative to root.", type: str, default: .doai-rollback.json}
  host: {description: "reach - the backend's Socket.IO host.", type: str, default: ""}
  port: {description: "reach - its port.", type: int, default: 0}
  content: {description: "marker - the marker's content.", type: dict}
  src:
    description: "rename, copy_config - source relative to root; undo_config - the copy of the user's config.json the rollback made (now in app-backup)."
    type: str
  dest:
    description: "rename, copy_config - destination relative to root; undo_config - the user's config.json from before the rollback (app-current)."
    type: str
  keep_as: {description: "copy_config, undo_config - where an existing destination is kept, relative to root.", type: str}
  kept: {description: "undo_config - where the rollback kept the backup's own config.json (empty - it kept none).", type: str, default: ""}
  retries: {description: "rename - attempts.", type: int, default: 1}
  delay: {description: "rename - seconds between attempts.", type: float, default: 1}
  timeout: {description: "stop, verify - seconds to wait.", type: float, default: 30}
  settle: {description: "verify - seconds the agent must keep running once found (one that dies as it starts fails).", type: float, default: 1.0}
  command: {description: "start, run - argv; the element C({current}) or a prefix C({current}/) names app-current.", type: list, elements: str}
  expected: {description: "verify - the version app-current must hold (empty - any).", type: str, default: ""}
  missing_ok: {description: "rename - a missing source is no error (nothing moved).", type: bool, default: false}
  sha256: {description: "check_file - the sha256 the file must have (empty - any; reported).", type: str, default: ""}
  lines:
    description:
      - observe - also read, for the whole-system checklist, whether each user's agent runs and the
        last I(lines) lines of its log (what doai_agent_diagnose returns, in C(checklist.evidence));
        a read that fails is kept with its cause (C(checklist.evidence_error)) and never stops the
        observe. 0 reads none.
    type: int
    default: 0
  log_file: {description: "observe - the agent's log file, relative to the agent folder.", type: str, default: agent.log}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Observe every profile that has the agent folder
  doai.rollback.doai_agent_posix:
    op: observe
    profiles_root: /home
"""

RETURN = r"""
users: {description: "observe - per user the folder, app dirs (version, config), running, marker.", type: list, returned: success}
results: {description: "steps - each step's result, in order, up to the first that failed.", type: list, returned: with op=steps}
failed_index: {description: "steps - the index of the step that failed.", type: int, returned: when a step failed}
batches: {description: "batches - per list given, its results, failed_index and changed.", type: list, returned: with op=batches}
checklist: {description: "observe - what I(lines) read (evidence, evidence_error).", type: dict, returned: with op=observe and lines}
"""

import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.doai.rollback.plugins.module_utils.doai_agent_read import evidence
from ansible_collections.doai.rollback.plugins.module_utils.doai_checklist import read_along
from ansible_collections.doai.rollback.plugins.module_utils.doai_proc import pid_alive

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
    # Each user once: the users of a PC run side by side (op=batches), one thread per folder.
    users = list(dict.fromkeys(p["users"])) or sorted(
        u for u in _listdir(root_all) if os.path.isdir(os.path.join(root_all, u, p["local_path"], p["folder_name"])))
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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _parts(rel):
    """``rel`` as path components inside the agent folder: no absolute path, no '..', no '.'."""
    if not rel or not isinstance(rel, str) or os.path.isabs(rel):
        raise ValueError("%r is not a path inside the agent folder" % (rel,))
    parts = [c for c in rel.replace("\\", "/").split("/") if c not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError("%r is not a path inside the agent folder" % (rel,))
    return parts


def open_dir_nofollow(path):
    """A descriptor of the directory ``path``, opened component by component from ``/`` with
    O_NOFOLLOW: a symlink on the way is followed only when root made it in a directory root owns
    (e.g. /home -> /var/home), never one a user could have made or replaced. The last component
    is never a symlink. ``ValueError`` says what is wrong."""
    if not os.path.isabs(path):
        raise ValueError("%s is not an absolute path" % path)
    fd = os.open("/", _DIR_FLAGS & ~os.O_NOFOLLOW)
    comps = [c for c in path.split("/") if c not in ("", ".")]
    try:
        for i, comp in enumerate(comps):
            if comp == "..":
                raise ValueError("%s holds '..'" % path)
            try:
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                st = _lstat_at(fd, comp)
                trusted = (st is not None and stat.S_ISLNK(st.st_mode) and st.st_uid == 0
                           and os.fstat(fd).st_uid == 0 and i < len(comps) - 1)
                if not trusted:
                    what = "a symlink" if st is not None and stat.S_ISLNK(st.st_mode) else (
                        "missing" if st is None else "not a directory (%s)" % exc.strerror)
                    raise ValueError("%s: %s is %s" % (path, "/" + "/".join(comps[:i + 1]), what)) from None
                nfd = os.open(comp, _DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=fd)  # root's own link
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _lstat_at(dir_fd, name):
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None


class Folder:
    """The user's agent folder, opened **once** (O_DIRECTORY|O_NOFOLLOW, no user-made symlink on
    its path) and checked (a directory, its owner recorded); every read, write, rename and copy
    below is done relative to that descriptor, each sub-directory opened with O_NOFOLLOW at the
    moment of use, each file with O_NOFOLLOW. The folder belongs to the user and this module runs
    as root: a user who swaps app-current (or the folder) for a symlink between a check and an
    act gets an error, never a file written where the link points."""

    def __init__(self, root):
        self.root = root
        self.fd = open_dir_nofollow(root)
        st = os.fstat(self.fd)
        if not stat.S_ISDIR(st.st_mode):
            os.close(self.fd)
            raise ValueError("%s is not a directory" % root)
        self.uid, self.gid = st.st_uid, st.st_gid

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def parent(self, rel):
        """``(dir_fd, name)``: a new descriptor of ``rel``'s directory (the caller closes it) and
        its last component. Every directory on the way is opened with O_NOFOLLOW."""
        parts = _parts(rel)
        fd = os.dup(self.fd)
        try:
            for comp in parts[:-1]:
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise ValueError("%s: %s is a symlink or not a directory (%s)" % (rel, comp, exc.strerror)) from None
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def lstat(self, rel):
        try:
            dfd, name = self.parent(rel)
        except ValueError:
            return None
        try:
            return _lstat_at(dfd, name)
        finally:
            os.close(dfd)

    def exists(self, rel):
        return self.lstat(rel) is not None

    def is_link(self, rel):
        st = self.lstat(rel)
        return st is not None and stat.S_ISLNK(st.st_mode)

    def is_dir(self, rel):
        st = self.lstat(rel)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def open_dir(self, rel):
        dfd, name = self.parent(rel)
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dfd)
        except OSError as exc:
            raise ValueError("%s is a symlink or not a directory (%s)" % (rel, exc.strerror)) from None
        finally:
            os.close(dfd)

    def read_regular(self, rel):
        """A regular file's bytes and stat (no symlink followed), or (None, None)."""
        try:
            dfd, name = self.parent(rel)
        except ValueError:
            return None, None
        try:
            return _read_regular_at(dfd, name)
        finally:
            os.close(dfd)

    def rename(self, src, dest):
        """``src`` to ``dest`` by rename(2) between the two directories' descriptors: the last
        components are never followed. An existing ``dest`` is refused."""
        sfd, sname = self.parent(src)
        try:
            dfd, dname = self.parent(dest)
            try:
                if _lstat_at(dfd, dname) is not None:
                    raise FileExistsError("%s exists" % dest)
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def unlink(self, rel):
        dfd, name = self.parent(rel)
        try:
            os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)


def _read_regular_at(dir_fd, name):
    try:
        # O_NONBLOCK: a fifo put in place of the file does not hang the open
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
    except OSError:
        return None, None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, None
        return f.read(), st


def _write_new_at(dir_fd, name, data, like=None):
    """Write ``data`` to a new temporary file beside ``name`` in ``dir_fd`` (O_CREAT|O_EXCL|
    O_NOFOLLOW: never an existing file, never through a symlink) and return its name; with
    ``like`` (an ``os.stat_result``) it gets that owner and those permission bits: a copy of the
    user's file stays the user's (this module runs as root; the agent runs as the user)."""
    tmp = "%s.doai-%d.tmp" % (name, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600,
                 dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        if like is not None:
            if os.geteuid() == 0 and (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(f.fileno(), like.st_uid, like.st_gid)
            os.fchmod(f.fileno(), like.st_mode & 0o777)
        os.fsync(f.fileno())
    return tmp


def _read_regular(folder, rel):
    """A regular file of the folder (no symlink followed): (bytes, stat) or (None, None)."""
    return folder.read_regular(rel)


def write_file(folder, rel, data, like=None, keep_as=None):
    """``rel`` replaced by a new file holding ``data`` (see ``_write_new_at``), written and renamed
    in the one descriptor of its directory; an existing ``rel`` is first renamed to ``keep_as``
    (when given; else replaced). Returns whether one was kept."""
    dfd, name = folder.parent(rel)
    try:
        tmp = _write_new_at(dfd, name, data, like=like)
        kept = False
        if keep_as is not None and _lstat_at(dfd, name) is not None:
            kfd, kname = folder.parent(keep_as)
            try:
                if _lstat_at(kfd, kname) is not None:
                    raise FileExistsError("%s exists" % keep_as)
                os.rename(name, kname, src_dir_fd=dfd, dst_dir_fd=kfd)
            finally:
                os.close(kfd)
            kept = True
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        return kept
    finally:
        os.close(dfd)


def copy_config(folder, src, dest, keep_as):
    """The user's config.json (``src``) copied to ``dest`` with its owner and mode, an existing
    ``dest`` kept as ``keep_as``: ``{"copied", "kept"}``. The new file first, then the swap: a
    failure before the last rename leaves ``dest`` as it was."""
    data, like = _read_regular(folder, src)
    if data is None:
        return {"copied": False, "kept": False}
    kept = write_file(folder, dest, data, like=like, keep_as=keep_as)
    return {"copied": True, "kept": kept}


def copy_tree(folder, src, dest):
    """``src`` copied whole as ``dest`` (which must not exist), through descriptors: every
    directory opened with O_NOFOLLOW, every file read with O_NOFOLLOW and written O_EXCL, links
    copied as links (never followed), owners and modes kept; anything else (a device, a fifo)
    refused. The folder is the user's: nothing outside it is read or written."""
    sfd = folder.open_dir(src)
    try:
        pfd, name = folder.parent(dest)
        try:
            if _lstat_at(pfd, name) is not None:
                raise FileExistsError("%s exists already" % dest)
            os.mkdir(name, 0o700, dir_fd=pfd)
            dfd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        finally:
            os.close(pfd)
        try:
            _copy_dir_fd(sfd, dfd, dest)
            _same_owner_and_mode(dfd, os.fstat(sfd))
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _same_owner_and_mode(fd, st):
    if os.geteuid() == 0:
        os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))


def _copy_dir_fd(sfd, dfd, where):
    for name in sorted(os.listdir(sfd)):
        st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o700, dir_fd=dfd)
            csfd = os.open(name, _DIR_FLAGS, dir_fd=sfd)
            try:
                cdfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                try:
                    _copy_dir_fd(csfd, cdfd, where + "/" + name)
                    _same_owner_and_mode(cdfd, os.fstat(csfd))
                finally:
                    os.close(cdfd)
            finally:
                os.close(csfd)
        elif stat.S_ISREG(st.st_mode):
            ifd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), dir_fd=sfd)
            try:
                fst = os.fstat(ifd)
                if not stat.S_ISREG(fst.st_mode):
                    raise OSError("%s/%s changed while copied" % (where, name))
                ofd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                              0o600, dir_fd=dfd)
                try:
                    while True:
                        chunk = os.read(ifd, 1 << 20)
                        if not chunk:
                            break
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(ofd, view):]
                    _same_owner_and_mode(ofd, fst)
                    os.utime(ofd, ns=(fst.st_atime_ns, fst.st_mtime_ns))
                finally:
                    os.close(ofd)
            finally:
                os.close(ifd)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
            if os.geteuid() == 0:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        else:
            raise OSError("%s/%s is neither a file, a directory nor a symlink: not copied" % (where, name))


def undo_config(module, folder, p):
    """An undo's config.json, in a folder the undo has swapped back: ``src`` the copy the rollback
    made of the user's config.json (the rolled-back agent's settings, now in app-backup), ``dest``
    the user's config.json from before the rollback (app-current), ``kept`` the backup's own
    config.json the rollback kept aside (or none), ``keep_as`` where ``dest`` is kept when the
    settings changed since the rollback. Unchanged settings: the copy (byte for byte the file
    that stays) is removed and the backup's own put back - the folders as before the rollback.
    Changed: they are moved into app-current, the earlier ones kept as ``keep_as``. Every action
    is returned (a failed undo puts them back); a second call finds nothing to do."""
    copy_, dest, keep_as = p["src"], p["dest"], p["keep_as"]
    kept = p["kept"] or None
    for rel in (copy_, dest, keep_as) + ((kept,) if kept else ()):
        if folder.is_link(rel):
            module.fail_json(msg="refused: %s is a symlink" % rel)
    actions = []

    def move(src_rel, dest_rel):
        if folder.exists(dest_rel):
            module.fail_json(msg="refused: %s exists" % dest_rel, actions=actions)
        folder.rename(src_rel, dest_rel)
        actions.append({"op": "rename", "src": src_rel, "dest": dest_rel})

    def backup_own_back():
        if kept:
            move(p["kept"], p["src"])

    if kept and not folder.exists(kept):
        module.exit_json(changed=False, settings="done", actions=[])  # put back already (an undo run again)
    data, _ = _read_regular(folder, copy_)
    if data is None:
        if folder.exists(copy_):
            module.fail_json(msg="refused: %s is not a regular file" % p["src"])
        backup_own_back()
        module.exit_json(changed=bool(actions), settings="none", actions=actions)
    original, _ = _read_regular(folder, dest)
    if original is not None and original == data:
        # The copy holds the bytes of the file that stays: nothing the user had is lost.
        folder.unlink(copy_)
        actions.append({"op": "remove", "path": p["src"], "same_as": p["dest"]})
        backup_own_back()
        module.exit_json(changed=True, settings="unchanged", actions=actions)
    if folder.exists(dest):
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


STEP_OPS = ["stop", "rename", "copy_config", "undo_config", "marker", "start", "verify", "reach", "copy_tree", "run"]


def argument_spec():
    return dict(
        op=dict(type="str", required=True,
                choices=["observe", "stage_dir", "check_file", "steps", "batches"] + STEP_OPS),
        host=dict(type="str", default=""), port=dict(type="int", default=0),
        root=dict(type="path"), users=dict(type="list", elements="str", default=[]),
        profiles_root=dict(type="path", default="/home"), local_path=dict(type="str", default=".local/share"),
        folder_name=dict(type="str", default="DoAi-Desktop-Agent"),
        version_file=dict(type="str", default="VERSION"), pid_file=dict(type="str", default="agent.pid"),
        lock_file=dict(type="str", default=".locked"),
        marker=dict(type="str", default=".doai-rollback.json"), content=dict(type="dict"),
        src=dict(type="str"), dest=dict(type="str"), keep_as=dict(type="str"), kept=dict(type="str", default=""),
        retries=dict(type="int", default=1), delay=dict(type="float", default=1),
        timeout=dict(type="float", default=30), settle=dict(type="float", default=1.0),
        command=dict(type="list", elements="str"),
        expected=dict(type="str", default=""), missing_ok=dict(type="bool", default=False),
        sha256=dict(type="str", default=""), steps=dict(type="list", elements="dict", default=[]),
        batches=dict(type="list", elements="list", default=[]),
        lines=dict(type="int", default=0), log_file=dict(type="str", default="agent.log"),
    )


REQUIRED_IF = [("op", "stop", ["root"]), ("op", "rename", ["root", "src", "dest"]),
               ("op", "copy_config", ["root", "src", "dest", "keep_as"]),
               ("op", "undo_config", ["root", "src", "dest", "keep_as"]), ("op", "marker", ["root", "content"]),
               ("op", "start", ["root", "command"]), ("op", "verify", ["root"]),
               ("op", "copy_tree", ["root", "src", "dest"]), ("op", "run", ["root", "command"]),
               ("op", "stage_dir", ["root"]), ("op", "check_file", ["root", "src"])]


def main():
    module = AnsibleModule(argument_spec=argument_spec(), required_if=REQUIRED_IF, supports_check_mode=True)
    p = module.params
    op = p["op"]
    if op == "observe":
        if p["lines"] > 0:  # the checklist's log lines, in this same call (before anything changes)
            read_along(module, [("evidence", lambda: evidence(
                p["profiles_root"], p["local_path"], p["folder_name"], list(dict.fromkeys(p["users"])),
                p["pid_file"], p["log_file"], p["lines"]))])
        try:
            module.exit_json(changed=False, users=observe(p))
        except ValueError as exc:
            module.fail_json(msg=str(exc))
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, msg="check mode: %s not run" % op)
    if op == "steps":
        run_steps(module)
    if op == "batches":
        run_batches(module)
    root = p["root"]
    if op == "stage_dir":
        stage_dir(module, root)
    if op == "check_file":
        check_file(module, root, p)
    try:
        folder = Folder(root)
    except (OSError, ValueError) as exc:
        module.fail_json(msg="%s is not the agent folder (missing, or a symlink): %s" % (root, exc))
    try:
        act(module, folder, p)
    except (OSError, ValueError) as exc:
        module.fail_json(msg="%s %s: %s (nothing followed out of the agent folder)" % (op, root, exc))
    finally:
        folder.close()


class _StepEnd(Exception):
    def __init__(self, result, failed):
        super().__init__(result.get("msg", ""))
        self.result, self.failed = result, failed


class _StepModule(object):
    """What ``act`` needs of the module for one step of op=steps: its params, and exit_json /
    fail_json that end the step (not the process)."""

    def __init__(self, params):
        self.params = params
        self.check_mode = False

    def exit_json(self, **result):
        raise _StepEnd(result, False)

    def fail_json(self, msg, **result):
        result["msg"] = msg
        raise _StepEnd(result, True)


def _validated(module, steps, where="steps"):
    """Each step validated as a call of its own (fail_json, nothing run, at the first that is not)."""
    validator = ArgumentSpecValidator(argument_spec(), required_if=REQUIRED_IF)
    checked = []
    for i, raw in enumerate(steps):
        if not isinstance(raw, dict) or raw.get("op") not in STEP_OPS:
            module.fail_json(msg="%s[%d]: op must be one of %s; nothing was run" % (where, i, ", ".join(STEP_OPS)))
        done = validator.validate(raw)
        if done.error_messages:
            module.fail_json(msg="%s[%d] (%s): %s; nothing was run" % (where, i, raw["op"], "; ".join(done.error_messages)))
        checked.append(done.validated_parameters)
    return checked


def _run_checked(checked):
    """Run validated steps in order, stopping at the first that fails: (results, failed_index or
    None, changed)."""
    results, changed = [], False
    for i, params in enumerate(checked):
        try:
            folder = Folder(params["root"])
        except (OSError, ValueError) as exc:
            results.append({"failed": True, "msg": "%s is not the agent folder (missing, or a symlink): %s"
                            % (params["root"], exc)})
            return results, i, changed
        try:
            act(_StepModule(params), folder, params)
            end = _StepEnd({"msg": "%s: no result" % params["op"]}, True)
        except _StepEnd as exc:
            end = exc
        except (OSError, ValueError) as exc:
            end = _StepEnd({"msg": "%s %s: %s (nothing followed out of the agent folder)"
                            % (params["op"], params["root"], exc)}, True)
        finally:
            folder.close()
        result = dict(end.result, failed=True) if end.failed else end.result
        changed = changed or bool(result.get("changed"))
        results.append(result)
        if end.failed:
            return results, i, changed
    return results, None, changed


def run_steps(module):
    """op=steps: each step validated as a call of its own, run in order in this one process,
    stopping at the first that fails (as the plugin's step-by-step loop stops)."""
    results, failed_index, changed = _run_checked(_validated(module, module.params["steps"]))
    if failed_index is not None:
        module.fail_json(msg=results[-1].get("msg") or "failed", results=results, failed_index=failed_index,
                         changed=changed)
    module.exit_json(changed=changed, results=results)


def run_batches(module):
    """op=batches: several users' steps, all validated before any runs, the users side by side
    (each list in its own thread: a user's own folder, descriptors and agent process; nothing
    in common), each list in order stopping at its first failure. A list whose thread ended
    without a result is reported with ``unknown``: which of its steps ran is not known."""
    checked = [_validated(module, b if isinstance(b, list) else [None], "batches[%d].steps" % i)
               for i, b in enumerate(module.params["batches"])]
    out = [None] * len(checked)

    def run(i):
        out[i] = _run_checked(checked[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(checked))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batches = [{"results": o[0], "failed_index": o[1], "changed": o[2]} if o is not None else {"unknown": True}
               for o in out]
    module.exit_json(changed=any(b.get("changed") or b.get("unknown") for b in batches), batches=batches)


def _check_rel(module, *rels):
    for rel in rels:
        try:
            _parts(rel)
        except ValueError as exc:
            module.fail_json(msg=str(exc))


def act(module, folder, p):
    """Every op on the user's folder, through ``folder``'s descriptor (see ``Folder``)."""
    op, root = p["op"], folder.root
    if op == "stop":
        pid = _pid_at(folder, p["pid_file"])
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
        _check_rel(module, p["src"], p["dest"])
        if p["missing_ok"] and not folder.exists(p["src"]):
            module.exit_json(changed=False, moved=False)
        if folder.is_link(p["src"]):
            module.fail_json(msg="refused: %s is a symlink" % p["src"])
        attempt = 0
        while True:
            attempt += 1
            try:
                if folder.exists(p["dest"]):
                    raise FileExistsError("%s exists" % p["dest"])
                holders = _lock_holders_at(folder, p["src"], p["lock_file"])
                if holders:
                    raise OSError("%s is in use (locked by pid %s)" % (p["src"], ", ".join(map(str, holders))))
                folder.rename(p["src"], p["dest"])
                break
            except (OSError, ValueError) as exc:
                if attempt >= max(1, p["retries"]):
                    module.fail_json(msg="rename %s -> %s failed after %d attempts: %s"
                                     % (p["src"], p["dest"], attempt, exc), attempts=attempt)
                time.sleep(p["delay"])
        module.exit_json(changed=True, attempts=attempt)

    if op == "copy_config":
        _check_rel(module, p["src"], p["dest"], p["keep_as"])
        # The user's file, with the user's owner and mode (not root's 0600), written in the
        # descriptor of app-current as it is when written: never where a link points.
        result = copy_config(folder, p["src"], p["dest"], p["keep_as"])
        module.exit_json(changed=result["copied"], **result)

    if op == "undo_config":
        _check_rel(module, p["src"], p["dest"], p["keep_as"], *([p["kept"]] if p["kept"] else []))
        undo_config(module, folder, p)

    if op == "copy_tree":
        _check_rel(module, p["src"], p["dest"])
        if folder.is_link(p["src"]) or not folder.is_dir(p["src"]):
            module.fail_json(msg="%s is not a directory (missing, or a symlink)" % p["src"])
        if folder.exists(p["dest"]):
            module.fail_json(msg="%s exists already" % p["dest"])
        # Links are copied as links, never followed: the folder is the user's.
        copy_tree(folder, p["src"], p["dest"])
        module.exit_json(changed=True)

    if op == "run":
        current = os.path.join(root, "app-current")
        argv = [current + a[len("{current}"):] if a == "{current}" or a.startswith("{current}/") else a
                for a in p["command"]]
        if not os.path.isfile(argv[0]):
            module.fail_json(msg="%s does not exist" % argv[0])
        # In the user's context, as a per-user installer runs on Windows: as the folder's owner
        # (a file the user can write never runs with more rights than the user has).
        as_owner = {"user": folder.uid, "group": folder.gid, "extra_groups": []} \
            if os.geteuid() == 0 and folder.uid != 0 else {}
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
        _check_rel(module, p["marker"])
        write_file(folder, p["marker"], json.dumps(p["content"], sort_keys=True).encode())
        module.exit_json(changed=True)

    if op == "start":
        _check_rel(module, p["pid_file"])
        current = os.path.join(root, "app-current")
        argv = [current + a[len("{current}"):] if a == "{current}" or a.startswith("{current}/") else a
                for a in p["command"]]
        with open(os.devnull, "rb") as devnull_in, open(os.devnull, "wb") as devnull_out:
            proc = subprocess.Popen(argv, cwd=current, stdin=devnull_in, stdout=devnull_out, stderr=devnull_out,
                                    start_new_session=True, close_fds=True)
        write_file(folder, p["pid_file"], ("%d\n" % proc.pid).encode())
        module.exit_json(changed=True, pid=proc.pid)

    if op == "reach":  # read-only: answered in check mode too
        try:
            socket.create_connection((p["host"], p["port"]), timeout=p["timeout"]).close()
        except (OSError, ValueError) as exc:
            module.fail_json(msg="the backend's Socket.IO port %s:%s is not reachable from this PC: %s"
                             % (p["host"], p["port"], exc))
        module.exit_json(changed=False, reachable=True)

    if op == "verify":
        _check_rel(module, p["pid_file"], p["version_file"])
        deadline = time.monotonic() + p["timeout"]
        while True:
            pid = _pid_at(folder, p["pid_file"])
            if pid is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        # Running means still running a moment later: an agent that dies as it starts (a bad
        # release) must not pass because it was looked at in its first milliseconds - right after
        # the start when a user's steps run in one call (op=steps).
        settle_end = time.monotonic() + p["settle"]
        while pid is not None and time.monotonic() < settle_end:
            time.sleep(0.1)
            if not pid_alive(pid):
                pid = None
        version = _version_at(folder, "app-current/" + p["version_file"])
        result = dict(changed=False, running=pid is not None, pid=pid, version=version)
        if pid is None or (p["expected"] and version != p["expected"]):
            module.fail_json(msg="verify: running=%s, app-current version %s, expected %s"
                             % (pid is not None, version, p["expected"] or "any"), **result)
        module.exit_json(**result)


def _version_at(folder, rel):
    """The first line of a version file of the folder (no symlink followed), or None."""
    data, _ = folder.read_regular(rel)
    if data is None:
        return None
    lines = data.decode("utf-8", "replace").splitlines()
    return (lines[0].strip() if lines else "") or None


def _pid_at(folder, pid_file):
    data, _ = folder.read_regular(pid_file)
    try:
        pid = int(data.decode().strip()) if data is not None else None
    except ValueError:
        return None
    return pid if pid is not None and pid_alive(pid) else None


def _lock_holders_at(folder, d, lock_file):
    """``_lock_holders`` through the folder's descriptor (no symlink followed)."""
    if not lock_file:
        return []
    data, _ = folder.read_regular(d + "/" + lock_file)
    if data is None:
        return []
    pids = [int(x) for x in data.decode("utf-8", "replace").split() if x.strip().isdigit()]
    return [pid for pid in pids if pid_alive(pid)]


if __name__ == "__main__":
    main()
