"""Every PowerShell script of the project, checked without PowerShell (there is no Windows here):
each ``.ps1`` of the repository parsed with a real PowerShell grammar (tree-sitter-powershell),
any syntax error failing the test with its line:column and text; and each script of the agent
role (roles/doai_agent/files/windows) taking exactly the parameters the action plugin passes it
(``PS_PARAMS``, which its ``_ps`` enforces on every call).

A typo in a script would otherwise first show on a real PC, after the agent was stopped."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell
from ansible.errors import AnsibleError

ROOT = Path(__file__).resolve().parents[2]
WIN_SCRIPTS = ROOT / "roles" / "doai_agent" / "files" / "windows"
PLUGIN = ROOT / "roles" / "doai_agent" / "action_plugins" / "doai_agent_swap.py"
# Not the project's: the venv, node_modules, git's and tools' own directories.
SKIP_DIRS = {"node_modules", "__pycache__"}

PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def load_plugin(path=PLUGIN, name="doai_agent_swap_ps"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


swap = load_plugin()


def all_ps1():
    """Every .ps1 file of the repository (a new one is covered without naming it here)."""
    found = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and not os.path.islink(os.path.join(top, d)))
        found += [Path(top) / f for f in sorted(files) if f.lower().endswith(".ps1")]
    return found


def syntax_errors(text):
    """The grammar's ERROR and MISSING nodes, as ``line:column: what 'text'`` (1-based)."""
    out = []

    def walk(node):
        if node.type == "ERROR" or node.is_missing:
            line, col = node.start_point
            what = f"missing {node.type!r}" if node.is_missing else "syntax error"
            snippet = node.text.decode("utf-8", "replace").splitlines()[0][:60] if node.text else ""
            out.append(f"{line + 1}:{col + 1}: {what} {snippet!r}")
            if not node.is_missing:
                return  # one report per broken region, not one per node inside it
        for child in node.children:
            walk(child)

    walk(PARSER.parse(text.encode("utf-8")).root_node)
    return out


def param_names(text):
    """The names (without ``$``) of the script's own param() block, in order; None without one.
    Only the script's: a function's parameters are not the script's."""
    root = PARSER.parse(text.encode("utf-8")).root_node
    blocks = [c for c in root.children if c.type == "param_block"]
    if not blocks:
        return None
    names = []

    def walk(node):
        if node.type == "script_parameter":
            var = next(c for c in node.children if c.type == "variable")
            names.append(var.text.decode().lstrip("$").strip("{}"))
            return
        for child in node.children:
            walk(child)

    walk(blocks[0])
    return names


def check_script(text, expected=None):
    """What is wrong with a script: its syntax errors and, when ``expected`` (the parameter names
    its caller passes) is given, a param() block that does not take exactly those."""
    problems = syntax_errors(text)
    if expected is not None:
        got = param_names(text)
        if got is None:
            problems.append(f"no param() block: the caller passes {', '.join(expected)}")
        elif got != list(expected):
            problems.append(f"param() takes {', '.join(got) or 'nothing'}, the caller passes {', '.join(expected)}")
    return problems


def test_the_scripts_are_found():
    found = all_ps1()
    assert {p.stem for p in found if p.parent == WIN_SCRIPTS} == set(swap.PS_PARAMS)
    assert not [p for p in found if ".venv" in p.parts or "node_modules" in p.parts]


@pytest.mark.parametrize("path", all_ps1(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_powershell_script_parses(path):
    text = path.read_text(encoding="utf-8")
    errors = syntax_errors(text)
    assert not errors, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(errors)
    assert text.isascii(), f"{path}: non-ASCII text (Windows PowerShell 5.1 reads a BOM-less file as ANSI)"


@pytest.mark.parametrize("name", sorted(swap.PS_PARAMS))
def test_each_agent_script_takes_what_the_plugin_passes(name):
    path = WIN_SCRIPTS / (name + ".ps1")
    problems = check_script(path.read_text(encoding="utf-8"), swap.PS_PARAMS[name])
    assert not problems, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def test_every_agent_script_is_one_the_plugin_knows():
    """A file nobody calls (or a call of a file that is not there) is a mistake either way."""
    assert sorted(p.stem for p in WIN_SCRIPTS.glob("*.ps1")) == sorted(swap.PS_PARAMS)
    assert sorted(p.name for p in WIN_SCRIPTS.iterdir()) == sorted(n + ".ps1" for n in swap.PS_PARAMS)


def test_the_checker_reports_syntax_errors_and_a_parameter_mismatch():
    """The checks above can fail: a broken script is reported with where and what."""
    no_paren = (
        "param([string]$Root, [int]$TimeoutSeconds)\n"
        "$ErrorActionPreference = 'Stop'\n"
        "if ($Root -eq '' {\n"  # line 3: no ')'
        "    throw 'no root'\n"
        "}\n"
    )
    problems = check_script(no_paren, ("Root", "Path"))
    assert problems == ["3:1: syntax error \"if ($Root -eq '' {\"",
                        "param() takes Root, TimeoutSeconds, the caller passes Root, Path"]
    unclosed = "param([string]$Root)\nforeach ($p in $Paths) {\n    Write-Output $p\n"
    assert check_script(unclosed, ("Root",)) == ["3:20: missing '}' ''"]
    assert check_script("Write-Output (1 + )\n") == ["1:18: missing 'decimal_integer_literal' ''"]
    # well-formed, but the caller passes a parameter the script does not take (or no param() at all)
    assert check_script("param([string]$Root)\n$Root\n", ("Root", "Dest")) == [
        "param() takes Root, the caller passes Root, Dest"]
    assert check_script("Write-Output 1\n", ("Root",)) == ["no param() block: the caller passes Root"]
    # a function's parameters are not the script's
    assert param_names("function F([string]$X) { $X }\n") is None
    assert check_script(swap.script_text("stop"), swap.PS_PARAMS["stop"]) == []


def test_the_plugin_calls_a_script_only_with_its_parameters():
    """_ps is the one way to a win_powershell call: a name missing or one too many is refused
    before any call, so the table the test above checks is the one the calls use."""
    module, args = swap._ps("stop", Root="C:\\x", TimeoutSeconds=3)
    assert module == swap.WIN_POWERSHELL and args == {"script": (WIN_SCRIPTS / "stop.ps1").read_text(),
                                                      "parameters": {"Root": "C:\\x", "TimeoutSeconds": 3}}
    with pytest.raises(AnsibleError, match=r"script 'stop' called with parameters \['Root'\], it takes"):
        swap._ps("stop", Root="C:\\x")
    with pytest.raises(AnsibleError, match="called with parameters"):
        swap._ps("stop", Root="C:\\x", TimeoutSeconds=3, Force=True)
    with pytest.raises(AnsibleError, match="no PowerShell script 'nope'"):
        swap.script_text("nope")


def test_the_link_guard_is_the_same_in_every_script_that_uses_it():
    """Assert-NoLink (junctions and symbolic links refused, not followed) is copied into each
    script that needs it (win_powershell sends one script): every copy identical, defined
    before its first use, and no script calls it without defining it."""
    definitions = {}
    for path in sorted(WIN_SCRIPTS.glob("*.ps1")):
        text = path.read_text(encoding="utf-8")
        root = PARSER.parse(text.encode()).root_node
        funcs, calls = [], []

        def walk(node, funcs=funcs, calls=calls):
            if node.type == "function_statement":
                name = next(c for c in node.children if c.type == "function_name").text.decode()
                if name == "Assert-NoLink":
                    funcs.append(node)
            if node.type == "command":
                name = next((c for c in node.children if c.type == "command_name"), None)
                if name is not None and name.text.decode() == "Assert-NoLink":
                    calls.append(node)
            for child in node.children:
                walk(child)

        walk(root)
        if calls:
            assert len(funcs) == 1, f"{path.name} calls Assert-NoLink and defines it {len(funcs)} times"
            assert funcs[0].end_byte <= min(c.start_byte for c in calls), path.name
            definitions[path.name] = funcs[0].text.decode()
        else:
            assert not funcs, f"{path.name} defines Assert-NoLink and never calls it"
    assert set(definitions) == {"rename.ps1", "copy_config.ps1", "undo_config.ps1", "move.ps1", "marker.ps1"}
    assert len(set(definitions.values())) == 1, f"the copies of Assert-NoLink differ: {sorted(definitions)}"
    guard = next(iter(definitions.values()))
    assert "ReparsePoint" in guard and "throw" in guard


def test_a_missing_script_fails_the_task_before_anything_is_done(monkeypatch):
    """The scripts are all read before the observe: a missing one is an error with nothing
    changed, not a failure after the agent was stopped."""
    monkeypatch.setattr(swap, "SCRIPTS_SUBDIR", ("roles", "doai_agent", "files", "no-such-dir"))
    monkeypatch.setattr(swap, "_SCRIPTS", {})
    calls = []
    action = object.__new__(swap.ActionModule)
    action._execute_module = lambda **kw: calls.append(kw) or {}
    args = {k: v.get("default") for k, v in swap.ARGUMENT_SPEC.items()}
    args.update(stamp="20261127T014500Z", os="windows")
    out = action.swap(args, {}, False)
    assert out["failed"] is True and calls == []
    assert "the PowerShell scripts (roles/doai_agent/files/no-such-dir) are not found" in out["msg"]
    assert out["msg"].endswith("nothing was changed")


def test_the_scripts_are_found_from_a_collection_layout(tmp_path):
    """The plugin finds roles/doai_agent/files/windows from plugins/action/ too (the collection's
    layout), by walking up from its own file; each script read is the file's text."""
    coll = tmp_path / "ansible_collections" / "doai" / "rollback"
    (coll / "plugins" / "action").mkdir(parents=True)
    shutil.copy(PLUGIN, coll / "plugins" / "action" / "doai_agent_swap.py")
    shutil.copytree(WIN_SCRIPTS, coll / "roles" / "doai_agent" / "files" / "windows")
    (coll / "roles" / "doai_agent" / "files" / "windows" / "stop.ps1").write_text("param([string]$Root, [int]$TimeoutSeconds)\n")
    moved = load_plugin(coll / "plugins" / "action" / "doai_agent_swap.py", "doai_agent_swap_moved")
    assert moved.scripts_dir() == str(coll / "roles" / "doai_agent" / "files" / "windows")
    assert moved.script_text("stop") == "param([string]$Root, [int]$TimeoutSeconds)\n"
    assert moved.script_text("rename") == (WIN_SCRIPTS / "rename.ps1").read_text()
