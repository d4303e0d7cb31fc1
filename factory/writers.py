"""Generators write attempt 1 of a rollout; revisers write attempts 2.. from the problems found.

  generator llm        the model restyles the converter's draft into the SOUL's voice
                       (prompts/generate.j2)
  generator converter  the draft as it is (no model)
  reviser llm          the model rewrites its previous prose given the problems (prompts/revise.j2)
  reviser rules        rules.py fixes what rules can fix (no model)

The model writes only what it must. Two reply shapes, both one JSON object:
  slots  a converted draft (code edits, diffs, chat): the assistant's prose only, one entry per
         assistant message keyed by its index in the record, {"m2": "...", "m4": "..."}; the
         prompt shows each assistant message with its slot id. Tool calls and results are the
         draft's and never pass through the model, so it cannot mis-copy them.
  steps  a scenario (the draft carries `scenario`): the model chooses the calls, so it writes
         {"steps": [{"say": "...", "call": {"name": ..., "args": {...}}, "refused": "..."}, ...,
         {"say": "final reply"}]}; never a tool result: each call is answered with an empty one
         (or the refusal the scenario asks for) that the converter's `ground` replaces with the
         real output.
`reply_schema` is the JSON schema of the shape, built per draft (the slot ids are required): the
request layer sends it as response_format or guided decoding where the backend takes it. The
parser is tolerant all the same (fences and prose around the object, trailing commas, a step
written as a record message); anything unusable is a ParseError, its own failure reason (never
a `rejected` side of a pair). The prompt part (system and user turns) always comes from the
draft, so every attempt answers the same prompt.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from factory.rules import fix_messages
from nanocode.common import InputError
from nanocode.record import REFUSED, refused

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


def slot_ids(messages: list[dict]) -> list[str]:
    """The prose slots of a record: one per assistant message, named by its index."""
    return [f"m{i}" for i, m in enumerate(messages) if m["role"] == "assistant"]


def shown(messages: list[dict]) -> list[dict]:
    """The conversation as a prompt shows it: each assistant message led by its slot id; the
    system message left out (the prompt has the SOUL and the tools already)."""
    return [{"slot": f"m{i}", **m} if m["role"] == "assistant" else m
            for i, m in enumerate(messages) if m["role"] != "system"]


def steps_of(messages: list[dict]) -> list[dict]:
    """A rollout in the steps shape (what a scenario's writer replies): its assistant turns, each
    with its call and the user's refusal of it, if any; the results left out."""
    results = iter(m for m in messages if m["role"] == "tool")
    steps = []
    for m in messages:
        if m["role"] == "assistant":
            steps.append({"say": m.get("content") or ""})
            for call in m.get("tool_calls") or []:  # one call per step: the shape has no more
                answer = next(results, {}).get("content") or ""
                steps[-1]["call"] = call
                if answer.startswith(REFUSED):
                    steps[-1]["refused"] = answer[len(REFUSED):].lstrip(": ")
    return steps


def reply_schema(shape: str, slots: list[str], spec) -> dict:
    """The JSON schema of the reply: every slot required (slots), or steps whose calls name
    the tool spec's tools (steps)."""
    if shape == "slots":
        return {"type": "object", "properties": {s: {"type": "string"} for s in slots},
                "required": slots, "additionalProperties": False}
    call = {"type": "object", "properties": {"name": {"enum": [t.name for t in spec.tools]}, "args": {"type": "object"}},
            "required": ["name", "args"]}
    step = {"type": "object", "properties": {"say": {"type": "string"}, "call": call, "refused": {"type": "string"}},
            "required": ["say"]}
    return {"type": "object", "properties": {"steps": {"type": "array", "items": step, "minItems": 1}},
            "required": ["steps"]}


_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def first_json(text: str, kinds=(dict, list)):
    """The first JSON value of `kinds` in a reply, wherever it starts (after a ```json fence, a
    sentence, a stray bracket); trailing commas are forgiven. ParseError if there is none."""
    decoder, error = json.JSONDecoder(), None
    for m in list(re.finditer(r"[{\[]" if list in kinds else r"{", text))[:64]:
        for candidate, at in ((text, m.start()), (_TRAILING_COMMA.sub(r"\1", text[m.start():]), 0)):
            try:
                value = decoder.raw_decode(candidate, at)[0]
            except json.JSONDecodeError as e:
                error = error or e
                continue
            if isinstance(value, kinds):
                return value
            break
    where = f" ({error.msg} at line {error.lineno})" if error else ""
    raise ParseError(f"the reply is not valid JSON{where}")


def parse_slots(text: str, draft: dict) -> list[dict]:
    """A slots reply -> the draft's messages with the model's prose in the assistant turns."""
    data = first_json(text, (dict,))
    data = {str(k).strip().lower(): v for k, v in data.items()}
    out, missing = json.loads(json.dumps(draft["messages"])), []  # a copy: attempts never share objects
    for slot in slot_ids(out):
        text = data.get(slot)
        if isinstance(text, dict):  # a slip: the message instead of its text
            text = text.get("content")
        if not isinstance(text, str):
            missing.append(slot)
            continue
        out[int(slot[1:])]["content"] = text
    if missing:
        raise ParseError(f"the reply has no text for slot(s) {', '.join(missing)}")
    return out


def _call_of(step: dict):
    call = step.get("call") or step.get("tool_call") or (step.get("tool_calls") or [None])[0]
    if call is None:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ParseError("a step's call must be {\"name\": ..., \"args\": {...}}")
    args = call.get("args", call.get("arguments", {}))
    try:  # OpenAI's own way: the arguments as a JSON string
        args = json.loads(args) if isinstance(args, str) else args
    except json.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise ParseError(f"the args of the {call['name']} call must be a JSON object")
    return {"name": call["name"], "args": args}


def parse_steps(text: str, draft: dict) -> list[dict]:
    """A steps reply -> the draft's prompt, then each step as an assistant message and its call
    answered by an empty result (or the refusal it names) for `ground` to fill."""
    data = first_json(text)
    steps = data.get("steps", data.get("messages")) if isinstance(data, dict) else data
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ParseError('the reply must be {"steps": [{"say": "...", "call": {...}}, ...]}')
    out = []
    for step in steps:
        if step.get("role", "assistant") != "assistant":
            continue  # a slip into the record shape: the prompt and the results are not the model's
        say = step.get("say", step.get("content"))
        msg = {"role": "assistant", "content": say if isinstance(say, str) else ""}
        if call := _call_of(step):
            msg["tool_calls"] = [call]
        out.append(msg)
        if call:
            reason = step.get("refused")
            out.append({"role": "tool", "name": call["name"],
                        "content": refused(reason) if isinstance(reason, str) and reason else ""})
    if not out:
        raise ParseError("the reply has no steps")
    return prompt_part(draft["messages"]) + out


def shape_of(draft: dict) -> str:
    return "steps" if draft.get("scenario") is not None else "slots"


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
        shape, slots = shape_of(draft), slot_ids(draft["messages"])
        content = ctx.prompts.render(self.prompt or own or self.default_prompt, draft=draft["messages"],
                                     previous=previous, problems=problems, scenario=draft.get("scenario"),
                                     shape=shape, slots=slots, conversation=shown(previous or draft["messages"]),
                                     steps=steps_of(previous or draft["messages"]))
        text = await ctx.llm.chat([{"role": "user", "content": content}],
                                  {"temperature": self.temperature, "max_tokens": self.max_tokens},
                                  attempt=ctx.attempt, purpose=self.default_prompt, input_id=ctx.input_id,
                                  schema=reply_schema(shape, slots, ctx.spec))
        return (parse_steps if shape == "steps" else parse_slots)(text, draft)


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
