"""The whole-system rollback on the whole-system rig (doai_ansible/sandbox/system_rig.py): every
part broken the way a failed deployment breaks it, then ``doai-rollback system rollback`` as a
user runs it; the live state is read from the rigs themselves, never through the tool."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from doai_ansible.sandbox.system_rig import BAD_MIGRATION_FILE
from tests.conftest import run_cli

pytestmark = pytest.mark.integration

ORDER = ["agent", "backend", "database", "dashboard"]


def _rollback(rig, state_dir: Path, *extra: str):
    return run_cli("system", "rollback", "--database-last", "1", "--reason", "release 1.5 broke it all", "--yes",
                   "-o", "json", *extra, env=rig.env(state_dir), timeout=600)


def _journal(state_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (state_dir / "journal.jsonl").read_text().splitlines() if line.strip()]


def _files_under(d: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in d.rglob("*") if p.is_file() and p.suffix != ".dump")


class _Webhook:
    """A webhook receiver on loopback: the announcements' texts, in order."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        texts = self.texts = []

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                texts.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))["text"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = _Webhook()
    yield hook
    hook.close()


def _host_ledger(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_whole_system_rolled_back_in_order_with_report_then_undone(system_rig, state_dir, webhook):
    rig = system_rig.break_all()
    assert rig.state() == rig.expected_bad()
    # ansible-runner's artifacts kept for forensics (keep_artifacts): searched for secrets below too
    config = state_dir.parent / "keep-artifacts.json"
    config.write_text(json.dumps(dict(json.loads(rig.config().read_text()), keep_artifacts=True)))
    env = dict(rig.env(state_dir), DOAI_WEBHOOK_URL=webhook.url, DOAI_CONFIG=str(config))
    res = run_cli("system", "rollback", "--database-last", "1", "--reason", "release 1.5 broke it all", "--yes",
                  "-o", "json", env=env, timeout=600)
    assert res.code == 0, res.stderr + res.stdout
    assert rig.state() == rig.expected_good()
    doc = res.json()
    # the order, from the journal's timestamps: each part starts after the one before has finished
    (rec,) = [r for r in _journal(state_dir) if r["command"] == "system rollback"]
    assert rec["run_id"] == doc["run_id"] and rec["parts"] == ORDER
    spans = {}
    for s in rec["steps"]:
        assert s["outcome"] == "succeeded", s
        lo, hi = spans.get(s["part"], (s["started"], s["finished"]))
        spans[s["part"]] = (min(lo, s["started"]), max(hi, s["finished"]))
    assert list(spans) == ORDER
    for earlier, later in zip(ORDER, ORDER[1:], strict=False):
        assert spans[earlier][1] <= spans[later][0], (earlier, later, spans)
    # the checklist: the state found, the scope, the checks after, the report
    c = rec["checklist"]
    assert json.loads(Path(c["before"]["state_file"]).read_text())["backend"]["healthy"] is False
    assert "dashboard" in c["before"]["scope"]["unhealthy"]
    assert c["after"]["healthy"] and all(s["ok"] for s in c["after"]["smoke"]) and c["after"]["smoke"]
    # the checks after read a part once no part left changes it (and, for a playbook read, no
    # playbook part is left): the agents' after the backend, the backend's after the database
    at = {e["event"]: e["at"] for e in c["timeline"]}
    assert spans["backend"][1] <= at["after: the agent read now (no part left changes it)"] <= spans["dashboard"][1]
    assert spans["database"][1] <= at["after: the backend read now (no part left changes it)"] <= spans["dashboard"][1]
    md = Path(c["report"]["markdown"]).read_text()
    for needle in ("| agent | pc01/alice |", "| backend | sandbox-vps |", "| database |", "| dashboard |",
                   "| Infrastructure | TBD | TBD |", "## Root cause (to fill in)", f"doai-rollback undo {rec['run_id']}"):
        assert needle in md, needle
    assert json.loads(Path(c["report"]["json"]).read_text())["steps"] == rec["steps"]
    # the agents' plan before the change and their read after it (the same playbook in check mode,
    # the same folder): both logs and both runs' artifacts kept, the first not overwritten
    plan_dir = state_dir / "runs" / rec["run_id"] / "plan"
    assert {"agent_rollback.log", "agent_rollback-2.log"} <= {p.name for p in plan_dir.glob("*.log")}
    assert (plan_dir / "agent_rollback-runner").is_dir() and (plan_dir / "agent_rollback-2-runner").is_dir()
    # undo: every part rolled forward to the state that run found, newest part first
    assert len(webhook.texts) == 2
    undo = run_cli("undo", rec["run_id"], "--yes", "--reason", "undo-canary-reason: false alarm", "-o", "json",
                   env=dict(rig.env(state_dir), DOAI_WEBHOOK_URL=webhook.url), timeout=600)
    assert undo.code == 0, undo.stderr + undo.stdout
    assert rig.state() == rig.expected_bad()
    udoc = undo.json()
    parts_in_order = list(dict.fromkeys(s["part"] for s in udoc["steps"]))
    assert parts_in_order == list(reversed(ORDER))
    # the undo of a whole-system run is a service change too: announced, checked and reported
    assert len(webhook.texts) == 4 and "undo of rollback" in webhook.texts[2] and "started" in webhook.texts[2]
    assert "undo-canary-reason" in webhook.texts[2] and "ended: OK" in webhook.texts[3]
    umd = Path(udoc["checklist"]["report"]["markdown"]).read_text()
    assert f"DoAi undo {rec['run_id']} (run {udoc['run_id']})" in umd and "undo-canary-reason" in umd
    assert udoc["checklist"]["before"] and udoc["checklist"]["after"]
    # its reason reaches the host ledgers, as `undo --help` says
    ledgers = [rig.sandbox.host_state / "ledger.jsonl"] + (
        [rig.docker.host_state / "docker-ledger.jsonl"] if rig.docker else [])
    for host in ledgers:
        last = _host_ledger(host)[-1]
        assert "undo-canary-reason" in json.dumps(last), (host, last)
    # no secret anywhere: output, journal, run logs, reports
    everything = res.stdout + res.stderr + undo.stdout + undo.stderr + _files_under(state_dir)
    for secret in rig.secrets():
        assert secret not in everything


def test_failure_in_the_database_stops_there(system_rig, state_dir):
    rig = system_rig.break_all()
    # The down file fails half way: its first statement works, the second does not.
    down = rig.pg.project_dir / "supabase" / "rollbacks" / BAD_MIGRATION_FILE
    down.write_text("DROP TABLE public.device_tags;\nALTER TABLE public.no_such_table ADD COLUMN x int;\n")
    res = _rollback(rig, state_dir)
    assert res.code == 3, res.stderr + res.stdout
    state, good, bad = rig.state(), rig.expected_good(), rig.expected_bad()
    assert state["agent"] == good["agent"] and state["backend"] == good["backend"]  # stay rolled back
    assert state["database"] == bad["database"]  # as it was: the one transaction rolled back
    assert "public.device_tags" in rig.pg.tables()
    assert state["dashboard"] == bad["dashboard"]  # untouched
    doc = res.json()
    outcomes = {s["part"]: s["outcome"] for s in doc["steps"]}
    # "failed": its one transaction rolled back, so nothing of it was ever changed
    assert outcomes == {"agent": "succeeded", "backend": "succeeded", "database": "failed",
                        "dashboard": "skipped"}
    assert doc["exit_name"] == "FAILED_RESTORED"
    md = Path(doc["checklist"]["report"]["markdown"]).read_text()
    assert "FAILED_RESTORED" in md and "| dashboard | doai-dashboard |" in md and "| skipped |" in md
    # exit 3 names the part that failed, what it left as it was, and what stays rolled back
    where = doc["where_parts_stand"]
    assert where["failed_part"] == "database" and where["not_attempted"] == ["dashboard"]
    assert where["put_back"] == [] and [t.split()[0] for t in where["left_as_they_were"]] == ["database"]
    assert {t.split()[0] for t in where["stay_rolled_back"]} == {"agent", "backend"}
    assert "back on what it had before" not in doc["message"]  # the database was never changed
    for needle in ("FAILED at the database", "stay rolled back: agent pc01/alice", "backend sandbox-vps",
                   "not attempted: dashboard"):
        assert needle in doc["message"] and needle in md, needle


def test_data_at_risk_without_the_flag_is_refused_before_any_part_changes(system_rig, state_dir):
    """The plan knows the database drops rows and --accept-data-loss was not given: exit 2 before
    the agent and the backend are touched, no start announced, no report (it used to roll back
    the agent and the backend first, then refuse in the database's apply with exit 3)."""
    rig = system_rig.break_all()
    rig.pg.sql("INSERT INTO public.device_tags (device_id, tag) SELECT id, 'canary-tag' FROM public.devices")
    res = _rollback(rig, state_dir)
    assert res.code == 2, res.stderr + res.stdout
    assert rig.state() == rig.expected_bad()  # nothing changed anywhere
    doc = res.json()
    assert "database: data at risk" in doc["message"] and "--accept-data-loss" in doc["message"]
    assert doc["checklist"]["announcements"] == [] and doc["checklist"]["report"] is None
    assert not any(s["outcome"] in ("succeeded", "restored") for s in doc["steps"])
    # the dry run says the same, with the plan, and exits as the real run would
    dry = _rollback(rig, state_dir, "--dry-run")
    assert dry.code == 2 and "REFUSED" in dry.json()["message"] and dry.json()["steps"], dry.stdout
    assert rig.state() == rig.expected_bad()


def test_dry_run_changes_nothing_and_writes_no_report(system_rig, state_dir):
    rig = system_rig.break_all()
    res = _rollback(rig, state_dir, "--dry-run")
    assert res.code == 0, res.stderr
    assert rig.state() == rig.expected_bad()
    doc = res.json()
    assert {s["outcome"] for s in doc["steps"]} == {"planned"} and doc["checklist"]["report"] is None
    assert not (state_dir / "reports").exists()


def test_the_checklist_reads_each_host_once_in_its_plan_run(system_rig, state_dir):
    """Issue 20: before anything changes, each host is contacted by one playbook run that gives
    its plan, the state the checklist keeps and its last log lines (not a status run, a
    diagnose run and a plan run); a backend host by one module call, its capture. The state and
    the logs kept are the live ones."""
    rig = system_rig.break_all()
    # the agents' batch and forks as `agent rollback` takes them, and the runner's artifacts kept
    config = state_dir.parent / "keep-artifacts.json"
    config.write_text(json.dumps(dict(json.loads(rig.config().read_text()), keep_artifacts=True)))
    res = run_cli("system", "rollback", "--database-last", "1", "--reason", "release 1.5 broke it all", "--yes",
                  "-o", "json", "--dry-run", "--agent-batch", "1", "--agent-forks", "3",
                  env=dict(rig.env(state_dir), DOAI_CONFIG=str(config)), timeout=600)
    assert res.code == 0, res.stderr
    assert rig.state() == rig.expected_bad()
    run_dir = state_dir / "runs" / res.json()["run_id"]
    argv = json.loads((run_dir / "plan" / "agent_rollback-runner" / "artifacts" / "run" / "command").read_text())["command"]
    assert argv[argv.index("--forks") + 1] == "3", argv
    extravars = json.loads((run_dir / "plan" / "agent_rollback-runner" / "env" / "extravars").read_text())
    assert extravars["doai_agent_serial"] == "1", extravars
    # the playbook runs of the run: the plans only (a status or diagnose run would leave its log too)
    expected = ["agent_rollback.log", "backend_pm2_rollback.log"] + (
        ["backend_docker_rollback.log"] if rig.docker else [])
    assert sorted(p.name for p in (run_dir / "plan").glob("*.log")) == sorted(expected)
    assert not list(run_dir.rglob("*diagnose*.log")) and not list(run_dir.rglob("*status*.log"))
    # and in each backend host's one capture call: no separate status or log read before it
    for name in expected[1:]:
        text = (run_dir / "plan" / name).read_text()
        assert "Report the status]" in text and "Report the evidence]" in text, text
        assert "Inspect the " not in text and "Read the PM2 logs" not in text and "Read the container's logs" not in text
    # the state kept: what the hosts run now (the failed release), read in the plan run
    before = json.loads((run_dir / "before-status.json").read_text())
    vps = before["backend"]["hosts"][rig.sandbox.host_name]
    assert vps["commit"] == rig.sandbox.commits["v3"] and vps["processes"] and not vps.get("error"), vps
    assert before["backend"]["healthy"] is False
    assert set(before["agent"]["hosts"]) == set(rig.agents.pcs)
    # the logs kept: each backend host's PM2/container log lines and each PC's agent log, per user
    pm2_log = (run_dir / "logs" / f"backend-{rig.sandbox.host_name}.log").read_text()
    assert f"# {rig.sandbox.host_name}: backend (pm2)" in pm2_log and "## " in pm2_log
    for pc in rig.agents.pcs:
        text = (run_dir / "logs" / f"agent-{pc}.log").read_text()
        assert all(f"## {pc}/{u}: running pid" in text for u in rig.agents.users), text
    if rig.docker:
        docker = before["backend"]["hosts"][rig.docker.host_name]
        assert docker["mode"] == "docker" and not docker.get("error"), docker
        assert "backend (docker)" in (run_dir / "logs" / f"backend-{rig.docker.host_name}.log").read_text()


def test_both_backend_modes_roll_back_side_by_side_and_go_back_together(system_rig, state_dir):
    """A fleet with a PM2 host and a Docker host: both applied at once (each its own host), and
    when the Docker host's target crash-loops, the PM2 host that went through is put back too:
    the fleet ends where it was, whole (exit 3), not on mixed releases."""
    rig = system_rig.break_all()
    assert rig.docker is not None, "the system rig needs its Docker VPS here"
    rig.docker.registry_tag("previous", "crash")  # the Docker host's target exits as it starts
    before = rig.state()["backend"]
    res = run_cli("backend", "rollback", "--yes", "-o", "json", env=rig.env(state_dir), timeout=600)
    assert res.code == 3, res.stdout + res.stderr
    steps = {s["target"]: s for s in res.json()["steps"]}
    pm2, docker = steps[rig.sandbox.host_name], steps[rig.docker.host_name]
    assert docker["outcome"] == "restored" and "crash-loops" in docker["message"], docker
    assert pm2["outcome"] == "restored" and "other mode failed" in pm2["message"], pm2
    assert rig.state()["backend"] == before  # each host back on what it ran
    # side by side, as the hosts recorded it: the Docker host's apply job (its name holds its
    # start, to the microsecond) started before the PM2 host's job had recorded its rollback
    run_id = res.json()["run_id"]

    def entries(path):
        return [e for e in _host_ledger(path) if e.get("run_id") == run_id and e.get("by") == "job"]

    pm2_done = next(e for e in entries(rig.sandbox.host_state / "ledger.jsonl") if e["action"] == "rollback")
    docker_job = next(e for e in entries(rig.docker.host_state / "docker-ledger.jsonl") if e["action"] == "rollback")
    docker_started = docker_job["job"].split("-")[-2]  # <run id>-<YYYYmmddTHHMMSSffffff>-apply
    assert docker_started[:15] < pm2_done["at"].replace("-", "").replace(":", "").rstrip("Z"), (docker_job, pm2_done)


def test_refusals_change_nothing(system_rig, state_dir):
    rig = system_rig
    env = rig.env(state_dir)
    for args, needle in ((["--reason", "x"], "--database-last N or --database-to VERSION"),
                         (["--only", "agents"], "'agents' is not a part"),
                         (["--only", "backend", "--database-last", "1"], "--database-last is for the database"),
                         (["--database-to", "junk", "--reason", "x"], "--database-to 'junk' is not a migration")):
        res = run_cli("system", "rollback", "--yes", *args, env=env)
        assert res.code == 2 and needle in res.stderr, (args, res.stderr)
    assert rig.state() == rig.expected_good()
    assert not (state_dir / "journal.jsonl").exists()  # refused before any run began


def test_demo_runs_to_the_end_and_cleans_up():
    """The README's first command's main job: every part built, broken, rolled back, checked.
    (Its workdir stays in the default temp dir: sshd and ssh control sockets need short paths.)"""
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("doai-demo-*"))
    res = run_cli("demo", "-o", "json", timeout=900)
    assert res.code == 0, res.stderr[-3000:]
    doc = res.json()
    assert doc["wrong"] == [] and doc["after"] == doc["expected"] and doc["before"] != doc["expected"]
    assert doc["rollback"]["parts"] == ORDER and doc["rollback"]["exit_name"] == "OK"
    assert "demo succeeded" in res.stderr
    assert set(tmp.glob("doai-demo-*")) == before  # its temporary workdir is gone
