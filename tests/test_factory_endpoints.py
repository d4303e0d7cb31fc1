"""Many endpoints behind one Requester (factory/endpoints.py), against real loopback servers:
the least busy one takes each request, a failing one is taken out and probed back in, a dead
URL in the list is one warning line and the build goes on, all dead is one error line, every
endpoint out leaves the input undone for a rerun, and the call cache does not care which
endpoint answered."""

import asyncio
import os
import re
import subprocess
import threading
import time

import pytest

from factory.backends import BackendConfig, check_endpoint
from factory.endpoints import FAULTS_TO_OUT
from factory.requester import Requester, RequestFailed
from factory.store import Store
from nanocode.common import InputError
from tests.conftest import BIN, free_port
from tests.fake_model import respond
from tests.scripted_server import ScriptedServer
from tests.test_factory_build import SEEDS, config_file, quiet_build

HELLO = [{"role": "user", "content": "hello"}]


def requester(urls, tmp_path, **settings) -> Requester:
    cfg = BackendConfig(name="openai", model="scripted", base_url=urls, **{"backoff": 0.01, **settings})
    return Requester(cfg, Store(tmp_path / "home"), version=1)


async def asking(req, n: int, prefix="q") -> list:
    """n different calls at once: their replies, or the errors they raised."""
    return await asyncio.gather(*(req.chat([{"role": "user", "content": f"{prefix}{i}"}], {}, attempt=1,
                                           purpose="generate", input_id=f"{prefix}{i}") for i in range(n)),
                                return_exceptions=True)


def ask(req, n: int) -> list:
    return asyncio.run(asking(req, n))


def answer(latency=0.0):
    return lambda body: {"text": "re: " + body["messages"][-1]["content"], "usage": [3, 2], "latency": latency}


class Busy:
    """A stand-in model that takes `latency` seconds and records how many requests it held at once."""

    def __init__(self, latency: float):
        self.latency, self.now, self.peak, self.lock = latency, 0, 0, threading.Lock()

    def __call__(self, body):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(self.latency)
        with self.lock:
            self.now -= 1
        return answer()(body)


def test_the_least_busy_endpoint_takes_each_request(tmp_path):
    busy_a, busy_b = Busy(0.2), Busy(0.2)
    with ScriptedServer(respond=busy_a) as a, ScriptedServer(respond=busy_b) as b:
        req = requester([a.base_url, b.base_url], tmp_path, concurrency=2)
        assert req.limit.limit == 4  # concurrency is per endpoint
        assert ask(req, 8) == [f"re: q{i}" for i in range(8)]
        assert len(a.requests) == len(b.requests) == 4 and busy_a.peak == busy_b.peak == 2
        figures = req.pool.figures()
        assert list(figures) == [a.base_url, b.base_url]
        assert all(re.fullmatch(r"4 requests, 0 failed, 20 tokens, \d+\.\d\d s mean, up", f)
                   for f in figures.values()), figures


def test_a_failing_endpoint_is_taken_out_and_probed_back_in(tmp_path):
    down = {"status": 503}
    with ScriptedServer(respond=answer()) as good, \
            ScriptedServer(respond=lambda body: dict(down) if down else answer()(body)) as bad:
        req = requester([good.base_url, bad.base_url], tmp_path, concurrency=1, backoff=0.5, max_backoff=0.5)

        async def main():
            first = await asking(req, 12)
            served = len(good.requests), len(bad.requests), req.pool.figures()[bad.base_url]
            down.clear()  # it comes back; after its back-off one probe finds it up
            await asyncio.sleep(0.6)
            return first, served, await asking(req, 4, "r")
        first, (on_good, on_bad, figure), second = asyncio.run(main())
        assert first == [f"re: q{i}" for i in range(12)]  # the 503s were retried on the good one
        # FAULTS_TO_OUT 503s in a row took it out: the good one served every call, the bad one got
        # at most a probe more (if the run outlasted its back-off)
        assert on_good == 12 and FAULTS_TO_OUT <= on_bad <= FAULTS_TO_OUT + 1
        assert re.search(r", (out|probing) \(503: injected 503\)$", figure), figure
        assert second == [f"re: r{i}" for i in range(4)]
        assert len(bad.requests) > on_bad and req.pool.figures()[bad.base_url].endswith(" s mean, up")


def test_every_endpoint_out_spends_the_retry_budget_then_the_input_stays_undone(tmp_path):
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    req = requester(dead, tmp_path, max_retries=3)
    (error,) = ask(req, 1)
    assert isinstance(error, RequestFailed) and not error.permanent and "connection" in str(error)
    figures = list(req.pool.figures().values())  # the tries went to each in turn, the one due back soonest
    assert req.stats.requests == 4 and all(re.match(r"2 requests, 2 failed, .*, (out|probing) \(connection", f)
                                           for f in figures), figures


def test_a_dead_url_in_the_list_is_a_warning_and_the_build_goes_on(tmp_path):
    config = config_file(tmp_path, SEEDS)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    env = {**os.environ, "NANOCODE_HOME": str(tmp_path / "home")}
    with ScriptedServer(respond=respond) as server:
        cfg = BackendConfig(name="openai", model="scripted", base_url=[dead, server.base_url])
        assert list(check_endpoint(cfg)) == [dead]
        out = subprocess.run([str(BIN / "factory"), "build", "--config", str(config), "--model", "scripted",
                              "--base-url", dead, "--base-url", server.base_url, "--limit", "3"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    warnings = [line for line in out.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: cannot reach {dead}: ")
    assert warnings[0].endswith("the build goes on without it, and tries it again later")
    assert "sft rows" in out.stdout and server.requests
    # all dead: one error line, no version
    out = subprocess.run([str(BIN / "factory"), "build", "--config", str(config), "--model", "scripted",
                          "--base-url", dead, "--base-url", dead.replace("/v1", "/v2"), "--new"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: none of the 2 endpoints answers: cannot reach {dead}: ")


def test_a_rebuild_over_other_urls_is_served_by_the_cache(tmp_path):
    config = config_file(tmp_path, SEEDS)
    with ScriptedServer(respond=respond) as a, ScriptedServer(respond=respond) as b, \
            ScriptedServer(respond=respond) as c:
        s1 = quiet_build(config=config, limit=4, backend_overrides={"model": "scripted",
                                                                    "base_url": [a.base_url, b.base_url]})
        paid = len(a.requests) + len(b.requests)
        assert paid == s1["llm requests"] > 0 and a.requests and b.requests
        assert set(s1["endpoints"]) == {a.base_url, b.base_url}
        # URLs are not identity: the same build over another endpoint is up to date; --new pays nothing
        assert quiet_build(config=config, limit=4, backend_overrides={"model": "scripted",
                                                                      "base_url": c.base_url})["up_to_date"]
        s2 = quiet_build(config=config, limit=4, new=True, backend_overrides={"model": "scripted",
                                                                              "base_url": c.base_url})
        assert c.requests == [] and s2["cache hits"] == paid and s2["sft rows"] == s1["sft rows"]


@pytest.mark.parametrize("urls, expected", [
    ([], "backend: base_url must be a URL or a list of URLs, got []"),
    (["http://a/v1", ""], "backend: base_url must be a URL or a list of URLs, got ['http://a/v1', '']"),
    (["http://a/v1", "http://a/v1"], "backend: base_url lists http://a/v1 twice"),
])
def test_a_bad_endpoint_list_is_one_line(tmp_path, urls, expected):
    with pytest.raises(InputError) as e:
        quiet_build(config=config_file(tmp_path, SEEDS), backend_overrides={"model": "scripted", "base_url": urls})
    assert str(e.value).endswith(expected) and "\n" not in str(e.value)
