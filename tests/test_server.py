"""The OpenAI-compatible server on a tiny real checkpoint, through `trainer serve` and the openai client."""

import json
import subprocess
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest

from agent.backend import is_context_error
from nanocode.openai_format import from_openai, parse_call, to_openai
from nanocode.record import validate
from tests.conftest import BIN, REPO, free_port
from tests.tiny_run import train_tiny_run
from nanocode.spec import load_soul, load_tools, render_system_prompt
from trainer import checkpoint, sft, template
from trainer.engine import Engine, Token
from trainer.server import ModelServer, _Job, openai_calls

SEQ_LEN = 512  # room for the system prompt of tools_small.yaml (~340 tokens) and a short reply
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "def add(a, b):"}]
CALLS = [{"role": "system", "content": "s"}, {"role": "user", "content": "fix calc.py"},
         {"role": "assistant", "content": "looking", "tool_calls": [
             {"name": "Read", "args": {"file_path": "calc.py", "offset": 3}},
             {"name": "Grep", "args": {"pattern": "def add"}}]},
         {"role": "tool", "name": "Read", "content": "    1→def add(a, b):"},
         {"role": "tool", "name": "Grep", "content": "calc.py:1:def add(a, b):"},
         {"role": "assistant", "content": "found it"},
         {"role": "user", "content": "go on"}]



@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A d1 model trained for 3 steps: its replies are noise, but real, deterministic noise."""
    return train_tiny_run(tmp_path_factory.mktemp("server"), seq_len=SEQ_LEN)


@contextmanager
def trainer_serve(run, while_it_starts=lambda: None):
    """`trainer serve` (the real console script) on a free loopback port: yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "trainer"), "serve", "--checkpoint", str(run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while_it_starts()
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 60
    try:
        while True:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.ConnectError:
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def url(run, request):
    # load and run the checkpoint here while the server starts
    with trainer_serve(run, lambda: request.getfixturevalue("greedy")) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url, api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def local(run):
    """The same checkpoint in this process: what the server must agree with."""
    params, cfg, tok, _ = checkpoint.load_model(run)
    return ModelServer(params, cfg, tok, "run")


@pytest.fixture(scope="module")
def greedy(local):
    """(content, finish_reason, ids) of the Engine's greedy decoding of CHAT's rendered prompt."""
    engine: Engine = local.engine
    ids = engine.complete([template.render_prompt(CHAT, local.tok)], 24, temperature=0.0)[0]
    finish = "stop" if ids[-1] in engine.default_stop else "length"
    return template.parse_assistant(ids, local.tok)["content"], finish, ids


def streamed(client, **kwargs):
    """(concatenated deltas, finish_reason, usage) of a streamed completion."""
    text, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model="run", stream=True, **kwargs):
        assert chunk.object == "chat.completion.chunk"
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(text), finish, usage


# ------------------------------------------------------------------------------- replies

def test_models_lists_the_one_model(client, url):
    assert [m.id for m in client.models.list()] == ["run"]
    assert httpx.get(url.removesuffix("/v1") + "/health").json()["status"] == "ok"


def test_greedy_reply_is_the_engines_decoding_of_the_rendered_prompt(client, local, greedy):
    content, finish, ids = greedy
    r = client.chat.completions.create(model="run", messages=CHAT, temperature=0, max_tokens=24)
    assert r.choices[0].message.content == content and content
    assert r.choices[0].finish_reason == finish
    assert r.usage.prompt_tokens == len(template.render_prompt(CHAT, local.tok))
    assert r.usage.completion_tokens == len(ids)


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, seed=7)])
def test_streamed_deltas_add_up_to_the_whole_reply(client, sampling):
    whole = client.chat.completions.create(model="run", messages=CHAT, max_tokens=40, **sampling)
    text, finish, usage = streamed(client, messages=CHAT, max_tokens=40, stream_options={"include_usage": True},
                                   **sampling)
    assert text == whole.choices[0].message.content and text
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_a_seed_repeats_a_sample_and_another_seed_changes_it(client):
    def sample(seed):
        r = client.chat.completions.create(model="run", messages=CHAT, max_tokens=16, temperature=1.0, seed=seed)
        return r.choices[0].message.content

    assert sample(1) == sample(1) != sample(2)


def test_max_tokens_and_the_end_of_the_context_give_finish_length(client, local):
    r = client.chat.completions.create(model="run", messages=CHAT, temperature=0, max_completion_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2
    # a prompt a few tokens short of the context: the reply runs into its end (no max_tokens)
    k = next(k for k in range(SEQ_LEN, 0, -1) if len(template.render_prompt([_user(" x" * k)], local.tok)) < SEQ_LEN)
    r = client.chat.completions.create(model="run", messages=[_user(" x" * k)], temperature=0)
    room = SEQ_LEN - r.usage.prompt_tokens
    assert 0 < room <= 4 and r.choices[0].finish_reason == "length" and r.usage.completion_tokens <= room + 1


def test_concurrent_requests_share_a_batch_and_a_dropped_stream_frees_its_row(client, url):
    # a client that hangs up mid-stream must not hold up the others
    with httpx.stream("POST", f"{url}/chat/completions", json={
            "model": "run", "messages": CHAT, "stream": True, "max_tokens": 40}) as r:
        next(r.iter_lines())
    expected = client.chat.completions.create(model="run", messages=CHAT, temperature=0, max_tokens=30)
    before = httpx.get(url.removesuffix("/v1") + "/health").json()
    results = [None] * 4

    def ask(i):
        results[i] = streamed(client, messages=CHAT, temperature=0, max_tokens=30)[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = httpx.get(url.removesuffix("/v1") + "/health").json()
    assert results == [expected.choices[0].message.content] * 4
    assert after["requests"] - before["requests"] == 4 and after["batches"] - before["batches"] < 4


def test_a_batch_of_different_requests_gives_each_what_it_would_get_alone(local):
    """Rows of one batch keep their own max_tokens, temperature and seed: batching changes no reply,
    and a cancelled row ends alone."""
    bodies = [{"messages": CHAT, "temperature": 0, "max_tokens": 12},
              {"messages": CHAT, "temperature": 1.0, "seed": 3, "max_tokens": 20},
              {"messages": [_user("hello there")], "temperature": 0.8, "top_k": 5, "seed": 9, "max_tokens": 7},
              {"messages": CHAT, "temperature": 0, "max_tokens": 40}]
    alone = [local.completion(local.parse(b))["choices"][0]["message"]["content"] for b in bodies[:3]]
    jobs = [_Job(local.parse(b)) for b in bodies]
    jobs[3].cancel()  # hung up before its batch started
    local.run_batch(jobs)
    events = [list(job.events.queue) for job in jobs]
    together = [template.parse_assistant([e.id for e in ev if isinstance(e, Token)], local.tok)["content"]
                for ev in events[:3]]
    assert together == alone
    assert [e.reason for e in events[3]] == ["cancelled"]


# ---------------------------------------------------------------------------- tool calls

def test_openai_messages_convert_back_to_the_records_they_came_from():
    assert from_openai(to_openai(CALLS)) == CALLS
    # a nameless call the session kept (under its placeholder name) goes back to the server as history
    nameless = {k: v for k, v in parse_call(None, "{}").items() if k != "error"}
    history = [CALLS[0], {"role": "assistant", "content": "", "tool_calls": [nameless]},
               {"role": "tool", "name": "invalid", "content": "error: tool call has no name"}]
    assert from_openai(to_openai(history)) == history
    parts = [{"role": "developer", "content": "s"},
             {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert from_openai(parts) == [{"role": "system", "content": "s"}, {"role": "user", "content": "ab"}]


def test_a_tool_call_conversation_renders_into_the_template(client, local):
    body = {"model": "run", "messages": to_openai(CALLS), "max_tokens": 1}
    assert local.parse(body).prompt == template.render_prompt(CALLS, local.tok)
    r = client.chat.completions.create(**body)  # the same through HTTP: the prompt length agrees
    assert r.usage.prompt_tokens == len(template.render_prompt(CALLS, local.tok))


def test_parsed_tool_calls_go_out_in_openais_shape(local):
    tok = local.tok
    ids, _ = template.render([CALLS[2]], tok)
    message = template.parse_assistant(ids[ids.index(tok.special_id(template.ASSISTANT_START)) + 1:], tok)
    calls = openai_calls(message)
    assert [c["type"] for c in calls] == ["function"] * 2 and len({c["id"] for c in calls}) == 2
    back = [parse_call(c["function"]["name"], c["function"]["arguments"]) for c in calls]
    assert back == [{"name": "Read", "args": {"file_path": "calc.py", "offset": "3"}},  # values come back as text
                    {"name": "Grep", "args": {"pattern": "def add"}}]
    garbled = template.parse_assistant(tok.encode("x") + [tok.special_id(template.CALL_START)] + tok.encode("Read")
                                       + [tok.special_id(template.ARG)] + tok.encode("file_path"), tok)
    sent = openai_calls(garbled)[0]["function"]
    assert sent["name"] == "Read" and "error" in parse_call(sent["name"], sent["arguments"])  # never run


# -------------------------------------------------------------------------------- errors

def _user(content="hi"):
    return {"role": "user", "content": content}


ASSISTANT_CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": '{"file_path": "a"}'}}]}


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(model="gpt-9"), openai.NotFoundError, "the model 'gpt-9' does not exist"),
    (dict(n=2), openai.BadRequestError, "n must be 1"),
    (dict(messages=[{"role": "bot", "content": "hi"}]), openai.BadRequestError, "unknown role 'bot'"),
    (dict(messages=[_user(), {"role": "tool", "tool_call_id": "call_9", "content": "r"}]), openai.BadRequestError,
     "tool_call_id 'call_9' answers no tool call"),
    (dict(messages=[_user(), ASSISTANT_CALL, _user()]), openai.BadRequestError, "left unanswered"),
    (dict(messages=[_user(), {**ASSISTANT_CALL, "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "Read", "arguments": "{oops"}}]}]), openai.BadRequestError, "not valid JSON"),
    (dict(messages=[_user([{"type": "image_url", "image_url": {"url": "x"}}])]), openai.BadRequestError,
     "only text content"),
    (dict(temperature=3), openai.BadRequestError, "temperature must be between 0 and 2"),
    (dict(stop=["\n"]), openai.BadRequestError, "stop sequences are not supported"),
])
def test_bad_requests_are_named_in_an_openai_error(client, kwargs, error, match):
    with pytest.raises(error, match=match) as e:
        client.chat.completions.create(**{"model": "run", "messages": [_user()], **kwargs})
    assert set(e.value.body) >= {"message", "type", "param", "code"}


def test_a_prompt_longer_than_the_context_is_a_context_length_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="run", messages=[_user("x " * SEQ_LEN)], stream=True)
    assert e.value.code == "context_length_exceeded" and f"{SEQ_LEN} tokens" in e.value.message
    assert is_context_error(e.value.status_code, e.value.message, e.value.code)


@pytest.mark.parametrize("body, match", [(b"{not json", "not valid JSON"), (b'{"model": "run"}', "messages is required"),
                                         (b'{"messages": []}', "non-empty list")])
def test_malformed_bodies_get_400(url, body, match):
    r = httpx.post(f"{url}/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and match in r.json()["error"]["message"]


# --------------------------------------------------------------------------- the agent

def test_nanocode_run_talks_to_a_local_checkpoint(run, tmp_path):
    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    r = subprocess.run([str(BIN / "nanocode"), "run", "fix add in calc.py", "--model", str(run),
                        "--workspace", str(tmp_path), "--tools", str(REPO / "tests/fixtures/spec/tools_small.yaml"),
                        "--json", "-"], capture_output=True, text=True, timeout=120)
    # the reply is noise; what matters is that it came back through the server and the session ended
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    record = json.loads(r.stdout)
    validate(record["messages"])
    assert [m["role"] for m in record["messages"][:3]] == ["system", "user", "assistant"]
    assert "fix add in calc.py" in r.stderr  # the transcript


def test_nanocode_run_names_a_bad_local_run(tmp_path):
    # the child server's own one-line reason comes back, named after the flag
    r = subprocess.run([str(BIN / "nanocode"), "run", "hi", "--model", str(tmp_path / "nope"),
                        "--workspace", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: --model {tmp_path / 'nope'}: no such run or checkpoint directory: {tmp_path / 'nope'}"]


# ------------------------------------------------------------------ a model that calls tools

LIST_SPEC = """tools:
  - name: List
    builtin: list
    needs_approval: false
    description: list the files in the workspace
    args:
      - {name: glob, as: pattern, type: string, required: false, description: only files matching this glob}
"""


@pytest.fixture(scope="module")
def caller(run, tmp_path_factory):
    """(run, tool spec, workspace, conversation): the tiny run fine-tuned on one conversation until
    greedy decoding gives it back (60 steps were enough; the test asks for temperature 0: sampled at 1,
    the server's default, a reply broke the List call once in CI): a real model whose first reply is
    a List call with no arguments and whose reply to the listing is "done."."""
    root = tmp_path_factory.mktemp("caller")
    (root / "tools.yaml").write_text(LIST_SPEC)
    spec = load_tools(root / "tools.yaml")
    (root / "ws").mkdir()
    (root / "ws" / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    conv = [{"role": "system", "content": render_system_prompt(load_soul(None), spec)},
            {"role": "user", "content": "fix add in calc.py"},
            {"role": "assistant", "content": "listing the files", "tool_calls": [{"name": "List", "args": {}}]},
            {"role": "tool", "name": "List", "content": "calc.py"},  # what the list builtin answers there
            {"role": "assistant", "content": "done."}]
    (root / "one.jsonl").write_text(json.dumps({"messages": conv}) + "\n")
    sft.run(run, root / "sft", [str(root / "one.jsonl")], num_steps=150, device_batch_size=1, lr_scale=5.0,
            val_fraction=0.0, warmdown_ratio=0.2, save_every=150, eval_every=150, log=lambda *a: None)
    return root / "sft", root / "tools.yaml", root / "ws", conv


def test_a_call_without_arguments_goes_out_as_an_empty_json_object(local):
    tok = local.tok
    ids = tok.encode("listing") + [tok.special_id(template.CALL_START)] + tok.encode("List") + \
        [tok.special_id(template.CALL_END)]
    [call] = openai_calls(template.parse_assistant(ids, tok))
    assert call["function"] == {"name": "List", "arguments": "{}"}


def test_a_malformed_call_reaches_the_agent_with_the_parsers_reason(local):
    tok = local.tok
    ids = [tok.special_id(template.CALL_START)] + tok.encode("List") + [tok.special_id(template.ARG)] + \
        tok.encode("glob") + [tok.special_id(template.CALL_END)]  # an argument with no value
    [call] = openai_calls(template.parse_assistant(ids, tok))
    error = parse_call(call["function"]["name"], call["function"]["arguments"])["error"]
    assert "not valid JSON" in error and "argument 'glob' has no <|tool_val|>" in error  # what the model is told


def test_streamed_tool_calls_go_through_trainer_serve_into_nanocode_run_and_back(caller, tmp_path):
    run_dir, tools, workspace, conv = caller
    with trainer_serve(run_dir) as base:
        client = openai.OpenAI(base_url=base, api_key="none", max_retries=0)
        calls, text, finish = {}, [], None
        for chunk in client.chat.completions.create(model="sft", messages=to_openai(conv[:2]), stream=True,
                                                    temperature=0, max_tokens=48):
            for choice in chunk.choices:  # SSE chunks over HTTP, read by the official client
                text.append(choice.delta.content or "")
                for tc in choice.delta.tool_calls or []:
                    calls[tc.index] = (tc.function.name, tc.function.arguments, tc.id)
                finish = choice.finish_reason or finish
        assert "".join(text) == "listing the files" and finish == "tool_calls"
        [(name, arguments, call_id)] = calls.values()
        assert (name, arguments) == ("List", "{}") and call_id.startswith("call_")
        # the agent against the same server: the call runs in the workspace, the model answers its result
        r = subprocess.run([str(BIN / "nanocode"), "run", "fix add in calc.py", "--base-url", base,
                            "--workspace", str(workspace), "--tools", str(tools), "--json", "-",
                            "--temperature", "0"],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    validate(record["messages"])
    assert record["messages"] == conv  # the system prompt too: the agent's, which the model was trained on
