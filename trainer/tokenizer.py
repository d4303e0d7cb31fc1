"""GPT-4-style byte-level BPE: trained with rustbpe, run with tiktoken.

Byte-level means every string encodes (no unknown token). The special tokens of the template
are appended after the last merge; `encode` never produces them from text.

On disk (a directory, saved beside checkpoints):
    tokenizer.tiktoken   tiktoken's own rank file (base64 token, rank), read by tiktoken.load
    tokenizer.json       split pattern, special tokens and their ids, how it was trained
"""

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import rustbpe
import tiktoken
from tiktoken.load import load_tiktoken_bpe

from nanocode.common import InputError, atomic_path, write_text_atomic
from nanocode.record import SPECIAL_TOKENS

# GPT-4's split regex with digit runs of 1-2 instead of 1-3 (nanochat measured it slightly better).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s+"""
)
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


class Tokenizer:
    def __init__(self, ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN, info: dict | None = None):
        specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.enc = tiktoken.Encoding("nanocode", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
        self.ranks, self.pattern, self.specials = ranks, pattern, specials
        self.info = info or {}  # how it was trained (corpus, chars, code ratio, seconds), kept in tokenizer.json

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, pattern: str = SPLIT_PATTERN) -> "Tokenizer":
        if vocab_size < MIN_VOCAB:
            raise InputError(f"vocab size {vocab_size} is too small: need at least {MIN_VOCAB} "
                             f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
        seen = 0

        def counted():
            nonlocal seen
            for text in texts:
                seen += len(text)
                yield text

        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(counted(), vocab_size - len(SPECIAL_TOKENS), pattern=pattern)
        if seen == 0:
            raise InputError("the training corpus is empty")
        return cls(dict(bpe.get_mergeable_ranks()), pattern, info={"chars": seen})

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        with atomic_path(directory / "tokenizer.tiktoken") as tmp:
            tmp.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n"
                                   for token, rank in sorted(self.ranks.items(), key=lambda kv: kv[1])))
        meta = {"vocab_size": self.vocab_size, "pattern": self.pattern, "special_tokens": self.specials,
                "info": self.info}
        write_text_atomic(directory / "tokenizer.json", json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Tokenizer":
        directory = Path(directory)
        rank_file, meta_file = directory / "tokenizer.tiktoken", directory / "tokenizer.json"
        for f in (rank_file, meta_file):
            if not f.is_file():
                raise InputError(f"no tokenizer at {directory}: {f.name} is missing "
                                 "(train one with `trainer tokenizer train`)")
        try:
            meta = json.loads(meta_file.read_text())
            ranks = load_tiktoken_bpe(str(rank_file))
        except (ValueError, KeyError) as e:
            raise InputError(f"corrupt tokenizer file in {directory}: {e}") from None
        tok = cls(ranks, meta["pattern"], meta.get("info"))
        if tok.specials != meta["special_tokens"]:
            raise InputError(f"{meta_file}: special tokens differ from this version's template")
        return tok

    # ------------------------------------------------------------------ use

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def fingerprint(self) -> str:
        """Short sha256 of pattern, specials and merges: what checkpoints and loader states must match."""
        h = hashlib.sha256(json.dumps([self.pattern, self.specials]).encode())
        for token, _ in sorted(self.ranks.items(), key=lambda kv: kv[1]):
            h.update(token + b"\0")
        return h.hexdigest()[:16]

    def special_id(self, name: str) -> int:
        return self.specials[name]

    @property
    def bos_id(self) -> int:
        return self.specials["<|bos|>"]

    def encode(self, text: str) -> list[int]:
        """Ordinary text only: a special token's spelling stays text."""
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids), errors="replace")

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (0 for specials): turns nats/token into bits/byte."""
        out = np.zeros(self.vocab_size, dtype=np.int32)
        out[list(self.ranks.values())] = [len(token) for token in self.ranks]
        return out
