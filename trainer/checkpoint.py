"""Checkpoints with orbax: arrays (params, optimizer state) plus a JSON of everything else.

    CKPT_DIR/<step>/state   params and optimizer state (orbax, sharding-aware, async)
    CKPT_DIR/<step>/meta    step, data-loader position, seed, config and tokenizer fingerprints

orbax writes each step to a temporary directory and renames it when complete, so a killed run
leaves whole checkpoints only. CKPT_DIR may be any path orbax understands (a local folder, or
gs://bucket/run for preemptible TPU/GPU hosts).
"""

import jax
import orbax.checkpoint as ocp

from nanocode.common import InputError


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
