import json
import os
import socket
import subprocess
import time

import pytest

from doai_ansible.errors import ExitStatus, LockedError, UsageError
from doai_ansible.lock import Lock, all_locks


def test_acquire_release(tmp_path):
    lock = Lock(tmp_path, "backend", 3600)
    with lock.held(owner="me", reason="r", run_id="1") as info:
        assert lock.read().owner == "me" and info.pid == os.getpid()
        assert (os.stat(lock.path).st_mode & 0o777) == 0o600
    assert lock.read() is None


def _foreign(tmp_path, pid, *, age=0.0, host=None):
    (tmp_path / "backend.lock").write_text(json.dumps({
        "target": "backend", "owner": "alice@ops", "pid": pid, "host": host or socket.gethostname(),
        "acquired": time.time() - age, "reason": "hotfix", "run_id": "other"}))


def test_live_holder_blocks_with_who_and_why(tmp_path):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        _foreign(tmp_path, proc.pid)
        with pytest.raises(LockedError) as exc:
            Lock(tmp_path, "backend", 3600).acquire(owner="me", reason=None, run_id="2")
        assert exc.value.exit_status is ExitStatus.LOCKED
        assert "alice@ops" in str(exc.value) and "hotfix" in str(exc.value)
        with pytest.raises(LockedError):
            Lock(tmp_path, "backend", 3600).release()
        assert Lock(tmp_path, "backend", 3600).release(force=True).owner == "alice@ops"
    finally:
        proc.kill()
        proc.wait()


def test_dead_holder_is_taken_over(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    _foreign(tmp_path, proc.pid)
    info = Lock(tmp_path, "backend", 3600).acquire(owner="me", reason=None, run_id="3")
    assert info.owner == "me" and Lock(tmp_path, "backend", 3600).read().run_id == "3"


def test_old_lock_from_another_host_is_stale_after_ttl(tmp_path):
    _foreign(tmp_path, 1, host="elsewhere", age=7200)
    ((_info, stale),) = all_locks(tmp_path, 3600)
    assert stale and "older" in stale
    assert Lock(tmp_path, "backend", 3600).acquire(owner="me", reason=None, run_id="4").owner == "me"


def test_recent_lock_from_another_host_holds(tmp_path):
    _foreign(tmp_path, 1, host="elsewhere", age=10)
    with pytest.raises(LockedError):
        Lock(tmp_path, "backend", 3600).acquire(owner="me", reason=None, run_id="5")


def test_bad_target_name(tmp_path):
    with pytest.raises(UsageError):
        Lock(tmp_path, "../etc", 10)


def test_dry_run_release_removes_nothing_and_refuses_like_the_release(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    _foreign(tmp_path, proc.pid)  # a dead holder: the release would remove it
    assert Lock(tmp_path, "backend", 3600).release(dry_run=True).owner == "alice@ops"
    assert Lock(tmp_path, "backend", 3600).read().owner == "alice@ops"  # still there
    live = subprocess.Popen(["sleep", "30"])
    try:
        _foreign(tmp_path, live.pid)
        with pytest.raises(LockedError):
            Lock(tmp_path, "backend", 3600).release(dry_run=True)
        assert Lock(tmp_path, "backend", 3600).release(force=True, dry_run=True).pid == live.pid
        assert Lock(tmp_path, "backend", 3600).read().pid == live.pid
    finally:
        live.kill()
        live.wait()
