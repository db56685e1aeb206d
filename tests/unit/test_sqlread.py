"""Down files read by PostgreSQL's own parser (issue 19, item 7): every statement the regex
reading missed or misread is classified, and the database part and `diagnose
migration-failure` read names alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from doai_ansible.parts import database_diagnose
from doai_ansible.db import migrations as mig


def at_risk(tmp_path: Path, sql: str) -> list[tuple]:
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "r").mkdir(exist_ok=True)
    (tmp_path / "m" / "20261120000000_x.sql").write_text("SELECT 1;\n")
    (tmp_path / "r" / "20261120000000_x.sql").write_text(sql)
    m = mig.on_disk(tmp_path / "m", tmp_path / "r")["20261120000000"]
    return [(r["table"], r.get("column"), r["what"]) for r in m.at_risk()]


@pytest.mark.parametrize(("sql", "expected"), [
    ("DROP SCHEMA app CASCADE;", [("app", None, "schema app dropped with CASCADE")]),
    ("DROP TYPE public.mood CASCADE;", [("public.mood", None, "type public.mood dropped with CASCADE")]),
    ("ALTER TABLE devices DROP COLUMN a, DROP COLUMN b;",
     [("public.devices", "a", "column a dropped"), ("public.devices", "b", "column b dropped")]),
    ("ALTER TABLE public.devices ALTER COLUMN serial TYPE int USING serial::int;",
     [("public.devices", "serial", "column serial type changed")]),
    ("UPDATE public.devices SET last_issue_at = NULL;", [("public.devices", None, "rows updated")]),
    ("WITH gone AS (DELETE FROM public.system_logs RETURNING id) INSERT INTO public.archive SELECT id FROM gone;",
     [("public.system_logs", None, "rows deleted")]),
    ('ALTER TABLE "Device Logs" DROP COLUMN "Level";', [("public.Device Logs", "Level", "column Level dropped")]),
    ("ALTER TABLE public.device_issues DROP CONSTRAINT device_issues_device_id_fkey;",
     [("public.device_issues.device_issues_device_id_fkey", None,
       "constraint public.device_issues.device_issues_device_id_fkey dropped")]),
    ("DROP TABLE IF EXISTS public.system_logs CASCADE;", [("public.system_logs", None, "dropped")]),
    ("TRUNCATE public.system_logs;", [("public.system_logs", None, "truncated")]),
])
def test_each_statement_is_classified(tmp_path, sql, expected):
    assert at_risk(tmp_path, sql) == expected


@pytest.mark.parametrize("sql", [
    "DO $$ BEGIN EXECUTE 'DROP TABLE public.devices'; END $$;",
    "CALL public.cleanup();",
    "SELECT public.purge_everything();",
    "VACUUM public.devices;",
    "DROP TABLE devices WHERE;",  # the parser refuses it
])
def test_what_cannot_be_read_is_at_risk_and_says_why(tmp_path, sql):
    (item,) = at_risk(tmp_path, sql)
    assert item[0] == "20261120000000_x.sql statement 1 (line 1)"
    assert item[2].startswith("cannot be read: ") and sql.split()[0] in item[2]


def test_an_unreadable_statement_needs_the_flag_whatever_the_rows():
    from doai_ansible.parts.database import _risk_text
    text = _risk_text([{"table": "x.sql statement 1 (line 1)", "what": "cannot be read: DO ...", "rows": 0,
                        "always": True, "action": "unreadable"}])
    assert text == "x.sql statement 1 (line 1) (cannot be read: DO ...)"


def test_quoted_names_are_read_alike_by_the_part_and_diagnose(tmp_path):
    sql = ('CREATE TABLE "Device Logs" (id int);\nALTER TABLE public."Device Logs" ADD COLUMN "Level" text;\n'
           'CREATE INDEX "Logs_Idx" ON "Device Logs" (id);\n')
    made, _ = database_diagnose.migration_objects(sql)
    assert made == [("table", "public.Device Logs"), ("column", "public.Device Logs", "Level"),
                    ("index", "public", "Logs_Idx")]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "20261120000000_x.sql").write_text(sql)
    m = mig.on_disk(tmp_path / "m", tmp_path / "r")["20261120000000"]
    assert m.creates() == ["public.Device Logs"] and m.touches() == ["public.Device Logs"]
    _, dropped = database_diagnose.migration_objects('DROP TABLE "Device Logs"; ALTER TABLE "Device Logs" DROP COLUMN "Level";')
    assert dropped == {("table", "public.Device Logs"), ("column", "public.Device Logs", "Level")}
