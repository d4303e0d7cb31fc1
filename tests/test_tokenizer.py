"""The BPE tokenizer: byte-level round trips, persistence, training and eval through the real CLI."""

import os
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanocode.common import InputError
from nanocode.record import SPECIAL_TOKENS
from tests.conftest import BIN
from trainer import local_corpus
from trainer.tokenizer import MIN_VOCAB, Tokenizer


@settings(deadline=None)
@given(st.text())
def test_any_text_round_trips(tiny_tok, text):
    assert tiny_tok.decode(tiny_tok.encode(text)) == text


def test_specials_follow_the_merges(tiny_tok):
    ids = [tiny_tok.special_id(s) for s in SPECIAL_TOKENS]
    assert ids == list(range(tiny_tok.vocab_size - len(SPECIAL_TOKENS), tiny_tok.vocab_size))
    assert tiny_tok.bos_id == ids[0]


def test_token_bytes_count_the_utf8_bytes(tiny_tok):
    table = tiny_tok.token_bytes()
    text = "naïve café 🙂 def f(x): return x\n"
    assert table[tiny_tok.encode(text)].sum() == len(text.encode("utf-8"))
    assert (table[-len(SPECIAL_TOKENS):] == 0).all() and (table[:256] == 1).all()


def test_save_load_is_identical(tiny_tok, tmp_path):
    tiny_tok.info["note"] = "kept"
    tiny_tok.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    text = "for i in range(10):\n    print(i)  # Übung"
    assert loaded.encode(text) == tiny_tok.encode(text)
    assert loaded.vocab_size == tiny_tok.vocab_size and loaded.info["note"] == "kept"
    assert np.array_equal(loaded.token_bytes(), tiny_tok.token_bytes())
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.json", "tokenizer.tiktoken"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "tok" / "tokenizer.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_bad_training_input():
    with pytest.raises(InputError, match="too small"):
        Tokenizer.train(["hello"], MIN_VOCAB - 1)
    with pytest.raises(InputError, match="empty"):
        Tokenizer.train([], 1000)


def test_missing_or_corrupt_tokenizer(tiny_tok, tmp_path):
    with pytest.raises(InputError, match="tokenizer.tiktoken is missing"):
        Tokenizer.load(tmp_path / "nowhere")
    tiny_tok.save(tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.tiktoken").write_text("not base64 at all\n")
    with pytest.raises(InputError, match="corrupt tokenizer"):
        Tokenizer.load(tmp_path / "tok")


# ------------------------------------------------------------------ the real CLI, on a small local corpus

def trainer(*args, check=True):
    result = subprocess.run([str(BIN / "trainer"), *map(str, args)], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    local_corpus.build(out, max_chars=3_000_000)
    return out


def test_train_then_eval_code_mixed_beats_prose_only_on_code(small_corpus, tmp_path):
    mixed, prose_only = tmp_path / "mixed", tmp_path / "prose"
    trainer("tokenizer", "train", "--corpus", small_corpus, "--out", mixed, "--vocab-size", 2048)
    trainer("tokenizer", "train", "--corpus", small_corpus, "--out", prose_only, "--vocab-size", 2048,
            "--code-ratio", "0:1")
    assert Tokenizer.load(mixed).vocab_size == 2048
    out = trainer("tokenizer", "eval", "--tokenizer", mixed, "--baseline", prose_only, "--markdown").stdout
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines()[2:]}
    assert set(rows) == {"prose", "code", "math", "non_english", "val_prose", "val_code"}
    # bytes/token: the code-mixed tokenizer compresses code (held-out and ours) better than prose-only
    for name in ("code", "val_code"):
        assert float(rows[name][4]) > float(rows[name][6])


@pytest.mark.parametrize("args, message", [
    (["tokenizer", "train", "--vocab-size", "100"], "too small"),
    (["tokenizer", "train", "--code-ratio", "x"], "code ratio 'x'"),
    (["tokenizer", "eval", "--tokenizer", "/nonexistent/tok"], "/nonexistent/tok"),
])
def test_cli_bad_input_is_one_line(small_corpus, tmp_path, args, message):
    out = tmp_path / "out"
    extra = ["--corpus", str(small_corpus), "--out", str(out)] if args[1] == "train" else []
    result = trainer(*args, *extra, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.exists()  # nothing half-written


def test_cli_missing_corpus(tmp_path):
    result = trainer("tokenizer", "train", "--corpus", tmp_path / "missing", "--out", tmp_path / "out", check=False)
    assert result.returncode == 2 and "missing" in result.stderr and "Traceback" not in result.stderr
