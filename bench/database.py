#!/usr/bin/env python3
"""Benchmark: `doai-rollback database snapshot` and `database rollback` on a million rows,
against a plain `pg_dump -Fc` of the same schemas.

On the PgRig (own PostgreSQL on loopback, Supabase-shaped, the fixture migrations devices,
system_logs, device_issues applied by the Supabase CLI), public.system_logs is filled to
--rows rows (1,000,000 by default) once, VACUUM (FREEZE, ANALYZE)d, and the database is kept as
a template of our own (``doai_bench_1m``). Every measurement runs on a fresh copy of it
(DROP DATABASE doai WITH (FORCE); CREATE DATABASE doai TEMPLATE doai_bench_1m; not timed), so
no method pays for another's hint bits or leaves a rolled-back schema to the next. Per run,
in alternating order:

  snapshot:  doai-rollback database snapshot -o json          (the command, wall clock)
  pg_dump:   pg_dump -Fc --schema=public --schema=supabase_migrations --file=F
             (the same pg_dump the tool finds on PATH; PGPASSWORD in the environment)
  rollback:  doai-rollback database rollback --last 1 --yes --accept-data-loss -o json
             (plan, snapshot, the down file of device_issues in one transaction, verify)

and then, on a fresh copy as well, the parts the tool adds to pg_dump, each timed on its own
(the breakdown; not part of the figures above):

  cli:       doai-rollback database status -o json (interpreter, CLI, config, one connection,
             the history; no table scanned): the fixed cost of any database command
  preflight: pg_dump/pg_restore/psql --version (the tool checks them against the server)
  counts:    exact count(*) of every table in public and supabase_migrations (the manifest's
             row counts; the rollback's plan and verify count them again)
  sha256:    doai_ansible.db.migrations.sha256_file of the pg_dump file (the manifest's checksum)
  fk_check:  doai_ansible.db.migrations.invalid_foreign_keys on public (the rollback's verify:
             one anti-join per foreign key, system_logs -> devices scans the million rows)

Prints medians (min-max) and the ratio snapshot / pg_dump of the medians; writes
bench/results/database.json. No assertions.

    .venv/bin/python bench/database.py --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
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

from doai_ansible.db import migrations as mig  # noqa: E402
from doai_ansible.sandbox.pg_rig import DBNAME, PgRig  # noqa: E402

BENCH_TEMPLATE = "doai_bench_1m"
SCHEMAS = ("public", "supabase_migrations")
METHODS = ("snapshot", "pg_dump", "rollback")
PARTS = ("cli", "preflight", "counts", "sha256", "fk_check")


def cli() -> list[str]:
    script = Path(sys.executable).parent / "doai-rollback"
    return [str(script)] if os.access(script, os.X_OK) else [sys.executable, "-m", "doai_ansible"]


def tool_env(rig: PgRig, project: Path, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOAI_", "PG"))}
    env.update(DOAI_DATABASE_URL=rig.url, DOAI_DATABASE_PROJECT_DIR=str(project), DOAI_STATE_DIR=str(state))
    return env


def fresh(rig: PgRig) -> None:
    """``doai`` anew from the million-row template (not timed)."""
    rig.sql(f"DROP DATABASE IF EXISTS {DBNAME} WITH (FORCE)", dbname="postgres")
    rig.sql(f"CREATE DATABASE {DBNAME} TEMPLATE {BENCH_TEMPLATE} STRATEGY FILE_COPY", dbname="postgres")


def build_template(rig: PgRig, rows: int) -> dict[str, object]:
    t0 = time.monotonic()
    have = rig.row_counts()["public.system_logs"]
    if rows > have:
        rig.fill_system_logs(rows - have)
    rig.sql("VACUUM (FREEZE, ANALYZE)")
    fill_s = time.monotonic() - t0
    rig.sql(f"DROP DATABASE IF EXISTS {BENCH_TEMPLATE}", dbname="postgres")
    rig.sql(f"CREATE DATABASE {BENCH_TEMPLATE} TEMPLATE {DBNAME} STRATEGY FILE_COPY", dbname="postgres")
    size = rig.sql(f"SELECT pg_database_size('{BENCH_TEMPLATE}')", dbname="postgres")[0][0]
    return {"row_counts": rig.row_counts(SCHEMAS), "database_bytes": size, "fill_s": fill_s}


def timed(argv: list[str], env: dict[str, str], what: str) -> tuple[float, str]:
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL, check=False)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    return wall, proc.stdout


def run_method(rig: PgRig, method: str, project: Path, work: Path) -> dict[str, object]:
    fresh(rig)
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    try:
        if method == "pg_dump":
            out = state / "plain.dump"
            env = {k: v for k, v in os.environ.items() if not k.startswith(("DOAI_", "PG"))}
            env.update(PGHOST="127.0.0.1", PGPORT=str(rig.port), PGUSER="postgres", PGDATABASE=DBNAME,
                       PGPASSWORD=rig.password)
            argv = [shutil.which("pg_dump") or "pg_dump", "-Fc", *(f"--schema={s}" for s in SCHEMAS), f"--file={out}"]
            wall, _ = timed(argv, env, "pg_dump")
            return {"wall_s": wall, "bytes": out.stat().st_size}
        env = tool_env(rig, project, state)
        if method == "snapshot":
            wall, stdout = timed([*cli(), "database", "snapshot", "-o", "json"], env, "snapshot")
            manifest = json.loads(stdout)
            return {"wall_s": wall, "bytes": manifest["bytes"],
                    "system_logs": manifest["row_counts"]["public.system_logs"]}
        wall, stdout = timed([*cli(), "database", "rollback", "--last", "1", "--yes", "--accept-data-loss",
                              "-o", "json"], env, "rollback")
        (step,) = json.loads(stdout)["steps"]
        if step["outcome"] != "succeeded":
            raise SystemExit(f"rollback: {step['outcome']}: {step.get('message')}")
        left = rig.row_counts()
        if "public.device_issues" in left or left["public.system_logs"] < 1:
            raise SystemExit(f"rollback did not leave what it should: {left}")
        return {"wall_s": wall, "system_logs_after": left["public.system_logs"]}
    finally:
        shutil.rmtree(state, ignore_errors=True)


def breakdown(rig: PgRig, project: Path, work: Path) -> dict[str, float]:
    """The tool's additions to pg_dump, each timed alone on a fresh copy."""
    fresh(rig)
    out: dict[str, float] = {}
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    try:
        out["cli"], _ = timed([*cli(), "database", "status", "-o", "json"], tool_env(rig, project, state), "status")
        t0 = time.monotonic()
        for name in ("pg_dump", "pg_restore", "psql"):
            subprocess.run([shutil.which(name) or name, "--version"], capture_output=True, check=True, timeout=30)
        out["preflight"] = time.monotonic() - t0
        with rig.connect() as conn:
            t0 = time.monotonic()
            for t in mig.tables(conn, SCHEMAS):
                mig.row_count(conn, t)
            out["counts"] = time.monotonic() - t0
            t0 = time.monotonic()
            problems = mig.invalid_foreign_keys(conn, ("public",))
            out["fk_check"] = time.monotonic() - t0
            if problems:
                raise SystemExit(f"foreign key problems on the template: {problems}")
        dump_file = state / "plain.dump"
        env = dict({k: v for k, v in os.environ.items() if not k.startswith("PG")}, PGPASSWORD=rig.password)
        subprocess.run([shutil.which("pg_dump") or "pg_dump", "-Fc", "-h", "127.0.0.1", "-p", str(rig.port),
                        "-U", "postgres", "-d", DBNAME, *(f"--schema={s}" for s in SCHEMAS), f"--file={dump_file}"],
                       env=env, check=True, capture_output=True, timeout=1800)
        t0 = time.monotonic()
        mig.sha256_file(dump_file)
        out["sha256"] = time.monotonic() - t0
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(s: dict[str, float]) -> str:
    return f"{s['median']:7.2f} ({s['min']:.2f}-{s['max']:.2f})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in public.system_logs (at least)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "database.json")
    args = ap.parse_args()
    wd = args.workdir or Path(tempfile.mkdtemp(prefix="doai-bench-db-"))
    rig = PgRig(wd / "rig")
    runs: dict[str, list[dict[str, object]]] = {m: [] for m in METHODS}
    parts: list[dict[str, float]] = []
    try:
        rig.start()
        info = build_template(rig, args.rows)
        print(f"template: {info['row_counts']}, {int(info['database_bytes']) / 1e6:.0f} MB, "
              f"filled in {float(info['fill_s']):.1f} s", flush=True)
        project = PgRig.project(wd / "project")
        work = wd / "work"
        work.mkdir(parents=True, exist_ok=True)
        for m in METHODS:  # warm-up: page cache, the interpreter's bytecode; not counted
            run_method(rig, m, project, work)
        for i in range(args.runs):
            for m in METHODS if i % 2 == 0 else METHODS[::-1]:  # alternate order
                r = run_method(rig, m, project, work)
                runs[m].append(r)
                print(f"run {i + 1}: {m:8} {r['wall_s']:.2f} s", flush=True)
            p = breakdown(rig, project, work)
            parts.append(p)
            print(f"run {i + 1}: parts " + ", ".join(f"{k} {v:.2f} s" for k, v in p.items()), flush=True)
    finally:
        with contextlib.suppress(Exception):
            rig.stop()
        rig.cleanup()
        if args.workdir is None:
            shutil.rmtree(wd, ignore_errors=True)

    report: dict[str, object] = {"template": info, "runs": args.runs, "pg_dump": shutil.which("pg_dump")}
    print(f"\nsystem_logs: {info['row_counts']['public.system_logs']:,} rows; medians of {args.runs} runs (min-max), s")
    for m in METHODS:
        s = summary([float(r["wall_s"]) for r in runs[m]])
        report[m] = {"wall_s": s, "runs": runs[m]}
        print(f"{m:10} {fmt(s)}")
    med = {m: report[m]["wall_s"]["median"] for m in METHODS}  # type: ignore[index]
    report["ratio_snapshot_pg_dump"] = med["snapshot"] / med["pg_dump"]
    report["ratio_rollback_pg_dump"] = med["rollback"] / med["pg_dump"]
    print(f"ratio snapshot / pg_dump: {report['ratio_snapshot_pg_dump']:.2f}; "
          f"rollback / pg_dump: {report['ratio_rollback_pg_dump']:.2f}")
    report["parts"] = {k: summary([p[k] for p in parts]) for k in PARTS}
    report["parts_runs"] = parts
    print("the tool's parts, each alone:")
    for k in PARTS:
        print(f"  {k:10} {fmt(report['parts'][k])}")  # type: ignore[index]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
