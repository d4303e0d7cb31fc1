"""The request layer against a real OpenAI-compatible server on loopback with injected faults:
retries, Retry-After, timeouts, unusable 200s, the call cache, the ledger, adaptive
concurrency, and litellm through the same server."""

import asyncio
import time

import pytest

from factory.backends import AdaptiveLimit, BackendConfig, Requester, RequestFailed
from factory.store import Store
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
               {"text": "cut", "finish": "length"}, {"text": "   "}, {"latency": 1.0, "text": "too slow"},
               {"text": "finally", "usage": [7, 2]})
    req = requester(server, tmp_path, timeout=0.3)
    assert chat(req) == "finally"
    rows = ledger(req)
    assert [r[0] for r in rows] == ["retry"] * 6 + ["ok"]
    errors = " | ".join(r[1] for r in rows[:-1])
    for expected in ("500", "no choices", "upstream overloaded", "length", "no content", "timeout"):
        assert expected in errors
    assert rows[-1][2:] == (7, 2) and req.stats.tokens_in == 7 and req.stats.retries == 6
    assert len(server.requests) == 7
    assert all(r["seed"] == server.requests[0]["seed"] for r in server.requests)  # same call, retried


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
    with pytest.raises(RequestFailed, match="401"):
        chat(req)
    assert len(server.requests) == 1  # never retried
    server.add(*[{"status": 503}] * 3)
    with pytest.raises(RequestFailed, match="503"):
        chat(req, attempt=2)
    assert len(server.requests) == 4 and [r[0] for r in ledger(req)][-3:] == ["retry", "retry", "failed"]


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
