"""Settings: defaults < config file < environment < flags, validated in one place.

Host-side settings (paths, PM2 apps, health URLs on the VPS) live in the Ansible inventory so
the playbooks run on their own; API-side settings (Vercel project/team, ...) live in the config
file; secrets come only from environment variables and are held in :class:`Secret`, which never
prints its value.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from doai_ansible.errors import ConfigError, UsageError
from doai_ansible.secrets import is_secret_name

CONFIG_ENV = "DOAI_CONFIG"
CONFIG_NAMES = ("doai-rollback.yml", "doai-rollback.yaml")

# Environment variables that hold secrets. They are read here, and scrubbed from every child
# process environment (ansible-runner writes its environment into its artifacts).
SECRET_ENV = ("VERCEL_TOKEN", "DOAI_DATABASE_URL", "DOAI_WINRM_PASSWORD", "DOAI_SSH_PASSWORD", "DOAI_WEBHOOK_URL",
              "DOAI_STATE_DATABASE_URL")
def is_secret_env_name(name: str) -> bool:
    """Whether an environment variable of this name holds a secret (and is kept from children):
    the one rule, shared with the hosts (:mod:`doai_ansible.secrets`)."""
    return name in SECRET_ENV or is_secret_name(name)


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, 0600, never through a symlink someone left there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode on O_CREAT


def ensure_private_dir(path: Path, *, parents: bool = False, follow_symlinks: bool = False) -> Path:
    """Create ``path`` with mode 0700, or check the one that is there: a directory, ours, not
    a symlink (unless ``follow_symlinks``), and tightened to 0700 when it is looser.

    Another user's directory, or a symlink someone planted in a shared place such as /tmp,
    would let them read or replace what we put there (SSH control sockets, locks, logs).
    """
    try:
        path.mkdir(mode=0o700, parents=parents)
    except FileExistsError:
        pass  # checked below, whoever made it
    flags = os.O_RDONLY | os.O_DIRECTORY | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
        raise UsageError(
            f"{path} is not a directory of ours ({exc.strerror}): refusing to use it", hint="remove it and run again"
        ) from None
    try:
        st = os.fstat(fd)  # the directory we opened, not whatever the name points at by now
        if st.st_uid != os.getuid():
            raise UsageError(
                f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): refusing to use it",
                hint="remove it, or point the tool at a directory of your own",
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


class Secret:
    """A value that must never be printed, logged or journaled."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "doai-rollback"


def content_dir() -> Path:
    """Where playbooks/, roles/ and inventory/ live (repo root, or inside the wheel)."""
    override = os.environ.get("DOAI_CONTENT_DIR")
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent
    bundled = here / "_content"
    if (bundled / "playbooks").is_dir():
        return bundled
    return here.parent


def _url(key: str, value: Any, *, schemes: tuple[str, ...] = ("http", "https"), secret: bool = False) -> str:
    """``secret``: the URL carries a token (a webhook's): an error never shows it."""
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "must be a URL")
    shown = "the URL" if secret else repr(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ConfigError(key, f"{shown} is not a valid URL") from None
    if parts.scheme not in schemes or not parts.netloc:
        raise ConfigError(key, f"{shown} is not an {'/'.join(schemes)} URL")
    return value.rstrip("/")


def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost: a name that never leaves this machine."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secure_url(key: str, value: Any, *, secret: bool = False) -> str:
    """A URL that carries a credential: https, or http to this machine only (a test stand-in).
    A typo such as ``http://api.vercel.com`` must not send the token in clear. ``secret``: the
    URL itself is the credential (a webhook's): never shown."""
    url = _url(key, value, secret=secret)
    parts = urlsplit(url)
    if parts.scheme != "https" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            key, f"{'the URL' if secret else repr(url)} would send the token unencrypted", hint="use https:// (http:// only for a loopback address: 127.0.0.1, ::1, localhost)"
        )
    return url


def _positive(key: str, value: Any) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"{value!r} is not a number") from None
    if f <= 0:
        raise ConfigError(key, "must be greater than 0")
    return f


def _seconds(key: str, value: Any) -> float:
    """A PostgreSQL timeout in seconds: at least 1 ms (0 would turn it off), at most ~24 days."""
    f = _positive(key, value)
    if not 0.001 <= f <= 2_147_483:  # also refuses nan and inf
        raise ConfigError(key, f"{value!r} seconds is out of range (0.001 to 2147483)")
    return f


def _opt_str(key: str, value: Any, pattern: str | None = None) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(key, "must be a string")
    if pattern and not re.fullmatch(pattern, value):
        raise ConfigError(key, f"{value!r} is not valid")
    return value


@dataclasses.dataclass(frozen=True)
class VercelSettings:
    api_url: str = "https://api.vercel.com"
    project: str | None = None  # project id (prj_...) or name
    team_id: str | None = None
    team_slug: str | None = None
    health_url: str = "https://dashboard.doai.me/api/health"
    token: Secret | None = dataclasses.field(default=None, repr=False)
    timeout_s: float = 10.0  # one HTTP request
    job_deadline_s: float = 300.0  # the alias job after a rollback/promote
    health_deadline_s: float = 120.0  # the health gate
    max_retries: int = 5  # on 429 / 5xx / transport errors

    @classmethod
    def build(cls, data: Mapping[str, Any], env: Mapping[str, str]) -> VercelSettings:
        d = dict(data or {})
        for env_name, key in (
            ("DOAI_VERCEL_API_URL", "api_url"),
            ("DOAI_VERCEL_PROJECT", "project"),
            ("DOAI_VERCEL_TEAM_ID", "team_id"),
            ("DOAI_VERCEL_TEAM_SLUG", "team_slug"),
            ("DOAI_DASHBOARD_HEALTH_URL", "health_url"),
        ):
            if env.get(env_name):
                d[key] = env[env_name]
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)} - {"timeout", "job_deadline", "health_deadline"}
        if unknown:
            raise ConfigError(f"vercel.{min(unknown)}", "unknown setting")
        token = env.get("VERCEL_TOKEN")
        return cls(
            api_url=_secure_url("vercel.api_url", d.get("api_url", cls.api_url)),
            project=_opt_str("vercel.project", d.get("project"), r"[A-Za-z0-9._-]{1,100}"),
            team_id=_opt_str("vercel.team_id", d.get("team_id"), r"team_[A-Za-z0-9]{1,64}"),
            team_slug=_opt_str("vercel.team_slug", d.get("team_slug"), r"[A-Za-z0-9._-]{1,100}"),
            health_url=_url("vercel.health_url", d.get("health_url", cls.health_url)),
            token=Secret(token) if token else None,
            timeout_s=_positive("vercel.timeout", d.get("timeout", d.get("timeout_s", cls.timeout_s))),
            job_deadline_s=_positive(
                "vercel.job_deadline", d.get("job_deadline", d.get("job_deadline_s", cls.job_deadline_s))
            ),
            health_deadline_s=_positive(
                "vercel.health_deadline", d.get("health_deadline", d.get("health_deadline_s", cls.health_deadline_s))
            ),
            max_retries=int(_positive("vercel.max_retries", d.get("max_retries", cls.max_retries))),
        )

    def require(self) -> None:
        """Check what a call to the API needs, naming the missing key."""
        if not self.token:
            raise ConfigError("VERCEL_TOKEN", "environment variable is not set", hint="export a Vercel access token")
        if not self.project:
            raise ConfigError("vercel.project", "is not set", hint="name the Vercel project in the config file")


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    """The database part: where the migrations live and how the rollback transaction behaves.
    The database URL is a secret and comes only from the environment (``DOAI_DATABASE_URL``)."""

    url: Secret | None = dataclasses.field(default=None, repr=False)
    project_dir: Path = Path(".")  # the folder holding supabase/
    migrations_dir: str = "supabase/migrations"
    rollbacks_dir: str = "supabase/rollbacks"  # down files, named like their migrations
    schemas: tuple[str, ...] = ("public",)  # the application's schemas (snapshot, integrity checks)
    snapshot_dir: Path | None = None  # default: <state_dir>/snapshots
    lock_timeout_s: float = 5.0  # SET LOCAL lock_timeout of the rollback transaction
    statement_timeout_s: float = 300.0  # SET LOCAL statement_timeout of each statement
    pg_bin_dir: Path | None = None  # where pg_dump/pg_restore/psql are (default: PATH)

    @property
    def migrations_path(self) -> Path:
        return self.project_dir / self.migrations_dir

    @property
    def rollbacks_path(self) -> Path:
        return self.project_dir / self.rollbacks_dir

    @classmethod
    def build(cls, data: Mapping[str, Any], env: Mapping[str, str], base: Path) -> DatabaseSettings:
        d = dict(data or {})
        for env_name, key in (("DOAI_DATABASE_PROJECT_DIR", "project_dir"), ("DOAI_DATABASE_SNAPSHOT_DIR", "snapshot_dir"),
                              ("DOAI_PG_BIN_DIR", "pg_bin_dir")):
            if env.get(env_name):
                d[key] = env[env_name]
        known = {"project_dir", "migrations_dir", "rollbacks_dir", "schemas", "snapshot_dir", "lock_timeout",
                 "statement_timeout", "pg_bin_dir"}
        unknown = set(d) - known
        if "url" in unknown:
            raise ConfigError("database.url", "must not be in the config file: it holds a password",
                              hint="export DOAI_DATABASE_URL instead")
        if unknown:
            raise ConfigError(f"database.{min(unknown)}", "unknown setting", hint=f"known: {', '.join(sorted(known))}")

        def path(key: str) -> Path | None:
            value = d.get(key)
            if value in (None, ""):
                return None
            p = Path(str(value)).expanduser()
            return p if p.is_absolute() else base / p

        schemas = d.get("schemas", ["public"])
        if isinstance(schemas, str):
            schemas = [schemas]
        if not isinstance(schemas, list) or not schemas or not all(
                isinstance(x, str) and re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", x) for x in schemas):
            raise ConfigError("database.schemas", "must be a list of schema names (lower case)")
        if set(schemas) & {"auth", "storage", "supabase_migrations", "pg_catalog", "information_schema"}:
            raise ConfigError("database.schemas", "lists a schema Supabase manages; name the application's own")
        if STATE_SCHEMA in schemas:
            raise ConfigError("database.schemas", f"lists {STATE_SCHEMA}, the shared state store's own schema (run "
                              "records and locks): a database rollback or restore never touches it")
        for key in ("migrations_dir", "rollbacks_dir"):
            value = d.get(key, getattr(cls, key))
            if not isinstance(value, str) or not value or value.startswith("/") or ".." in value.split("/"):
                raise ConfigError(f"database.{key}", "must be a relative path inside project_dir")
        url = env.get("DOAI_DATABASE_URL")
        return cls(
            url=Secret(url) if url else None,
            project_dir=path("project_dir") or base,
            migrations_dir=d.get("migrations_dir", cls.migrations_dir),
            rollbacks_dir=d.get("rollbacks_dir", cls.rollbacks_dir),
            schemas=tuple(schemas),
            snapshot_dir=path("snapshot_dir"),
            lock_timeout_s=_seconds("database.lock_timeout", d.get("lock_timeout", cls.lock_timeout_s)),
            statement_timeout_s=_seconds("database.statement_timeout", d.get("statement_timeout", cls.statement_timeout_s)),
            pg_bin_dir=path("pg_bin_dir"),
        )


_ENV_NAME_RE = r"[A-Za-z_][A-Za-z0-9_]{0,127}"

#: The schema of the shared state store (doai_ansible.state); never one of the application's.
STATE_SCHEMA = "doai_rollback"
STATE_BACKENDS = ("local", "postgres")


@dataclasses.dataclass(frozen=True)
class StateSettings:
    """Where run records and locks live (``state:`` in the config file, see doai_ansible.state):
    ``local`` files under the state dir, or a ``postgres`` store shared by a team, its URL (a
    secret) only from ``DOAI_STATE_DATABASE_URL``."""

    backend: str = "local"
    url: Secret | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def build(cls, data: Mapping[str, Any], env: Mapping[str, str], override: str | None = None) -> StateSettings:
        d = dict(data or {})
        if "url" in d:
            raise ConfigError("state.url", "must not be in the config file: it holds a password",
                              hint="export DOAI_STATE_DATABASE_URL instead")
        unknown = set(d) - {"backend"}
        if unknown:
            raise ConfigError(f"state.{min(unknown)}", "unknown setting", hint="known: backend")
        value = override or env.get("DOAI_STATE_BACKEND") or d.get("backend", cls.backend)
        if value not in STATE_BACKENDS:
            raise ConfigError("state.backend", f"{value!r} is not one of {', '.join(STATE_BACKENDS)}")
        url = env.get("DOAI_STATE_DATABASE_URL")
        if value == "postgres" and not url:
            raise ConfigError("DOAI_STATE_DATABASE_URL", "environment variable is not set, and state.backend is "
                              "postgres", hint="export DOAI_STATE_DATABASE_URL=postgresql://user:password@host:5432/db "
                              "(never on a command line), or use --state local")
        return cls(backend=value, url=Secret(url) if url else None)


@dataclasses.dataclass(frozen=True)
class SmokeCheck:
    """One of the runbook's "user test" checks after a whole-system rollback: GET ``url``, expect
    ``status`` and, if set, ``contains`` in the body."""

    name: str
    url: str
    status: int = 200
    contains: str | None = None
    timeout_s: float = 10.0


@dataclasses.dataclass(frozen=True)
class Contact:
    """A row of the runbook's emergency contacts table (section 6)."""

    role: str
    name: str = "TBD"
    contact: str = "TBD"


@dataclasses.dataclass(frozen=True)
class SystemSettings:
    """The whole-system rollback's checklist around the parts (``system:`` in the config file).

    The webhook URL is a secret (a Slack webhook URL carries its token): it comes only from the
    environment variable named by ``webhook_env``."""

    smoke_checks: tuple[SmokeCheck, ...] = ()
    contacts: tuple[Contact, ...] = ()
    webhook_env: str = "DOAI_WEBHOOK_URL"
    webhook: Secret | None = dataclasses.field(default=None, repr=False)
    webhook_timeout_s: float = 5.0
    report_dir: Path | None = None  # default: <state_dir>/reports
    log_lines: int = 200  # lines of each backend host's and agent's log collected before the rollback

    @classmethod
    def build(cls, data: Mapping[str, Any], env: Mapping[str, str], base: Path) -> SystemSettings:
        d = dict(data or {})
        known = {"smoke_checks", "contacts", "webhook_env", "webhook_timeout", "report_dir", "log_lines"}
        if "webhook" in d or "webhook_url" in d:
            raise ConfigError("system.webhook", "must not be in the config file: the URL carries a token",
                              hint="export it in the variable named by system.webhook_env (default DOAI_WEBHOOK_URL)")
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"system.{min(unknown)}", "unknown setting", hint=f"known: {', '.join(sorted(known))}")
        checks = []
        for i, c in enumerate(_list("system.smoke_checks", d.get("smoke_checks"))):
            key = f"system.smoke_checks[{i}]"
            if not isinstance(c, dict) or set(c) - {"name", "url", "status", "contains", "timeout"}:
                raise ConfigError(key, "must be a mapping of name, url, status, contains, timeout")
            status = c.get("status", 200)
            if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
                raise ConfigError(f"{key}.status", "must be an HTTP status (100-599)")
            contains = c.get("contains")
            if contains is not None and (not isinstance(contains, str) or not contains):
                raise ConfigError(f"{key}.contains", "must be a non-empty string")
            url = _url(f"{key}.url", c.get("url"))
            checks.append(SmokeCheck(name=_opt_str(f"{key}.name", c.get("name")) or url, url=url, status=status,
                                     contains=contains,
                                     timeout_s=_positive(f"{key}.timeout", c.get("timeout", 10.0))))
        contacts = []
        for i, c in enumerate(_list("system.contacts", d.get("contacts"))):
            key = f"system.contacts[{i}]"
            if not isinstance(c, dict) or not c.get("role") or set(c) - {"role", "name", "contact"} or not all(
                    isinstance(v, str) for v in c.values()):
                raise ConfigError(key, "must be a mapping of role, name, contact (strings; role required)")
            contacts.append(Contact(role=c["role"], name=c.get("name") or "TBD", contact=c.get("contact") or "TBD"))
        webhook_env = d.get("webhook_env", cls.webhook_env)
        if not isinstance(webhook_env, str) or not re.fullmatch(_ENV_NAME_RE, webhook_env):
            raise ConfigError("system.webhook_env", "must be an environment variable name")
        hook_url = env.get(webhook_env)
        if not is_secret_env_name(webhook_env):
            # Only secret-named variables are kept from child processes and ansible-runner's files.
            raise ConfigError("system.webhook_env", f"{webhook_env} is not a name kept from child processes",
                              hint="use a name with WEBHOOK, TOKEN or SECRET in it (default DOAI_WEBHOOK_URL)")
        if hook_url:
            _secure_url(webhook_env, hook_url, secret=True)
        log_lines = d.get("log_lines", cls.log_lines)
        if not isinstance(log_lines, int) or isinstance(log_lines, bool) or not 0 <= log_lines <= 100_000:
            raise ConfigError("system.log_lines", "must be a whole number from 0 to 100000")
        rd = d.get("report_dir")
        report_dir = None
        if rd not in (None, ""):
            report_dir = Path(str(rd)).expanduser()
            report_dir = report_dir if report_dir.is_absolute() else base / report_dir
        return cls(smoke_checks=tuple(checks), contacts=tuple(contacts), webhook_env=webhook_env,
                   webhook=Secret(hook_url) if hook_url else None,
                   webhook_timeout_s=_positive("system.webhook_timeout", d.get("webhook_timeout", cls.webhook_timeout_s)),
                   report_dir=report_dir, log_lines=log_lines)


@dataclasses.dataclass(frozen=True)
class DiagnoseSettings:
    """What ``doai-rollback diagnose`` checks (``diagnose:`` in the config file)."""

    # Scenario A: the environment variables the backend process needs (names only; values are
    # never read out, only whether they are set and not empty).
    backend_env: tuple[str, ...] = ()
    # Scenario C: the backend's Socket.IO endpoint as the agents reach it (Engine.IO handshake);
    # default: derived from the agents' doai_agent_socketio_* inventory variables when set.
    socketio_url: str | None = None
    log_lines: int = 200

    @classmethod
    def build(cls, data: Mapping[str, Any]) -> DiagnoseSettings:
        d = dict(data or {})
        known = {"backend_env", "socketio_url", "log_lines"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"diagnose.{min(unknown)}", "unknown setting", hint=f"known: {', '.join(sorted(known))}")
        names = _list("diagnose.backend_env", d.get("backend_env"))
        if not all(isinstance(n, str) and re.fullmatch(_ENV_NAME_RE, n) for n in names):
            raise ConfigError("diagnose.backend_env", "must be a list of environment variable names")
        log_lines = d.get("log_lines", cls.log_lines)
        if not isinstance(log_lines, int) or isinstance(log_lines, bool) or not 1 <= log_lines <= 100_000:
            raise ConfigError("diagnose.log_lines", "must be a whole number from 1 to 100000")
        sio = d.get("socketio_url")
        return cls(backend_env=tuple(names), socketio_url=_url("diagnose.socketio_url", sio) if sio else None,
                   log_lines=log_lines)


def _list(key: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list")
    return value


#: How to name the inventory: every way, so an operator (or a CI job) can pick theirs.
INVENTORY_HINT = ("pass --inventory PATH, export DOAI_INVENTORY=PATH, or set `inventory: PATH` in the config file "
                  "(./doai-rollback.yml or ~/.config/doai-rollback/config.yml); inventory/example is a template "
                  "to copy, used only when named")


@dataclasses.dataclass(frozen=True)
class Settings:
    config_path: Path | None
    inventory: Path | None  # None: no inventory configured (no part with hosts is configured)
    state_dir: Path
    content_dir: Path
    lock_ttl_s: float = 3600.0
    keep_artifacts: bool = False
    vercel: VercelSettings = dataclasses.field(default_factory=VercelSettings)
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    system: SystemSettings = dataclasses.field(default_factory=SystemSettings)
    diagnose: DiagnoseSettings = dataclasses.field(default_factory=DiagnoseSettings)
    state: StateSettings = dataclasses.field(default_factory=StateSettings)

    @property
    def snapshot_dir(self) -> Path:
        return self.database.snapshot_dir or self.state_dir / "snapshots"

    @property
    def report_dir(self) -> Path:
        return self.system.report_dir or self.state_dir / "reports"

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.jsonl"

    @property
    def locks_dir(self) -> Path:
        return self.state_dir / "locks"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    def require_inventory(self) -> Path:
        """The inventory, or exit 2 saying how to name one (before any host is contacted)."""
        if self.inventory is None:
            raise ConfigError("inventory", "no Ansible inventory is configured, so no host can be named",
                              hint=INVENTORY_HINT)
        return self.inventory

    def playbook(self, name: str) -> Path:
        return self.content_dir / "playbooks" / name

    def ensure_state_dir(self) -> Path:
        """Create the state dir 0700 (journal, locks, run logs are nobody else's business), or
        tighten ours when it is looser; refuse one that belongs to someone else."""
        try:
            # A symlinked state dir is the user's own choice; the target is what is checked.
            return ensure_private_dir(self.state_dir, parents=True, follow_symlinks=True)
        except UsageError as exc:
            raise ConfigError("state_dir", exc.message, hint=exc.hint) from None


def find_config(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError("--config", f"{p} does not exist")
        return p
    if env.get(CONFIG_ENV):
        p = Path(env[CONFIG_ENV]).expanduser()
        if not p.is_file():
            raise ConfigError(CONFIG_ENV, f"{p} does not exist")
        return p
    for name in CONFIG_NAMES:
        if Path(name).is_file():
            return Path(name)
    user = user_config(env)
    return user if user.is_file() else None


#: The user's config file, under $XDG_CONFIG_HOME (default ~/.config).
USER_CONFIG = ("doai-rollback", "config.yml")


def user_config(env: Mapping[str, str]) -> Path:
    return Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config").joinpath(*USER_CONFIG)


def config_search_order() -> tuple[str, ...]:
    """Where :func:`find_config` looks for the config file, first found wins, as ``--help`` and
    ``config show`` say it (built from the same constants, so the text follows the code)."""
    return ("--config", f"${CONFIG_ENV}", *(f"./{n}" for n in CONFIG_NAMES),
            f"$XDG_CONFIG_HOME/{'/'.join(USER_CONFIG)} (default ~/.config/{'/'.join(USER_CONFIG)})")


TOP_KEYS = {"inventory", "state_dir", "lock_ttl", "keep_artifacts", "vercel", "database", "system", "diagnose", "state"}


def load_settings(
    config: str | os.PathLike[str] | None = None,
    *,
    inventory: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    state_backend: str | None = None,
) -> Settings:
    """Build the settings: defaults < config file < environment < explicit arguments (flags)."""
    env = os.environ if env is None else env
    path = find_config(config, env)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(str(path), f"cannot be read: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(str(path), "must be a mapping of settings")
        unknown = set(loaded) - TOP_KEYS
        if unknown:
            raise ConfigError(min(unknown), "unknown setting", hint=f"known: {', '.join(sorted(TOP_KEYS))}")
        data = loaded
    base = path.parent if path is not None else Path.cwd()
    cdir = content_dir()

    def _path(value: Any, key: str) -> Path:
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise ConfigError(key, "must be a path")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p)

    # No default: the bundled inventory/example names example hosts, and a tool that fell back to
    # it would connect to them. It is read only when named, like any other inventory.
    inv: Path | None = None
    inv_value = inventory or env.get("DOAI_INVENTORY") or data.get("inventory")
    if inv_value:
        inv = _path(inv_value, "inventory") if not inventory else Path(inventory).expanduser().absolute()
        if not inv.exists():
            raise ConfigError("inventory", f"{inv} does not exist", hint=INVENTORY_HINT)

    sd_value = state_dir or env.get("DOAI_STATE_DIR") or data.get("state_dir")
    sd = (_path(sd_value, "state_dir") if sd_value else default_state_dir()).absolute()

    lock_ttl = _positive("lock_ttl", env.get("DOAI_LOCK_TTL") or data.get("lock_ttl", 3600))
    keep = data.get("keep_artifacts", False)
    if env.get("DOAI_KEEP_ARTIFACTS"):
        keep = env["DOAI_KEEP_ARTIFACTS"].lower() in ("1", "true", "yes")
    if not isinstance(keep, bool):
        raise ConfigError("keep_artifacts", "must be true or false")
    vercel = data.get("vercel") or {}
    if not isinstance(vercel, dict):
        raise ConfigError("vercel", "must be a mapping")
    return Settings(
        config_path=path,
        inventory=inv.absolute() if inv is not None else None,
        state_dir=sd,
        content_dir=cdir,
        lock_ttl_s=lock_ttl,
        keep_artifacts=keep,
        vercel=VercelSettings.build(vercel, env),
        database=DatabaseSettings.build(_mapping("database", data.get("database")), env, base),
        system=SystemSettings.build(_mapping("system", data.get("system")), env, base),
        diagnose=DiagnoseSettings.build(_mapping("diagnose", data.get("diagnose"))),
        state=StateSettings.build(_mapping("state", data.get("state")), env, state_backend),
    )


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a mapping")
    return value
