"""A tiny real pretrained run (d1, vocab 512) in a few seconds, for tests and benches that need a
checkpoint: its replies are noise, but real, deterministic noise."""

from pathlib import Path

from trainer import configs, corpus, local_corpus, train
from trainer.tokenizer import Tokenizer


def train_tiny_run(root: Path, *, seq_len: int = 64, steps: int = 3, device_batch_size: int = 2,
                   corpus_chars: int = 800_000, tokenizer_chars: int = 500_000, depth: int = 1,
                   eval_every: int = 1000, out: str = "run", **model) -> Path:
    """Corpus, tokenizer and `steps` pretraining steps under root; returns the run directory (root/out).
    `model`: GPTConfig fields (x0_mix=False, ...)."""
    local_corpus.build(root / "corpus", max_chars=corpus_chars, val_fraction=0.1)
    tok = Tokenizer.train(corpus.mixed_texts(root / "corpus", max_chars=tokenizer_chars), vocab_size=512)
    tok.save(root / "tok")
    cfg = configs.get_config(f"d{depth}", vocab_size=tok.vocab_size, seq_len=seq_len,
                             device_batch_size=device_batch_size, total_batch_tokens=1024, num_steps=steps,
                             eval_every=eval_every, eval_tokens=1024, sample_every=0, **model)
    train.train(cfg, train.RunPaths(corpus=root / "corpus", tokenizer=root / "tok", out=root / out),
                log=lambda *a: None)
    return root / out
