# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the modules that run as detached jobs (doai_backend_pm2_apply, _verify;
doai_backend_pm2_verify.py is a link to this file).

The module runs its work as a job on the host (the collection's doai_job) and returns its result
over the task's own pipelined connection. When that connection breaks (the link dropped),
SSH's retries run the task again first; when they give up, this plugin keeps trying once a
second for ``reconnect_timeout`` seconds more, each time running the module again with the
same arguments: the same ``job`` id attaches to the job, which went on meanwhile. A host still
unreachable after that is unreachable as usual (dropped from the play, left to a resume).
"""

from __future__ import annotations

import time

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        grace = float(args.get("reconnect_timeout") or 0)
        lost_at = None
        while True:
            try:
                out = self._execute_module(module_name=self._task.action, module_args=args, task_vars=task_vars)
                break
            except AnsibleConnectionFailure as exc:
                if not args.get("job") or self._task.check_mode:
                    raise
                now = time.monotonic()
                lost_at = lost_at if lost_at is not None else now
                if now + 1 - lost_at > grace:
                    raise
                display.warning("%s: connection lost (%s); attaching to job %s again"
                                % (self._task.get_name(), str(exc).strip()[:200], args["job"]))
                time.sleep(1)
                # A broken ControlMaster would fail every attempt: start afresh, and let each
                # attempt be one try (the retries' pauses would overshoot the grace).
                try:
                    self._connection.reset()
                except Exception:  # noqa: BLE001 - a connection without reset is fine as is
                    pass
                if self._connection.has_option("reconnection_retries"):
                    self._connection.set_option("reconnection_retries", 0)
        if lost_at is not None:
            out["reconnected_after"] = round(time.monotonic() - lost_at, 1)
        result.update(out)
        return result
