"""``config show`` (each setting with its source, secrets only set/unset, never their values),
the config file's search order as the code follows it and as ``--help`` and the README say it,
and ``lock --help`` naming the host locks."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_") and k != "VERCEL_TOKEN"}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), **extra)
    return env


def _flat(text: str) -> str:
    return re.sub(r"-\s+", "-", re.sub(r"\s+", " ", text.replace("`", "")))


def test_each_setting_says_where_it_came_from(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all: {}\n")
    cfg = tmp_path / "c.yml"
    cfg.write_text(json.dumps({"inventory": "elsewhere.yml", "lock_ttl": 99, "vercel": {"project": "doai-dash"},
                               "database": {"schemas": ["public", "app"]}}))
    (tmp_path / "elsewhere.yml").write_text("all: {}\n")
    res = run_cli("config", "show", "-c", str(cfg), "--inventory", str(inv), "-o", "json",
                  env=_env(tmp_path, DOAI_STATE_DIR=str(tmp_path / "state"), DOAI_VERCEL_TEAM_SLUG="team-x",
                           DOAI_LOCK_TTL="120"))
    assert res.code == 0, res.stderr
    doc = res.json()
    s = doc["settings"]
    assert (doc["config_file"], doc["config_source"]) == (str(cfg), "flag --config")
    assert doc["inventory"] == str(inv) and s["inventory"]["source"] == "flag --inventory"  # the flag beats the file
    assert (doc["state_dir"], s["state_dir"]["source"]) == (str(tmp_path / "state"), "variable DOAI_STATE_DIR")
    assert (s["lock_ttl"]["value"], s["lock_ttl"]["source"]) == (120.0, "variable DOAI_LOCK_TTL")  # beats the file
    assert (s["vercel.project"]["value"], s["vercel.project"]["source"]) == ("doai-dash", f"file {cfg}")
    assert (s["vercel.team_slug"]["value"], s["vercel.team_slug"]["source"]) == ("team-x", "variable DOAI_VERCEL_TEAM_SLUG")
    assert s["database.schemas"] == {"value": ["public", "app"], "source": f"file {cfg}"}
    assert s["vercel.max_retries"] == {"value": 5, "source": "default"}
    assert s["database.pg_bin_dir"] == {"value": None, "source": "not set (no default)"}
    assert doc["secrets"] == dict.fromkeys(("VERCEL_TOKEN", "DOAI_DATABASE_URL", "DOAI_STATE_DATABASE_URL",
                                            "DOAI_WINRM_PASSWORD", "DOAI_SSH_PASSWORD", "DOAI_WEBHOOK_URL"), "unset")
    text = run_cli("config", "show", "-c", str(cfg), env=_env(tmp_path, DOAI_STATE_DIR=str(tmp_path / "state")))
    assert text.code == 0
    assert f"config file: {cfg} (flag --config)" in text.stdout
    assert re.search(r"vercel\.project\s+doai-dash\s+\(file " + re.escape(str(cfg)) + r"\)", text.stdout)
    assert not (tmp_path / "state").exists()  # reads no state, creates nothing


def test_secrets_are_only_set_or_unset_never_their_values(tmp_path):
    """Each secret set to its own canary (from the environment, the only place a secret may come
    from; the webhook's variable named in the config file): no canary in the text or the JSON."""
    cfg = tmp_path / "c.yml"
    cfg.write_text(json.dumps({"system": {"webhook_env": "TEAM_WEBHOOK_SECRET"}}))
    canaries = {
        "VERCEL_TOKEN": "canary-vercel-7f3a",
        "DOAI_DATABASE_URL": "postgresql://app:canary-dbpass-91c2@127.0.0.1:5432/postgres",
        "DOAI_STATE_DATABASE_URL": "postgresql://st:canary-statepass-44d1@127.0.0.1:5433/state",
        "DOAI_WINRM_PASSWORD": "canary-winrm-0b6e",
        "DOAI_SSH_PASSWORD": "canary-ssh-5e8d",
        "TEAM_WEBHOOK_SECRET": "https://hooks.example.invalid/services/canary-hook-2a9f",
    }
    env = _env(tmp_path, DOAI_STATE_DIR=str(tmp_path / "state"), DOAI_STATE_BACKEND="postgres", **canaries)
    doc = run_cli("config", "show", "-c", str(cfg), "-o", "json", env=env)
    text = run_cli("config", "show", "-c", str(cfg), env=env)
    assert doc.code == 0 and text.code == 0, doc.stderr + text.stderr
    assert doc.json()["secrets"] == dict.fromkeys(canaries, "set")
    assert doc.json()["settings"]["state.backend"] == {"value": "postgres", "source": "variable DOAI_STATE_BACKEND"}
    for out in (doc.stdout, doc.stderr, text.stdout, text.stderr):
        for value in canaries.values():
            for piece in re.findall(r"canary-[a-z]+-[0-9a-f]{4}", value):
                assert piece not in out
    assert re.search(r"TEAM_WEBHOOK_SECRET\s+set", text.stdout)


def test_a_configuration_that_cannot_load_is_exit_2_naming_the_key(tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text(json.dumps({"database": {"schemas": ["auth"]}}))
    res = run_cli("config", "show", "-c", str(cfg), "-o", "json", env=_env(tmp_path))
    assert res.code == 2 and "database.schemas" in res.json()["error"]


def test_dry_run_is_a_note_and_yes_changes_nothing(tmp_path):
    env = _env(tmp_path, DOAI_STATE_DIR=str(tmp_path / "state"))
    plain = run_cli("config", "show", env=env)
    dry = run_cli("config", "show", "--dry-run", env=env)
    yes = run_cli("--yes", "config", "show", env=env)
    assert plain.code == dry.code == yes.code == 0
    assert dry.stdout == plain.stdout == yes.stdout
    assert "--dry-run does not apply" in dry.stderr and yes.stderr == ""


# -- the config file's search order: the code, --help and the README say the same ---------------
def test_find_config_follows_the_order_help_states(tmp_path, monkeypatch):
    from doai_ansible.settings import config_search_order, find_config

    monkeypatch.chdir(tmp_path)
    xdg = tmp_path / "xdg"
    env = {"XDG_CONFIG_HOME": str(xdg)}
    explicit = None
    made: list[Path] = []
    for label in config_search_order():  # every place the text names, made to exist
        if label == "--config":
            explicit = tmp_path / "explicit.yml"
            p = explicit
        elif label.startswith("$DOAI_CONFIG"):
            p = tmp_path / "from-env.yml"
            env["DOAI_CONFIG"] = str(p)
        elif label.startswith("./"):
            p = Path(label[2:])
        elif label.startswith("$XDG_CONFIG_HOME/"):
            p = xdg / label.split(" ", 1)[0].removeprefix("$XDG_CONFIG_HOME/")
        else:
            pytest.fail(f"a place the test cannot make: {label}")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}\n")
        made.append(p)
    # the first that exists wins; remove it, and the next one named wins
    for i, p in enumerate(made):
        found = find_config(str(explicit) if explicit and explicit.exists() else None,
                            {k: v for k, v in env.items() if k != "DOAI_CONFIG" or Path(v).exists()})
        assert found is not None and found.resolve() == p.resolve(), (i, config_search_order()[i], found)
        p.unlink()
    assert find_config(None, {"XDG_CONFIG_HOME": str(xdg)}) is None


def test_help_and_readme_state_the_search_order(tmp_path):
    from doai_ansible.settings import config_search_order

    rest = ", ".join(config_search_order()[1:])
    for args in (["--help"], ["history", "--help"], ["config", "show", "--help"]):
        res = run_cli(*args, env=_env(tmp_path))
        assert res.code == 0 and _flat(rest) in _flat(res.stdout), (args, res.stdout)
    readme = _flat((ROOT / "README.md").read_text())
    assert _flat(", ".join(p.split(" (")[0] for p in config_search_order())) in readme


def test_lock_help_mentions_host_locks(tmp_path):
    res = run_cli("lock", "--help", env=_env(tmp_path))
    assert res.code == 0 and "host locks" in _flat(res.stdout) and "--host HOST" in res.stdout
