"""The ansible-runner wrapper on local-connection playbooks: results, failures, secrets, SSH settings."""

from __future__ import annotations

import configparser
import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from doai_ansible.errors import UsageError
from doai_ansible.runner import CONNECTION_PASSWORD, ansible_env, control_path_dir, run_playbook, secret_prompt
from doai_ansible.settings import Secret, load_settings
from tests.conftest import CANARY

PLAYBOOK = """
- name: Probe
  hosts: all
  gather_facts: false
  tasks:
    - name: Read the environment the way a careless task would
      ansible.builtin.debug:
        msg: "token=[{{ lookup('ansible.builtin.env', 'VERCEL_TOKEN', default='') }}] pw=[{{ lookup('ansible.builtin.env', 'SOME_PASSWORD', default='') }}]"
    - name: Report
      ansible.builtin.set_stats:
        data: "{{ {'probe': {inventory_hostname: {'word': word}}} }}"
    - name: Fail when asked
      ansible.builtin.fail:
        msg: "asked to fail on {{ inventory_hostname }}"
      when: fail_on == inventory_hostname
"""


@pytest.fixture
def settings(tmp_path, monkeypatch):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    h1: {ansible_connection: local}\n    h2: {ansible_connection: local}\n"
                   "  vars: {ansible_python_interpreter: " + os.sys.executable + "}\n")
    pb = tmp_path / "probe.yml"
    pb.write_text(PLAYBOOK)
    monkeypatch.setenv("VERCEL_TOKEN", CANARY)
    monkeypatch.setenv("SOME_PASSWORD", CANARY)
    monkeypatch.setenv("DOAI_KEEP_ARTIFACTS", "1")
    return load_settings(None, inventory=inv, state_dir=tmp_path / "state"), pb


def test_results_and_failures(settings, tmp_path):
    s, pb = settings
    run = run_playbook(s, str(pb), extravars={"word": "hi", "fail_on": "h2"}, log_dir=tmp_path / "logs")
    assert not run.ok and run.status == "failed"
    assert run.custom["probe"] == {"h1": {"word": "hi"}, "h2": {"word": "hi"}}
    assert run.failed_hosts() == {"h2": "Fail when asked: asked to fail on h2"}
    err = run.error("probe")
    assert "h2 failed at Fail when asked" in str(err) and err.failed_hosts == run.failed_hosts()
    assert run.log_file and run.log_file.exists()


def test_secrets_stay_out_of_artifacts_and_logs(settings, tmp_path):
    s, pb = settings
    run = run_playbook(s, str(pb), extravars={"word": "w", "fail_on": "none"}, log_dir=tmp_path / "logs")
    assert run.ok
    files = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    assert any(p.name == "command" for p in files)  # ansible-runner's dump of its environment
    assert any("job_events" in str(p) for p in files)
    for p in files:
        assert CANARY not in p.read_text(errors="replace"), p
    assert "token=[]" in run.log_file.read_text()


def test_a_second_run_into_the_same_folder_keeps_the_first_runs_log(settings, tmp_path, monkeypatch):
    """The whole-system checks after the change re-run a part's plan into the plan's folder: the
    first run's log and artifacts are evidence (they were overwritten, and a kept artifacts folder
    made the checks fail with FileExistsError). Both runs side by side too: each its own name."""
    s, pb = settings
    logs = tmp_path / "logs"
    first = run_playbook(s, str(pb), extravars={"word": "first", "fail_on": "none"}, log_dir=logs)
    second = run_playbook(s, str(pb), extravars={"word": "second", "fail_on": "none"}, log_dir=logs)
    assert first.ok and second.ok
    assert first.log_file == logs / "probe.log" and second.log_file == logs / "probe-2.log"
    assert first.artifacts == logs / "probe-runner" and second.artifacts == logs / "probe-2-runner"
    assert "first" in (first.artifacts / "env" / "extravars").read_text()
    assert "second" in (second.artifacts / "env" / "extravars").read_text()
    assert stat.S_IMODE(second.log_file.stat().st_mode) == 0o600
    out: list = []
    threads = [threading.Thread(target=lambda w=w: out.append(run_playbook(
        s, str(pb), extravars={"word": w, "fail_on": "none"}, log_dir=logs))) for w in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.log_file.name for r in out) == ["probe-3.log", "probe-4.log"]
    monkeypatch.setenv("DOAI_KEEP_ARTIFACTS", "0")  # without kept artifacts, the logs alone
    plain = run_playbook(load_settings(None, inventory=s.inventory, state_dir=s.state_dir), str(pb),
                         extravars={"word": "w", "fail_on": "none"}, log_dir=logs)
    assert plain.log_file == logs / "probe-5.log" and plain.artifacts is None
    assert sorted(p.name for p in logs.glob("*.log")) == sorted(f"probe{n}.log" for n in ("", "-2", "-3", "-4", "-5"))


def test_private_dir_is_removed(settings, tmp_path, monkeypatch):
    import tempfile

    s, pb = settings
    monkeypatch.setenv("DOAI_KEEP_ARTIFACTS", "0")
    base = tmp_path / "tmpbase"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    run_playbook(load_settings(None, inventory=s.inventory, state_dir=s.state_dir), str(pb),
                 extravars={"word": "w", "fail_on": "none"})
    assert [p.name for p in base.iterdir() if p.name.startswith("doai-runner-")] == []


def test_secret_in_extravars_is_refused(settings):
    s, pb = settings
    with pytest.raises(UsageError, match="secret"):
        run_playbook(s, str(pb), extravars={"nested": {"x": Secret("v")}})


def test_missing_playbook(settings):
    s, _ = settings
    with pytest.raises(UsageError, match="not found"):
        run_playbook(s, "no-such.yml")


# -- SSH settings ---------------------------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "runner"
ROOT = Path(__file__).resolve().parents[2]


def test_ansible_cfg_and_runner_agree_on_ssh(tmp_path):
    """The repo's ansible.cfg (plain ansible-playbook) and ansible_env (the CLI) stay in step."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "ansible.cfg")
    env = ansible_env(load_settings(None, inventory=FIXTURES / "hosts.yml", state_dir=tmp_path / "s", env={}), tmp_path)
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True" and cfg.getboolean("defaults", "host_key_checking")
    assert env["ANSIBLE_SSH_ARGS"] == cfg.get("ssh_connection", "ssh_args")
    assert "ServerAliveInterval=" in env["ANSIBLE_SSH_ARGS"] and "ServerAliveCountMax=" in env["ANSIBLE_SSH_ARGS"]
    retries = int(env["ANSIBLE_SSH_RETRIES"])
    assert retries == cfg.getint("ssh_connection", "retries")
    # Ansible sleeps 2**n - 1 s after the n-th failed try: the backoff must outlast a 5 s outage.
    assert sum(2**n - 1 for n in range(retries)) > 5
    assert env["ANSIBLE_TIMEOUT"] == cfg.get("defaults", "timeout")
    assert env["ANSIBLE_PIPELINING"] == cfg.get("ssh_connection", "pipelining")
    assert "doai.rollback.doai_host_key_audit" in env["ANSIBLE_CALLBACKS_ENABLED"].split(",")
    assert cfg.get("defaults", "callbacks_enabled") == "doai.rollback.doai_host_key_audit"
    assert (ROOT / "plugins" / "callback" / "doai_host_key_audit.py").is_file()
    assert "ANSIBLE_CALLBACK_PLUGINS" not in env and not cfg.has_option("defaults", "callback_plugins")
    # The collection doai.rollback (the content dir) is the first collections path of both,
    # and both keep Ansible's default paths after it.
    cfg_paths = cfg.get("defaults", "collections_path").split(":")
    env_paths = env["ANSIBLE_COLLECTIONS_PATH"].split(os.pathsep)
    assert (ROOT / cfg_paths[0]).resolve() == Path(env_paths[0]).resolve() == ROOT / "collections"
    assert (ROOT / cfg_paths[0] / "ansible_collections" / "doai" / "rollback").resolve() == ROOT
    assert "/usr/share/ansible/collections" in cfg_paths and "/usr/share/ansible/collections" in env_paths


def test_the_collection_is_linked_where_the_content_has_no_link(tmp_path):
    """Content without collections/ (the wheel's _content, a DOAI_CONTENT_DIR): the run's private
    dir gets the link ansible_collections/doai/rollback -> the content dir."""
    content = tmp_path / "content"
    (content / "playbooks").mkdir(parents=True)
    settings = dataclasses.replace(load_settings(None, inventory=FIXTURES / "hosts.yml", state_dir=tmp_path / "s",
                                                 env={}), content_dir=content)
    private = tmp_path / "private"
    private.mkdir()
    env = ansible_env(settings, private)
    first = Path(env["ANSIBLE_COLLECTIONS_PATH"].split(os.pathsep)[0])
    assert first == private / "collections"
    assert (first / "ansible_collections" / "doai" / "rollback").resolve() == content.resolve()


def test_host_key_checking_reaches_ansible(settings, tmp_path):
    """ansible-runner turns it off unless told otherwise: the environment the run got has it on."""
    s, pb = settings
    run = run_playbook(s, str(pb), extravars={"word": "w", "fail_on": "none"}, log_dir=tmp_path / "logs")
    command = json.loads((run.artifacts / "artifacts" / "run" / "command").read_text())
    assert command["env"]["ANSIBLE_HOST_KEY_CHECKING"] == "True"
    assert command["env"]["ANSIBLE_SSH_RETRIES"] == "4"
    assert run.warnings == []


def test_relaxed_host_key_checking_is_reported(tmp_path):
    s = load_settings(None, inventory=FIXTURES / "host_key_relaxed.yml", state_dir=tmp_path / "s", env={})
    run = run_playbook(s, str(FIXTURES / "noop.yml"))
    assert run.ok
    assert run.warnings == [
        "host by_group: SSH host key checking is OFF (inventory variable ansible_ssh_host_key_checking)",
        "host by_host: SSH host key checking is OFF (inventory variable ansible_host_key_checking)",
        "host by_ssh_args: SSH host key checking is OFF (StrictHostKeyChecking=no in ansible_ssh_extra_args)",
    ]
    # Only the hosts a run targets count.
    run = run_playbook(s, str(FIXTURES / "noop.yml"), limit="strict,local_only,by_host")
    assert run.warnings == ["host by_host: SSH host key checking is OFF (inventory variable ansible_host_key_checking)"]


# -- the control socket dir -------------------------------------------------------------------------


@pytest.fixture
def long_state(tmp_path, monkeypatch):
    """Settings whose state dir is too long for sockets: the control path falls back to the temp dir."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    s = load_settings(None, inventory=FIXTURES / "hosts.yml", state_dir=tmp_path / ("x" * 60), env={})
    return s, tmp / f"doai-cp-{os.getuid()}"


def test_control_path_fallback_is_private(long_state, tmp_path):
    s, cp = long_state
    assert ansible_env(s, tmp_path)["ANSIBLE_SSH_CONTROL_PATH_DIR"] == str(cp)
    assert stat.S_IMODE(cp.stat().st_mode) == 0o700
    os.chmod(cp, 0o755)  # ours but loose: tightened
    control_path_dir(s)
    assert stat.S_IMODE(cp.stat().st_mode) == 0o700


def test_control_path_symlink_is_refused(long_state, tmp_path):
    s, cp = long_state
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    cp.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="not a directory of ours"):
        control_path_dir(s)


def test_control_path_of_another_user_is_refused(long_state, monkeypatch):
    s, cp = long_state
    cp.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(cp).st_uid + 1)  # as if someone else made it
    with pytest.raises(UsageError, match="belongs to uid"):
        control_path_dir(s)


def test_short_state_dir_holds_the_sockets_privately():
    base = Path(tempfile.mkdtemp(prefix="dt", dir="/tmp"))  # pytest's tmp_path is too long for sockets
    try:
        state = base / "st"
        state.mkdir(mode=0o755)
        s = load_settings(None, inventory=FIXTURES / "hosts.yml", state_dir=state, env={})
        assert control_path_dir(s) == state / "cp"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700 and stat.S_IMODE((state / "cp").stat().st_mode) == 0o700
    finally:
        shutil.rmtree(base)


# -- Ansible's own file settings pass through -----------------------------------------------------


def test_vaulted_inventory_variable_is_decrypted(tmp_path, monkeypatch):
    """ANSIBLE_VAULT_PASSWORD_FILE names a file, not a secret: it must reach Ansible."""
    vault_pass = tmp_path / "vault-pass"
    vault_pass.write_text("a vault password for the test\n")
    vault_pass.chmod(0o600)
    encrypted = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-vault"), "encrypt_string", "--vault-password-file", str(vault_pass),
         "--name", "doai_fixture_vaulted", "the vaulted value"],
        capture_output=True, text=True, check=True,
    ).stdout
    inv = tmp_path / "inventory"
    (inv / "host_vars").mkdir(parents=True)
    shutil.copyfile(FIXTURES / "hosts.yml", inv / "hosts.yml")
    (inv / "host_vars" / "localhost.yml").write_text(encrypted)
    assert "the vaulted value" not in encrypted
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(vault_pass))
    monkeypatch.setenv("ANSIBLE_BECOME_PASS", CANARY)  # a secret of the same family is still scrubbed
    monkeypatch.setenv("DOAI_KEEP_ARTIFACTS", "1")

    s = load_settings(None, inventory=inv / "hosts.yml", state_dir=tmp_path / "s")
    run = run_playbook(s, str(FIXTURES / "vaulted.yml"), log_dir=tmp_path / "logs")
    assert run.ok, run.failures
    assert run.custom["doai_fixture_vaulted_sha256"] == hashlib.sha256(b"the vaulted value").hexdigest()
    env = json.loads((run.artifacts / "artifacts" / "run" / "command").read_text())["env"]
    assert env["ANSIBLE_VAULT_PASSWORD_FILE"] == str(vault_pass)
    assert "ANSIBLE_BECOME_PASS" not in env


# -- the secret channel -----------------------------------------------------------------------------


class ProcessWatch(threading.Thread):
    """Samples every process's command line (``ps -eo args``) and environment while a run goes."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.samples = 0
        self.seen_ansible = False
        self.leaks: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            args = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False,
                                  env={"PATH": os.defpath}).stdout
            self.seen_ansible |= "ansible-playbook" in args
            self.leaks += [line for line in args.splitlines() if CANARY in line]
            for environ in Path("/proc").glob("[0-9]*/environ"):
                try:
                    if CANARY.encode() in environ.read_bytes():
                        self.leaks.append(f"environment of pid {environ.parent.name}")
                except OSError:
                    pass  # gone, or not ours to read
            self.samples += 1

    def __enter__(self) -> ProcessWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=30)


def test_secrets_arrive_only_through_the_prompts(tmp_path):
    """A vars_prompt secret and the connection password reach the playbook (it writes their
    sha256), and the canary is in no artifact, event, log, command line or environment."""
    s = load_settings(None, inventory=FIXTURES / "hosts.yml", state_dir=tmp_path / "s",
                      env={"DOAI_KEEP_ARTIFACTS": "1"})
    out = tmp_path / "out"
    out.mkdir()
    events: list[dict] = []
    password = CANARY + "-connection"
    with ProcessWatch() as watch:
        run = run_playbook(
            s, str(FIXTURES / "secret_prompt.yml"), extravars={"doai_fixture_out": str(out)},
            secrets={"doai_fixture_secret": Secret(CANARY), "connection_password": Secret(password)},
            log_dir=tmp_path / "logs", on_event=events.append, timeout_s=120,
        )
    assert run.ok, run.failures
    assert (out / "secret.sha256").read_text() == hashlib.sha256(CANARY.encode()).hexdigest()
    assert (out / "connection_password.sha256").read_text() == hashlib.sha256(password.encode()).hexdigest()

    assert any(e.get("event") == "playbook_on_vars_prompt" for e in events)
    assert CANARY not in json.dumps(events)
    files = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    assert run.log_file in files and run.artifacts is not None
    assert any(p.name == "command" for p in files) and any("job_events" in str(p) for p in files)
    for p in files:
        assert CANARY.encode() not in p.read_bytes(), p
    assert watch.samples >= 2 and watch.seen_ansible, "the process sampler did not see the run"
    assert watch.leaks == []


@pytest.mark.parametrize(
    "playbook, secrets, message",
    [
        ("secret_prompt.yml", {}, "asks for 'doai_fixture_secret'"),
        ("secret_wrong_prompt.yml", {"doai_fixture_secret": Secret("x")}, "must be 'doai secret doai_fixture_secret'"),
    ],
)
def test_a_prompt_without_an_answer_stops_the_run(tmp_path, playbook, secrets, message):
    s = load_settings(None, inventory=FIXTURES / "hosts.yml", state_dir=tmp_path / "s", env={})
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=re.escape(message)):
        run_playbook(s, str(FIXTURES / playbook), extravars={"doai_fixture_out": str(tmp_path)}, secrets=secrets,
                     timeout_s=300)
    assert time.monotonic() - t0 < 60  # stopped, not left waiting at the prompt until the timeout


@pytest.mark.parametrize(
    "secrets, message",
    [
        ({"doai_x": "plain"}, "must be a Secret"),
        ({"not a name": Secret("v")}, "not a variable name"),
        ({"doai_x": Secret("two\nlines")}, "line break"),
    ],
)
def test_bad_secrets_are_refused_before_running(settings, secrets, message):
    s, pb = settings
    with pytest.raises(UsageError, match=message):
        run_playbook(s, str(pb), secrets=secrets)


def test_secret_prompt_convention():
    assert secret_prompt("db_password") == "doai secret db_password"
    assert CONNECTION_PASSWORD == "connection_password"
