# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What node_modules holds, against what a commit needs (shared by capture and apply), and how
the apply swaps it (NodeModules, below)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

LOCKFILES = ("npm-shrinkwrap.json", "package-lock.json")  # npm prefers the shrinkwrap
_PROD_ONLY = ("--omit=dev", "--production", "--only=prod", "--only=production")


def omits_dev(install_argv):
    """Whether the install command leaves dev dependencies out (`npm ci --omit=dev`)."""
    argv = list(install_argv)
    return any(a in _PROD_ONLY for a in argv) or any(a == "--omit" and b == "dev" for a, b in zip(argv, argv[1:]))


def file_sha256(path):
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except (IOError, OSError):
        return None


def deps_missing(path, package_json):
    """True when node_modules lacks a dependency that ``package_json`` (its text) names."""
    if package_json is None:
        return False
    try:
        deps = json.loads(package_json).get("dependencies") or {}
    except (ValueError, AttributeError):
        return True
    return any(not os.path.isfile(os.path.join(path, "node_modules", name, "package.json")) for name in deps)


def installed_matches(path, lockfile, omit_dev=True):
    """Whether node_modules was installed for ``lockfile`` (its text): npm's own record of the
    last install, node_modules/.package-lock.json, lists the same packages at the same versions
    and integrity. False whenever that cannot be told (no record, lockfile v1, unreadable)."""
    try:
        want = json.loads(lockfile).get("packages")
        with open(os.path.join(path, "node_modules", ".package-lock.json"), encoding="utf-8") as fh:
            have = json.load(fh).get("packages")
    except (IOError, OSError, ValueError, AttributeError, TypeError):
        return False
    if not isinstance(want, dict) or not isinstance(have, dict):
        return False
    wanted = dict(
        (k, e) for k, e in want.items()
        if k and isinstance(e, dict) and not (omit_dev and e.get("dev"))  # "" is the app itself
    )
    for key, entry in wanted.items():
        got = have.get(key)
        if got is None:
            if entry.get("optional") or entry.get("devOptional"):
                continue  # not installed on this platform, or only for dev
            return False
        if not isinstance(got, dict) or any(got.get(f) != entry.get(f) for f in ("version", "integrity")):
            return False
    return all(k in wanted for k in have if k)


# -- node_modules swapped by rename, with a cache of the trees this host installed ------------------
#
# npm ci deletes node_modules before it installs: run in place, it leaves the release PM2 still
# serves without its dependencies for seconds. Instead the target's tree is made ready beside the
# app (from the cache, or `npm ci` in a staging directory holding the target's package.json and
# lockfile), and swapped in by two renames just before the reload; the tree it replaces goes
# into the cache under its own lockfile's hash, so going back (undo, the restore) is a rename.
# Cache layout: <root>/<sha256 of the lockfile>/{node_modules/, manifest.json}; staging
# directories are <root>/.staging-*; everything under <root> is on the app's filesystem.

MANIFEST = "manifest.json"
_STAGING = ".staging-"
_TRASH = ".trash-"
_STAGED_FILES = ("package.json", ".npmrc") + LOCKFILES  # what `npm ci` reads of the app
# A prepare's own directories (staging, trash): .prepare-<pid>-<token>[-...]. Nobody but that
# process touches them while it lives (it runs beside a rollback, without the apply's flock).
_PREPARE = ".prepare-"


class InstallError(Exception):
    """The target's node_modules could not be made ready; nothing of the app was changed yet."""


def lockfile_key(text):
    """Cache key of a lockfile: the sha256 of its bytes."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _device(path):
    """st_dev of ``path``, or of its nearest existing parent."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return os.stat(path).st_dev


def cache_root(app, cache_dir):
    """Where the cache and the staging directories live: ``cache_dir`` when it is on the app's
    filesystem (a rename across filesystems is a copy), else next to the app."""
    app = os.path.abspath(app)
    if cache_dir and _device(cache_dir) == _device(app):
        return os.path.abspath(cache_dir)
    return os.path.join(os.path.dirname(app), "." + os.path.basename(app) + ".node_modules")


def read_manifest(entry):
    try:
        with open(os.path.join(entry, MANIFEST), encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (IOError, OSError, ValueError):
        return None


def _write_manifest(entry, data):
    tmp = os.path.join(entry, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)
    os.rename(tmp, os.path.join(entry, MANIFEST))


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def entries(root):
    """Cache entries, oldest first: (key, path, manifest or None). Damaged ones sort first."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(path):
            continue
        manifest = read_manifest(path)
        stamp = manifest.get("cached", 0) if manifest else 0
        found.append((stamp if isinstance(stamp, (int, float)) else 0, name, path, manifest))
    return [(name, path, manifest) for _, name, path, manifest in sorted(found)]


def prune(root, keep, in_use=None):
    """Drop cache entries, oldest first, until ``keep`` are left; never the ``in_use`` key.
    Returns the keys dropped."""
    dropped = []
    listed = [e for e in entries(root) if e[0] != in_use]
    for key, path, _ in listed[:max(0, len(listed) - keep)]:
        shutil.rmtree(path, ignore_errors=True)
        dropped.append(key)
    return dropped


class NodeModules(object):
    """The app's node_modules across a checkout: ``prepare(target)`` before it (may run npm ci
    in staging; raises InstallError, the app untouched), ``swap_in()`` after it and before the
    reload, ``finish()`` after the reload (prune, clean up). ``steps`` records what ran.

    ``run(argv, cwd=None) -> (rc, out, err)`` runs a command (argv, no shell)."""

    def __init__(self, app, cache_dir, keep, install_argv, run, git_bin="git", steps=None):
        self.app = os.path.abspath(app)
        self.root = cache_root(self.app, cache_dir)
        self.keep = keep
        self.install_argv = list(install_argv)
        self.omit_dev = omits_dev(install_argv)
        self._run, self.git_bin = run, git_bin
        self.steps = [] if steps is None else steps  # the caller's list, appended to
        self.installed = False  # npm ran
        self.source = None  # "cache" or "install" when a tree is swapped in
        self.pruned = []
        self._staged = None  # directory holding the tree to swap in (its node_modules/)
        self._target_key = None
        self._current = (None, None)  # (cache key of the live tree or None, live commit)

    # -- reading the checkout ------------------------------------------------------------------
    def _git(self, *args):
        rc, out, _ = self._run([self.git_bin, "-C", self.app] + list(args))
        return out if rc == 0 else None

    def _show(self, rev, name):
        return self._git("show", "%s:%s" % (rev, name))

    def _lockfile(self, rev):
        for name in LOCKFILES:
            text = self._show(rev, name)
            if text is not None:
                return name, text
        return None, None

    def ready_for(self, lockfile, package_json, where=None):
        """node_modules under ``where`` (default: the app) was installed for ``lockfile``."""
        where = where or self.app
        if lockfile is not None and not installed_matches(where, lockfile, self.omit_dev):
            return False
        return not deps_missing(where, package_json)

    # -- the three phases ----------------------------------------------------------------------
    def prepare(self, target, force=False, if_stale=False):
        """Before the checkout of commit ``target``: make its node_modules ready beside the app
        when ``force`` (the plan says the lockfile changes) or ``if_stale`` and the app's tree was
        not installed for the target's lockfile. Returns whether a swap is pending."""
        if not (force or if_stale):
            return False
        self._tidy()
        name, lockfile = self._lockfile(target)
        package_json = self._show(target, "package.json")
        if self.ready_for(lockfile, package_json):
            return False  # e.g. a resumed run whose first job got this far
        head = (self._git("rev-parse", "--verify", "HEAD^{commit}") or "").strip()
        cur_lock = self._lockfile("HEAD")[1] if head else None
        cur_key = lockfile_key(cur_lock) if cur_lock is not None else None
        # The live tree is worth keeping only when it was installed for the live lockfile.
        keep_live = bool(cur_key and self.keep > 0 and self.ready_for(cur_lock, self._show("HEAD", "package.json")))
        self._current = (cur_key if keep_live else None, head)
        self._target_key = key = lockfile_key(lockfile) if lockfile is not None else None
        t0 = time.monotonic()
        if key and self._take_cached(key, lockfile, package_json):
            self.source = "cache"
            self.steps.append({"step": "node_modules from cache", "key": key, "rc": 0,
                               "seconds": round(time.monotonic() - t0, 3)})
        else:
            self._install(target, key, {"package.json": package_json, name: lockfile}, lockfile, package_json)
            self.source = "install"
        return True

    def swap_in(self):
        """After the checkout, before the reload: the app's tree goes into the cache under the
        previous lockfile's hash (when it was installed for it), the prepared tree takes its place."""
        if self._staged is None:
            return
        t0 = time.monotonic()
        live = os.path.join(self.app, "node_modules")
        stashed = None
        tree = os.path.join(self._staged, "node_modules")
        key, commit = self._current
        if not os.path.lexists(live):
            key = None
        entry = os.path.join(self.root, key) if key else None
        if entry:
            if os.path.lexists(entry):
                os.rename(entry, self._trash_path())  # an older copy of the same tree
            os.mkdir(entry)
        if os.path.lexists(live):
            # The app is without node_modules only between these two renames.
            os.rename(live, os.path.join(entry, "node_modules") if entry else self._trash_path())
        if os.path.isdir(tree):
            os.rename(tree, live)
        if entry:
            _write_manifest(entry, {"lockfile_sha256": key, "commit": commit, "cached": time.time(),
                                    "cached_at": _now(), "install_argv": self.install_argv})
            stashed = key
        shutil.rmtree(self._staged, ignore_errors=True)
        self._staged = None
        self.steps.append({"step": "node_modules swap", "source": self.source, "stashed": stashed, "rc": 0,
                           "seconds": round(time.monotonic() - t0, 3)})

    def finish(self):
        """After the reload: prune the cache to ``keep`` entries (oldest first) and drop what
        this run set aside. Never fails the apply."""
        if self.source is None:
            return
        try:
            self.pruned = prune(self.root, self.keep, in_use=self._target_key)
        except OSError:
            pass
        self._tidy()

    def report(self):
        return {"source": self.source, "installed": self.installed, "cache_dir": self.root,
                "key": self._target_key, "pruned": self.pruned}

    # -- internals -----------------------------------------------------------------------------
    def _take_cached(self, key, lockfile, package_json):
        """Move the cache entry ``key`` out to staging when it holds a tree installed for
        ``lockfile``; a damaged entry is dropped (the caller installs instead)."""
        entry = os.path.join(self.root, key)
        if not os.path.isdir(entry):
            return False
        manifest = read_manifest(entry)
        if (not manifest or manifest.get("lockfile_sha256") != key
                or not self.ready_for(lockfile, package_json, where=entry)):
            os.rename(entry, self._trash_path())
            return False
        self._staged = os.path.join(self.root, "%s%s-%d" % (_STAGING, key, os.getpid()))
        os.rename(entry, self._staged)
        return True

    def _install(self, target, key, files, lockfile, package_json):
        """`npm ci` (the install argv) in a staging directory holding the target's package.json,
        lockfile and .npmrc; the app keeps its node_modules meanwhile."""
        staging = os.path.join(self.root, "%s%s-%d" % (_STAGING, key or "nolock", os.getpid()))
        if os.path.lexists(staging):
            shutil.rmtree(staging)
        os.makedirs(staging)
        self._staged = staging
        npmrc = self._show(target, ".npmrc")
        if npmrc is not None:
            files[".npmrc"] = npmrc
        for fname, text in files.items():
            if fname and text is not None:
                with open(os.path.join(staging, fname), "w", encoding="utf-8", errors="surrogateescape") as fh:
                    fh.write(text)
        t0 = time.monotonic()
        rc, out, err = self._run(self.install_argv, cwd=staging)
        self.installed = True
        step = {"step": "install", "argv": self.install_argv, "cwd": staging, "rc": rc,
                "seconds": round(time.monotonic() - t0, 3)}
        self.steps.append(step)
        if rc != 0:
            self._discard()
            raise InstallError("install failed (rc %d): %s" % (rc, (err or out).strip()[-1000:]))
        if not self.ready_for(lockfile, package_json, where=staging):
            self._discard()
            step["rc"] = -1
            raise InstallError("install left a node_modules that does not match the lockfile of %s "
                               "(node_modules/.package-lock.json differs, or a dependency is missing)" % target[:12])
        if key:
            _write_manifest(staging, {"lockfile_sha256": key, "commit": target, "installed_at": _now(),
                                      "install_argv": self.install_argv})

    def _discard(self):
        if self._staged:
            shutil.rmtree(self._staged, ignore_errors=True)
        self._staged = None

    def _trash_path(self):
        n = 0
        while True:
            path = os.path.join(self.root, "%s%d-%d" % (_TRASH, os.getpid(), n))
            if not os.path.lexists(path):
                return path
            n += 1

    def _tidy(self):
        """Leftovers of this or an earlier interrupted apply: a tree taken out of the cache goes
        back into it; staging and trash are removed. The apply's flock means none is in use."""
        try:
            os.makedirs(self.root, exist_ok=True)
            names = os.listdir(self.root)
        except OSError:
            return
        for name in names:
            path = os.path.join(self.root, name)
            if path == self._staged:
                continue
            if name.startswith(_PREPARE):
                if not _prepare_alive(name):  # a prepare still installing keeps its directory
                    shutil.rmtree(path, ignore_errors=True)
                continue
            if name.startswith(_STAGING):
                manifest = read_manifest(path)
                key = manifest.get("lockfile_sha256") if manifest else None
                back = os.path.join(self.root, key) if isinstance(key, str) and len(key) == 64 else None
                if back and os.path.isdir(os.path.join(path, "node_modules")) and not os.path.lexists(back):
                    manifest.setdefault("cached", time.time())
                    _write_manifest(path, manifest)
                    os.rename(path, back)
                    continue
                shutil.rmtree(path, ignore_errors=True)
            elif name.startswith(_TRASH):
                shutil.rmtree(path, ignore_errors=True)


# -- prepare: the tree a rollback will need, installed into the cache ahead of time ---------------
#
# Run at the end of a deploy (and at any time): the target a rollback would go to gets its tree
# in the cache now, so that the rollback is a rename. It never touches the app's checkout, its
# node_modules or PM2, and it takes no lock a rollback waits on: it installs in a directory of
# its own (.prepare-<pid>-<token>, left alone by a rollback's tidy while this process lives) and
# renames the finished tree into the cache in one step (a rename onto an existing entry fails:
# whoever got there first wins). It prunes only while no apply runs (a non-blocking try of the
# apply's flock on the app directory), moving the dropped entries aside before deleting them.

PREPARED, ALREADY, NOT_NEEDED, WOULD_PREPARE, NO_LOCKFILE, DISABLED = (
    "prepared", "already_prepared", "not_needed", "would_prepare", "no_lockfile", "cache_disabled")


def _prepare_alive(name):
    """Whether the process that owns the prepare directory ``name`` (.prepare-<pid>-...) lives."""
    try:
        pid = int(name[len(_PREPARE):].split("-", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, another user's
    return True


def _try_flock(path):
    """A non-blocking exclusive flock on ``path`` (the apply holds one on the app directory
    while it runs): the open fd, or None when an apply holds it."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except (IOError, OSError):
        os.close(fd)
        return None


def entry_ready(nm, key, lockfile, package_json):
    """The cache entry ``key`` holds a tree installed for ``lockfile`` (as a rollback checks it)."""
    entry = os.path.join(nm.root, key)
    manifest = read_manifest(entry) if os.path.isdir(entry) else None
    return bool(manifest and manifest.get("lockfile_sha256") == key
                and nm.ready_for(lockfile, package_json, where=entry))


def cached_tree(app, cache_dir, lockfile, package_json, omit_dev=True):
    """The cache key of ``lockfile`` when the cache holds a tree installed for it (a rollback
    to it takes the tree by rename), else None. Read only."""
    if lockfile is None:
        return None
    key = lockfile_key(lockfile)
    entry = os.path.join(cache_root(app, cache_dir), key)
    manifest = read_manifest(entry) if os.path.isdir(entry) else None
    if not manifest or manifest.get("lockfile_sha256") != key:
        return None
    if not installed_matches(entry, lockfile, omit_dev) or deps_missing(entry, package_json):
        return None
    return key


def prepare_cache(app, cache_dir, keep, install_argv, run, target, git_bin="git", check_mode=False):
    """Make the cache hold the node_modules tree of commit ``target`` (a full SHA). Returns a
    dict: ``status`` (one of PREPARED, ALREADY, NOT_NEEDED, WOULD_PREPARE, NO_LOCKFILE,
    DISABLED), ``key`` (the sha256 of the target's lockfile), ``lockfile`` (its name),
    ``cache_dir``, ``steps``, ``pruned``, ``prune_skipped``. Raises InstallError when npm fails
    (nothing is left behind)."""
    nm = NodeModules(app, cache_dir, keep, install_argv, run, git_bin=git_bin)
    out = {"cache_dir": nm.root, "key": None, "lockfile": None, "steps": nm.steps, "pruned": [],
           "prune_skipped": False}
    name, lockfile = nm._lockfile(target)
    package_json = nm._show(target, "package.json")
    out["lockfile"] = name
    if lockfile is None:
        out["status"] = NO_LOCKFILE  # `npm ci` needs one; nothing to key a tree by
        return out
    key = out["key"] = lockfile_key(lockfile)
    if nm.ready_for(lockfile, package_json):
        out["status"] = NOT_NEEDED  # the live tree is it: a rollback installs nothing
        return out
    if keep <= 0:
        out["status"] = DISABLED
        return out
    if entry_ready(nm, key, lockfile, package_json):
        out["status"] = ALREADY
        return out
    if check_mode:
        out["status"] = WOULD_PREPARE
        return out
    os.makedirs(nm.root, exist_ok=True)
    _tidy_prepares(nm.root)
    token = "%s%d-%s" % (_PREPARE, os.getpid(), os.urandom(4).hex())
    entry = os.path.join(nm.root, key)
    if os.path.isdir(entry):  # damaged (a rollback would drop it too): set it aside
        try:
            os.rename(entry, os.path.join(nm.root, token + "-trash"))
        except OSError:
            pass
    staging = os.path.join(nm.root, token)
    os.mkdir(staging)
    try:
        files = {"package.json": package_json, name: lockfile, ".npmrc": nm._show(target, ".npmrc")}
        for fname, text in files.items():
            if text is not None:
                with open(os.path.join(staging, fname), "w", encoding="utf-8", errors="surrogateescape") as fh:
                    fh.write(text)
        t0 = time.monotonic()
        rc, stdout, stderr = run(nm.install_argv, cwd=staging)
        step = {"step": "install", "argv": nm.install_argv, "cwd": staging, "rc": rc,
                "seconds": round(time.monotonic() - t0, 3)}
        nm.steps.append(step)
        if rc != 0:
            raise InstallError("install failed (rc %d): %s" % (rc, (stderr or stdout).strip()[-1000:]))
        if not nm.ready_for(lockfile, package_json, where=staging):
            step["rc"] = -1
            raise InstallError("install left a node_modules that does not match the lockfile of %s" % target[:12])
        for fname in files:  # the entry holds the tree and its manifest, as a rollback leaves one
            if os.path.lexists(os.path.join(staging, fname)):
                os.remove(os.path.join(staging, fname))
        _write_manifest(staging, {"lockfile_sha256": key, "commit": target, "cached": time.time(),
                                  "cached_at": _now(), "prepared": True, "install_argv": nm.install_argv})
        try:
            os.rename(staging, entry)  # atomic; fails when the entry exists (someone was quicker)
            out["status"] = PREPARED
        except OSError:
            if not entry_ready(nm, key, lockfile, package_json):
                raise
            out["status"] = ALREADY
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _tidy_prepares(nm.root, mine=token)
    out["pruned"], out["prune_skipped"] = prune_unless_applying(nm.app, nm.root, keep, key)
    return out


def _tidy_prepares(root, mine=None):
    """Remove the prepare directories of dead processes, and ``mine`` (this run's, by prefix)."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if name.startswith(_PREPARE) and ((mine and name.startswith(mine)) or not _prepare_alive(name)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def prune_unless_applying(app, root, keep, in_use):
    """Prune the cache to ``keep`` entries (never ``in_use``) when no apply runs on ``app``:
    (dropped keys, skipped). The entries go aside by rename under the apply's flock (quick), then
    are deleted without it."""
    fd = _try_flock(app)
    if fd is None:
        return [], True
    doomed = []
    try:
        listed = [e for e in entries(root) if e[0] != in_use]
        for key, path, _ in listed[:max(0, len(listed) - keep)]:
            aside = os.path.join(root, "%s%d-%s-pruned" % (_PREPARE, os.getpid(), os.urandom(4).hex()))
            try:
                os.rename(path, aside)
            except OSError:
                continue
            doomed.append((key, aside))
    finally:
        os.close(fd)
    for _, aside in doomed:
        shutil.rmtree(aside, ignore_errors=True)
    return [k for k, _ in doomed], False
