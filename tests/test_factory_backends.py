"""The request layer against a real OpenAI-compatible server on loopback with injected faults:
retries, Retry-After, timeouts, unusable 200s (a web page among them), length stops asked
again bigger, permanent failures told from transient ones, the pre-flight check, the call
cache, the ledger, adaptive concurrency, and litellm through the same server; the in-process
vLLM batching with a stand-in for vllm.LLM."""

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from factory.backends import BackendConfig, Fatal, LengthStop, Reply, Retryable, VLLMClient, check_endpoint
from factory.requester import AdaptiveLimit, Requester, RequestFailed, run_closing
from factory.store import Store
from nanocode.common import InputError
from tests.scripted_server import ScriptedServer

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


def requester(server, tmp_path, name="openai", **settings):
    cfg = BackendConfig(name=name, model="openai/scripted" if name == "litellm" else "scripted",
                        base_url=server.base_url, backoff=0.01, **settings)
    return Requester(cfg, Store(tmp_path / "home"), version=1)


def chat(req, attempt=1, messages=HELLO):
    return asyncio.run(req.chat(messages, {"temperature": 0.0}, attempt=attempt, purpose="generate", input_id="x"))


def ledger(req):
    req.store.flush_ledger()
    return req.store.all("SELECT outcome, error, tokens_in, tokens_out FROM ledger ORDER BY ts")


def test_faults_are_retried_until_a_good_reply_and_every_try_is_in_the_ledger(server, tmp_path):
    server.add({"status": 500}, {"empty": True}, {"body_error": "upstream overloaded"},
               {"html": True}, {"text": "   "}, {"latency": 4.0, "text": "too slow"},
               {"text": "finally", "usage": [7, 2]})
    req = requester(server, tmp_path, timeout=1.5)  # wide enough that a loaded machine's request is not late
    assert chat(req) == "finally"
    rows = ledger(req)
    assert [r[0] for r in rows] == ["retry"] * 6 + ["ok"]
    errors = " | ".join(r[1] for r in rows[:-1])
    for expected in ("500", "no choices", "upstream overloaded", "not a chat completion, the body is text: "
                     "'<html><body><h1>Welcome to nginx!</h1></body></html>'", "no content", "timeout"):
        assert expected in errors
    assert rows[-1][2:] == (7, 2) and req.stats.tokens_in == 7 and req.stats.retries == 6
    assert len(server.requests) == 7
    assert all(r["seed"] == server.requests[0]["seed"] for r in server.requests)  # same call, retried


def test_run_closing_closes_the_http_clients_in_the_loop_that_used_them(server, tmp_path):
    # left open, the client closes when collected, maybe inside a later loop: a logged traceback
    server.add({"text": "hi"})
    req = requester(server, tmp_path)
    assert run_closing(req.chat(HELLO, {}, attempt=1, purpose="generate", input_id="x"), req) == "hi"
    assert all(e.client.client.is_closed() for e in req.pool.endpoints)


def test_429_honours_retry_after_and_cuts_concurrency(server, tmp_path):
    server.add({"status": 429, "retry_after": 1}, {"text": "ok"})
    req = requester(server, tmp_path, concurrency=4)
    start = time.monotonic()
    assert chat(req) == "ok"
    assert time.monotonic() - start >= 1.0  # waited as told, not the 10 ms backoff
    assert req.limit.limit == 3.0           # x0.75 on the 429


def test_cache_serves_repeats_but_not_a_new_attempt(server, tmp_path):
    server.add({"text": "first"}, {"text": "second"})
    req = requester(server, tmp_path)
    assert chat(req) == "first" and chat(req) == "first"
    assert chat(req, attempt=2) == "second"  # a revision round is a new call
    assert len(server.requests) == 2 and req.stats.cached == 1
    # a new process (new Requester, same store) pays for nothing already answered
    again = Requester(req.cfg, req.store, version=2)
    assert chat(again) == "first" and len(server.requests) == 2


def test_fatal_answers_and_exhausted_retries_fail_fast(server, tmp_path):
    server.add({"error": {"status": 401, "message": "bad key"}})
    req = requester(server, tmp_path, max_retries=2)
    with pytest.raises(RequestFailed, match="401") as e:
        chat(req)
    assert len(server.requests) == 1 and not e.value.permanent  # never retried; the key's fault, not the input's
    server.add(*[{"status": 503}] * 3)
    with pytest.raises(RequestFailed, match="503") as e:
        chat(req, attempt=2)
    assert len(server.requests) == 4 and [r[0] for r in ledger(req)][-3:] == ["retry", "retry", "failed"]
    assert not e.value.permanent  # the server may come back: a rerun tries again
    server.add({"error": {"status": 400, "message": "maximum context length is 4096 tokens",
                          "code": "context_length_exceeded"}})
    with pytest.raises(RequestFailed, match="400: maximum context length") as e:
        chat(req, attempt=3)
    assert len(server.requests) == 5 and e.value.permanent  # this input can never fit: a reject


def test_a_length_stop_is_asked_again_bigger_and_a_second_one_is_permanent(server, tmp_path):
    req = requester(server, tmp_path)
    ask = lambda attempt: asyncio.run(req.chat(HELLO, {"max_tokens": 100}, attempt=attempt,  # noqa: E731
                                               purpose="generate", input_id="x"))
    server.add({"text": "cut", "finish": "length"}, {"text": "whole"})
    assert ask(1) == "whole"
    first, second = server.requests
    assert (first["max_tokens"], second["max_tokens"]) == (100, 200) and first["seed"] != second["seed"]
    assert ask(1) == "whole" and len(server.requests) == 2  # cached under the call's own key
    server.add({"text": "cut", "finish": "length", "usage": [5, 100]},
               {"text": "cut again", "finish": "length", "usage": [5, 200]}, {"text": "never asked"})
    tokens = req.stats.tokens_out
    with pytest.raises(RequestFailed, match=r"stopped for length twice \(max_tokens 100, then 200\)") as e:
        ask(2)
    assert e.value.permanent and len(server.requests) == 4
    # the cut replies were paid for: the ledger and the stats keep what their usage says
    assert [r[0::2] + r[3:] for r in ledger(req)[-2:]] == [("retry", 5, 100), ("failed", 5, 200)]
    assert req.stats.tokens_out - tokens == 300


def test_adaptive_limit_bounds_what_is_in_flight():
    async def main():
        limit, peak, active = AdaptiveLimit(2, 3), 0, 0

        async def job(ok):
            nonlocal peak, active
            await limit.acquire()
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
            await limit.release(ok, not ok)
        await asyncio.gather(*(job(True) for _ in range(8)))
        grown = limit.limit
        await asyncio.gather(*(job(False) for _ in range(2)))
        return peak, grown, limit.limit
    peak, grown, cut = asyncio.run(main())
    assert peak <= 3 and grown == 3.0 and cut == 3 * 0.75 * 0.75


def test_litellm_reaches_the_same_server(server, tmp_path):
    server.add({"status": 500}, {"text": "via litellm", "usage": [3, 2]})
    req = requester(server, tmp_path, name="litellm", price_in=1.0, price_out=2.0)
    assert chat(req) == "via litellm"
    assert server.requests[-1]["model"] == "scripted" and server.requests[-1]["messages"] == HELLO
    assert [r[0] for r in ledger(req)] == ["retry", "ok"]
    assert req.stats.cost == pytest.approx((3 * 1.0 + 2 * 2.0) / 1e6)


def test_the_pre_flight_check_names_the_url_and_what_came_back(tmp_path):
    cfg = lambda url, model="scripted": BackendConfig(name="openai", model=model, base_url=url)  # noqa: E731

    def one_line(c) -> str:
        with pytest.raises(InputError) as e:
            check_endpoint(c)
        assert "\n" not in str(e.value)
        return str(e.value)
    with ScriptedServer() as ok, ScriptedServer(html_models=True) as html:
        check_endpoint(cfg(ok.base_url))
        check_endpoint(BackendConfig(name="litellm", model="openai/scripted", base_url=ok.base_url))
        assert one_line(cfg(html.base_url)) == (f"{html.base_url} is not a usable OpenAI-compatible API: GET /models "
                                                "answered 200 with text/html: '<html><body><h1>Welcome to nginx!</h1></body></html>'")
        assert one_line(cfg(ok.base_url, "gpt-5")) == f"{ok.base_url} does not serve model 'gpt-5' (it serves: scripted)"
        assert ok.requests == html.requests == []  # GET /models only: no chat call is paid for
    assert one_line(cfg(ok.base_url)).startswith(f"cannot reach {ok.base_url}: ")  # stopped now


class StandInLLM:
    """vllm.LLM's chat(messages_list, sampling_params_list, use_tqdm) on the CPU: each batch takes
    `seconds`; a prompt "long" stops for length; "boom" (out of memory) and "huge" (over the
    model's length, which vLLM checks before it starts) fail the whole batch."""

    def __init__(self, seconds=0.2):
        self.seconds, self.batches, self.lock = seconds, [], threading.Lock()

    def chat(self, messages_list, sampling_params, use_tqdm=True):
        assert not self.lock.locked(), "two batches at once"
        with self.lock:
            self.batches.append([m[-1]["content"] for m in messages_list])
            time.sleep(self.seconds)
            if any(m[-1]["content"] == "boom" for m in messages_list):
                raise RuntimeError("CUDA out of memory\nat step 3")
            if any(m[-1]["content"] == "huge" for m in messages_list):
                raise ValueError("The decoder prompt (length 9000) is longer than the maximum model length of 4096.")
            return [SimpleNamespace(prompt_token_ids=[1, 2], outputs=[SimpleNamespace(
                text=f"re: {m[-1]['content']} @{p.max_tokens}", token_ids=[3],
                finish_reason="length" if m[-1]["content"] == "long" else "stop")])
                for m, p in zip(messages_list, sampling_params)]


def vllm_client(llm):
    return VLLMClient(BackendConfig(name="vllm", model="stand-in"), llm=llm, sampling_params=SimpleNamespace)


def test_vllm_requests_arriving_during_a_batch_make_the_next_one_at_once():
    llm = StandInLLM()
    client = vllm_client(llm)
    say = lambda text: client.complete([{"role": "user", "content": text}], {"max_tokens": 8})  # noqa: E731

    async def main():
        first = asyncio.ensure_future(say("a"))
        await asyncio.sleep(0.05)  # the first batch is running
        start = time.monotonic()
        later = await asyncio.gather(say("b"), say("c"), return_exceptions=True)
        return await first, later, time.monotonic() - start
    first, later, waited = asyncio.run(main())
    assert first == Reply("re: a @8", 2, 1) and [r.text for r in later] == ["re: b @8", "re: c @8"]
    assert llm.batches == [["a"], ["b", "c"]] and waited < 1.0  # not left for a later flush or a timeout


def test_vllm_a_caller_that_gives_up_or_a_failing_request_does_not_break_the_rest_of_its_batch():
    llm = StandInLLM()
    client = vllm_client(llm)
    say = lambda text: client.complete([{"role": "user", "content": text}], {})  # noqa: E731

    async def main():
        quitter = asyncio.ensure_future(asyncio.wait_for(say("quit"), 0.1))  # times out mid-batch
        stayers = [asyncio.ensure_future(say(t)) for t in ("x", "long")]
        results = await asyncio.gather(quitter, *stayers, return_exceptions=True)
        failing = await asyncio.gather(say("boom"), say("huge"), say("y"), return_exceptions=True)
        return results, failing, await say("z")
    (quit_, x, long_), (boom, huge, y), after = asyncio.run(main())
    assert isinstance(quit_, asyncio.TimeoutError) and x.text == "re: x @None" and isinstance(long_, LengthStop)
    assert isinstance(boom, Retryable) and str(boom) == "vllm: CUDA out of memory at step 3"  # may pass on a retry
    assert isinstance(huge, Fatal) and huge.permanent and "longer than the maximum model length" in str(huge)
    assert y.text == "re: y @None"  # the failed batch was split: the others are answered
    assert after.text == "re: z @None" and sorted(llm.batches[0]) == ["long", "quit", "x"]
    assert llm.batches[1:] == [["boom", "huge", "y"], ["boom"], ["huge"], ["y"], ["z"]]


def test_vllm_length_stops_go_through_the_requester_bigger(tmp_path):
    llm = StandInLLM(seconds=0.0)
    cfg = BackendConfig(name="vllm", model="stand-in", backoff=0.01)
    req = Requester(cfg, Store(tmp_path / "home"), 1, client=vllm_client(llm))
    with pytest.raises(RequestFailed, match=r"length twice \(max_tokens 16, then 32\)") as e:
        asyncio.run(req.chat([{"role": "user", "content": "long"}], {"max_tokens": 16}, attempt=1,
                             purpose="generate", input_id="x"))
    assert e.value.permanent and len(llm.batches) == 2


SCHEMA = {"type": "object", "properties": {"m2": {"type": "string"}}, "required": ["m2"], "additionalProperties": False}


def ask_json(req, attempt=1):
    return asyncio.run(req.chat(HELLO, {}, attempt=attempt, purpose="generate", input_id="x", schema=SCHEMA))


def test_structured_output_is_the_replys_schema_and_a_server_that_refuses_it_is_asked_another_way_once(server, tmp_path):
    refusal = {"error": {"status": 400, "message": "'response_format' of type 'json_schema' is not supported"}}
    server.add(refusal, {"text": '{"m2": "a"}'}, {"text": '{"m2": "b"}'})
    req = requester(server, tmp_path)  # structured: auto
    assert ask_json(req) == '{"m2": "a"}' and ask_json(req, attempt=2) == '{"m2": "b"}'
    refused, llama_spelling, later = server.requests
    assert refused["response_format"] == {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}
    # llama.cpp's spelling next, asked once, then for every later request
    assert llama_spelling["response_format"] == later["response_format"] == {"type": "json_object", "schema": SCHEMA}
    rows = ledger(req)
    assert [r[0] for r in rows] == ["retry", "ok", "ok"]
    assert rows[0][1].startswith("json_object + schema: the server refused response_format json_schema (400: ")
    assert req.fallback_note == rows[0][1]  # the build summary's `structured output`
    # the cache key is the request as configured: another process pays for nothing
    assert ask_json(Requester(req.cfg, req.store, version=2)) == '{"m2": "a"}' and len(server.requests) == 3
    # a server that refuses that spelling too is asked in plain JSON from then on
    plain = requester(server, tmp_path / "2")
    server.add(refusal, {"error": {"status": 400, "message": "unknown key 'schema' in response_format"}},
               {"text": '{"m2": "c"}'}, {"text": '{"m2": "d"}'})
    assert ask_json(plain, attempt=3) == '{"m2": "c"}' and ask_json(plain, attempt=4) == '{"m2": "d"}'
    assert [r.get("response_format", {}).get("type") for r in server.requests[3:]] == [
        "json_schema", "json_object", None, None]
    assert plain.fallback_note.startswith("plain JSON: the server refused response_format json_object + schema")
    # ... and a request that changes (structured off) is a new call
    server.add({"text": '{"m2": "e"}'})
    off = Requester(BackendConfig(name="openai", model="scripted", base_url=server.base_url, structured="off"),
                    req.store, version=3)
    assert ask_json(off) == '{"m2": "e"}' and "response_format" not in server.requests[-1]
    # a reply that is not JSON (no schema) is never asked for JSON
    server.add({"text": "prose"})
    assert chat(off, attempt=4) == "prose" and "response_format" not in server.requests[-1]


def test_an_explicit_structured_mode_the_server_refuses_is_one_clear_line(server, tmp_path):
    server.add({"text": "{}"}, {"error": {"status": 400, "message": "unknown field response_format"}})
    assert ask_json(requester(server, tmp_path, structured="json_object")) == "{}"
    assert server.requests[0]["response_format"] == {"type": "json_object"}
    with pytest.raises(InputError, match=r"^the server refused response_format json_schema \(400: unknown field "
                                         r"response_format\): set the backend's structured to auto or off$"):
        ask_json(requester(server, tmp_path / "2", structured="json_schema"))
    with pytest.raises(ValueError, match="structured must be one of auto, json_schema, json_object, off, got 'yes'"):
        BackendConfig(name="openai", model="m", structured="yes")


def test_vllm_turns_response_format_into_guided_decoding(tmp_path):
    llm, seen = StandInLLM(seconds=0.0), []

    def sampling(**kw):
        seen.append(kw)
        return SimpleNamespace(**kw)
    client = VLLMClient(BackendConfig(name="vllm", model="stand-in"), llm=llm, sampling_params=sampling,
                        structured_params=SimpleNamespace)
    req = Requester(BackendConfig(name="vllm", model="stand-in"), Store(tmp_path / "home"), 1, client=client)
    ask_json(req)
    asyncio.run(req.chat(HELLO, {}, attempt=2, purpose="scenario_spec", input_id="x"))  # YAML: no guide
    object_mode = Requester(BackendConfig(name="vllm", model="stand-in", structured="json_object"),
                            req.store, 1, client=client)
    ask_json(object_mode, attempt=3)
    assert seen[0]["structured_outputs"] == SimpleNamespace(json=SCHEMA)
    assert "structured_outputs" not in seen[1] and seen[2]["structured_outputs"] == SimpleNamespace(json_object=True)
