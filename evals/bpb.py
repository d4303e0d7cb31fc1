"""Bits per byte of a run's model on the corpus's held-out prose and code (its val shards).

The same measure and the same batches as training's validation (trainer.loader.val_batches,
trainer.train.bits_per_byte): vocab-independent, so runs with different tokenizers compare.
"""

import time

from trainer.checkpoint import load_model
from trainer.loader import val_batches
from trainer.train import bits_per_byte


def evaluate(run_dir, corpus_dir, max_tokens: int = 2**16, batch_size: int = 8, loaded=None) -> dict:
    params, cfg, tok, meta = loaded or load_model(run_dir)
    token_bytes = tok.token_bytes()
    out = {"kind": "bpb", "run": str(run_dir), "step": meta["step"], "corpus": str(corpus_dir),
           "seq_len": cfg.seq_len, "bpb": {}, "tokens": {}}
    t0 = time.perf_counter()
    for kind in ("prose", "code"):
        batches = val_batches(corpus_dir, tok, kind, batch_size, cfg.seq_len, max_tokens)
        out["bpb"][kind] = bits_per_byte(params, batches, cfg, token_bytes)
        out["tokens"][kind] = int(sum((y >= 0).sum() for _, y in batches))
    out["seconds"] = time.perf_counter() - t0
    return out
