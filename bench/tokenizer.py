"""Tokenizer benchmark: training rustbpe vs HF tokenizers, encoding with tiktoken vs HF.

Same text for everyone: the local corpus's training docs (built if missing), mixed 1:5
code:prose, each doc cropped to 10k chars, at least 50 MB. Each trainer runs in its own
subprocess so its peak RSS is its own. Prints a markdown table for bench/RESULTS.md.

    .venv/bin/python bench/tokenizer.py [--mb 60] [--vocab 8192 32768]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.common import nanocode_home  # noqa: E402


def load_docs(path: str) -> list[str]:
    return json.loads(Path(path).read_text())


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


def child(which: str, docs_path: str, vocab: int, val_path: str) -> None:
    """Runs in a subprocess: train, then report seconds, peak RSS and compression on val."""
    docs, val = load_docs(docs_path), load_docs(val_path)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    tok = (train_rustbpe if which == "rustbpe" else train_hf)(docs, vocab)
    seconds = time.perf_counter() - t0
    encode = tok.encode if which == "rustbpe" else (lambda s: tok.encode(s).ids)
    n_bytes = sum(len(v.encode()) for v in val)
    n_tokens = sum(len(encode(v)) for v in val)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "docs_rss_mb": base_rss / 1024, "val_bytes_per_token": n_bytes / n_tokens}))


def run_child(which, docs_path, vocab, val_path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", which, docs_path, str(vocab), val_path],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def gather(mb: int) -> tuple[list[str], list[str]]:
    from trainer import corpus

    corpus_dir = nanocode_home() / "corpus" / "bench"
    if not (corpus_dir / "manifest.json").exists():
        print(f"building the local corpus at {corpus_dir} ...", flush=True)
        corpus.build_local(corpus_dir)
    docs, n = [], 0
    for text in corpus.mixed_texts(corpus_dir, "train", (1, 5), 0, None):
        docs.append(text[:10_000])
        n += len(docs[-1].encode())
        if n >= mb * 1_000_000:
            break
    val = list(corpus.mixed_texts(corpus_dir, "val", (1, 5), 0, 2_000_000))
    return docs, val


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

    docs, val = gather(args.mb)
    size_mb = sum(len(d.encode()) for d in docs) / 1e6
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"text: {len(docs):,} docs, {size_mb:.1f} MB (code:prose 1:5, docs cropped to 10k chars)\n")

    with tempfile.TemporaryDirectory() as tmp:
        docs_path, val_path = f"{tmp}/docs.json", f"{tmp}/val.json"
        Path(docs_path).write_text(json.dumps(docs))
        Path(val_path).write_text(json.dumps(val))
        print("| vocab | trainer | train s | peak RSS MB | of it, training | val bytes/token | speed vs HF |")
        print("|---|---|---|---|---|---|---|")
        for vocab in args.vocab:
            r = {w: run_child(w, docs_path, vocab, val_path) for w in ("rustbpe", "hf")}
            for w, label in (("rustbpe", "rustbpe"), ("hf", "HF tokenizers")):
                ratio = r["hf"]["seconds"] / r[w]["seconds"]
                extra = r[w]["peak_rss_mb"] - r[w]["docs_rss_mb"]
                print(f"| {vocab:,} | {label} | {r[w]['seconds']:.1f} | {r[w]['peak_rss_mb']:.0f} | {extra:.0f} | "
                      f"{r[w]['val_bytes_per_token']:.2f} | {ratio:.2f}x |", flush=True)

    e = encode_figures(docs, args.vocab[0])
    print(f"\nencode, vocab {args.vocab[0]:,}, {size_mb:.1f} MB:")
    print("| encoder | MB/s | vs HF batched |\n|---|---|---|")
    for key, label in (("tiktoken_single_mb_s", "tiktoken, one doc at a time"),
                       ("tiktoken_batch_mb_s", f"tiktoken, batched ({os.cpu_count()} threads)"),
                       ("hf_batch_mb_s", "HF tokenizers, encode_batch")):
        print(f"| {label} | {e[key]:.1f} | {e[key] / e['hf_batch_mb_s']:.2f}x |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
