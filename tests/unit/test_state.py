"""The state backend's settings and its refusals (no PostgreSQL needed here; the shared store
itself is tested with a real one in tests/integration/test_state_backend.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from doai_ansible import state
from doai_ansible.errors import ConfigError
from doai_ansible.journal import Journal
from doai_ansible.lock import Lock
from doai_ansible.parts.database import ADVISORY_KEY
from doai_ansible.sandbox.rig import free_port
from doai_ansible.settings import is_secret_env_name, load_settings
from tests.conftest import CANARY, run_cli


def _settings(tmp_path: Path, config: str | None = None, **env: str):
    cfg = None
    if config is not None:
        cfg = tmp_path / "doai-rollback.yml"
        cfg.write_text(config)
    return load_settings(cfg, env={"DOAI_STATE_DIR": str(tmp_path / "st"), **env})


def test_local_is_the_default_and_keeps_the_files(tmp_path):
    s = _settings(tmp_path)
    assert s.state.backend == "local"
    j = state.journal(s)
    assert isinstance(j, Journal) and j.path == s.journal_path
    lk = state.lock(s, "backend")
    assert isinstance(lk, Lock) and lk.path == s.locks_dir / "backend.lock"


def test_postgres_needs_the_url_from_the_environment_only(tmp_path):
    with pytest.raises(ConfigError, match="DOAI_STATE_DATABASE_URL"):
        _settings(tmp_path, "state: {backend: postgres}\n")
    with pytest.raises(ConfigError, match="state.url"):
        _settings(tmp_path, "state: {url: 'postgresql://u:p@127.0.0.1/x'}\n")
    with pytest.raises(ConfigError, match="state.backend"):
        _settings(tmp_path, "state: {backend: s3}\n")
    s = _settings(tmp_path, "state: {backend: postgres}\n", DOAI_STATE_DATABASE_URL=f"postgresql://u:{CANARY}@127.0.0.1/x")
    assert s.state.backend == "postgres" and CANARY not in repr(s)
    # the flag (--state) wins over the file and the environment
    assert load_settings(env={"DOAI_STATE_BACKEND": "postgres", "DOAI_STATE_DIR": str(tmp_path)},
                         state_backend="local").state.backend == "local"
    assert is_secret_env_name("DOAI_STATE_DATABASE_URL")


def test_the_state_schema_is_never_an_application_schema(tmp_path):
    with pytest.raises(ConfigError, match="doai_rollback"):
        _settings(tmp_path, "database: {schemas: [public, doai_rollback]}\n")


def test_lock_keys_are_per_target_and_not_the_database_run_lock():
    keys = {state.lock_key(t) for t in ("agent", "backend", "database", "dashboard", "system")}
    assert len(keys) == 5 and ADVISORY_KEY not in keys
    assert state.lock_key("backend") == state.lock_key("backend")


def test_an_unreachable_store_is_exit_7_with_the_local_way_out(tmp_path):
    """Nothing listens on the URL's port: no silent fall back to local files; exit 7, the hint
    names --state local, the password (a canary) nowhere; with --state local it works."""
    env = {"DOAI_STATE_DIR": str(tmp_path / "st"), "DOAI_STATE_BACKEND": "postgres",
           "DOAI_STATE_DATABASE_URL": f"postgresql://u:{CANARY}@127.0.0.1:{free_port()}/x?sslmode=disable"}
    for args in (("history",), ("history", "-o", "json"), ("lock", "status", "--local"), ("state", "push")):
        res = run_cli(*args, env=env)
        assert res.code == 7, (args, res.stdout, res.stderr)
        assert "--state local" in res.stderr and CANARY not in res.stdout + res.stderr
    ok = run_cli("--state", "local", "history", env=env)
    assert ok.code == 0 and "no runs in" in ok.stdout
    assert not list((tmp_path / "st").rglob("*.jsonl"))  # a read wrote nothing


def test_push_without_a_shared_store_is_a_usage_error(tmp_path):
    res = run_cli("state", "push", env={"DOAI_STATE_DIR": str(tmp_path)})
    assert res.code == 2 and "state.backend is local" in res.stderr
