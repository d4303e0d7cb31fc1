"""Factory scale-out: rows/s over 1, 2 and 4 endpoints, and over 1 and 2 local Ray workers.

    .venv/bin/python bench/factory_scale.py [--part all|endpoints|ray] [--endpoints 1,2,4]
                                            [--latency 0.2] [--concurrency 2] [--inputs 24]

endpoints: the coding seeds built through N loopback model servers (tests/scripted_server.py in
    child processes, answering as tests/fake_model.py after `latency` seconds), each taking
    `concurrency` requests at a time (`--base-url` N times: concurrency is per endpoint), so one
    endpoint stands for one GPU's worth of model. A fresh NANOCODE_HOME per build: no cache hit.
ray: an offline, replay-heavy build (the Python scenario specs: each one's tests run in the
    sandbox while it is expanded, grounded and its chosen rollout replayed) in one process, and
    with --ray on a fresh local cluster of 1 and 2 worker CPUs. Each build runs in its own child
    process (a Ray cluster per process).
"""

import argparse
import multiprocessing
import os
import shutil
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


def serve(latency: float, conn) -> None:
    """One model server in its own process: its threads must not share the build's GIL."""
    server = ScriptedServer(respond=lambda body: respond(body, latency=latency))
    conn.send(server.base_url)
    server._httpd.serve_forever()


def quiet_build(home: Path, **kw) -> dict:
    os.environ["NANOCODE_HOME"] = str(home)
    return build(console=Console(file=open(os.devnull, "w")), **kw)


def coding_config(directory: Path) -> Path:
    text = (REPO / "factory/configs/default.yaml").read_text()
    start, end = text.index("source:"), text.index("converter:\n")
    path = directory / "coding.yaml"
    path.write_text(text[:start] + "source: {name: local, path: " + str(REPO / "factory/seeds/coding.jsonl") +
                    ", columns: {id: id, instruction: instruction, answer: answer, workspace: workspace}}\n" +
                    text[end:])
    return path


def scenario_config(directory: Path) -> Path:
    specs = directory / "specs"
    specs.mkdir()
    for spec in sorted((REPO / "scenarios").glob("py-*.yaml")):
        shutil.copy(spec, specs)
    text = (REPO / "factory/configs/default.yaml").read_text()
    start, end = text.index("source:"), text.index("converter:\n")
    path = directory / "scenarios.yaml"
    path.write_text(text[:start] + f"source: {{name: scenarios, dir: {specs}, "
                    "converter: {name: scenario, system_prompt: true}}\n" + text[end:])
    return path


def endpoints(args, tmp: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    config = coding_config(tmp)
    print("| endpoints | concurrency each | inputs | seconds | rows/s | speed-up | requests per endpoint |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for n in args.endpoints:
        servers, urls = [], []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=serve, args=(args.latency, child), daemon=True)
            proc.start()
            servers.append(proc)
            urls.append(parent.recv())
        try:
            start = time.monotonic()
            s = quiet_build(tmp / f"home-endpoints-{n}", config=config, limit=args.inputs,
                            backend_overrides={"model": "scripted", "base_url": urls, "concurrency": args.concurrency})
            seconds = time.monotonic() - start
        finally:
            for proc in servers:
                proc.kill()
        rate = s["inputs done"] / seconds
        base = base or rate
        per = ", ".join(f.split(" requests")[0] for f in s["endpoints"].values())
        print(f"| {n} | {args.concurrency} | {s['inputs done']} | {seconds:.1f} | {rate:.2f} | {rate / base:.2f}x | {per} |",
              flush=True)


def one_build(home, config, workers, queue) -> None:
    """A build in a child process; workers None: no Ray, else a fresh local cluster of that many CPUs."""
    try:
        if workers:
            import ray
            ray.init(num_cpus=workers, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
        start = time.monotonic()
        s = quiet_build(home, config=config, ray="auto" if workers else None)
        queue.put((s["inputs done"], s["sft rows"], time.monotonic() - start, s.get("ray", "")))
    except Exception as e:  # Ray's start-up can time out on a loaded machine: say so in the table
        queue.put((0, 0, 0.0, f"failed: {' '.join(str(e).split())[:120]}"))


def on_ray(args, tmp: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    config = scenario_config(tmp)
    print("| build | inputs | sft rows | seconds | rows/s | Ray |")
    print("|---|---|---|---|---|---|")
    for workers in (None, 1, 2):
        queue = ctx.Queue()
        proc = ctx.Process(target=one_build, args=(tmp / f"home-ray-{workers}", config, workers, queue))
        proc.start()
        done, sft, seconds, ray = queue.get()
        proc.join()
        label = f"--ray, {workers} local worker CPU{'s' if workers > 1 else ''}" if workers else "one process"
        print(f"| {label} | {done} | {sft} | {seconds:.1f} | {done / max(seconds, 1e-9):.2f} | {ray or '-'} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("all", "endpoints", "ray"), default="all")
    parser.add_argument("--endpoints", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--inputs", type=int, default=24)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory(prefix="nanocode-bench-scale-") as tmp:
        if args.part in ("all", "endpoints"):
            endpoints(args, Path(tmp))
        if args.part in ("all", "ray"):
            on_ray(args, Path(tmp))


if __name__ == "__main__":
    main()
