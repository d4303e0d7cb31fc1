"""The model writes only what it must (factory/writers.py): prose slots for a converted draft,
steps without tool results for a scenario; the tolerant parser; the reply's JSON schema sent as
response_format through the real request layer to a loopback server; and a build whose
scenarios go through the model, grounded in real tool results."""

import asyncio
import json
import os
import shutil

import pytest
from rich.console import Console

from factory.backends import BackendConfig
from factory.build import build
from factory.convert import CodeEdit
from factory.loop import Context
from factory.requester import Requester
from factory.store import Store
from factory.writers import (LLMReviser, LLMWriter, ParseError, Prompts, first_json, parse_slots, parse_steps,
                             reply_schema, slot_ids, steps_of)
from nanocode.record import REFUSED
from nanocode.spec import load_soul, load_tools
from tests.conftest import REPO
from tests.fake_model import respond
from tests.scripted_server import ScriptedServer

SOUL, SPEC = load_soul(), load_tools()
SEED = {"input_id": "t:1", "source": "t", "source_id": "1",
        "instruction": "add a celsius converter to convert.py",
        "answer": "Certainly! Here's the function:\n\n```python\ndef c_to_f(c):\n    return c * 9 / 5 + 32\n```\n\n"
                  "It uses the usual formula. Let me know if you need kelvin too!",
        "workspace": {"convert.py": "def km_to_miles(km):\n    return km * 0.621371\n"}}
DRAFT = CodeEdit().convert(SEED, SOUL, SPEC)


def test_a_slots_reply_fills_the_prose_and_the_calls_and_results_stay_the_drafts():
    slots = slot_ids(DRAFT["messages"])
    assert slots == ["m2", "m4", "m6"] and [DRAFT["messages"][int(s[1:])]["role"] for s in slots] == ["assistant"] * 3
    prose = {"m2": "reading `convert.py` first", "m4": "appending it:\n```python\nx = 1\n```", "M6": "done."}
    # fenced, a sentence before it, a trailing comma, a key in capitals, a ``` fence inside a string
    reply = "here it is:\n```json\n" + json.dumps(prose)[:-1] + ",}\n```\nanything else?"
    msgs = parse_slots(reply, DRAFT)
    assert [m["content"] for m in msgs if m["role"] == "assistant"] == list(prose.values())
    for new, old in zip(msgs, DRAFT["messages"]):
        assert {**new, "content": None} == {**old, "content": None}  # roles, calls, results: the draft's
    assert [m for m in msgs if m["role"] != "assistant"] == [m for m in DRAFT["messages"] if m["role"] != "assistant"]
    assert DRAFT["messages"][2]["content"] != prose["m2"]  # the draft itself is untouched
    assert parse_slots(json.dumps({**prose, "m4": {"role": "assistant", "content": "x"}}), DRAFT)[4]["content"] == "x"
    for bad, why in (('{"m2": "a", "m4": "b"}', r"no text for slot\(s\) m6"),
                     ('{"m2": "a", "m4": "b", "m6": 7}', "slot.* m6"),
                     ('[{"role": "assistant", "content": "hi"}]', r"no text for slot\(s\) m2, m4, m6"),
                     ('{"m2": "cut', "not valid JSON"), ("sure, I'll do that", "not valid JSON")):
        with pytest.raises(ParseError, match=why):
            parse_slots(bad, DRAFT)


def test_a_steps_reply_has_calls_and_prose_and_leaves_every_result_to_the_runtime():
    draft = {"messages": DRAFT["messages"][:2], "scenario": {"task": "x"}}
    reply = json.dumps({"steps": [
        {"say": "looking", "call": {"name": "Read", "args": {"file_path": "convert.py"}}},
        {"say": "building", "call": {"name": "Bash", "arguments": json.dumps({"command": "make"})}, "refused": "no"},
        {"say": "done."}]})
    msgs = parse_steps(reply, draft)
    assert msgs[:2] == draft["messages"]
    assert [(m["role"], m["content"]) for m in msgs[2:]] == [
        ("assistant", "looking"), ("tool", ""), ("assistant", "building"), ("tool", f"{REFUSED}: no"),
        ("assistant", "done.")]
    assert msgs[4]["tool_calls"] == [{"name": "Bash", "args": {"command": "make"}}]
    # a slip into the record shape, tool results and all: the results are dropped, never trusted
    slipped = json.dumps([{"role": "assistant", "content": "looking", "tool_calls": [
        {"name": "Read", "args": {"file_path": "convert.py"}}]}, {"role": "tool", "content": "made up"},
        {"role": "assistant", "content": "done."}])
    assert [m["content"] for m in parse_steps(slipped, draft)[2:]] == ["looking", "", "done."]
    assert steps_of(msgs)[1] == {"say": "building", "call": {"name": "Bash", "args": {"command": "make"}},
                                 "refused": "no"}
    for bad in ('{"steps": "none"}', '{"steps": [{"say": "x", "call": {"name": "Read", "args": "{oops"}}]}',
                '{"steps": []}'):
        with pytest.raises(ParseError):
            parse_steps(bad, draft)


def test_the_reply_schema_requires_every_slot_and_names_the_tools():
    schema = reply_schema("slots", ["m2", "m4"], SPEC)
    assert schema["required"] == ["m2", "m4"] and schema["additionalProperties"] is False
    steps = reply_schema("steps", [], SPEC)["properties"]["steps"]["items"]
    assert set(steps["properties"]["call"]["properties"]["name"]["enum"]) == {t.name for t in SPEC.tools}
    assert "result" not in json.dumps(steps)  # nothing in the shape can carry a tool result
    assert first_json('x [1] then {"a": 1}', (dict,)) == {"a": 1}


def test_generator_and_reviser_ask_for_prose_only_with_the_schema_and_the_problems(tmp_path):
    with ScriptedServer(respond=respond) as server:
        cfg = BackendConfig(name="openai", model="scripted", base_url=server.base_url)
        store = Store(tmp_path / "home")
        ctx = Context(SOUL, SPEC, Prompts(SOUL, SPEC), Requester(cfg, store, 1), {}, input_id="t:1", attempt=1)
        first = asyncio.run(LLMWriter().write(DRAFT, None, [], ctx))
        problems = ["message 2 (thinking before a tool call): lowercase_prose: 'Certainly'"]
        second = asyncio.run(LLMReviser().write(DRAFT, first, problems, Context(**{**ctx.__dict__, "attempt": 2})))
        store.close()
    asked, revised = server.requests
    assert asked["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "reply", "schema": reply_schema("slots", ["m2", "m4", "m6"], SPEC)}}
    prompt = asked["messages"][0]["content"]
    assert '{"m2": "...", "m4": "...", "m6": "..."}' in prompt and '"slot": "m4"' in prompt
    assert first == DRAFT["messages"]  # the scripted generator hands the draft's prose back
    again = revised["messages"][0]["content"]
    assert problems[0] in again and "slot mN" in again and "Certainly" in again  # its previous prose, to fix
    assert [m for m in second if m["role"] == "tool"] == [m for m in DRAFT["messages"] if m["role"] == "tool"]
    assert second[4]["content"] != DRAFT["messages"][4]["content"] and not second[4]["content"].startswith("C")


def test_scenarios_through_the_model_are_grounded_in_real_results(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    for name in ("dockerfile-non-root", "py-retry-reraise"):  # a refused command; a refused edit, tests
        shutil.copy(REPO / "scenarios" / f"{name}.yaml", specs)
    config = (REPO / "factory" / "configs" / "default.yaml").read_text()
    head, tail = config.split("converter:\n  name: code_edit", 1)
    config = tmp_path / "build.yaml"
    config.write_text(f"source: {{name: scenarios, dir: {specs}}}\nconverter:\n  name: code_edit{tail}")
    with ScriptedServer(respond=respond) as server:
        s = build(config=config, console=Console(file=open(os.devnull, "w")),
                  backend_overrides={"base_url": server.base_url, "model": "scripted", "concurrency": 2})
        writes = [r for r in server.requests if "Scenario:" in r["messages"][0]["content"]]
    assert s["sft rows"] == 2 and s["parse failure rate"] == 0 and s["structured output"] == "json_schema (auto)"
    assert writes and all(r["response_format"]["json_schema"]["schema"]["required"] == ["steps"] for r in writes)
    store = Store(read_only=True)
    try:
        rows = [json.loads(m) for (m,) in store.all(f"SELECT messages FROM {store.relation('sft', 1)}")]
    finally:
        store.close()
    for messages in rows:
        results = [m["content"] for m in messages if m["role"] == "tool"]
        assert results and all(results)  # every call answered by the runtime, none left empty
        assert any(r.startswith(REFUSED) for r in results)  # the scenario's refusal, kept as the user's answer
