"""Every log the tool keeps goes through the one scrubber on the host (issue 19, item 1): a
failed release that logs secrets (a database URL with its password, a service key, a JWT, a
bearer token) is rolled back, and those secrets are nowhere under the state dir (run logs,
playbook logs, ansible-runner's artifacts kept on purpose, journal) nor on stdout/stderr; the
lines themselves are kept, with *** in place of the secrets. PM2 rig and Docker rig."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

TAG = secrets.token_hex(4)
CANARIES = {
    "url": f"CANARYpw{TAG}",
    "key": f"CANARYsrk{TAG}",
    "jwt": f"CANARYjwt{TAG}",
    "bearer": f"CANARYbearer{TAG}",
}
JWT = f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.{CANARIES['jwt']}"
LINES = [
    f"db: connecting to postgres://app:{CANARIES['url']}@db/x",
    f"config SUPABASE_SERVICE_ROLE_KEY={CANARIES['key']}",
    f"supabase client key {JWT}",
    f"upstream call with Authorization: Bearer {CANARIES['bearer']}",
]
SCRUBBED = ["postgres://app:***@db/x", "SUPABASE_SERVICE_ROLE_KEY=***", "supabase client key ***",
            "Authorization: Bearer ***"]


def leaks(root: Path, *texts: str) -> list[str]:
    found = [f"{where}: {name}" for where, text in (("output", "\n".join(texts)),) for name, v in CANARIES.items()
             if v in text]
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            found += [f"{p}: {name}" for name, v in CANARIES.items() if v.encode() in data]
    return found


def keep_artifacts(tmp_path: Path) -> Path:
    cfg = tmp_path / "doai-rollback.yml"
    cfg.write_text("keep_artifacts: true\n")  # ansible-runner's events and env kept too: read below
    return cfg


def test_pm2_release_logging_secrets_is_rolled_back_and_its_logs_kept_scrubbed(fresh_sandbox, state_dir, tmp_path):
    sb = fresh_sandbox
    server = sb.app / "server.js"
    logged = "".join(f"console.{'error' if i % 2 else 'log'}({json.dumps(line)});\n" for i, line in enumerate(LINES))
    server.write_text(server.read_text() + "\n// the failed release logs its secrets\n" + logged)
    sb._git("commit", "-q", "-am", "v5: logs secrets")
    sb.commits["leaky"] = sb._git("rev-parse", "HEAD").strip()
    sb.deploy("leaky")
    env = {"DOAI_INVENTORY": str(sb.write_inventory(doai_backend_pm2_log_lines=200)), "DOAI_STATE_DIR": str(state_dir),
           "DOAI_CONFIG": str(keep_artifacts(tmp_path))}
    res = run_cli("backend", "rollback", "--yes", "--to", sb.commits["v2"], "--reason", "leaks", "-o", "json", env=env)
    assert res.code == 0, res.stderr + res.stdout
    assert sb.health() == (200, "2.0.0")
    (kept,) = Path(res.json()["log_dir"]).glob("*-pm2.log")
    text = kept.read_text()
    for line in SCRUBBED:
        assert line in text, text
    diag = run_cli("diagnose", "api-errors", "-o", "json", env=env)
    assert diag.code in (0, 6), diag.stderr + diag.stdout
    # The whole-system rollback's log collection reads them the same way.
    from doai_ansible import diagnose
    from doai_ansible.context import RunContext
    from doai_ansible.settings import load_settings

    ctx = RunContext.create(load_settings(None, inventory=env["DOAI_INVENTORY"], state_dir=str(state_dir)))
    (entry,) = diagnose.collect_logs(ctx, state_dir / "collected", lines=200, parts=("backend",))
    collected = Path(entry["file"]).read_text()
    for line in SCRUBBED:
        assert line in collected, collected
    assert leaks(state_dir, res.stdout, res.stderr, diag.stdout, diag.stderr) == []
    assert leaks(tmp_path, "") == []


def test_docker_release_logging_secrets_is_rolled_back_and_its_logs_kept_scrubbed(docker_rig, state_dir, tmp_path):
    rig = docker_rig
    repo = rig.image_repo
    # :previous becomes v2 with an entrypoint that logs the secrets, then serves as before.
    script = "; ".join(f"echo {json.dumps(line)}" for line in LINES) + '; exec "$@"'
    made = rig.docker("create", f"{repo}:v2", check=False)
    if made.returncode != 0:
        rig.docker("pull", "-q", f"{repo}:v2", timeout=120, check=True)
        made = rig.docker("create", f"{repo}:v2", check=True)
    cid = made.stdout.strip()
    entry = json.dumps(["/bin/busybox", "sh", "-c", script, "sh"])
    rig.docker("commit", "--change", f"ENTRYPOINT {entry}", cid, f"{repo}:previous", check=True)
    rig.docker("rm", "-f", cid, check=True)
    rig.docker("push", "-q", f"{repo}:previous", timeout=120, check=True)
    rig.docker("rmi", f"{repo}:previous", check=True)
    env = {"DOAI_INVENTORY": str(rig.write_inventory(doai_backend_docker_log_lines=200)),
           "DOAI_STATE_DIR": str(state_dir), "DOAI_CONFIG": str(keep_artifacts(tmp_path))}
    res = run_cli("backend", "rollback", "--yes", "--reason", "leaks", "-o", "json", env=env)
    assert res.code == 0, res.stderr + res.stdout
    (kept,) = Path(res.json()["log_dir"]).glob("*-container.log")
    text = kept.read_text()
    for line in SCRUBBED:
        assert line in text, text
    # The playbook's own log shows no log data (no debug task carries it).
    assert not any("supabase client key" in p.read_text() for p in Path(res.json()["log_dir"]).rglob("*.log")
                   if p != kept and p.suffix == ".log" and "-runner" not in str(p))
    assert leaks(state_dir, res.stdout, res.stderr) == []
    assert leaks(tmp_path, "") == []
