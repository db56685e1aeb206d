#!/usr/bin/env python3
"""Benchmark: `doai-rollback agent rollback` on fleets of 4, 16 and 48 stand-in PCs.

On the agent rig (doai_ansible/sandbox/agent_rig.py: Linux stand-in PCs, every one reached over
the same loopback sshd, 2 users with the agent per PC, no unreachable PC), for each fleet size N
runs of:
  reset: every PC's folders made anew, 2.0.0 (the bad release) running for every user; not timed
  `doai-rollback agent rollback --yes -o json` (fresh state dir each run: no warm SSH master
  connection), wall clock; every step must have succeeded (else the benchmark stops)
With the default batch size (all PCs at once) and Ansible's fork count as configured (the repo's
ansible.cfg and the CLI's environment do not set forks: Ansible's default, 5; the value that
applied is read back from `ansible-config dump` with the CLI's environment and reported).
Optionally one extra row at the largest fleet with ANSIBLE_FORKS=--forks-extra, and the plan alone
(`--dry-run`) timed at the largest fleet.

Prints medians (min-max), seconds per PC and a least-squares line (fixed + per-PC) through the
medians of the default-forks rows; writes bench/results/agent_fleet.json. No assertions on time.

    .venv/bin/python bench/agent_fleet.py --runs 3
    .venv/bin/python bench/agent_fleet.py --runs 5 --sizes 4,16,48 --forks-extra 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from doai_ansible.sandbox.agent_rig import AgentRig  # noqa: E402

USERS = ("alice", "bob")


def cli_env(rig: AgentRig, state: Path, forks: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOAI_", "ANSIBLE_"))}
    env.update(DOAI_INVENTORY=str(rig.inventory), DOAI_STATE_DIR=str(state))
    if forks is not None:
        env["ANSIBLE_FORKS"] = str(forks)
    return env


def forks_in_effect(forks: int | None) -> str:
    """DEFAULT_FORKS as ansible-config reports it from the repository root (its ansible.cfg) with
    the environment the CLI's runs get, e.g. ``5 (default)``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    if forks is not None:
        env["ANSIBLE_FORKS"] = str(forks)
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-config"), "dump"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False).stdout
    for line in out.splitlines():
        if line.startswith("DEFAULT_FORKS"):
            name, _, value = line.partition(" = ")
            return f"{value.strip()} ({name.split('(', 1)[1].rstrip(')')})" if "(" in name else value.strip()
    return "unknown"


def run_once(rig: AgentRig, n: int, *, forks: int | None, dry_run: bool) -> dict[str, object]:
    rig.reset(pcs=n, unreachable=0, users=USERS)  # untimed
    state = Path(tempfile.mkdtemp(prefix="daf-", dir="/tmp"))
    try:
        argv = [sys.executable, "-m", "doai_ansible", "agent", "rollback"]
        argv += ["--dry-run", "-o", "json"] if dry_run else ["--yes", "--reason", "bench", "-o", "json"]
        t0 = time.monotonic()
        proc = subprocess.run(argv, cwd=ROOT, env=cli_env(rig, state, forks), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=900, check=False)
        wall = time.monotonic() - t0
    finally:
        shutil.rmtree(state, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{n} PCs, dry_run={dry_run}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-2000:]}")
    if dry_run:
        return {"wall_s": wall}
    steps = json.loads(proc.stdout)["steps"]
    expected = {f"{pc}/{u}" for pc in rig.pcs for u in USERS}
    outcomes = {s["target"]: s["outcome"] for s in steps}
    if set(outcomes) != expected or set(outcomes.values()) != {"succeeded"}:
        bad = {t: o for t, o in outcomes.items() if o != "succeeded"}
        raise SystemExit(f"{n} PCs: not every step succeeded: missing {sorted(expected - set(outcomes))[:5]}, "
                         f"other outcomes {dict(list(bad.items())[:5])}")
    for pc in (rig.pcs[0], rig.pcs[-1]):  # spot check on the PCs themselves
        st = rig.folder_state(pc, USERS[-1])
        if (st["app-current"], st["app-failed"]) != ("1.9.0", "2.0.0"):
            raise SystemExit(f"{pc}: folders after the rollback: {st}")
    return {"wall_s": wall, "steps": len(steps)}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def line_fit(points: list[tuple[int, float]]) -> dict[str, float]:
    """Least squares ``t = fixed + per_pc * n``."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    per = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    fixed = my - per * mx
    worst = max(abs(y - (fixed + per * x)) for x, y in points)
    return {"fixed_s": fixed, "per_pc_s": per, "max_residual_s": worst}


def fmt(s: dict[str, float]) -> str:
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="4,16,48", help="comma-separated fleet sizes")
    ap.add_argument("--forks-extra", type=int, default=20,
                    help="one extra row at the largest fleet with ANSIBLE_FORKS=N (0: none)")
    ap.add_argument("--no-dry-run", action="store_true", help="skip timing the plan alone")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "agent_fleet.json")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows: list[tuple[str, int, int | None, bool]] = [(f"{n} PCs", n, None, False) for n in sizes]
    if args.forks_extra:
        rows.append((f"{sizes[-1]} PCs, forks={args.forks_extra}", sizes[-1], args.forks_extra, False))
    if not args.no_dry_run:
        rows.append((f"{sizes[-1]} PCs, --dry-run (plan only)", sizes[-1], None, True))

    wd = args.workdir or Path(tempfile.mkdtemp(prefix="doai-bench-agent-"))
    rig = AgentRig(wd / "rig", pcs=sizes[0], unreachable=0, users=USERS)
    t_start = time.monotonic()
    report: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "runs": args.runs, "cpus": os.cpu_count(), "users_per_pc": len(USERS),
        "forks_default": forks_in_effect(None), "rows": {},
    }
    if args.forks_extra:
        report["forks_extra"] = forks_in_effect(args.forks_extra)
    print(f"forks in effect: {report['forks_default']}" + (f"; extra row: {report.get('forks_extra')}"
                                                          if args.forks_extra else ""), flush=True)
    try:
        rig.start()
        report["rig_start_s"] = rig.timings.get("start_s")
        results: dict[str, list[dict[str, object]]] = {label: [] for label, *_ in rows}
        # interleaved: run i of every row before run i+1 of any, so drift hits every row alike
        for i in range(args.runs):
            for label, n, forks, dry in rows:
                r = run_once(rig, n, forks=forks, dry_run=dry)
                results[label].append(r)
                print(f"run {i + 1}/{args.runs} {label}: {r['wall_s']:.2f} s", flush=True)
    finally:
        rig.stop()
        rig.cleanup()
        if args.workdir is None:
            shutil.rmtree(wd, ignore_errors=True)
    out_rows: dict[str, dict[str, object]] = {}
    for label, n, forks, dry in rows:
        s = summary([float(r["wall_s"]) for r in results[label]])  # type: ignore[arg-type]
        out_rows[label] = {"pcs": n, "users": n * len(USERS), "forks": forks, "dry_run": dry, "wall_s": s,
                           "per_pc_s": s["median"] / n, "samples": [r["wall_s"] for r in results[label]]}
    fit = line_fit([(n, out_rows[label]["wall_s"]["median"]) for label, n, forks, dry in rows  # type: ignore[index]
                    if forks is None and not dry])
    report.update(rows=out_rows, fit=fit, total_s=time.monotonic() - t_start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\nmedians (min-max) of {args.runs} runs, seconds; forks {report['forks_default']}, batch: all PCs")
    print("| fleet | users | rollback wall | per PC |")
    print("| --- | --- | --- | --- |")
    for label, row in out_rows.items():
        print(f"| {label} | {row['users']} | {fmt(row['wall_s'])} | {row['per_pc_s']:.3f} |")  # type: ignore[arg-type]
    print(f"\nline fit (default forks): {fit['fixed_s']:.2f} s + {fit['per_pc_s']:.3f} s/PC "
          f"(largest residual {fit['max_residual_s']:.2f} s); total {report['total_s']:.0f} s; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
