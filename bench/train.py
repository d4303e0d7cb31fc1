"""Training-step benchmark: tokens/s, achieved FLOP/s and MFU of the jitted pretraining step.

Default config: depth 4, d_model 256 (head dim 64), seq 256, vocab 8192, 2048 tokens per step,
fp32. The matmul peak is measured in the same run, so MFU compares like with like. No other
project's figure is printed: a comparison is two things measured in the same run (for decoding,
bench/export.py runs transformers' generate beside our engine on the same weights). Random tokens: this measures compute,
not the loader (bench the loader separately).

    .venv/bin/python bench/train.py [--depth 4] [--steps 30] [--dtype float32] [--attention xla]
"""

import argparse
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from trainer import model, optim  # noqa: E402
from trainer.configs import effective_hparams, for_depth  # noqa: E402
from trainer.train import make_train_step, measured_matmul_peak  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8, help="rows per step (tokens/step = batch x seq)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--attention", default="xla")
    args = ap.parse_args()

    cfg = for_depth(args.depth, vocab_size=args.vocab, seq_len=args.seq_len, head_dim=64)
    cfg = replace(cfg, model=replace(cfg.model, compute_dtype=args.dtype, attention=args.attention),
                  device_batch_size=args.batch, total_batch_tokens=args.batch * args.seq_len)
    params = model.init_params(cfg.model, jax.random.key(0))
    hp = effective_hparams(cfg)
    tx = optim.build_optimizer(params, matrix_lr=hp["matrix_lr"], embedding_lr=hp["embedding_lr"],
                               unembedding_lr=hp["unembedding_lr"], scalar_lr=hp["scalar_lr"])
    opt_state = optim.init_state(tx, params)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, args.vocab, (1, args.batch, args.seq_len + 1), dtype=np.int32)
    x, y = jnp.asarray(batch[..., :-1]), jnp.asarray(batch[..., 1:])

    loss = lambda p, b, _: (model.loss_fn(p, *b, cfg.model), {})
    step = jax.jit(make_train_step(loss, tx), donate_argnums=(0, 1))
    t0 = time.perf_counter()
    one = jnp.float32(1.0)
    step = step.lower(params, opt_state, (x, y), None, one, jnp.float32(0.95), one).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        params, opt_state, loss, _ = step(params, opt_state, (x, y), None, one, jnp.float32(0.95), one)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    dt = float(np.median(times[3:] or times))
    peak = measured_matmul_peak(jnp.dtype(args.dtype))
    tokens = args.batch * args.seq_len
    flops = model.flops_per_token(cfg.model) * tokens / dt

    dev = jax.devices()[0]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {dev.device_kind} ({cpu}), {os.cpu_count()} cores, jax {jax.__version__}")
    print(f"config: depth {args.depth}, d_model {cfg.model.d_model}, seq {args.seq_len}, vocab {args.vocab}, "
          f"{tokens} tokens/step, {args.dtype}, {model.param_count(cfg.model):,} params, "
          f"{model.flops_per_token(cfg.model):.3g} FLOPs/token")
    print("| compile s | step ms (median) | tok/s | GFLOP/s | matmul peak GFLOP/s | MFU |")
    print("|---|---|---|---|---|---|")
    print(f"| {compile_s:.1f} | {dt * 1000:.0f} | {tokens / dt:,.0f} | {flops / 1e9:.1f} | {peak / 1e9:.0f} | "
          f"{flops / peak:.1%} |")


if __name__ == "__main__":
    main()
