"""The constitutional loop for one input, and the pair policy.

    draft = converter(seed)
    attempt 1: generator writes the rollout
    critics: deterministic ones first; the LLM judge only if they all pass
    attempt 2..max_rounds: the reviser rewrites the last attempt given the problems found
    stop at the first attempt that passes (an SFT row) or when rounds run out (a reject)
    replay: the passing attempt's tool calls run for real (factory/replay.py); results are
    rewritten to the real ones, or an Edit that does not apply rejects the input

Pair policy `first_fail_vs_final`: rejected = the first attempt that failed for a reason other
than parsing or length (a model's broken JSON or an over-long rollout teaches nothing about
the SOUL); chosen = the attempt that passed; written only if both sides hold assistant content
and differ. Every row keeps its provenance: input, attempt, critic scores, critique, models.
"""

import asyncio
import dataclasses
from dataclasses import dataclass

from factory.convert import Skip
from factory.writers import ParseError, prompt_part
from nanocode.record import has_assistant, record_id


@dataclass
class Context:
    soul: object
    spec: object
    prompts: object
    llm: object          # a backends.Requester, or None offline
    models: dict         # which model (or rule) ran each stage: provenance of every row
    input_id: str = ""
    attempt: int = 0


@dataclass
class Stages:
    converter: object
    generator: object
    critics: list
    reviser: object
    pairs: object
    max_rounds: int
    replay: object = None  # factory.replay.ToolReplay, or None: chosen rollouts are not replayed


@dataclass
class FirstFailVsFinal:
    def pair(self, attempts: list[dict], base: dict) -> dict | None:
        final = attempts[-1]
        rejected = next((a for a in attempts if a["kind"] == "critic"), None)
        if rejected is None or final["kind"] is not None:
            return None
        prompt = prompt_part(final["messages"])
        chosen, worse = final["messages"][len(prompt):], rejected["messages"][len(prompt):]
        if not (has_assistant(chosen) and has_assistant(worse)) or chosen == worse:
            return None
        return {**base, "id": record_id([{"prompt": prompt, "chosen": chosen, "rejected": worse}]),
                "prompt": prompt, "chosen": chosen, "rejected": worse,
                "critique": "; ".join(rejected["problems"]),
                "scores": {"chosen": final["scores"], "rejected": rejected["scores"]},
                "chosen_attempt": final["attempt"], "rejected_attempt": rejected["attempt"]}


PAIR_POLICIES = {"first_fail_vs_final": FirstFailVsFinal}


async def critique(messages, critics, ctx) -> list:
    verdicts = []
    for critic in critics:
        if critic.needs_model and not all(v.ok for v in verdicts):
            continue  # the model is asked only about rollouts the rules accept
        verdicts.append(await critic.judge(messages, ctx))
    return verdicts


async def run_input(seed: dict, stages: Stages, ctx: Context) -> dict:
    """One input -> {"sft": row, "pair": row or None} or {"reject": row}. Backend failures
    (backends.RequestFailed) propagate: the input stays undone and a rerun retries it."""
    base = {k: seed[k] for k in ("input_id", "source", "source_id")}
    attempts = []
    try:
        # a source may bring its own converter (scenarios inside a mix of seed files)
        draft = (seed.get("converter") or stages.converter).convert(seed, ctx.soul, ctx.spec)
        previous, problems = None, []
        for attempt in range(1, stages.max_rounds + 1):
            actx = dataclasses.replace(ctx, input_id=seed["input_id"], attempt=attempt)
            writer = stages.generator if attempt == 1 else stages.reviser
            try:
                messages = await writer.write(draft, previous, problems, actx)
            except ParseError as e:
                attempts.append({"attempt": attempt, "messages": None, "kind": "parse",
                                 "problems": [str(e)], "scores": {}})
                problems = [f"your reply could not be used: {e}"]
                continue
            if not writer.needs_model and messages == previous:
                break  # the rules changed nothing: another round would not either
            verdicts = await critique(messages, stages.critics, actx)
            failed = [v for v in verdicts if not v.ok]
            kind = None if not failed else "length" if {v.critic for v in failed} == {"token_length"} else "critic"
            problems = [p for v in failed for p in v.problems]
            attempts.append({"attempt": attempt, "messages": messages, "kind": kind, "problems": problems,
                             "scores": {v.critic: v.score for v in verdicts}})
            if not failed:
                break
            previous = messages
    except Skip as e:
        return {"reject": {**base, "stage": e.stage, "reason": e.reason, "attempts": len(attempts), "messages": None}}
    final = attempts[-1] if attempts else None
    if final is None or final["kind"] is not None:
        last = next((a for a in reversed(attempts) if a["messages"]), None)
        stage = "critique" if last else "generate"  # generate: no attempt ever parsed
        reason = "; ".join(final["problems"]) if final else "no attempt was made"
        return {"reject": {**base, "stage": stage, "reason": reason[:2000], "attempts": len(attempts),
                           "messages": last and last["messages"]}}
    if stages.replay is not None:  # the final rollout's tool calls run for real (in a thread: Bash may take seconds)
        verdict = await asyncio.to_thread(stages.replay.replay, final["messages"], draft["workspace"], ctx.spec)
        if verdict.status == "rejected":
            return {"reject": {**base, "stage": "replay", "reason": verdict.reason[:2000], "attempts": len(attempts),
                               "messages": final["messages"]}}
        final = attempts[-1] = {**final, "messages": verdict.messages,
                                "scores": {**final["scores"], "replay": verdict.status}}
    first_fail = next((a for a in attempts if a["kind"]), None)
    row = {**base, "id": record_id(final["messages"]), "messages": final["messages"],
           "soul": ctx.soul.sha256, "tools": ctx.spec.sha256, "workspace": draft["workspace"],
           "attempt": final["attempt"], "revisions": final["attempt"] - 1, "scores": final["scores"],
           "critique": "; ".join(first_fail["problems"]) if first_fail else "", "models": ctx.models}
    return {"sft": row, "pair": stages.pairs.pair(attempts, base)}
