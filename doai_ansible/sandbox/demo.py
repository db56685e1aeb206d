"""``doai-rollback demo``: the whole backend story on a local sandbox, end to end.

Builds a loopback sshd and a git-deployed Node app under PM2 (v1 good, v2 good with another
lockfile, v3 bad), deploys v3 the way the team's pipeline would, then rolls back with this
tool (default target, through ansible-runner over SSH) and shows health before and after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from doai_ansible import engine, parts
from doai_ansible.context import RunContext
from doai_ansible.errors import ExitStatus
from doai_ansible.render import Progress, run_text
from doai_ansible.sandbox import Sandbox
from doai_ansible.settings import load_settings


def run_demo(
    *, workdir: Path | None = None, keep: bool = False, echo: Callable[[str], None] = print, verbose: bool = False
) -> dict[str, Any]:
    created = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="doai-demo-")) if workdir is None else Path(workdir)
    sb = Sandbox(wd / "sandbox")
    result: dict[str, Any] = {"workdir": str(wd)}
    try:
        echo(f"1. building the sandbox VPS in {wd} (sshd on 127.0.0.1, PM2 cluster, git repo v1..v3)")
        t0 = time.monotonic()
        sb.start(deploy="v2")
        echo(f"   ready in {time.monotonic() - t0:.1f} s: ssh port {sb.ssh_port}, app {sb.health_url}")
        echo(f"   health: {_fmt(sb.wait_health())}")
        echo("2. deploying v3 (the bad release) as the pipeline would")
        sb.deploy("v3")
        before = sb.wait_health(expect_ok=False)
        echo(f"   health: {_fmt(before)}   <- the outage")
        echo("3. doai-rollback backend rollback --reason 'demo: v3 answers 500'")
        settings = load_settings(None, inventory=sb.inventory, state_dir=wd / "state", env={
            k: v for k, v in os.environ.items() if k not in ("DOAI_CONFIG", "DOAI_INVENTORY", "DOAI_STATE_DIR")})
        progress = Progress(enabled=True if verbose else None)
        ctx = RunContext.create(settings, progress=progress, note=progress.note)
        t1 = time.monotonic()
        part = parts.get("backend")
        job = engine.Job(part, part.request(reason="demo: v3 answers 500"))
        run = engine.run(ctx, [job], command="backend rollback", reason="demo: v3 answers 500")
        took = time.monotonic() - t1
        for line in run_text(run).splitlines():
            echo("   " + line)
        after = sb.health()
        echo(f"4. health after the rollback ({took:.1f} s): {_fmt(after)}")
        ok = run.exit_status is ExitStatus.OK and after[0] == 200 and after[1] == "2.0.0"
        echo("demo " + ("succeeded: v3 -> v2, healthy again" if ok else "FAILED"))
        result.update(
            exit_status=int(ExitStatus.OK if ok else (run.exit_status or ExitStatus.ERROR)),
            before={"status": before[0], "version": before[1]},
            after={"status": after[0], "version": after[1]},
            rollback=run.to_dict(),
            seconds=round(took, 2),
        )
        if keep:
            echo(f"sandbox left running: inventory {sb.inventory}; stop it with "
                 f"python -m doai_ansible.sandbox stop --workdir {sb.workdir}")
        elif created:
            echo("the sandbox, its journal and logs are removed now (--keep leaves them)")
        return result
    finally:
        if not keep:
            sb.stop()
            if created:
                shutil.rmtree(wd, ignore_errors=True)


def _fmt(h: tuple[int | None, str | None]) -> str:
    return "no answer" if h[0] is None else f"HTTP {h[0]}, version {h[1]}"
