"""Pretraining batches: documents packed into rows, BOS-aligned best-fit (as nanochat packs).

Every document is tokenized with BOS in front. A row holds seq_len+1 tokens: we keep inserting the
largest buffered document that still fits whole; when none fits, the shortest one is cropped to
fill the row exactly and its tail is dropped. So every row starts with BOS, nothing is padded,
and every row holds at most one cropped document (its last).

Documents come from `corpus.MixedStream` (looping, new shuffle each epoch). A cropped tail's chars
are given back to the mix, so the code:prose ratio holds over the chars actually trained on.

Exact resume: `state()` is the stream's position plus the buffered docs as ids and token counts
(not tokens); a loader built from it re-reads those docs (tokenizing each only when it is
packed) and produces the very batches the first one would have. A fingerprint (corpus files,
tokenizer, seed, split) refuses a state from another setup.
"""

import hashlib
import itertools
import os
from pathlib import Path

import numpy as np

from nanocode.common import InputError
from trainer import corpus

STATE_VERSION = 1
STATE_KEYS = {"version", "fingerprint", "stream", "buffer", "batches", "trained"}
CHUNK_DOCS = 128  # docs per encode_batch call: enough for the threads, small enough to stay lazy


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class PackedLoader:
    def __init__(self, corpus_dir, tokenizer, batch_size: int, seq_len: int, *, split="train",
                 code_ratio=corpus.DEFAULT_RATIO, seed=0, buffer_docs=1000, state: dict | None = None,
                 loop: bool = True):
        if min(batch_size, seq_len, buffer_docs) < 1:
            raise InputError(f"batch size, seq len and buffer docs must be positive, "
                             f"not {batch_size}, {seq_len}, {buffer_docs}")
        corpus_dir = Path(corpus_dir)
        self.tok, self.bos = tokenizer, tokenizer.bos_id
        self.batch_size, self.seq_len, self.buffer_docs = batch_size, seq_len, buffer_docs
        if state is not None and not (isinstance(state, dict) and STATE_KEYS <= state.keys()):
            raise InputError(f"not a loader state: expected the keys {', '.join(sorted(STATE_KEYS))}")
        if state is not None and state["version"] != STATE_VERSION:
            raise InputError(f"loader state version {state['version']} is not {STATE_VERSION}")
        self.stream = corpus.MixedStream(corpus_dir, split, code_ratio, seed, loop, state and state["stream"])
        # the corpus by its shards' names and sizes (a stat each, no reads): a rebuilt corpus differs
        files = [f for k in corpus.KINDS for f in corpus.shard_files(corpus_dir, k, split)]
        self.fingerprint = {"corpus": _digest(*(f"{f.parent.name}/{f.name}:{f.stat().st_size}" for f in files)),
                            "tokenizer": tokenizer.fingerprint(), "seed": seed, "split": split}
        for key, value in (state or {}).get("fingerprint", {}).items():
            if self.fingerprint.get(key) != value:
                raise InputError(f"the loader state was saved with another {key} ({value!r}, this run "
                                 f"has {self.fingerprint.get(key)!r}): resume with the corpus, tokenizer "
                                 "and seed it was saved with")
        # the buffer, one entry per doc: its id, its tokens (its text, after a restore, until it is
        # packed: a restore reads but does not tokenize), its chars, its token count
        self.ids, self.docs, self.chars, self.lens = [], [], [], np.zeros(0, np.int64)
        self.batches = 0
        self.trained = {k: {"tokens": 0, "chars": 0} for k in corpus.KINDS}
        if state is not None:
            self.batches, self.trained = state["batches"], {k: dict(v) for k, v in state["trained"].items()}
            ids = [list(entry[:4]) for entry in state["buffer"]]
            self._add(ids, texts := self.stream.read(ids), texts, [entry[4] for entry in state["buffer"]])

    def _add(self, ids: list, texts: list[str], docs: list, lens: list[int]) -> None:
        self.ids += ids
        self.docs += docs
        self.chars += [len(t) for t in texts]
        self.lens = np.concatenate([self.lens, np.asarray(lens, np.int64)])

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        return [np.array([self.bos, *tokens], np.int32)
                for tokens in self.tok.encode_batch(texts, num_threads=min(8, os.cpu_count() or 1))]

    def _fill(self) -> None:
        """Top the buffer up to buffer_docs from the stream (it may end when not looping)."""
        while len(self.docs) < self.buffer_docs:
            chunk = [doc for _, doc in zip(range(min(CHUNK_DOCS, self.buffer_docs - len(self.docs))),
                                           self.stream)]
            if not chunk:
                return
            texts = [t for _, t in chunk]
            docs = self._encode(texts)
            self._add([i for i, _ in chunk], texts, docs, [len(d) for d in docs])

    def _pack(self, i: int, room: int) -> np.ndarray:
        """Take buffered doc i, cropped to `room` tokens; a cropped tail's chars go back to the mix."""
        kind, doc, chars, n = self.ids.pop(i)[0], self.docs.pop(i), self.chars.pop(i), int(self.lens[i])
        self.lens = np.delete(self.lens, i)
        if isinstance(doc, str):
            doc = self._encode([doc])[0]
            if len(doc) != n:
                raise InputError("a restored doc tokenizes differently: the tokenizer changed")
        lost = chars * max(n - room, 0) // n
        self.stream.uncount(kind, lost)
        self.trained[kind]["tokens"] += min(n, room)
        self.trained[kind]["chars"] += chars - lost
        return doc[:room]

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), int32 (batch_size, seq_len); StopIteration only when not looping."""
        self._fill()  # once a batch (one tokenizer call), and again only if the buffer runs dry
        width = self.seq_len + 1
        rows = np.empty((self.batch_size, width), np.int32)
        for r in range(self.batch_size):
            pos = 0
            while pos < width:
                if not self.docs:
                    self._fill()
                    if not self.docs:
                        raise StopIteration
                fits = np.where(self.lens <= width - pos, self.lens, 0)
                # the largest doc that fits whole, else the shortest, cropped to fill the row
                i = int(fits.argmax()) if fits.any() else int(self.lens.argmin())
                doc = self._pack(i, width - pos)
                rows[r, pos:pos + len(doc)] = doc
                pos += len(doc)
        self.batches += 1
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])

    def state(self) -> dict:
        """JSON-ready copy. `epoch`: passes the stream has restarted for its most-repeated kind
        (0: no doc read twice yet); it runs ahead of training by the buffer."""
        stream = self.stream.state()
        return {"version": STATE_VERSION, "fingerprint": dict(self.fingerprint), "batches": self.batches,
                "epoch": max(p["epoch"] for p in stream.values()),
                "trained": {k: dict(v) for k, v in self.trained.items()},
                "stream": stream, "buffer": [[*i, int(n)] for i, n in zip(self.ids, self.lens)]}


def val_batches(corpus_dir, tokenizer, kind: str, batch_size, seq_len,
                max_tokens) -> list[tuple[np.ndarray, np.ndarray]]:
    """A fixed validation set: ~max_tokens tokens of CORPUS/<kind>/val.parquet (seed 0, one pass),
    packed as in training; fewer batches if the split runs out first."""
    corpus.check_kind(kind)
    ratio = (1, 0) if kind == "code" else (0, 1)
    loader = PackedLoader(corpus_dir, tokenizer, batch_size, seq_len, split="val", code_ratio=ratio,
                          loop=False)
    # next_batch raises StopIteration when the split runs out, which ends the iterator
    out = list(itertools.islice(iter(loader.next_batch, None), max(1, max_tokens // (batch_size * seq_len))))
    if not out:
        raise InputError(f"{kind} val split of {corpus_dir} is too small for one batch of "
                         f"{batch_size} x {seq_len} tokens")
    return out
