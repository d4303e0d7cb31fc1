"""Sources: where seed rows come from. A source yields seeds, one dict each:

    {"input_id", "source", "source_id", "instruction", "answer", "workspace": {path: text}}

plus, for a row that cannot be used, `"skip": [stage, reason]` (the build rejects it with that
reason instead of converting it), and for a source with its own converter, `"converter": <its
stage entry>` (plain data: the loop converts the seed with that one). `input_id` is what resume
keys on (`<source>:<source_id>`); `sha256` identifies the inputs for the version record;
`columns` is the mapping, also identity.

  local                 a JSONL or Parquet file with a column mapping
  tulu_personas_code    allenai/tulu-3-sft-personas-code      (`messages`, `prompt`, `id`)
  self_oss_instruct     bigcode/self-oss-instruct-sc2-exec-filter-50k (`instruction`, `response`, `id`)
  evol_codealpaca       theblackcat102/evol-codealpaca-v1      (`instruction`, `output`)
  smoltalk              HuggingFaceTB/smoltalk, config `all`   (`messages`): general chat
  scenarios             scenario specs (factory/scenarios.py), through their own converter
  mix                   several of the above, in order (dedup keeps the first of duplicates)

The Hugging Face ones read through `datasets.load_dataset` (streamed: `limit` rows cost `limit`
rows of download); `dataset` may also be a local folder in the same schema (a mirror, a test).
`python -m factory.sources humaneval` rewrites factory/seeds/humaneval.jsonl.
"""

import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from factory.config import make
from factory.scenarios import ScenarioSource
from nanocode.common import InputError
from nanocode.paths import shipped

FIELDS = ("instruction", "answer")       # required: file column names for these
OPTIONAL = ("id", "workspace")           # optional: a row id, a {path: text} of starting files


@dataclass
class LocalSource:
    """A JSONL or Parquet file; `columns` maps our fields to the file's column names."""
    path: str = "factory/seeds/coding.jsonl"
    columns: dict = field(default_factory=lambda: {"instruction": "instruction", "answer": "answer"})
    label: str | None = None  # the `source` of each row (default: the file's stem)

    def __post_init__(self):
        p = Path(self.path)
        self.file = p if p.is_absolute() or p.exists() else shipped(p)  # repo-relative defaults
        if not isinstance(self.columns, dict):
            raise ValueError("columns must map fields to column names")
        if bad := sorted(set(self.columns) - set(FIELDS) - set(OPTIONAL)):
            raise ValueError(f"columns: unknown field(s) {', '.join(bad)} (fields: {', '.join(FIELDS + OPTIONAL)})")
        if missing := [f for f in FIELDS if f not in self.columns]:
            raise ValueError(f"columns: no column given for {', '.join(missing)}")
        self.name = self.label or self.file.stem

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.file.read_bytes()).hexdigest()

    def _records(self) -> list[dict]:
        if not self.file.is_file():
            raise InputError(f"seed file {self.path}: no such file")
        if self.file.suffix == ".parquet":
            import pyarrow.parquet as pq
            try:
                return pq.read_table(self.file).to_pylist()
            except Exception as e:  # pyarrow raises several kinds for a broken file
                raise InputError(f"seed file {self.path}: not a readable Parquet file ({e})") from None
        try:
            text = self.file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"seed file {self.path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"seed file {self.path} line {n}: bad JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"seed file {self.path} line {n}: a row must be a JSON object")
            rows.append(row)
        return rows

    def seeds(self) -> list[dict]:
        """All seeds, checked up front: a bad mapping fails before anything is written."""
        records = self._records()
        for fld, col in self.columns.items():  # an optional column may be absent from some rows
            if fld in OPTIONAL and records and not any(col in row for row in records):
                raise InputError(f"seed file {self.path}: column {col!r} (for {fld}) is in no row; "
                                 f"columns: {', '.join(map(str, records[0]))}")
        out = []
        for n, row in enumerate(records, 1):
            for fld in FIELDS:
                if self.columns[fld] not in row:
                    raise InputError(f"seed file {self.path} row {n}: column {self.columns[fld]!r} (for {fld}) "
                                     f"not found; its columns: {', '.join(map(str, row))}")
            values = {fld: row.get(col) for fld, col in self.columns.items()}
            for fld in FIELDS:
                if not isinstance(values[fld], str) or not values[fld].strip():
                    raise InputError(f"seed file {self.path} row {n}: {fld} must be non-empty text")
            workspace = values.get("workspace") or {}
            if isinstance(workspace, str):  # Parquet files may hold it as JSON text
                workspace = json.loads(workspace)
            if not isinstance(workspace, dict) or not all(isinstance(v, str) for v in workspace.values()):
                raise InputError(f"seed file {self.path} row {n}: workspace must map paths to text")
            source_id = str(n if values.get("id") is None else values["id"])
            out.append(seed_row(self.name, source_id, values["instruction"], values["answer"], workspace))
        if len({s["input_id"] for s in out}) != len(out):
            raise InputError(f"seed file {self.path}: row ids are not unique")
        return out


def _lf(text) -> str:
    """CRLF and lone CR line ends -> LF: datasets mix them, and one file must read one way. No text: ""."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if isinstance(text, str) else ""


def seed_row(source: str, source_id: str, instruction, answer, workspace=None, skip=None) -> dict:
    """A seed in the factory's shape; a row without usable text is kept as a skip (a reject with
    its reason), so one bad row in 50k never stops a build."""
    seed = {"input_id": f"{source}:{source_id}", "source": source, "source_id": source_id,
            "instruction": _lf(instruction), "answer": _lf(answer),
            "workspace": {p: _lf(t) for p, t in (workspace or {}).items()}}
    for name in ("instruction", "answer"):
        if not skip and not seed[name].strip():
            skip = ["source", f"the row has no {name} text"]
    if skip:
        seed["skip"] = list(skip)
    return seed


def _first_turns(messages) -> tuple[str | None, str | None]:
    """The first user message and the assistant reply that follows it."""
    turns = messages if isinstance(messages, list) else []
    user = next((i for i, m in enumerate(turns) if isinstance(m, dict) and m.get("role") == "user"), None)
    if user is None:
        return None, None
    reply = next((m.get("content") for m in messages[user + 1:] if isinstance(m, dict)
                  and m.get("role") == "assistant"), None)
    return messages[user].get("content"), reply


@dataclass
class HubSource:
    """A Hugging Face dataset, read with `datasets.load_dataset`; subclasses map its schema."""
    dataset: str = ""          # a Hub repo id, or a local folder holding the same columns
    config: str | None = None  # the dataset's config (subset) name
    split: str = "train"
    revision: str | None = None  # a branch, tag or commit: pin it for a reproducible build
    limit: int | None = None   # the first N rows only (streamed: nothing past them is fetched)
    streaming: bool = True
    label: str | None = None   # the `source` of each row (default: the registry name)
    needs = ()                 # the columns it reads: ("messages",), or (instruction, answer); checked up front
    ids = ("id",)              # the row id: the first of these columns that has one, else the row number
    default_label = "hub"

    def __post_init__(self):
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError("dataset must name a Hub repo id or a local folder")
        if self.limit is not None and (type(self.limit) is not int or self.limit < 1):
            raise ValueError(f"limit must be a positive integer, got {self.limit!r}")
        self.name = self.label or self.default_label
        self.columns = {"dataset": self.dataset, "config": self.config, "split": self.split,
                        "revision": self.revision, "limit": self.limit, "schema": type(self).__name__}

    @property
    def local(self) -> Path | None:
        return next((p for p in (Path(self.dataset), shipped(self.dataset)) if p.exists()), None)

    @property
    def sha256(self) -> str:
        """A local copy: its bytes. The Hub: the repo id and revision (pin `revision` to make a
        rebuild detect upstream changes; unpinned, `main` is taken as it is)."""
        h = hashlib.sha256(json.dumps(self.columns, sort_keys=True).encode())
        if self.local is not None:
            files = [self.local] if self.local.is_file() else sorted(f for f in self.local.rglob("*") if f.is_file())
            for f in files:
                h.update(f.name.encode() + b"\0" + f.read_bytes())
        return h.hexdigest()

    def records(self):
        import datasets

        where = str(self.local) if self.local is not None else self.dataset
        try:
            rows = datasets.load_dataset(where, self.config, split=self.split, streaming=self.streaming,
                                         revision=self.revision or None)
            if self.limit is not None:
                rows = rows.take(self.limit) if self.streaming else rows.select(range(min(self.limit, len(rows))))
            yield from rows
        except Exception as e:  # datasets raises many kinds: missing repo, no network, bad files
            raise InputError(f"dataset {self.dataset}: cannot load it ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None

    def map(self, record: dict, n: int) -> dict:
        """A chat schema (`messages`): its first exchange; else the `needs` columns (instruction, answer)."""
        if self.needs == ("messages",):
            instruction, answer = _first_turns(record["messages"])
            instruction = instruction or record.get("prompt")  # tulu also has the request as `prompt`
        else:
            instruction, answer = (record[c] for c in self.needs)
        source_id = next((str(record[k]) for k in self.ids if record.get(k) not in (None, "")), str(n))
        return seed_row(self.name, source_id, instruction, answer)

    def seeds(self) -> list[dict]:
        out, seen = [], set()
        for n, record in enumerate(self.records(), 1):
            if n == 1:
                if missing := [c for c in self.needs if c not in record]:
                    raise InputError(f"dataset {self.dataset}: no column(s) {', '.join(missing)} for "
                                     f"{type(self).__name__}; its columns: {', '.join(map(str, record))}")
            seed = self.map(record, n)
            if seed["input_id"] in seen:  # a repeated upstream id must not collide on resume
                seed = seed_row(self.name, f"{seed['source_id']}#{n}", seed["instruction"], seed["answer"],
                                seed["workspace"], seed.get("skip"))
            seen.add(seed["input_id"])
            out.append(seed)
        return out


@dataclass
class TuluPersonasCode(HubSource):
    dataset: str = "allenai/tulu-3-sft-personas-code"
    needs = ("messages",)
    default_label = "tulu-personas-code"


@dataclass
class SelfOssInstruct(HubSource):
    dataset: str = "bigcode/self-oss-instruct-sc2-exec-filter-50k"
    needs, ids = ("instruction", "response"), ("id", "sha1")
    default_label = "self-oss-instruct"


@dataclass
class EvolCodeAlpaca(HubSource):
    dataset: str = "theblackcat102/evol-codealpaca-v1"
    needs = ("instruction", "output")
    default_label = "evol-codealpaca"


@dataclass
class SmolTalk(HubSource):
    """General chat: its rows go through their own converter, `chat` by default (a plain exchange
    held to the SOUL), whatever the build's converter is; `converter: code_edit` keeps only the
    coding conversations, as rollouts."""
    dataset: str = "HuggingFaceTB/smoltalk"
    config: str | None = "all"
    converter: dict | str = "chat"
    needs = ("messages",)
    default_label = "smoltalk"

    def __post_init__(self):
        super().__post_init__()
        self.columns["converter"] = self.converter

    def map(self, record, n):
        return {**super().map(record, n), "converter": self.converter}


@dataclass
class MixSource:
    """Several sources one after the other; their rows must have distinct input ids (give two
    sources of the same kind different `label`s)."""
    sources: list = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.sources, list) or not self.sources:
            raise ValueError("sources must be a non-empty list of source entries")
        self.parts = [make("source", SOURCES, entry, "mix") for entry in self.sources]
        self.name = "mix"
        self.columns = [part.columns for part in self.parts]

    @property
    def sha256(self) -> str:
        return hashlib.sha256("".join(part.sha256 for part in self.parts).encode()).hexdigest()

    def seeds(self) -> list[dict]:
        out = [seed for part in self.parts for seed in part.seeds()]
        if dup := next((i for i, n in Counter(s["input_id"] for s in out).items() if n > 1), None):
            raise InputError(f"mix: input id {dup!r} comes from two sources; give them different labels")
        return out


SOURCES = {"local": LocalSource, "tulu_personas_code": TuluPersonasCode, "self_oss_instruct": SelfOssInstruct,
           "evol_codealpaca": EvolCodeAlpaca, "smoltalk": SmolTalk, "mix": MixSource, "scenarios": ScenarioSource}


# ---------------------------------------------------------------- the HumanEval seed file

HUMANEVAL_SEEDS = shipped("factory/seeds/humaneval.jsonl")
_OPENERS = ["Certainly! Here's an implementation:", "here's the body:", "Sure, this should do it:",
            "Great question! Here is one way to write it:", "this fills in the stub:"]
_CLOSERS = ["It follows the docstring, examples included.", "the docstring's examples are the spec here.",
            "Let me know if you want tests for it!", "", "Hope this helps!"]


# the file a problem lives in, by row: a stem from a large pool (or, one row in six, the function's
# own name) in one of a few folders, so no name is in more than a few rows and only copying the name
# the request gives is right. "impl" and "answer" are never stems: the agentic eval's unseen modules
_STEMS = ["solution", "main", "utils", "core", "helpers", "tools", "common", "misc", "functions", "lib",
          "module", "shared", "base", "logic", "compute", "calc", "algorithms", "problem", "exercise",
          "task", "kata", "puzzle", "challenge", "homework", "practice", "scratch", "snippets", "library",
          "strings", "text", "numbers", "lists", "sequences", "checks", "validate", "convert", "transform",
          "filters", "search", "sorting", "counting", "matrix", "digits", "primes", "geometry", "stats",
          "parsing", "encode", "mathutils", "grid"]
_FOLDERS = ["", "src/", "", "lib/", "", "app/", "pkg/"]
_STUB_BODIES = ["", '    raise NotImplementedError("implement me")\n', "    pass\n"]
_ASKS = ["`{fn}` in `{file}` is only a stub; implement it as its docstring says.",
         "Please write the body of {fn} in {file}.",
         "{file} has a stub for `{fn}`. fill it in so it does what the docstring says.",
         "can you implement `{fn}`? it's in {file}, the docstring has the spec.",
         "finish the function {fn} in `{file}` - right now it does nothing useful."]
_PASTED = ["finish `{fn}` in {file}, it's still a stub:\n\n```python\n{stub}```",
           "here is {file} as it stands:\n\n```python\n{stub}```\n\nimplement `{fn}` in it."]


def humaneval_rows() -> list[dict]:
    """Seed rows from the 123 seedable HumanEval problems (never the held-out 41): the stub in
    the workspace (or pasted into the request) and the canonical solution as the answer, so
    the converter makes a targeted edit that fills the stub in. The file's name varies apart
    from the function's and is rarely the same twice (`_STEMS` x `_FOLDERS`), so a model learns to
    copy the name the request gives, not to make one up or to recall a common one."""
    from factory.heldout import seedable

    rows = []
    for n, p in enumerate(seedable()):
        k, fn = int(p["task_id"].rsplit("/", 1)[1]), p["entry_point"]
        stem = fn if n % 6 == 5 else _STEMS[7 * n % len(_STEMS)]  # 7 is coprime with 50: each stem in turn
        file = f"{_FOLDERS[n // 2 % len(_FOLDERS)]}{stem}.py"
        prompt = p["prompt"] if p["prompt"].endswith("\n") else p["prompt"] + "\n"
        stub, full = prompt + _STUB_BODIES[n % len(_STUB_BODIES)], p["prompt"] + p["canonical_solution"]
        if k % 4 == 2:  # pasted into the request: the converter puts it into the named file
            ask, workspace = _PASTED[n % len(_PASTED)], {}
        else:
            ask, workspace = _ASKS[n % len(_ASKS)], {file: stub}
        instruction = ask.format(fn=fn, file=file, stub=stub)
        answer = f"{_OPENERS[k % 5]}\n\n```python\n{full.rstrip()}\n```\n\n{_CLOSERS[k % 5]}".rstrip() + "\n"
        rows.append({"id": f"humaneval-{k}", "instruction": instruction, "answer": answer, "workspace": workspace})
    return rows


if __name__ == "__main__":
    if sys.argv[1:] != ["humaneval"]:
        sys.exit("usage: python -m factory.sources humaneval   (rewrites factory/seeds/humaneval.jsonl)")
    rows = humaneval_rows()
    HUMANEVAL_SEEDS.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} rows -> {HUMANEVAL_SEEDS}")
