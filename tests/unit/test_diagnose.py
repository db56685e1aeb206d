"""The diagnose logic without a rig: log scanning, the findings of a host's report, migration
objects and half-applied detection, where the Socket.IO endpoint is, the Engine.IO handshake
(over a fake transport), exit statuses, and the host-side helpers that scrub and tail."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from doai_ansible import diagnose
from doai_ansible.diagnose import Diagnosis, scan_log
from doai_ansible.parts import agent_diagnose, backend_diagnose, database_diagnose
from doai_ansible.parts.agent_diagnose import socket_target
from doai_ansible.parts.database_diagnose import migration_objects

from tests.conftest import COLLECTION_BOOT, PLUGINS, module_utils

ROOT = Path(__file__).resolve().parents[2]


def _host_utils():
    return module_utils("doai_diagnose")


# -- log scanning ------------------------------------------------------------------------------------
@pytest.mark.parametrize("line", [
    '127.0.0.1 - - [27/Nov/2026:03:00:00 +0000] "GET /api/devices HTTP/1.1" 500 21',
    "GET /api/devices 502 3.210 ms - 21",
    '{"level":"error","statusCode":503,"msg":"request failed"}',
    "request failed status=504",
    "upstream answered 500 Internal Server Error",
])
def test_a_5xx_answer_is_found_in_each_common_log_format(line):
    assert scan_log(line).http_5xx == 1


@pytest.mark.parametrize("line", [
    "GET /api/health 200 1.2 ms - 40",
    "listening on port 5000",
    "processed 503 rows in 500 ms",
    '"GET / HTTP/1.1" 404 9',
    "errors: 0",
])
def test_ordinary_lines_are_not_errors(line):
    assert not scan_log(line).found


def test_a_stack_trace_counts_once_and_its_error_line_is_quoted():
    text = ("TypeError: Cannot read properties of undefined (reading 'id')\n"
            "    at handler (/var/www/doai-backend/routes/devices.js:42:17)\n"
            "    at Layer.handle [as handle_request] (/var/www/doai-backend/node_modules/express/lib/router/layer.js:95:5)\n"
            "    at next (node:internal/process/task_queues:82:21)\n"
            "served\n"
            "Error [ERR_HTTP_HEADERS_SENT]: Cannot set headers after they are sent\n"
            "    at new NodeError (node:internal/errors:405:5)\n")
    scan = scan_log(text)
    assert (scan.stack_traces, scan.errors, scan.http_5xx) == (2, 2, 0)
    assert scan.samples[0].startswith("TypeError: Cannot read")
    assert "2 stack trace(s)" in scan.summary()


def test_controller_scrub_hides_secret_values_and_url_passwords():
    env = {"VERCEL_TOKEN": "tok-123456", "PORT": "3001", "DOAI_DATABASE_URL": "postgresql://u:pw@db/x"}
    out = diagnose.scrub("token tok-123456 port 3001 url postgresql://u:pw@db/x other://me:hunter2@h/", env)
    assert "tok-123456" not in out and "hunter2" not in out and "pw@" not in out and "3001" in out


# -- one backend host's report -> findings --------------------------------------------------------------
def _report(**over):
    rep = {"mode": "pm2", "release": "a" * 40, "version": "3.0.0", "health_url": "http://localhost:3001/api/health",
           "health_status": 200, "health_body": '{"status":"ok"}', "runtime_error": None,
           "processes": [{"name": "api", "pm_id": 0, "status": "online", "restarts": 0, "env_source": "process",
                          "missing_env": []}],
           "logs": [{"kind": "err", "path": "/x-error-0.log", "text": "", "error": None}]}
    rep.update(over)
    return rep


def test_a_healthy_host_report_gives_no_fault():
    d = Diagnosis("api-errors")
    assert backend_diagnose._api_host(d, "vps1", _report(), ("DATABASE_URL",)) is False
    assert d.healthy and d.exit_status == 0
    assert {f.check for f in d.findings} == {"health", "processes", "environment", "logs", "release"}


def test_a_host_with_a_missing_variable_and_500s_is_a_fault_and_the_rollback_is_proposed():
    d = Diagnosis("api-errors")
    rep = _report(health_status="500", health_body='{"error":"boom"}',
                  processes=[{"name": "api", "pm_id": 0, "status": "online", "restarts": 3, "env_source": "process",
                              "missing_env": ["DATABASE_URL"]}],
                  logs=[{"kind": "out", "text": "GET /api/x 500 1 ms", "error": None}])
    assert backend_diagnose._api_host(d, "vps1", rep, ("DATABASE_URL", "PORT")) is True
    backend_diagnose._api_next(d, ["vps1"], ["vps1", "vps2"], None)
    bad = {f.check: f.detail for f in d.findings if not f.ok}
    assert set(bad) == {"health", "environment", "logs"}
    assert "DATABASE_URL" in bad["environment"] and "PORT" not in bad["environment"]
    assert "doai-rollback backend rollback --limit vps1" in d.next
    doc = d.to_dict()
    assert set(doc) == {"scenario", "healthy", "findings", "next", "exit_status", "exit_name"}
    assert (doc["exit_status"], doc["exit_name"], doc["healthy"]) == (6, "UNHEALTHY", False)
    assert all(set(f) == {"check", "ok", "target", "detail"} for f in doc["findings"])


def test_exit_status_unreachable_only_when_nothing_else_is_wrong():
    d = Diagnosis("agent-connection")
    d.add("reachable", False, "pc9", "unreachable", unreachable=True)
    assert d.exit_status == 7 and not d.healthy
    d.add("port from the PC", False, "pc1", "closed")
    assert d.exit_status == 6
    text = "\n".join(d.lines())
    assert "FAULT port from the PC [pc1]: closed" in text


# -- migrations -----------------------------------------------------------------------------------------
def test_migration_objects_of_the_fixture_migration():
    sql = (ROOT / "tests/fixtures/supabase/supabase/migrations/20261120000000_device_issues.sql").read_text()
    made, dropped = migration_objects(sql)
    assert made == [("table", "public.device_issues"), ("column", "public.devices", "last_issue_at")]
    down = (ROOT / "tests/fixtures/supabase/supabase/rollbacks/20261120000000_device_issues.sql").read_text()
    assert migration_objects(down)[1] == {("table", "public.device_issues"), ("column", "public.devices", "last_issue_at")}


def test_indexes_and_quoted_names():
    made, _ = migration_objects('CREATE INDEX IF NOT EXISTS "Idx_A" ON public.t (a);\n'
                                'ALTER TABLE ONLY "App"."Users" ADD COLUMN IF NOT EXISTS "Nick" text;')
    assert made == [("index", "public", "Idx_A"), ("column", "App.Users", "Nick")]


@pytest.mark.parametrize("applied, present, half", [
    (False, {("table", "s.t"): True, ("column", "s.u", "c"): False}, True),  # partly there, not in history
    (False, {("table", "s.t"): False}, False),  # pending, nothing there
    (True, {("table", "s.t"): True, ("column", "s.u", "c"): False}, True),  # applied, a part missing
    (True, {("table", "s.t"): True}, False),
])
def test_half_applied(applied, present, half):
    assert (database_diagnose.half_applied(applied, present) is not None) is half


# -- Socket.IO ------------------------------------------------------------------------------------------
def test_socket_target_precedence():
    agents = {"pc1": {"doai_agent_socketio_host": "api.doai.me", "doai_agent_socketio_port": 443}}
    backends = {"vps": {"ansible_host": "10.0.0.5", "doai_backend_pm2_health_url": "http://localhost:3001/api/health"}}
    assert socket_target("https://io.doai.me/", agents, backends).url == "https://io.doai.me"
    t = socket_target(None, agents, backends)
    assert (t.url, t.host, t.port) == ("http://api.doai.me:443", "api.doai.me", 443)
    t = socket_target(None, {"pc1": {"doai_agent_socketio_host": "{{ x }}"}}, backends)
    assert (t.url, t.host, t.port) == ("http://10.0.0.5:3001", "10.0.0.5", 3001)
    assert socket_target(None, {}, {}) is None


def _transport(status, body):
    seen = []

    def handler(request):
        seen.append(request.url)
        return httpx.Response(status, text=body)

    return httpx.MockTransport(handler), seen


def test_handshake_accepts_an_open_packet_and_names_what_else_it_got():
    open_packet = "0" + json.dumps({"sid": "abc", "upgrades": [], "pingInterval": 25000})
    t, seen = _transport(200, open_packet)
    ok, detail = agent_diagnose.handshake("http://api:3001", transport=t)
    assert ok and str(seen[0]) == "http://api:3001/socket.io/?EIO=4&transport=polling"
    assert agent_diagnose.handshake("http://api:3001", transport=_transport(404, "Cannot GET")[0]) == (
        False, "http://api:3001/socket.io/?EIO=4&transport=polling: HTTP 404")
    ok, detail = agent_diagnose.handshake("http://api:3001", transport=_transport(200, "<html>")[0])
    assert not ok and "not an Engine.IO open packet" in detail
    assert agent_diagnose.parse_handshake(200, '0{"sid": ""}') == "the open packet has no sid"


def test_agent_report_findings():
    d = Diagnosis("agent-connection")
    target = agent_diagnose.SocketTarget("http://api:3001", "api", 3001, "test")
    closed, stopped = agent_diagnose._agent_host(d, "pc1", {"tcp": {"ok": False, "error": "refused"}, "users": [
        {"user": "alice", "folder": True, "running": True, "pid": 10, "log": "a\nconnected\n"},
        {"user": "bob", "folder": True, "running": False, "pid": None, "log": ""}]}, target)
    assert (closed, stopped) == (["pc1"], ["pc1"])
    agent_diagnose._agent_next(d, True, closed, stopped, target)
    assert d.next[0].startswith("open the firewall: TCP 3001") and "doai-rollback agent rollback --limit pc1" in d.next
    by = {f.target: f for f in d.findings if f.check == "agent process"}
    assert by["pc1/alice"].ok and "last log line: connected" in by["pc1/alice"].detail and not by["pc1/bob"].ok


def test_unknown_scenario_and_limit_for_the_database_are_usage_errors():
    from doai_ansible.errors import UsageError

    with pytest.raises(UsageError, match="unknown scenario 'nope'") as info:
        diagnose.run(None, "nope")  # type: ignore[arg-type]
    assert info.value.hint == "one of api-errors, migration-failure, agent-connection"
    with pytest.raises(UsageError, match="^--limit does not apply to the database$"):
        diagnose.run(None, "migration-failure", limit="x")  # type: ignore[arg-type]


def test_each_part_brings_its_scenarios_through_the_registry_in_the_runbooks_order():
    """Section 7's A, B, C, each declared by the part that runs it; its function is found by its
    dotted name (imported only when it runs) and takes --limit exactly when the scenario says so."""
    import inspect

    from doai_ansible import parts as registry

    owners = {s.name: face.name for face in registry.all_clis() for s in face.scenarios}
    assert owners == {"api-errors": "backend", "migration-failure": "database", "agent-connection": "agent"}
    assert [(s.letter, s.name) for s in registry.scenarios()] == [
        ("A", "api-errors"), ("B", "migration-failure"), ("C", "agent-connection")]
    for s in registry.scenarios():
        fn = registry.scenario_function(s.function)
        assert fn.__module__ == f"doai_ansible.parts.{owners[s.name]}_diagnose"
        assert ("limit" in inspect.signature(fn).parameters) is (s.limit is not None), s.name
        assert s.limit is not None or s.no_limit


# -- the host side ----------------------------------------------------------------------------------------
def test_host_scrub_replaces_secret_values_not_ordinary_ones():
    u = _host_utils()
    env = {"SUPABASE_SERVICE_ROLE_KEY": "srk-abcdef", "JWT_SECRET": "s3cr3t-value", "PORT": "3001",
           "ANSIBLE_PRIVATE_KEY_FILE": "/root/.ssh/id", "PIN": "12"}
    values = u.secret_values(env)
    assert values == ["s3cr3t-value", "srk-abcdef"]
    out = u.scrub("key srk-abcdef jwt s3cr3t-value port 3001 file /root/.ssh/id db postgres://a:b@c/d", values)
    assert out == "key *** jwt *** port 3001 file /root/.ssh/id db postgres://a:***@c/d"
    assert u.set_names({"A": "1", "B": "", "C": None}) == ["A"]


def test_host_tail_reads_the_last_lines_only(tmp_path):
    u = _host_utils()
    p = tmp_path / "app.log"
    p.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert u.tail(str(p), 3) == ("line 997\nline 998\nline 999", None)
    text, err = u.tail(str(p), 5, max_bytes=30)  # a cut first line is dropped
    assert err is None and text.splitlines()[0].startswith("line 99") and len(text.splitlines()) <= 5
    assert u.tail(str(tmp_path / "missing.log"), 3)[1].endswith("No such file or directory")


def test_pm2_module_reads_a_cluster_workers_handed_over_environment_and_scrubs_its_logs(tmp_path):
    """The module against a stand-in `pm2` (prints a jlist) and a real process whose environment
    carries the app's variables the way PM2's cluster mode hands them over (``pm2_env`` JSON)."""
    import os
    import subprocess
    import sys

    repo = tmp_path / "app"
    repo.mkdir()
    (repo / "package.json").write_text('{"version": "3.0.0"}\n')
    g = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "v3"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=g, capture_output=True)
    secret = "very-secret-value-42"
    handed = {"env": {"PORT": "3001", "JWT_SECRET": secret, "EMPTY_ONE": ""}, "status": "online"}
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              env={"PATH": os.environ["PATH"], "pm2_env": json.dumps(handed)})
    try:
        err_log = tmp_path / "api-error-0.log"
        err_log.write_text("old line\n" * 10 + f"Error: auth failed with {secret}\n    at f (/app/x.js:1:2)\n")
        jlist = [{"name": "api", "pm_id": 0, "pid": worker.pid,
                  "pm2_env": {"status": "online", "restart_time": 2, "pm_out_log_path": "/dev/null",
                              "pm_err_log_path": str(err_log)}}]
        (tmp_path / "jlist.json").write_text(json.dumps(jlist))
        pm2 = tmp_path / "pm2"
        pm2.write_text(f"#!/bin/sh\ncat {tmp_path / 'jlist.json'}\n")
        pm2.chmod(0o755)
        home = tmp_path / "pm2home"
        home.mkdir()
        (home / "pm2.pid").write_text(str(worker.pid))  # a live "daemon": the module may ask pm2
        args = {"path": str(repo), "pm2_bin": str(pm2), "pm2_home": str(home), "lines": 3,
                "required_env": ["PORT", "JWT_SECRET", "EMPTY_ONE", "DATABASE_URL"]}
        argfile = tmp_path / "args.json"
        argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        lib = PLUGINS / "modules" / "doai_backend_pm2_diagnose.py"
        boot = (COLLECTION_BOOT + f"sys.argv = ['module', {str(argfile)!r}]; exec(compile(open({str(lib)!r}).read(), 'm', 'exec'))")
        proc = subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, check=False)
        # no daemon (a stale pid file): pm2 is not called at all, since any pm2 command starts one
        (home / "pm2.pid").write_text("999999999")
        pm2.write_text(f"#!/bin/sh\ntouch {tmp_path / 'daemon-started'}\ncat {tmp_path / 'jlist.json'}\n")
        argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        no_daemon = subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, check=False)
    finally:
        worker.kill()
        worker.wait()
    assert not (tmp_path / "daemon-started").exists()
    assert "the PM2 daemon is not running" in no_daemon.stdout, no_daemon.stdout + no_daemon.stderr
    out = json.loads(proc.stdout)
    assert secret not in proc.stdout
    (p,) = out["processes"]
    assert p["env_source"] == "process" and p["missing_env"] == ["EMPTY_ONE", "DATABASE_URL"]
    (log,) = out["logs"]  # /dev/null is not read
    assert log["kind"] == "err" and log["text"].splitlines() == [
        "old line", "Error: auth failed with ***", "    at f (/app/x.js:1:2)"]
    assert out["version"] == "3.0.0" and len(out["commit"]) == 40
    assert diagnose.scan_log(log["text"]).stack_traces == 1


def test_logs_read_in_a_plan_run_keep_a_hosts_report_past_a_later_refusal():
    """The checklist's logs read in a plan's run (issue 20): a host that reported keeps its
    report though its plan refused later in that run; one that ran without reporting (its read
    failed, ignored there) and one not reached have errors; a plain diagnose run is unchanged."""
    from doai_ansible.runner import HostFailure, PlaybookRun

    pb = PlaybookRun(playbook="p.yml", status="failed", rc=2, stats={},
                     custom={"k": {"vps1": {"logs": ["x"]}}},
                     failures=[HostFailure("vps1", "Capture", "dirty tree"), HostFailure("vps3", "Reach", "no route", True)],
                     hosts=["vps1", "vps2", "vps3"], log_file=None, artifacts=None)
    got = diagnose._per_host(pb, "k", reported_first=True)
    assert got == {"vps1": {"logs": ["x"]},
                   "vps2": {"error": "its logs could not be read", "unreachable": False},
                   "vps3": {"error": "unreachable: no route", "unreachable": True}}
    plain = diagnose._per_host(pb, "k")
    assert plain["vps1"]["error"] == "Capture: dirty tree" and "vps2" not in plain
    # a read that failed says why, when the role reported its cause (``<key>_error``), scrubbed
    pb.custom["k_error"] = {"vps2": "git log failed: postgres://u:hunter2@db/x"}
    why = diagnose._per_host(pb, "k", reported_first=True)["vps2"]["error"]
    assert why.startswith("its logs could not be read: git log failed: postgres://") and "hunter2" not in why


def test_a_state_read_that_failed_in_a_plan_run_says_why():
    """The checklist's state read in a plan's run (issue 20): a host whose read failed (ignored,
    its plan went on) is "its state could not be read", with the cause the role reported."""
    from doai_ansible.parts.backend_pm2 import BackendPart
    from doai_ansible.runner import PlaybookRun

    part = BackendPart()
    pb = PlaybookRun(playbook="p.yml", status="successful", rc=0, stats={}, custom={}, failures=[],
                     hosts=["vps1"], log_file=None, artifacts=None)
    assert part.status_of(pb, None)["hosts"]["vps1"]["error"] == "its state could not be read"
    pb.custom[f"{part.status_stats_key}_error"] = {"vps1": "/srv/app is not the top of a git checkout"}
    assert part.status_of(pb, None)["hosts"]["vps1"]["error"] == (
        "its state could not be read: /srv/app is not the top of a git checkout")
