"""The role's own modules, run as Ansible runs them (a JSON args file), on real git repos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "roles" / "doai_backend_pm2" / "library"


def module(name: str, tmp_path: Path, **args) -> dict:
    argfile = tmp_path / f"{name}-args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    # As Ansible ships them: the role's module_utils importable as ansible.module_utils.*
    boot = (f"import sys, ansible.module_utils as m; m.__path__.append({str(LIB.parent / 'module_utils')!r}); "
            f"sys.argv = ['module', {str(argfile)!r}]; "
            f"exec(compile(open({str(LIB / (name + '.py'))!r}).read(), {name!r}, 'exec'))")
    proc = subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, check=False)
    return json.loads(proc.stdout)


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "app"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    shas = []
    for v in (1, 2, 3):
        (r / "package.json").write_text(json.dumps({"version": f"{v}.0.0", "dependencies": {}}))
        (r / "package-lock.json").write_text(json.dumps({"v": 1 if v == 1 else 2}))
        git(r, "add", "-A")
        git(r, "commit", "-qm", f"v{v}")
        shas.append(git(r, "rev-parse", "HEAD"))
    return r, shas


def inspect(tmp_path, repo_path, **kw):
    return module("doai_backend_pm2_inspect", tmp_path, path=str(repo_path), state_dir=str(tmp_path / "state"),
                  pm2_bin="/bin/false", **kw)


def test_reflog_default_and_plan(tmp_path, repo):
    r, (_v1, v2, v3) = repo
    git(r, "checkout", "-q", "--detach", v2)
    git(r, "checkout", "-q", "--detach", v3)
    out = inspect(tmp_path, r)
    assert out["current"] == v3 and out["target"] == v2
    assert out["rule"].startswith("reflog:")
    assert out["lockfile_changed"] is False and out["current_version"] == "3.0.0" and out["target_version"] == "2.0.0"
    assert out["recent"][0].endswith("v3") and len(out["recent"]) == 3
    assert out["changed"] is False


def test_ledger_wins_and_rolled_back_from_is_skipped(tmp_path, repo):
    r, (v1, v2, v3) = repo
    state = tmp_path / "state"
    state.mkdir()
    recs = [
        {"action": "deploy", "from": None, "to": v1, "result": "deployed"},
        {"action": "deploy", "from": v1, "to": v3, "result": "deployed"},
        {"action": "rollback", "from": v3, "to": v1, "result": "succeeded"},
    ]
    git(r, "checkout", "-q", "--detach", v1)
    # Rolled back v3 -> v1: the default must not go "back" to v3, nor stay on v1.
    (state / "ledger.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
    out = inspect(tmp_path, r)
    # Nothing in the ledger but v1 and v3: the reflog's v2 (HEAD when it was committed) is next.
    assert out["target"] == v2 and out["rule"].startswith("reflog:"), out

    recs.insert(0, {"action": "deploy", "from": None, "to": v2, "result": "deployed"})
    (state / "ledger.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
    out = inspect(tmp_path, r)
    assert out["target"] == v2 and out["rule"].startswith("ledger:")
    assert out["lockfile_changed"] is True and out["needs_install"] is True


@pytest.mark.parametrize("bad", ["../x", "-x", "a..b", "HEAD@{1}", "x y", "x\n"])
def test_invalid_target_refused(tmp_path, repo, bad):
    r, _ = repo
    out = inspect(tmp_path, r, target=bad)
    assert out["failed"] and out["invalid_target"]


def test_unknown_target_and_dirty_tree(tmp_path, repo):
    r, (v1, _v2, _v3) = repo
    out = inspect(tmp_path, r, target="0" * 40)
    assert out["failed"] and out["invalid_target"] and "not a commit" in out["msg"]
    (r / "package.json").write_text("{}")
    (r / "new.txt").write_text("x")
    out = inspect(tmp_path, r, target=v1)
    assert sorted(out["dirty"]) == [" M package.json", "?? new.txt"]


def test_no_earlier_release(tmp_path):
    r = tmp_path / "one"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    (r / "a").write_text("a")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "only")
    out = inspect(tmp_path, r)
    assert out["failed"] and out["no_target"] and "--to" in out["msg"]


def test_not_a_checkout(tmp_path):
    (tmp_path / "plain").mkdir()
    out = inspect(tmp_path, tmp_path / "plain")
    assert out["failed"] and "not the top of a git checkout" in out["msg"]


def test_host_lock_takes_refuses_releases(tmp_path):
    path = str(tmp_path / "state" / "backend.lock")
    a = module("doai_host_lock", tmp_path, path=path, run_id="A", owner="alice", reason="r")
    assert a["changed"] and a["holder"]["owner"] == "alice"
    b = module("doai_host_lock", tmp_path, path=path, run_id="B", owner="bob")
    assert b["failed"] and b["locked"] and "alice" in b["msg"]
    # Releasing with someone else's run id leaves the lock alone.
    keep = module("doai_host_lock", tmp_path, path=path, run_id="B", state="absent")
    assert not keep["changed"] and os.path.isdir(path)
    done = module("doai_host_lock", tmp_path, path=path, run_id="A", state="absent")
    assert done["changed"] and not os.path.exists(path)


def test_stale_host_lock_is_taken_over(tmp_path):
    path = tmp_path / "state" / "backend.lock"
    module("doai_host_lock", tmp_path, path=str(path), run_id="A", owner="alice")
    os.utime(path, (1, 1))
    b = module("doai_host_lock", tmp_path, path=str(path), run_id="B", owner="bob", ttl=60)
    assert b["changed"] and b["holder"]["owner"] == "bob" and b.get("warnings")


def test_inspect_takes_the_lock_and_releases_it_when_it_fails(tmp_path, repo):
    r, (v1, _v2, _v3) = repo
    lock = tmp_path / "state" / "backend.lock"
    out = inspect(tmp_path, r, target=v1, lock_path=str(lock), run_id="A", owner="alice")
    assert out["locked_by_us"] and json.loads((lock / "owner.json").read_text())["owner"] == "alice"
    other = inspect(tmp_path, r, target=v1, lock_path=str(lock), run_id="B", owner="bob")
    assert other["failed"] and other["locked"] and "alice" in other["msg"]
    module("doai_host_lock", tmp_path, path=str(lock), run_id="A", state="absent")
    bad = inspect(tmp_path, r, target="0" * 40, lock_path=str(lock), run_id="C", owner="carol")
    assert bad["failed"] and bad["invalid_target"]
    assert not lock.exists()  # the failed capture did not leave its lock behind


def test_ledger_appends(tmp_path):
    path = tmp_path / "l" / "ledger.jsonl"
    for i in range(2):
        out = module("doai_ledger", tmp_path, path=str(path), record={"action": "rollback", "n": i})
        assert out["changed"]
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["n"] for x in lines] == [0, 1] and all("at" in x for x in lines)


def test_health_probe_survives_a_non_http_answer(tmp_path, repo):
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
        out = inspect(tmp_path, r, target=v1, health_url=url)
        assert not out.get("failed"), out
        assert out["health_status"] is None and out["healthy"] is False
        ver = module("doai_backend_pm2_verify", tmp_path, health_url=url, deadline=0.5, pm2_bin="/bin/false")
        assert ver["failed"] and ver["unhealthy"] and "no answer" in ver["msg"]
    finally:
        srv.close()
