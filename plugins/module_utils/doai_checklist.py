# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The whole-system checklist's reads, made inside a plan's capture: one module call per host
before the change (state, logs and plan), not three.

Each read is read-only and runs before the capture takes its lock; a read that fails is kept
with its cause and never stops the plan."""

from __future__ import annotations


class _ReadFailed(Exception):
    pass


def read_along(module, reads):
    """Run ``reads`` ((name, function of no arguments) pairs) and return what they found:
    ``{name: result or None, name + "_error": why it failed or None}``.

    A read that calls ``module.fail_json`` or raises is reported by its cause instead. From then
    on every ``exit_json`` and ``fail_json`` of ``module`` (a refusal too) carries the findings
    as ``checklist``: the checklist keeps them whatever the plan says."""
    found = {}
    if not reads:
        return found
    fail, done = module.fail_json, module.exit_json

    def read_failed(msg="", *args, **kwargs):
        raise _ReadFailed(msg)

    for name, read in reads:
        module.fail_json = read_failed
        try:
            found[name], found[name + "_error"] = read(), None
        except _ReadFailed as exc:
            found[name], found[name + "_error"] = None, str(exc) or "the read failed"
        except Exception as exc:  # a read never stops the plan; its cause is kept
            found[name], found[name + "_error"] = None, "%s: %s" % (type(exc).__name__, exc)
        finally:
            module.fail_json = fail

    def failing(*args, **kwargs):
        kwargs.setdefault("checklist", found)
        return fail(*args, **kwargs)

    def exiting(*args, **kwargs):
        kwargs.setdefault("checklist", found)
        return done(*args, **kwargs)

    module.fail_json, module.exit_json = failing, exiting
    return found
