"""The repository as the Ansible collection doai.rollback, built and installed the way a user
does it (ansible-galaxy, offline): shared by the unit test of the tarball's contents and the
integration test that runs an installed playbook against the rig."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """No ANSIBLE_* of the caller's (ANSIBLE_CONFIG, a collections path): only what is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "DOAI_"))}
    env["ANSIBLE_HOME"] = str(home)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def build(out: Path, home: Path) -> Path:
    """``ansible-galaxy collection build`` of the repository root into ``out``: the tarball."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(out)],
                          cwd=ROOT, env=clean_env(home), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tarball,) = out.glob("doai-rollback-*.tar.gz")
    return tarball


def install(tarball: Path, dest: Path, home: Path) -> Path:
    """``ansible-galaxy collection install --offline -p dest``, run outside the repository (its
    ansible.cfg would show the repository's own doai.rollback as already installed)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "--offline", "-p", str(dest),
                           str(tarball)], cwd=dest, env=clean_env(home), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = dest / "ansible_collections" / "doai" / "rollback"
    assert (installed / "MANIFEST.json").is_file(), proc.stdout + proc.stderr
    return installed
