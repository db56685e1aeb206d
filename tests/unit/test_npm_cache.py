"""node_modules swapped by rename, with a cache keyed by lockfile hash (doai_npm.NodeModules),
on temp dirs: a real git repo, a stand-in for npm that writes what `npm ci` leaves."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import module_utils

npm = module_utils("doai_npm")

# `npm ci` as far as the cache cares: node_modules/<dep>/package.json for each package of the
# lockfile in the working directory, and npm's record, node_modules/.package-lock.json.
FAKE_NPM = """\
import json, os, sys
with open(os.environ["FAKE_NPM_LOG"], "a") as log:
    log.write(os.getcwd() + " " + " ".join(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_NPM_FAIL"):
    sys.exit("npm ERR! network")
data = json.load(open("package-lock.json"))
for key, entry in data["packages"].items():
    if key:
        os.makedirs(key, exist_ok=True)
        json.dump({"version": entry["version"]}, open(os.path.join(key, "package.json"), "w"))
data["packages"].pop("")
json.dump(data, open("node_modules/.package-lock.json", "w"))
"""


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


def lockfile(deps: dict[str, str]) -> str:
    packages = {"": {"name": "app", "dependencies": dict(deps)}}
    packages.update({f"node_modules/{n}": {"version": v, "integrity": f"sha512-{n}-{v}"} for n, v in deps.items()})
    return json.dumps({"name": "app", "lockfileVersion": 3, "packages": packages}, indent=2) + "\n"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run(argv, cwd=None):
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def app(tmp_path, monkeypatch):
    """An app checkout: v1 (express), v2 and v3 (express + dayjs, one lockfile); v3 checked
    out with its node_modules installed, as the sandbox has it."""
    r = tmp_path / "srv" / "app"
    r.mkdir(parents=True)
    git(r, "init", "-q", "-b", "main")
    (r / ".gitignore").write_text("node_modules/\n")
    shas = {}
    for v in ("v1", "v2", "v3"):
        deps = {"express": "4.21.2"} if v == "v1" else {"express": "4.21.2", "dayjs": "1.11.13"}
        (r / "package.json").write_text(json.dumps({"version": v, "dependencies": deps}))
        (r / "package-lock.json").write_text(lockfile(deps))
        git(r, "add", "-A")
        git(r, "commit", "-qm", v)
        shas[v] = git(r, "rev-parse", "HEAD")
    fake = tmp_path / "fake_npm.py"
    fake.write_text(FAKE_NPM)
    monkeypatch.setenv("FAKE_NPM_LOG", str(tmp_path / "npm.log"))
    (tmp_path / "npm.log").write_text("")
    assert run([sys.executable, str(fake), "ci"], cwd=r)[0] == 0  # v3's tree, installed in place
    (tmp_path / "npm.log").write_text("")
    return r, shas, [sys.executable, str(fake), "ci", "--omit=dev"]


def npm_calls(app_path: Path) -> list[str]:
    return (app_path.parent.parent / "npm.log").read_text().splitlines()


def roll(app_path, target, argv, cache, keep=3, force=True):
    """What the apply module does: prepare, checkout, swap in, (reload), finish."""
    nm = npm.NodeModules(str(app_path), str(cache), keep, argv, run=run)
    nm.prepare(target, force=force)
    git(app_path, "checkout", "-q", "--detach", target)
    nm.swap_in()
    nm.finish()
    return nm


def inode(app_path: Path) -> int:
    return (app_path / "node_modules" / "express" / "package.json").stat().st_ino


def test_changed_lockfile_installs_in_staging_and_going_back_is_a_rename(app, tmp_path):
    r, c, argv = app
    cache = tmp_path / "state" / "node_modules"
    v3_inode = inode(r)
    nm = roll(r, c["v1"], argv, cache)
    assert nm.source == "install" and nm.installed
    (call,) = npm_calls(r)
    assert call.startswith(str(cache / ".staging-")) and call.endswith("ci --omit=dev")  # not in the app
    assert not (r / "node_modules" / "dayjs").exists() and npm.installed_matches(str(r), lockfile({"express": "4.21.2"}))
    # v3's tree is in the cache, keyed by its lockfile's hash, with a manifest.
    v3_key = sha256(git(r, "show", f"{c['v3']}:package-lock.json") + "\n")
    entry = cache / v3_key
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["lockfile_sha256"] == v3_key and manifest["commit"] == c["v3"]
    assert (entry / "node_modules" / "express" / "package.json").stat().st_ino == v3_inode

    nm = roll(r, c["v3"], argv, cache)  # undo: a rename, npm does not run
    assert nm.source == "cache" and not nm.installed and len(npm_calls(r)) == 1
    assert inode(r) == v3_inode and (r / "node_modules" / "dayjs").is_dir()
    v1_key = sha256(lockfile({"express": "4.21.2"}))
    assert sorted(os.listdir(cache)) == [v1_key]  # v3's left the cache, v1's went in

    nm = roll(r, c["v1"], argv, cache)  # and forward again: a rename too
    assert nm.source == "cache" and len(npm_calls(r)) == 1 and not (r / "node_modules" / "dayjs").exists()


def test_unchanged_lockfile_does_nothing(app, tmp_path):
    r, c, argv = app
    before = inode(r)
    nm = npm.NodeModules(str(r), str(tmp_path / "cache"), 3, argv, run=run)
    assert nm.prepare(c["v2"], if_stale=True) is False  # same lockfile as v3: already installed for it
    nm.swap_in()
    nm.finish()
    assert nm.steps == [] and inode(r) == before and npm_calls(r) == []


def test_damaged_cache_entry_is_dropped_and_installed_instead(app, tmp_path):
    r, c, argv = app
    cache = tmp_path / "cache"
    roll(r, c["v1"], argv, cache)
    v3_key = sha256(git(r, "show", f"{c['v3']}:package-lock.json") + "\n")
    (cache / v3_key / "node_modules" / "dayjs" / "package.json").unlink()  # a dependency lost
    nm = roll(r, c["v3"], argv, cache)
    assert nm.source == "install" and len(npm_calls(r)) == 2
    assert (r / "node_modules" / "dayjs" / "package.json").is_file()
    # Same with an unreadable manifest.
    roll(r, c["v1"], argv, cache)  # from the cache
    (cache / v3_key / "manifest.json").write_text("{not json")
    assert roll(r, c["v3"], argv, cache).source == "install" and len(npm_calls(r)) == 3


def test_failed_install_leaves_the_app_as_it_was(app, tmp_path, monkeypatch):
    r, c, argv = app
    cache = tmp_path / "cache"
    before = inode(r)
    monkeypatch.setenv("FAKE_NPM_FAIL", "1")
    nm = npm.NodeModules(str(r), str(cache), 3, argv, run=run)
    with pytest.raises(npm.InstallError, match="network"):
        nm.prepare(c["v1"], force=True)
    assert inode(r) == before and nm.steps[-1]["rc"] == 1
    assert [n for n in os.listdir(cache) if n.startswith(".staging-")] == []


def test_install_that_does_not_match_the_lockfile_is_refused(app, tmp_path):
    r, c, argv = app
    nm = npm.NodeModules(str(r), str(tmp_path / "cache"), 3, ["true"], run=run)  # "installs" nothing
    with pytest.raises(npm.InstallError, match="does not match the lockfile"):
        nm.prepare(c["v1"], force=True)
    assert (r / "node_modules" / "dayjs").is_dir()


def _entry(root: Path, key: str, cached: float | None) -> None:
    (root / key / "node_modules").mkdir(parents=True)
    if cached is not None:
        (root / key / "manifest.json").write_text(json.dumps({"lockfile_sha256": key, "cached": cached}))


def test_prune_drops_oldest_first_and_never_the_one_in_use(tmp_path):
    root = tmp_path / "cache"
    for key, cached in (("c", 300.0), ("a", 100.0), ("d", 400.0), ("b", 200.0), ("x", None)):
        _entry(root, key, cached)
    (root / ".staging-y-1").mkdir()
    assert [k for k, _, _ in npm.entries(str(root))] == ["x", "a", "b", "c", "d"]  # damaged first
    assert npm.prune(str(root), 2, in_use="a") == ["x", "b"]
    assert sorted(os.listdir(root)) == [".staging-y-1", "a", "c", "d"]
    assert npm.prune(str(root), 0, in_use="d") == ["a", "c"]
    assert sorted(os.listdir(root)) == [".staging-y-1", "d"]


def test_cache_keeps_n_trees(app, tmp_path):
    r, c, argv = app
    cache = tmp_path / "cache"
    roll(r, c["v1"], argv, cache, keep=1)
    assert len(os.listdir(cache)) == 1
    roll(r, c["v3"], argv, cache, keep=0)  # keeps none: v1's tree is dropped, not cached
    assert os.listdir(cache) == []


def test_cache_on_another_filesystem_falls_back_next_to_the_app(tmp_path, monkeypatch):
    app = tmp_path / "srv" / "app"
    app.mkdir(parents=True)
    assert npm.cache_root(str(app), str(tmp_path / "state" / "nm")) == str(tmp_path / "state" / "nm")
    real = npm._device
    monkeypatch.setattr(npm, "_device", lambda p: 999 if "state" in p else real(p))
    assert npm.cache_root(str(app), str(tmp_path / "state" / "nm")) == str(tmp_path / "srv" / ".app.node_modules")
    assert npm.cache_root(str(app), "") == str(tmp_path / "srv" / ".app.node_modules")


def test_tree_left_in_staging_by_an_interrupted_apply_goes_back_into_the_cache(app, tmp_path):
    r, c, argv = app
    cache = tmp_path / "cache"
    roll(r, c["v1"], argv, cache)
    v3_key = sha256(git(r, "show", f"{c['v3']}:package-lock.json") + "\n")
    nm = npm.NodeModules(str(r), str(cache), 3, argv, run=run)
    nm.prepare(c["v3"], force=True)  # taken out of the cache ... and the apply dies here
    assert not (cache / v3_key).exists()
    nm = roll(r, c["v3"], argv, cache)  # the next apply puts it back first, then takes it
    assert nm.source == "cache" and len(npm_calls(r)) == 1


# -- prepare: the rollback's tree installed into the cache ahead of time ------------------------------
def prepare(app_path, target, argv, cache, keep=3, **kw):
    return npm.prepare_cache(str(app_path), str(cache), keep, argv, run, target, **kw)


def test_prepare_installs_once_and_the_rollback_takes_it_by_rename(app, tmp_path):
    r, c, argv = app
    cache = tmp_path / "state" / "node_modules"
    live, head = inode(r), git(r, "rev-parse", "HEAD")
    v1_key = sha256(lockfile({"express": "4.21.2"}))

    out = prepare(r, c["v1"], argv, cache)
    assert out["status"] == npm.PREPARED and out["key"] == v1_key and out["lockfile"] == "package-lock.json"
    (call,) = npm_calls(r)
    assert call.startswith(str(cache / ".prepare-"))  # in a directory of its own, not the app
    assert inode(r) == live and git(r, "rev-parse", "HEAD") == head and git(r, "status", "--porcelain") == ""
    entry = cache / v1_key
    assert sorted(os.listdir(entry)) == ["manifest.json", "node_modules"]
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["lockfile_sha256"] == v1_key and manifest["commit"] == c["v1"] and manifest["prepared"]
    assert sorted(os.listdir(cache)) == [v1_key]  # no staging left
    prepared = (entry / "node_modules" / "express" / "package.json").stat().st_ino

    assert prepare(r, c["v1"], argv, cache)["status"] == npm.ALREADY  # idempotent
    assert len(npm_calls(r)) == 1 and sorted(os.listdir(cache)) == [v1_key]

    nm = roll(r, c["v1"], argv, cache)  # the rollback: a rename, npm does not run
    assert nm.source == "cache" and not nm.installed and len(npm_calls(r)) == 1
    assert inode(r) == prepared
    v3_key = sha256(git(r, "show", f"{c['v3']}:package-lock.json") + "\n")
    assert sorted(os.listdir(cache)) == [v3_key]  # the replaced tree is parked: undo is a rename too
    assert (cache / v3_key / "node_modules" / "express" / "package.json").stat().st_ino == live


def test_prepare_not_needed_dry_run_and_disabled(app, tmp_path):
    r, c, argv = app
    cache = tmp_path / "cache"
    assert prepare(r, c["v2"], argv, cache)["status"] == npm.NOT_NEEDED  # v2's lockfile is live
    assert prepare(r, c["v1"], argv, cache, check_mode=True)["status"] == npm.WOULD_PREPARE
    assert prepare(r, c["v1"], argv, cache, keep=0)["status"] == npm.DISABLED
    assert npm_calls(r) == [] and not cache.exists()


def test_prepare_replaces_a_damaged_entry_and_a_failed_install_leaves_nothing(app, tmp_path, monkeypatch):
    r, c, argv = app
    cache = tmp_path / "cache"
    v1_key = sha256(lockfile({"express": "4.21.2"}))
    (cache / v1_key / "node_modules").mkdir(parents=True)  # no manifest: damaged
    monkeypatch.setenv("FAKE_NPM_FAIL", "1")
    with pytest.raises(npm.InstallError):
        prepare(r, c["v1"], argv, cache)
    assert os.listdir(cache) == []  # the damaged entry and the staging are gone
    monkeypatch.delenv("FAKE_NPM_FAIL")
    assert prepare(r, c["v1"], argv, cache)["status"] == npm.PREPARED
    assert sorted(os.listdir(cache)) == [v1_key]


def test_a_rollback_leaves_a_live_prepare_alone_and_prepare_prunes_only_without_an_apply(app, tmp_path):
    import fcntl

    r, c, argv = app
    cache = tmp_path / "cache"
    mine = cache / f".prepare-{os.getpid()}-abcd"  # a prepare still running (this process)
    dead = cache / ".prepare-999999999-abcd"  # one that was killed
    for d in (mine, dead):
        (d / "node_modules").mkdir(parents=True)
    roll(r, c["v1"], argv, cache)  # its tidy runs
    assert mine.is_dir() and not dead.exists()
    for n, key in enumerate(("a" * 64, "b" * 64, "c" * 64)):
        (cache / key / "node_modules").mkdir(parents=True)
        (cache / key / "manifest.json").write_text(json.dumps({"lockfile_sha256": key, "cached": n}))
    fd = os.open(r, os.O_RDONLY)  # an apply holds the checkout's flock
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert npm.prune_unless_applying(str(r), str(cache), 1, None) == ([], True)
    finally:
        os.close(fd)
    dropped, skipped = npm.prune_unless_applying(str(r), str(cache), 1, "a" * 64)
    # Oldest first, never the one in use: v3's tree (parked by the rollback just now) stays.
    assert not skipped and dropped == ["b" * 64, "c" * 64]
    v3_key = sha256(git(r, "show", f"{c['v3']}:package-lock.json") + "\n")
    assert sorted(p for p in os.listdir(cache) if not p.startswith(".")) == sorted(["a" * 64, v3_key])
    assert sorted(p for p in os.listdir(cache) if p.startswith(".")) == [mine.name]  # nothing aside left
