"""Training-step benchmark: tokens/s, FLOP/s, peak RSS and compile time of the jitted pretraining
step, and with --anchor the same for nanochat's own scripts.base_train, in the same run.

Default shape: depth 4, d_model 256 (4 heads of 64), seq 256, vocab 32768, 2048 tokens per step,
fp32 (nanochat's CPU dtype; --dtype bfloat16 runs both sides in bf16, nanochat through its
NANOCHAT_DTYPE). FLOPs/token is the formula both projects use (6N + attention).

    .venv/bin/python bench/train.py [--depth 4] [--steps 30] [--repeats 3] [--profile]
    .venv/bin/python bench/train.py --anchor /path/to/nanochat     # a clone of karpathy/nanochat

Without --anchor: random tokens, our rows only (no other project's figure is printed). With
--anchor DIR: both sides train on the same corpus through nanochat's own tokenizer (see
bench/nanochat_anchor.py), runs alternate ours, nanochat's, ours, ... (--repeats each), and the
table ends with the ratio of the medians. nanochat's tok/s is what its log prints (steps 10 on,
its data loading included); ours is the jitted step alone, steps 3 on, batches already on the device.
Ours runs with glibc set to keep freed memory, as `trainer run` does (trainer/malloc.py), and by
default nanochat's scripts get the same settings through their environment (torch gains from them
too: bench/RESULTS.md); --nanochat-malloc default runs nanochat under glibc's defaults.
--profile times the step's parts alone (forward, backward, lm_head + cross-entropy, optimizer,
Polar Express); with --anchor also nanochat's own compiled step under torch.profiler (--repeats
steps), its self CPU time by the same parts: the breakdown in bench/RESULTS.md.
"""

import argparse
import os
import platform
import resource
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
from trainer import malloc, model, optim  # noqa: E402
from trainer.configs import effective_hparams, for_depth  # noqa: E402
from trainer.train import make_train_step, measured_matmul_peak  # noqa: E402

WARMUP = 3  # our steps left out of the median (the first runs allocate)


def setup(args, vocab: int):
    cfg = for_depth(args.depth, vocab_size=vocab, seq_len=args.seq_len, head_dim=64)
    cfg = replace(cfg, model=replace(cfg.model, compute_dtype=args.dtype, attention=args.attention),
                  device_batch_size=args.batch, total_batch_tokens=args.batch * args.seq_len)
    params = model.init_params(cfg.model, jax.random.key(0))
    hp = effective_hparams(cfg)
    tx = optim.build_optimizer(params, matrix_lr=hp["matrix_lr"], embedding_lr=hp["embedding_lr"],
                               unembedding_lr=hp["unembedding_lr"], scalar_lr=hp["scalar_lr"])
    return cfg, params, tx


class Ours:
    """The jitted step, compiled once; each run() trains `steps` steps on `batches` in turn."""

    def __init__(self, args, batches: np.ndarray):
        self.cfg, self.params, self.tx = setup(args, args.vocab)
        self.opt_state = optim.init_state(self.tx, self.params)
        self.batches = [(jnp.asarray(b[None, :, :-1]), jnp.asarray(b[None, :, 1:])) for b in batches]
        loss = lambda p, b, _: (model.loss_fn(p, *b, self.cfg.model), {})
        one = jnp.float32(1.0)
        self.args = (None, one, jnp.float32(0.95), one)  # frozen, lr_mult, momentum, weight decay
        t0 = time.perf_counter()
        step = jax.jit(make_train_step(loss, self.tx), donate_argnums=(0, 1))
        self.step = step.lower(self.params, self.opt_state, self.batches[0], *self.args).compile()
        self.compile_s = time.perf_counter() - t0

    def run(self, steps: int) -> dict:
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            self.params, self.opt_state, loss, _ = self.step(self.params, self.opt_state,
                                                             self.batches[i % len(self.batches)], *self.args)
            loss.block_until_ready()
            times.append(time.perf_counter() - t0)
        tok_s = [self.cfg.total_batch_tokens / t for t in times[WARMUP:] or times]
        return {"tok_s": float(np.median(tok_s)), "tok_s_range": (min(tok_s), max(tok_s)),
                "first_step_s": self.compile_s, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def profile_nanochat(args, root) -> None:
    """torch.profiler over nanochat's own compiled step (bench/nanochat_anchor.py): self CPU time by part."""
    c = for_depth(args.depth, vocab_size=args.vocab, seq_len=args.seq_len, head_dim=64).model
    r = nanochat_anchor.train_profile(root, Path(args.anchor_data), depth=c.n_layer, d_model=c.d_model,
                                      n_head=c.n_head, vocab=args.vocab, seq_len=args.seq_len, rows=args.batch,
                                      steps=args.repeats)
    steps = len(r["step_s"])
    total = sum(t for _, _, t in r["self_us"])
    print(f"\nnanochat's step under torch.profiler (torch {r['torch']}, {r['threads']} threads, {steps} steps, "
          f"wall {np.median(r['step_s']) * 1e3:.0f} ms median per step, profiler on; first step "
          f"{r['first_step_s']:.0f} s)\n\n| region | part | self CPU ms per step | share |\n|---|---|---|---|")
    for region, part, t in sorted(r["self_us"], key=lambda x: (x[0], -x[2])):
        print(f"| {region} | {part or 'other'} | {t / 1e3 / steps:.0f} | {t / total:.0%} |")
    print("\nits biggest ops (self CPU ms per step): " + "; ".join(
        f"{region} {name[:60]} {t / 1e3 / steps:.0f}" for region, name, t in r["top"][:12]))


def profile(args) -> None:
    """Each part of the step jitted and timed alone, interleaved, best of --repeats x 3."""
    cfg, params, tx = setup(args, args.vocab)
    c = cfg.model
    key = jax.random.split(jax.random.key(1), 3)
    # trained-looking output projections (init has them at zero, which would make their grads trivial)
    params["blocks"]["wo"] = 0.02 * jax.random.normal(key[0], params["blocks"]["wo"].shape)
    params["blocks"]["w_proj"] = 0.02 * jax.random.normal(key[1], params["blocks"]["w_proj"].shape)
    ids = jax.random.randint(key[2], (args.batch, args.seq_len + 1), 0, args.vocab)
    x, y = ids[:, :-1], ids[:, 1:]
    opt_state = optim.init_state(tx, params)
    grads = jax.grad(model.loss_fn)(params, x, y, c)
    h = model.hidden(params, x, c)[0]
    one, momentum = jnp.float32(1.0), jnp.float32(0.95)

    def head_loss(lm_head, h):  # lm_head + soft-cap + cross-entropy over the vocab, as loss_fn runs them
        return model.head_loss(h, lm_head, y, c.softcap)

    step = make_train_step(lambda p, b, _: (model.loss_fn(p, *b, c), {}), tx)
    parts = {
        "whole step": (lambda p, s: step(p, s, (x[None], y[None]), None, one, momentum, one), (params, opt_state)),
        "forward + loss": (lambda p: model.loss_fn(p, x, y, c), (params,)),
        "forward + backward": (jax.value_and_grad(lambda p: model.loss_fn(p, x, y, c)), (params,)),
        "  lm_head + CE, fwd + bwd": (jax.value_and_grad(head_loss, argnums=(0, 1)), (params["lm_head"], h)),
        "  blocks + embedding, fwd + bwd": (jax.grad(lambda p: jnp.vdot(model.hidden(p, x, c)[0], h)), (params,)),
        "optimizer update": (lambda g, s, p: optim.scaled_update(tx, g, s, p, one, muon_momentum=momentum,
                                                                 muon_weight_decay=one), (grads, opt_state, params)),
        "  Polar Express, all block matrices": (lambda b: jax.tree.map(optim.orthogonalize, b), (grads["blocks"],)),
    }
    fns = {name: jax.jit(f) for name, (f, _) in parts.items()}
    for name, f in fns.items():
        jax.block_until_ready(f(*parts[name][1]))
    times = {name: [] for name in parts}
    for _ in range(3 * args.repeats):
        for name, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*parts[name][1]))
            times[name].append(time.perf_counter() - t0)
    whole = min(times["whole step"])
    print("\n| part of our step (jitted alone) | ms (best) | ms (median) | share of the step |")
    print("|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {min(t) * 1e3:.0f} | {np.median(t) * 1e3:.0f} | {min(t) / whole:.0%} |")


def row(name: str, r: dict, flops_per_token: float) -> str:
    lo, hi = r["tok_s_range"]
    return (f"| {name} | {r['tok_s']:,.0f} ({lo:,.0f}-{hi:,.0f}) | {r['tok_s'] * flops_per_token / 1e9:.1f} | "
            f"{r['first_step_s']:.1f} | {r['peak_rss_gb']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=32768, help="with --anchor: the shared tokenizer's")
    ap.add_argument("--batch", type=int, default=8, help="rows per step (tokens/step = batch x seq)")
    ap.add_argument("--steps", type=int, default=30, help="steps per run (nanochat's timer skips its first 10)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--attention", default="xla")
    ap.add_argument("--anchor", help="a checkout of karpathy/nanochat: run its scripts.base_train beside ours")
    ap.add_argument("--nanochat-malloc", choices=("same", "default"), default="same",
                    help="nanochat under glibc set as ours (trainer/malloc.py, by environment: torch gains from it "
                         "too) or glibc's defaults")
    ap.add_argument("--anchor-data", default=str(Path(tempfile.gettempdir()) / "nanocode-bench-nanochat"),
                    help="NANOCHAT_BASE_DIR for the shared corpus, tokenizer and its checkpoint (reused)")
    ap.add_argument("--profile", action="store_true", help="also time the step's parts alone")
    args = ap.parse_args()

    kept = malloc.keep_freed_memory()  # as `trainer run` does; before the first jax call
    nanochat_kept = kept and args.nanochat_malloc == "same"
    if nanochat_kept:  # its scripts inherit our environment
        os.environ.update(malloc.ENV)
    os.environ.setdefault("NANOCHAT_DTYPE", args.dtype)  # nanochat's own dtype switch: both sides in one dtype
    dev = jax.devices()[0]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {dev.device_kind} ({cpu}), {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start, jax {jax.__version__}; glibc keeping freed memory "
          f"(trainer/malloc.py): ours {'yes' if kept else 'no'}"
          + (f", nanochat {'yes' if nanochat_kept else 'no'}; nanochat in {os.environ['NANOCHAT_DTYPE']}"
             if args.anchor else ""))
    anchor_error, root, enc = None, None, None
    if args.anchor:
        try:
            root = nanochat_anchor.checkout(args.anchor)
            enc = nanochat_anchor.prepare(root, Path(args.anchor_data))
            args.vocab = enc.n_vocab
        except InputError as e:
            anchor_error = str(e)
    if enc is not None:
        batches = nanochat_anchor.token_batches(enc, Path(args.anchor_data), args.steps, args.batch, args.seq_len)
    else:
        batches = np.random.default_rng(0).integers(0, args.vocab, (4, args.batch, args.seq_len + 1), dtype=np.int32)
    ours = Ours(args, batches)
    fpt = model.flops_per_token(ours.cfg.model)
    print(f"config: depth {args.depth}, d_model {ours.cfg.model.d_model}, seq {args.seq_len}, vocab {args.vocab}, "
          f"{ours.cfg.total_batch_tokens} tokens/step, {args.dtype}, {model.param_count(ours.cfg.model):,} params, "
          f"{fpt:.3g} FLOPs/token; data: {'the shared corpus' if enc is not None else 'random tokens'}")
    print("\n| run | tok/s median (range) | GFLOP/s | compile / first step s | peak RSS GB |")
    print("|---|---|---|---|---|", flush=True)
    results = {"ours": [], "nanochat": []}
    for i in range(args.repeats):
        results["ours"].append(ours.run(args.steps))
        print(row(f"ours {i + 1}", results["ours"][-1], fpt), flush=True)
        if root is not None and anchor_error is None:
            try:
                results["nanochat"].append(nanochat_anchor.base_train(
                    root, Path(args.anchor_data), depth=args.depth, seq_len=args.seq_len, rows=args.batch,
                    steps=args.steps))
                print(row(f"nanochat {i + 1}", results["nanochat"][-1], fpt), flush=True)
            except InputError as e:
                anchor_error = str(e)
    mine = float(np.median([r["tok_s"] for r in results["ours"]]))
    print(f"\nours: {mine:,.0f} tok/s, {mine * fpt / 1e9:.1f} GFLOP/s (median of {args.repeats} runs); "
          f"matmul peak {measured_matmul_peak(jnp.dtype(args.dtype)) / 1e9:.0f} GFLOP/s")
    if results["nanochat"]:
        theirs = float(np.median([r["tok_s"] for r in results["nanochat"]]))
        print(f"nanochat: {theirs:,.0f} tok/s, {theirs * fpt / 1e9:.1f} GFLOP/s (median of "
              f"{len(results['nanochat'])} runs); ours / nanochat = {mine / theirs:.2f}x")
    if args.profile:
        profile(args)
        if root is not None and anchor_error is None:
            try:
                profile_nanochat(args, root)
            except InputError as e:
                anchor_error = str(e)
    if anchor_error:
        print(f"error: {anchor_error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
