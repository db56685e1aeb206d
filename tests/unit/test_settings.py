from pathlib import Path

import pytest

from doai_ansible.errors import ConfigError, ExitStatus
from doai_ansible.settings import Secret, load_settings


@pytest.fixture
def inv(tmp_path: Path) -> Path:
    p = tmp_path / "hosts.yml"
    p.write_text("all: {}\n")
    return p


def test_defaults(inv, tmp_path):
    s = load_settings(None, inventory=inv, env={"HOME": str(tmp_path)})
    assert s.inventory == inv
    assert s.vercel.api_url == "https://api.vercel.com"
    assert s.vercel.health_url == "https://dashboard.doai.me/api/health"
    assert s.vercel.token is None


def test_file_then_env_then_flags(inv, tmp_path):
    cfg = tmp_path / "doai-rollback.yml"
    cfg.write_text(f"inventory: {inv}\nstate_dir: from-file\nvercel:\n  project: doai-dashboard\n  timeout: 3\n")
    s = load_settings(cfg, env={})
    assert s.state_dir == (tmp_path / "from-file").absolute()  # relative to the config file
    assert s.vercel.project == "doai-dashboard" and s.vercel.timeout_s == 3
    s = load_settings(cfg, env={"DOAI_STATE_DIR": str(tmp_path / "env"), "DOAI_VERCEL_PROJECT": "other"})
    assert s.state_dir == tmp_path / "env" and s.vercel.project == "other"
    s = load_settings(cfg, state_dir=tmp_path / "flag", env={"DOAI_STATE_DIR": str(tmp_path / "env")})
    assert s.state_dir == tmp_path / "flag"


@pytest.mark.parametrize(
    "content, key",
    [
        ("bogus: 1\n", "bogus"),
        ("vercel:\n  api_url: ftp://x\n", "vercel.api_url"),
        ("vercel:\n  timeout: -1\n", "vercel.timeout"),
        ("vercel:\n  project: 'a b'\n", "vercel.project"),
        ("vercel:\n  team_id: nope\n", "vercel.team_id"),
        ("vercel:\n  colour: red\n", "vercel.colour"),
        ("lock_ttl: soon\n", "lock_ttl"),
        ("- a list\n", ""),
    ],
)
def test_errors_name_the_key(inv, tmp_path, content, key):
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"inventory: {inv}\n" + content if not content.startswith("-") else content)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg, env={})
    assert key in str(exc.value)
    assert exc.value.exit_status is ExitStatus.USAGE


def test_missing_inventory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="inventory"):
        load_settings(None, inventory=tmp_path / "nope.yml", env={})


def test_token_is_secret(inv):
    s = load_settings(None, inventory=inv, env={"VERCEL_TOKEN": "canary-token-123"})
    assert s.vercel.token.reveal() == "canary-token-123"
    for text in (repr(s), str(s), repr(s.vercel), str(s.vercel.token), f"{s.vercel.token}"):
        assert "canary-token-123" not in text
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")


def test_require_names_what_is_missing(inv):
    s = load_settings(None, inventory=inv, env={})
    with pytest.raises(ConfigError, match="VERCEL_TOKEN"):
        s.vercel.require()
    s = load_settings(None, inventory=inv, env={"VERCEL_TOKEN": "t"})
    with pytest.raises(ConfigError, match="vercel.project"):
        s.vercel.require()
