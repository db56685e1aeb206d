"""The registry of parts: the only place that lists them.

Each entry names the module and class of a :class:`~doai_ansible.part.PartBase`; modules are
imported on first use (the dashboard's httpx costs every backend command time). The engine,
the CLI's generic commands (status, health, undo, history, lock) and the renderer go through
:func:`get` and :func:`all_parts` and never name a part.

Each entry also names the part's face on the command line (a :class:`~doai_ansible.part.PartCli`
in a light module that imports no part): its own commands (``doai-rollback backend ...``), its
options of ``system rollback`` and how they become its request. :mod:`doai_ansible.cli` and
:mod:`doai_ansible.system` reach them through :func:`cli_of` and :func:`all_clis`, and
:mod:`doai_ansible.diagnose` the parts' diagnose scenarios through :func:`scenarios`, so a fifth
part is one entry here, its part module and its cli module, with no edit elsewhere.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from doai_ansible.errors import UsageError
from doai_ansible.model import Part

if TYPE_CHECKING:
    from doai_ansible.part import PartBase, PartCli, Scenario

REGISTRY: dict[Part, str] = {
    Part.AGENT: "doai_ansible.parts.agent:AgentPart",
    Part.BACKEND: "doai_ansible.parts.backend:BackendPart",
    Part.DATABASE: "doai_ansible.parts.database:DatabasePart",
    Part.DASHBOARD: "doai_ansible.parts.dashboard:DashboardPart",
}

#: Each part's face on the command line (light modules: building the command tree imports no part).
CLI: dict[Part, str] = {
    Part.AGENT: "doai_ansible.parts.agent_cli:AgentCli",
    Part.BACKEND: "doai_ansible.parts.backend_cli:BackendCli",
    Part.DATABASE: "doai_ansible.parts.database_cli:DatabaseCli",
    Part.DASHBOARD: "doai_ansible.parts.dashboard_cli:DashboardCli",
}

_loaded: dict[Part, PartBase] = {}
_clis: dict[Part, PartCli] = {}


def _load(spec: str) -> Any:
    module, cls = spec.split(":")
    return getattr(importlib.import_module(module), cls)()


def get(name: str | Part) -> PartBase:
    """The part registered under ``name``."""
    try:
        part = Part(name)
    except ValueError:
        raise UsageError(f"no part {name!r}", hint=f"parts: {', '.join(p.value for p in Part)}") from None
    if part not in REGISTRY:
        raise UsageError(f"the {part.value} part is not available yet")
    if part not in _loaded:
        _loaded[part] = _load(REGISTRY[part])
    return _loaded[part]


def cli_of(name: str | Part) -> PartCli:
    """The command-line face of the part registered under ``name``."""
    part = Part(name)
    if part not in _clis:
        _clis[part] = _load(CLI[part])
    return _clis[part]


def all_clis() -> list[PartCli]:
    """Every registered part's command-line face, in the runbook's order."""
    return [cli_of(n) for n in names() if Part(n) in CLI]


def scenarios() -> list[Scenario]:
    """Every part's diagnose scenarios, in the runbook's order of its section 7 (A, B, C)."""
    return sorted((s for face in all_clis() for s in face.scenarios), key=lambda s: s.letter)


def scenario(name: str) -> Scenario:
    """The diagnose scenario called ``name``."""
    known = scenarios()
    for s in known:
        if s.name == name:
            return s
    raise UsageError(f"unknown scenario {name!r}", hint=f"one of {', '.join(s.name for s in known)}")


def scenario_function(spec: str) -> Any:
    """The function a scenario's ``module:function`` names (its module imported now)."""
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def names() -> list[str]:
    """Registered part names, in the runbook's order."""
    return [p.value for p in sorted(REGISTRY, key=lambda p: p.order)]


def all_parts() -> list[PartBase]:
    """Every registered part, in the runbook's order (agent, backend, database, dashboard)."""
    return [get(n) for n in names()]
