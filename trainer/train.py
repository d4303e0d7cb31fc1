"""The training loop, top to bottom, for every stage: pretraining, SFT and DPO differ only in their
`Stage` (data, loss, evaluation, where the params start); see trainer/sft.py and trainer/dpo.py.
Finding and loading a run is trainer/checkpoint.py's.

One jitted step per optimizer update: gradient accumulation is a `lax.scan` over micro-batches,
params and optimizer state are donated, the learning-rate multiplier comes in as an array (a
schedule change never recompiles). Params stay fp32; the model casts to cfg.model.compute_dtype.

Devices: a 1-D mesh over every device ("data"). The batch is split over it; params and optimizer
state are sharded FSDP-style (each matrix over its last axis where it divides evenly), and XLA
inserts the gathers, so Muon still sees whole matrices.

Several hosts (trainer/hosts.py): the mesh spans every process's devices, each feeds its shard of
the same global batch, and only process 0 writes OUT (metrics, samples, the tokenizer copy, the
checkpoints.url of checkpoints kept elsewhere); orbax writes each process's shards itself.

Every step logs loss, lr, dt, tokens/s, MFU and ETA; metrics also go to OUT/metrics.jsonl.
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nanocode.common import InputError
from trainer import model, optim
from trainer.checkpoint import Checkpoints, checkpoints_for, link_run, load_params, saved_model
from trainer.configs import TrainConfig, describe, effective_hparams, grad_accum_steps
from trainer.engine import Engine
from trainer.loader import PackedLoader, val_batches
from trainer.tokenizer import Tokenizer

SAMPLE_PROMPTS = ["def fibonacci(n):", "The meaning of life is", "import os\n", "To install the package,"]
# dense peak FLOP/s per chip for MFU (bf16 on accelerators); CPUs are measured at start-up instead
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12,
              "TPU v6": 918e12, "TPU v5p": 459e12, "TPU v5": 197e12, "TPU v4": 275e12}


@dataclass
class RunPaths:
    corpus: Path
    tokenizer: Path
    out: Path                 # metrics.jsonl and, unless given, checkpoints/
    checkpoints: str | None = None


# ----------------------------------------------------------------------------- devices


def device_peak_flops(dtype: str) -> float:
    kind = jax.devices()[0].device_kind
    known = [peak for name, peak in PEAK_FLOPS.items() if name in kind]
    return known[0] if known else measured_matmul_peak(jnp.dtype(dtype))


def measured_matmul_peak(dtype=jnp.float32, n: int = 1024, reps: int = 8) -> float:
    """FLOP/s of a square matmul on this device, in the form the model runs it: the CPU's practical peak."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: model.dot(a, a))
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        f(a).block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def shard_like_fsdp(tree, mesh):
    """Each array split over its last axis when that axis divides evenly, else replicated."""
    n = mesh.devices.size

    def spec(x):
        if x.ndim >= 2 and x.shape[-1] % n == 0:
            return NamedSharding(mesh, P(*([None] * (x.ndim - 1)), "data"))
        return NamedSharding(mesh, P())

    return jax.tree.map(spec, tree)


# ----------------------------------------------------------------------------- the stage


@dataclass
class Stage:
    """What makes pretraining, SFT and DPO differ; the loop in train() is the same for all three."""
    name: str                          # "pretrain" | "sft" | "dpo"
    loss: Callable                     # (params, batch, frozen) -> (loss, {metric: scalar})
    loader: Callable                   # (saved state | None) -> .next_batch() (a pytree of (rows, ...) arrays), .state()
    evaluate: Callable                 # (params) -> {"val_...": float}, at every eval
    sample: Callable | None = None     # (params) -> list[str], now and then
    init_from: str | None = None       # a run whose params this stage starts from (SFT, DPO)
    frozen: Any = None                 # handed to the loss untouched, never trained (DPO's reference)
    flops_scale: float = 1.0           # model FLOPs per batch token relative to a plain train step
    fingerprint: dict = field(default_factory=dict)  # the data's identity: a resume must match it


def pretrain_stage(cfg: TrainConfig, corpus_dir: Path, tok: Tokenizer, batch: int) -> Stage:
    seq, token_bytes = cfg.model.seq_len, tok.token_bytes()
    val = {kind: val_batches(corpus_dir, tok, kind, batch, seq, cfg.eval_tokens) for kind in ("prose", "code")}

    def evaluate(params):
        return {f"val_bpb_{k}": bits_per_byte(params, v, cfg.model, token_bytes) for k, v in val.items()}

    engine = Engine(None, cfg.model, tok)  # one engine: its compiled steps serve every sampling

    def sample(params):
        engine.params = params  # the engine's copy of the weights lives only while it samples
        try:
            prompts = [[tok.bos_id] + tok.encode(p) for p in SAMPLE_PROMPTS]
            return [p + tok.decode(ids) for p, ids in zip(SAMPLE_PROMPTS, engine.complete(prompts, 24, stop=()))]
        finally:
            engine.params = None

    return Stage("pretrain", loss=lambda p, b, _: (model.loss_fn(p, *b, cfg.model), {}),
                 loader=lambda state: PackedLoader(corpus_dir, tok, batch, seq, code_ratio=cfg.code_ratio,
                                                   seed=cfg.seed, state=state),
                 evaluate=evaluate, sample=sample)


def make_train_step(loss_fn, tx):
    def train_step(params, opt_state, batch, frozen, lr_mult, muon_momentum, muon_weight_decay):
        # batch: a pytree of (accum, rows, ...) arrays. Sum grads over micro-batches, then one
        # update. The three schedule values are arrays: changing them never recompiles.
        def micro(grad_sum, micro_batch):
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, micro_batch, frozen)
            return jax.tree.map(jnp.add, grad_sum, grads), (loss, metrics)

        zeros = jax.tree.map(jnp.zeros_like, params)
        grad_sum, (losses, metrics) = jax.lax.scan(micro, zeros, batch)
        grads = jax.tree.map(lambda g: g / losses.shape[0], grad_sum)
        updates, opt_state = optim.scaled_update(tx, grads, opt_state, params, lr_mult,
                                                 muon_momentum=muon_momentum, muon_weight_decay=muon_weight_decay)
        metrics = jax.tree.map(jnp.mean, metrics)
        return optax.apply_updates(params, updates), opt_state, losses.mean(), metrics

    return train_step


# the validation forward of every stage and of the evals: compiled once per model shape
eval_losses = jax.jit(model.token_losses, static_argnames="cfg")


def bits_per_byte(params, batches, cfg: model.GPTConfig, token_bytes) -> float:
    """Summed nats over target tokens that stand for bytes, over ln 2 times those bytes."""
    nats = n_bytes = 0.0
    for x, y in batches:
        b = token_bytes[np.maximum(y, 0)] * (y >= 0)  # masked targets (-1) count no bytes
        losses = np.asarray(eval_losses(params, x, y, cfg=cfg))
        nats += float((losses * (b > 0)).sum())
        n_bytes += float(b.sum())
    return nats / (math.log(2) * max(n_bytes, 1))


# ----------------------------------------------------------------------------- the run


def fingerprint(cfg: TrainConfig, tok: Tokenizer) -> dict:
    """What a checkpoint must match to be resumed: the model's shape and the tokenizer's merges."""
    return {"model": asdict(cfg.model), "tokenizer": tok.fingerprint()}


def open_metrics(path: Path, start: int):
    """OUT/metrics.jsonl for appending, without what a resume at step `start` repeats."""
    def before_resume(entry):  # a train entry's step counts steps done: step `start` made the checkpoint
        return entry["step"] <= start if entry["event"] == "train" else entry["step"] < start

    old = path.read_text().splitlines() if path.exists() else []
    path.write_text("".join(line + "\n" for line in old if before_resume(json.loads(line))))
    return path.open("a")


def train(cfg: TrainConfig, paths: RunPaths, resume: bool = False, log=print, stage: Stage | None = None) -> dict:
    tok = Tokenizer.load(paths.tokenizer)
    if tok.vocab_size != cfg.model.vocab_size:
        raise InputError(f"config {cfg.name} expects vocab {cfg.model.vocab_size:,} but the tokenizer at "
                         f"{paths.tokenizer} has {tok.vocab_size:,}: build the config with its vocab_size")
    ckpt_dir = checkpoints_for(paths.out, paths.checkpoints)  # a location orbax cannot use fails here
    writer = jax.process_index() == 0  # on several hosts, only process 0 writes files (orbax: its own)
    # Auto axes: XLA's partitioner places the gathers (explicit axes would need every op annotated)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    n_dev = mesh.devices.size
    accum = grad_accum_steps(cfg, n_dev)
    batch = cfg.device_batch_size * n_dev  # rows per micro-batch, split over the devices
    hp = effective_hparams(cfg)
    stage = stage or pretrain_stage(cfg, paths.corpus, tok, batch)

    # ---- state: fresh, from the run this stage starts from, or from our own latest checkpoint
    params = model.init_params(cfg.model, jax.random.key(cfg.seed))
    params = jax.device_put(params, shard_like_fsdp(params, mesh))
    tx = optim.build_optimizer(params, matrix_lr=hp["matrix_lr"], embedding_lr=hp["embedding_lr"],
                               unembedding_lr=hp["unembedding_lr"], scalar_lr=hp["scalar_lr"])
    ckpt = Checkpoints(ckpt_dir)
    identity = {**fingerprint(cfg, tok), "stage": stage.name, "data": stage.fingerprint}
    start, loader_state = 0, None
    if resume:
        step, meta = ckpt.read_meta()
        saved = {**meta["fingerprint"], "model": asdict(saved_model(meta)), "stage": meta.get("stage", "pretrain"),
                 "data": meta.get("data", {})}
        if differ := [k for k in identity if saved.get(k) != identity[k]]:
            raise InputError(f"the checkpoint in {ckpt.directory} is from another {' and '.join(differ)}; "
                             "resume with the ones it was trained with")
        state = ckpt.restore({"params": params, "opt": optim.init_state(tx, params)}, step)
        start, loader_state = meta["step"], meta["loader"]
        log(f"resuming at step {start} from {ckpt.directory}")
    else:
        if ckpt.latest_step() is not None:
            raise InputError(f"{ckpt.directory} already holds checkpoints: pass --resume, or another --out")
        if stage.init_from:
            params = load_params(stage.init_from, params, tok)
            log(f"starting from {stage.init_from}")
        state = {"params": params, "opt": optim.init_state(tx, params)}  # opt state sharded like params
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    loader = stage.loader(loader_state)
    if writer:
        paths.out.mkdir(parents=True, exist_ok=True)
        if not (paths.out / "tokenizer" / "tokenizer.json").exists():
            tok.save(paths.out / "tokenizer")  # a run directory is all `load_model` needs
        link_run(paths.out, ckpt)

    # ---- compile once, ahead of time, so compile time is reported apart from step time
    batch_sharding = NamedSharding(mesh, P(None, "data"))  # (accum, rows, ...): rows over the devices

    def next_step_batch():  # accum micro-batches (pytrees of (rows, ...) arrays) as one of (accum, rows, ...)
        micro = [loader.next_batch() for _ in range(accum)]
        return jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *micro), batch_sharding)

    pending = next_step_batch()  # its shapes are what we compile for
    step_fn = jax.jit(make_train_step(stage.loss, tx), donate_argnums=(0, 1),
                      in_shardings=(state_sharding["params"], state_sharding["opt"], batch_sharding,
                                    None, None, None, None),
                      out_shardings=(state_sharding["params"], state_sharding["opt"], None, None))
    t0 = time.perf_counter()
    one = jnp.float32(1.0)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pending)
    step_fn = step_fn.lower(state["params"], state["opt"], shapes, stage.frozen, one, one, one).compile()
    compile_s = time.perf_counter() - t0

    flops_per_step = model.flops_per_token(cfg.model) * cfg.total_batch_tokens * stage.flops_scale
    peak = device_peak_flops(cfg.model.compute_dtype) * n_dev
    info = describe(cfg, n_dev)
    log(f"{stage.name} {cfg.name}: {info['params']:,} params, {n_dev} device(s) ({jax.devices()[0].device_kind}), "
        f"{cfg.num_steps:,} steps x {cfg.total_batch_tokens:,} tokens (accum {accum}), "
        f"compile {compile_s:.1f}s, peak {peak / 1e9:,.0f} GFLOP/s")

    metrics_path = paths.out / "metrics.jsonl"
    metrics = open_metrics(metrics_path, start) if writer else None

    def record(entry):
        if metrics:
            metrics.write(json.dumps(entry) + "\n")
            metrics.flush()

    record({"step": start, "event": "start", "stage": stage.name, "compile_s": compile_s, "devices": n_dev,
            "config": info})
    params, opt_state = state["params"], state["opt"]
    step_times, last = [], {}
    for step in range(start, cfg.num_steps + 1):
        is_last = step == cfg.num_steps
        if step % cfg.eval_every == 0 or is_last:
            val = stage.evaluate(params)
            log(f"step {step:5d} | " + " | ".join(f"{k} {v:.4f}" for k, v in val.items()))
            record({"step": step, "event": "val", **val})
        if stage.sample and cfg.sample_every and (step % cfg.sample_every == 0 or is_last) and step > 0:
            for text in stage.sample(params):
                log(f"  sample: {text!r}")
                record({"step": step, "event": "sample", "text": text})
        if is_last:
            break

        batch_now = pending if pending is not None else next_step_batch()
        pending = None
        lr_mult = optim.lr_multiplier(step, cfg.num_steps, cfg.warmup_steps, cfg.warmdown_ratio,
                                      cfg.final_lr_frac)
        momentum = optim.muon_momentum_at(step, cfg.num_steps, cfg.warmdown_ratio)
        decay = optim.muon_weight_decay_at(step, cfg.num_steps, hp["weight_decay"])
        t0 = time.perf_counter()
        params, opt_state, loss, extra = step_fn(params, opt_state, batch_now, stage.frozen, jnp.float32(lr_mult),
                                                 jnp.float32(momentum), jnp.float32(decay))
        loss = float(loss)  # waits for the step
        dt = time.perf_counter() - t0
        if not math.isfinite(loss):
            raise RuntimeError(f"loss is {loss} at step {step}: stopping (lower the learning rates?)")
        extra = {k: float(v) for k, v in extra.items()}
        step_times.append(dt)
        tok_s = cfg.total_batch_tokens / dt
        mfu = flops_per_step / dt / peak
        eta = (cfg.num_steps - step - 1) * float(np.median(step_times[-20:]))
        shown = "".join(f" | {k} {v:.3f}" for k, v in extra.items() if k in SHOWN_METRICS)
        log(f"step {step + 1:5d}/{cfg.num_steps} | loss {loss:.4f}{shown} | lr x{lr_mult:.3f} | {dt * 1000:.0f} ms | "
            f"{tok_s:,.0f} tok/s | MFU {mfu:.1%} | ETA {eta / 60:.1f} min")
        last = {"step": step + 1, "event": "train", "loss": loss, **extra, "lr_mult": lr_mult, "dt": dt,
                "tokens_per_s": tok_s, "mfu": mfu}
        record(last)
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.num_steps:
            ckpt.save(step + 1, {"params": params, "opt": opt_state},
                      {"step": step + 1, "loader": loader.state(), "seed": cfg.seed, "stage": stage.name,
                       "fingerprint": fingerprint(cfg, tok), "data": stage.fingerprint, "config": cfg.name,
                       "from": stage.init_from})
    ckpt.close()
    if metrics:
        metrics.close()
    log(f"done: checkpoints in {ckpt.directory}, metrics in {metrics_path}" + ("" if writer else " (process 0's)"))
    return {"compile_s": compile_s, "median_step_s": float(np.median(step_times)) if step_times else None,
            "last": last, "checkpoints": ckpt.directory, "params": params}


SHOWN_METRICS = ("rewards/accuracies", "rewards/margins")  # what the step line shows beside the loss
