"""The agentic eval: held-out HumanEval problems as small repos, solved through the agent loop.

Only the 41 held-out problems (factory.heldout.held_out(): the factory never trains on them).
Each gives two tasks, in a fresh temp workspace, in a module the problem's place in that list
names (`MODULES`: solution.py, main.py, the function's name, ...; the task says which, so a model
that always opens solution.py is right once in six):
    stub    the module is the problem's prompt (signature + docstring) with a `raise
            NotImplementedError` body: "implement it"
    bugfix  the module is the canonical solution with one injected bug, and test_<module>.py
            (the problem's tests) fails: "fix the bug"
The bug is one token swapped in the solution's body (`<` for `<=`, `+` for `-`, True for False,
a number off by one, ...): the candidates are taken in source order starting at a place fixed by
the task id, and the first that compiles and fails the tests (without hanging) is used, so the
same problem always gets the same bug.

The agent runs auto-approved (agent.session.Session, as `nanocode run --yes`), against any
OpenAI-compatible endpoint. Success = the hidden tests pass afterwards: the problem's tests run
in a subprocess with a timeout, in a fresh directory holding only the workspace's module, so
editing its test file gains nothing. The model's Bash calls and the hidden tests (which run
the model's code) run in agent/sandbox.py's bubblewrap sandbox, unless `unsafe_bash` says not to. Also counted, over every tool call: syntactically
valid calls (parsed, a known tool, its required arguments, no unknown ones: nanocode.spec.type_args),
calls on existing files (of the calls whose canonical `path` argument is given, the share naming a
file or directory inside the workspace as it was when the call was made), tool errors (results
starting `error:`), and recoveries (a tool error followed by a call that works). Over every task:
first call valid, and first call on an existing file (a task without calls has neither). And the
replies the server cut at max_tokens (`replies_cut` of `replies`): a model that never stops.
"""

import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
from dataclasses import dataclass
from pathlib import Path

from agent.backend import TEMPERATURE
from factory.heldout import held_out
from nanocode.common import InputError
from nanocode.spec import load_soul, load_tools, render_system_prompt, type_args

KINDS = ("stub", "bugfix")
# the module a task's code lives in, by the problem's index: names the factory's seeds use and two
# they never do ("impl", "answer"), so the eval measures copying the name the task gives
MODULES = ("solution", "main", "{fn}", "impl", "utils", "answer")
STUB_BODY = '    raise NotImplementedError("implement me")\n'
TEST_TIMEOUT = 10.0   # seconds for the hidden tests of one task
# sampling, sent with every request so that an eval repeats: a fixed seed (the server's default is a
# fresh one a reply), the agent's temperature, and the top-k measured in bench/RESULTS.md "Demo model"
TOP_K, SEED = 50, 0

# token swaps for the bug injection: each keeps the code valid Python
SWAPS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==", "+": "-", "-": "+",
         "+=": "-=", "-=": "+=", "*": "+", "//": "%", "True": "False", "False": "True",
         "and": "or", "or": "and", "min": "max", "max": "min"}


@dataclass
class AgentTask:
    id: str                  # "HumanEval/4:bugfix"
    kind: str                # stub | bugfix
    problem: str             # HumanEval task id
    entry_point: str
    instruction: str         # what the user types
    files: dict[str, str]    # the workspace
    test: str                # the problem's test code (defines check)
    module: str = "solution"  # the code is in <module>.py

    @property
    def code_file(self) -> str:
        return f"{self.module}.py"


def module_for(p: dict, index: int) -> str:
    """The module of the `index`-th problem: MODULES in turn (the function's own name unless it is a
    standard library module's, which the hidden tests' imports would then shadow)."""
    name = MODULES[index % len(MODULES)].format(fn=p["entry_point"])
    return "solution" if name in sys.stdlib_module_names else name


def _test_script(problem: dict, module: str) -> str:
    return (f"from {module} import *\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
            "print('all tests passed')\n")


def stub_task(p: dict, module: str = "solution") -> AgentTask:
    prompt = p["prompt"] if p["prompt"].endswith("\n") else p["prompt"] + "\n"
    return AgentTask(f"{p['task_id']}:stub", "stub", p["task_id"], p["entry_point"],
                     f"implement `{p['entry_point']}` in {module}.py: its docstring says what it must do. "
                     "replace the `raise NotImplementedError` with a working body.",
                     {f"{module}.py": prompt + STUB_BODY}, p["test"], module)


def mutants(p: dict) -> list[str]:
    """Every one-token swap in the canonical body, in source order from a start fixed by the id."""
    prompt = p["prompt"] if p["prompt"].endswith("\n") else p["prompt"] + "\n"
    source = prompt + p["canonical_solution"]
    first_body_line = prompt.count("\n") + 1
    lines = source.splitlines(keepends=True)
    out = []
    for t in tokenize.generate_tokens(io.StringIO(source).readline):
        if t.start[0] < first_body_line or t.start[0] != t.end[0]:
            continue
        new = SWAPS.get(t.string) if t.type in (tokenize.OP, tokenize.NAME) else None
        if t.type == tokenize.NUMBER and t.string.isdigit():
            new = str(int(t.string) + 1)
        if new is None:
            continue
        row, (c0, c1) = t.start[0] - 1, (t.start[1], t.end[1])
        mutated = lines[:row] + [lines[row][:c0] + new + lines[row][c1:]] + lines[row + 1:]
        text = "".join(mutated)
        try:
            compile(text, "solution.py", "exec")
        except SyntaxError:
            continue
        out.append(text)
    start = int(hashlib.sha256(p["task_id"].encode()).hexdigest()[:8], 16) % max(1, len(out))
    return out[start:] + out[:start]


# runs in a subprocess: the first mutant (by index) that fails the tests without hanging
_PICK = r"""
import json, signal, sys
job = json.load(sys.stdin)
class Hang(Exception): pass
def alarm(*_): raise Hang()
signal.signal(signal.SIGALRM, alarm)
for i, src in enumerate(job["sources"]):
    ns = {}
    signal.alarm(2)
    try:
        exec(compile(src, "solution.py", "exec"), ns)
        exec(job["test"], ns)
        ns["check"](ns[job["entry"]])
        signal.alarm(0)
    except Hang:
        continue
    except BaseException:
        signal.alarm(0)
        print(i)
        break
"""


def bugfix_task(p: dict, module: str = "solution") -> AgentTask | None:
    """None when no swap breaks the tests (then the problem has only its stub task)."""
    sources = mutants(p)
    if not sources:
        return None
    job = json.dumps({"sources": sources, "test": p["test"], "entry": p["entry_point"]})
    with tempfile.TemporaryDirectory(prefix="nanocode-mutants-") as cwd:
        try:
            r = subprocess.run([sys.executable, "-c", _PICK], input=job, capture_output=True, text=True,
                               timeout=60, cwd=cwd)
        except subprocess.TimeoutExpired:
            return None
    if not r.stdout.strip():
        return None
    buggy = sources[int(r.stdout.split()[0])]
    return AgentTask(f"{p['task_id']}:bugfix", "bugfix", p["task_id"], p["entry_point"],
                     f"`python test_{module}.py` fails: there is a bug in `{p['entry_point']}` in {module}.py. "
                     "find it and fix it.",
                     {f"{module}.py": buggy, f"test_{module}.py": _test_script(p, module)}, p["test"], module)


def build_tasks(kinds=KINDS, limit: int | None = None, problems: list[dict] | None = None) -> list[AgentTask]:
    """Tasks in a fixed order (problem by problem, stub then bugfix), the first `limit` of them."""
    if unknown := [k for k in kinds if k not in KINDS]:
        raise InputError(f"unknown task kind {unknown[0]!r}: choose from {', '.join(KINDS)}")
    tasks = []
    for n, p in enumerate(problems if problems is not None else held_out()):
        for kind in KINDS:
            if kind not in kinds or (limit is not None and len(tasks) >= limit):
                continue
            module = module_for(p, n)
            task = stub_task(p, module) if kind == "stub" else bugfix_task(p, module)
            if task is not None:
                tasks.append(task)
    return tasks


# ----------------------------------------------------------------------------- running


def hidden_tests(task: AgentTask, workspace: Path, timeout: float = TEST_TIMEOUT,
                 sandbox: bool = True) -> tuple[bool, str]:
    """(passed, last line of the output) of the problem's tests against the workspace's module:
    the model's code, so in the sandbox (`sandbox`) as its Bash calls are."""
    from agent.sandbox import Sandbox

    code = workspace / task.code_file
    if not code.is_file():
        return False, f"{task.code_file} is gone"
    with tempfile.TemporaryDirectory(prefix="nanocode-hidden-") as d:
        shutil.copy(code, Path(d) / task.code_file)
        (Path(d) / "hidden_test.py").write_text(
            _test_script({"test": task.test, "entry_point": task.entry_point}, task.module), encoding="utf-8")
        argv, env = [sys.executable, "hidden_test.py"], None
        if sandbox:
            box = Sandbox()
            argv, env = box.argv(os.path.realpath(d)) + [shlex.join(argv)], box.env(os.environ.get("PATH", ""), {})
        try:
            r = subprocess.run(argv, cwd=d, capture_output=True, text=True, env=env,
                               timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout:g}s"
    lines = (r.stdout + r.stderr).strip().splitlines()
    return r.returncode == 0, lines[-1][:200] if lines else ""


def _exists_in(workspace: Path, path: str) -> bool:
    """Whether `path` (relative to the workspace, or absolute inside it) names a file or directory there."""
    try:
        target = (workspace / path).resolve()
        return target.is_relative_to(workspace.resolve()) and target.exists()
    except (OSError, ValueError):  # a NUL byte, a name too long
        return False


def run_task(task: AgentTask, backend, spec, system_prompt: str, max_steps: int = 20, unsafe_bash: bool = False) -> dict:
    from agent.chat import auto_approve
    from agent.session import Session
    from agent.tools import Tools

    workspace = Path(tempfile.mkdtemp(prefix="nanocode-agentic-"))
    try:
        for name, text in task.files.items():
            (workspace / name).write_text(text, encoding="utf-8")
        stats, errors = {"calls": 0, "valid": 0, "path_calls": 0, "on_existing": 0, "first_call_valid": False,
                         "first_call_on_existing": False, "tool_errors": 0, "recoveries": 0, "failing": False}, []

        def on_event(kind, payload):
            if kind == "call":  # before the call runs: the workspace as the model saw it
                valid, path = type_args(payload, spec)[1] is None, spec.canonical(payload)[1].get("path")
                exists = isinstance(path, str) and _exists_in(workspace, path)
                if stats["calls"] == 0:
                    stats["first_call_valid"], stats["first_call_on_existing"] = valid, exists
                stats["calls"] += 1
                stats["valid"] += valid
                stats["path_calls"] += path is not None
                stats["on_existing"] += exists
            elif kind == "result":  # a recovery: a result that is not an error right after one that is
                failed = payload[1].startswith("error")
                stats["tool_errors"] += failed
                stats["recoveries"] += stats["failing"] and not failed
                stats["failing"] = failed
            elif kind in ("error", "context_full"):
                errors.append(str(payload))

        session = Session(backend, Tools(workspace, spec, sandbox=not unsafe_bash), system_prompt, auto_approve(True), on_event,
                          source="evals agentic", max_steps=max_steps)
        t0 = time.perf_counter()
        status = session.send(task.instruction)
        passed, detail = hidden_tests(task, workspace, sandbox=not unsafe_bash)
        stats.pop("failing")
        return {"id": task.id, "kind": task.kind, "problem": task.problem, "passed": passed, "status": status,
                "test_output": detail, **stats, "server_errors": errors,
                "seconds": time.perf_counter() - t0,
                "messages": [m for m in session.messages if m["role"] != "system"]}
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


class CountingBackend:
    """A backend that counts its replies and those the server cut at max_tokens (finish_reason
    "length"): a model that never stops says so in one line instead of as a pile of broken calls."""

    def __init__(self, backend):
        self.backend, self.replies, self.cut = backend, 0, 0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def stream(self, messages, spec):
        for kind, value in self.backend.stream(messages, spec):
            if kind == "finish":
                self.replies += 1
                self.cut += value == "length"
            yield kind, value


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    calls = sum(r["calls"] for r in rows)
    errors = sum(r["tool_errors"] for r in rows)
    path_calls = sum(r["path_calls"] for r in rows)
    out = {"tasks": n, "passed": sum(r["passed"] for r in rows),
           "pass_rate": sum(r["passed"] for r in rows) / n if n else None,
           "calls": calls, "calls_per_task": calls / n if n else None,
           "valid_call_rate": sum(r["valid"] for r in rows) / calls if calls else None,
           "tasks_with_calls": sum(r["calls"] > 0 for r in rows),
           "first_call_valid_rate": sum(r["first_call_valid"] for r in rows) / n if n else None,
           "first_call_on_existing_rate": sum(r["first_call_on_existing"] for r in rows) / n if n else None,
           "existing_path_rate": (sum(r["on_existing"] for r in rows) / path_calls) if path_calls else None,
           "tool_errors": errors, "recoveries": sum(r["recoveries"] for r in rows),
           "recovery_rate": sum(r["recoveries"] for r in rows) / errors if errors else None,
           "statuses": {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})},
           "replies": sum(r.get("replies", 0) for r in rows), "replies_cut": sum(r.get("replies_cut", 0) for r in rows)}
    for kind in KINDS:
        if sub := [r for r in rows if r["kind"] == kind]:
            out[f"pass_rate_{kind}"] = sum(r["passed"] for r in sub) / len(sub)
    return out


def evaluate(base_url: str, model: str | None = None, *, api_key: str | None = None, limit: int | None = None,
             kinds=KINDS, soul=None, tools=None, max_steps: int = 20, max_tokens: int | None = 1024,
             unsafe_bash: bool = False, prompt: Path | None = None, temperature: float | None = TEMPERATURE,
             top_k: int | None = TOP_K, seed: int | None = SEED, log=lambda *_: None) -> dict:
    """`prompt`: the system prompt's template, the one the model trained with (None: system.j2).
    `temperature`, `top_k`, `seed`: sent with every request (None: the server's own)."""
    from agent.backend import OpenAIBackend

    soul_, spec = load_soul(soul), load_tools(tools)
    system_prompt = render_system_prompt(soul_, spec, prompt)
    backend = CountingBackend(OpenAIBackend(base_url, model=model, api_key=api_key, max_tokens=max_tokens,
                                            temperature=temperature, top_k=top_k, seed=seed))
    backend.check()
    t0 = time.perf_counter()
    tasks = build_tasks(kinds, limit)
    build_s = time.perf_counter() - t0
    if not tasks:
        raise InputError("no tasks to run (--limit 0?)")
    rows, t0 = [], time.perf_counter()
    for task in tasks:
        before = backend.replies, backend.cut
        r = run_task(task, backend, spec, system_prompt, max_steps, unsafe_bash)
        rows.append({**r, "replies": backend.replies - before[0], "replies_cut": backend.cut - before[1]})
        log(f"{task.id}: {'pass' if r['passed'] else 'fail'} ({r['status']}, {r['calls']} calls)")
    seconds = time.perf_counter() - t0
    return {"kind": "agentic", "model": backend.model, "base_url": backend.base_url, "limit": limit,
            "prompt": Path(prompt).stem if prompt else "system",
            "kinds": list(kinds), "max_steps": max_steps, "max_tokens": max_tokens,
            "sampling": {"temperature": temperature, "top_k": top_k, "seed": seed}, "summary": summarize(rows),
            "seconds": seconds, "build_seconds": build_s, "tasks_per_s": len(rows) / seconds,
            "tasks": rows}
