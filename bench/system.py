#!/usr/bin/env python3
"""Benchmark: the whole-system rollback with doai-rollback vs the sum of the runbook's manual steps.

On the system rig (doai_ansible/sandbox/system_rig.py: the PM2 VPS and, where a Docker engine
starts, the Docker VPS, each behind a loopback sshd; PostgreSQL with the fixture Supabase
project; the Vercel API stand-in with the dashboard health; 2 stand-in PCs with 2 users each),
N runs of, per method (order alternating):
  reset to the good deployment and break_all() (the failed deployment of every part); not timed
  the method; then every part's live state must be the good one (else the benchmark stops)

Methods:
  tool:   doai-rollback system rollback --reason bench --yes -o json --database-last 1
  dry:    the same with --dry-run (the plan of every part with the checklist's reads); the rig must
          be left exactly in the failed state
          (fresh state dir each run: no warm SSH master connection); wall clock of the command
  manual: what an operator types, part by part in the runbook's order, each step timed until
          that part is healthy, the steps summed (time between steps -- reading, deciding -- is
          not counted: a lower bound of a real manual rollback):
          agent: per PC and user, over ssh: stop the agent, `mv app-current app-failed`,
                 `mv app-backup app-current`, start the agent; healthy = 1.9.0 runs
          backend PM2: ssh 'cd APP && git checkout <v2> && npm ci --production && pm2 restart all';
                 healthy = /api/health 200 with 2.0.0
          backend Docker: over ssh, the runbook's section 2 (`docker-compose down`, tag :current
                 as :rollback, pull :previous, tag it :current, `docker-compose up -d`);
                 healthy = /api/health 200 with 3.0.0
          database: `psql -1 -f <down file>` and the runbook's DELETE of the history row;
                 healthy = the history back to the three good migrations
          dashboard: `vercel rollback <previous production deployment> --yes` (the official CLI
                 from tests/node, pointed at the stand-in with --api); healthy = health 200

Prints medians (min-max) per method and per manual step, and the ratio tool / manual of the
medians; writes bench/results/system.json. No assertions on time.

    .venv/bin/python bench/system.py --runs 5
    .venv/bin/python bench/system.py --runs 3 --no-docker --methods manual
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from doai_ansible.sandbox.agent_rig import AGENT_PYTHON  # noqa: E402
from doai_ansible.sandbox.docker_rig import COMPOSE, DOCKER  # noqa: E402
from doai_ansible.sandbox.pg_rig import HISTORY_TABLE  # noqa: E402
from doai_ansible.sandbox.rig import http_health  # noqa: E402
from doai_ansible.sandbox.system_rig import BAD_MIGRATION, BAD_MIGRATION_FILE, SystemRig  # noqa: E402

VERCEL_BIN = ROOT / "tests" / "node" / "node_modules" / ".bin" / "vercel"
TOOL_ARGS = ("system", "rollback", "--reason", "bench", "--yes", "-o", "json", "--database-last", "1")


def until(check: Callable[[], bool], t0: float, deadline_s: float = 120) -> float:
    """Seconds from t0 until ``check()`` holds (polled every 20 ms); fails past the deadline."""
    while time.monotonic() - t0 < deadline_s:
        if check():
            return time.monotonic() - t0
        time.sleep(0.02)
    raise SystemExit(f"not healthy after {deadline_s} s")


def run(argv: list[str], what: str, **kw: Any) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=180,
                          check=False, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {proc.stderr[-1500:]}{proc.stdout[-500:]}")


def healthy(url: str, version: str | None) -> Callable[[], bool]:
    def check() -> bool:
        status, v = http_health(url, timeout=1)
        return status == 200 and (version is None or v == version)
    return check


# -- the manual steps ------------------------------------------------------------------------------
def _agent_on(ag: Any, pc: str, user: str, version: str) -> bool:
    return bool(ag.agent_version(pc, user) == version)


def manual_agents(rig: SystemRig) -> float:
    """Per PC and user, one after the other, as the runbook's section 4 (the two renames) with the
    agent stopped before and started after (it holds its folder open)."""
    ag, total = rig.agents, 0.0
    for pc in ag.pcs:
        for user in ag.users:
            folder = shlex.quote(str(ag.folder(pc, user)))
            # "gone" includes a zombie: the rig started the agents, so they stay its children until reaped
            script = (f"cd {folder} && pid=$(cat agent.pid) && kill $pid && "
                      "while kill -0 $pid 2>/dev/null && [ \"$(cut -d' ' -f3 /proc/$pid/stat)\" != Z ]; do sleep 0.05; done && "
                      "mv app-current app-failed && mv app-backup app-current && "
                      f"setsid -f {shlex.quote(AGENT_PYTHON)} "
                      f"{folder}/app-current/agent.py </dev/null >>/dev/null 2>&1")
            t0 = time.monotonic()
            run(ag.ssh_argv(pc, script), f"agent {pc}/{user}")
            total += until(functools.partial(_agent_on, ag, pc, user, "1.9.0"), t0)
    return total


def manual_pm2(rig: SystemRig) -> float:
    sb = rig.sandbox
    script = (f"cd {shlex.quote(str(sb.app))} && git checkout -q {sb.commits['v2']} && "
              "npm ci --production --no-audit --no-fund >/dev/null 2>&1 && "
              f"PM2_HOME={shlex.quote(str(sb.pm2_home))} {shlex.quote(sb.pm2)} restart all >/dev/null")
    t0 = time.monotonic()
    run(sb.ssh_argv(script), "PM2 rollback")
    return until(healthy(sb.health_url, "2.0.0"), t0)


def manual_docker(rig: SystemRig) -> float:
    dk = rig.docker
    assert dk is not None
    repo = dk.image_repo
    env = f"DOCKER_HOST={shlex.quote(dk.docker_host)} DOCKER_CONFIG={shlex.quote(str(dk.docker_config))}"
    script = " && ".join([
        f"cd {shlex.quote(str(dk.project_dir))}",
        f"export {env}",
        f"{COMPOSE} down",
        f"{DOCKER} tag {repo}:current {repo}:rollback",
        f"{DOCKER} pull -q {repo}:previous",
        f"{DOCKER} tag {repo}:previous {repo}:current",
        f"{COMPOSE} up -d",
    ]) + " >/dev/null 2>&1"
    t0 = time.monotonic()
    run(dk.vps.ssh_argv(script), "Docker rollback")
    return until(healthy(dk.health_url, "3.0.0"), t0)


def manual_database(rig: SystemRig) -> float:
    pg = rig.pg
    psql = str(pg.pg_bin / "psql") if pg.pg_bin else "psql"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGPASSWORD": pg.password}
    down = pg.project_dir / "supabase" / "rollbacks" / BAD_MIGRATION_FILE
    url = pg.url_without_password
    t0 = time.monotonic()
    run([psql, url, "-q", "-X", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(down)], "psql -f down file", env=env)
    run([psql, url, "-q", "-X", "-v", "ON_ERROR_STOP=1", "-c",
         f"DELETE FROM {HISTORY_TABLE} WHERE version = '{BAD_MIGRATION}'"], "psql DELETE", env=env)
    return until(lambda: pg.applied_versions()[-1] != BAD_MIGRATION, t0)


def manual_dashboard(rig: SystemRig, home: Path) -> float:
    assert rig.api and rig.world and rig.dashboard
    project = home / "dashboard"
    (project / ".vercel").mkdir(parents=True, exist_ok=True)
    (project / ".vercel" / "project.json").write_text(
        json.dumps({"orgId": rig.world.team.id, "projectId": rig.world.project.id}))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local" / "share"),
           "XDG_CACHE_HOME": str(home / ".cache"), "NO_UPDATE_NOTIFIER": "1", "VERCEL_TELEMETRY_DISABLED": "1",
           "VERCEL_TELEMETRY_BRIDGE_URL": f"{rig.api.url}/_telemetry", "NO_COLOR": "1", "FORCE_COLOR": "0",
           "TERM": "dumb"}
    # The previous production deployment, as the operator reads it from `vercel ls` beforehand (untimed).
    target = rig.world.current.id
    t0 = time.monotonic()
    run([str(VERCEL_BIN), "rollback", target, "--yes", "--api", rig.api.url, "--token", rig.token,
         "--scope", rig.world.team.slug], "vercel rollback", cwd=project, env=env)
    return until(healthy(rig.dashboard.url, None), t0)


def run_manual(rig: SystemRig, scratch: Path) -> dict[str, float]:
    steps = {"agent": manual_agents(rig), "backend:pm2": manual_pm2(rig)}
    if rig.docker:
        steps["backend:docker"] = manual_docker(rig)
    steps["database"] = manual_database(rig)
    steps["dashboard"] = manual_dashboard(rig, scratch / "vercel-home")
    return steps


#: Another checkout of this repository (--other): the methods other and other-dry run its CLI.
OTHER: list[Path] = []


def run_tool(rig: SystemRig, scratch: Path, *, dry: bool = False, root: Path = ROOT) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOAI_", "ANSIBLE_"))}
    env.update(rig.env(scratch / "state"))
    t0 = time.monotonic()
    args = [*TOOL_ARGS, "--dry-run"] if dry else TOOL_ARGS
    proc = subprocess.run([sys.executable, "-m", "doai_ansible", *args], cwd=root, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1200, check=False)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"tool: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {"wall_s": wall} if dry else {"wall_s": wall, **tool_breakdown(proc.stdout)}


def tool_breakdown(out: str) -> dict[str, Any]:
    """Where the tool's time went, from its JSON: each part's span (its first step's start to its
    last step's end: steps of one part run together), and the checklist around them (before the
    first step starts; after the last one ends)."""
    try:
        data = json.loads(out)
        steps = data["steps"]
        spans: dict[str, list[dt.datetime]] = {}
        for st in steps:
            start, end = dt.datetime.fromisoformat(st["started"]), dt.datetime.fromisoformat(st["finished"])
            span = spans.setdefault(st["part"], [start, end])
            span[0], span[1] = min(span[0], start), max(span[1], end)
        parts = {p: (e - s).total_seconds() for p, (s, e) in spans.items()}
        first, last = min(s for s, _ in spans.values()), max(e for _, e in spans.values())
        started, finished = dt.datetime.fromisoformat(data["started"]), dt.datetime.fromisoformat(data["finished"])
        return {"parts": parts, "before_s": (first - started).total_seconds(),
                # the run's start to the end of its last part (the last part healthy)
                "last_part_done_s": (last - started).total_seconds(),
                "between_s": (last - first).total_seconds() - sum(parts.values()),
                "after_s": (finished - last).total_seconds(), "run_s": (finished - started).total_seconds()}
    except (ValueError, KeyError, IndexError, TypeError) as exc:  # a step without times: no breakdown
        return {"breakdown_error": repr(exc)[:200], "stdout_tail": out[-2000:]}


def one(rig: SystemRig, method: str) -> dict[str, Any]:
    rig.reset()  # untimed
    rig.break_all()
    if rig.state() != rig.expected_bad():
        raise SystemExit(f"the rig is not in the failed state: {rig.state()}")
    scratch = Path(tempfile.mkdtemp(prefix="dsy-", dir="/tmp"))
    try:
        if method in ("tool", "dry", "other", "other-dry"):
            r = run_tool(rig, scratch, dry=method.endswith("dry"), root=OTHER[0] if method.startswith("other") else ROOT)
        else:
            steps = run_manual(rig, scratch)
            r = {"wall_s": sum(steps.values()), "steps": steps}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    after = rig.state()
    if method.endswith("dry"):
        if after != rig.expected_bad():
            raise SystemExit(f"dry: the dry run changed the system:\n{json.dumps(after, indent=1)}")
        return r
    if after != rig.expected_good():
        raise SystemExit(f"{method}: the system is not back on the good deployment:\n{json.dumps(after, indent=1)}\n"
                         f"expected\n{json.dumps(rig.expected_good(), indent=1)}")
    return r


def breakdown(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Medians of where the tool's time went (tool_breakdown) over ``runs``."""
    names = list(runs[0]["parts"])
    out = {n: summary([r["parts"].get(n, 0.0) for r in runs]) for n in names}
    for label, key in (("(checklist before the first part)", "before_s"), ("(between the parts)", "between_s"),
                       ("(checklist after the last part)", "after_s"),
                       ("(run start to the last part done)", "last_part_done_s")):
        out[label] = summary([float(r[key]) for r in runs])
    out["(process start and exit, outside the run)"] = summary(
        [float(r["wall_s"]) - float(r["run_s"]) for r in runs])
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(s: dict[str, float]) -> str:
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--methods", default="tool,manual,dry",
                    help="comma-separated: tool, manual, dry (the tool's --dry-run; must change nothing); "
                         "other, other-dry: the same with the checkout given by --other")
    ap.add_argument("--other", type=Path, default=None,
                    help="another checkout of this repository (its tests/node may be a link to this one's): "
                         "the methods other and other-dry run its doai-rollback on the same rig, interleaved")
    ap.add_argument("--no-docker", action="store_true", help="leave the Docker VPS out")
    ap.add_argument("--pcs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "system.json")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if any(m.startswith("other") for m in methods):
        if args.other is None or not (args.other / "doai_ansible").is_dir():
            raise SystemExit("the methods other and other-dry need --other DIR, a checkout of this repository")
        OTHER.append(args.other.resolve())
    wd = args.workdir or Path(tempfile.mkdtemp(prefix="dsys-", dir="/tmp"))  # short: sockets
    rig = SystemRig(wd / "rig", docker=False if args.no_docker else None, pcs=args.pcs)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    report: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                 "runs": args.runs, "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    t_start = time.monotonic()
    try:
        rig.start()
        report.update(rig_start_s=rig.timings.get("start_s"), skipped=rig.skipped, backend_hosts=rig.backend_hosts,
                      pcs=rig.agents.pcs, users=list(rig.agents.users))
        for m in methods:  # warm-up: npm's cache, PM2, the CLI's imports, the Vercel CLI
            one(rig, m)
        for i in range(args.runs):
            for m in methods if i % 2 == 0 else methods[::-1]:
                r = one(rig, m)
                results[m].append(r)
                extra = ", ".join(f"{k} {v:.2f}" for k, v in (r.get("steps") or r.get("parts") or {}).items())
                print(f"run {i + 1}/{args.runs} {m:6}: {r['wall_s']:.2f} s" + (f" ({extra})" if extra else ""),
                      flush=True)
    finally:
        rig.stop()
        rig.cleanup()
        if args.workdir is None:
            shutil.rmtree(wd, ignore_errors=True)
    rows: dict[str, Any] = {}
    for m, runs in results.items():
        rows[m] = {"wall_s": summary([float(r["wall_s"]) for r in runs]), "samples": runs}
    if "manual" in results and results["manual"]:
        names = list(results["manual"][0]["steps"])
        rows["manual_steps"] = {n: summary([r["steps"][n] for r in results["manual"]]) for n in names}
    for m in ("tool", "other"):
        if results.get(m) and all("parts" in r for r in results[m]):
            rows[f"{m}_parts"] = breakdown(results[m])
    if "tool" in rows and "manual" in rows:
        manual_median = rows["manual"]["wall_s"]["median"]
        report["ratio_tool_manual"] = rows["tool"]["wall_s"]["median"] / manual_median
        if "tool_parts" in rows:
            report["ratio_last_part_manual"] = (
                rows["tool_parts"]["(run start to the last part done)"]["median"] / manual_median)
    report.update(rows=rows, load_after=os.getloadavg(), total_s=time.monotonic() - t_start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\nmedians (min-max) of {args.runs} runs, seconds; backend hosts {rig.backend_hosts}, "
          f"{len(rig.agents.pcs)} PCs x {len(rig.agents.users)} users" + (f"; skipped {rig.skipped}" if rig.skipped else ""))
    print("| method | whole system (s) |")
    print("| --- | --- |")
    for m in methods:
        print(f"| {m} | {fmt(rows[m]['wall_s'])} |")
    for n, s in (rows.get("manual_steps") or {}).items():
        print(f"| manual: {n} | {fmt(s)} |")
    for m in ("tool", "other"):
        for n, s in (rows.get(f"{m}_parts") or {}).items():
            print(f"| {m}: {n} | {fmt(s)} |")
    if "ratio_tool_manual" in report:
        print(f"\nratio tool / manual (medians): {report['ratio_tool_manual']:.2f}")
    if "ratio_last_part_manual" in report:
        print(f"ratio last part done / manual (medians): {report['ratio_last_part_manual']:.2f}")
    print(f"total {report['total_s']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
