"""A stand-in for an external LLM behind tests/scripted_server.py: it answers the factory's
prompts by their content, the way a cooperative model would, in the reply shapes the prompts ask
for (factory/writers.py): prose slots {"m2": "..."} for a converted draft, {"steps": [...]} for a
scenario.

  generator prompt -> the draft's prose back, untouched (so the seed's capitalized, offering
                      prose fails the SOUL's checks: a real first failure); a scenario's
                      example steps as they are
  reviser prompt   -> the prose fixed the way the rule reviser fixes it (factory/rules.py:
                      the SOUL's fixes of each message), which passes the checks
  critic prompt    -> {"rating": 9, "critique": ...}
An instruction containing BROKEN gets malformed JSON from the generator (a parse failure). Prose
slots come fenced in ```json unless the request has a response_format.
The conversation is read from the prompt's last ```json block as a JSON value (raw_decode), so
code fences inside its strings do not cut it short.
"""

import json

from factory.rules import fix_text
from nanocode.spec import load_soul

RULES = load_soul(None).rules  # the default SOUL's: what the tests' builds hold the prose to


def shown(prompt: str):
    """The JSON value of the prompt's last ```json block."""
    at = prompt.rindex("```json\n") + len("```json\n")
    return json.JSONDecoder().raw_decode(prompt, at)[0]


def prose(message: dict, revising: bool) -> str:
    """What this model writes for an assistant message: the text as it is, or, revising, fixed."""
    text = message.get("content") or ""
    if not revising:
        return text
    kind = "thinking" if message.get("tool_calls") or message.get("call") else "reply"
    return fix_text(text, RULES, kind) or ("having a look first" if kind == "thinking" else "done.")


def _steps(conversation, revising: bool) -> list[dict]:
    steps = conversation["steps"] if isinstance(conversation, dict) else [
        {"say": m.get("content") or "", **({"call": m["tool_calls"][0]} if m.get("tool_calls") else {})}
        for m in conversation if m["role"] == "assistant"]
    return [{**s, "say": prose({"content": s["say"], "call": s.get("call")}, revising)} for s in steps]


def respond(body: dict, latency: float = 0.0) -> dict:
    prompt = body["messages"][-1]["content"]
    revising = "Problems found:" in prompt
    if '{"rating": <integer 1-10>' in prompt:
        reply = {"text": json.dumps({"rating": 9, "critique": "short, lowercase, reads before it edits"})}
    elif "Scenario:" in prompt:
        reply = {"text": json.dumps({"steps": _steps(shown(prompt), revising)})}
    else:
        conversation = shown(prompt)
        if not revising and "BROKEN" in conversation[0]["content"]:
            reply = {"text": '{"m2": "oops'}
        else:
            slots = {m["slot"]: prose(m, revising) for m in conversation if "slot" in m}
            text = json.dumps(slots)  # fenced, as models do when no schema holds them to bare JSON
            reply = {"text": text if body.get("response_format") else "```json\n" + text + "\n```"}
    reply["usage"] = [len(prompt.split()), len(reply["text"].split())]
    reply["latency"] = latency
    return reply
