"""Optimizers: Muon (Polar Express) for the stacked block matrices, AdamW for everything else.

Weights are laid out (in, out) (`x @ W`); block matrices carry a leading layer axis, (L, in, out),
and Muon orthogonalizes each layer's matrix on its own (leading axes are batch axes of the matmuls).

The transform from `build_optimizer` produces updates at the BASE learning rates. The train step calls
`scaled_update(tx, grads, opt_state, params, lr_mult, muon_momentum=, muon_weight_decay=)`, which
multiplies every update by `lr_mult`. Decoupled weight decay is part of each Muon update
(-lr * wd * p), so it scales with lr_mult as well, exactly like nanochat's `p *= 1 - lr * lrm * wd`.
Muon's momentum and weight decay have no build-time values: the schedules set them every step.
Pass the three as arrays or Python floats to a jitted step: they are traced values, so a schedule
change never recompiles.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

# Polar Express (Amsel et al. 2025, arXiv:2505.16932), num_iters=5, safety factor 2e-2, cushion 2:
# the per-iteration (a, b, c) table nanochat uses. Iteration k maps X -> a X + (b A + c A^2) X, A = X X^T.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
ADAM_BETAS, ADAM_EPS = (0.8, 0.95), 1e-10  # nanochat's AdamW groups (which take no weight decay)


def orthogonalize(g):
    """Approximate polar factor U V^T of every matrix in the last two axes of g (SVD g = U S V^T),
    in fp32 (nanochat runs it in bf16 on GPUs; on a CPU with AMX bf16 took 64 against 84 ms for a d4's
    matrices, 3.8% off the fp32 result: not worth it, bench/RESULTS.md "Training step", 2026-12-03)."""
    x = g.astype(jnp.float32)
    # spectral norm <= Frobenius norm, so this puts every singular value in (0, 1) as PE expects
    x = x / (jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True)) * 1.01 + 1e-6)
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the smaller Gram matrix; the polar factor commutes with transposition
        x = jnp.swapaxes(x, -1, -2)
    for a, b, c in POLAR_EXPRESS_COEFFS:
        A = x @ jnp.swapaxes(x, -1, -2)
        x = a * x + (b * A + c * (A @ A)) @ x
    if tall:
        x = jnp.swapaxes(x, -1, -2)
    return x.astype(g.dtype)


class MuonState(NamedTuple):
    mu: optax.Updates  # momentum buffer, same shapes (and, under FSDP, same sharding) as the params


def muon(lr):
    """Muon: Nesterov momentum -> Polar Express -> lr * sqrt(max(1, fan_out/fan_in)), decoupled wd.

    update() takes `muon_momentum=` and `muon_weight_decay=` (arrays: scheduled without recompiling).
    """

    def init(params):
        return MuonState(mu=jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params))

    def update(grads, state, params=None, *, muon_momentum, muon_weight_decay, **_):
        assert params is not None, "muon needs params (weight decay, matrix shapes)"
        beta, wd = muon_momentum, muon_weight_decay
        mu = jax.tree.map(lambda m, g: m + (1 - beta) * (g - m), state.mu, grads)

        def one(g, m, p):
            nesterov = g + beta * (m - g)  # lerp(g, mu, beta), nanochat's Nesterov form
            o = orthogonalize(nesterov)
            fan_in, fan_out = p.shape[-2:]
            # torch's (out, in) rule sqrt(max(1, rows/cols)) in our (in, out) layout; wd shares the boost
            step = lr * math.sqrt(max(1.0, fan_out / fan_in))
            return (-step * (o + wd * p)).astype(p.dtype)

        return jax.tree.map(one, grads, mu, params), MuonState(mu=mu)

    return optax.GradientTransformationExtraArgs(init, update)


RESID_LR_SCALE = 0.01  # resid_lambdas learn at 0.01 x scalar_lr, as in nanochat


def _label(path, leaf):
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    top = keys[0]
    if top == "blocks":  # stacked (L, in, out) matrices -> Muon; stacked vectors (L, D) -> Adam
        return "matrix" if leaf.ndim >= 3 else "scalar"
    # resid_lambdas scale the whole residual stream: nanochat moves them 100x slower
    named = {"wte": "embedding", "lm_head": "unembedding", "resid_lambdas": "resid"}
    if top in named:
        return named[top]
    if leaf.ndim <= 1:
        return "scalar"  # x0_lambdas and any future per-layer scalars
    raise ValueError(f"no optimizer group for param {'/'.join(map(str, keys))} {leaf.shape}")


def param_labels(params):
    """Pytree of "matrix" | "embedding" | "unembedding" | "resid" | "scalar", decided by key path (not by ndim,
    which would send the 2-D wte/lm_head to Muon)."""
    return jax.tree_util.tree_map_with_path(_label, params)


def build_optimizer(params, *, matrix_lr, embedding_lr, unembedding_lr, scalar_lr):
    """Muon on block matrices, AdamW on the rest. LRs are final per-group base values; see scaled_update."""

    def adam(lr):
        return optax.adamw(lr, b1=ADAM_BETAS[0], b2=ADAM_BETAS[1], eps=ADAM_EPS, weight_decay=0.0)

    return optax.partition({
        "matrix": muon(matrix_lr),
        "embedding": adam(embedding_lr),
        "unembedding": adam(unembedding_lr),
        "resid": adam(scalar_lr * RESID_LR_SCALE),
        "scalar": adam(scalar_lr),
    }, param_labels(params))


def init_state(tx, params):
    """tx.init for (possibly) mesh-sharded params, laid out so the jitted step never recompiles.

    Eager init keeps each param-shaped buffer (momentum, Adam moments) sharded like its param: FSDP
    shards optimizer state for free. Adam's step counts come out on one device, though, while the
    step returns them replicated over the mesh -> a second compile at step 2. Replicate them now.
    (Don't jit tx.init: its zeros don't depend on the inputs and all land on one device.)"""
    state = tx.init(params)
    meshes = [x.sharding.mesh for x in jax.tree.leaves(params) if isinstance(x.sharding, NamedSharding)]
    if not meshes:
        return state
    replicated = NamedSharding(meshes[0], PartitionSpec())
    return jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated),
                        state)


def scaled_update(tx, grads, opt_state, params, lr_mult, *, muon_momentum, muon_weight_decay):
    """One optimizer step with every update (weight decay included) scaled by lr_mult.

    Exact, not an approximation: the moment buffers never see the LR, so scaling afterwards equals
    running every group at lr * lr_mult."""
    updates, opt_state = tx.update(grads, opt_state, params, muon_momentum=muon_momentum,
                                   muon_weight_decay=muon_weight_decay)
    return jax.tree.map(lambda u: (u * lr_mult).astype(u.dtype), updates), opt_state


def lr_multiplier(step, num_steps, warmup_steps, warmdown_ratio, final_lr_frac):
    """nanochat base_train: linear warmup to 1, flat, linear warmdown over the last warmdown_ratio.

    The smaller of the two ramps, so a run too short for both (the demo's) stays continuous."""
    warmup = (step + 1) / warmup_steps if step < warmup_steps else 1.0
    warmdown = round(warmdown_ratio * num_steps)
    if step <= num_steps - warmdown:
        return warmup
    progress = (num_steps - step) / warmdown
    return min(warmup, progress + (1 - progress) * final_lr_frac)


def muon_momentum_at(step, num_steps=0, warmdown_ratio=0.0, start=0.85, peak=0.97, end=0.90, warmup=400):
    """nanochat base_train: start -> peak over `warmup` steps, held, peak -> end during the warmdown."""
    warmdown = round(warmdown_ratio * num_steps)
    if step < warmup:
        return start + (peak - start) * step / warmup
    if warmdown and step >= num_steps - warmdown:
        return peak + (end - peak) * (step - (num_steps - warmdown)) / warmdown
    return peak


def muon_weight_decay_at(step, num_steps, weight_decay):
    """nanochat base_train: cosine from weight_decay to 0 over the run."""
    return weight_decay * 0.5 * (1 + math.cos(math.pi * step / num_steps))
