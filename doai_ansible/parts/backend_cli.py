"""The backend part on the command line: ``doai-rollback backend ...`` and its options of
``system rollback``. Imports no part module until a command runs (see :class:`~doai_ansible.part.PartCli`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import click

from doai_ansible import engine, validate
from doai_ansible import parts as parts_registry
from doai_ansible.clikit import Options, common_options, dry_run, pass_opts, render_status, run_jobs
from doai_ansible.errors import ExitStatus
from doai_ansible.model import Part
from doai_ansible.part import PartCli, Scenario, SystemOption
from doai_ansible.render import emit_json

if TYPE_CHECKING:
    from doai_ansible.context import RunContext
    from doai_ansible.parts.backend import BackendPart

PART = Part.BACKEND


def _part() -> BackendPart:
    """The part itself (imported now: a command of it runs)."""
    return cast("BackendPart", parts_registry.get(PART))


@click.group("backend")
def backend() -> None:
    """Backend API on the VPS: git + PM2, or Docker Compose (doai_backend_mode in the inventory)."""


@backend.command("rollback")
@click.option("--to", "to", metavar="REF|TAG|IMAGE_ID", default=None,
              help="PM2 hosts: a commit SHA or ref (default: the release live before the current one). "
              "Docker hosts: a tag or an image id sha256:<hex> (default: the `previous` tag).")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these hosts or groups (comma-separated).")
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal and host ledger).")
@click.option("--mode", type=click.Choice(["pm2", "docker"]), default=None,
              help="Override the inventory's doai_backend_mode for the hosts of this run.")
@common_options
@pass_opts
@dry_run("plans")
def backend_rollback(opts: Options, to: str | None, limit: str | None, reason: str | None,
                     mode: str | None) -> ExitStatus:
    """Roll every backend host back (all or nothing) and wait for health; on failure put the
    previous release back. PM2 hosts: check out an earlier commit, reinstall dependencies if the
    lockfile differs, reload PM2. Docker hosts: pull the target image while the current
    container serves, tag :current as :rollback and the target as :current, `compose up -d`."""
    part = _part()
    job = engine.Job(part, part.request(to=to, limit=limit, reason=reason, mode=mode, ctx=opts.context()))
    return run_jobs(opts, [job], command="backend rollback", reason=reason, question="Roll the backend back as shown?")


@backend.command("prepare")
@click.option("--to", "to", metavar="REF|TAG", default=None,
              help="The rollback's target, as for `backend rollback` (default: the same default).")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these hosts or groups (comma-separated).")
@common_options
@pass_opts
@dry_run("plans")
def backend_prepare(opts: Options, to: str | None, limit: str | None) -> ExitStatus:
    """Fetch what a rollback would need ahead of time. PM2 hosts: the target's node_modules into
    the host's cache, so the rollback is a rename, not an npm ci. Docker hosts: the target image
    pulled, so the rollback's pull has nothing to fetch. Changes nothing live: run it at the end
    of every deploy, or at any time. --dry-run says what it would do."""
    part = _part()
    report = part.prepare(opts.context(), part.request(to=to, limit=limit), check=opts.dry_run)
    if opts.json:
        emit_json(report)
    else:
        for line in part.prepare_lines(report):
            click.echo(line)
    return ExitStatus(report["exit_status"])


@backend.command("status")
@click.option("--limit", "-l", metavar="HOSTS", default=None, help="Only these hosts or groups.")
@common_options
@pass_opts
@dry_run("read-only")
def backend_status(opts: Options, limit: str | None) -> ExitStatus:
    """Per backend host: live commit and PM2 processes, or running image and container; health."""
    validate.host_limit(limit)
    opts.settings().require_inventory()  # asked for the backend by name: no inventory is exit 2, with how to set one
    return render_status(opts, engine.status(opts.context(), only=[PART.value], limit=limit), one=PART.value)


class BackendCli(PartCli):
    part = PART
    scenarios = (
        Scenario("api-errors", "A",
                 "A: PM2 or container logs scanned for errors, the environment variables the backend needs\n"
                 "(names only), health and the live release; proposes the backend rollback.",
                 "doai_ansible.parts.backend_diagnose:api_errors",
                 limit=("HOSTS", "Only these backend hosts (Ansible pattern).")),
    )
    system_options = (
        SystemOption("--backend-to", "to", "--to", {"metavar": "REF|TAG|IMAGE_ID", "default": None,
                                                    "help": "The backend's target (default: as `backend rollback`)."}),
    )

    def commands(self) -> click.Group:
        return backend

    def system_request_options(self, ctx: RunContext, values: Mapping[str, Any], reason: str | None) -> dict[str, Any]:
        # The hosts' modes (PM2, Docker) come from the inventory, read in-process: no network.
        return dict(super().system_request_options(ctx, values, reason), ctx=ctx)
