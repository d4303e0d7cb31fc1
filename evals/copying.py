"""Can the model copy from its context? The induction probe.

Every agentic task asks the model to repeat something it was just shown (a file name, a line it
must replace): without a circuit that looks back for the earlier copy of the current token and
predicts what followed it (an induction head), no amount of tool-format training gets the name
right. The probe: random runs of common tokens, each shown twice after BOS. A model that copies
predicts the second showing almost perfectly; one that cannot scores it like the first (a random
token's loss, ln V or worse; `make demo`'s model: bench/RESULTS.md, "Can the demo model copy at
all?"). Reported: the loss on each showing, its drop, and the share of second-showing tokens its
argmax gets right.
"""

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from trainer import model
from trainer.checkpoint import load_model

RUNS, LENGTH = 16, 40  # 16 runs of 40 tokens: 624 scored tokens a showing, one small batch
COMMON = 2048  # the runs' tokens: ids 256 .. 256 + COMMON (see copy_rows)


def copy_rows(tok, runs: int, length: int, seed: int = 0) -> np.ndarray:
    """(runs, 1 + 2 * length) int32: BOS, then `length` random common tokens, then the same again.
    Common = the first COMMON merges (ids from 256): BPE merges the most frequent pairs first, so
    these are pieces every model has seen often (a file name is made of them too); byte tokens
    are mostly unprintable, and rare merges test the embeddings, not copying."""
    rng = np.random.default_rng(seed)
    spans = rng.integers(256, min(256 + COMMON, len(tok.ranks)), size=(runs, length))
    return np.concatenate([np.full((runs, 1), tok.bos_id), spans, spans], axis=1).astype(np.int32)


@partial(jax.jit, static_argnames="cfg")
def _scores(params, ids, cfg):
    logits = model.forward(params, ids[:, :-1], cfg)
    targets = ids[:, 1:]
    losses = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return losses, jnp.argmax(logits, -1) == targets


def evaluate(run_dir, runs: int = RUNS, length: int = LENGTH, seed: int = 0, loaded=None) -> dict:
    params, cfg, tok, meta = loaded or load_model(run_dir)
    if 1 + 2 * length > cfg.seq_len:
        length = (cfg.seq_len - 1) // 2
    t0 = time.perf_counter()
    losses, hits = map(np.asarray, _scores(params, jnp.asarray(copy_rows(tok, runs, length, seed)), cfg))
    # target j is token j + 1. Each showing is scored from its second token: the first follows a
    # token never seen followed by anything, so not even a perfect copier can guess it
    first, second = slice(1, length), slice(length + 1, 2 * length)
    out = {"kind": "copy", "run": str(run_dir), "step": meta["step"], "runs": runs, "length": length,
           "seed": seed, "first_loss": float(losses[:, first].mean()),
           "second_loss": float(losses[:, second].mean()),
           "second_accuracy": float(hits[:, second].mean()), "first_accuracy": float(hits[:, first].mean())}
    out["copy_gain"] = out["first_loss"] - out["second_loss"]
    out["seconds"] = time.perf_counter() - t0
    return out
