"""The one ansible-runner wrapper every playbook run goes through.

- a fresh private data dir per run (mode 0700), removed afterwards unless artifacts are kept
  on purpose (``keep_artifacts``) for forensics;
- extra vars go to ``env/extravars`` in that dir, never on the command line, and may not hold
  a :class:`~doai_ansible.settings.Secret`; secret-named variables are scrubbed from the child
  environment (ansible-runner writes the whole environment into ``artifacts/*/command``);
- events are streamed to a progress callback and reduced to per-host outcomes;
- custom stats (``ansible.builtin.set_stats``) are read back as the playbook's result;
- a failed run becomes a :class:`PlaybookError` naming the failed hosts and tasks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from doai_ansible.errors import PlaybookError, UsageError
from doai_ansible.settings import Secret, Settings, is_secret_env_name

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], None]


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

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0

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


# Result keys our modules set to say why they failed (see roles/*/library).
_FLAGS = ("invalid_target", "no_target", "locked", "unhealthy")


def _short_message(res: Mapping[str, Any]) -> str:
    msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
    if not msg and res.get("rc") not in (None, 0):
        msg = f"exit code {res.get('rc')}"
    msg = str(msg).strip().splitlines()
    return (msg[-1] if msg else "failed")[:500]


def ansible_env(settings: Settings, private_dir: Path) -> dict[str, str]:
    """The Ansible settings every run uses (the same as the repo's ansible.cfg)."""
    cp_dir = settings.state_dir / "cp"
    if len(str(cp_dir)) > 50:  # unix socket paths are short; %C adds 40 characters
        cp_dir = Path(tempfile.gettempdir()) / f"doai-cp-{os.getuid()}"
    cp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return {
        "ANSIBLE_ROLES_PATH": str(settings.content_dir / "roles"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=120s -o ServerAliveInterval=15",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp_dir),
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
    }


def ansible_playbook_bin() -> str:
    """ansible-playbook of this interpreter's environment (a venv need not be on PATH)."""
    import sys

    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if not found:
        raise UsageError("ansible-playbook not found", hint="install ansible-core in this environment")
    return found


def _check_no_secrets(value: Any, path: str = "extravars") -> None:
    if isinstance(value, Secret):
        raise UsageError(f"internal: a secret was passed as {path}; secrets must not reach ansible-runner files")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_no_secrets(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_no_secrets(v, f"{path}[{i}]")


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
) -> PlaybookRun:
    """Run one playbook through ansible-runner and reduce what happened to a :class:`PlaybookRun`.

    A failed playbook is a result (``run.ok`` is False), not an exception: callers decide
    what a failure means for their part.
    """
    import ansible_runner  # heavy import, only when a playbook runs

    path = Path(playbook) if Path(playbook).is_absolute() else settings.playbook(playbook)
    if not path.is_file():
        raise UsageError(f"playbook {path} not found", hint="is DOAI_CONTENT_DIR right?")
    extravars = dict(extravars or {})
    _check_no_secrets(extravars)

    private = Path(tempfile.mkdtemp(prefix="doai-runner-"))
    os.chmod(private, 0o700)
    (private / "env").mkdir(mode=0o700)
    (private / "tmp").mkdir(mode=0o700)
    if extravars:
        xv = private / "env" / "extravars"
        fd = os.open(xv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(extravars, fh)

    cmdline = []
    if check:
        cmdline.append("--check")
    if diff:
        cmdline.append("--diff")

    failures: list[HostFailure] = []
    hosts: set[str] = set()
    custom: dict[str, Any] = {}
    stats: dict[str, dict[str, int]] = {}

    def handler(event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {}) or {}
        host = data.get("host")
        if host:
            hosts.add(host)
        if kind == "runner_on_failed" and not data.get("ignore_errors"):
            res = data.get("res", {}) or {}
            flags = {k: res[k] for k in _FLAGS if k in res}
            failures.append(HostFailure(host, data.get("task", "?"), _short_message(res), False, flags))
        elif kind == "runner_on_unreachable":
            failures.append(HostFailure(host, data.get("task", "?"), _short_message(data.get("res", {})), True))
        elif kind == "playbook_on_stats":
            custom.update(data.get("artifact_data") or {})
            for name in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored"):
                stats[name] = dict(data.get(name) or {})
                hosts.update(stats[name])
        if on_event is not None:
            try:
                on_event(event)
            except Exception:  # a display problem must never break a rollback
                log.debug("progress handler failed", exc_info=True)
        # Keep job events on disk only when artifacts are kept for forensics.
        return settings.keep_artifacts

    log_file = None
    artifacts = None
    try:
        rc_cfg = ansible_runner.RunnerConfig(
            private_data_dir=str(private),
            playbook=str(path),
            inventory=str(settings.inventory),
            limit=limit,
            cmdline=" ".join(cmdline) or None,
            envvars=ansible_env(settings, private),
            quiet=True,
            suppress_ansible_output=True,
            ident="run",
            rotate_artifacts=1,
            timeout=timeout_s,
            project_dir=str(path.parent),
        )
        # ansible-runner runs `ansible-playbook` from PATH: put this environment's first,
        # so a venv that is not activated still runs its own ansible-core.
        bindir = str(Path(ansible_playbook_bin()).parent)
        rc_cfg.envvars["PATH"] = bindir + os.pathsep + os.environ.get("PATH", os.defpath)
        rc_cfg.prepare()
        scrubbed = sorted(k for k in rc_cfg.env if is_secret_env_name(k))
        for k in scrubbed:
            del rc_cfg.env[k]
        if scrubbed:
            log.debug("scrubbed %d secret variable(s) from the ansible environment", len(scrubbed))
        runner = ansible_runner.Runner(config=rc_cfg, event_handler=handler)
        log.debug("running %s (check=%s, limit=%s)", playbook, check, limit)
        runner.run()
        status, rc = runner.status, runner.rc if runner.rc is not None else -1
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            stdout = Path(rc_cfg.artifact_dir) / "stdout"
            if stdout.exists():
                log_file = log_dir / f"{Path(playbook).stem}.log"
                shutil.copyfile(stdout, log_file)
                os.chmod(log_file, 0o600)
            if settings.keep_artifacts:
                artifacts = log_dir / f"{Path(playbook).stem}-runner"
                shutil.copytree(private, artifacts, symlinks=True)
    finally:
        shutil.rmtree(private, ignore_errors=True)

    return PlaybookRun(
        playbook=playbook,
        status=status,
        rc=rc,
        stats=stats,
        custom=custom,
        failures=failures,
        hosts=sorted(hosts),
        log_file=log_file,
        artifacts=artifacts,
    )
