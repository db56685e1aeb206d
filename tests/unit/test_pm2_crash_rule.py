"""The crash-loop rule the PM2 apply (its reload watch) and verify (its health wait) share
(plugins/module_utils/doai_pm2.py, issue 20 goal 3): restarts counted from a baseline, a
reload's own restart allowed where the reload is watched, PM2's "errored" at once."""
from __future__ import annotations

from tests.conftest import module_utils

pm2 = module_utils("doai_pm2")


def proc(restarts, status="online", pm_id=0):
    return {"name": "api", "pm_id": pm_id, "status": status, "restarts": restarts}


def test_restarts_from_the_baseline_reach_the_limit():
    base = {0: 5}
    assert pm2.crash_looping([proc(7)], base, 3) == []  # 2 since the baseline
    assert pm2.crash_looping([proc(8)], base, 3) == ["api (id 0): online, 3 restarts"]


def test_the_reload_watch_allows_the_reloads_own_restart():
    base = {0: 5}
    assert pm2.crash_looping([proc(8)], base, 3, allowed=1) == []  # the reload's own + 2
    assert pm2.crash_looping([proc(9)], base, 3, allowed=1) == ["api (id 0): online, 4 restarts"]


def test_errored_is_a_crash_loop_at_once_and_a_new_process_counts_from_zero():
    assert pm2.crash_looping([proc(0, "errored")], {0: 0}, 3) == ["api (id 0): errored, 0 restarts"]
    assert pm2.crash_looping([proc(3, pm_id=7)], {}, 3) == ["api (id 7): online, 3 restarts"]
    assert pm2.crash_looping([proc(None)], {0: 0}, 3) == []
