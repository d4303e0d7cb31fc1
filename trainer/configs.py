"""The one dial: `--depth` sets the model shape, batch, token horizon and learning rates.

The rules are nanochat's (base_train.py, tuned at d12 and transferred "muP-style"):

- width: d_model = ceil(depth * 64 / head_dim) * head_dim; head_dim 128, or 64 for tiny models
  (depth * 64 < 512); n_head = d_model / head_dim; n_kv_head = n_head (plain MHA).
- horizon: tokens = param_data_ratio (8, as nanochat's leaderboard runs) * matmul_params,
  steps = tokens / total_batch_tokens.
- batch (Power-Lines): total_batch_tokens = 2^round(log2(2^19 * (D / D_d12)^0.383)) with D the
  token horizon and D_d12 the same for a d12 model of the same vocab -> 2^18 at d6..d8,
  2^19 at d10..d16, 2^20 at d18..d26.
- learning rates (`effective_hparams`): every lr * sqrt(total_batch_tokens / 2^19); the AdamW
  embedding and unembedding lrs also * (d_model / 768)^-0.5; Muon weight decay
  0.28 * sqrt(B / 2^19) * (D_d12 / D). TrainConfig stores the unscaled reference values, so an
  override of batch or steps rescales them consistently.
"""

import dataclasses
import math
import re
from dataclasses import dataclass

from nanocode.common import InputError
from trainer.model import GPTConfig, flops_per_token, matmul_params, param_count

ASPECT_RATIO = 64        # d_model per layer
REF_DEPTH = 12           # the depth the reference hyper-parameters were tuned at
REF_BATCH_TOKENS = 2**19  # ... with this many tokens per step
REF_WIDTH = 768          # ... and this d_model (AdamW lrs scale as 1/sqrt(width))
BATCH_EXPONENT = 0.383   # Power-Lines: optimal batch grows as horizon^0.383


@dataclass(frozen=True)
class TrainConfig:
    """Everything a pretraining run needs besides paths."""
    name: str                 # "d3", "d12", or "d7" for an arbitrary depth
    model: GPTConfig
    device_batch_size: int    # rows per micro-batch per device
    total_batch_tokens: int   # tokens per optimizer step (grad accumulation makes up the rest)
    num_steps: int            # from param_data_ratio * matmul_params / total_batch_tokens unless overridden
    param_data_ratio: float = 8.0
    # reference lrs at d12 / 2^19 tokens per step; effective_hparams() applies width and batch scaling
    matrix_lr: float = 0.02       # Muon (block matrices); the optimizer adds sqrt(max(1, rows/cols))
    embedding_lr: float = 0.3     # AdamW, wte
    unembedding_lr: float = 0.008  # AdamW, lm_head
    scalar_lr: float = 0.5        # AdamW, x0_lambdas (resid_lambdas get 0.01x in nanochat)
    weight_decay: float = 0.28    # Muon only (cautious), before batch/horizon scaling; cosine to 0 over the run
    lr_scale: float = 1.0         # every lr times this (fine-tuning stages start lower: nanochat's init_lr_frac)
    warmup_steps: int = 40
    warmdown_ratio: float = 0.65  # linear decay over the last 65% of steps ...
    final_lr_frac: float = 0.05   # ... down to 5% of the peak
    eval_every: int = 250
    eval_tokens: int = 2**23      # validation tokens per eval (nanochat: 80 * 2^19; ours is cheaper)
    sample_every: int = 2000
    save_every: int = 1000
    code_ratio: str = "1:5"       # text:code mix of the pretraining corpus
    seed: int = 0


def model_for_depth(depth: int, *, vocab_size: int, seq_len: int, head_dim: int | None = None,
                    **overrides) -> GPTConfig:
    if depth < 1:
        raise InputError(f"depth must be at least 1, got {depth}")
    if head_dim is None:
        head_dim = 128 if depth * ASPECT_RATIO >= 512 else 64  # tiny models get more, smaller heads
    d_model = math.ceil(depth * ASPECT_RATIO / head_dim) * head_dim
    n_head = d_model // head_dim
    shape = dict(vocab_size=vocab_size, seq_len=seq_len, n_layer=depth, d_model=d_model,
                 n_head=n_head, n_kv_head=n_head, head_dim=head_dim)
    return GPTConfig(**{**shape, **overrides})


def auto_batch_tokens(model: GPTConfig) -> int:
    """nanochat's Power-Lines rule, relative to a d12 of the same vocab (param_data_ratio cancels)."""
    ref = model_for_depth(REF_DEPTH, vocab_size=model.vocab_size, seq_len=model.seq_len)
    ratio = matmul_params(model) / matmul_params(ref)
    return 2 ** round(math.log2(REF_BATCH_TOKENS * ratio**BATCH_EXPONENT))


def default_device_batch(model: GPTConfig, total_batch_tokens: int) -> int:
    # Half of nanochat's miniseries rows (32 x 2048 below d20, 16 from d20, 8 from d28 on 80 GB):
    # our fp32 (B, T, 32768) logits and their gradients take several GB per 32k tokens, and XLA
    # takes 75% of GPU memory by default. An estimate, not measured: tune on the GPU.
    rows = 16 if model.n_layer < 20 else 8 if model.n_layer < 28 else 4
    rows = max(1, rows * 2048 // model.seq_len)  # same tokens per micro-batch at longer context
    return max(1, min(rows, total_batch_tokens // model.seq_len))


_MODEL_FIELDS = {f.name for f in dataclasses.fields(GPTConfig)}
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}


def for_depth(depth: int, *, vocab_size: int = 32768, seq_len: int = 2048, head_dim: int | None = None,
              **overrides) -> TrainConfig:
    """Derive a full run from one depth. Overrides may name TrainConfig or GPTConfig fields; model
    overrides apply before the batch and horizon are derived, so those follow them."""
    if unknown := set(overrides) - _MODEL_FIELDS - _TRAIN_FIELDS:
        raise InputError(f"unknown config field(s): {', '.join(sorted(unknown))}")
    model_kw = {k: v for k, v in overrides.items() if k in _MODEL_FIELDS}
    train_kw = {k: v for k, v in overrides.items() if k in _TRAIN_FIELDS}
    model = model_for_depth(depth, vocab_size=vocab_size, seq_len=seq_len, head_dim=head_dim, **model_kw)

    batch = train_kw.pop("total_batch_tokens", None) or auto_batch_tokens(model)
    ratio = train_kw.pop("param_data_ratio", 8.0)
    steps = train_kw.pop("num_steps", None) or max(1, round(ratio * matmul_params(model) / batch))
    rows = train_kw.pop("device_batch_size", None) or default_device_batch(model, batch)
    return TrainConfig(name=train_kw.pop("name", f"d{depth}"), model=model, device_batch_size=rows,
                       total_batch_tokens=batch, num_steps=steps, param_data_ratio=ratio, **train_kw)


# Presets: recipes for for_depth, so get_config(name, vocab_size=...) re-derives everything.
_CPU = dict(  # the CPU model: ~4M params, a few thousand tokens per step. Its x0/resid mixing scalars
    # learn at a fifth of the reference rate: at 0.5 the demo's step 30 (peak lr) hopped x0_lambdas
    # over a cliff, loss 8.32 -> 9.63 -> 8.21 (bench/RESULTS.md, "Demo model (issue 18)")
    scalar_lr=0.1,
    vocab_size=8192, seq_len=256, head_dim=64, total_batch_tokens=4096, device_batch_size=16,
    eval_every=250, eval_tokens=2**16, sample_every=500, save_every=500)
PRESET_RECIPES = {
    "d3": dict(depth=3, **_CPU),
    "d6": dict(depth=6),
    "d12": dict(depth=12),
    "d20": dict(depth=20),
    "d24": dict(depth=24, seq_len=4096),  # longer context for multi-turn agentic traces
}


def get_config(name: str, **overrides) -> TrainConfig:
    """A preset by name, or "d<N>" for any depth with the GPU defaults (vocab 32768, seq 2048)."""
    if name in PRESET_RECIPES:
        return for_depth(**{**PRESET_RECIPES[name], "name": name, **overrides})
    if m := re.fullmatch(r"d([1-9][0-9]*)", name):
        return for_depth(int(m[1]), **{"name": name, **overrides})
    raise InputError(f"unknown config {name!r}: choose one of {', '.join(PRESET_RECIPES)}, or d<N> for any depth N")


def for_platform(cfg: TrainConfig, platform: str) -> TrainConfig:
    """Compute dtype and attention kernel for a backend ("cpu", "gpu", "tpu"): bf16 on accelerators, cuDNN
    flash attention on NVIDIA GPUs. A CPU keeps the config's (fp32 unless `--dtype bfloat16`: fast on CPUs
    with AMX only)."""
    if platform == "cpu":
        return cfg
    attention = "cudnn" if platform == "gpu" and cfg.model.head_dim <= 128 else "xla"
    model = dataclasses.replace(cfg.model, compute_dtype="bfloat16", attention=attention)
    return dataclasses.replace(cfg, model=model)


def grad_accum_steps(cfg: TrainConfig, n_devices: int = 1) -> int:
    per_step = cfg.device_batch_size * cfg.model.seq_len * n_devices
    if cfg.total_batch_tokens % per_step:
        raise InputError(f"total_batch_tokens {cfg.total_batch_tokens} is not a multiple of "
                         f"device_batch_size x seq_len x devices = {per_step}")
    return cfg.total_batch_tokens // per_step


def effective_hparams(cfg: TrainConfig) -> dict:
    """The learning rates and Muon weight decay the optimizer should use (nanochat's scaling)."""
    tokens = cfg.num_steps * cfg.total_batch_tokens
    ref = model_for_depth(REF_DEPTH, vocab_size=cfg.model.vocab_size, seq_len=cfg.model.seq_len)
    ref_tokens = cfg.param_data_ratio * matmul_params(ref)
    batch_scale = math.sqrt(cfg.total_batch_tokens / REF_BATCH_TOKENS)
    lr = cfg.lr_scale * batch_scale
    width_scale = (cfg.model.d_model / REF_WIDTH) ** -0.5
    return {
        "matrix_lr": cfg.matrix_lr * lr,
        "embedding_lr": cfg.embedding_lr * lr * width_scale,
        "unembedding_lr": cfg.unembedding_lr * lr * width_scale,
        "scalar_lr": cfg.scalar_lr * lr,
        # keeps the AdamW-WD paper's "T_epoch" constant as batch and horizon change
        "weight_decay": cfg.weight_decay * batch_scale * ref_tokens / tokens,
        "batch_lr_scale": batch_scale,
        "width_lr_scale": width_scale,
    }


def describe(cfg: TrainConfig, n_devices: int = 1) -> dict:
    """The derived numbers of a run, for the --dry-run table and the startup log."""
    m = cfg.model
    tokens = cfg.num_steps * cfg.total_batch_tokens
    try:
        accum = grad_accum_steps(cfg, n_devices)
    except InputError as e:
        accum = f"invalid: {e}"
    return {
        "name": cfg.name,
        "depth": m.n_layer, "d_model": m.d_model, "heads": m.n_head, "kv_heads": m.n_kv_head,
        "head_dim": m.head_dim, "seq_len": m.seq_len, "vocab": m.vocab_size,
        "params": param_count(m), "matmul_params": matmul_params(m),
        "flops_per_token": flops_per_token(m), "total_flops": flops_per_token(m) * tokens,
        "tokens": tokens, "tokens_per_param": tokens / matmul_params(m),
        "total_batch_tokens": cfg.total_batch_tokens, "device_batch_size": cfg.device_batch_size,
        "n_devices": n_devices, "grad_accum": accum, "steps": cfg.num_steps,
        **effective_hparams(cfg),
    }
