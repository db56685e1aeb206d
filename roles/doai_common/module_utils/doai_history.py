# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's ledger (ledger.jsonl, written by doai_ledger) and the rule for "the release live
before the current one" that every part's default rollback target follows.

Entries are JSON objects, one a line, oldest first: ``action`` (deploy, rollback, undo,
put-back, resume), ``from``, ``to``, ``result`` and who/why/when. What counts:

- a release was *live* after a ``deploy`` (result ``deployed``) and after a ``rollback``,
  ``undo`` or ``resume`` that succeeded;
- a commit was *rolled back from* by a ``rollback`` (or a ``resume``, which finishes one) that
  succeeded, until an ``undo`` goes back to that commit;
- a ``put-back`` (a host returned to where it was because another host failed) counts as
  neither: the rollback it reverted did not happen as far as the history is concerned.
"""

from __future__ import annotations

import json

LIVE_ACTIONS = ("deploy", "rollback", "undo", "resume")
LIVE_RESULTS = ("deployed", "succeeded")
ROLLBACK_ACTIONS = ("rollback", "resume")


def read_ledger(path):
    """The ledger's entries, oldest first; unreadable lines are skipped, a missing file is empty."""
    entries = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    entries.append(entry)
    except (IOError, OSError):
        pass
    return entries


def _action(entry):
    return entry.get("action") or "deploy"


def rolled_back_from(entries):
    """Commits a rollback left that no later undo went back to."""
    left = set()
    for e in entries:
        if e.get("result") != "succeeded":
            continue
        if _action(e) in ROLLBACK_ACTIONS and e.get("from"):
            left.add(e["from"])
        elif _action(e) == "undo" and e.get("to"):
            left.discard(e["to"])
    return left


def earlier_releases(entries, current):
    """Entries whose ``to`` was live once, newest first, without ``current``, commits rolled
    back from, put-backs and failed attempts; each commit once."""
    skip = rolled_back_from(entries)
    seen = set()
    for e in reversed(entries):
        to = e.get("to")
        if _action(e) not in LIVE_ACTIONS or e.get("result") not in LIVE_RESULTS or not to:
            continue
        if to == current or to in skip or to in seen:
            continue
        seen.add(to)
        yield e
