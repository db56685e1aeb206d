"""The registry of parts: the only place that lists them.

Each entry names the module and class of a :class:`~doai_ansible.part.PartBase`; modules are
imported on first use (the dashboard's httpx costs every backend command time). The engine,
the CLI's generic commands (status, health, undo, history, lock) and the renderer go through
:func:`get` and :func:`all_parts` and never name a part.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from doai_ansible.errors import UsageError
from doai_ansible.model import Part

if TYPE_CHECKING:
    from doai_ansible.part import PartBase

REGISTRY: dict[Part, str] = {
    Part.AGENT: "doai_ansible.parts.agent:AgentPart",
    Part.BACKEND: "doai_ansible.parts.backend:BackendPart",
    Part.DATABASE: "doai_ansible.parts.database:DatabasePart",
    Part.DASHBOARD: "doai_ansible.parts.dashboard:DashboardPart",
}

_loaded: dict[Part, PartBase] = {}


def get(name: str | Part) -> PartBase:
    """The part registered under ``name``."""
    try:
        part = Part(name)
    except ValueError:
        raise UsageError(f"no part {name!r}", hint=f"parts: {', '.join(p.value for p in Part)}") from None
    if part not in REGISTRY:
        raise UsageError(f"the {part.value} part is not available yet")
    if part not in _loaded:
        module, cls = REGISTRY[part].split(":")
        _loaded[part] = getattr(importlib.import_module(module), cls)()
    return _loaded[part]


def names() -> list[str]:
    """Registered part names, in the runbook's order."""
    return [p.value for p in sorted(REGISTRY, key=lambda p: p.order)]


def all_parts() -> list[PartBase]:
    """Every registered part, in the runbook's order (agent, backend, database, dashboard)."""
    return [get(n) for n in names()]
