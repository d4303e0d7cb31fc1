"""Scenario specs (factory/scenario_spec.py) -> long multi-step tool rollouts: the `scenarios`
source, the `scenario` converter, and `factory scenarios check / generate`.

`expand` is the offline rollout: explore (events, search, reads) -> reproduce (tests fail) ->
fix (refusals, edits) -> verify (tests pass) -> the spec's summary. Its calls are the tool
spec's (`spec.call("search", pattern=...)`; test commands through its shell tool), so any spec
naming those behaviours works; one lacking a behaviour a scenario needs raises MissingTool, a
reject with the reason. Every tool result is the real output of agent.tools.Tools in a temp
copy of the files; a refused call is answered with nanocode.record.refused(reason), what the
terminal agent records. An event that does not happen for real (the search matched, the tests
passed before the fix) is a Skip: the scenario spec is wrong.

With a model, the generator writes the rollout from the spec (prompts/scenario.j2) and the
loop calls the converter's `ground`, which re-runs its calls so the results are real.

`factory scenarios generate` keeps the specs a model wrote under the home
($NANOCODE_HOME/scenarios/generated, `GENERATED`), never in the cwd: the default build reads
them from there through a second `scenarios` source (`optional`: none yet is no input), and
they meet the same checks as shipped ones: a kept spec is the text written, parsed as
`load_spec` reads a file and expanded in the sandbox, as the build and `factory scenarios check`
do; `check` with no paths checks the generated specs too.
"""

import asyncio
import hashlib
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agent.tools import Tools
from factory.backends import check_endpoint
from factory.loop import Skip
from factory.requester import Requester, run_closing
from factory.rollout import create_call, lacks, steady_run, system_message, workspace_tools
from factory.scenario_spec import EVENTS, LANGUAGES, Scenario, load_spec, parse_spec, spec_files
from factory.store import Store
from factory.writers import Prompts
from nanocode.common import InputError, nanocode_home, write_text_atomic
from nanocode.record import REFUSED, refused
from nanocode.paths import shipped
from nanocode.spec import MissingTool

# the order a rollout meets events in: exploring, reproducing, fixing
PHASE = {"read_missing": 0, "grep_no_match": 0, "bash": 0, "command_fails": 0,
         "tests_fail_then_pass": 1, "refuse_bash": 2, "refuse_edit": 2, "edit_mismatch": 2}
# the behaviours (and canonical args) each part of a rollout calls, for `factory check`;
# "create" is a new file (rollout.create_call)
NEEDS = {"rollout": {"read": ("path",), "edit": ("path", "old", "new"), "create": ()},
         "search": {"search": ("pattern",)}, "test": {"shell": ("command",)},
         "read_missing": {"read": ("path",)}, "grep_no_match": {"search": ("pattern", "path", "glob")},
         "bash": {"shell": ("command",)}, "command_fails": {"shell": ("command",)},
         "tests_fail_then_pass": {"shell": ("command",)}, "refuse_bash": {"shell": ("command",)},
         "refuse_edit": {"edit": ("path", "old", "new"), "create": ()},
         "edit_mismatch": {"edit": ("path", "old", "new"), "read": ("path",)}}


# ------------------------------------------------------------------------------ the source

GENERATED = "$NANOCODE_HOME/scenarios/generated"  # where `factory scenarios generate` keeps specs


def home_path(where) -> Path:
    """A path that may start with $NANOCODE_HOME: under the home, set or default (~/.cache/nanocode)."""
    head, _, rest = str(where).partition("/")
    return nanocode_home() / rest if head == "$NANOCODE_HOME" else Path(where)


@dataclass
class ScenarioSource:
    """The specs under `dir` (a path, or one under $NANOCODE_HOME) matching `glob` (recursive),
    each converted by `converter` (a stage entry; default the scenario converter) whatever the
    build's own converter is, so a `mix` can hold seed files and scenarios. A spec that fails
    validation is not fatal: it becomes a seed marked skip, a reject with the error as the
    reason. `optional`: no spec there is no input, not an error (generated specs, before any)."""
    dir: str = "scenarios"
    glob: str = "*.yaml"
    label: str = "scenarios"
    converter: dict | str = field(default_factory=lambda: {"name": "scenario"})
    optional: bool = False

    def __post_init__(self):
        self.name, self.columns = self.label, {"dir": self.dir, "glob": self.glob}

    def files(self) -> list[Path]:
        where = home_path(self.dir)
        if self.optional and not (where.is_dir() and any(where.rglob(self.glob))):
            return []
        return spec_files(where, self.glob)

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for p in self.files():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
        return h.hexdigest()

    def seeds(self) -> list[dict]:
        out, seen = [], set()
        for p in self.files():
            try:
                spec, error = load_spec(p), None
                sid = spec.id
            except InputError as e:
                spec, error, sid = None, str(e), p.stem
            if sid in seen:
                spec, error, sid = None, f"{p}: id {sid!r} is used by another spec", f"{sid}@{p}"
            seen.add(sid)
            seed = {"input_id": f"{self.name}:{sid}", "source": self.name, "source_id": sid,
                    "instruction": spec.task if spec else f"(invalid scenario {p})", "answer": "",
                    "workspace": dict(spec.files) if spec else {}, "scenario": spec, "converter": self.converter}
            if error:
                seed["skip"] = ["scenario", error]
            out.append(seed)
        return out

# ------------------------------------------------------------------------------ the rollout

def _pick(options: list[str], key: str) -> str:
    """A stable choice: the same spec always reads the same, different specs vary."""
    return options[int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(options)]


def _code(s: str) -> str:
    s = " ".join(s.split())
    return f"`{s if len(s) <= 60 else s[:57] + '...'}`"


SAY = {
    "search": ["let me find {x} first", "looking for {x}", "quick search for {x} before touching anything",
               "where does {x} live? searching"],
    "read": ["reading {x}", "let me see {x} in full", "opening {x}", "having a look at {x}"],
    "reread": ["my copy of {x} was stale, reading it again", "re-reading {x} to get the exact text"],
    "read_missing": ["checking {x} for context", "is there a {x}? it might explain the setup",
                     "peeking at {x} first"],
    "grep_no_match": ["does anything already use {x}?", "checking for an existing {x}", "searching for {x}"],
    "bash": ["running {x} to get a picture", "quick look with {x}"],
    "command_fails": ["trying {x}", "let me run {x}"],
    "test_before": ["running the tests first to see it fail", "reproducing it with {x}",
                    "let me watch the tests fail before changing anything"],
    "test_after": ["running the tests again", "checking with {x}", "now the tests, {x}"],
    "edit": ["fixing {x}", "now the change in {x}", "editing {x}", "on to {x}"],
    "create": ["creating {x}", "adding {x}", "writing {x}"],
    "refuse_bash": ["running {x} first", "i want to run {x} before the change"],
    "refuse_edit": ["changing {x}", "editing {x}"],
    "edit_mismatch": ["changing {x}", "editing {x}"],
}
ACK = {  # the next thinking line starts by reacting to what just happened
    "read_missing": ["no such file, fine.", "not there, ok."],
    "grep_no_match": ["nothing, so nothing else depends on it.", "no matches."],
    "command_fails": ["that failed (exit {code}), moving on.", "no luck there (exit {code})."],
    "test_before": ["reproduced, the tests fail.", "there's the failure."],
    "refuse_bash": ["ok, skipping that.", "fair enough, no {x} then."],
    "refuse_edit": ["got it, leaving that alone.", "ok, a different route then."],
}


class _Rollout:
    def __init__(self, spec: Scenario, tools: Tools):
        self.spec, self.tools, self.messages, self.ack = spec, tools, [], ""
        self.to = tools.spec  # the tool spec the calls are written in

    def say(self, kind: str, x: str, why: str | None, n: int) -> str:
        text = why or _pick(SAY[kind], f"{self.spec.id}/{kind}/{n}").format(x=x)
        text, self.ack = (f"{self.ack} {text}" if self.ack else text), ""
        return text

    def call(self, text: str, call: dict, result: str | None = None) -> str:
        if result is None:
            result = steady_run(self.tools, call)
        self.messages.append({"role": "assistant", "content": text, "tool_calls": [call]})
        self.messages.append({"role": "tool", "name": call["name"], "content": result})
        return result

    def change(self, e: dict) -> dict:
        """An edit (`old` given) or the creation of a file, as the tool spec writes it."""
        if "old" in e:
            return self.to.call("edit", path=e["path"], old=e["old"], new=e["new"])
        return create_call(self.to, e["path"], e["new"])

    def react(self, kind: str, n: int, **fmt) -> None:
        self.ack = _pick(ACK[kind], f"{self.spec.id}/ack/{kind}/{n}").format(**fmt)


def support(spec) -> dict[str, list[str]]:
    """What each part of a scenario rollout (NEEDS) lacks in tool spec `spec`; [] = it can be made."""
    return {part: lacks(spec, needs) for part, needs in NEEDS.items()}


def _fail(spec: Scenario, what: str) -> Skip:
    return Skip("scenario", f"{spec.path}: {what}")


def _code_of(result: str) -> str:
    m = re.match(r"exit code: (-?\d+)", result)
    return m[1] if m else "none"


def expand(spec: Scenario, tools: Tools) -> list[dict]:
    """The rollout's messages after the user turn, run for real in `tools`' workspace (which
    must hold the starting files), in `tools.spec`'s calls; MissingTool if it lacks one."""
    r, to = _Rollout(spec, tools), tools.spec
    ordered = sorted(enumerate(spec.events), key=lambda ie: (PHASE[ie[1][0]], ie[0]))
    edited = list(dict.fromkeys(e["path"] for e in spec.edits if e["path"] in spec.files))
    reads = spec.read or edited or sorted(spec.files)[:1]

    def event(i, name, args):
        where = f"events[{i}] {name}"
        why = args.get("why")
        if name == "read_missing":
            res = r.call(r.say(name, _code(args["path"]), why, i), to.call("read", path=args["path"]))
            if not res.startswith("error:"):
                raise _fail(spec, f"{where}: {args['path']!r} was read without an error")
            r.react(name, i)
        elif name == "grep_no_match":
            call = to.call("search", **{k: args[k] for k in ("pattern", "path", "glob") if k in args})
            res = r.call(r.say(name, _code(args["pattern"]), why, i), call)
            if res != "no matches":
                raise _fail(spec, f"{where}: wanted `no matches`, got: {res.splitlines()[0][:120]}")
            r.react(name, i)
        elif name in ("bash", "command_fails"):
            res = r.call(r.say(name, _code(args["command"]), why, i), to.call("shell", command=args["command"]))
            if name == "command_fails":
                if res.startswith("exit code: 0"):
                    raise _fail(spec, f"{where}: {args['command']!r} exited 0")
                r.react(name, i, code=_code_of(res))
        elif name == "tests_fail_then_pass":
            res = r.call(r.say("test_before", _code(spec.test), why, i), to.call("shell", command=spec.test))
            if res.startswith("exit code: 0"):
                raise _fail(spec, f"{where}: the tests passed before the edits ({spec.test!r})")
            r.react("test_before", i)
        elif name == "refuse_bash":
            r.call(r.say(name, _code(args["command"]), why, i), to.call("shell", command=args["command"]),
                   refused(args["reason"]))
            r.react(name, i, x=_code(args["command"]))
        elif name == "refuse_edit":
            r.call(r.say(name, _code(args["path"]), why, i), r.change(args), refused(args["reason"]))
            r.react(name, i)
        elif name == "edit_mismatch":
            res = r.call(r.say(name, _code(args["path"]), why, i),
                         to.call("edit", path=args["path"], old=args["old"], new=args["old"] + "\n"))
            if not res.startswith("error:"):
                raise _fail(spec, f"{where}: the stale old applied: it must not be in {args['path']!r}")
            r.call(r.say("reread", _code(args["path"]), None, i), to.call("read", path=args["path"]))

    for i, (name, args) in ordered:
        if PHASE[name] == 0:
            event(i, name, args)
    if spec.search:
        r.call(r.say("search", _code(spec.search), None, 0), to.call("search", pattern=spec.search))
    for n, p in enumerate(reads):
        res = r.call(r.say("read", _code(p), None, n), to.call("read", path=p))
        if res.startswith("error:"):
            raise _fail(spec, f"read[{n}]: {res}")
    for i, (name, args) in ordered:
        if PHASE[name] > 0:
            event(i, name, args)
    for n, e in enumerate(spec.edits):
        kind = "edit" if "old" in e else "create"
        res = r.call(r.say(kind, _code(e["path"]), e.get("why"), n), r.change(e))
        if res.startswith("error:"):
            raise _fail(spec, f"edits[{n}]: {res}")
    if spec.test:
        res = r.call(r.say("test_after", _code(spec.test), None, 0), to.call("shell", command=spec.test))
        if not res.startswith("exit code: 0"):
            raise _fail(spec, f"the tests fail after the edits ({spec.test!r}):\n{res[:600]}")
    changed = ", ".join(f"`{p}`" for p in sorted({e["path"] for e in spec.edits}))
    default = f"done: changed {changed}." + (f" {_code(spec.test)} passes now." if spec.test else "")
    r.messages.append({"role": "assistant", "content": spec.summary or default})
    return r.messages


def expand_in_temp(spec: Scenario, tools_spec, unsafe_bash=False) -> list[dict]:
    """`expand` in a temp folder holding the spec's starting files."""
    with tempfile.TemporaryDirectory(prefix="nanocode-scenario-") as root:
        return expand(spec, workspace_tools(root, spec.files, tools_spec, unsafe_bash=unsafe_bash))


@dataclass
class ScenarioConverter:
    system_prompt: bool = True  # start each record with the agent's system prompt (soul + tools)
    unsafe_bash = False         # set by the build (--unsafe-bash): shell commands unsandboxed
    needs = NEEDS["rollout"]    # each scenario's search, test and events need more (`support`)

    def convert(self, seed: dict, soul, spec) -> dict:
        scenario = seed.get("scenario")
        if not isinstance(scenario, Scenario):
            raise Skip("convert", "not a scenario input (the scenario converter reads the scenarios source)")
        messages = [{"role": "user", "content": scenario.task}, *expand_in_temp(scenario, spec, self.unsafe_bash)]
        if self.system_prompt:
            messages.insert(0, system_message(soul, spec))
        return {"messages": messages, "workspace": dict(scenario.files), "prompt": "scenario",
                "scenario": scenario.to_dict()}

    def ground(self, messages: list[dict], draft: dict, spec) -> list[dict]:
        """A model-written rollout with every tool result replaced by the real one, run in order
        in a fresh copy of the draft's files. A refusal the model wrote for a call that needs
        approval is kept (the user's answer is not the tool's to give). Messages whose calls and
        results do not line up are left as they are: the grammar critic reports them."""
        out = json.loads(json.dumps(messages))
        with tempfile.TemporaryDirectory(prefix="nanocode-ground-") as root:
            tools, pending = workspace_tools(root, draft["workspace"], spec, unsafe_bash=self.unsafe_bash), []
            for m in out:
                if m.get("role") == "assistant":
                    pending = [c for c in m.get("tool_calls") or [] if isinstance(c, dict)]
                elif m.get("role") == "tool" and pending:
                    call = pending.pop(0)
                    if (m.get("content") or "").startswith(REFUSED) and tools.needs_approval(str(call.get("name"))):
                        continue
                    m["content"], m["name"] = steady_run(tools, call), call.get("name")
        return out


# ------------------------------------------------------------------------------ new specs

EXAMPLES = ("py-slugify-accents", "js-query-plus-space", "sql-count-nulls")  # few-shot, varied on purpose
_YAML_BLOCK = re.compile(r"```(?:ya?ml)?\s*\n(.*?)```", re.S)


def spec_of_reply(text: str, where: str) -> Scenario:
    """A model's reply (one YAML block, or bare YAML) -> a validated Scenario, or InputError."""
    m = _YAML_BLOCK.search(text)
    try:
        data = yaml.safe_load(m[1] if m else text)
    except yaml.YAMLError as e:
        raise InputError(f"{where}: bad YAML: {getattr(e, 'problem', None) or e}") from None
    return parse_spec(data, where, default_id="generated")


class _Dumper(yaml.SafeDumper):
    """Multi-line text as `|` blocks: a written spec reads like the hand-written ones."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def generate(n: int, backend, out_dir, soul, tools, examples=EXAMPLES, temperature: float = 0.8,
             say=print, unsafe_bash=False) -> dict:
    """Ask the model for `n` new specs, few-shot from `examples` (spec ids under scenarios/);
    keep the ones that validate AND expand for real (their events happen, their tests pass)
    in `out_dir` (a path or one under $NANOCODE_HOME; the CLI's default, `GENERATED`, is where
    the default build reads them), report and drop
    the rest. What is checked is what the build reads: the YAML text to be written, parsed as
    `load_spec` parses a file, expanded in the sandbox; only then is it written. Calls go through the
    factory's request layer: cached, retried, in the ledger (as version 0). The specs' commands
    are model-written: they run in the sandbox unless `unsafe_bash`."""
    check_endpoint(backend)
    texts = [shipped(f"scenarios/{e}.yaml").read_text(encoding="utf-8") for e in examples]
    prompts = Prompts(soul, tools)
    out_dir = home_path(out_dir)
    kept, dropped = [], []
    store = Store()
    try:
        requester = Requester(backend, store, 0)

        async def one(i):
            content = prompts.render("scenario_spec", examples=texts, languages=sorted(LANGUAGES),
                                     events=EVENTS, n=i)
            return await requester.chat([{"role": "user", "content": content}],
                                        {"temperature": temperature, "max_tokens": 4096},
                                        attempt=i, purpose="scenario_spec", input_id="scenarios:generate")

        async def run():
            return await asyncio.gather(*(one(i) for i in range(1, n + 1)), return_exceptions=True)

        replies = run_closing(run(), requester)
    finally:
        store.close()
    for i, reply in enumerate(replies, 1):
        where = f"generated spec {i}"
        try:
            if isinstance(reply, Exception):
                raise InputError(f"{where}: the backend failed ({reply})")
            spec = spec_of_reply(reply, where)
            if spec.id == "generated":  # no id given: one from the task's first words
                words = re.findall(r"[a-z0-9]+", spec.task.lower())[:5]
                spec.id = f"gen-{spec.language}-{'-'.join(words) or 'task'}-{i}"
            text = yaml.dump(spec.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
            # the text the file will hold, parsed as load_spec parses it: what is checked is what a build reads
            expand_in_temp(parse_spec(yaml.safe_load(text), where, default_id=spec.id), tools, unsafe_bash)
            path = out_dir / f"{spec.id}.yaml"
            write_text_atomic(path, text)
        except (InputError, Skip, MissingTool) as e:  # a Skip's reason names the spec, `where`
            dropped.append(getattr(e, "reason", None) or (f"{where}: {e}" if isinstance(e, MissingTool) else str(e)))
            say(f"dropped: {dropped[-1]}")
        else:
            kept.append(str(path))
            say(f"kept: {path}")
    return {"kept": kept, "dropped": dropped}


def check_specs(paths, tools, say=print, unsafe_bash=False) -> int:
    """`factory scenarios check`: validate and expand each spec; prints a line per spec and
    returns how many failed."""
    files = [f for p in map(Path, paths) for f in (spec_files(p) if p.is_dir() else [p])]
    bad = 0
    for f in files:
        try:
            spec = load_spec(f)
            n = len(expand_in_temp(spec, tools, unsafe_bash))
            say(f"ok   {f} ({spec.language}, {spec.domain}, {n} messages)")
        except (InputError, Skip, MissingTool) as e:
            bad += 1
            say(f"bad  {f}: {e}" if isinstance(e, MissingTool) else f"bad  {getattr(e, 'reason', None) or e}")
    return bad
