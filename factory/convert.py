"""Converters: a seed row -> a draft rollout (messages + the workspace it starts from).

`code_edit`: an instruction whose answer holds a fenced code block becomes a tool rollout.
When the code is new (nothing to change, or the answer shares little with what is there):

    user:      the instruction
    assistant: a short look-around remark + a read (a workspace file) or a search (the new name)
    tool:      the real result
    assistant: the seed answer's own prose before the code + a call creating the file
    tool:      the real result
    assistant: the seed answer's prose after the code (the final reply)

When the answer modifies code that is already there (a workspace file, or code pasted into the
instruction, which then becomes the file): read that file (its name is known, so no search),
then one targeted edit per changed region of a line diff (difflib), each `old` grown with
context lines until it is unique in the file at that point; the edits must reproduce the
answer's code exactly. A share of those rows shows a recovery, the state a model's own slips
lead to and that clean rows never show: one in RECOVER first tries an edit whose old text is a
slip (a stub line spelled another way, or indented one level more), gets the runtime's error, says so
in a line, reads the file again and edits with old copied from it; one in MISSED_SEARCH first
searches for the file's name, finds nothing, then reads it (bench/RESULTS.md, "Demo model").
`code_diff` is that second path only (a seed with nothing to modify is rejected).

The calls are the tool spec's (`spec.call("search", pattern=...)`, rollout.create_call), so a
spec naming its tools and arguments as it likes gets the same rollouts; one lacking a behaviour
a rollout needs (`needs`, what `factory check` reports) makes that row a reject with the reason.

Every tool result comes from agent.tools.Tools run on a temp copy of the workspace, so the
format is the agent's real one. The seed's prose is kept as written (capitals, "Certainly!",
"let me know if..."): the critics catch it and the reviser fixes it, which is where the
factory's rejected/chosen pairs come from. Inputs that cannot make a clean row (binary or
giant text, a special token's spelling, an unclosed code fence) are rejected with the reason.
`chat` is a plain exchange (no tools); `scenario` expands a scenario spec (factory/scenarios.py).
"""

import difflib
import re
import tempfile
import zlib
from dataclasses import dataclass

from factory.loop import Skip
from factory.rollout import create_call, lacks, system_message, workspace_tools
from factory.scenarios import ScenarioConverter
from factory.scenarios import support as scenario_support
from nanocode.record import SPECIAL_TOKENS

MAX_TEXT = 60_000      # chars of instruction + answer: beyond this a seed is a dump, not a task
MAX_FILE = 100_000     # chars of one workspace file (the rollout reads it whole)
MAX_EDITS = 6          # more changed regions than this become one edit over the changed span
KEEP = 0.5             # share of the old lines the answer keeps for it to count as a change
_FENCE_LINE = re.compile(r"^\s*```", re.M)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")

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
        if m := re.search(rf"(?<![\w/.])([\w/-]+\.{ext})\b", text):
            return m[1]
    stem = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", ident).lower() if ident else "solution"
    return f"{stem}.{ext}"


def check_seed(seed: dict) -> None:
    """Reject (Skip) what cannot make a clean row."""
    texts = {"instruction": seed["instruction"], "answer": seed["answer"],
             **{f"workspace file {p!r}": t for p, t in seed["workspace"].items()}}
    for where, text in texts.items():
        if "\x00" in text or _CONTROL.search(text):
            raise Skip("input", f"binary content (control bytes) in the {where}")
        if token := next((t for t in SPECIAL_TOKENS if t in text), None):
            raise Skip("input", f"the {where} spells the special token {token}")
    if len(seed["instruction"]) + len(seed["answer"]) > MAX_TEXT:
        raise Skip("input", f"instruction + answer are {len(seed['instruction']) + len(seed['answer'])} "
                            f"chars (limit {MAX_TEXT})")
    for path, text in seed["workspace"].items():
        if len(text) > MAX_FILE:
            raise Skip("input", f"workspace file {path!r} is {len(text)} chars (limit {MAX_FILE})")


def answer_code(answer: str) -> tuple[re.Match, str, str]:
    """The answer's first fenced block: (match, language, code)."""
    m = _FENCED.search(answer)
    if not m:
        if _FENCE_LINE.search(answer):
            raise Skip("convert", "the answer's code block is never closed (unbalanced ```)")
        raise Skip("convert", "the answer has no fenced code block")
    if len(_FENCE_LINE.findall(answer)) % 2:
        raise Skip("convert", "the answer's code blocks are unbalanced (an odd number of ``` lines)")
    return m, m[1].lower(), m[2]


def _pasted(instruction: str, ext: str) -> str | None:
    """Code the user pasted into the instruction in the answer's language (or unlabeled)."""
    return next((m[2] for m in _FENCED.finditer(instruction)
                 if EXT.get(m[1].lower(), m[1].lower() or ext) == ext and m[2].strip()), None)


def kept_share(old: str, new: str) -> float:
    """The share of old's lines that survive, in order, in new."""
    a, b = old.splitlines(), new.splitlines()
    same = sum(block.size for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
    return same / max(1, len(a))


def diff_edits(old: str, new: str) -> list[tuple[str, str]]:
    """Targeted (old, new) text pairs that, applied in order with the edit rule (the one exact
    occurrence), turn `old` into `new`. Each region grows by whole lines of context (one above,
    then one below, in turn) until its old text is unique in the file at that point."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    ops = [op[1:] for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if op[0] != "equal"]
    merged = []
    for i1, i2, j1, j2 in ops:  # regions 2 lines apart or less are one edit: fewer, clearer calls
        if merged and i1 - merged[-1][1] <= 2:
            merged[-1] = (merged[-1][0], i2, merged[-1][2], j2)
        else:
            merged.append((i1, i2, j1, j2))
    if len(merged) > MAX_EDITS:
        merged = [(merged[0][0], merged[-1][1], merged[0][2], merged[-1][3])]
    cur, shift, edits = list(a), 0, []
    for i1, i2, j1, j2 in merged:
        start, end = i1 + shift, i2 + shift
        lo, hi, up = start, end, True
        while True:
            chunk = "".join(cur[lo:hi])
            if chunk.strip() and "".join(cur).count(chunk) == 1:
                break
            if lo == 0 and hi == len(cur):
                break  # the whole file: unique by definition (or the file is blank)
            if (up and lo > 0) or hi == len(cur):
                lo -= 1
            else:
                hi += 1
            up = not up
        replacement = cur[lo:start] + b[j1:j2] + cur[end:hi]
        edits.append((chunk, "".join(replacement)))
        cur[lo:hi] = replacement
        shift += (j2 - j1) - (i2 - i1)
    return edits


@dataclass
class CodeEdit:
    system_prompt: bool = True  # start each record with the agent's system prompt (soul + tools)
    diff_only = False           # code_diff: a seed with no code to modify is rejected
    unsafe_bash = False         # set by the build (--unsafe-bash): shell commands unsandboxed
    needs = {"read": ("path",), "search": ("pattern",), "edit": ("path", "old", "new"), "create": ()}

    def convert(self, seed: dict, soul, spec) -> dict:
        check_seed(seed)
        m, lang, code = answer_code(seed["answer"])
        ext = EXT.get(lang, lang or "txt")
        found = _DEFINES.search(code)
        ident = found[1] if found else None
        target = _target(seed, ext, ident)
        before, after = seed["answer"][:m.start()].strip(), seed["answer"][m.end():].strip()
        workspace = dict(seed["workspace"])
        original = workspace[target] if target in workspace else _pasted(seed["instruction"], ext)
        modifies = original is not None and original.strip() and kept_share(original, code) >= KEEP
        if self.diff_only and not modifies:
            raise Skip("convert", "the instruction holds no code that the answer modifies")
        if modifies:
            workspace[target] = workspace.get(target) or _ends(original)  # pasted code becomes the file
        with tempfile.TemporaryDirectory(prefix="nanocode-convert-") as root:
            try:
                tools = workspace_tools(root, workspace, spec, unsafe_bash=self.unsafe_bash)
            except ValueError as e:
                raise Skip("convert", str(e)) from None
            messages = [{"role": "user", "content": seed["instruction"]}]

            def step(remark, call, slip=False):  # slip: an edit that must fail (a recovery row's)
                result = tools.run(call)
                if spec.canonical(call)[0] in ("edit", "write") and result.startswith("error") != slip:
                    raise Skip("convert", f"the {call['name']} {'applied' if slip else 'failed'} on replay: {result}")
                messages.append({"role": "assistant", "content": remark, "tool_calls": [call]})
                messages.append({"role": "tool", "name": call["name"], "content": result})

            if modifies:
                self._edits(step, tools, spec, target, workspace[target], code, before)
                if (tools.root / target).read_text(encoding="utf-8") != _ends(code):
                    raise Skip("convert", "the diff edits do not reproduce the answer's code")
            else:
                self._create(step, spec, workspace, target, ident, code, before)
            what = f"`{ident}`" if ident else "the code"
            messages.append({"role": "assistant", "content": after or f"done: {what} is in `{target}`."})
        if self.system_prompt:
            messages.insert(0, system_message(soul, spec))
        return {"messages": messages, "workspace": workspace}

    @staticmethod
    def _create(step, spec, workspace, target, ident, code, before):
        existing = workspace.get(target)
        if workspace:
            look = target if existing is not None else sorted(workspace)[0]
            step(f"let me read `{look}` before touching anything", spec.call("read", path=look))
        else:
            pattern = ident or target.rsplit(".", 1)[0]
            step(f"quick look for an existing `{pattern}` first", spec.call("search", pattern=pattern))
        if existing is None:
            edit = create_call(spec, target, code)
        else:  # append: the whole file is the one exact, unique old
            edit = spec.call("edit", path=target, old=existing, new=existing.rstrip("\n") + "\n\n\n" + code)
        step(before or f"writing it to `{target}`", edit)

    @staticmethod
    def _edits(step, tools, spec, target, original, code, before):
        # the file is known (named, or the pasted code): read it first, as an agent should; a
        # search first would teach a model to grep for what it was told where to find. A few
        # rows (by a hash of the file, so a rebuild makes the same rows) show what to do when a
        # call misses: a search that finds nothing, then the read; an edit whose old text is a
        # slip, the runtime's error, then the edit with old copied exactly from the file
        pick = zlib.crc32(f"{target}\n{original}".encode("utf-8"))
        edits = diff_edits(original, _ends(code))
        stem = target.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if pick % MISSED_SEARCH == 1 and tools.run(spec.call("search", pattern=stem)) == "no matches":
            step(f"looking for `{stem}` first", spec.call("search", pattern=stem))
            step(f"no hits, but the request names `{target}`: reading it", spec.call("read", path=target))
        else:
            step(f"reading `{target}` before changing it", spec.call("read", path=target))
        slip = _slip(edits[0][0]) if pick % RECOVER == 0 else None
        if slip and isinstance(tools.plan(spec.call("edit", path=target, old=slip[1], new=edits[0][1])), str):
            kind, old = slip
            step(before or f"editing `{target}`", spec.call("edit", path=target, old=old, new=edits[0][1]), slip=True)
            # read it again, though it was just read: an edit right after a read is the state
            # every clean row shows, and a model that edits again from memory can miss again
            step(f"{_MISSED[kind]} reading `{target}` again to copy it exactly", spec.call("read", path=target))
            before = "now with the text exactly as the file has it"
        for n, (old, new) in enumerate(edits):
            remark = (before or f"editing `{target}`") if n == 0 else "and the next spot"
            step(remark, spec.call("edit", path=target, old=old, new=new))


RECOVER = 2          # one edit row in 2 slips first and recovers: the eval's Edits miss often (1 in 4 measured worse)
MISSED_SEARCH = 10   # one in 10 first searches for the file's name and finds nothing, then reads it
_STUB_LINES = ("pass", "...")  # and any `raise NotImplementedError...`
_MISSED = {"stub": "welp, the file doesn't say that.", "indent": "welp, the indentation was off."}


def _slip(old: str) -> tuple[str, str] | None:
    """A plausible wrong old text for an edit: (kind, text). A stub line spelled another way, or
    a stub body guessed under a bare docstring ("stub"); else the lines indented one level more
    ("indent"). None when old has no lines to slip on."""
    lines = old.splitlines(keepends=True)
    for i, line in enumerate(lines):
        body = line.strip()
        if body in _STUB_LINES or body.startswith("raise NotImplementedError"):
            other = "pass" if body != "pass" else 'raise NotImplementedError("implement me")'
            return "stub", "".join(lines[:i] + [line[:len(line) - len(line.lstrip())] + other + "\n"] + lines[i + 1:])
    if lines and lines[-1].strip() in ('"""', "'''") and lines[-1].endswith("\n"):
        return "stub", old + lines[-1][:len(lines[-1]) - len(lines[-1].lstrip())] + "pass\n"
    if not any(line.strip() for line in lines):
        return None
    return "indent", "".join("    " + line if line.strip() else line for line in lines)  # less would be a substring


def _ends(text: str) -> str:
    """Code as a file holds it: one final newline."""
    return text.rstrip("\n") + "\n"


@dataclass
class CodeDiff(CodeEdit):
    diff_only = True


@dataclass
class Chat:
    """General chat (SmolTalk and the like): the request and the answer as one plain exchange, no
    tools. The critics and the reviser still hold it to the SOUL, so the model's voice is the same
    whether or not a task touches files."""
    system_prompt: bool = True
    needs = {}

    def convert(self, seed: dict, soul, spec) -> dict:
        check_seed(seed)
        messages = [{"role": "user", "content": seed["instruction"]},
                    {"role": "assistant", "content": seed["answer"].strip()}]
        if self.system_prompt:
            messages.insert(0, system_message(soul, spec))
        return {"messages": messages, "workspace": dict(seed["workspace"])}


CONVERTERS = {"code_edit": CodeEdit, "code_diff": CodeDiff, "chat": Chat, "scenario": ScenarioConverter}


def support(spec) -> dict[str, list[str]]:
    """`factory check`: what each converter, and each part of a scenario rollout (its search,
    its test command, each event), lacks in tool spec `spec`; [] means it can make rows."""
    parts = {f"scenario {part}": why for part, why in scenario_support(spec).items() if part != "rollout"}
    return {**{name: lacks(spec, c.needs) for name, c in CONVERTERS.items()}, **parts}
