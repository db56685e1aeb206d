"""The database part on the command line: ``doai-rollback database ...`` and its options of
``system rollback``. Imports no part module until a command runs (see :class:`~doai_ansible.part.PartCli`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from doai_ansible import engine
from doai_ansible import parts as parts_registry
from doai_ansible.clikit import Options, common_options, dry_run, pass_opts, render_status, run_jobs
from doai_ansible.errors import ExitStatus, UsageError
from doai_ansible.model import Part
from doai_ansible.part import PartCli, Scenario, SystemOption
from doai_ansible.render import emit_json

if TYPE_CHECKING:
    from doai_ansible.parts.database import DatabasePart

PART = Part.DATABASE


def _part() -> DatabasePart:
    """The part itself (imported now: a command of it runs)."""
    return cast("DatabasePart", parts_registry.get(PART))


@click.group("database")
def database() -> None:
    """Supabase database (PostgreSQL): migrations undone by their down files, snapshots, restore.

    The connection string comes only from DOAI_DATABASE_URL (direct or session-pooler
    connection); its password is never printed, passed on a command line or to a child's
    environment.
    """


@database.command("status")
@common_options
@pass_opts
@dry_run("read-only")
def database_status_cmd(opts: Options) -> ExitStatus:
    """Applied and local migrations (as `supabase migration list`), down files, tables touched."""
    return render_status(opts, engine.status(opts.context(), only=[PART.value]), one=PART.value)


@database.command("snapshot")
@common_options
@pass_opts
@dry_run("refused")
def database_snapshot_cmd(opts: Options) -> ExitStatus:
    """pg_dump -Fc of the application schemas and the migration history, with a checksum and a
    manifest (time, server version, last migration, row counts). Changes nothing."""
    part = _part()
    manifest = part.take_snapshot(opts.context())
    if opts.json:
        emit_json(manifest)
    else:
        click.echo(f"snapshot {manifest['file']}")
        click.echo(f"    sha256 {manifest['sha256']}  {manifest['bytes']:,} bytes  last migration "
                   f"{manifest['last_migration']}  tables: {len(manifest['row_counts'])}")
    return ExitStatus.OK


@database.command("snapshots")
@click.option("--prune", "keep", type=click.IntRange(1), default=None, metavar="KEEP",
              help="Delete all but the KEEP newest intact snapshots (asks; --yes without a terminal).")
@common_options
@pass_opts
@dry_run("plans")
def database_snapshots_cmd(opts: Options, keep: int | None) -> ExitStatus:
    """The snapshots taken so far (by `snapshot`, before every rollback and restore), newest
    first, each checked against its checksum; --prune KEEP removes the older ones (with
    --dry-run: lists the ones it would remove, removes nothing)."""
    part = _part()
    ctx = opts.context()
    if opts.dry_run and keep is None:
        click.echo("doai-rollback: note: --dry-run does not apply to `database snapshots` without --prune: "
                   "listing changes nothing", err=True)
    snaps = part.snapshots(ctx)
    doomed = [s["file"] for s in snaps if s["intact"]][keep:] if keep is not None else []
    deleted: list[str] = []
    if doomed and keep is not None and not opts.dry_run:
        if not opts.yes:
            if not sys.stdin.isatty():
                raise UsageError("--prune deletes snapshots: add --yes to confirm")
            if not click.confirm(f"Delete {len(doomed)} snapshot(s), keeping the {keep} newest?", default=False):
                return ExitStatus.INTERRUPTED
        deleted = part.prune_snapshots(ctx, keep, snaps)
    would = doomed if opts.dry_run else []
    if opts.json:
        emit_json({"snapshots": snaps, "deleted": deleted, "dry_run": opts.dry_run, "would_delete": would})
        return ExitStatus.OK
    for s in snaps:
        state = ("deleted" if s["file"] in deleted else "would be deleted (dry run)" if s["file"] in would
                 else "ok" if s["intact"] else f"DAMAGED: {s['problem']}")
        click.echo(f"{s['created'] or '?'}  {s['database'] or '?'}  last migration {s['last_migration'] or '?'}"
                   f"  {s['bytes']:,} bytes  {state}\n    {s['file']}")
    if not snaps:
        click.echo(f"no snapshots in {ctx.settings.snapshot_dir}")
    if opts.dry_run and keep is not None:
        click.echo(f"dry run: {len(would)} snapshot(s) would be deleted, keeping the {keep} newest intact; "
                   "nothing was deleted")
    return ExitStatus.OK


@database.command("rollback")
@click.option("--to", "to", metavar="VERSION", default=None, help="Undo every migration applied after this one.")
@click.option("--last", "last", type=click.IntRange(1, 100), default=None, help="Undo the last N migrations.")
@click.option("--accept-data-loss", is_flag=True,
              help="Needed when a down file drops or empties tables or columns that hold rows (the plan lists them).")
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal).")
@common_options
@pass_opts
@dry_run("plans")
def database_rollback_cmd(opts: Options, to: str | None, last: int | None, accept_data_loss: bool,
                          reason: str | None) -> ExitStatus:
    """Undo migrations with their down files (supabase/rollbacks/), newest first: a snapshot
    first, then every down statement and history delete in ONE transaction, then verify."""
    part = _part()
    job = engine.Job(part, part.request(to=to, last=last, accept_data_loss=accept_data_loss, reason=reason))
    return run_jobs(opts, [job], command="database rollback", reason=reason,
                    question="Undo these migrations as shown?")


@database.command("restore")
@click.argument("snapshot", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reason", "-r", metavar="TEXT", default=None, help="Why (journal).")
@common_options
@pass_opts
@dry_run("plans")
def database_restore_cmd(opts: Options, snapshot: Path, reason: str | None) -> ExitStatus:
    """Restore a snapshot (checksum checked first) in one transaction, after a snapshot of the
    present; then verify row counts and history."""
    part = _part()
    job = engine.Job(part, part.request(restore_file=str(snapshot), reason=reason))
    return run_jobs(opts, [job], command="database restore", reason=reason,
                    question="Replace the database's application schemas with this snapshot?")


class DatabaseCli(PartCli):
    part = PART
    scenarios = (
        Scenario("migration-failure", "B",
                 "B: migration state, half-applied migrations and the integrity checks; proposes a database\n"
                 "rollback or restore.",
                 "doai_ansible.parts.database_diagnose:migration_failure",
                 no_limit="--limit does not apply to the database"),
    )
    system_options = (
        SystemOption("--database-last", "last", "--last",
                     {"type": click.IntRange(1, 100), "default": None,
                      "help": "Undo the last N migrations (the database part needs this or --database-to)."}),
        SystemOption("--database-to", "to", "--to",
                     {"metavar": "VERSION", "default": None, "help": "Undo every migration applied after this one."}),
        SystemOption("--accept-data-loss", "accept_data_loss", None,
                     {"is_flag": True,
                      "help": "As for `database rollback`: needed when the plan lists data at risk."}),
    )

    def commands(self) -> click.Group:
        return database

    def system_check(self, values: Mapping[str, Any]) -> None:
        if values.get("database_to") is None and values.get("database_last") is None:
            raise UsageError(
                "the database part needs to know which migrations the failed deployment applied",
                hint="add --database-last N or --database-to VERSION (`doai-rollback database status` lists them), "
                     "or --skip database")
