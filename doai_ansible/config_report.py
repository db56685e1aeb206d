"""``doai-rollback config show``: the settings in effect and where each came from.

Each setting is read from the loaded :class:`~doai_ansible.settings.Settings` (so what is shown
is what a command would use) and its source is judged by the precedence
:func:`~doai_ansible.settings.load_settings` applies: a flag, else an environment variable, else
the config file, else the default. Secrets (the Vercel token, the database URLs, the WinRM and SSH
passwords, the webhook URL) are shown only as ``set`` or ``unset``: their values never reach this
module's output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from doai_ansible.settings import (
    CONFIG_ENV,
    CONFIG_NAMES,
    Settings,
    config_search_order,
    load_settings,
    user_config,
)

#: (setting, its flag, its environment variable, how to read it from the settings). The file key
#: is the setting's own dotted name; a flag or variable of None: there is none.
Row = tuple[str, str | None, str | None, Callable[[Settings], Any]]

ROWS: tuple[Row, ...] = (
    ("inventory", "--inventory", "DOAI_INVENTORY", lambda s: s.inventory),
    ("state_dir", "--state-dir", "DOAI_STATE_DIR", lambda s: s.state_dir),
    ("state.backend", "--state", "DOAI_STATE_BACKEND", lambda s: s.state.backend),
    ("lock_ttl", None, "DOAI_LOCK_TTL", lambda s: s.lock_ttl_s),
    ("keep_artifacts", None, "DOAI_KEEP_ARTIFACTS", lambda s: s.keep_artifacts),
    ("vercel.api_url", None, "DOAI_VERCEL_API_URL", lambda s: s.vercel.api_url),
    ("vercel.project", None, "DOAI_VERCEL_PROJECT", lambda s: s.vercel.project),
    ("vercel.team_id", None, "DOAI_VERCEL_TEAM_ID", lambda s: s.vercel.team_id),
    ("vercel.team_slug", None, "DOAI_VERCEL_TEAM_SLUG", lambda s: s.vercel.team_slug),
    ("vercel.health_url", None, "DOAI_DASHBOARD_HEALTH_URL", lambda s: s.vercel.health_url),
    ("vercel.timeout", None, None, lambda s: s.vercel.timeout_s),
    ("vercel.job_deadline", None, None, lambda s: s.vercel.job_deadline_s),
    ("vercel.health_deadline", None, None, lambda s: s.vercel.health_deadline_s),
    ("vercel.max_retries", None, None, lambda s: s.vercel.max_retries),
    ("database.project_dir", None, "DOAI_DATABASE_PROJECT_DIR", lambda s: s.database.project_dir),
    ("database.migrations_dir", None, None, lambda s: s.database.migrations_dir),
    ("database.rollbacks_dir", None, None, lambda s: s.database.rollbacks_dir),
    ("database.schemas", None, None, lambda s: list(s.database.schemas)),
    ("database.snapshot_dir", None, "DOAI_DATABASE_SNAPSHOT_DIR", lambda s: s.snapshot_dir),
    ("database.lock_timeout", None, None, lambda s: s.database.lock_timeout_s),
    ("database.statement_timeout", None, None, lambda s: s.database.statement_timeout_s),
    ("database.pg_bin_dir", None, "DOAI_PG_BIN_DIR", lambda s: s.database.pg_bin_dir),
    ("system.webhook_env", None, None, lambda s: s.system.webhook_env),
    ("system.webhook_timeout", None, None, lambda s: s.system.webhook_timeout_s),
    ("system.report_dir", None, None, lambda s: s.report_dir),
    ("system.log_lines", None, None, lambda s: s.system.log_lines),
    # Names only: a smoke check's URL is the operator's to keep out of a pasted output.
    ("system.smoke_checks", None, None, lambda s: [c.name for c in s.system.smoke_checks]),
    ("system.contacts", None, None, lambda s: len(s.system.contacts)),
    ("diagnose.backend_env", None, None, lambda s: list(s.diagnose.backend_env)),
    ("diagnose.socketio_url", None, None, lambda s: s.diagnose.socketio_url),
    ("diagnose.log_lines", None, None, lambda s: s.diagnose.log_lines),
)

#: The file keys an older spelling may also set (``vercel.timeout_s`` for ``vercel.timeout``).
ALIASES = {"vercel.timeout": ("timeout_s",), "vercel.job_deadline": ("job_deadline_s",),
           "vercel.health_deadline": ("health_deadline_s",)}

#: The secrets, by the variable they come from: (variable, what it is).
SECRETS = (
    ("VERCEL_TOKEN", "Vercel access token (dashboard)"),
    ("DOAI_DATABASE_URL", "database connection string (database)"),
    ("DOAI_STATE_DATABASE_URL", "shared state store connection string"),
    ("DOAI_WINRM_PASSWORD", "WinRM password (agent PCs)"),
    ("DOAI_SSH_PASSWORD", "SSH password"),
)


def report(*, config: str | None = None, inventory: str | None = None, state_dir: str | None = None,
           state_backend: str | None = None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings in effect (as :func:`load_settings` builds them from these flags and ``env``)
    with the source of each; secrets as set/unset only. Raises ConfigError as any command would."""
    env = os.environ if env is None else env
    settings = load_settings(config, inventory=inventory, state_dir=state_dir, state_backend=state_backend, env=env)
    flags = {"--inventory": inventory, "--state-dir": state_dir, "--state": state_backend}
    data = _file_data(settings.config_path)
    file_label = f"file {settings.config_path}"
    rows: dict[str, dict[str, Any]] = {}
    for key, flag, var, read in ROWS:
        if flag is not None and flags.get(flag):
            source = f"flag {flag}"
        elif var is not None and env.get(var):
            source = f"variable {var}"
        elif _in_file(data, key):
            source = file_label
        else:
            source = "default" if read(settings) is not None else "not set (no default)"
        rows[key] = {"value": _plain(read(settings)), "source": source}
    webhook_var = settings.system.webhook_env
    secrets = {var: _secret_state(settings, var, env) for var, _ in SECRETS}
    secrets[webhook_var] = "set" if settings.system.webhook is not None else "unset"
    return {
        "config_file": str(settings.config_path) if settings.config_path else None,
        "config_source": _config_source(config, env, settings.config_path),
        "config_search": list(config_search_order()),
        "inventory": rows["inventory"]["value"],
        "state_dir": rows["state_dir"]["value"],
        "settings": rows,
        "secrets": secrets,
        "secret_about": dict([*SECRETS, (webhook_var, "webhook URL (system rollback announcements)")]),
    }


def lines(doc: Mapping[str, Any]) -> list[str]:
    """The report as text."""
    out = [f"config file: {doc['config_file'] or 'none'} ({doc['config_source']})",
           f"    looked for, first found wins: {', '.join(doc['config_search'])}",
           f"inventory: {doc['inventory'] or 'none'} ({doc['settings']['inventory']['source']})",
           f"state dir: {doc['state_dir']} ({doc['settings']['state_dir']['source']})",
           "settings:"]
    width = max(len(k) for k in doc["settings"])
    for key, row in doc["settings"].items():
        out.append(f"    {key:<{width}}  {_text(row['value'])}  ({row['source']})")
    out.append("secrets (from the environment only; values never shown):")
    width = max(len(k) for k in doc["secrets"])
    for var, state in doc["secrets"].items():
        out.append(f"    {var:<{width}}  {state:<5}  {doc['secret_about'].get(var, '')}")
    return out


def _config_source(explicit: str | None, env: Mapping[str, str], path: Path | None) -> str:
    if explicit:
        return "flag --config"
    if env.get(CONFIG_ENV):
        return f"variable {CONFIG_ENV}"
    if path is None:
        return "none found"
    if str(path) in CONFIG_NAMES:
        return "found in the current directory"
    if path == user_config(env):
        return "found in the user's config directory"
    return "found"


def _file_data(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))  # load_settings read and checked it already
    return loaded if isinstance(loaded, dict) else {}


def _in_file(data: Mapping[str, Any], key: str) -> bool:
    head, _, tail = key.partition(".")
    if not tail:
        return head in data
    section = data.get(head)
    return isinstance(section, dict) and (tail in section or any(a in section for a in ALIASES.get(key, ())))


def _secret_state(settings: Settings, var: str, env: Mapping[str, str]) -> str:
    held = {"VERCEL_TOKEN": settings.vercel.token, "DOAI_DATABASE_URL": settings.database.url,
            "DOAI_STATE_DATABASE_URL": settings.state.url}
    if var in held:
        return "set" if held[var] is not None else "unset"
    return "set" if env.get(var) else "unset"


def _plain(value: Any) -> Any:
    """A value as JSON has it (paths as strings)."""
    if isinstance(value, Path):
        return str(value)
    return value


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)
