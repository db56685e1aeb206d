# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of doai_gate (see plugins/modules/doai_gate.py): wait, on the controller and
without touching the host, until the run that started this playbook early says go or stop."""

from __future__ import annotations

import os
import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

POLL_S = 0.02


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _word(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return ""


def _passed(path):
    """Tell doai-rollback this playbook is past its start-up and at work (PATH.passed)."""
    try:
        with open(path + ".passed", "a", encoding="utf-8"):
            pass
    except OSError:
        pass


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = self._task.args
        path = args.get("path")
        if not path or not isinstance(path, str):
            raise AnsibleActionFail("doai_gate: path is required")
        try:
            pid = int(args.get("pid") or 0)
            timeout = float(args.get("timeout") or 3600)
        except (TypeError, ValueError):
            raise AnsibleActionFail("doai_gate: pid and timeout must be numbers")
        t0 = time.monotonic()
        while True:
            word = _word(path)
            if word == "go":
                _passed(path)
                result.update(changed=False, waited=round(time.monotonic() - t0, 3))
                return result
            if word.startswith("stop"):
                raise AnsibleActionFail("not started: %s; nothing was changed" % (word[4:].strip(" :") or "stopped"))
            if pid and not _alive(pid):
                raise AnsibleActionFail("not started: the run that started this playbook (pid %d) is gone; "
                                        "nothing was changed" % pid)
            if time.monotonic() - t0 > timeout:
                raise AnsibleActionFail("not started: no go within %d s; nothing was changed" % timeout)
            time.sleep(POLL_S)
