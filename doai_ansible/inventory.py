"""What the Ansible inventory says about hosts, read on the controller before any playbook runs:
which backend hosts a ``--limit`` selects, and which mode (PM2 or Docker) each one runs.

Read in-process with Ansible's own inventory and variable managers (group_vars/host_vars
included), ~0.1 s; an inventory that needs more than that (a vault-encrypted file, a plugin
that wants the CLI's setup) is read by ``ansible-inventory --list`` instead.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from doai_ansible.errors import ConfigError, DoaiError

#: The inventory groups the playbooks target: the VPS hosts of the backend, the agent PCs.
BACKEND_GROUP = "backend"
AGENTS_GROUP = "agents"
MODE_VAR = "doai_backend_mode"
MODES = ("pm2", "docker")
DEFAULT_MODE = "pm2"


def _require(inventory: Path | None) -> Path:
    """The inventory, or exit 2 saying how to name one (no default: see settings)."""
    if inventory is None:
        from doai_ansible.settings import INVENTORY_HINT

        raise ConfigError("inventory", "no Ansible inventory is configured, so no host can be named",
                          hint=INVENTORY_HINT)
    return inventory


# What the in-process read may run: parsers of static files, which read no environment and run
# nothing. An inventory script or plugin (it could read the environment, or run a program that
# inherits it) is read by ansible-inventory, in the allow-listed environment ansible-playbook gets.
_STATIC_PARSERS = ["yaml", "ini", "toml"]
_STATIC_VARS = ["host_group_vars"]


def _in_process(inventory: Path, group: str, limit: str | None) -> dict[str, dict[str, Any]]:
    from ansible import constants
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    # A group the inventory lacks (no `agents` on a backend-only inventory) or a --limit that
    # matches nothing is an answer here (no hosts), not a warning Ansible should print on our
    # stderr ("Could not match supplied host pattern"): the caller says what it means.
    constants.HOST_PATTERN_MISMATCH = "ignore"
    # Static files only (see _STATIC_PARSERS): a source they cannot parse raises, and the
    # caller reads it with ansible-inventory instead.
    constants.INVENTORY_ENABLED = list(_STATIC_PARSERS)
    constants.VARIABLE_PLUGINS_ENABLED = list(_STATIC_VARS)
    constants.INVENTORY_UNPARSED_IS_FAILED = True
    constants.INVENTORY_ANY_UNPARSED_IS_FAILED = True
    loader = DataLoader()
    inv = InventoryManager(loader=loader, sources=[str(inventory)])
    if limit:
        inv.subset(limit)
    variables = VariableManager(loader=loader, inventory=inv)
    return {h.name: variables.get_vars(host=h) for h in inv.get_hosts(group)}


def _by_command(inventory: Path, group: str, limit: str | None) -> dict[str, dict[str, Any]]:
    from doai_ansible.runner import ansible_playbook_bin

    exe = Path(ansible_playbook_bin()).with_name("ansible-inventory")
    argv = [str(exe), "-i", str(inventory), "--list", "--export"] + (["--limit", limit] if limit else [])
    from doai_ansible.runner import child_env

    env = child_env()  # as ansible-playbook's: an inventory script or plugin gets no secret
    env["PATH"] = str(exe.parent) + os.pathsep + env.get("PATH", os.defpath)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True,
                         env={**env, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOST_PATTERN_MISMATCH": "ignore"}).stdout
    data = json.loads(out)
    hostvars = (data.get("_meta") or {}).get("hostvars") or {}

    def walk(name: str, seen: set[str]) -> list[str]:
        if name in seen:
            return []
        seen.add(name)
        node = data.get(name) or {}
        return list(node.get("hosts", [])) + [h for c in node.get("children", []) for h in walk(c, seen)]

    return {h: hostvars.get(h, {}) for h in sorted(set(walk(group, set())))}


def has_hosts(inventory: Path | None, group: str) -> bool:
    """Whether ``group`` has hosts (read locally, no connection); False when no inventory is
    configured; True when the inventory cannot be read here, so that the run itself says what is
    wrong with it."""
    if inventory is None:
        return False
    try:
        return bool(group_vars(inventory, group))
    except DoaiError:
        return True


def group_vars(inventory: Path | None, group: str, limit: str | None = None) -> dict[str, dict[str, Any]]:
    """host -> its variables, for the hosts of ``group`` that ``limit`` selects."""
    inventory = _require(inventory)
    try:
        if not _static_only(inventory):
            raise LookupError("an inventory script or plugin: read by ansible-inventory")
        return _in_process(inventory, group, limit)
    except Exception:  # noqa: BLE001 - anything the in-process read cannot do, the CLI can
        try:
            return _by_command(inventory, group, limit)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise ConfigError("inventory", f"{inventory} could not be read: {exc}") from None


def _sources(inventory: Path) -> list[Path]:
    """The files an inventory is made of: the file (or every file of the folder) and the
    group_vars/host_vars next to it."""
    base = inventory if inventory.is_dir() else inventory.parent
    files = [p for p in inventory.rglob("*") if p.is_file()] if inventory.is_dir() else [inventory]
    for sub in ("group_vars", "host_vars"):
        if (base / sub).is_dir():
            files += [p for p in (base / sub).rglob("*") if p.is_file()]
    return files


def _static_only(inventory: Path) -> bool:
    """Whether every file of the inventory is data the in-process read may parse: no script
    (an executable file starting with ``#!``), no plugin configuration (``plugin:``)."""
    try:
        for path in _sources(inventory):
            with path.open("rb") as fh:
                head = fh.read(1 << 16)
            if (os.access(path, os.X_OK) and head.startswith(b"#!")) or b"plugin:" in head:
                return False
    except OSError:
        return False
    return True


def declares_modes(inventory: Path | None) -> bool:
    """Whether the inventory may set doai_backend_mode anywhere. False only for static files
    (no inventory plugin, no script) that never name it: then every backend host runs PM2,
    and a run saves reading the inventory (~0.2 s before the outage's fix can start)."""
    inventory = _require(inventory)
    try:
        for path in _sources(inventory):
            if os.access(path, os.X_OK) and path.suffix not in (".yml", ".yaml", ".json", ".ini", ""):
                return True  # an inventory script
            if path.stat().st_size > 4 << 20:
                return True
            text = path.read_text(encoding="utf-8", errors="replace")
            if MODE_VAR in text or "plugin:" in text or text.startswith("$ANSIBLE_VAULT"):
                return True
    except OSError:
        return True
    return False


def backend_modes(inventory: Path | None, limit: str | None = None, *,
                  group: str = BACKEND_GROUP) -> dict[str, str]:
    """host -> ``pm2`` or ``docker`` (``doai_backend_mode``, per host or group; pm2 when unset)."""
    modes = {}
    for host, hv in group_vars(inventory, group, limit).items():
        mode = hv.get(MODE_VAR, DEFAULT_MODE) or DEFAULT_MODE
        if mode not in MODES:
            raise ConfigError("inventory", f"{host}: {MODE_VAR} is {mode!r}; it must be one of {', '.join(MODES)}")
        modes[host] = mode
    return modes
