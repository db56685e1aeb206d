"""Shared fixtures: the CLI as a black box, and the sandbox VPS (real sshd, PM2, git, npm)."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The repository is the collection doai.rollback; this directory holds the link
# ansible_collections/doai/rollback -> ROOT (as ansible.cfg's collections_path).
COLLECTIONS = ROOT / "collections"
PLUGINS = ROOT / "plugins"
# A module_utils file as the modules import it (and as Ansible ships it to the hosts).
MODULE_UTILS_PKG = "ansible_collections.doai.rollback.plugins.module_utils"
# Python code that makes those imports work in a process of its own (a module run as Ansible runs it).
COLLECTION_BOOT = f"import sys; sys.path.insert(0, {str(COLLECTIONS)!r})\n"


def run_module(name: str, tmp_path: Path, **args) -> dict:
    """plugins/modules/<name>.py run with ``args`` in a Python of its own, its module_utils
    importable as Ansible ships them (ansible_collections.doai.rollback.*): its JSON answer."""
    found = PLUGINS / "modules" / f"{name}.py"
    assert found.is_file(), found
    argfile = tmp_path / f"{name}-args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    boot = (COLLECTION_BOOT + f"sys.argv = ['module', {str(argfile)!r}]; "
            f"exec(compile(open({str(found)!r}).read(), {name!r}, 'exec'))")
    proc = subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, check=False)
    return json.loads(proc.stdout)


def module_utils(name: str):
    """plugins/module_utils/<name>.py, imported by its collection name (its own imports of the
    other module_utils resolve the same way)."""
    import importlib

    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))
    return importlib.import_module(f"{MODULE_UTILS_PKG}.{name}")

# Values that must never show up in any output, journal, log or runner artifact.
CANARY = "canary-" + secrets.token_hex(8)


@dataclasses.dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    """Run ``python -m doai_ansible`` as a user would: own process, real exit code."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DOAI_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "doai_ansible", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )
    # With --output json, stdout must be the document the schema promises (doai_ansible/schemas).
    from doai_ansible.schemas import output_problems

    if problems := output_problems(args, proc.stdout, proc.returncode):
        pytest.fail("JSON output does not match doai_ansible/schemas/doai-rollback.schema.json:\n  "
                    + "\n  ".join(problems) + f"\n(doai-rollback {' '.join(map(str, args))}; exit {proc.returncode})")
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def fresh_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:  # noqa: F821
    """A new VPS stand-in of its own, with v3 (the bad release) deployed over v2."""
    from doai_ansible.sandbox import Sandbox

    # A short path: sshd and ssh control sockets dislike long ones.
    sb = Sandbox(tmp_path_factory.mktemp("sb"))
    try:
        sb.start(deploy="v2")
        sb.deploy("v3")
        yield sb
    finally:
        sb.stop()


@pytest.fixture(scope="module")
def _module_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:  # noqa: F821
    from doai_ansible.sandbox import Sandbox

    sb = Sandbox(tmp_path_factory.mktemp("sb"))
    try:
        sb.start(deploy="v2")
        sb.deploy("v3")
        sb.used = False  # type: ignore[attr-defined]
        yield sb
    finally:
        sb.stop()


@pytest.fixture
def sandbox(_module_sandbox) -> Sandbox:  # noqa: F821
    """The VPS stand-in of this test module, reset to v3 deployed over v2 before each test
    (building one costs ~6 s; a reset ~2 s: see Sandbox.reset for what it makes anew)."""
    sb = _module_sandbox
    if sb.used:
        sb.reset()
    sb.used = True
    return sb


@pytest.fixture
def cli_env(sandbox, state_dir: Path) -> dict[str, str]:
    return {"DOAI_INVENTORY": str(sandbox.inventory), "DOAI_STATE_DIR": str(state_dir)}


def _running(rig):  # any rig with start, stop and cleanup
    """A session rig: started, yielded, then stopped by PID and its files removed, whatever happens."""
    try:
        rig.start()
        rig.used = False
        yield rig
    finally:
        rig.stop()
        rig.cleanup()


def _reset(rig):
    """The session rig, reset to its initial state unless no test has used it yet."""
    if rig.used:
        rig.reset()
    rig.used = True
    return rig


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRig]:  # noqa: F821
    """One Docker VPS stand-in for the whole session: a dockerd, a registry with the images
    (v1, v2, v3, bad; :previous -> v2, :current -> v3), the VPS's sshd. Stopped by PID at the end.
    Tests take ``docker_rig`` (reset before each) rather than this."""
    from doai_ansible.sandbox.docker_rig import DockerRig

    rig = DockerRig(tmp_path_factory.mktemp("dk"))
    yield from _running(rig)


@pytest.fixture
def docker_rig(docker_engine) -> DockerRig:  # noqa: F821
    """The session's Docker VPS reset to its initial state before each test (v3 pulled as
    :current and running under compose, no :previous/:rollback locally, empty host state;
    ~1 s: see DockerRig.reset)."""
    return _reset(docker_engine)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgRig]:  # noqa: F821
    """One PostgreSQL for the whole session, shaped like the DoAi Supabase project, every
    fixture migration (tests/fixtures/supabase) applied by the Supabase CLI; stopped by PID at
    the end. Tests take ``pg_rig`` (reset before each) rather than this."""
    from doai_ansible.sandbox.pg_rig import PgRig

    rig = PgRig(tmp_path_factory.mktemp("pg"), password=CANARY + "-pg")  # the canary test looks for it
    yield from _running(rig)


@pytest.fixture
def pg_rig(pg_server) -> PgRig:  # noqa: F821
    """The session's PostgreSQL with database ``doai`` made anew from the template before each
    test (~0.2 s: see PgRig.reset)."""
    return _reset(pg_server)


@pytest.fixture(scope="session")
def agent_pcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentRig]:  # noqa: F821
    """The desktop agent's stand-in PCs (Linux, not Windows): one loopback sshd for the whole
    session serving every PC of the group ``agents``. Stopped by PID at the end. Tests take
    ``agent_fleet`` (a fresh fleet per test) rather than this."""
    from doai_ansible.sandbox.agent_rig import AgentRig

    rig = AgentRig(tmp_path_factory.mktemp("ag"), pcs=4, unreachable=1)
    yield from _running(rig)


@pytest.fixture
def agent_fleet(agent_pcs) -> Iterator[Callable[..., AgentRig]]:  # noqa: F821
    """A factory: ``agent_fleet(n=4, unreachable=1, app_failed=False, users=("alice", "bob"),
    config_location="app-current")`` gives the session's stand-in PCs made anew with those
    options (folders seeded, one agent per PC and user running 2.0.0, inventory written;
    ~0.2 s for 4 PCs, ~1.3 s for 48: see AgentRig.reset). Every agent is stopped after the test."""
    rig = agent_pcs

    def make(n: int = 4, unreachable: int = 1, **options: object) -> AgentRig:  # noqa: F821
        if rig.used or (n, unreachable) != (rig.n_pcs, rig.n_unreachable) or options:
            rig.reset(pcs=n, unreachable=unreachable, **{**_AGENT_FLEET_DEFAULTS, **options})
        rig.used = True
        return rig

    try:
        yield make
    finally:
        rig.kill_all()
        rig.used = True


_AGENT_FLEET_DEFAULTS: dict[str, object] = {
    "users": ("alice", "bob"), "bare_users": ("guest",), "app_failed": False, "config_location": "app-current",
}


@pytest.fixture(scope="session")
def system_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemRig]:  # noqa: F821
    """The whole system for the session (doai_ansible/sandbox/system_rig.py): the PM2 VPS, the
    Docker VPS when a Docker engine starts here, PostgreSQL, the Vercel stand-in with the
    dashboard health, 2 stand-in PCs; one inventory and config file. Stopped by PID at the end.
    Tests take ``system_rig`` (reset before each) rather than this."""
    from doai_ansible.sandbox.system_rig import SystemRig

    rig = SystemRig(tmp_path_factory.mktemp("sys"), canary=CANARY)  # the canary tests look for it
    yield from _running(rig)


@pytest.fixture
def system_rig(system_engine) -> SystemRig:  # noqa: F821
    """The session's whole system back on the good deployment before each test (~1.5 s: see
    SystemRig.reset); ``break_all()`` deploys the failed release of every part."""
    return _reset(system_engine)
