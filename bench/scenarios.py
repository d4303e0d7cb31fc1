"""Scenario expansion throughput: specs/s of the offline scenario converter over the shipped
specs (every tool call run for real in a temp workspace), sequential and with the converter's
overlapping batch, plus the same batch again from the in-process memo.

    .venv/bin/python bench/scenarios.py [--repeat 3]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from factory import scenarios  # noqa: E402
from nanocode.spec import load_soul, load_tools  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    soul, tools = load_soul(), load_tools()
    seeds = scenarios.ScenarioSource(dir=str(REPO / "scenarios")).seeds()
    specs = [s["scenario"] for s in seeds]
    calls = {}
    for label, workers in (("sequential (1 thread)", 1), ("batch (4 threads, the default)", 4)):
        rates = []
        for _ in range(args.repeat):
            scenarios._EXPANDED.clear()
            start = time.perf_counter()
            scenarios.expand_all(specs, tools, workers)
            rates.append(len(specs) / (time.perf_counter() - start))
        calls[label] = rates
    start = time.perf_counter()
    conv = scenarios.ScenarioConverter()
    for s in seeds:
        conv.convert(s, soul, tools)
    memo = len(seeds) / (time.perf_counter() - start)
    msgs = [scenarios._EXPANDED[scenarios._key(s, tools)] for s in specs]
    n_calls = sum(1 for m in msgs for x in m if x["role"] == "tool")
    n_bash = sum(1 for m in msgs for x in m for c in x.get("tool_calls") or [] if c["name"] == "Bash")
    print(f"{len(specs)} specs, {n_calls} tool calls ({n_bash} Bash), "
          f"{statistics.mean(len(m) for m in msgs) + 2:.1f} messages a record on average")
    for label, rates in calls.items():
        print(f"{label}: {min(rates):.1f}-{max(rates):.1f} specs/s")
    print(f"convert() from the memo (system prompt + copy): {memo:.0f} specs/s")


if __name__ == "__main__":
    main()
