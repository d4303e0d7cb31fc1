"""Where the agent's replies come from: a model behind an interface the session loop drives.

A backend has `label` (shown in the banner), `check()` (raise InputError with one line if it
cannot serve) and `stream(messages, spec)`, which yields `("text", delta)` while the reply is
generated and finally `("message", assistant_message)` in the record format of DESIGN.md
(`{"role": "assistant", "content", "tool_calls": [{"name", "args"}]}`). It raises `ContextFull`
when the conversation no longer fits and `BackendError` for any other failure mid-session.

Only `OpenAIBackend` (any OpenAI-compatible server: ours, vLLM, ...) exists: a local checkpoint
is served in-process by `trainer.server` and reached through it too, so there is one path.

`to_openai` and `tools_schema` convert our records and tool spec to the OpenAI chat format and
`from_openai` converts back; they are pure (no UI, no network) because the server uses them.
"""

import json
from collections.abc import Iterator
from typing import Protocol
from urllib.parse import urlsplit

from agent.common import InputError
from agent.spec import ToolSpec


class ContextFull(Exception):
    """The conversation is longer than the model's context window."""


class BackendError(Exception):
    """The model server failed mid-session (one line for the user; the session goes on)."""


class Backend(Protocol):
    label: str

    def check(self) -> None: ...

    def stream(self, messages: list[dict], spec: ToolSpec) -> Iterator[tuple[str, object]]: ...


# --------------------------------------------------------------------- format conversion

_JSON_TYPES = {"string": "string", "int": "integer", "bool": "boolean"}


def tools_schema(spec: ToolSpec) -> list[dict]:
    """The tool spec as OpenAI `tools=`: one function per tool, its args as a JSON schema."""
    out = []
    for tool in spec.tools:
        params = {"type": "object",
                  "properties": {a.name: {"type": _JSON_TYPES[a.type], "description": a.description}
                                 for a in tool.args},
                  "required": [a.name for a in tool.args if a.required]}
        out.append({"type": "function",
                    "function": {"name": tool.name, "description": tool.description,
                                 "parameters": params}})
    return out


def call_id(message_index: int, call_index: int) -> str:
    # records carry no call ids; derive stable ones from positions. 9 alphanumerics because
    # some vLLM tool parsers (Mistral's) reject any other shape.
    return f"c{message_index:04d}{call_index:04d}"[-9:]


def to_openai(messages: list[dict]) -> list[dict]:
    """Record messages -> OpenAI chat messages (tool calls get ids, results point back at them)."""
    out, pending = [], []  # pending: ids of calls not answered yet, in order
    for i, m in enumerate(messages):
        role, content = m["role"], m.get("content") or ""
        if role == "tool":
            tid = pending.pop(0) if pending else call_id(i, 0)
            out.append({"role": "tool", "tool_call_id": tid, "content": content})
        elif role == "assistant" and m.get("tool_calls"):
            calls = []
            for j, c in enumerate(m["tool_calls"]):
                calls.append({"id": call_id(i, j), "type": "function",
                              "function": {"name": c["name"],
                                           "arguments": json.dumps(c.get("args") or {},
                                                                   ensure_ascii=False)}})
            pending = [c["id"] for c in calls]
            out.append({"role": "assistant", "content": content or None, "tool_calls": calls})
        else:
            out.append({"role": role, "content": content})
    return out


def _text(content, i: int) -> str:
    """OpenAI content (a string, null, or a list of text parts) as one string."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        kinds = {p.get("type") for p in content} - {"text"}
        if kinds:
            raise InputError(f"messages[{i}]: only text content is supported, got {sorted(map(str, kinds))}")
        return "".join(str(p.get("text", "")) for p in content)
    raise InputError(f"messages[{i}]: content must be a string or a list of text parts")


def from_openai(messages) -> list[dict]:
    """OpenAI chat messages -> record messages: the inverse of `to_openai`.

    A `tool` message gets the name of the call its `tool_call_id` answers. Raises InputError
    naming the message for what our template cannot hold (unknown roles, non-text content,
    arguments that are not a JSON object of plain values, a result answering no call).
    """
    if not isinstance(messages, list) or not messages:
        raise InputError("messages must be a non-empty list")
    out, calls = [], {}  # calls: id -> name of every call not answered yet
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role == "developer":  # OpenAI's newer name for the system message
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise InputError(f"messages[{i}]: unknown role {role!r}")
        content = _text(m.get("content"), i)
        if role == "tool":
            tid = m.get("tool_call_id")
            if tid not in calls:
                raise InputError(f"messages[{i}]: tool_call_id {tid!r} answers no tool call")
            out.append({"role": "tool", "name": calls.pop(tid), "content": content})
            continue
        message = {"role": role, "content": content}
        if role == "assistant" and m.get("tool_calls"):
            message["tool_calls"] = []
            for j, c in enumerate(m["tool_calls"]):
                function = c.get("function") if isinstance(c, dict) else None
                if not isinstance(function, dict):
                    raise InputError(f"messages[{i}].tool_calls[{j}]: needs a function with name and arguments")
                call = parse_call(function.get("name"), function.get("arguments"))
                if "error" in call:
                    raise InputError(f"messages[{i}].tool_calls[{j}]: {call['error']}")
                calls[c.get("id")] = call["name"]
                message["tool_calls"].append(call)
        out.append(message)
    return out


def parse_call(name, arguments) -> dict:
    """One OpenAI function call (name, JSON `arguments` text) -> a record call.

    Never raises: a call that cannot be used keeps what could be read and carries an `error`
    (the session answers it with that error, so the model sees what went wrong). Args stay
    JSON scalars so the record validates and renders.
    """
    if not (isinstance(name, str) and name):
        # kept in the history under a placeholder name, which parses on the way back (our server
        # gets the session's whole history: refusing it would end the session)
        return {"name": "invalid", "args": {}, "error": "tool call has no name"}
    call = {"name": name, "args": {}}
    text = arguments if isinstance(arguments, str) else ""
    try:
        args = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        call["error"] = f"{call['name']} arguments are not valid JSON ({e.msg} at char {e.pos})"
        return call
    if not isinstance(args, dict):
        call["error"] = f"{call['name']} arguments must be a JSON object, got {type(args).__name__}"
        return call
    bad = []
    for key, value in args.items():
        if value is None or isinstance(value, (str, bool, int, float)):
            call["args"][key] = value
        else:  # lists/objects cannot be rendered as one argument value: keep them as text
            call["args"][key] = json.dumps(value, ensure_ascii=False)
            bad.append(key)
    if bad:
        call["error"] = f"{call['name']} argument(s) {', '.join(map(repr, bad))} must be plain values"
    return call


def is_context_error(status: int | None, message: str, code=None) -> bool:
    """Servers word it differently (OpenAI, vLLM, llama.cpp); all say context, length or tokens."""
    if code == "context_length_exceeded":
        return True
    text = message.lower()
    return status in (400, 413, None) and any(w in text for w in ("context", "length", "tokens"))


# ------------------------------------------------------------------------------- backend

def _normalize_url(url: str) -> str:
    # the OpenAI client appends `/chat/completions` to the base; a bare `host:port` means `/v1`
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url


class OpenAIBackend:
    """A model behind an OpenAI-compatible `/v1/chat/completions` (streamed, with tools)."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0, connect_timeout: float = 5.0, max_tokens: int | None = None):
        import httpx
        import openai  # here, not at module top: the server and tests import the pure functions

        self.base_url = _normalize_url(base_url)
        self.model = model
        self.max_tokens = max_tokens
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
            served = [m.id for m in self.client.models.list()]
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            reason = _one_line(cause) or "connection failed"
            raise InputError(f"cannot reach {self.base_url}: {reason}") from None
        except openai.APIStatusError as e:
            if e.status_code == 404 and self.model:  # a server without /models: trust --model
                return
            raise InputError(f"cannot use {self.base_url}: GET /models answered "
                             f"{e.status_code}: {_error_message(e)[0]}") from None
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
        extra = {"max_tokens": self.max_tokens} if self.max_tokens else {}
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=to_openai(messages), tools=tools_schema(spec),
                stream=True, **extra)
        except openai.APIStatusError as e:
            raise _translate(e, e.status_code) from None
        except openai.APIConnectionError as e:
            raise BackendError(f"lost the server at {self.base_url}: {_one_line(e.__cause__ or e)}") from None
        content, calls = [], {}  # calls: stream index -> {"name": str, "arguments": [str]}
        try:
            for chunk in response:
                for choice in chunk.choices or []:  # usage-only chunks have no choices
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
