"""Agentic eval throughput: held-out HumanEval tasks per second through the agent loop.

Three models behind an OpenAI-compatible endpoint, the same tasks:
  solver   a scripted loopback server (tests/scripted_server.py) answering like tests/test_evals.py's
           solver: a failing Read, a Read, an Edit to the canonical solution, a Bash run, a reply
           (5 model turns, 4 tool calls a task): the harness's own cost (HTTP, tools, hidden tests)
  garbage  the same server answering one malformed call, then text (2 turns, 2 calls)
  tiny     a throwaway checkpoint (depth --depth, seq 512, vocab 512, 3 steps) served in-process,
           --max-steps turns of up to --max-tokens tokens each, tools_small.yaml (the default
           spec's system prompt does not fit a 512-token context)
Task building (the bug injection's subprocesses) is timed apart.

    .venv/bin/python bench/evals.py [--limit 10] [--depth 1] [--max-tokens 64] [--max-steps 4]
"""

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evals import agentic  # noqa: E402
from tests.scripted_server import ScriptedServer  # noqa: E402
from tests.test_evals import solver  # noqa: E402


def garbage(body):
    if sum(m["role"] == "assistant" for m in body["messages"]) == 0:
        return {"text": "@@", "tool_calls": [{"name": "Edit", "arguments": "{not json"}]}
    return {"text": "zzz"}


def tiny_run(root: Path, depth: int) -> Path:
    from tests.tiny_run import train_tiny_run

    return train_tiny_run(root, seq_len=512, steps=3, depth=depth, corpus_chars=600_000, tokenizer_chars=300_000)


def row(name, r, extra=""):
    s = r["summary"]
    print(f"| {name} | {s['tasks']} | {r['tasks_per_s']:.2f} | {r['seconds'] / s['tasks']:.2f} | "
          f"{s['calls_per_task']:.1f} | {s['pass_rate']:.0%} | {s['valid_call_rate'] or 0:.0%} | {extra} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=4)
    args = ap.parse_args()
    import jax

    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__} ({jax.default_backend()})")
    t0 = time.perf_counter()
    tasks = agentic.build_tasks(limit=None)
    print(f"building all {len(tasks)} tasks: {time.perf_counter() - t0:.1f}s")
    print("| model | tasks | tasks/s | s/task | calls/task | pass | valid calls | notes |\n|---|---|---|---|---|---|---|---|")
    for name, respond in (("solver (scripted)", solver), ("garbage (scripted)", garbage)):
        with ScriptedServer(respond=respond) as server:
            row(name, agentic.evaluate(server.base_url, limit=args.limit))
    from trainer.server import serve_in_background

    with tempfile.TemporaryDirectory() as d:
        run = tiny_run(Path(d), args.depth)
        url, name = serve_in_background(run)
        r = agentic.evaluate(url, name, limit=args.limit, tools=REPO / "tests/fixtures/spec/tools_small.yaml",
                             max_tokens=args.max_tokens, max_steps=args.max_steps)
        statuses = ", ".join(f"{k} {v}" for k, v in r["summary"]["statuses"].items())
        row(f"tiny d{args.depth} checkpoint", r, f"max_tokens {args.max_tokens}, max_steps {args.max_steps}; {statuses}")


if __name__ == "__main__":
    main()
