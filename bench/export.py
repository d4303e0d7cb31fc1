"""The exported model against our own: logit agreement, and decode speed of our Engine vs
transformers' `generate` on the exported copy of the same weights (same prompts, same machine).

A run (--run, or a tiny one trained here: depth 4, d_model 256, 4 heads x 64, seq 256, vocab 512,
trained with --hf-compatible's settings) is exported with `trainer export`, loaded with
`AutoModelForCausalLM.from_pretrained` (torch, fp32) and compared with the JAX model (fp32):

1. logits on --batch-max prompts of 64 tokens of real text: max |ours - theirs| and max |logit|;
2. greedy decoding of 128 tokens (no stop token) at each batch: both sides' time per output
   token, (t(128 tokens) - t(1 token)) / 127, best of --repeats after a warm-up, so prefill and
   compilation are out; decode tok/s = batch / that, and the ratio; plus how many of the decoded
   tokens agree.

    .venv/bin/python bench/export.py [--run RUN] [--batches 1,8] [--repeats 3]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.server import machine  # noqa: E402
from trainer import export, model  # noqa: E402
from trainer.checkpoint import load_model  # noqa: E402
from trainer.engine import Engine  # noqa: E402

PROMPT, NEW = 64, 128


def tiny_run(root: Path) -> Path:
    from tests.tiny_run import train_tiny_run

    return train_tiny_run(root, seq_len=256, steps=20, depth=4, device_batch_size=4, x0_mix=False, qk_gain=1.0)


def prompts_of(tok, n: int) -> list[list[int]]:
    """n prompts of PROMPT tokens: <|bos|> and stdlib source, each from another file."""
    files = sorted(Path(os.__file__).parent.glob("*.py"))[:n]
    return [[tok.bos_id] + tok.encode(f.read_text(errors="replace"))[:PROMPT - 1] for f in files]


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def per_token(decode, repeats: int) -> float:
    """Seconds per output token after the first: (t(NEW) - t(1)) / (NEW - 1), warm."""
    decode(1), decode(NEW)  # compile / warm both shapes
    return (best(lambda: decode(NEW), repeats) - best(lambda: decode(1), repeats)) / (NEW - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a run trained with --hf-compatible [default: a tiny one trained here]")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    import torch
    import transformers

    with tempfile.TemporaryDirectory(prefix="nanocode-bench-export-") as tmp:
        run = args.run or tiny_run(Path(tmp))
        t0 = time.perf_counter()
        out = export.export(run, Path(tmp) / "hf", log=lambda *a: None)
        export_s = time.perf_counter() - t0
        params, cfg, tok, meta = load_model(run, platform="cpu")
        hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    print(f"machine: {machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
          f"{transformers.__version__}; run {run} step {meta['step']}: depth {cfg.n_layer}, d_model {cfg.d_model}, "
          f"vocab {cfg.vocab_size}, seq {cfg.seq_len}, fp32; export took {export_s:.1f}s")

    prompts = prompts_of(tok, max(batches))
    ids = np.array(prompts)
    ours = np.asarray(model.forward(params, jnp.asarray(ids), cfg))
    with torch.inference_mode():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    print(f"\nlogits of {ids.shape[0]} x {PROMPT} tokens: max |ours - transformers| = "
          f"{np.abs(ours - theirs).max():.2e}, max |logit| = {np.abs(ours).max():.2f}")

    engine = Engine(params, cfg, tok)
    print(f"\ngreedy, prompt {PROMPT} tokens, {NEW} decoded, time per token = (t({NEW}) - t(1)) / {NEW - 1}, "
          f"best of {args.repeats}")
    print("| batch | engine TPOT | engine tok/s | transformers TPOT | transformers tok/s | engine / transformers "
          "| tokens agreeing |")
    print("|---|---|---|---|---|---|---|")
    for B in batches:
        batch = prompts[:B]

        def ours_decode(n):
            return engine.complete(batch, n, stop=())

        def theirs_decode(n):
            with torch.inference_mode():
                return hf.generate(torch.tensor(batch), max_new_tokens=n, min_new_tokens=n, do_sample=False)

        agree = np.mean(np.array(ours_decode(NEW)) == theirs_decode(NEW)[:, PROMPT:].numpy())
        eng, ref = per_token(ours_decode, args.repeats), per_token(theirs_decode, args.repeats)
        print(f"| {B} | {eng * 1e3:.2f} ms | {B / eng:,.0f} | {ref * 1e3:.2f} ms | {B / ref:,.0f} | "
              f"{ref / eng:.2f}x | {agree:.1%} |", flush=True)


if __name__ == "__main__":
    main()
