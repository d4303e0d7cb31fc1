"""Tokenizer benchmark: training rustbpe vs HF tokenizers, encoding with tiktoken vs HF.

Same text for everyone: the local corpus's training docs (built if missing), mixed 1:5
code:prose, each doc cropped to 10k chars, at least 50 MB. Each trainer runs in its own
subprocess and streams the text from the parquet shards, so its peak RSS is its own.
Prints markdown tables for bench/RESULTS.md.

    .venv/bin/python bench/tokenizer.py [--mb 60] [--vocab 8192 32768]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nanocode.common import nanocode_home  # noqa: E402


def bench_texts(corpus_dir: Path, n_bytes: int, split: str = "train"):
    """The same stream for every trainer: 1:5 code:prose, docs cropped to 10k chars, n_bytes of it."""
    from trainer import corpus

    seen = 0
    for text in corpus.mixed_texts(corpus_dir, split, (1, 5), 0, None):
        yield text[:10_000]
        seen += len(text[:10_000].encode())
        if seen >= n_bytes:
            return


def train_rustbpe(docs, vocab):
    from trainer.tokenizer import Tokenizer

    return Tokenizer.train(iter(docs), vocab)


def train_hf(docs, vocab):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from trainer.tokenizer import SPLIT_PATTERN

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(docs, trainer)
    return tok


def child(which: str, corpus_dir: str, n_bytes: int, vocab: int) -> None:
    """Runs in a subprocess, streaming its text, so its peak RSS is the trainer's own."""
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    tok = (train_rustbpe if which == "rustbpe" else train_hf)(bench_texts(Path(corpus_dir), n_bytes), vocab)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    encode = tok.encode if which == "rustbpe" else (lambda s: tok.encode(s).ids)
    val = list(bench_texts(Path(corpus_dir), 2_000_000, "val"))
    n_tokens = sum(len(encode(v)) for v in val)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak / 1024, "base_rss_mb": base_rss / 1024,
                      "val_bytes_per_token": sum(len(v.encode()) for v in val) / n_tokens}))


def run_child(which, corpus_dir, n_bytes, vocab) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", which, str(corpus_dir), str(n_bytes), str(vocab)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def local_corpus() -> Path:
    from trainer import local_corpus

    corpus_dir = nanocode_home() / "corpus" / "bench"
    if not (corpus_dir / "manifest.json").exists():
        print(f"building the local corpus at {corpus_dir} ...", flush=True)
        local_corpus.build(corpus_dir)
    return corpus_dir


def encode_figures(docs: list[str], vocab: int) -> dict:
    """tiktoken single and batched vs HF tokenizers batched, on the same trained merges."""
    from trainer.tokenizer import Tokenizer

    tok = Tokenizer.train(iter(docs[: len(docs) // 4]), vocab)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    t0 = time.perf_counter()
    for d in docs:
        tok.encode(d)
    single = mb / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    tok.encode_batch(docs, num_threads=os.cpu_count() or 1)
    batched = mb / (time.perf_counter() - t0)
    hf = train_hf(docs[: len(docs) // 4], vocab)
    t0 = time.perf_counter()
    hf.encode_batch(docs)
    hf_batched = mb / (time.perf_counter() - t0)
    return {"tiktoken_single_mb_s": single, "tiktoken_batch_mb_s": batched, "hf_batch_mb_s": hf_batched}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=60, help="megabytes of training text (>= 50 for the issue)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[8192, 32768])
    args = ap.parse_args()

    corpus_dir, n_bytes = local_corpus(), args.mb * 1_000_000
    docs = list(bench_texts(corpus_dir, n_bytes))
    size_mb = sum(len(d.encode()) for d in docs) / 1e6
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"text: {len(docs):,} docs, {size_mb:.1f} MB (code:prose 1:5, docs cropped to 10k chars)\n")

    print("| vocab | trainer | train s | MB/s | peak RSS MB | of it, before training | val bytes/token | speed vs HF |")
    print("|---|---|---|---|---|---|---|---|")
    for vocab in args.vocab:
        r = {w: run_child(w, corpus_dir, n_bytes, vocab) for w in ("rustbpe", "hf")}
        for w, label in (("rustbpe", "rustbpe"), ("hf", "HF tokenizers")):
            print(f"| {vocab:,} | {label} | {r[w]['seconds']:.1f} | {size_mb / r[w]['seconds']:.1f} | "
                  f"{r[w]['peak_rss_mb']:.0f} | {r[w]['base_rss_mb']:.0f} | {r[w]['val_bytes_per_token']:.2f} | "
                  f"{r['hf']['seconds'] / r[w]['seconds']:.2f}x |", flush=True)

    e = encode_figures(docs, args.vocab[0])
    print(f"\nencode, vocab {args.vocab[0]:,}, {size_mb:.1f} MB:")
    print("| encoder | MB/s | vs HF batched |\n|---|---|---|")
    for key, label in (("tiktoken_single_mb_s", "tiktoken, one doc at a time"),
                       ("tiktoken_batch_mb_s", f"tiktoken, batched ({os.cpu_count()} threads)"),
                       ("hf_batch_mb_s", "HF tokenizers, encode_batch")):
        print(f"| {label} | {e[key]:.1f} | {e[key] / e['hf_batch_mb_s']:.2f}x |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
