#!/usr/bin/env python3
"""Benchmark: backend rollback with doai-rollback vs the runbook's manual steps.

On the sandbox rig (real sshd on 127.0.0.1, PM2 cluster of 2, a git-deployed Express app),
for each scenario -- lockfile unchanged (v3 -> v2), changed (v3 -> v1), and changed on a host
prepared for it (v3 -> v1 after `doai-rollback backend prepare --to v1`) -- and each method,
N runs of:
  reset: deploy v3 (the bad release) the way the pipeline does; not timed (this leaves the
  host's node_modules cache without v1's tree: the pipeline installs in place)
  prepared scenario, tool and playbook methods only: `doai-rollback backend prepare --to SHA`
  (what the deploy pipeline runs at its end); not timed
  start a load generator on GET / (~50 requests/s; every version answers 200 there)
  start the method; a poller measures the time until /api/health answers 200 with the
  target's version ("time to healthy"); the method's own wall time is recorded too
  stop the load; count failed requests (connection errors, timeouts, non-200)

Methods:
  tool:   doai-rollback backend rollback --to SHA --yes -o json   (fresh state dir each run:
          no warm SSH master connection)
  playbook: ansible-playbook playbooks/backend_pm2_rollback.yml -e doai_backend_pm2_target=SHA,
          as an operator runs it directly (fresh ControlPath dir each run); only with --methods;
          `playbook:DIR` runs the playbook of another checkout of this repository (e.g. a copy of
          an earlier version), interleaved with the others for a fair comparison
  manual: ssh root@host 'cd APP && git checkout SHA && npm ci --production && pm2 restart all'
          then poll health -- the runbook's section 2 as one plain ssh script

Prints medians (and min/max) per scenario and method, and the tool/manual ratio of the
medians of time-to-healthy, and the tail (command end minus healthy); writes
bench/results/backend_rollback.json. No assertions.

    .venv/bin/python bench/backend_rollback.py --runs 5
    .venv/bin/python bench/backend_rollback.py --runs 5 --methods playbook --set doai_backend_pm2_stable_seconds=10
"""

from __future__ import annotations

import argparse
import json
import os
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from doai_ansible.sandbox import Sandbox, http_health  # noqa: E402

# scenario -> (target, prepare the host first)
SCENARIOS = {"lockfile-unchanged": ("v2", False), "lockfile-changed": ("v1", False),
             "lockfile-changed-prepared": ("v1", True)}
VERSION = {"v1": "1.0.0", "v2": "2.0.0"}


class Load:
    """GET / at a fixed rate until stopped; counts answers that are not 200."""

    def __init__(self, url: str, rate: float = 50.0) -> None:
        self.url, self.period = url, 1.0 / rate
        self.sent = self.failed = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        next_at = time.monotonic()
        deadline = next_at + 300  # bounded, whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.sent += 1
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:  # noqa: S310 (loopback)
                    r.read()
                    if r.status != 200:
                        self.failed += 1
            except (urllib.error.URLError, OSError):
                self.failed += 1
            next_at += self.period
            time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Load:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=5)


def wait_healthy(sb: Sandbox, version: str, t0: float, deadline_s: float = 120) -> float | None:
    while time.monotonic() - t0 < deadline_s:
        status, v = http_health(sb.health_url, timeout=1)
        if status == 200 and v == version:
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def tool_env(sb: Sandbox) -> dict[str, str]:
    state = Path(tempfile.mkdtemp(prefix="dbs-", dir="/tmp"))
    return dict(os.environ, DOAI_INVENTORY=str(sb.inventory), DOAI_STATE_DIR=str(state))


def run_tool(sb: Sandbox, sha: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "doai_ansible", "backend", "rollback", "--to", sha, "--yes", "-o", "json",
         "--reason", "bench"],
        cwd=ROOT, env=tool_env(sb), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def prepare_host(sb: Sandbox, sha: str) -> str:
    """`doai-rollback backend prepare --to SHA`, as a deploy pipeline's last step; its status."""
    proc = subprocess.run([sys.executable, "-m", "doai_ansible", "backend", "prepare", "--to", sha, "-o", "json"],
                          cwd=ROOT, env=tool_env(sb), capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return next(iter(json.loads(proc.stdout)["hosts"].values()))["status"]


def deps_source(out: bytes | None) -> str | None:
    """Where the tool's rollback took node_modules from (cache or install), from its JSON."""
    try:
        return json.loads(out or b"{}")["steps"][0]["details"].get("node_modules", {}).get("source")
    except (ValueError, KeyError, IndexError, AttributeError):
        return None


def run_playbook(sb: Sandbox, sha: str, extra: dict[str, object], root: Path = ROOT) -> subprocess.Popen:
    cp = Path(tempfile.mkdtemp(prefix="dbc-", dir="/tmp"))  # no warm SSH master connection
    env = dict(os.environ, ANSIBLE_SSH_CONTROL_PATH_DIR=str(cp),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    xv = {"doai_backend_pm2_target": sha, "doai_backend_pm2_reason": "bench", **extra}
    return subprocess.Popen(
        ["ansible-playbook", "-i", str(sb.inventory), "playbooks/backend_pm2_rollback.yml", "-e", json.dumps(xv)],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def run_manual(sb: Sandbox, sha: str) -> subprocess.Popen:
    # The runbook's commands, verbatim but for the sandbox's paths and PM2_HOME.
    script = (f"cd {sb.app} && git checkout -q {sha} && npm ci --production --no-audit --no-fund >/dev/null 2>&1"
              f" && PM2_HOME={sb.pm2_home} {sb.pm2} restart all >/dev/null")
    return subprocess.Popen(sb.ssh_argv(script), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def one(sb: Sandbox, method: str, target: str, extra: dict[str, object] | None = None,
        prepared: bool = False) -> dict[str, float | int | str | None]:
    sb.deploy("v3")  # reset: the bad release is live
    sb.wait_health(expect_ok=False)
    sha = sb.commits[target]
    prep = prepare_host(sb, sha) if prepared and method != "manual" else None  # untimed
    with Load(f"http://127.0.0.1:{sb.app_port}/") as load:
        t0 = time.monotonic()
        if method.startswith("playbook"):
            root = Path(method.split(":", 1)[1]) if ":" in method else ROOT
            proc = run_playbook(sb, sha, extra or {}, root)
        else:
            proc = (run_tool if method == "tool" else run_manual)(sb, sha)
        healthy = wait_healthy(sb, VERSION[target], t0)
        out, err = proc.communicate(timeout=300)
        wall = time.monotonic() - t0
        time.sleep(1.0)  # keep the load on a little after: late failures count too
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return {"to_healthy_s": healthy, "wall_s": wall, "tail_s": wall - healthy if healthy is not None else None,
            "requests": load.sent, "failed": load.failed, "prepare": prep,
            "node_modules": deps_source(out) if method == "tool" else None}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def by_median(report: dict, method: str) -> float:
    return report[method]["to_healthy_s"]["median"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--methods", default="tool,manual", help="comma-separated: tool, manual, playbook")
    ap.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                    help="an extra var for the playbook method (repeatable)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "backend_rollback.json")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    extra = {k: json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
             for k, v in (kv.split("=", 1) for kv in args.set)}
    wd = args.workdir or Path(tempfile.mkdtemp(prefix="doai-bench-"))
    sb = Sandbox(wd / "sb")
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        sb.start(deploy="v2")
        # Warm-up: npm's cache and PM2's daemon, so neither method pays for a cold start.
        one(sb, "manual", "v1")
        one(sb, methods[0], "v2", extra)
        for scenario in [s for s in args.scenarios.split(",") if s]:
            target, prepared = SCENARIOS[scenario]
            results[scenario] = {m: [] for m in methods}
            for i in range(args.runs):
                for method in methods if i % 2 == 0 else methods[::-1]:  # alternate order
                    r = one(sb, method, target, extra, prepared)
                    results[scenario][method].append(r)
                    print(f"{scenario:25} {method:6} run {i + 1}: healthy {r['to_healthy_s']:.2f} s, "
                          f"command {r['wall_s']:.2f} s, tail {r['tail_s']:.2f} s, failed {r['failed']}/{r['requests']}"
                          + (f", prepare: {r['prepare']}" if r["prepare"] else "")
                          + (f", node_modules: {r['node_modules']}" if r["node_modules"] else ""), flush=True)
    finally:
        sb.stop()
        if args.workdir is None:
            shutil.rmtree(wd, ignore_errors=True)

    report: dict[str, dict] = {}
    print(f"\nmedians of {args.runs} runs (min-max); ratio = tool / manual")
    width = max(8, *(len(m) for m in methods))
    print(f"{'scenario':25} {'method':{width}} {'to healthy s':>22} {'command s':>22} {'tail s':>22} {'failed requests':>18}")
    for scenario, by in results.items():
        report[scenario] = {}
        for method, runs in by.items():
            th = summary([r["to_healthy_s"] for r in runs])
            wall = summary([r["wall_s"] for r in runs])
            tail = summary([r["tail_s"] for r in runs])
            failed = summary([r["failed"] for r in runs])
            report[scenario][method] = {"to_healthy_s": th, "wall_s": wall, "tail_s": tail, "failed": failed,
                                        "requests": summary([r["requests"] for r in runs]), "runs": runs}
            print(f"{scenario:25} {method:{width}} {th['median']:8.2f} ({th['min']:.2f}-{th['max']:.2f}) "
                  f"{wall['median']:8.2f} ({wall['min']:.2f}-{wall['max']:.2f}) "
                  f"{tail['median']:8.2f} ({tail['min']:.2f}-{tail['max']:.2f}) "
                  f"{failed['median']:6.0f} ({failed['min']:.0f}-{failed['max']:.0f})")
        if "tool" in by and "manual" in by:
            ratio = by_median(report[scenario], "tool") / by_median(report[scenario], "manual")
            report[scenario]["ratio_to_healthy"] = ratio
            print(f"{scenario:25} ratio tool/manual, time to healthy: {ratio:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
