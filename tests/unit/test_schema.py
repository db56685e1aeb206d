"""The JSON contract (doai_ansible/schemas): the schema is a valid draft 2020-12 schema; the
documents the real code builds validate (every outcome and exit kind of a run through the
engine, the whole-system checklist, the error document of ``cli.main``, status/health/history/
locks of an empty state dir); documents that break the contract do not; every command of the
CLI names the kind of document it prints."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest

from doai_ansible import cli, engine, schemas, system
from doai_ansible.context import RunContext
from doai_ansible.errors import ExitStatus, UnreachableError, ValidationError
from doai_ansible.journal import Journal
from doai_ansible.lock import Lock
from doai_ansible.model import Part, RunResult
from doai_ansible.part import Request
from doai_ansible.settings import load_settings
from tests.conftest import run_cli
from tests.unit.test_engine import FakePart
from tests.unit.test_system import calls, fakes, hooks, make_ctx  # noqa: F401 - fixtures

SCHEMA = schemas.load()


def assert_valid(doc: Any, kind: str) -> None:
    problems = schemas.errors(doc, kind)
    assert problems == [], f"{kind}: {problems}\n{json.dumps(doc, indent=2, default=str)[:3000]}"


# -- the schema itself ---------------------------------------------------------------------------------
def test_schema_is_a_valid_2020_12_schema():
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_ref_resolves_and_every_kind_is_offered_at_the_top():
    for ref in _refs(SCHEMA):
        assert ref.startswith("#/"), ref
        node: Any = SCHEMA
        for key in ref[2:].split("/"):
            node = node[key]  # KeyError: a dangling $ref
    top = {r["$ref"].rsplit("/", 1)[1] for r in SCHEMA["anyOf"]}
    assert set(schemas.COMMANDS.values()) | {"error"} == top


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _leaf_commands(cmd, prefix + (name,))
        else:
            out.append(prefix + (name,))
    return out


def test_every_command_of_the_cli_names_its_document_kind():
    leaves = _leaf_commands(cli.cli)
    assert ("backend", "rollback") in leaves and ("history",) in leaves
    missing = [" ".join(c) for c in leaves if schemas.kind_of(c) is None]
    assert missing == [], f"add these commands to doai_ansible/schemas COMMANDS and the schema: {missing}"


@pytest.mark.parametrize(("args", "words", "json_out"), [
    (["-o", "json", "backend", "rollback", "--to", "status", "-y"], ("backend", "rollback"), True),
    (["--state-dir", "history", "history", "--output=json"], ("history",), True),
    (["database", "restore", "/x/snap.dump", "--output", "json"], ("database", "restore"), True),
    (["undo", "20261127T000000Z-abcdef", "-ojson"], ("undo",), True),
    (["-o", "json", "status", "-o", "text"], ("status",), False),
    (["lock", "release", "backend"], ("lock", "release"), False),
])
def test_the_command_and_json_output_are_read_from_the_arguments(args, words, json_out):
    assert schemas.command_words(args) == words
    assert schemas.json_output(args) is json_out


# -- runs through the real engine: every outcome and exit kind -------------------------------------------
@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    inv = tmp_path / "hosts.yml"
    inv.write_text("all: {}\n")
    return RunContext.create(load_settings(None, inventory=inv, state_dir=tmp_path / "state", env={}))


def _parts(seen: list[str], ctx: RunContext, **by_part: dict[str, Any]) -> list[engine.Job]:
    return [engine.Job(FakePart(p, seen, **by_part.get(p.value, {})), Request()) for p in Part]


def _held(ctx: RunContext) -> Any:
    return Lock(ctx.settings.locks_dir, "backend", 60).held(owner="someone", reason="busy", run_id="other")


RUNS = {
    # name: (FakePart options per part, engine.run options, expected exit status)
    "ok": ({}, {}, ExitStatus.OK),
    "dry_run": ({}, {"dry_run": True}, ExitStatus.OK),
    "unchanged": ({p.value: {"live": "v2"} for p in Part}, {}, ExitStatus.OK),
    "restored": ({"database": {"fail": "restored"}}, {}, ExitStatus.FAILED_RESTORED),
    "not_restored": ({"backend": {"fail": "not_restored"}}, {}, ExitStatus.FAILED_NOT_RESTORED),
    "revert_fails": ({"dashboard": {"fail": "restored"}, "agent": {"revert_ok": False}},
                     {"revert_on_failure": True}, ExitStatus.FAILED_NOT_RESTORED),
    "refused_at_plan": ({"database": {"plan_error": ValidationError("bad target", hint="pick another")}}, {},
                        ExitStatus.USAGE),
    "unreachable": ({"agent": {"plan_error": UnreachableError("pc1 unreachable")}}, {}, ExitStatus.UNREACHABLE),
    "refused_at_apply": ({"database": {"apply_error": ValidationError("live state moved")}}, {},
                         ExitStatus.FAILED_RESTORED),
    "declined": ({}, {"confirm": lambda plan: False}, ExitStatus.INTERRUPTED),
    "locked": ({}, {"locked": True}, ExitStatus.LOCKED),
}


@pytest.mark.parametrize("name", RUNS)
def test_run_documents_of_every_outcome_validate(ctx, capsys, name):
    by_part, options, expected = RUNS[name]
    options = dict(options)
    seen: list[str] = []
    if options.pop("locked", False):
        with _held(ctx):
            run = engine.run(ctx, _parts(seen, ctx), command="system rollback", reason="test")
    else:
        run = engine.run(ctx, _parts(seen, ctx, **by_part), command="system rollback", reason="test", **options)
    assert run.exit_status is expected, run.message
    assert_valid(run.to_dict(), "run")
    # as the CLI prints it (a refused run gets "error")
    opts = cli.Options()
    opts.output = "json"
    assert cli.render_run(opts, run) is expected
    printed = json.loads(capsys.readouterr().out)
    assert_valid(printed, "run")
    assert ("error" in printed) is run.message.startswith("REFUSED")
    # and as the journal keeps it (history)
    records = Journal(ctx.settings.journal_path).runs()
    assert_valid(records, "history")
    assert records[0]["exit_status"] == int(expected)


def test_the_engine_runs_above_cover_every_exit_a_run_can_end_with():
    covered = {int(r[2]) for r in RUNS.values()}
    assert covered == {0, 2, 3, 4, 5, 7, 130}


def test_journal_record_of_an_interrupted_run_validates(ctx):
    jobs = _parts([], ctx, dashboard={"apply_error": KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        engine.run(ctx, jobs, command="system rollback", reason="test")
    (record,) = Journal(ctx.settings.journal_path)
    assert record["exit_name"] == "INTERRUPTED"
    assert_valid(record, "journal_record")


# -- the whole-system checklist (with the fake parts and local HTTP server of test_system) ---------------
@pytest.mark.parametrize(("setup", "expected"), [
    (lambda f, h: None, ExitStatus.OK),
    (lambda f, h: setattr(f["database"], "fail", "restored"), ExitStatus.FAILED_RESTORED),
    (lambda f, h: setattr(f["backend"], "fail", "not_restored"), ExitStatus.FAILED_NOT_RESTORED),
    (lambda f, h: setattr(h, "smoke_status", 503), ExitStatus.UNHEALTHY),
    (lambda f, h: setattr(h, "post_status", [503, 200]), ExitStatus.OK),
])
def test_system_rollback_documents_validate(tmp_path, fakes, hooks, setup, expected):  # noqa: F811
    setup(fakes, hooks)
    ctx = make_ctx(tmp_path, hooks)
    run = system.rollback(ctx, system.request(ctx, reason="v3", database_last=1))
    assert run.exit_status is expected, run.message
    doc = run.to_dict()
    assert doc["checklist"]["after"] is not None and doc["checklist"]["report"] is not None
    assert_valid(doc, "system_run")
    assert_valid(Journal(ctx.settings.journal_path).runs(), "history")


@pytest.mark.parametrize("dry_run", [True, False])
def test_system_rollback_without_after_validates(tmp_path, fakes, dry_run):  # noqa: F811
    ctx = make_ctx(tmp_path, None)  # no webhook: the announcements say so
    confirm = None if dry_run else (lambda plan: False)
    run = system.rollback(ctx, system.request(ctx, skip="database"), dry_run=dry_run, confirm=confirm)
    doc = run.to_dict()
    assert doc["checklist"]["after"] is None
    assert_valid(doc, "system_run")


# -- documents of the CLI on an empty state dir, and the error document ----------------------------------
@pytest.fixture
def empty_env(tmp_path: Path) -> dict[str, str]:
    inv = tmp_path / "hosts.yml"
    inv.write_text("all: {}\n")
    (tmp_path / "c.yml").write_text("{}\n")
    return {"DOAI_CONFIG": str(tmp_path / "c.yml"), "DOAI_INVENTORY": str(inv),
            "DOAI_STATE_DIR": str(tmp_path / "state")}


@pytest.mark.parametrize(("command", "kind"), [
    (["status"], "status"), (["health"], "health"), (["history"], "history"), (["lock", "status"], "locks"),
    (["database", "snapshots"], "snapshots"), (["agent", "status"], "part_status"),
])
def test_documents_of_an_empty_state_dir_validate(empty_env, command, kind):
    res = run_cli(*command, "-o", "json", env=empty_env)  # run_cli validates too
    if command == ["health"]:  # nothing configured is nothing checked: an error document, exit 2
        assert res.code == 2 and res.json()["exit_name"] == "USAGE", res.stderr
        assert_valid(res.json(), "error")
        return
    assert res.code == 0, res.stderr
    assert schemas.kind_of(command) == kind
    assert_valid(res.json(), kind)


def test_lock_status_with_a_live_and_a_stale_lock_validates(empty_env):
    locks = Path(empty_env["DOAI_STATE_DIR"]) / "locks"
    Lock(locks, "backend", 3600).acquire(owner="ci", reason="deploy 42", run_id="20261127T000000Z-abcdef")
    (locks / "dashboard.lock").write_text(json.dumps({"target": "dashboard", "owner": "gone", "pid": 999999999,
                                                      "host": "elsewhere", "acquired": 1.0, "reason": None,
                                                      "run_id": None}))
    res = run_cli("lock", "status", "--local", "-o", "json", env=empty_env)
    assert res.code == ExitStatus.LOCKED
    doc = res.json()
    assert [lk["target"] for lk in doc["local"]] == ["backend", "dashboard"] and doc["held"]
    assert_valid(doc, "locks")


@pytest.mark.parametrize("argv", [
    ["history", "--part", "frontend"],
    ["undo", "../etc"],
    ["backend", "rollback", "--to", "$(id)", "--yes"],
    ["system", "rollback", "--only", "frontend", "--yes"],
])
def test_error_document_of_cli_main_validates(empty_env, monkeypatch, capsys, argv):
    for k, v in empty_env.items():
        monkeypatch.setenv(k, v)
    code = cli.main(["-o", "json", *argv])
    doc = json.loads(capsys.readouterr().out)
    assert code == ExitStatus.USAGE and doc["exit_status"] == code
    assert_valid(doc, "error")
    assert_valid(doc, schemas.kind_of(schemas.command_words(argv)) or "")


# -- what must NOT validate: the schema can say no ---------------------------------------------------------
@pytest.fixture
def good_run(ctx) -> dict[str, Any]:
    run = engine.run(ctx, _parts([], ctx, database={"fail": "restored"}), command="system rollback", reason="x")
    doc = run.to_dict()
    assert_valid(doc, "run")
    return doc


def _broken(doc: dict[str, Any], how: str) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    if how == "no exit_status":
        del d["exit_status"]
    elif how == "wrong outcome":
        d["steps"][0]["outcome"] = "done"
    elif how == "exit name disagrees":
        d["exit_name"] = "OK"
    elif how == "unknown exit status":
        d["exit_status"], d["exit_name"] = 9, "ERROR"
    elif how == "step without from":
        del d["steps"][1]["from"]
    elif how == "unknown part":
        d["steps"][0]["part"] = "frontend"
    elif how == "bad run id":
        d["run_id"] = "latest"
    elif how == "exit 0 with a restored step":
        d["exit_status"], d["exit_name"] = 0, "OK"
    elif how == "exit 4 without a not_restored step":
        d["exit_status"], d["exit_name"] = 4, "FAILED_NOT_RESTORED"
    elif how == "no steps":
        del d["steps"]
    return d


@pytest.mark.parametrize("how", ["no exit_status", "wrong outcome", "exit name disagrees", "unknown exit status",
                                 "step without from", "unknown part", "bad run id", "exit 0 with a restored step",
                                 "exit 4 without a not_restored step", "no steps"])
def test_a_run_document_that_breaks_the_contract_does_not_validate(good_run, how):
    bad = _broken(good_run, how)
    assert schemas.errors(bad, "run"), how
    assert schemas.errors([dict(bad, who="me")], "history"), how
    assert not schemas.validator().is_valid(bad), how  # nor as any other kind


def test_the_messages_name_the_key(good_run):
    (msg,) = [m for m in schemas.errors(_broken(good_run, "wrong outcome"), "run") if "outcome" in m][:1]
    assert msg.startswith("steps/0/outcome: 'done' is not one of")


@pytest.mark.parametrize("doc", [
    {"error": "x", "hint": None, "exit_status": 0, "exit_name": "OK"},
    {"error": "x", "hint": None, "exit_name": "USAGE"},
    {"error": "", "hint": None, "exit_status": 2, "exit_name": "USAGE"},
    {"error": "x", "exit_status": 2, "exit_name": "USAGE"},
])
def test_a_broken_error_document_does_not_validate(doc):
    assert schemas.errors(doc, "error")


def test_a_broken_system_checklist_does_not_validate(tmp_path, fakes, hooks):  # noqa: F811
    ctx = make_ctx(tmp_path, hooks)
    doc = system.rollback(ctx, system.request(ctx, reason="v3", database_last=1)).to_dict()
    assert_valid(doc, "system_run")
    bad = copy.deepcopy(doc)
    bad["checklist"]["announcements"][0]["event"] = "middle"
    assert schemas.errors(bad, "system_run")
    bad = copy.deepcopy(doc)
    del bad["checklist"]["after"]["smoke"]
    assert schemas.errors(bad, "system_run")


def test_diagnose_documents_of_the_real_code_validate(empty_env, tmp_path):
    """agent-connection against a closed port (no rig needed): a fault, exit 6; the others
    refuse on an empty inventory (the error document)."""
    cfg = tmp_path / "diag.yml"
    cfg.write_text("diagnose:\n  socketio_url: http://127.0.0.1:9\n")
    res = run_cli("diagnose", "agent-connection", "-o", "json", env=dict(empty_env, DOAI_CONFIG=str(cfg)))
    doc = res.json()
    assert res.code == ExitStatus.UNHEALTHY and not doc["healthy"] and doc["next"]
    assert_valid(doc, "diagnose")
    for scenario in ("api-errors", "migration-failure"):
        res = run_cli("diagnose", scenario, "-o", "json", env=empty_env)
        assert res.code == ExitStatus.USAGE
        assert_valid(res.json(), "error")


@pytest.mark.parametrize(("ok", "unreachable", "expected"), [
    (True, False, ExitStatus.OK), (False, False, ExitStatus.UNHEALTHY), (False, True, ExitStatus.UNREACHABLE)])
def test_diagnosis_of_every_exit_validates(ok, unreachable, expected):
    from doai_ansible.diagnose import Diagnosis

    d = Diagnosis("migration-failure")
    d.add("history", True, "db", "3 applied, 3 local")
    d.add("integrity", ok, "db", "checked", unreachable=unreachable)
    d.suggest("doai-rollback database rollback --last 1 --dry-run")
    doc = d.to_dict()
    assert doc["exit_status"] == int(expected)
    assert_valid(doc, "diagnose")


def test_diagnose_document_as_documented():
    doc = {"scenario": "api-errors", "healthy": False,
           "findings": [{"check": "env", "ok": False, "target": "vps1", "detail": "DATABASE_URL is not set"}],
           "next": ["doai-rollback backend rollback --reason '...'"], "exit_status": 6, "exit_name": "UNHEALTHY"}
    assert_valid(doc, "diagnose")
    assert schemas.errors(dict(doc, scenario="everything"), "diagnose")
    assert schemas.errors(dict(doc, findings=[{"check": "env", "ok": "no", "target": "vps1", "detail": ""}]),
                          "diagnose")


def test_run_cli_fails_a_test_whose_json_breaks_the_contract(good_run):
    bad = json.dumps(_broken(good_run, "wrong outcome"))
    problems = schemas.output_problems(["backend", "rollback", "-o", "json"], bad, 3)
    assert problems and "backend rollback" in problems[0]
    assert schemas.output_problems(["backend", "rollback", "-o", "json"], json.dumps(good_run), 3) == []
    assert schemas.output_problems(["backend", "rollback", "-o", "json"], json.dumps(good_run), 0) == [
        "exit_status 3 in the document, but the command exited 0"]
    assert schemas.output_problems(["history", "-o", "json"], "not json", 0)[0].startswith("stdout is not one JSON")
    assert schemas.output_problems(["history"], "not json", 0) == []


def test_run_document_keys_match_run_result():
    """The contract's required keys are exactly what RunResult.to_dict() always writes."""
    keys = set(RunResult("20261127T000000Z-abcdef", "x", False, None, "2026-11-27T00:00:00.000Z").to_dict())
    assert set(SCHEMA["$defs"]["run"]["required"]) == keys
