"""The one secret rule (plugins/module_utils/doai_secrets.py), used by the controller
(doai_ansible.secrets, settings.is_secret_env_name) and by the hosts' modules alike."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from doai_ansible import secrets
from doai_ansible.settings import is_secret_env_name

ROOT = Path(__file__).resolve().parents[2]
HOST_FILE = ROOT / "plugins" / "module_utils" / "doai_secrets.py"


def _host_module():
    spec = importlib.util.spec_from_file_location("doai_secrets_as_shipped", HOST_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_the_controller_loads_the_file_the_hosts_get():
    assert Path(secrets._rule.__file__).resolve() == HOST_FILE.resolve()


@pytest.mark.parametrize("name", [
    # The names issue 19 found the controller let through to ansible-playbook.
    "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_ANON_KEY", "SENTRY_DSN", "VERCEL_TOKEN", "DOAI_DATABASE_URL",
    "MY_APP_API_KEY", "STRIPE_SECRET_KEY", "JWT_SECRET", "SESSION_SECRET", "COOKIE_SECRET", "GITHUBTOKEN",
    "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "GOOGLE_APPLICATION_CREDENTIALS_JSON", "REDIS_URL", "MONGO_URI",
    "NEXTAUTH_SECRET", "AUTH_TOKEN", "PRIVATE_KEY", "DB_PASS", "PGPASSWORD", "serviceRoleKey", "apiKey",
    "Authorization", "SLACK_WEBHOOK_URL", "DOAI_STATE_DATABASE_URL",
])
def test_secret_names_are_secret_on_both_sides(name):
    assert _host_module().is_secret_name(name)
    assert is_secret_env_name(name)


@pytest.mark.parametrize("name", [
    "PATH", "HOME", "PORT", "NODE_ENV", "LANG", "SSH_AUTH_SOCK", "ANSIBLE_HOST_KEY_CHECKING",
    "ANSIBLE_PRIVATE_KEY_FILE", "ANSIBLE_VAULT_PASSWORD_FILE", "ANSIBLE_ASK_PASS", "PGPASSFILE", "PM2_HOME", "PWD",
    "SUPABASE_URL", "XDG_SESSION_ID", "ANSIBLE_HOST_KEY_AUTO_ADD", "SSH_PUBLIC_KEY",
])
def test_ordinary_names_are_not(name):
    assert not _host_module().is_secret_name(name)
    assert not is_secret_env_name(name)


CANARY = "CANARY7f3a9c"
JWT = f"eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIiwiYyI6IkNBTkFSWSJ9.{CANARY}sig"


@pytest.mark.parametrize(("line", "kept"), [
    (f"connect postgres://app:{CANARY}@db/x failed", "connect postgres://app:***@db/x failed"),
    (f"SUPABASE_SERVICE_ROLE_KEY={CANARY}-srk", "SUPABASE_SERVICE_ROLE_KEY=***"),
    (f"using key {JWT} now", "using key *** now"),
    (f"Authorization: Bearer {CANARY}", "Authorization: Bearer ***"),
    (f'{{"password": "{CANARY}", "user": "app"}}', '{"password": "***", "user": "app"}'),
    (f"GET /cb?code=1&access_token={CANARY}&x=2", "GET /cb?code=1&access_token=***&x=2"),
    (f"redis://:{CANARY}@cache:6379", "redis://:***@cache:6379"),
    ("listening on port 3001, NODE_ENV=production", "listening on port 3001, NODE_ENV=production"),
    ("AUTH_ENABLED=true", "AUTH_ENABLED=true"),
])
def test_scrub_by_shape(line, kept):
    assert _host_module().scrub(line) == kept
    assert secrets.scrub(line) == kept


def test_scrub_by_value_of_the_writers_environment():
    env = {"SUPABASE_SERVICE_ROLE_KEY": "srk-abcdef", "PORT": "3001", "AUTH_ENABLED": "true", "PIN": "12"}
    values = secrets.secret_values(env)
    assert values == ["srk-abcdef"]
    assert secrets.scrub("k srk-abcdef on port 3001 true", values) == "k *** on port 3001 true"


def _tasks(node):
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        yield node
        for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
            yield from _tasks(node.get(key))


def test_no_debug_task_carries_log_data():
    """A debug task's message is in the playbook log and every AWX job's output: log lines
    travel as a module's result (scrubbed on the host), never through one (issue 19 item 1)."""
    import yaml

    offenders = []
    for path in sorted([*ROOT.glob("roles/*/tasks/*.yml"), *ROOT.glob("playbooks/*.yml"),
                        *ROOT.glob("playbooks/tasks/*.yml")]):
        for task in _tasks(yaml.safe_load(path.read_text()) or []):
            debug = task.get("ansible.builtin.debug", task.get("debug"))
            if not isinstance(debug, dict):
                continue
            var = debug.get("var")
            said = str(debug.get("msg", "")) + ("{{ " + str(var) + " }}" if var else "")
            if re.search(r"\{\{[^}]*(logs?|stdout|stderr)\b[^}]*\}\}", said):
                offenders.append(f"{path.relative_to(ROOT)}: {task.get('name')}")
    assert offenders == []
