"""`factory view` page latency on a synthetic 100k-row version.

Builds a small offline version, then a temp store whose version holds N copies of its sft
rows (fresh ids/input ids), committed through Store.commit_chunk in chunks of 10k. Then
times, through the Flask test client (no network), the rows table (first page, a deep page,
a filtered page, a text search) and a conversation page, against the naive way: load every
row of the version (Store.read_rows) and slice a page in Python.

  .venv/bin/python bench/view.py [--rows 100000]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ms(fn, repeat=5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nanocode-bench-view-"))
    os.environ["NANOCODE_HOME"] = str(tmp / "seed")
    from rich.console import Console

    from factory.build import build
    from factory.store import Store
    from factory.view import create_app

    build(console=Console(file=open(os.devnull, "w")), limit=40)
    src = Store(tmp / "seed", read_only=True)
    base = src.read_rows(1, "sft")
    src.db.close()

    big = Store(tmp / "big")
    v = big.create_version({"fingerprint": "bench", "soul_sha256": "-", "tools_sha256": "-", "config_sha256": "-",
                            "inputs_sha256": "-", "code_version": "-", "config": {}})
    t = time.perf_counter()
    for start in range(0, args.rows, 10_000):
        rows = []
        for i in range(start, min(args.rows, start + 10_000)):
            r = base[i % len(base)]
            rows.append({**r, "id": f"{i:08d}{r['id'][8:]}", "input_id": f"bench:{i:08d}", "source_id": f"{i:08d}"})
        big.commit_chunk(v, {"sft": rows}, [(r["input_id"], "sft") for r in rows])
    big.finish(v, {"sft rows": args.rows})
    big.close()
    size = sum(p.stat().st_size for p in (tmp / "big").rglob("*.parquet")) / 2**20
    print(f"synthetic version: {args.rows} sft rows in {size:.0f} MiB of Parquet, made in {time.perf_counter() - t:.1f}s")

    client = create_app(tmp / "big").test_client()
    row_id = f"{args.rows // 2:08d}{base[(args.rows // 2) % len(base)]['id'][8:]}"
    pages = {"rows page 1": f"/v/{v}/rows",
             "rows page 1000": f"/v/{v}/rows?page=1000",
             "rows, source + calls filter": f"/v/{v}/rows?source=coding&calls_min=2",
             "rows, text search": f"/v/{v}/rows?q=slugify",
             "conversation page": f"/v/{v}/row/{row_id}",
             "version page (charts)": f"/v/{v}"}
    for name, url in pages.items():
        assert client.get(url).status_code == 200, url
        print(f"{name:32s} {_ms(lambda url=url: client.get(url)):8.0f} ms")

    def naive():  # load the version, slice a page
        s = Store(tmp / "big", read_only=True)
        rows = s.read_rows(v, "sft")
        s.db.close()
        return rows[:50]

    print(f"{'naive: load all, slice a page':32s} {_ms(naive, repeat=2):8.0f} ms")


if __name__ == "__main__":
    main()
