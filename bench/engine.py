"""Inference and preference-step benchmark.

1. Decoding: the Engine (KV cache, one jitted step per token) vs the cache-free path (the whole
   padded context re-run for every new token, the way a naive `generate` works), greedy, on a
   randomly initialised nanochat-d4-shaped model (depth 4, d_model 256, 4 heads x 64, vocab
   32768, seq 256): prompt 64 tokens, 128 decoded, batch 1, 8 and 32. Per batch: TTFT (the
   prompt's prefill + first sample), median time per output token (TPOT) and decode tok/s =
   batch / TPOT. Best of --repeats. (Against another project on the same weights and machine:
   bench/export.py, our engine beside transformers' generate.)
2. DPO vs SFT: one optimizer step on the same sequences — SFT on 2B rows, DPO on B pairs (2B
   sequences) with the reference live in the step or its log-probs cached — plus what caching
   costs up front (one reference forward per pair, once).

    .venv/bin/python bench/engine.py [--depth 4] [--batches 1,8,32] [--repeats 3]
"""

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from trainer import dpo, model, optim  # noqa: E402
from trainer.configs import effective_hparams, for_depth, for_platform  # noqa: E402
from trainer.engine import Engine, Token  # noqa: E402
from trainer.tokenizer import Tokenizer  # noqa: E402
from trainer.train import make_train_step  # noqa: E402


def small_tokenizer():
    """The Engine needs the special tokens' ids; the model's 32768-row vocab is random anyway."""
    texts = [p.read_text(errors="replace") for p in sorted(Path(os.__file__).parent.glob("json/*.py"))]
    return Tokenizer.train(texts, vocab_size=512)


def engine_decode(engine, prompts, new_tokens):
    """(ttft_s, median tpot_s) of one greedy generate call; no stop tokens: every row runs to the end."""
    t0 = time.perf_counter()
    times = []
    for event in engine.generate(prompts, new_tokens, stop=()):
        if isinstance(event, Token) and event.row == 0:
            times.append(time.perf_counter())
    return times[0] - t0, statistics.median(np.diff(times))


def cache_free_decode(forward, params, prompts, new_tokens, seq_len):
    """Greedy decoding that re-runs the whole (padded, fixed-shape) context for every token."""
    B, P = len(prompts), len(prompts[0])
    ids = np.zeros((B, seq_len), np.int32)
    ids[:, :P] = prompts
    t0, times = time.perf_counter(), []
    for pos in range(P, P + new_tokens):
        ids[:, pos] = np.asarray(forward(params, ids, pos - 1))
        times.append(time.perf_counter())
    return times[0] - t0, statistics.median(np.diff(times))


def bench_decode(cfg, params, tok, batches, repeats, prompt_len=64, new_tokens=128):
    engine = Engine(params, cfg, tok)
    forward = jax.jit(lambda p, ids, at: jnp.argmax(model.logits_of(p, model.hidden(p, ids, cfg)[0][:, at], cfg), -1))
    rng = np.random.default_rng(0)
    print("\n| batch | engine TTFT | engine TPOT | engine tok/s | cache-free TPOT | cache-free tok/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    out = {}
    for B in batches:
        prompts = rng.integers(600, cfg.vocab_size, (B, prompt_len)).tolist()
        engine_decode(engine, prompts, new_tokens)  # compile the prefill and decode shapes (same cache bucket)
        cache_free_decode(forward, params, prompts, 2, cfg.seq_len)
        runs = [engine_decode(engine, prompts, new_tokens) for _ in range(repeats)]
        eng = (min(r[0] for r in runs), min(r[1] for r in runs))
        # its cost per token is flat (a fixed-shape forward every time): 16 tokens measure it
        ref = min((cache_free_decode(forward, params, prompts, 16, cfg.seq_len) for _ in range(repeats)),
                  key=lambda r: r[1])
        out[B] = (B / eng[1], B / ref[1])
        print(f"| {B} | {eng[0] * 1e3:.0f} ms | {eng[1] * 1e3:.1f} ms | {B / eng[1]:,.0f} | {ref[1] * 1e3:.1f} ms | "
              f"{B / ref[1]:,.0f} | {ref[1] / eng[1]:.1f}x |", flush=True)
    return out


def bench_dpo_step(cfg, params, pairs, repeats, seq_len=256):
    """Seconds per optimizer step: SFT on 2*pairs rows vs DPO (live / cached reference) on `pairs`."""
    train_cfg = replace(for_depth(4), model=cfg, device_batch_size=2 * pairs, total_batch_tokens=2 * pairs * seq_len)
    hp = effective_hparams(train_cfg)
    tx = optim.build_optimizer(params, matrix_lr=hp["matrix_lr"], embedding_lr=hp["embedding_lr"],
                               unembedding_lr=hp["unembedding_lr"], scalar_lr=hp["scalar_lr"])
    rng = np.random.default_rng(1)
    ids = rng.integers(600, cfg.vocab_size, (1, pairs, 2, seq_len + 1)).astype(np.int32)
    targets = ids[..., 1:].copy()
    targets[..., : seq_len // 2] = -1  # the prompt half is not scored
    pair_batch = {"inputs": jnp.asarray(ids[..., :-1]), "targets": jnp.asarray(targets)}
    sft_batch = (pair_batch["inputs"].reshape(1, 2 * pairs, seq_len), pair_batch["targets"].reshape(1, 2 * pairs, seq_len))
    ref_logps = dpo.sequence_logps(params, pair_batch["inputs"][0], pair_batch["targets"][0], cfg)[0][None]

    def dpo_fn(p, b, frozen):
        return dpo.dpo_loss(p, b, frozen, cfg=cfg, beta=0.1, kind="sigmoid")

    cases = {"sft": (lambda p, b, _: (model.loss_fn(p, *b, cfg), {}), sft_batch, None),
             "dpo live": (dpo_fn, pair_batch, params),
             "dpo cached": (dpo_fn, {**pair_batch, "ref_logps": ref_logps}, None)}
    one = jnp.float32(1.0)
    times = {}
    for name, (loss, batch, frozen) in cases.items():
        step = jax.jit(make_train_step(loss, tx))
        state = (params, optim.init_state(tx, params))
        args = (batch, frozen, one, jnp.float32(0.95), one)
        jax.block_until_ready(step(*state, *args))
        runs = []
        for _ in range(max(repeats, 3)):
            t0 = time.perf_counter()
            jax.block_until_ready(step(*state, *args))
            runs.append(time.perf_counter() - t0)
        times[name] = min(runs)
    ref_fn = jax.jit(lambda p, x, y: dpo.sequence_logps(p, x, y, cfg)[0])
    jax.block_until_ready(ref_fn(params, pair_batch["inputs"][0], pair_batch["targets"][0]))
    t0 = time.perf_counter()
    jax.block_until_ready(ref_fn(params, pair_batch["inputs"][0], pair_batch["targets"][0]))
    precompute = time.perf_counter() - t0
    print(f"\n| step ({pairs} pairs = {2 * pairs} sequences of {seq_len}) | seconds | vs SFT |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.3f} | {t / times['sft']:.2f}x |")
    print(f"| caching the reference: one forward per batch, once | {precompute:.3f} | "
          f"{precompute / times['sft']:.2f}x |")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=4, help="DPO pairs per step")
    args = ap.parse_args()

    cfg = for_platform(for_depth(args.depth, vocab_size=32768, seq_len=256, head_dim=64), jax.default_backend()).model
    params = model.init_params(cfg, jax.random.key(0))
    device = jax.devices()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpu(s), jax {jax.__version__} on {device.platform} "
          f"({device.device_kind}); depth {cfg.n_layer}, d_model {cfg.d_model}, vocab {cfg.vocab_size}, "
          f"seq {cfg.seq_len}, {cfg.compute_dtype}")
    bench_decode(cfg, params, small_tokenizer(), [int(b) for b in args.batches.split(",")], args.repeats)
    bench_dpo_step(cfg, params, args.pairs, args.repeats)


if __name__ == "__main__":
    main()
