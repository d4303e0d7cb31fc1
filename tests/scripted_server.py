"""A loopback OpenAI-compatible server that answers from a script, for tests.

    with ScriptedServer([{"text": "hi"}]) as server:      # server.base_url, server.requests
        ...

Each chat completion request takes the next reply of the script, in order:
    {"text": "...", "tool_calls": [{"name": "Read", "arguments": {"file_path": "a.py"}}]}
        text and/or tool calls; `arguments` is a dict (sent as JSON) or a string sent as is
        (so a test can send invalid JSON). Streamed the way OpenAI streams: text in small
        deltas, each tool call as an index/id/name chunk and its arguments split over several.
    {"error": {"status": 400, "message": "...", "code": "context_length_exceeded"}}
        an HTTP error with an OpenAI-shaped error body.
    "delay": seconds between streamed chunks (optional, any reply), for slow generations.
Fault injection (the factory's retry tests):
    {"status": 429, "retry_after": 1}  an HTTP error (any status) with an OpenAI-shaped body,
                                       and a Retry-After header when retry_after is given
    {"latency": 0.05, ...}             wait before answering (any reply): slow servers, timeouts
    {"empty": true}                    a 200 whose body has no choices
    {"body_error": "overloaded"}       a 200 whose body is an error object
    {"html": true}                     a 200 with an HTML page (a proxy or web server, not an API);
                                       ScriptedServer(html_models=True) answers GET /models so too
    {"text": "...", "finish": "length"} a reply cut off by the token limit
    {"text": "...", "usage": [in, out]} token counts for the usage field
When the script runs out, the server asks `respond(body)` for the reply if one was given
(a stand-in model answering by the request's content); otherwise it answers 500 "script
exhausted", which tests notice.

Every request body is kept in `server.requests` (parsed JSON), so a test can assert what the
model was sent. Standalone, for poking at a terminal by hand:
    python tests/scripted_server.py script.json [--log requests.jsonl]
prints the port on the first line, then serves until killed.
"""

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "scripted"


def _chunk(delta: dict, finish=None) -> dict:
    return {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 0,
            "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _arguments(call: dict) -> str:
    args = call.get("arguments", {})
    return args if isinstance(args, str) else json.dumps(args)


def _pieces(text: str, n: int = 3) -> list[str]:
    """Split text into about n pieces (at least one), as a server's deltas would."""
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def stream_chunks(reply: dict) -> list[dict]:
    """The SSE chunks (JSON objects) of one reply, in the real OpenAI streaming shape."""
    chunks = [_chunk({"role": "assistant", "content": ""})]
    for word in re.findall(r"\s*\S+\s*|\s+", reply.get("text", "")):
        chunks.append(_chunk({"content": word}))
    for i, call in enumerate(reply.get("tool_calls", [])):
        chunks.append(_chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                              "function": {"name": call["name"], "arguments": ""}}]}))
        for piece in _pieces(_arguments(call)):
            chunks.append(_chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
    chunks.append(_chunk({}, "tool_calls" if reply.get("tool_calls") else "stop"))
    return chunks


def completion(reply: dict) -> dict:
    """The non-streamed answer for one reply."""
    message = {"role": "assistant", "content": reply.get("text", "")}
    if reply.get("tool_calls"):
        message["tool_calls"] = [{"id": f"call_{i}", "type": "function",
                                  "function": {"name": c["name"], "arguments": _arguments(c)}}
                                 for i, c in enumerate(reply["tool_calls"])]
    if reply.get("empty"):
        return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": 0, "model": MODEL, "choices": []}
    if reply.get("body_error"):
        return {"error": {"message": reply["body_error"], "type": "server_error", "code": 502}}
    finish = reply.get("finish") or ("tool_calls" if reply.get("tool_calls") else "stop")
    tokens_in, tokens_out = reply.get("usage", (0, 0))
    return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                      "total_tokens": tokens_in + tokens_out}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 refuses connections from a concurrent client


class ScriptedServer:
    def __init__(self, script=(), log_path=None, respond=None, html_models=False):
        self.script, self.respond, self.html_models = list(script), respond, html_models
        self.requests: list[dict] = []
        self.log_path = log_path
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler())
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = None

    def add(self, *replies) -> None:
        with self._lock:
            self.script.extend(replies)

    def _next(self, body: dict):
        with self._lock:
            self.requests.append(body)
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(body) + "\n")
            if self.script:
                return self.script.pop(0)
        return self.respond(body) if self.respond else None

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: pytest output stays readable
                pass

            def _json(self, status: int, obj, headers=()) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _html(self) -> None:
                data = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if server.html_models:
                    self._html()
                elif self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [
                        {"id": MODEL, "object": "model", "created": 0, "owned_by": "tests"}]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                reply = server._next(body)
                if reply is None:
                    return self._json(500, {"error": {"message": "script exhausted",
                                                      "type": "server_error"}})
                if reply.get("latency"):
                    time.sleep(reply["latency"])
                if reply.get("html"):
                    return self._html()
                if "status" in reply:
                    retry = [("Retry-After", str(reply["retry_after"]))] if "retry_after" in reply else []
                    return self._json(reply["status"], {"error": {"message": f"injected {reply['status']}",
                                                                  "type": "server_error", "code": None}}, retry)
                if "error" in reply:
                    err = reply["error"]
                    return self._json(err.get("status", 400), {"error": {
                        "message": err.get("message", "bad request"),
                        "type": "invalid_request_error", "param": None, "code": err.get("code")}})
                if not body.get("stream"):
                    try:
                        return self._json(200, completion(reply))
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the client gave up (its timeout): nothing left to do
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                try:
                    for chunk in stream_chunks(reply):
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        if reply.get("delay"):
                            time.sleep(reply["delay"])
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up (Ctrl-C): nothing left to do

        return Handler

    def start(self) -> "ScriptedServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    script = json.loads(open(argv[0], encoding="utf-8").read())
    log = argv[argv.index("--log") + 1] if "--log" in argv else None
    server = ScriptedServer(script, log_path=log)
    print(server.port, flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
