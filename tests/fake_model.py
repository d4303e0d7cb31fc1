"""A stand-in for an external LLM behind tests/scripted_server.py: it answers the factory's
three prompts by their content, the way a cooperative model would.

  generator prompt -> the draft back as JSON, untouched (so the seed's capitalized, offering
                      prose fails the SOUL's checks: a real first failure)
  reviser prompt   -> the draft with short lowercase assistant lines (passes the checks)
  critic prompt    -> {"rating": 9, "critique": ...}
An instruction containing BROKEN gets malformed JSON from the generator (a parse failure).
"""

import json
import re


def _draft(prompt: str) -> list[dict]:
    return json.loads(re.findall(r"```json\n(.*?)```", prompt, re.S)[-1])


def _words(messages) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in messages)


def respond(body: dict, latency: float = 0.0) -> dict:
    prompt = body["messages"][-1]["content"]
    if '{"rating": <integer 1-10>' in prompt:
        reply = {"text": json.dumps({"rating": 9, "critique": "short, lowercase, reads before it edits"})}
    else:
        draft = [m for m in _draft(prompt) if m["role"] != "system"]
        if "Problems found:" not in prompt and "BROKEN" in draft[0]["content"]:
            reply = {"text": '[{"role": "assistant", "content": "oops'}
        else:
            if "Problems found:" in prompt:
                for m in draft:
                    if m["role"] == "assistant":
                        m["content"] = "having a look first" if m.get("tool_calls") else "done, the code is in place."
            reply = {"text": "```json\n" + json.dumps(draft) + "\n```"}
    reply["usage"] = [len(prompt.split()), len(reply["text"].split())]
    reply["latency"] = latency
    return reply
