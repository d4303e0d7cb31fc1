"""Checkpoints elsewhere: a run records where they are (checkpoints.url), every stage that reads a
run finds them through it or through their URL, and a URL orbax cannot open is one line, exit 2.

orbax 0.12 writes arrays through tensorstore, which it points at gs:// or at a local path only,
so the URLs tested without a network are file:// ones; memory:// and s3:// must be refused up
front (neither tensorstore's memory driver nor epath's fsspec layer is reachable through orbax)."""

import importlib.util
import json
import os
import subprocess
import urllib.request

import jax
import numpy as np
import pytest

from evals import runs
from nanocode.common import InputError
from tests.conftest import BIN
from trainer import checkpoint, configs, corpus, local_corpus, train
from trainer.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A tiny run trained into ROOT/run with its checkpoints at a file:// URL (ROOT/store/ck): (root,
    run, url, the params it ended with)."""
    root = tmp_path_factory.mktemp("storage")
    local_corpus.build(root / "corpus", max_chars=800_000, val_fraction=0.1)
    tok = Tokenizer.train(corpus.mixed_texts(root / "corpus", max_chars=500_000), vocab_size=512)
    tok.save(root / "tok")
    cfg = configs.get_config("d1", vocab_size=tok.vocab_size, seq_len=64, device_batch_size=2,
                             total_batch_tokens=1024, num_steps=3, eval_every=1000, eval_tokens=1024, sample_every=0)
    url = (root / "store" / "ck").as_uri()
    result = train.train(cfg, train.RunPaths(corpus=root / "corpus", tokenizer=root / "tok", out=root / "run",
                                             checkpoints=url), log=lambda *a: None)
    return root, root / "run", url, jax.device_get(result["params"])


def same_params(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_run_records_where_its_checkpoints_went(stored):
    root, run, url, trained = stored
    assert not (run / "checkpoints").exists()
    assert (run / "checkpoints.url").read_text() == f"{root / 'store' / 'ck'}\n"
    assert (run / "metrics.jsonl").is_file() and (run / "tokenizer" / "tokenizer.json").is_file()
    # the checkpoint directory got its own tokenizer copy, and orbax still sees only its steps
    assert (root / "store" / "ck" / "tokenizer" / "tokenizer.json").read_bytes() == \
        (run / "tokenizer" / "tokenizer.json").read_bytes()
    assert checkpoint.find_checkpoints(run).manager.all_steps() == [3]


def test_the_run_and_its_url_load_the_same_model(stored):
    root, run, url, trained = stored
    for where in (run, url, str(root / "store" / "ck")):
        params, cfg, tok, meta = checkpoint.load_model(where)
        assert meta["step"] == 3 and tok.fingerprint() == Tokenizer.load(root / "tok").fingerprint()
        assert same_params(params, trained), where
    assert checkpoint.run_name(url) == "ck" and checkpoint.run_name(run / "checkpoints") == "run"
    assert runs.model_dir(run) == run  # evals find the stage through its checkpoints.url


def test_a_resume_finds_the_checkpoints_the_run_recorded(stored):
    root, run, url, trained = stored
    assert checkpoint.checkpoints_for(run, None) == checkpoint.storage_path(url)
    assert checkpoint.checkpoints_for(run, str(root / "store" / "ck")) == checkpoint.storage_path(url)
    with pytest.raises(InputError, match="checkpoints of .* are at .*store/ck"):
        checkpoint.checkpoints_for(run, str(root / "other"))


def test_a_path_with_a_scheme_like_prefix_is_a_local_path(stored, tmp_path, monkeypatch):
    root, run, url, trained = stored
    odd = tmp_path / "s3:run"  # a colon, no "//": a directory, not a URL
    odd.mkdir()
    (odd / "checkpoints.url").write_text(str(root / "store" / "ck") + "\n")
    (odd / "tokenizer").symlink_to(run / "tokenizer")
    monkeypatch.chdir(tmp_path)
    assert checkpoint.storage_path("s3:run") == checkpoint.storage_path(odd)
    assert checkpoint.load_model("s3:run")[3]["step"] == 3
    assert checkpoint.storage_path("gs:/b/r") == checkpoint.storage_path(tmp_path / "gs:" / "b" / "r")
    with pytest.raises(InputError, match="no such run"):  # what pathlib makes of gs://b/r
        checkpoint.find_checkpoints("gs:/b/r")


def test_file_urls_name_a_path_on_this_machine(tmp_path):
    assert checkpoint.storage_path(f"file://localhost{tmp_path}/a%20b") == checkpoint.storage_path(tmp_path / "a b")
    with pytest.raises(InputError, match="not on otherhost"):
        checkpoint.storage_path("file://otherhost/x")


def test_chat_serves_a_run_given_by_its_url(stored):
    from agent.cli import _CHILDREN, serve_run

    root, run, url, trained = stored
    base_url, model = serve_run(url)  # what `nanocode chat --model URL` does: a child `trainer serve`
    try:
        assert model == "ck"
        with urllib.request.urlopen(f"{base_url}/models", timeout=30) as reply:
            assert [m["id"] for m in json.load(reply)["data"]] == ["ck"]
    finally:
        child = _CHILDREN.pop()
        child.stdin.close()
        child.wait(timeout=30)


def cli(*args, cwd=None):
    return subprocess.run([str(BIN / "trainer"), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_urls_orbax_cannot_open_are_one_line_and_nothing_is_written(stored, tmp_path):
    root, run, url, trained = stored
    for where in ("memory://runs/d1", "s3://bucket/d1"):
        assert "orbax cannot open " + where in one_error_line(cli("serve", "--checkpoint", where))
        line = one_error_line(cli("run", "pretrain", "--config", "d1", "--corpus", root / "corpus", "--tokenizer",
                                  root / "tok", "--out", tmp_path / "out", "--checkpoint-dir", where))
        assert "orbax cannot open " + where in line
        assert not (tmp_path / "out").exists()
    if importlib.util.find_spec("gcsfs") is None:  # epath reaches gs:// through gcsfs (or TensorFlow)
        assert "gcsfs" in one_error_line(cli("serve", "--checkpoint", "gs://bucket/d1"))
    line = one_error_line(cli("serve", "--checkpoint", (tmp_path / "nothing").as_uri()))
    assert "no such run" in line and str(tmp_path / "nothing") in line
