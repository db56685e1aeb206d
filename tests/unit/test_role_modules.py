"""The roles' own modules, run as Ansible runs them (a JSON args file), on real git repos."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import module_utils
from tests.conftest import run_module as module

ROLES = Path(__file__).resolve().parents[2] / "roles"


history = module_utils("doai_history")
npm = module_utils("doai_npm")


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


def lockfile(deps: dict[str, str]) -> str:
    packages = {"": {"name": "app", "dependencies": dict(deps)}}
    packages.update({f"node_modules/{n}": {"version": v, "integrity": f"sha512-{n}-{v}"} for n, v in deps.items()})
    return json.dumps({"name": "app", "lockfileVersion": 3, "packages": packages}, indent=2)


def install(app: Path, lock: str) -> None:
    """What `npm ci` leaves: the packages, and npm's record of them (node_modules/.package-lock.json)."""
    data = json.loads(lock)
    for key, entry in data["packages"].items():
        if key:
            (app / key).mkdir(parents=True, exist_ok=True)
            (app / key / "package.json").write_text(json.dumps({"version": entry["version"]}))
    data["packages"].pop("")
    (app / "node_modules" / ".package-lock.json").write_text(json.dumps(data))


@pytest.fixture
def repo(tmp_path):
    """v1, v2, v3 of an app; v1's lockfile differs from v2's and v3's (as in the sandbox)."""
    r = tmp_path / "app"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    (r / ".gitignore").write_text("node_modules/\n")
    shas = []
    for v in (1, 2, 3):
        deps = {"express": "4.21.2"} if v == 1 else {"express": "4.21.2", "dayjs": "1.11.13"}
        (r / "package.json").write_text(json.dumps({"version": f"{v}.0.0", "dependencies": deps}))
        (r / "package-lock.json").write_text(lockfile(deps))
        git(r, "add", "-A")
        git(r, "commit", "-qm", f"v{v}")
        shas.append(git(r, "rev-parse", "HEAD"))
    return r, shas


@pytest.fixture
def pm2(tmp_path):
    """A stand-in for pm2: `jlist` prints one online app, `api`; anything else succeeds."""
    path = tmp_path / "pm2"
    app = {"name": "api", "pm_id": 0, "pm2_env": {"status": "online", "restart_time": 0, "exec_mode": "cluster_mode"}}
    path.write_text(f"#!/bin/sh\n[ \"$1\" = jlist ] && echo '{json.dumps([app])}'\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def capture(tmp_path, repo_path, pm2, **kw):
    kw.setdefault("ledger_path", str(tmp_path / "state" / "ledger.jsonl"))
    return module("doai_backend_pm2_capture", tmp_path, path=str(repo_path), pm2_bin=pm2, **kw)


def write_ledger(tmp_path, records):
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "ledger.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))


# -- the default-target rule (plugins/module_utils/doai_history.py) ------------------------


def deploy(a, b):
    return {"action": "deploy", "from": a, "to": b, "result": "deployed"}


def done(action, a, b, result="succeeded"):
    return {"action": action, "from": a, "to": b, "result": result}


def first(entries, current):
    return next((e["to"] for e in history.earlier_releases(entries, current)), None)


def test_rule_plain_deploy_history():
    ledger = [deploy(None, "v1"), deploy("v1", "v2"), deploy("v2", "v3")]
    assert first(ledger, "v3") == "v2"
    # After rolling back to v2, the next default goes further back, never to v3 again.
    ledger.append(done("rollback", "v3", "v2"))
    assert first(ledger, "v2") == "v1"


def test_rule_undo_cancels_the_rollback():
    ledger = [deploy(None, "v2"), deploy("v2", "v3"), done("rollback", "v3", "v2"), done("undo", "v2", "v3")]
    assert history.rolled_back_from(ledger) == set()
    # v3 -> v2, undone back to v3, then a rollback without a target: v2 again.
    assert first(ledger, "v3") == "v2"
    # v3 is no longer "rolled back from": after v4 it is the release live before.
    ledger.append(deploy("v3", "v4"))
    assert first(ledger, "v4") == "v3"


def test_rule_put_back_is_neither_rolled_back_from_nor_a_release():
    ledger = [deploy(None, "v2"), deploy("v2", "v3"), done("rollback", "v3", "v2"), done("put-back", "v2", "v3")]
    assert history.rolled_back_from(ledger) == {"v3"}
    assert first(ledger, "v3") == "v2"


def test_rule_a_killed_runs_job_record_is_its_rollback_until_the_controller_records():
    """Issue 18 item 1: the detached job's own entry (by: job, result applied) of a run whose
    controller was killed counts as that rollback: no default return to the release it left."""
    job = {"action": "rollback", "from": "v3", "to": "v1", "result": "applied", "by": "job", "run_id": "R"}
    ledger = [deploy(None, "v1"), deploy("v1", "v2"), deploy("v2", "v3"), job]
    assert history.rolled_back_from(ledger) == {"v3"}
    assert first(ledger, "v1") == "v2"
    # The controller's own record of the same run replaces the job's: here it put v3 back.
    ledger.append(dict(job, result="restored", by=None))
    assert history.rolled_back_from(ledger) == set() and first(ledger, "v3") == "v2"


def test_rule_ignores_failed_attempts_and_counts_resume_as_rollback():
    ledger = [deploy(None, "v1"), deploy("v1", "v2"), deploy("v2", "v3"), done("rollback", "v3", "v1", "restored")]
    assert first(ledger, "v3") == "v2"
    ledger.append(done("resume", "v3", "v2"))
    assert history.rolled_back_from(ledger) == {"v3"} and first(ledger, "v2") == "v1"


def test_capture_default_target_follows_the_rule(tmp_path, repo, pm2):
    r, (v1, v2, v3) = repo
    write_ledger(tmp_path, [deploy(None, v2), deploy(v2, v3), done("rollback", v3, v2), done("undo", v2, v3)])
    out = capture(tmp_path, r, pm2)
    assert out["target"] == v2 and out["rule"].startswith("ledger:"), out
    write_ledger(tmp_path, [deploy(None, v2), deploy(v2, v3), done("rollback", v3, v2), done("put-back", v2, v3)])
    out = capture(tmp_path, r, pm2)
    assert out["target"] == v2, out
    write_ledger(tmp_path, [deploy(None, v1), deploy(v1, v2), deploy(v2, v3)])
    install(r, git(r, "show", f"{v3}:package-lock.json"))
    out = capture(tmp_path, r, pm2)
    assert out["target"] == v2 and out["needs_install"] is False, out


def test_reflog_default_and_plan(tmp_path, repo, pm2):
    r, (_v1, v2, v3) = repo
    git(r, "checkout", "-q", "--detach", v2)
    git(r, "checkout", "-q", "--detach", v3)
    out = capture(tmp_path, r, pm2)
    assert out["current"] == v3 and out["head"] == v3 and out["target"] == v2
    assert out["rule"].startswith("reflog:")
    assert out["lockfile_changed"] is False and out["current_version"] == "3.0.0" and out["target_version"] == "2.0.0"
    assert out["recent"][0].endswith("v3") and len(out["recent"]) == 3
    assert out["processes"][0]["name"] == "api"
    assert out["changed"] is False


def test_ledger_wins_over_the_reflog(tmp_path, repo, pm2):
    r, (v1, v2, v3) = repo
    git(r, "checkout", "-q", "--detach", v1)
    # Rolled back v3 -> v1: the default must not go "back" to v3, nor stay on v1.
    recs = [deploy(None, v1), deploy(v1, v3), done("rollback", v3, v1)]
    write_ledger(tmp_path, recs)
    out = capture(tmp_path, r, pm2)
    # Nothing in the ledger but v1 and v3: the reflog's v2 (HEAD when it was committed) is next.
    assert out["target"] == v2 and out["rule"].startswith("reflog:"), out
    write_ledger(tmp_path, [deploy(None, v2)] + recs)
    out = capture(tmp_path, r, pm2)
    assert out["target"] == v2 and out["rule"].startswith("ledger:")
    assert out["lockfile_changed"] is True and out["needs_install"] is True


# -- refusals: a result key per kind ------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "-x", "a..b", "HEAD@{1}", "x y", "x\n"])
def test_invalid_target_refused(tmp_path, repo, pm2, bad):
    r, _ = repo
    out = capture(tmp_path, r, pm2, target=bad)
    assert out["failed"] and out["invalid_target"]


def test_unknown_target(tmp_path, repo, pm2):
    r, _ = repo
    out = capture(tmp_path, r, pm2, target="0" * 40)
    assert out["failed"] and out["invalid_target"] and "not a commit" in out["msg"]


def test_dirty_tree_is_refused_only_when_there_is_work(tmp_path, repo, pm2):
    r, (v1, _v2, v3) = repo
    (r / "package.json").write_text("{}")
    (r / "new.txt").write_text("x")
    out = capture(tmp_path, r, pm2, target=v1)
    assert out["failed"] and out["dirty_tree"] and "uncommitted changes" in out["msg"]
    assert sorted(out["dirty"]) == [" M package.json", "?? new.txt"]
    same = capture(tmp_path, r, pm2, target=v3)
    assert not same.get("failed") and same["changes"] is False and same["dirty"]
    allowed = capture(tmp_path, r, pm2, target=v1, refuse_dirty=False)
    assert not allowed.get("failed") and allowed["changes"]


def test_no_earlier_release(tmp_path, pm2):
    r = tmp_path / "one"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    (r / "a").write_text("a")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "only")
    out = capture(tmp_path, r, pm2)
    assert out["failed"] and out["no_target"] and "--to" in out["msg"]


def test_bad_path(tmp_path, pm2):
    (tmp_path / "plain").mkdir()
    out = capture(tmp_path, tmp_path / "plain", pm2)
    assert out["failed"] and out["bad_path"] and "not the top of a git checkout" in out["msg"]
    out = capture(tmp_path, tmp_path / "missing", pm2)
    assert out["failed"] and out["bad_path"]
    out = module("doai_backend_pm2_inspect", tmp_path, path=str(tmp_path / "plain"), pm2_bin=pm2)
    assert out["failed"] and out["bad_path"]


def test_unknown_app_is_refused_before_the_checkout(tmp_path, repo, pm2):
    r, (v1, _v2, v3) = repo
    out = capture(tmp_path, r, pm2, target=v1, apps=["api", "worker"])
    assert out["failed"] and out["unknown_app"] and out["unknown"] == ["worker"] and "worker" in out["msg"]
    assert git(r, "rev-parse", "HEAD") == v3
    assert capture(tmp_path, r, pm2, target=v1, apps=["api"])["processes"][0]["name"] == "api"
    empty = tmp_path / "pm2-empty"
    empty.write_text("#!/bin/sh\necho '[]'\n")
    empty.chmod(0o755)
    out = capture(tmp_path, r, str(empty), target=v1)
    assert out["failed"] and out["unknown_app"] and "any app" in out["msg"]
    out = capture(tmp_path, r, "/bin/false", target=v1)
    assert out["failed"] and out["pm2_unavailable"]


# -- the confirmed plan (pins) and resume ------------------------------------------------------------


def test_pinned_plan_is_applied_as_confirmed(tmp_path, repo, pm2):
    r, (v1, v2, v3) = repo
    out = capture(tmp_path, r, pm2, pin_from=v3, pin_to=v1, target="v2-is-ignored")
    assert out["target"] == v1 and out["current"] == v3 and out["rule"].startswith("confirmed plan")
    assert out["needs_install"] is True


def test_pinned_plan_refuses_when_someone_deployed_meanwhile(tmp_path, repo, pm2):
    r, (v1, v2, v3) = repo
    lock = tmp_path / "state" / "backend.lock"
    out = capture(tmp_path, r, pm2, pin_from=v2, pin_to=v1, lock_path=str(lock), run_id="A")
    assert out["failed"] and out["drifted"] and out["head"] == v3
    assert out["msg"] == (f"live commit is {v3[:12]}, not {v2[:12]} as planned (someone deployed meanwhile); "
                          "plan again")
    assert not lock.exists()  # refused: the lock it took is released


@pytest.mark.parametrize("pins", [{"pin_from": "abc", "pin_to": "def"}, {"pin_from": "0" * 40, "pin_to": "0" * 40}])
def test_pins_must_be_full_shas_of_the_checkout(tmp_path, repo, pm2, pins):
    r, _ = repo
    out = capture(tmp_path, r, pm2, **pins)
    assert out["failed"] and out["invalid_target"]


def test_resume_continues_under_the_same_run_lock(tmp_path, repo, pm2):
    r, (v1, _v2, v3) = repo
    lock = tmp_path / "state" / "backend.lock"
    first_run = capture(tmp_path, r, pm2, pin_from=v3, pin_to=v1, lock_path=str(lock), run_id="R1", owner="alice")
    assert first_run["locked_by_us"]
    # The host dropped out after the checkout; the same run resumes.
    git(r, "checkout", "-q", "--detach", v1)
    out = capture(tmp_path, r, pm2, pin_from=v3, pin_to=v1, resume=True, lock_path=str(lock), run_id="R1")
    assert out["locked_by_us"] and out["changes"] is True and out["current"] == v3 and out["head"] == v1
    assert out["needs_install"] is True  # node_modules was never installed for v1's lockfile
    install(r, git(r, "show", f"{v1}:package-lock.json"))
    out = capture(tmp_path, r, pm2, pin_from=v3, pin_to=v1, resume=True, lock_path=str(lock), run_id="R1")
    assert out["needs_install"] is False and out["changes"] is True
    # Another run cannot resume it, and the lock stays with its run.
    other = capture(tmp_path, r, pm2, pin_from=v3, pin_to=v1, resume=True, lock_path=str(lock), run_id="R2")
    assert other["failed"] and other["locked"] and lock.exists()


def test_resume_refuses_a_third_commit_and_needs_the_plan(tmp_path, repo, pm2):
    r, (v1, v2, v3) = repo
    git(r, "checkout", "-q", "--detach", v2)
    out = capture(tmp_path, r, pm2, pin_from=v3, pin_to=v1, resume=True)
    assert out["failed"] and out["drifted"] and f"not {v3[:12]} or {v1[:12]} as planned" in out["msg"]
    out = capture(tmp_path, r, pm2, resume=True)
    assert out["failed"] and out["invalid_target"] and "doai_backend_pm2_pins" in out["msg"]


# -- what node_modules was installed for ---------------------------------------------------------------


def test_installed_matches_npm_record(tmp_path):
    app = tmp_path / "app"
    lock_a = lockfile({"express": "4.21.2", "dayjs": "1.11.13"})
    lock_b = lockfile({"express": "4.21.2"})
    assert npm.installed_matches(str(app), lock_a) is False  # nothing installed
    install(app, lock_a)
    assert npm.installed_matches(str(app), lock_a) is True
    assert npm.installed_matches(str(app), lock_b) is False  # dayjs is extraneous for b
    data = json.loads(lock_a)
    data["packages"]["node_modules/dayjs"]["integrity"] = "sha512-other"
    assert npm.installed_matches(str(app), json.dumps(data)) is False
    data = json.loads(lock_a)
    data["packages"]["node_modules/jest"] = {"version": "29.0.0", "dev": True}
    assert npm.installed_matches(str(app), json.dumps(data), omit_dev=True) is True
    assert npm.installed_matches(str(app), json.dumps(data), omit_dev=False) is False
    assert npm.omits_dev(["npm", "ci", "--omit=dev"]) and npm.omits_dev(["npm", "ci", "--omit", "dev"])
    assert not npm.omits_dev(["npm", "ci"])


def test_apply_installs_only_when_node_modules_is_stale(tmp_path, repo, pm2):
    r, (v1, v2, v3) = repo
    install(r, git(r, "show", f"{v3}:package-lock.json"))
    fake_npm = tmp_path / "npm"
    # What `npm ci` leaves for v1 (express only), in the directory it runs in.
    fake_npm.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'npm.log'}\nmkdir -p node_modules/express\n"
                        "echo '{}' > node_modules/express/package.json\n"
                        "cp package-lock.json node_modules/.package-lock.json\n")
    fake_npm.chmod(0o755)
    args = dict(path=str(r), install_argv=[str(fake_npm), "ci", "--omit=dev"], pm2_bin=pm2, install_if_stale=True,
                cache_dir=str(tmp_path / "state" / "node_modules"))
    out = module("doai_backend_pm2_apply", tmp_path, commit=v2, **args)  # same lockfile as v3
    assert out["changed"] and out["installed"] is False and git(r, "rev-parse", "HEAD") == v2
    assert [s["step"] for s in out["steps"]] == ["checkout", "pm2 reload"]
    out = module("doai_backend_pm2_apply", tmp_path, commit=v1, **args)  # v1's lockfile differs
    assert out["installed"] is True and (tmp_path / "npm.log").read_text() == "ci --omit=dev\n", out
    assert not out.get("failed") and git(r, "rev-parse", "HEAD") == v1
    assert [s["step"] for s in out["steps"]] == ["install", "checkout", "node_modules swap", "pm2 reload"]
    assert not (r / "node_modules" / "dayjs").exists()  # v1's tree is live, v3's is in the cache
    assert out["node_modules"]["source"] == "install"
    assert len(list((tmp_path / "state" / "node_modules").glob("*/node_modules/dayjs"))) == 1


def _busy_pm2(tmp_path, busy: int, message: str = "Process 0 not found") -> str:
    """A stand-in for pm2 whose daemon is still replacing a process: `restart`/`reload` fail
    ``busy`` times as PM2's client says it (exit 1), then succeed; `jlist` prints one online app."""
    path, count = tmp_path / "busy-pm2", tmp_path / "busy-count"
    app = {"name": "api", "pm_id": 0, "pm2_env": {"status": "online", "restart_time": 0, "exec_mode": "cluster_mode"}}
    path.write_text(f"""#!/bin/sh
[ "$1" = jlist ] && echo '{json.dumps([app])}' && exit 0
echo "$@" >> {tmp_path / "pm2-calls"}
n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}
if [ "$n" -lt {busy} ]; then echo "[PM2] Applying action restartProcessId on app [all](ids: [ 0, 1 ])"
  echo "[PM2][ERROR] {message}" >&2; exit 1; fi
exit 0
""")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("crash_restarts", [0, 3])  # the plain run and the run watched for a crash loop
def test_a_pm2_still_replacing_a_process_is_asked_again(tmp_path, repo, crash_restarts):
    """The put-back after a crash loop restarts the app while PM2's daemon still swaps the
    cluster's workers from the reload that was stopped: PM2 answers "Process 0 not found" for a
    moment. The restart is tried again (a second apart) instead of leaving the host NOT restored."""
    r, (_v1, v2, _v3) = repo
    out = module("doai_backend_pm2_apply", tmp_path, path=str(r), commit=v2, install_argv=["true"],
                 pm2_bin=_busy_pm2(tmp_path, busy=2), pm2_mode="restart", crash_restarts=crash_restarts)
    assert out["changed"] and not out.get("failed"), out
    restarts = [s for s in out["steps"] if s["step"] == "pm2 restart"]
    assert [(s["rc"], s.get("try")) for s in restarts] == [(1, None), (1, 2), (0, 3)], out["steps"]
    assert (tmp_path / "pm2-calls").read_text().splitlines() == ["restart all"] * 3


def test_pm2_busy_for_too_long_or_an_unknown_app_fails_the_step(tmp_path, repo):
    r, (_v1, v2, _v3) = repo
    out = module("doai_backend_pm2_apply", tmp_path, path=str(r), commit=v2, install_argv=["true"],
                 pm2_bin=_busy_pm2(tmp_path, busy=99), pm2_mode="restart", crash_restarts=0)
    assert out["failed"] and "pm2 restart failed (rc 1, 6 tries)" in out["msg"], out
    gone = tmp_path / "gone"
    gone.mkdir()
    out = module("doai_backend_pm2_apply", gone, path=str(r), commit=v2, install_argv=["true"],
                 pm2_bin=_busy_pm2(gone, busy=99, message="Process or Namespace api not found"), pm2_mode="restart")
    assert out["failed"] and "6 tries" not in out["msg"] and len(out["steps"]) == 2, out  # checkout, one restart


def test_apply_waits_for_another_apply_on_the_checkout(tmp_path, repo, pm2):
    r, (_v1, v2, _v3) = repo
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(1.5)"), str(r)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = module("doai_backend_pm2_apply", tmp_path, path=str(r), commit=v2, install_argv=["true"], pm2_bin=pm2)
        assert out["changed"] and out["waited"] >= 0.5, out
        blocked = subprocess.Popen([sys.executable, "-c", (
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(5)"), str(r)], stdout=subprocess.PIPE, text=True)
        assert blocked.stdout.readline().strip() == "held"
        out = module("doai_backend_pm2_apply", tmp_path, path=str(r), commit=v2, install_argv=["true"], pm2_bin=pm2,
                     lock_wait=1)
        blocked.kill()
        blocked.wait()
        assert out["failed"] and "another apply" in out["msg"]
    finally:
        holder.wait()


# -- the lock and the ledger (doai_host_lock, doai_ledger) -----------------------------------------------------


def test_host_lock_takes_refuses_releases(tmp_path):
    path = str(tmp_path / "state" / "backend.lock")
    a = module("doai_host_lock", tmp_path, path=path, run_id="A", owner="alice", reason="r")
    assert a["changed"] and a["holder"]["owner"] == "alice"
    b = module("doai_host_lock", tmp_path, path=path, run_id="B", owner="bob")
    assert b["failed"] and b["locked"] and "alice" in b["msg"]
    # Releasing with someone else's run id leaves the lock alone.
    keep = module("doai_host_lock", tmp_path, path=path, run_id="B", state="absent")
    assert not keep["changed"] and os.path.isdir(path)
    done_ = module("doai_host_lock", tmp_path, path=path, run_id="A", state="absent")
    assert done_["changed"] and not os.path.exists(path)


def _age_lock(path, **more):
    """Make the lock at ``path`` look taken (and last refreshed) in 1970, with ``more`` in owner.json."""
    owner = json.loads((path / "owner.json").read_text())
    owner.update(more, since="1970-01-01T00:00:00Z", refreshed="1970-01-01T00:00:00Z")
    (path / "owner.json").write_text(json.dumps(owner))
    os.utime(path, (1, 1))


def _job_of(pid):
    """The job process entry a lock records: pid, start (field 22 of /proc/<pid>/stat), boot id."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {"pid": pid, "start_ticks": int(fields[19]),
            "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip()}


def test_stale_host_lock_is_taken_over(tmp_path):
    path = tmp_path / "state" / "backend.lock"
    module("doai_host_lock", tmp_path, path=str(path), run_id="A", owner="alice")
    _age_lock(path)
    b = module("doai_host_lock", tmp_path, path=str(path), run_id="B", owner="bob", ttl=60)
    assert b["changed"] and b["holder"]["owner"] == "bob" and b.get("warnings")


def test_host_lock_older_than_the_ttl_with_a_live_job_is_not_taken_over(tmp_path):
    """Issue 18 item 3: age alone never overrides a live holder. The lock records its run's
    detached job (pid + start time + boot id); while that process runs the lock holds, however
    old; once it is gone and the lock was not refreshed for the TTL, it is taken over."""
    path = tmp_path / "state" / "backend.lock"
    module("doai_host_lock", tmp_path, path=str(path), run_id="A", owner="alice")
    job = subprocess.Popen(["sleep", "120"])
    try:
        _age_lock(path, job=_job_of(job.pid))
        b = module("doai_host_lock", tmp_path, path=str(path), run_id="B", owner="bob", ttl=60)
        assert b["failed"] and b["locked"] and "alice" in b["msg"], b
        assert json.loads((path / "owner.json").read_text())["run_id"] == "A"
        # The same pid with another start time is a recycled pid, not the job.
        _age_lock(path, job=dict(_job_of(job.pid), start_ticks=1))
        c = module("doai_host_lock", tmp_path, path=str(path), run_id="C", owner="carol", ttl=60)
        assert c["changed"] and c["holder"]["owner"] == "carol", c
    finally:
        job.kill()
        job.wait()
    _age_lock(path, job=_job_of(os.getpid()) | {"pid": job.pid})  # the job is gone now
    d = module("doai_host_lock", tmp_path, path=str(path), run_id="D", owner="dave", ttl=60)
    assert d["changed"] and d["holder"]["owner"] == "dave" and d.get("warnings")


def test_host_lock_taken_again_by_its_run_is_refreshed(tmp_path):
    path = tmp_path / "state" / "backend.lock"
    module("doai_host_lock", tmp_path, path=str(path), run_id="A", owner="alice")
    _age_lock(path)
    again = module("doai_host_lock", tmp_path, path=str(path), run_id="A", owner="alice")
    assert not again["changed"] and again["holder"]["refreshed"] > "1970-01-01T00:00:00Z"
    b = module("doai_host_lock", tmp_path, path=str(path), run_id="B", owner="bob", ttl=60)
    assert b["failed"] and b["locked"], b


def test_capture_takes_the_lock_and_releases_it_when_it_refuses(tmp_path, repo, pm2):
    r, (v1, _v2, _v3) = repo
    lock = tmp_path / "state" / "backend.lock"
    out = capture(tmp_path, r, pm2, target=v1, lock_path=str(lock), run_id="A", owner="alice")
    assert out["locked_by_us"] and json.loads((lock / "owner.json").read_text())["owner"] == "alice"
    other = capture(tmp_path, r, pm2, target=v1, lock_path=str(lock), run_id="B", owner="bob")
    assert other["failed"] and other["locked"] and "alice" in other["msg"]
    status = module("doai_backend_pm2_inspect", tmp_path, path=str(r), pm2_bin=pm2, lock_path=str(lock))
    assert status["host_lock"]["owner"] == "alice" and status["host_lock"]["age_s"] >= 0
    module("doai_host_lock", tmp_path, path=str(lock), run_id="A", state="absent")
    bad = capture(tmp_path, r, pm2, target="0" * 40, lock_path=str(lock), run_id="C", owner="carol")
    assert bad["failed"] and bad["invalid_target"]
    assert not lock.exists()  # the refused capture did not leave its lock behind
    planned = capture(tmp_path, r, pm2, target=v1, lock_path=str(lock), run_id="D", plan_only=True)
    assert planned["locked_by_us"] is False and not lock.exists()


def test_ledger_appends_known_actions(tmp_path):
    path = tmp_path / "l" / "ledger.jsonl"
    for i, action in enumerate(("rollback", "undo", "put-back", "resume")):
        out = module("doai_ledger", tmp_path, path=str(path), record={"action": action, "n": i})
        assert out["changed"]
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["n"] for x in lines] == [0, 1, 2, 3] and all("at" in x for x in lines)
    bad = module("doai_ledger", tmp_path, path=str(path), record={"action": "rolback"})
    assert bad["failed"] and len(path.read_text().splitlines()) == 4


def test_ledger_record_releases_only_its_own_run_lock(tmp_path):
    lock = str(tmp_path / "state" / "backend.lock")
    ledger_ = str(tmp_path / "state" / "ledger.jsonl")
    assert module("doai_host_lock", tmp_path, path=lock, run_id="A")["changed"]
    other = module("doai_ledger", tmp_path, path=ledger_, release_lock=lock, record={"action": "rollback", "run_id": "B"})
    assert other["changed"] and other["lock_released"] is False and os.path.isdir(lock)
    own = module("doai_ledger", tmp_path, path=ledger_, release_lock=lock, record={"action": "rollback", "run_id": "A"})
    assert own["lock_released"] is True and not os.path.exists(lock)
    assert len(Path(ledger_).read_text().splitlines()) == 2


# -- the checklist's reads in the plan's capture (issue 20: one call per host before the change) --


def _read(out: dict) -> dict:
    return {k: v for k, v in out.items() if k not in ("changed", "invocation")}


def test_capture_reads_the_checklists_state_and_logs_in_the_same_call(tmp_path, repo, pm2):
    """What the status and diagnose modules would answer, read before the lock by the plan's
    capture itself; nothing is read when nothing is asked."""
    r, (v1, _v2, _v3) = repo
    lock = str(tmp_path / "state" / "backend.lock")
    out = capture(tmp_path, r, pm2, target=v1, lock_path=lock, plan_only=True, read_status=True, read_lines=5)
    assert not out.get("failed") and out["changes"], out
    inspect = module("doai_backend_pm2_inspect", tmp_path, path=str(r), pm2_bin=pm2, lock_path=lock)
    diagnose = module("doai_backend_pm2_diagnose", tmp_path, path=str(r), pm2_bin=pm2, lines=5)
    assert out["checklist"] == {"status": _read(inspect), "status_error": None,
                                "evidence": _read(diagnose), "evidence_error": None}
    assert "checklist" not in capture(tmp_path, r, pm2, target=v1, plan_only=True)


def test_with_a_pm2_daemon_the_capture_reads_both_from_one_jlist(tmp_path, repo):
    """Issue 20: `pm2 jlist` is node's start-up, most of a PM2 read: with the daemon running, the
    checklist's status and log reads share one, and each answers what the status and diagnose
    modules answer on their own. A plan takes no lock: that one read is the plan's too; a run
    that takes the host lock reads PM2 again under it."""
    r, (v1, _v2, _v3) = repo
    home = tmp_path / "pm2-home"
    home.mkdir()
    (home / "pm2.pid").write_text(str(os.getpid()))  # a live "daemon"
    out_log = tmp_path / "api-out.log"
    out_log.write_text("listening on 3000\n")
    app = {"name": "api", "pm_id": 0, "pid": None,
           "pm2_env": {"status": "online", "restart_time": 0, "pm_out_log_path": str(out_log)}}
    calls = tmp_path / "pm2-calls"
    pm2_bin = tmp_path / "pm2"
    pm2_bin.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n[ \"$1\" = jlist ] && echo '{json.dumps([app])}'\nexit 0\n")
    pm2_bin.chmod(0o755)
    lock = str(tmp_path / "state" / "backend.lock")
    where = dict(pm2_bin=str(pm2_bin), pm2_home=str(home))
    out = capture(tmp_path, r, str(pm2_bin), target=v1, lock_path=lock, plan_only=True, read_status=True,
                  read_lines=5, pm2_home=str(home))
    assert not out.get("failed") and out["changes"], out
    assert calls.read_text().splitlines() == ["jlist"]  # the reads' one is the plan's too
    inspect = module("doai_backend_pm2_inspect", tmp_path, path=str(r), lock_path=lock, **where)
    diagnose = module("doai_backend_pm2_diagnose", tmp_path, path=str(r), lines=5, **where)
    assert out["checklist"] == {"status": _read(inspect), "status_error": None,
                                "evidence": _read(diagnose), "evidence_error": None}
    assert "listening on 3000" in out["checklist"]["evidence"]["logs"][0]["text"]
    calls.unlink()
    taken = capture(tmp_path, r, str(pm2_bin), target=v1, lock_path=lock, plan_only=False, read_status=True,
                    read_lines=5, pm2_home=str(home))
    assert not taken.get("failed") and taken["locked_by_us"], taken
    assert calls.read_text().splitlines() == ["jlist", "jlist"]  # the reads' one, then one under the lock


def test_a_refused_capture_still_gives_the_checklist_what_it_read(tmp_path, repo, pm2):
    """The checklist keeps the state of a host whose plan refuses (here: another run holds its
    lock, and a path that is no checkout, whose status read fails with its cause)."""
    r, (v1, _v2, _v3) = repo
    lock = str(tmp_path / "state" / "backend.lock")
    assert module("doai_host_lock", tmp_path, path=lock, run_id="A", owner="alice")["changed"]
    out = capture(tmp_path, r, pm2, target=v1, lock_path=lock, run_id="B", read_status=True, read_lines=5)
    assert out["failed"] and out["locked"], out
    assert out["checklist"]["status"]["host_lock"]["owner"] == "alice"
    assert out["checklist"]["evidence"]["commit"] == git(r, "rev-parse", "HEAD")
    bare = tmp_path / "not-a-checkout"
    bare.mkdir()
    bad = capture(tmp_path, bare, pm2, target=v1, plan_only=True, read_status=True, read_lines=5)
    assert bad["failed"] and bad["bad_path"], bad
    assert bad["checklist"]["status"] is None and "not the top of a git checkout" in bad["checklist"]["status_error"]
    assert bad["checklist"]["evidence"]["release_error"] and bad["checklist"]["evidence_error"] is None


def test_a_read_that_breaks_is_kept_with_its_cause_and_the_module_goes_on():
    checklist = module_utils("doai_checklist")

    class Module:
        """The two calls of AnsibleModule that read_along wraps, recording what they are given."""
        def __init__(self):
            self.results = []
            self.fail_json = lambda **kw: self.results.append(("failed", kw))
            self.exit_json = lambda **kw: self.results.append(("done", kw))

    m = Module()

    def refuses():
        m.fail_json(msg="no such checkout")

    def breaks():
        raise OSError("disk gone")

    found = checklist.read_along(m, [("a", lambda: {"x": 1}), ("b", refuses), ("c", breaks)])
    assert found == {"a": {"x": 1}, "a_error": None, "b": None, "b_error": "no such checkout",
                     "c": None, "c_error": "OSError: disk gone"}
    assert m.results == []  # a read's own refusal did not end the module
    m.fail_json(msg="locked")
    m.exit_json(changed=False)
    assert m.results == [("failed", {"msg": "locked", "checklist": found}), ("done", {"changed": False, "checklist": found})]


# -- the status probe --------------------------------------------------------------------------------


def test_inspect_reports_and_takes_no_lock(tmp_path, repo, pm2):
    r, (_v1, _v2, v3) = repo
    out = module("doai_backend_pm2_inspect", tmp_path, path=str(r), pm2_bin=pm2,
                 lock_path=str(tmp_path / "state" / "backend.lock"))
    assert not out.get("failed"), out
    assert out["current"] == v3 and out["current_version"] == "3.0.0" and out["branch"] == "main"
    assert out["host_lock"] is None and out["health_status"] is None and out["processes"][0]["name"] == "api"
    assert not (tmp_path / "state").exists()


def test_health_probe_survives_a_non_http_answer(tmp_path, repo, pm2):
    """A health URL that points at the wrong port (here: something that talks like sshd)."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve():
        for _ in range(2):
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    r, (v1, v2, v3) = repo
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/api/health"
    try:
        out = capture(tmp_path, r, pm2, target=v1, health_url=url)
        assert not out.get("failed"), out
        assert out["health_status"] is None and out["healthy"] is False
        ver = module("doai_backend_pm2_verify", tmp_path, health_url=url, deadline=0.5, pm2_bin="/bin/false")
        assert ver["failed"] and ver["unhealthy"] and "no answer" in ver["msg"]
    finally:
        srv.close()


# -- jobs detached from the SSH session (module_utils doai_job) -----------------------------------------


def health_server(version="1.0.0"):
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = json.dumps({"status": "ok", "version": version}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/api/health"


def test_verify_job_reports_healthy_then_the_watch_attaches_to_it(tmp_path, pm2):
    import io
    import time

    sys.path.insert(0, str(ROLES.parent))
    from doai_ansible.render import Progress

    srv, url = health_server()
    jobs = tmp_path / "jobs"
    args = dict(health_url=url, deadline=5, expect_version="1.0.0", stable_seconds=1.5, pm2_bin=pm2,
                job="run-1-verify", job_dir=str(jobs))
    try:
        t0 = time.monotonic()
        healthy = module("doai_backend_pm2_verify", tmp_path, until="healthy", **args)
        assert time.monotonic() - t0 < 1.4, "returned at healthy, not after the watch"
        assert healthy["healthy"] is True and healthy["version"] == "1.0.0" and healthy["stable_seconds"] == 1.5
        assert healthy["job"] == "run-1-verify" and healthy["attached"] is False and healthy["reached"] == "healthy"
        # The job watches on without the module that started it.
        assert json.loads((jobs / "run-1-verify.json").read_text())["state"] == "running"
        out = io.StringIO()
        Progress(out, enabled=True)({"event": "runner_on_ok", "event_data": {"host": "vps1", "task": "Wait",
                                                                             "res": healthy}})
        assert "vps1: healthy on 1.0.0 at" in out.getvalue()
        assert "watching for restarts for 1.5 s" in out.getvalue()

        stable = module("doai_backend_pm2_verify", tmp_path, until="stable", **args)
        assert time.monotonic() - t0 >= 1.5 and not stable.get("failed"), stable
        assert stable["attached"] is True and stable["processes"][0]["status"] == "online"
        assert json.loads((jobs / "run-1-verify.json").read_text())["state"] == "done"
    finally:
        srv.shutdown()


def test_the_watchs_call_reads_the_logs_records_and_releases_the_lock_once(tmp_path):
    """Issue 20: the restart watch's call (until=stable) makes the run's last steps on the host
    in its own round trip: the PM2 log lines (scrubbed), the record in the ledger, the host lock
    released. A retried call adds no second record; a watch that fails records nothing and keeps
    the lock."""
    home = tmp_path / "pm2-home"
    home.mkdir()
    (home / "pm2.pid").write_text(str(os.getpid()))  # a live "daemon": the read starts none
    out_log = tmp_path / "api-out.log"
    out_log.write_text("listening on 3000\nconnecting to postgres://app:hunter2-canary@db:5432/doai\n")
    app = {"name": "api", "pm_id": 0, "pid": None,
           "pm2_env": {"status": "online", "restart_time": 0, "pm_out_log_path": str(out_log)}}
    pm2_bin = tmp_path / "pm2"
    pm2_bin.write_text(f"#!/bin/sh\n[ \"$1\" = jlist ] && echo '{json.dumps([app])}'\nexit 0\n")
    pm2_bin.chmod(0o755)
    lock = tmp_path / "state" / "backend.lock"
    ledger_ = tmp_path / "state" / "ledger.jsonl"
    assert module("doai_host_lock", tmp_path, path=str(lock), run_id="R1", owner="alice")["changed"]
    record = {"action": "rollback", "from": "a" * 40, "to": "b" * 40, "who": "alice", "why": "bad", "run_id": "R1"}
    srv, url = health_server()
    args = dict(health_url=url, deadline=5, stable_seconds=0.5, pm2_bin=str(pm2_bin), pm2_home=str(home),
                job="R1-verify", job_dir=str(tmp_path / "jobs"))
    last = dict(log_lines=10, record=record, ledger_path=str(ledger_), release_lock=str(lock))
    try:
        assert module("doai_backend_pm2_verify", tmp_path, until="healthy", **args)["reached"] == "healthy"
        assert lock.is_dir(), "nothing is released while the watch goes on"
        out = module("doai_backend_pm2_verify", tmp_path, until="stable", **args, **last)
        assert not out.get("failed") and out["recorded"] and out["lock_released"], out
        (entry,) = [json.loads(x) for x in ledger_.read_text().splitlines()]
        assert {k: entry[k] for k in record} == record and entry["result"] == "succeeded" and "by" not in entry
        assert not lock.exists()
        (log,) = out["logs"]
        assert log["app"] == "api" and log["kind"] == "out" and "listening on 3000" in log["text"]
        assert "hunter2-canary" not in json.dumps(out)
        again = module("doai_backend_pm2_verify", tmp_path, until="stable", **args, **last)  # a retried connection
        assert again["attached"] and again["recorded"] and not again["lock_released"]
        assert len(ledger_.read_text().splitlines()) == 1
        # A watch that fails (health never good) records nothing and leaves the lock to the role.
        assert module("doai_host_lock", tmp_path, path=str(lock), run_id="R2", owner="alice")["changed"]
        failing = dict(args, health_url="http://127.0.0.1:1/api/health", deadline=0.3, job="R2-verify")  # closed port
        bad = module("doai_backend_pm2_verify", tmp_path, until="stable", **failing,
                     **dict(last, record=dict(record, run_id="R2")))
        assert bad["failed"] and "recorded" not in bad and "logs" not in bad, bad
        assert lock.is_dir() and len(ledger_.read_text().splitlines()) == 1
    finally:
        srv.shutdown()


def test_the_watch_run_without_a_job_records_too(tmp_path, pm2):
    """The same last steps when the module runs its work in the session (no job id)."""
    ledger_ = tmp_path / "ledger.jsonl"
    record = {"action": "rollback", "from": "a" * 40, "to": "b" * 40, "who": "alice", "why": "bad", "run_id": "R3"}
    srv, url = health_server()
    try:
        out = module("doai_backend_pm2_verify", tmp_path, health_url=url, deadline=5, stable_seconds=0.2,
                     pm2_bin=pm2, until="stable", record=record, ledger_path=str(ledger_))
    finally:
        srv.shutdown()
    assert not out.get("failed") and out["recorded"], out
    (entry,) = [json.loads(x) for x in ledger_.read_text().splitlines()]
    assert entry["run_id"] == "R3" and entry["result"] == "succeeded"


def test_apply_job_is_attached_to_not_run_twice(tmp_path, repo, pm2):
    r, (_v1, v2, _v3) = repo
    fake_pm2 = tmp_path / "pm2-slow"
    fake_pm2.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'pm2.log'}\nsleep 1\n")
    fake_pm2.chmod(0o755)
    args = dict(path=str(r), commit=v2, install_argv=["true"], pm2_bin=str(fake_pm2), job="run-2-apply",
                job_dir=str(tmp_path / "jobs"))
    import threading

    first = {}
    t = threading.Thread(target=lambda: first.update(module("doai_backend_pm2_apply", tmp_path, **args)))
    t.start()
    second = module("doai_backend_pm2_apply", tmp_path, **args)  # a retried connection runs it again
    t.join()
    assert first["changed"] and second["changed"] and not first.get("failed") and not second.get("failed")
    assert sorted([first["attached"], second["attached"]]) == [False, True]
    assert first["steps"] == second["steps"]
    # one reload, not two (the crash-loop watch's `jlist` reads are not reloads)
    assert [c for c in (tmp_path / "pm2.log").read_text().splitlines() if c != "jlist"] == ["reload all"]
    assert git(r, "rev-parse", "HEAD") == v2


def test_apply_job_records_itself_in_the_ledger_and_holds_the_host_lock(tmp_path, repo, pm2):
    """Issue 18 items 1 and 3: the apply job writes its own ledger entry (it outlives a killed
    controller) and records its process in the host lock, refreshed."""
    r, (_v1, v2, v3) = repo
    lock = tmp_path / "state" / "backend.lock"
    ledger_ = tmp_path / "state" / "ledger.jsonl"
    assert module("doai_host_lock", tmp_path, path=str(lock), run_id="R1", owner="alice")["changed"]
    _age_lock(lock)
    record = {"action": "rollback", "from": v3, "to": v2, "who": "alice", "why": "bad", "run_id": "R1"}
    out = module("doai_backend_pm2_apply", tmp_path, path=str(r), commit=v2, install_argv=["true"], pm2_bin=pm2,
                 job="R1-apply", job_dir=str(tmp_path / "jobs"), record=record, ledger_path=str(ledger_),
                 lock_path=str(lock), lock_ttl=60)
    assert out["changed"] and not out.get("failed") and out["recorded"], out
    (entry,) = [json.loads(x) for x in ledger_.read_text().splitlines()]
    assert {k: entry[k] for k in record} == record and entry["result"] == "applied" and entry["by"] == "job"
    owner = json.loads((lock / "owner.json").read_text())
    assert owner["run_id"] == "R1" and owner["refreshed"] > "1970-01-01T00:00:00Z" and owner["job"]["pid"] > 0
    assert owner["job"]["start_ticks"] is not None
    # Without a record asked for, nothing is written (the restore's apply).
    module("doai_backend_pm2_apply", tmp_path, path=str(r), commit=v3, install_argv=["true"], pm2_bin=pm2,
           job="R1-restore", job_dir=str(tmp_path / "jobs"))
    assert len(ledger_.read_text().splitlines()) == 1


def test_ledger_read_returns_one_runs_entries(tmp_path):
    ledger_ = tmp_path / "ledger.jsonl"
    ledger_.write_text("".join(json.dumps(x) + "\n" for x in (
        {"action": "rollback", "run_id": "A", "result": "applied", "by": "job"},
        {"action": "rollback", "run_id": "B", "result": "succeeded"},
        {"action": "rollback", "run_id": "A", "result": "succeeded"})))
    out = module("doai_ledger_read", tmp_path, path=str(ledger_), run_id="A")
    assert [e["result"] for e in out["entries"]] == ["applied", "succeeded"] and out["last"]["result"] == "succeeded"
    assert module("doai_ledger_read", tmp_path, path=str(ledger_), run_id="C")["entries"] == []


# -- the roles' interfaces stay in step ------------------------------------------------------------


def test_defaults_argument_specs_readme_and_example_inventory_agree():
    import yaml

    role = ROLES / "doai_backend_pm2"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"]["options"]
    assert set(options) == set(defaults)
    for name, spec in options.items():
        assert spec["default"] == defaults[name], name
        assert spec.get("description"), name
    for name, spec in specs["status"]["options"].items():
        assert spec["default"] == defaults[name], name
    readme = (role / "README.md").read_text()
    assert [n for n in defaults if f"{n}:" not in readme] == []
    example = yaml.safe_load((ROLES.parent / "inventory" / "example" / "group_vars" / "backend.yml").read_text())
    assert example == defaults
