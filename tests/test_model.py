"""The GPT of trainer/model.py and the depth dial of trainer/configs.py, on tiny CPU shapes."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanocode.common import InputError
from trainer import configs
from trainer.model import (NEVER, GPTConfig, apply_rope, attend, flops_per_token, forward, init_params, linear,
                           loss_fn, matmul_params, param_count, rope, token_losses)

# These shapes run in microseconds; XLA's optimizing passes are most of every compile here.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit(fn, *static_argnums):
    return jax.jit(fn, static_argnums=static_argnums, compiler_options=FAST_COMPILE)


CFG = GPTConfig(vocab_size=64, seq_len=16, n_layer=3, d_model=32, n_head=4, n_kv_head=2, head_dim=8)
B, T = 2, 16


@functools.cache
def random_params(cfg, seed=0):
    """Every weight random (init zeroes the output projections, which would hide the blocks)."""
    def make(key):
        leaves, treedef = jax.tree.flatten(init_params(cfg, key))
        keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
        # matrices with std 1/sqrt(fan_in), per-layer scalars around 1
        leaves = [jax.random.normal(k, a.shape) / math.sqrt(a.shape[-2] if a.ndim >= 2 else 4) + (a.ndim == 1)
                  for k, a in zip(keys, leaves)]
        return jax.tree.unflatten(treedef, leaves)
    return jit(make)(jax.random.key(seed))


def ids(seed=0):
    # numpy, not jax: every eager jax op on a new shape is a compile of its own
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (B, T), dtype=np.int32)


def reference_forward(params, idx, cfg):
    """Written independently of trainer.model: a Python loop over layers, explicit causal softmax,
    kv heads repeated for GQA."""
    def norm(x):
        return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)

    b, t = idx.shape
    half = cfg.head_dim // 2
    angle = np.arange(t)[:, None] * cfg.rope_base ** (-2.0 * np.arange(half) / cfg.head_dim)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]

    def rotate(x):
        x1, x2 = x[..., :half], x[..., half:]
        return jnp.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)

    x0 = norm(params["wte"][idx])
    x = x0
    for i in range(cfg.n_layer):
        w = {name: a[i] for name, a in params["blocks"].items()}
        x = params["resid_lambdas"][i] * x + params["x0_lambdas"][i] * x0
        h = norm(x)
        q = norm(rotate((h @ w["wq"]).reshape(b, t, cfg.n_head, cfg.head_dim)))
        k = norm(rotate((h @ w["wk"]).reshape(b, t, cfg.n_kv_head, cfg.head_dim)))
        v = (h @ w["wv"]).reshape(b, t, cfg.n_kv_head, cfg.head_dim)
        group = cfg.n_head // cfg.n_kv_head
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        scores = jnp.einsum("bqnh,bknh->bnqk", q, k) * 1.2**2 / math.sqrt(cfg.head_dim)
        scores = jnp.where(np.tril(np.ones((t, t), bool)), scores, -jnp.inf)
        y = jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, -1)
        x = x + y @ w["wo"]
        x = x + jnp.square(jnp.maximum(norm(x) @ w["w_fc"], 0)) @ w["w_proj"]
    logits = norm(x) @ params["lm_head"]
    return cfg.softcap * jnp.tanh(logits / cfg.softcap)


# jitted once each (a config is static): eager dispatch of every op would make this file slow
init = jit(init_params, 0)
fwd = jit(forward, 2)
losses_of = jit(token_losses, 3)
loss_and_grads = jit(jax.value_and_grad(loss_fn), 3)
reference = jit(reference_forward, 2)


def test_shapes_and_dtypes():
    params = init(CFG, jax.random.key(0))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    assert params["blocks"]["wk"].shape == (3, 32, 2 * 8) and params["lm_head"].shape == (32, 64)
    # nanochat's init: blocks start as the identity, per-layer scalars ramp down with depth
    assert not np.any(params["blocks"]["wo"]) and not np.any(params["blocks"]["w_proj"])
    np.testing.assert_allclose(params["resid_lambdas"], [1.15, 1.10, 1.05], rtol=1e-6)
    np.testing.assert_allclose(params["x0_lambdas"], [0.20, 0.125, 0.05], rtol=1e-6)
    logits = fwd(params, ids(), CFG)
    assert logits.shape == (B, T, CFG.vocab_size) and logits.dtype == jnp.float32
    losses = losses_of(params, ids(), ids(1), CFG)
    assert losses.shape == (B, T) and losses.dtype == jnp.float32
    loss, grads = loss_and_grads(params, ids(), ids(1), CFG)
    assert loss.shape == () and jax.tree.structure(grads) == jax.tree.structure(params)


def test_scan_over_layers_equals_unrolled_reference():
    params = random_params(CFG)
    np.testing.assert_allclose(fwd(params, ids(), CFG), reference(params, ids(), CFG),
                               rtol=1e-4, atol=1e-4)


def test_gradients_equal_autodiff_of_the_reference():
    # model.linear has its own backward (the weight gradient's transpose laid out first): the
    # gradients must still be those of plain matmuls, here autodiff through reference_forward
    params, x, y = random_params(CFG), ids(), ids(1)

    def reference_loss(p):
        logits = reference_forward(p, x, CFG)
        picked = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)

    expected = jit(jax.grad(reference_loss))(params)
    _, got = loss_and_grads(params, x, y, CFG)
    for path, a in jax.tree_util.tree_leaves_with_path(got):
        b = functools.reduce(lambda t, k: t[k.key], path, expected)
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))


def test_attention_backward_equals_autodiff_of_plain_softmax_attention():
    """attend's own backward (flash attention's) against autodiff of the textbook formula, for GQA
    groups and a random mask with a row that sees nothing (a padding row: its gradient is zero)."""
    ks = jax.random.split(jax.random.key(4), 5)
    B_, Hkv, G, T_, S, H = 2, 2, 3, 5, 7, 8
    qg, k, v = (jax.random.normal(key, shape) for key, shape in
                zip(ks, ((B_, Hkv, G, T_, H), (B_, Hkv, S, H), (B_, Hkv, S, H))))
    mask = jax.random.bernoulli(ks[3], 0.6, (B_, 1, 1, T_, S)).at[0, 0, 0, 0].set(False)
    cot = jax.random.normal(ks[4], qg.shape)

    def plain(q, k, v):
        scores = jnp.einsum("bkgth,bksh->bkgts", q, k) * 0.3
        return jnp.einsum("bkgts,bksh->bkgth", jax.nn.softmax(jnp.where(mask, scores, NEVER), -1), v)

    y, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, mask, 0.3), qg, k, v)
    want_y, want_vjp = jax.vjp(plain, qg, k, v)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
    for got, want in zip(vjp(cot), want_vjp(cot)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(vjp(cot)[0][0, 0, 0, 0]).max()) == 0.0  # the row that sees nothing


@pytest.mark.parametrize("dtype, out_dtype", [(jnp.float32, None), (jnp.bfloat16, None), (jnp.bfloat16, jnp.float32)])
def test_linear_backward_equals_plain_dot(dtype, out_dtype):
    kx, kw, kg = jax.random.split(jax.random.key(3), 3)
    x, w = jax.random.normal(kx, (2, 5, 16), dtype), jax.random.normal(kw, (16, 24), dtype)
    cot = jax.random.normal(kg, (2, 5, 24), out_dtype or dtype)
    mine = jax.vjp(lambda x, w: linear(x, w, out_dtype), x, w)
    plain = jax.vjp(lambda x, w: jnp.dot(x, w, preferred_element_type=out_dtype), x, w)
    assert mine[0].dtype == plain[0].dtype and np.array_equal(mine[0], plain[0])
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for a, b in zip(mine[1](cot), plain[1](cot.astype(plain[0].dtype))):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol * 4)


def test_causal():
    params, x = random_params(CFG), ids()
    base = np.asarray(fwd(params, x, CFG))
    for t in (0, 5, T - 2):
        changed = x.copy()
        changed[:, t + 1:] = (x[:, t + 1:] + 7) % CFG.vocab_size
        out = np.asarray(fwd(params, changed, CFG))
        np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1])
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:])


def test_gqa_equals_mha_with_tiled_kv_heads():
    params = jax.tree.map(np.asarray, random_params(CFG))
    mha = dataclasses.replace(CFG, n_kv_head=CFG.n_head)
    group = CFG.n_head // CFG.n_kv_head

    def tile(w):  # (L, D, KV*hd) -> (L, D, H*hd): kv head j serves query heads j*group .. j*group+group-1
        L, D, _ = w.shape
        return np.repeat(w.reshape(L, D, CFG.n_kv_head, CFG.head_dim), group, axis=2).reshape(L, D, -1)

    tiled = {**params, "blocks": {**params["blocks"], "wk": tile(params["blocks"]["wk"]),
                                  "wv": tile(params["blocks"]["wv"])}}
    np.testing.assert_allclose(fwd(params, ids(), CFG), fwd(tiled, ids(), mha), rtol=1e-5, atol=1e-5)


def test_rope_depends_only_on_relative_position():
    q, k = np.random.default_rng(0).normal(size=(2, 1, 1, 1, 8)).astype(np.float32)

    @jit
    def score(q_pos, k_pos):  # q.k after rotating each to its position
        cos, sin = rope(jnp.stack([q_pos, k_pos]), 8, 100_000.0)
        return jnp.sum(apply_rope(q, cos[:1], sin[:1]) * apply_rope(k, cos[1:], sin[1:]))

    dots = [float(score(p + 3, p)) for p in (0, 10, 30)]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-5)
    assert not np.isclose(dots[0], float(np.sum(q * k)))  # but it does rotate


def test_softcap_bounds_logits():
    params = random_params(CFG)
    params = {**params, "lm_head": np.asarray(params["lm_head"]) * 100.0}
    biggest = np.max(np.abs(np.asarray(fwd(params, ids(), CFG))))
    assert 0.9 * CFG.softcap < biggest <= CFG.softcap  # without the cap they would reach ~100


def test_loss_at_init_is_ln_vocab():
    loss = float(loss_and_grads(init(CFG, jax.random.key(0)), ids(), ids(1), CFG)[0])
    assert abs(loss - math.log(CFG.vocab_size)) < 0.01


def test_ignored_targets():
    params, x, y = random_params(CFG), ids(), ids(1)
    y_masked = y.copy()
    y_masked[:, ::3] = -1
    losses = np.asarray(losses_of(params, x, y_masked, CFG))
    assert np.all(losses[:, ::3] == 0)
    np.testing.assert_allclose(losses[y_masked >= 0], np.asarray(losses_of(params, x, y, CFG))[y_masked >= 0])
    expected = losses.sum() / (y_masked >= 0).sum()
    np.testing.assert_allclose(float(loss_and_grads(params, x, y_masked, CFG)[0]), expected, rtol=1e-6)
    # loss_fn's fused lm_head + loss (model.head_loss) has the gradients of the unfused token_losses
    plain = jit(jax.grad(lambda p, x, y, c: jnp.sum(token_losses(p, x, y, c)) / jnp.sum(y >= 0)), 3)
    for a, b in zip(jax.tree.leaves(loss_and_grads(params, x, y_masked, CFG)[1]),
                    jax.tree.leaves(plain(params, x, y_masked, CFG))):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    # nothing to predict: loss 0 and zero gradients, not NaN
    loss, grads = loss_and_grads(params, x, np.full_like(y, -1), CFG)
    assert float(loss) == 0.0
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_param_count_matches_leaves(n_kv_head):
    cfg = dataclasses.replace(CFG, n_kv_head=n_kv_head)
    params = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
    assert param_count(cfg) == sum(a.size for a in jax.tree.leaves(params))
    blocks = sum(a.size for a in jax.tree.leaves(params["blocks"]))
    assert matmul_params(cfg) == blocks + params["lm_head"].size


def test_flops_per_token_hand_count():
    # L=3, D=32, 4 q heads and 2 kv heads of 8, V=64, T=16
    # per layer: wq 32*32 + wk 32*16 + wv 32*16 + wo 32*32 + fc 32*128 + proj 128*32 = 11264
    matmul = 3 * 11264 + 32 * 64
    attn = 12 * 3 * 4 * 8 * 16
    assert flops_per_token(CFG) == 6 * matmul + attn == 233472


def test_bf16_compute_stays_close_to_fp32():
    params, x, y = random_params(CFG), ids(), ids(1)
    bf16 = dataclasses.replace(CFG, compute_dtype="bfloat16")
    logits, ref = fwd(params, x, bf16), fwd(params, x, CFG)
    assert logits.dtype == jnp.float32
    logits, ref = np.asarray(logits), np.asarray(ref)
    assert np.mean(np.abs(logits - ref)) < 0.05 * np.mean(np.abs(ref))
    (loss, grads), (ref_loss, ref_grads) = loss_and_grads(params, x, y, bf16), loss_and_grads(params, x, y, CFG)
    assert abs(float(loss) - float(ref_loss)) < 0.02 * float(ref_loss)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        assert g.dtype == jnp.float32  # master weights get fp32 gradients
        g, r = np.asarray(g).ravel(), np.asarray(r).ravel()
        assert g @ r / (np.linalg.norm(g) * np.linalg.norm(r)) > 0.98


def test_config_validation():
    with pytest.raises(ValueError):
        dataclasses.replace(CFG, n_kv_head=3)
    with pytest.raises(ValueError):
        dataclasses.replace(CFG, attention="cudnn")  # cuDNN attention is bf16/fp16 only


# ---- the depth dial ----

def test_get_config_unknown_name_lists_choices():
    with pytest.raises(InputError, match="d3.*d24"):
        configs.get_config("gpt2")
    with pytest.raises(InputError):
        configs.get_config("d0")
    with pytest.raises(InputError, match="no_such_field"):
        configs.get_config("d3", no_such_field=1)


@pytest.mark.parametrize("name, low, high", [
    ("d3", 3.5e6, 5e6), ("d6", 30e6, 40e6), ("d12", 130e6, 140e6), ("d20", 470e6, 485e6), ("d24", 775e6, 790e6)])
def test_preset_param_counts(name, low, high):
    assert low <= param_count(configs.get_config(name).model) <= high


def test_depth_dial_matches_nanochat():
    # the "scaling params" of nanochat's table (vocab 32768; theirs add only tiny VE gate matrices)
    for depth, millions in [(4, 11.5), (12, 110.1), (20, 435.2), (24, 729.8)]:
        assert matmul_params(configs.get_config(f"d{depth}").model) / 1e6 == pytest.approx(millions, abs=0.1)
    m = configs.get_config("d6").model
    assert (m.d_model, m.n_head, m.head_dim) == (384, 6, 64)  # tiny: head_dim 64
    m = configs.get_config("d20").model
    assert (m.d_model, m.n_head, m.n_kv_head, m.head_dim) == (1280, 10, 10, 128)
    assert configs.get_config("d7").model.d_model == 448
    # Power-Lines batch: 2^18 at d8, 2^19 at d10-16, 2^20 at d18-26, 2^21 at d32
    for depth, log2 in [(8, 18), (10, 19), (16, 19), (18, 20), (26, 20), (32, 21)]:
        assert configs.get_config(f"d{depth}").total_batch_tokens == 2**log2
    d12 = configs.get_config("d12")
    assert d12.num_steps == round(8 * matmul_params(d12.model) / 2**19)
    hp = configs.effective_hparams(d12)  # the reference point: nothing scaled
    assert hp["matrix_lr"] == 0.02 and hp["embedding_lr"] == 0.3 and hp["weight_decay"] == pytest.approx(0.28, rel=1e-3)


def test_overrides_rederive_the_run():
    d3 = configs.get_config("d3")
    assert (d3.model.seq_len, d3.model.vocab_size, d3.model.head_dim) == (256, 8192, 64)
    assert configs.grad_accum_steps(d3) == d3.total_batch_tokens // (d3.device_batch_size * 256)
    bigger = configs.get_config("d3", vocab_size=16384)
    assert bigger.model.vocab_size == 16384 and bigger.num_steps > d3.num_steps
    assert configs.get_config("d3", num_steps=10).num_steps == 10
    gqa = configs.get_config("d12", n_kv_head=2)
    assert gqa.model.n_kv_head == 2 and gqa.name == "d12"
    assert configs.get_config("d24").model.seq_len == 4096
    gpu = configs.for_platform(d3, "gpu").model
    assert (gpu.compute_dtype, gpu.attention) == ("bfloat16", "cudnn")
    with pytest.raises(InputError):
        configs.grad_accum_steps(configs.get_config("d3", device_batch_size=3))
    table = configs.describe(d3)
    assert table["params"] == param_count(d3.model) and table["tokens"] == d3.num_steps * 4096
