"""Data at risk read by PostgreSQL's parser and the catalog (issue 19, item 7), against the real
PostgreSQL rig: what a down file's CASCADE takes along is named in the plan, with row counts,
and needs --accept-data-loss before anything changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from doai_ansible.sandbox.pg_rig import PgRig
from tests.conftest import run_cli
from tests.integration.test_database import V3, env_for, state

pytestmark = pytest.mark.integration


def _cascading_project(rig: PgRig, tmp_path: Path) -> Path:
    """The fixture project whose last down file drops device_issues with CASCADE, while a table
    that no migration made (issue_comments, 3 rows) references it by a foreign key."""
    project = PgRig.project(tmp_path / "p")
    down = PgRig.down_files(project)[V3]
    down.write_text("DROP TABLE public.device_issues CASCADE;\n"
                    "ALTER TABLE public.devices DROP COLUMN last_issue_at;\n")
    rig.sql("CREATE TABLE public.issue_comments (id int PRIMARY KEY, issue_id bigint "
            "CONSTRAINT issue_comments_issue_fk REFERENCES public.device_issues (id), body text)")
    rig.sql("INSERT INTO public.issue_comments VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 2, 'c')")
    rig.sql("CREATE VIEW public.issue_kinds AS SELECT DISTINCT kind FROM public.device_issues")
    rig.sql("CREATE VIEW public.issue_kind_count AS SELECT count(*) AS n FROM public.issue_kinds")
    return project


def test_a_cascade_drop_names_the_dependent_foreign_key_and_needs_the_flag(pg_rig, tmp_path, state_dir):
    rig = pg_rig
    env = env_for(rig, _cascading_project(rig, tmp_path), state_dir)
    before = state(rig)
    plan = run_cli("database", "rollback", "--last", "1", "--dry-run", "--accept-data-loss", "-o", "json", env=env)
    assert plan.code == 0, plan.stdout + plan.stderr
    (step,) = plan.json()["steps"]
    fk = [r for r in step["details"]["at_risk_tables"] if r.get("constraint") == "issue_comments_issue_fk"]
    assert fk and fk[0]["table"] == "public.issue_comments" and fk[0]["rows"] == 3, step["details"]["at_risk_tables"]
    assert "public.issue_comments" in step["at_risk"] and "issue_comments_issue_fk" in step["at_risk"]
    # and the views on it, and the views on those (pg_depend), by name
    assert "view public.issue_kinds" in step["at_risk"] and "view public.issue_kind_count" in step["at_risk"]
    text = run_cli("database", "rollback", "--last", "1", "--dry-run", env=env)
    assert "issue_comments_issue_fk" in text.stdout and "CASCADE" in text.stdout, text.stdout
    res = run_cli("database", "rollback", "--last", "1", "--yes", env=env)
    assert res.code == 2, res.stdout + res.stderr
    assert "--accept-data-loss" in res.stderr and "issue_comments_issue_fk" in res.stderr
    assert state(rig) == before
    assert rig.sql("SELECT count(*) FROM pg_constraint WHERE conname = 'issue_comments_issue_fk'") == [(1,)]


def test_a_do_block_cannot_be_read_and_needs_the_flag(pg_rig, tmp_path, state_dir):
    rig = pg_rig
    project = PgRig.project(tmp_path / "p")
    PgRig.down_files(project)[V3].write_text(
        "DO $$ BEGIN EXECUTE 'DROP TABLE public.device_issues'; END $$;\n"
        "ALTER TABLE public.devices DROP COLUMN IF EXISTS last_issue_at;\n")
    rig.sql("UPDATE public.devices SET last_issue_at = NULL")  # no values: only the DO block is at risk
    env = env_for(rig, project, state_dir)
    before = state(rig)
    res = run_cli("database", "rollback", "--last", "1", "--yes", env=env)
    assert res.code == 2, res.stdout + res.stderr
    assert "cannot be read" in res.stderr and "DO block" in res.stderr and "--accept-data-loss" in res.stderr
    assert state(rig) == before


def test_a_down_file_outside_the_snapshot_schemas_is_refused(pg_rig, tmp_path, state_dir):
    rig = pg_rig
    project = PgRig.project(tmp_path / "p")
    rig.sql("CREATE SCHEMA app")
    rig.sql("CREATE TABLE app.things (id int)")
    PgRig.down_files(project)[V3].write_text(
        "DROP TABLE public.device_issues;\nALTER TABLE public.devices DROP COLUMN last_issue_at;\nDROP TABLE app.things;\n")
    env = env_for(rig, project, state_dir)
    before = state(rig)
    res = run_cli("database", "rollback", "--last", "1", "--yes", "--accept-data-loss", env=env)
    assert res.code == 2, res.stdout + res.stderr
    assert "app" in res.stderr and "database.schemas" in res.stderr
    assert state(rig) == before


def test_what_drop_view_and_drop_type_cascade_take_along_is_named_from_pg_depend(pg_rig, tmp_path, state_dir):
    rig = pg_rig
    project = PgRig.project(tmp_path / "p")
    rig.sql("CREATE VIEW public.open_issues AS SELECT id, device_id FROM public.device_issues WHERE closed_at IS NULL")
    rig.sql("CREATE VIEW public.open_issue_devices AS SELECT DISTINCT device_id FROM public.open_issues")
    rig.sql("CREATE TYPE public.mood AS ENUM ('calm', 'angry')")
    rig.sql("ALTER TABLE public.devices ADD COLUMN mood public.mood")
    rig.sql("UPDATE public.devices SET mood = 'calm' WHERE id IN (1, 2)")
    PgRig.down_files(project)[V3].write_text(
        "DROP VIEW public.open_issues CASCADE;\nDROP TYPE public.mood CASCADE;\n"
        "DROP TABLE public.device_issues;\nALTER TABLE public.devices DROP COLUMN last_issue_at;\n")
    env = env_for(rig, project, state_dir)
    plan = run_cli("database", "rollback", "--last", "1", "--dry-run", "--accept-data-loss", "-o", "json", env=env)
    assert plan.code == 0, plan.stdout + plan.stderr
    (step,) = plan.json()["steps"]
    items = step["details"]["at_risk_tables"]
    assert any(r["table"] == "view public.open_issue_devices" for r in items), items
    (mood,) = [r for r in items if r.get("column") == "mood"]
    assert (mood["table"], mood["rows"]) == ("public.devices", 2)
    assert "open_issue_devices" in step["at_risk"] and "public.devices (column mood" in step["at_risk"]
    before = state(rig)
    refused = run_cli("database", "rollback", "--last", "1", "--yes", env=env)
    assert refused.code == 2 and "--accept-data-loss" in refused.stderr, refused.stdout + refused.stderr
    assert state(rig) == before
    done = run_cli("database", "rollback", "--last", "1", "--yes", "--accept-data-loss", env=env)
    assert done.code == 0, done.stdout + done.stderr
    assert rig.sql("SELECT to_regclass('public.open_issue_devices')") == [(None,)]
