"""Sources: where seed rows come from. A source yields seeds, one dict each:

    {"input_id", "source", "source_id", "instruction", "answer", "workspace": {path: text}}

`input_id` is what resume keys on (`<source>:<source_id>`); `sha256` hashes the input bytes
for the version record. Issue #7 adds Hugging Face sources; for now: one local file.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from agent.common import InputError
from agent.spec import REPO_ROOT

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
        self.file = p if p.is_absolute() or p.exists() else REPO_ROOT / p  # repo-relative defaults
        if not isinstance(self.columns, dict):
            raise ValueError("columns must map fields to column names")
        bad = sorted(set(self.columns) - set(FIELDS) - set(OPTIONAL))
        if bad:
            raise ValueError(f"columns: unknown field(s) {', '.join(bad)} (fields: {', '.join(FIELDS + OPTIONAL)})")
        missing = [f for f in FIELDS if f not in self.columns]
        if missing:
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
        rows = []
        for n, line in enumerate(self.file.read_text(encoding="utf-8").splitlines(), 1):
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
            out.append({"input_id": f"{self.name}:{source_id}", "source": self.name, "source_id": source_id,
                        "instruction": values["instruction"], "answer": values["answer"],
                        "workspace": workspace})
        ids = [s["input_id"] for s in out]
        if len(set(ids)) != len(ids):
            raise InputError(f"seed file {self.path}: row ids are not unique")
        return out


SOURCES = {"local": LocalSource}
