"""The pretraining loader: BOS-aligned best-fit packing, the mix, determinism, exact resume, val."""

import bisect
import json

import numpy as np
import pytest

from nanocode.common import InputError
from trainer import corpus, local_corpus
from trainer.loader import PackedLoader, val_batches
from trainer.tokenizer import Tokenizer

B, T = 4, 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    local_corpus.build(root / "c", max_chars=200_000, seed=1, doc_chars=600, val_fraction=0.1)
    local_corpus.build(root / "tiny", max_chars=6_000, seed=1, doc_chars=600)
    tok = Tokenizer.train(corpus.mixed_texts(root / "c"), vocab_size=1024)
    return root / "c", root / "tiny", tok


def tokenized(tok, corpus_dir, split):
    """Every doc of a split as BOS + tokens, sorted (for prefix lookups), and the kind of each."""
    kind_of = {}
    for kind in corpus.KINDS:
        texts = list(corpus.iter_texts(corpus.shards(corpus_dir, kind, split)))
        for ids in tok.encode_batch(texts):
            kind_of[(tok.bos_id, *ids)] = kind
    return sorted(kind_of), kind_of


def segments(tok, inputs, targets):
    """Each row cut at BOS into docs (the tokenizer never makes BOS from text)."""
    for row in np.concatenate([inputs, targets[:, -1:]], axis=1).tolist():
        starts = [i for i, t in enumerate(row) if t == tok.bos_id]
        assert starts[0] == 0
        yield [tuple(row[a:b]) for a, b in zip(starts, starts[1:] + [len(row)])]


def doc_of(docs, seg):
    """The doc that seg is the whole of or a prefix of, or None."""
    i = bisect.bisect_left(docs, seg)
    return docs[i] if i < len(docs) and docs[i][:len(seg)] == seg else None


def take(loader, n):
    return [loader.next_batch() for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all((x == y).all() for p, q in zip(a, b) for x, y in zip(p, q))


def test_rows_are_bos_aligned_whole_docs_and_one_crop_at_most(data):
    c, _, tok = data
    docs, kind_of = tokenized(tok, c, "train")
    loader = PackedLoader(c, tok, B, T, buffer_docs=64)
    tokens = dict.fromkeys(corpus.KINDS, 0)
    crops = 0
    for inputs, targets in take(loader, 40):
        assert inputs.shape == targets.shape == (B, T) and inputs.dtype == targets.dtype == np.int32
        assert (targets[:, :-1] == inputs[:, 1:]).all() and (inputs[:, 0] == tok.bos_id).all()
        for row in segments(tok, inputs, targets):
            *whole, last = row
            assert all(seg in kind_of for seg in whole)  # no padding, no fragments
            doc = doc_of(docs, last)
            assert doc is not None
            crops += len(doc) > len(last)
            for seg in row:
                tokens[kind_of[doc_of(docs, seg)]] += len(seg)
    assert crops > 0 and tokens == {k: v["tokens"] for k, v in loader.state()["trained"].items()}


def test_same_seed_same_batches_other_seed_others(data):
    c, _, tok = data
    a = take(PackedLoader(c, tok, B, T, seed=3), 10)
    assert same(a, take(PackedLoader(c, tok, B, T, seed=3), 10))
    assert not same(a, take(PackedLoader(c, tok, B, T, seed=4), 10))


@pytest.mark.parametrize("k", [0, 7])
def test_resume_from_saved_state_is_exact(data, k):
    c, _, tok = data
    first = PackedLoader(c, tok, B, T, seed=5, buffer_docs=100)
    take(first, k)
    state = json.loads(json.dumps(first.state()))
    assert len(json.dumps(state)) < 20_000 and state["batches"] == k
    resumed = PackedLoader(c, tok, B, T, seed=5, buffer_docs=100, state=state)
    assert same(take(first, 15), take(resumed, 15))
    assert first.state() == resumed.state()


def test_mix_follows_the_code_ratio(data):
    c, _, tok = data
    for ratio in [(1, 5), (1, 1)]:
        # in chars, as the corpus defines the ratio: cropped tails are given back to the mix
        loader = PackedLoader(c, tok, 8, T, code_ratio=ratio, buffer_docs=20)
        take(loader, 150)
        trained = loader.state()["trained"]
        got = trained["code"]["chars"] / trained["prose"]["chars"]
        assert abs(got / (ratio[0] / ratio[1]) - 1) < 0.12, (ratio, got)
    loader = PackedLoader(c, tok, B, T, code_ratio=(0, 1))
    take(loader, 5)
    assert loader.state()["trained"]["code"]["tokens"] == 0


def test_epochs_roll_over_and_resume_across_them(data):
    _, tiny, tok = data
    loader = PackedLoader(tiny, tok, B, T, buffer_docs=8)
    for _ in range(200):
        if loader.state()["epoch"] > 0:
            break
        loader.next_batch()
    assert loader.state()["epoch"] == 1
    resumed = PackedLoader(tiny, tok, B, T, buffer_docs=8, state=json.loads(json.dumps(loader.state())))
    assert same(take(loader, 60), take(resumed, 60))
    assert loader.state()["epoch"] > 1 and loader.state() == resumed.state()


def test_val_batches_are_fixed_and_from_val_only(data):
    c, _, tok = data
    docs, kind_of = tokenized(tok, c, "val")
    for kind in corpus.KINDS:
        val = val_batches(c, tok, kind, 1, 32, max_tokens=128)
        assert len(val) == 4 and same(val, val_batches(c, tok, kind, 1, 32, max_tokens=128))
        for inputs, targets in val:
            for row in segments(tok, inputs, targets):
                found = [doc_of(docs, seg) for seg in row]
                assert None not in found and {kind_of[d] for d in found} == {kind}
    # a val split shorter than max_tokens gives what it has; shorter than a batch is an error
    assert 4 < len(val_batches(c, tok, "prose", 2, 32, max_tokens=10**9)) < 10**9 // 64
    with pytest.raises(InputError, match="too small for one batch"):
        val_batches(c, tok, "code", 64, 4096, max_tokens=1)


def test_bad_input_is_refused_clearly(data, tmp_path):
    c, tiny, tok = data
    with pytest.raises(InputError, match=f"no corpus at {tmp_path}"):
        PackedLoader(tmp_path, tok, B, T)
    with pytest.raises(InputError, match="must be positive"):
        PackedLoader(c, tok, 0, T)
    with pytest.raises(InputError, match="unknown kind 'poetry'"):
        val_batches(c, tok, "poetry", B, T, 1000)
    with pytest.raises(InputError, match="not a loader state"):
        PackedLoader(c, tok, B, T, state={"step": 3})
    loader = PackedLoader(c, tok, B, T, seed=0)
    loader.next_batch()
    state = loader.state()
    other_tok = Tokenizer.train(corpus.mixed_texts(tiny), vocab_size=600)
    for what, kwargs in [("seed", dict(corpus_dir=c, tokenizer=tok, seed=1)),
                         ("tokenizer", dict(corpus_dir=c, tokenizer=other_tok, seed=0)),
                         ("corpus", dict(corpus_dir=tiny, tokenizer=tok, seed=0))]:
        with pytest.raises(InputError, match=f"saved with another {what}"):
            PackedLoader(batch_size=B, seq_len=T, state=state, **kwargs)
