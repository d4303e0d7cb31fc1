"""Model server benchmark: what HTTP + JSON + SSE cost on top of the Engine.

`trainer serve` runs in a subprocess (as deployed); the openai client asks it for greedy replies.
The same prompt ids go to an Engine in this process, in turns with the HTTP requests. Per prompt,
medians: requests/s (non-streaming, one after another: the server answers one at a time anyway),
time to first token (streamed: the first content delta; direct: the first Token event) and the
ratio of seconds per request, HTTP / direct. Then concurrency: N clients at once (the server
batches what arrives together into one engine call) against the same N requests one after
another, in requests/s and decoded tokens/s.

Without --checkpoint it trains a throwaway run first (depth 4, seq 512, vocab 512, 2 steps): its
replies are noise, which is fine for timing; every reply runs to max_tokens unless it hits a stop.

    .venv/bin/python bench/server.py [--checkpoint RUN] [--depth 4] [--max-tokens 32] [--requests 20]
                                     [--clients 1,8,32]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]

import httpx  # noqa: E402
import jax  # noqa: E402
import openai  # noqa: E402

from nanocode.spec import load_soul, load_tools, render_system_prompt  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.tiny_run import train_tiny_run  # noqa: E402
from trainer import checkpoint, template  # noqa: E402
from trainer.engine import Engine, Token  # noqa: E402


def make_run(root: Path, depth: int) -> Path:
    return train_tiny_run(root, seq_len=512, steps=2, depth=depth)


def start_server(run: Path):
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "trainer"), "serve", "--checkpoint", str(run),
                             "--port", str(port), "--model-name", "bench"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    while True:
        if proc.poll() is not None:
            sys.exit("trainer serve exited")
        try:
            httpx.get(f"{url}/health")
            return proc, url
        except httpx.ConnectError:
            time.sleep(0.2)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(client, engine: Engine, messages, prompt, max_tokens: int, n: int) -> dict:
    """Median seconds per request and to the first token, HTTP and direct, taken in turns so
    that load from other jobs on the machine hits both sides alike."""
    ask = dict(model="bench", messages=messages, temperature=0, max_tokens=max_tokens)

    def http_first():  # the first content delta (the role chunk comes before generation starts)
        with client.chat.completions.create(stream=True, **ask) as stream:
            next(c for c in stream if c.choices and (c.choices[0].delta.content or c.choices[0].finish_reason))

    def direct_first():
        events = engine.generate([prompt], max_tokens)
        next(e for e in events if isinstance(e, Token))
        events.close()

    tokens = (client.chat.completions.create(**ask).usage.completion_tokens,  # also compiles both sides
              len(engine.complete([prompt], max_tokens)[0]))
    assert tokens[0] == tokens[1], tokens  # the same greedy reply both ways
    runs = {"http": lambda: client.chat.completions.create(**ask), "direct": lambda: engine.complete([prompt], max_tokens),
            "http_first": http_first, "direct_first": direct_first}
    times = {k: [] for k in runs}
    for _ in range(n):
        for k, fn in runs.items():
            times[k].append(timed(fn))
    return {"tokens": tokens[0], **{k: statistics.median(v) for k, v in times.items()}}


def concurrent(client, messages, max_tokens: int, clients: int) -> float:
    """Seconds for `clients` requests sent at once, each on its own thread."""
    from concurrent.futures import ThreadPoolExecutor

    ask = dict(model="bench", messages=messages, temperature=0, max_tokens=max_tokens)
    with ThreadPoolExecutor(clients) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda _: client.chat.completions.create(**ask), range(clients)))
        return time.perf_counter() - t0


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return (f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()}, "
            f"load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, help="a run directory [default: train a throwaway one]")
    ap.add_argument("--depth", type=int, default=4, help="of the throwaway run")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--clients", default="1,8,32", help="concurrent clients to compare")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="bench-server-")
    run = args.checkpoint or make_run(Path(tmp.name), args.depth)
    proc, url = start_server(run)
    params, cfg, tok, _ = checkpoint.load_model(run)
    engine = Engine(params, cfg, tok)
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    system = render_system_prompt(load_soul(None), load_tools(REPO / "tests/fixtures/spec/tools_small.yaml"))
    prompts = {"short chat": [{"role": "user", "content": "def add(a, b):"}],
               "agent system prompt + task": [{"role": "system", "content": system},
                                              {"role": "user", "content": "fix the failing test in calc.py"}]}
    rows, together = [], []
    try:
        for name, messages in prompts.items():
            prompt = template.render_prompt(messages, tok)
            if len(prompt) + args.max_tokens > cfg.seq_len:
                continue
            rows.append((name, len(prompt), measure(client, engine, messages, prompt, args.max_tokens,
                                                    args.requests)))
        messages = prompts["short chat"]
        for n in map(int, args.clients.split(",")):
            concurrent(client, messages, args.max_tokens, n)  # warm the batch shapes
            one_by_one = sum(concurrent(client, messages, args.max_tokens, 1) for _ in range(n))
            together.append((n, one_by_one, min(concurrent(client, messages, args.max_tokens, n) for _ in range(2))))
    finally:
        proc.terminate()
        proc.wait()

    print(f"\nd{cfg.n_layer}, d_model {cfg.d_model}, seq {cfg.seq_len}, vocab {cfg.vocab_size}, greedy, "
          f"max_tokens {args.max_tokens}, {args.requests} requests each; {machine()}\n")
    print("| prompt | prompt tokens | reply tokens | HTTP req/s | direct req/s | HTTP TTFT ms | direct TTFT ms "
          "| time ratio HTTP/direct |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n_prompt, m in rows:
        print(f"| {name} | {n_prompt} | {m['tokens']} | {1 / m['http']:.1f} | {1 / m['direct']:.1f} "
              f"| {m['http_first'] * 1e3:.1f} | {m['direct_first'] * 1e3:.1f} | {m['http'] / m['direct']:.2f}x |")
    print("\n| clients | one after another req/s | at once req/s | at once tok/s | speed-up |")
    print("|---|---|---|---|---|")
    for n, serial, parallel in together:
        print(f"| {n} | {n / serial:.1f} | {n / parallel:.1f} | {n * args.max_tokens / parallel:,.0f} | "
              f"{serial / parallel:.1f}x |")

if __name__ == "__main__":
    main()
