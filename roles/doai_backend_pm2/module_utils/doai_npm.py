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
