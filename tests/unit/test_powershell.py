"""Every PowerShell script of the project, checked without PowerShell (there is no Windows here):
each ``.ps1`` of the repository parsed with a real PowerShell grammar (tree-sitter-powershell),
any syntax error failing the test with its line:column and text; each script of the agent role
(roles/doai_agent/files/windows) taking exactly the parameters the action plugin passes it
(``PS_PARAMS``, which its ``_ps`` enforces on every call); and each one a playbook runs through
``ansible.builtin.raw`` (``& { <file> } -Name value``) taking exactly the names the task passes.

A typo in a script would otherwise first show on a real PC, after the agent was stopped."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell
import yaml
from ansible.errors import AnsibleError

ROOT = Path(__file__).resolve().parents[2]
WIN_SCRIPTS = ROOT / "roles" / "doai_agent" / "files" / "windows"
PLUGIN = ROOT / "plugins" / "action" / "doai_agent_swap.py"
DECISIONS = ROOT / "plugins" / "module_utils" / "doai_agent_decide.py"
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
            # An ERROR node can open with the well-formed statements before the fault (a
            # param() block): it is reported where its first token outside them is.
            at = next((c for c in node.children if not c.is_named or c.type == "ERROR"), node)
            line, col = at.start_point
            what = f"missing {node.type!r}" if node.is_missing else "syntax error"
            snippet = text.encode("utf-8")[at.start_byte:node.end_byte].decode("utf-8", "replace")
            snippet = snippet.splitlines()[0][:60] if snippet else ""
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
    layout), by walking up from its own file; each script read is the file's text. Its decisions
    (plugins/module_utils/doai_agent_decide.py) are found the same way, outside Ansible's
    collection loader."""
    coll = tmp_path / "ansible_collections" / "doai" / "rollback"
    (coll / "plugins" / "action").mkdir(parents=True)
    (coll / "plugins" / "module_utils").mkdir(parents=True)
    shutil.copy(PLUGIN, coll / "plugins" / "action" / "doai_agent_swap.py")
    shutil.copy(DECISIONS, coll / "plugins" / "module_utils" / "doai_agent_decide.py")
    shutil.copytree(WIN_SCRIPTS, coll / "roles" / "doai_agent" / "files" / "windows")
    (coll / "roles" / "doai_agent" / "files" / "windows" / "stop.ps1").write_text("param([string]$Root, [int]$TimeoutSeconds)\n")
    moved = load_plugin(coll / "plugins" / "action" / "doai_agent_swap.py", "doai_agent_swap_moved")
    assert moved.scripts_dir() == str(coll / "roles" / "doai_agent" / "files" / "windows")
    assert moved.script_text("stop") == "param([string]$Root, [int]$TimeoutSeconds)\n"
    assert moved.script_text("rename") == (WIN_SCRIPTS / "rename.ps1").read_text()
    assert moved.decisions.__file__ == str(coll / "plugins" / "module_utils" / "doai_agent_decide.py")
    assert moved.decide is moved.decisions.decide


# --------------------------------------------------------------------------------------------
# The scripts playbooks run through ansible.builtin.raw (no collection, no `parameters`)
# --------------------------------------------------------------------------------------------

YAML_DIRS = ("playbooks", "molecule", "roles", "examples")
# `& {<newline>{{ lookup('ansible.builtin.file', 'x.ps1') }}<newline>} -Name value ...`
RAW_CALL = re.compile(r"& \{\n\{\{ lookup\('ansible\.builtin\.file', '([\w.-]+\.ps1)'\) \}\}\n\}((?: -.*)?)\Z")
RAW_ARG = re.compile(r" -(\w+) ('\{\{[^}']*\}\}'|\{\{[^}]*\}\}|'[\w.-]*'|\d+)")
POWERSHELL_MODULES = {"ansible.windows.win_powershell", "win_powershell", "ansible.windows.win_shell", "win_shell",
                      "ansible.builtin.script", "script"}


def yaml_tasks():
    """(file, task) for every task of every YAML file of playbooks/, molecule/, roles/, examples/."""
    out = []

    def walk(path, items):
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            out.append((path, item))
            for key in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always"):
                walk(path, item.get(key))

    for top in YAML_DIRS:
        for path in sorted((ROOT / top).rglob("*.yml")):
            if any(part.startswith(".") or part == "node_modules" for part in path.relative_to(ROOT).parts):
                continue
            walk(path, yaml.safe_load(path.read_text(encoding="utf-8")))
    return out


def raw_calls():
    return [(path, task["name"], task.get("ansible.builtin.raw", task.get("raw")))
            for path, task in yaml_tasks() if "ansible.builtin.raw" in task or "raw" in task]


def check_raw_call(path, command):
    """What is wrong with a raw task's command: PowerShell text other than a call of a .ps1 file
    beside the playbook (files/), or a call whose -Name arguments are not the script's param()."""
    if re.fullmatch(r"[\w.-]+(?: [\w.-]+)*", command):
        return []  # a plain command (echo doai-agent-reachable): no script
    m = RAW_CALL.match(command)
    if not m:
        return [("PowerShell text in the task: put it in a .ps1 file under files/ and call it as "
                 "& {\\n{{ lookup('ansible.builtin.file', 'x.ps1') }}\\n} -Name value")]
    # Where Ansible's file lookup looks: files/ beside the task file, and for a task file
    # under a playbook's tasks/, the playbook's own files/.
    places = [path.parent / "files" / m.group(1)]
    if path.parent.name == "tasks":
        places.append(path.parent.parent / "files" / m.group(1))
    script = next((s for s in places if s.is_file()), None)
    if script is None:
        return [f"files/{m.group(1)} (beside {path.name}) does not exist"]
    args = RAW_ARG.findall(m.group(2))
    if "".join(f" -{n} {v}" for n, v in args) != m.group(2):
        return [f"arguments not understood: {m.group(2)!r}"]
    text = script.read_text(encoding="utf-8")
    problems = check_script(text, [name for name, _ in args])
    # the call as the PC gets it (each templated value standing in as a plain one) parses too
    values = "".join(f" -{n} " + ("'x'" if v.startswith("'") else "1") for n, v in args)
    wrapped = "& {\n" + text.rstrip() + "\n}" + values
    problems += ["the call: " + e for e in syntax_errors(wrapped)]
    return problems


def test_every_raw_powershell_task_calls_a_script_with_its_parameters():
    calls = raw_calls()
    # the three that run PowerShell: agent_diagnose's TCP connect, molecule agent_windows' two
    scripts = {RAW_CALL.match(c).group(1) for _, _, c in calls if RAW_CALL.match(c)}
    assert scripts == {"agent_tcp_connect.ps1", "prepare_agent_folder.ps1", "read_agent_folder.ps1"}
    for path, name, command in calls:
        problems = check_raw_call(path, command)
        assert not problems, f"{path.relative_to(ROOT)}: {name}:\n  " + "\n  ".join(problems)


def test_no_task_holds_powershell_text_inline():
    inline = [(str(path.relative_to(ROOT)), task.get("name")) for path, task in yaml_tasks()
              if POWERSHELL_MODULES & set(task)]
    assert inline == []


def test_the_raw_check_can_fail(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "x.ps1").write_text("param([string]$User)\n$User\n")
    play = tmp_path / "play.yml"
    call = "& {\n{{ lookup('ansible.builtin.file', 'x.ps1') }}\n}"
    assert check_raw_call(play, call + " -User '{{ u }}'") == []
    assert check_raw_call(play, call + " -Name '{{ u }}'") == ["param() takes User, the caller passes Name"]
    assert check_raw_call(play, "$c = New-Object Net.Sockets.TcpClient; $c.Connect('{{ h }}', 1)")[0].startswith(
        "PowerShell text in the task")
    assert check_raw_call(play, call.replace("x.ps1", "y.ps1") + " -User 'a'") == [
        "files/y.ps1 (beside play.yml) does not exist"]
    (tmp_path / "files" / "x.ps1").write_text("param([string]$User)\nif ($User {\n")
    assert check_raw_call(play, call + " -User 'a'") == ["2:1: syntax error 'if ($User {'",
                                                        "the call: 3:1: syntax error 'if ($User {'"]
