"""Swapping the tool spec for real, end to end (issue 16): the converters and the scenario
expansion write their calls in whatever spec they are given.

  - a rename of the default spec (every tool and argument name changed, the same builtins)
    builds the same rows: the same inputs kept and rejected, the same calls by behaviour;
  - the extended spec (soul/examples/tools-extended.yaml: other names, a write, a list and a
    command-template test tool) builds a version whose records, system prompt, token template
    and replay agree with it, SFT trains on it, and the terminal agent runs its new tools;
  - a spec with no search tool turns exactly the rows that need one into counted rejects with
    the reason, and `factory check` says which converters cannot make data with it.

One small build config (the coding seeds and five scenarios that hold every event kind) keeps
the four builds fast.
"""

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml
from rich.console import Console

from factory.build import build
from factory.replay import ToolReplay
from factory.store import Store
from nanocode.record import validate
from nanocode.spec import load_soul, load_tools, render_system_prompt, type_args
from tests.conftest import BIN, REPO
from tests.scripted_server import ScriptedServer
from tests.tiny_run import train_tiny_run
from trainer import template

EXTENDED = REPO / "soul" / "examples" / "tools-extended.yaml"
# between them every event kind, a created file, a search, tests failing then passing
SCENARIOS = ("py-slugify-accents", "py-add-tests-wordfreq", "py-config-env-int", "py-env-file-quotes",
             "py-retry-reraise")


def renamed_spec(path) -> None:
    """The default spec with every tool and argument renamed; each arg still feeds its builtin's."""
    doc = yaml.safe_load((REPO / "soul" / "tools.yaml").read_text())
    for tool in doc["tools"]:
        tool["name"] = f"do_{tool['name'].lower()}"
        for arg in tool["args"]:
            arg["as"], arg["name"] = arg.get("as", arg["name"]), f"{arg['name']}_x"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def no_search_spec(path) -> None:
    doc = yaml.safe_load((REPO / "soul" / "tools.yaml").read_text())
    doc["tools"] = [t for t in doc["tools"] if t["builtin"] != "search"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def rows(v: int, kind: str = "sft") -> dict:
    """input_id -> row of version v."""
    store = Store(read_only=True)
    try:
        cols = "input_id, stage, reason" if kind == "rejects" else "input_id, messages, workspace"
        out = {}
        for r in store.all(f"SELECT {cols} FROM {store.relation(kind, v)}"):
            out[r[0]] = (r[1], r[2]) if kind == "rejects" else (json.loads(r[1]), json.loads(r[2]))
        return out
    finally:
        store.close()


def calls_of(messages):
    return [c for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Four offline builds from one small config, in one store: spec label -> (version, summary, spec)."""
    root = tmp_path_factory.mktemp("swap")
    (root / "scenarios").mkdir()
    for sid in SCENARIOS:
        shutil.copy(REPO / "scenarios" / f"{sid}.yaml", root / "scenarios")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({
        "source": {"name": "mix", "sources": [
            {"name": "local", "path": str(REPO / "factory" / "seeds" / "coding.jsonl"),
             "columns": {"id": "id", "instruction": "instruction", "answer": "answer", "workspace": "workspace"}},
            {"name": "scenarios", "dir": str(root / "scenarios")}]},
        "converter": {"name": "code_edit"}, "generator": {"name": "converter"}, "reviser": {"name": "rules"},
        "critics": [{"name": "grammar"}, {"name": "read_format"}, {"name": "soul_rules"}],
        "replay": {"mode": "rewrite", "bash_timeout": 10}}))
    renamed_spec(root / "renamed.yaml")
    no_search_spec(root / "no-search.yaml")
    specs = {"default": None, "renamed": root / "renamed.yaml", "extended": EXTENDED,
             "no search": root / "no-search.yaml"}
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOCODE_HOME", str(root / "home"))
        for label, tools in specs.items():
            summary = build(tools=tools, config=config, console=Console(file=open(os.devnull, "w")))
            out[label] = (summary["version"], summary, load_tools(tools))
    out["home"] = root / "home"
    return out


@pytest.fixture
def home(builds, monkeypatch):
    monkeypatch.setenv("NANOCODE_HOME", str(builds["home"]))


def test_a_renamed_spec_builds_the_same_rows_as_the_default(builds, home):
    (v0, s0, default), (v1, s1, renamed) = builds["default"], builds["renamed"]
    assert s0["sft rows"] > 30 and s0["pairs"] > 0
    for key in ("sft rows", "pairs", "rejects", "rejects by stage", "replayed rows"):
        assert s1[key] == s0[key], key
    a, b = rows(v0), rows(v1)
    assert set(a) == set(b) and any(i.startswith("scenarios:") for i in a)
    names = {t.name for t in renamed.tools}
    for input_id, (messages, workspace) in a.items():
        theirs = calls_of(b[input_id][0])
        assert {c["name"] for c in theirs} <= names, input_id
        # the same calls, behaviour by behaviour, argument by argument
        assert [renamed.canonical(c) for c in theirs] == [default.canonical(c) for c in calls_of(messages)], input_id
        assert b[input_id][1] == workspace


def test_the_extended_spec_agrees_in_records_prompt_template_and_replay(builds, home, tiny_tok):
    s0, (v, s, ext) = builds["default"][1], builds["extended"]
    assert s["sft rows"] == s0["sft rows"] and s["replayed rows"] == {"ok": s["sft rows"], "rewritten": 0, "rejected": 0}
    system = render_system_prompt(load_soul(), ext)
    assert all(t.name in system for t in ext.tools)
    used = set()
    for input_id, (messages, workspace) in rows(v).items():
        validate(messages)
        assert messages[0] == {"role": "system", "content": system}, input_id
        for call in calls_of(messages):
            typed, error = type_args(call, ext)  # every call is one the extended spec types
            assert error is None and typed == call["args"], (input_id, error)
            used.add(ext.canonical(call)[0] or call["name"])
        # the token template renders the calls and the engine's parser reads them back the same
        ids, _ = template.render(messages, tiny_tok)
        for i, m in enumerate(messages):
            if m["role"] == "assistant" and m.get("tool_calls"):
                prompt = template.render_prompt(messages[:i], tiny_tok)
                parsed = template.parse_assistant(ids[len(prompt):], tiny_tok)
                assert [c["name"] for c in parsed["tool_calls"]] == [c["name"] for c in m["tool_calls"]]
                assert [type_args(c, ext)[0] for c in parsed["tool_calls"]] == [c["args"] for c in m["tool_calls"]]
    assert {"read", "search", "edit", "write", "shell"} <= used  # new files go through write_file
    # replayed again here, strictly: every recorded result is what the runtime gives now
    replay = ToolReplay(mode="reject")
    for input_id, (messages, workspace) in rows(v).items():
        if input_id.startswith("scenarios:"):
            assert replay.replay(messages, workspace, ext).status == "ok", input_id


def test_sft_trains_on_the_extended_version(builds, home, tmp_path):
    from trainer import sft

    v, summary, _ = builds["extended"]
    base = train_tiny_run(tmp_path, seq_len=64, steps=1, corpus_chars=100_000, tokenizer_chars=50_000)
    logged = []
    # a 512-token vocabulary spends ~1900 tokens on the system prompt: rows are cut at 2048
    sft.run(base, tmp_path / "sft", [f"factory:{v}"], overflow="truncate", num_steps=2, seq_len=2048,
            device_batch_size=1, eval_every=2, save_every=2, sample_every=0,
            log=lambda *a: logged.append(" ".join(map(str, a))))
    events = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)
    split = next(re.search(r"(\d+) train / (\d+) val", line) for line in logged if "sft data" in line)
    assert int(split[1]) + int(split[2]) == summary["sft rows"]  # every row of the version, none dropped


def test_the_agent_runs_the_extended_tools(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    test = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    script = [{"text": "adding a test", "tool_calls": [{"name": "write_file", "arguments": {"path": "test_calc.py", "text": test}}]},
              {"text": "", "tool_calls": [{"name": "list_files", "arguments": {"glob": "*.py"}}]},
              {"text": "", "tool_calls": [{"name": "run_tests", "arguments": {"target": "test_calc.py"}}]},
              {"text": "added `test_calc.py`; it passes."}]
    out = tmp_path / "record.json"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # `python` with pytest
    with ScriptedServer(script) as server:
        r = subprocess.run([str(BIN / "nanocode"), "run", "add a test for add", "--tools", str(EXTENDED),
                            "--workspace", str(ws), "--yes", "--json", str(out), "--base-url", server.base_url],
                           capture_output=True, text=True, timeout=120, env=env)
        sent = server.requests[0]
    assert r.returncode == 0, r.stderr
    ext = load_tools(EXTENDED)
    # what the model was told: the extended spec's system prompt and its tool schema
    assert sent["messages"][0]["content"] == render_system_prompt(load_soul(), ext)
    assert [t["function"]["name"] for t in sent["tools"]] == [t.name for t in ext.tools]
    assert (ws / "test_calc.py").read_text() == test
    messages = json.loads(out.read_text())["messages"]
    validate(messages)
    results = {m["name"]: m["content"] for m in messages if m["role"] == "tool"}
    assert set(results) == {"write_file", "list_files", "run_tests"}
    assert results["list_files"].split("\n") == ["calc.py", "test_calc.py"]
    assert results["run_tests"].startswith("exit code: 0") and "1 passed" in results["run_tests"]
    for call in calls_of(messages):
        assert type_args(call, ext)[1] is None


def test_a_spec_without_search_rejects_exactly_the_rows_that_need_it(builds, home):
    (v0, s0, default), (v, s, _) = builds["default"], builds["no search"]
    needs_search = {i for i, (messages, _) in rows(v0).items()
                    if any(default.canonical(c)[0] == "search" for c in calls_of(messages))}
    rejected = {i for i, (stage, reason) in rows(v, "rejects").items() if stage == "tools"}
    assert needs_search and rejected == needs_search
    assert all(reason == "spec has no search tool" for stage, reason in rows(v, "rejects").values() if stage == "tools")
    assert s["rejects by stage"]["tools"] == len(needs_search)
    assert s["sft rows"] == s0["sft rows"] - len(needs_search) > 0  # the rest is made as before
    check = subprocess.run([str(BIN / "factory"), "check", "--tools", str(builds["no search"][2].path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    lines = " ".join(check.stdout.split())
    assert "code_edit: spec has no search tool" in lines and "scenario grep_no_match: spec has no search tool" in lines
    assert "chat" in lines.split("can make")[1].split("not")[0]
