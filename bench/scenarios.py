"""Scenario expansion throughput: specs/s of the offline scenario converter over the shipped
specs (every tool call run for real in a temp workspace), one at a time and 4 at once in
threads, as an offline build runs converters (factory/build.py OFFLINE_WORKERS).

    .venv/bin/python bench/scenarios.py [--repeat 3]
"""

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from factory.build import OFFLINE_WORKERS  # noqa: E402
from factory.scenarios import ScenarioConverter, ScenarioSource  # noqa: E402
from nanocode.spec import load_soul, load_tools  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    soul, tools = load_soul(), load_tools()
    seeds = ScenarioSource(dir=str(REPO / "scenarios")).seeds()
    conv = ScenarioConverter(system_prompt=False)
    rates, records = {}, []
    for label, workers in (("one at a time", 1), (f"{OFFLINE_WORKERS} threads (an offline build)", OFFLINE_WORKERS)):
        rates[label] = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                records = list(pool.map(lambda s: conv.convert(s, soul, tools), seeds))
            rates[label].append(len(seeds) / (time.perf_counter() - start))
    msgs = [r["messages"] for r in records]
    n_calls = sum(1 for m in msgs for x in m if x["role"] == "tool")
    n_bash = sum(1 for m in msgs for x in m for c in x.get("tool_calls") or [] if c["name"] == "Bash")
    print(f"{len(seeds)} specs, {n_calls} tool calls ({n_bash} Bash), "
          f"{statistics.mean(len(m) for m in msgs) + 1:.1f} messages a record on average")
    for label, r in rates.items():
        print(f"{label}: {min(r):.1f}-{max(r):.1f} specs/s")


if __name__ == "__main__":
    main()
