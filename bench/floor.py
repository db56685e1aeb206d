#!/usr/bin/env python3
"""Benchmark: the floor of any playbook run, against the runbook's whole Docker rollback by hand.

Issue 20's goal 1 asks the tool to be healthy within 1.0x the runbook's Docker rollback typed
over ssh, and 1.5x pull-first by hand. The design runs the VPS's steps as an Ansible playbook
(ansible-runner -> ansible-playbook -> SSH -> a Python module on the host). This measures, on
the Docker rig (doai_ansible/sandbox/docker_rig.py; the "VPS" behind a loopback sshd), in one
sitting, the methods interleaved, N runs each after a discarded warm-up:

  ssh:           `ssh VPS true`: one SSH connection, nothing else
  playbook-none: ansible-playbook, one play, one `debug` task: Ansible's start, no connection
  playbook-raw:  ansible-playbook, one `raw: "true"` task: start + one SSH connection
  playbook-ping: ansible-playbook, one `ansible.builtin.ping` task: start + connection + the
                 smallest Python module (built, sent, run)
  runner-ping:   the same playbook through this project's runner (doai_ansible.runner.
                 run_playbook: ansible-runner, its event handling and artifacts), in a new
                 Python process as the CLI is: the floor of a `doai-rollback` part that runs a
                 playbook
  runbook:       the runbook's Docker rollback over ssh (down first), until /api/health answers
                 200 with the target's version (bench/backend_docker.py's method)
  pull-first:    the same commands, pull first, by hand (bench/backend_docker.py's
                 reordered-manual)

Every playbook uses the repository's ansible.cfg (pipelining, ControlMaster) and a fresh
ControlPath directory (no warm connection). The rig is reset before each run of the manual
methods (untimed). Prints medians (min-max); writes bench/results/floor.json. No assertions.

    .venv/bin/python bench/floor.py --runs 7
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backend_docker import (  # noqa: E402
    Steps,
    close_masters,
    reordered_commands,
    runbook_commands,
    summary,
    wait_healthy,
)

from doai_ansible.sandbox.docker_rig import DockerRig  # noqa: E402

PLAYS: dict[str, dict[str, Any]] = {
    "none": {"ansible.builtin.debug": {"msg": "floor"}},
    "raw": {"ansible.builtin.raw": "true", "changed_when": False},
    "ping": {"ansible.builtin.ping": None},
}
METHODS = ("ssh", "playbook-none", "playbook-raw", "playbook-ping", "runner-ping", "runbook", "pull-first")

RUNNER = """
import sys
from doai_ansible.runner import run_playbook
from doai_ansible.settings import load_settings
run = run_playbook(load_settings(), sys.argv[1])
sys.exit(0 if run.ok else 1)
"""


def write_playbooks(d: Path) -> dict[str, Path]:
    out = {}
    for name, task in PLAYS.items():
        path = d / f"{name}.yml"
        path.write_text(json.dumps([{"name": f"floor: {name}", "hosts": "backend", "gather_facts": False,
                                     "tasks": [{"name": name, **task}]}]) + "\n")  # JSON is YAML
        out[name] = path
    return out


def one(rig: DockerRig, method: str, playbooks: dict[str, Path]) -> float:
    if method in ("runbook", "pull-first"):
        rig.reset()  # untimed: v3 live, :previous -> v2 in the registry only
        steps = Steps(rig, runbook_commands(rig) if method == "runbook" else reordered_commands(rig))
        t0 = time.monotonic()
        steps.start()
        healthy = wait_healthy(rig, t0)
        steps.join(timeout=300)
        if steps.returncode != 0 or healthy is None:
            raise SystemExit(f"{method} failed ({steps.returncode}): {steps.err}")
        return healthy
    tmp = Path(tempfile.mkdtemp(prefix="dbf-", dir="/tmp"))  # no warm SSH master connection
    env = dict(os.environ, ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env = {k: v for k, v in env.items() if not k.startswith("DOAI_")}
    if method == "ssh":
        argv = rig.vps.ssh_argv("true")
    elif method == "runner-ping":
        env.update(DOAI_INVENTORY=str(rig.inventory), DOAI_STATE_DIR=str(tmp / "state"))
        argv = [sys.executable, "-c", RUNNER, str(playbooks["ping"])]
    else:
        argv = ["ansible-playbook", "-i", str(rig.inventory), str(playbooks[method.split("-", 1)[1]])]
    try:
        t0 = time.monotonic()
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=120, check=False)
        took = time.monotonic() - t0
    finally:
        close_masters(tmp)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "floor.json")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}")
    wd = Path(tempfile.mkdtemp(prefix="doai-bench-floor-"))
    rig = DockerRig(wd / "rig")
    results: dict[str, list[float]] = {m: [] for m in methods}
    try:
        rig.start()
        rig.write_inventory()
        playbooks = write_playbooks(wd)
        for method in methods:  # warm-up, discarded: page cache, imports
            one(rig, method, playbooks)
        for i in range(args.runs):
            for method in methods if i % 2 == 0 else methods[::-1]:  # alternate order
                results[method].append(one(rig, method, playbooks))
            print(f"run {i + 1}: " + ", ".join(f"{m} {results[m][-1]:.2f}" for m in methods), flush=True)
    finally:
        rig.stop()
        rig.cleanup()
        shutil.rmtree(wd, ignore_errors=True)
    report = {"runs": args.runs, "methods": {m: {**summary(v), "values": v} for m, v in results.items()}}
    print(f"\nmedians of {args.runs} runs (min-max), seconds")
    for m, v in results.items():
        s = summary(v)
        print(f"{m:14} {s['median']:6.2f} ({s['min']:.2f}-{s['max']:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
