"""Fixtures for the dashboard tests: the Vercel API stand-in and a dashboard health endpoint.

Loaded by the dashboard test modules with ``pytest_plugins = ["tests.integration.conftest_vercel"]``.
Both servers listen on 127.0.0.1 on a free port and are stopped at the end of each test.
``vercel_cli`` runs the official Vercel CLI (tests/node) against the stand-in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from doai_ansible.settings import Secret, VercelSettings
from doai_ansible.sandbox.vercel_api import HealthEndpoint as HealthServer
from tests.standins.vercel_api import DoaiWorld, VercelStandIn, build_doai_world


@dataclasses.dataclass
class VercelRig:
    api: VercelStandIn
    world: DoaiWorld
    health: HealthServer
    token: str

    def settings(self, **overrides: Any) -> VercelSettings:
        values: dict[str, Any] = {
            "api_url": self.api.url,
            "project": "doai-dashboard",
            "team_id": self.world.team.id,
            "token": Secret(self.token),
            "health_url": self.health.url,
            "timeout_s": 5.0,
            "job_deadline_s": 20.0,
            "health_deadline_s": 3.0,
            "max_retries": 3,
        }
        values.update(overrides)
        return VercelSettings(**values)


def make_token(prefix: str = "canary-xyz-") -> str:
    return prefix + secrets.token_hex(8)


@pytest.fixture
def vercel_rig() -> Iterator[VercelRig]:
    """The stand-in with the DoAi world, and a health endpoint that is down while 1.4.0 is live.

    That mirrors the incident: the bad release (``world.current``) answers 503, every other
    deployment answers 200, so the gate passes only after production really moved.
    """
    token = make_token()
    api = VercelStandIn()
    world = build_doai_world(api, token)
    api.start()
    health = HealthServer(lambda: 503 if api.production_of(world.project) == world.current.id else 200)
    try:
        yield VercelRig(api, world, health, token)
    finally:
        health.stop()
        api.stop()


ROOT = Path(__file__).resolve().parents[2]
VERCEL_BIN = ROOT / "tests" / "node" / "node_modules" / ".bin" / "vercel"


@dataclasses.dataclass
class VercelCli:
    """The official Vercel CLI, pointed at the stand-in with ``--api``, in a linked project dir."""

    rig: VercelRig
    cwd: Path
    env: dict[str, str]
    token: str

    def run(
        self, *args: str, token: str | None = None, timeout: float = 60, scope: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``vercel ARGS --api <stand-in> --token T [--scope <team slug>]`` (``scope`` False: ARGS say it)."""
        cmd = [str(VERCEL_BIN), *args, "--api", self.rig.api.url, "--token", token or self.token]
        if scope:
            cmd += ["--scope", self.rig.world.team.slug]
        return subprocess.run(
            cmd,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )


@pytest.fixture
def vercel_cli(vercel_rig: VercelRig, tmp_path: Path) -> VercelCli:
    """The CLI from tests/node (``npm ci`` there). Missing is a failure, not a skip: CI installs it."""
    if not VERCEL_BIN.exists():
        pytest.fail(f"the Vercel CLI is not installed at {VERCEL_BIN}: run `npm ci` in tests/node")
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH; the Vercel CLI needs Node.js 20")
    token = "cli" + secrets.token_hex(12)  # the CLI refuses tokens with a dash
    vercel_rig.api.add_token(vercel_rig.world.user, token)
    home = tmp_path / "home"
    project_dir = tmp_path / "dashboard"
    (project_dir / ".vercel").mkdir(parents=True)
    (project_dir / ".vercel" / "project.json").write_text(
        json.dumps({"orgId": vercel_rig.world.team.id, "projectId": vercel_rig.world.project.id}), encoding="utf-8"
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "NO_UPDATE_NOTIFIER": "1",
        "VERCEL_TELEMETRY_DISABLED": "1",
        # should telemetry ever be sent anyway, it goes to the stand-in, not to the internet
        "VERCEL_TELEMETRY_BRIDGE_URL": f"{vercel_rig.api.url}/_telemetry",
        "NO_COLOR": "1",
        "FORCE_COLOR": "0",
        "TERM": "dumb",
    }
    return VercelCli(vercel_rig, project_dir, env, token)
