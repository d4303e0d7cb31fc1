"""DPO: prefer the chosen reply over the rejected one, relative to a frozen reference model.

Each pair becomes two rows, prompt + chosen and prompt + rejected, right-padded to seq_len; the
sequence log-prob of a side is summed over its completion's assistant tokens only (the prompt,
tool results and padding are -1 targets). With d = (log pi(y+) - log ref(y+)) - (log pi(y-) -
log ref(y-)):
    sigmoid (default, beta 0.1): -log sigmoid(beta * d)
    ipo: each log-ratio averaged per completion token, then (d_avg - 1 / (2 beta))^2
Metrics are TRL's: rewards/chosen|rejected = beta * log-ratio, rewards/accuracies (chosen >
rejected, strict), rewards/margins, logps/chosen|rejected (policy), ref_logps/chosen|rejected.

The reference is "live" (its params go into the jitted step as a frozen input under
stop_gradient: one extra forward per step, a second copy of the params in memory) or "cached"
(its log-probs computed once per pair before training, then carried in the batch). Measured in
bench/train.py on CPU: see bench/RESULTS.md for which is faster. "auto" (the CLI's default) picks
cached when the run sees every pair at least once, else live. `run` reads top to bottom.
"""

import jax
import jax.numpy as jnp
import numpy as np

from nanocode.common import InputError
from trainer import checkpoint, conversations, model, sft, template, train
from trainer.configs import TrainConfig
from trainer.sft import EpochCursor, data_fingerprint, render_all, targets
from trainer.train import Stage, bits_per_byte

LOSSES = ("sigmoid", "ipo")


def render_pair(pair: dict, tok, seq_len: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(2, seq_len + 1) ids and targets-mask for [chosen, rejected], or None if a side does not fit."""
    prompt_len = len(template.render(pair["prompt"], tok)[0])
    width = seq_len + 1
    ids = np.full((2, width), tok.bos_id, np.int32)
    mask = np.zeros((2, width), np.int8)
    for i, side in enumerate((pair["chosen"], pair["rejected"])):
        side_ids, side_mask = template.render(pair["prompt"] + side, tok)
        if len(side_ids) > width:
            return None
        side_mask[:prompt_len] = [0] * prompt_len  # earlier assistant turns are prompt, not completion
        ids[i, :len(side_ids)], mask[i, :len(side_ids)] = side_ids, side_mask
    return ids, mask


def render_pairs(pairs: list[dict], tok, seq_len: int) -> tuple[list, int]:
    """(pairs that fit, both sides with assistant tokens to score; how many did not fit)."""
    rendered = [render_pair(pair, tok, seq_len) for pair in pairs]
    return [r for r in rendered if r is not None and r[1][0].any() and r[1][1].any()], rendered.count(None)


def as_batch(items, idx) -> dict:
    """Pairs items[idx] -> {"inputs", "targets"}: (rows, 2, seq) arrays, [chosen, rejected] per row."""
    ids = np.stack([items[i][0] for i in idx])
    mask = np.stack([items[i][1] for i in idx])
    return {"inputs": ids[..., :-1], "targets": targets(ids, mask)}


def sequence_logps(params, inputs, targets, cfg):
    """Summed log-probs of the target tokens and their count: (rows, 2, T) -> (rows, 2) each."""
    rows = inputs.shape[0]
    flat_x, flat_y = inputs.reshape(rows * 2, -1), targets.reshape(rows * 2, -1)
    logps = -model.token_losses(params, flat_x, flat_y, cfg).sum(-1)  # one forward over 2 * rows
    return logps.reshape(rows, 2), (flat_y >= 0).sum(-1).reshape(rows, 2)


def dpo_loss(params, batch, ref_params, *, cfg, beta: float, kind: str):
    logps, n = sequence_logps(params, batch["inputs"], batch["targets"], cfg)
    if "ref_logps" in batch:
        ref = batch["ref_logps"]
    else:
        ref, _ = sequence_logps(jax.lax.stop_gradient(ref_params), batch["inputs"], batch["targets"], cfg)
    ratio = logps - ref  # (rows, 2): [chosen, rejected]
    if kind == "ipo":
        avg = ratio / jnp.maximum(n, 1)
        losses = (avg[:, 0] - avg[:, 1] - 1 / (2 * beta)) ** 2
    else:
        losses = -jax.nn.log_sigmoid(beta * (ratio[:, 0] - ratio[:, 1]))
    rewards = beta * ratio
    metrics = {"rewards/chosen": rewards[:, 0].mean(), "rewards/rejected": rewards[:, 1].mean(),
               "rewards/accuracies": (rewards[:, 0] > rewards[:, 1]).mean(),
               "rewards/margins": (rewards[:, 0] - rewards[:, 1]).mean(),
               "logps/chosen": logps[:, 0].mean(), "logps/rejected": logps[:, 1].mean(),
               "ref_logps/chosen": ref[:, 0].mean(), "ref_logps/rejected": ref[:, 1].mean()}
    return losses.mean(), metrics


class PairLoader(EpochCursor):
    """next_batch() -> as_batch(...) of batch_size pairs (plus "ref_logps" when cached), in a
    seeded order per epoch; state() is that order's cursor, so a resume is exact."""

    def __init__(self, items, batch_size: int, seed: int = 0, ref_logps=None, state=None, fingerprint=""):
        if len(items) < batch_size:
            raise InputError(f"{len(items)} usable pair(s) is fewer than one batch of {batch_size}: "
                             "lower --device-batch-size or add pairs")
        super().__init__(len(items), seed, state, fingerprint)
        self.items, self.batch_size, self.ref_logps = items, batch_size, ref_logps

    def next_batch(self):
        self.need(self.batch_size)  # whole batches only: drop an epoch's tail
        idx = self.order[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        batch = as_batch(self.items, idx)
        if self.ref_logps is not None:
            batch["ref_logps"] = self.ref_logps[idx]
        return batch


_logps = jax.jit(lambda p, x, y, cfg: sequence_logps(p, x, y, cfg)[0], static_argnames="cfg")


def reference_logps(params, items, cfg, batch_size: int) -> np.ndarray:
    """(pairs, 2) summed log-probs of [chosen, rejected] under `params`, in batches."""
    out = [np.asarray(_logps(params, b["inputs"], b["targets"], cfg=cfg)) for b in _batches(items, batch_size)]
    return np.concatenate(out)[:len(items)]


def prepare(data: dict, tok, seq_len: int, val_convs=None, log=print) -> dict:
    """conversations.load(kind="pairs")'s result rendered: {"train", "val": [(ids, mask)], "val_convs",
    "sources"}. val_convs: held-out conversations for the bpb check (default: held-out prompt + chosen)."""
    train_items, cut = render_pairs(data["train"], tok, seq_len)
    val_items, val_cut = render_pairs(data["val"], tok, seq_len)
    for reason, count in data["dropped"].items():
        log(f"dropped {count:,} pair(s): {reason}")
    if cut or val_cut:
        log(f"dropped {cut + val_cut:,} pair(s) longer than {seq_len + 1} tokens (--seq-len can grow the context)")
    log(f"dpo data: {len(train_items):,} train / {len(val_items):,} val pairs")
    if not train_items:
        raise InputError(f"no preference pair to train on ({len(data['train']):,} given, none fits "
                         f"{seq_len + 1} tokens with an assistant turn to score): --seq-len can grow the context")
    if val_convs is None:
        val_convs = [pair["prompt"] + pair["chosen"] for pair in data["val"] or data["train"][:8]]
    return {"train": train_items, "val": val_items, "val_convs": render_all(val_convs, tok, seq_len)[0],
            "sources": conversations.source_names(data)}


def dpo_stage(cfg: TrainConfig, data: dict, tok, batch: int, init_from: str, ref_params, *,
              beta: float = 0.1, kind: str = "sigmoid", reference: str = "live") -> Stage:
    """`data`: prepare(...)'s result. `ref_params`: the reference (the SFT model)."""
    if kind not in LOSSES:
        raise InputError(f"unknown DPO loss {kind!r}: choose {' or '.join(LOSSES)}")
    if reference not in ("live", "cached"):
        raise InputError(f"reference must be 'live' or 'cached', not {reference!r}")
    seq, train_items, val_items = cfg.model.seq_len, data["train"], data["val"]
    fp = data_fingerprint(train_items)

    # validation: preference accuracy on held-out pairs, and bpb on held-out conversations (the SFT
    # data's, else the held-out pairs' prompt + chosen) to show the SFT skills did not regress
    val_ref = reference_logps(ref_params, val_items, cfg.model, batch) if val_items else None
    conv_batches = sft.val_batches(data["val_convs"], batch, seq, tok.bos_id) if data["val_convs"] else []
    token_bytes = tok.token_bytes()

    def evaluate(params):
        out = {}
        if val_items:
            ratio = reference_logps(params, val_items, cfg.model, batch) - val_ref
            out["val_rewards/accuracies"] = float((ratio[:, 0] > ratio[:, 1]).mean())
            out["val_rewards/margins"] = float(beta * (ratio[:, 0] - ratio[:, 1]).mean())
        if conv_batches:
            out["val_bpb"] = bits_per_byte(params, conv_batches, cfg.model, token_bytes)
        return out

    ref_logps = None
    if reference == "cached":
        ref_logps = reference_logps(ref_params, train_items, cfg.model, batch)
        ref_params = None  # the cached log-probs are all we need of the reference from here on

    def loss_fn(params, b, frozen):
        return dpo_loss(params, b, frozen, cfg=cfg.model, beta=beta, kind=kind)

    return Stage("dpo", loss=loss_fn, evaluate=evaluate, init_from=init_from, frozen=ref_params,
                 loader=lambda state: PairLoader(train_items, batch, cfg.seed, ref_logps, state, fp),
                 # two sequences a pair; a live reference adds a forward (2 of the 6 FLOPs a weight)
                 flops_scale=2 * (8 / 6 if reference == "live" else 1),
                 fingerprint={"pairs": fp, "beta": beta, "loss": kind, "reference": reference,
                              "sources": data["sources"]})


def _batches(items, batch_size: int):
    """Fixed-shape batches over all items (the last one padded by repeating its last pair)."""
    for start in range(0, len(items), batch_size):
        idx = list(range(start, min(start + batch_size, len(items))))
        yield as_batch(items, idx + [idx[-1]] * (batch_size - len(idx)))


def run(from_, out, data, *, val_data=None, beta: float = 0.1, loss: str = "sigmoid", reference: str = "auto",
        val_fraction: float = 0.05, seed: int = 0, prompt: str | None = None, resume: bool = False,
        checkpoint_dir: str | None = None, log=print, **overrides) -> dict:
    """`trainer run dpo`: from the run `from_` (the frozen reference too) into `out`, on the pairs `data`;
    `val_data`: held-out conversations for bpb; `prompt`: the system prompt variant (None: the base
    run's, sft.prompt_of); `overrides`: sft.finetune_config's (None: its default)."""
    ref, base, tok, meta = checkpoint.load_model(from_)
    seq = overrides.get("seq_len") or base.seq_len
    prompt, text = sft.stage_prompt(prompt, meta)
    pairs = conversations.load(data, "pairs", val_fraction, seed, text)
    val_convs = conversations.load(val_data, "conversations", 1.0, seed, text)["val"] if val_data else None
    prepared = prepare(pairs, tok, seq, val_convs, log)
    cfg = sft.finetune_config(base, "dpo", n_devices=jax.device_count(), seed=seed,
                              train_rows=len(prepared["train"]), **overrides)
    batch = cfg.device_batch_size * jax.device_count()
    if reference == "auto":  # caching costs a forward per pair up front; live, one per pair seen
        seen, n = cfg.num_steps * batch, len(prepared["train"])
        reference = "cached" if seen >= n else "live"
        log(f"reference: {reference} ({seen:,} pairs seen, {n:,} in the data)")
    stage = dpo_stage(cfg, prepared, tok, batch, str(from_), ref, beta=beta, kind=loss, reference=reference)
    stage.fingerprint["prompt"] = prompt
    paths = train.RunPaths(corpus=None, tokenizer=checkpoint.tokenizer_dir(from_), out=out,
                           checkpoints=checkpoint_dir)
    return train.train(cfg, paths, resume=resume, log=log, stage=stage)
