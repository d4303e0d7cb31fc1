"""The writers' prompts before issue 17: the model re-emits the whole conversation as a JSON list of
messages, tool calls and tool results included "exactly as they are". Kept here only as the
measured alternative of bench/factory.py's emitted-characters comparison, never a runtime option:
the templates as they were (factory/prompts/*.j2 at commit 386ae8b), their parser, writer stages
that use them (named in a config as bench.old_prompts:OldWriter / OldReviser) and the scripted
model's answer to them (the same prose as tests/fake_model.py writes, in the old shape).
"""

import json
import re
from dataclasses import dataclass

from factory.writers import LLMWriter, ParseError, prompt_part
from tests import fake_model

OLD = {
    "generate": """{#- generator prompt. context: soul, tools, draft (record messages), previous (None), problems ([]) -#}
You write training conversations for nanocode, a coding agent that talks to its user in a terminal.

{% include "_soul.j2" %}

# the task

Below is a draft conversation. Its tool calls and tool results are real: keep every tool call
(name and args) and every tool result exactly as they are, in the same order. Rewrite only the
text of the assistant messages so that every one of them follows the constitution: one short
line of thinking before each tool call, and a short final reply that reports what was done.

Reply with JSON only: a list of messages, each {"role": "user" | "assistant" | "tool",
"content": "..."}; an assistant message may add "tool_calls": [{"name": "...", "args": {...}}];
a tool message adds "name", the tool it answers.

Draft conversation:

```json
{{ draft | tojson }}
```
""",
    "revise": """{#- reviser prompt. context: soul, tools, draft, previous (the last attempt or None), problems -#}
You write training conversations for nanocode, a coding agent that talks to its user in a terminal.

{% include "_soul.j2" %}

# the task

Your previous attempt at this conversation was checked and failed. Write it again, fixing
every problem listed, and change nothing else. Keep every tool call (name and args) and every
tool result exactly as in the draft, in the same order.

Problems found:
{% for p in problems %}
- {{ p }}
{% endfor %}

Reply with JSON only: a list of messages, each {"role": "user" | "assistant" | "tool",
"content": "..."}; an assistant message may add "tool_calls": [{"name": "...", "args": {...}}];
a tool message adds "name", the tool it answers.

Your previous attempt:

```json
{{ (previous if previous is not none else draft) | tojson }}
```
""",
    "scenario": """{#- scenario rollout prompt (generator, attempt 1). context: soul, tools, scenario (the spec as a
    mapping), draft (an offline expansion of it, tool results real), previous, problems.
    `tool` names each behaviour's tool in this tool spec (the behaviour itself when it has none) -#}
{% set tool = {} %}
{% for b in ("read", "search", "edit", "shell") %}
{% set _ = tool.update({b: tools.for_builtin(b).name if tools.for_builtin(b) else b}) %}
{% endfor %}
You write training conversations for nanocode, a coding agent that talks to its user in a terminal.

{% include "_soul.j2" %}

# the task

Write one long, realistic conversation in which the assistant carries out the scenario below
in the user's workspace (the starting files are listed in it). The assistant explores with
{{ tool.search }} and {{ tool.read }} before it edits, makes {{ tool.edit }} calls whose text to
replace matches the file exactly, runs the tests with {{ tool.shell }} when the scenario has a
`test` command, and ends with a short final reply that reports what it did. The tools and
their arguments are the ones in the tool list above. Put every event of the scenario into the
conversation:
- read_missing: {{ tool.read }} on that file, answered with an error;
- grep_no_match: {{ tool.search }} for that pattern, answered `no matches`;
- refuse_bash / refuse_edit: that call, answered "the user refused this call: <reason>",
  after which the assistant goes another way;
- tests_fail_then_pass: the tests run before the fix and fail, and pass after it;
- edit_mismatch: {{ tool.edit }} with that stale text, which fails, then {{ tool.read }} and a correct
  {{ tool.edit }};
- command_fails / bash: that command run with {{ tool.shell }}.
Tool results are re-run for real afterwards, so write your best guess of them; the assistant's
text must not depend on details you are unsure of. The example below is a plain version of
such a conversation, with real results: improve on its wording, don't copy it.

Reply with JSON only: a list of messages, each {"role": "user" | "assistant" | "tool",
"content": "..."}; an assistant message may add "tool_calls": [{"name": "...", "args": {...}}];
a tool message adds "name", the tool it answers.

Scenario:

```json
{{ scenario | tojson }}
```

Example conversation:

```json
{{ draft | tojson }}
```
""",
}
OLD_MARK = 'Reply with JSON only: a list of messages'  # in all three, and in no prompt of today


def parse_rollout(text: str, draft: dict) -> list[dict]:
    """The old parser: a JSON list of messages (in a ```json fence or bare)."""
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
            continue
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
class OldWriter(LLMWriter):
    async def write(self, draft, previous, problems, ctx) -> list[dict]:
        name = self.default_prompt if self.default_prompt == "revise" else draft.get("prompt") or "generate"
        content = ctx.prompts.env.from_string(OLD[name]).render(
            soul=ctx.prompts.soul, tools=ctx.prompts.spec, draft=draft["messages"], previous=previous,
            problems=problems, scenario=draft.get("scenario"))
        text = await ctx.llm.chat([{"role": "user", "content": content}],
                                  {"temperature": self.temperature, "max_tokens": self.max_tokens},
                                  attempt=ctx.attempt, purpose=self.default_prompt, input_id=ctx.input_id)
        return parse_rollout(text, draft)


@dataclass
class OldReviser(OldWriter):
    default_prompt = "revise"


def respond(body: dict, latency: float = 0.0) -> dict:
    """tests/fake_model.respond, and the old prompts answered in their shape: the whole
    conversation after the prompt, with the same prose the new shape gets."""
    prompt = body["messages"][-1]["content"]
    if OLD_MARK not in prompt:
        return fake_model.respond(body, latency)
    revising = "Problems found:" in prompt
    messages = [m for m in fake_model.shown(prompt) if m["role"] != "system"]
    if not revising and "BROKEN" in messages[0]["content"]:
        text = '[{"role": "assistant", "content": "oops'
    else:
        text = "```json\n" + json.dumps([{**m, "content": fake_model.prose(m, revising)} if m["role"] == "assistant"
                                          else m for m in messages]) + "\n```"
    return {"text": text, "usage": [len(prompt.split()), len(text.split())], "latency": latency}
