"""KV-cache inference: batched, streaming, tool-aware generation.

    engine = Engine(params, cfg, tok)
    for event in engine.generate(prompts, max_tokens=256, temperature=0.7, on_tool_calls=run):
        Token(row, id, forced)  as it comes  |  Done(row, reason, message)  when a row ends

One jitted step feeds every row its next tokens (a prompt, one sampled token, or tool results the
engine forces), writes their keys and values into the cache, and samples each row's next token
on the device. Shapes come from a few buckets (batch, cache length, chunk length), so decoding
token after token never recompiles. The cache grows with the rows (64, 96, 128, 192, ... slots) up to
the model's context: attention reads every slot of it each step, and at batch 32 reading slots no
row had reached yet was a fifth of the step (bench/RESULTS.md "Inference engine"). Rows advance
independently: each has its own position, and a row whose turn ends with tool calls gets the
results as forced (untrained) tokens and goes on.

The engine holds its own layout of the weights (`decode_layout`, one copy, made once): each layer's
block weights as their own arrays, not slices of the stacked (L, ...) ones (a slice is a copy in XLA:
every layer's weights copied per token), and on CPU the lm_head transposed, (V, D) as nanochat/torch
store it: XLA's CPU dot runs the decode step's (B, D) x (D, V) product faster with the weight (V, D)
contracted on its last axis (bench/RESULTS.md "Inference engine"). Greedy decoding goes further on CPU:
the logits come out (V, B) and are picked in two levels (`greedy_ids`), half the head's time at batch 32.

Reasons a row ends: "stop" (a stop token), "length" (max_tokens sampled), "context_full" (the
next token would not fit the model's context; `message` says so), "cancelled" (the caller asked).
Nothing raises mid-stream.
"""

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from trainer import model, template
from trainer.model import GPTConfig

PICK_BLOCK = 256    # greedy_ids: vocab rows per block of its two-level argmax
MIN_CACHE = 64      # cache lengths: powers of two and 1.5 of them from here up to the model's seq_len
CHUNK_BUCKETS = (1, 16, 64, 256, 1024, 4096, 16384)


@dataclass
class Token:
    row: int
    id: int
    forced: bool = False  # fed by the engine (tool results), not sampled


@dataclass
class Done:
    row: int
    reason: str           # "stop" | "length" | "context_full" | "cancelled"
    message: str = ""


@dataclass
class _Row:
    feed: list[int]                                  # tokens to feed at the next step
    pos: int = 0                                     # tokens already in the cache
    sampled: int = 0
    turn: list[int] = field(default_factory=list)   # this assistant turn so far (for tool calls)
    done: bool = False


def sample_next(logits, keys, temperature, top_k, top_p, mode: str):
    """(B, V) fp32 logits -> (B,) ids. Per row: temperature 0 is greedy; top_k 0 and top_p 1 are
    off. `mode` (static) skips what no row needs: "greedy" draws no random numbers (on CPU the
    draw costs more than the argmax), only "filtered" sorts for top-k/top-p."""
    greedy = jnp.argmax(logits, axis=-1)
    if mode == "greedy":
        return greedy.astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
    if mode == "filtered":
        desc = -jnp.sort(-scaled, axis=-1)
        V = scaled.shape[-1]
        kth = jnp.take_along_axis(desc, (jnp.clip(top_k, 1, V) - 1)[:, None], axis=-1)
        keep = jnp.where(top_k[:, None] > 0, scaled >= kth, True)
        probs = jax.nn.softmax(desc, axis=-1)
        # nucleus: the fewest tokens whose mass reaches top_p (the top token always stays)
        n_keep = jnp.maximum(jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p[:, None], axis=-1), 1)
        keep &= scaled >= jnp.take_along_axis(desc, (n_keep - 1)[:, None], axis=-1)
        scaled = jnp.where(keep, scaled, -jnp.inf)
    sampled = jax.vmap(jax.random.categorical)(keys, scaled)  # each row its own key
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


def decode_layout(params):
    """The engine's copy of the params. The blocks' weights one dict per layer (new buffers, made
    once) in place of the stacked (L, ...) arrays: XLA copies a slice of a stacked array out before
    a dot, so slicing layer i inside the step copied every layer's weights on every token. On CPU
    also the lm_head (D, V) replaced by its (V, D) transpose (GPUs and TPUs take either at full
    speed). The rest is shared, not copied."""
    if params is None:
        return None
    stacked = params["blocks"]
    layout = {**params, "blocks": tuple({name: jnp.asarray(a[i]) for name, a in stacked.items()}
                                        for i in range(len(params["resid_lambdas"])))}
    if jax.default_backend() == "cpu":
        layout["lm_head"] = jnp.asarray(params["lm_head"]).T  # a new (V, D) buffer
    return layout


def decode_logits(params, h, cfg: GPTConfig, softcap: bool = True):
    """model.logits_of for the engine's layout: (B, D) hidden states -> (B, V) fp32 soft-capped logits
    (not capped with `softcap=False`). On CPU `.T` of the (V, D) weight costs nothing: XLA folds it
    into the dot's contracting axes."""
    w = params["lm_head"].T if jax.default_backend() == "cpu" else params["lm_head"]
    return model.logits_of({"lm_head": w}, h, cfg, softcap)


def greedy_ids(params, h, cfg: GPTConfig):
    """The argmax of the raw logits of (B, D) hidden states -> (B,) int32, first index on ties (as
    jnp.argmax; tanh is monotonic, so the soft-cap cannot move it and is skipped). On CPU the logits
    are made (V, B), W @ h.T on the (V, D) weight, and picked in two levels, the best of each block of
    PICK_BLOCK rows, then the best block: batch 32 at vocab 32k, 2.5 ms against 5.3 for (B, V) logits
    and argmax (XLA's (value, index) reduce over a row is scalar code; bench/RESULTS.md, "Inference")."""
    if jax.default_backend() != "cpu":
        return jnp.argmax(decode_logits(params, h, cfg, softcap=False), axis=-1).astype(jnp.int32)
    w = params["lm_head"]
    logits = jnp.dot(w.astype(h.dtype), h.T, preferred_element_type=jnp.float32)  # (V, B)
    V, B = logits.shape
    if V % PICK_BLOCK:  # pad to whole blocks with rows that never win
        logits = jnp.pad(logits, ((0, -V % PICK_BLOCK), (0, 0)), constant_values=-jnp.inf)
    blocks = logits.reshape(-1, PICK_BLOCK, B)
    best = jnp.argmax(blocks.max(axis=1), axis=0)  # (B,): the first block holding the row's max
    within = jnp.argmax(blocks[best, :, jnp.arange(B)], axis=-1)  # (B, PICK_BLOCK) -> its first max
    return (best * PICK_BLOCK + within).astype(jnp.int32)


def _cache_len(tokens: int, seq_len: int) -> int:
    """The cache length that holds `tokens`, at most seq_len: from MIN_CACHE a power of two or 1.5 of one
    (64, 96, 128, 192, ...). Every decode step reads the whole cache, so the half steps cut the slots
    read past the rows' tokens from up to half the cache to up to a third, for one more compile of the
    step per doubling."""
    need = max(MIN_CACHE, tokens)
    length = 1 << (need - 1).bit_length()
    if length * 3 // 4 >= need:
        length = length * 3 // 4
    return min(length, seq_len)


def _grow(kv, length: int):
    """The cache with room for `length` positions per row (the new slots empty)."""
    return jax.tree.map(lambda a: jnp.pad(a, ((0, 0), (0, 0), (0, length - a.shape[2]), (0, 0))), kv)


def _step(params, kv, ids, pos, n, seeds, drawn, temperature, top_k, top_p, *, cfg: GPTConfig, mode: str,
          fresh: bool):
    """Feed ids (B, C) (the first n[b] real) at positions pos[b]...; sample each row's next id.
    Row b's k-th draw uses key(seeds[b]) folded with k (drawn[b]): a row's sample depends on its
    seed alone, not on the batch it shares (the server batches requests that arrive together)."""
    h, (k, v) = model.hidden(params, ids, cfg, {"k": kv[0], "v": kv[1], "pos": pos, "n": n}, fresh=fresh)
    last = h[jnp.arange(ids.shape[0]), jnp.maximum(n - 1, 0)]  # only the last real position's logits
    if mode == "greedy":
        return greedy_ids(params, last, cfg), (k, v)
    logits = decode_logits(params, last, cfg)
    keys = jax.vmap(lambda s, k: jax.random.fold_in(jax.random.key(s), k))(seeds, drawn)
    return sample_next(logits, keys, temperature, top_k, top_p, mode), (k, v)


class Engine:
    def __init__(self, params, cfg: GPTConfig, tok):
        self.params, self.cfg, self.tok = params, cfg, tok  # the setter below lays them out
        self.step = jax.jit(partial(_step, cfg=cfg), static_argnames=("mode", "fresh"), donate_argnums=(1,))
        sid = tok.special_id
        self.assistant_start, self.assistant_end = sid(template.ASSISTANT_START), sid(template.ASSISTANT_END)
        self.default_stop = (self.assistant_end, tok.bos_id)

    @property
    def params(self):
        return self._params

    @params.setter
    def params(self, params):
        self._params = None  # drop the old copy first: never two engine copies of the weights at once
        self._params = decode_layout(params)

    def generate(self, prompts: list[list[int]], max_tokens: int | list[int] = 256, *,
                 temperature: float | list[float] = 0.0, top_k: int | list[int] = 0,
                 top_p: float | list[float] = 1.0, seed: int | list[int] = 0, stop: tuple[int, ...] | None = None,
                 on_tool_calls: Callable[[int, dict], list[str] | None] | None = None,
                 cancelled: set[int] | None = None) -> Iterator:
        """Stream Token and Done events for a batch of prompts (token id lists, any lengths).

        max_tokens and the sampling settings are one value for every row or a list, one per row.
        on_tool_calls(row, message) gets the parsed assistant message when a turn ends in tool
        calls and returns one result text per call (fed back as forced tokens, then a new
        assistant turn starts), or None to end the row there. A row whose index is added to
        `cancelled` (by another thread, say) ends at the next step with Done(row, "cancelled").
        """
        stop = self.default_stop if stop is None else tuple(stop)
        B, S = len(prompts), self.cfg.seq_len  # S: every row's bound; the cache grows to what rows need (`_grow`)
        max_tokens, temperature, top_k, top_p, seed = (
            list(v) if isinstance(v, (list, tuple)) else [v] * B for v in (max_tokens, temperature, top_k, top_p, seed))
        rows = [_Row(feed=list(p)) for p in prompts]
        for i, r in enumerate(rows):
            if not r.feed:
                raise ValueError(f"prompt {i} is empty: start it with <|bos|>")
            if len(r.feed) > S:
                r.done = True
                yield Done(i, "context_full", f"the prompt has {len(r.feed)} tokens; the context holds {S}")
        shape = (B, self.cfg.n_kv_head, _cache_len(max(len(r.feed) for r in rows), S), self.cfg.head_dim)
        dtype = self.cfg.compute_dtype
        # the cache: each layer's keys and values, one array each (see model.hidden)
        kv = tuple(tuple(jnp.zeros(shape, dtype) for _ in range(self.cfg.n_layer)) for _ in "kv")
        seeds = jnp.asarray(np.asarray(seed, np.int64) % (1 << 32), jnp.uint32)
        settings = (jnp.asarray(temperature, jnp.float32), jnp.asarray(top_k, jnp.int32),
                    jnp.asarray(top_p, jnp.float32))
        sampling = [t > 0 for t in temperature]
        mode = ("greedy" if not any(sampling) else "filtered" if any(
            on and (k > 0 or p < 1.0) for on, k, p in zip(sampling, top_k, top_p)) else "sample")
        while not all(r.done for r in rows):
            for i in sorted(cancelled or ()):
                if i < B and not rows[i].done:
                    rows[i].done = True
                    yield Done(i, "cancelled")
            if all(r.done for r in rows):
                break
            feed = max(len(r.feed) for r in rows if not r.done)
            C = next((c for c in CHUNK_BUCKETS if c >= feed), feed)  # a few chunk shapes: few compiles
            ids = np.zeros((B, C), np.int32)
            n = np.zeros(B, np.int32)
            for i, r in enumerate(rows):
                if not r.done:
                    ids[i, :len(r.feed)] = r.feed
                    n[i] = len(r.feed)
            pos = np.array([r.pos for r in rows], np.int32)
            drawn = np.array([r.sampled for r in rows], np.int32)
            fresh = not pos.any()  # the prompts' prefill: nothing cached yet
            if (need := int((pos + n).max())) > kv[0][0].shape[2]:
                kv = _grow(kv, _cache_len(need, S))
            next_ids, kv = self.step(self.params, kv, ids, pos, n, seeds, drawn, *settings, mode=mode, fresh=fresh)
            for i, t in enumerate(np.asarray(next_ids).tolist()):
                r = rows[i]
                if r.done:
                    continue
                r.pos += len(r.feed)
                r.feed, r.sampled = [t], r.sampled + 1
                r.turn.append(t)
                yield Token(i, t)
                yield from self._after(i, r, t, stop, max_tokens[i], S, on_tool_calls)

    def _after(self, i, r: _Row, t: int, stop, max_tokens: int, S: int, on_tool_calls):
        """What follows sampled token t of row i: go on, run its tool calls, or end the row."""
        if t in stop:
            message = template.parse_assistant(r.turn, self.tok)
            results = (on_tool_calls(i, message) if on_tool_calls and t == self.assistant_end
                       and message.get("tool_calls") else None)
            if results is None:
                r.done = True
                yield Done(i, "stop")
                return
            forced = [tid for text in results for tid in template.tool_result_ids(text, self.tok)]
            forced.append(self.assistant_start)
            r.feed, r.turn = [t] + forced, []
            if r.pos + len(r.feed) > S:
                r.done = True
                yield Done(i, "context_full", f"the tool results do not fit the {S}-token context")
                return
            for tid in forced:
                yield Token(i, tid, forced=True)
        if r.sampled >= max_tokens:
            r.done = True
            yield Done(i, "length")
        elif r.pos + len(r.feed) > S:
            r.done = True
            yield Done(i, "context_full", f"the reply reached the end of the {S}-token context")

    def complete(self, prompts: list[list[int]], max_tokens: int = 256, **kwargs) -> list[list[int]]:
        """The sampled and forced tokens of each row (stop tokens included), all at once."""
        out: list[list[int]] = [[] for _ in prompts]
        for event in self.generate(prompts, max_tokens, **kwargs):
            if isinstance(event, Token):
                out[event.row].append(event.id)
        return out
