"""The backend rollback playbook when the SSH link drops, on the real rig (sshd, git, npm, PM2).

The playbook is run directly with ansible-playbook, as an operator would. A small callback
plugin (written into the test's temp dir) records every task result and the playbook's
stats, so the tests read the role's result keys and its `doai_backend_pm2` stats the way
the CLI does. The link is cut with :meth:`Sandbox.cut_ssh`: sshd and its sessions are
killed, then sshd comes back on the same port with the same host key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

PLAYBOOK = ROOT / "playbooks" / "backend_pm2_rollback.yml"
# SSH's own retries (ansible.cfg) re-run a task whose connection broke, which rides out a few
# seconds by itself. The link-cut tests allow one quick retry only, so that the outage outlasts
# them and what they test is that the detached job is followed again (the role's action plugin
# attaches to it) once the host answers.
QUICK_RETRY = {"ANSIBLE_SSH_RETRIES": "1"}

CALLBACK = '''
from __future__ import annotations
import json, os
from ansible.plugins.callback import CallbackBase

class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "doai_fault_results"
    CALLBACK_NEEDS_ENABLED = True

    def _write(self, **record):
        with open(os.environ["DOAI_FAULT_RESULTS"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\\n")

    def _result(self, kind, result):
        self._write(kind=kind, host=result._host.get_name(), task=result._task.get_name(), res=result._result)

    def v2_runner_on_ok(self, result):
        self._result("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("failed", result)

    def v2_runner_on_unreachable(self, result):
        self._result("unreachable", result)

    def v2_playbook_on_stats(self, stats):
        self._write(kind="stats", custom=stats.custom.get("_run", {}))
'''


@dataclass
class Run:
    rc: int
    output: str
    results: list[dict] = field(default_factory=list)

    @property
    def stats(self) -> dict:
        return next(r["custom"] for r in self.results if r["kind"] == "stats")

    def host_stats(self, host: str) -> dict:
        return self.stats.get("doai_backend_pm2", {}).get(host, {})

    def task(self, name_part: str) -> list[dict]:
        return [r for r in self.results if r["kind"] != "stats" and name_part in r["task"]]

    def failures(self) -> list[dict]:
        return [r for r in self.results if r["kind"] in ("failed", "unreachable")]


@pytest.fixture
def sandbox(fresh_sandbox):
    """A rig of its own per test: a cut link leaves detached jobs and restarted sshds behind."""
    return fresh_sandbox


@pytest.fixture
def playbook(sandbox, tmp_path):
    """Run the rollback playbook against the sandbox: ``playbook(extravars, during=..., env=...)``."""
    cb_dir = tmp_path / "callbacks"
    cb_dir.mkdir()
    (cb_dir / "doai_fault_results.py").write_text(CALLBACK)
    # Short: ControlPath sockets live here (unix socket paths are limited to 108 bytes).
    cp_dir = Path(tempfile.mkdtemp(prefix="cp-", dir="/tmp"))
    runs = 0

    def run(extravars: dict, *, during: Callable[[], None] | None = None, env: dict[str, str] | None = None) -> Run:
        nonlocal runs
        runs += 1
        results = tmp_path / f"results-{runs}.jsonl"
        xv = tmp_path / f"extravars-{runs}.json"
        xv.write_text(json.dumps(extravars))
        full_env = dict(
            os.environ,
            PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            ANSIBLE_CALLBACK_PLUGINS=str(cb_dir),
            ANSIBLE_CALLBACKS_ENABLED="doai_fault_results",
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(cp_dir),
            ANSIBLE_NOCOLOR="1",
            DOAI_FAULT_RESULTS=str(results),
        )
        if "retries" not in (ROOT / "ansible.cfg").read_text():
            full_env["ANSIBLE_SSH_RETRIES"] = "5"  # what the CLI sets: ride out a short outage
        full_env.update(env or {})
        proc = subprocess.Popen(
            ["ansible-playbook", "-i", str(sandbox.inventory), str(PLAYBOOK), "-e", f"@{xv}"],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        fault = threading.Thread(target=during, daemon=True) if during else None
        if fault:
            fault.start()
        output, _ = proc.communicate(timeout=600)
        if fault:
            fault.join(timeout=120)
        lines = results.read_text().splitlines() if results.exists() else []
        return Run(proc.returncode, output, [json.loads(x) for x in lines])

    yield run
    subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={cp_dir}/%C", "-p", str(sandbox.ssh_port),
                    "root@127.0.0.1"], capture_output=True, check=False, timeout=10)
    shutil.rmtree(cp_dir, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(find: Callable[[], int | None], deadline_s: float = 120) -> int:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pid = find()
        if pid:
            return pid
        time.sleep(0.05)
    raise AssertionError("the process to cut the link under never showed up")


def npm_ci(sb) -> int | None:
    """The `npm ci` working for the sandbox's app (npm names itself `npm ci`): in the checkout, or
    in the staging directory the role installs into (under the sandbox's host state)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if argv and argv[0].startswith(b"npm ci") and cwd.startswith(str(sb.workdir) + os.sep):
            return int(entry.name)
    return None


def verify_job(sb) -> int | None:
    """The health gate's job on the host (its worker, detached from the SSH session: the pid in
    its job file), once it has run for a second and a half: the controller is waiting on it.
    (A cut while the job is being started is a plain SSH failure, ridden out by SSH's retries or
    left to a resume.)"""
    for path in (sb.host_state / "jobs").glob("*-verify.json"):
        try:
            job = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pid = job.get("pid")
        if job.get("state") == "running" and pid and alive(pid):
            time.sleep(1.5)
            return pid if alive(pid) else None
    return None


class Cut:
    """Cut the link once ``find`` sees its process; remembers whether that process outlived the cut."""

    def __init__(self, sb, find: Callable[[], int | None], seconds: float) -> None:
        self.sb, self.find, self.seconds = sb, find, seconds
        self.pid: int | None = None
        self.survived: bool | None = None
        self.killed: list[int] = []

    def __call__(self) -> None:
        self.pid = wait_for(self.find)
        self.killed = self.sb.cut_ssh(self.seconds)
        self.survived = alive(self.pid) or not self.find()  # alive through the outage, or finished by itself


def assert_consistent(sb) -> str:
    """What an operator checks after any run: checkout, installed dependencies and the version
    the app serves agree, PM2 is online, and no lock is left. Returns the live version."""
    head = sb.head()
    version = json.loads(subprocess.run([sb.git, "-C", str(sb.app), "show", f"{head}:package.json"],
                                        capture_output=True, text=True, check=True).stdout)["version"]
    ls = subprocess.run([sb.npm, "ls", "--omit=dev", "--all"], cwd=sb.app, capture_output=True, text=True, check=False)
    assert ls.returncode == 0, f"node_modules does not match {head[:12]}: {ls.stdout[-1500:]}{ls.stderr[-1500:]}"
    status, served = sb.wait_health(expect_ok=None)
    assert served == version, f"the app serves {served}, the checkout is {version} ({head[:12]})"
    assert all(p["status"] == "online" for p in sb.pm2_processes())
    assert not (sb.host_state / "backend.lock").exists(), "the host lock was left behind"
    return version


def ledger(sb) -> list[dict]:
    return [json.loads(line) for line in sb.ledger.read_text().splitlines() if line.strip()]


def test_link_cut_while_npm_ci_runs(sandbox, playbook):
    sb = sandbox
    cut = Cut(sb, lambda: npm_ci(sb), seconds=4)
    run = playbook({"doai_backend_pm2_target": sb.commits["v1"], "doai_backend_pm2_run_id": "cut-npm"}, during=cut,
                   env=QUICK_RETRY)
    assert cut.killed, "the link was never cut"
    assert cut.survived, "npm ci died with the SSH session"
    status = run.host_stats(sb.host_name).get("status")
    assert status in ("succeeded", "restored"), run.output[-4000:]
    assert (run.rc == 0) == (status == "succeeded"), run.output[-4000:]
    assert not [r for r in run.results if r["kind"] == "unreachable"], run.output[-4000:]
    version = assert_consistent(sb)
    assert version == ("1.0.0" if status == "succeeded" else "3.0.0")
    assert ledger(sb)[-1]["result"] == status and ledger(sb)[-1]["run_id"] == "cut-npm"


def test_link_cut_during_the_health_gate(sandbox, playbook):
    sb = sandbox
    cut = Cut(sb, lambda: verify_job(sb), seconds=4)
    # A longer stability window keeps the health gate busy while the link is down.
    run = playbook({"doai_backend_pm2_target": sb.commits["v1"], "doai_backend_pm2_stable_seconds": 8,
                    "doai_backend_pm2_run_id": "cut-verify"}, during=cut, env=QUICK_RETRY)
    assert cut.killed and cut.survived
    status = run.host_stats(sb.host_name).get("status")
    assert status in ("succeeded", "restored"), run.output[-4000:]
    assert (run.rc == 0) == (status == "succeeded")
    version = assert_consistent(sb)
    assert version == ("1.0.0" if status == "succeeded" else "3.0.0")


def test_host_gone_too_long_then_resumed(sandbox, playbook):
    """The controller stops following the host (no SSH retries, a short apply deadline) while
    the apply job finishes on it; the same run, resumed, completes the rollback."""
    sb = sandbox
    v1, v3 = sb.commits["v1"], sb.commits["v3"]
    plan = {"doai_backend_pm2_pins": {sb.host_name: {"from": v3, "to": v1}}, "doai_backend_pm2_run_id": "gone-1"}
    cut = Cut(sb, lambda: npm_ci(sb), seconds=25)
    first = playbook(dict(plan, doai_backend_pm2_apply_timeout=6), during=cut,
                     env={"ANSIBLE_SSH_RETRIES": "0"})
    assert cut.survived
    assert first.rc != 0
    assert [r for r in first.results if r["kind"] == "unreachable"], first.output[-4000:]
    # What the role leaves for the CLI to resume from: the run "started" on the host, its host
    # lock still held, nothing recorded by the controller in the ledger.
    assert first.host_stats(sb.host_name)["status"] == "started"
    owner = json.loads((sb.host_state / "backend.lock" / "owner.json").read_text())
    assert owner["run_id"] == "gone-1"
    # The apply job finished on the host while it was unreachable, and recorded that itself.
    wait_for(lambda: all(json.loads(p.read_text()).get("state") == "done"
                         for p in (sb.host_state / "jobs").glob("*-apply.json")) or None)
    sb.wait_health(expect_ok=True)
    assert sb.head() == v1
    last = ledger(sb)[-1]
    assert (last["action"], last["from"], last["to"], last["result"], last["by"], last["run_id"]) == (
        "rollback", v3, v1, "applied", "job", "gone-1")

    resumed = playbook(dict(plan, doai_backend_pm2_resume=True, doai_backend_pm2_action="resume"))
    assert resumed.rc == 0, resumed.output[-4000:]
    assert resumed.host_stats(sb.host_name)["status"] == "succeeded"
    (apply,) = resumed.task("Check out the target commit")
    assert apply["res"]["installed"] is False  # node_modules already matched v1's lockfile
    assert assert_consistent(sb) == "1.0.0"
    last = ledger(sb)[-1]
    assert (last["action"], last["from"], last["to"], last["result"], last["run_id"]) == (
        "resume", v3, v1, "succeeded", "gone-1")


def test_direct_run_records_the_controller_user_without_user_set(sandbox, playbook):
    """Run with ansible-playbook where neither USER nor LOGNAME is set (cron, a container): the
    ledger names the controller's user (`id -un`), not "unknown"."""
    import pwd

    sb = sandbox
    run = playbook({"doai_backend_pm2_target": sb.commits["v2"]}, env={"USER": "", "LOGNAME": ""})
    assert run.rc == 0, run.output[-4000:]
    assert ledger(sb)[-1]["who"] == pwd.getpwuid(os.getuid()).pw_name


def test_pinned_plan_refuses_when_the_live_commit_moved(sandbox, playbook):
    sb = sandbox
    before = (sb.head(), sb.ledger.read_text(), sb.health())
    # The operator confirmed v2 -> v1; the pipeline has deployed v3 since.
    run = playbook({"doai_backend_pm2_pins": {sb.host_name: {"from": sb.commits["v2"], "to": sb.commits["v1"]}}})
    assert run.rc != 0
    (failure,) = run.failures()
    assert failure["res"]["drifted"] is True
    assert failure["res"]["msg"] == (f"live commit is {sb.commits['v3'][:12]}, not {sb.commits['v2'][:12]} as "
                                     "planned (someone deployed meanwhile); plan again")
    assert "status" not in run.host_stats(sb.host_name)  # never "started": nothing was changed
    assert (sb.head(), sb.ledger.read_text(), sb.health()) == before
    assert not (sb.host_state / "backend.lock").exists()

    run = playbook({"doai_backend_pm2_target": sb.commits["v1"], "doai_backend_pm2_apps": ["doai-backend", "worker"]})
    (failure,) = run.failures()
    assert failure["res"]["unknown_app"] is True and failure["res"]["unknown"] == ["worker"]
    assert sb.head() == sb.commits["v3"]


def test_cli_resumes_a_host_lost_mid_apply(sandbox, state_dir):
    """Through the CLI: the link stays down longer than SSH's retries while `npm ci` runs, the
    playbook loses the host; the run waits for it, resumes this run's work and ends whole."""
    from tests.conftest import run_cli

    sb = sandbox
    cut = Cut(sb, lambda: npm_ci(sb), seconds=20)
    fault = threading.Thread(target=cut, daemon=True)
    fault.start()
    res = run_cli("backend", "rollback", "--yes", "--to", "v1", "-o", "json",
                  env={"DOAI_INVENTORY": str(sb.inventory), "DOAI_STATE_DIR": str(state_dir)})
    fault.join(timeout=120)
    assert cut.killed and cut.survived
    assert res.code in (0, 3), res.stdout + res.stderr
    (step,) = res.json()["steps"]
    assert step["outcome"] in ("succeeded", "restored")
    assert "resumed" in step["message"], step
    version = assert_consistent(sb)
    assert version == ("1.0.0" if step["outcome"] == "succeeded" else "3.0.0")
    (record,) = [json.loads(line) for line in (state_dir / "journal.jsonl").read_text().splitlines()]
    assert record["steps"][0]["outcome"] == step["outcome"]
    assert any("lost during the rollback" in w for w in record["warnings"])


def test_a_release_that_crashes_after_six_seconds_is_rolled_back(sandbox, state_dir):
    """v4 answers healthy, then its server exits 6 s after it starts and PM2 restarts it, again and
    again. With the default stability window the health gate sees the restart counters climb:
    the rollback to v4 ends restored (exit 3), and the ledger does not call it a success."""
    from tests.conftest import run_cli

    sb = sandbox
    sb.write_inventory(doai_backend_pm2_stable_seconds=None)  # the role's default window
    res = run_cli("backend", "rollback", "--yes", "--to", "v4", "-o", "json", "--reason", "crash test",
                  env={"DOAI_INVENTORY": str(sb.inventory), "DOAI_STATE_DIR": str(state_dir)})
    assert res.code == 3, res.stdout + res.stderr
    (step,) = res.json()["steps"]
    assert step["outcome"] == "restored", step
    assert "not stable" in step["message"], step
    assert sb.head() == sb.commits["v3"]
    assert sb.wait_health(expect_ok=False) == (500, "3.0.0")  # v3 as it was: up, answering 500
    last = ledger(sb)[-1]
    assert (last["action"], last["to"], last["result"]) == ("rollback", sb.commits["v4"], "restored")
    assert not (sb.host_state / "backend.lock").exists()


def test_a_release_that_crashes_as_it_starts_is_put_back_by_its_restart_count(sandbox, state_dir):
    """v5 dies as it starts, so it never answers health and PM2's reload waits out its
    listen_timeout per process. The restart counters give it away during the reload: the step
    fails with "crash-loops", not with the health deadline, the captured commit is put back (by a
    restart: the stopped reload holds PM2's reload lock) and every process is online on v3."""
    from tests.conftest import run_cli

    sb = sandbox
    res = run_cli("backend", "rollback", "--yes", "--to", "v5", "-o", "json", "--reason", "crash test",
                  env={"DOAI_INVENTORY": str(sb.inventory), "DOAI_STATE_DIR": str(state_dir)})
    assert res.code == 3, res.stdout + res.stderr
    (step,) = res.json()["steps"]
    assert step["outcome"] == "restored", step
    assert "crash-loops" in step["message"] and "failed after" not in step["message"], step
    assert sb.head() == sb.commits["v3"]
    assert sb.wait_health(expect_ok=False) == (500, "3.0.0")
    procs = sb.pm2_processes()
    assert procs and all(p["status"] == "online" for p in procs), procs
    last = ledger(sb)[-1]
    assert (last["action"], last["to"], last["result"]) == ("rollback", sb.commits["v5"], "restored")
    assert not (sb.host_state / "backend.lock").exists()
