import os
import stat
from pathlib import Path

import pytest

from doai_ansible.errors import ConfigError, ExitStatus
from doai_ansible.settings import Secret, is_secret_env_name, load_settings


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


@pytest.mark.parametrize(
    "name, secret",
    [
        ("VERCEL_TOKEN", True),
        ("DOAI_DATABASE_URL", True),
        ("SOME_PASSWORD", True),
        ("ANSIBLE_BECOME_PASS", True),  # Ansible's env spelling of the become password itself
        ("ANSIBLE_SUDO_PASS", True),
        ("ANSIBLE_PRIVATE_KEY", True),  # the key's contents
        ("ANSIBLE_PRIVATE_KEY_PASSPHRASE", True),
        # Files and switches, not secrets: Ansible needs them (an inventory encrypted with ansible-vault).
        ("ANSIBLE_VAULT_PASSWORD_FILE", False),
        ("ANSIBLE_BECOME_PASSWORD_FILE", False),
        ("ANSIBLE_CONNECTION_PASSWORD_FILE", False),
        ("ANSIBLE_PRIVATE_KEY_FILE", False),
        ("ANSIBLE_GALAXY_TOKEN_PATH", False),
        ("ANSIBLE_SSH_PASSWORD_MECHANISM", False),
        ("ANSIBLE_ASK_PASS", False),
        ("ANSIBLE_ASK_VAULT_PASS", False),
        ("PATH", False),
    ],
)
def test_secret_env_names(name, secret):
    assert is_secret_env_name(name) is secret


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_state_dir_is_created_private(inv, tmp_path):
    s = load_settings(None, inventory=inv, state_dir=tmp_path / "a" / "state", env={})
    assert s.ensure_state_dir() == s.state_dir
    assert mode(s.state_dir) == 0o700


def test_loose_state_dir_of_ours_is_tightened(inv, tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    load_settings(None, inventory=inv, state_dir=d, env={}).ensure_state_dir()
    assert mode(d) == 0o700


def test_state_dir_of_someone_else_is_refused(inv, tmp_path, monkeypatch):
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    monkeypatch.setattr(os, "getuid", lambda: d.stat().st_uid + 1)  # as if another user made it
    with pytest.raises(ConfigError, match="state_dir") as exc:
        load_settings(None, inventory=inv, state_dir=d, env={}).ensure_state_dir()
    assert "belongs to uid" in str(exc.value)
    assert mode(d) == 0o755  # not touched


@pytest.mark.parametrize(
    "url",
    ["https://api.vercel.com", "http://127.0.0.1:9", "http://127.8.9.10/api", "http://localhost:3000", "http://[::1]:8"],
)
def test_api_url_accepts_https_and_loopback_http(inv, url):
    assert load_settings(None, inventory=inv, env={"DOAI_VERCEL_API_URL": url}).vercel.api_url == url


@pytest.mark.parametrize(
    "url",
    ["http://api.vercel.com", "http://10.0.0.1", "http://localhost.example.com", "http://128.0.0.1", "http://[::2]"],
)
def test_api_url_refuses_cleartext_off_this_machine(inv, tmp_path, url):
    with pytest.raises(ConfigError, match="vercel.api_url"):
        load_settings(None, inventory=inv, env={"DOAI_VERCEL_API_URL": url})
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"inventory: {inv}\nvercel:\n  api_url: {url}\n")
    with pytest.raises(ConfigError, match="vercel.api_url"):
        load_settings(cfg, env={})


@pytest.mark.parametrize("url", ["http://hooks.example.com/services/T0/B0/canary-hook-token",
                                 "hooks.example.com/services/T0/B0/canary-hook-token",
                                 "https://[x/services/canary-hook-token", "https://h:port/canary-hook-token"])
def test_a_webhook_url_is_never_shown_in_its_error(tmp_path, url):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all: {}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(None, inventory=inv, env={"DOAI_WEBHOOK_URL": url})
    assert "canary-hook-token" not in exc.value.message + (exc.value.hint or "")
    assert exc.value.message.startswith("setting 'DOAI_WEBHOOK_URL': the URL")


def test_a_webhook_variable_must_be_one_kept_from_child_processes(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all: {}\n")
    cfg = tmp_path / "c.yml"
    cfg.write_text("system: {webhook_env: SLACK_HOOK_URL}\n")
    with pytest.raises(ConfigError, match="SLACK_HOOK_URL is not a name kept from child processes"):
        load_settings(cfg, inventory=inv, env={})
    cfg.write_text("system: {webhook_env: SLACK_WEBHOOK_URL}\n")
    s = load_settings(cfg, inventory=inv, env={"SLACK_WEBHOOK_URL": "https://hooks.example.com/x"})
    assert s.system.webhook is not None and is_secret_env_name("SLACK_WEBHOOK_URL")


def test_no_inventory_configured_is_none_and_says_how_to_set_one(tmp_path, monkeypatch):
    """Nothing configured: no inventory at all (the bundled inventory/example names example hosts
    and is read only when named); a command that needs one exits 2 naming every way to set it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    s = load_settings(None, env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert s.config_path is None
    assert s.inventory is None
    with pytest.raises(ConfigError) as exc:
        s.require_inventory()
    text = str(exc.value)
    assert exc.value.exit_status is ExitStatus.USAGE
    assert "--inventory" in text and "DOAI_INVENTORY" in text and "`inventory" in text
    # named, it is used like any other inventory
    example = Path(__file__).resolve().parents[2] / "inventory" / "example" / "hosts.yml"
    assert load_settings(None, inventory=example, env={}).require_inventory() == example


def test_repo_ansible_cfg_names_no_inventory():
    """ansible-playbook run from the repository root without -i must not reach the example hosts."""
    import configparser

    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(Path(__file__).resolve().parents[2] / "ansible.cfg")
    assert not cfg.has_option("defaults", "inventory")
