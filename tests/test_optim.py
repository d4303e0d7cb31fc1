"""trainer/optim.py against NumPy references: Polar Express Muon, AdamW groups, lr_mult, schedules, sharding."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer import optim
from trainer.optim import (POLAR_EXPRESS_COEFFS, build_optimizer, lr_multiplier, muon_momentum_at,
                           orthogonalize, param_labels, scaled_update)

L, D, V = 2, 16, 32
LRS = dict(matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5)


def make_params(seed=0, L=L, D=D, V=V):
    r = np.random.default_rng(seed)
    n = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
    return {"wte": n(V, D), "lm_head": n(D, V), "resid_lambdas": n(L), "x0_lambdas": n(L),
            "blocks": {"wq": n(L, D, D), "wk": n(L, D, D), "wv": n(L, D, D), "wo": n(L, D, D),
                       "w_fc": n(L, D, 4 * D), "w_proj": n(L, 4 * D, D)}}


def np_orthogonalize(g, steps=5):
    x = g.astype(np.float64) / (np.linalg.norm(g) * 1.01 + 1e-6)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def test_labels():
    labels = param_labels(make_params())
    assert labels["wte"] == "embedding" and labels["lm_head"] == "unembedding"
    assert labels["resid_lambdas"] == "resid" and labels["x0_lambdas"] == "scalar"
    assert set(labels["blocks"].values()) == {"matrix"}
    with pytest.raises(ValueError):  # an unknown 2-D param must not silently land in some group
        param_labels({"mystery": jnp.zeros((3, 3))})


@pytest.mark.parametrize("shape", [(24, 96), (96, 24)])
def test_orthogonalize_matches_numpy_and_is_orthogonal(shape):
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    o = np.asarray(orthogonalize(jnp.asarray(g)))
    np.testing.assert_allclose(o, np_orthogonalize(g), atol=2e-5)
    s = np.linalg.svd(o, compute_uv=False)
    assert 0.8 < s.min() and s.max() < 1.2, s  # Polar Express lands in ~[0.86, 1.14]
    u, _, vt = np.linalg.svd(g, full_matrices=False)  # ... and points along the true polar factor
    assert np.sum(o * (u @ vt)) / np.linalg.norm(o) / np.linalg.norm(u @ vt) > 0.99


def run_steps(params, grads_list, lr_mults, momentum, weight_decay):
    tx = build_optimizer(params, **LRS)

    @jax.jit
    def step(params, state, grads, mult):
        updates, state = scaled_update(tx, grads, state, params, mult, muon_momentum=momentum,
                                       muon_weight_decay=weight_decay)
        return jax.tree.map(jnp.add, params, updates), state

    state = tx.init(params)
    for grads, mult in zip(grads_list, lr_mults):
        params, state = step(params, state, grads, mult)
    return params


def test_muon_and_adamw_match_numpy_per_group_and_per_layer():
    p0 = make_params(0)
    grads = [make_params(1), make_params(2)]
    mults, wd, beta = [0.5, 0.25], 0.1, 0.95
    p = run_steps(p0, grads, mults, momentum=beta, weight_decay=wd)
    to_np = lambda t: jax.tree.map(np.asarray, t)
    p0, grads, p = to_np(p0), to_np(grads), to_np(p)
    # AdamW: lr_mult folds into lr; bias-corrected moments; no weight decay (nanochat's AdamW groups)
    b1, b2, eps = 0.8, 0.95, 1e-10
    group_lrs = {**LRS, "resid_lr": LRS["scalar_lr"] * optim.RESID_LR_SCALE}
    for name, group in [("wte", "embedding"), ("lm_head", "unembedding"), ("x0_lambdas", "scalar"),
                        ("resid_lambdas", "resid")]:
        w, m, v = p0[name].astype(np.float64), 0.0, 0.0
        for t, (g, mult) in enumerate(zip(grads, mults), 1):
            g = g[name]
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            adam = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
            w = w - group_lrs[f"{group}_lr"] * mult * adam
        np.testing.assert_allclose(p[name], w, rtol=1e-5, atol=1e-6)
    # Muon: each layer of each stacked matrix on its own, Nesterov lerp, sqrt(max(1, out/in)) boost
    for name in p0["blocks"]:
        for layer in range(L):
            w, m = p0["blocks"][name][layer].astype(np.float64), 0.0
            boost = np.sqrt(max(1.0, w.shape[1] / w.shape[0]))
            for g, mult in zip(grads, mults):
                g = g["blocks"][name][layer]
                m = beta * m + (1 - beta) * g
                lr = LRS["matrix_lr"] * mult * boost
                w = w - lr * (np_orthogonalize(g + beta * (m - g)) + wd * w)
            np.testing.assert_allclose(p["blocks"][name][layer], w, rtol=1e-4, atol=1e-5)


def test_lr_mult_scales_updates_and_weight_decay_linearly():
    params, grads = make_params(0), make_params(1)
    tx = build_optimizer(params, **LRS)
    state = tx.init(params)
    update = jax.jit(lambda g, mult: scaled_update(tx, g, state, params, mult, muon_momentum=0.95,
                                                   muon_weight_decay=0.3)[0])
    u1, u3 = update(grads, 1.0), update(grads, 0.3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(0.3 * a, b, rtol=1e-6, atol=1e-8), u1, u3)
    u = update(jax.tree.map(jnp.zeros_like, grads), 0.5)  # zero grads: pure decay, scaled too
    w = params["blocks"]["w_fc"]  # Muon decay rides on the boosted lr: 0.5 * 0.02 * sqrt(4D/D) * 0.3
    np.testing.assert_allclose(u["blocks"]["w_fc"], -0.5 * 0.02 * 2.0 * 0.3 * w, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(u["wte"], 0)  # the AdamW groups take no weight decay


def test_momentum_and_weight_decay_arrays_match_constants():
    params, grads = make_params(0), make_params(1)
    tx = build_optimizer(params, **LRS)
    want, _ = jax.jit(lambda: scaled_update(tx, grads, tx.init(params), params, 0.7, muon_momentum=0.9,
                                            muon_weight_decay=0.2))()
    got, _ = jax.jit(lambda m, wd: scaled_update(tx, grads, tx.init(params), params, 0.7, muon_momentum=m,
                                                 muon_weight_decay=wd))(jnp.float32(0.9), jnp.float32(0.2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)


def test_changing_lr_mult_or_momentum_does_not_recompile():
    params, grads = make_params(0), make_params(1)
    tx = build_optimizer(params, **LRS)
    traces = []

    @jax.jit
    def step(params, state, grads, lr_mult, momentum):
        traces.append(1)
        u, state = scaled_update(tx, grads, state, params, lr_mult, muon_momentum=momentum, muon_weight_decay=0.1)
        return jax.tree.map(jnp.add, params, u), state

    state = tx.init(params)
    for i in range(4):
        params, state = step(params, state, grads, jnp.float32(lr_multiplier(i, 10, 2, 0.5, 0.1)),
                             jnp.float32(muon_momentum_at(i)))
    assert len(traces) == 1 and step._cache_size() == 1


def test_schedule_shape():
    f = [lr_multiplier(s, 100, 10, 0.4, 0.05) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0
    assert np.all(np.diff(f[:10]) > 0) and all(x == 1.0 for x in f[10:61])
    assert np.all(np.diff(f[60:]) < 0) and f[100] == pytest.approx(0.05) and min(f) >= 0.05
    assert lr_multiplier(5, 100, 0, 0.0, 0.0) == 1.0  # no warmup, no warmdown
    short = [lr_multiplier(s, 60, 40, 0.65, 0.05) for s in range(61)]  # the ramps overlap: no jump
    assert max(abs(np.diff(short))) <= 1 / 40 + 1e-9 and short[-1] == pytest.approx(0.05)
    m = [muon_momentum_at(s, 1000, 0.5) for s in range(1001)]
    assert m[0] == 0.85 and m[400] == m[500] == 0.97 and m[1000] == pytest.approx(0.90)


def test_toy_least_squares_decreases():
    r = np.random.default_rng(0)
    X = jnp.asarray(r.standard_normal((L, 64, D)), jnp.float32)
    W_true = jnp.asarray(r.standard_normal((L, D, D)), jnp.float32)
    Y, E_true = X @ W_true, jnp.asarray(r.standard_normal((V, D)), jnp.float32)

    def loss(p):
        return jnp.mean((X @ p["blocks"]["w"] - Y) ** 2) + jnp.mean((p["wte"] - E_true) ** 2)

    params = {"wte": jnp.zeros((V, D)), "blocks": {"w": jnp.zeros((L, D, D))}}
    tx = build_optimizer(params, **{**LRS, "matrix_lr": 0.1, "embedding_lr": 0.05})
    state = tx.init(params)

    @jax.jit
    def step(params, state, lr_mult):
        l, g = jax.value_and_grad(loss)(params)
        u, state = scaled_update(tx, g, state, params, lr_mult, muon_momentum=0.95, muon_weight_decay=0.0)
        return jax.tree.map(jnp.add, params, u), state, l

    losses = []
    for i in range(100):
        params, state, l = step(params, state, lr_multiplier(i, 100, 5, 0.5, 0.0))
        losses.append(float(l))
    assert losses[-1] < 0.05 * losses[0], losses[::10]


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from tests.test_optim import make_params
    from trainer.optim import build_optimizer, init_state, scaled_update
    assert jax.device_count() == 4
    params, grads = make_params(0, L=2, D=32, V=64), make_params(1, L=2, D=32, V=64)
    for t in (params, grads):  # square, wide and tall matrices suffice; fewer leaves compile faster
        for k in ("wk", "wv", "wo"):
            del t["blocks"][k]
    tx = build_optimizer(params, matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5)
    @jax.jit
    def step(params, state, grads, mult):
        u, state = scaled_update(tx, grads, state, params, mult, muon_momentum=0.95, muon_weight_decay=0.1)
        return jax.tree.map(jnp.add, params, u), state
    def two_steps(params, grads):
        state = init_state(tx, params)
        for mult in (1.0, 0.5):
            params, state = step(params, state, grads, mult)
        return params, state
    want, _ = two_steps(params, grads)
    mesh = Mesh(np.array(jax.devices()), ("fsdp",))
    # FSDP-style: stacked matrices split over their last axis, wte/lm_head over one axis, scalars replicated
    spec = lambda x: P(*[None] * (x.ndim - 1), "fsdp") if x.ndim == 3 else P("fsdp") if x.ndim == 2 else P()
    put = lambda t: jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(x))), t)
    got, state = two_steps(put(params), put(grads))
    # params and Muon momentum stay sharded (FSDP state); the NS all-gathers stay inside the step
    assert got["blocks"]["w_fc"].sharding.spec == P(None, None, "fsdp"), got["blocks"]["w_fc"].sharding
    mu = state.inner_states["matrix"].inner_state.mu["blocks"]["w_fc"]
    assert mu.sharding.spec == P(None, None, "fsdp"), mu.sharding
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
    assert step._cache_size() == 2, step._cache_size()  # one unsharded + one sharded compile, no more
    print("SHARDED_OK")
""")


def test_update_under_sharded_cpu_mesh_matches_unsharded():
    root = Path(__file__).resolve().parents[1]
    # 4 fake CPU devices; -O0 LLVM codegen halves compile time and leaves the SPMD partitioning alone
    flags = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SHARDED], cwd=root, env=env, capture_output=True, text=True,
                         timeout=120)
    assert "SHARDED_OK" in out.stdout, out.stderr[-3000:]
