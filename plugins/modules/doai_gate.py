#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation of the action plugin doai_gate, which runs on the controller only."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doai_gate
short_description: Wait on the controller for the go of the run that started this playbook early
description:
  - doai-rollback starts the playbook of a whole-system run's next part while the part before it
    is still at work, so that Ansible's start-up, the inventory and the checks that change nothing
    are done by the time that part is healthy. The playbook then waits here, before its first
    change, until the file I(path) says C(go) (the part before succeeded) or C(stop ...) (it did
    not, or the run was stopped) - then the task fails on every host and nothing is changed.
  - Runs on the controller (an action plugin); it never connects to the host.
  - Fails too when the process I(pid) (doai-rollback) is gone, or after I(timeout) seconds.
  - Polls the file every 20 ms. At C(go) it creates I(path)C(.passed): doai-rollback then knows
    this playbook is past its start-up and may start the next part's.
options:
  path: {description: "The gate file doai-rollback writes.", type: path, required: true}
  pid: {description: "The process that started the playbook; 0 - not watched.", type: int, default: 0}
  timeout: {description: "Seconds to wait for a word in I(path).", type: float, default: 3600}
author: doai-ansible contributors (@doai)
"""

EXAMPLES = r"""
- name: Wait for the go of the run that started this playbook early
  doai.rollback.doai_gate:
    path: "{{ doai_gate }}"
    pid: "{{ doai_gate_pid }}"
  when: doai_gate is defined
"""

RETURN = r"""
waited: {description: "Seconds waited for the go.", type: float, returned: success}
"""
