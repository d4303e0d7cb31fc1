"""The agent loop (agent/session.py) and the OpenAI backend against a real loopback server,
plus `nanocode run` and its bad-input exits as a user runs them."""

import json
import os
import subprocess

import pytest

from agent.backend import TEMPERATURE, BackendError, ContextFull, OpenAIBackend, parse_call, to_openai, tools_schema
from agent.sandbox import unavailable
from agent.session import INTERRUPTED, Decision, Session
from agent.tools import Preview, Tools
from nanocode.common import InputError
from nanocode.record import record_id, validate
from nanocode.spec import load_tools
from tests.conftest import BIN, free_port
from tests.scripted_server import ScriptedServer

SPEC = load_tools()
BUGGY = "def add(a, b):\n    return a - b\n"


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "calc.py").write_text(BUGGY)
    return root


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


def make_session(server, ws, approve=None, events=None):
    backend = OpenAIBackend(server.base_url)
    backend.check()
    sink = events.append if events is not None else None
    return Session(backend, Tools(ws, SPEC), "you are a test.", approve or (lambda c, p: Decision(True)),
                   (lambda kind, payload: sink((kind, payload))) if sink else None,
                   soul_sha="s" * 64, tools_sha=SPEC.sha256)


def tool_messages(request):
    return [m for m in request["messages"] if m["role"] == "tool"]


# --------------------------------------------------------------------------- rollouts

def test_read_edit_answer_rollout_edits_the_file_and_records_it(server, ws):
    server.add({"text": "let me look", "tool_calls": [call("Read", file_path="calc.py")]},
               {"text": "found it", "tool_calls": [call("Edit", file_path="calc.py",
                                                        old_string="a - b", new_string="a + b")]},
               {"text": "fixed! it subtracted."})
    events = []
    session = make_session(server, ws, events=events)
    assert session.send("add is broken") == "done"

    assert (ws / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    # streamed: more than one text delta per turn, and the calls shown before their results
    kinds = [k for k, _ in events]
    assert kinds.count("text") > 3 and kinds.index("call") < kinds.index("result")
    # what the model was sent: the tool schema, the system prompt, results tied to call ids
    first, second = server.requests[0], server.requests[1]
    assert first["stream"] is True and first["model"] == "scripted"
    assert [t["function"]["name"] for t in first["tools"]] == ["Read", "Grep", "Edit", "Bash"]
    assert first["messages"][0] == {"role": "system", "content": "you are a test."}
    asked = second["messages"][-2]["tool_calls"][0]
    assert asked["function"]["name"] == "Read" and json.loads(asked["function"]["arguments"]) == {"file_path": "calc.py"}
    assert second["messages"][-1]["tool_call_id"] == asked["id"]
    assert "    2→    return a - b" in second["messages"][-1]["content"]

    record = session.record()
    validate(record["messages"])
    assert record["id"] == record_id(record["messages"])
    assert record["source"] == "nanocode chat" and record["tools"] == SPEC.sha256
    assert record["workspace"] == {"calc.py": BUGGY}  # as the session first saw it
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant", "tool",
                                                       "assistant", "tool", "assistant"]
    saved = session.save(ws.parent / "out" / "session.json")
    assert json.loads(saved.read_text()) == record


def test_a_refusal_and_its_reason_reach_the_model(server, ws):
    server.add({"text": "cleaning up", "tool_calls": [call("Bash", command="touch gone.txt")]},
               {"text": "ok, i won't."})
    asked = []

    def approve(c, preview):
        asked.append((c, preview))
        return Decision(False, reason="use git clean instead")

    session = make_session(server, ws, approve)
    assert session.send("tidy up") == "done"
    assert asked == [({"name": "Bash", "args": {"command": "touch gone.txt"}}, Preview("command", "touch gone.txt"))]
    assert not (ws / "gone.txt").exists()
    result = tool_messages(server.requests[1])[-1]["content"]
    assert "refused" in result and "use git clean instead" in result


def test_always_allows_a_tool_for_the_rest_of_the_session(server, ws):
    server.add({"text": "", "tool_calls": [call("Bash", command="echo one")]},
               {"text": "", "tool_calls": [call("Bash", command="echo two")]},
               {"text": "done"})
    asked = []
    session = make_session(server, ws, lambda c, p: asked.append(c) or Decision(True, always=True))
    assert session.send("go") == "done"
    assert len(asked) == 1
    assert "two" in tool_messages(server.requests[2])[-1]["content"]


def test_malformed_calls_get_error_results_and_the_session_goes_on(server, ws):
    server.add({"text": "trying things", "tool_calls": [
                   call("Delete", file_path="calc.py"),          # unknown tool
                   call("Read"),                                 # missing argument
                   call("Read", file_path="calc.py", offset="two"),  # wrong type
                   {"name": "Grep", "arguments": '{"pattern": "add'},  # invalid JSON
                   {"name": "Grep", "arguments": '["add"]'}]},      # not an object
               {"text": "sorry, my bad"},
               {"text": "still here"})
    session = make_session(server, ws)
    assert session.send("hi") == "done"
    results = [m["content"] for m in tool_messages(server.requests[1])]
    assert len(results) == 5 and all(r.startswith("error: ") for r in results)
    assert "unknown tool 'Delete'" in results[0]
    assert "needs argument 'file_path'" in results[1]
    assert "'offset'" in results[2] and "whole number" in results[2]
    assert "not valid JSON" in results[3] and "JSON object" in results[4]
    validate(session.messages)
    assert session.send("again") == "done"
    assert (ws / "calc.py").read_text() == BUGGY


def test_context_full_drops_the_oldest_turns_and_retries(server, ws):
    server.add({"text": "one " * 50}, {"text": "two " * 50},
               {"error": {"status": 400, "message": "This model's maximum context length is 2048 tokens"}},
               {"text": "three"})
    events = []
    session = make_session(server, ws, events=events)
    assert session.send("first") == "done" and session.send("second") == "done"
    assert session.send("third") == "done"
    full, retried = server.requests[2]["messages"], server.requests[3]["messages"]
    assert len(retried) < len(full)
    assert retried[0]["role"] == "system" and retried[-1] == {"role": "user", "content": "third"}
    assert any(k == "context_full" for k, _ in events)
    validate(session.messages)


def test_context_still_full_is_reported_and_the_session_stays_usable(server, ws):
    too_long = {"error": {"status": 400, "message": "too many tokens", "code": "context_length_exceeded"}}
    server.add({"text": "hi"}, too_long, too_long, too_long, {"text": "fresh start"})
    events = []
    session = make_session(server, ws, events=events)
    assert session.send("first") == "done"
    assert session.send("x" * 100) == "context_full"  # dropped the first turn, retried once
    assert len(server.requests) == 3
    assert [k for k, _ in events].count("context_full") == 2
    validate(session.messages)
    # the next message makes the one that overflowed droppable: the session recovers by itself
    assert session.send("y") == "done"
    assert server.requests[-1]["messages"][1:] == [{"role": "user", "content": "y"}]
    assert session.messages[-1]["content"] == "fresh start"
    session.clear()
    assert session.messages == [{"role": "system", "content": "you are a test."}]


def test_the_trim_never_splits_a_call_from_its_result(server, ws):
    server.add({"text": "", "tool_calls": [call("Read", file_path="calc.py"), call("Grep", pattern="add")]},
               {"text": "a" * 400},
               {"error": {"status": 400, "message": "context length exceeded"}},
               {"text": "ok"})
    session = make_session(server, ws)
    assert session.send("look") == "done"
    assert session.send("more") == "done"
    retried = server.requests[-1]["messages"]
    ids = [c["id"] for m in retried for c in m.get("tool_calls") or []]
    answered = [m["tool_call_id"] for m in retried if m["role"] == "tool"]
    assert ids == answered  # every call kept has its result, every result its call
    validate(session.messages)


def test_ctrl_c_during_generation_keeps_the_partial_text(server, ws):
    server.add({"text": "this is a long reply that gets cut", "delay": 0.01}, {"text": "back"})
    seen = []

    def on_event(kind, payload):
        if kind == "text":
            seen.append(payload)
            if len(seen) == 2:
                raise KeyboardInterrupt

    session = make_session(server, ws)
    session.on_event = on_event
    assert session.send("talk") == "interrupted"
    assert session.messages[-1] == {"role": "assistant", "content": "".join(seen)}
    assert session.send("again") == "done"
    validate(session.messages)


def test_ctrl_c_during_a_tool_answers_every_pending_call(server, ws):
    server.add({"text": "", "tool_calls": [call("Read", file_path="calc.py"),
                                           call("Bash", command="echo hi"),
                                           call("Bash", command="echo there")]},
               {"text": "ok, stopped"})

    def approve(c, preview):
        raise KeyboardInterrupt  # Ctrl-C at the approval prompt

    session = make_session(server, ws, approve)
    assert session.send("go") == "interrupted"
    results = [m for m in session.messages if m["role"] == "tool"]
    assert [r["name"] for r in results] == ["Read", "Bash", "Bash"]
    assert results[0]["content"].startswith("    1→")
    assert [r["content"] for r in results[1:]] == [INTERRUPTED, INTERRUPTED]
    validate(session.messages)
    assert session.repair() == 0  # nothing left to answer
    assert session.send("what happened?") == "done"
    assert [m["content"] for m in tool_messages(server.requests[1])][1:] == [INTERRUPTED] * 2


def test_undo_reverts_the_last_edit_and_tells_the_model(server, ws):
    server.add({"text": "", "tool_calls": [call("Edit", file_path="calc.py", old_string="a - b", new_string="a + b"),
                                           call("Edit", file_path="new.py", new_string="x = 1\n")]},
               {"text": "done"}, {"text": "noted"})
    previews = []
    session = make_session(server, ws, lambda c, p: previews.append(p) or Decision(True))
    session.send("fix it")
    assert previews[0].kind == "diff" and previews[0].target == "calc.py"
    assert "-    return a - b" in previews[0].text and "+    return a + b" in previews[0].text
    assert (ws / "new.py").exists()
    assert "removed" in session.undo() and not (ws / "new.py").exists()
    assert "restored" in session.undo() and (ws / "calc.py").read_text() == BUGGY
    assert session.undo() == "nothing to undo"
    session.send("thanks")
    last_user = server.requests[-1]["messages"][-1]["content"]
    assert "undid your last edit to calc.py" in last_user and last_user.endswith("thanks")


def test_a_server_error_mid_session_is_reported_and_the_session_goes_on(server, ws):
    events = []
    session = make_session(server, ws, events=events)
    assert session.send("hi") == "error"  # the script is empty: 500
    assert any(k == "error" and "script exhausted" in p for k, p in events)
    server.add({"text": "hello"})
    assert session.send("hi again") == "done"
    validate(session.messages)


def test_the_step_limit_stops_a_looping_model(server, ws):
    server.add(*[{"text": "", "tool_calls": [call("Read", file_path="calc.py")]}] * 3)
    session = make_session(server, ws)
    session.max_steps = 3
    assert session.send("loop") == "step_limit"
    validate(session.messages)


# ------------------------------------------------------------------ format conversion

def test_to_openai_and_back_keep_calls_and_results_paired():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"name": "Read", "args": {"file_path": "a.py", "offset": 3}},
                    {"name": "Bash", "args": {"command": "ls"}}]},
                {"role": "tool", "name": "Read", "content": "r1"},
                {"role": "tool", "name": "Bash", "content": "r2"},
                {"role": "assistant", "content": "done"}]
    out = to_openai(messages)
    calls = out[2]["tool_calls"]
    assert out[2]["content"] is None and len({c["id"] for c in calls}) == 2
    assert [m["tool_call_id"] for m in out[3:5]] == [c["id"] for c in calls]
    back = [parse_call(c["function"]["name"], c["function"]["arguments"]) for c in calls]
    assert back == [c for c in messages[2]["tool_calls"]]
    assert out[5] == {"role": "assistant", "content": "done"}


def test_tools_schema_follows_the_spec():
    schema = {t["function"]["name"]: t["function"] for t in tools_schema(SPEC)}
    read = schema["Read"]["parameters"]
    assert read["required"] == ["file_path"] and read["properties"]["offset"]["type"] == "integer"
    assert schema["Edit"]["parameters"]["required"] == ["file_path", "new_string"]


def test_parse_call_turns_bad_arguments_into_errors():
    assert parse_call("Read", "")["args"] == {} and "error" not in parse_call("Read", "")
    assert parse_call("Read", "{oops")["error"] == \
        "Read arguments are not valid JSON (Expecting property name enclosed in double quotes at char 1): '{oops'"
    nested = parse_call("Read", '{"file_path": ["a", "b"]}')
    assert nested["args"] == {"file_path": '["a", "b"]'} and "plain values" in nested["error"]
    nameless = parse_call("", "{}")
    assert nameless["name"] and "no name" in nameless["error"]
    validate([{"role": "assistant", "content": "", "tool_calls": [nested, nameless]}])


def test_backend_check_names_the_problem(server):
    with pytest.raises(InputError, match="does not serve model 'gpt-9'"):
        OpenAIBackend(server.base_url, model="gpt-9").check()
    backend = OpenAIBackend(f"127.0.0.1:{server.port}")  # bare host:port gets /v1
    backend.check()
    assert backend.model == "scripted" and backend.base_url == server.base_url
    with pytest.raises(InputError, match="cannot reach"):
        OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1").check()


def test_backend_errors_are_typed(server):
    backend = OpenAIBackend(server.base_url, model="scripted")
    server.add({"error": {"status": 400, "message": "prompt is too long: 9000 tokens > 4096"}},
               {"error": {"status": 400, "message": "temperature must be positive"}})
    with pytest.raises(ContextFull):
        list(backend.stream([{"role": "user", "content": "hi"}], SPEC))
    with pytest.raises(BackendError, match="temperature"):
        list(backend.stream([{"role": "user", "content": "hi"}], SPEC))


# ------------------------------------------------------------------------ the command


def nanocode(*args, timeout=60, env=None):
    return subprocess.run([str(BIN / "nanocode"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_run_with_yes_edits_prints_the_transcript_and_writes_json(server, ws, tmp_path):
    server.add({"text": "on it", "tool_calls": [call("Edit", file_path="calc.py", old_string="a - b",
                                                     new_string="a + b")]},
               {"text": "", "tool_calls": [call("Bash", command="python3 -c 'import calc; print(calc.add(2, 3))'")]},
               {"text": "fixed, add(2, 3) is 5 now."})
    out = tmp_path / "rec.json"
    r = nanocode("run", "fix add", "--workspace", ws, "--yes", "--json", out, "--base-url", server.base_url)
    assert r.returncode == 0, r.stderr
    assert (ws / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert "● Edit(" in r.stdout and "● Bash(" in r.stdout and "fixed, add(2, 3) is 5 now." in r.stdout
    record = json.loads(out.read_text())
    validate(record["messages"])
    assert record["source"] == "nanocode run" and record["workspace"] == {"calc.py": BUGGY}
    assert "exit code: 0" in record["messages"][-2]["content"] and "5" in record["messages"][-2]["content"]
    # every request samples at the agent's temperature (a server's own default is 1)
    assert {b.get("temperature") for b in server.requests} == {TEMPERATURE}


@pytest.mark.skipif(bool(unavailable()), reason=f"no sandbox here: {unavailable()}")
def test_run_with_sandbox_gives_bash_no_credentials_and_a_read_only_system(server, ws):
    server.add({"text": "", "tool_calls": [call("Bash", command="env; touch /usr/nanocode-probe; echo ok > x")]},
               {"text": "done"})
    env = {**os.environ, "HF_TOKEN": "hf_s3cret", "OPENAI_API_KEY": "sk-s3cret"}
    r = nanocode("run", "try it", "--sandbox", "--yes", "--workspace", ws, "--json", "-",
                 "--base-url", server.base_url, env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)["messages"][-2]["content"]
    assert "s3cret" not in result and "PATH=" in result and "Read-only file system" in result
    assert (ws / "x").read_text() == "ok\n" and not os.path.exists("/usr/nanocode-probe")


def test_run_without_yes_refuses_what_needs_approval(server, ws):
    server.add({"text": "", "tool_calls": [call("Bash", command="touch x")]}, {"text": "ok"})
    r = nanocode("run", "make x", "--workspace", ws, "--json", "-", "--base-url", server.base_url,
                 "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert {b.get("temperature") for b in server.requests} == {0.0}
    record = json.loads(r.stdout)
    assert "not approved (run without --yes)" in record["messages"][-2]["content"]
    assert not (ws / "x").exists()


@pytest.mark.parametrize("case", ["workspace", "unreachable", "no-url", "soul"])
def test_bad_input_is_one_line_and_exit_2(case, server, ws, tmp_path):
    args = {"workspace": ["--workspace", tmp_path / "nope", "--base-url", server.base_url],
            "unreachable": ["--workspace", ws, "--base-url", f"http://127.0.0.1:{free_port()}/v1"],
            "no-url": ["--workspace", ws],
            "soul": ["--workspace", ws, "--soul", tmp_path / "missing.md", "--base-url", server.base_url],
            }[case]
    for command in (["run", "task"], ["chat"]):
        r = nanocode(*command, *args)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert not server.requests  # nothing was sent to a model


def test_a_single_message_too_long_is_reported_without_a_retry(server, ws):
    server.add({"error": {"status": 400, "message": "maximum context length exceeded"}})
    events = []
    session = make_session(server, ws, events=events)
    assert session.send("x" * 100) == "context_full"
    assert len(server.requests) == 1 and ("context_full" in [k for k, _ in events])
    validate(session.messages)


def test_the_terminal_never_gets_raw_escape_sequences():
    from agent.chat import clean
    from nanocode.record import call_text

    assert clean("ok\x1b]0;pwned\x07 \x1b[2J\r\n") == "ok\\x1b]0;pwned\\x07 \\x1b[2J\n"
    assert "\x1b" not in clean(call_text({"name": "Bash", "args": {"command": "echo \x1b[31m\x9b"}}))
