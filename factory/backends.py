"""LLM backends: their config, the clients, and how a client's answer or error is classified.

A client turns (messages, params) into a `Reply` or raises `Retryable` / `Fatal`:
    openai   any OpenAI-compatible server (vLLM, llama-server, OpenRouter...): AsyncOpenAI(base_url)
    litellm  any provider string litellm knows (`openai/<model>` + base_url for a local server)
    vllm     in-process vLLM (`pip install nanocode[vllm]`), micro-batched LLM.chat calls
    offline  no client at all: the factory's model stages fall back to rules (see build.py)

The request layer over them (cache, retries, ledger, endpoints, structured output) is
factory/requester.py.
"""

import asyncio
import os
from dataclasses import dataclass, replace

from nanocode.common import InputError
from nanocode.openai_format import model_ids, what_came


@dataclass
class BackendConfig:
    name: str = "offline"          # offline | openai | litellm | vllm
    model: str | None = None
    base_url: str | list[str] | None = None  # a server, or several (factory/endpoints.py routes between them)
    api_key_env: str | None = None  # the env var holding the key; keys are never stored
    concurrency: int = 8            # requests in flight at the start, per endpoint
    max_concurrency: int | None = None  # adaptive ceiling (default: concurrency)
    timeout: float = 120.0          # seconds per request
    max_retries: int = 6
    backoff: float = 1.0            # first retry waits about this long, doubling each time
    max_backoff: float = 60.0
    structured: str = "auto"        # how a JSON reply is asked for: auto | json_schema | json_object | off
    price_in: float | None = None   # $ per million prompt tokens (litellm: its price table if unset)
    price_out: float | None = None

    def __post_init__(self):
        if self.name not in CLIENTS:
            raise ValueError(f"unknown backend {self.name!r} (known: {', '.join(CLIENTS)})")
        if self.name != "offline" and not self.model:
            raise ValueError(f"backend {self.name!r} needs a model (--model)")
        if type(self.concurrency) is not int or self.concurrency < 1:
            raise ValueError("concurrency must be a positive integer")
        if isinstance(self.base_url, (list, tuple)):
            urls = list(self.base_url)
            if not urls or not all(isinstance(u, str) and u.strip() for u in urls):
                raise ValueError(f"base_url must be a URL or a list of URLs, got {self.base_url!r}")
            if twice := sorted({u for u in urls if urls.count(u) > 1}):
                raise ValueError(f"base_url lists {', '.join(twice)} twice")
            if self.name == "vllm" and len(urls) > 1:
                raise ValueError("backend vllm runs the model in this process: it takes no list of base_url")
            self.base_url = urls[0] if len(urls) == 1 else urls
        if self.structured not in STRUCTURED:
            raise ValueError(f"structured must be one of {', '.join(STRUCTURED)}, got {self.structured!r}")

    def fingerprint(self) -> dict:
        """What changes the data: not concurrency, timeouts, retries, prices, URLs or keys."""
        return {"name": self.name, "model": self.model, "structured": self.structured}

    @property
    def urls(self) -> list:
        """The endpoints: each base_url, or [None] (the client's default: a provider, an in-process model)."""
        return list(self.base_url) if isinstance(self.base_url, list) else [self.base_url]

    @property
    def api_key(self) -> str:
        return os.environ.get(self.api_key_env or "OPENAI_API_KEY") or "none"


STRUCTURED = ("auto", "json_schema", "json_object", "off")


@dataclass
class Reply:
    text: str
    tokens_in: int = 0
    tokens_out: int = 0


class Retryable(Exception):
    """`reply`: what a 200 that cannot be used still cost (its usage), for the ledger. `fault`:
    the endpoint's own failure, not this request's (endpoints.py takes such an endpoint out):
    "unreachable" (no connection) or "server" (5xx, a timeout, a 200 that is no chat completion)."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None,
                 reply: "Reply | None" = None, fault: str | None = None):
        super().__init__(reason)
        self.status, self.retry_after, self.reply, self.fault = status, retry_after, reply, fault


class LengthStop(Retryable):
    """The reply was cut at max_tokens."""


class Fatal(Exception):
    """The request itself is wrong (400, 401, 404...): retrying cannot help. Permanent (this
    input's fault: too long a prompt, a bad request) unless the key or the model is wrong."""

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.permanent = status is not None and 400 <= status < 500 and status not in (401, 403, 404)


# ------------------------------------------------------------------------------ clients

def _retry_after(e) -> float | None:
    try:
        return float(e.response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):  # no response, no header, not a number of seconds
        return None


def classify(e: Exception) -> Exception:
    """An openai (or litellm: same classes) exception -> Retryable or Fatal."""
    import openai

    if isinstance(e, openai.APITimeoutError) or isinstance(e, asyncio.TimeoutError):
        return Retryable("timeout", fault="server")
    if isinstance(e, openai.APIConnectionError):
        return Retryable(f"connection: {' '.join(str(e.__cause__ or e).split())[:200]}", fault="unreachable")
    status = getattr(e, "status_code", None)
    body = getattr(e, "body", None)  # the server's error object: its message, not the client's wrapping
    body = body.get("error", body) if isinstance(body, dict) else body
    said = body.get("message") if isinstance(body, dict) else None
    message = " ".join(str(said if isinstance(said, str) and said else getattr(e, "message", e)).split())[:200]
    if status == 429:
        return Retryable("429 rate limited", 429, _retry_after(e))
    if status is not None and status >= 500 and "validation error" in message.lower():
        # the request's fault, not the server's: llama-cpp-python answers a field it cannot take
        # (OpenAI's response_format json_schema) with a 500 naming it. Asking again cannot help
        return Fatal(f"{status}: {message}", 400)
    if status is not None and (status >= 500 or status in (408, 409)):
        return Retryable(f"{status}: {message}", status, fault=None if status == 409 else "server")
    return Fatal(f"{status}: {message}" if status else f"{type(e).__name__}: {message}", status)


def reply_of(response) -> Reply:
    """A chat completion (openai or litellm object) -> Reply, or Retryable when a 200 is unusable."""
    if isinstance(response, str):  # a body that is not JSON (a proxy's web page): the client hands over its text
        raise Retryable(f"not a chat completion, the body is text: {' '.join(response.split())[:80]!r}", fault="server")
    extra = getattr(response, "model_extra", None) or {}
    if extra.get("error"):
        error = extra["error"]
        raise Retryable(f"error in a 200 body: {error.get('message', error) if isinstance(error, dict) else error}",
                        fault="server")
    if not (choices := getattr(response, "choices", None)):
        raise Retryable("empty reply (no choices)", fault="server")
    choice, usage = choices[0], getattr(response, "usage", None)
    text = getattr(choice.message, "content", None) or ""
    reply = Reply(text, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)
    if choice.finish_reason == "length":  # paid for all the same: the ledger keeps its tokens
        raise LengthStop("stopped for length", reply=reply)
    if not text.strip():
        raise Retryable("empty reply (no content)", reply=reply)
    return reply


class Unreachable(InputError):
    """An endpoint that did not answer the pre-flight check at all."""


def check_endpoint(cfg: BackendConfig) -> dict:
    """The pre-flight check before a build's first call: one GET /models per endpoint. A wrong
    URL or key, a model the server does not serve, or a web page where an API should be is one
    InputError naming the URL, not a minute of retries per input. Of several endpoints, those
    that do not answer at all are returned (url -> why: the build starts with them out, and
    probes them later); all of them silent is one InputError. Only a server with a URL is
    checked (openai, litellm with base_url); one without /models (404) is trusted."""
    if cfg.name not in ("openai", "litellm") or (cfg.name == "litellm" and not cfg.base_url):
        return {}
    dead = {}
    for url in cfg.urls:
        try:
            _check_one(replace(cfg, base_url=url))
        except Unreachable as e:
            dead[url] = str(e)
    if len(dead) == len(cfg.urls):
        raise InputError(next(iter(dead.values())) if len(dead) == 1 else
                         f"none of the {len(dead)} endpoints answers: " + "; ".join(dead.values()))
    return dead


def _check_one(cfg: BackendConfig) -> None:
    import httpx

    base = (cfg.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
    try:
        r = httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {cfg.api_key}"},
                      timeout=min(cfg.timeout, 10.0))
    except httpx.HTTPError as e:
        raise Unreachable(f"cannot reach {base}: {' '.join(str(e).split())[:200] or type(e).__name__}") from None
    if r.status_code == 404:
        return
    served = model_ids(r)
    if r.status_code != 200 or served is None:
        raise InputError(f"{base} is not a usable OpenAI-compatible API: GET /models answered {what_came(r)}")
    if cfg.name == "openai" and served and cfg.model not in served:
        raise InputError(f"{base} does not serve model {cfg.model!r} (it serves: {', '.join(served[:10])})")


class OpenAIClient:
    def __init__(self, cfg: BackendConfig):
        import openai

        self.cfg = cfg
        self.client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=cfg.api_key,
                                         max_retries=0, timeout=cfg.timeout)

    async def complete(self, messages: list[dict], params: dict) -> Reply:
        try:
            response = await self._create(messages, params)
        except Exception as e:
            raise classify(e) from None
        return reply_of(response)

    def _create(self, messages, params):
        return self.client.chat.completions.create(model=self.cfg.model, messages=messages, **params)

    async def aclose(self) -> None:
        """Close the HTTP client in the loop that used it (litellm and vLLM keep none of ours)."""
        if (client := getattr(self, "client", None)) is not None:
            await client.close()

    def cost(self, reply: Reply) -> float:
        return ((self.cfg.price_in or 0) * reply.tokens_in + (self.cfg.price_out or 0) * reply.tokens_out) / 1e6


class LiteLLMClient(OpenAIClient):
    def __init__(self, cfg: BackendConfig):
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-table download at import
        import litellm

        litellm.suppress_debug_info = True  # its help banner on every failure, retries included
        self.cfg, self.litellm = cfg, litellm

    def _create(self, messages, params):
        # no env var named: litellm finds the provider's own (ANTHROPIC_API_KEY...); a local
        # openai/ server still needs some key
        key = self.cfg.api_key if self.cfg.api_key_env or self.cfg.base_url else None
        return self.litellm.acompletion(model=self.cfg.model, messages=messages, api_base=self.cfg.base_url,
                                        api_key=key, timeout=self.cfg.timeout, num_retries=0, max_retries=0, **params)

    def cost(self, reply: Reply) -> float:
        if self.cfg.price_in is not None or self.cfg.price_out is not None:
            return super().cost(reply)
        try:  # litellm's table, looked up by the exact model id (never by substring)
            cin, cout = self.litellm.cost_per_token(model=self.cfg.model, prompt_tokens=reply.tokens_in,
                                                    completion_tokens=reply.tokens_out)
            return cin + cout
        except Exception:
            return 0.0


class VLLMClient(OpenAIClient):
    """In-process vLLM: requests go to LLM.chat in batches (vLLM batches them on the GPU). Those
    that arrive together make one batch; those that arrive while a batch runs make the next, as
    soon as it ends. A request whose caller gave up meanwhile (its timeout) is dropped. A
    response_format becomes guided decoding (vLLM's structured outputs: the JSON schema, or any
    JSON object). The real LLM needs a GPU and the `vllm` extra: tests pass stand-ins with
    LLM.chat's interface and the two parameter classes'."""

    def __init__(self, cfg: BackendConfig, llm=None, sampling_params=None, structured_params=None):
        if llm is None:
            try:
                from vllm import LLM, SamplingParams
                from vllm.sampling_params import StructuredOutputsParams
            except ImportError:
                raise InputError("backend vllm needs the vllm package: pip install 'nanocode[vllm]'") from None
            llm, sampling_params, structured_params = LLM(model=cfg.model), SamplingParams, StructuredOutputsParams
        self.cfg, self.llm, self.SamplingParams, self.Structured = cfg, llm, sampling_params, structured_params
        self.queue: list[tuple[list, dict, asyncio.Future]] = []
        self.batcher = None

    async def complete(self, messages: list[dict], params: dict) -> Reply:
        future = asyncio.get_running_loop().create_future()
        self.queue.append((messages, params, future))
        if self.batcher is None or self.batcher.done():
            self.batcher = asyncio.ensure_future(self._batches())
        return await future

    async def _batches(self):
        while self.queue:  # what came in while a batch ran is the next batch
            await asyncio.sleep(0.01)  # let the requests of this moment gather into one batch
            batch, self.queue = [q for q in self.queue if not q[2].done()], []
            for (_, _, future), result in zip(batch, await self._chat(batch) if batch else []):
                if not future.done():  # done: cancelled, its caller timed out while the batch ran
                    (future.set_exception if isinstance(result, Exception) else future.set_result)(result)

    async def _chat(self, batch) -> list:
        """A Reply or an exception per request. A batch that fails is split, so a request vLLM
        refuses (a prompt over the model's length: ValueError, for good) fails alone."""
        sampling = [self.SamplingParams(temperature=p.get("temperature", 0.0), max_tokens=p.get("max_tokens"),
                                        seed=p.get("seed"), **self._guided(p.get("response_format")))
                    for _, p, _ in batch]
        try:
            outputs = await asyncio.to_thread(self.llm.chat, [m for m, _, _ in batch], sampling, use_tqdm=False)
            return [_vllm_reply(out) for out in outputs]
        except Exception as e:
            if len(batch) > 1:
                return [r for q in batch for r in await self._chat([q])]
            reason = f"vllm: {' '.join(str(e).split())[:200]}"
            return [Fatal(reason, 400) if isinstance(e, ValueError) else Retryable(reason)]

    def _guided(self, fmt: dict | None) -> dict:
        if not fmt:
            return {}
        if fmt["type"] == "json_schema":
            return {"structured_outputs": self.Structured(json=fmt["json_schema"]["schema"])}
        return {"structured_outputs": self.Structured(json_object=True)}


def _vllm_reply(out) -> Reply | Exception:
    gen = out.outputs[0]
    if gen.finish_reason == "length":
        return LengthStop("stopped for length")
    if not gen.text.strip():
        return Retryable("empty reply (no content)")
    return Reply(gen.text, len(out.prompt_token_ids or []), len(gen.token_ids))


CLIENTS = {"offline": None, "openai": OpenAIClient, "litellm": LiteLLMClient, "vllm": VLLMClient}
