import dataclasses
import json
import os
import socket
import subprocess
import time

import pytest

from doai_ansible.errors import ExitStatus, LockedError, UsageError
from doai_ansible.lock import Lock, all_locks, process_start


def test_acquire_release(tmp_path):
    lock = Lock(tmp_path, "backend", 3600)
    with lock.held(owner="me", reason="r", run_id="1") as info:
        assert lock.read().owner == "me" and info.pid == os.getpid()
        assert (os.stat(lock.path).st_mode & 0o777) == 0o600
    assert lock.read() is None


def _foreign(tmp_path, pid, *, age=0.0, host=None, **more):
    (tmp_path / "backend.lock").write_text(json.dumps({
        "target": "backend", "owner": "alice@ops", "pid": pid, "host": host or socket.gethostname(),
        "acquired": time.time() - age, "reason": "hotfix", "run_id": "other", **more}))


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
    assert stale and "not refreshed" in stale
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


def test_a_live_holder_on_this_machine_is_never_stale_whatever_its_age(tmp_path):
    """Issue 18 item 3: a run with a 40-minute pg_dump is still running at minute 61; a second
    run must not take its lock over because of the lock's age."""
    # This very process (the lock it holds itself), and a live child recorded with its start time.
    lock = Lock(tmp_path, "database", 3600)
    with lock.held(owner="me", reason="long dump", run_id="mine"):
        data = json.loads(lock.path.read_text())
        data["acquired"] = data["refreshed"] = time.time() - 2 * 3600  # two TTLs old, never refreshed since
        lock.path.write_text(json.dumps(data))
        ((_info, stale),) = all_locks(tmp_path, 3600)
        assert stale is None
        with pytest.raises(LockedError):
            Lock(tmp_path, "database", 3600).acquire(owner="other", reason=None, run_id="theirs")
        assert lock.read().run_id == "mine"
    child = subprocess.Popen(["sleep", "30"])
    try:
        _foreign(tmp_path, child.pid, age=7200, started=process_start(child.pid), refreshed=time.time() - 7200)
        with pytest.raises(LockedError) as exc:
            Lock(tmp_path, "backend", 3600).acquire(owner="me", reason=None, run_id="6")
        assert "alice@ops" in str(exc.value)
        assert Lock(tmp_path, "backend", 3600).read().run_id == "other"
        with pytest.raises(LockedError):  # nor may `lock release` remove it without --force
            Lock(tmp_path, "backend", 3600).release()
    finally:
        child.kill()
        child.wait()


def test_a_recycled_pid_does_not_count_as_the_holder(tmp_path):
    """The pid is alive, but it is another process than the one that took the lock (its start
    time differs): the lock is stale and taken over."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        start = process_start(child.pid)
        assert start is not None
        boot, ticks = start.rsplit(":", 1)
        _foreign(tmp_path, child.pid, started=f"{boot}:{int(ticks) - 1}")  # an earlier process, same pid
        ((_info, stale),) = all_locks(tmp_path, 3600)
        assert stale and "another process" in stale
        info = Lock(tmp_path, "backend", 3600).acquire(owner="me", reason=None, run_id="7")
        assert info.owner == "me" and Lock(tmp_path, "backend", 3600).read().run_id == "7"
    finally:
        child.kill()
        child.wait()


def test_a_held_lock_is_refreshed_and_seen_alive_from_another_machine(tmp_path):
    """The holder refreshes its lock; another machine sharing the state dir measures staleness
    from the last refresh, not from when the lock was taken."""
    ttl = 0.4
    lock = Lock(tmp_path, "backend", ttl)
    with lock.held(owner="me", reason=None, run_id="8") as info:
        first = lock.read().refreshed
        deadline = time.monotonic() + 30  # bounded: how fast is not the point
        while lock.read().refreshed == first and time.monotonic() < deadline:
            time.sleep(0.05)
        later = lock.read()
        assert later.refreshed > first and later.acquired == info.acquired
        assert (os.stat(lock.path).st_mode & 0o777) == 0o600
        # Seen from another machine: taken long ago, refreshed just now -> not stale.
        elsewhere = dataclasses.replace(later, host="elsewhere", acquired=later.refreshed - 3600)
        assert elsewhere.stale_reason(ttl, now=later.refreshed + ttl / 2) is None
        assert "not refreshed" in elsewhere.stale_reason(ttl, now=later.refreshed + 2 * ttl)
        d = later.to_dict()
        assert d["refreshed_iso"] and "age_s" in d and "since_refresh_s" in d
    assert lock.read() is None
    assert not list(tmp_path.iterdir())  # no refresh file left behind
