"""The SOUL's programmatic checks (its front matter rules) on assistant replies.

Shared by `evals soul-check`, SOUL-adherence evals and the factory's critics, so a reply is
judged the same way everywhere. All checks look at prose only: fenced code blocks, lines
indented by 4+ spaces (pasted tool output), inline `code` spans and URLs are removed first.

The lowercase heuristic flags a word in prose whose first letter is uppercase, unless it is
  - an acronym: all capitals, 2+ letters, optional plural s (HTTP, JSON, APIs),
  - an identifier: has `_`, a digit or an uppercase letter after the first (CamelCase, GitHub),
  - path-like: contains `/`, `\\`, `@`, or a dot between word characters (src/Main.java, README.md),
  - in the SOUL's `proper_nouns`.
Sentence starts get no pass (the SOUL's prose is lowercase throughout), and neither does "I":
the SOUL writes "i". Literal text belongs in backticks, which the check skips.
"""

import re
from dataclasses import dataclass

from nanocode.spec import SoulRules


@dataclass(frozen=True)
class Check:
    rule: str    # the front matter key the check comes from
    ok: bool
    detail: str  # what failed (or what was measured), one line


_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,}).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.S | re.M)
_INDENTED = re.compile(r"^(?: {4,}|\t).*$", re.M)
_INLINE = re.compile(r"(`+).+?\1", re.S)
_URL = re.compile(r"\b(?:https?|file)://\S+")
_PATHLIKE = re.compile(r"[/\\@]|\w\.\w")
_PUNCT = "\"'`.,;:!?()[]{}<>*_~#|=+&%$^“”‘’«»…–—-"


def strip_code(text: str, inline: bool = True) -> str:
    """The prose of a reply: code blocks, pasted output and URLs removed (and inline code)."""
    text = _INDENTED.sub("", _FENCE.sub("", text))
    if inline:
        text = _INLINE.sub(" ", text)
    return _URL.sub(" ", text)


def _normal(text: str) -> str:
    """Lowercase, straight apostrophes, single spaces: how phrases are matched."""
    return " ".join(text.replace("’", "'").replace("‘", "'").lower().split())


def _has(phrase: str, text: str, at_start: bool = False) -> bool:
    head = r"^[\W_]*" if at_start else r"(?<!\w)"
    return re.search(head + re.escape(_normal(phrase)) + r"(?!\w)", text) is not None


def capitalized_words(prose: str, proper_nouns=()) -> list[str]:
    """Words the lowercase rule flags, in order (see the module docstring)."""
    allowed, flagged = set(proper_nouns), []
    for token in prose.split():
        if _PATHLIKE.search(token):
            continue
        for word in re.split(r"[-–—]", token):
            word = word.strip(_PUNCT)
            base = re.split(r"['’]", word)[0]  # Python's -> Python
            if not base or not base[0].isupper() or base in allowed or word in allowed:
                continue
            acronym = len(base) >= 2 and (base.isupper() or (base.endswith("s") and base[:-1].isupper()))
            identifier = "_" in base or any(c.isdigit() or c.isupper() for c in base[1:])
            if not (acronym or identifier):
                flagged.append(word)
    return flagged


def _words(text: str) -> int:
    return len(re.findall(r"\w+(?:['’]\w+)*", text))


def check_text(text: str, rules: SoulRules) -> list[Check]:
    """Checks that apply to any assistant text: lowercase, banned openers and phrases."""
    prose = strip_code(text)
    norm = _normal(prose)
    out = []
    if rules.lowercase_prose:
        bad = capitalized_words(prose, rules.proper_nouns)
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        out.append(Check("lowercase_prose", not bad,
                         f"capitalized: {', '.join(bad[:5])}{more}" if bad else "prose is lowercase"))
    if rules.banned_openers:
        hit = [p for p in rules.banned_openers if _has(p, norm, at_start=True)]
        out.append(Check("banned_openers", not hit,
                         f"opens with {hit[0]!r}" if hit else "no banned opener"))
    if rules.banned_phrases:
        hit = [p for p in rules.banned_phrases if _has(p, norm)]
        out.append(Check("banned_phrases", not hit,
                         f"contains {', '.join(map(repr, hit))}" if hit else "no banned phrase"))
    return out


def check_reply(text: str, rules: SoulRules) -> list[Check]:
    """A final reply (no tool calls): the text checks plus the length limit."""
    out = check_text(text, rules)
    if rules.max_reply_words:
        n = _words(strip_code(text, inline=False))  # inline code counts as words, blocks don't
        out.append(Check("max_reply_words", n <= rules.max_reply_words,
                         f"{n} prose words (limit {rules.max_reply_words})"))
    return out


def check_message(message: dict, rules: SoulRules) -> list[Check]:
    """An assistant message from a record: with tool calls its text is the thinking before
    them (1..max_think_words words); without, it is a final reply."""
    text = message.get("content") or ""
    if not message.get("tool_calls"):
        return check_reply(text, rules)
    out = check_text(text, rules)
    if rules.max_think_words:
        n = _words(strip_code(text, inline=False))
        out.append(Check("max_think_words", 1 <= n <= rules.max_think_words,
                         f"{n} words before the tool call (want 1..{rules.max_think_words})"))
    return out
