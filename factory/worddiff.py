"""Word-level diff of two texts for the pair view: <del> marks words only the rejected side
has, <ins> words only the chosen side has (difflib on words, whitespace kept)."""

import difflib
import re

from markupsafe import Markup, escape

_WORDS = re.compile(r"\s+|[^\s]+")


def word_diff(rejected: str, chosen: str) -> tuple[Markup, Markup]:
    a, b = _WORDS.findall(rejected), _WORDS.findall(chosen)
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        old, new = escape("".join(a[i1:i2])), escape("".join(b[j1:j2]))
        if op == "equal":
            left.append(old)
            right.append(new)
            continue
        if old:
            left.append(Markup(f"<del>{old}</del>"))
        if new:
            right.append(Markup(f"<ins>{new}</ins>"))
    return Markup("").join(left), Markup("").join(right)
