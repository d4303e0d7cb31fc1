"""Checkpoints with orbax, and finding and loading a run (nanochat's checkpoint_manager).

A checkpoint is arrays (params, optimizer state) plus a JSON of everything else:

    CKPT_DIR/<step>/state   params and optimizer state (orbax, sharding-aware, async)
    CKPT_DIR/<step>/meta    step, data-loader position, seed, config and tokenizer fingerprints

orbax writes each step to a temporary directory and renames it when complete, so a killed run
leaves whole checkpoints only.

Where checkpoints can live is what orbax 0.12 can write: its arrays go through tensorstore, whose
spec orbax builds for gs:// (the gcs driver) or else for an absolute local path (the file driver);
its metadata through etils.epath (gs://, s3://, az://, hf:// via fsspec). So CKPT_DIR is a local
path, a file:// URL (read as that local path) or gs://bucket/path; any other scheme (s3://,
memory://, ...) is refused up front, as orbax would fail on its first save. Paths are
etils.epath.Path, never pathlib's (which turns gs://b into gs:/b), and local ones are made absolute
(tensorstore refuses relative ones).

A RUN is any of
  - a directory with checkpoints/ and tokenizer/ (what `trainer run ... --out` writes);
  - such a directory whose checkpoints live elsewhere (`--checkpoint-dir`): its checkpoints.url
    holds their location, one line, and the rest (tokenizer/, metrics.jsonl) stays in the run;
  - a checkpoints directory itself, local or at a URL, with tokenizer/ in it or beside it (a
    checkpoint directory elsewhere gets its own tokenizer/ copy, so it can be read alone).
Its model shape is its checkpoint's fingerprint.
"""

import atexit
import dataclasses
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import jax
import orbax.checkpoint as ocp
from etils import epath

from nanocode.common import InputError, write_text_atomic
from trainer.model import GPTConfig, init_params
from trainer.tokenizer import Tokenizer


POINTER = "checkpoints.url"  # in a run directory whose checkpoints live elsewhere: where, one line
ORBAX_SCHEMES = ("gs",)  # URLs orbax writes arrays to (besides file://, which is a local path)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def storage_path(where: str | os.PathLike) -> epath.Path:
    """A run or checkpoint location as orbax takes it: gs://... as it is, file:///abs as /abs, a
    path without a scheme (`run:2` too) made absolute. Other schemes: an InputError."""
    where = os.fspath(where)
    if not _URL.match(where):
        return epath.Path(os.path.abspath(where))
    url = urlparse(where)
    if url.scheme.lower() == "file":
        if url.netloc not in ("", "localhost"):
            raise InputError(f"{where}: a file:// URL names a path on this machine (file:///path), not on {url.netloc}")
        return epath.Path(url2pathname(url.path))
    if url.scheme.lower() not in ORBAX_SCHEMES:
        raise InputError(f"orbax cannot open {where}: checkpoints go to a local path, file:///path or "
                         f"{', '.join(s + '://bucket/path' for s in ORBAX_SCHEMES)}")
    return epath.Path(where)


def is_url(path: epath.Path) -> bool:
    return _URL.match(os.fspath(path)) is not None


@contextmanager
def opening(where):
    """Storage errors (a missing gcsfs, no credentials, an unreachable bucket) as one InputError line."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:  # whatever fsspec, tensorstore or a cloud SDK raises: its first line names it
        why = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"orbax cannot open {where}: {type(e).__name__}: {why}") from None


def _sharding(x):
    # abstract arrays from jax.eval_shape carry no sharding: put those on the first device
    return getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])


class Checkpoints:
    def __init__(self, directory, keep: int = 2):
        self.path = storage_path(directory)
        self.directory = str(self.path)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
        with opening(self.directory):
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
            self.manager.latest_step()  # lists the directory: an unreadable one fails here, not mid-run

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


def checkpoints_of(run: str | os.PathLike) -> epath.Path:
    """Where a run's checkpoints are: what RUN/checkpoints.url says, RUN/checkpoints, or RUN itself."""
    run = storage_path(run)
    with opening(run):
        if not run.exists():
            raise InputError(f"no such run or checkpoint directory: {run}")
        if (run / POINTER).is_file():
            return storage_path((run / POINTER).read_text().strip())
        return run / "checkpoints" if (run / "checkpoints").is_dir() else run


def find_checkpoints(run: str | os.PathLike) -> Checkpoints:
    """The checkpoints of a run (see the module docstring for what a run is)."""
    directory = checkpoints_of(run)
    with opening(directory):
        if not directory.exists():
            raise InputError(f"the checkpoints of {run} are not there: no {directory}")
    ckpt = Checkpoints(directory)
    if ckpt.latest_step() is None:
        raise InputError(f"{run} holds no checkpoint")
    return ckpt


def checkpoints_for(out: Path, given: str | None) -> epath.Path:
    """Where a run writing to OUT keeps its checkpoints: --checkpoint-dir, else where OUT/checkpoints.url
    says (a resume need not repeat it), else OUT/checkpoints. Another place than OUT records is refused."""
    pointer = Path(out) / POINTER
    recorded = storage_path(pointer.read_text().strip()) if pointer.is_file() else None
    if given is not None and recorded is not None and storage_path(given) != recorded:
        raise InputError(f"the checkpoints of {out} are at {recorded} ({pointer}), not {given}: pass that "
                         "--checkpoint-dir, or another --out")
    return storage_path(given) if given is not None else recorded or storage_path(Path(out) / "checkpoints")


def link_run(out: Path, ckpt: Checkpoints) -> None:
    """For checkpoints outside OUT/checkpoints: OUT/checkpoints.url names them, and they get a copy of
    OUT/tokenizer/ so that their directory is a run by itself. By the one process that writes files."""
    if ckpt.path == storage_path(Path(out) / "checkpoints"):
        return
    write_text_atomic(Path(out) / POINTER, ckpt.directory + "\n")
    with opening(ckpt.directory):
        (ckpt.path / "tokenizer").mkdir(parents=True, exist_ok=True)
        for f in sorted((Path(out) / "tokenizer").iterdir()):
            (ckpt.path / "tokenizer" / f.name).write_bytes(f.read_bytes())


def tokenizer_dir(run: str | os.PathLike) -> Path:
    """Where the tokenizer a run saved beside its checkpoints is: a local directory (one at a URL
    is copied to a temporary one first)."""
    run = storage_path(run)
    with opening(run):
        for d in (run / "tokenizer", run.parent / "tokenizer"):
            if (d / "tokenizer.json").exists():
                return Path(d) if not is_url(d) else _local_copy(d)
    raise InputError(f"{run} has no tokenizer/ beside its checkpoints: copy the tokenizer it was trained "
                     f"with to {run}/tokenizer")


def _local_copy(d: epath.Path) -> Path:
    local = Path(tempfile.mkdtemp(prefix="nanocode-tokenizer-"))
    atexit.register(shutil.rmtree, local, True)
    for f in d.iterdir():
        (local / f.name).write_bytes(f.read_bytes())
    return local


def run_name(run: str | os.PathLike) -> str:
    """A run's name for people and clients: its directory's (a checkpoints directory's parent's)."""
    path = storage_path(run)
    return path.parent.name if path.name == "checkpoints" else path.name


def read_run(run, step: int | None = None, platform: str | None = None) -> tuple[GPTConfig, Tokenizer, dict]:
    """(GPTConfig, Tokenizer, meta) of a run's latest (or given) checkpoint, without reading its arrays.
    A model trained in bf16 runs in fp32 with XLA attention on a CPU (`platform`, default this one's):
    decoding's matrix-vector products run slower in bf16 there, even with AMX (bench/RESULTS.md)."""
    ckpt = find_checkpoints(run)
    _, meta = ckpt.read_meta(step)
    ckpt.close()
    tok = Tokenizer.load(tokenizer_dir(run))
    if meta["fingerprint"]["tokenizer"] != tok.fingerprint():
        raise InputError(f"the tokenizer beside {run} is not the one its checkpoint was trained with")
    cfg = saved_model(meta)
    if (platform or jax.default_backend()) == "cpu":
        cfg = replace(cfg, compute_dtype="float32", attention="xla")
    return cfg, tok, meta


def saved_model(meta: dict) -> GPTConfig:
    """The GPTConfig a checkpoint was trained with: fields added since take their defaults (the
    model it was), a field since removed (`remat`) is dropped; one this code does not know (a newer
    nanocode's, or another branch's) is refused by name."""
    fields = {k: v for k, v in meta["fingerprint"]["model"].items() if k != "remat"}
    if unknown := sorted(set(fields) - {f.name for f in dataclasses.fields(GPTConfig)}):
        raise InputError(f"this checkpoint's model has {', '.join(unknown)}, which this nanocode does not "
                         "know: load it with the version that wrote it")
    return GPTConfig(**fields)


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
