"""The token template: exact masks, round trips, no injection, parsing that never raises."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanocode import record as R
from nanocode.common import InputError
from trainer import template as T

settings.register_profile("template", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("template")

SPELLINGS = st.sampled_from(T.SPECIAL_TOKENS)
# arbitrary unicode, with special-token spellings and code-ish whitespace mixed in
TEXT = st.lists(st.one_of(st.text(), SPELLINGS, st.sampled_from(["\n", "    ", "\t", "\r\n", " "])),
                max_size=6).map("".join)
SCALAR = st.one_of(TEXT, st.integers(), st.booleans(), st.none())


def calls(value=TEXT):
    call = st.fixed_dictionaries({"name": TEXT.filter(bool), "args": st.dictionaries(TEXT, value, max_size=4)})
    return st.lists(call, max_size=3)


@st.composite
def conversations(draw, value=TEXT):
    messages = []
    for _ in range(draw(st.integers(0, 4))):
        messages.append({"role": "user", "content": draw(TEXT)})
        for _ in range(draw(st.integers(0, 3))):
            turn_calls = draw(calls(value))
            message = {"role": "assistant", "content": draw(TEXT)}
            if turn_calls:
                message["tool_calls"] = turn_calls
            messages.append(message)
            messages += [{"role": "tool", "name": c["name"], "content": draw(TEXT)} for c in turn_calls]
    return messages


def as_parsed(messages):
    """The assistant turns as parsing gives them back: content always present, argument values as text."""
    out = []
    for m in messages:
        m = dict(m)
        if m["role"] == "assistant":
            m["content"] = m.get("content") or ""
            if m.get("tool_calls"):
                m["tool_calls"] = [{"name": c["name"], "args": {k: R.value_text(v) for k, v in c["args"].items()}}
                                   for c in m["tool_calls"]]
        out.append(m)
    return [m for m in out if m["role"] == "assistant"]


def parsed_turns(messages, tok):
    """Each assistant turn of the rendered conversation read back as the engine reads it: the
    turn's prompt is a prefix of the whole, and parse_assistant reads what follows it."""
    ids, _ = T.render(messages, tok)
    turns = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt = T.render_prompt(messages[:i], tok)
            assert ids[:len(prompt)] == prompt
            turns.append(T.parse_assistant(ids[len(prompt):], tok))
    return turns


@given(conversations())
def test_render_parse_round_trip(tiny_tok, messages):
    ids, mask = T.render(messages, tiny_tok)
    assert len(ids) == len(mask)
    assert parsed_turns(messages, tiny_tok) == as_parsed(messages)


@given(conversations(value=SCALAR))
def test_scalar_arguments_come_back_as_text(tiny_tok, messages):
    assert parsed_turns(messages, tiny_tok) == as_parsed(messages)


def test_very_long_multiline_text_round_trips(tiny_tok):
    code = "".join(f"    def f{i}(x):\n\treturn x  # ünïcode 🙂 <|user_end|>\n" for i in range(4000))
    messages = [{"role": "user", "content": code},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"name": "Edit", "args": {"file_path": "a.py", "old_string": code, "new_string": code + "\n"}}]},
                {"role": "tool", "name": "Edit", "content": code}]
    assert len(code) > 200_000
    assert parsed_turns(messages, tiny_tok) == as_parsed(messages)


@given(st.lists(st.one_of(st.text(), SPELLINGS), max_size=8).map("".join))
def test_spelled_special_tokens_stay_text(tiny_tok, text):
    special_ids = {tiny_tok.special_id(s) for s in T.SPECIAL_TOKENS}
    assert not special_ids & set(tiny_tok.encode(text))
    ids, _ = T.render([{"role": "user", "content": text}, {"role": "assistant", "content": text}], tiny_tok)
    # exactly the structural specials: bos, user start/end, assistant start/end
    assert sum(i in special_ids for i in ids) == 5


def test_exact_loss_mask(tiny_tok):
    sid, enc = tiny_tok.special_id, tiny_tok.encode
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "fix it"},
        {"role": "assistant", "content": "looking", "tool_calls": [{"name": "Read", "args": {"file_path": "a.py", "offset": 2}}]},
        {"role": "tool", "name": "Read", "content": "    3→x = 1"},
        {"role": "assistant", "content": "done!"},
    ]
    expected = [
        ([sid(T.BOS), sid(T.USER_START)] + enc("sys\n\nfix it") + [sid(T.USER_END), sid(T.ASSISTANT_START)], 0),
        (enc("looking") + [sid(T.CALL_START)] + enc("Read") + [sid(T.ARG)] + enc("file_path") + [sid(T.VAL)]
         + enc("a.py") + [sid(T.ARG)] + enc("offset") + [sid(T.VAL)] + enc("2") + [sid(T.CALL_END), sid(T.ASSISTANT_END)], 1),
        ([sid(T.RESULT_START)] + enc("    3→x = 1") + [sid(T.RESULT_END), sid(T.ASSISTANT_START)], 0),
        (enc("done!") + [sid(T.ASSISTANT_END)], 1),
    ]
    ids, mask = T.render({"id": "x", "messages": messages}, tiny_tok)
    assert ids == [i for chunk, _ in expected for i in chunk]
    assert mask == [m for chunk, m in expected for _ in chunk]


def test_render_prompt_primes_an_assistant_turn(tiny_tok):
    messages = [{"role": "user", "content": "hi"}]
    prompt = T.render_prompt(messages, tiny_tok)
    assert prompt[-1] == tiny_tok.special_id(T.ASSISTANT_START)
    generated = tiny_tok.encode("hey") + [tiny_tok.special_id(T.ASSISTANT_END)]
    reply = {"role": "assistant", "content": "hey"}
    assert T.parse_assistant(generated, tiny_tok) == reply
    assert T.render(messages + [reply], tiny_tok)[0] == prompt + generated


@given(st.data())
def test_parsing_any_id_stream_never_raises(tiny_tok, data):
    specials = st.sampled_from([tiny_tok.special_id(s) for s in T.SPECIAL_TOKENS])
    ids = data.draw(st.lists(st.one_of(st.integers(0, tiny_tok.vocab_size - 1), specials), max_size=120))
    m = T.parse_assistant(ids, tiny_tok)
    assert m["role"] == "assistant" and isinstance(m["content"], str)
    for c in m.get("tool_calls", []):
        assert isinstance(c["name"], str) and isinstance(c["args"], dict)


def _ids(tok, *parts):
    return [i for p in parts for i in (tok.encode(p[1:]) if p.startswith("~") else [tok.special_id(p)])]


@pytest.mark.parametrize("parts, error", [
    ((T.CALL_START, "~Read", T.ARG, "~file_path", T.ASSISTANT_END), "has no <|tool_val|>"),
    ((T.CALL_START, "~Read", T.ARG, "~a", T.VAL, "~1", T.ASSISTANT_END), "not closed"),
    ((T.CALL_START, T.CALL_END, T.ASSISTANT_END), "no name"),
    ((T.CALL_START, "~Grep", T.ARG, "~p", T.VAL, "~x", T.ARG, "~p", T.VAL, "~y", T.CALL_END), "given twice"),
    ((T.VAL, "~x", T.ASSISTANT_END), "outside a tool call"),
])
def test_malformed_calls_come_back_as_errors(tiny_tok, parts, error):
    message = T.parse_assistant(_ids(tiny_tok, "~thinking", *parts), tiny_tok)
    assert message["content"].startswith("thinking")
    assert error in message["tool_calls"][-1]["error"]


def test_well_formed_call_has_no_error(tiny_tok):
    ids = _ids(tiny_tok, "~ok", T.CALL_START, "~Bash", T.ARG, "~command", T.VAL, "~ls -la\n", T.CALL_END, T.ASSISTANT_END)
    assert T.parse_assistant(ids, tiny_tok) == {
        "role": "assistant", "content": "ok", "tool_calls": [{"name": "Bash", "args": {"command": "ls -la\n"}}]}


@pytest.mark.parametrize("messages, error", [
    ([{"role": "robot", "content": "x"}], "unknown role"),
    ([{"role": "user", "content": "x"}, {"role": "tool", "name": "Read", "content": "y"}], "without a pending"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"name": "Read", "args": {}}]},
      {"role": "user", "content": "x"}], "unanswered"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"name": "Read", "args": {}}]},
      {"role": "tool", "name": "Grep", "content": "y"}], "expected 'Read'"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "only come first"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"name": "Read", "args": {"a": [1]}}]}], "JSON scalar"),
])
def test_invalid_records_are_refused_with_a_reason(tiny_tok, messages, error):
    with pytest.raises(InputError, match=error):
        T.render(messages, tiny_tok)
