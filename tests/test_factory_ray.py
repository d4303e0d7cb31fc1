"""`factory build --ray` on a local Ray cluster of two workers: the version holds exactly the
rows of the one-process build of the same inputs (code-edit seeds and scenarios, whose tests and
replays run in the sandbox on the workers), a worker killed mid-task loses nothing, and a Ray
address that does not answer is one line before any version."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray

from factory.convert import CodeEdit
from factory.store import Store
from nanocode.common import InputError
from tests.conftest import BIN, REPO, free_port
from tests.test_factory_build import SEEDS, quiet_build



@pytest.fixture(scope="module")
def cluster():
    """Two local workers; they import this test module (the converter below) from the repo."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), before]))
    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    yield
    ray.shutdown()
    os.environ.pop("PYTHONPATH") if before is None else os.environ.update(PYTHONPATH=before)


@dataclass
class StallOnce(CodeEdit):
    """CodeEdit that, converting the seed `stall` the first time, writes its process id to `mark`
    and waits there (for the test to kill that worker); after that it converts as CodeEdit."""
    stall: str = ""
    mark: str = ""

    def convert(self, seed, soul, spec):
        if seed["input_id"] == self.stall and not os.path.exists(self.mark):
            Path(self.mark).write_text(str(os.getpid()))
            time.sleep(120)
        return super().convert(seed, soul, spec)


def config(tmp_path, converter="code_edit", n_seeds=6, scenarios=("py-binary-search-bounds", "py-config-env-int")):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(SEEDS.read_text().splitlines(keepends=True)[:n_seeds]))
    specs = tmp_path / "specs"
    specs.mkdir(exist_ok=True)
    for name in scenarios:
        shutil.copy(REPO / "scenarios" / f"{name}.yaml", specs)
    text = (REPO / "factory" / "configs" / "default.yaml").read_text()
    source = ("source:\n  name: mix\n  sources:\n"
              f"    - {{name: local, path: {seeds}, columns: {{id: id, instruction: instruction, answer: answer}}}}\n"
              f"    - {{name: scenarios, dir: {specs}, converter: {{name: scenario, system_prompt: true}}}}\n")
    start = text.index("source:")
    text = text[:start] + source + f"converter: {converter}\n" + text[text.index("generator:"):]
    path = tmp_path / "build.yaml"
    path.write_text(text)
    return path


def rows(home: Path, v: int = 1) -> dict:
    store = Store(home, read_only=True)
    try:
        return {kind: sorted(json.dumps(r, sort_keys=True, default=str) for r in
                             store.all(f"SELECT {key}, input_id FROM {store.relation(kind, v)}"))
                for kind, key in (("sft", "id"), ("pairs", "id"), ("rejects", "reason"))}
    finally:
        store.close()


def test_a_ray_build_has_the_rows_of_a_one_process_build(cluster, tmp_path, monkeypatch):
    path = config(tmp_path)
    one = quiet_build(config=path)
    monkeypatch.setenv("NANOCODE_HOME", str(tmp_path / "ray"))
    on_ray = quiet_build(config=path, ray="auto")
    assert on_ray["ray"].startswith("2 CPUs (auto), ") and on_ray["inputs done"] == one["inputs done"] == 8
    assert on_ray["sft rows"] == one["sft rows"] > 0 and on_ray["replayed rows"] == one["replayed rows"]
    assert rows(tmp_path / "ray") == rows(tmp_path / "home")
    # the same build again is up to date, Ray or not: Ray is not part of a build's identity
    assert quiet_build(config=path, ray="auto")["up_to_date"]


def test_a_worker_killed_mid_task_loses_nothing(cluster, tmp_path, monkeypatch):
    mark = tmp_path / "stalled-pid"
    entry = f"{{name: 'tests.test_factory_ray:StallOnce', stall: 'seeds:fizzbuzz', mark: '{mark}'}}"
    path = config(tmp_path, converter=entry, scenarios=("py-config-env-int",))
    mark.write_text("0")  # one process: no stall
    one = quiet_build(config=path)
    mark.unlink()
    monkeypatch.setenv("NANOCODE_HOME", str(tmp_path / "ray"))
    killed = []

    def kill_the_stalled_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (mark.exists() and mark.read_text()):
            time.sleep(0.05)
        killed.append(int(mark.read_text()))
        os.kill(killed[0], signal.SIGKILL)
    killer = threading.Thread(target=kill_the_stalled_worker, daemon=True)
    killer.start()
    on_ray = quiet_build(config=path, ray="auto")
    killer.join(timeout=5)
    assert killed and killed[0] != os.getpid()  # a worker died mid-task; Ray ran its task again
    assert on_ray["sft rows"] == one["sft rows"] > 0 and on_ray["inputs done"] == 7
    assert rows(tmp_path / "ray") == rows(tmp_path / "home")
    store = Store(tmp_path / "ray", read_only=True)
    ids = [r[0] for r in store.all(f"SELECT input_id FROM {store.relation('sft', 1)}")]
    assert len(ids) == len(set(ids)) == on_ray["sft rows"] and len(store.done_inputs(1)) == 7
    assert store.version(1)["status"] == "done"


def test_a_ray_address_that_does_not_answer_is_one_line(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "NANOCODE_HOME": str(tmp_path / "home")}
    start = time.monotonic()
    out = subprocess.run([str(BIN / "factory"), "build", "--limit", "2", "--ray", address],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: --ray {address}: no Ray cluster answers there (Connection refused); "
                                 "start one with `ray start --head`, or use --ray auto")
    assert time.monotonic() - start < 30  # not ray.init's minutes of waiting
    assert not (tmp_path / "home" / "factory.duckdb").exists() or Store(tmp_path / "home", read_only=True).versions() == []
    with pytest.raises(InputError, match=r"--ray nowhere: not a cluster address \(auto, HOST:PORT"):
        quiet_build(limit=1, ray="nowhere")
