"""Dedup and decontamination of seeds, before any conversion or model call.

`screen(seeds)` marks seeds to drop (`seed["skip"] = [stage, reason]`; the build turns them into
rejects with that stage and reason) and returns the counts for the build summary:

  decontaminate  the prompt overlaps a held-out HumanEval problem (factory.heldout.held_out(),
                 the agentic eval's set): at least OVERLAP of the smaller side's word 8-grams
                 are shared with that problem's prompt (signature + docstring)
  dedup          the prompt repeats an earlier one exactly (after case and whitespace folding),
                 or nearly: MinHash over word 3-gram shingles, LSH banding for candidates,
                 kept only if the estimated Jaccard similarity is at least NEAR

The prompt is what the model is given: the instruction plus the starting files. The first row
of a duplicate group wins, in source order (list the source you trust most first in a `mix`).
The MinHash is hand-rolled on numpy (multiply-shift hashing): no listed dependency has one.
"""

import hashlib
import re
from collections import Counter, defaultdict
from functools import lru_cache

import numpy as np

from factory.heldout import held_out

SHINGLE = 3       # words per shingle: short prompts need short shingles (one changed word
                  # spoils SHINGLE of them)
PERMS = 128       # MinHash permutations
BANDS = 32        # LSH bands of PERMS // BANDS rows: candidates from about Jaccard 0.5 up
NEAR = 0.75       # estimated Jaccard at or above which two prompts are near-duplicates
NGRAM = 8         # words per n-gram for decontamination
OVERLAP = 0.5     # share of shared 8-grams (of the smaller side) that marks contamination

_WORD = re.compile(r"\w+")
_rng = np.random.default_rng(20261130)  # fixed: the same seeds always screen the same way
_A = _rng.integers(1, 2**63, PERMS, dtype=np.uint64) | np.uint64(1)  # odd multipliers
_B = _rng.integers(0, 2**63, PERMS, dtype=np.uint64)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@lru_cache(maxsize=2**20)  # a word recurs across prompts: hash it once
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def signature(text: str) -> np.ndarray:
    """MinHash signature (PERMS uint32 values) of the text's word shingles."""
    w = np.array([_word_hash(x) for x in words(text)] or [0], dtype=np.uint64)
    k = min(SHINGLE, len(w))
    shingles = np.zeros(len(w) - k + 1, dtype=np.uint64)
    for j in range(k):  # a shingle's hash: a polynomial in its word hashes (wrapping uint64)
        shingles = shingles * np.uint64(1099511628211) + w[j:len(w) - k + 1 + j]
    shingles = np.unique(shingles)
    with np.errstate(over="ignore"):  # multiply-shift: ((a*x + b) mod 2^64) >> 32
        hashed = (_A[:, None] * shingles[None, :] + _B[:, None]) >> np.uint64(32)
    return hashed.min(axis=1).astype(np.uint32)


def _ngrams(text: str) -> set:
    w = words(text)
    if len(w) < NGRAM:
        return {tuple(w)} if w else set()
    return {tuple(w[i:i + NGRAM]) for i in range(len(w) - NGRAM + 1)}


class Contamination:
    """An index of the held-out problems' n-grams; `check(text)` names the one a text overlaps."""

    def __init__(self):
        self.grams = {p["task_id"]: _ngrams(p["prompt"]) for p in held_out()}
        self.index = defaultdict(set)
        for tid, grams in self.grams.items():
            for g in grams:
                self.index[g].add(tid)

    def check(self, text: str) -> tuple[str, float] | None:
        grams = _ngrams(text)
        hits = Counter(tid for g in grams for tid in self.index.get(g, ()))
        best = max(((n / max(1, min(len(grams), len(self.grams[tid]))), tid) for tid, n in hits.items()),
                   default=None)
        return (best[1], best[0]) if best and best[0] >= OVERLAP else None


def screen(seeds: list[dict], contamination: Contamination | None = None, dedup: bool = True) -> dict:
    """Mark contaminated and (with `dedup`) duplicate seeds, in place; returns the counts."""
    contamination = contamination or Contamination()
    counts = {"decontaminated": 0, "exact duplicates": 0, "near duplicates": 0}
    live = [s for s in seeds if not s.get("skip")]
    for seed in live:
        text = seed["instruction"] + "\n" + seed["answer"] + "\n" + "\n".join(seed["workspace"].values())
        if found := contamination.check(text):
            tid, share = found
            seed["skip"] = ["decontaminate", f"overlaps held-out {tid} ({share:.0%} of {NGRAM}-word n-grams)"]
            counts["decontaminated"] += 1
    if not dedup:
        return {"decontaminated": counts["decontaminated"]}
    exact, buckets, sigs = {}, defaultdict(list), {}
    rows = PERMS // BANDS
    for seed in (s for s in live if not s.get("skip")):
        text = "\n".join([seed["instruction"], *(f"{p}\n{t}" for p, t in sorted(seed["workspace"].items()))])
        key = hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()
        if key in exact:
            seed["skip"] = ["dedup", f"exact duplicate of {exact[key]}"]
            counts["exact duplicates"] += 1
            continue
        exact[key] = seed["input_id"]
        sig = signature(text)
        bands = [(b, sig[b * rows:(b + 1) * rows].tobytes()) for b in range(BANDS)]
        candidates = dict.fromkeys(other for band in bands for other in buckets.get(band, ()))
        match = max(((float(np.mean(sigs[o] == sig)), o) for o in candidates), default=(0.0, None))
        if match[0] >= NEAR:
            seed["skip"] = ["dedup", f"near duplicate of {match[1]} (estimated Jaccard {match[0]:.2f})"]
            counts["near duplicates"] += 1
            continue
        sigs[seed["input_id"]] = sig
        for band in bands:
            buckets[band].append(seed["input_id"])
    return counts
