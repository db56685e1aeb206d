"""The text a whole-system rollback prints, from a real run against the stand-in agent PCs
(loopback sshd): the checklist's before, then each part's steps, then the checks after."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

FAST = {"doai_agent_rename_delay": 1, "doai_agent_rename_retries": 3, "doai_agent_stop_timeout": 10,
        "doai_agent_verify_timeout": 10}


def env_for(rig, state_dir) -> dict[str, str]:
    return {"DOAI_INVENTORY": str(rig.write_inventory(**FAST)), "DOAI_STATE_DIR": str(state_dir)}


def test_system_rollback_text_shows_the_steps_before_the_checks_after(agent_fleet, state_dir):
    rig = agent_fleet(n=2, unreachable=0)
    res = run_cli("system", "rollback", "--only", "agent", "--yes", "--reason", "agent 2.0.0 crashes",
                  env=env_for(rig, state_dir))
    assert res.code == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    first = lambda prefix: next(i for i, line in enumerate(lines) if line.startswith(prefix))  # noqa: E731
    steps = [i for i, line in enumerate(lines) if "] agent " in line]
    assert steps, res.stdout
    assert first("before:") < min(steps) < max(steps) < first("after:"), res.stdout
    assert first("after:") < first("incident report:"), res.stdout
