"""What every rollout starts from, at conversion, scenario expansion and replay alike: the
agent's system prompt as its first message, and agent.tools.Tools on a temp folder holding its
files, so all three see the same bytes and the same runtime.

Converters write their calls in the tool spec's terms (`spec.call("read", path=...)`); the one
call that is not a single behaviour, making a new file, is `create_call`, and `lacks` says what
a converter's needs (behaviour -> canonical args) miss in a spec, for `factory check`.

A recorded shell result (the shell tool's, or a command template's) is made steady: the temp
folder's path (a traceback prints it) and a test runner's timing (`Ran 4 tests in 0.004s`) are
what differs between two real runs, so they are written fixed, and a seed makes the same row,
with the same id, on every build.
"""

import os
import re
import sys
import tempfile
from pathlib import Path

from agent.tools import Tools
from nanocode.spec import MissingTool, render_system_prompt

STEADY_ROOT = os.path.join(tempfile.gettempdir(), "nanocode-workspace")  # replay masks it as a temp folder
_TIMING = re.compile(r"(?<=\bin )\d+(\.\d+)?(?=\s?(?:ms|s|sec|secs|seconds?)\b)")  # not "timed out after 2s"

_SYSTEM: dict[tuple[str, str], str] = {}


def system_message(soul, spec) -> dict:
    """The agent's system prompt as the first message of a record: rendered once per (SOUL, tool
    spec) pair, not per row (reading and compiling the template took ~4 ms of a row's ~10)."""
    key = (soul.sha256, spec.sha256)
    if key not in _SYSTEM:
        _SYSTEM[key] = render_system_prompt(soul, spec)
    return {"role": "system", "content": _SYSTEM[key]}


def rollout_tools(root, spec, limits=None, unsafe_bash=False) -> Tools:
    """The tool runtime every rollout is made and replayed with: the shell finds this Python
    first, so `python -m unittest` in a scenario needs no `python` on the machine's PATH (Debian
    has only python3), starts without a version manager's shim, and gives the same output at
    conversion and at replay. Model-written commands run in the sandbox (agent/sandbox.py)
    unless the user passed --unsafe-bash; without bwrap, Tools refuses in one line."""
    return Tools(root, spec, limits, bin_dirs=(Path(sys.executable).parent,),
                 sandbox=not unsafe_bash)


def workspace_tools(root, files: dict, spec, limits=None, unsafe_bash=False) -> Tools:
    """rollout_tools on `root` holding `files` exactly as given (paths confined to root). A path
    leading out, or a value that is not text, raises ValueError."""
    tools = rollout_tools(root, spec, limits, unsafe_bash)
    base = str(tools.root)
    for rel, text in files.items():
        if not isinstance(rel, str) or not isinstance(text, str):
            raise ValueError(f"workspace: {rel!r} must map a path to text")
        target = os.path.realpath(os.path.join(base, rel))
        if os.path.isabs(rel) or not target.startswith(base + os.sep):
            raise ValueError(f"workspace file {rel!r} leads outside the workspace")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_bytes(text.encode("utf-8"))
    return tools


def create_call(spec, path: str, content: str) -> dict:
    """A call making the new file `path`: the spec's write tool, else its edit tool with `old`
    left out (the default spec's Edit creates that way); MissingTool if it has neither."""
    if spec.for_builtin("write"):
        return spec.call("write", path=path, content=content)
    edit = spec.for_builtin("edit")
    if edit and not any(a.feeds == "old" and a.required for a in edit.args):
        return spec.call("edit", path=path, new=content)
    raise MissingTool("spec has no write tool (nor an edit tool whose old may be left out)")


def lacks(spec, needs: dict) -> list[str]:
    """Why `spec` cannot make the calls `needs` names ({behaviour: canonical args}; "create": a
    new file), one line each; [] when it can."""
    problems = []
    for behaviour, args in needs.items():
        try:
            call = create_call(spec, "f", "") if behaviour == "create" else spec.call(behaviour, **dict.fromkeys(args, ""))
        except MissingTool as e:
            problems.append(str(e))
            continue
        tool = spec.get(call["name"])
        problems += [f"spec's {tool.name} requires {a.name}, which these calls do not give"
                     for a in tool.args if a.required and a.name not in call["args"]]
    return problems


def steady_run(tools: Tools, call: dict) -> str:
    """The call's real result as a rollout records it (a shell result made steady, see above)."""
    result = tools.run(call)
    tool = tools.spec.get(call.get("name"))
    if tool is None or not (tool.builtin == "shell" or tool.command):
        return result
    result = result.replace(str(tools.root), STEADY_ROOT)
    return _TIMING.sub(lambda m: "0" + re.sub(r"\d", "0", m[1] or ""), result)  # in 0.013s -> in 0.000s
