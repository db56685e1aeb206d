import json
import multiprocessing

import pytest

from doai_ansible.errors import ExitStatus, UsageError
from doai_ansible.journal import Journal
from doai_ansible.model import Outcome, Part, RunResult, Step, StepResult, overall_status


def _run(run_id: str, outcome=Outcome.SUCCEEDED) -> RunResult:
    step = Step(Part.BACKEND, "vps1", "a" * 40, "b" * 40, rule="requested")
    return RunResult(run_id, "backend rollback", False, "why", "2026-01-01T00:00:00Z",
                     results=[StepResult(step, outcome)])


def test_append_and_read_back(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    j.append(_run("r1"), who="alice")
    j.append(_run("r2"), who="bob")
    runs = j.runs()
    assert [r["run_id"] for r in runs] == ["r2", "r1"]
    assert runs[1]["who"] == "alice" and runs[1]["steps"][0]["from"] == "a" * 40
    assert j.find("r1")["who"] == "alice"
    with pytest.raises(UsageError):
        j.find("r")  # ambiguous
    with pytest.raises(UsageError):
        j.find("zz")


def _writer(path, n):
    j = Journal(path)
    for i in range(50):
        j.append(_run(f"p{n}-{i}"), who="w" * 2000)  # long lines: interleaving would show


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "j.jsonl"
    procs = [multiprocessing.Process(target=_writer, args=(path, n)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    assert all(json.loads(line)["who"] == "w" * 2000 for line in lines)


def test_damaged_line_is_skipped(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    j.append(_run("r1"))
    with path.open("a") as fh:
        fh.write('{"half": \n')
    j.append(_run("r2"))
    assert [r["run_id"] for r in j.runs()] == ["r2", "r1"]


@pytest.mark.parametrize(
    "outcomes, status",
    [
        ([Outcome.SUCCEEDED, Outcome.UNCHANGED], ExitStatus.OK),
        ([Outcome.SUCCEEDED, Outcome.RESTORED], ExitStatus.FAILED_RESTORED),
        ([Outcome.FAILED], ExitStatus.FAILED_RESTORED),
        ([Outcome.RESTORED, Outcome.NOT_RESTORED], ExitStatus.FAILED_NOT_RESTORED),
        ([Outcome.PLANNED], ExitStatus.OK),
    ],
)
def test_overall_status(outcomes, status):
    results = [StepResult(Step(Part.BACKEND, f"h{i}", "a", "b"), o) for i, o in enumerate(outcomes)]
    assert overall_status(results) is status
