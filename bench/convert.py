"""Factory input stages on the offline default seed set (factory/configs/default.yaml's source:
coding.jsonl + the seedable HumanEval problems): source load, dedup + decontamination, the
code_edit converter (real tool runs in a temp workspace per row), and the whole offline build.

    .venv/bin/python bench/convert.py [--repeat 3]

Best of --repeat for each stage; rows/s = seeds / seconds.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402

from factory.config import load_config, make  # noqa: E402
from factory.convert import CONVERTERS  # noqa: E402
from factory.dedup import Contamination, screen  # noqa: E402
from factory.loop import Skip  # noqa: E402
from factory.sources import SOURCES  # noqa: E402
from nanocode.spec import load_soul, load_tools  # noqa: E402


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    soul, spec, config = load_soul(), load_tools(), load_config()
    source = make("source", SOURCES, config.source)
    t_load, seeds = best(source.seeds, args.repeat)
    n = len(seeds)
    t_index, index = best(Contamination, args.repeat)
    t_screen, counts = best(lambda: screen([dict(s) for s in seeds], index), args.repeat)
    # at scale: the set 40 times, each copy's instruction changed by one word (near duplicates)
    many = [{**s, "input_id": f"{s['input_id']}#{c}", "instruction": f"{s['instruction']} (copy {c})"}
            for c in range(40) for s in seeds]
    t_many, many_counts = best(lambda: screen([dict(s) for s in many], index), 1)
    converter = CONVERTERS["code_edit"](system_prompt=True)
    screen(seeds, index)  # the marked seeds are rejects before any converter sees them
    kept = [s for s in seeds if not s.get("skip")]

    def convert_all():
        done = 0
        for seed in kept:
            try:
                converter.convert(seed, soul, spec)
                done += 1
            except Skip:
                pass
        return done

    t_convert, converted = best(convert_all, args.repeat)
    from factory.build import build

    def offline_build():
        os.environ["NANOCODE_HOME"] = tempfile.mkdtemp(prefix="nanocode-bench-convert-")
        return build(console=Console(file=open(os.devnull, "w")))

    t_build, summary = best(offline_build, args.repeat)
    print(f"{n} seeds ({', '.join(f'{k} {v}' for k, v in counts.items())}); {converted} converted")
    print("| stage | seconds | rows/s |")
    print("|---|---|---|")
    for name, secs, rows in (("source load (2 JSONL files)", t_load, n),
                             ("held-out n-gram index (41 problems)", t_index, 41),
                             ("dedup + decontamination", t_screen, n),
                             (f"dedup + decontamination, {len(many)} rows ({many_counts['near duplicates']} near dups)",
                              t_many, len(many)),
                             ("code_edit converter", t_convert, converted),
                             (f"offline build, whole (sft rows {summary['sft rows']})", t_build, n)):
        print(f"| {name} | {secs:.3f} | {rows / secs:,.0f} |")


if __name__ == "__main__":
    main()
