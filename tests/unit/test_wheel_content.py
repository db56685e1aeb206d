"""The wheel's content (pyproject's hatch ``force-include``: playbooks/, roles/, ... under
doai_ansible/_content) holds what the shipped plugins load from it: the agent action plugin,
loaded from _content/roles/, finds its decisions (plugins/module_utils/doai_agent_decide.py) in
_content, as the installed CLI and Ansible load it there."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def wheel_layout(tmp_path):
    """The wheel's tree as the force-include mapping lays it out (each source linked, not copied)."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "force-include"]
    for src, dest in mapping.items():
        (tmp_path / dest).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / dest).symlink_to(ROOT / src, target_is_directory=(ROOT / src).is_dir())
    return tmp_path / "doai_ansible" / "_content"


def test_the_agent_plugin_finds_its_decisions_in_the_wheels_content(tmp_path, monkeypatch):
    content = wheel_layout(tmp_path)
    monkeypatch.setenv("DOAI_CONTENT_DIR", str(content))
    from doai_ansible.parts import agent

    plugin = agent._plugin.__wrapped__()  # not the cached one: loaded from the content set above
    assert plugin.__file__ == str(content / "plugins" / "action" / "doai_agent_swap.py")
    assert plugin.decisions.__file__ == str(content / "plugins" / "module_utils" / "doai_agent_decide.py")
    assert plugin.check_publisher("DoAi Inc.") == "DoAi Inc."
    assert plugin.decide({"user": "alice", "root": "/r", "folder": False})["reason"] == "agent folder missing: /r"


def test_without_its_decisions_the_plugin_says_what_is_missing(tmp_path):
    """A content tree without plugins/ (a wheel built without the mapping): a clear error naming
    the file and where it was looked for, not a NameError later."""
    roles = tmp_path / "_content" / "plugins" / "action"
    roles.mkdir(parents=True)
    (roles / "doai_agent_swap.py").write_bytes((ROOT / "plugins" / "action" / "doai_agent_swap.py").read_bytes())
    spec = importlib.util.spec_from_file_location("doai_agent_swap_nodecisions", roles / "doai_agent_swap.py")
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError) as info:
        spec.loader.exec_module(module)
    assert str(info.value) == ("doai_agent_swap: the agent's decisions (plugins/module_utils/doai_agent_decide.py) are"
                               f" not found above {roles}")
