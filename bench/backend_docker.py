#!/usr/bin/env python3
"""Benchmark: Docker backend rollback, this role's order (pull first) vs the runbook's (down first).

On the Docker rig (doai_ansible/sandbox/docker_rig.py: a dockerd of its own, a loopback
registry, busybox images FROM scratch, compose project `doai` with service `api`, the "VPS"
reached over a loopback sshd), for each method, N runs of:
  reset: v3 (the bad release) running as :current, the registry's :previous -> v2, no
  :previous/:rollback on the host; not timed
  start a load generator on GET / (~50 requests/s; every version answers 200 there)
  start the method; a poller (every 20 ms) measures the time until /api/health answers 200
  with version 2.0.0 ("time to healthy"); the method's own wall time is recorded too
  keep the load on 1 s after the method ends; count failed requests (connection errors,
  timeouts, non-200) and the longest stretch of consecutive failures ("outage": from the send
  time of the first failed request to that of the next request answered 200)

Methods:
  tool:     doai-rollback backend rollback --yes -o json  (fresh state dir each run: no warm
            SSH master connection; the masters a run leaves are closed after it, untimed)
  playbook: ansible-playbook playbooks/backend_docker_rollback.yml, as an operator runs it
            directly (fresh ControlPath dir each run); `playbook:DIR` runs it from another
            checkout of this repository (DIR), to compare two versions of the role interleaved
  runbook:  the runbook's section 2 "Docker rollback", its commands in its order, typed over
            ssh as an operator does (one ssh session into the VPS running them one after the
            other, `set -e`; `--manual-local` runs them locally with the rig's DOCKER_HOST
            instead, no SSH at all): docker-compose down; docker tag :current :rollback;
            docker pull :previous; docker tag :previous :current; docker-compose up -d
  reordered-manual: the same manual commands in the role's order: docker pull :previous;
            docker tag :current :rollback; docker tag :previous :current;
            docker-compose up -d --no-deps api  (separates the effect of the order from the
            tool's overhead)

`--set VAR=VALUE` becomes a host variable in the rig's inventory, for the tool and the
playbook alike (e.g. `--set doai_backend_docker_stable_seconds=10`, the role's default; the
rig's inventory says 2). The order of the methods alternates from run to run.

Prints medians (min-max) per method; writes bench/results/backend_docker.json. No assertions.

    .venv/bin/python bench/backend_docker.py --runs 5
    .venv/bin/python bench/backend_docker.py --runs 5 --set doai_backend_docker_stable_seconds=10
    .venv/bin/python bench/backend_docker.py --crash --methods tool,playbook --runs 5   # a target that crash-loops
    .venv/bin/python bench/backend_docker.py --methods playbook:/tmp/before,playbook --runs 7   # A/B of the role
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from doai_ansible.sandbox import http_health  # noqa: E402
from doai_ansible.sandbox.docker_rig import COMPOSE, DOCKER, SERVICE, DockerRig  # noqa: E402

TARGET_VERSION = "2.0.0"  # :previous -> v2
METHODS = ("tool", "playbook", "runbook", "reordered-manual")


class Load:
    """GET / at a fixed rate until stopped; records (send time, ok) of every request."""

    def __init__(self, url: str, rate: float = 50.0) -> None:
        self.url, self.period = url, 1.0 / rate
        self.results: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        next_at = time.monotonic()
        deadline = next_at + 300  # bounded, whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            ok = False
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:  # noqa: S310 (loopback)
                    r.read()
                    ok = r.status == 200
            except (urllib.error.URLError, OSError):
                pass
            self.results.append((sent, ok))
            next_at += self.period
            time.sleep(max(0.0, next_at - time.monotonic()))

    @property
    def sent(self) -> int:
        return len(self.results)

    @property
    def failed(self) -> int:
        return sum(1 for _, ok in self.results if not ok)

    def longest_gap(self) -> float:
        """The longest stretch of consecutive failed requests, in seconds (0 when none failed)."""
        longest, first_fail = 0.0, None
        for sent, ok in self.results:
            if not ok and first_fail is None:
                first_fail = sent
            elif ok and first_fail is not None:
                longest, first_fail = max(longest, sent - first_fail), None
        if first_fail is not None:  # still failing at the end
            longest = max(longest, self.results[-1][0] + self.period - first_fail)
        return longest

    def __enter__(self) -> Load:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=5)


def wait_healthy(rig: DockerRig, t0: float, deadline_s: float = 120) -> float | None:
    while time.monotonic() - t0 < deadline_s:
        status, v = http_health(rig.health_url, timeout=1)
        if status == 200 and v == TARGET_VERSION:
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


class Steps(threading.Thread):
    """Manual commands (argv lists), one after the other, stopping at the first that fails: over
    ssh in one session (``over_ssh``, as an operator types them; the whole session's time), or
    locally against the rig's dockerd (each command's duration recorded)."""

    def __init__(self, rig: DockerRig, commands: list[list[str]], *, over_ssh: bool = True) -> None:
        super().__init__(daemon=True)
        self.rig, self.commands, self.over_ssh = rig, commands, over_ssh
        self.returncode: int | None = None
        self.err = ""
        self.durations: list[tuple[str, float]] = []

    def run(self) -> None:
        if self.over_ssh:
            commands = "; ".join(shlex.join(argv) for argv in self.commands)
            script = (f"set -e; cd {shlex.quote(str(self.rig.project_dir))}; "
                      f"export DOCKER_HOST={shlex.quote(self.rig.docker_host)}; {commands}")
            t = time.monotonic()
            proc = subprocess.run(self.rig.vps.ssh_argv(script), capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=300, check=False)
            self.durations.append(("ssh session", round(time.monotonic() - t, 3)))
            self.returncode, self.err = proc.returncode, proc.stderr[-2000:] if proc.returncode else ""
            return
        for argv in self.commands:
            t = time.monotonic()
            proc = subprocess.run(argv, cwd=self.rig.project_dir, env=self.rig.env, capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL, timeout=300, check=False)
            name = " ".join([Path(argv[0]).name, *argv[1:2]])
            self.durations.append((name, round(time.monotonic() - t, 3)))
            if proc.returncode != 0:
                self.returncode, self.err = proc.returncode, f"{argv}: {proc.stderr[-2000:]}"
                return
        self.returncode = 0


def runbook_commands(rig: DockerRig) -> list[list[str]]:
    repo = rig.image_repo  # doai-backend in the runbook; the rig's registry prefixes it
    return [
        [COMPOSE, "down"],
        [DOCKER, "tag", f"{repo}:current", f"{repo}:rollback"],
        [DOCKER, "pull", f"{repo}:previous"],
        [DOCKER, "tag", f"{repo}:previous", f"{repo}:current"],
        [COMPOSE, "up", "-d"],
    ]


def reordered_commands(rig: DockerRig) -> list[list[str]]:
    repo = rig.image_repo
    return [
        [DOCKER, "pull", f"{repo}:previous"],
        [DOCKER, "tag", f"{repo}:current", f"{repo}:rollback"],
        [DOCKER, "tag", f"{repo}:previous", f"{repo}:current"],
        [COMPOSE, "up", "-d", "--no-deps", SERVICE],
    ]


def close_masters(tmp: Path) -> None:
    """Close the SSH ControlMaster connections (ControlPersist=120s) a run left below ``tmp``,
    then remove it: every process this benchmark starts ends with it. Not timed."""
    for sock in tmp.rglob("*"):
        if sock.is_socket():
            subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={sock}", "x"], capture_output=True,
                           timeout=10, check=False)
    shutil.rmtree(tmp, ignore_errors=True)


def run_tool(rig: DockerRig, state: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")}
    env.update(DOAI_INVENTORY=str(rig.inventory), DOAI_STATE_DIR=str(state))
    return subprocess.Popen(
        [sys.executable, "-m", "doai_ansible", "backend", "rollback", "--yes", "-o", "json", "--reason", "bench"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def run_playbook(rig: DockerRig, cp: Path, root: Path = ROOT) -> subprocess.Popen:
    env = dict(os.environ, ANSIBLE_SSH_CONTROL_PATH_DIR=str(cp),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.Popen(
        ["ansible-playbook", "-i", str(rig.inventory), "playbooks/backend_docker_rollback.yml",
         "-e", json.dumps({"doai_backend_docker_reason": "bench"})],
        cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def one(rig: DockerRig, method: str, hostvars: dict[str, object], *, manual_local: bool = False) -> dict[str, object]:
    rig.reset()  # untimed: v3 live, :previous -> v2 in the registry only
    rig.write_inventory(**hostvars)
    v2 = rig.image_ids["v2"]
    steps: Steps | None = None
    tmp = Path(tempfile.mkdtemp(prefix="dbd-", dir="/tmp"))  # fresh each run: no warm SSH master connection
    try:
        with Load(rig.root_url) as load:
            time.sleep(0.5)  # the load runs against the healthy v3 first
            t0 = time.monotonic()
            if method == "tool":
                proc = run_tool(rig, tmp)
            elif method.startswith("playbook"):
                proc = run_playbook(rig, tmp, Path(method.split(":", 1)[1]) if ":" in method else ROOT)
            else:
                steps = Steps(rig, runbook_commands(rig) if method == "runbook" else reordered_commands(rig),
                              over_ssh=not manual_local)
                steps.start()
            healthy = wait_healthy(rig, t0)
            if steps is None:
                out, err = proc.communicate(timeout=300)
                rc = proc.returncode
                err_text = (err or b"").decode()[-2000:] + (out or b"").decode()[-2000:]
            else:
                steps.join(timeout=300)
                rc, err_text = steps.returncode, steps.err
            wall = time.monotonic() - t0
            time.sleep(1.0)  # keep the load on a little after: late failures count too
    finally:
        close_masters(tmp)
    if rc != 0:
        raise SystemExit(f"{method} failed ({rc}): {err_text}")
    if rig.container_image_id() != v2 or rig.health() != (200, TARGET_VERSION):
        raise SystemExit(f"{method}: the api does not run v2 afterwards: {rig.container_image_id()} {rig.health()}")
    return {"to_healthy_s": healthy, "wall_s": wall, "tail_s": wall - healthy if healthy is not None else None,
            "requests": load.sent, "failed": load.failed, "outage_s": load.longest_gap(),
            "steps": steps.durations if steps else None}


def one_crash(rig: DockerRig, method: str, hostvars: dict[str, object]) -> dict[str, object]:
    """Goal 3 of issue 20: the rollback's target is ``:crash`` (its process exits at once; the
    service's restart policy makes it a loop). Timed from the command's start (a poller every
    20 ms on /api/health): ``down_s``, when v3 stopped answering (the change: the container
    recreated on the crashing image); ``back_s``, when v3 answered 200 again (put back). The goal
    is ``back_s - down_s`` within 10 s (found by the restarts, not the 60 s health timeout)."""
    rig.reset()  # untimed: v3 live and healthy
    rig.registry_tag("previous", "crash")
    rig.write_inventory(**hostvars)
    v3 = rig.image_ids["v3"]
    tmp = Path(tempfile.mkdtemp(prefix="dbd-", dir="/tmp"))
    down = back = None
    try:
        t0 = time.monotonic()
        proc = run_tool(rig, tmp) if method == "tool" else run_playbook(rig, tmp)
        while proc.poll() is None and time.monotonic() - t0 < 300:
            ok = http_health(rig.health_url, timeout=1) == (200, "3.0.0")
            if not ok and down is None:
                down = time.monotonic() - t0
            elif ok and down is not None and back is None:
                back = time.monotonic() - t0
            time.sleep(0.02)
        out, err = proc.communicate(timeout=300)
        wall = time.monotonic() - t0
    finally:
        close_masters(tmp)
    if proc.returncode == 0:
        raise SystemExit(f"{method}: a rollback onto :crash succeeded? {out.decode()[-1000:]}")
    if rig.container_image_id() != v3 or rig.health() != (200, "3.0.0"):
        raise SystemExit(f"{method}: v3 is not back: {rig.container_image_id()} {rig.health()}\n"
                         f"{err.decode()[-1500:]}{out.decode()[-1500:]}")
    if back is None:  # put back between two polls at the very end
        back = wall
    return {"rc": proc.returncode, "down_s": down, "back_s": back, "wall_s": wall,
            "put_back_after_change_s": back - down if down is not None else None}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    ap.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                    help="a host variable in the rig's inventory, for tool and playbook (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "backend_docker.json")
    ap.add_argument("--crash", action="store_true",
                    help="issue 20's goal 3 instead: the target's process exits at once; methods tool and playbook "
                         "only; times the change and the put-back (one_crash)")
    ap.add_argument("--manual-local", action="store_true",
                    help="run the manual methods' commands locally (no ssh), as the first version of this bench did")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m.split(":", 1)[0] not in METHODS:
            ap.error(f"unknown method {m!r}")
    hostvars = {k: json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
                for k, v in (kv.split("=", 1) for kv in args.set)}
    wd = args.workdir or Path(tempfile.mkdtemp(prefix="doai-bench-dk-"))
    rig = DockerRig(wd / "rig")
    if args.crash:
        return crash_main(rig, wd, args, [m for m in methods if m in ("tool", "playbook")], hostvars)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    try:
        rig.start()
        for method in methods:  # warm-up, discarded: page cache, Ansible's imports, compose's
            one(rig, method, hostvars, manual_local=args.manual_local)
        for i in range(args.runs):
            for method in methods if i % 2 == 0 else methods[::-1]:  # alternate order
                r = one(rig, method, hostvars, manual_local=args.manual_local)
                results[method].append(r)
                print(f"{method:16} run {i + 1}: healthy {r['to_healthy_s']:.2f} s, command {r['wall_s']:.2f} s, "
                      f"failed {r['failed']}/{r['requests']}, outage {r['outage_s']:.2f} s"
                      + (f", steps {r['steps']}" if r["steps"] else ""), flush=True)
    finally:
        rig.stop()
        rig.cleanup()
        if args.workdir is None:
            shutil.rmtree(wd, ignore_errors=True)

    report: dict[str, Any] = {"runs": args.runs, "hostvars": hostvars,
                              "runbook_method": ("argv lists run locally with the rig's DOCKER_HOST (no ssh)"
                                                 if args.manual_local else "one ssh session into the VPS, set -e"),
                              "methods": {}}
    print(f"\nmedians of {args.runs} runs (min-max)")
    print(f"{'method':16} {'to healthy s':>20} {'command s':>20} {'failed requests':>16} {'outage s':>20}")
    for method, runs in results.items():
        th = summary([r["to_healthy_s"] for r in runs])
        wall = summary([r["wall_s"] for r in runs])
        failed = summary([r["failed"] for r in runs])
        outage = summary([r["outage_s"] for r in runs])
        report["methods"][method] = {"to_healthy_s": th, "wall_s": wall, "failed": failed, "outage_s": outage,
                                     "tail_s": summary([r["tail_s"] for r in runs]),
                                     "requests": summary([r["requests"] for r in runs]), "runs": runs}
        print(f"{method:16} {th['median']:6.2f} ({th['min']:.2f}-{th['max']:.2f}) "
              f"{wall['median']:6.2f} ({wall['min']:.2f}-{wall['max']:.2f}) "
              f"{failed['median']:5.0f} ({failed['min']:.0f}-{failed['max']:.0f}) "
              f"{outage['median']:6.2f} ({outage['min']:.2f}-{outage['max']:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def crash_main(rig: DockerRig, wd: Path, args: argparse.Namespace, methods: list[str],
               hostvars: dict[str, object]) -> int:
    results: dict[str, list[dict[str, object]]] = {m: [] for m in methods}
    try:
        rig.start()
        for method in methods:  # warm-up, discarded
            one_crash(rig, method, hostvars)
        for i in range(args.runs):
            for method in methods if i % 2 == 0 else methods[::-1]:
                r = one_crash(rig, method, hostvars)
                results[method].append(r)
                print(f"{method:10} run {i + 1}: exit {r['rc']}, v3 down at {r['down_s']:.2f} s, back at "
                      f"{r['back_s']:.2f} s (put back {r['put_back_after_change_s']:.2f} s after the change), "
                      f"command {r['wall_s']:.2f} s", flush=True)
    finally:
        rig.stop()
        rig.cleanup()
        if args.workdir is None:
            shutil.rmtree(wd, ignore_errors=True)
    report: dict[str, Any] = {"runs": args.runs, "hostvars": hostvars, "scenario": "crash", "methods": {}}
    print(f"\nmedians of {args.runs} runs (min-max), seconds from the command's start")
    for method, runs in results.items():
        row = {k: summary([float(r[k]) for r in runs])  # type: ignore[arg-type]
               for k in ("down_s", "back_s", "put_back_after_change_s", "wall_s")}
        report["methods"][method] = dict(row, runs=runs)
        print(f"{method:10} " + ", ".join(f"{k} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})" for k, v in row.items()))
    out = args.out.with_name(args.out.stem + "_crash.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
