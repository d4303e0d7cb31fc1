"""The `rules` reviser's repairs: what a program can fix in a rollout without a model.

Every assistant message gets the fix of each rule the SOUL declares for its kind of text
(nanocode.soul_checks.RULES: thinking before a tool call, or a final reply), in the registry's
order: the default SOUL's cut openers ("Certainly!"), drop the sentences holding a banned phrase,
lowercase the prose word by word, keep the first sentences under a word limit; another SOUL's
rules fix what they declare (sentence case capitalizes). Each fix is decided by the module that
checks the rule, so a fix can never disagree with its check; code, pasted output and URLs are
left as they are.
"""

import re

from nanocode.soul_checks import SoulRules


def fix_text(text: str, rules: SoulRules, kind: str = "reply") -> str:
    """text with the fixes of the declared rules for `kind` ("reply" or "thinking") applied."""
    for d in rules.applying(kind):
        if d.rule.fix is not None:
            text = re.sub(r"\n{3,}", "\n\n", d.rule.fix(text, d.params)).strip()
    return text


def fix_messages(messages: list[dict], rules: SoulRules, fallbacks: list[dict], spec) -> list[dict]:
    """Fix every assistant message; one left empty gets a plain line (a tool call keeps its
    one line of thinking; a final reply names the file the draft `fallbacks` edited)."""
    out = []
    for m in messages:
        if m["role"] == "assistant":
            kind = "thinking" if m.get("tool_calls") else "reply"
            text = fix_text(m.get("content") or "", rules, kind)
            if not text:
                text = fix_text(fallback_text(m, fallbacks, spec), rules, kind)
            m = {**m, "content": text}
        out.append(m)
    return out


_WHAT = {"search": "pattern", "list": "pattern", "shell": "command"}  # what a call is "on"; else its path


def fallback_text(message: dict, fallbacks: list[dict], spec) -> str:
    """A plain line for a message the fixes left empty, in the tool spec's own names."""
    if calls := message.get("tool_calls"):
        behaviour, args = spec.canonical(calls[0])
        what = args.get(_WHAT.get(behaviour, "path")) or ""
        return f"running `{calls[0]['name']}` on `{what}`" if what else f"running `{calls[0]['name']}`"
    edits = [args["path"] for m in fallbacks for c in m.get("tool_calls") or []
             for behaviour, args in [spec.canonical(c)] if behaviour in ("edit", "write") and args.get("path")]
    return f"done, the change is in `{edits[-1]}`." if edits else "done."
