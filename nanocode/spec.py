"""The SOUL and the tool spec: load, validate, hash, type tool calls, render the system prompt.

SOUL file (default `soul/SOUL.md`): YAML front matter between `---` lines, then markdown.
    front matter keys (both required; unknown keys are errors, so a typo cannot switch a check off):
      summary   str   the persona line every system prompt starts with
      rules     map   the checks a program runs on every reply: rule name -> its parameters, from
                      the registry nanocode.soul_checks.RULES (lowercase_prose, sentence_case,
                      banned_openers, banned_phrases, max_reply_words, max_think_words); a rule
                      left out is off, an unknown rule or parameter is an error
    markdown: `## voice`, `## values`, `## rules` sections are required and non-empty (the
    critics cite them); other sections (`## examples`) are kept too. `#`-lines inside fenced
    code are not headings.

Tool spec (default `soul/tools.yaml`): `tools:` a list of {name, description, needs_approval,
args: [{name, type: string|int|bool, required, description, as}]} where each tool says how it
runs with exactly one of
    builtin: read|search|edit|write|list|shell   one of the runtime's behaviours (BUILTINS below);
                                                 each arg feeds the builtin's argument named by
                                                 its `as:` (default: its own name)
    command: "python -m pytest -q {target}"      a template run by the shell (sandboxed when the
                                                 runtime has a sandbox); `{arg}` is the arg's
                                                 value shell-quoted, empty when left out
    entry: "package.module:function"             called as function(args, workspace) -> str
Everything outside the spec file speaks in builtins (`spec.call("read", path=...)`,
`spec.canonical(call)`), so a spec may name its tools and arguments as it likes.

Both hashes are sha256 of the exact file bytes: every dataset version records them.

The defaults are `soul/SOUL.md` and `soul/tools.yaml` of this install (nanocode/paths.py: the
checkout's, or the copies a wheel carries). Every problem is an `InputError` of one line naming
the file.
"""

import hashlib
import importlib
import re
import string
from dataclasses import dataclass, replace
from pathlib import Path

import jinja2
import yaml

from nanocode.common import InputError
from nanocode.paths import shipped
from nanocode.soul_checks import RULES, SoulRules, declare_rules

DEFAULT_SOUL = shipped("soul/SOUL.md")
DEFAULT_TOOLS = shipped("soul/tools.yaml")
PROMPTS = Path(__file__).resolve().parent / "prompts"

REQUIRED_SECTIONS = ("voice", "values", "rules")
ARG_TYPES = ("string", "int", "bool")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # names are rendered verbatim in tool calls


@dataclass(frozen=True)
class Soul:
    path: Path
    text: str                 # the whole file as written (what is hashed)
    body: str                 # the markdown after the front matter (what critics read)
    summary: str
    sections: dict[str, str]  # lowercased `##` heading -> its text
    rules: SoulRules          # the front matter's declared rules (nanocode.soul_checks)
    sha256: str


# the runtime's behaviours (agent/tools.py): canonical argument -> (type, required)
BUILTINS = {
    "read": {"path": ("string", True), "offset": ("int", False), "limit": ("int", False)},
    "search": {"pattern": ("string", True), "path": ("string", False), "glob": ("string", False)},
    "edit": {"path": ("string", True), "old": ("string", False), "new": ("string", True)},  # no old: create
    "write": {"path": ("string", True), "content": ("string", True)},  # the whole file, new or replaced
    "list": {"pattern": ("string", False), "path": ("string", False)},
    "shell": {"command": ("string", True), "timeout": ("int", False)},
}


@dataclass(frozen=True)
class Arg:
    name: str
    type: str  # one of ARG_TYPES
    required: bool
    description: str
    feeds: str | None = None  # a builtin tool's canonical argument this one is passed as


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    needs_approval: bool
    args: tuple[Arg, ...] = ()
    builtin: str | None = None  # exactly one of builtin, command, entry says how the tool runs
    command: str | None = None
    entry: str | None = None

    def canonical(self, args: dict) -> dict:
        """A builtin tool's args by the builtin's names (args it does not declare are dropped)."""
        return {a.feeds: args[a.name] for a in self.args if a.name in args}


class MissingTool(Exception):
    """The spec cannot express a call a converter needs ("spec has no search tool")."""


@dataclass(frozen=True)
class ToolSpec:
    path: Path
    tools: tuple[Tool, ...]
    sha256: str

    def get(self, name) -> Tool | None:
        return next((t for t in self.tools if t.name == name), None)

    def for_builtin(self, behaviour: str) -> Tool | None:
        """The first tool that runs `behaviour`, or None."""
        return next((t for t in self.tools if t.builtin == behaviour), None)

    def call(self, behaviour: str, **args) -> dict:
        """A call of this spec's `behaviour` tool, given canonical args; None values are left out.
        MissingTool when the spec has no such tool, or no argument feeding one of `args`."""
        tool = self.for_builtin(behaviour)
        if tool is None:
            raise MissingTool(f"spec has no {behaviour} tool")
        named = {a.feeds: a.name for a in tool.args}
        if missing := [k for k, v in args.items() if v is not None and k not in named]:
            raise MissingTool(f"spec's {tool.name} has no argument for {', '.join(missing)}")
        return {"name": tool.name, "args": {named[k]: v for k, v in args.items() if v is not None}}

    def canonical(self, call: dict) -> tuple[str | None, dict]:
        """(the builtin a call runs, its args by canonical name); (None, {}) for an unknown
        tool or a command/entry tool. Args the tool does not declare are dropped."""
        tool = self.get(call.get("name")) if isinstance(call, dict) else None
        if tool is None or tool.builtin is None:
            return None, {}
        return tool.builtin, tool.canonical(call.get("args") if isinstance(call.get("args"), dict) else {})


# ------------------------------------------------------------------------------ loading

def _fail(path, problem: str):
    """One line, always naming the file: the CLIs print it after `error: `."""
    raise InputError(" ".join(f"{path}: {problem}".split()))


def read_file(path: Path, empty_ok: bool = False) -> tuple[bytes, str]:
    """(the file's bytes, its text): InputError of one line naming the file when it cannot be
    read, is not UTF-8 or (unless `empty_ok`) is empty."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        _fail(path, "no such file")
    except IsADirectoryError:
        _fail(path, "is a directory, not a file")
    except OSError as e:
        _fail(path, f"cannot read it ({e.strerror})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(path, f"not UTF-8 text (bad byte at offset {e.start})")
    if not text.strip() and not empty_ok:
        _fail(path, "is empty")
    return raw, text.removeprefix("\ufeff")


def _yaml(path: Path, text: str, first_line: int = 1):
    """Parse YAML; a syntax error names its line in the file (first_line: where `text` starts)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + first_line}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        _fail(path, f"bad YAML{where}: {problem}")


_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?$\n?", re.S | re.M)
_SOUL_KEYS = ("summary", "rules")


def _sections(body: str) -> dict[str, str]:
    """`## name` -> text up to the next `#`/`##` heading, skipping fenced code."""
    sections, current, fence = {}, None, None
    for line in body.splitlines():
        stripped = line.strip()
        if fence:
            fence = None if stripped.startswith(fence) else fence
        elif stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
        else:
            if m := re.match(r"(#{1,2})\s+(.*?)\s*#*\s*$", line):
                current = m[2].lower() if len(m[1]) == 2 else None
                if current in sections:
                    raise ValueError(f"section '## {current}' appears twice")
                if current is not None:
                    sections[current] = []
                continue
        if current is not None:
            sections[current].append(line)
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


def load_soul(path=None) -> Soul:
    """Load and validate a SOUL file (default `soul/SOUL.md`); InputError on any problem."""
    path = Path(path) if path is not None else DEFAULT_SOUL
    raw, text = read_file(path)
    m = _FRONT.match(text)
    if not m and re.match(r"---[ \t]*\r?\n", text):
        _fail(path, "the YAML front matter opened on line 1 has no closing '---' line")
    if not m:
        _fail(path, "missing the YAML front matter (a block between '---' lines at the top)")
    meta = _yaml(path, m[1], first_line=2)
    if not isinstance(meta, dict):
        _fail(path, "the front matter must be a YAML mapping of rule keys")
    if unknown := sorted(map(str, set(meta) - set(_SOUL_KEYS))):
        hint = " (rules go under 'rules:')" if any(k in RULES for k in unknown) else ""
        _fail(path, f"unknown front matter key(s): {', '.join(unknown)}{hint}")
    if missing := [k for k in _SOUL_KEYS if k not in meta]:
        _fail(path, f"front matter is missing key(s): {', '.join(missing)}")
    if not isinstance(meta["summary"], str) or not meta["summary"].strip():
        _fail(path, "front matter key 'summary' must be a non-empty string")
    try:
        rules = declare_rules(meta["rules"])
    except ValueError as e:
        _fail(path, str(e))
    body = text[m.end():]
    try:
        sections = _sections(body)
    except ValueError as e:
        _fail(path, str(e))
    if missing := [s for s in REQUIRED_SECTIONS if s not in sections]:
        _fail(path, f"missing section(s): {', '.join('## ' + s for s in missing)}")
    if empty := [s for s in REQUIRED_SECTIONS if not sections[s]]:
        _fail(path, f"empty section(s): {', '.join('## ' + s for s in empty)}")
    return Soul(path=path, text=text, body=body.strip(), summary=meta["summary"].strip(),
                sections=sections, rules=rules, sha256=hashlib.sha256(raw).hexdigest())


def _fields(path, where: str, item, required: dict, optional: dict) -> dict:
    """Check a mapping's keys and value types: {key: type}; returns the mapping."""
    if not isinstance(item, dict):
        _fail(path, f"{where} must be a mapping")
    if unknown := sorted(set(item) - set(required) - set(optional)):
        _fail(path, f"{where}: unknown field(s): {', '.join(map(str, unknown))}")
    for key, kind in {**required, **optional}.items():
        if key not in item or (key in optional and item[key] is None):  # `args:` left empty
            if key in required:
                _fail(path, f"{where}: missing field '{key}'")
            continue
        ok = type(item[key]) is bool if kind is bool else isinstance(item[key], kind)
        if not ok or (kind is str and not item[key].strip()):
            expected = {str: "a non-empty string", bool: "true or false", list: "a list"}[kind]
            _fail(path, f"{where}: field '{key}' must be {expected}")
    return item


def load_tools(path=None) -> ToolSpec:
    """Load and validate a tool spec (default `soul/tools.yaml`); InputError on any problem."""
    path = Path(path) if path is not None else DEFAULT_TOOLS
    raw, text = read_file(path)
    doc = _yaml(path, text)
    if not isinstance(doc, dict) or set(doc) != {"tools"}:
        _fail(path, "must be a mapping with exactly one key, 'tools'")
    if not isinstance(doc["tools"], list) or not doc["tools"]:
        _fail(path, "'tools' must be a non-empty list")
    tools, seen = [], set()
    for i, item in enumerate(doc["tools"], 1):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"tool {i}" + (f" ({name})" if isinstance(name, str) else "")
        _fields(path, where, item, {"name": str, "description": str, "needs_approval": bool},
                {"args": list, "builtin": str, "command": str, "entry": str})
        if not _IDENT.match(name):
            _fail(path, f"{where}: name must be an identifier (letters, digits, _)")
        if name in seen:
            _fail(path, f"duplicate tool name '{name}'")
        seen.add(name)
        args, arg_names = [], set()
        for j, a in enumerate(item.get("args") or [], 1):
            aname = a.get("name") if isinstance(a, dict) else None
            awhere = f"{where} arg {j}" + (f" ({aname})" if isinstance(aname, str) else "")
            _fields(path, awhere, a, {"name": str, "type": str, "required": bool,
                                      "description": str}, {"as": str})
            if not _IDENT.match(aname):
                _fail(path, f"{awhere}: name must be an identifier (letters, digits, _)")
            if a["type"] not in ARG_TYPES:
                _fail(path, f"{awhere}: unknown type '{a['type']}' (expected string, int or bool)")
            if aname in arg_names:
                _fail(path, f"{where}: duplicate arg name '{aname}'")
            arg_names.add(aname)
            args.append(Arg(aname, a["type"], a["required"], a["description"].strip(), a.get("as")))
        how = _how_it_runs(path, where, item, args)
        tools.append(Tool(name, item["description"].strip(), item["needs_approval"], tuple(args), **how))
    return ToolSpec(path=path, tools=tuple(tools), sha256=hashlib.sha256(raw).hexdigest())


def _how_it_runs(path, where: str, item: dict, args: list[Arg]) -> dict:
    """Check the one of builtin/command/entry a tool names against its args: Tool's fields.
    A builtin's args get `feeds` filled in (as: or the arg's own name)."""
    given = [k for k in ("builtin", "command", "entry") if item.get(k) is not None]
    if len(given) != 1:
        _fail(path, f"{where}: say how the tool runs with exactly one of builtin, command or entry"
                    + (f" (it has {', '.join(given)})" if given else ""))
    kind, value = given[0], item[given[0]].strip()
    if kind != "builtin" and (mapped := [a.name for a in args if a.feeds]):
        _fail(path, f"{where}: 'as' is for builtin tools only (arg {mapped[0]})")
    if kind == "builtin":
        canon = BUILTINS.get(value)
        if canon is None:
            _fail(path, f"{where}: unknown builtin '{value}' (expected {', '.join(BUILTINS)})")
        fed = {}
        for k, a in enumerate(args):
            target = a.feeds or a.name
            if target not in canon:
                _fail(path, f"{where}: arg '{a.name}' maps to nothing: builtin {value} has no argument "
                            f"'{target}' (its arguments: {', '.join(canon)}); say which with `as:`")
            if target in fed:
                _fail(path, f"{where}: args '{fed[target]}' and '{a.name}' both map to {value}'s '{target}'")
            if a.type != canon[target][0]:
                _fail(path, f"{where}: arg '{a.name}' is {a.type} but {value}'s '{target}' is {canon[target][0]}")
            if canon[target][1] and not a.required:
                _fail(path, f"{where}: arg '{a.name}' must be required: {value}'s '{target}' is")
            fed[target] = a.name
            args[k] = replace(a, feeds=target)
        if missing := [c for c, (_, req) in canon.items() if req and c not in fed]:
            _fail(path, f"{where}: builtin {value} needs an argument for '{missing[0]}' "
                        f"(add one, or `as: {missing[0]}` on an existing one)")
    elif kind == "command":
        try:
            fields = [(f, spec or conv) for _, f, spec, conv in string.Formatter().parse(value) if f is not None]
        except ValueError as e:
            _fail(path, f"{where}: bad command template ({e}); write a literal brace as {{{{ or }}}}")
        if bad := [f for f, extra in fields if extra]:
            _fail(path, f"{where}: command placeholder {{{bad[0]}}} may not have a format or conversion")
        names = {a.name for a in args}
        if unknown := [f for f, _ in fields if f not in names]:
            _fail(path, f"{where}: command placeholder {{{unknown[0]}}} is not one of its args "
                        f"({', '.join(sorted(names)) or 'it has none'})")
    else:
        module, _, func = value.partition(":")
        if not module or not func:
            _fail(path, f"{where}: entry must be 'package.module:function', got '{value}'")
        try:
            fn = getattr(importlib.import_module(module), func)
        except Exception as e:  # ImportError, AttributeError, or the module's own error on import
            _fail(path, f"{where}: entry '{value}' does not import ({type(e).__name__}: {e})")
        if not callable(fn):
            _fail(path, f"{where}: entry '{value}' is not callable")
    return {kind: value}


def entry_function(tool: Tool):
    """The Python function an `entry:` tool names (load_tools checked that it imports)."""
    module, _, func = tool.entry.partition(":")
    return getattr(importlib.import_module(module), func)


# --------------------------------------------------------------------------- tool calls

def _coerce(value, kind: str):
    """(typed value, None) or (None, problem). Text comes from the parser, typed JSON from records."""
    if kind == "string":
        return (value, None) if isinstance(value, str) else (None, f"must be text, got {value!r}")
    if kind == "bool":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true", None
        return None, f"must be true or false, got {value!r}"
    if type(value) is int:
        return value, None
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value), None
    return None, f"must be a whole number, got {value!r}"


def type_args(call, spec: ToolSpec) -> tuple[dict | None, str | None]:
    """Type a parsed tool call's args by the spec: (args, None), or (None, "error: ...").

    Never raises: the error string goes back to the model as the tool result. It covers the
    parser's own error, unknown tools, unknown and missing args, and values of the wrong type.
    """
    if not isinstance(call, dict):
        return None, "error: malformed tool call"
    if call.get("error"):
        return None, f"error: {call['error']}"
    name = call.get("name")
    tool = spec.get(name) if isinstance(name, str) else None
    if tool is None:
        return None, f"error: unknown tool {name!r} (the tools are {', '.join(t.name for t in spec.tools)})"
    given = call.get("args") or {}
    if not isinstance(given, dict):
        return None, f"error: {name} arguments must be key/value pairs"
    typed, problems = {}, []
    for key, value in given.items():
        arg = next((a for a in tool.args if a.name == key), None)
        if arg is None:
            known = ", ".join(a.name for a in tool.args) or "none"
            problems.append(f"{name} has no argument {key!r} (its arguments: {known})")
            continue
        typed[key], problem = _coerce(value, arg.type)
        if problem:
            problems.append(f"{name} argument {key!r} {problem}")
    problems += [f"{name} needs argument {a.name!r}" for a in tool.args
                 if a.required and a.name not in given]
    if problems:
        return None, "error: " + "; ".join(problems)
    return typed, None


# ------------------------------------------------------------------------ system prompt

def render_system_prompt(soul: Soul, tools: ToolSpec, template=None) -> str:
    """The system prompt the model sees: the SOUL summary and the tool list (compact on
    purpose: a tiny model reads it in every conversation). `template` overrides the path
    of `nanocode/prompts/system.j2`."""
    path = Path(template) if template is not None else PROMPTS / "system.j2"
    _, source = read_file(path)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, autoescape=False)
    try:
        text = env.from_string(source).render(soul=soul, tools=tools)
    except jinja2.TemplateError as e:
        line = getattr(e, "lineno", None)
        _fail(path, f"template error{f' at line {line}' if line else ''}: {e.message}")
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
