"""A real small model (SmolLM2-135M-Instruct) on a real third-party server (llama-cpp-python's
OpenAI-compatible one, tests/llama_server.py) through the factory, the agent and the evals.
A 135M model writes broken JSON, wrong shapes, rambles and length stops: what is checked is that
every path ends in a row, a reject with its reason or a recorded figure, never a crash, a stuck
version or a token count that differs from what the server said it used. Not whether it passes.
"""

import asyncio
import json
import subprocess

import duckdb
import pytest

from factory.backends import BackendConfig
from factory.requester import Requester
from factory.store import Store
from nanocode.common import InputError, nanocode_home
from nanocode.spec import load_soul, load_tools
from tests.conftest import BIN, REPO
from tests.llama_server import LlamaServer, Recorder

CONFIG = REPO / "tests" / "fixtures" / "real_model" / "build.yaml"


@pytest.fixture(scope="module")
def llama_server():
    """One server for the module: the model loads once."""
    with LlamaServer() as server:
        yield server


def run(*cmd, timeout=900):
    p = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out
    return p.returncode, out


def test_a_factory_build_through_a_real_small_model_ends_every_input(llama_server):
    with Recorder(llama_server.base_url) as proxy:  # what the server itself answered, usage included
        # `--limit 1`: the scenario alone (prompts of ~3,300 tokens; a 2-core CPU evaluates them at
        # 15-30 tokens/s here, so a second input doubled the test past 15 minutes under load)
        rc, out = run(BIN / "factory", "build", "--config", CONFIG, "--base-url", proxy.base_url,
                      "--model", llama_server.model, "--limit", "1", timeout=1800)
    assert rc == 0, out
    with duckdb.connect(str(nanocode_home() / "factory.duckdb"), read_only=True) as db:
        q = lambda sql: db.execute(sql).fetchall()  # noqa: E731
        assert q("SELECT version, status FROM versions") == [(1, "done")]
        done = dict(q("SELECT input_id, outcome FROM done_inputs"))
        rows = {i for (i,) in q("SELECT input_id FROM sft")}
        rejects = dict(q("SELECT input_id, stage || ': ' || reason FROM rejects"))
        paid = sorted(q("SELECT tokens_in, tokens_out FROM ledger WHERE outcome <> 'cached'"))
    # the scenario: its model path (prompts/scenario.j2, then ground); the coding seeds' path is the same
    # request layer, through the scripted server in test_factory_build.py
    assert sorted(done) == ["scenarios:py-wordcount-cli-stdin"], out
    assert rows | set(rejects) == set(done) and not rows & set(rejects)
    assert all(len(reason) > len("generate: ") for reason in rejects.values()), rejects
    # one ledger row per request the server answered, with the tokens its `usage` says (length
    # stops and unusable replies too: they were paid for)
    said = sorted((r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]) if status == 200 else (0, 0)
                  for _, status, r in proxy.calls)
    assert proxy.calls and paid == said
    assert all(body["model"] == llama_server.model for body, _, _ in proxy.calls)


def test_a_server_without_openais_response_format_is_asked_in_its_own_spelling(llama_server, tmp_path):
    """llama_cpp.server takes response_format {"type": "json_object", "schema": ...} (the schema as a
    grammar), not OpenAI's {"type": "json_schema", ...}, which it answers with a 500 naming the field.
    Under `structured: auto` (the default) the request layer asks again in llama.cpp's spelling, and
    from then on, and the reply is JSON of the schema; a config that insists on json_schema gets one
    InputError naming the refusal."""
    message = [{"role": "user", "content": "Say hi as JSON."}]
    schema = {"type": "object", "properties": {"m2": {"type": "string", "maxLength": 12}},
              "required": ["m2"], "additionalProperties": False}
    store = Store(tmp_path / "home")
    try:
        req = Requester(BackendConfig(name="openai", model=llama_server.model, base_url=llama_server.base_url), store, 1)
        reply = asyncio.run(req.chat(message, {"max_tokens": 48}, attempt=1, purpose="generate", input_id="x",
                                     schema=schema))
        assert list(json.loads(reply)) == ["m2"], reply  # the grammar held a 135M model to the schema
        assert req.fallback_note.startswith("json_object + schema: the server refused response_format json_schema")
        store.flush_ledger()
        outcomes = [o for (o,) in store.all("SELECT outcome FROM ledger ORDER BY ts")]
        assert outcomes == ["retry", "ok"]  # the refusal, then the request in llama.cpp's spelling
        strict = Requester(BackendConfig(name="openai", model=llama_server.model, base_url=llama_server.base_url,
                                         structured="json_schema"), store, 1)
        with pytest.raises(InputError, match="refused response_format json_schema"):
            asyncio.run(strict.chat(message, {"max_tokens": 16}, attempt=2, purpose="generate", input_id="x",
                                    schema=schema))
    finally:
        store.close()


def test_nanocode_run_and_the_agentic_eval_against_it_record_their_figures(llama_server, tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "hello.py").write_text("print('hello')\n")
    rc, out = run(BIN / "nanocode", "run", "what does hello.py print?", "--base-url", llama_server.base_url,
                  "--workspace", tmp_path / "ws", "--json", tmp_path / "session.json", "--sandbox")
    assert rc in (0, 1), out  # 1: stopped (a full context, the step limit): still a run that ended
    record = json.loads((tmp_path / "session.json").read_text())
    assert record["messages"][0]["role"] == "system" and record["messages"][-1]["role"] == "assistant"

    rc, out = run(BIN / "evals", "agentic", "--base-url", llama_server.base_url, "--limit", "1",
                  "--max-steps", "2", "--max-tokens", "96", "--out", tmp_path / "agentic")
    assert rc == 0, out
    result = json.loads((tmp_path / "agentic" / "evals" / "agentic.json").read_text())
    assert result["model"] == llama_server.model and result["summary"]["tasks"] == 1
    assert result["tasks"][0]["status"] and isinstance(result["summary"]["pass_rate"], float)


def test_the_soul_judge_on_a_real_model_rates_or_counts_a_failure(llama_server):
    from evals.soul import judge

    replies = [{"prompt": "what does `add(a, b)` do?",
                "message": {"role": "assistant", "content": "It returns the sum of `a` and `b`."}}]
    cfg = BackendConfig(name="openai", model=llama_server.model, base_url=llama_server.base_url)
    out = judge(replies, load_soul(None), load_tools(None), cfg)
    assert out["rated"] + out["unrated"] == 1 and out["model"] == llama_server.model
    for r in replies:
        rating, critique = r["judge"]["rating"], r["judge"]["critique"]
        assert (rating is None and critique) or (isinstance(rating, int) and 1 <= rating <= 10), r["judge"]
