"""Converters: a seed row -> a draft rollout (messages + the workspace it starts from).

`code_edit`: an instruction whose answer holds a fenced code block becomes a tool rollout:

    user:      the instruction
    assistant: a short look-around remark + Read (a workspace file) or Grep (the new name)
    tool:      the real result
    assistant: the seed answer's own prose before the code + Edit writing the code
    tool:      the real result
    assistant: the seed answer's prose after the code (the final reply)

Every tool result comes from agent.tools.Tools run on a temp copy of the workspace, so the
format is the agent's real one. The seed's prose is kept as written (capitals, "Certainly!",
"let me know if..."): the critics catch it and the reviser fixes it, which is where the
factory's rejected/chosen pairs come from.
"""

import re
import tempfile
from dataclasses import dataclass

from agent.spec import render_system_prompt
from agent.tools import Tools


class Skip(Exception):
    """This input cannot become a row: (stage, reason) go to the rejects table."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


EXT = {"python": "py", "py": "py", "javascript": "js", "js": "js", "typescript": "ts", "ts": "ts",
       "go": "go", "rust": "rs", "bash": "sh", "sh": "sh", "shell": "sh", "java": "java",
       "c": "c", "cpp": "cpp", "ruby": "rb", "kotlin": "kt"}
_FENCED = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)^```", re.S | re.M)
_DEFINES = re.compile(r"^\s*(?:export\s+)?(?:pub\s+)?(?:async\s+)?"
                      r"(?:def|class|function|fn|func)\s+([A-Za-z_]\w*)", re.M)


def _target(seed: dict, ext: str, ident: str | None) -> str:
    """The file the code goes into: one the seed names with the right extension, else one
    named after the code's first definition."""
    for text in (seed["instruction"], seed["answer"]):
        m = re.search(rf"(?<![\w/.])([\w/-]+\.{ext})\b", text)
        if m:
            return m[1]
    stem = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", ident).lower() if ident else "solution"
    return f"{stem}.{ext}"


@dataclass
class CodeEdit:
    system_prompt: bool = True  # start each record with the agent's system prompt (soul + tools)

    def convert(self, seed: dict, soul, spec) -> dict:
        m = _FENCED.search(seed["answer"])
        if not m:
            raise Skip("convert", "the answer has no fenced code block")
        lang, code = m[1].lower(), m[2]
        ext = EXT.get(lang, lang or "txt")
        found = _DEFINES.search(code)
        ident = found[1] if found else None
        target = _target(seed, ext, ident)
        before, after = seed["answer"][:m.start()].strip(), seed["answer"][m.end():].strip()
        with tempfile.TemporaryDirectory(prefix="nanocode-convert-") as root:
            tools = Tools(root, spec)
            for path, text in seed["workspace"].items():
                result = tools.run({"name": "Edit", "args": {"file_path": path, "new_string": text}})
                if result.startswith("error"):
                    raise Skip("convert", f"workspace file {path!r}: {result}")
            existing = seed["workspace"].get(target)
            if seed["workspace"]:
                look = target if existing is not None else sorted(seed["workspace"])[0]
                first = ({"name": "Read", "args": {"file_path": look}},
                         f"let me read `{look}` before touching anything")
            else:
                pattern = ident or target.rsplit(".", 1)[0]
                first = ({"name": "Grep", "args": {"pattern": pattern}},
                         f"quick look for an existing `{pattern}` first")
            if existing is None:
                edit = {"name": "Edit", "args": {"file_path": target, "new_string": code}}
            else:  # append: the whole file is the one exact, unique old_string
                edit = {"name": "Edit", "args": {"file_path": target, "old_string": existing,
                                                 "new_string": existing.rstrip("\n") + "\n\n\n" + code}}
            messages = [{"role": "user", "content": seed["instruction"]}]
            for call, remark in (first, (edit, before or f"writing it to `{target}`")):
                messages.append({"role": "assistant", "content": remark, "tool_calls": [call]})
                messages.append({"role": "tool", "name": call["name"], "content": tools.run(call)})
            what = f"`{ident}`" if ident else "the code"
            messages.append({"role": "assistant", "content": after or f"done: {what} is in `{target}`."})
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": render_system_prompt(soul, spec)})
        return {"messages": messages, "workspace": dict(seed["workspace"])}


CONVERTERS = {"code_edit": CodeEdit}
