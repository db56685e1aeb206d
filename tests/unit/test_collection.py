"""The repository root is the Ansible collection doai.rollback (issue 21 §1): what the built
tarball holds, and its metadata in step with pyproject.toml, the roles and the package."""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
from pathlib import Path

import pytest
import yaml

from doai_ansible import __version__
from tests.collection import build
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("collection")
    return build(base / "dist", base / "ansible-home")


@pytest.fixture(scope="module")
def members(tarball) -> set[str]:
    with tarfile.open(tarball) as tar:
        return {m.name for m in tar.getmembers()}


def test_the_tarball_holds_the_plugins_roles_and_playbooks(members):
    modules = sorted(p.name for p in (ROOT / "plugins" / "modules").glob("*.py"))
    assert modules and {f"plugins/modules/{m}" for m in modules} <= members
    for kind in ("action", "module_utils", "callback"):
        files = sorted(p.name for p in (ROOT / "plugins" / kind).glob("*.py"))
        assert files and {f"plugins/{kind}/{f}" for f in files} <= members, kind
    for role in ("doai_agent", "doai_backend_pm2", "doai_backend_docker"):
        assert f"roles/{role}/tasks/main.yml" in members and f"roles/{role}/meta/main.yml" in members
    playbooks = sorted(p.name for p in (ROOT / "playbooks").glob("*.yml"))
    assert playbooks and {f"playbooks/{p}" for p in playbooks} <= members
    assert {"meta/runtime.yml", "MANIFEST.json", "FILES.json", "README.md"} <= members


@pytest.mark.parametrize("left_out", ["tests", "doai_ansible", "bench", "molecule", ".venv", ".git", "collections",
                                      ".ci", "examples"])
def test_the_tarball_leaves_out_what_is_not_collection_content(members, left_out):
    assert not [m for m in members if m == left_out or m.startswith(left_out + "/")]


def test_the_tarball_has_no_link_out_of_the_collection(tarball):
    with tarfile.open(tarball) as tar:
        links = [m for m in tar.getmembers() if m.issym()]
    for m in links:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(m.name), m.linkname))
        assert not posixpath.isabs(m.linkname) and not target.startswith(".."), (m.name, m.linkname)


def test_manifest_names_the_collection_and_the_package_version(tarball):
    with tarfile.open(tarball) as tar:
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"], info["version"]) == ("doai", "rollback", __version__)
    assert info["dependencies"] == {}  # an install never reaches Galaxy


def _bounds(spec: str) -> tuple[str, str]:
    low = re.search(r">=\s*(\d+\.\d+)", spec)
    high = re.search(r"<\s*(\d+\.\d+)", spec)
    assert low and high, spec
    return low.group(1), high.group(1)


def test_requires_ansible_matches_pyproject_and_the_roles():
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    (core,) = re.findall(r'"ansible-core(>=[^"]+)"', pyproject)
    assert _bounds(runtime["requires_ansible"]) == _bounds(core)
    for meta in (ROOT / "roles").glob("*/meta/main.yml"):
        info = yaml.safe_load(meta.read_text())["galaxy_info"]
        assert str(info["min_ansible_version"]) == _bounds(core)[0], meta
        assert info["namespace"] == "doai"


def test_pypsrp_is_installed_for_the_psrp_connection():
    """The agent playbooks offer ansible_connection: psrp; its library is a dependency."""
    import pypsrp  # noqa: F401

    assert re.search(r'"pypsrp[>=<]', (ROOT / "pyproject.toml").read_text())
    assert re.search(r"^pypsrp[>=<]", (ROOT / "ee-requirements.txt").read_text(), re.M)  # and the AWX image
