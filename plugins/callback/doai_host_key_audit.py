# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback plugin: report every targeted host whose SSH host key checking is turned off.

The CLI turns host key checking on for every run; the inventory may still relax it per host
or group. Such a host must not go unnoticed, so at the start of each play this plugin looks
at the variables of the hosts the play targets (after --limit and serial batching) and

- shows a warning (also for plain ``ansible-playbook`` runs from the repository), and
- writes its findings to the JSON file named by ``DOAI_HOST_KEY_AUDIT_FILE``, which
  ``doai_ansible.runner.run_playbook`` reads back into ``PlaybookRun.warnings``.

It runs in the controller process, once per host per play, and implements no per-task
method: it adds no process and no per-task cost.
"""

from __future__ import annotations

DOCUMENTATION = """
    name: doai_host_key_audit
    type: aggregate
    short_description: warn about targeted hosts whose SSH host key checking is off
    description:
      - At the start of each play, reads the variables of every targeted host and warns when
        ansible_host_key_checking (or ansible_ssh_host_key_checking,
        ansible_paramiko_host_key_checking) is false, or when the SSH arguments say
        StrictHostKeyChecking=no.
    requirements:
      - enable it in callbacks_enabled
    options:
      output_file:
        description: JSON file the findings are written to (an object whose hosts key maps a host to its warnings).
        env:
          - name: DOAI_HOST_KEY_AUDIT_FILE
"""

import json
import os
import re
import tempfile
from typing import Any

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.callback import CallbackBase
from ansible.template import Templar

# The variables the ssh and paramiko connection plugins read host_key_checking from.
CHECKING_VARS = ("ansible_host_key_checking", "ansible_ssh_host_key_checking", "ansible_paramiko_host_key_checking")
# ...and the ones whose SSH options can turn it off behind Ansible's back.
SSH_ARG_VARS = ("ansible_ssh_common_args", "ansible_ssh_extra_args", "ansible_ssh_args")
_STRICT_OFF = re.compile(r"StrictHostKeyChecking\s*=?\s*[\"']?(no|off)\b", re.IGNORECASE)
# Connections that never check an SSH host key.
_NO_SSH = frozenset({"local", "ansible.builtin.local", "winrm", "ansible.builtin.winrm", "psrp", "ansible.builtin.psrp"})


def relaxed_reasons(hostvars: dict[str, Any], template: Any) -> list[str]:
    """Why host key checking is off for a host with these variables ([] when it is on)."""
    reasons = []
    for name in CHECKING_VARS:
        if name in hostvars and not boolean(template(hostvars[name]), strict=False):
            reasons.append(f"inventory variable {name}")
    for name in SSH_ARG_VARS:
        if name in hostvars and _STRICT_OFF.search(str(template(hostvars[name]) or "")):
            reasons.append(f"StrictHostKeyChecking=no in {name}")
    return reasons


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "doai_host_key_audit"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen: set[str] = set()
        self._findings: dict[str, list[str]] = {}

    def v2_playbook_on_play_start(self, play: Any) -> None:
        variables = play.get_variable_manager()
        loader = play.get_loader()
        # The inventory is restricted to this play's --limit and serial batch at this point.
        for host in variables._inventory.get_hosts(play.hosts):
            if host.name in self._seen:
                continue
            self._seen.add(host.name)
            hostvars = variables.get_vars(play=play, host=host, include_hostvars=False)
            warnings = self._audit(host.name, hostvars, Templar(loader=loader, variables=hostvars))
            if warnings:
                self._findings[host.name] = warnings
                for warning in warnings:
                    self._display.warning(warning)
        self._write()

    @staticmethod
    def _audit(host: str, hostvars: dict[str, Any], templar: Templar) -> list[str]:
        try:
            if str(templar.template(hostvars.get("ansible_connection", "ssh"))) in _NO_SSH:
                return []
            reasons = relaxed_reasons(hostvars, templar.template)
        except Exception as exc:  # the connection fails on the same value later; do not crash the run here
            return [f"host {host}: SSH host key checking could not be verified ({type(exc).__name__}: {exc})"]
        return [f"host {host}: SSH host key checking is OFF ({reason})" for reason in reasons]

    def _write(self) -> None:
        path = self.get_option("output_file")
        if not path:
            return
        # Written whole and renamed, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".host-key-audit-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"hosts": self._findings}, fh)
        os.replace(tmp, path)
