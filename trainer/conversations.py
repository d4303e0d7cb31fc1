"""Conversations and preference pairs for SFT and DPO, from wherever they live.

A data spec is one or more sources, each `SOURCE[@WEIGHT]`:
    factory:VERSION | factory:latest     a factory store version (its sft rows or preference pairs)
    path/to/file.jsonl | .json | .parquet  records (docs/DESIGN.md's conversation record or pair)
    path/to/folder                      a dataset folder, read with `datasets.load_dataset`
    user/name[:config]                  a Hugging Face dataset id (SmolTalk's format is ours minus tools)
A weight repeats a source (2 = twice, 0.5 = a deterministic half). `messages`, `prompt`, `chosen`
and `rejected` may be lists of message objects or JSON strings of them, as records or as OpenAI
chat messages (a published factory export, most Hub tool-calling sets: read with `from_openai`).

Rows are split into train and validation by a hash of their id (stable across runs and sources),
so a held-out conversation never trains, whichever mix it is in.

A run may train with another system prompt than the rows carry (`system_prompt`: the text, e.g.
nanocode/prompts/compact.j2 rendered for a tiny context): it replaces every leading system message,
and rows without one stay without.
"""

import json
import math
import random
import tempfile
from pathlib import Path

from nanocode.common import InputError
from nanocode.openai_format import from_openai
from nanocode.record import has_assistant, hash_unit, record_id, validate

PAIR_FIELDS = ("prompt", "chosen", "rejected")


def parse_spec(spec: str | list[str]) -> list[tuple[str, float]]:
    items = spec if isinstance(spec, list) else [spec]
    out = []
    for item in (s.strip() for part in items for s in part.split(",")):
        if not item:
            continue
        source, _, weight = item.rpartition("@") if "@" in item else (item, "", "1")
        try:
            w = float(weight)
        except ValueError:
            raise InputError(f"data source {item!r}: the weight after @ must be a number") from None
        if w <= 0 or not math.isfinite(w):
            raise InputError(f"data source {item!r}: the weight must be positive")
        out.append((source, w))
    if not out:
        raise InputError("no data given: pass --data SOURCE[@WEIGHT]")
    return out


def _read_files(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not a JSON array ({e.msg} at line {e.lineno}, column {e.colno})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not JSON ({e.msg})") from None
    return rows


def _read_factory(version: str, kind: str) -> tuple[int, list[dict]]:
    from factory.store import Store  # the factory's store, read-only; the factory never imports us

    store = Store(read_only=True)
    try:
        v = store.resolve(version)
        return v, store.read_rows(v, "sft" if kind == "conversations" else "pairs")
    finally:
        store.close()


def read_source(source: str, kind: str = "conversations") -> tuple[str, list[dict]]:
    """All rows of one source, as dicts, and the source's name with `factory:latest` resolved to
    the version it read (what a run records, so its report can name the data)."""
    if source.startswith("factory:"):
        v, rows = _read_factory(source.split(":", 1)[1], kind)
        return f"factory:{v}", rows
    path = Path(source)
    if path.is_file():
        if path.suffix not in (".jsonl", ".json", ".parquet"):
            raise InputError(f"{path}: expected a .jsonl, .json or .parquet file")
        return source, _read_files(path)
    import datasets

    if path.is_dir():
        try:
            # a fresh cache each time: datasets keys a folder with a card by its name, not its files,
            # so another folder of that name (or this one, exported again) would read stale rows
            with tempfile.TemporaryDirectory(prefix="nanocode-data-") as cache:
                ds = datasets.load_dataset(str(path), split="train", cache_dir=cache, keep_in_memory=True)
        except Exception as e:  # empty, no data files, unreadable: the folder is the user's to fix
            raise InputError(f"{path}: not a dataset folder datasets can read ({str(e).splitlines()[0]})") from None
    elif source.startswith((".", "/")) or source.count("/") != 1:
        raise InputError(f"no such data file or folder: {source}")
    else:
        name, _, config = source.partition(":")
        try:
            ds = datasets.load_dataset(name, config or None, split="train")
        except Exception as e:  # offline, missing, private: say which source and why
            raise InputError(f"could not load the dataset {source!r}: {str(e).splitlines()[0]}") from None
    return source, list(ds)


def _messages(value, where: str) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InputError(f"{where} is a string but not JSON") from None
    if not isinstance(value, list):
        raise InputError(f"{where} must be a list of messages")
    # Arrow gives absent struct fields as None: drop them so the record is as written
    value = [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m for m in value]
    openai = any(isinstance(m, dict) and ("tool_call_id" in m or any(
        isinstance(c, dict) and "function" in c for c in m.get("tool_calls") or [])) for m in value)
    if not openai:
        return value
    try:
        return from_openai(value)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


def _weighted(rows: list, weight: float, seed: int) -> list:
    whole, frac = int(weight), weight - int(weight)
    extra = random.Random(seed).sample(rows, round(frac * len(rows))) if frac else []
    return rows * whole + extra


def with_system_prompt(messages: list[dict], text: str | None) -> list[dict]:
    """The messages with a leading system message's content replaced by `text` (None: as they are)."""
    if text is None or not messages or messages[0].get("role") != "system":
        return messages
    return [{**messages[0], "content": text}] + messages[1:]


def load(spec, kind: str = "conversations", val_fraction: float = 0.05, seed: int = 0,
         system_prompt: str | None = None) -> dict:
    """{"train": [...], "val": [...], "dropped": {reason: count}, "sources": [...]}.

    Conversations come back as message lists; pairs as {"prompt", "chosen", "rejected"}.
    Invalid rows are dropped with a count per reason (a pair needs assistant content on both
    sides); missing fields are errors that name the source and the row. `system_prompt` replaces
    the rows' own (with_system_prompt).
    """
    out = {"train": [], "val": [], "dropped": {}, "sources": []}
    for source, weight in parse_spec(spec):
        source, rows = read_source(source, kind)
        kept = {"train": [], "val": []}
        for i, row in enumerate(rows):
            where = f"{source} row {i}"
            try:
                item, row_id = _item(row, kind, where)
            except _Drop as reason:
                out["dropped"][str(reason)] = out["dropped"].get(str(reason), 0) + 1
                continue
            if kind == "conversations":
                item = with_system_prompt(item, system_prompt)
            else:
                item = {**item, "prompt": with_system_prompt(item["prompt"], system_prompt)}
            kept["val" if hash_unit(row_id) < val_fraction else "train"].append(item)
        out["train"] += _weighted(kept["train"], weight, seed)
        out["val"] += kept["val"]
        out["sources"].append({"source": source, "weight": weight, "rows": len(rows),
                               "train": len(kept["train"]), "val": len(kept["val"])})
    random.Random(seed).shuffle(out["train"])
    return out


def source_names(loaded: dict) -> list[str]:
    """load(...)'s sources as SOURCE@WEIGHT (factory:latest resolved): a run records them for its report."""
    return [f"{s['source']}@{s['weight']:g}" for s in loaded["sources"]]


class _Drop(Exception):
    """A row left out of the data; its message is the reason it is counted under."""


def _item(row, kind: str, where: str):
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object")
    if kind == "conversations":
        if "messages" not in row:
            raise InputError(f"{where}: no `messages` field (it has: {', '.join(row) or 'nothing'})")
        messages = _messages(row["messages"], f"{where} messages")
        _check(messages)
        if not has_assistant(messages):
            raise _Drop("no assistant content")
        return messages, row.get("id") or record_id(messages)
    if missing := [f for f in PAIR_FIELDS if f not in row]:
        raise InputError(f"{where}: a preference pair needs {', '.join(PAIR_FIELDS)}; missing {', '.join(missing)}")
    pair = {f: _messages(row[f], f"{where} {f}") for f in PAIR_FIELDS}
    for side in ("chosen", "rejected"):
        if not has_assistant(pair[side]):
            raise _Drop(f"{side} side has no assistant content")
        _check(pair["prompt"] + pair[side])
    return pair, row.get("id") or record_id(pair["prompt"] + pair["chosen"])


def _check(messages):
    try:
        validate(messages)
    except InputError as e:
        raise _Drop(f"invalid: {str(e).split(':', 1)[-1].strip()}") from None
