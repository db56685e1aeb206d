"""Shell completion through the real entry point (``python -m doai_ansible``, as the installed
``doai-rollback`` runs it): click's protocol (``_DOAI_ROLLBACK_COMPLETE``, ``COMP_WORDS``,
``COMP_CWORD``) for bash, zsh and fish; subcommands, options, part names and the journal's run
ids; an unreadable state gives no candidates and no error; each shell's own parser accepts the
script ``*_source`` prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUNS = ["20261206T101500Z-aaaa1111", "20261206T111500Z-bbbb2222", "20261205T090000Z-cccc3333"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOAI_", "_DOAI_", "COMP_"))}
    env.update(DOAI_STATE_DIR=str(tmp_path / "state"), **extra)
    return env


def _complete(tmp_path: Path, shell: str, line: str, **extra: str) -> tuple[int, list[str], str]:
    """The candidates ``shell`` gets for the command line ``line`` (the cursor at its end)."""
    words = line.split(" ")
    env = _env(tmp_path, _DOAI_ROLLBACK_COMPLETE=f"{shell}_complete", COMP_WORDS=line, **extra)
    # bash and zsh: the index of the word under the cursor; fish: that word itself.
    env["COMP_CWORD"] = words[-1] if shell == "fish" else str(len(words) - 1)
    proc = subprocess.run([sys.executable, "-m", "doai_ansible"], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)
    if shell == "bash":
        values = [ln.split(",", 1)[1] for ln in proc.stdout.splitlines() if ln]
    elif shell == "zsh":  # type, value, help: three lines per candidate
        lines = proc.stdout.splitlines()
        values = lines[1::3]
    else:  # fish: "type,value<TAB>help"
        values = [ln.split(",", 1)[1].split("\t", 1)[0] for ln in proc.stdout.splitlines() if ln]
    return proc.returncode, values, proc.stderr


def _journal(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    journal = state / "journal.jsonl"
    journal.write_text("".join(json.dumps({"run_id": r, "started": f"2026-12-0{6 - i // 2}T10:15:00Z",
                                           "command": "backend rollback", "steps": []}) + "\n"
                               for i, r in enumerate(RUNS)))
    return journal


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_subcommands_options_and_part_names(tmp_path, shell):
    code, values, err = _complete(tmp_path, shell, "doai-rollback hi")
    assert (code, values) == (0, ["history"]), err
    code, values, _ = _complete(tmp_path, shell, "doai-rollback backend ")
    assert code == 0 and {"rollback", "prepare", "status"} <= set(values)
    code, values, _ = _complete(tmp_path, shell, "doai-rollback history --m")
    assert code == 0 and "--max" in values
    code, values, _ = _complete(tmp_path, shell, "doai-rollback history --part da")
    assert (code, values) == (0, ["database", "dashboard"])
    code, values, _ = _complete(tmp_path, shell, "doai-rollback lock release ")
    assert code == 0 and values == ["agent", "backend", "database", "dashboard", "system"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_only_and_skip_complete_the_last_part_of_a_comma_list(tmp_path, shell):
    code, values, _ = _complete(tmp_path, shell, "doai-rollback system rollback --only agent,")
    assert (code, values) == (0, ["agent,backend", "agent,database", "agent,dashboard"])
    code, values, _ = _complete(tmp_path, shell, "doai-rollback system rollback --skip backend,d")
    assert (code, values) == (0, ["backend,database", "backend,dashboard"])


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_undo_completes_the_journal_run_ids_and_writes_nothing(tmp_path, shell):
    journal = _journal(tmp_path)
    before = sorted(p.name for p in journal.parent.iterdir()), journal.read_text()
    code, values, err = _complete(tmp_path, shell, "doai-rollback undo ")
    assert code == 0 and sorted(values) == sorted(RUNS), err
    code, values, _ = _complete(tmp_path, shell, "doai-rollback undo 20261206T1")
    assert sorted(values) == sorted(RUNS[:2])
    code, values, _ = _complete(tmp_path, shell, "doai-rollback agent rollback --rerun-failed 20261205")
    assert values == [RUNS[2]]
    # no lock file, no new file, the journal untouched
    assert (sorted(p.name for p in journal.parent.iterdir()), journal.read_text()) == before


def test_run_ids_follow_the_state_dir_typed_on_the_line(tmp_path):
    _journal(tmp_path)
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    code, values, _ = _complete(tmp_path, "bash", f"doai-rollback --state-dir {elsewhere} undo ")
    assert (code, values) == (0, [])
    code, values, _ = _complete(tmp_path / "x", "bash", f"doai-rollback undo --state-dir {tmp_path / 'state'} ")
    assert code == 0 and sorted(values) == sorted(RUNS)


@pytest.mark.parametrize("breakage", ["journal is a folder", "config file is not YAML"])
def test_an_unreadable_state_gives_no_candidates_and_no_error(tmp_path, breakage):
    extra = {}
    if breakage == "journal is a folder":
        (tmp_path / "state" / "journal.jsonl").mkdir(parents=True)
    else:
        _journal(tmp_path)
        bad = tmp_path / "bad.yml"
        bad.write_text("inventory: [unclosed\n")
        extra["DOAI_CONFIG"] = str(bad)
    code, values, err = _complete(tmp_path, "bash", "doai-rollback undo ", **extra)
    assert (code, values) == (0, [])
    assert "Traceback" not in err and "error" not in err.lower()


@pytest.mark.parametrize(("shell", "check"), [("bash", ["bash", "-n"]), ("zsh", ["zsh", "-n"]),
                                              ("fish", ["fish", "--no-execute"])])
def test_the_source_script_is_valid_for_its_shell(tmp_path, shell, check):
    if shutil.which(check[0]) is None:
        pytest.fail(f"{check[0]} is not installed: .ci/setup installs it")
    proc = subprocess.run([sys.executable, "-m", "doai_ansible"], capture_output=True, text=True,
                          env=_env(tmp_path, _DOAI_ROLLBACK_COMPLETE=f"{shell}_source"), timeout=60, check=False)
    assert proc.returncode == 0 and "_DOAI_ROLLBACK_COMPLETE" in proc.stdout, proc.stderr
    script = tmp_path / f"doai-rollback.{shell}"
    script.write_text(proc.stdout)
    parsed = subprocess.run([*check, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert parsed.returncode == 0, parsed.stderr
    assert not (tmp_path / "state").exists()  # printing a script reads no state


def test_an_unknown_shell_is_exit_1_and_quiet(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "doai_ansible"], capture_output=True, text=True,
                          env=_env(tmp_path, _DOAI_ROLLBACK_COMPLETE="tcsh_source"), timeout=60, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "")


def test_the_command_tree_imports_no_part_and_no_heavy_library():
    """Completion and --help build the whole command tree: each part's cli module is light (the
    part itself, httpx, psycopg, ansible-runner are imported only when a command of it runs)."""
    code = ("import sys, doai_ansible.cli\n"
            "heavy = ('doai_ansible.parts.agent', 'doai_ansible.parts.backend', 'doai_ansible.parts.database',\n"
            "         'doai_ansible.parts.dashboard', 'httpx', 'psycopg', 'ansible_runner', 'pglast')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "[]"), proc.stderr
