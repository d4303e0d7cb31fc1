"""The KV-cache engine against the cache-free forward, its buckets, sampling and tool turns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer import template
from trainer.engine import MIN_CACHE, PICK_BLOCK, Done, Engine, Token, decode_layout, decode_logits, greedy_ids
from trainer.model import GPTConfig, forward, init_params, logits_of


@pytest.fixture(scope="module")
def tiny(tiny_tok):
    """A small model with every weight random (init zeroes the output projections)."""
    cfg = GPTConfig(vocab_size=tiny_tok.vocab_size, seq_len=128, n_layer=2, d_model=64, n_head=4,
                    n_kv_head=2, head_dim=16)
    p = init_params(cfg, jax.random.key(0))
    k = jax.random.split(jax.random.key(1), 3)
    p["blocks"]["wo"] = 0.05 * jax.random.normal(k[0], p["blocks"]["wo"].shape)
    p["blocks"]["w_proj"] = 0.05 * jax.random.normal(k[1], p["blocks"]["w_proj"].shape)
    p["lm_head"] = 0.5 * jax.random.normal(k[2], p["lm_head"].shape)
    return p, cfg


def reference_greedy(params, cfg, prompt, n):
    """Greedy decoding the slow way: a full forward over the whole context for every token (padded to
    the context, one compile: the model is causal, so the padding after the last token changes nothing)."""
    fwd = jax.jit(lambda p, x: forward(p, x, cfg))
    ids = list(prompt)
    for _ in range(n):
        padded = np.zeros((1, cfg.seq_len), np.int32)
        padded[0, :len(ids)] = ids
        ids.append(int(jnp.argmax(fwd(params, jnp.asarray(padded))[0, len(ids) - 1])))
    return ids[len(prompt):]


def test_greedy_equals_the_cache_free_forward_for_a_ragged_batch(tiny, tiny_tok):
    params, cfg = tiny
    texts = ["def f(x):", "import json\nclass Encoder(object):\n    def __init__(self", "x"]
    prompts = [[tiny_tok.bos_id] + tiny_tok.encode(t) for t in texts]
    prompts.append(prompts[1] + prompts[1][1:] + 2 * prompts[0][1:])  # its cache grows mid-reply
    assert len({len(p) for p in prompts}) == 4 and len(prompts[3]) < MIN_CACHE < len(prompts[3]) + 12
    out = Engine(params, cfg, tiny_tok).complete(prompts, 12, stop=())
    for prompt, got in zip(prompts, out):
        assert got == reference_greedy(params, cfg, prompt, 12)


def test_the_engines_layout_holds_the_models_weights_and_gives_its_logits(tiny, tiny_tok):
    params, cfg = tiny
    engine = Engine(params, cfg, tiny_tok)
    blocks = engine.params["blocks"]  # one dict of arrays per layer, not slices of the stacked ones
    assert isinstance(blocks, tuple) and len(blocks) == cfg.n_layer
    for i, layer in enumerate(blocks):
        assert layer.keys() == params["blocks"].keys()
        for name, w in layer.items():
            np.testing.assert_array_equal(np.asarray(w), np.asarray(params["blocks"][name][i]))
    D, V = params["lm_head"].shape
    if jax.default_backend() == "cpu":  # the engine's one copy is (V, D); the caller's stays (D, V)
        assert engine.params["lm_head"].shape == (V, D) and params["lm_head"].shape == (D, V)
    h = jax.random.normal(jax.random.key(2), (5, D), jnp.float32)
    want = jax.jit(lambda p, h: logits_of(p, h, cfg))(params, h)
    got = jax.jit(lambda p, h: decode_logits(p, h, cfg))(engine.params, h)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(want).max()) > 1.0  # logits of some size, not all ~0


def test_the_greedy_pick_is_argmax_with_its_first_index_on_ties():
    """greedy_ids picks in blocks of the vocab: a tie across blocks, the winner in the padded last block
    (a vocab that is no multiple of PICK_BLOCK) and one in the first row all come out as jnp.argmax's."""
    D, V, B = 16, 2 * PICK_BLOCK + 100, 4
    cfg = GPTConfig(vocab_size=V, seq_len=16, n_layer=1, d_model=D, n_head=1, n_kv_head=1, head_dim=16)
    h = jax.random.normal(jax.random.key(0), (B, D))
    w = 0.1 * jax.random.normal(jax.random.key(1), (D, V))  # the model's (D, V) lm_head
    w = w.at[:, 10].set(3 * h[0]).at[:, PICK_BLOCK + 7].set(3 * h[0])  # row 0: a tie, two blocks apart
    w = w.at[:, V - 3].set(3 * h[1]).at[:, 0].set(3 * h[2])  # row 1: the padded block; row 2: the first id
    want = np.asarray(jnp.argmax(h @ w, axis=-1))
    assert want[:3].tolist() == [10, V - 3, 0]
    params = decode_layout({"lm_head": w, "blocks": {}, "resid_lambdas": jnp.zeros(0)})
    got = jax.jit(lambda p, h: greedy_ids(p, h, cfg))(params, h)
    assert got.dtype == jnp.int32 and np.asarray(got).tolist() == want.tolist()


def test_decoding_never_recompiles_within_a_bucket(tiny, tiny_tok):
    params, cfg = tiny
    engine = Engine(params, cfg, tiny_tok)
    bos = tiny_tok.bos_id
    engine.complete([[bos, 5, 6], [bos, 7]], 20, stop=())
    compiled = engine.step._cache_size()
    assert compiled == 2  # the prompt chunk and the one-token step
    engine.complete([[bos, 9, 10, 11, 12], [bos, 3, 4]], 30, stop=())  # other lengths, same buckets
    assert engine.step._cache_size() == compiled


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny, tiny_tok):
    params, cfg = tiny
    engine = Engine(params, cfg, tiny_tok)
    prompt = [[tiny_tok.bos_id] + tiny_tok.encode("def f(x):")]
    greedy = engine.complete(prompt, 16, stop=())
    assert engine.complete(prompt, 16, stop=(), temperature=1.0, top_k=1) == greedy
    a = engine.complete(prompt, 16, stop=(), temperature=1.0, seed=1)
    assert a == engine.complete(prompt, 16, stop=(), temperature=1.0, seed=1)
    assert a != engine.complete(prompt, 16, stop=(), temperature=1.0, seed=2)
    nucleus = engine.complete(prompt, 16, stop=(), temperature=1.0, top_p=1e-6, seed=3)
    assert nucleus == greedy  # a tiny nucleus holds only the top token


def test_overflow_ends_the_row_cleanly(tiny, tiny_tok):
    params, cfg = tiny
    engine = Engine(params, cfg, tiny_tok)
    bos = tiny_tok.bos_id
    events = list(engine.generate([[bos] * 200, [bos, 5]], 500, stop=()))
    done = {e.row: e for e in events if isinstance(e, Done)}
    assert done[0].reason == "context_full" and "200 tokens" in done[0].message
    assert done[1].reason == "context_full"  # ran to the end of the 128-token context
    assert sum(1 for e in events if isinstance(e, Token) and e.row == 1) == cfg.seq_len - 2 + 1
    assert [e.reason for e in engine.generate([[bos, 5]], 7, stop=()) if isinstance(e, Done)] == ["length"]


def chain_model(tok, chain: list[int], vocab: int):
    """A real GPT whose weights make it a bigram machine: after chain[i] it says chain[i + 1].
    The blocks are the identity (zero output projections), so the hidden state is the normed
    embedding of the current token, and lm_head maps each chain token's embedding to its successor."""
    cfg = GPTConfig(vocab_size=vocab, seq_len=256, n_layer=1, d_model=64, n_head=1, n_kv_head=1, head_dim=64)
    p = init_params(cfg, jax.random.key(0))
    wte = np.asarray(p["wte"])
    h = wte / np.sqrt((wte**2).mean(-1, keepdims=True))
    lm_head = np.zeros((64, vocab), np.float32)
    for cur, nxt in zip(chain, chain[1:]):
        lm_head[:, nxt] += 12 * h[cur] / (h[cur] @ h[cur])
    p["lm_head"] = jnp.asarray(lm_head)
    return p, cfg


def test_tool_calls_are_run_and_their_results_forced(tiny_tok):
    sid = tiny_tok.special_id
    call = ([sid(template.CALL_START)] + tiny_tok.encode("Read") + [sid(template.ARG)] + tiny_tok.encode("file_path")
            + [sid(template.VAL)] + tiny_tok.encode("z") + [sid(template.CALL_END)])
    turn = tiny_tok.encode("ok") + call + [sid(template.ASSISTANT_END)]
    chain = [sid(template.ASSISTANT_START)] + turn
    assert len(set(chain)) == len(chain), "the chain needs distinct tokens"
    params, cfg = chain_model(tiny_tok, chain, tiny_tok.vocab_size)
    calls = []

    def run(row, message):
        calls.append(message)
        return ["1→hello"] if len(calls) == 1 else None  # the second turn's call is not run

    prompt = template.render_prompt([{"role": "user", "content": "hi"}], tiny_tok)
    events = list(Engine(params, cfg, tiny_tok).generate([prompt], 100, on_tool_calls=run))
    tokens = [e for e in events if isinstance(e, Token)]
    assert calls[0] == {"role": "assistant", "content": "ok",
                        "tool_calls": [{"name": "Read", "args": {"file_path": "z"}}]}
    forced = [e.id for e in tokens if e.forced]
    assert forced == template.tool_result_ids("1→hello", tiny_tok) + [sid(template.ASSISTANT_START)]
    sampled = [e.id for e in tokens if not e.forced]
    assert sampled == turn + turn  # the model goes on after the results: a second, identical turn
    assert len(calls) == 2 and isinstance(events[-1], Done) and events[-1].reason == "stop"
    # the whole stream is the rendering of the conversation it stands for
    ids = prompt + [e.id for e in tokens]
    conversation = [{"role": "user", "content": "hi"}, calls[0],
                    {"role": "tool", "name": "Read", "content": "1→hello"}, calls[1]]
    assert template.render(conversation, tiny_tok)[0] == ids
