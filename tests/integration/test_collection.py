"""The collection doai.rollback built with ansible-galaxy, installed into a temporary collections
path, and one of its playbooks run by its FQCN (doai.rollback.backend_pm2_status) from another
directory against the PM2 rig (issue 21 §1: outside the repository the roles were "not found");
its roles, modules and the callback resolve by FQCN from the install too."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib

import pytest

from tests.collection import BIN, build, clean_env, install
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration

# Records what the run did (each task's resolved action, the playbook's custom stats) as JSON.
RECORDER = """
import json, os
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "doai_test_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.actions = []

    def v2_runner_on_ok(self, result):
        self.actions.append(result._task.resolved_action or result._task.action)

    def v2_playbook_on_stats(self, stats):
        with open(os.environ["DOAI_TEST_RECORD"], "w") as fh:
            json.dump({"actions": self.actions, "custom": stats.custom.get("_run", {})}, fh)
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("collection")
    home = base / "ansible-home"
    return install(build(base / "dist", home), base / "collections", home), home


def _status(playbook, sandbox, cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(sandbox.inventory), str(playbook)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL, check=False)


def test_installed_collection_runs_the_status_playbook_from_elsewhere(installed, sandbox, tmp_path):
    collection, home = installed
    sb = sandbox
    elsewhere = tmp_path / "elsewhere"  # no ansible.cfg, no roles/ here
    elsewhere.mkdir()
    audit = tmp_path / "host-key-audit.json"
    record = tmp_path / "record.json"
    callbacks = tmp_path / "callbacks"
    callbacks.mkdir()
    (callbacks / "doai_test_record.py").write_text(RECORDER)
    env = clean_env(
        home,
        ANSIBLE_COLLECTIONS_PATH=str(collection.parents[2]),
        ANSIBLE_HOST_KEY_CHECKING="true",
        ANSIBLE_GATHERING="explicit",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp_path / "cp"),
        ANSIBLE_CALLBACK_PLUGINS=str(callbacks),
        # The collection's callback, by FQCN, from the install; and the recorder above.
        ANSIBLE_CALLBACKS_ENABLED="doai.rollback.doai_host_key_audit,doai_test_record",
        DOAI_HOST_KEY_AUDIT_FILE=str(audit),
        DOAI_TEST_RECORD=str(record),
    )
    assert (collection / "playbooks" / "backend_pm2_status.yml").is_file()
    playbook = "doai.rollback.backend_pm2_status"  # by FQCN: ansible-playbook finds it in the install
    proc = _status(playbook, sb, elsewhere, env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    done = json.loads(record.read_text())
    # The role's module ran on the host, from the installed collection.
    assert "doai.rollback.doai_backend_pm2_inspect" in done["actions"], done["actions"]
    report = done["custom"]["doai_backend_pm2_status"][sb.host_name]
    assert report["commit"] == sb.commits["v3"] == sb.head()
    assert report["health_status"] == 500  # v3 is the bad release
    assert report["processes"] and all(p["status"] == "online" for p in report["processes"])
    assert json.loads(audit.read_text()) == {"hosts": {}}  # host key checking on: nothing to report

    # The same run without the installed collection on the collections path fails: the role
    # really came from the install, not from the repository.
    env.pop("ANSIBLE_COLLECTIONS_PATH")
    env.pop("ANSIBLE_CALLBACKS_ENABLED")
    proc = _status(collection / "playbooks" / "backend_pm2_status.yml", sb, elsewhere, env)  # by its path
    assert proc.returncode != 0
    assert "doai.rollback.doai_backend_pm2" in proc.stdout + proc.stderr


def test_every_shipped_playbook_has_a_name_a_playbook_fqcn_accepts(installed, tmp_path):
    """Ansible refuses dashes in collection resource names (doai.rollback.backend-pm2-status was
    "could not be found"): the playbooks are named with underscores, and every one of them is found
    by its FQCN in the install (a syntax check: nothing runs)."""
    collection, home = installed
    env = clean_env(home, ANSIBLE_COLLECTIONS_PATH=str(collection.parents[2]))
    names = sorted(p.stem for p in (collection / "playbooks").glob("*.yml"))
    assert names and all(n.replace("_", "").isalnum() for n in names), names
    proc = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,",
                           *[f"doai.rollback.{n}" for n in names]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_the_cli_runs_content_laid_out_as_the_wheel_has_it(sandbox, cli_env, tmp_path):
    """The wheel's doai_ansible/_content has what pyproject force-includes and no collections/
    link: the CLI links the content as doai.rollback in the run's private dir."""
    content = tmp_path / "content"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    for src, dest in included.items():
        assert dest.startswith("doai_ansible/_content/"), dest
        target = content / dest.removeprefix("doai_ansible/_content/")
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / src, target)
    assert {"plugins", "galaxy.yml", "meta"} <= {p.name for p in content.iterdir()}
    assert not (content / "collections").exists()
    res = run_cli("status", "-o", "json", env={**cli_env, "DOAI_CONTENT_DIR": str(content)})
    assert res.code == 6, res.stdout + res.stderr  # v3 is live and unhealthy
    host = res.json()["parts"]["backend"]["hosts"][sandbox.host_name]
    assert host["commit"] == sandbox.commits["v3"] and host["health_status"] == 500
