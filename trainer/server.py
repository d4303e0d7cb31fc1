"""An OpenAI-compatible HTTP server for a trained checkpoint.

    trainer serve --checkpoint RUN [--port 8000]     # then any OpenAI client at http://127.0.0.1:8000/v1

    GET  /v1/models             the one model (its id: --model-name, default the run directory's name)
    GET  /health                {"status": "ok", "requests": N, "batches": M} once the model is loaded
    POST /v1/chat/completions   non-streaming, or SSE chunks ending `data: [DONE]` with "stream": true

A request goes through the token template: OpenAI messages -> records (agent.backend.from_openai)
-> template.render_prompt -> Engine.generate -> template.parse_assistant -> an OpenAI message with
`tool_calls`. The request's `tools` are not rendered: the model learned its tools from the system
prompt (nanocode.spec.render_system_prompt), which clients send as the system message. A call the
model garbled goes out with its parse error as (non-JSON) arguments, so no client runs it.
Also ignored: tool_choice, response_format, logprobs, penalties; `stop` and n > 1 are refused (400).

Requests are batched: one thread owns the Engine; it takes every request waiting (up to
max_batch) into one generate() call, whose rows decode independently with their own max_tokens,
sampling settings and seed (a seeded reply does not depend on its batch). Requests that arrive
while a batch runs wait for the next one. A client that hangs up cancels its row only. The stdlib
http.server is enough: handler threads just wait on their row's events, so an async framework
would buy nothing, and it adds no dependency.
"""

import json
import queue
import secrets
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from nanocode.common import InputError
from nanocode.openai_format import from_openai
from trainer import template
from trainer.engine import Engine, Token


class ApiError(Exception):
    """A request the server refuses, answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    sampling: dict          # Engine.generate's temperature, top_p, top_k, seed
    stream: bool
    include_usage: bool     # stream_options.include_usage: a last chunk with the token counts


def _number(body: dict, name: str, default, low, high, integer=False):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ApiError(400, f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}", name)
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}, got {value}", name)
    return value


def openai_calls(message: dict) -> list[dict]:
    """A parsed assistant message's calls in OpenAI's shape (arguments as JSON text: `{}` for a
    call without arguments, never an empty string, which clients read as invalid JSON)."""
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"],
                          "arguments": f"error: {c['error']}" if "error" in c
                          else json.dumps(c.get("args") or {}, ensure_ascii=False)}}
            for c in message.get("tool_calls", [])]


@dataclass
class _Job:
    """One request's row in a batch: the batcher puts its Token/Done events (or an exception) on
    `events`; cancel() ends the row, whether or not its batch has started."""
    req: Request
    events: queue.Queue = field(default_factory=queue.Queue)
    row: int = -1
    batch_cancelled: set | None = None   # the running batch's `cancelled` set, once batched
    gone: bool = False

    def cancel(self) -> None:
        self.gone = True
        if self.batch_cancelled is not None:
            self.batch_cancelled.add(self.row)


class ModelServer:
    """The engine, its tokenizer and the model's name; turns request bodies into replies."""

    def __init__(self, params, cfg, tok, model_name: str, max_batch: int = 32):
        self.engine, self.tok, self.seq_len, self.model_name = Engine(params, cfg, tok), tok, cfg.seq_len, model_name
        self.max_batch, self.jobs = max_batch, queue.Queue()
        self.stats = {"requests": 0, "batches": 0}
        threading.Thread(target=self._batches, daemon=True, name="nanocode-engine").start()

    def _batches(self) -> None:
        """The engine's thread: every waiting request (up to max_batch) into one generate() call."""
        while True:
            jobs = [self.jobs.get()]
            while len(jobs) < self.max_batch and not self.jobs.empty():
                jobs.append(self.jobs.get())
            self.run_batch(jobs)

    def run_batch(self, jobs: list[_Job]) -> None:
        """One generate() call over the jobs' prompts; each job's events go to its own queue."""
        cancelled: set[int] = set()
        for i, job in enumerate(jobs):
            job.row, job.batch_cancelled = i, cancelled
        cancelled |= {i for i, job in enumerate(jobs) if job.gone}  # hung up while waiting
        self.stats["batches"] += 1
        self.stats["requests"] += len(jobs)
        settings = {k: [job.req.sampling[k] for job in jobs] for k in jobs[0].req.sampling}
        try:
            for event in self.engine.generate([job.req.prompt for job in jobs],
                                              [job.req.max_tokens for job in jobs], cancelled=cancelled,
                                              **settings):
                jobs[event.row].events.put(event)
        except Exception as e:  # a bug: every waiting handler answers 500, the thread lives on
            for job in jobs:
                job.events.put(e)

    @classmethod
    def from_run(cls, run, model_name: str | None = None) -> "ModelServer":
        from trainer.checkpoint import load_model, run_name  # heavy (orbax): `import trainer.server` stays light

        params, cfg, tok, _ = load_model(run)
        return cls(params, cfg, tok, model_name or run_name(run))

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                            "owned_by": "nanocode", "max_model_len": self.seq_len}]}

    def parse(self, body) -> Request:
        """A chat completion request body -> Request; ApiError (400/404) naming what is wrong."""
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        if body.get("model", self.model_name) != self.model_name:
            raise ApiError(404, f"the model {body['model']!r} does not exist; this server serves "
                                f"{self.model_name!r}", "model", "model_not_found")
        if body.get("n") not in (None, 1):
            raise ApiError(400, f"n must be 1 (one reply per request), got {body['n']!r}", "n")
        if body.get("stop"):
            raise ApiError(400, "stop sequences are not supported; the turn ends at <|assistant_end|>", "stop")
        if "messages" not in body:
            raise ApiError(400, "messages is required", "messages")
        try:
            messages = from_openai(body["messages"])
            prompt = template.render_prompt(messages, self.tok)
        except InputError as e:
            raise ApiError(400, str(e), "messages") from None
        if len(prompt) > self.seq_len:
            raise ApiError(400, f"this model's maximum context length is {self.seq_len} tokens; the "
                                f"messages have {len(prompt)}", "messages", "context_length_exceeded")
        room = self.seq_len - len(prompt) + 1  # the last position still predicts one token
        limit = _number(body, "max_completion_tokens", None, 1, 1 << 30, integer=True)
        limit = _number(body, "max_tokens", limit, 1, 1 << 30, integer=True)
        sampling = dict(temperature=float(_number(body, "temperature", 1.0, 0, 2)),
                        top_p=float(_number(body, "top_p", 1.0, 0, 1)),
                        top_k=_number(body, "top_k", 0, 0, 1 << 30, integer=True),  # vLLM's extension
                        seed=_number(body, "seed", None, -(1 << 63), (1 << 63) - 1, integer=True))
        # no seed: a different sample every time, as OpenAI does; jax keys take 32 bits
        sampling["seed"] = secrets.randbits(32) if sampling["seed"] is None else sampling["seed"] % (1 << 32)
        options = body.get("stream_options") or {}
        return Request(prompt, min(limit or room, room), sampling, bool(body.get("stream")),
                       bool(isinstance(options, dict) and options.get("include_usage")))

    def generate(self, req: Request):
        """Yield ("text", delta) as the reply decodes, then ("end", message, finish_reason, n_tokens).

        Deltas are the growth of the parsed content, so they add up to the final content exactly;
        a trailing U+FFFD (half a multi-byte character) waits for the bytes that complete it.
        """
        ids, shown, reason = [], "", "length"
        job = _Job(req)
        self.jobs.put(job)
        try:
            while True:
                event = job.events.get()
                if isinstance(event, Exception):
                    raise event
                if not isinstance(event, Token):
                    reason = event.reason
                    break
                ids.append(event.id)
                content = template.parse_assistant(ids, self.tok)["content"].rstrip("\ufffd")
                if len(content) > len(shown) and content.startswith(shown):
                    yield "text", content[len(shown):]
                    shown = content
        finally:
            job.cancel()  # a client gone mid-reply frees its row; after Done, nothing to free
        message = template.parse_assistant(ids, self.tok)
        if len(message["content"]) > len(shown):
            yield "text", message["content"][len(shown):]
        finish = "length" if reason != "stop" else "tool_calls" if message.get("tool_calls") else "stop"
        yield "end", message, finish, len(ids)

    def _envelope(self, kind: str, rid: str) -> dict:
        return {"id": rid, "object": kind, "created": int(time.time()), "model": self.model_name}

    def _usage(self, req: Request, n: int) -> dict:
        return {"prompt_tokens": len(req.prompt), "completion_tokens": n, "total_tokens": len(req.prompt) + n}

    def completion(self, req: Request) -> dict:
        *_, (_, message, finish, n) = self.generate(req)
        reply = {"role": "assistant", "content": message["content"]}
        if message.get("tool_calls"):
            reply["tool_calls"] = openai_calls(message)
        return {**self._envelope("chat.completion", f"chatcmpl-{uuid.uuid4().hex}"),
                "choices": [{"index": 0, "message": reply, "finish_reason": finish, "logprobs": None}],
                "usage": self._usage(req, n)}

    def chunks(self, req: Request):
        """The chat.completion.chunk objects of a streamed reply, as OpenAI sends them."""
        head = self._envelope("chat.completion.chunk", f"chatcmpl-{uuid.uuid4().hex}")

        def chunk(delta, finish=None):
            return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        yield chunk({"role": "assistant", "content": ""})
        for kind, *rest in self.generate(req):
            if kind == "text":
                yield chunk({"content": rest[0]})
                continue
            message, finish, n = rest
            for i, call in enumerate(openai_calls(message)):
                yield chunk({"tool_calls": [{"index": i, **call}]})
            yield chunk({}, finish)
            if req.include_usage:
                yield {**head, "choices": [], "usage": self._usage(req, n)}


# ---------------------------------------------------------------------------------------- HTTP

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: replies carry Content-Length or are chunked
    disable_nagle_algorithm = True  # TCP_NODELAY: each small SSE chunk goes out at once
    server: "_HTTPServer"

    def log_message(self, *args):  # the one line per request comes from _log
        pass

    def _log(self, status: int, t0: float) -> None:
        if self.server.log:
            self.server.log(f"{self.command} {self.path} {status} {time.perf_counter() - t0:.2f}s")

    def _json(self, status: int, obj: dict) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> str:
        return urlsplit(self.path).path.rstrip("/").removeprefix("/v1")

    def do_GET(self):
        t0, route = time.perf_counter(), self._route()
        if route == "/models":
            status, body = 200, self.server.model.models()
        elif route == "/health":
            status, body = 200, {"status": "ok", **self.server.model.stats}
        else:
            status, body = 404, ApiError(404, f"no route GET {self.path}").body()
        self._json(status, body)
        self._log(status, t0)

    def do_POST(self):
        t0, model = time.perf_counter(), self.server.model
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            if self._route() != "/chat/completions":
                raise ApiError(404, f"no route POST {self.path}")
            try:
                body = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, f"the request body is not valid JSON: {e}") from None
            req = model.parse(body)
            if req.stream:
                return self._stream(model.chunks(req), t0)
            self._json(200, model.completion(req))
            self._log(200, t0)
        except ApiError as e:
            self._json(e.status, e.body())
            self._log(e.status, t0)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        except Exception as e:  # a bug: say so to the client and keep serving
            traceback.print_exc()
            self._json(500, ApiError(500, f"internal error: {type(e).__name__}: {e}").body())
            self._log(500, t0)

    def _stream(self, chunks, t0: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(obj) -> None:
            event = f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()

        try:
            try:
                for chunk in chunks:
                    send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as e:  # headers are out: report it as an error event (openai raises APIError)
                traceback.print_exc()
                send(ApiError(500, f"internal error: {type(e).__name__}: {e}").body())
            send("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self._log(200, t0)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # closing the generator (below) stops the engine
        finally:
            chunks.close()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, model: ModelServer, log=None):
        self.model, self.log = model, log
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address):
        # a client that hangs up (a closed keep-alive connection, a cancelled stream) is routine:
        # socketserver would print a traceback for it
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def http_server(model: ModelServer, host: str = "127.0.0.1", port: int = 0, log=None) -> _HTTPServer:
    """Bind (port 0: a free one) without serving yet; `.url` is the base URL, `.serve_forever()` serves."""
    try:
        return _HTTPServer((host, port), model, log)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(checkpoint, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None, log=print) -> None:
    """`trainer serve`: load the run's latest checkpoint and serve it until Ctrl-C."""
    model = ModelServer.from_run(checkpoint, model_name)
    httpd = http_server(model, host, port, log)
    log(f"serving {model.model_name!r} ({model.seq_len}-token context) at {httpd.url}  (Ctrl-C stops)")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        log("stopped")
    finally:
        httpd.server_close()


def serve_for_parent(run, model_name: str | None = None) -> None:
    """`trainer serve --child`: a free loopback port, `{"url", "model"}` on stdout once listening,
    and an exit when stdin closes, so the server never outlives the process that started it
    (however that one ends)."""
    url, name = serve_in_background(run, model_name)
    print(json.dumps({"url": url, "model": name}), flush=True)
    sys.stdin.read()  # EOF: the parent closed the pipe or died


def serve_in_background(run, model_name: str | None = None) -> tuple[str, str]:
    """Serve a run on a free loopback port from a daemon thread: (base URL, model name)."""
    model = ModelServer.from_run(run, model_name)
    httpd = http_server(model)
    threading.Thread(target=httpd.serve_forever, daemon=True, name="nanocode-model-server").start()
    return httpd.url, model.model_name
