"""`trainer export`: a run as transformers' NanoChat, checked against our JAX model and renderer.

Logits agree to 1e-4 absolute (fp32 on both sides; measured: 1.0e-5 at logits up to 8.6 on the
random weights below, 2.7e-7 on bench/export.py's barely trained run), and greedy decoding gives
the same 16 tokens.
"""

import json
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from nanocode.common import InputError
from tests.conftest import BIN
from tests.tiny_run import train_tiny_run
from trainer import export, model, template
from trainer.engine import Engine
from trainer.model import GPTConfig


LOGIT_ATOL = 1e-4

CONVERSATION = [
    {"role": "system", "content": "You are terse.\n"},
    {"role": "user", "content": "def add(a, b):\n    return a+b\n\n# what does it do? Übergröße, 日本語 🙂"},
    {"role": "assistant", "content": "It adds two numbers.\n"},
    {"role": "user", "content": "  and tabs\there?  "},
]
WITH_TOOLS = CONVERSATION[:2] + [
    {"role": "assistant", "content": "Let me read it.",
     "tool_calls": [{"name": "Read", "args": {"file_path": "a.py", "limit": 20, "all": True, "x": None}},
                    {"name": "Grep", "args": {"pattern": "def \\w+", "ratio": 1.5}}]},
    {"role": "tool", "name": "Read", "content": "1\tdef add(a, b):\n"},
    {"role": "tool", "name": "Grep", "content": "a.py:1"},
    {"role": "assistant", "content": "", "tool_calls": [{"name": "Done", "args": {}}]},
]


def openai_style(messages):
    """The same conversation with OpenAI-style calls (arguments a mapping, as transformers takes them)."""
    return [{**m, "tool_calls": [{"type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
                                 for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in messages]


def trainer_cli(*args):
    return subprocess.run([str(BIN / "trainer"), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny run trained without the parts NanoChat lacks, its bpb eval, and its export by the CLI."""
    from evals import bpb, runs

    root = tmp_path_factory.mktemp("export")
    run = train_tiny_run(root, steps=3, x0_mix=False, qk_gain=1.0)
    runs.write_result(run, "bpb", bpb.evaluate(run, root / "corpus", max_tokens=512, batch_size=2))
    result = trainer_cli("export", run, root / "hf")
    assert result.returncode == 0, result.stdout + result.stderr
    return run, root / "hf"


def jax_vs_torch(params, cfg, hf_model, ids):
    ours = np.asarray(model.forward(params, jnp.asarray(ids), cfg))
    with torch.no_grad():
        theirs = hf_model(torch.tensor(ids)).logits.numpy()
    return ours, theirs


def test_the_export_loads_as_nanochat_with_our_logits_and_greedy_tokens(exported):
    from trainer.checkpoint import load_model

    run, out = exported
    params, cfg, tok, meta = load_model(run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "NanoChatForCausalLM" and hf.config.num_hidden_layers == cfg.n_layer
    prompt = template.render_prompt(CONVERSATION, tok)
    ours, theirs = jax_vs_torch(params, cfg, hf, np.array([prompt]))
    np.testing.assert_allclose(theirs, ours, atol=LOGIT_ATOL, rtol=0)
    prompt = prompt[:cfg.seq_len - 16]  # the engine decodes within the context (the logits above go past it)
    greedy = Engine(params, cfg, tok).complete([prompt], 16, stop=())[0]
    with torch.no_grad():
        generated = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None)
    assert generated[0, len(prompt):].tolist() == greedy

    card = (out / "README.md").read_text()
    assert f"checkpoint step: {meta['step']}" in card and "library_name: transformers" in card
    assert "bpb (step 3):" in card and "bits/byte" in card, card  # the eval written beside the run
    assert f"fingerprint `{tok.fingerprint()}`" in card and "pretrain: the pretraining corpus" in card


def test_the_tokenizer_and_chat_template_give_our_ids(exported):
    from trainer.checkpoint import load_model

    run, out = exported
    _, _, tok, _ = load_model(run)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.convert_tokens_to_ids(list(tok.specials)) == list(tok.specials.values())
    assert len(hf_tok) == tok.vocab_size
    for text in ["  hello\n\n\tworld  ", "x=1;;  \r\n  y", "'s 'LL don't 123456", "Übergröße 日本語 🙂🙂",
                 Path(model.__file__).read_text()]:
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)

    def hf_ids(messages, prompt):
        return list(hf_tok.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True,
                                               return_dict=False))

    for theirs, ours in [(CONVERSATION, CONVERSATION), (WITH_TOOLS, WITH_TOOLS), (openai_style(WITH_TOOLS), WITH_TOOLS)]:
        assert hf_ids(theirs, True) == template.render_prompt(ours, tok)
        assert hf_ids(theirs, False) == template.render(ours, tok)[0]
    string_args = openai_style(WITH_TOOLS)
    string_args[2]["tool_calls"][0]["function"]["arguments"] = '{"file_path": "a.py"}'
    with pytest.raises(Exception, match="must be a mapping"):
        hf_ids(string_args, True)


def random_exportable(tok, key=0):
    """A GQA model with every weight random (no zero projections) and resid_lambdas far from 1."""
    cfg = GPTConfig(vocab_size=tok.vocab_size, seq_len=64, n_layer=3, d_model=64, n_head=4, n_kv_head=2,
                    head_dim=16, x0_mix=False, qk_gain=1.0)
    params = model.init_params(cfg, jax.random.key(key))
    keys = iter(jax.random.split(jax.random.key(key + 1), 8))
    params["blocks"] = {k: 0.15 * jax.random.normal(next(keys), v.shape) for k, v in params["blocks"].items()}
    params["lm_head"] = 0.3 * jax.random.normal(next(keys), params["lm_head"].shape)
    params["resid_lambdas"] = jnp.array([0.6, 1.7, 1.3])
    return params, cfg


def test_folded_resid_lambdas_and_gqa_match_on_random_weights(tiny_tok):
    params, cfg = random_exportable(tiny_tok)
    config = transformers.NanoChatConfig(**export.hf_config(cfg, tiny_tok))
    hf = transformers.NanoChatForCausalLM(config).eval()
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in export.hf_state_dict(params, cfg).items()}, strict=True)
    ids = np.array([template.render_prompt(CONVERSATION, tiny_tok)[:48]] * 2)
    ids[1, 5:] = ids[1, ::-1][:43]  # two different rows
    ours, theirs = jax_vs_torch(params, cfg, hf, ids)
    assert np.abs(ours).max() > 3  # logits big enough for the comparison to mean something
    np.testing.assert_allclose(theirs, ours, atol=LOGIT_ATOL, rtol=0)
    greedy = Engine(params, cfg, tiny_tok).complete([r.tolist() for r in ids[:, :20]], 16, stop=())
    with torch.no_grad():
        generated = hf.generate(torch.tensor(ids[:, :20]), max_new_tokens=16, do_sample=False, eos_token_id=None)
    assert generated[:, 20:].tolist() == greedy


def test_parts_nanochat_lacks_are_refused_unless_at_identity(tiny_tok):
    params, cfg = random_exportable(tiny_tok)
    default = GPTConfig(**{**cfg.__dict__, "x0_mix": True, "qk_gain": 1.2})
    with pytest.raises(InputError, match="qk_gain 1.2.*--hf-compatible"):
        export.check_exportable(model.init_params(default, jax.random.key(0)), default)
    x0_cfg = GPTConfig(**{**cfg.__dict__, "x0_mix": True})
    x0_params = model.init_params(x0_cfg, jax.random.key(0))
    with pytest.raises(InputError, match="x0_lambdas not all 0.*x0_mix=False"):
        export.check_exportable(x0_params, x0_cfg)
    x0_params["x0_lambdas"] = jnp.zeros_like(x0_params["x0_lambdas"])  # the identity: exports
    np.testing.assert_allclose(export.check_exportable(x0_params, x0_cfg), np.cumprod([1.15, 1.10, 1.05]), rtol=1e-6)
    params["resid_lambdas"] = jnp.array([1.0, -0.5, 1.0])
    with pytest.raises(InputError, match="resid_lambdas"):
        export.check_exportable(params, cfg)


def test_bad_input_is_one_line_and_writes_nothing(exported, tmp_path, monkeypatch):
    run, _ = exported
    (tmp_path / "empty-run").mkdir()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    for args, message in [((tmp_path / "empty-run", tmp_path / "a"), "holds no checkpoint"),
                          ((tmp_path / "missing", tmp_path / "b"), "no such run"),
                          ((run, taken), "already exists and is not an empty folder")]:
        result = trainer_cli("export", *args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith("error:") and message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-run", "taken"]
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]

    def broken(*_):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "model_card", broken)  # fails after the weights and tokenizer are written
    with pytest.raises(RuntimeError, match="disk full"):
        export.export(run, tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-run", "taken"]  # no OUT, no temp folder


def test_push_uploads_the_folder_with_its_card(exported, monkeypatch):
    import huggingface_hub

    from tests.hub_server import HubServer

    _, out = exported
    with pytest.raises(InputError, match="give the owner"):
        export.push(out, "no-owner")
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at its import
        url = export.push(out, "someone/tiny-nanocode")
        files = hub.repos["someone/tiny-nanocode"]["files"]
    assert "someone/tiny-nanocode" in url
    assert sorted(files) == sorted(p.name for p in out.iterdir())
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert json.loads(files["config.json"])["architectures"] == ["NanoChatForCausalLM"]
    assert b"## Evals" in files["README.md"]
