"""Rule fixes: what a program can repair in a reply without a model, by the SOUL's own checks.

  - banned openers ("Certainly!", "Great question!") are cut from the start;
  - sentences holding a banned phrase ("let me know if...", "hope this helps") are dropped;
  - prose is lowercased word by word where nanocode.soul_checks flags a capital, so code,
    inline `code`, pasted output, URLs, paths, acronyms and proper nouns keep their case;
  - text over the word limits keeps its first sentences.
What counts as prose, a capital or a banned phrase is decided by nanocode.soul_checks itself,
so a fix can never disagree with the check it answers.
"""

import dataclasses
import re

from nanocode import soul_checks
from nanocode.soul_checks import capitalized_words, check_text, strip_code

# the spans soul_checks skips, in the order strip_code removes them
_PROTECTED = (soul_checks._FENCE, soul_checks._INDENTED, soul_checks._INLINE, soul_checks._URL)


def _spans(text: str) -> list[tuple[int, int]]:
    spans, masked = [], text
    for rx in _PROTECTED:
        found = [m.span() for m in rx.finditer(masked)]
        for a, b in found:  # blank out what is matched (newlines kept) so later patterns skip it
            masked = masked[:a] + re.sub(r"[^\n]", "\0", masked[a:b]) + masked[b:]
        spans += found
    return sorted(spans)


def map_prose(text: str, fn) -> str:
    """Apply fn to each stretch of prose in text, leaving code, output and URLs as they are."""
    out, at = [], 0
    for a, b in _spans(text):
        if a >= at:
            out += [fn(text[at:a]), text[a:b]]
            at = b
    return "".join(out) + fn(text[at:])


def lowercase(prose: str, proper_nouns=()) -> str:
    def fix(m):
        token = m.group()
        for word in capitalized_words(token, proper_nouns):
            token = token.replace(word, word[0].lower() + word[1:], 1)
        return token
    return re.sub(r"\S+", fix, prose)


def drop_banned(text: str, rules) -> str:
    """Drop each sentence holding a banned phrase (sentences end at .!? or a blank line,
    outside code)."""
    only_phrases = dataclasses.replace(rules, lowercase_prose=False, banned_openers=())
    spans, pieces, at = _spans(text), [], 0
    for m in re.finditer(r"(?<=[.!?])\s+|\n\s*\n", text):
        if not any(a <= m.start() < b for a, b in spans):
            pieces.append((text[at:m.start()], m.group()))
            at = m.end()
    pieces.append((text[at:], ""))
    return "".join(s + sep for s, sep in pieces if all(c.ok for c in check_text(s, only_phrases)))


def drop_opener(text: str, openers) -> str:
    for _ in range(3):  # "Sure! Certainly, ..." has more than one
        for phrase in openers:
            m = re.match(r"[\W_]*" + re.escape(phrase).replace("\\ ", r"\s+") + r"(?!\w)[\s,.!:;—–-]*", text, re.I)
            if m:
                text = text[m.end():]
    return text


def first_words(text: str, limit: int) -> str:
    """The leading sentences of prose-only text that fit in `limit` words (at least part of one)."""
    sentences, out = re.split(r"(?<=[.!?])\s+", text.strip()), []
    for s in sentences:
        if len(" ".join(out + [s]).split()) > limit:
            break
        out.append(s)
    return " ".join(out) or " ".join(text.split()[:limit])


def fix_text(text: str, rules, word_limit: int | None) -> str:
    text = drop_opener(text, rules.banned_openers)
    text = drop_banned(text, rules)
    if rules.lowercase_prose:
        text = map_prose(text, lambda p: lowercase(p, rules.proper_nouns))
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if word_limit and strip_code(text) == text and len(text.split()) > word_limit:
        text = first_words(text, word_limit)  # only plain prose is cut; code stays whole
    return text


def fix_messages(messages: list[dict], rules, fallbacks: list[dict]) -> list[dict]:
    """Fix every assistant message; one left empty gets a plain line (a tool call keeps its
    one line of thinking; a final reply names the file the draft `fallbacks` edited)."""
    out = []
    for m in messages:
        if m["role"] == "assistant":
            limit = rules.max_think_words if m.get("tool_calls") else rules.max_reply_words
            text = fix_text(m.get("content") or "", rules, limit)
            if not text:
                text = fix_text(fallback_text(m, fallbacks), rules, limit)
            m = {**m, "content": text}
        out.append(m)
    return out


def fallback_text(message: dict, fallbacks: list[dict]) -> str:
    if calls := message.get("tool_calls"):
        args = calls[0].get("args") or {}
        what = args.get("file_path") or args.get("pattern") or args.get("command") or ""
        return f"running `{calls[0]['name']}` on `{what}`" if what else f"running `{calls[0]['name']}`"
    edits = [c["args"].get("file_path") for m in fallbacks for c in m.get("tool_calls") or []
             if c.get("name") == "Edit" and c.get("args", {}).get("file_path")]
    return f"done, the change is in `{edits[-1]}`." if edits else "done."
