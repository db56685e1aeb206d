# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A module's work as a job detached from the SSH session, for the steps an outage waits on.

Ansible's ``async`` does the same but costs a rollback ~2 s (no pipelining, polls of a whole
second, a cleanup round trip). Here the module forks a worker (double fork + setsid, stdio on
/dev/null) that does the work and writes its progress and result to ``<job_dir>/<job>.json``;
the module itself waits on that file (every 50 ms) and returns the result over the same,
pipelined, connection. If the session dies, the worker goes on. Running the module again with
the same ``job`` id attaches to the job instead of starting another: that is how SSH's retries,
the role's action plugin (which re-runs a task whose connection broke) and a later task (the
restart watch of the verify) follow a job.

The job file is JSON: ``{"job", "pid", "state": "running"|"done", "progress": {...}, "result": {...}}``;
the result carries the progress values and ``finished_at`` (epoch seconds on the host).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

from ansible_collections.doai.rollback.plugins.module_utils.doai_lock import keep_fresh
from ansible_collections.doai.rollback.plugins.module_utils.doai_proc import pid_alive

JOB_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")
POLL_S = 0.05
KEEP_S = 7 * 86400  # job files older than this are removed when a job starts


class _Exit(Exception):
    """exit_json/fail_json called in the worker: the job's result."""

    def __init__(self, result):
        super(_Exit, self).__init__("exit")
        self.result = result


def _write(path, data):
    # Atomic for readers (rename); not fsync'd: a write sits before the reload, on the path an
    # outage waits on, and a host that crashes loses the job anyway.
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, default=str)
    os.rename(tmp, path)


def read_job(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (IOError, OSError, ValueError):
        return None


def _prune(job_dir):
    now = time.time()
    for name in os.listdir(job_dir):
        path = os.path.join(job_dir, name)
        try:
            if now - os.stat(path).st_mtime > KEEP_S:
                os.unlink(path)
        except OSError:
            pass


def _worker(module, path, job, work, timeout, lock=None, on_result=None):
    """In the detached process: run ``work(progress)`` and write its result; never returns.

    ``lock``: (path, run_id, ttl) of the host lock the job works under: the job records its
    process in it and refreshes it while it runs. ``on_result(result)``: called with the job's
    result before the job file says "done" (the job's own record in the host's ledger, which
    outlives a controller killed meanwhile); what it raises goes into the result."""
    state = {"job": job, "pid": os.getpid(), "state": "running", "progress": {}, "result": None}

    def progress(**values):
        state["progress"].update(values)
        _write(path, state)

    def finish(result):
        # The result carries what the job recorded on its way (its progress), as the module's
        # own keys would.
        done = dict(state["progress"], finished_at=time.time(), **result)
        if on_result is not None:
            try:
                on_result(done)
            except Exception as exc:  # the job's outcome stands; its record could not be written
                done["record_error"] = "%s: %s" % (type(exc).__name__, exc)
        state.update(state="done", result=done)
        _write(path, state)

    def stop(result):
        raise _Exit(result)

    def on_timeout(signum, frame):
        # The job's deadline: record the failure, then end the job's processes (npm, git).
        finish({"failed": True, "changed": True, "msg": "job %s still running after %d s: stopped" % (job, timeout)})
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)
        os._exit(1)

    module.exit_json = lambda **kw: stop(dict(kw, failed=False))
    module.fail_json = lambda **kw: stop(dict(kw, failed=True))
    signal.signal(signal.SIGALRM, on_timeout)
    signal.alarm(max(1, int(timeout)))
    try:
        progress()
        if lock:
            keep_fresh(*lock)
        work(progress)
        finish({"failed": True, "msg": "job %s ended without a result" % job})
    except _Exit as exc:
        finish(exc.result)
    except Exception as exc:  # whatever happens, the job file says so
        finish({"failed": True, "msg": "job %s failed: %s: %s" % (job, type(exc).__name__, exc)})
    os._exit(0)


def _detach(module, path, job, work, timeout, lock=None, on_result=None):
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        # Nothing of the SSH session: its pipes would keep the task open until the job ends.
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 1024)
        os.chdir("/")
        _worker(module, path, job, work, timeout, lock, on_result)
    finally:
        os._exit(1)


def _finishing(module, on_done):
    """Let ``on_done`` see (and add to) the result of a module that runs its work itself."""
    done, fail = module.exit_json, module.fail_json

    def exiting(**result):
        on_done(result)
        if result.pop("failed", False):
            return fail(**result)
        return done(**result)

    def failing(msg, **result):
        result.update(msg=msg, failed=True)
        on_done(result)
        result.pop("failed")
        return fail(**result)

    module.exit_json, module.fail_json = exiting, failing


def run_job(module, job_dir, job, work, timeout, until=None, lock=None, on_result=None, on_done=None):
    """Run ``work(progress)`` as job ``job`` (or attach to it, when it exists), then leave the
    module with the job's result: exit_json/fail_json as the worker called them.

    ``on_done(result)``: called here, in this module call (not in the job), with the job's final
    result (``failed`` among its keys) before the module returns it; it may add keys. It runs
    again in a call that attaches to the same finished job (a retried connection): it must be
    idempotent.

    ``work`` calls module.exit_json/fail_json as a module's main would; ``progress(**values)``
    records values in the job file. ``until``: a progress key that ends the wait early (the
    module then returns the progress, with ``reached: <until>``, and the job goes on; a later
    call with the same job id returns its result). ``lock``, ``on_result``: see :func:`_worker`."""
    if not job:  # no job asked for: run here, in the session
        if on_done is not None:
            _finishing(module, on_done)
        work(lambda **values: None)
        return
    if not JOB_RE.match(job):
        module.fail_json(msg="job id %r: letters, digits, '.', '_', '-' only" % job)
    try:  # two callers with one id (a retried connection) may get here at the same time
        os.makedirs(job_dir, 0o700)
    except OSError:
        if not os.path.isdir(job_dir):
            raise
    path = os.path.join(job_dir, job + ".json")
    try:  # the first caller with this id starts the job; later ones attach to it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        attached = False
    except FileExistsError:
        attached = True
    if not attached:
        _prune(job_dir)
        _detach(module, path, job, work, timeout, lock, on_result)
    end = time.monotonic() + timeout + 30
    while True:
        data = read_job(path)
        if data and data.get("state") == "done":
            result = dict(data.get("result") or {}, job=job, attached=attached)
            if on_done is not None:
                on_done(result)
            if result.pop("failed", False):
                module.fail_json(**result)
            module.exit_json(**result)
        if data and until and until in (data.get("progress") or {}):
            module.exit_json(**dict(data["progress"], job=job, attached=attached, changed=False, reached=until))
        pid = (data or {}).get("pid")
        if data is not None and pid and not pid_alive(pid):
            data = read_job(path)  # it may have finished between the two reads
            if not data or data.get("state") != "done":
                module.fail_json(msg="job %s (pid %s) ended without a result" % (job, pid), job=job)
            continue
        if time.monotonic() > end:
            module.fail_json(msg="job %s gave no result in %d s" % (job, timeout + 30), job=job)
        time.sleep(POLL_S)
