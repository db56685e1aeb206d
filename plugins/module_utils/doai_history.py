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
  neither: the rollback it reverted did not happen as far as the history is concerned;
- an entry with ``by: job`` is the record a run's detached job on the host writes when it has
  made the change (:func:`job_recorder`; result ``applied`` when the job leaves the health
  check to the controller, as PM2's apply does): a later entry of the same ``run_id`` (the
  controller's own record) replaces it. Alone - the controller was killed before it could
  record anything - it stands: ``applied`` counts as a success (the change was made, and a
  default target never returns to the release it rolled back from).
"""

from __future__ import annotations

import json
import os
import time

#: The actions a ledger record may have (doai_ledger's).
LEDGER_ACTIONS = ("deploy", "rollback", "undo", "put-back", "resume")
LIVE_ACTIONS = ("deploy", "rollback", "undo", "resume")
LIVE_RESULTS = ("deployed", "succeeded", "applied")
DONE_RESULTS = ("succeeded", "applied")
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


def append(path, record):
    """Append ``record`` as one line (O_APPEND + fsync, never rewritten); ``at`` added when missing."""
    record = dict(record)
    record.setdefault("at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return record


def record_once(path, record):
    """Append the controller's ``record`` (with its ``result``) unless the same run already has it
    (``run_id``, ``from``, ``to``, ``result``; not a job's entry): a module call that records
    once its job is done may run again when its connection is retried. Returns the record."""
    same = ("run_id", "from", "to", "result")
    for e in read_ledger(path):
        if e.get("by") != "job" and all(e.get(k) == record.get(k) for k in same):
            return e
    return append(path, record)


def job_recorder(ledger_path, record, result_of):
    """For doai_job's ``on_result``: the job's own record of its outcome in the host's ledger
    (``record`` with ``result: result_of(job_result)``, ``by: job``), or None when no record
    was asked for. ``result_of`` returns None for an outcome not worth a record (nothing changed)."""
    if not ledger_path or not record or not record.get("action"):
        return None

    def on_result(done):
        result = result_of(done)
        if not result:
            return
        # Once per run: a resumed run's job that finds the same outcome already recorded adds nothing.
        same = ("run_id", "from", "to")
        if not any(e.get("result") == result and all(e.get(k) == record.get(k) for k in same)
                   for e in read_ledger(ledger_path)):
            append(ledger_path, dict(record, result=result, by="job", job=done.get("job") or record.get("job")))
        done["recorded"] = True

    return on_result


def effective(entries):
    """The entries that count: a job's entry (``by: job``) is dropped when a later entry of the
    same run follows it (the controller's own record)."""
    later = set()
    out = []
    for e in reversed(entries):
        if e.get("by") == "job" and e.get("run_id") and e["run_id"] in later:
            continue
        if e.get("run_id"):
            later.add(e["run_id"])
        out.append(e)
    out.reverse()
    return out


def _action(entry):
    return entry.get("action") or "deploy"


def rolled_back_from(entries):
    """Commits a rollback left that no later undo went back to."""
    left = set()
    for e in effective(entries):
        if e.get("result") not in DONE_RESULTS:
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
    for e in reversed(effective(entries)):
        to = e.get("to")
        if _action(e) not in LIVE_ACTIONS or e.get("result") not in LIVE_RESULTS or not to:
            continue
        if to == current or to in skip or to in seen:
            continue
        seen.add(to)
        yield e
