"""SFT: conversations rendered with the template, loss only on what the assistant writes.

Each conversation is rendered to (ids, mask); a target whose mask is 0 (BOS, user text,
<|assistant_start|>, tool results) is -1, so model.loss_fn skips it. Conversations are packed
whole into rows of seq_len + 1 tokens in order; when the next one does not fit, the row is padded
(BOS, target -1) and it starts the next row. One that is longer than a row is dropped or
truncated (`overflow`), with a count. The loader's state is one cursor into a seeded order per
epoch, so a resumed run sees exactly the batches it would have.

The stage starts from another run's params (pretrain, or an earlier SFT) with a fresh optimizer,
and reports validation loss and bits-per-byte on held-out conversations (assistant tokens only).

The system prompt a run trains with is a variant, nanocode/prompts/VARIANT.j2: `system` (the
rows' own, as the factory wrote them) or `compact` for a tiny context, which replaces the rows' own.
The variant is part of the stage's data identity, so the checkpoint says it (`prompt_of`), DPO and
a further SFT inherit it, and the evals prompt the model with what it learned (`system_prompt`).

`run` reads top to bottom: base run, data, config, stage, loop. DPO shares EpochCursor,
data_fingerprint and finetune_config.
"""

import dataclasses
import hashlib
import math
from pathlib import Path

import jax
import numpy as np

from nanocode.common import InputError
from nanocode.spec import PROMPTS, load_soul, load_tools, render_system_prompt
from trainer import checkpoint, conversations, model, template, train
from trainer.configs import TrainConfig
from trainer.engine import Engine
from trainer.train import Stage, bits_per_byte, eval_losses

STATE_VERSION = 1
LR_SCALE = {"sft": 0.8, "dpo": 0.1}  # preference steps move a tuned model: far gentler than SFT
SCALAR_LR_FRAC = 0.1  # the x0/resid mixing scalars' lr while fine-tuning, of the reference TrainConfig.scalar_lr


def prompt_of(meta: dict) -> str:
    """The system prompt variant a checkpoint's run trained with (its meta, checkpoint.read_run's)."""
    return meta.get("data", {}).get("prompt", "system")


def prompt_template(variant: str) -> Path:
    """nanocode/prompts/VARIANT.j2, for nanocode.spec.render_system_prompt."""
    path = PROMPTS / f"{variant}.j2"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPTS.glob("*.j2")))
        raise InputError(f"no system prompt variant {variant!r} (the variants: {known})")
    return path


def system_prompt_of(meta: dict) -> Path:
    """The template of the system prompt a checkpoint's run trained with."""
    return prompt_template(prompt_of(meta))


def system_prompt(variant: str) -> str:
    """The variant rendered for the shipped SOUL and tool spec."""
    return render_system_prompt(load_soul(), load_tools(), prompt_template(variant))


def stage_prompt(variant: str | None, meta: dict) -> tuple[str, str | None]:
    """A fine-tuning stage's variant (`variant`, else the base run's) and the text that replaces
    the rows' own system prompt (None for `system`: the rows keep theirs). SFT and DPO share it."""
    variant = variant or prompt_of(meta)
    return variant, None if variant == "system" else system_prompt(variant)


def render_all(convs: list[list[dict]], tok, seq_len: int, overflow: str = "drop") -> tuple[list, int]:
    """[(ids, mask)] that fit a row of seq_len + 1 tokens, and how many were dropped or truncated."""
    if overflow not in ("drop", "truncate"):
        raise InputError(f"overflow must be 'drop' or 'truncate', not {overflow!r}")
    out, cut = [], 0
    for messages in convs:
        ids, mask = template.render(messages, tok)
        if len(ids) > seq_len + 1:
            cut += 1
            if overflow == "drop":
                continue
            ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
        if any(mask[1:]):
            out.append((np.asarray(ids, np.int32), np.asarray(mask, np.int8)))
    return out, cut


def pack_rows(items, order, cursor: int, n_rows: int, seq_len: int, pad_id: int):
    """Fill n_rows rows from items[order[cursor:]] -> (inputs, targets, new cursor). Rows left
    when the order runs out are all padding (no targets). Every item fits a row (render_all)."""
    width = seq_len + 1
    ids = np.full((n_rows, width), pad_id, np.int32)
    mask = np.zeros((n_rows, width), np.int8)
    for r in range(n_rows):
        pos = 0
        while cursor < len(order) and pos + len(items[order[cursor]][0]) <= width:
            conv_ids, conv_mask = items[order[cursor]]
            ids[r, pos:pos + len(conv_ids)], mask[r, pos:pos + len(conv_ids)] = conv_ids, conv_mask
            pos += len(conv_ids)
            cursor += 1
    return ids[:, :-1], targets(ids, mask), cursor


def targets(ids, mask):
    """Next-token targets of rendered rows (..., seq_len + 1): -1 where the model is not trained."""
    return np.where(mask[..., 1:] > 0, ids[..., 1:], -1).astype(np.int32)


def rows_per_epoch(items, seq_len: int) -> int:
    """How many packed rows one pass over `items` fills (in any order: a bound for the schedule)."""
    rows, pos, width = 0, 0, seq_len + 1
    for ids, _ in items:
        if pos == 0 or pos + len(ids) > width:
            rows, pos = rows + 1, 0
        pos += len(ids)
    return rows


class EpochCursor:
    """A position in a seeded order of n items, reshuffled every epoch: (epoch, cursor) is all a
    resume needs. The fingerprint names the items, so a state saved over other data is refused."""

    def __init__(self, n: int, seed: int, state: dict | None, fingerprint: str):
        if state is not None and (state.get("version"), state.get("fingerprint")) != (STATE_VERSION, fingerprint):
            raise InputError("the loader state is from other data: resume with the data it was saved with")
        self.n, self.seed, self.fingerprint = n, seed, fingerprint
        self.epoch, self.cursor = (state["epoch"], state["cursor"]) if state is not None else (0, 0)
        self.order = self._order()

    def _order(self):
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def need(self, k: int) -> None:
        """Start the next epoch unless k more items are left in this one."""
        if self.cursor + k > self.n:
            self.epoch, self.cursor = self.epoch + 1, 0
            self.order = self._order()

    def state(self) -> dict:
        return {"version": STATE_VERSION, "fingerprint": self.fingerprint, "epoch": self.epoch, "cursor": self.cursor}


class ConversationLoader(EpochCursor):
    """Packed SFT batches: next_batch() -> (inputs, targets), each (batch_size, seq_len) int32."""

    def __init__(self, items, batch_size: int, seq_len: int, pad_id: int, seed: int = 0,
                 state: dict | None = None, fingerprint: str = ""):
        if not items:
            raise InputError("no conversations to train on (all dropped, or none given)")
        super().__init__(len(items), seed, state, fingerprint)
        self.items, self.batch_size, self.seq_len, self.pad_id = items, batch_size, seq_len, pad_id

    def next_batch(self):
        self.need(1)
        x, y, self.cursor = pack_rows(self.items, self.order, self.cursor, self.batch_size, self.seq_len,
                                      self.pad_id)
        return x, y


def val_batches(items, batch_size: int, seq_len: int, pad_id: int) -> list:
    order, cursor, out = np.arange(len(items)), 0, []
    while cursor < len(order):
        x, y, cursor = pack_rows(items, order, cursor, batch_size, seq_len, pad_id)
        out.append((x, y))
    return out


def data_fingerprint(items) -> str:
    """The identity of rendered (ids, mask) items, SFT's or DPO's: a resume must see the same."""
    h = hashlib.sha256()
    for ids, mask in items:
        h.update(ids.tobytes())
        h.update(mask.tobytes())
    return h.hexdigest()[:16]


def finetune_config(base: model.GPTConfig, name: str, *, n_devices: int, train_rows: int, **overrides) -> TrainConfig:
    """SFT/DPO defaults: nanochat's SFT schedule (no warmup, flat at the stage's LR_SCALE, then a
    linear warmdown over the last half to 0) and no weight decay: a short run must not shrink the
    pretrained weights. The residual-mixing scalars learn at SCALAR_LR_FRAC of the reference rate
    (TrainConfig.scalar_lr, whatever the base run's preset used):
    a fresh AdamW moves each by its full lr every step, and at the full rate four steps carried the
    demo's x0_lambdas over a cliff (SFT step 5: loss 7.27 -> 11.01 -> 7.37; bench/RESULTS.md).
    num_steps defaults to one pass over train_rows rows. None overrides nothing; `compute_dtype` is the
    model's (on CPU the base's is float32: checkpoint.read_run)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    seq_len = overrides.pop("seq_len", None) or base.seq_len
    m = dataclasses.replace(base, seq_len=seq_len, compute_dtype=overrides.pop("compute_dtype", base.compute_dtype))
    rows = overrides.pop("device_batch_size", None) or max(1, min(8, train_rows // max(1, n_devices)))
    total = overrides.pop("total_batch_tokens", None) or rows * seq_len * n_devices
    steps = overrides.pop("num_steps", None) or max(1, math.ceil(train_rows * seq_len / total))
    defaults = dict(warmup_steps=0, warmdown_ratio=0.5, final_lr_frac=0.0, weight_decay=0.0,
                    scalar_lr=TrainConfig.scalar_lr * SCALAR_LR_FRAC,
                    lr_scale=LR_SCALE[name], eval_every=max(1, steps // 4), eval_tokens=2**16, sample_every=steps,
                    save_every=max(1, steps // 2))
    return TrainConfig(name=name, model=m, device_batch_size=rows, total_batch_tokens=total,
                       num_steps=steps, **{**defaults, **overrides})


def prompts_of(convs: list[list[dict]], tok, seq_len: int, n: int = 3) -> list[list[int]]:
    """Prompts for samples: held-out conversations up to their first assistant turn."""
    out = []
    for messages in convs:
        if first := next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None):
            ids = template.render_prompt(messages[:first], tok)
            if len(ids) < seq_len - 16:
                out.append(ids)
        if len(out) == n:
            break
    return out


def prepare(data: dict, tok, seq_len: int, overflow: str = "drop", log=print) -> dict:
    """conversations.load(...)'s result rendered: {"train", "val": [(ids, mask)], "val_convs", "overflow",
    "sources"}."""
    train_items, cut = render_all(data["train"], tok, seq_len, overflow)
    val_items, val_cut = render_all(data["val"], tok, seq_len, overflow)
    for reason, count in data["dropped"].items():
        log(f"dropped {count:,} conversation(s): {reason}")
    if cut or val_cut:
        log(f"{'dropped' if overflow == 'drop' else 'truncated'} {cut + val_cut:,} conversation(s) longer than "
            f"{seq_len + 1} tokens (--overflow {overflow}; --seq-len can grow the context)")
    if not train_items:
        raise InputError("no conversations left to train on (see the counts above)")
    log(f"sft data: {len(train_items):,} train / {len(val_items):,} val conversations, "
        f"{rows_per_epoch(train_items, seq_len):,} rows of {seq_len} per epoch")
    return {"train": train_items, "val": val_items, "val_convs": data["val"] or data["train"][:8],
            "overflow": overflow, "sources": conversations.source_names(data)}


def sft_stage(cfg: TrainConfig, data: dict, tok, batch: int, init_from: str) -> Stage:
    """`data` is prepare(...)'s result."""
    seq, train_items = cfg.model.seq_len, data["train"]
    fp = data_fingerprint(train_items)
    val = val_batches(data["val"] or train_items[:batch], batch, seq, tok.bos_id)
    token_bytes = tok.token_bytes()

    def evaluate(params):
        nats = sum(float(np.asarray(eval_losses(params, x, y, cfg=cfg.model)).sum()) for x, y in val)
        n = sum(int((y >= 0).sum()) for _, y in val)
        return {"val_loss": nats / max(n, 1), "val_bpb": bits_per_byte(params, val, cfg.model, token_bytes)}

    engine = Engine(None, cfg.model, tok)
    prompts = prompts_of(data["val_convs"], tok, seq)

    def sample(params):
        engine.params = params  # the engine's copy of the weights lives only while it samples
        try:
            return [tok.decode(ids) for ids in engine.complete(prompts, 48)] if prompts else []
        finally:
            engine.params = None

    return Stage("sft", loss=lambda p, b, _: (model.loss_fn(p, *b, cfg.model), {}),
                 loader=lambda state: ConversationLoader(train_items, batch, seq, tok.bos_id, cfg.seed, state, fp),
                 evaluate=evaluate, sample=sample, init_from=init_from,
                 fingerprint={"conversations": fp, "overflow": data["overflow"], "sources": data["sources"]})


def run(from_, out, data, *, overflow: str = "drop", val_fraction: float = 0.05, seed: int = 0,
        prompt: str | None = None, resume: bool = False, checkpoint_dir: str | None = None, log=print,
        **overrides) -> dict:
    """`trainer run sft`: fine-tune the run `from_` on the conversations `data` (a spec for
    conversations.load) into `out`, with the system prompt variant `prompt` (None: the base run's).
    `overrides` are finetune_config's (None: its default)."""
    base, tok, meta = checkpoint.read_run(from_)
    seq = overrides.get("seq_len") or base.seq_len
    prompt, text = stage_prompt(prompt, meta)
    prepared = prepare(conversations.load(data, "conversations", val_fraction, seed, text), tok, seq, overflow, log)
    cfg = finetune_config(base, "sft", n_devices=jax.device_count(), seed=seed,
                          train_rows=rows_per_epoch(prepared["train"], seq), **overrides)
    stage = sft_stage(cfg, prepared, tok, cfg.device_batch_size * jax.device_count(), str(from_))
    stage.fingerprint["prompt"] = prompt
    paths = train.RunPaths(corpus=None, tokenizer=checkpoint.tokenizer_dir(from_), out=out,
                           checkpoints=checkpoint_dir)
    return train.train(cfg, paths, resume=resume, log=log, stage=stage)
