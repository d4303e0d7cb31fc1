"""Scenario specs: every shipped spec validates and expands offline into a valid record whose
tool results are what agent/tools.py really gives; bad specs fail with the file and the field;
`factory scenarios generate` against a loopback OpenAI-compatible server keeps valid specs under
$NANOCODE_HOME (never the cwd), drops invalid ones, and the default build's source for generated
specs runs them; a build with a scenarios source rejects a bad spec with its reason."""

import asyncio
import os
import re
import subprocess
import tempfile
from collections import Counter

import pytest
import yaml
from rich.console import Console

from factory.build import build
from factory.config import DEFAULT_CONFIG
from factory.critics import CRITICS
from factory.loop import Context, Skip, critique
from factory.rollout import STEADY_ROOT, workspace_tools
from factory.scenario_spec import EVENTS, load_spec, parse_spec, spec_files
from factory.scenarios import ScenarioConverter, ScenarioSource
from factory.store import Store
from nanocode.common import InputError, nanocode_home
from nanocode.record import refused, validate
from nanocode.spec import load_soul, load_tools
from tests.conftest import BIN, REPO
from tests.scripted_server import ScriptedServer

SOUL, TOOLS = load_soul(), load_tools()
SPECS = spec_files(REPO / "scenarios")


@pytest.fixture(scope="module")
def records():
    """Every shipped spec through the scenarios source and converter, as a build runs them."""
    seeds = ScenarioSource(dir=str(REPO / "scenarios")).seeds()
    conv = ScenarioConverter()
    return {s["source_id"]: (s, conv.convert(s, SOUL, TOOLS)) for s in seeds}


def test_shipped_specs_validate_and_spread_over_languages_domains_and_events():
    specs = [load_spec(p) for p in SPECS]
    assert len(specs) >= 50 and len({s.id for s in specs}) == len(specs)
    languages, domains = Counter(s.language for s in specs), Counter(s.domain for s in specs)
    assert {"python", "javascript", "typescript", "go", "rust", "shell", "sql"} <= set(languages)
    assert len(domains) >= 10 and languages["python"] >= 20
    events = Counter(name for s in specs for name, _ in s.events)
    assert set(events) == set(EVENTS)  # every event kind is used by some spec
    assert sum(1 for s in specs if s.test) >= 25


def _normal(text: str, roots: list[str]) -> str:
    """A Bash result with what legitimately differs between two real runs masked: the temp
    workspace's path (tracebacks print it; a recorded result has it steady) and timings
    (`Ran 2 tests in 0.001s`)."""
    for root in [*roots, STEADY_ROOT]:
        text = text.replace(root, "<root>")
    return re.sub(r"\b\d+\.\d+s\b", "<t>s", text)


def test_every_spec_expands_to_a_valid_record_whose_tool_results_are_real(records):
    assert len(records) == len(SPECS)
    critics = [CRITICS[n]() for n in ("grammar", "read_format", "soul_rules")]
    ctx = Context(SOUL, TOOLS, None, None, {})
    for sid, (seed, record) in records.items():
        messages = record["messages"]
        validate(messages)
        assert messages[0]["role"] == "system" and messages[1] == {"role": "user", "content": seed["instruction"]}
        assert record["workspace"] == seed["scenario"].files
        # the deterministic critics pass first time: the offline rows need no rule revision
        problems = [p for v in asyncio.run(critique(messages, critics, ctx)) for p in v.problems]
        assert not problems, (sid, problems)
        final = messages[-1]["content"]
        assert final == final.strip() and "?" not in final.split(".")[-1]
        # replay by hand: every call again in a fresh copy of the starting files
        with tempfile.TemporaryDirectory(prefix="nanocode-replay-") as root:
            tools = workspace_tools(root, record["workspace"], TOOLS)
            calls = [c for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
            results = [m for m in messages if m["role"] == "tool"]
            assert len(calls) == len(results) >= 3
            for call, result in zip(calls, results):
                assert result["name"] == call["name"]
                behaviour, args = TOOLS.canonical(call)
                if result["content"].startswith("the user refused this call"):
                    assert behaviour in ("shell", "edit") and result["content"] == refused(
                        next(a["reason"] for n, a in seed["scenario"].events
                             if n.startswith("refuse") and a.get("command", a.get("path")) in
                             (args.get("command"), args.get("path"))))
                    continue  # never run: the user said no
                again = tools.run(call)
                if behaviour == "shell":
                    assert _normal(again, [tools.root.as_posix()]) == _normal(result["content"], []), (sid, call)
                else:
                    assert again == result["content"], (sid, call)


def test_events_happen_for_real(records):
    """Spot checks that the listed events are in the rollouts, with their real results."""
    for sid, (seed, record) in records.items():
        tool_texts = [m["content"] for m in record["messages"] if m["role"] == "tool"]
        for name, args in seed["scenario"].events:
            if name == "grep_no_match":
                assert "no matches" in tool_texts
            elif name == "read_missing":
                assert any(t.startswith("error: no such file") for t in tool_texts), sid
            elif name in ("refuse_bash", "refuse_edit"):
                assert refused(args["reason"]) in tool_texts
            elif name == "edit_mismatch":
                assert any(t.startswith("error: old_string not found") for t in tool_texts), sid
        if any(n == "tests_fail_then_pass" for n, _ in seed["scenario"].events):
            runs = [t.split("\n")[0] for t in tool_texts if t.startswith("exit code")]
            assert runs[0] != "exit code: 0" and runs[-1] == "exit code: 0", sid


GOOD = """
task: make add() in calc.py add
language: python
domain: algorithms
files:
  calc.py: |
    def add(a, b):
        return a - b
  test_calc.py: |
    import unittest
    from calc import add


    class T(unittest.TestCase):
        def test_add(self):
            self.assertEqual(add(2, 2), 4)
search: def add
test: python -m unittest -q
events:
  - tests_fail_then_pass
  - grep_no_match: {pattern: subtract}
edits:
  - path: calc.py
    old: "return a - b"
    new: "return a + b"
summary: fixed the sign in `add`; tests pass.
"""


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(colour="red"), "unknown field(s) colour"),
    (lambda d: d.pop("files"), "files is required"),
    (lambda d: d.update(language="cobol"), "language 'cobol' is not one of"),
    (lambda d: d["events"].append("explode"), "events[2]: unknown event 'explode'"),
    (lambda d: d["events"].append({"refuse_bash": {"command": "ls"}}), "events[2].refuse_bash: refuse_bash needs reason"),
    (lambda d: d["events"].append({"read_missing": {"path": "a", "mood": "x"}}), "has unknown field(s) mood"),
    (lambda d: d["events"].append({"read_missing": {"path": "calc.py"}}), "read_missing.path: 'calc.py' is a starting file"),
    (lambda d: d["edits"][0].update(old="return a * b"), "edits[0].old: occurs 0 times in 'calc.py'"),
    (lambda d: d["edits"][0].update(path="nope.py"), "edits[0].path: 'nope.py' is neither"),
    (lambda d: d["edits"][0].update(colour=1), "an edit has unknown field(s) colour"),
    (lambda d: d.update(files={"../x.py": ""}), "files: '../x.py' must be a relative path"),
    (lambda d: d.update(search="("), "search: invalid regular expression"),
    (lambda d: d.pop("test"), "tests_fail_then_pass needs the spec's `test` command"),
    (lambda d: d.update(read=["other.py"]), "read[0]: 'other.py' is not one of the starting files"),
])
def test_bad_specs_name_the_file_and_the_field(change, message):
    data = yaml.safe_load(GOOD)
    parse_spec(data, "x.yaml", "good")  # the base is valid
    change(data)
    with pytest.raises(InputError, match=re.escape(message)) as e:
        parse_spec(data, "x.yaml", "good")
    assert str(e.value).startswith("x.yaml")


def test_a_model_written_rollout_gets_the_real_tool_results():
    """With a model, the loop grounds what the writer returns: every tool result is run again."""
    from factory.loop import Stages, run_input
    from factory.writers import RuleReviser

    class MadeUp:  # a "model" that copies the draft but invents the tool results
        needs_model = True

        async def write(self, draft, previous, problems, ctx):
            return [{**m, "content": "made up"} if m["role"] == "tool" else m for m in draft["messages"]]

    seed = {"input_id": "t:good", "source": "t", "source_id": "good",
            "scenario": parse_spec(yaml.safe_load(GOOD), "x.yaml", "good")}
    draft = ScenarioConverter().convert(seed, SOUL, TOOLS)
    stages = Stages(ScenarioConverter(), MadeUp(), [CRITICS["grammar"]()], RuleReviser(), 1)
    out = asyncio.run(run_input(seed, stages, Context(SOUL, TOOLS, None, None, {})))
    assert out["sft"]["messages"] == draft["messages"]  # steady results: the same as the expansion's


def test_bad_files_and_events_that_do_not_happen(tmp_path):
    with pytest.raises(InputError, match="no such scenario file"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("task: [unclosed\n")
    with pytest.raises(InputError, match=r"broken.yaml: bad YAML at line 2"):
        load_spec(tmp_path / "broken.yaml")
    with pytest.raises(InputError, match="no spec files"):
        spec_files(tmp_path / "empty")
    # valid on paper, but the "no match" Grep does match: Skip with the reason
    spec = parse_spec(yaml.safe_load(GOOD.replace("pattern: subtract", "pattern: return")), "lie.yaml", "lie")
    with pytest.raises(Skip, match=r"lie.yaml: events\[1\] grep_no_match: wanted `no matches`, got: calc.py:2"):
        ScenarioConverter().convert({"scenario": spec}, SOUL, TOOLS)


def test_build_with_a_scenarios_source_rejects_bad_specs_with_the_reason(tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "good.yaml").write_text(GOOD)
    (tmp_path / "specs" / "bad.yaml").write_text(GOOD.replace("events:", "events:\n  - explode"))
    (tmp_path / "specs" / "ugly.yaml").write_text("task: [\n")
    config = tmp_path / "build.yaml"
    config.write_text(f"source: {{name: scenarios, dir: {tmp_path / 'specs'}}}\nconverter: code_edit\n"
                      "generator: converter\nreviser: rules\ncritics: [grammar, read_format, soul_rules]\n")
    summary = build(config=config, console=Console(file=open(os.devnull, "w")))
    assert summary["sft rows"] == 1 and summary["rejects by stage"] == {"scenario": 2}
    store = Store(read_only=True)
    try:
        reasons = dict(store.all("SELECT source_id, reason FROM rejects"))
    finally:
        store.close()
    assert "events[0]: unknown event 'explode'" in reasons["bad"] and "bad YAML at line 2" in reasons["ugly"]


def _spec_reply(text: str) -> dict:
    return {"text": "here you go:\n```yaml\n" + text + "```\n"}


def test_generate_keeps_valid_specs_under_the_home_and_the_default_build_runs_them(tmp_path):
    script = [_spec_reply(GOOD.replace("calc", "mathx")),                                  # kept
              _spec_reply(GOOD.replace("events:", "events:\n  - explode")),                # unknown event
              {"text": "no yaml here: [unclosed"},                                           # bad YAML
              _spec_reply(GOOD.replace("return a - b", "return a + b").replace(            # tests pass before
                  'old: "return a + b"', 'old: "return a + b\\n"'))]
    with ScriptedServer(script) as server:  # run from a folder of the user's: nothing lands in it
        run = subprocess.run([str(BIN / "factory"), "scenarios", "generate", "--n", "4", "--base-url",
                              server.base_url, "--model", "scripted"],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        prompts = [r["messages"][-1]["content"] for r in server.requests]
    assert run.returncode == 0, run.stderr
    assert "1 kept, 3 dropped" in run.stdout
    assert "unknown event 'explode'" in run.stdout and "bad YAML" in run.stdout
    assert "tests passed before the edits" in run.stdout
    out = nanocode_home() / "scenarios" / "generated"
    kept = sorted(out.glob("*.yaml"))
    assert len(kept) == 1 and sorted(os.listdir(tmp_path)) == ["home"] and f"kept: {kept[0]}" in run.stdout
    assert load_spec(kept[0]).files.keys() == {"mathx.py", "test_mathx.py"}
    # few-shot: the shipped examples and the format are in every request
    assert len(prompts) == 4 and all("slugify" in p and "tests_fail_then_pass" in p for p in prompts)

    # the default build's source for generated specs reads them there, through the same
    # checks as shipped ones: a spec placed there by hand whose events do not happen is a reject
    (out / "liar.yaml").write_text(GOOD.replace("pattern: subtract", "pattern: return"))
    default = yaml.safe_load(DEFAULT_CONFIG.read_text())
    entry = next(e for e in default["source"]["sources"] if str(e.get("dir")).startswith("$NANOCODE_HOME"))
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump({**default, "source": entry}))
    summary = build(config=config, console=Console(file=open(os.devnull, "w")))
    assert (summary["sft rows"], summary["rejects by stage"]) == (1, {"scenario": 1})
    store = Store(read_only=True)
    try:
        rows = store.rows("SELECT input_id, source, messages FROM sft", kind="sft")
        reasons = store.all("SELECT input_id, reason FROM rejects")
    finally:
        store.close()
    assert [(r["input_id"], r["source"]) for r in rows] == [(f"generated-scenarios:{load_spec(kept[0]).id}",
                                                             "generated-scenarios")]
    validate(rows[0]["messages"])
    assert any("mathx.py" in str(m.get("content")) for m in rows[0]["messages"] if m["role"] == "tool")
    assert reasons[0][0] == "generated-scenarios:liar" and "grep_no_match: wanted `no matches`" in reasons[0][1]
    # none generated (another home): no inputs from it, not an error
    assert ScenarioSource(dir=entry["dir"], optional=True).seeds() != []
    (out / "liar.yaml").unlink()
    kept[0].unlink()
    assert ScenarioSource(dir=entry["dir"], optional=True).seeds() == []


def test_generate_spreads_its_requests_over_every_base_url(tmp_path):
    names = iter(f"mod{i}" for i in range(99))
    respond = lambda body: {**_spec_reply(GOOD.replace("calc", next(names))), "latency": 0.5}  # noqa: E731
    with ScriptedServer(respond=respond) as a, ScriptedServer(respond=respond) as b:
        run = subprocess.run([str(BIN / "factory"), "scenarios", "generate", "--n", "2", "--concurrency", "2",
                              "--base-url", a.base_url, "--base-url", b.base_url, "--model", "scripted",
                              "--out", str(tmp_path / "gen")], capture_output=True, text=True, timeout=60)
        served = (len(a.requests), len(b.requests))
    assert run.returncode == 0, run.stderr
    assert "2 kept, 0 dropped" in run.stdout and served == (1, 1)  # both in flight: one each


def test_unsafe_bash_reaches_check_generate_expansion_and_ground(tmp_path, monkeypatch):
    import factory.rollout as rollout
    from factory.backends import BackendConfig
    from factory.scenarios import check_specs, generate

    asked, real = [], rollout.rollout_tools
    monkeypatch.setattr(rollout, "rollout_tools", lambda root, spec, limits=None, unsafe_bash=False:
                        asked.append(unsafe_bash) or real(root, spec, limits, unsafe_bash))
    (tmp_path / "good.yaml").write_text(GOOD)
    seed = {"scenario": load_spec(tmp_path / "good.yaml")}
    with ScriptedServer(respond=lambda body: _spec_reply(GOOD.replace("calc", "mathx"))) as server:
        backend = BackendConfig(name="openai", model="scripted", base_url=server.base_url)
        for unsafe in (False, True):
            asked.clear()
            assert check_specs([tmp_path / "good.yaml"], TOOLS, say=lambda line: None, unsafe_bash=unsafe) == 0
            conv = ScenarioConverter()
            conv.unsafe_bash = unsafe  # what the build sets from --unsafe-bash
            draft = conv.convert(seed, SOUL, TOOLS)
            conv.ground(draft["messages"], draft, TOOLS)
            kept = generate(1, backend, tmp_path / "gen", SOUL, TOOLS, say=lambda line: None, unsafe_bash=unsafe)
            assert len(kept["kept"]) == 1 and asked == [unsafe] * 4
    run = subprocess.run([str(BIN / "factory"), "scenarios", "check", "--unsafe-bash", str(tmp_path / "good.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr
