"""The WinRM/psrp guard of the agent playbooks (playbooks/tasks/agent-winrm.yml), run for real:
ansible-playbook runs the agent rollback playbook against a stand-in PC whose address is a
loopback port this test listens on and counts the connections to. A combination that would send
credentials in clear, or not check the PC's certificate, is refused by the guard before anything
reaches the port (no connection accepted); an allowed one passes the guard and then fails to
connect (the listener closes every connection at once): a connection failure, not the guard."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CANARY = "canary-winrm-guard-5e1d"
GUARD = "nothing was sent to the PC"


class Listener:
    """A loopback port that accepts and closes every connection, and counts them."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


def run_preamble(tmp_path, host_vars: dict, port: int):
    inv = tmp_path / "inventory.json"
    hv = {"ansible_host": "127.0.0.1", "ansible_user": "admin", **host_vars}
    # the port goes where the combination names it: the listener's port stands for 5985/5986
    for key in ("ansible_port", "ansible_winrm_port", "ansible_psrp_port"):
        if hv.get(key) == "LISTENER":
            hv[key] = port
    inv.write_text(json.dumps({"all": {"children": {"agents": {"hosts": {"pc01": hv}}}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_HOME=str(tmp_path / "home"))
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv),
           str(ROOT / "playbooks" / "agent_rollback.yml"), "--check",
           "-e", json.dumps({"doai_agent_winrm_password": CANARY})]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return res.returncode, res.stdout + res.stderr


# Each combination points the connection at the listener. 5985/5986 are what Ansible's plugins
# see to pick the scheme when none is set; the listener's port stands in for them: a combination
# that relies on "port 5985 means http" sets the scheme the same way explicitly, and the test
# named *_default_* checks the port rule with the real port numbers (nothing listens there on
# loopback... but nothing is contacted either: the guard refuses first).
REFUSED = {
    # no transport, http: Ansible's winrm plugin picks `plaintext` (basic) for a non-UPN user
    "winrm_http_no_transport": {"ansible_connection": "winrm", "ansible_port": "LISTENER",
                                "ansible_winrm_scheme": "http"},
    "winrm_http_transport_plaintext": {"ansible_connection": "winrm", "ansible_port": "LISTENER",
                                       "ansible_winrm_scheme": "http", "ansible_winrm_transport": "plaintext"},
    "winrm_http_transport_basic": {"ansible_connection": "ansible.builtin.winrm", "ansible_port": "LISTENER",
                                   "ansible_winrm_scheme": "http", "ansible_winrm_transport": ["basic"]},
    "winrm_http_transport_ssl": {"ansible_connection": "winrm", "ansible_winrm_port": "LISTENER",
                                 "ansible_winrm_scheme": "http", "ansible_winrm_transport": "ssl"},
    "winrm_http_ntlm_then_basic": {"ansible_connection": "winrm", "ansible_port": "LISTENER",
                                   "ansible_winrm_scheme": "http", "ansible_winrm_transport": "ntlm,basic"},
    "winrm_http_ntlm_no_encryption": {"ansible_connection": "winrm", "ansible_port": "LISTENER",
                                      "ansible_winrm_scheme": "http", "ansible_winrm_transport": "ntlm",
                                      "ansible_winrm_message_encryption": "never"},
    "winrm_https_cert_ignored": {"ansible_connection": "winrm", "ansible_port": "LISTENER",
                                 "ansible_winrm_scheme": "https", "ansible_winrm_transport": "ntlm",
                                 "ansible_winrm_server_cert_validation": "ignore"},
    "psrp_http_basic": {"ansible_connection": "psrp", "ansible_port": "LISTENER",
                        "ansible_psrp_protocol": "http", "ansible_psrp_auth": "basic"},
    "psrp_http_certificate": {"ansible_connection": "ansible.builtin.psrp", "ansible_psrp_port": "LISTENER",
                              "ansible_psrp_protocol": "http", "ansible_psrp_auth": "certificate"},
    "psrp_http_ntlm_no_encryption": {"ansible_connection": "psrp", "ansible_port": "LISTENER",
                                     "ansible_psrp_protocol": "http", "ansible_psrp_auth": "ntlm",
                                     "ansible_psrp_message_encryption": "never"},
    "psrp_https_cert_ignored": {"ansible_connection": "psrp", "ansible_port": "LISTENER",
                                "ansible_psrp_protocol": "https", "ansible_psrp_cert_validation": "ignore"},
}

ALLOWED = {
    "winrm_https_no_transport": {"ansible_connection": "winrm", "ansible_port": "LISTENER",
                                 "ansible_winrm_scheme": "https"},
    "winrm_https_basic": {"ansible_connection": "winrm", "ansible_port": "LISTENER",
                          "ansible_winrm_scheme": "https", "ansible_winrm_transport": "basic"},
    "winrm_http_ntlm": {"ansible_connection": "winrm", "ansible_port": "LISTENER",
                        "ansible_winrm_scheme": "http", "ansible_winrm_transport": "ntlm"},
    # the port decides the scheme when none is set: any port but 5985 is https
    "winrm_port_not_5985_basic": {"ansible_connection": "winrm", "ansible_port": "LISTENER",
                                  "ansible_winrm_transport": "basic"},
    "psrp_default": {"ansible_connection": "psrp", "ansible_port": "LISTENER"},
    "psrp_http_negotiate": {"ansible_connection": "psrp", "ansible_port": "LISTENER",
                            "ansible_psrp_protocol": "http"},
    "psrp_https_basic": {"ansible_connection": "psrp", "ansible_port": "LISTENER",
                         "ansible_psrp_protocol": "https", "ansible_psrp_auth": "basic"},
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_the_guard_refuses_before_any_connection(name, listener, tmp_path):
    code, out = run_preamble(tmp_path, REFUSED[name], listener.port)
    assert code != 0, out
    assert GUARD in out and "pc01:" in out, out
    assert "UNREACHABLE" not in out, out
    assert listener.accepted == 0, out
    assert CANARY not in out
    if "no_transport" in name:
        assert "Ansible's default when ansible_winrm_transport is not set" in out, out
    if "transport_basic" in name:
        assert "basic authentication over plain HTTP" in out, out
    if "cert_ignored" in name:
        assert "validation: ignore" in out, out


@pytest.mark.parametrize("name,host_vars", [
    # Ansible's own port rule, with the real port numbers: 5985 and no scheme is http, hence basic in clear
    ("winrm_default_port_5985", {"ansible_connection": "winrm", "ansible_port": 5985}),
    ("psrp_default_port_5985_basic", {"ansible_connection": "psrp", "ansible_port": 5985, "ansible_psrp_auth": "basic"}),
])
def test_the_guard_follows_ansibles_port_rule(name, host_vars, listener, tmp_path):
    code, out = run_preamble(tmp_path, host_vars, listener.port)
    assert code != 0 and GUARD in out and "UNREACHABLE" not in out, out


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_allowed_combinations_pass_the_guard_and_fail_to_connect(name, listener, tmp_path):
    code, out = run_preamble(tmp_path, ALLOWED[name], listener.port)
    assert code != 0, out
    assert GUARD not in out, out
    assert "UNREACHABLE" in out, out
    assert listener.accepted >= 1, out
    assert CANARY not in out


def test_insecure_allowed_explicitly_passes_with_a_warning(listener, tmp_path):
    host_vars = dict(REFUSED["winrm_http_no_transport"], doai_agent_allow_insecure_winrm=True)
    code, out = run_preamble(tmp_path, host_vars, listener.port)
    assert GUARD not in out and "UNREACHABLE" in out, out
    assert "WARNING: pc01: WinRM basic authentication over plain HTTP" in out, out
    assert CANARY not in out
