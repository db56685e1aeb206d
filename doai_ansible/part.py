"""The interface every part of the DoAi system implements, for the engine to drive.

A *part* is one of the runbook's four (agent, backend, database, dashboard). The engine
(:mod:`doai_ansible.engine`) knows nothing about any of them: it validates, locks, plans,
confirms, applies in the runbook's order, reverts, journals and releases, by calling the
methods below. Adding a part means one module under ``doai_ansible/parts/`` with a subclass of
:class:`PartBase`, one role (if it works on hosts), and one line in
:data:`doai_ansible.parts.REGISTRY`.

How to write a part
-------------------
1. ``request(**options)`` turns what the operator typed into a :class:`Request`, validating every
   value (ids, commits, host limits) *before* anything is contacted. Raise
   :class:`~doai_ansible.errors.ValidationError` on bad input.
2. ``plan(ctx, request)`` reads the live state and returns the :class:`~doai_ansible.model.Step` s
   the request would take, one per target (host, project, database). It changes nothing (it is
   ``--dry-run``). Pin every resolved value: ``step.current`` is what is live *now* (a full commit
   SHA, a deployment id), ``step.desired`` where it goes; put what a human wants to see in
   ``step.notes`` and ``details["from_label"]`` / ``details["to_label"]``, data that could be lost in
   ``step.at_risk``. Raise ValidationError (refused: bad target, dirty tree, no earlier release),
   :class:`~doai_ansible.errors.UnreachableError` or :class:`~doai_ansible.errors.LockedError` when
   it cannot plan: the engine then changes nothing anywhere.
3. ``apply(ctx, steps, request)`` applies exactly those steps (only the ones that change) and
   verifies them (health gate). It first checks that the live state is still ``step.current``; if
   not, it raises ValidationError saying what changed, *before changing anything*. Once it has
   changed something it never raises: it restores its own steps on failure and returns one
   :class:`~doai_ansible.model.StepResult` per step with outcome SUCCEEDED, RESTORED (failed, put
   back as it was) or NOT_RESTORED (failed and could not be put back: the message says what to do
   by hand), or REFUSED for a target it did not touch.
4. ``revert(ctx, results, reason)`` puts the targets of SUCCEEDED results back on
   ``step.current`` (the engine calls it when a later part failed and the run asked for it) and
   returns the results with outcome RESTORED or NOT_RESTORED.
5. ``undo_request(record)`` reads a journaled run (a dict, see ``RunResult.to_dict``) and returns
   the :class:`Request` that rolls this part forward to what that run found, or None.
6. ``status(ctx, limit=...)`` describes what is live (a JSON-able dict with at least ``part``,
   ``configured``, ``healthy`` and ``reachable``), ``status_lines(st)`` renders it as text.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from doai_ansible.model import Part, Step, StepResult

if TYPE_CHECKING:
    from pathlib import Path

    from doai_ansible.context import RunContext
    from doai_ansible.errors import DoaiError

ACTIONS = ("rollback", "undo", "put-back")


@dataclasses.dataclass(frozen=True)
class Request:
    """What the operator asked of one part, validated by the part's :meth:`PartBase.request`.

    ``targets`` maps a target (host, project) to the exact value it must go to; ``undo`` uses it
    to go back to what a journaled run found. ``health_gate`` False reports health without
    requiring it (undo returns to a state that was found unhealthy).
    """

    action: str = "rollback"
    to: str | None = None
    limit: str | None = None
    targets: Mapping[str, str] = dataclasses.field(default_factory=dict)
    health_gate: bool = True
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class PartBase(abc.ABC):
    """One part of the system, as the engine drives it. See the module docstring."""

    part: ClassVar[Part]
    #: What ``configured`` needs, shown when it is missing (e.g. "vercel.project and VERCEL_TOKEN").
    needs: ClassVar[str] = ""
    #: The other parts whose change can change what this part's health read sees (the database
    #: can break the backend): a whole-system run's checks after read this part only once each
    #: of them has had its turn (:class:`doai_ansible.system.EarlyReads`).
    read_changed_by: ClassVar[tuple[Part, ...]] = ()
    #: Whether this part's apply and reads run playbooks from this controller (its CPU).
    runs_playbooks: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.part.value

    @property
    def lock_target(self) -> str:
        """The local lock a run of this part holds from plan to journal."""
        return self.part.value

    # -- configuration and status --------------------------------------------------------------
    @abc.abstractmethod
    def configured(self, ctx: RunContext) -> bool:
        """Whether the settings/inventory describe this part at all (cheap, no network)."""

    @abc.abstractmethod
    def status(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        """What is live; keys ``part``, ``configured``, ``healthy``, ``reachable`` at least."""

    @abc.abstractmethod
    def status_lines(self, st: dict[str, Any]) -> list[str]:
        """``status`` as text lines for an operator."""

    def health(self, ctx: RunContext, *, limit: str | None = None) -> dict[str, Any]:
        """Health only: ``{"healthy": bool, "reachable": bool, "targets": {name: bool}, ...}``."""
        st = self.status(ctx, limit=limit)
        return {"healthy": st["healthy"], "reachable": st.get("reachable", True), "targets": {}}

    def host_locks(self, ctx: RunContext) -> list[dict[str, Any]]:
        """The locks this part's hosts hold (``host``, ``owner``, ``run_id``, ``since``, ``age_s``),
        or ``{"host", "error"}`` for a host that could not be read; [] for a part without hosts."""
        return []

    def release_host_lock(self, ctx: RunContext, host: str, run_id: str) -> dict[str, Any]:
        """Remove the lock ``host`` holds for run ``run_id`` (a lock another run took meanwhile
        stays); ``{"host", "run_id", "released": bool, "holder"}``."""
        from doai_ansible.errors import UsageError

        raise UsageError(f"the {self.name} part keeps no lock on hosts")

    #: Whether :meth:`collect_logs` collects anything (the whole-system rollback's log bundle).
    collects_logs: ClassVar[bool] = False

    def collect_logs(self, ctx: RunContext, dest: Path, *, lines: int) -> list[dict[str, Any]]:
        """The last ``lines`` lines of the error logs of this part's targets, each in a file under
        ``dest`` (0600, secrets scrubbed): one entry ``{"part", "host", "file", "error"}`` per
        target, a target that cannot be read an entry with its error (never an exception)."""
        return []

    # -- a run -------------------------------------------------------------------------------
    if TYPE_CHECKING:
        #: Validate the operator's options (raise ValidationError) and build the request. Each part
        #: takes its own keywords (the backend ``to``, ``limit``, ``mode``; the database ``last`` ...),
        #: so the type checker sees any keywords here and each part's own signature on the part.
        request: Callable[..., Request]
    else:
        @abc.abstractmethod
        def request(self, **options: Any) -> Request:
            """Validate the operator's options (raise ValidationError) and build the request."""

    @abc.abstractmethod
    def plan(self, ctx: RunContext, request: Request) -> list[Step]:
        """Read-only: the steps, with resolved values pinned."""

    @abc.abstractmethod
    def apply(self, ctx: RunContext, steps: list[Step], request: Request) -> list[StepResult]:
        """Apply and verify; restore own steps on failure; never raise once something changed."""

    @abc.abstractmethod
    def revert(self, ctx: RunContext, results: list[StepResult], reason: str | None) -> list[StepResult]:
        """Put SUCCEEDED results back on their ``step.current``."""

    @abc.abstractmethod
    def undo_request(self, record: Mapping[str, Any]) -> Request | None:
        """The request that rolls this part forward to what a journaled run found."""

    def refuses(self, ctx: RunContext, steps: list[Step], request: Request) -> DoaiError | None:
        """What the apply of this plan would refuse that the plan already knows (data at risk
        without the flag that accepts it, a file changed since it was read): no network. The
        engine asks every part of a run before anything changes anywhere (and ``--dry-run`` says
        it), so a refusal never comes after an earlier part has changed."""
        return None

    def recheck(self, ctx: RunContext, steps: list[Step], request: Request) -> None:
        """Raise (ValidationError, LockedError, UnreachableError) when the live state moved since
        the plan. The engine calls it for every part but the first to change, once the plan is
        confirmed and before the first change of the run (all at once). The default plans again
        and compares every target's from and to with the plan's; a part with a cheaper read of
        its pins overrides it."""
        from doai_ansible.errors import ValidationError

        again = {s.target: s for s in self.plan(ctx, request)}
        moved = []
        for s in steps:
            now = again.get(s.target)
            if now is None:
                moved.append(f"{s.target}: no longer planned")
            elif (now.current, now.desired) != (s.current, s.desired):
                moved.append(f"{s.target}: {_short(s.current)} -> {_short(s.desired)} planned, "
                             f"now {_short(now.current)} -> {_short(now.desired)}")
        if moved:
            raise ValidationError("moved since the plan: " + "; ".join(moved) + "; nothing was changed",
                                  hint="someone changed it meanwhile: plan again")

    def blocks_next(self, results: list[StepResult], request: Request) -> bool:
        """Whether these apply results stop the parts after this one in a multi-part run. By
        default anything but succeeded or unchanged does; a fleet part may tolerate some."""
        from doai_ansible.model import Outcome

        return any(r.outcome not in (Outcome.SUCCEEDED, Outcome.UNCHANGED) for r in results)

    def session(self, ctx: RunContext, request: Request) -> contextlib.AbstractContextManager[object]:
        """What this part holds for a whole run, entered by the engine after the local locks and
        before the plan, left once the run has ended (applied, reverted, refused or interrupted),
        before it is journaled: e.g. the database part's advisory lock on the target database, so
        that two controllers never plan or apply there at once. A LockedError (or any refusal) it
        raises refuses the run before anything is planned. Not entered for a dry run, which
        takes no lock (so it never blocks a real run). The default holds nothing."""
        return contextlib.nullcontext()

    def one_pass(self, request: Request) -> bool:
        """Whether :meth:`plan_and_apply` can serve this request when nothing needs confirming."""
        return False

    def plan_and_apply(self, ctx: RunContext, request: Request) -> list[StepResult]:
        """Plan and apply in one go (all or nothing, raising like ``plan`` when nothing changed):
        for a part whose separate plan costs the outage time, e.g. a second playbook run."""
        raise NotImplementedError

    def recover(self, ctx: RunContext, killed: Mapping[str, Any]) -> list[dict[str, Any]]:
        """What a run killed (SIGKILL) while it applied this part did, as the targets themselves
        recorded it (a host's detached job writes its own outcome to the host's ledger): journal
        steps (``part``, ``target``, ``from``, ``to``, ``changes``, ``outcome``, ``message``) for
        the targets that recorded something of run ``killed["run_id"]``. The engine calls it when
        it journals such a run; [] (the default) leaves its steps "state unknown"."""
        return []

    # -- helpers for subclasses ------------------------------------------------------------------
    def steps_of(self, record: Mapping[str, Any], outcome: str = "succeeded") -> list[Mapping[str, Any]]:
        """The journaled steps of this part with the given outcome."""
        return [s for s in record.get("steps", []) if s.get("part") == self.name and s.get("outcome") == outcome]


def _short(value: str | None) -> str:
    text = str(value)
    return text[:12] if len(text) == 40 and all(c in "0123456789abcdef" for c in text) else text


# -- what a part brings to the command line -----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SystemOption:
    """One option ``system rollback`` takes for a part, e.g. ``--backend-to`` for the backend's ``--to``.

    ``key`` is the keyword of the part's :meth:`PartBase.request` it fills; ``own`` is the part's
    own spelling of it (``--to``), which errors about the value are rewritten from (the user typed
    ``flag``); ``click`` the keywords of its :func:`click.option` (type, metavar, help, is_flag).
    """

    flag: str
    key: str
    own: str | None = None
    click: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def dest(self) -> str:
        """The Python name click gives the value (``--backend-to`` -> ``backend_to``)."""
        return self.flag.lstrip("-").replace("-", "_")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One of the runbook's section-7 scenarios a part diagnoses: ``doai-rollback diagnose <name>``.

    ``letter`` is the runbook's (A, B, C: the order of the section and of ``diagnose --help``);
    ``help`` the command's help (its first line the summary); ``function`` the
    ``module:function`` that runs it, imported only when it runs (building the command tree
    stays light), called as ``function(ctx, limit=...)``, or ``function(ctx)`` when ``limit``
    is None; ``limit`` the ``--limit`` option's (metavar, help), or None when ``--limit`` does
    not apply (then ``no_limit`` is the refusal's message).
    """

    name: str
    letter: str
    help: str
    function: str
    limit: tuple[str, str] | None = None
    no_limit: str = ""


class PartCli:
    """A part's face on the command line, kept apart from the part itself so that building the
    command tree (``--help``, shell completion) imports no part (the dashboard's httpx, the
    database's psycopg): its own command group, its options of ``system rollback`` and how they
    become its request. One subclass per part, named by the part's registry entry."""

    part: ClassVar[Part]
    #: The options of ``system rollback`` for this part, in the order ``--help`` shows them.
    system_options: ClassVar[tuple[SystemOption, ...]] = ()
    #: The runbook's diagnose scenarios this part runs (``doai-rollback diagnose ...``).
    scenarios: ClassVar[tuple[Scenario, ...]] = ()

    @property
    def name(self) -> str:
        return self.part.value

    def commands(self) -> Any:
        """The part's own ``click.Group`` (``doai-rollback <part> ...``), or None."""
        return None

    def system_check(self, values: Mapping[str, Any]) -> None:
        """Refuse (UsageError) a ``system rollback`` that includes this part without what it
        needs; ``values`` maps each of :attr:`system_options`' ``dest`` to what was typed."""

    def system_request_options(self, ctx: RunContext, values: Mapping[str, Any],
                               reason: str | None) -> dict[str, Any]:
        """The keywords of the part's ``request`` for ``system rollback``: every system option
        under its ``key``, and the run's reason."""
        out: dict[str, Any] = {o.key: values.get(o.dest) for o in self.system_options}
        out["reason"] = reason
        return out

    def spelled(self) -> dict[str, str]:
        """The part's own option names as ``system rollback`` spells them (errors name what the user typed)."""
        return {o.own: o.flag for o in self.system_options if o.own}
