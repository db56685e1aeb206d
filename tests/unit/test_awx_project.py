"""The repository as an AWX / Automation Platform project: the playbooks find their roles the
way AWX runs them (from the project root, ANSIBLE_ROLES_PATH built from ansible.cfg's
roles_path), collections/requirements.yml declares exactly the collections the content uses,
and execution-environment.yml gives ansible-builder a build context (offline: no image)."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
PLAYBOOKS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "playbooks").glob("*.yml"))
# A module named by its fully qualified name: a YAML task key, or a quoted string in a plugin.
_FQCN = re.compile(r"""["']([a-z_]+\.[a-z_]+)\.[a-z_0-9]+["']|^\s*-?\s*([a-z_]+\.[a-z_]+)\.[a-z_0-9]+:\s*$""", re.M)


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_HOME"] = str(tmp_path / "ansible-home")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _syntax_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "inventory/example/hosts.yml",
                           *PLAYBOOKS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)


def test_playbooks_find_their_roles_as_awx_runs_them(tmp_path):
    """AWX reads roles_path from the project's ansible.cfg and puts it, after the roles it
    installed from roles/requirements.yml, into ANSIBLE_ROLES_PATH; the job runs from the
    project root."""
    assert PLAYBOOKS, "no playbooks"
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "ansible.cfg")
    roles_path = cfg["defaults"]["roles_path"]
    assert (ROOT / roles_path).resolve() == ROOT / "roles"
    env = _clean_env(tmp_path)
    env["ANSIBLE_ROLES_PATH"] = ":".join([str(tmp_path / "requirements_roles"), roles_path, "~/.ansible/roles",
                                          "/usr/share/ansible/roles", "/etc/ansible/roles"])
    # Likewise the collections: what it installed from collections/requirements.yml, then the
    # project's collections_path, whose first entry links doai.rollback to the project root.
    collections_path = cfg["defaults"]["collections_path"]
    assert (ROOT / collections_path.split(":")[0] / "ansible_collections" / "doai" / "rollback").resolve() == ROOT
    env["ANSIBLE_COLLECTIONS_PATH"] = ":".join([str(tmp_path / "requirements_collections"), collections_path])
    proc = _syntax_check(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for pb in PLAYBOOKS:
        assert f"playbook: {pb}" in proc.stdout


def test_without_the_roles_path_the_playbooks_fail(tmp_path):
    """The check above can fail: with a roles path that lacks ./roles, the roles are not found."""
    env = _clean_env(tmp_path)
    empty = tmp_path / "cfg"
    empty.mkdir()
    (empty / "ansible.cfg").write_text("[defaults]\n")
    env["ANSIBLE_CONFIG"] = str(empty / "ansible.cfg")
    env["ANSIBLE_ROLES_PATH"] = str(tmp_path / "requirements_roles")
    proc = _syntax_check(env)
    assert proc.returncode != 0 and "doai_" in proc.stdout + proc.stderr


def _used_collections() -> set[str]:
    used: set[str] = set()
    for folder in ("roles", "playbooks", "plugins", "molecule"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".yml", ".yaml", ".py") and path.is_file():
                for m in _FQCN.finditer(path.read_text(encoding="utf-8")):
                    used.add(m.group(1) or m.group(2))
    # doai.rollback is this repository itself (galaxy.yml), not a requirement.
    return used - {"ansible.builtin", "ansible.legacy", "doai.rollback"}


def test_the_content_calls_its_own_modules_and_roles_by_fqcn():
    """The playbooks, roles and Molecule scenarios name the collection's modules, action plugins
    and roles as doai.rollback.<name>: a short name only resolves from the repository root."""
    ours = {p.stem for p in (ROOT / "plugins" / "modules").glob("*.py")}
    ours |= {p.stem for p in (ROOT / "plugins" / "action").glob("*.py")}
    roles = {p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir()}
    assert ours and roles
    modules, role_names = "|".join(sorted(ours)), "|".join(sorted(roles))
    short = re.compile(rf"^\s*(?:- )?(?:({modules}):\s*$|(?:role|name): ({role_names})\s*$)", re.M)
    found = []
    for folder in ("roles", "playbooks", "molecule"):
        for path in (ROOT / folder).rglob("*.yml"):
            found += [f"{path.relative_to(ROOT)}: {m.group(0).strip()}" for m in short.finditer(path.read_text())]
    assert found == []


def test_collections_requirements_declare_what_the_content_uses():
    req = yaml.safe_load((ROOT / "collections" / "requirements.yml").read_text())
    declared = {c["name"]: c["version"] for c in req["collections"]}
    assert set(declared) == _used_collections()
    assert {"ansible.windows", "community.windows"} <= set(declared)
    for name, version in declared.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", str(version)), f"{name}: pin an exact version"


def test_execution_environment_build_context(tmp_path):
    """`ansible-builder create` (offline) writes the Containerfile and copies the dependency files."""
    builder = shutil.which("ansible-builder", path=str(BIN)) or "ansible-builder"
    ee = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    assert ee["version"] == 3
    assert ee["dependencies"]["galaxy"] == "collections/requirements.yml"
    ctx = tmp_path / "context"
    proc = subprocess.run([builder, "create", "-f", "execution-environment.yml", "-c", str(ctx),
                           "--output-filename", "Containerfile"], cwd=ROOT,
                          env=_clean_env(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    containerfile = (ctx / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="quay.io/centos/centos:stream9"' in containerfile
    assert "ansible-core>=2.19,<2.20" in containerfile and "ansible-runner>=2.4,<2.5" in containerfile
    build = ctx / "_build"
    assert (build / "requirements.yml").read_text() == (ROOT / "collections" / "requirements.yml").read_text()
    assert "pywinrm" in (build / "requirements.txt").read_text()
    bindep = (build / "bindep.txt").read_text()
    for pkg in ("openssh-clients", "git", "postgresql"):
        assert pkg in bindep


@pytest.mark.parametrize("name", ["ee-requirements.txt", "ee-bindep.txt"])
def test_dependency_files_exist_and_are_named_in_the_definition(name):
    ee = (ROOT / "execution-environment.yml").read_text()
    assert (ROOT / name).is_file() and name in ee
