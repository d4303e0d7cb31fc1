"""A nanochat-style GPT as pure functions of a pytree of fp32 arrays.

    ids -> wte -> RMSNorm = x0
    for each layer (one lax.scan over stacked weights, unrolled on CPU):
        x = resid_lambdas[i] * x + x0_lambdas[i] * x0    # x0 term only with x0_mix
        x = x + attn(norm(x))      # RoPE (base 100k), QK-norm, q.k gain qk_gain^2, causal, GQA-capable
        x = x + mlp(norm(x))       # ReLU^2, 4x wide
    logits = 15 * tanh(norm(x) @ lm_head / 15)

Norms have no parameters, matrices have no biases, embedding and unembedding are untied.
Master weights stay fp32; each layer casts its weights to `compute_dtype` (bf16 on GPU/TPU)
inside the scan, and logits come out fp32. Not here (nanochat has them): value embeddings,
smear, backout, sliding windows.

transformers' NanoChat (what `trainer export` writes) has no x0 mixing and no q/k gain; the
per-layer resid_lambdas fold exactly into the output projections (see trainer/export.py).
`x0_mix=False, qk_gain=1.0` trains a model without those two parts, which exports as it is.
"""

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    seq_len: int
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    head_dim: int
    rope_base: float = 100_000.0
    softcap: float = 15.0
    compute_dtype: str = "float32"  # "bfloat16" on GPU/TPU; params stay fp32 and are cast inside
    attention: str = "xla"          # "cudnn" on NVIDIA GPUs (bf16 only)
    x0_mix: bool = True             # each layer adds x0_lambdas[i] * x0 (nanochat's); False: no x0_lambdas
    qk_gain: float = 1.2            # q and k times this after QK-norm (nanochat's "sharper attention"); 1: none

    def __post_init__(self):
        if not 0 < self.softcap <= 80:  # the training loss exps capped logits unshifted (model._head_loss)
            raise ValueError(f"softcap must be in (0, 80] (exp of 80 is finite in fp32), got {self.softcap}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")
        if self.attention not in ("xla", "cudnn"):
            raise ValueError(f"attention must be 'xla' or 'cudnn', got {self.attention!r}")
        if self.attention == "cudnn" and self.compute_dtype not in ("bfloat16", "float16"):
            raise ValueError("cudnn attention needs compute_dtype bfloat16 or float16")


def init_params(cfg: GPTConfig, key) -> dict:
    """nanochat's init: zero output projections (each block starts as the identity), tiny lm_head
    (loss starts at ln V), uniform q/k/v with std 1/sqrt(D), c_fc at 0.4x, per-layer scalar ramps."""
    L, D, V = cfg.n_layer, cfg.d_model, cfg.vocab_size
    q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    k = jax.random.split(key, 6)
    s = math.sqrt(3.0 / D)  # uniform(-s, s) has std 1/sqrt(D)

    def uniform(key, shape, bound):
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

    params = {
        "wte": 0.8 * jax.random.normal(k[0], (V, D), jnp.float32),
        "lm_head": 0.001 * jax.random.normal(k[1], (D, V), jnp.float32),
        "resid_lambdas": jnp.linspace(1.15, 1.05, L, dtype=jnp.float32),
        "blocks": {
            "wq": uniform(k[2], (L, D, q_dim), s),
            "wk": uniform(k[3], (L, D, kv_dim), s),
            "wv": uniform(k[4], (L, D, kv_dim), s),
            "wo": jnp.zeros((L, q_dim, D), jnp.float32),
            "w_fc": uniform(k[5], (L, D, 4 * D), 0.4 * s),
            "w_proj": jnp.zeros((L, 4 * D, D), jnp.float32),
        },
    }
    if cfg.x0_mix:
        params["x0_lambdas"] = jnp.linspace(0.20, 0.05, L, dtype=jnp.float32)
    return params


def _cpu_bf16(a) -> bool:
    """bf16 (or fp16) operands on XLA's CPU backend. There its AMX/AVX512-BF16 kernels take a dot only
    with an fp32 result, and with a transposed operand only as a batch-of-one dot_general: those forms
    run 3-6x the others (1,200-1,400 against 130-250 GFLOP/s at the step's shapes, bench/RESULTS.md
    "Training step", 2026-12-03). Same products, fp32 accumulation either way."""
    return jax.default_backend() == "cpu" and a.dtype != jnp.float32


def dot(a, b, out_dtype=None):
    """a (..., k) @ b (k, n) in out_dtype (default: the operands')."""
    if _cpu_bf16(a):
        return jnp.dot(a, b, preferred_element_type=jnp.float32).astype(out_dtype or a.dtype)
    return jnp.dot(a, b, preferred_element_type=out_dtype)


def dot_t(a, b):
    """a (..., k) @ b (n, k).T in the operands' dtype."""
    if _cpu_bf16(a):
        y = jnp.einsum("xnk,xok->xno", a.reshape(1, -1, a.shape[-1]), b[None], preferred_element_type=jnp.float32)
        return y.reshape(*a.shape[:-1], b.shape[0]).astype(a.dtype)
    return jnp.dot(a, b.T)


def weight_grad(x, dy):
    """x^T dy for x (N, in), dy (N, out) -> fp32 (in, out): the weight gradient of x @ w, as XLA's CPU
    backend runs it fast.

    Its dot is slow at contracting both operands over their token axis, and fast once one operand's
    transpose sits in memory: the barrier keeps XLA from folding the transpose back into the dot. The
    narrower operand is the one transposed (dy^T x, then the small (out, in) result transposed): for
    the MLP's w_proj that moves a quarter of the bytes (measured in bench/RESULTS.md). bf16 on CPU: x^T
    as a batch of one (`_cpu_bf16`)."""
    if jax.default_backend() != "cpu":  # GPUs and TPUs take transposed operands for free
        return jnp.dot(x.T, dy, preferred_element_type=jnp.float32)
    bar = jax.lax.optimization_barrier
    if _cpu_bf16(x):
        return jnp.einsum("xkn,xno->xko", bar(x.T[None]), dy[None], preferred_element_type=jnp.float32)[0]
    if x.shape[1] <= dy.shape[1]:
        return jnp.dot(bar(x.T), dy, preferred_element_type=jnp.float32)
    return bar(jnp.dot(bar(dy.T), x, preferred_element_type=jnp.float32)).T


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def linear(x, w, out_dtype=None):
    """x (..., in) @ w (in, out), whose weight gradient is `weight_grad`'s. Same products, same numerics."""
    return dot(x, w, out_dtype)


def _linear_fwd(x, w, out_dtype):
    return linear(x, w, out_dtype), (x, w)


def _linear_bwd(out_dtype, saved, dy):
    x, w = saved
    dy = dy.astype(x.dtype)
    dw = weight_grad(x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]))
    return dot_t(dy, w).astype(x.dtype), dw.astype(w.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


def rms_norm(x):
    # statistics in fp32 even when x is bf16; no learnable gain
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)).astype(x.dtype)


def rope(positions, head_dim: int, base: float):
    """cos, sin tables of shape (..., head_dim/2) for integer positions of any shape."""
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
    # x: (B, T, N, H); cos/sin (T, H/2) shared by the batch or (B, T, H/2) per row. Half-split
    # pairing (j with j + H/2), rotating by -angle as nanochat does, which keeps weights portable.
    x1, x2 = jnp.split(x, 2, axis=-1)
    cos, sin = cos[..., None, :].astype(x.dtype), sin[..., None, :].astype(x.dtype)
    return jnp.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)


CAUSAL_BLOCKS = 4  # query blocks of causal attention: block i never scores the keys after its last query
NEVER = float(jnp.finfo(jnp.float32).min)  # a masked score; not -inf: a padding row that sees nothing stays finite


def _batched_tn(a, b):
    """a^T b over the last two axes of a (..., t, s), b (..., t, h) -> fp32 (..., s, h). XLA's CPU dots
    are slow at contracting the first of the two axes, so there a^T is laid out first (see weight_grad)."""
    if jax.default_backend() != "cpu":
        return jnp.einsum("...ts,...th->...sh", a, b, preferred_element_type=jnp.float32)
    lead, (t, s), h = a.shape[:-2], a.shape[-2:], b.shape[-1]
    at = jax.lax.optimization_barrier(a.reshape(-1, t, s).swapaxes(1, 2))
    return jnp.einsum("nst,nth->nsh", at, b.reshape(-1, t, h), preferred_element_type=jnp.float32).reshape(*lead, s, h)


def _positions_mask(mask, qg, k):
    """mask (broadcasting to (B, 1, 1, T, S)) as (B, Hkv, G * T, S), the layout the products take."""
    B, Hkv, G, T, _ = qg.shape
    return jnp.broadcast_to(mask, (B, Hkv, G, T, k.shape[2])).reshape(B, Hkv, G * T, k.shape[2])


def _attend(qg, k, v, mask, scale):
    """-> y (B, Hkv, G * T, H) and the probabilities."""
    B, Hkv, G, T, H = qg.shape
    scores = jnp.einsum("bkth,bksh->bkts", qg.reshape(B, Hkv, G * T, H), k.astype(qg.dtype),
                        preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(jnp.where(_positions_mask(mask, qg, k), scores * scale, NEVER), axis=-1).astype(qg.dtype)
    y = jnp.einsum("bkts,bksh->bkth", probs, v.astype(qg.dtype),
                   preferred_element_type=jnp.float32).astype(qg.dtype)  # fp32 out: see _cpu_bf16
    return y, probs


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def attend(qg, k, v, mask, scale: float):
    """qg (B, Hkv, G, T, H) queries attend to k, v (B, Hkv, S, H) where mask (broadcasts to (B, 1, 1, T, S))
    -> (B, Hkv, G, T, H). The G query heads of a kv head fold into the position axis, so both products are
    plain batched matmuls over (B, Hkv): on CPU 1.3x faster fwd + bwd than dot_product_attention's (B, T, N, H)
    einsums and 1.5x faster than (B, Hkv, G, ...) ones (bench/RESULTS.md, "Training step"). Its gradient is
    flash attention's (`_attend_bwd`)."""
    return _attend(qg, k, v, mask, scale)[0].reshape(qg.shape)


def _attend_fwd(qg, k, v, mask, scale):
    y, probs = _attend(qg, k, v, mask, scale)
    return y.reshape(qg.shape), (qg, k, v, mask, probs, y)


def _attend_bwd(scale, saved, dy):
    """Flash attention's backward, on the saved probabilities P: dV = P^T dY, dP = dY V^T, and the
    softmax's dS = P (dP - rowsum(dY * Y)), the row sums over the head axis where autodiff's sum(dP * P)
    runs over the keys; the products in the compute dtype with fp32 accumulation, as the forward's."""
    qg, k, v, mask, probs, y = saved
    dy = dy.reshape(y.shape).astype(qg.dtype)
    dv = _batched_tn(probs, dy)
    dp = jnp.einsum("bkth,bksh->bkts", dy, v.astype(qg.dtype), preferred_element_type=jnp.float32)
    rows = jnp.sum(dy.astype(jnp.float32) * y.astype(jnp.float32), axis=-1, keepdims=True)
    ds = jnp.where(_positions_mask(mask, qg, k), probs.astype(jnp.float32) * (dp - rows) * scale, 0.0).astype(qg.dtype)
    dq = jnp.einsum("bkts,bksh->bkth", ds, k.astype(qg.dtype), preferred_element_type=jnp.float32)
    dk = _batched_tn(ds, qg.reshape(y.shape))
    return (dq.reshape(qg.shape).astype(qg.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
            np.zeros(mask.shape, jax.dtypes.float0))


attend.defvjp(_attend_fwd, _attend_bwd)


def causal_attention(qg, k, v, scale: float):
    """Causal self-attention of a chunk whose rows all start at position 0: qg (B, Hkv, G, T, H), k, v
    (B, Hkv, T, H). In CAUSAL_BLOCKS query blocks, each over the keys up to its end: 37% fewer scores than
    the full T x T square, whose upper triangle the mask throws away."""
    T = qg.shape[3]
    c = -(-T // CAUSAL_BLOCKS)
    causal = jnp.tril(jnp.ones((T, T), bool))
    return jnp.concatenate([attend(qg[:, :, :, i:i + c], k[:, :, :i + c], v[:, :, :i + c], causal[i:i + c, :i + c],
                                   scale) for i in range(0, T, c)], axis=3)


def attention(x, w, cos, sin, cfg: GPTConfig, cache=None, fresh: bool = False):
    """Causal self-attention over x -> (y, None); with `cache` = (this layer's k, v (B, Hkv, S, Dh),
    positions (B, T), valid (B, T)) the new keys and values are written into the cache first and the
    queries attend to it -> (y, (k cache, v cache)). `fresh` (static): every row starts at position 0
    (a prompt's prefill), so plain causal attention over the chunk is exact (padding sits after each
    row's real tokens, where causality hides it): the same kernel as training, flash attention on GPUs."""
    B, T, _ = x.shape
    q = linear(x, w["wq"]).reshape(B, T, cfg.n_head, cfg.head_dim)
    k = linear(x, w["wk"]).reshape(B, T, cfg.n_kv_head, cfg.head_dim)
    v = linear(x, w["wv"]).reshape(B, T, cfg.n_kv_head, cfg.head_dim)
    # RoPE before QK-norm, as nanochat; fewer kv heads than q heads is GQA
    q, k = rms_norm(apply_rope(q, cos, sin)), rms_norm(apply_rope(k, cos, sin))
    scale = cfg.qk_gain**2 / math.sqrt(cfg.head_dim)  # the gain on q and k folded into the scale
    if cache is not None:  # the new keys and values into their slots (in place: the cache is donated)
        cache_k, cache_v, positions, valid = cache
        S = cache_k.shape[2]
        slot = jnp.where(valid, positions, S)[:, None, :]  # padding goes out of range and is dropped
        b, h = jnp.arange(B)[:, None, None], jnp.arange(cfg.n_kv_head)[None, :, None]
        cache_k, cache_v = (c.at[b, h, slot].set(n.swapaxes(1, 2).astype(c.dtype), mode="drop")
                            for c, n in ((cache_k, k), (cache_v, v)))
        new_cache = (cache_k, cache_v)
    if cfg.attention == "cudnn" and (cache is None or fresh):  # flash attention; never picked automatically
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=scale, implementation="cudnn")
        return linear(y.reshape(B, T, -1), w["wo"]), None if cache is None else new_cache
    qg = q.reshape(B, T, cfg.n_kv_head, cfg.n_head // cfg.n_kv_head, cfg.head_dim).transpose(0, 2, 3, 1, 4)
    if cache is None or fresh:
        y = causal_attention(qg, k.swapaxes(1, 2), v.swapaxes(1, 2), scale)
    else:  # decoding: the queries attend to this layer's cache, which now holds every row's tokens so far
        seen = jnp.arange(S)[None, None, :] <= positions[:, :, None]  # (B, T, S): causal, by absolute position
        y = attend(qg, cache_k, cache_v, seen[:, None, None], scale)
    y = linear(y.transpose(0, 3, 1, 2, 4).reshape(B, T, -1), w["wo"])
    return y, None if cache is None else new_cache


def mlp(x, w):
    return linear(jnp.square(jax.nn.relu(linear(x, w["w_fc"]))), w["w_proj"])


def block(x, w, cos, sin, cfg: GPTConfig, cache=None, fresh: bool = False):
    """One pre-norm transformer layer; `w` holds this layer's (unstacked) weights."""
    y, cache = attention(rms_norm(x), w, cos, sin, cfg, cache, fresh)
    x = x + y
    return x + mlp(rms_norm(x), w), cache


def hidden(params, ids, cfg: GPTConfig, cache=None, fresh: bool = False):
    """(B, T) token ids -> (B, T, D) final normed hidden states, and the updated cache.

    Without `cache`, ids are whole sequences from position 0. With `cache` = {"k", "v": L-tuples of
    (B, Hkv, S, Dh) per-layer arrays, "pos": (B,) tokens already cached per row, "n": (B,) how many
    of this call's T ids are real per row}, ids continue each row at its own position (prefill,
    decode, forced tokens); `fresh`: every row starts at 0 (see attention). The cache path takes
    params["blocks"] as a tuple of per-layer weight dicts (trainer.engine.decode_layout).
    """
    dtype = jnp.dtype(cfg.compute_dtype)
    if cache is None:
        positions, valid = jnp.arange(ids.shape[1]), None
    else:
        positions = cache["pos"][:, None] + jnp.arange(ids.shape[1])[None, :]
        valid = jnp.arange(ids.shape[1])[None, :] < cache["n"][:, None]
    cos, sin = rope(positions, cfg.head_dim, cfg.rope_base)
    x0 = rms_norm(params["wte"][ids].astype(dtype))  # gather first, then cast: never copies the table

    def layer(x, w, resid_lambda, x0_lambda, kv):
        w = jax.tree.map(lambda a: a.astype(dtype), w)  # one layer's weights in bf16 at a time
        x = resid_lambda.astype(dtype) * x
        if x0_lambda is not None:  # x0_mix
            x = x + x0_lambda.astype(dtype) * x0
        return block(x, w, cos, sin, cfg, None if kv is None else (*kv, positions, valid), fresh)

    x0_lambdas = params.get("x0_lambdas")
    if cache is None:  # a scan: on accelerators compile time stays flat in depth. On CPU unrolled: the
        # rolled loop's stacked residuals cost zero-fills and copies, 1.1x the blocks' fwd + bwd (RESULTS)
        x, _ = jax.lax.scan(lambda x, xs: layer(x, *xs, None), x0,
                            (params["blocks"], params["resid_lambdas"], x0_lambdas),
                            unroll=jax.default_backend() == "cpu")
        return rms_norm(x), None
    # decoding: a Python loop over per-layer caches and per-layer weights. A scan (or a[i] of a
    # stacked array) would slice each layer's cache and weights out, which XLA copies: the whole
    # cache and every weight copied per step, more bytes than the step reads
    x, ks, vs = x0, [], []
    for i, w in enumerate(params["blocks"]):
        x, (k, v) = layer(x, w, params["resid_lambdas"][i], None if x0_lambdas is None else x0_lambdas[i],
                          (cache["k"][i], cache["v"][i]))
        ks.append(k)
        vs.append(v)
    return rms_norm(x), (tuple(ks), tuple(vs))


def logits_of(params, h, cfg: GPTConfig, softcap: bool = True):
    """Hidden states (..., D) -> float32 soft-capped logits (..., V); `softcap=False`: before the cap."""
    logits = linear(h, params["lm_head"].astype(h.dtype), jnp.float32)
    return cfg.softcap * jnp.tanh(logits / cfg.softcap) if softcap else logits


def forward(params, ids, cfg: GPTConfig):
    """(B, T) int32 token ids -> (B, T, V) float32 soft-capped logits."""
    return logits_of(params, hidden(params, ids, cfg)[0], cfg)


def token_losses(params, inputs, targets, cfg: GPTConfig):
    """(B, T) float32 cross-entropy in nats; positions whose target is -1 (or any negative) are 0."""
    logits = forward(params, inputs, cfg)
    valid = targets >= 0
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(valid, jax.nn.logsumexp(logits, axis=-1) - picked, 0.0)


def loss_fn(params, inputs, targets, cfg: GPTConfig):
    """Mean cross-entropy over the positions with a target (targets != -1), the value token_losses
    gives. The lm_head and the loss are one op (`head_loss`): training never holds the (B, T, V) logits."""
    return head_loss(hidden(params, inputs, cfg)[0], params["lm_head"], targets, cfg.softcap)


CE_ROWS = 256  # rows of logits head_loss holds at a time: 256 x 32k fp32 is 32 MB


def _head_loss(h, w, targets, softcap: float, grads: bool):
    """Mean soft-capped cross-entropy of h (B, T, D) @ w (D, V) against targets (B, T), a few positions
    of every row at a time (about CE_ROWS rows of logits); with `grads` also its gradients (dh, dw),
    made in the same pass: the gradient of the loss with respect to the logits is softmax - onehot,
    known as soon as the chunk's logits are. The chunks split the positions, never the batch axis,
    which data parallelism shards: a scan over a sharded axis would have every device run every chunk."""
    B, T, D = h.shape
    c = max(1, CE_ROWS // B)
    pad = -T % c
    h, targets = jnp.pad(h, ((0, 0), (0, pad), (0, 0))), jnp.pad(targets, ((0, 0), (0, pad)), constant_values=-1)
    n = jnp.maximum(jnp.sum(targets >= 0), 1)
    wc = w.astype(h.dtype)

    def rows(dw, chunk):
        hc, tc = chunk[0].reshape(B * c, D), chunk[1].reshape(B * c)
        capped = jnp.tanh(jnp.dot(hc, wc, preferred_element_type=jnp.float32) / softcap)
        logits = softcap * capped
        e = jnp.exp(logits)  # |logits| <= softcap <= 80: no overflow in fp32, so no max to subtract first
        total = jnp.sum(e, axis=-1, keepdims=True)
        valid, picked = tc >= 0, jnp.where(tc >= 0, tc, 0)
        loss = jnp.sum(jnp.where(valid, jnp.log(total[:, 0])
                                 - jnp.take_along_axis(logits, picked[:, None], axis=-1)[:, 0], 0.0))
        if not grads:
            return dw, (loss, None)
        dlogits = (e / total).at[jnp.arange(B * c), picked].add(-1.0)
        dz = (dlogits * (valid[:, None] * (1.0 - capped * capped))).astype(hc.dtype)  # through the soft-cap
        dw = dw + weight_grad(hc, dz)
        return dw, (loss, dot_t(dz, wc).reshape(B, c, D))

    by_position = lambda a: a.reshape(B, -1, c, *a.shape[2:]).swapaxes(0, 1)  # (T / c, B, c, ...)
    dw, (losses, dh) = jax.lax.scan(rows, jnp.zeros(w.shape, jnp.float32), (by_position(h), by_position(targets)))
    if not grads:
        return jnp.sum(losses) / n
    dh = dh.swapaxes(0, 1).reshape(B, T + pad, D)[:, :T]
    return jnp.sum(losses) / n, ((dh / n).astype(h.dtype), (dw / n).astype(w.dtype))


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def head_loss(h, w, targets, softcap: float):
    """The training loss of loss_fn from the final hidden states: _head_loss without its gradients, and
    under jax.grad their pass computes them all at once."""
    return _head_loss(h, w, targets, softcap, grads=False)


def _head_loss_fwd(h, w, targets, softcap):
    loss, saved = _head_loss(h, w, targets, softcap, grads=True)
    return loss, (saved, targets)


def _head_loss_bwd(softcap, res, g):
    (dh, dw), targets = res
    return (g * dh).astype(dh.dtype), (g * dw).astype(dw.dtype), np.zeros(targets.shape, jax.dtypes.float0)


head_loss.defvjp(_head_loss_fwd, _head_loss_bwd)


def _block_params(cfg: GPTConfig) -> int:
    D, q_dim, kv_dim = cfg.d_model, cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    attn = D * q_dim + 2 * D * kv_dim + q_dim * D
    return cfg.n_layer * (attn + 8 * D * D)  # MLP: D x 4D in, 4D x D out


def param_count(cfg: GPTConfig) -> int:
    return 2 * cfg.vocab_size * cfg.d_model + (1 + cfg.x0_mix) * cfg.n_layer + _block_params(cfg)


def matmul_params(cfg: GPTConfig) -> int:
    """Block matrices + lm_head: nanochat's "scaling params" (embedding and scalars excluded)."""
    return _block_params(cfg) + cfg.d_model * cfg.vocab_size


def flops_per_token(cfg: GPTConfig) -> float:
    # nanochat's formula (PaLM appendix B): 6 FLOPs per matmul weight per token (fwd + bwd), plus
    # attention scores and values 12 * L * H * head_dim * T over the full (not causal-halved) context.
    attn = 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.seq_len
    return float(6 * matmul_params(cfg) + attn)
