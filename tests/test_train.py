"""Pretraining through the real CLI: kill + resume continues the same curve; 8 devices match 1."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import BIN
from trainer import corpus, local_corpus
from trainer.checkpoint import find_checkpoints
from trainer.tokenizer import Tokenizer

TINY = ["--config", "d1", "--seq-len", "64", "--device-batch-size", "8", "--total-batch-tokens", "1024",
        "--eval-every", "1000", "--eval-tokens", "2048", "--sample-every", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    local_corpus.build(root / "corpus", max_chars=3_000_000, val_fraction=0.1)
    texts = corpus.mixed_texts(root / "corpus", max_chars=1_000_000)
    Tokenizer.train(texts, vocab_size=512).save(root / "tok")
    return root


def pretrain(data, out, *args, env=None, wait=True):
    cmd = [str(BIN / "trainer"), "run", "pretrain", *TINY, "--corpus", str(data / "corpus"),
           "--tokenizer", str(data / "tok"), "--out", str(out), *map(str, args)]
    env = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def losses(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["event"] == "train"}


def test_kill_and_resume_continues_the_same_curve(data, tmp_path):
    straight = pretrain(data, tmp_path / "straight", "--steps", 10)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    reference = losses(tmp_path / "straight")
    assert sorted(reference) == list(range(1, 11))
    assert reference[10] < reference[1]  # it learns

    out = tmp_path / "killed"
    proc = pretrain(data, out, "--steps", 10, "--save-every", 1, wait=False)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "5").is_dir():  # orbax renames a step's dir when it is complete
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    resumed = pretrain(data, out, "--steps", 10, "--save-every", 1, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    start = int(resumed.stdout.split("resuming at step ")[1].split()[0])
    assert 5 <= start < 10
    after = losses(out)
    assert sorted(after) == list(range(1, 11))  # nothing duplicated, nothing dropped in the log
    for step in range(start + 1, 11):
        assert after[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


def test_eight_devices_match_one(data, tmp_path):
    one = pretrain(data, tmp_path / "one", "--steps", 3)
    eight = pretrain(data, tmp_path / "eight", "--steps", 3, "--device-batch-size", 1,
                     env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert one.returncode == 0 and eight.returncode == 0, one.stderr + eight.stderr
    assert "8 device(s)" in eight.stdout
    a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
    for step in (1, 2, 3):
        assert b[step] == pytest.approx(a[step], rel=1e-4), step


def test_dry_run_prints_the_plan_and_trains_nothing(data, tmp_path):
    result = pretrain(data, tmp_path / "dry", "--steps", 5, "--dry-run")
    assert result.returncode == 0, result.stderr
    for word in ("params", "FLOPs/token", "tokens", "steps", "memory", "time"):
        assert word in result.stdout, word
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize("args, message", [
    (["--config", "d999x"], "unknown config"),
    (["--resume"], "no checkpoint"),
    (["--corpus", "/nonexistent/corpus"], "/nonexistent/corpus"),
    (["--dtype", "float64"], "--dtype must be float32 or bfloat16"),
])
def test_bad_input_is_one_line(data, tmp_path, args, message):
    result = pretrain(data, tmp_path / "bad", "--steps", 2, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error:") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_bf16_on_cpu_follows_the_fp32_curve_and_is_recorded(data, tmp_path):
    """`--dtype bfloat16` on a CPU (the AMX path: model._cpu_bf16) trains the same model to within
    bf16's rounding, and the checkpoint says which dtype made it."""
    fp32 = pretrain(data, tmp_path / "fp32", "--steps", 6)
    bf16 = pretrain(data, tmp_path / "bf16", "--steps", 6, "--dtype", "bfloat16")
    assert fp32.returncode == 0 and bf16.returncode == 0, fp32.stderr + bf16.stderr
    a, b = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert b[6] < b[1]
    for step in range(1, 7):
        assert b[step] == pytest.approx(a[step], rel=0.02), step
    assert b != a  # it did run in another dtype
    ckpt = find_checkpoints(tmp_path / "bf16")
    assert ckpt.read_meta()[1]["fingerprint"]["model"]["compute_dtype"] == "bfloat16"
    ckpt.close()


def test_resume_refuses_a_checkpoint_of_another_model(data, tmp_path):
    assert pretrain(data, tmp_path / "run", "--steps", 2).returncode == 0
    other = pretrain(data, tmp_path / "run", "--steps", 4, "--config", "d2", "--resume")
    assert other.returncode == 2 and "another model" in other.stderr, other.stderr


def test_a_checkpoint_config_field_this_code_does_not_know_is_refused_by_name():
    from nanocode.common import InputError
    from trainer.checkpoint import saved_model
    model = dict(vocab_size=512, seq_len=64, n_layer=1, d_model=64, n_head=1, n_kv_head=1, head_dim=64)
    assert saved_model({"fingerprint": {"model": {**model, "remat": True}}}).n_layer == 1  # removed since: dropped
    with pytest.raises(InputError, match="model has smear, which this nanocode does not know"):
        saved_model({"fingerprint": {"model": {**model, "smear": True}}})
