"""The backend's diagnose: the runbook's scenario A (section 7, the API answers with errors).

:func:`api_errors`: per backend host (PM2 or Docker, as the inventory says) the last log lines
scanned for HTTP 5xx, stack traces and ``...Error:`` lines, the environment variables the
backend needs (``diagnose.backend_env``; names only) checked in the running process's
environment, the health URL's answer and the live release. Read-only: the playbook only reads.
Declared by :class:`~doai_ansible.parts.backend_cli.BackendCli`; the shared machinery is
:mod:`doai_ansible.diagnose`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from doai_ansible import validate
from doai_ansible.context import RunContext
from doai_ansible.diagnose import Diagnosis, LogScan, _per_host, _run, group_hosts, scan_log, scrub
from doai_ansible.errors import UsageError
from doai_ansible.inventory import BACKEND_GROUP
from doai_ansible.runner import PlaybookRun

BACKEND_PLAYBOOK = "backend_diagnose.yml"
BACKEND_STATS_KEY = "doai_backend_diagnose"


def backend_reports(ctx: RunContext, limit: str | None, *, env: Iterable[str], lines: int,
                     label: str) -> dict[str, dict[str, Any]]:
    pb = _run(ctx, BACKEND_PLAYBOOK, {"doai_backend_diagnose_env": list(env), "doai_backend_diagnose_lines": lines},
              limit, label)
    reps = _per_host(pb, BACKEND_STATS_KEY)
    if not reps and not pb.ok:
        raise pb.error("backend diagnose failed")
    return reps


def reports_of(pb: PlaybookRun) -> dict[str, dict[str, Any]]:
    """The backend evidence a plan's run read for the whole-system checklist (the rollback
    playbook's ``<prefix>_read_logs``): hosts that could not be read have an error."""
    reps = _per_host(pb, BACKEND_STATS_KEY, reported_first=True)
    if not reps and not pb.ok:
        raise pb.error("backend plan failed")
    return reps



# -- A: the API answers with errors ------------------------------------------------------------------
def api_errors(ctx: RunContext, *, limit: str | None = None) -> Diagnosis:
    limit = validate.host_limit(limit)
    d = Diagnosis("api-errors")
    names = ctx.settings.diagnose.backend_env
    if not group_hosts(ctx, BACKEND_GROUP, limit):
        raise UsageError(f"no backend hosts in {ctx.settings.inventory}" + (f" match --limit {limit}" if limit else ""),
                         hint="the inventory group `backend`")
    reps = backend_reports(ctx, limit, env=names, lines=ctx.settings.diagnose.log_lines, label="diagnose")
    bad_hosts = []
    for host, rep in reps.items():
        if rep.get("error"):
            d.add("reachable" if rep.get("unreachable") else "evidence", False, host, rep["error"],
                  unreachable=bool(rep.get("unreachable")))
            continue
        if _api_host(d, host, rep, names):
            bad_hosts.append(host)
    _api_next(d, bad_hosts, list(reps), limit)
    return d


def _api_host(d: Diagnosis, host: str, rep: Mapping[str, Any], names: tuple[str, ...]) -> bool:
    """The findings of one backend host; True when one of them is a fault."""
    before = len(d.faults)
    mode = rep.get("mode") or "pm2"
    raw = rep.get("health_status")
    code = int(str(raw)) if str(raw).lstrip("-").isdigit() else None
    answer = f"HTTP {code}" if code is not None else "no answer"
    body = (rep.get("health_body") or "").strip().replace("\n", " ")[:120]
    d.add("health", code is not None and 200 <= code < 300, host,
          f"{rep.get('health_url')}: {answer}" + (f" ({body})" if body and not (code and 200 <= code < 300) else ""))
    procs = rep.get("processes") or []
    if rep.get("runtime_error"):
        d.add("processes", False, host, f"{mode}: {rep['runtime_error']}")
    else:
        down = [p for p in procs if p.get("status") not in ("online", "running")]
        d.add("processes", bool(procs) and not down, host,
              ", ".join(f"{p.get('name')}{'' if p.get('pm_id') is None else '[' + str(p['pm_id']) + ']'} "
                        f"{p.get('status')} restarts={p.get('restarts')}" for p in procs) or "no process")
    if not names:
        d.add("environment", True, host, "not checked: diagnose.backend_env names no variable")
    else:
        missing = sorted({n for p in procs for n in p.get("missing_env") or []})
        source = ", ".join(sorted({str(p.get("env_source")) for p in procs})) or "-"
        d.add("environment", not missing and bool(procs), host,
              (f"missing or empty in the running process: {', '.join(missing)}" if missing
               else f"all {len(names)} set ({', '.join(names)})" if procs else "no process to read") +
              f" [from: {source}]")
    scan = LogScan()
    errors = []
    for entry in rep.get("logs") or []:
        if entry.get("error"):
            errors.append(entry["error"])
        scan = scan.merge(scan_log(scrub(entry.get("text") or "")))
    where = "container log" if mode == "docker" else "PM2 out/err logs"
    d.add("logs", not scan.found, host, f"{where}: {scan.summary()}" + (f"; unreadable: {'; '.join(errors)}" if errors else ""))
    release = rep.get("release") or rep.get("release_error") or "?"
    d.add("release", True, host, f"live {'image' if mode == 'docker' else 'commit'} {str(release)[:19]}"
          + (f" (version {rep.get('version')})" if rep.get("version") else ""))
    return len(d.faults) > before


def _api_next(d: Diagnosis, bad: list[str], hosts: list[str], limit: str | None) -> None:
    if not bad:
        return
    missing = [f for f in d.faults if f.check == "environment"]
    if missing:
        d.suggest("set the missing variables in the app's environment (PM2 ecosystem file / compose environment), "
                  "then reload it; or roll back to the release that ran with them:")
    where = "" if set(bad) == set(hosts) and not limit else f" --limit {','.join(bad)}"
    d.suggest(f"doai-rollback backend rollback{where} --dry-run")
    d.suggest(f"doai-rollback backend rollback{where}")
