"""``doai-rollback demo``: the whole system's story on a local sandbox, end to end.

Builds every part that can run on this machine (:class:`~doai_ansible.sandbox.system_rig.SystemRig`):
the backend as a git checkout under PM2 on a loopback sshd and, where a Docker engine can be
started, as a Compose service; a PostgreSQL shaped like the Supabase project; a Vercel API
stand-in with the dashboard's health endpoint; stand-in agent PCs (Linux, not Windows). Then
the failed deployment of all of them, the whole-system rollback with this tool (the same code
as ``doai-rollback system rollback``), and the live state of every part checked against the
good deployment. Everything listens on loopback and is stopped (by PID) at the end.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from doai_ansible import system
from doai_ansible.context import RunContext
from doai_ansible.errors import ExitStatus
from doai_ansible.render import Progress, run_text
from doai_ansible.settings import load_settings

REASON = "demo: release 1.5 broke every part"


def run_demo(
    *, workdir: Path | None = None, keep: bool = False, echo: Callable[[str], None] = print, verbose: bool = False
) -> dict[str, Any]:
    from doai_ansible.sandbox.system_rig import SystemRig

    created = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="doai-demo-")) if workdir is None else Path(workdir).absolute()
    rig = SystemRig(wd / "system")
    result: dict[str, Any] = {"workdir": str(wd)}
    try:
        echo(f"1. building the DoAi system on this machine, in {wd} (everything on 127.0.0.1)")
        t0 = time.monotonic()
        rig.start()
        echo(f"   ready in {time.monotonic() - t0:.1f} s: backend hosts {', '.join(rig.backend_hosts)}, "
             f"PostgreSQL, Vercel API stand-in, {len(rig.agents.pcs)} agent PCs x {len(rig.agents.users)} users")
        for what, why in rig.skipped.items():
            echo(f"   skipped {what}: {why}")
        _show(echo, rig.state())
        echo("2. the failed deployment of every part (as the pipeline would do it)")
        rig.break_all()
        before = rig.state()
        _show(echo, before)
        echo(f"3. doai-rollback system rollback --database-last 1 --reason '{REASON}' --yes")
        state_dir = wd / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")}
        env.update(rig.env(state_dir))
        settings = load_settings(None, env=env)
        progress = Progress(enabled=True if verbose else None)
        ctx = RunContext.create(settings, progress=progress, note=progress.note)
        t1 = time.monotonic()
        req = system.request(ctx, reason=REASON, database_last=1)
        run = system.rollback(ctx, req)
        took = time.monotonic() - t1
        for line in run_text(run).splitlines() + system.text_lines(run):
            echo("   " + line)
        after = rig.state()
        expected = rig.expected_good()
        echo(f"4. the live state after the rollback ({took:.1f} s), read from the rigs, not through the tool:")
        _show(echo, after)
        wrong = [part for part in expected if after.get(part) != expected[part]]
        for part in wrong:
            echo(f"   {part}: expected {expected[part]}, found {after.get(part)}")
        ok = run.exit_status is ExitStatus.OK and not wrong
        report = (run.extra.get("checklist") or {}).get("report")
        if report:
            echo(f"5. the incident report: {report['markdown']}")
            for line in Path(report["markdown"]).read_text(encoding="utf-8").splitlines()[:12]:
                echo("   | " + line)
        echo("demo " + ("succeeded: every part is back on the good deployment and healthy" if ok else "FAILED"))
        status = ExitStatus.OK if ok else (run.exit_status or ExitStatus.ERROR)
        result.update(
            exit_status=int(status), exit_name=status.name,
            skipped=dict(rig.skipped),
            before=before, after=after, expected=expected, wrong=wrong,
            rollback=run.to_dict(), seconds=round(took, 2),
        )
        if keep:
            echo(f"the system runs: config {rig.config()}, inventory {rig.inventory()}, state {state_dir}")
            if sys.stdin.isatty():
                echo("try `doai-rollback status`, `history`, `undo` with DOAI_CONFIG and DOAI_STATE_DIR set so; "
                     "press Enter to stop it (its files stay in the workdir)")
                sys.stdin.readline()
        elif created:
            echo("the sandbox, its journal, report and logs are removed now (--keep leaves them)")
        return result
    finally:
        rig.stop()  # by PID, whatever happened; --keep leaves the files
        if not keep:
            rig.cleanup()
            if created:
                shutil.rmtree(wd, ignore_errors=True)


def _show(echo: Callable[[str], None], st: dict[str, Any]) -> None:
    for host, b in st["backend"].items():
        echo(f"   backend {host}: HTTP {b.get('health')}, version {b.get('version')}")
    echo(f"   database: last migration {st['database']['last']}")
    echo(f"   dashboard: production {st['dashboard']['production']}, health HTTP {st['dashboard']['health']}")
    versions = sorted({a["app-current"] for a in st["agent"].values()})
    echo(f"   agents: {len(st['agent'])} PC/user folders on {', '.join(map(str, versions))}")
