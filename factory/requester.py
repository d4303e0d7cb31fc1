"""The request layer every client goes through: `Requester.chat`.

It adds everything a long run needs, once for all clients (factory/backends.py has them):
  - the call cache (store.llm_cache) keyed by sha256(model, messages, params, attempt): a
    rebuild or a resumed build never pays for a call twice, and a revision round (a new
    attempt number) is never served the previous round's failure;
  - retries with exponential backoff and jitter on 429 (Retry-After honoured), 408, 409, 5xx,
    timeouts, dropped connections and 200 replies that are empty, carry an error or are not
    JSON; the clients' own retries are off, so ours are the only ones that count;
  - a reply stopped for length is asked again with twice the max_tokens and another seed (the
    same request would stop the same way); a second length stop, or a 4xx other than those
    above and 401/403/404 (the key's or the model's fault, not the input's) is permanent:
    RequestFailed(permanent=True), and the build makes the input a reject (stage generate);
  - adaptive concurrency: x0.75 on a 429, +1 after a run of successes as long as the limit;
  - several endpoints (`base_url` a list, `concurrency` each): a request goes to the least busy
    healthy one; one that fails is taken out and probed again later (factory/endpoints.py);
  - structured output (`structured`): a call whose reply must be JSON passes its schema, sent
    as response_format json_schema (auto, json_schema; guided decoding in-process vLLM), as
    json_object, or not at all (off; the writers' parser is tolerant either way). Under auto a
    server that refuses OpenAI's spelling (a 400 naming it) is asked in llama.cpp's, json_object
    with the schema beside it, and one that refuses that too in plain JSON, each from then on:
    one ledger row per step and the build summary's `structured output` saying so, never a reject;
  - a ledger row per network attempt (tokens, latency, cost, outcome), failures included; a
    200 that cannot be used (stopped for length, empty) keeps the tokens its usage says.
"""

import asyncio
import hashlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass

from factory.backends import CLIENTS, BackendConfig, Fatal, LengthStop, Reply, Retryable
from factory.endpoints import EndpointPool
from nanocode.common import InputError

# what `auto` sends a reply's JSON schema as, in turn, each time a server refuses one: OpenAI's
# spelling (OpenAI, vLLM, SGLang), llama.cpp's (llama-cpp-python and llama-server take the schema
# as a grammar there, and refuse OpenAI's), then no response_format at all
AUTO_FORMATS = ("json_schema", "json_object + schema", "plain JSON")


class RequestFailed(Exception):
    """A call that failed for good: retries spent, or a fatal answer. `permanent`: the same
    request can never succeed (see the module docstring), so asking again later cannot help."""

    def __init__(self, reason: str, permanent: bool = False):
        super().__init__(reason)
        self.permanent = permanent


class AdaptiveLimit:
    """A semaphore whose size moves: x0.75 on a rate limit, +1 after `limit` successes in a row."""

    def __init__(self, start: int, ceiling: int):
        self.limit, self.ceiling, self.active, self.streak = float(start), max(start, ceiling), 0, 0
        self.cond = asyncio.Condition()

    async def acquire(self):
        async with self.cond:
            await self.cond.wait_for(lambda: self.active < int(self.limit))
            self.active += 1

    async def release(self, ok: bool, rate_limited: bool):
        async with self.cond:
            self.active -= 1
            if rate_limited:
                self.limit, self.streak = max(1.0, self.limit * 0.75), 0
            elif ok:
                self.streak += 1
                if self.streak >= int(self.limit) and self.limit < self.ceiling:
                    self.limit, self.streak = min(self.ceiling, self.limit + 1), 0
            self.cond.notify_all()


@dataclass
class CallStats:
    requests: int = 0   # network attempts, failed ones included
    cached: int = 0
    retries: int = 0
    failed: int = 0     # calls given up on
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0


class Requester:
    def __init__(self, cfg: BackendConfig, store, version: int, client=None):
        self.cfg, self.store, self.version = cfg, store, version
        self.pool = EndpointPool.of(cfg, CLIENTS[cfg.name], client)
        n = len(self.pool.endpoints)  # `concurrency` is per endpoint; the pool spreads the load
        self.limit = AdaptiveLimit(n * cfg.concurrency, n * (cfg.max_concurrency or cfg.concurrency))
        self.stats = CallStats()
        self.fallback = 0  # auto: which of AUTO_FORMATS requests are sent in (a server refused the ones before)
        self.fallback_note = None  # why, for the build summary's `structured output`
        self.unsaved, self.saving = [], False  # group commit of paid replies, see _save

    async def _save(self, key: str, reply: Reply) -> None:
        """Commit a paid reply to the cache. Replies that arrive while a commit is running
        wait and go together in the next one, on a writer thread: one commit costs
        milliseconds, and with many requests in flight they would queue behind each other."""
        done = asyncio.get_running_loop().create_future()
        self.unsaved.append(((key, self.cfg.model, asdict(reply)), done))
        if not self.saving:
            self.saving = True
            asyncio.ensure_future(self._save_batches())
        await done

    async def _save_batches(self) -> None:
        try:
            while self.unsaved:
                batch, self.unsaved = self.unsaved, []
                ledger, self.store.ledger = self.store.ledger, []
                try:
                    await asyncio.to_thread(self.store.save_replies, [r for r, _ in batch], ledger)
                except Exception as e:  # the store failed: every waiting call hears it
                    for _, done in batch:
                        done.set_exception(e)
                else:
                    for _, done in batch:
                        done.set_result(None)
        finally:
            self.saving = False

    def _call(self, key, meta, outcome, reply=None, latency=0.0, cost=0.0, error=None) -> dict:
        """A ledger row."""
        return {"version": self.version, "key": key, "backend": self.cfg.name, "model": self.cfg.model,
                "tokens_in": reply.tokens_in if reply else 0, "tokens_out": reply.tokens_out if reply else 0,
                "latency_s": latency, "cost": cost, "outcome": outcome, "error": error, **meta}

    def response_format(self, schema: dict | None) -> dict | None:
        """How a request whose reply must match JSON `schema` asks for it (`structured`): a JSON
        schema (auto, json_schema), any JSON object (json_object), or not at all (off, or no schema:
        a reply that is not JSON). This is the request as configured (the cache key); `_sent` is
        what goes out after an auto fallback."""
        if schema is None or self.cfg.structured == "off":
            return None
        if self.cfg.structured == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}

    def _sent(self, params: dict) -> dict:
        """The request as sent: under auto, in the spelling the server has not refused."""
        fmt = params.get("response_format")
        if fmt is None or self.cfg.structured != "auto" or self.fallback == 0:
            return params
        sent = {k: v for k, v in params.items() if k != "response_format"}
        if AUTO_FORMATS[self.fallback] == "json_object + schema":
            sent["response_format"] = {"type": "json_object", "schema": fmt["json_schema"]["schema"]}
        return sent

    def _refused_format(self, error, sent) -> bool:
        """A 400 about response_format: under `auto`, every later request goes in the next of
        AUTO_FORMATS (one ledger row says so); under an explicit mode it is the config's fault,
        one InputError."""
        said = str(error).lower()
        if not (isinstance(error, Fatal) and "response_format" in sent
                and ("response_format" in said or "json_schema" in said or "response format" in said)):
            return False
        if self.cfg.structured != "auto":
            raise InputError(f"the server refused response_format {sent['response_format']['type']} ({error}): "
                             "set the backend's structured to auto or off")
        refused = "json_schema" if sent["response_format"]["type"] == "json_schema" else "json_object + schema"
        step = AUTO_FORMATS.index(refused) + 1  # requests in flight may hear an older refusal: never step back
        if step > self.fallback:
            self.fallback = step
            self.fallback_note = f"{AUTO_FORMATS[step]}: the server refused response_format {refused} ({error})"
        return True

    async def chat(self, messages: list[dict], params: dict, *, attempt: int, purpose: str,
                   input_id: str, schema: dict | None = None) -> str:
        """The model's reply text to `messages`, from the cache or the backend; RequestFailed if
        the backend cannot answer. `schema`: the reply is JSON of this schema, asked for as
        `response_format` says. The cache key is the request as the config asks for it, so a
        server's refusal (another spelling from then on) does not make a rebuild pay again."""
        seed = int(hashlib.sha256(f"{input_id}|{purpose}|{attempt}".encode()).hexdigest()[:8], 16) >> 1
        params = {**params, "seed": seed}
        if (fmt := self.response_format(schema)) is not None:
            params["response_format"] = fmt
        key = hashlib.sha256(json.dumps([self.cfg.model, messages, params, attempt], sort_keys=True,
                                        ensure_ascii=False).encode()).hexdigest()
        meta = {"input_id": input_id, "purpose": purpose, "attempt": attempt}
        if (hit := self.store.cache_get(key)) is not None:
            self.stats.cached += 1
            self.store.log_call(self._call(key, meta, "cached", Reply(**hit)))
            return hit["text"]
        last, lengths = None, []
        for n in range(self.cfg.max_retries + 1):
            await self.limit.acquire()
            endpoint, start, reply, error = self.pool.pick(), time.monotonic(), None, None
            try:
                sent = self._sent(params)
                try:
                    reply = await asyncio.wait_for(endpoint.client.complete(messages, sent), self.cfg.timeout + 5)
                except asyncio.TimeoutError:  # a client that ignores its own timeout
                    raise Retryable("timeout", fault="server") from None
                finally:  # the endpoint hears how its try went (exc_info: the error on its way out, if any)
                    self.pool.done(endpoint, time.monotonic() - start, reply, sys.exc_info()[1])
                cost = endpoint.client.cost(reply)
                self.store.log_call(self._call(key, meta, "ok", reply, time.monotonic() - start, cost))
                # committed before use, and before the slot frees: a kill loses at most the
                # `concurrency` calls in flight, never one whose answer we had
                await self._save(key, reply)
            except (Retryable, Fatal) as e:
                error = e
            finally:
                await self.limit.release(error is None, getattr(error, "status", None) == 429)
            self.stats.requests += 1
            if error is None:
                self.stats.tokens_in += reply.tokens_in
                self.stats.tokens_out += reply.tokens_out
                self.stats.cost += cost
                return reply.text
            last = error
            if paid := getattr(error, "reply", None):  # a 200 we could not use still cost its tokens
                self.stats.tokens_in += paid.tokens_in
                self.stats.tokens_out += paid.tokens_out
            if isinstance(error, LengthStop):
                lengths.append(params.get("max_tokens"))
                if len(lengths) == 2:
                    last = LengthStop(f"stopped for length twice (max_tokens {lengths[0]}, then {lengths[1]})",
                                      reply=paid)
                    break
                more = {"max_tokens": 2 * params["max_tokens"]} if params.get("max_tokens") else {}
                params = {**params, **more, "seed": seed + 1}  # not the same request again
            if self._refused_format(error, sent):
                self.stats.retries += 1
                self.store.log_call(self._call(key, meta, "retry", latency=time.monotonic() - start, error=self.fallback_note))
                continue
            if isinstance(error, Fatal) or n == self.cfg.max_retries:
                break
            self.stats.retries += 1
            self.store.log_call(self._call(key, meta, "retry", paid, time.monotonic() - start, error=str(error)))
            wait = min(self.cfg.max_backoff, self.cfg.backoff * 2 ** n)
            wait = error.retry_after if error.retry_after is not None else wait / 2 + random.uniform(0, wait / 2)
            await asyncio.sleep(wait)
        self.stats.failed += 1
        self.store.log_call(self._call(key, meta, "failed", getattr(last, "reply", None), error=str(last)))
        raise RequestFailed(f"{purpose} call failed: {last}", len(lengths) == 2 or getattr(last, "permanent", False))

    async def aclose(self) -> None:
        for endpoint in self.pool.endpoints:
            if (close := getattr(endpoint.client, "aclose", None)) is not None:
                await close()


def run_closing(coro, requester: Requester | None):
    """asyncio.run(coro), then the requester's clients closed inside that same loop: an HTTP client
    left to the garbage collector closes on a loop that is gone, a logged traceback for the user."""
    async def main():
        try:
            return await coro
        finally:
            if requester is not None:
                await requester.aclose()
    return asyncio.run(main())
