# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the captures (doai_backend_pm2_capture; doai_backend_docker_capture.py is a
link to this file).

The capture runs as any module does (Ansible's own action for modules). In a rollback (not a plan: ``plan_only`` false), while it
runs on the host, a child process of this task builds the payload of the modules the rollback
calls next (their AnsiballZ zip, into Ansible's own cache of this playbook run, under its own
lock), so that their tasks find it built instead of building it on the path the outage waits
on: ~0.15 s of controller CPU per module on a 2-core controller (bench/README.md, eighth round).
The child touches nothing but that cache: no connection, no output, no result. Whatever it
meets ends the child, never the task; a module it did not build is built by its task as before.
"""

from __future__ import annotations

import os

from ansible import constants as C
from ansible.executor.module_common import modify_module
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action.normal import ActionModule as NormalAction
from ansible.utils.display import Display

display = Display()

# The modules a rollback runs after each capture, in their order.
NEXT = {
    "doai.rollback.doai_backend_docker_capture": ("doai.rollback.doai_backend_docker_apply",),
    "doai.rollback.doai_backend_pm2_capture": ("doai.rollback.doai_backend_pm2_apply",
                                               "doai.rollback.doai_backend_pm2_verify"),
}


class ActionModule(NormalAction):
    """Ansible's own action for a module (ansible.builtin's ``normal``), with the build beside it."""

    def run(self, tmp=None, task_vars=None):
        child = None
        if not boolean(self._task.args.get("plan_only", False), strict=False):
            child = self._prebuild(NEXT.get(self._task.resolved_action, ()), task_vars or {})
        try:
            return super(ActionModule, self).run(tmp, task_vars)
        finally:
            if child:
                try:  # reaped if done; else the worker's exit hands it to init, which reaps it
                    os.waitpid(child, os.WNOHANG)
                except OSError:
                    pass

    def _prebuild(self, names, task_vars):
        if not names:
            return None
        try:
            pid = os.fork()
        except OSError:
            return None
        if pid:
            return pid
        try:
            for name in ("display", "debug", "v", "vv", "vvv", "vvvv", "vvvvv", "warning", "deprecated", "error"):
                setattr(display, name, lambda *args, **kwargs: None)  # the worker's queue is the parent's
            for name in names:
                found = self._shared_loader_obj.module_loader.find_plugin_with_context(
                    name, collection_list=self._task.collections)
                if not found.resolved:
                    continue
                try:
                    modify_module(module_name=name, module_path=found.plugin_resolved_path, module_args={},
                                  templar=self._templar, task_vars=task_vars,
                                  module_compression=C.config.get_config_value('DEFAULT_MODULE_COMPRESSION',
                                                                               variables=task_vars),
                                  become_plugin=self._connection.become)
                except Exception:  # noqa: BLE001 - e.g. the interpreter still to discover: the zip is built by then
                    pass
        except BaseException:  # noqa: BLE001 - nothing of the child's may reach the task
            pass
        finally:
            os._exit(0)
