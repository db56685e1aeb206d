"""The dashboard part on the command line: ``doai-rollback dashboard ...`` and its options of
``system rollback``. Imports no part module until a command runs (see :class:`~doai_ansible.part.PartCli`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import click

from doai_ansible import engine, validate
from doai_ansible import parts as parts_registry
from doai_ansible.clikit import Options, common_options, dry_run, pass_opts, render_status, run_jobs
from doai_ansible.errors import ExitStatus
from doai_ansible.model import Part
from doai_ansible.part import PartCli, SystemOption

if TYPE_CHECKING:
    from doai_ansible.parts.dashboard import DashboardPart

PART = Part.DASHBOARD


def _part() -> DashboardPart:
    """The part itself (imported now: a command of it runs)."""
    return cast("DashboardPart", parts_registry.get(PART))


@click.group("dashboard")
def dashboard() -> None:
    """Dashboard on Vercel (REST API).

    On Vercel's Hobby plan only the previous production deployment can be rolled back to.
    """


@dashboard.command("status")
@common_options
@pass_opts
@dry_run("read-only")
def dashboard_status_cmd(opts: Options) -> ExitStatus:
    """Production deployment, last rollback/promote job, health."""
    opts.settings().vercel.require()
    return render_status(opts, engine.status(opts.context(), only=[PART.value]), one=PART.value)


@dashboard.command("rollback")
@click.option("--to", "to", metavar="DEPLOYMENT", default=None,
              help="Deployment id (dpl_...) or URL (default: the newest earlier production deployment "
                   "Vercel can roll back to).")
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal and Vercel's description).")
@common_options
@pass_opts
@dry_run("plans")
def dashboard_rollback_cmd(opts: Options, to: str | None, reason: str | None) -> ExitStatus:
    """Roll production back to an earlier deployment, wait for the alias job and the health gate;
    if the gate fails, promote the original deployment back."""
    part = _part()
    job = engine.Job(part, part.request(to=to, reason=validate.reason(reason)))
    return run_jobs(opts, [job], command="dashboard rollback", reason=reason,
                    question="Roll the dashboard back as shown?")


class DashboardCli(PartCli):
    part = PART
    system_options = (
        SystemOption("--dashboard-to", "to", "--to", {"metavar": "DEPLOYMENT", "default": None,
                                                      "help": "The dashboard's target (default: as `dashboard rollback`)."}),
    )

    def commands(self) -> click.Group:
        return dashboard
