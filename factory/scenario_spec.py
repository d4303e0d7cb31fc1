"""The scenario spec format (scenarios/*.yaml; the reference is scenarios/README.md).

A spec names a task, its language and domain, the starting files, the change that solves it
(`edits`) and the events the rollout must hit: a read of a missing file, a search with no
match, the user refusing a shell command or an edit, a stale edit, a failing then passing test
run... Its keys are the tool behaviours' canonical arguments (`path`, `old`, `new`, `pattern`,
`command`: nanocode.spec.BUILTINS), so a spec reads the same whatever the tool spec calls them.
`load_spec` checks it on paper (a wrong `old` too) and every problem is one InputError naming
the file and the field; factory/scenarios.py runs it for real.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from factory.config import read_yaml
from nanocode.common import InputError
from nanocode.paths import shipped

LANGUAGES = {"python", "javascript", "typescript", "go", "rust", "shell", "sql", "c", "cpp", "java",
             "ruby", "kotlin", "yaml", "json", "toml", "markdown", "html", "css", "dockerfile", "make"}
REQUIRED = {"task": str, "language": str, "domain": str, "files": dict, "edits": list}
OPTIONAL = {"id": str, "search": str, "read": list, "test": str, "events": list, "summary": str}
EDIT_KEYS = {"path", "new"}, {"old", "why"}
# event -> (required args, optional args); `why` is the thinking line before the call
EVENTS = {
    "read_missing": ({"path"}, {"why"}),                      # read a file that is not there
    "grep_no_match": ({"pattern"}, {"path", "glob", "why"}),  # a search that finds nothing
    "bash": ({"command"}, {"why"}),                           # a look-around command
    "command_fails": ({"command"}, {"why"}),                  # a command that exits non-zero
    "tests_fail_then_pass": (set(), {"why"}),                 # `test` fails before the edits
    "refuse_bash": ({"command", "reason"}, {"why"}),          # the user says no to a command
    "refuse_edit": ({"path", "new", "reason"}, {"old", "why"}),
    "edit_mismatch": ({"path", "old"}, {"why"}),              # an edit whose `old` is stale
}


@dataclass
class Scenario:
    id: str
    path: str
    task: str
    language: str
    domain: str
    files: dict
    edits: list
    search: str | None = None
    read: list = field(default_factory=list)
    test: str | None = None
    events: list = field(default_factory=list)   # [(name, args)] in spec order
    summary: str | None = None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("id", "task", "language", "domain", "files", "search", "read",
                                          "edits", "test", "summary") if getattr(self, k) not in (None, [])}
        d["events"] = [name if not args else {name: args} for name, args in self.events]
        return d


def _bad_path(p) -> bool:
    return not isinstance(p, str) or not p or p.startswith(("/", "~")) or ".." in Path(p).parts


def _args(where: str, name: str, args, known: tuple) -> dict:
    required, optional = known
    args = {} if args is None else args
    if not isinstance(args, dict):
        raise InputError(f"{where}: {name} takes a mapping of arguments, got {type(args).__name__}")
    if missing := sorted(required - set(args)):
        raise InputError(f"{where}: {name} needs {', '.join(missing)}")
    if unknown := sorted(set(args) - required - optional):
        raise InputError(f"{where}: {name} has unknown field(s) {', '.join(map(str, unknown))} "
                         f"(its fields: {', '.join(sorted(required | optional))})")
    for k, v in args.items():
        if not isinstance(v, str) or (k != "new" and not v.strip()):
            raise InputError(f"{where}.{k}: must be non-empty text")
    return dict(args)


def parse_spec(data, path: str, default_id: str = "") -> Scenario:
    """A parsed YAML document -> Scenario, or InputError naming `path` and the field."""
    if not isinstance(data, dict):
        raise InputError(f"{path}: a scenario spec must be a YAML mapping")
    if unknown := sorted(set(map(str, data)) - set(REQUIRED) - set(OPTIONAL)):
        raise InputError(f"{path}: unknown field(s) {', '.join(unknown)} "
                         f"(fields: {', '.join(sorted(REQUIRED))}; optional {', '.join(sorted(OPTIONAL))})")
    for key, kind in {**REQUIRED, **OPTIONAL}.items():
        if key in data and not isinstance(data[key], kind):
            raise InputError(f"{path}: {key} must be {'text' if kind is str else 'a ' + kind.__name__}, "
                             f"got {type(data[key]).__name__}")
        if key in REQUIRED and not data.get(key):
            raise InputError(f"{path}: {key} is required")
    for key in ("task", "domain", "language"):
        if not data[key].strip():
            raise InputError(f"{path}: {key} is empty")
    if data["language"] not in LANGUAGES:
        raise InputError(f"{path}: language {data['language']!r} is not one of {', '.join(sorted(LANGUAGES))}")
    sid = data.get("id") or default_id
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", sid or ""):
        raise InputError(f"{path}: id {sid!r} must be lowercase letters, digits, '.', '_' or '-'")
    files = data["files"]
    for p, text in files.items():
        if _bad_path(p):
            raise InputError(f"{path}: files: {p!r} must be a relative path inside the workspace")
        if not isinstance(text, str):
            raise InputError(f"{path}: files.{p}: contents must be text, got {type(text).__name__}")
    state = dict(files)  # the edits run on paper first: a wrong `old` is caught here
    edits = []
    for i, e in enumerate(data["edits"]):
        where = f"{path}: edits[{i}]"
        e = _args(where, "an edit", e, EDIT_KEYS)
        if _bad_path(e["path"]):
            raise InputError(f"{where}.path: {e['path']!r} must be a relative path")
        _apply(state, e, where)
        edits.append(e)
    read = data.get("read", [])
    for i, p in enumerate(read):
        if p not in files:
            raise InputError(f"{path}: read[{i}]: {p!r} is not one of the starting files")
    if data.get("search") is not None:
        _regex(data["search"], f"{path}: search")
    events = []
    for i, ev in enumerate(data.get("events", [])):
        where = f"{path}: events[{i}]"
        if isinstance(ev, str):
            name, args = ev, None
        elif isinstance(ev, dict) and len(ev) == 1:
            (name, args), = ev.items()
        else:
            raise InputError(f"{where}: an event is a name or a one-key mapping {{name: {{args}}}}")
        if name not in EVENTS:
            raise InputError(f"{where}: unknown event {name!r} (events: {', '.join(sorted(EVENTS))})")
        args = _args(f"{where}.{name}", name, args, EVENTS[name])
        if name == "read_missing" and args["path"] in files:
            raise InputError(f"{where}.read_missing.path: {args['path']!r} is a starting file")
        if name == "grep_no_match":
            _regex(args["pattern"], f"{where}.grep_no_match.pattern")
        if name == "tests_fail_then_pass" and not data.get("test"):
            raise InputError(f"{where}: tests_fail_then_pass needs the spec's `test` command")
        events.append((name, args))
    return Scenario(id=sid, path=path, task=_unwrap(data["task"]), language=data["language"],
                    domain=data["domain"].strip(), files=dict(files), edits=edits, search=data.get("search"),
                    read=list(read), test=data.get("test"), events=events,
                    summary=_unwrap(data.get("summary") or "") or None)


def _unwrap(text: str) -> str:
    """Prose hard-wrapped in YAML as written by people: single newlines become spaces
    (blank lines and fenced code stay), so a reply reads like one the agent would write."""
    if "```" in text:
        return text.strip()
    return re.sub(r"(?<=\S)[ \t]*\n(?=[ \t]*\S)", " ", text.strip())


def _regex(pattern: str, where: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise InputError(f"{where}: invalid regular expression {pattern!r}: {e}") from None


def _apply(state: dict, e: dict, where: str) -> None:
    p, old = e["path"], e.get("old")
    if old is None:
        if p in state:
            raise InputError(f"{where}: creates {p!r}, which already exists (give old to change it)")
        state[p] = e["new"]
        return
    if (text := state.get(p)) is None:
        raise InputError(f"{where}.path: {p!r} is neither a starting file nor created by an earlier edit")
    n = text.count(old)
    if n != 1:
        raise InputError(f"{where}.old: occurs {n} times in {p!r} (must be exactly once)")
    state[p] = text.replace(old, e["new"], 1)


def load_spec(path) -> Scenario:
    path = Path(path)
    return parse_spec(read_yaml(path, "scenario"), str(path), default_id=path.stem)


def spec_files(where: str | Path, glob: str = "*.yaml") -> list[Path]:
    """The spec files under a directory (recursive) or a glob; InputError if there are none."""
    base = Path(where)
    if not base.is_absolute() and not base.exists():
        base = shipped(base)  # repo-relative defaults work from any directory, and in a wheel
    files = sorted(base.rglob(glob)) if base.is_dir() else sorted(base.parent.glob(base.name))
    if not files:
        raise InputError(f"scenarios {where}: no spec files ({glob}) found")
    return files
