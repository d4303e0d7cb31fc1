"""Pretraining corpora: parquet shards of plain text, in two kinds (code and prose).

On disk a corpus is a directory:

    CORPUS/code/shard_00000.parquet ...  CORPUS/code/val.parquet
    CORPUS/prose/shard_00000.parquet ... CORPUS/prose/val.parquet
    CORPUS/manifest.json                 what built each kind, and doc/char counts per split

Every shard has one `text` column (string), row groups of 1024 docs, zstd, and its char count in
the schema metadata (so `trainer data show` reads footers only). Every file is written to a temp
name and renamed, so a crash leaves whole shards or none.

Two ways to fill one:

- trainer/local_corpus.py: offline, from text already on the machine (`trainer data local`).
- `download`: streams a Hugging Face dataset (FineWeb-EDU, a Stack-like code set, or a local
  folder of parquet/jsonl in the same shapes). The first `val_docs` docs of the stream become
  val.parquet, the following ones the train shards. Resumable and retried (see `download`).

`MixedStream` reads a corpus back as one resumable stream at a code:prose char ratio, for the
pretraining loader; `mixed_texts` is its plain text form, for tokenizer training.
"""

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nanocode.common import InputError, atomic_path, nanocode_home, write_text_atomic

KINDS = ("code", "prose")
SPLITS = ("train", "val")
ROWS_PER_GROUP = 1024
DOCS_PER_SHARD = 8 * ROWS_PER_GROUP
DEFAULT_RATIO = (1, 5)  # code:prose in chars, as the reference mixed them
CHARS_KEY = b"nanocode.chars"
BUILD_HINT = "build it with `trainer data local`"


def default_corpus() -> Path:
    return nanocode_home() / "corpus" / "local"


# ------------------------------------------------------------------------------ shards


def write_shard(path: Path, texts: list[str]) -> None:
    table = pa.table({"text": pa.array(texts, pa.string())})
    table = table.replace_schema_metadata({CHARS_KEY: str(sum(map(len, texts)))})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROWS_PER_GROUP, compression="zstd")


def _short(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _open_shard(path: Path) -> pq.ParquetFile:
    """Open a shard and check it has a string `text` column; InputError naming the file if not."""
    if not path.is_file():
        raise InputError(f"no such shard: {path}")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path} is not a readable parquet file: {_short(e)}") from None
    schema = pf.schema_arrow
    if "text" not in schema.names:
        pf.close()
        raise InputError(f"{path} has no `text` column (it has: {', '.join(schema.names) or 'none'})")
    kind = schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        pf.close()
        raise InputError(f"{path}: the `text` column holds {kind}, not strings")
    return pf


def _read_group(pf: pq.ParquetFile, path: Path, i: int) -> list[str | None]:
    """One row group's texts, all rows kept (so a row index names a doc)."""
    try:
        return pf.read_row_group(i, columns=["text"]).column(0).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path} is corrupt (row group {i}): {_short(e)}") from None


def iter_texts(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    """The non-empty texts of shards, read one row group at a time (never a whole file in memory)."""
    for path in map(Path, paths):
        with _open_shard(path) as pf:
            for i in range(pf.num_row_groups):
                yield from (t for t in _read_group(pf, path, i) if t)


def shard_stats(path: Path) -> tuple[int, int]:
    """(docs, chars) of a shard from its footer; chars are counted by reading if not recorded."""
    with _open_shard(Path(path)) as pf:
        docs, meta = pf.metadata.num_rows, pf.schema_arrow.metadata or {}
    if CHARS_KEY in meta:
        return docs, int(meta[CHARS_KEY])
    return docs, sum(len(t) for t in iter_texts([path]))


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")


def shard_files(corpus_dir: str | os.PathLike, kind: str, split: str) -> list[Path]:
    """One kind and split's shard files, in order; [] when there are none (`shards` raises instead)."""
    d = Path(corpus_dir) / kind
    files = sorted(d.glob("shard_*.parquet")) if split == "train" else [d / "val.parquet"]
    return [f for f in files if f.is_file()]


def _check_corpus(corpus_dir: Path) -> None:
    if not any(shard_files(corpus_dir, k, s) for k in KINDS for s in SPLITS):
        raise InputError(f"no corpus at {corpus_dir}: {BUILD_HINT}")


def shards(corpus_dir: str | os.PathLike, kind: str, split: str = "train") -> list[Path]:
    check_kind(kind)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    _check_corpus(corpus_dir)
    files = shard_files(corpus_dir, kind, split)
    if not files:
        raise InputError(f"no {kind} {split} shards in {corpus_dir}: {BUILD_HINT} "
                         f"or `trainer data download ... --kind {kind}`")
    return files


def _counts(files: list[Path]) -> dict:
    stats = [shard_stats(f) for f in files]
    return {"docs": sum(d for d, _ in stats), "chars": sum(c for _, c in stats), "shards": len(files)}


def describe(corpus_dir: str | os.PathLike) -> list[dict]:
    """One row per kind and split present: shards, docs, chars, bytes on disk."""
    _check_corpus(corpus_dir)
    return [{"kind": kind, "split": split, **_counts(files), "bytes": sum(f.stat().st_size for f in files)}
            for kind in KINDS for split in SPLITS if (files := shard_files(corpus_dir, kind, split))]


def read_manifest(corpus_dir: Path) -> dict:
    path = Path(corpus_dir) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON: {_short(e)}") from None


def write_manifest(corpus_dir: Path, manifest: dict) -> None:
    write_text_atomic(Path(corpus_dir) / "manifest.json", json.dumps(manifest, indent=2) + "\n")


# ------------------------------------------------------------------------------ mixing


def check_ratio(code_ratio) -> tuple[float, float]:
    """(code, prose) weights from a pair like (1, 5) or a string like "1:5"."""
    try:
        c, p = (float(x) for x in (code_ratio.split(":") if isinstance(code_ratio, str) else code_ratio))
    except (TypeError, ValueError):
        raise InputError(f"code ratio {code_ratio!r} is not two numbers like 1:5") from None
    if c < 0 or p < 0 or c + p == 0:
        raise InputError(f"code ratio {code_ratio!r} needs two non-negative numbers, not both zero")
    return c, p


def _shuffled(items: list, *seed_parts) -> list:
    items = list(items)
    random.Random(":".join(map(str, seed_parts))).shuffle(items)
    return items


class MixedStream:
    """Documents of both kinds as (doc id, text), chars at code:prose ~= `code_ratio`; resumable.

    A doc id is [kind, shard file name, row group, row]: enough to read that doc back. Each pass
    (epoch) over a kind shuffles its shards by (seed, kind, epoch) and the docs of each row group by
    (seed, kind, epoch, shard, group), so a position is a few ints and needs no rng state.
    Per kind it holds epoch, shard (index in that epoch's order), row group, row (index in the
    group's shuffled order) and the chars counted for the mix.
    Without `loop` the stream ends when the kind it needs next runs out; with it that kind starts
    its next epoch. `state()` / `state=` save and restore the position exactly.
    """

    def __init__(self, corpus_dir, split: str = "train", code_ratio=DEFAULT_RATIO, seed: int = 0,
                 loop: bool = False, state: dict | None = None):
        self.weights = dict(zip(KINDS, check_ratio(code_ratio)))
        self.files = {k: shards(corpus_dir, k, split) for k in KINDS if self.weights[k] > 0}
        self.corpus_dir, self.split, self.seed, self.loop = Path(corpus_dir), split, seed, loop
        fresh = {"epoch": 0, "shard": 0, "group": 0, "row": 0, "chars": 0}
        self.pos = {k: {**fresh, **(state or {}).get(k, {})} for k in self.files}
        self._group = {}  # kind -> ((shard, epoch, group), texts, shuffled rows): the group being read
        self._open = {}  # kind -> (path, ParquetFile)
        self._orders = {}  # kind -> (epoch, shuffled shards)
        self._fed = dict.fromkeys(self.files, True)  # did this epoch yield a doc? (guards an endless loop)

    def state(self) -> dict:
        return {k: dict(p) for k, p in self.pos.items()}

    def uncount(self, kind: str, chars: int) -> None:
        """Take back chars that were emitted but never used (a cropped tail): the mix then
        balances what is used, and that kind gets the next pick sooner."""
        if kind in self.pos:  # not when the ratio now leaves that kind out
            self.pos[kind]["chars"] -= chars

    def _texts(self, kind: str, path: Path, group: int) -> list[str] | None:
        """The texts of one row group (empty ones as ""), or None past the shard's last group."""
        if self._open.get(kind, (None,))[0] != path:
            if kind in self._open:
                self._open[kind][1].close()
            self._open[kind] = (path, _open_shard(path))
        pf = self._open[kind][1]
        return None if group >= pf.num_row_groups else [t or "" for t in _read_group(pf, path, group)]

    def _order(self, kind: str, epoch: int) -> list[Path]:
        if self._orders.get(kind, (None,))[0] != epoch:
            self._orders[kind] = (epoch, _shuffled(self.files[kind], self.seed, kind, epoch))
        return self._orders[kind][1]

    def _next(self, kind: str):
        p = self.pos[kind]
        while True:
            order = self._order(kind, p["epoch"])
            if p["shard"] >= len(order):
                if not self.loop:
                    return None
                if not self._fed[kind]:
                    raise InputError(f"the {kind} shards hold no documents")
                self._fed[kind] = False
                p.update(epoch=p["epoch"] + 1, shard=0, group=0, row=0)
                continue
            path, key = order[p["shard"]], (order[p["shard"]].name, p["epoch"], p["group"])
            if self._group.get(kind, (None,))[0] != key:
                texts = self._texts(kind, path, p["group"])
                if texts is None:
                    p.update(shard=p["shard"] + 1, group=0, row=0)
                    continue
                rows = _shuffled([i for i, t in enumerate(texts) if t], self.seed, kind, *key)
                self._group[kind] = (key, texts, rows)
            _, texts, rows = self._group[kind]
            if p["row"] >= len(rows):
                p.update(group=p["group"] + 1, row=0)
                continue
            row = rows[p["row"]]
            p["row"] += 1
            p["chars"] += len(texts[row])
            self._fed[kind] = True
            return [kind, path.name, p["group"], row], texts[row]

    def __iter__(self):
        return self

    def __next__(self) -> tuple[list, str]:
        # the kind furthest behind its share goes next
        kind = min(self.pos, key=lambda k: (self.pos[k]["chars"] / self.weights[k], k))
        doc = self._next(kind)
        if doc is None:
            raise StopIteration
        return doc

    def read(self, ids: list) -> list[str]:
        """The texts of docs by id (reading each row group once), in the order given."""
        kinds = {kind for kind, *_ in ids}  # a kind the ratio now leaves out may still be buffered
        by_name = {(k, f.name): f for k in kinds
                   for f in self.files.get(k) or shards(self.corpus_dir, k, self.split)}
        groups = {}
        for kind, name, group, _ in ids:
            if (kind, name) not in by_name:
                raise InputError(f"no {kind} shard {name} in this corpus")
            if (kind, name, group) not in groups:
                groups[kind, name, group] = self._texts(kind, by_name[kind, name], group) or []
        texts = [groups[k, n, g][r] if r < len(groups[k, n, g]) else "" for k, n, g, r in ids]
        if not all(texts):
            raise InputError("a saved doc id names no document: the corpus changed")
        return texts


def mixed_texts(corpus_dir: str | os.PathLike, split: str = "train", code_ratio=DEFAULT_RATIO,
                seed: int = 0, max_chars: int | None = None) -> Iterator[str]:
    """Documents of both kinds, interleaved so chars come out at code:prose ~= `code_ratio`.

    The order of `MixedStream` with `seed`. The stream ends when the kind it needs next runs out
    (so the ratio holds over the whole stream) or at `max_chars` (the last doc is cut to fit).
    A ratio with a zero side reads only the other kind.
    Bad corpora and ratios raise InputError here, not on first iteration.
    """
    stream = MixedStream(corpus_dir, split, code_ratio, seed)

    def generate():
        total = 0
        for _, text in stream:
            if max_chars is not None:
                if total >= max_chars:
                    return
                text = text[:max_chars - total]
            total += len(text)
            yield text

    return generate()


# ------------------------------------------------------------------------------ download


def _fatal(e: BaseException) -> bool:
    """Errors a retry cannot fix: a missing dataset, file or permission, a 4xx other than 429."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                      RepositoryNotFoundError)):
        return True
    status = getattr(getattr(e, "response", None), "status_code", None)
    return isinstance(e, HfHubHTTPError) and status is not None and 400 <= status < 500 and status != 429


def _resilient(open_at, start: int, retries: int, backoff: float, what: str) -> Iterator:
    """Rows from open_at(start), re-opened at the next unread row after a network error.

    `retries` counts consecutive failures; a row read resets it. Backoff doubles each time.
    """
    import httpx

    pos, failures = start, 0
    while True:
        try:
            for row in open_at(pos):
                yield row  # errors in the consumer are not raised here, so never retried
                pos += 1
                failures = 0
            return
        except (OSError, httpx.TransportError) as e:
            if _fatal(e):
                raise InputError(f"cannot read {what}: {_short(e)}") from None
            failures += 1
            if failures > retries:
                raise InputError(f"gave up on {what} after {retries} retries: {_short(e)}") from None
            time.sleep(backoff * 2 ** (failures - 1))
        except pa.ArrowException as e:  # a malformed data file in the dataset (not an I/O error)
            raise InputError(f"cannot read {what}: {_short(e)}") from None


def _open_stream(dataset: str, config, data_dir, split: str, column: str, skip: int):
    import datasets

    try:
        ds = datasets.load_dataset(dataset, name=config, data_dir=data_dir, split=split, streaming=True)
    except ValueError as e:  # a bad split or config name
        raise InputError(f"cannot load {dataset}: {_short(e)}") from None
    if ds.column_names is not None and column not in ds.column_names:
        raise InputError(f"{dataset} has no column {column!r} (it has: {', '.join(ds.column_names)})")
    for row in ds.skip(skip) if skip else ds:
        if column not in row:
            raise InputError(f"{dataset} has no column {column!r} (it has: {', '.join(row)})")
        yield row[column]


@contextlib.contextmanager
def _datasets_errors_folded_in():
    """`datasets` logs which data file is bad, then raises without naming it: hold such log
    lines back and add the last one to our error, so the user gets one line naming the file."""
    import datasets  # noqa: F401  (sets up its logger, which we filter)

    logged = []

    def hold(record):
        if record.levelno < logging.ERROR:
            return True
        logged.append(record.getMessage().strip())
        return False

    handlers = logging.getLogger("datasets").handlers
    for h in handlers:
        h.addFilter(hold)
    try:
        yield
    except InputError as e:
        if not logged:
            raise
        raise InputError(f"{str(e).split(': ', 1)[0]}: {logged[-1]}") from None
    finally:
        for h in handlers:
            h.removeFilter(hold)


def download(dataset: str, kind: str, out_dir: str | os.PathLike, column: str = "text",
             config: str | None = None, split: str = "train", data_dir: str | None = None,
             max_docs: int | None = None, val_docs: int = ROWS_PER_GROUP,
             docs_per_shard: int = DOCS_PER_SHARD, retries: int = 5, backoff: float = 2.0) -> dict:
    """Stream a Hugging Face dataset (or local folder of parquet/jsonl) into out_dir/<kind>/.

    The first `val_docs` docs become val.parquet; `max_docs` more (all if None) go into train
    shards of `docs_per_shard`. Resumable: full shards on disk are kept and the stream is re-opened
    past them (`.skip`); a short last shard is rewritten whole. So a second call with a larger
    `max_docs`, or after a crash, neither duplicates nor drops docs. Network errors re-open the
    stream at the next unread doc after an exponential backoff. Returns the kind's manifest entry.
    """
    check_kind(kind)
    if val_docs < 1 or docs_per_shard < 1 or (max_docs is not None and max_docs < 0):
        raise InputError("val docs and docs per shard must be positive, max docs not negative")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} is a file, not a corpus directory")
    kind_dir = out_dir / kind
    spec = {"source": "hf", "dataset": str(dataset), "config": config, "data_dir": data_dir,
            "split": split, "column": column, "val_docs": val_docs, "docs_per_shard": docs_per_shard}
    entry = read_manifest(out_dir).get("kinds", {}).get(kind)
    if entry is not None:
        if changed := [f"{k} was {entry.get(k)!r}, now {v!r}" for k, v in spec.items() if entry.get(k) != v]:
            raise InputError(f"{kind_dir} already holds other data ({'; '.join(changed)}): "
                             "pick another --out")
    elif kind_dir.is_dir() and any(kind_dir.iterdir()):
        raise InputError(f"{kind_dir} holds files that manifest.json does not describe: pick another --out")
    entry = {**spec, "exhausted": False, **(entry or {})}
    for stale in kind_dir.glob(".*.tmp"):  # temp files of a killed run
        stale.unlink()

    # what is on disk: val first, then full shards, maybe a short last one (rewritten whole)
    val_path = kind_dir / "val.parquet"
    have_val = val_path.is_file()
    paths = sorted(kind_dir.glob("shard_*.parquet"))
    counts = [shard_stats(p)[0] for p in paths]
    for i, path in enumerate(paths):
        short_inside = i < len(paths) - 1 and counts[i] != docs_per_shard
        if path.name != f"shard_{i:05d}.parquet" or not have_val or short_inside:
            raise InputError(f"{path} is out of sequence: {kind_dir} is not a resumable download")
    n_full = len(counts) if counts and counts[-1] == docs_per_shard else max(len(counts) - 1, 0)
    if entry["exhausted"] or (have_val and max_docs is not None and sum(counts) >= max_docs):
        return _finish(out_dir, kind, entry)

    start = val_docs + n_full * docs_per_shard if have_val else 0
    stream = _resilient(lambda pos: _open_stream(str(dataset), config, data_dir, split, column, pos),
                        start, retries, backoff, str(dataset))
    with _datasets_errors_folded_in():
        entry = _stream_into_shards(stream, entry, out_dir, kind, max_docs, n_full, have_val)
    return _finish(out_dir, kind, entry)


def _stream_into_shards(stream, entry: dict, out_dir: Path, kind: str, max_docs: int | None,
                        n_full: int, have_val: bool) -> dict:
    kind_dir, val_docs, docs_per_shard = out_dir / kind, entry["val_docs"], entry["docs_per_shard"]
    val_path = kind_dir / "val.parquet"
    buf, index, written = [], n_full, n_full * docs_per_shard
    for text in stream:
        if have_val and max_docs == 0:
            break
        buf.append(text if isinstance(text, str) else ("" if text is None else str(text)))
        if not have_val and len(buf) == val_docs:
            write_shard(val_path, buf)
            have_val, buf = True, []
            _finish(out_dir, kind, entry)
        elif have_val and (len(buf) == docs_per_shard or written + len(buf) == max_docs):
            write_shard(kind_dir / f"shard_{index:05d}.parquet", buf)
            written, index, buf = written + len(buf), index + 1, []
            _finish(out_dir, kind, entry)
            if written == max_docs:
                break
    else:  # the stream ran out: whatever is buffered is the end of the data
        entry["exhausted"] = True
        if not have_val:
            if not buf:
                raise InputError(f"{entry['dataset']} ({entry['split']}) has no documents")
            write_shard(val_path, buf)
        elif buf:
            write_shard(kind_dir / f"shard_{index:05d}.parquet", buf)
    stream.close()
    return entry


def _finish(out_dir: Path, kind: str, entry: dict) -> dict:
    """Recount the kind from its shards and record it in manifest.json.

    The manifest is re-read first, so two kinds can download into one corpus at once.
    """
    for split in SPLITS:
        entry[split] = _counts(shard_files(out_dir, kind, split))
    manifest = read_manifest(out_dir)
    manifest.setdefault("kinds", {})[kind] = entry
    manifest.pop("source", None)  # a corpus with downloaded kinds is no longer a pure local build
    write_manifest(out_dir, manifest)
    return entry
