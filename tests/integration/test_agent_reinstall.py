"""The agent reinstall end to end through the CLI, against Linux stand-in PCs over the loopback
sshd (doai_ansible/sandbox/agent_rig.py: a stand-in installer and uninstaller, Python scripts).
This is NOT Windows coverage: it runs the role's POSIX primitives and the one reinstall decision
both OSes share; the Windows module calls are covered by tests/unit/test_agent_reinstall.py with
recorded results, and molecule/agent_windows is for a real Windows host."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.integration.test_agent import by_target, env_for

pytestmark = pytest.mark.integration


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kept(rig, pc: str, user: str, prefix: str) -> list[Path]:
    return sorted(p for p in rig.folder(pc, user).iterdir() if p.name.startswith(prefix))


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[int]:
    """A loopback HTTP server for ``directory`` (in this process; shut down at the end)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_reinstall_keeps_config_goes_on_past_an_unreachable_pc_and_a_second_run_is_unchanged(
        agent_fleet, state_dir, tmp_path):
    rig = agent_fleet(n=3, unreachable=1)
    installer = rig.make_installer(tmp_path / "DoAi-Agent-Setup-1.9.0", "1.9.0")
    env = env_for(rig, state_dir)
    plan = run_cli("agent", "reinstall", "--installer", str(installer), "--dry-run", env=env)
    assert plan.code == 0, plan.stdout + plan.stderr
    assert "UNREACHABLE" in plan.stdout and "installer DoAi-Agent-Setup-1.9.0" in plan.stdout
    assert rig.folder_state("pc01", "alice")["app-current"] == "2.0.0" and rig.staged_installers("pc01") == []

    res = run_cli("agent", "reinstall", "--installer", str(installer), "--expect-version", "1.9.0", "--yes",
                  "--reason", "agent 2.0.0 crashes", "-o", "json", env=env)
    assert res.code == 3, res.stdout + res.stderr  # one PC unreachable: nothing changed on it
    steps = by_target(res)
    for pc in ("pc01", "pc02"):
        (staged,) = rig.staged_installers(pc)
        assert sha256(staged) == sha256(installer)  # the bytes checked are the bytes run
        for user in ("alice", "bob"):
            assert steps[f"{pc}/{user}"]["outcome"] == "succeeded", steps[f"{pc}/{user}"]
            assert "config.json restored" in steps[f"{pc}/{user}"]["message"]
            st = rig.folder_state(pc, user)
            assert (st["app-current"], st["app-backup"], st["app-failed"]) == ("1.9.0", "1.9.0", None)
            assert rig.config_checksum(pc, user) == rig.config_checksums[f"{pc}/{user}"]  # the user's, not the installer's
            assert rig.agent_running(pc, user) and rig.agent_version(pc, user) == "1.9.0"
            (old,) = kept(rig, pc, user, "app-replaced-")  # the replaced install, kept whole
            assert (old / "VERSION").read_text().strip() == "2.0.0" and (old / "config.json").is_file()
            assert list((rig.folder(pc, user) / "app-current").glob("config.json.doai-*"))  # the installer's, kept
    assert steps["pc03/*"]["outcome"] == "failed" and "nothing was changed" in steps["pc03/*"]["message"]
    assert rig.folder_state("pc03", "alice")["app-current"] == "2.0.0"
    assert "guest" not in str(steps)

    # The same installer again (no --expect-version: the marker recognises it): nothing changes.
    again = run_cli("agent", "reinstall", "--installer", str(installer), "--yes", "--limit", "pc01,pc02", "-o", "json",
                    env=env)
    assert again.code == 0, again.stdout + again.stderr
    assert {s["outcome"] for s in again.json()["steps"]} == {"unchanged"}
    assert len(kept(rig, "pc01", "alice", "app-replaced-")) == 1 and len(rig.staged_installers("pc01")) == 1

    # The PC comes back: --rerun-failed runs only it.
    rig.reset(pcs=3, unreachable=0, users=("alice", "bob"), bare_users=("guest",))
    rerun = run_cli("agent", "reinstall", "--installer", str(installer), "--yes", "--rerun-failed",
                    res.json()["run_id"], "-o", "json", env=env_for(rig, state_dir))
    assert rerun.code == 0, rerun.stdout + rerun.stderr
    assert {s["target"].split("/")[0] for s in rerun.json()["steps"]} == {"pc03"}
    assert rig.agent_version("pc03", "alice") == "1.9.0" and rig.agent_version("pc01", "alice") == "2.0.0"


def test_a_failing_installer_puts_the_previous_install_back_with_the_agent_running(agent_fleet, state_dir, tmp_path):
    rig = agent_fleet(n=1, unreachable=0)
    installer = rig.make_installer(tmp_path / "broken-setup", "1.9.0", fail=True)
    res = run_cli("agent", "reinstall", "--installer", str(installer), "--yes", "-o", "json",
                  env=env_for(rig, state_dir))
    assert res.code == 3, res.stdout + res.stderr
    steps = by_target(res)
    for user in ("alice", "bob"):
        step = steps[f"pc01/{user}"]
        assert step["outcome"] == "restored", step
        assert "installation failed half way" in step["message"] and "put back" in step["message"]
        st = rig.folder_state("pc01", user)
        assert (st["app-current"], st["app-backup"]) == ("2.0.0", "1.9.0")
        assert rig.config_checksum("pc01", user) == rig.config_checksums[f"pc01/{user}"]
        assert rig.agent_running("pc01", user) and rig.agent_version("pc01", user) == "2.0.0"
        assert kept(rig, "pc01", user, "app-replaced-") == []  # renamed back as app-current
        (half,) = kept(rig, "pc01", user, "app-failed-reinstall-")  # the half install, set aside, not deleted
        assert (half / "agent.py").is_file() and not (half / "VERSION").exists()


def test_an_installer_fetched_by_url_is_checked_on_the_pc_before_anything_changes(agent_fleet, state_dir, tmp_path):
    rig = agent_fleet(n=1, unreachable=0)
    site = tmp_path / "site"
    installer = rig.make_installer(site / "setup-1.9.0", "1.9.0")
    before = {u: rig.folder_state("pc01", u) for u in ("alice", "bob")}
    with serve(site) as port:
        url = f"http://127.0.0.1:{port}/setup-1.9.0"
        wrong = run_cli("agent", "reinstall", "--installer", url, "--sha256", "ab" * 32, "--yes", "-o", "json",
                        env=env_for(rig, state_dir))
        assert wrong.code == 2, wrong.stdout + wrong.stderr  # refused on the PC: nothing changed anywhere
        assert "checksum" in wrong.stderr.lower() and "nothing was changed" in wrong.stderr
        assert {u: rig.folder_state("pc01", u) for u in ("alice", "bob")} == before
        assert rig.agent_version("pc01", "alice") == "2.0.0"
        ok = run_cli("agent", "reinstall", "--installer", url, "--sha256", sha256(installer), "--user", "alice",
                     "--expect-version", "1.9.0", "--yes", "-o", "json", env=env_for(rig, state_dir))
    assert ok.code == 0, ok.stdout + ok.stderr
    assert [s["outcome"] for s in ok.json()["steps"]] == ["succeeded"]
    assert rig.agent_version("pc01", "alice") == "1.9.0" and rig.agent_version("pc01", "bob") == "2.0.0"


@pytest.mark.parametrize("args", [
    ["--installer", "/nonexistent/setup.exe"],
    ["--installer", "http://downloads.example.org/setup.exe"],
    ["--installer", "ftp://127.0.0.1/setup.exe"],
    ["--installer", "https://user:pw@downloads.example.org/setup.exe"],
    # a URL without its sha256: each PC would download and run unchecked bytes (issue 19 item 5)
    ["--installer", "https://downloads.example.org/setup.exe"],
    ["--installer", "http://127.0.0.1:9/setup.exe"],
    ["--installer", "GOOD", "--publisher", 'DoAi"; Remove-Item C:\\ -Recurse; "'],
    ["--installer", "GOOD", "--sha256", "0" * 64],
    ["--installer", "GOOD", "--sha256", "not-hex"],
    ["--installer", "GOOD", "--expect-version", "1.9;rm"],
    ["--installer", "GOOD", "--user", "al;ice"],
])
def test_a_bad_installer_path_url_or_checksum_is_refused_before_any_connection(agent_fleet, state_dir, tmp_path, args):
    rig = agent_fleet(n=1, unreachable=0)
    good = rig.make_installer(tmp_path / "setup", "1.9.0")
    before = rig.folder_state("pc01", "alice")
    res = run_cli("agent", "reinstall", *[str(good) if a == "GOOD" else a for a in args], "--yes",
                  env=env_for(rig, state_dir))
    assert res.code == 2, res.stdout + res.stderr
    if args[1] in ("https://downloads.example.org/setup.exe", "http://127.0.0.1:9/setup.exe"):
        assert "needs its sha256 (--sha256" in res.stderr, res.stderr
    assert not (state_dir / "runs").exists()  # no run started: nothing contacted
    assert rig.folder_state("pc01", "alice") == before and rig.staged_installers("pc01") == []


def test_the_winrm_password_never_leaks_from_a_reinstall(agent_fleet, state_dir, tmp_path):
    from tests.conftest import CANARY

    rig = agent_fleet(n=2, unreachable=0)
    installer = rig.make_installer(tmp_path / "setup", "1.9.0", fail=True)  # the put-back path logs the most
    password = CANARY + "-winrm-reinstall"
    env = dict(env_for(rig, state_dir), DOAI_WINRM_PASSWORD=password, DOAI_KEEP_ARTIFACTS="1")
    res = run_cli("agent", "reinstall", "--installer", str(installer), "--yes", "-o", "json", env=env)
    assert res.code == 3, res.stdout + res.stderr
    assert password not in res.stdout + res.stderr
    files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert any("artifacts" in str(p) for p in files) and any(p.name.endswith(".jsonl") or "journal" in p.name
                                                             for p in files)
    assert [str(p) for p in files if password.encode() in p.read_bytes()] == []
