"""Checkpoints with orbax, and finding and loading a run (nanochat's checkpoint_manager).

A checkpoint is arrays (params, optimizer state) plus a JSON of everything else:

    CKPT_DIR/<step>/state   params and optimizer state (orbax, sharding-aware, async)
    CKPT_DIR/<step>/meta    step, data-loader position, seed, config and tokenizer fingerprints

orbax writes each step to a temporary directory and renames it when complete, so a killed run
leaves whole checkpoints only. CKPT_DIR may be any path orbax understands (a local folder, or
gs://bucket/run for preemptible TPU/GPU hosts).

A RUN is a directory with checkpoints/ and tokenizer/ (what `trainer run ... --out` writes), or a
checkpoints directory with tokenizer/ beside it; its model shape is its checkpoint's fingerprint.
"""

from dataclasses import replace
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from nanocode.common import InputError
from trainer.model import GPTConfig, init_params
from trainer.tokenizer import Tokenizer


def _sharding(x):
    # abstract arrays from jax.eval_shape carry no sharding: put those on the first device
    return getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])


class Checkpoints:
    def __init__(self, directory, keep: int = 2):
        self.directory = str(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        """Starts an async save; the next save (or close) waits for it."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)))

    def read_meta(self, step: int | None = None) -> tuple[int, dict]:
        """(step, meta) of `step` (default: the latest), without touching the arrays."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise InputError(f"no checkpoint to resume from in {self.directory}")
        return step, self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, like_state, step: int):
        """The arrays of `step`; `like_state` gives structure, shapes, dtypes and shardings."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]

    def restore_params(self, like_params, step: int):
        """Only the params of `step` (a fine-tuning stage or inference needs no optimizer state)."""
        reader = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), item_handlers={
            "state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
        target = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, like_params)}
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=_sharding(x), dtype=x.dtype), target)
        state = reader.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            target, restore_args=restore_args, partial_restore=True)))["state"]
        reader.close()
        return state["params"]

    def close(self) -> None:
        self.manager.wait_until_finished()  # an unfinished async save would be lost silently
        self.manager.close()


# ----------------------------------------------------------------------------- finding and loading a run


def find_checkpoints(run: str | Path) -> Checkpoints:
    """A run directory (with checkpoints/) or a checkpoints directory itself."""
    run = Path(run)
    if not run.exists():
        raise InputError(f"no such run or checkpoint directory: {run}")
    ckpt = Checkpoints(run / "checkpoints" if (run / "checkpoints").is_dir() else run)
    if ckpt.latest_step() is None:
        raise InputError(f"{run} holds no checkpoint")
    return ckpt


def tokenizer_dir(run: str | Path) -> Path:
    """Where the tokenizer a run saved beside its checkpoints is."""
    run = Path(run)
    for d in (run / "tokenizer", run.parent / "tokenizer"):
        if (d / "tokenizer.json").exists():
            return d
    raise InputError(f"{run} has no tokenizer/ beside its checkpoints: copy the tokenizer it was trained "
                     f"with to {run}/tokenizer")


def read_run(run, step: int | None = None, platform: str | None = None) -> tuple[GPTConfig, Tokenizer, dict]:
    """(GPTConfig, Tokenizer, meta) of a run's latest (or given) checkpoint, without reading its arrays.
    A model trained in bf16 on an accelerator runs in fp32 with XLA attention on a CPU (`platform`,
    default this one's): bf16 matmuls there are unusably slow."""
    ckpt = find_checkpoints(run)
    _, meta = ckpt.read_meta(step)
    ckpt.close()
    tok = Tokenizer.load(tokenizer_dir(run))
    if meta["fingerprint"]["tokenizer"] != tok.fingerprint():
        raise InputError(f"the tokenizer beside {run} is not the one its checkpoint was trained with")
    model = {k: v for k, v in meta["fingerprint"]["model"].items() if k != "remat"}  # runs saved before it went
    cfg = GPTConfig(**model)
    if (platform or jax.default_backend()) == "cpu":
        cfg = replace(cfg, compute_dtype="float32", attention="xla")
    return cfg, tok, meta


def load_params(run, like_params, tok: Tokenizer, step: int | None = None):
    """The params of a run's checkpoint (not its optimizer state), shaped and sharded like `like_params`."""
    ckpt = find_checkpoints(run)
    step, meta = ckpt.read_meta(step)
    if meta["fingerprint"]["tokenizer"] != tok.fingerprint():
        raise InputError(f"{run} was trained with another tokenizer than this run's")
    params = ckpt.restore_params(like_params, step)
    ckpt.close()
    return params


def load_model(run, step: int | None = None, platform: str | None = None):
    """(params, GPTConfig, Tokenizer, meta) of a run's latest (or given) checkpoint, for inference."""
    cfg, tok, meta = read_run(run, step, platform)
    like = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    return load_params(run, like, tok, meta["step"]), cfg, tok, meta
