"""SOUL adherence: the SOUL's programmatic checks as rates over the model's replies to held-out
prompts, and (only when a backend is given) the factory's SOUL judge's rating of each reply.

Prompts: the first user turn of held-out conversations (`--data SPEC`: its validation split, the
same hash split SFT uses), or by default one question about each held-out HumanEval problem.
Replies are greedy, generated in batches by the Engine with the SOUL's system prompt. A reply
that ends in tool calls is checked as thinking (nanocode.soul_checks.check_message), as in the data.
A reply that is not language (nanocode.soul_checks.degenerate: no words, a repeated token, mostly
symbols or numbers, not English) counts as degenerate, its own rate, and fails; the rates per rule
the SOUL declares are over the other replies, and "all checks pass" is over every reply.

Which SOUL: `--soul`, or by default the one the model was taught, so a model is scored against
its own SOUL: the run's training data names factory versions (its checkpoint meta: `data.sources`,
following `from` back to the run it started from when its own data is not the factory's), each
version records its SOUL's sha256, and the file with those bytes is found among the SOULs under
soul/ (soul/SOUL.md, soul/examples/*/SOUL.md). Data from elsewhere is judged by soul/SOUL.md;
versions built from different SOULs, or a SOUL that is not under soul/, are one line asking
for --soul.
"""

import asyncio
import hashlib
import time

from nanocode.common import InputError
from nanocode.record import record_id
from nanocode.soul_checks import check_message, degenerate
from nanocode.paths import shipped
from nanocode.spec import DEFAULT_SOUL, load_soul, load_tools, render_system_prompt
from trainer import template

def default_prompts(limit: int | None = None) -> list[str]:
    from factory.heldout import held_out

    out = [f"what does `{p['entry_point']}` do, and how would you write it?\n\n```python\n{p['prompt']}```"
           for p in held_out()]
    return out[:limit] if limit else out


def prompts_from(spec, limit: int | None = None, val_fraction: float = 0.05) -> list[str]:
    from trainer import conversations

    data = conversations.load(spec, "conversations", val_fraction)
    out = [next(m["content"] for m in conv if m["role"] == "user") for conv in data["val"]
           if any(m["role"] == "user" for m in conv)]
    if not out:
        raise InputError(f"{spec}: no held-out conversations (its validation split is empty); "
                         "raise --val-fraction or give more rows")
    return out[:limit] if limit else out


def generate(params, cfg, tok, system_prompt: str, prompts: list[str], max_tokens: int = 256,
             batch_size: int = 8) -> tuple[list[dict], int]:
    """(the assistant message for each prompt that fits the context, how many did not fit)."""
    from trainer.engine import Engine

    engine = Engine(params, cfg, tok)
    rendered = [(p, template.render_prompt([{"role": "system", "content": system_prompt},
                                            {"role": "user", "content": p}], tok)) for p in prompts]
    fits = [(p, ids) for p, ids in rendered if len(ids) < cfg.seq_len - 8]
    out = []
    for i in range(0, len(fits), batch_size):
        chunk = fits[i:i + batch_size]
        for (p, _), ids in zip(chunk, engine.complete([ids for _, ids in chunk], max_tokens)):
            message = template.parse_assistant(ids, tok)
            out.append({"prompt": p, "message": {"role": "assistant", **{k: v for k, v in message.items()
                                                                          if k in ("content", "tool_calls")}}})
    return out, len(prompts) - len(fits)


def rates(replies: list[dict], rules) -> dict:
    """Degenerate replies (nanocode.soul_checks.degenerate: no words, a repeated token, symbols,
    not English) fail as such and skip the rules, which are written for sentences and which
    noise passes; per rule: how many of the other replies it applied to and the share that
    passed. All-pass is over every reply, so noise scores 0."""
    per_rule, all_ok, bad = {}, 0, 0
    for r in replies:
        if why := degenerate(r["message"].get("content") or ""):
            r["degenerate"], r["checks"] = why, {}
            bad += 1
            continue
        checks = check_message(r["message"], rules)
        r["checks"] = {c.rule: {"ok": c.ok, "detail": c.detail} for c in checks}
        all_ok += all(c.ok for c in checks)
        for c in checks:
            n, ok = per_rule.get(c.rule, (0, 0))
            per_rule[c.rule] = (n + 1, ok + c.ok)
    n = len(replies)
    return {"replies": n, "degenerate": bad, "degenerate_rate": bad / n if n else None,
            "all_pass_rate": all_ok / n if n else None,
            "rules": {k: {"replies": m, "pass_rate": ok / m} for k, (m, ok) in per_rule.items()}}


def judge(replies: list[dict], soul, spec, backend_cfg) -> dict:
    """Rate each reply 1-10 with the factory's own SOUL judge (critics.LLMJudge, prompts/critic.j2):
    the ruler the data was filtered with, through its request layer (cache, retries, ledger as
    version 0). The judged conversation is the prompt and the reply."""
    from factory.requester import Requester, run_closing
    from factory.critics import LLMJudge
    from factory.loop import Context, Skip
    from factory.store import Store
    from factory.writers import Prompts

    rater, prompts, store = LLMJudge(), Prompts(soul, spec), Store()

    async def one(r):
        conversation = [{"role": "user", "content": r["prompt"]}, r["message"]]
        ctx = Context(soul, spec, prompts, requester, {}, input_id=f"evals-soul:{record_id(conversation)}")
        try:
            return await rater.rate(conversation, ctx)
        except Skip as e:  # no valid verdict: the reply stays unrated, with the reason
            return None, e.reason
        except Exception as e:  # the backend failed (after the request layer's retries)
            return None, f"judge failed: {type(e).__name__}: {e}"

    async def all_():
        return await asyncio.gather(*(one(r) for r in replies))

    try:
        requester = Requester(backend_cfg, store, 0)
        results = run_closing(all_(), requester)
    finally:
        store.close()
    for r, (rating, critique) in zip(replies, results):
        r["judge"] = {"rating": rating, "critique": critique}
    rated = [x for x, _ in results if x is not None]
    return {"model": backend_cfg.model, "rated": len(rated), "unrated": len(results) - len(rated),
            "mean_rating": sum(rated) / len(rated) if rated else None}


def _factory_versions(meta: dict) -> list[int]:
    sources = [s.rsplit("@", 1)[0] for s in (meta.get("data") or {}).get("sources") or []]
    return sorted({int(s.split(":", 1)[1]) for s in sources if s.startswith("factory:")})


def taught_soul(run_dir, meta: dict):
    """(the SOUL file the run was taught by, how it was found): see the module docstring."""
    from factory.store import Store
    from trainer.checkpoint import find_checkpoints

    run, seen = run_dir, set()
    while not (versions := _factory_versions(meta)):
        if not meta.get("from") or meta["from"] in seen:
            return DEFAULT_SOUL, "the default (the run's data is not from the factory)"
        run = meta["from"]
        seen.add(run)
        ckpt = find_checkpoints(run)
        meta = ckpt.read_meta()[1]
        ckpt.close()
    ask = f"pass --soul to say which SOUL to judge {run_dir} by"
    try:
        store = Store(read_only=True)
        try:
            hashes = {v: store.version(v)["soul_sha256"] for v in versions}
        finally:
            store.close()
    except InputError as e:
        raise InputError(f"{run} was trained on factory version(s) {versions}: {e}; {ask}") from None
    if len(set(hashes.values())) > 1:
        built = ", ".join(f"factory:{v} from {h[:12]}" for v, h in hashes.items())
        raise InputError(f"{run} was trained on versions built from different SOULs ({built}): {ask}")
    want = next(iter(hashes.values()))
    for path in dict.fromkeys([DEFAULT_SOUL, *sorted(shipped("soul").rglob("*.md"))]):
        if hashlib.sha256(path.read_bytes()).hexdigest() == want:
            return path, f"the SOUL of factory:{', factory:'.join(map(str, versions))}, the run's data"
    raise InputError(f"{run} was trained on factory:{versions[0]}, built from a SOUL (sha256 {want[:12]}) "
                     f"that no file under {shipped('soul')} matches: {ask}")


def evaluate(run_dir, *, data=None, limit: int | None = None, soul=None, tools=None, max_tokens: int = 256,
             judge_cfg=None, loaded=None) -> dict:
    from trainer.checkpoint import load_model
    from trainer.sft import system_prompt_of

    params, cfg, tok, meta = loaded or load_model(run_dir)
    soul, found = (soul, "--soul") if soul is not None else taught_soul(run_dir, meta)
    soul_, spec = load_soul(soul), load_tools(tools)
    prompts = prompts_from(data, limit) if data else default_prompts(limit)
    t0 = time.perf_counter()
    system = render_system_prompt(soul_, spec, system_prompt_of(meta))  # the variant the run trained with
    replies, too_long = generate(params, cfg, tok, system, prompts, max_tokens)
    if not replies:
        raise InputError(f"none of the {len(prompts)} prompt(s) fits the model's {cfg.seq_len}-token context "
                         "with the system prompt")
    out = {"kind": "soul", "run": str(run_dir), "step": meta["step"], "prompts": "data: " + str(data) if data
           else "held-out HumanEval", "too_long": too_long,
           "soul": {"path": str(soul_.path), "sha256": soul_.sha256, "from": found}, **rates(replies, soul_.rules)}
    if judge_cfg is not None:
        out["judge"] = judge(replies, soul_, spec, judge_cfg)
    out.update(seconds=time.perf_counter() - t0, samples=replies)
    return out
