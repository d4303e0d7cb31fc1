"""The record <-> OpenAI chat format: what the agent sends to any server and what our server reads.

`tools_schema` is the tool spec as OpenAI `tools=`; `to_openai` turns record messages into chat
messages (calls get ids derived from positions, results point back at them); `from_openai` is
its inverse and `parse_call` reads one function call. All pure: no network, no UI.
"""

import json

from nanocode.common import InputError
from nanocode.record import ROLES
from nanocode.spec import ToolSpec

_JSON_TYPES = {"string": "string", "int": "integer", "bool": "boolean"}


def tools_schema(spec: ToolSpec) -> list[dict]:
    """The tool spec as OpenAI `tools=`: one function per tool, its args as a JSON schema."""
    return [{"type": "function",
             "function": {"name": t.name, "description": t.description, "parameters": {
                 "type": "object",
                 "properties": {a.name: {"type": _JSON_TYPES[a.type], "description": a.description} for a in t.args},
                 "required": [a.name for a in t.args if a.required]}}}
            for t in spec.tools]


def call_id(message_index: int, call_index: int) -> str:
    # records carry no call ids; derive stable ones from positions. 9 alphanumerics because
    # some vLLM tool parsers (Mistral's) reject any other shape.
    return f"c{message_index:04d}{call_index:04d}"[-9:]


def to_openai(messages: list[dict]) -> list[dict]:
    """Record messages -> OpenAI chat messages (tool calls get ids, results point back at them)."""
    out, pending = [], []  # pending: ids of calls not answered yet, in order
    for i, m in enumerate(messages):
        role, content = m["role"], m.get("content") or ""
        if role == "tool":
            tid = pending.pop(0) if pending else call_id(i, 0)
            out.append({"role": "tool", "tool_call_id": tid, "content": content})
        elif role == "assistant" and m.get("tool_calls"):
            calls = [{"id": call_id(i, j), "type": "function",
                      "function": {"name": c["name"], "arguments": json.dumps(c.get("args") or {}, ensure_ascii=False)}}
                     for j, c in enumerate(m["tool_calls"])]
            pending = [c["id"] for c in calls]
            out.append({"role": "assistant", "content": content or None, "tool_calls": calls})
        else:
            out.append({"role": role, "content": content})
    return out


def _text(content, i: int) -> str:
    """OpenAI content (a string, null, or a list of text parts) as one string."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        if kinds := {p.get("type") for p in content} - {"text"}:
            raise InputError(f"messages[{i}]: only text content is supported, got {sorted(map(str, kinds))}")
        return "".join(str(p.get("text", "")) for p in content)
    raise InputError(f"messages[{i}]: content must be a string or a list of text parts")


def from_openai(messages) -> list[dict]:
    """OpenAI chat messages -> record messages: the inverse of `to_openai`.

    A `tool` message gets the name of the call its `tool_call_id` answers. Raises InputError
    naming the message for what our template cannot hold (unknown roles, non-text content,
    arguments that are not a JSON object of plain values, a result answering no call).
    """
    if not isinstance(messages, list) or not messages:
        raise InputError("messages must be a non-empty list")
    out, calls = [], {}  # calls: id -> name of every call not answered yet
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role == "developer":  # OpenAI's newer name for the system message
            role = "system"
        if role not in ROLES:
            raise InputError(f"messages[{i}]: unknown role {role!r}")
        content = _text(m.get("content"), i)
        if role == "tool":
            tid = m.get("tool_call_id")
            if tid not in calls:
                raise InputError(f"messages[{i}]: tool_call_id {tid!r} answers no tool call")
            out.append({"role": "tool", "name": calls.pop(tid), "content": content})
            continue
        message = {"role": role, "content": content}
        if role == "assistant" and m.get("tool_calls"):
            message["tool_calls"] = []
            for j, c in enumerate(m["tool_calls"]):
                function = c.get("function") if isinstance(c, dict) else None
                if not isinstance(function, dict):
                    raise InputError(f"messages[{i}].tool_calls[{j}]: needs a function with name and arguments")
                call = parse_call(function.get("name"), function.get("arguments"))
                if "error" in call:
                    raise InputError(f"messages[{i}].tool_calls[{j}]: {call['error']}")
                calls[c.get("id")] = call["name"]
                message["tool_calls"].append(call)
        out.append(message)
    return out


def parse_call(name, arguments) -> dict:
    """One OpenAI function call (name, JSON `arguments` text) -> a record call.

    Never raises: a call that cannot be used keeps what could be read and carries an `error`
    (the session answers it with that error, so the model sees what went wrong). Args stay
    JSON scalars so the record validates and renders.
    """
    if not (isinstance(name, str) and name):
        # kept in the history under a placeholder name, which parses on the way back (our server
        # gets the session's whole history: refusing it would end the session)
        return {"name": "invalid", "args": {}, "error": "tool call has no name"}
    call = {"name": name, "args": {}}
    text = arguments if isinstance(arguments, str) else ""
    try:
        args = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        # what was sent, quoted: a server's own reason (ours sends "error: ...") reaches the model
        call["error"] = f"{call['name']} arguments are not valid JSON ({e.msg} at char {e.pos}): {text[:80]!r}"
        return call
    if not isinstance(args, dict):
        call["error"] = f"{call['name']} arguments must be a JSON object, got {type(args).__name__}"
        return call
    # lists/objects cannot be rendered as one argument value: kept as text, and the call refused
    bad = [key for key, value in args.items() if not (value is None or isinstance(value, (str, bool, int, float)))]
    call["args"] = {k: json.dumps(v, ensure_ascii=False) if k in bad else v for k, v in args.items()}
    if bad:
        call["error"] = f"{call['name']} argument(s) {', '.join(map(repr, bad))} must be plain values"
    return call


def model_ids(response) -> list[str] | None:
    """The ids of an OpenAI `GET /models` body (an httpx response), or None when it is not that."""
    try:
        return [m["id"] for m in json.loads(response.text).get("data")]
    except (ValueError, AttributeError, TypeError, KeyError):
        return None


def what_came(response) -> str:
    """`200 with text/html: '<html>...'`: enough to see what answered instead of an API."""
    kind = response.headers.get("content-type", "no content type").split(";")[0]
    body = " ".join(response.read().decode("utf-8", "replace").split())
    return f"{response.status_code} with {kind}: {body[:80]!r}"
