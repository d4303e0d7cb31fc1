"""The cost of the tool runtime's two guards: Bash in the bubblewrap sandbox vs plain, and Grep
through ripgrep vs the Python `re` engine it replaced (agent/tools.py as of commit OLD, loaded
from git), in the same run, as ratios.

    .venv/bin/python bench/sandbox.py [--calls 40] [--repeats 5]

Bash: the median wall time of one `Tools.run` call of `true` and of a short Python command (the
factory's interpreter, first on PATH as in a rollout), the two modes interleaved call by call so
both see the same load. Grep: the median of --repeats searches of this repository's tracked files
(copied to a temp workspace) for a literal, a regex and a case-insensitive regex, and one search
of the venv's site-packages for `def \\w+_tools\\(` in `*.py` files (a large tree), files warm
in the page cache; both engines must give the same result.
"""

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.sandbox import unavailable  # noqa: E402
from agent.tools import Tools  # noqa: E402

OLD = "f90d60e"  # the last commit whose Grep ran Python's re in-process
PATTERNS = {"literal `import os`": "import os", r"regex `def \w+\(self`": r"def \w+\(self",
            "case-insensitive `(?i)todo|fixme`": "(?i)todo|fixme"}


def old_tools():
    """agent/tools.py as it was at OLD, imported under another name beside today's."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD}:agent/tools.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="nanocode-bench-")) / "old_tools.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_tools", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Tools


def timed(tools, call) -> tuple[float, str]:
    start = time.perf_counter()
    out = tools.run(call)
    return time.perf_counter() - start, out


def bench_bash(calls: int) -> list[tuple[str, float, float]]:
    ws = tempfile.mkdtemp(prefix="nanocode-bench-ws-")
    bin_dirs = (Path(sys.executable).parent,)
    plain, boxed = Tools(ws, bin_dirs=bin_dirs), Tools(ws, bin_dirs=bin_dirs, sandbox=True)
    rows = []
    for name, command in (("`true`", "true"), ("`python -c 'print(1)'`", "python -c 'print(1)'")):
        call = {"name": "Bash", "args": {"command": command}}
        times = {plain: [], boxed: []}
        for _ in range(calls):
            for tools in (plain, boxed):
                seconds, out = timed(tools, call)
                assert out.startswith("exit code: 0"), out
                times[tools].append(seconds)
        rows.append((name, statistics.median(times[plain]), statistics.median(times[boxed])))
    return rows


def bench_grep(repeats: int) -> list[tuple[str, float, float, int]]:
    ws = Path(tempfile.mkdtemp(prefix="nanocode-bench-repo-"))
    files = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for rel in files:
        if (REPO / rel).is_file():
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / rel, ws / rel)
    Old, rows = old_tools(), []
    cases = [(f"{len(files)} tracked files, {name}", ws, {"pattern": p}, repeats) for name, p in PATTERNS.items()]
    site = Path(sysconfig.get_path("purelib"))
    n_py = sum(1 for _ in site.rglob("*.py"))
    cases.append((f"site-packages, {n_py} `*.py` files, `def \\w+_tools\\(`", site,
                  {"pattern": r"def \w+_tools\(", "glob": "*.py"}, 1))
    for name, root, args, n in cases:
        old, new, call = Old(root), Tools(root), {"name": "Grep", "args": args}
        new.run(call)  # the files into the page cache, untimed: both engines then read them warm
        t_old, t_new = [], []
        for _ in range(n):
            (s_old, out_old), (s_new, out_new) = timed(old, call), timed(new, call)
            assert out_old == out_new, (name, out_old[:300], out_new[:300])
            t_old.append(s_old)
            t_new.append(s_new)
        rows.append((name, statistics.median(t_old), statistics.median(t_new), out_new.count("\n") + 1))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if why := unavailable():
        sys.exit(f"error: {why}")
    print("| Bash call | plain ms | sandboxed ms | ratio |\n|---|---|---|---|")
    for name, plain, boxed in bench_bash(args.calls):
        print(f"| {name} | {plain * 1e3:.1f} | {boxed * 1e3:.1f} | {boxed / plain:.2f}x |")
    print("\n| Grep | Python re ms | ripgrep ms | speed-up | result lines |\n|---|---|---|---|---|")
    for name, old, new, lines in bench_grep(args.repeats):
        print(f"| {name} | {old * 1e3:,.0f} | {new * 1e3:,.0f} | {old / new:.1f}x | {lines} |")


if __name__ == "__main__":
    main()
