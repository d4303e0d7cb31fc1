"""Where the agent's replies come from: a model behind an interface the session loop drives.

A backend has `label` (shown in the banner), `check()` (raise InputError with one line if it
cannot serve) and `stream(messages, spec)`, which yields `("text", delta)` while the reply is
generated, `("finish", reason)` (the server's finish_reason: "stop", "tool_calls", "length" for a
reply cut at max_tokens, None if it sent none) and finally `("message", assistant_message)` in the
record format of docs/DESIGN.md
(`{"role": "assistant", "content", "tool_calls": [{"name", "args"}]}`). It raises `ContextFull`
when the conversation no longer fits and `BackendError` for any other failure mid-session.

Only `OpenAIBackend` (any OpenAI-compatible server: ours, vLLM, ...) exists: a local checkpoint
is served in-process by `trainer.server` and reached through it too, so there is one path.

The record <-> OpenAI translation it uses lives in `nanocode.openai_format` (the server uses it too).
"""

from collections.abc import Iterator
from urllib.parse import urlsplit

from nanocode.common import InputError
from nanocode.openai_format import model_ids, parse_call, to_openai, tools_schema, what_came
from nanocode.spec import ToolSpec


class ContextFull(Exception):
    """The conversation is longer than the model's context window."""


class BackendError(Exception):
    """The model server failed mid-session (one line for the user; the session goes on)."""


def is_context_error(status: int | None, message: str, code=None) -> bool:
    """Servers word it differently (OpenAI, vLLM, llama.cpp); all say context, length or tokens."""
    return code == "context_length_exceeded" or (
        status in (400, 413, None) and any(w in message.lower() for w in ("context", "length", "tokens")))


# ------------------------------------------------------------------------------- backend

def _normalize_url(url: str) -> str:
    # the OpenAI client appends `/chat/completions` to the base; a bare `host:port` means `/v1`
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url


# the temperature chat, run and the agentic eval sample at unless told otherwise: the demo's model is
# 100% valid calls at 0.3 and 42-63% at 0.6-1.0 (bench/RESULTS.md "Demo model"); servers default to 1
TEMPERATURE = 0.3


class OpenAIBackend:
    """A model behind an OpenAI-compatible `/v1/chat/completions` (streamed, with tools)."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0, connect_timeout: float = 5.0, max_tokens: int | None = None,
                 temperature: float | None = None, top_k: int | None = None, seed: int | None = None):
        import httpx
        import openai  # here, not at module top: the server and tests import the pure functions

        self.base_url = _normalize_url(base_url)
        self.model = model
        # what a request sends; None leaves it to the server (ours: temperature 1, a fresh seed a
        # reply). An eval fixes them to be repeatable. top_k is vLLM's and our server's extension
        sent = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
        self.sampling = {k: v for k, v in sent.items() if v is not None}
        if top_k:
            self.sampling["extra_body"] = {"top_k": top_k}
        # no retries: a retried stream would repeat text already shown; a short connect timeout
        # so an unreachable server is reported at once, a long read timeout for slow generation
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", max_retries=0,
                                    timeout=httpx.Timeout(timeout, connect=connect_timeout))

    @property
    def label(self) -> str:
        return f"{self.model or '?'} at {self.base_url}"

    def check(self) -> None:
        """Reach the server and settle the model name; InputError (one line) if that fails."""
        import openai

        try:
            raw = self.client.models.with_raw_response.list()  # raw: a non-JSON body must not crash us
        except openai.APIConnectionError as e:
            reason = _one_line(e.__cause__ or e) or "connection failed"
            raise InputError(f"cannot reach {self.base_url}: {reason}") from None
        except openai.APIStatusError as e:
            if e.status_code == 404 and self.model:  # a server without /models: trust --model
                return
            raise InputError(f"cannot use {self.base_url}: GET /models answered "
                             f"{e.status_code}: {_error_message(e)[0]}") from None
        served = model_ids(raw.http_response)
        if served is None:
            raise InputError(f"{self.base_url} is not an OpenAI-compatible API: GET /models answered "
                             f"{what_came(raw.http_response)}")
        if self.model is None:
            if not served:
                raise InputError(f"{self.base_url} serves no models; name one with --model")
            self.model = served[0]
        elif served and self.model not in served:
            raise InputError(f"{self.base_url} does not serve model {self.model!r} "
                             f"(it serves: {', '.join(served[:10])})")

    def stream(self, messages: list[dict], spec: ToolSpec) -> Iterator[tuple[str, object]]:
        import httpx
        import openai

        if self.model is None:
            self.check()
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=to_openai(messages), tools=tools_schema(spec),
                stream=True, **self.sampling)
        except openai.APIStatusError as e:
            raise _translate(e, e.status_code) from None
        except openai.APIConnectionError as e:
            raise BackendError(f"lost the server at {self.base_url}: {_one_line(e.__cause__ or e)}") from None
        content, calls = [], {}  # calls: stream index -> {"name": str, "arguments": [str]}
        finish = None  # the server's finish_reason: "length" is a reply cut at max_tokens
        if "text/event-stream" not in response.response.headers.get("content-type", ""):
            what = what_came(response.response)  # an HTML page or a JSON body: no event would come
            response.close()
            raise BackendError(f"the model server at {self.base_url} did not stream: POST /chat/completions "
                               f"answered {what}")
        try:
            for chunk in response:
                for choice in chunk.choices or []:  # usage-only chunks have no choices
                    finish = choice.finish_reason or finish
                    delta = choice.delta
                    if delta is None:
                        continue
                    if delta.content:
                        content.append(delta.content)
                        yield "text", delta.content
                    for tc in delta.tool_calls or []:
                        slot = calls.setdefault(tc.index, {"name": "", "arguments": []})
                        if tc.function is not None:
                            slot["name"] += tc.function.name or ""
                            slot["arguments"].append(tc.function.arguments or "")
        except openai.APIError as e:  # an error event in the stream
            raise _translate(e, getattr(e, "status_code", None)) from None
        except httpx.HTTPError as e:  # the connection dropped or timed out mid-reply
            reason = _one_line(e) or type(e).__name__
            raise BackendError(f"lost the model server mid-reply: {reason}") from None
        finally:
            response.close()  # also on Ctrl-C: closing the connection stops the server generating
        message = {"role": "assistant", "content": "".join(content)}
        if calls:
            message["tool_calls"] = [parse_call(c["name"], "".join(c["arguments"]))
                                     for _, c in sorted(calls.items())]
        yield "finish", finish  # before the message: a consumer may stop reading at the message
        yield "message", message


def _one_line(e) -> str:
    return " ".join(str(e).split())[:300]


def _error_message(e) -> tuple[str, object]:
    """(message, code) of an openai error, from the OpenAI-shaped body when there is one."""
    body = getattr(e, "body", None)  # the parsed `error` object, or the whole body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        message = getattr(e, "message", None) or str(e)
    return _one_line(message), body.get("code") if isinstance(body, dict) else None


def _translate(e, status) -> Exception:
    message, code = _error_message(e)
    if is_context_error(status, message, code):
        return ContextFull(message)
    where = f"{status}: " if status else ""
    return BackendError(f"the model server answered {where}{message}")
