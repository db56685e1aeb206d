"""The agent part on the command line: ``doai-rollback agent ...`` and its options of
``system rollback``. Imports no part module until a command runs (see :class:`~doai_ansible.part.PartCli`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import click

from doai_ansible import engine, validate
from doai_ansible import parts as parts_registry
from doai_ansible import state as state_store
from doai_ansible.clikit import Options, common_options, complete_run_id, dry_run, pass_opts, render_status, run_jobs
from doai_ansible.errors import ExitStatus, UsageError
from doai_ansible.model import Part
from doai_ansible.part import PartCli, Scenario, SystemOption

if TYPE_CHECKING:
    from doai_ansible.parts.agent import AgentPart

PART = Part.AGENT


def _part() -> AgentPart:
    """The part itself (imported now: a command of it runs)."""
    return cast("AgentPart", parts_registry.get(PART))


@click.group("agent")
def agent() -> None:
    """Desktop agent on the PCs (group `agents`): the runbook's rename swap, per PC and user.

    Windows PCs over WinRM (HTTPS, certificate validation, NTLM/Kerberos; the password only from
    DOAI_WINRM_PASSWORD or vault); the same role runs on Linux stand-in PCs for tests.
    """


def _rerun_limit(opts: Options, part: AgentPart, rerun: str | None, limit: str | None) -> str | None:
    """``--rerun-failed RUN``: the PCs that run did not finish (instead of a --limit)."""
    if rerun is None:
        return limit
    if limit:
        raise UsageError("--rerun-failed chooses the PCs itself: leave --limit out")
    return str(part.rerun_limit(state_store.journal(opts.settings()).find(validate.run_id(rerun))))


def fleet_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of every command that works on the agent PCs, batch by batch."""
    decorators = [
        click.option("--limit", "-l", metavar="PCS", default=None, help="Only these PCs or groups (comma-separated)."),
        click.option("--user", "users", metavar="USER", multiple=True,
                     help="Only this user's folder (repeatable; default: every profile that has the agent)."),
        click.option("--batch", metavar="N|N%", default=None, help="PCs per batch (default: all, bounded by forks)."),
        click.option("--forks", type=click.IntRange(1, 500), metavar="N", default=None,
                     help="PCs worked on at once (default: Ansible's own, from ansible.cfg or ANSIBLE_FORKS, else 5)."),
        click.option("--max-fail-percent", type=int, default=None,
                     help="Stop after a batch whose failed PCs exceed this percentage (default: never stop)."),
        click.option("--rerun-failed", "rerun", metavar="RUN", default=None, shell_complete=complete_run_id,
                     help="Only the PCs that run did not finish (failed, put back, unreachable)."),
        click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal)."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


@agent.command("rollback")
@fleet_options
@common_options
@pass_opts
@dry_run("plans")
def agent_rollback_cmd(opts: Options, limit: str | None, users: tuple[str, ...], batch: str | None, forks: int | None,
                       max_fail_percent: int | None, rerun: str | None, reason: str | None) -> ExitStatus:
    """Swap app-backup in for app-current on every PC (an unreachable or refusing PC does not
    stop the others): stop the agent, keep config.json, start it again and verify; a failed
    step puts that user's folder back. Ends with a result per PC and user."""
    part = _part()
    limit = _rerun_limit(opts, part, rerun, limit)
    job = engine.Job(part, part.request(limit=limit, users=list(users), batch=batch, forks=forks,
                                        max_fail_percent=max_fail_percent, reason=reason))
    return run_jobs(opts, [job], command="agent rollback", reason=reason, question="Roll the agent back as shown?")


@agent.command("status")
@click.option("--limit", "-l", metavar="PCS", default=None, help="Only these PCs or groups.")
@common_options
@pass_opts
@dry_run("read-only")
def agent_status_cmd(opts: Options, limit: str | None) -> ExitStatus:
    """Per PC and user: app-current and app-backup versions and what a rollback would do."""
    return render_status(opts, engine.status(opts.context(), only=[PART.value], limit=limit), one=PART.value)


@agent.command("reinstall")
@click.option("--installer", required=True, metavar="PATH|URL",
              help="The earlier installer: a file on this machine (copied to each PC) or an https URL "
                   "(http only for 127.0.0.1/localhost) each PC fetches.")
@click.option("--sha256", metavar="HEX", default=None,
              help="The installer's sha256, checked here (a file) and on each PC before anything changes; "
                   "required for a URL.")
@click.option("--publisher", metavar="NAME", default=None,
              help="Windows PCs: the publisher (signer certificate common name) the installer must carry a valid "
                   "Authenticode signature of, checked on each PC before anything changes.")
@click.option("--expect-version", metavar="VERSION", default=None,
              help="The version the installer installs: verified after it, and a PC already on it is unchanged.")
@fleet_options
@common_options
@pass_opts
@dry_run("plans")
def agent_reinstall_cmd(opts: Options, installer: str, sha256: str | None, publisher: str | None,
                        expect_version: str | None,
                        limit: str | None, users: tuple[str, ...], batch: str | None, forks: int | None,
                        max_fail_percent: int | None, rerun: str | None, reason: str | None) -> ExitStatus:
    """Reinstall an earlier agent on every PC (an unreachable or refusing PC does not stop the
    others): stop the agent, keep the current install with its config.json (copied aside whole
    as app-replaced-<stamp>; nothing is deleted), uninstall, run the installer silently as the
    user, restore config.json, start and verify; a failed step puts the kept install back. Ends
    with a result per PC and user."""
    part = _part()
    limit = _rerun_limit(opts, part, rerun, limit)
    job = engine.Job(part, part.request(action="reinstall", installer=installer, sha256=sha256,
                                        expect_version=expect_version, publisher=publisher, limit=limit,
                                        users=list(users), batch=batch, forks=forks,
                                        max_fail_percent=max_fail_percent, reason=reason))
    return run_jobs(opts, [job], command="agent reinstall", reason=reason,
                    question="Reinstall the agent as shown?")


class AgentCli(PartCli):
    part = PART
    scenarios = (
        Scenario("agent-connection", "C",
                 "C: the backend's Socket.IO handshake, its port from each agent PC, the agents per PC and\n"
                 "user; proposes the firewall, the backend, an agent rollback or reinstall.",
                 "doai_ansible.parts.agent_diagnose:agent_connection",
                 limit=("PCS", "Only these agent PCs (Ansible pattern).")),
    )
    system_options = (
        SystemOption("--agent-batch", "batch", "--batch",
                     {"metavar": "N|N%", "default": None,
                      "help": "Agent PCs per batch (default: all, bounded by --agent-forks)."}),
        SystemOption("--agent-forks", "forks", "--forks",
                     {"type": click.IntRange(1, 500), "metavar": "N", "default": None,
                      "help": "Agent PCs worked on at once (default: Ansible's own, from ansible.cfg or "
                              "ANSIBLE_FORKS, else 5)."}),
        SystemOption("--agent-max-fail-percent", "max_fail_percent", "--max-fail-percent",
                     {"type": click.IntRange(0, 100), "default": None,
                      "help": "Agent PCs that may fail (off, refused, put back) before the parts after the agent are "
                              "not started (default 50; a PC that could not be put back always stops the run)."}),
    )

    def commands(self) -> click.Group:
        return agent
