"""Several hosts, as two CPU processes on loopback: `trainer run pretrain --multihost` with the
coordinator on 127.0.0.1. Both train the same global batch (the losses one process with both
shards' rows gets), process 0 alone writes the run's files, and a coordinator that is not set or
not there is one line, exit 2, within the join timeout."""

import json
import os
import re
import subprocess
import time

import jax
import numpy as np
import pytest

from tests.conftest import BIN, free_port
from trainer import checkpoint, configs, corpus, local_corpus, train
from trainer.tokenizer import Tokenizer

SHAPE = dict(seq_len=64, device_batch_size=2, total_batch_tokens=1024, num_steps=3, eval_every=1000,
             eval_tokens=1024, sample_every=3)
FLAGS = ["--config", "d1", "--seq-len", 64, "--device-batch-size", 2, "--total-batch-tokens", 1024, "--steps", 3,
         "--eval-every", 1000, "--eval-tokens", 1024, "--sample-every", 3]


def pretrain(cwd, *args, env: dict, wait=True):
    cmd = [str(BIN / "trainer"), "run", "pretrain", *map(str, args)]
    # one CPU device per process; a None in `env` unsets that variable
    env = {k: v for k, v in {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": None, **env}.items() if v is not None}
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def logged(stdout: str, what: str) -> dict[int, str]:
    """step -> the value a process printed for `what` (as printed: both must print the same)."""
    return {int(m[1]): m[2] for m in re.finditer(rf"step +(\d+)/\d+ \| {what} (\S+)", stdout)}


def test_two_processes_train_one_global_batch_and_process_0_writes_the_files(tmp_path):
    local_corpus.build(tmp_path / "corpus", max_chars=800_000, val_fraction=0.1)
    Tokenizer.train(corpus.mixed_texts(tmp_path / "corpus", max_chars=500_000), vocab_size=512).save(tmp_path / "tok")
    shared = tmp_path / "shared" / "ck"  # what both hosts reach (a bucket, on real ones)
    port = free_port()
    procs = []
    for i in (0, 1):  # the same command on both, each in its own directory: out/ is each host's own
        (tmp_path / f"host{i}").mkdir()
        procs.append(pretrain(tmp_path / f"host{i}", *FLAGS, "--corpus", tmp_path / "corpus", "--tokenizer",
                              tmp_path / "tok", "--out", "out", "--checkpoint-dir", shared.as_uri(), "--multihost",
                              "--join-timeout", 60, wait=False,
                              env={"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                                   "JAX_PROCESS_ID": str(i)}))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stdout + stderr
        assert "2 device(s)" in stdout
    losses = [logged(stdout, "loss") for stdout, _ in outs]
    assert sorted(losses[0]) == [1, 2, 3] and losses[0] == losses[1]
    samples = [re.findall(r"  sample: .*", stdout) for stdout, _ in outs]
    assert len(samples[0]) == len(train.SAMPLE_PROMPTS) and samples[0] == samples[1]

    # written once, by process 0: its out/ has everything, process 1 has no out/ at all
    run = tmp_path / "host0" / "out"
    assert not (tmp_path / "host1" / "out").exists()
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3]
    assert sum(e["event"] == "start" for e in events) == 1
    assert sum(e["event"] == "sample" for e in events) == len(train.SAMPLE_PROMPTS)
    assert (run / "tokenizer" / "tokenizer.json").is_file() and (shared / "tokenizer" / "tokenizer.json").is_file()
    assert (run / "checkpoints.url").read_text() == f"{shared}\n"

    # the same global batch: one process with one device and both shards' rows per micro-batch
    tok = Tokenizer.load(tmp_path / "tok")
    cfg = configs.get_config("d1", vocab_size=tok.vocab_size, **{**SHAPE, "device_batch_size": 4, "sample_every": 0})
    alone = train.train(cfg, train.RunPaths(corpus=tmp_path / "corpus", tokenizer=tmp_path / "tok",
                                            out=tmp_path / "alone"), log=lambda *a: None)
    reference = [json.loads(line) for line in (tmp_path / "alone" / "metrics.jsonl").read_text().splitlines()]
    reference = {e["step"]: e["loss"] for e in reference if e["event"] == "train"}
    for e in events:
        if e["event"] == "train":
            assert e["loss"] == pytest.approx(reference[e["step"]], rel=1e-4), e["step"]
    # and the checkpoint both processes wrote their shards of reads back whole, in one process
    params = checkpoint.load_model(run)[0]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(alone["params"]))):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)  # Adam turns float noise in tiny grads into 1e-4


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_no_coordinator_set_is_one_line(tmp_path):
    unset = {k: None for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
    result = pretrain(tmp_path, *FLAGS, "--out", "out", "--multihost", env=unset)
    assert "JAX_COORDINATOR_ADDRESS" in one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_a_coordinator_nobody_runs_is_one_line_within_the_timeout(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    result = pretrain(tmp_path, *FLAGS, "--out", "out", "--multihost", "--join-timeout", 2,
                      env={"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
    assert f"no coordinator at {address} after 2s" in one_error_line(result)
    assert time.monotonic() - t0 < 60  # start-up plus the 2 s, not jax's 300 s default
    assert not (tmp_path / "out").exists()
