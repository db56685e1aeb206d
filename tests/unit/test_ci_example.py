"""examples/ci/rollback.yml, the GitHub Actions workflow: its inputs, and its scripts run for
real with bash (a stand-in ``doai-rollback`` on PATH records the arguments): every command line
it builds is accepted by the real CLI's parser, the inputs arrive as single arguments (no
shell injection), the exit code is passed on, and no secret is ever echoed."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from doai_ansible import cli
from tests.conftest import CANARY, ROOT

WORKFLOW = ROOT / "examples" / "ci" / "rollback.yml"
PARTS = ["system", "agent", "backend", "database", "dashboard"]
SECRETS = ["VERCEL_TOKEN", "DOAI_DATABASE_URL", "DOAI_WINRM_PASSWORD", "DOAI_WEBHOOK_URL", "DOAI_SSH_KEY",
           "DOAI_KNOWN_HOSTS"]
BASH = shutil.which("bash") or "/bin/bash"

STUB = """#!/bin/sh
# doai-rollback stand-in: keep the arguments (one per line, NUL-free), answer as told
for a in "$@"; do printf '%s\\n' "$a"; done > "$ARGV_FILE"
printf '{"exit_status": %s}\\n' "$STUB_RC"
exit "$STUB_RC"
"""


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return workflow["jobs"]["rollback"]["steps"]


def step(workflow: dict[str, Any], name_start: str) -> dict[str, Any]:
    (found,) = [s for s in steps(workflow) if s.get("name", "").startswith(name_start)]
    return found


def test_dispatch_inputs(workflow):
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    inputs = on["workflow_dispatch"]["inputs"]
    assert inputs["part"]["type"] == "choice" and inputs["part"]["options"] == PARTS
    assert inputs["target"]["required"] is False
    assert inputs["reason"]["required"] is True
    assert inputs["dry_run"]["type"] == "boolean" and inputs["dry_run"]["default"] is False


def test_result_and_report_kept_whatever_happens(workflow):
    keep = [s for s in steps(workflow) if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert len(keep) == 1 and keep[0]["if"].startswith("always()")
    paths = keep[0]["with"]["path"]
    assert "result.json" in paths and "/reports/" in paths
    assert workflow["jobs"]["rollback"]["env"]["DOAI_STATE_DIR"].endswith("/doai-state")
    assert workflow["concurrency"]["cancel-in-progress"] is False  # one rollback at a time


# -- the scripts, run for real -------------------------------------------------------------------------
def run_step(s: dict[str, Any], tmp_path: Path, env: dict[str, str], rc: int = 0) -> subprocess.CompletedProcess:
    """One `run:` step as GitHub runs it (bash --noprofile --norc -eo pipefail), with the step's
    `${{ ... }}`-free script and the given environment."""
    script = s["run"]
    assert "${{" not in script, "inputs and secrets go through env:, never pasted into a script"
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    stub = bindir / "doai-rollback"
    stub.write_text(STUB)
    stub.chmod(0o755)
    (tmp_path / "script.sh").write_text(script)
    full = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path / "home"),
            "ARGV_FILE": str(tmp_path / "argv"), "STUB_RC": str(rc),
            "GITHUB_OUTPUT": str(tmp_path / "out"), "GITHUB_ENV": str(tmp_path / "genv"), **env}
    (tmp_path / "home").mkdir(exist_ok=True)
    return subprocess.run([BASH, "--noprofile", "--norc", "-eo", "pipefail", str(tmp_path / "script.sh")],
                          cwd=tmp_path, env=full, capture_output=True, text=True, timeout=30, check=False)


def secret_env() -> dict[str, str]:
    return {name: f"{CANARY}-{name}" for name in SECRETS}


EVIL = "v3 broke it; $(touch pwned) `touch pwned2` \"quoted\" *"


def _cases() -> list[tuple[str, str, str, bool]]:
    return [(part, target, last, dry) for part, (target, last), dry in itertools.product(
        PARTS, [("", ""), ("abc1234", ""), ("", "2"), ("20261120000000", "1")], [False, True])]


@pytest.mark.parametrize(("part", "target", "last", "dry_run"), _cases())
def test_every_command_line_is_one_the_cli_accepts(workflow, tmp_path, capsys, part, target, last, dry_run):
    env = dict(secret_env(), PART=part, TARGET=target, DATABASE_LAST=last, REASON=EVIL,
               DRY_RUN="true" if dry_run else "false")
    proc = run_step(step(workflow, "Roll back"), tmp_path, env)
    if part == "system" and target:  # a target is one part's: refused, nothing run
        assert proc.returncode == 2 and "leave it empty for system" in proc.stdout
        assert not (tmp_path / "argv").exists()
        return
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    # the shape the README promises
    assert argv[:2] == [part, "rollback"]
    assert argv[argv.index("--reason") + 1] == EVIL  # one argument, as typed: no shell injection
    assert not list(tmp_path.glob("pwned*"))
    assert "--yes" in argv and argv[argv.index("--output") + 1] == "json"
    assert ("--dry-run" in argv) is dry_run
    assert (tmp_path / "result.json").read_text().strip() == '{"exit_status": 0}'
    # ask click: the real CLI parses these arguments (an unknown option or a missing value is
    # exit 2); --help stops it before anything runs
    code = cli.main([*argv, "--help"])
    help_text = capsys.readouterr().out
    assert code == 0, f"doai-rollback {' '.join(argv)}: rejected by the CLI"
    assert help_text.startswith(f"Usage: doai-rollback {part} rollback")
    assert CANARY not in proc.stdout + proc.stderr


def test_a_value_that_looks_like_an_option_cannot_become_one(workflow, tmp_path, capsys):
    """An option's value is always the word after it: a target of `--help` is a (bad) value,
    not a flag; the CLI then refuses it as a value."""
    env = dict(PART="backend", TARGET="--help", DATABASE_LAST="", REASON="r", DRY_RUN="false")
    assert run_step(step(workflow, "Roll back"), tmp_path, env).returncode == 0
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[argv.index("--to") + 1] == "--help"


@pytest.mark.parametrize("rc", [0, 2, 3, 4, 5, 6, 7])
def test_exit_code_is_passed_on_and_explained(workflow, tmp_path, rc):
    env = dict(PART="backend", TARGET="", DATABASE_LAST="", REASON="r", DRY_RUN="false")
    proc = run_step(step(workflow, "Roll back"), tmp_path, env, rc=rc)
    assert proc.returncode == rc
    assert (tmp_path / "out").read_text() == f"exit_status={rc}\n"
    assert (tmp_path / "result.json").read_text().strip() == f'{{"exit_status": {rc}}}'
    said = run_step(step(workflow, "Say what the exit code means"), tmp_path, {"RC": str(rc)})
    assert said.returncode == 0
    if rc == 0:
        assert "::error::" not in said.stdout
    else:
        assert "::error::" in said.stdout and f"exit {rc}" in said.stdout


def test_unknown_part_is_refused(workflow, tmp_path):
    env = dict(PART="frontend", TARGET="", DATABASE_LAST="", REASON="r", DRY_RUN="false")
    proc = run_step(step(workflow, "Roll back"), tmp_path, env)
    assert proc.returncode == 2 and not (tmp_path / "argv").exists()


def test_ssh_key_and_known_hosts_written_private_and_never_shown(workflow, tmp_path):
    s = step(workflow, "Install the SSH key")
    env = {"DOAI_SSH_KEY": f"-----BEGIN OPENSSH PRIVATE KEY-----\n{CANARY}\n-----END OPENSSH PRIVATE KEY-----",
           "DOAI_KNOWN_HOSTS": f"vps1 ssh-ed25519 AAAA{CANARY}"}
    proc = run_step(s, tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert CANARY not in proc.stdout + proc.stderr
    key = tmp_path / "home" / ".ssh" / "doai_rollback"
    known = tmp_path / "home" / ".ssh" / "known_hosts"
    assert key.read_text() == env["DOAI_SSH_KEY"] + "\n" and known.read_text() == env["DOAI_KNOWN_HOSTS"] + "\n"
    for f in (key, known):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert (tmp_path / "genv").read_text() == f"ANSIBLE_PRIVATE_KEY_FILE={key}\n"  # the path, not the key


def test_secrets_only_in_env_and_never_echoed(workflow):
    """`${{ secrets.X }}` only as a step's env value; no script prints a secret variable or
    traces itself (set -x)."""
    text = WORKFLOW.read_text()
    used = set(re.findall(r"\$\{\{\s*secrets\.([A-Z_]+)\s*\}\}", text))
    assert used == set(SECRETS)
    for s in steps(workflow):
        for name in SECRETS:
            assert f"secrets.{name}" not in s.get("run", "")
        for key, value in (s.get("env") or {}).items():
            if "secrets." in str(value):
                assert value == f"${{{{ secrets.{key} }}}}", f"{s['name']}: {key} holds more than its secret"
        script = s.get("run", "")
        assert not re.search(r"^\s*set\s+-[a-z]*x", script, re.M), f"{s['name']}: set -x traces secrets"
        for line in script.splitlines():
            if re.search(r"\b(echo|printf)\b", line):
                printed = [n for n in SECRETS if f"${n}" in line or f"${{{n}}}" in line]
                # a secret may only be printed into a file (the key, the known hosts)
                assert not printed or re.search(r'>\s*>?\s*"\$HOME/\.ssh/', line), f"{s['name']}: {line.strip()}"
    assert "secrets." not in str(workflow["jobs"]["rollback"].get("env"))  # not job-wide
