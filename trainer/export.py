"""`trainer export RUN OUT`: a run as a Hugging Face model folder, for transformers, vLLM and MLX.

transformers ships nanochat's architecture as `NanoChatForCausalLM`; ours (trainer/model.py) maps
onto it weight for weight, written as torch's (out, in) matrices:

    wte                  -> model.embed_tokens.weight
    blocks.wq/wk/wv/wo   -> model.layers.{i}.self_attn.{q,k,v,o}_proj.weight
    blocks.w_fc/w_proj   -> model.layers.{i}.mlp.fc1/fc2.weight          (relu2, 4x wide)
    lm_head              -> lm_head.weight                                (untied, softcap 15)

Both embed, RMS-normalize (no gain, eps 1e-6), run pre-norm blocks with RoPE (half-split, same
sign) then QK-norm, and normalize before the unembedding. Where they differ:

- resid_lambdas (x = resid_lambdas[i] * x before layer i): NanoChat has none, but it folds
  exactly. Every norm is scale-free, so the stream divided by P_i = resid_lambdas[0] * ... *
  resid_lambdas[i] runs the same blocks; o_proj and fc2 of layer i are divided by P_i. (The norms'
  eps then weighs P_i^2 times less: a relative change of ~1e-6 * P_i^2 / mean(x^2).) A product
  that is not positive would flip the sign the norms remove, and is refused.
- x0_lambdas (x += x0_lambdas[i] * x0, the normed embedding, before each layer): NanoChat cannot
  express it. Exported only when every x0_lambda is 0; train with `x0_mix=False`.
- qk_gain (q and k times 1.2 after QK-norm): NanoChat scales scores by 1/sqrt(head_dim) only and
  the norm undoes any weight scaling. Exported only at 1.0; train with `qk_gain=1.0`.
(`trainer run pretrain --hf-compatible` sets both.)

The tokenizer goes through transformers' tiktoken converter (same byte-level BPE, split pattern
and special-token ids); the chat template (export_chat_template.j2) renders our token template.
One difference remains: a Hugging Face tokenizer turns text that spells a special token (a user
pasting `<|user_end|>`) into that token, where our renderer keeps it text.

OUT is written whole or not at all: into a temp folder beside it, renamed at the end.
"""

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import jax
import numpy as np

from nanocode import hub
from nanocode.common import InputError, write_text_atomic
from nanocode.record import ASSISTANT_END, BOS
from trainer import checkpoint
from trainer.model import GPTConfig

CHAT_TEMPLATE = Path(__file__).with_name("export_chat_template.j2")


def check_exportable(params, cfg: GPTConfig) -> np.ndarray:
    """Raise InputError naming the first part NanoChat cannot express; else the (L,) cumulative
    products of resid_lambdas that fold into o_proj and fc2."""
    if cfg.qk_gain != 1.0:
        raise InputError(f"this run scales q and k by qk_gain {cfg.qk_gain} after QK-norm, which transformers' "
                         "NanoChat cannot express: train with qk_gain=1.0 (`trainer run pretrain --hf-compatible`)")
    if "x0_lambdas" in params and np.any(np.asarray(params["x0_lambdas"]) != 0):
        raise InputError("this run mixes x0 into every layer (x0_lambdas not all 0), which transformers' NanoChat "
                         "cannot express: train with x0_mix=False (`trainer run pretrain --hf-compatible`)")
    scale = np.cumprod(np.asarray(params["resid_lambdas"], np.float64))
    if np.any(scale <= 0):
        raise InputError(f"the products of resid_lambdas reach {scale.min():.3g} <= 0: they cannot fold into "
                         "o_proj/fc2 (a norm removes the sign), so transformers' NanoChat cannot express this run")
    return scale


def hf_config(cfg: GPTConfig, tok) -> dict:
    """transformers' NanoChatConfig fields for our model and tokenizer."""
    return {
        "architectures": ["NanoChatForCausalLM"], "model_type": "nanochat",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": 4 * cfg.d_model,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.seq_len, "hidden_act": "relu2", "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "final_logit_softcapping": cfg.softcap, "attention_bias": False, "tie_word_embeddings": False,
        # the engine stops at <|assistant_end|> or a new <|bos|>; padding is never attended
        "bos_token_id": tok.bos_id, "eos_token_id": [tok.special_id(ASSISTANT_END), tok.bos_id],
        "pad_token_id": tok.special_id(ASSISTANT_END), "dtype": "float32",
    }


def hf_state_dict(params, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """Our params as NanoChatForCausalLM's state dict (fp32, torch's (out, in) layout)."""
    scale = check_exportable(params, cfg)
    p = jax.tree.map(lambda a: np.array(a, np.float32), params)  # a writable copy: torch shares it
    out = {"model.embed_tokens.weight": p["wte"], "lm_head.weight": p["lm_head"].T}
    names = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
             "wo": "self_attn.o_proj", "w_fc": "mlp.fc1", "w_proj": "mlp.fc2"}
    for i in range(cfg.n_layer):
        for ours, theirs in names.items():
            w = p["blocks"][ours][i].T
            if ours in ("wo", "w_proj"):  # the folded resid_lambdas (module docstring)
                w = (w / scale[i]).astype(np.float32)
            out[f"model.layers.{i}.{theirs}.weight"] = np.ascontiguousarray(w)
    return out


def hf_tokenizer(tok, tok_dir: Path):
    """Our tokenizer as a transformers fast tokenizer, with the chat template."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converted = TikTokenConverter(vocab_file=str(tok_dir / "tokenizer.tiktoken"), pattern=tok.pattern,
                                  extra_special_tokens=tok.specials).converted()
    hf = PreTrainedTokenizerFast(tokenizer_object=converted, bos_token=BOS, eos_token=ASSISTANT_END,
                                 pad_token=ASSISTANT_END, chat_template=CHAT_TEMPLATE.read_text(encoding="utf-8"),
                                 model_max_length=None, clean_up_tokenization_spaces=False)
    ids = hf.convert_tokens_to_ids(list(tok.specials))
    if ids != list(tok.specials.values()):  # the converter appends specials in order: ids must not move
        raise RuntimeError(f"special token ids moved in conversion: {ids} != {list(tok.specials.values())}")
    return hf


# ----------------------------------------------------------------------------- the model card


def lineage(run: str, meta: dict) -> list[dict]:
    """This stage and the ones it started from (meta["from"]), latest first, as far as they are on disk."""
    out, seen = [{"run": run, **meta}], {run}
    while (parent := out[-1].get("from")) and parent not in seen:
        seen.add(parent)
        try:
            ckpt = checkpoint.find_checkpoints(parent)
            _, parent_meta = ckpt.read_meta()
            ckpt.close()
        except InputError:
            out.append({"run": parent, "stage": "unknown (not on this machine)"})
            break
        out.append({"run": parent, **parent_meta})
    return out


def soul_hashes(stages: list[dict]) -> list[str]:
    """SOUL sha256 of the factory versions the stages trained on, where this home's store has them."""
    versions = sorted({int(s.split(":", 1)[1]) for st in stages for s in st.get("data", {}).get("sources", [])
                       if s.startswith("factory:") and s.split(":", 1)[1].isdigit()})
    if not versions:
        return []
    from factory.store import Store  # the trainer's one way into the factory: its store, read-only

    try:
        store = Store(read_only=True)
    except Exception as e:  # no store in this home: the card says so
        return [f"factory:{v}: unknown ({str(e).splitlines()[0]})" for v in versions]
    try:
        return [f"factory:{v}: {store.version(v).get('soul_sha256', 'unknown')}" for v in versions]
    except Exception as e:
        return [f"unknown ({str(e).splitlines()[0]})"]
    finally:
        store.close()


EVAL_FIGURES = {  # kind -> one headline line of an evals/*.json result
    "bpb": lambda r: ", ".join(f"{k} {v:.4f} bits/byte" for k, v in r["bpb"].items()),
    "core": lambda r: f"CORE {r['core']:.4f}",
    "agentic": lambda r: f"pass rate {r['summary']['pass_rate']:.1%} over {r['summary']['tasks']} tasks",
    "soul": lambda r: f"all SOUL checks pass on {r['all_pass_rate']:.1%} of {r['replies']} replies",
    "preference": lambda r: f"log-prob accuracy {r['logp_accuracy']:.1%} on {r['pairs']} {r['split']} pairs",
}


def eval_figures(run: str) -> list[str]:
    """Headline figures of the eval results beside a local run (RUN/evals, or its root's evals/)."""
    lines, run = [], Path(run)
    for d in (run / "evals", run.parent / "evals"):
        for path in sorted(d.glob("*.json")):
            try:
                r = json.loads(path.read_text(encoding="utf-8"))
                lines.append(f"{path.stem} (step {r.get('step', '?')}): {EVAL_FIGURES[r['kind']](r)}")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                lines.append(f"{path.stem}: see {path.name} ({type(e).__name__} reading it)")
        if lines:
            break
    return lines


def model_card(run: str, meta: dict, cfg: GPTConfig, tok, repo: str | None) -> str:
    import huggingface_hub

    stages = lineage(run, meta)
    data = [f"{st.get('stage', 'pretrain')}: {', '.join(st.get('data', {}).get('sources', [])) or 'the pretraining corpus'}"
            for st in stages]
    card_data = huggingface_hub.ModelCardData(library_name="transformers", pipeline_tag="text-generation",
                                              tags=["nanocode", "nanochat", "code", "agent"])
    template = (Path(__file__).with_name("export_card.md.j2")).read_text(encoding="utf-8")
    return str(huggingface_hub.ModelCard.from_template(
        card_data, template_str=template, repo=repo or "OUT", step=meta["step"], stages=data,
        souls=soul_hashes(stages) or ["none recorded (no factory data in this run's lineage)"],
        evals=eval_figures(run) or ["none yet (run `evals bpb|core|agentic|soul|preference RUN`)"],
        shape=asdict(cfg), tokenizer=tok.fingerprint(), vocab=tok.vocab_size))


# ----------------------------------------------------------------------------- export and push


def export(run, out, step: int | None = None, repo: str | None = None, log=print) -> Path:
    """Write RUN's checkpoint (latest or `step`) to OUT as a transformers model folder."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not an empty folder: choose another OUT")
    params, cfg, tok, meta = checkpoint.load_model(run, step, platform="cpu")
    state = hf_state_dict(params, cfg)  # refuses what NanoChat cannot express, before anything is written

    import torch
    from transformers import NanoChatConfig, NanoChatForCausalLM

    with torch.device("meta"):  # no random init: the weights come next
        model = NanoChatForCausalLM(NanoChatConfig(**hf_config(cfg, tok)))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True, assign=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config)  # its buffers, off the meta device
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        hf_tokenizer(tok, checkpoint.tokenizer_dir(run)).save_pretrained(tmp)
        write_text_atomic(tmp / "README.md", model_card(str(run), meta, cfg, tok, repo))
        os.chmod(tmp, 0o755)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"exported {run} (step {meta['step']}) -> {out}")
    return out


def push(folder, repo: str, private: bool = False) -> str:
    """Upload an exported folder to the model repo `repo` in one commit; returns the commit's url."""
    api = hub.upload_api(repo, "--push", "push")
    with hub.hub_errors(api, "create the repo"):
        api.create_repo(repo, private=private, exist_ok=True)
    with hub.hub_errors(api, "commit the files"):
        commit = api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message="nanocode trainer export")
    return commit.commit_url
