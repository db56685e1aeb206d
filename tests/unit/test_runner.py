"""The ansible-runner wrapper on a local-connection playbook: results, failures, secrets."""

from __future__ import annotations

import os

import pytest

from doai_ansible.errors import UsageError
from doai_ansible.runner import run_playbook
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
