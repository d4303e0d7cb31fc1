"""The conversation record: the one format every part reads and writes (docs/DESIGN.md).

A record is `{"id", "messages": [...], "source", "soul", "tools", "workspace"}`; a message is
`{"role": system|user|assistant|tool, "content", "tool_calls": [{"name", "args"}], "name"}`.
Here: its validation and id, the spellings of the template's special tokens (so any part can
refuse text that spells one), one way to show a call or a message as text, the refusal result,
and a stable hash of a string into [0, 1) for splits and sampling.
"""

import hashlib
import json

from nanocode.common import InputError

# the token template's special tokens (trainer/template.py gives them ids)
BOS = "<|bos|>"
USER_START, USER_END = "<|user_start|>", "<|user_end|>"
ASSISTANT_START, ASSISTANT_END = "<|assistant_start|>", "<|assistant_end|>"
CALL_START, CALL_END = "<|tool_call_start|>", "<|tool_call_end|>"
ARG, VAL = "<|tool_arg|>", "<|tool_val|>"
RESULT_START, RESULT_END = "<|tool_result_start|>", "<|tool_result_end|>"

SPECIAL_TOKENS = [BOS, USER_START, USER_END, ASSISTANT_START, ASSISTANT_END,
                  CALL_START, CALL_END, ARG, VAL, RESULT_START, RESULT_END]
ROLES = ("system", "user", "assistant", "tool")


def value_text(value) -> str:
    """An argument value as rendered: strings verbatim, other JSON scalars as JSON."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise InputError(f"tool argument value must be a JSON scalar, got {type(value).__name__}")


def validate(messages: list[dict]) -> None:
    """Raise InputError naming the first way `messages` breaks the record contract."""
    if not isinstance(messages, list):
        raise InputError("messages must be a list")
    pending: list[str] = []  # names of tool calls not answered yet, in order
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise InputError(f"message {i}: unknown role {role!r}")
        if not isinstance(m.get("content", ""), str):
            raise InputError(f"message {i}: content must be a string")
        if role == "system" and i != 0:
            raise InputError(f"message {i}: a system message may only come first")
        if role == "tool":
            if not pending:
                raise InputError(f"message {i}: tool result without a pending tool call")
            expected = pending.pop(0)
            if m.get("name", expected) != expected:
                raise InputError(f"message {i}: tool result for {m.get('name')!r}, expected {expected!r}")
            continue
        if pending:
            raise InputError(f"message {i}: {len(pending)} tool call(s) left unanswered before this {role} turn")
        for call in m.get("tool_calls") or []:
            if role != "assistant":
                raise InputError(f"message {i}: only assistant messages carry tool calls")
            if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
                raise InputError(f"message {i}: a tool call needs a non-empty string name")
            if not isinstance(call.get("args", {}), dict):
                raise InputError(f"message {i}: tool call args must be an object")
            for key, value in call.get("args", {}).items():
                value_text(value)
            pending.append(call["name"])
    # calls still pending at the end are fine: the conversation stops where the engine runs them


def record_id(messages: list[dict]) -> str:
    """A record's id: sha256 of its messages as canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def has_assistant(messages: list[dict]) -> bool:
    """Whether any assistant turn says or calls something (a row with none teaches nothing)."""
    return any(m.get("role") == "assistant" and ((m.get("content") or "").strip() or m.get("tool_calls"))
               for m in messages)


def _cut(text: str, width: int | None) -> str:
    return text if width is None or len(text) <= width else text[:width - 1] + "…"


def call_text(call: dict, width: int | None = None) -> str:
    """`Read(file_path="a.py")`: a call on one line, values as JSON, each cut to `width` chars."""
    args = ", ".join(f"{k}={_cut(json.dumps(v, ensure_ascii=False), width)}"
                     for k, v in (call.get("args") or {}).items())
    error = f"  [{call['error']}]" if call.get("error") else ""
    return f"{call.get('name') or '?'}({args}){error}"


def message_text(message: dict, width: int | None = None) -> str:
    """A message as text: its prose, then one `→ call` line per tool call."""
    parts = [message.get("content") or ""]
    parts += [f"→ {call_text(c, width)}" for c in message.get("tool_calls") or []]
    return "\n".join(p for p in parts if p)


REFUSED = "the user refused this call"  # every refusal result starts with this


def refused(reason: str = "") -> str:
    """The tool result for a call the user said no to (the agent records it, the factory writes it)."""
    reason = " ".join(reason.split())
    return f"{REFUSED}: {reason}" if reason else REFUSED


def hash_unit(*parts) -> float:
    """A stable number in [0, 1) from the parts (unlike hash(), the same in every process)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
