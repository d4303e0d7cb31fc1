"""The factory's stages one by one: converter (real tool results), critics, rule fixes, the
loop's pair policy, and the judge's rating parser (the writers' replies: tests/test_writers.py)."""

import asyncio
import json

import pytest

from agent.tools import Tools
from factory.convert import CodeEdit
from factory.critics import CRITICS, Grammar, ReadFormat, SoulRules, TokenLength, parse_rating
from factory.loop import Context, Skip, Stages, run_input
from factory.rules import fix_text
from factory.writers import DraftWriter, Prompts, RuleReviser
from nanocode.soul_checks import check_message, declare_rules
from nanocode.spec import load_soul, load_tools

SOUL, SPEC = load_soul(), load_tools()
RULES = SOUL.rules
CTX = Context(SOUL, SPEC, Prompts(SOUL, SPEC), None, {})
SEED = {"input_id": "t:1", "source": "t", "source_id": "1",
        "instruction": "add a celsius converter to convert.py",
        "answer": "Certainly! Here's the function:\n\n```python\ndef c_to_f(c):\n    return c * 9 / 5 + 32\n```\n\n"
                  "It uses the usual formula. Let me know if you need kelvin too!",
        "workspace": {"convert.py": "def km_to_miles(km):\n    return km * 0.621371\n"}}


def judge(critic, messages):
    return asyncio.run(critic.judge(messages, CTX))


def test_converter_makes_a_replayable_rollout_with_real_tool_results(tmp_path):
    draft = CodeEdit(system_prompt=False).convert(SEED, SOUL, SPEC)
    msgs = draft["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert msgs[1]["tool_calls"][0] == {"name": "Read", "args": {"file_path": "convert.py"}}
    assert msgs[3]["content"] == "Certainly! Here's the function:"  # the seed's own prose, for the critics
    # replaying the calls on the workspace gives exactly the recorded results
    for path, text in draft["workspace"].items():
        (tmp_path / path).write_text(text)
    tools = Tools(tmp_path, SPEC)
    calls = [c for m in msgs if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    assert [tools.run(c) for c in calls] == [m["content"] for m in msgs if m["role"] == "tool"]
    assert "def c_to_f" in (tmp_path / "convert.py").read_text()
    assert "km_to_miles" in (tmp_path / "convert.py").read_text()  # appended, not replaced
    with pytest.raises(Skip, match="no fenced code block"):
        CodeEdit().convert({**SEED, "answer": "just prose"}, SOUL, SPEC)


def test_deterministic_critics_catch_what_they_promise():
    msgs = CodeEdit(system_prompt=False).convert(SEED, SOUL, SPEC)["messages"]
    assert judge(Grammar(), msgs).ok and judge(ReadFormat(), msgs).ok
    assert not judge(Grammar(), msgs[:-1]).ok          # ends on a tool result
    assert not judge(Grammar(), msgs[:2] + msgs[3:]).ok  # a call left unanswered
    bad_call = json.loads(json.dumps(msgs))
    bad_call[1]["tool_calls"][0]["args"] = {"path": "convert.py"}
    assert "needs argument 'file_path'" in " ".join(judge(Grammar(), bad_call).problems)
    shifted = json.loads(json.dumps(msgs))
    shifted[2]["content"] = shifted[2]["content"].replace("    1→", "   1→")
    assert not judge(ReadFormat(), shifted).ok
    soul = judge(SoulRules(), msgs)
    assert not soul.ok and any("banned_openers" in p for p in soul.problems)
    assert not judge(TokenLength(max_tokens=50), msgs).ok and judge(TokenLength(), msgs).ok
    banned = CRITICS["banned_phrases"](phrases=["usual formula"])
    assert judge(banned, msgs).problems == ["message 5: contains 'usual formula'"]


def test_rule_fixes_keep_code_paths_and_names():
    text = ("Certainly! I moved `MyClass` to src/Main.java and Python's JSON parser runs fine:\n\n"
            "```python\nX = Foo()\n```\n\nHope this helps! The Tests pass.")
    fixed = fix_text(text, RULES)
    assert fixed == ("i moved `MyClass` to src/Main.java and Python's JSON parser runs fine:\n\n"
                     "```python\nX = Foo()\n```\n\nthe tests pass.")
    assert all(c.ok for c in check_message({"role": "assistant", "content": fixed}, RULES))
    three = declare_rules({"lowercase_prose": True, "max_reply_words": 3, "max_think_words": 2})
    assert fix_text("One. Two three four five.", three) == "one."
    assert fix_text("One two three. Four.", three) == "one two three."
    assert fix_text("One two three. Four.", three, "thinking") == "one two"  # the thinking limit


def test_offline_loop_makes_a_pair_whose_sides_the_soul_tells_apart():
    stages = Stages(CodeEdit(), DraftWriter(), [Grammar(), SoulRules()], RuleReviser(), 3)
    out = asyncio.run(run_input(SEED, stages, CTX))
    row, pair = out["sft"], out["pair"]
    assert row["attempt"] == 2 and row["revisions"] == 1 and "banned_openers" in row["critique"]
    assert pair["rejected_attempt"] == 1 and pair["chosen_attempt"] == 2
    final = [m for m in pair["chosen"] if m["role"] == "assistant"]
    first = [m for m in pair["rejected"] if m["role"] == "assistant"]
    assert all(c.ok for m in final for c in check_message(m, RULES))
    assert not all(c.ok for m in first for c in check_message(m, RULES))
    assert pair["prompt"][-1]["role"] == "user" and pair["chosen"][0]["role"] == "assistant"
    # tool calls and results are untouched by the revision
    assert [m for m in pair["chosen"] if m["role"] == "tool"] == [m for m in pair["rejected"] if m["role"] == "tool"]


def test_parse_rating_takes_the_json_in_a_reply_and_rejects_out_of_range():
    assert parse_rating('sure: {"rating": 7, "critique": "too long"}') == (7, "too long")
    assert parse_rating('```json\n{"rating": 9, "critique": "fine"}\n``` (a {brace} after)') == (9, "fine")
    for bad in ('{"rating": 11}', '{"rating": "9"}', "nine"):
        with pytest.raises(ValueError):
            parse_rating(bad)
