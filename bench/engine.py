"""Inference and preference-step benchmark.

1. Decoding: the Engine (KV cache, one jitted step per token) on a randomly initialised
   nanochat-d4-shaped model (depth 4, d_model 256, 4 heads x 64, vocab 32768, seq 256), greedy,
   prompt 64 tokens, 128 decoded, batch 1, 8 and 32: TTFT (the prompt's prefill + first sample),
   time per output token (TPOT, median over the steps; median and range over --repeats runs) and
   decode tok/s = batch / TPOT; beside it the cache-free path (the whole padded context re-run for
   every new token, the way a naive `generate` works).
   --anchor DIR (a checkout of karpathy/nanochat) runs nanochat's own Engine.generate on its own
   randomly initialised GPT of the same shape (num_samples = batch, greedy, in a subprocess:
   bench/nanochat_anchor.py), one nanochat run after each of ours, and prints both and the ratio.
   Without --anchor no other project's figure is printed. --profile times one decode step's parts.
2. DPO vs SFT: one optimizer step on the same sequences — SFT on 2B rows, DPO on B pairs (2B
   sequences) with the reference live in the step or its log-probs cached — plus what caching
   costs up front (one reference forward per pair, once).

    .venv/bin/python bench/engine.py [--depth 4] [--batches 1,8,32] [--repeats 3] [--no-dpo] [--profile]
    .venv/bin/python bench/engine.py --anchor /path/to/nanochat --no-dpo --profile
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import nanochat_anchor  # noqa: E402
from nanocode.common import InputError  # noqa: E402
from trainer import dpo, model, optim  # noqa: E402
from trainer.configs import effective_hparams, for_depth, for_platform  # noqa: E402
from trainer.engine import Engine, Token, decode_logits, greedy_ids  # noqa: E402
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


def bench_decode(cfg, params, tok, batches, repeats, anchor=None, prompt_len=64, new_tokens=128):
    """Our engine per batch, --repeats timed runs; with anchor = (checkout, base dir) nanochat's
    Engine in a subprocess after each of our rounds (interleaved). -> (rows, anchor error or None)."""
    engine = Engine(params, cfg, tok)
    rng = np.random.default_rng(0)
    prompts = {B: rng.integers(600, cfg.vocab_size, (B, prompt_len)).tolist() for B in batches}
    for B in batches:
        engine_decode(engine, prompts[B], new_tokens)  # compile the prefill and decode shapes (same cache bucket)
    ours, theirs, error = {B: [] for B in batches}, {B: [] for B in batches}, None
    for _ in range(repeats):
        for B in batches:
            ours[B].append(engine_decode(engine, prompts[B], new_tokens))
        if anchor and error is None:
            try:
                run = nanochat_anchor.engine_decode(
                    *anchor, depth=cfg.n_layer, d_model=cfg.d_model, n_head=cfg.n_head, vocab=cfg.vocab_size,
                    seq_len=cfg.seq_len, batches=batches, prompt_len=prompt_len, new_tokens=new_tokens)
                for B in batches:
                    theirs[B].append((run["decode"][B]["ttft_s"], run["decode"][B]["tpot_s"]))
            except InputError as e:
                error = str(e)
    forward = jax.jit(lambda p, ids, at: jnp.argmax(model.logits_of(p, model.hidden(p, ids, cfg)[0][:, at], cfg), -1))
    print("\n| batch | TTFT ms | TPOT ms median (range) | tok/s | nanochat TPOT ms median (range) | nanochat tok/s "
          "| ours / nanochat | cache-free tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    out = {}
    for B in batches:
        cache_free_decode(forward, params, prompts[B], 2, cfg.seq_len)  # compile
        # its cost per token is flat (a fixed-shape forward every time): 16 tokens measure it
        ref = min(cache_free_decode(forward, params, prompts[B], 16, cfg.seq_len)[1] for _ in range(repeats))
        tpot = [r[1] for r in ours[B]]
        mine = statistics.median(tpot)
        row = (f"| {B} | {statistics.median(r[0] for r in ours[B]) * 1e3:.0f} | {_ms(tpot)} | {B / mine:,.0f} | ")
        if theirs[B]:
            their_tpot = [r[1] for r in theirs[B]]
            row += f"{_ms(their_tpot)} | {B / statistics.median(their_tpot):,.0f} | " \
                   f"**{statistics.median(their_tpot) / mine:.2f}x** | "
        else:
            row += "- | - | - | "
        print(row + f"{B / ref:,.0f} |", flush=True)
        out[B] = (B / mine, B / statistics.median(their_tpot) if theirs[B] else None)
    return out, error


def _ms(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1e3:.2f} ({min(seconds) * 1e3:.2f}-{max(seconds) * 1e3:.2f})"


def profile_decode(cfg, params, batches, repeats, cached=128):
    """One decode step's parts at each batch, each jitted alone on a cache holding `cached`
    tokens per row, timed interleaved: median (best) over 5 x --repeats rounds."""
    key = jax.random.split(jax.random.key(1), 4)
    params = {**params, "blocks": {**params["blocks"],  # trained-looking output projections (init zeroes them)
                                   "wo": 0.02 * jax.random.normal(key[0], params["blocks"]["wo"].shape),
                                   "w_proj": 0.02 * jax.random.normal(key[1], params["blocks"]["w_proj"].shape)}}
    S, L = cfg.seq_len, cfg.n_layer
    engine = Engine(params, cfg, small_tokenizer())
    step, held = engine.step, engine.params  # the engine's own jitted step (cache donated), its weights' layout
    w0 = held["blocks"][0]
    layers = jax.jit(lambda kv, ids, pos, n: model.hidden(held, ids, cfg, {"k": kv[0], "v": kv[1], "pos": pos,
                                                                           "n": n}), donate_argnums=(0,))
    print("\n| part of one decode step (jitted alone) | " + " | ".join(f"batch {B} ms" for B in batches) + " |")
    print("|---|" + "---|" * len(batches))
    rows: dict[str, list[str]] = {}
    for B in batches:
        shape = (B, cfg.n_kv_head, S, cfg.head_dim)
        kv = tuple(tuple(jax.random.normal(jax.random.fold_in(k, i), shape) for i in range(L)) for k in key[2:])
        ids, pos, n = jnp.ones((B, 1), jnp.int32), jnp.full((B,), cached, jnp.int32), jnp.ones((B,), jnp.int32)
        x = jax.random.normal(key[0], (B, 1, cfg.d_model))
        cos, sin = model.rope(pos[:, None], cfg.head_dim, cfg.rope_base)
        h = model.hidden(held, ids, cfg, {"k": kv[0], "v": kv[1], "pos": pos, "n": n})[0][:, 0]
        logits = model.logits_of(params, h, cfg)
        zeros, off = jnp.zeros((B,), jnp.uint32), (jnp.zeros((B,)), jnp.zeros((B,), jnp.int32), jnp.ones((B,)))
        # the two that take the whole cache donate it, as the engine does: it comes back as output [1]
        state = {"kv": kv}
        parts = {
            "whole step (what the engine runs)": (
                lambda: step(held, state["kv"], ids, pos, n, zeros, zeros.astype(jnp.int32), *off, mode="greedy",
                             fresh=False), ()),
            f"{L} layers, cache writes included": (lambda: layers(state["kv"], ids, pos, n), ()),
            "  attention over the cache, one layer": (jax.jit(
                lambda x, k, v: model.attention(x, w0, cos, sin, cfg, (k, v, pos[:, None], n[:, None] > 0)),
                donate_argnums=(1, 2)), None),
            "  MLP, one layer": (lambda x: model.mlp(x, w0), (x,)),
            "lm_head + soft-cap over 32k (what sampling takes)": (lambda h: decode_logits(held, h, cfg), (h,)),
            "  argmax over those logits": (lambda lg: jnp.argmax(lg, -1), (logits,)),
            "lm_head + greedy pick (what the greedy step runs)": (lambda h: greedy_ids(held, h, cfg), (h,)),
        }
        attn_kv = [tuple(jnp.zeros(shape) for _ in "kv")]

        def call(name, f, args):
            if args is None:  # the one-layer attention: its own donated layer cache
                y, attn_kv[0] = f(x, *attn_kv[0])
                return y
            out = f(*args)
            if not args:  # a whole-cache part: its output [1] is the cache it was donated
                state["kv"] = out[1]
            return out

        fns = {name: f if args is None or not args else jax.jit(f) for name, (f, args) in parts.items()}
        for name, f in fns.items():  # compile
            jax.block_until_ready(call(name, f, parts[name][1]))
        times: dict[str, list[float]] = {name: [] for name in parts}
        for _ in range(5 * repeats):
            for name, f in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(call(name, f, parts[name][1]))
                times[name].append(time.perf_counter() - t0)
        for name, t in times.items():
            rows.setdefault(name, []).append(f"{statistics.median(t) * 1e3:.2f} ({min(t) * 1e3:.2f})")
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


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
    ap.add_argument("--no-dpo", action="store_true", help="decoding only")
    ap.add_argument("--profile", action="store_true", help="also time one decode step's parts alone")
    ap.add_argument("--anchor", help="a checkout of karpathy/nanochat: run its Engine.generate beside ours")
    ap.add_argument("--anchor-data", default=str(Path(tempfile.gettempdir()) / "nanocode-bench-nanochat"),
                    help="NANOCHAT_BASE_DIR for its tokenizer (made once, shared with bench/train.py)")
    args = ap.parse_args()

    cfg = for_platform(for_depth(args.depth, vocab_size=32768, seq_len=256, head_dim=64), jax.default_backend()).model
    params = model.init_params(cfg, jax.random.key(0))
    device = jax.devices()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpu(s), load average {os.getloadavg()[0]:.1f} at start, "
          f"jax {jax.__version__} on {device.platform} ({device.device_kind}); depth {cfg.n_layer}, "
          f"d_model {cfg.d_model}, vocab {cfg.vocab_size}, seq {cfg.seq_len}, {cfg.compute_dtype}")
    anchor, error = None, None
    if args.anchor:
        try:
            root = nanochat_anchor.checkout(args.anchor)
            nanochat_anchor.prepare(root, Path(args.anchor_data))  # its tokenizer (the Engine asks it for BOS)
            anchor = (root, Path(args.anchor_data))
        except InputError as e:
            error = str(e)
    _, decode_error = bench_decode(cfg, params, small_tokenizer(), [int(b) for b in args.batches.split(",")],
                                   args.repeats, anchor)
    print(f"load average {os.getloadavg()[0]:.1f} after decoding")
    if args.profile:
        profile_decode(cfg, params, [int(b) for b in args.batches.split(",")], args.repeats)
    if not args.no_dpo:
        bench_dpo_step(cfg, params, args.pairs, args.repeats)
    if error or decode_error:
        print(f"error: {error or decode_error}", file=sys.stderr)
        sys.exit(2)

if __name__ == "__main__":
    main()
