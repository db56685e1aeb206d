"""The whole DoAi system on this machine: every part's rig at once, for the whole-system
rollback's tests, the demo and the benchmark.

It composes the part rigs (nothing of theirs is copied here):

* backend, PM2: a :class:`~doai_ansible.sandbox.rig.Sandbox` (host ``sandbox-vps``);
* backend, Docker: a :class:`~doai_ansible.sandbox.docker_rig.DockerRig` (host ``sandbox-docker``,
  ``doai_backend_mode: docker``), when a Docker engine can be started here (``docker=None``) or
  always (``docker=True``); why it was left out is in :attr:`SystemRig.skipped`;
* database: a :class:`~doai_ansible.sandbox.pg_rig.PgRig` (the fixture Supabase project);
* dashboard: the Vercel API stand-in (:mod:`doai_ansible.sandbox.vercel_api`, in this process)
  with the DoAi project, and the dashboard's health endpoint, which answers 500 while a bad
  deployment is in production;
* agents: an :class:`~doai_ansible.sandbox.agent_rig.AgentRig` with ``pcs`` stand-in PCs, all
  reachable (group ``agents``).

The good deployment (after :meth:`SystemRig.start` and :meth:`SystemRig.reset`): PM2 serves v2
(2.0.0); Docker runs v3 (3.0.0) as ``:current``; the database has the fixture's three
migrations; the Vercel project's production is the DoAi world's ``current`` deployment and the
dashboard health answers 200; every agent runs 1.9.0 from ``app-current`` (no ``app-backup``:
the version the PCs had before the update; the update waits in ``<pc>/standin/update-<user>``).

:meth:`SystemRig.break_all` is the failed deployment of every part, as the team's pipeline does it:
PM2 deploys v3 (health 500); the registry's ``:previous`` becomes v3 and ``:current`` the bad image,
pulled and brought up by Compose (health 404); one new migration applied by the Supabase CLI,
its down file beside it; a new production deployment on Vercel (dashboard health 500); every
agent updates itself (app-current 2.0.0, app-backup 1.9.0, the agent restarted on 2.0.0).

:meth:`SystemRig.state` reads the live state of every part; :meth:`expected_good` and
:meth:`expected_bad` are what it is in either case. One inventory (:meth:`inventory`) and one
config file (:meth:`config`) cover every part; :meth:`env` is the environment of a CLI run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from doai_ansible.sandbox import docker_rig as dk
from doai_ansible.sandbox.agent_rig import VERSIONS as AGENT_VERSIONS
from doai_ansible.sandbox.agent_rig import AgentRig
from doai_ansible.sandbox.pg_rig import PgRig
from doai_ansible.sandbox.rig import Sandbox, SandboxError, http_health
from doai_ansible.sandbox.vercel_api import (
    DashboardHealth,
    Deployment,
    DoaiWorld,
    VercelStandIn,
    _git_meta,
    build_doai_world,
)

log = logging.getLogger(__name__)

GOOD_MIGRATIONS = ("20261101000000", "20261110000000", "20261120000000")
BAD_MIGRATION = "20261127000000"
BAD_MIGRATION_FILE = f"{BAD_MIGRATION}_device_tags.sql"
BAD_MIGRATION_SQL = """\
-- Tags on devices (the release that failed): a new, still empty table.
CREATE TABLE public.device_tags (
  device_id bigint NOT NULL REFERENCES public.devices (id) ON DELETE CASCADE,
  tag text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (device_id, tag)
);
CREATE INDEX device_tags_tag_idx ON public.device_tags (tag);
"""
BAD_MIGRATION_DOWN = f"""\
-- Undoes {BAD_MIGRATION_FILE}.
DROP TABLE public.device_tags;
"""
VERCEL_PROJECT = "doai-dashboard"
AGENT_GOOD, AGENT_NEW = AGENT_VERSIONS["app-backup"], AGENT_VERSIONS["app-current"]
CONTACT_ROLES = ("Infrastructure", "Backend", "Frontend")  # the runbook's emergency contacts
BACKEND_ENV = ("PORT",)  # what the sandbox backend's PM2 processes are started with


def docker_unavailable() -> str | None:
    """Why a Docker engine cannot be started here (None: it can be tried)."""
    missing = [t for t in (dk.DOCKERD, dk.DOCKER, dk.COMPOSE, dk.REGISTRY, dk.BUSYBOX) if not os.access(t, os.X_OK)]
    if missing:
        return "not installed: " + ", ".join(missing)
    if os.geteuid() != 0:
        return "dockerd needs root here (the rig runs its own daemon)"
    return None


class SystemRig:
    """``SystemRig(workdir).start()``; ``break_all()``; ``reset()`` between tests; ``stop()`` and
    ``cleanup()`` at the end. ``used`` is for the session fixtures (tests/conftest.py)."""

    def __init__(self, workdir: Path, *, docker: bool | None = None, pcs: int = 2,
                 canary: str | None = None) -> None:
        self.workdir = Path(workdir).absolute()
        self.want_docker = docker
        self.pcs = pcs
        self.canary = canary or "canary-" + secrets.token_hex(8)
        self.token = "vrc" + secrets.token_hex(12)  # the Vercel CLI refuses tokens with a dash
        self.sandbox = Sandbox(self.workdir / "pm2")
        self.docker: dk.DockerRig | None = None
        self.pg = PgRig(self.workdir / "pg", password=self.canary + "-pg")
        self.agents = AgentRig(self.workdir / "ag", pcs=pcs, unreachable=0)
        self.api: VercelStandIn | None = None
        self.world: DoaiWorld | None = None
        self.dashboard: DashboardHealth | None = None
        self.bad_deployments: list[Deployment] = []
        self._bad_ids: set[str] = set()  # the dashboard health answers 500 while one is in production
        self.skipped: dict[str, str] = {}  # part or host -> why it is not in the rig
        self.timings: dict[str, float] = {}
        self.used = False

    # -- names ---------------------------------------------------------------------------------
    def inventory(self) -> Path:
        return self.workdir / "inventory" / "hosts.yml"

    def config(self) -> Path:
        return self.workdir / "doai-rollback.yml"

    @property
    def backend_hosts(self) -> list[str]:
        return [self.sandbox.host_name] + ([self.docker.host_name] if self.docker else [])

    def env(self, state_dir: Path) -> dict[str, str]:
        """The environment of a CLI run against the rig (secrets included: the Vercel token, the
        database URL with its password, a WinRM password that is only a canary)."""
        return {
            "DOAI_CONFIG": str(self.config()),
            "DOAI_INVENTORY": str(self.inventory()),
            "DOAI_STATE_DIR": str(state_dir),
            "VERCEL_TOKEN": self.token,
            "DOAI_DATABASE_URL": self.pg.url,
            "DOAI_WINRM_PASSWORD": self.canary + "-winrm",
        }

    def secrets(self) -> list[str]:
        """Values that must never show up in output, journals, reports or logs."""
        return [self.token, self.pg.password, self.canary]

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> SystemRig:
        """Every rig, in parallel threads (they are independent), then the inventory and config.
        On a failure everything already started is stopped again."""
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.want_docker is not False:
            why = docker_unavailable()
            if why and self.want_docker:
                raise SandboxError(f"Docker was asked for but {why}")
            if why:
                self.skipped["backend:docker"] = why
            else:
                self.docker = dk.DockerRig(self.workdir / "dk")
        else:
            self.skipped["backend:docker"] = "left out (docker=False)"
        tasks: dict[str, Callable[[], object]] = {
            "pm2": lambda: self.sandbox.start(deploy="v2"),
            "pg": self.pg.start,
            "agents": self._start_agents,
            "vercel": self._start_vercel,
        }
        if self.docker:
            tasks["docker"] = self.docker.start
        try:
            errors = self._parallel(tasks)
            if "docker" in errors and self.want_docker is None:
                self.skipped["backend:docker"] = f"the Docker engine did not start: {errors.pop('docker')}"
                self._stop_docker()
            if errors:
                raise SandboxError("the system rig did not start: "
                                   + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items())))
            self.write_files()
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = time.monotonic() - t0
        self.save()
        return self

    def _parallel(self, tasks: dict[str, Callable[[], object]]) -> dict[str, str]:
        """Run the tasks in threads; {name: error} of those that failed."""
        errors: dict[str, str] = {}
        with ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="system-rig") as pool:
            futures = {name: pool.submit(self._timed, name, fn) for name, fn in tasks.items()}
            for name, fut in futures.items():
                exc = fut.exception()
                if exc is not None:
                    log.warning("system rig: %s failed: %s", name, exc)
                    errors[name] = str(exc)[-600:]
        return errors

    def _timed(self, name: str, fn: Callable[[], object]) -> None:
        t = time.monotonic()
        fn()
        self.timings[f"{name}_s"] = round(time.monotonic() - t, 2)

    def _start_agents(self) -> None:
        self.agents.start()
        self._agents_before_update()

    def _start_vercel(self) -> None:
        api = VercelStandIn()
        self.world = build_doai_world(api, "unused-" + secrets.token_hex(8))
        api.add_token(self.world.user, self.token)
        api.start()
        self.api = api
        self.dashboard = DashboardHealth(api, self.world.project, lambda dep: dep is None or dep in self._bad_ids)

    def stop(self) -> None:
        """Every process of every rig, by PID (each rig's own stop), and the in-process servers."""
        for name, fn in (("agents", self.agents.stop), ("pm2", self.sandbox.stop), ("pg", self.pg.stop),
                         ("docker", self._stop_docker), ("vercel", self._stop_vercel)):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - the others are stopped whatever happens
                log.warning("system rig: stopping %s failed: %s", name, exc)

    def _stop_docker(self) -> None:
        if self.docker is not None:
            self.docker.stop()
            self.docker.cleanup()
            if "backend:docker" in self.skipped:
                self.docker = None

    def _stop_vercel(self) -> None:
        if self.dashboard is not None:
            self.dashboard.stop()
            self.dashboard = None
        if self.api is not None:
            self.api.stop()
            self.api = None

    def cleanup(self) -> None:
        """Remove what the rigs made (after :meth:`stop`): data directories, sockets, the files here."""
        self.pg.cleanup()
        self.agents.cleanup()
        if self.docker is not None:
            self.docker.cleanup()
        for p in (self.config(), self.workdir / "system-rig.json"):
            with contextlib.suppress(OSError):
                p.unlink()
        shutil.rmtree(self.inventory().parent, ignore_errors=True)

    def reset(self) -> SystemRig:
        """Back to the good deployment, each rig by its own quick reset, in parallel (seconds)."""
        t0 = time.monotonic()
        tasks: dict[str, Callable[[], object]] = {
            "pm2": lambda: self.sandbox.reset(deploy=None),
            "pg": self.pg.reset,
            "agents": self._reset_agents,
            "vercel": self._reset_vercel,
        }
        if self.docker:
            tasks["docker"] = self.docker.reset
        errors = self._parallel(tasks)
        if errors:
            raise SandboxError("the system rig did not reset: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.write_files()
        self.timings["reset_s"] = round(time.monotonic() - t0, 2)
        return self

    def _reset_agents(self) -> None:
        self.agents.reset()
        self._agents_before_update()

    def _reset_vercel(self) -> None:
        assert self.api and self.world
        self.api.restore_project(self.world.project, self.world.current, drop=tuple(self.bad_deployments))
        self.bad_deployments.clear()
        self._bad_ids.clear()

    # -- the agents before and after their update ------------------------------------------------
    def _update_dir(self, pc: str, user: str) -> Path:
        return self.agents.pc_dir(pc) / "standin" / f"update-{user}"

    def _agents_before_update(self) -> None:
        """The agent rig seeds the PCs as updated (app-current 2.0.0, app-backup 1.9.0): put the
        update aside (the updater's download) and 1.9.0 back as app-current, running."""
        self.agents.kill_all()
        for pc in self.agents.pcs:
            for user in self.agents.users:
                folder = self.agents.folder(pc, user)
                (folder / "app-current").rename(self._update_dir(pc, user))
                (folder / "app-backup").rename(folder / "app-current")
        self.agents.start_all_agents()

    def _agents_update(self) -> None:
        """What the agent's auto-updater does on every PC: stop the agent, app-current becomes
        app-backup, the new version becomes app-current, start it."""
        self.agents.kill_all()
        for pc in self.agents.pcs:
            for user in self.agents.users:
                folder = self.agents.folder(pc, user)
                (folder / "app-current").rename(folder / "app-backup")
                self._update_dir(pc, user).rename(folder / "app-current")
        self.agents.start_all_agents()

    # -- the failed deployment ---------------------------------------------------------------------
    def break_all(self) -> SystemRig:
        """The failed deployment of every part, as the team's pipeline does it (in parallel)."""
        t0 = time.monotonic()
        tasks: dict[str, Callable[[], object]] = {
            "pm2": self._break_pm2,
            "pg": self._break_database,
            "agents": self._agents_update,
            "vercel": self._break_dashboard,
        }
        if self.docker:
            tasks["docker"] = self._break_docker
        errors = self._parallel(tasks)
        if errors:
            raise SandboxError("break_all failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.timings["break_s"] = round(time.monotonic() - t0, 2)
        return self

    def _break_pm2(self) -> None:
        self.sandbox.deploy("v3")
        self.sandbox.wait_health(expect_ok=False)

    def _break_docker(self) -> None:
        rig = self.docker
        assert rig is not None
        # CI: the image that ran becomes :previous, the new build :current; then on the VPS
        # `docker-compose pull && docker-compose up -d`.
        rig.registry_tag("previous", "v3")
        rig.registry_tag("current", "bad")
        rig.compose("pull", "-q", check=True)
        rig.compose("up", "-d", check=True)
        rig.wait_health(expect_ok=False)

    def _break_database(self) -> None:
        project = self.pg.project_dir / "supabase"
        (project / "migrations" / BAD_MIGRATION_FILE).write_text(BAD_MIGRATION_SQL)
        (project / "rollbacks" / BAD_MIGRATION_FILE).write_text(BAD_MIGRATION_DOWN)
        proc = self.pg.supabase("migration", "up")
        if proc.returncode != 0:
            raise SandboxError(f"supabase migration up failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")

    def _break_dashboard(self) -> None:
        assert self.api and self.world
        dep = self.api.add_deployment(
            self.world.project, creator=self.world.user, age_s=0,
            meta=_git_meta(self.api.rng, "main", "release 1.5.0"), live=True)
        self.bad_deployments.append(dep)
        self._bad_ids.add(dep.id)

    # -- files -------------------------------------------------------------------------------------
    def write_files(self) -> None:
        self.write_inventory()
        self.write_config()
        self.save()

    def write_inventory(self) -> Path:
        """The backend hosts of the PM2 and Docker rigs (group ``backend``) and the PCs (group
        ``agents``), each as its own rig writes it."""
        backend: dict[str, Any] = {}
        for inv in [self.sandbox.write_inventory()] + ([self.docker.write_inventory()] if self.docker else []):
            backend.update(json.loads(inv.read_text())["all"]["children"]["backend"]["hosts"])
        agents = json.loads(self.agents.write_inventory().read_text())["all"]["children"][self.agents.group]["hosts"]
        doc = {"all": {"children": {"backend": {"hosts": backend}, self.agents.group: {"hosts": agents}}}}
        self.inventory().parent.mkdir(parents=True, exist_ok=True)
        self.inventory().write_text(json.dumps(doc, indent=2) + "\n")  # JSON is YAML
        return self.inventory()

    def smoke_checks(self) -> list[dict[str, Any]]:
        assert self.dashboard
        checks = [{"name": "backend (PM2) health", "url": self.sandbox.health_url, "status": 200,
                   "contains": "ok"}]
        if self.docker:
            checks.append({"name": "backend (Docker) health", "url": self.docker.health_url, "status": 200,
                           "contains": "ok"})
        checks.append({"name": "dashboard health", "url": self.dashboard.url, "status": 200,
                       "contains": "ok"})
        return checks

    def write_config(self) -> Path:
        assert self.api and self.world and self.dashboard
        cfg = {
            "inventory": str(self.inventory()),
            "vercel": {"api_url": self.api.url, "project": VERCEL_PROJECT, "team_id": self.world.team.id,
                       "health_url": self.dashboard.url, "timeout": 5, "job_deadline": 30, "health_deadline": 15},
            "database": {"project_dir": str(self.pg.project_dir)},
            "system": {"smoke_checks": self.smoke_checks(),
                       "contacts": [{"role": r, "name": "TBD", "contact": "TBD"} for r in CONTACT_ROLES]},
            "diagnose": {"backend_env": list(BACKEND_ENV)},
        }
        self.config().write_text(json.dumps(cfg, indent=2) + "\n")  # JSON is YAML
        return self.config()

    def describe(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir), "inventory": str(self.inventory()), "config": str(self.config()),
            "backend_hosts": self.backend_hosts, "pcs": self.agents.pcs, "users": list(self.agents.users),
            "vercel_api": self.api.url if self.api else None,
            "dashboard_health": self.dashboard.url if self.dashboard else None,
            "skipped": self.skipped, "timings": self.timings,
        }

    def save(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "system-rig.json").write_text(json.dumps(self.describe(), indent=2) + "\n")

    # -- live state --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The live state of every part, read from the rigs (not through the tool)."""
        assert self.api and self.world and self.dashboard
        status, version = self.sandbox.health()
        backend: dict[str, Any] = {self.sandbox.host_name: {
            "commit": self.sandbox.head(), "health": status, "version": version}}
        if self.docker:
            status, version = self.docker.health()
            backend[self.docker.host_name] = {"image": self.docker.container_image_id(), "health": status,
                                              "version": version}
        applied = self.pg.applied_versions()
        agents = {f"{pc}/{user}": {"app-current": self.agents.folder_state(pc, user)["app-current"],
                                   "running": self.agents.agent_version(pc, user)}
                  for pc in self.agents.pcs for user in self.agents.users}
        return {
            "backend": backend,
            "database": {"applied": applied, "last": applied[-1] if applied else None},
            "dashboard": {"production": self.api.production_of(self.world.project),
                          "health": http_health(self.dashboard.url)[0]},
            "agent": agents,
        }

    def _expected(self, *, good: bool) -> dict[str, Any]:
        assert self.world
        sb = self.sandbox
        backend: dict[str, Any] = {sb.host_name: {"commit": sb.commits["v2" if good else "v3"],
                                                  "health": 200 if good else 500,
                                                  "version": "2.0.0" if good else "3.0.0"}}
        if self.docker:
            backend[self.docker.host_name] = {"image": self.docker.image_ids["v3" if good else "bad"],
                                              "health": 200 if good else 404,
                                              "version": "3.0.0" if good else None}
        applied = list(GOOD_MIGRATIONS) + ([] if good else [BAD_MIGRATION])
        version = AGENT_GOOD if good else AGENT_NEW
        production = self.world.current.id if good else (self.bad_deployments[-1].id if self.bad_deployments else None)
        return {
            "backend": backend,
            "database": {"applied": applied, "last": applied[-1]},
            "dashboard": {"production": production, "health": 200 if good else 500},
            "agent": {f"{pc}/{user}": {"app-current": version, "running": version}
                      for pc in self.agents.pcs for user in self.agents.users},
        }

    def expected_good(self) -> dict[str, Any]:
        """:meth:`state` of the good deployment: after start/reset, and after a full rollback."""
        return self._expected(good=True)

    def expected_bad(self) -> dict[str, Any]:
        """:meth:`state` after :meth:`break_all` (the dashboard's production: its newest bad deployment)."""
        return self._expected(good=False)


def _main(argv: list[str] | None = None) -> int:
    """``python -m doai_ansible.sandbox.system_rig --workdir DIR [--no-docker] [--break]``: start
    the whole system, print it as JSON and keep it up until Enter (or end of input), then stop it."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m doai_ansible.sandbox.system_rig")
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--no-docker", action="store_true")
    ap.add_argument("--pcs", type=int, default=2)
    ap.add_argument("--break", dest="break_", action="store_true", help="deploy the failed release of every part")
    args = ap.parse_args(argv)
    rig = SystemRig(args.workdir, docker=False if args.no_docker else None, pcs=args.pcs)
    rig.start()
    try:
        if args.break_:
            rig.break_all()
        print(json.dumps({**rig.describe(), "env": {k: v for k, v in rig.env(args.workdir / "state").items()
                                                   if k.startswith("DOAI_") and "URL" not in k
                                                   and "PASSWORD" not in k}}, indent=2))
        print("the system runs; press Enter to stop it", file=sys.stderr)
        sys.stdin.readline()
    finally:
        rig.stop()
        rig.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
