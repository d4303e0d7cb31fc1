"""Factory throughput: offline build rows/s; the store's cost per row; builds against a loopback
OpenAI-compatible server with a fixed per-request latency at concurrency 1, 16 and 64 (speed-up
against the ideal); a cached rebuild (--new) vs the first.

    .venv/bin/python bench/factory.py [--copies 10] [--latency 0.2] [--concurrency 1,16,64]

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


def serve(latency: float, conn) -> None:
    """The model server, in its own process: its threads must not share the build's GIL."""
    server = ScriptedServer(respond=lambda body: respond(body, latency=latency))
    conn.send(server.base_url)
    server._httpd.serve_forever()


def timed(home: Path, **kw) -> tuple[float, dict]:
    os.environ["NANOCODE_HOME"] = str(home)
    start = time.perf_counter()
    summary = build(console=Console(file=open(os.devnull, "w")), **kw)
    return time.perf_counter() - start, summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=10, help="offline: the seed file repeated this often")
    ap.add_argument("--server-copies", type=int, default=6, help="server builds: the seed file repeated")
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    ap.add_argument("--concurrency", default="1,16,64")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nanocode-bench-factory-"))
    import openai  # noqa: F401  (imported once up front so no timed build pays for it)

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
