"""The agent PCs' logs go through the one scrubber on the PC (issue 19, item 1): an agent that
logs secrets is read by `diagnose agent-connection` and by the whole-system rollback's log
collection (diagnose.collect_logs), and the secrets are in neither; the lines are, with ***."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

TAG = secrets.token_hex(4)
CANARIES = [f"CANARYpw{TAG}", f"CANARYkey{TAG}", f"CANARYbearer{TAG}", f"CANARYjwt{TAG}"]
LEAKY = (f"db postgres://agent:{CANARIES[0]}@db/x\n"
         f"DOAI_AGENT_API_KEY={CANARIES[1]}\n"
         f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwYzAxIn0.{CANARIES[3]}\n"
         f"socket auth failed: Authorization: Bearer {CANARIES[2]}\n")


def inventory(tmp_path: Path, sb, fleet) -> Path:
    inv = tmp_path / "inventory"
    inv.mkdir()
    shutil.copyfile(sb.inventory, inv / "backend.yml")
    shutil.copyfile(fleet.write_inventory(), inv / "agents.yml")
    return inv


def leaks(*texts: str, root: Path | None = None) -> list[str]:
    found = [c for c in CANARIES for t in texts if c in t]
    for p in (root.rglob("*") if root else []):
        if p.is_file() and not p.is_symlink():
            found += [f"{p}: {c}" for c in CANARIES if c.encode() in p.read_bytes()]
    return found


def test_agent_logs_with_secrets_are_scrubbed_on_the_pc(sandbox, agent_fleet, state_dir, tmp_path):
    from doai_ansible import diagnose
    from doai_ansible.context import RunContext
    from doai_ansible.settings import load_settings

    fleet = agent_fleet(n=1, unreachable=0)
    (pc,) = fleet.reachable
    with open(fleet.folder(pc, "alice") / "agent.log", "a", encoding="utf-8") as fh:
        fh.write(LEAKY)
    inv = inventory(tmp_path, sandbox, fleet)
    res = run_cli("diagnose", "agent-connection", "-i", str(inv), "--state-dir", str(state_dir), "-o", "json")
    assert res.code in (0, 6), res.stdout + res.stderr
    assert leaks(res.stdout, res.stderr) == []
    assert "Bearer ***" in res.stdout  # the last log line, scrubbed
    ctx = RunContext.create(load_settings(None, inventory=str(inv), state_dir=str(state_dir)))
    dest = tmp_path / "bundle"
    entries = diagnose.collect_logs(ctx, dest, lines=20, parts=("agent",))
    (entry,) = [e for e in entries if e["host"] == pc]
    text = Path(entry["file"]).read_text()
    for kept in ("postgres://agent:***@db/x", "DOAI_AGENT_API_KEY=***", "Authorization: Bearer ***"):
        assert kept in text, text
    assert leaks(res.stdout, res.stderr, root=state_dir) == []
    assert leaks(root=dest) == []
