"""Critics: each judges a whole rollout and returns a Verdict (ok, score, problems).

Deterministic critics run first and cost nothing; the LLM judge runs only on rollouts that
pass them (loop.py), since a model's opinion of a malformed rollout is money thrown away.

  grammar         nanocode.record.validate, every tool call answered once and in order,
                  tools and args as the tool spec types them, ending on a final reply
  read_format     read results (the tool spec's read tool) carry `    1→line` numbering,
                  consecutive from the offset
  banned_phrases  phrases the config bans anywhere in assistant text (beyond the SOUL's)
  token_length    the rollout fits `max_tokens` (counted as characters / `chars_per_token`)
  soul_rules      the SOUL's checkable rules via nanocode.soul_checks, on every assistant turn
  llm_judge       a model scores the rollout against the whole SOUL: strict JSON
                  {"rating": 1-10, "critique": "..."}; passes at `threshold`
"""

import json
from dataclasses import dataclass, field

from factory.loop import Skip
from factory.writers import ParseError, first_json
from nanocode.common import InputError
from nanocode.record import validate
from nanocode.soul_checks import check_message
from nanocode.spec import type_args


@dataclass
class Verdict:
    critic: str
    ok: bool
    score: float
    problems: list[str] = field(default_factory=list)


def _verdict(name: str, problems: list[str]) -> Verdict:
    return Verdict(name, not problems, float(not problems), problems)


def _calls_and_results(messages):
    """(call, result message) pairs in order: validate() guarantees they line up."""
    calls = [c for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    return zip(calls, [m for m in messages if m["role"] == "tool"])


@dataclass
class Grammar:
    needs_model = False

    async def judge(self, messages, ctx) -> Verdict:
        problems = []
        try:
            validate(messages)
        except InputError as e:
            return _verdict("grammar", [str(e)])
        last = messages[-1] if messages else {}
        if last.get("role") != "assistant" or last.get("tool_calls"):
            problems.append("the rollout must end with a final assistant reply (every tool call answered)")
        if not any(m["role"] == "user" for m in messages):
            problems.append("the rollout has no user message")
        for call, _ in _calls_and_results(messages):
            _, error = type_args(call, ctx.spec)
            if error:
                problems.append(f"tool call {call.get('name')}: {error}")
        return _verdict("grammar", problems)


@dataclass
class ReadFormat:
    needs_model = False

    async def judge(self, messages, ctx) -> Verdict:
        problems = []
        for call, result in _calls_and_results(messages):
            text = result.get("content") or ""
            behaviour, args = ctx.spec.canonical(call)
            if behaviour != "read" or text.startswith(("error:", "(")):
                continue  # errors and "(x is empty)" carry no numbered lines
            first = int(args.get("offset") or 0) + 1
            lines = [ln for ln in text.split("\n") if not ln.startswith("(more lines follow")]
            for n, line in enumerate(lines, first):
                if not line.startswith(f"{n:>5}→"):
                    problems.append(f"{call['name']} result line {n - first + 1} should start with {f'{n:>5}→'!r}, "
                                    f"got {line[:12]!r}")
                    break
        return _verdict("read_format", problems)


@dataclass
class BannedPhrases:
    phrases: list = field(default_factory=list)
    needs_model = False

    async def judge(self, messages, ctx) -> Verdict:
        texts = {i: " ".join((m.get("content") or "").lower().split())
                 for i, m in enumerate(messages) if m["role"] == "assistant"}
        return _verdict("banned_phrases", [f"message {i}: contains {p!r}" for i, text in texts.items()
                                           for p in self.phrases if p.lower() in text])


@dataclass
class TokenLength:
    max_tokens: int = 4096
    chars_per_token: float = 4.0  # the demo's 8k tokenizer gets ~3-3.5 on code: set it lower to be safe
    needs_model = False

    async def judge(self, messages, ctx) -> Verdict:
        n = int(len(json.dumps(messages, ensure_ascii=False)) / self.chars_per_token)
        return _verdict("token_length", [f"{n} tokens, over the limit of {self.max_tokens}"] * (n > self.max_tokens))


@dataclass
class SoulRules:
    needs_model = False

    async def judge(self, messages, ctx) -> Verdict:
        problems = [f"message {i} ({'thinking before a tool call' if m.get('tool_calls') else 'final reply'}): "
                    f"{c.rule}: {c.detail}"
                    for i, m in enumerate(messages) if m["role"] == "assistant"
                    for c in check_message(m, ctx.soul.rules) if not c.ok]
        return _verdict("soul_rules", problems)


# the verdict's shape, sent as the request's JSON schema (structured output: a grammar on servers
# that take one, so even a small judge answers in it)
RATING_SCHEMA = {"type": "object", "properties": {"rating": {"type": "integer", "minimum": 1, "maximum": 10},
                                                  "critique": {"type": "string"}},
                 "required": ["rating", "critique"], "additionalProperties": False}


def parse_rating(text: str) -> tuple[int, str]:
    """The judge's JSON {"rating", "critique"}, wherever it is in the reply; ValueError if it is not that."""
    try:
        data = first_json(text, kinds=(dict,))
    except ParseError as e:
        raise ValueError(str(e)) from None
    rating, critique = data.get("rating"), data.get("critique", "")
    if type(rating) is not int or not 1 <= rating <= 10 or not isinstance(critique, str):
        raise ValueError('want {"rating": 1-10, "critique": "..."}')
    return rating, critique


@dataclass
class LLMJudge:
    threshold: int = 9
    prompt: str | None = None  # a jinja2 template path; default factory/prompts/critic.j2
    temperature: float = 0.0
    max_tokens: int = 512
    tries: int = 3            # a verdict that is not the strict JSON asked for is asked again
    needs_model = True
    default_prompt = "critic"

    async def rate(self, messages, ctx) -> tuple[int, str]:
        """(rating 1-10, critique) of a conversation: the one SOUL judge, also `evals soul`'s.
        Raises Skip when the judge gives no valid verdict in `tries` asks."""
        request = [{"role": "user", "content": ctx.prompts.render(self.prompt or self.default_prompt, rollout=messages)}]
        error = None
        for n in range(self.tries):
            text = await ctx.llm.chat(request, {"temperature": self.temperature, "max_tokens": self.max_tokens},
                                      attempt=ctx.attempt * 100 + n, purpose="critic", input_id=ctx.input_id,
                                      schema=RATING_SCHEMA)
            try:
                return parse_rating(text)
            except ValueError as e:
                error = e
        # the rollout is not at fault: drop the input rather than revise it
        raise Skip("critic", f"the critic gave no valid verdict in {self.tries} tries: {error}")

    async def judge(self, messages, ctx) -> Verdict:
        rating, critique = await self.rate(messages, ctx)
        ok = rating >= self.threshold
        problems = [] if ok else [f"the critic rated it {rating}/10 (needs {self.threshold}): {critique}"]
        return Verdict("llm_judge", ok, float(rating), problems)


CRITICS = {"grammar": Grammar, "read_format": ReadFormat, "banned_phrases": BannedPhrases,
           "token_length": TokenLength, "soul_rules": SoulRules, "llm_judge": LLMJudge}
