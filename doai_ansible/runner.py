"""The one ansible-runner wrapper every playbook run goes through.

- a fresh private data dir per run (mode 0700), removed afterwards unless artifacts are kept
  on purpose (``keep_artifacts``) for forensics;
- extra vars go to ``env/extravars`` in that dir, never on the command line, and may not hold
  a :class:`~doai_ansible.settings.Secret`; the child environment is an allow-list
  (:func:`child_env_allowed`: no secret-named variable, nothing Ansible does not need), since
  ansible-runner writes the whole environment into ``artifacts/*/command``;
- secrets a playbook needs travel only as answers to Ansible's own prompts (see
  :func:`run_playbook`'s ``secrets``): in memory, through the pseudo-terminal;
- SSH host keys are always checked; a targeted host whose inventory turns that off is
  reported in ``PlaybookRun.warnings``;
- events are streamed to a progress callback and reduced to per-host outcomes;
- custom stats (``ansible.builtin.set_stats``) are read back as the playbook's result;
- a failed run becomes a :class:`PlaybookError` naming the failed hosts and tasks.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from doai_ansible.ansible_plugins import COLLECTION, HOST_KEY_AUDIT, HOST_KEY_AUDIT_FILE_ENV
from doai_ansible.errors import PlaybookError, UsageError
from doai_ansible.secrets import scrub_here, url_has_password
from doai_ansible.settings import Secret, Settings, ensure_private_dir, is_secret_env_name

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], None]

# Ansible's SSH retry sleeps 2**n - 1 s after the n-th failed try (n = 0, 1, ...): 0, 1, 3, 7 s.
# 4 retries (5 tries) span 0 + 1 + 3 + 7 = 11 s, which bridges a ~5 s outage (an sshd restart,
# a network blip); 3 retries would give up after 4 s. A host that is really down costs 11 s more.
SSH_RETRIES = 4
# ServerAlive: a connection that hears nothing for 15 s is probed; 4 unanswered probes (60 s)
# declare the peer dead. A shorter drop keeps the session (and the ControlMaster) alive instead
# of failing the task, and the probes keep NAT/firewall state fresh. Same as ansible.cfg.
SSH_ARGS = "-o ControlMaster=auto -o ControlPersist=120s -o ServerAliveInterval=15 -o ServerAliveCountMax=4"

# The secret channel (see run_playbook): the key of the connection password (ansible -k),
# and the prompt text a playbook's vars_prompt must use for any other secret.
CONNECTION_PASSWORD = "connection_password"
SECRET_PROMPT = "doai secret {name}"
_SECRET_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Ansible prints its prompt and waits, so a prompt is the end of what was read (pexpect compiles
# these with re.M; finished output lines end in "\r\n", so "$" can only match a waiting prompt).
_CONNECTION_PASSWORD_PATTERN = r"SSH password: ?$"


@dataclasses.dataclass
class HostFailure:
    host: str
    task: str
    message: str
    unreachable: bool = False
    flags: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PlaybookRun:
    playbook: str
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    rc: int
    stats: dict[str, dict[str, int]]  # per stat name -> host -> count
    custom: dict[str, Any]  # set_stats data (aggregated, not per host)
    failures: list[HostFailure]
    hosts: list[str]
    log_file: Path | None
    artifacts: Path | None
    # Things the operator should know although the run may have succeeded, e.g.
    # "host X: SSH host key checking is OFF (inventory variable ansible_host_key_checking)".
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0

    def read_failures(self, key: str) -> dict[str, str]:
        """host -> ``": <why>"`` for the whole-system checklist's reads that failed in a plan's run:
        the roles report a read's cause under the stats key ``<key>_error`` (the capture's and
        the observe's ``read_along``), next to ``key`` where a read that worked reports."""
        causes = (self.custom.get(f"{key}_error") or {}).items()
        return {str(h): ": " + scrub_here(str(why).strip().splitlines()[0][:300]) for h, why in causes if str(why).strip()}

    def failed_hosts(self) -> dict[str, str]:
        return {f.host: f"{f.task}: {f.message}" for f in self.failures if not f.unreachable}

    def unreachable_hosts(self) -> list[str]:
        return sorted({f.host for f in self.failures if f.unreachable})

    def error(self, what: str) -> PlaybookError:
        parts = [f"{h} failed at {t}" for h, t in self.failed_hosts().items()]
        parts += [f"{h} unreachable" for h in self.unreachable_hosts()]
        detail = "; ".join(parts) or f"ansible-runner status {self.status}, rc {self.rc}"
        return PlaybookError(
            f"{what}: {detail}",
            failed_hosts=self.failed_hosts(),
            unreachable_hosts=self.unreachable_hosts(),
            hint=f"full log: {self.log_file}" if self.log_file else None,
        )


# Result keys our modules set to say why they failed (see plugins/modules).
_FLAGS = ("invalid_target", "no_target", "locked", "unhealthy", "drifted", "dirty_tree", "unknown_app", "bad_path",
          "pm2_unavailable")


def _short_message(res: Mapping[str, Any]) -> str:
    msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
    if not msg and res.get("rc") not in (None, 0):
        msg = f"exit code {res.get('rc')}"
    msg = str(msg).strip().splitlines()
    return (msg[-1] if msg else "failed")[:500]


# -- progress: the task names worth a line ---------------------------------------------------------

# Bookkeeping, not work on a host: never a progress line of their own (a failure still shows).
QUIET_ACTIONS = frozenset({
    "validate_argument_spec",  # "Validating arguments against arg spec ...", from meta/argument_specs.yml
    "meta", "set_fact", "set_stats", "include_vars", "assert", "debug",
    "include_tasks", "import_tasks", "include_role", "import_role",
})
# A result that shows a task did run on a host (not skipped).
_RAN = frozenset({"runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_async_poll",
                  "runner_on_async_ok", "runner_on_async_failed", "runner_retry", "runner_item_on_ok",
                  "runner_item_on_failed"})


def _action(data: Mapping[str, Any]) -> str:
    action = str(data.get("resolved_action") or data.get("task_action") or "")
    return action.rsplit(".", 1)[-1]


class TaskProgress:
    """ansible-runner events passed on to a progress handler, with a task's name only when it
    means something: never for bookkeeping (:data:`QUIET_ACTIONS`), and only once a host ran the
    task, so a task every host skipped (the apply steps of a plan, "Release the host lock" when the
    record released it) is not announced as if it ran. ``at_start``: task actions announced as
    soon as they start (long work on the host: the name says what the wait is for), except in a
    check run, where every task waits for its first result.
    """

    def __init__(self, progress: EventHandler, *, check: bool = False, at_start: Callable[[str], bool] | None = None) -> None:
        self.progress = progress
        self.check = check
        self.at_start = at_start or (lambda action: False)
        self.held: dict[str, dict[str, Any]] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind == "playbook_on_task_start":
            action = _action(data)
            if action in QUIET_ACTIONS:
                return
            if not self.check and self.at_start(action):
                self.progress(event)
            else:
                self.held[str(data.get("task_uuid"))] = event
            return
        if kind in _RAN:
            held = self.held.pop(str(data.get("task_uuid")), None)
            if held is not None:
                self.progress(held)
        self.progress(event)


def task_progress(progress: EventHandler | None, *, check: bool = False,
                  at_start: Callable[[str], bool] | None = None) -> EventHandler | None:
    """:class:`TaskProgress` around ``progress`` (None stays None)."""
    return None if progress is None else TaskProgress(progress, check=check, at_start=at_start)


# -- the Ansible configuration -----------------------------------------------------------------


def control_path_dir(settings: Settings) -> Path:
    """Where SSH keeps its ControlMaster sockets: under the state dir, or, when that path is too
    long for a unix socket, a per-user directory in the temp dir that is checked before use
    (ours, not a symlink, 0700): anyone who can reach a socket there can use our SSH sessions."""
    cp_dir = settings.state_dir / "cp"
    if len(str(cp_dir)) > 50:  # unix socket paths are short; %C adds 40 characters
        return ensure_private_dir(Path(tempfile.gettempdir()) / f"doai-cp-{os.getuid()}")
    settings.ensure_state_dir()
    return ensure_private_dir(cp_dir)


def _joined(name: str, ours: str, sep: str) -> str:
    """Ours, after what the caller's environment already has (their own plugins keep working)."""
    theirs = [v for v in os.environ.get(name, "").split(sep) if v and v != ours]
    return sep.join([*theirs, ours])


def collections_dir(settings: Settings, private_dir: Path) -> Path:
    """A collections path in which ``ansible_collections/doai/rollback`` is the content dir
    (the collection the roles and playbooks call their modules and plugins from by FQCN).

    The repository carries that link (collections/, the path its ansible.cfg names);
    the wheel cannot (``_content`` has no symlinks), nor may a DOAI_CONTENT_DIR have it: then the
    link is made in this run's private dir.
    """
    namespace, name = COLLECTION.split(".")
    ours = settings.content_dir / "collections"
    link = ours / "ansible_collections" / namespace / name
    if link.is_dir() and link.resolve() == settings.content_dir.resolve():
        return ours
    made = private_dir / "collections"
    (made / "ansible_collections" / namespace).mkdir(parents=True, exist_ok=True, mode=0o700)
    target = made / "ansible_collections" / namespace / name
    if not target.is_symlink():
        target.symlink_to(settings.content_dir.resolve(), target_is_directory=True)
    return made


def _collections_path(ours: Path) -> str:
    """Ours first (an other doai.rollback the caller installed does not replace this package's),
    then the caller's, then Ansible's defaults (collections installed with ansible-galaxy); the
    Python path's ansible_collections (``pip install ansible``) Ansible searches in any case."""
    home = os.environ.get("ANSIBLE_HOME") or "~/.ansible"
    paths = [str(ours)]
    for value in (os.environ.get("ANSIBLE_COLLECTIONS_PATH", ""), f"{home}/collections:/usr/share/ansible/collections"):
        paths += [p for p in value.split(os.pathsep) if p and p not in paths]
    return os.pathsep.join(paths)


def ansible_env(settings: Settings, private_dir: Path) -> dict[str, str]:
    """The Ansible settings every run uses (the same as the repo's ansible.cfg)."""
    return {
        "ANSIBLE_ROLES_PATH": str(settings.content_dir / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": _collections_path(collections_dir(settings, private_dir)),
        "ANSIBLE_PIPELINING": "True",
        # ansible-runner turns host key checking off unless the environment sets it.
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_ARGS": SSH_ARGS,
        "ANSIBLE_SSH_RETRIES": str(SSH_RETRIES),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_path_dir(settings)),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_LOCAL_TEMP": str(private_dir / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_SYSTEM_WARNINGS": "False",
        "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "True",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml",
        "ANSIBLE_TIMEOUT": "15",
        # The host key audit: the collection's callback, in this process tree, no extra process, no per-task work.
        "ANSIBLE_CALLBACKS_ENABLED": _joined("ANSIBLE_CALLBACKS_ENABLED", HOST_KEY_AUDIT, ","),
        HOST_KEY_AUDIT_FILE_ENV: str(_audit_file(private_dir)),
    }


# The child environment is an allow-list: these names of the caller's environment (and ANSIBLE_*),
# never a secret-named one nor a value with a password in a URL (a proxy's); ansible-runner's own
# variables; and ansible_env's. Credentials for the hosts travel as prompts' answers (run_playbook).
CHILD_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "TERM",
    # SSH keys in an agent; Kerberos for WinRM; CA bundles for WinRM over HTTPS; proxies.
    "SSH_AUTH_SOCK", "KRB5CCNAME", "KRB5_CONFIG", "KRB5_KTNAME", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE",
    "SSL_CERT_DIR", "CURL_CA_BUNDLE", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
    "NO_PROXY", "VIRTUAL_ENV",
})
CHILD_ENV_PREFIXES = ("LC_", "ANSIBLE_")
RUNNER_ENV = frozenset({
    "AWX_ISOLATED_DATA_DIR", "AWX_LIB_DIRECTORY", "RUNNER_OMIT_EVENTS", "RUNNER_ONLY_FAILED_EVENTS",
    "ORIGINAL_STDOUT_CALLBACK", "AD_HOC_COMMAND_ID", "JOB_ID", "PROJECT_UPDATE_ID", "MAX_EVENT_RES",
})


def child_env_allowed(name: str, value: str) -> bool:
    """Whether a variable of the caller's environment may reach Ansible (ansible-playbook,
    ansible-inventory): allow-listed by name, not secret-named, no password in a URL."""
    if is_secret_env_name(name) or url_has_password(value):
        return False
    return name in CHILD_ENV or name.startswith(CHILD_ENV_PREFIXES)


def child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of ``environ`` (default: this process's environment)."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if child_env_allowed(k, v)}


def _audit_file(private_dir: Path) -> Path:
    return private_dir / "doai" / "host-key-audit.json"


def ansible_playbook_bin() -> str:
    """ansible-playbook of this interpreter's environment (a venv need not be on PATH)."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if not found:
        raise UsageError("ansible-playbook not found", hint="install ansible-core in this environment")
    return found


# -- inputs: extra vars and secrets ---------------------------------------------------------------


def _check_no_secrets(value: Any, path: str = "extravars") -> None:
    if isinstance(value, Secret):
        raise UsageError(f"internal: a secret was passed as {path}; secrets must not reach ansible-runner files")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_no_secrets(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_no_secrets(v, f"{path}[{i}]")


def secret_prompt(name: str) -> str:
    """The ``prompt:`` a playbook's ``vars_prompt`` entry ``name`` must have to receive ``secrets[name]``."""
    return SECRET_PROMPT.format(name=name)


def _prompt_answers(secrets: Mapping[str, Secret] | None) -> dict[str, str]:
    """ansible-runner ``passwords``: prompt pattern -> answer, typed into Ansible's terminal."""
    answers: dict[str, str] = {}
    for name, secret in (secrets or {}).items():
        if not isinstance(secret, Secret):
            raise UsageError(f"internal: secrets[{name!r}] must be a Secret, not {type(secret).__name__}")
        value = secret.reveal()
        if "\n" in value or "\r" in value:
            raise UsageError(f"secret {name!r} holds a line break; it cannot be typed at a prompt")
        if name == CONNECTION_PASSWORD:
            answers[_CONNECTION_PASSWORD_PATTERN] = value
        elif _SECRET_NAME_RE.fullmatch(name):
            # Also answers `confirm: true`, whose second prompt is "confirm <prompt>: ".
            answers[re.escape(secret_prompt(name)) + r": ?$"] = value
        else:
            raise UsageError(f"secret name {name!r} is not a variable name", hint="use letters, digits and _")
    return answers


def _cmdline(*, check: bool, diff: bool, ask_pass: bool) -> str | None:
    args = [flag for flag, on in (("--check", check), ("--diff", diff), ("--ask-pass", ask_pass)) if on]
    return " ".join(args) or None


# -- one run, step by step --------------------------------------------------------------------


def _resolve_playbook(settings: Settings, playbook: str) -> Path:
    path = Path(playbook) if Path(playbook).is_absolute() else settings.playbook(playbook)
    if not path.is_file():
        raise UsageError(f"playbook {path} not found", hint="is DOAI_CONTENT_DIR right?")
    return path


def _prepare_private_dir(extravars: Mapping[str, Any]) -> Path:
    """A fresh 0700 private data dir; extra vars in ``env/extravars`` (0600), never on a command line."""
    private = Path(tempfile.mkdtemp(prefix="doai-runner-"))
    os.chmod(private, 0o700)
    for sub in ("env", "tmp", "doai"):
        (private / sub).mkdir(mode=0o700)
    if extravars:
        fd = os.open(private / "env" / "extravars", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(extravars, fh)
    return private


def _runner_config(
    settings: Settings,
    private: Path,
    path: Path,
    *,
    limit: str | None,
    cmdline: str | None,
    timeout_s: int | None,
    answers: dict[str, str],
    forks: int | None = None,
) -> Any:
    """A prepared ansible-runner config: our Ansible settings, no secrets in the environment."""
    import ansible_runner  # heavy import, only when a playbook runs

    config = ansible_runner.RunnerConfig(
        private_data_dir=str(private),
        playbook=str(path),
        inventory=str(settings.require_inventory()),  # never a default: exit 2 naming the ways to set one
        limit=limit,
        cmdline=cmdline,
        envvars=ansible_env(settings, private),
        passwords=answers,  # kept in memory: ansible-runner types them at the prompts
        quiet=True,
        suppress_ansible_output=True,
        ident="run",
        rotate_artifacts=1,
        timeout=timeout_s,
        project_dir=str(path.parent),
        forks=forks,  # None: Ansible's own (ansible.cfg, ANSIBLE_FORKS, else 5)
        # No facts are gathered or cached: ansible-runner's default (a jsonfile cache in the
        # artifacts) loaded a cache plugin in every run and warned that its folder was not set.
        fact_cache_type="memory",
    )
    # ansible-runner runs `ansible-playbook` from PATH: put this environment's first,
    # so a venv that is not activated still runs its own ansible-core.
    bindir = str(Path(ansible_playbook_bin()).parent)
    config.envvars["PATH"] = bindir + os.pathsep + os.environ.get("PATH", os.defpath)
    config.prepare()
    config.pexpect_timeout = STOP_CHECK_S  # how often the cancel callback is asked (default 5 s)
    # ansible-runner seeds the child's environment with ours: keep only what Ansible needs.
    ours = set(config.envvars) | {k for k in config.env if k in RUNNER_ENV}
    dropped = sorted(k for k in config.env if not (k in ours and not is_secret_env_name(k))
                     and not child_env_allowed(k, config.env[k]))
    for k in dropped:
        del config.env[k]
    if dropped:
        log.debug("left %d variable(s) out of the ansible environment", len(dropped))
    return config


#: Set when the command is interrupted (SIGINT, SIGTERM) while it only reads (a plan, a status):
#: every playbook at work is stopped at its next check (its process group killed), within
#: STOP_CHECK_S. Never set during an apply: the engine defers signals there (the step at work
#: finishes, or puts itself back).
STOP_READS = threading.Event()
STOP_CHECK_S = 0.5
#: A stop of its own for the playbook runs made in this context (a thread's, and what it hands
#: on: :func:`doai_ansible.engine.in_parallel` runs each call in a copy): the whole-system
#: checklist's reads started during an apply (:class:`doai_ansible.system.EarlyReads`), which
#: STOP_READS must not serve, as it would stop the apply's playbooks too.
READ_STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("doai_read_stop", default=None)


class _EventReducer:
    """ansible-runner's event handler: reduces the events to per-host outcomes and stats, passes
    each on to the caller's progress handler, and stops a run that waits for a secret it was
    not given (it would wait at the prompt until the timeout)."""

    def __init__(self, *, keep_events: bool, on_event: EventHandler | None, secrets: Mapping[str, Secret]) -> None:
        self.keep_events = keep_events
        self.on_event = on_event
        self.secret_names = frozenset(secrets) - {CONNECTION_PASSWORD}
        self.failures: list[HostFailure] = []
        self.hosts: set[str] = set()
        self.custom: dict[str, Any] = {}
        self.stats: dict[str, dict[str, int]] = {}
        self.prompt_problem: str | None = None
        self.read_stop = READ_STOP.get()  # the caller's, here: the callback runs in ansible-runner's loop

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {}) or {}
        host = data.get("host")
        if host:
            self.hosts.add(host)
        if kind == "runner_on_failed" and not data.get("ignore_errors"):
            res = data.get("res", {}) or {}
            flags = {k: res[k] for k in _FLAGS if k in res}
            self.failures.append(HostFailure(host or "?", data.get("task", "?"), _short_message(res), False, flags))
        elif kind == "runner_on_unreachable":
            self.failures.append(
                HostFailure(host or "?", data.get("task", "?"), _short_message(data.get("res", {})), True)
            )
        elif kind == "playbook_on_stats":
            self.custom.update(data.get("artifact_data") or {})
            for name in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored"):
                self.stats[name] = dict(data.get(name) or {})
                self.hosts.update(self.stats[name])
        elif kind == "playbook_on_vars_prompt":
            self._check_prompt(data)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a display problem must never break a rollback
                log.debug("progress handler failed", exc_info=True)
        # Keep job events on disk only when artifacts are kept for forensics.
        return self.keep_events

    def _check_prompt(self, data: Mapping[str, Any]) -> None:
        name, prompt = data.get("varname"), data.get("prompt")
        if name not in self.secret_names:
            self.prompt_problem = (
                f"the playbook asks for {name!r} (vars_prompt) and no secret of that name was given"
            )
        elif prompt != secret_prompt(name):
            self.prompt_problem = (
                f"the playbook asks for secret {name!r} with prompt {prompt!r}; "
                f"it must be {secret_prompt(name)!r} (and have no default)"
            )

    def cancel(self) -> bool:
        """ansible-runner's cancel callback: a prompt nobody may answer, or an interrupt (of every
        read, or of the reads of this run's context)."""
        return (self.prompt_problem is not None or STOP_READS.is_set()
                or (self.read_stop is not None and self.read_stop.is_set()))


def _collect_outputs(
    settings: Settings, private: Path, artifact_dir: Path, playbook: str, log_dir: Path | None
) -> tuple[Path | None, Path | None]:
    """Copy the run's stdout to the log bundle (0600), and the whole private dir when artifacts
    are kept for forensics: the private dir itself is removed after every run. A second run of
    the same playbook into the same folder (the whole-system checks after the change re-run a
    part's plan) gets the next free name, ``<playbook>-2.log``: a log already there is evidence
    and is never overwritten (the names are taken with O_EXCL, so runs side by side agree)."""
    if log_dir is None:
        return None, None
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stdout = artifact_dir / "stdout"
    base, n = Path(playbook).stem, 1
    while True:
        stem = base if n == 1 else f"{base}-{n}"
        log_file = log_dir / f"{stem}.log" if stdout.exists() else None
        artifacts = log_dir / f"{stem}-runner" if settings.keep_artifacts else None
        try:
            if artifacts is not None:
                os.mkdir(artifacts, 0o700)
            if log_file is not None:
                try:
                    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    if artifacts is not None:
                        os.rmdir(artifacts)
                    raise
        except FileExistsError:
            n += 1
            continue
        break
    if log_file is not None:
        with os.fdopen(fd, "wb") as out, open(stdout, "rb") as src:
            shutil.copyfileobj(src, out)
    if artifacts is not None:
        shutil.copytree(private, artifacts, symlinks=True, dirs_exist_ok=True)
    return log_file, artifacts


def _host_key_warnings(private: Path) -> list[str]:
    """What the host key audit callback found (nothing when the run stopped before a play)."""
    try:
        found = json.loads(_audit_file(private).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        log.debug("unreadable host key audit", exc_info=True)
        return ["the SSH host key audit could not be read; check the inventory for ansible_host_key_checking"]
    warnings = [w for host in sorted(found.get("hosts", {})) for w in found["hosts"][host]]
    for w in warnings:
        log.info("%s", w)  # the caller shows run warnings once, with the result
    return warnings


def run_playbook(
    settings: Settings,
    playbook: str,
    *,
    extravars: Mapping[str, Any] | None = None,
    limit: str | None = None,
    check: bool = False,
    diff: bool = False,
    log_dir: Path | None = None,
    on_event: EventHandler | None = None,
    timeout_s: int | None = None,
    secrets: Mapping[str, Secret] | None = None,
    forks: int | None = None,
) -> PlaybookRun:
    """Run one playbook through ansible-runner and reduce what happened to a :class:`PlaybookRun`.

    A failed playbook is a result (``run.ok`` is False), not an exception: callers decide
    what a failure means for their part.

    ``secrets`` reach Ansible only as answers typed at its own prompts (never in extra vars,
    the environment, a file or a command line):

    - ``secrets["connection_password"]``: the connection password (``--ask-pass``; SSH, and
      WinRM's password too);
    - ``secrets[name]``: the value of the playbook's ``vars_prompt`` variable ``name``, which
      must be declared with ``prompt: "doai secret <name>"`` (see :func:`secret_prompt`),
      ``private: true`` and no ``default``; the tasks that use it need ``no_log: true``.

    A playbook that prompts for a variable not in ``secrets`` is stopped (UsageError) rather
    than left waiting at the prompt.
    """
    path = _resolve_playbook(settings, playbook)
    settings.require_inventory()  # no inventory configured: exit 2 before anything is prepared
    extravars = dict(extravars or {})
    _check_no_secrets(extravars)
    secrets = dict(secrets or {})
    answers = _prompt_answers(secrets)
    reducer = _EventReducer(keep_events=settings.keep_artifacts, on_event=on_event, secrets=secrets)

    import ansible_runner  # heavy import, only when a playbook runs

    private = _prepare_private_dir(extravars)
    try:
        config = _runner_config(
            settings, private, path, limit=limit, timeout_s=timeout_s, answers=answers,
            cmdline=_cmdline(check=check, diff=diff, ask_pass=CONNECTION_PASSWORD in secrets), forks=forks,
        )
        runner = ansible_runner.Runner(config=config, event_handler=reducer, cancel_callback=reducer.cancel)
        log.debug("running %s (check=%s, limit=%s)", playbook, check, limit)
        runner.run()
        status, rc = runner.status, runner.rc if runner.rc is not None else -1
        log_file, artifacts = _collect_outputs(settings, private, Path(config.artifact_dir), playbook, log_dir)
        warnings = _host_key_warnings(private)
    finally:
        shutil.rmtree(private, ignore_errors=True)

    if reducer.prompt_problem:
        raise UsageError(reducer.prompt_problem, hint="pass it in run_playbook(secrets=...)")
    return PlaybookRun(
        playbook=playbook,
        status=status,
        rc=rc,
        stats=reducer.stats,
        custom=reducer.custom,
        failures=reducer.failures,
        hosts=sorted(reducer.hosts),
        log_file=log_file,
        artifacts=artifacts,
        warnings=warnings,
    )
