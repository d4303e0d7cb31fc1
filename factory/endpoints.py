"""Many endpoints behind one Requester: each request goes to the least busy healthy one.

`backend.base_url` may be a list (one `vllm serve` per GPU, several machines): the pool holds a
client per URL and picks one per network attempt (backends.Requester asks it before each try).

    up       takes requests; the pick is the one with the fewest in flight (then the fewest served)
    out      it failed: once unreachable (connection refused), or FAULTS_TO_OUT server faults in a
             row (5xx, timeouts, a 200 that is no chat completion); it takes nothing until its
             back-off ends (the backend's backoff, doubling each time it is taken out again, at
             most max_backoff)
    probing  back-off over: it takes one request at a time, the probe; an answer puts it back up,
             a fault takes it out again for twice as long

Only the endpoint's own faults count (backends.Retryable.fault): a 429 slows the whole pool (the
Requester's AdaptiveLimit), a 4xx, a length stop or an empty reply is the request's. When every
endpoint is out, a try goes to the one due back soonest: the Requester's retries, with their own
back-off, are the wait, and its retry budget bounds it; spent, the input stays undone for a rerun,
exactly as with one endpoint (for which the pool changes nothing). Which endpoint answered is not
part of the call cache key: a rebuild over other URLs (same model) pays for nothing twice.
"""

import dataclasses
import time
from dataclasses import dataclass

FAULTS_TO_OUT = 3  # server faults in a row that take an endpoint out (a refused connection: at once)


@dataclass
class Endpoint:
    url: str | None     # None: the client's own default (a provider's API, an in-process model)
    client: object
    in_flight: int = 0
    requests: int = 0   # network attempts
    failures: int = 0   # attempts without a usable reply, whoever's fault
    tokens: int = 0     # in + out, of the answered attempts
    seconds: float = 0.0  # their summed latency
    faults: int = 0     # the endpoint's own faults in a row
    times_out: int = 0  # take-outs in a row: the back-off doubles
    back_at: float = 0.0  # time.monotonic() from which an out endpoint is probed; 0.0: up
    why: str = ""       # the fault that took it out

    def state(self, now: float) -> str:
        return "up" if not self.back_at else "out" if now < self.back_at else "probing"


class EndpointPool:
    def __init__(self, cfg, clients: dict):
        """`clients`: url -> client (backends.CLIENTS' for each of cfg.urls, or a test's own)."""
        self.backoff, self.max_backoff = cfg.backoff, cfg.max_backoff
        self.endpoints = [Endpoint(url, client) for url, client in clients.items()]

    @classmethod
    def of(cls, cfg, make_client, client=None) -> "EndpointPool":
        """A pool over cfg.urls; `client` given: that one client alone (tests, a stand-in vLLM)."""
        if client is not None:
            return cls(cfg, {cfg.urls[0]: client})
        return cls(cfg, {url: make_client(dataclasses.replace(cfg, base_url=url)) for url in cfg.urls})

    def pick(self) -> Endpoint:
        """The endpoint for the next try, counted in flight until `done`."""
        now = time.monotonic()
        ready = [e for e in self.endpoints if e.state(now) == "up" or (e.state(now) == "probing" and not e.in_flight)]
        if ready:
            endpoint = min(ready, key=lambda e: (e.in_flight, e.requests))
        else:  # all out: the one due back soonest (the retries' own back-off paces these tries)
            endpoint = min(self.endpoints, key=lambda e: (e.back_at, e.in_flight))
        endpoint.in_flight += 1
        return endpoint

    def done(self, endpoint: Endpoint, latency: float, reply=None, error=None) -> None:
        """A try ended: with a reply (the endpoint is up again) or an error (a fault may take it out)."""
        endpoint.in_flight -= 1
        endpoint.requests += 1
        if error is None:
            endpoint.tokens += reply.tokens_in + reply.tokens_out
            endpoint.seconds += latency
            endpoint.faults = endpoint.times_out = 0
            endpoint.back_at = 0.0
            return
        endpoint.failures += 1
        fault = getattr(error, "fault", None)
        if fault is None:
            return
        endpoint.faults += 1
        if fault == "unreachable" or endpoint.faults >= FAULTS_TO_OUT or endpoint.back_at:  # back_at: a failed probe
            self.take_out(endpoint, str(error))

    def take_out(self, endpoint: Endpoint, why: str) -> None:
        endpoint.back_at = time.monotonic() + min(self.max_backoff, self.backoff * 2 ** endpoint.times_out)
        endpoint.times_out += 1
        endpoint.faults, endpoint.why = 0, why

    def take_out_url(self, url: str, why: str) -> None:
        self.take_out(next(e for e in self.endpoints if e.url == url), why)

    def figures(self) -> dict:
        """url -> this run's requests, failures, tokens, mean latency and state: the build summary's."""
        now, out = time.monotonic(), {}
        for e in self.endpoints:
            answered = e.requests - e.failures
            state = e.state(now) + (f" ({e.why[:120]})" if e.back_at else "")
            out[e.url or "default"] = (f"{e.requests} requests, {e.failures} failed, {e.tokens:,} tokens, "
                                       f"{e.seconds / answered if answered else 0:.2f} s mean, {state}")
        return out
