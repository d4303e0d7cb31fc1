"""The token template of docs/DESIGN.md: conversation records <-> token ids (+ loss mask).

    conversation := <|bos|> turn*
    user         := <|user_start|> TEXT <|user_end|>
    assistant    := <|assistant_start|> TEXT? tool_call* <|assistant_end|>
    tool_call    := <|tool_call_start|> NAME (<|tool_arg|> KEY <|tool_val|> VALUE)* <|tool_call_end|>
    tool         := <|tool_result_start|> TEXT <|tool_result_end|>

Text is encoded with the tokenizer's ordinary encoder, which never emits a special id, so a
user pasting `<|user_end|>` cannot inject structure. Everything is rendered verbatim (no
stripping), so code edits keep their indentation and trailing newlines. Only what the model
writes is ever parsed (`parse_assistant`), and that never raises: a malformed tool call comes
back as a call with an `error` the agent reports to the model.

`tok` is anything with `encode(text) -> ids` (ordinary text only), `decode(ids) -> str` and
`special_id(name) -> id`, i.e. `trainer.tokenizer.Tokenizer`.
"""

import itertools

from nanocode.record import (ARG, ASSISTANT_END, ASSISTANT_START, BOS, CALL_END, CALL_START, RESULT_END,
                             RESULT_START, SPECIAL_TOKENS, USER_END, USER_START, VAL, validate, value_text)


def render(conversation, tok) -> tuple[list[int], list[int]]:
    """Render a record (or its message list) to (ids, loss mask).

    The mask is 1 on what the model writes (after <|assistant_start|> up to and including
    <|assistant_end|>) and 0 on what the engine forces or the world says.
    """
    messages = conversation["messages"] if isinstance(conversation, dict) else conversation
    validate(messages)
    sid = tok.special_id
    ids, mask = [sid(BOS)], [0]

    def add(new_ids, trained):
        ids.extend(new_ids)
        mask.extend([int(trained)] * len(new_ids))

    system = ""
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "system":
            system = content + "\n\n"
        elif role == "user":
            add([sid(USER_START)] + tok.encode(system + content) + [sid(USER_END)], False)
            system = ""
        elif role == "tool":
            add(tool_result_ids(content, tok), False)
        else:
            add([sid(ASSISTANT_START)], False)
            body = tok.encode(content)
            for call in m.get("tool_calls") or []:
                body += [sid(CALL_START)] + tok.encode(call["name"])
                for key, value in call.get("args", {}).items():
                    body += [sid(ARG)] + tok.encode(key) + [sid(VAL)] + tok.encode(value_text(value))
                body.append(sid(CALL_END))
            add(body + [sid(ASSISTANT_END)], True)
    return ids, mask


def tool_result_ids(content: str, tok) -> list[int]:
    """One tool result as the engine forces it into the context."""
    return [tok.special_id(RESULT_START)] + tok.encode(content) + [tok.special_id(RESULT_END)]


def render_prompt(conversation, tok) -> list[int]:
    """Ids that prime the model to write the next assistant turn."""
    ids, _ = render(conversation, tok)
    return ids + [tok.special_id(ASSISTANT_START)]


# ----------------------------------------------------------------------------- parsing

def _segments(ids, tok):
    """Split ids into ('special', name) and ('text', str) pieces; text runs decode together."""
    names = {tok.special_id(name): name for name in SPECIAL_TOKENS}
    out = []
    for special, run in itertools.groupby(ids, key=lambda i: i in names):
        out += [("special", names[i]) for i in run] if special else [("text", tok.decode(list(run)))]
    return out


class _Reader:
    def __init__(self, segments):
        self.segs, self.pos = segments, 0

    def peek(self):
        return self.segs[self.pos] if self.pos < len(self.segs) else ("end", None)

    def next(self):
        seg = self.peek()
        self.pos += seg[0] != "end"
        return seg

    def text(self) -> str:
        return self.next()[1] if self.peek()[0] == "text" else ""

    def take(self, name) -> bool:
        if self.peek() == ("special", name):
            self.pos += 1
            return True
        return False


def _read_call(r: _Reader) -> dict:
    """After <|tool_call_start|>: NAME (ARG KEY VAL VALUE)* <|tool_call_end|>, leniently."""
    call = {"name": r.text(), "args": {}}
    errors = []
    if not call["name"]:
        errors.append("tool call has no name")
    while True:
        kind, value = r.peek()
        if (kind, value) == ("special", CALL_END):
            r.next()
            break
        if (kind, value) == ("special", ARG):
            r.next()
            key = r.text()
            if not r.take(VAL):
                errors.append(f"argument {key!r} has no <|tool_val|>")
                continue
            if key in call["args"]:
                errors.append(f"argument {key!r} given twice")
            call["args"][key] = r.text()
            continue
        if kind == "text":  # stray text inside a call
            r.next()
            errors.append(f"unexpected text in tool call: {value[:40]!r}")
            continue
        errors.append("tool call is not closed with <|tool_call_end|>")
        break  # another special token or the end: leave it for the caller
    if errors:
        call["error"] = "; ".join(errors)
    return call


def _read_assistant(r: _Reader) -> dict:
    """After <|assistant_start|>: TEXT? tool_call* up to <|assistant_end|> or anything else."""
    content, calls = "", []
    while True:
        kind, value = r.peek()
        if kind == "text":
            content += r.next()[1]
        elif value == CALL_START:
            r.next()
            calls.append(_read_call(r))
        elif value in (ARG, VAL, CALL_END):  # argument tokens outside a call
            r.next()
            calls.append({"name": "", "args": {}, "error": f"{value} outside a tool call"})
        else:
            r.take(ASSISTANT_END)
            break
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return message


def parse_assistant(ids, tok) -> dict:
    """Parse what the model generated after <|assistant_start|> into one assistant message.

    Never raises. Stops at <|assistant_end|> (or any token that cannot continue the turn).
    Malformed tool calls carry an `error` string; the agent answers them with that error.
    """
    return _read_assistant(_Reader(_segments(ids, tok)))
