# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which commit a rollback goes to: the one requested, or the release live before. Shared by
the capture (the rollback) and the prepare module, so both resolve a target the same way.

Both read the module's params ``target``, ``ledger_path`` and ``log_count`` and refuse with
``invalid_target`` or ``no_target``."""

from __future__ import annotations

from ansible_collections.doai.rollback.plugins.module_utils.doai_checkout import REF_RE
from ansible_collections.doai.rollback.plugins.module_utils.doai_history import earlier_releases, read_ledger, rolled_back_from


def requested_target(module, co):
    ref = module.params["target"]
    if not REF_RE.fullmatch(ref):
        module.fail_json(msg="target %r is not a commit SHA or ref name" % ref, invalid_target=True)
    target = co.resolve(ref)
    if not target:
        module.fail_json(msg="target %r is not a commit in %s (fetch it first?)" % (ref, co.path), invalid_target=True)
    return target, "requested: %s" % ref


def default_target(module, co, head):
    """The release live before ``head``: the ledger first, else git's reflog; see doai_history."""
    ledger = read_ledger(module.params["ledger_path"])
    for e in earlier_releases(ledger, head):
        if co.resolve(e["to"]) == e["to"]:
            return e["to"], "ledger: live before %s (%s %s by %s)" % (
                head[:12], e.get("action", "deploy"), e.get("at", "?"), e.get("who", "?"))
    skip = rolled_back_from(ledger)
    for n, cand in enumerate(co.reflog()):
        if cand != head and cand not in skip and co.resolve(cand) == cand:
            return cand, "reflog: HEAD@{%d}, the commit checked out before %s" % (n, head[:12])
    module.fail_json(
        msg="no earlier release to roll back to in the ledger or the reflog; name one with --to",
        no_target=True, recent=co.recent(module.params["log_count"]), current=head,
    )


def resolve_target(module, co, head):
    """(target, rule): the requested ref when ``target`` is set, else the release live before."""
    return requested_target(module, co) if module.params["target"] else default_target(module, co, head)
