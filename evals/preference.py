"""DPO preference accuracy on held-out pairs, with trainer/dpo.py's own rendering and log-probs.

Pairs come from a data spec (`--data`, as `trainer run dpo` takes it); the held-out ones are its
validation split (the same hash split and --val-fraction DPO used, so they never trained).
Two numbers per pair, [chosen, rejected] summed log-probs over the completion's assistant tokens:
  reward accuracy   the implicit DPO reward beta * (log pi - log ref) of chosen beats rejected's,
                    against the run the model started from (its checkpoint's `from`), exactly as
                    training's val_rewards/accuracies; only when that run is still there
  log-prob accuracy the model alone gives the chosen side the higher log-prob
"""

import time
from pathlib import Path

import jax

from nanocode.common import InputError
from trainer import conversations, dpo, model
from trainer.checkpoint import load_model, load_params


def evaluate(run_dir, data, *, val_fraction: float = 0.05, all_pairs: bool = False, beta: float = 0.1,
             batch_size: int = 8, loaded=None) -> dict:
    params, cfg, tok, meta = loaded or load_model(run_dir)
    pairs_data = conversations.load(data, "pairs", val_fraction)
    pairs = pairs_data["train"] + pairs_data["val"] if all_pairs else pairs_data["val"]
    if not pairs:
        raise InputError(f"{data}: no held-out pairs (the validation split is empty); raise --val-fraction "
                         "or pass --all to score every pair")
    items, too_long = dpo.render_pairs(pairs, tok, cfg.seq_len)
    if not items:
        raise InputError(f"none of the {len(pairs)} pair(s) fits the model's {cfg.seq_len}-token context")
    t0 = time.perf_counter()
    policy = dpo.reference_logps(params, items, cfg, batch_size)  # (pairs, 2) log-probs under `params`
    out = {"kind": "preference", "run": str(run_dir), "step": meta["step"], "data": str(data),
           "split": "all" if all_pairs else f"held-out ({val_fraction:g})", "pairs": len(items),
           "dropped": {**pairs_data["dropped"], **({"longer than the context": too_long} if too_long else {})},
           "logp_accuracy": float((policy[:, 0] > policy[:, 1]).mean()),
           "logp_margin": float((policy[:, 0] - policy[:, 1]).mean())}
    ref_run = meta.get("from")
    if ref_run and Path(ref_run).exists():
        like = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
        ref = dpo.reference_logps(load_params(ref_run, like, tok), items, cfg, batch_size)
        ratio = policy - ref
        out.update(reference=str(ref_run), reward_accuracy=float((ratio[:, 0] > ratio[:, 1]).mean()),
                   reward_margin=float(beta * (ratio[:, 0] - ratio[:, 1]).mean()))
    else:
        why = f"the reference run {ref_run} is gone" if ref_run else "this checkpoint did not start from another run"
        out.update(reference=None, note=f"no reward accuracy: {why}")
    out["seconds"] = time.perf_counter() - t0
    return out
