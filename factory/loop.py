"""The constitutional loop for one input, and its pair.

    draft = converter(seed), in a thread (a scenario's test runs wait on subprocesses)
    attempt 1: generator writes the rollout
    critics: deterministic ones first; the LLM judge only if they all pass
    attempt 2..max_rounds: the reviser rewrites the last attempt given the problems found
    stop at the first attempt that passes (an SFT row) or when rounds run out (a reject)
    replay: the passing attempt's tool calls run for real (factory/replay.py); results are
    rewritten to the real ones, or an edit that does not apply rejects the input

The pair (first fail vs final): rejected = the first attempt that failed for a reason other
than parsing or length (a model's broken JSON or an over-long rollout teaches nothing about
the SOUL); chosen = the attempt that passed; written only if both sides hold assistant content
and differ. Every row keeps its provenance: input, attempt, critic scores, critique, models.

Each attempt's verdict (passed, the critics that failed and why, a reply not parsed) goes to
`ctx.verdict` when the build gives one: its live display shows the last. `ctx.replies` counts
the writers' model replies parsed and not (the build's parse-failure rate).

A seed is plain data: one marked `"skip": [stage, reason]` is a reject with that reason; one
naming its own converter entry (scenarios in a mix of seed files) goes through that converter.
A rollout the tool spec cannot express (nanocode.spec.MissingTool: "spec has no search tool")
is a reject with stage `tools` and that reason, counted like the others.
A model call that can never succeed (backends.RequestFailed, permanent: a 400 such as too long
a prompt, a reply stopped for length twice) makes the input a reject with stage `generate`;
any other backend failure leaves it undone, for a rerun to finish.
"""

import asyncio
import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field

from factory.requester import RequestFailed
from factory.writers import ParseError, prompt_part
from nanocode.record import has_assistant, record_id
from nanocode.spec import MissingTool


class Skip(Exception):
    """This input cannot become a row: (stage, reason) go to the rejects table."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


@dataclass
class Context:
    soul: object
    spec: object
    prompts: object
    llm: object          # a backends.Requester, or None offline
    models: dict         # which model (or rule) ran each stage: provenance of every row
    input_id: str = ""
    attempt: int = 0
    verdict: object = None  # called with each attempt's verdict line (the build's live display), or None
    replies: Counter = field(default_factory=Counter)  # the writers' model replies: "parsed", "unparsed"


def entry_key(entry) -> str:
    """A seed's own converter entry as a key of Stages.converters."""
    return json.dumps(entry, sort_keys=True)


@dataclass
class Stages:
    converter: object
    generator: object
    critics: list
    reviser: object
    max_rounds: int
    replay: object = None  # factory.replay.ToolReplay, or None: chosen rollouts are not replayed
    converters: dict = field(default_factory=dict)  # entry_key(a seed's own converter) -> the stage

    def converter_for(self, seed: dict):
        own = seed.get("converter")
        return self.converter if own is None else self.converters[entry_key(own)]


def pair(attempts: list[dict], base: dict) -> dict | None:
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


async def critique(messages, critics, ctx) -> list:
    verdicts = []
    for critic in critics:
        if critic.needs_model and not all(v.ok for v in verdicts):
            continue  # the model is asked only about rollouts the rules accept
        verdicts.append(await critic.judge(messages, ctx))
    return verdicts


def say(ctx: Context, verdict: str) -> None:
    if ctx.verdict is not None:
        ctx.verdict(f"{ctx.input_id} attempt {ctx.attempt}: {verdict}")


async def run_input(seed: dict, stages: Stages, ctx: Context) -> dict:
    """One input -> {"sft": row, "pair": row or None} or {"reject": row}. Backend failures
    that are not permanent (backends.RequestFailed) propagate: the input stays undone and a
    rerun retries it."""
    base = {k: seed[k] for k in ("input_id", "source", "source_id")}
    attempts = []

    def reject(stage, reason, messages=None):
        return {"reject": {**base, "stage": stage, "reason": reason[:2000], "attempts": len(attempts),
                           "messages": messages}}

    try:
        if seed.get("skip"):
            raise Skip(*seed["skip"])
        converter = stages.converter_for(seed)
        draft = await asyncio.to_thread(converter.convert, seed, ctx.soul, ctx.spec)
        ground = getattr(converter, "ground", None)  # re-runs a model's tool calls for real (scenarios)
        previous, problems = None, []
        for attempt in range(1, stages.max_rounds + 1):
            actx = dataclasses.replace(ctx, input_id=seed["input_id"], attempt=attempt)
            writer = stages.generator if attempt == 1 else stages.reviser
            try:
                messages = await writer.write(draft, previous, problems, actx)
            except ParseError as e:
                ctx.replies["unparsed"] += 1
                attempts.append({"attempt": attempt, "messages": None, "kind": "parse",
                                 "problems": [str(e)], "scores": {}})
                problems = [f"your reply could not be used: {e}"]
                say(actx, f"not parsed: {e}")
                continue
            ctx.replies["parsed"] += writer.needs_model
            if writer.needs_model and ground is not None:
                messages = await asyncio.to_thread(ground, messages, draft, ctx.spec)
            if not writer.needs_model and messages == previous:
                break  # the rules changed nothing: another round would not either
            verdicts = await critique(messages, stages.critics, actx)
            failed = [v for v in verdicts if not v.ok]
            kind = None if not failed else "length" if {v.critic for v in failed} == {"token_length"} else "critic"
            problems = [p for v in failed for p in v.problems]
            say(actx, f"failed {', '.join(v.critic for v in failed)}: {'; '.join(problems)}" if failed else "passed")
            attempts.append({"attempt": attempt, "messages": messages, "kind": kind, "problems": problems,
                             "scores": {v.critic: v.score for v in verdicts}})
            if not failed:
                break
            previous = messages
    except Skip as e:
        return reject(e.stage, e.reason)
    except MissingTool as e:
        return reject("tools", str(e))
    except RequestFailed as e:
        if not e.permanent:
            raise
        return reject("generate", str(e))
    final = attempts[-1]  # attempt 1 is always recorded (max_rounds >= 1)
    if final["kind"] is not None:
        last = next((a for a in reversed(attempts) if a["messages"]), None)
        stage = "critique" if last else "generate"  # generate: no attempt ever parsed
        return reject(stage, "; ".join(final["problems"]), last and last["messages"])
    if stages.replay is not None:  # the final rollout's tool calls run for real (in a thread: shell calls may take seconds)
        replayed = await asyncio.to_thread(stages.replay.replay, final["messages"], draft["workspace"], ctx.spec)
        if replayed.status == "rejected":
            return reject("replay", replayed.reason, final["messages"])
        final = attempts[-1] = {**final, "messages": replayed.messages,
                                "scores": {**final["scores"], "replay": replayed.status}}
    first_fail = next((a for a in attempts if a["kind"]), None)
    row = {**base, "id": record_id(final["messages"]), "messages": final["messages"],
           "soul": ctx.soul.sha256, "tools": ctx.spec.sha256, "workspace": draft["workspace"],
           "attempt": final["attempt"], "revisions": final["attempt"] - 1, "scores": final["scores"],
           "critique": "; ".join(first_fail["problems"]) if first_fail else "", "models": ctx.models}
    return {"sft": row, "pair": pair(attempts, base)}
