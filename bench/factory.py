"""Factory throughput: offline build rows/s; the store's cost per row; builds against a loopback
OpenAI-compatible server with a fixed per-request latency at concurrency 1, 16 and 64 (speed-up
against the ideal); a cached rebuild (--new) vs the first. And (--part emitted) what the model
must write per row: the default seeds built through the server with the writers' prompts of
today (prose slots; scenario steps) and of before (bench/old_prompts.py: the whole conversation
re-emitted), characters and server-reported tokens of the writer replies against the assistant
prose of the final rows, pass rates and parse failures, all in the same run.

    .venv/bin/python bench/factory.py [--part all|throughput|emitted] [--copies 10] [--latency 0.2]
                                      [--concurrency 1,16,64]

The server is tests/scripted_server.py (in a child process) answering like tests/fake_model.py (generate, revise,
judge: about 3 calls per row). Each build runs in a fresh NANOCODE_HOME under a temp dir.
"""

import argparse
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402

from factory.build import build  # noqa: E402
from tests.fake_model import respond  # noqa: E402
from tests.scripted_server import ScriptedServer  # noqa: E402


def seeds(directory: Path, copies: int) -> Path:
    rows = [json.loads(line) for line in (REPO / "factory/seeds/coding.jsonl").read_text().splitlines()]
    path = directory / f"seeds-x{copies}.jsonl"
    with open(path, "w") as f:
        for c in range(copies):
            for r in rows:
                f.write(json.dumps({**r, "id": f"{r['id']}-{c}"}) + "\n")
    return path


def config(directory: Path, seed_path: Path) -> Path:
    text = (REPO / "factory/configs/default.yaml").read_text()
    local = ("source:\n  name: local\n  path: factory/seeds/coding.jsonl\n"  # the default mixes two files
             "  columns: {id: id, instruction: instruction, answer: answer, workspace: workspace}\n")
    text = re.sub(r"(?ms)^source:.*?^(?=converter:)", lambda m: local, text).replace(
        "path: factory/seeds/coding.jsonl", f"path: {seed_path}")
    path = directory / f"{seed_path.stem}.yaml"
    path.write_text(text + "dedup: false                            # the copies are duplicates on purpose\n")
    return path


def serve(latency: float, conn, answer=respond) -> None:
    """The model server, in its own process: its threads must not share the build's GIL."""
    server = ScriptedServer(respond=lambda body: answer(body, latency=latency))
    conn.send(server.base_url)
    server._httpd.serve_forever()


def timed(home: Path, **kw) -> tuple[float, dict]:
    os.environ["NANOCODE_HOME"] = str(home)
    start = time.perf_counter()
    summary = build(console=Console(file=open(os.devnull, "w")), **kw)
    return time.perf_counter() - start, summary


def emitted(home: Path) -> dict:
    """Per source: the writer replies' characters and tokens per row against the final rows' prose."""
    import duckdb

    with duckdb.connect(str(home / "factory.duckdb"), read_only=True) as db:
        rows = db.execute(
            "SELECT s.source, s.messages, s.attempt, list(l.attempt), list(json_extract_string(c.reply, '$.text')), "
            "list(l.tokens_out) FROM sft s JOIN ledger l ON l.input_id = s.input_id AND l.purpose IN ('generate', "
            "'revise') AND l.outcome IN ('ok', 'cached') JOIN llm_cache c ON c.key = l.key GROUP BY ALL").fetchall()
    out = {}
    for source, messages, final, attempts, texts, tokens in rows:
        messages = json.loads(messages)
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prose = sum(len(m.get("content") or "") for m in messages[first:] if m["role"] == "assistant")
        last = attempts.index(final)
        for key in (source, "all"):
            o = out.setdefault(key, {"prose": [], "final": [], "total": [], "tokens": []})
            o["prose"].append(prose)
            o["final"].append(len(texts[last]))
            o["total"].append(sum(len(t) for t in texts))
            o["tokens"].append(tokens[last])
    return out


def emitted_part(tmp: Path, latency: float, url: str | None = None, model: str = "scripted", limit=None) -> None:
    """The default seeds through the server: prompts of today (structured auto and off) vs before.
    `url`: a real server (e.g. llama.cpp's) instead of the scripted one, `limit` inputs of the mix."""
    import statistics

    import yaml

    from bench.old_prompts import respond as answer  # the old prompts answered in their shape too

    old = {"generator": {"name": "bench.old_prompts:OldWriter", "temperature": 0.2, "max_tokens": 4096},
           "reviser": {"name": "bench.old_prompts:OldReviser"}}
    variants = [("before: whole conversation", old, "off"), ("today: prose slots / steps, json_schema", {}, "auto"),
                ("today, structured off (fenced replies)", {}, "off")]
    server = None
    if url is None:
        parent, child = multiprocessing.Pipe()
        server = multiprocessing.get_context("fork").Process(target=serve, args=(latency, child, answer), daemon=True)
        server.start()
        url = parent.recv()
    results = []
    try:
        for name, stages, structured in variants:
            cfg = tmp / f"emitted-{len(results)}.yaml"
            data = yaml.safe_load((REPO / "factory/configs/default.yaml").read_text())
            cfg.write_text(yaml.safe_dump({**data, **stages}))
            home = tmp / f"emitted-{len(results)}"
            backend = {"base_url": url, "model": model, "concurrency": 16 if server else 2, "structured": structured}
            secs, s = timed(home, config=cfg, backend_overrides=backend, limit=limit)
            results.append((name, s, emitted(home), secs))
    finally:
        if server:
            server.kill()
    med = statistics.median
    print("| writers' prompts | source | rows | median prose chars | median emitted chars (final attempt) | ratio |"
          " all attempts, median | ratio | median tokens out (final) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, s, by_source, secs in results:
        for source, o in sorted(by_source.items(), key=lambda kv: (kv[0] == "all", kv[0])):
            print(f"| {name} | {source} | {len(o['prose'])} | {med(o['prose']):.0f} | {med(o['final']):.0f} | "
                  f"{med(o['final']) / med(o['prose']):.2f}x | {med(o['total']):.0f} | "
                  f"{med(o['total']) / med(o['prose']):.2f}x | {med(o['tokens']):.0f} |")
    print("\n| writers' prompts | sft rows | pass rate | first-try pass rate | writer replies | parse failure rate |"
          " llm requests | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s, _, secs in results:
        print(f"| {name} | {s['sft rows']} | {s['pass rate']} | {s['first-try pass rate']} | {s['writer replies']} | "
              f"{s['parse failure rate']:.2%} | {s['llm requests']} | {secs:.1f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=10, help="offline: the seed file repeated this often")
    ap.add_argument("--server-copies", type=int, default=6, help="server builds: the seed file repeated")
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--part", choices=("all", "throughput", "emitted"), default="all")
    ap.add_argument("--base-url", help="emitted: this server instead of the scripted one [default: scripted]")
    ap.add_argument("--model", default="scripted", help="emitted: the model the --base-url serves")
    ap.add_argument("--limit", type=int, help="emitted: the first N inputs of the default mix [default: all]")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nanocode-bench-factory-"))
    import openai  # noqa: F401  (imported once up front so no timed build pays for it)
    if args.part in ("all", "emitted"):
        emitted_part(tmp, 0.0, args.base_url, args.model, args.limit)
        if args.part == "emitted":
            return

    rows = []
    cfg = config(tmp, seeds(tmp, args.copies))
    secs, s = timed(tmp / "offline", config=cfg)
    rows.append(("offline (converter + rules)", s["inputs done"], 0, 1, secs))

    cfg = config(tmp, seeds(tmp, args.server_copies))
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("fork").Process(target=serve, args=(args.latency, child), daemon=True)
    server.start()
    url = parent.recv()
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
        for conc in levels:
            backend = {"base_url": url, "model": "scripted", "concurrency": conc}
            secs, s = timed(tmp / f"c{conc}", config=cfg, backend_overrides=backend)
            rows.append((f"server, {args.latency * 1000:.0f} ms/request", s["inputs done"], s["llm requests"], conc, secs))
        secs, s = timed(tmp / f"c{conc}", config=cfg, backend_overrides=backend, new=True)
        rows.append(("cached rebuild (--new)", s["inputs done"], s["cache hits"], conc, secs))
        secs, s = timed(tmp / f"c{conc}", config=cfg, backend_overrides=backend)
        assert s["up_to_date"]
        rows.append(("unchanged rebuild (up to date)", s["inputs done"], 0, 16, secs))
    finally:
        server.kill()

    print("| build | rows | LLM calls (cached) | concurrency | seconds | rows/s |")
    print("|---|---|---|---|---|---|")
    for name, n, calls, conc, secs in rows:
        print(f"| {name} | {n} | {calls} | {conc} | {secs:.2f} | {n / secs:.1f} |")
    first = rows[1]
    for name, n, calls, conc, secs in rows[2:1 + len(levels)]:
        print(f"\nconcurrency {conc} vs {first[3]}: {first[4] / secs:.1f}x faster ({first[4] / secs / conc:.0%} of the "
              f"ideal {conc}x)", end="")
    last, cached = rows[len(levels)][4], rows[1 + len(levels)][4]
    print(f"\ncached rebuild: {cached:.2f} s vs {last:.2f} s first build ({last / cached:.1f}x)")
    print(f"store: {store_cost(tmp / 'offline') * 1e3:.2f} ms per row to commit (Parquet parts + catalog)")


def store_cost(home: Path, repeats: int = 5) -> float:
    """Seconds per row to commit a built version's rows again, in chunks of 16, into a new version."""
    from factory.store import Store

    store = Store(home)
    rows = {kind: store.read_rows(store.resolve("latest"), kind) for kind in ("sft", "pairs")}
    n = len(rows["sft"]) + len(rows["pairs"])
    start = time.perf_counter()
    for r in range(repeats):
        v = store.create_version({"fingerprint": f"bench-{r}", "soul_sha256": "", "tools_sha256": "",
                                  "config_sha256": "", "inputs_sha256": "", "code_version": "", "config": {}})
        for i in range(0, max(len(rows["sft"]), len(rows["pairs"])), 16):
            store.commit_chunk(v, {k: [{kk: vv for kk, vv in row.items() if kk != "version"} for row in rs[i:i + 16]]
                                   for k, rs in rows.items()}, [])
    store.close()
    return (time.perf_counter() - start) / (repeats * n)


if __name__ == "__main__":
    main()
