"""Replay verification cost: rows/s of factory/replay.py on an offline build's SFT rows, and its
share of the build (the same offline build with `replay: null` vs the default replay stage).

    .venv/bin/python bench/replay.py [--copies 2]

Each build runs in a fresh NANOCODE_HOME under a temp dir; the default seed set (offline:
converter + rule critics + rule reviser) repeated --copies times.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402

from factory.build import build  # noqa: E402
from factory.replay import ToolReplay  # noqa: E402
from factory.store import Store  # noqa: E402
from nanocode.spec import load_tools  # noqa: E402


def config(directory: Path, copies: int, replay: bool) -> Path:
    """The default config with every seed file repeated `copies` times (ids made unique)."""
    text = (REPO / "factory/configs/default.yaml").read_text()
    for seeds in sorted((REPO / "factory/seeds").glob("*.jsonl")):
        rows = [json.loads(line) for line in seeds.read_text().splitlines() if line.strip()]
        out = directory / seeds.name
        out.write_text("".join(json.dumps({**r, "id": f"{r['id']}-{c}"}) + "\n" for c in range(copies) for r in rows))
        text = text.replace(f"path: factory/seeds/{seeds.name}", f"path: {out}")
    if not replay:
        data = yaml.safe_load(text)
        data["replay"] = None
        text = yaml.safe_dump(data, sort_keys=False)
    path = directory / f"build-{'replay' if replay else 'noreplay'}.yaml"
    path.write_text(text)
    return path


def timed_build(home: Path, cfg: Path) -> tuple[float, dict]:
    os.environ["NANOCODE_HOME"] = str(home)
    start = time.perf_counter()
    summary = build(config=cfg, console=Console(file=open(os.devnull, "w")))
    return time.perf_counter() - start, summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nanocode-bench-replay-"))
    timed_build(tmp / "warm", config(tmp, 1, replay=False))  # imports and first-use costs, untimed
    without_s, without_sum = timed_build(tmp / "without", config(tmp, args.copies, replay=False))
    with_s, with_sum = timed_build(tmp / "with", config(tmp, args.copies, replay=True))
    assert without_sum["replay pass rate"] == "not run", without_sum["replay pass rate"]

    os.environ["NANOCODE_HOME"] = str(tmp / "with")
    store = Store(read_only=True)
    rows = store.read_rows(store.resolve("latest"), "sft")
    spec, replay = load_tools(), ToolReplay()
    calls = sum(len(m.get("tool_calls") or []) for r in rows for m in r["messages"])
    start = time.perf_counter()
    outcomes = [replay.replay(r["messages"], r["workspace"], spec).status for r in rows]
    secs = time.perf_counter() - start

    print("| what | rows | tool calls | seconds | rows/s |")
    print("|---|---|---|---|---|")
    print(f"| replay alone (ToolReplay.replay, one thread) | {len(rows)} | {calls} | {secs:.2f} | {len(rows) / secs:.0f} |")
    print(f"| offline build, replay on | {with_sum['inputs done']} | | {with_s:.2f} | {with_sum['inputs done'] / with_s:.0f} |")
    print(f"| offline build, `replay: null` | {without_sum['inputs done']} | | {without_s:.2f} | "
          f"{without_sum['inputs done'] / without_s:.0f} |")
    print(f"\nreplay outcomes: {dict((o, outcomes.count(o)) for o in set(outcomes))}; build pass rate "
          f"{with_sum['replay pass rate']}; replay share of the build: {secs / with_s:.0%} "
          f"(build time difference {(with_s - without_s) / with_s:.0%})")


if __name__ == "__main__":
    main()
