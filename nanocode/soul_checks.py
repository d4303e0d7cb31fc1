"""The SOUL's rules: what a SOUL's front matter may declare, each rule's check on assistant
text, and the fix a program can make for it.

RULES is the one registry: rule name -> Rule (its parameters and their types, which texts it
applies to, its check, its fix where one exists, the line that says it in words). A SOUL
declares the rules it wants under `rules:` with their parameters; `declare_rules` validates
them against RULES (nanocode.spec.load_soul names the file), and everything downstream (the
factory's `soul_rules` critic and `rules` reviser, `factory check`, the judge prompt through
`rule.says`, `evals soul`) iterates over the declared rules. A new rule is one entry here.

All checks look at prose only: fenced code blocks, lines indented by 4+ spaces (pasted tool
output), inline `code` spans and URLs are removed first (the fixes leave them as they are).

The lowercase heuristic flags a word in prose whose first letter is uppercase, unless it is
  - an acronym: all capitals, 2+ letters, optional plural s (HTTP, JSON, APIs),
  - an identifier: has `_`, a digit or an uppercase letter after the first (CamelCase, GitHub),
  - path-like: contains `/`, `\\`, `@`, or a dot between word characters (src/Main.java, README.md),
  - in the rule's `proper_nouns`.
Sentence starts get no pass, and neither does "I". Sentence case is the mirror image: the first
word of each sentence (after .!? and a space, a blank line, or a list marker) starts with a
capital unless it is code, a number or an identifier, and "i" is written "I".
"""

import re
from dataclasses import dataclass, field
from typing import Callable

REQUIRED = object()  # a parameter without a default


@dataclass(frozen=True)
class Check:
    rule: str    # the rule's name in the front matter
    ok: bool
    detail: str  # what failed (or what was measured), one line


# ------------------------------------------------------------------------------ prose

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,}).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.S | re.M)
_INDENTED = re.compile(r"^(?: {4,}|\t).*$", re.M)
_INLINE = re.compile(r"(`+).+?\1", re.S)
_URL = re.compile(r"\b(?:https?|file)://\S+")
_PATHLIKE = re.compile(r"[/\\@]|\w\.\w")
_PUNCT = "\"'`.,;:!?()[]{}<>*_~#|=+&%$^“”‘’«»…–—-"
_PROTECTED = (_FENCE, _INDENTED, _INLINE, _URL)  # what strip_code removes, in its order


def strip_code(text: str, inline: bool = True) -> str:
    """The prose of a reply: code blocks, pasted output and URLs removed (and inline code)."""
    text = _INDENTED.sub("", _FENCE.sub("", text))
    if inline:
        text = _INLINE.sub(" ", text)
    return _URL.sub(" ", text)


def code_spans(text: str) -> list[tuple[int, int]]:
    """Where the text is not prose: the spans strip_code removes, sorted."""
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
    for a, b in code_spans(text):
        if a >= at:
            out += [fn(text[at:a]), text[a:b]]
            at = b
    return "".join(out) + fn(text[at:])


def _normal(text: str) -> str:
    """Lowercase, straight apostrophes, single spaces: how phrases are matched."""
    return " ".join(text.replace("’", "'").replace("‘", "'").lower().split())


def _has(phrase: str, text: str, at_start: bool = False) -> bool:
    head = r"^[\W_]*" if at_start else r"(?<!\w)"
    return re.search(head + re.escape(_normal(phrase)) + r"(?!\w)", text) is not None


def _words(text: str) -> int:
    return len(re.findall(r"\w+(?:['’]\w+)*", text))


def _more(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


# ------------------------------------------------------------------------------ case

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


def _lowercase(text: str, p: dict) -> str:
    def fix(m):
        token = m.group()
        for word in capitalized_words(token, p["proper_nouns"]):
            token = token.replace(word, word[0].lower() + word[1:], 1)
        return token
    return map_prose(text, lambda prose: re.sub(r"\S+", fix, prose))


def _check_lowercase(text: str, p: dict) -> tuple[bool, str]:
    bad = capitalized_words(strip_code(text), p["proper_nouns"])
    return not bad, f"capitalized: {_more(bad)}" if bad else "prose is lowercase"


# a sentence starts at the top, after .!? (and closing quotes) and a space, after a blank line,
# or after a list marker or heading mark at the start of a line
_STARTS = re.compile(r"\A|(?<=[.!?])[\"')\]’”]*[ \t\n]+|\n[ \t]*\n|^[ \t]*(?:[-*+>]|\d+[.)]|#{1,6})[ \t]+", re.M)
_ABBREVIATION = re.compile(r"(?<!\w)(?:e\.g|i\.e|vs|cf)\.[\"')\]’”]*[ \t\n]+\Z", re.I)
_LOWER_I = re.compile(r"(?<![\w'’./\\-])i(?=(?:['’](?:m|d|ll|ve))?(?![\w'’./\\-]))")


def _masked(text: str) -> str:
    """text with code blocks and pasted output blanked (they end a paragraph) and inline code and
    URLs turned into 0s (a word a sentence may start with): same length, same newlines."""
    for rx, fill in zip(_PROTECTED, "  00"):  # fence, indented: blanks; inline code, URL: 0s
        text = rx.sub(lambda m: re.sub(r"[^\n]", fill, m.group()), text)
    return text


def sentence_case_slips(text: str) -> list[tuple[int, str]]:
    """(index, word) of each prose word sentence case wants capitalized: a sentence's first word
    that starts with a lowercase letter (not code, a number or an identifier), and every "i"."""
    masked, slips = _masked(text), []
    for m in _STARTS.finditer(masked):
        if _ABBREVIATION.search(masked[max(0, m.start() - 8):m.end()]):
            continue  # "e.g. the" goes on in the same sentence
        word = re.match(r"\s*[\"'(\[*_“‘]*(\S*)", masked[m.end():])
        token, at = word[1], m.end() + word.start(1)
        if token[:1].islower() and not (_PATHLIKE.search(token) or "_" in token
                                        or any(c.isdigit() or c.isupper() for c in token)):
            slips.append((at, token.rstrip(_PUNCT)))
    slips += [(m.start(), "i") for m in _LOWER_I.finditer(masked)]
    return sorted(dict(slips).items())  # one slip a place: "i'm" may start a sentence


def _check_sentence_case(text: str, p: dict) -> tuple[bool, str]:
    bad = [word for _, word in sentence_case_slips(text)]
    return not bad, f"not capitalized: {_more(bad)}" if bad else "prose is in sentence case"


def _sentence_case(text: str, p: dict) -> str:
    for at, _ in sentence_case_slips(text):
        text = text[:at] + text[at].upper() + text[at + 1:]
    return text


# ------------------------------------------------------------------------------ phrases

def _check_openers(text: str, p: dict) -> tuple[bool, str]:
    hit = [x for x in p["phrases"] if _has(x, _normal(strip_code(text)), at_start=True)]
    return not hit, f"opens with {hit[0]!r}" if hit else "no banned opener"


def _drop_openers(text: str, p: dict) -> str:
    for _ in range(3):  # "Sure! Certainly, ..." has more than one
        for phrase in p["phrases"]:
            m = re.match(r"[\W_]*" + re.escape(phrase).replace("\\ ", r"\s+") + r"(?!\w)[\s,.!:;—–-]*", text, re.I)
            if m:
                text = text[m.end():]
    return text


def _phrases_in(text: str, phrases) -> list[str]:
    norm = _normal(strip_code(text))
    return [x for x in phrases if _has(x, norm)]


def _check_phrases(text: str, p: dict) -> tuple[bool, str]:
    hit = _phrases_in(text, p["phrases"])
    return not hit, f"contains {', '.join(map(repr, hit))}" if hit else "no banned phrase"


def _drop_phrases(text: str, p: dict) -> str:
    """Drop each sentence holding a banned phrase (sentences end at .!? or a blank line, outside code)."""
    spans, pieces, at = code_spans(text), [], 0
    for m in re.finditer(r"(?<=[.!?])\s+|\n\s*\n", text):
        if not any(a <= m.start() < b for a, b in spans):
            pieces.append((text[at:m.start()], m.group()))
            at = m.end()
    pieces.append((text[at:], ""))
    return "".join(s + sep for s, sep in pieces if not _phrases_in(s, p["phrases"]))


# ------------------------------------------------------------------------------ length

def _check_reply_words(text: str, p: dict) -> tuple[bool, str]:
    n = _words(strip_code(text, inline=False))  # inline code counts as words, blocks don't
    return n <= p["limit"], f"{n} prose words (limit {p['limit']})"


def _check_think_words(text: str, p: dict) -> tuple[bool, str]:
    n = _words(strip_code(text, inline=False))
    return 1 <= n <= p["limit"], f"{n} words before the tool call (want 1..{p['limit']})"


def _first_words(text: str, p: dict) -> str:
    """Over the limit, plain prose keeps its leading sentences that fit (at least part of one);
    text with code in it stays whole."""
    limit = p["limit"]
    if strip_code(text) != text or len(text.split()) <= limit:
        return text
    out = []
    for s in re.split(r"(?<=[.!?])\s+", text.strip()):
        if len(" ".join(out + [s]).split()) > limit:
            break
        out.append(s)
    return " ".join(out) or " ".join(text.split()[:limit])


# ------------------------------------------------------------------------------ the registry

PARAM_TYPES = {"phrases": "a list of non-empty strings", "count": "a positive integer"}


def _valid(kind: str, value) -> bool:
    if kind == "count":
        return type(value) is int and value >= 1
    return isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)


@dataclass(frozen=True)
class Rule:
    params: dict                # parameter -> (type: a PARAM_TYPES key, default or REQUIRED)
    applies: str                # "text": all assistant text; "reply": final replies; "thinking": before a call
    check: Callable             # (text, params) -> (ok, detail)
    says: str                   # the rule in words, formatted with its params (judge prompt, `factory check`)
    fix: Callable | None = None  # (text, params) -> text: what the `rules` reviser does about it
    excludes: tuple = ()        # rules a SOUL cannot declare beside this one


# in the order the reviser applies the fixes: lowercase before the openers go is the same as
# after; sentence case must come after them (the word after a dropped opener starts a sentence)
RULES = {
    "lowercase_prose": Rule({"proper_nouns": ("phrases", ())}, "text", _check_lowercase,
                            'prose is lowercase, "i" included; code, paths, identifiers, acronyms and '
                            "these names keep their case: {proper_nouns}", _lowercase, ("sentence_case",)),
    "banned_openers": Rule({"phrases": ("phrases", REQUIRED)}, "text", _check_openers,
                           "no reply or remark starts with: {phrases}", _drop_openers),
    "banned_phrases": Rule({"phrases": ("phrases", REQUIRED)}, "text", _check_phrases,
                           "these phrases appear nowhere in the prose: {phrases}", _drop_phrases),
    "sentence_case": Rule({}, "text", _check_sentence_case,
                          'prose is in sentence case: every sentence starts with a capital letter and "I" '
                          "is a capital; code, paths and identifiers keep their own case", _sentence_case,
                          ("lowercase_prose",)),
    "max_reply_words": Rule({"limit": ("count", REQUIRED)}, "reply", _check_reply_words,
                            "a final reply has at most {limit} words of prose (code blocks don't count)",
                            _first_words),
    "max_think_words": Rule({"limit": ("count", REQUIRED)}, "thinking", _check_think_words,
                            "before each tool call the assistant writes 1 to {limit} words of thinking",
                            _first_words),
}


@dataclass(frozen=True)
class Declared:
    """One rule as a SOUL declares it: its name and its parameters (defaults filled in)."""
    name: str
    params: dict = field(default_factory=dict)

    @property
    def rule(self) -> Rule:
        return RULES[self.name]

    @property
    def says(self) -> str:
        return self.rule.says.format(**{k: (", ".join(v) or "none") if isinstance(v, tuple) else v
                                        for k, v in self.params.items()})

    @property
    def brief(self) -> str:
        """The rule and its parameters in a few words (`factory check`)."""
        shown = [f"{len(v)} {k}" if isinstance(v, tuple) else f"{k} {v}" for k, v in self.params.items()]
        return self.name + (f" ({', '.join(shown)})" if shown else "")


@dataclass(frozen=True)
class SoulRules:
    """The rules a SOUL declares, in RULES order (the order they check and fix in)."""
    declared: tuple[Declared, ...] = ()

    def __iter__(self):
        return iter(self.declared)

    def get(self, name: str) -> dict | None:
        """The parameters of a declared rule, or None when the SOUL does not declare it."""
        return next((d.params for d in self.declared if d.name == name), None)

    def names(self) -> list[str]:
        return [d.name for d in self.declared]

    def applying(self, kind: str) -> list[Declared]:
        """The rules for one kind of assistant text: "text" (any), "reply" or "thinking"."""
        return [d for d in self.declared if d.rule.applies in ("text", kind)]


def declare_rules(value) -> SoulRules:
    """Validate a front matter's `rules:` mapping against RULES; ValueError of one line naming
    the rule and the key. A rule's value is a mapping of its parameters; a rule with one parameter
    may be given that parameter's value alone, and one whose parameters all have defaults `true`."""
    if not isinstance(value, dict):
        raise ValueError("'rules' must be a mapping of rule name -> its parameters")
    if unknown := [str(k) for k in value if k not in RULES]:
        raise ValueError(f"unknown rule(s) under 'rules': {', '.join(unknown)} (known: {', '.join(RULES)})")
    declared = []
    for name, rule in RULES.items():
        if name not in value:
            continue
        given = value[name]
        if given is None or given is False:
            raise ValueError(f"rule '{name}': {given!r} does not switch a rule off; leave the rule out")
        if given is True:
            given = {}
        elif not isinstance(given, dict):
            if len(rule.params) != 1:
                want = f"a mapping of its parameters ({', '.join(rule.params)})" if rule.params else "true"
                raise ValueError(f"rule '{name}' takes {want}, got {given!r}")
            given = {next(iter(rule.params)): given}
        if unknown := [str(k) for k in given if k not in rule.params]:
            raise ValueError(f"rule '{name}': unknown parameter(s) {', '.join(unknown)} "
                             f"(its parameters: {', '.join(rule.params) or 'none'})")
        params = {}
        for key, (kind, default) in rule.params.items():
            if key not in given and default is REQUIRED:
                raise ValueError(f"rule '{name}' needs its parameter '{key}' ({PARAM_TYPES[kind]})")
            v = given.get(key, default)
            if key in given and not _valid(kind, v):
                raise ValueError(f"rule '{name}': '{key}' must be {PARAM_TYPES[kind]}, got {v!r}")
            params[key] = tuple(v) if isinstance(v, list) else v
        declared.append(Declared(name, params))
    names = [d.name for d in declared]
    if clash := next(((a, b) for a in names for b in RULES[a].excludes if b in names), None):
        raise ValueError(f"rules '{clash[0]}' and '{clash[1]}' contradict each other: declare one")
    return SoulRules(tuple(declared))


# ------------------------------------------------------------------------------ degenerate

# the SOUL's language is English (both shipped SOULs): common words, function words first, then
# the words coding replies are made of; a reply in English has some of them in any sentence
ENGLISH = frozenset("""
a about after again all also am an and any are as at be because been before being both but by
can could did do does doing done down each even every for from had has have he her here him his
how i if in into is it its just let like may me might more most much must my no not now of off
on once one only or other our out over same she should so some still such than that the their
them then there these they this those through to too two under up us very was way we well were
what when where which while who why will with would yes yet you your
add added bug call change changed check code error file files find fix fixed function input
issue line lines look looking make method need new next number read reading return returns run
runs see test tests there's it's i'm i'll let's that's don't doesn't isn't use used value
values want work works write wrong
""".split())


def degenerate(text: str) -> str | None:
    """Why a message's text is not language at all, or None when it is. The SOUL's rules are
    written for sentences and noise passes them (no capitals, no banned phrase, few words), so
    this comes first. On the prose (code and pasted output removed; code-only text is fine):
      - no words: no letters in the whole text,
      - broken text: a byte sequence that is not UTF-8 (U+FFFD, what decoding a token run cut
        mid-character gives) or a control character other than tab and newline,
      - mostly symbols: under half of the prose's non-space characters are letters (`, 0, 0, 0`),
      - a repeated token: 4+ tokens and one of them is half of them, or 12+ tokens with under a
        quarter distinct (`the the the`, `a b a b a b`),
      - not English: under half its letters are a-z, or 4+ words of which under 1 in 8 is one
        of the common English words in ENGLISH.
    """
    if not re.search(r"[^\W\d_]", text):
        return "no words"
    if re.search("[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text):
        return "broken text (undecodable bytes or control characters)"
    prose = strip_code(text)
    chars = [c for c in prose if not c.isspace()]
    if not chars:
        return None  # only code (or a path in backticks): nothing to judge the language of
    letters = [c for c in chars if c.isalpha()]
    if len(letters) < len(chars) / 2:
        return "mostly punctuation or numbers"
    tokens = [t.strip(_PUNCT).lower() for t in prose.split()]
    tokens = [t for t in tokens if t]
    top = max(map(tokens.count, set(tokens)), default=0)
    if (len(tokens) >= 4 and top >= len(tokens) / 2) or (len(tokens) >= 12 and len(set(tokens)) < len(tokens) / 4):
        return "a repeated token"
    if sum("a" <= c.lower() <= "z" for c in letters) < len(letters) / 2:
        return "not English (another script)"
    words = re.findall(r"[a-z]+(?:'[a-z]+)?", prose.lower().replace("’", "'"))
    if len(words) >= 4 and sum(w in ENGLISH for w in words) < len(words) / 8:
        return "not English (few common English words)"
    return None


# ------------------------------------------------------------------------------ checking

def check(text: str, rules: SoulRules, kind: str = "text") -> list[Check]:
    """The declared rules for this kind of text ("text": only those for any text), in order."""
    return [Check(d.name, *d.rule.check(text, d.params)) for d in rules.applying(kind)]


def check_reply(text: str, rules: SoulRules) -> list[Check]:
    """A final reply (no tool calls)."""
    return check(text, rules, "reply")


def check_message(message: dict, rules: SoulRules) -> list[Check]:
    """An assistant message from a record: with tool calls its text is the thinking before
    them; without, it is a final reply."""
    return check(message.get("content") or "", rules, "thinking" if message.get("tool_calls") else "reply")
