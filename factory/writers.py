"""Generators write attempt 1 of a rollout; revisers write attempts 2.. from the problems found.

  generator llm        the model restyles the converter's draft into the SOUL's voice, as
                       strict JSON (prompts/generate.j2)
  generator converter  the draft as it is (no model)
  reviser llm          the model rewrites its previous attempt given the problems (prompts/revise.j2)
  reviser rules        rules.py fixes what rules can fix (no model)

A model's reply must be a JSON list of messages in the record shape; anything else is a
ParseError, its own failure reason (never a `rejected` side of a pair). The prompt part (system
and user turns) always comes from the draft, so every attempt answers the same prompt.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from factory.rules import fix_messages
from nanocode.common import InputError

PROMPTS = Path(__file__).resolve().parent / "prompts"


class ParseError(Exception):
    pass


class Prompts:
    """jinja2 templates by name (factory/prompts/<name>.j2) or by path (a config override),
    rendered with the SOUL and the tool spec; syntax errors surface before a build starts."""

    def __init__(self, soul, spec):
        self.soul, self.spec, self.cache = soul, spec, {}
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(PROMPTS),  # for {% include %}
                                      undefined=jinja2.StrictUndefined, trim_blocks=True,
                                      lstrip_blocks=True, autoescape=False)
        self.env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False, indent=1)

    def template(self, name_or_path: str):
        if name_or_path not in self.cache:
            path = Path(name_or_path) if name_or_path.endswith(".j2") else PROMPTS / f"{name_or_path}.j2"
            try:
                self.cache[name_or_path] = self.env.from_string(path.read_text(encoding="utf-8"))
            except OSError as e:
                raise InputError(f"prompt template {path}: cannot read it ({e.strerror})") from None
            except jinja2.TemplateSyntaxError as e:
                raise InputError(f"prompt template {path}: syntax error at line {e.lineno}: {e.message}") from None
        return self.cache[name_or_path]

    def render(self, name_or_path: str, **values) -> str:
        try:
            return self.template(name_or_path).render(soul=self.soul, tools=self.spec, **values)
        except jinja2.UndefinedError as e:
            raise InputError(f"prompt template {name_or_path}: {e.message}") from None


def prompt_part(messages: list[dict]) -> list[dict]:
    """The messages up to and including the last user turn before the first assistant one."""
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    return messages[:first]


def parse_rollout(text: str, draft: dict) -> list[dict]:
    """A model's JSON reply -> record messages after the draft's prompt; ParseError if unusable."""
    m = re.search(r"```(?:json)?\s*\n(.*?)```", text, re.S)
    try:
        data = json.loads(m[1] if m else text)
    except json.JSONDecodeError as e:
        raise ParseError(f"the reply is not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise ParseError("the reply must be a JSON list of message objects")
    out = []
    for x in data:
        role = {"tool_result": "tool"}.get(x.get("role"), x.get("role"))
        if not out and role in ("system", "user"):
            continue  # the model's copy of the prompt: ours is used instead
        msg = {"role": role, "content": x.get("content") if isinstance(x.get("content"), str) else ""}
        if calls := x.get("tool_calls") or ([x["tool_call"]] if isinstance(x.get("tool_call"), dict) else []):
            if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
                raise ParseError("tool_calls must be a list of {name, args} objects")
            msg["tool_calls"] = [{"name": c.get("name"), "args": c.get("args", c.get("arguments", {}))}
                                 for c in calls]
        if role == "tool" and isinstance(x.get("name"), str):
            msg["name"] = x["name"]
        out.append(msg)
    if not any(m["role"] == "assistant" for m in out):
        raise ParseError("the reply has no assistant message")
    return prompt_part(draft["messages"]) + out


@dataclass
class LLMWriter:
    prompt: str | None = None  # a jinja2 template path overriding the default one
    temperature: float = 0.2
    max_tokens: int = 4096
    needs_model = True
    default_prompt = "generate"

    async def write(self, draft, previous, problems, ctx) -> list[dict]:
        # a draft may name its own first-attempt prompt (a scenario: written from its spec)
        own = draft.get("prompt") if self.default_prompt == "generate" else None
        content = ctx.prompts.render(self.prompt or own or self.default_prompt, draft=draft["messages"],
                                     previous=previous, problems=problems, scenario=draft.get("scenario"))
        text = await ctx.llm.chat([{"role": "user", "content": content}],
                                  {"temperature": self.temperature, "max_tokens": self.max_tokens},
                                  attempt=ctx.attempt, purpose=self.default_prompt, input_id=ctx.input_id)
        return parse_rollout(text, draft)


@dataclass
class LLMReviser(LLMWriter):
    default_prompt = "revise"


@dataclass
class DraftWriter:
    needs_model = False

    async def write(self, draft, previous, problems, ctx) -> list[dict]:
        return json.loads(json.dumps(draft["messages"]))  # a copy: attempts never share objects


@dataclass
class RuleReviser:
    needs_model = False

    async def write(self, draft, previous, problems, ctx) -> list[dict]:
        return fix_messages(previous or draft["messages"], ctx.soul.rules, draft["messages"], ctx.spec)


GENERATORS = {"llm": LLMWriter, "converter": DraftWriter}
REVISERS = {"llm": LLMReviser, "rules": RuleReviser}
