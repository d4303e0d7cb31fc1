"""The store: one DuckDB catalog (`$NANOCODE_HOME/factory.duckdb`) plus Parquet parts beside it
(`$NANOCODE_HOME/factory/v0001/{sft,pairs,rejects}-00000.parquet`). Open it with plain
`duckdb ~/.cache/nanocode/factory.duckdb` and query:

  versions     one row per build: version, status (building|done), created, finished,
               fingerprint, soul_sha256, tools_sha256, config_sha256, inputs_sha256,
               code_version, config (JSON), summary (JSON: counts, stages run without a model)
  parts        the committed Parquet files: version, kind (sft|pairs|rejects), chunk, path (relative
               to the home: factory/v0001/sft-00000.parquet), rows
  done_inputs  per-input completion: version, input_id, chunk, outcome (sft|reject)
  llm_cache    key (sha256 of model, messages, params, attempt), model, reply (JSON), created
  ledger       one row per LLM request attempt: version, ts, input_id, purpose (generate|
               revise|critic), attempt, backend, model, key, tokens_in, tokens_out, latency_s,
               cost, outcome (ok|cached|retry|failed), error. A paid (ok) row commits with
               its cache entry (replies arriving together share one commit); the others are
               buffered, so a kill -9 may lose the last few retry/cached rows, never a paid one.
  exclusions   rows marked out in `factory view --curate`: version, row_id (an sft id), input_id,
               note, created; `factory build --from V --exclude-marked` makes a new version without them
  sft, pairs, rejects   views over all committed Parquet parts (filter on `version`)

Parquet columns (JSON-valued ones are JSON text: `messages::JSON` in DuckDB):
  sft      version, id, input_id, source, source_id, messages, soul, tools, workspace,
           attempt, revisions, scores, critique, models
  pairs    version, id, input_id, source, source_id, prompt, chosen, rejected, critique, scores,
           chosen_attempt, rejected_attempt
  rejects  version, input_id, source, source_id, stage, reason, attempts, messages

Writes are crash-safe, a build's chunks (`commit_chunk`) and curation's copies (`copy_version`)
alike: the Parquet files are renamed into place, then their `parts` and `done_inputs` rows
commit in one transaction. A kill between the two leaves files no catalog row names; the next
build deletes them and redoes those inputs (their LLM calls are cached).

A home can be moved or copied: a part is found by its version folder and file name under this
home (`_part`), whatever path the catalog holds (stores made before paths were relative hold
absolute ones), so a copy reads its own files. The plain-duckdb views are absolute globs
(DuckDB reads a relative path from the cwd), remade on every writing open. Orphan cleanup
looks only in unfinished versions' folders and keeps every file the catalog names. A part that
is missing or damaged is a one-line InputError naming it.
"""

import json
from datetime import datetime
from pathlib import Path, PurePath

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from nanocode.common import InputError, atomic_path, nanocode_home

_S, _I = pa.string(), pa.int32()
SCHEMAS = {
    "sft": pa.schema([("version", _I), ("id", _S), ("input_id", _S), ("source", _S), ("source_id", _S),
                      ("messages", _S), ("soul", _S), ("tools", _S), ("workspace", _S), ("attempt", _I),
                      ("revisions", _I), ("scores", _S), ("critique", _S), ("models", _S)]),
    "pairs": pa.schema([("version", _I), ("id", _S), ("input_id", _S), ("source", _S), ("source_id", _S),
                        ("prompt", _S), ("chosen", _S), ("rejected", _S), ("critique", _S), ("scores", _S),
                        ("chosen_attempt", _I), ("rejected_attempt", _I)]),
    "rejects": pa.schema([("version", _I), ("input_id", _S), ("source", _S), ("source_id", _S),
                          ("stage", _S), ("reason", _S), ("attempts", _I), ("messages", _S)]),
}
LEDGER_COLUMNS = ("version", "input_id", "purpose", "attempt", "backend", "model", "key", "tokens_in",
                  "tokens_out", "latency_s", "cost", "outcome", "error")
LEDGER_INSERT = f"INSERT INTO ledger (ts, {', '.join(LEDGER_COLUMNS)}) VALUES (?{', ?' * len(LEDGER_COLUMNS)})"
JSON_COLUMNS = {"sft": ("messages", "workspace", "scores", "models"),
                "pairs": ("prompt", "chosen", "rejected", "scores"), "rejects": ("messages",)}

_TABLES = """
CREATE TABLE IF NOT EXISTS versions (version INTEGER PRIMARY KEY, status VARCHAR, created TIMESTAMP,
  finished TIMESTAMP, fingerprint VARCHAR, soul_sha256 VARCHAR, tools_sha256 VARCHAR,
  config_sha256 VARCHAR, inputs_sha256 VARCHAR, code_version VARCHAR, config JSON, summary JSON);
CREATE TABLE IF NOT EXISTS parts (version INTEGER, kind VARCHAR, chunk INTEGER, path VARCHAR,
  rows INTEGER, PRIMARY KEY (version, kind, chunk));
CREATE TABLE IF NOT EXISTS done_inputs (version INTEGER, input_id VARCHAR, chunk INTEGER,
  outcome VARCHAR, PRIMARY KEY (version, input_id));
CREATE TABLE IF NOT EXISTS llm_cache (key VARCHAR PRIMARY KEY, model VARCHAR, reply JSON, created TIMESTAMP);
CREATE TABLE IF NOT EXISTS ledger (version INTEGER, ts TIMESTAMP, input_id VARCHAR, purpose VARCHAR,
  attempt INTEGER, backend VARCHAR, model VARCHAR, key VARCHAR, tokens_in INTEGER, tokens_out INTEGER,
  latency_s DOUBLE, cost DOUBLE, outcome VARCHAR, error VARCHAR);
CREATE TABLE IF NOT EXISTS exclusions (version INTEGER, row_id VARCHAR, input_id VARCHAR, note VARCHAR,
  created TIMESTAMP, PRIMARY KEY (version, row_id));
"""


def _dumps(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Store:
    def __init__(self, home=None, read_only: bool = False):
        self.home = Path(home) if home is not None else nanocode_home()
        self.path, self.root = self.home / "factory.duckdb", self.home / "factory"
        if read_only and not self.path.exists():
            raise InputError(f"no factory store at {self.path} yet: run `factory build` first")
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.db = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as e:
            raise InputError(f"cannot open {self.path}: {' '.join(str(e).split())[:200]}") from None
        if not read_only:
            self.db.execute(_TABLES)
            self._views()  # a moved or copied home: the views name this home's files
        self.ledger: list[list] = []  # ledger rows not yet written (see log_call)
        self.writer = None            # a cursor for the requester's writer thread

    def close(self):
        self.flush_ledger()
        if self.writer is not None:
            self.writer.close()
        self.db.close()

    def _execute(self, sql, params=()):
        """Execute SQL that may read Parquet parts: a missing or damaged one is one line."""
        try:
            return self.db.execute(sql, params)
        except (duckdb.IOException, duckdb.InvalidInputException) as e:
            raise InputError(f"{self.path}: cannot read a stored part: {str(e).splitlines()[0]}") from None

    def one(self, sql, *params):
        return self._execute(sql, params).fetchone()

    def all(self, sql, *params):
        return self._execute(sql, params).fetchall()

    def rows(self, sql, *params, kind: str | None = None) -> list[dict]:
        """The query's rows as dicts; with `kind` (sft, pairs, rejects), its JSON columns decoded."""
        cur = self._execute(sql, params)
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
        for row in rows if kind else ():
            row.update({c: json.loads(row[c]) for c in JSON_COLUMNS[kind] if isinstance(row.get(c), str)})
        return rows

    # -------------------------------------------------------------------- versions

    def versions(self) -> list[dict]:
        """Every version's record, its config and summary decoded (an unfinished one's summary: {})."""
        rows = self.rows("SELECT * FROM versions ORDER BY version")
        for r in rows:
            r.update(config=json.loads(r["config"] or "{}"), summary=json.loads(r["summary"] or "{}"))
        return rows

    def version(self, v: int) -> dict:
        if not (found := [r for r in self.versions() if r["version"] == v]):
            known = ", ".join(str(r["version"]) for r in self.versions()) or "none yet"
            raise InputError(f"no version {v} in {self.path} (versions: {known})")
        return found[0]

    def finished(self, v: int) -> dict:
        """Version v's record; InputError unless its build ran to the end."""
        meta = self.version(v)
        if meta["status"] != "done":
            raise InputError(f"factory version {v} is not finished (status {meta['status']}): "
                             "build it to the end first")
        return meta

    def find(self, fingerprint: str) -> dict | None:
        return next((r for r in reversed(self.versions()) if r["fingerprint"] == fingerprint), None)

    def create_version(self, meta: dict) -> int:
        v = (self.one("SELECT max(version) FROM versions")[0] or 0) + 1
        self.db.execute("INSERT INTO versions (version, status, created, fingerprint, soul_sha256, tools_sha256, "
                        "config_sha256, inputs_sha256, code_version, config) VALUES (?, 'building', ?, ?, ?, ?, ?, ?, ?, ?)",
                        [v, datetime.now(), meta["fingerprint"], meta["soul_sha256"], meta["tools_sha256"],
                         meta["config_sha256"], meta["inputs_sha256"], meta["code_version"], _dumps(meta["config"])])
        return v

    def finish(self, v: int, summary: dict) -> None:
        self.db.execute("UPDATE versions SET status = 'done', finished = ?, summary = ? WHERE version = ?",
                        [datetime.now(), _dumps(summary), v])

    def done_inputs(self, v: int) -> set[str]:
        return {r[0] for r in self.all("SELECT input_id FROM done_inputs WHERE version = ?", v)}

    # ------------------------------------------------------------------------ parts

    def commit_chunk(self, v: int, rows: dict[str, list[dict]], done: list[tuple[str, str]]) -> None:
        """Write one chunk's Parquet parts (atomic renames), then catalog them and mark its
        inputs done in one transaction."""
        chunk = self.one("SELECT coalesce(max(chunk) + 1, 0) FROM parts WHERE version = ?", v)[0]
        written = []
        for kind, schema in SCHEMAS.items():
            table = pa.Table.from_pylist([self._flat(kind, v, r) for r in rows.get(kind, [])], schema=schema)
            path = self.root / f"v{v:04d}" / f"{kind}-{chunk:05d}.parquet"
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
            written.append((v, kind, chunk, self._rel(path), table.num_rows))
        self._catalog(written, [(v, input_id, chunk, outcome) for input_id, outcome in done])

    def copy_version(self, src: int, dst: int, where: str = "true") -> None:
        """dst's one chunk = src's rows (every kind) and done inputs whose columns satisfy the
        SQL condition `where`, written and cataloged like a build's chunk."""
        written = []
        for kind in SCHEMAS:
            path = self.root / f"v{dst:04d}" / f"{kind}-00000.parquet"
            with atomic_path(path) as tmp:
                rows = self.copy(f"SELECT * REPLACE (CAST({int(dst)} AS INTEGER) AS version) "
                                 f"FROM {self.relation(kind, src)} WHERE {where} ORDER BY input_id", tmp)
            written.append((dst, kind, 0, self._rel(path), rows))
        self._catalog(written, self.all(f"SELECT {int(dst)}, input_id, 0, outcome FROM done_inputs "
                                        f"WHERE version = ? AND {where}", src))

    def copy(self, query: str, path, format: str = "parquet") -> int:
        """A query's rows into a parquet or json file (DuckDB COPY); returns how many."""
        return self._execute(f"COPY ({query}) TO {_quote(str(path))} (FORMAT {format})").fetchone()[0]

    def _catalog(self, parts: list[tuple], done: list[tuple]) -> None:
        """Catalog written parts and mark inputs done in one transaction, then refresh the views."""
        self.db.execute("BEGIN TRANSACTION")
        try:
            self.flush_ledger()
            self.db.executemany("INSERT INTO parts VALUES (?, ?, ?, ?, ?)", parts)
            if done:
                self.db.executemany("INSERT INTO done_inputs VALUES (?, ?, ?, ?)", done)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self._views()

    @staticmethod
    def _flat(kind: str, v: int, row: dict) -> dict:
        row = {**row, "version": v}
        for col in JSON_COLUMNS[kind]:
            if col in row and not isinstance(row[col], str):
                row[col] = _dumps(row[col])
        return row

    def _views(self) -> None:
        for kind in SCHEMAS:
            if self.one("SELECT count(*) FROM parts WHERE kind = ?", kind)[0]:
                pattern = _quote(str(self.root / "v*" / f"{kind}-*.parquet"))
                self.db.execute(f"CREATE OR REPLACE VIEW {kind} AS SELECT * FROM read_parquet({pattern})")

    def _part(self, path: str) -> Path:
        """The file a catalog path names in this home: its version folder and name under root."""
        p = PurePath(path)
        return self.root / p.parent.name / p.name

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.home).as_posix()

    def remove_orphans(self) -> int:
        """Delete the Parquet files of unfinished versions that no catalog row names (a kill
        between rename and commit), and temp files."""
        known = {self._part(r[0]) for r in self.all("SELECT path FROM parts")}
        open_ = {f"v{r[0]:04d}" for r in self.all("SELECT version FROM versions WHERE status != 'done'")}
        orphans = [p for p in self.root.glob("v*/*.parquet") if p.parent.name in open_ and p not in known]
        orphans += list(self.root.glob("v*/.*.tmp"))
        for p in orphans:
            p.unlink(missing_ok=True)
        return len(orphans)

    def relation(self, kind: str, v: int) -> str:
        """SQL naming one version's rows of `kind` (a registered view), for show/diff/export."""
        name = f"{kind}_v{v}"
        paths = [r[0] for r in self.all("SELECT path FROM parts WHERE version = ? AND kind = ? ORDER BY chunk", v, kind)]
        if paths:
            files = "[" + ", ".join(_quote(str(self._part(p))) for p in paths) + "]"
            self._execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM read_parquet({files})")
        else:
            self.db.register(name, pa.Table.from_pylist([], schema=SCHEMAS[kind]))
        return name

    def resolve(self, spec: str) -> int:
        """A finished version's number from "latest", "3" or "v3"."""
        done = [r["version"] for r in self.versions() if r["status"] == "done"]
        if spec == "latest":
            if not done:
                raise InputError(f"no finished factory version in {self.path}: run `factory build` first")
            return done[-1]
        try:
            v = int(spec.lstrip("v"))
        except ValueError:
            raise InputError(f"factory:{spec}: expected a version number or 'latest'") from None
        return self.finished(v)["version"]

    def read_rows(self, v: int, kind: str) -> list[dict]:
        """Every row of one version, JSON columns decoded: how the trainer reads `factory:VERSION`."""
        return self.rows(f"SELECT * FROM {self.relation(kind, v)} ORDER BY input_id, id", kind=kind)

    # -------------------------------------------------------------- cache and ledger

    def cache_get(self, key: str) -> dict | None:
        row = self.one("SELECT reply FROM llm_cache WHERE key = ?", key)
        return json.loads(row[0]) if row else None

    def save_replies(self, replies: list[tuple[str, str, dict]], ledger: list[list]) -> None:
        """Cache paid replies (key, model, reply) with ledger rows in one commit. Called from
        the requester's writer thread, so it uses its own cursor (DuckDB's way to share a
        database between threads) and the event loop goes on while the commit happens."""
        if self.writer is None:
            self.writer = self.db.cursor()
        self.writer.execute("BEGIN TRANSACTION")
        self.writer.executemany("INSERT OR IGNORE INTO llm_cache VALUES (?, ?, ?, ?)",
                                [(key, model, _dumps(reply), datetime.now()) for key, model, reply in replies])
        if ledger:
            self.writer.executemany(LEDGER_INSERT, ledger)
        self.writer.execute("COMMIT")

    def log_call(self, call: dict) -> None:
        """Buffer a ledger row; rows reach the file with the next paid reply, chunk or 64 rows
        (a commit per row would cost more than a fast server's answer)."""
        self.ledger.append([datetime.now()] + [call.get(c) for c in LEDGER_COLUMNS])
        if len(self.ledger) >= 64:
            self.flush_ledger()

    def flush_ledger(self) -> None:
        if self.ledger:
            self.db.executemany(LEDGER_INSERT, self.ledger)
            self.ledger.clear()

    # ----------------------------------------------------------------------- figures

    def figures(self, v: int) -> dict:
        """Counts, rates and spend of one version (what `show` and the build summary print)."""
        self.flush_ledger()
        sft, pairs, rejects = (self.relation(kind, v) for kind in SCHEMAS)
        n_sft, revisions, first_try = self.one(f"SELECT count(*), coalesce(avg(revisions), 0), "
                                               f"count(*) FILTER (WHERE attempt = 1) FROM {sft}")
        by_stage = dict(self.all(f"SELECT stage, count(*) FROM {rejects} GROUP BY stage ORDER BY 2 DESC, 1"))
        n_rejects = sum(by_stage.values())
        requests, cached, failed, t_in, t_out, cost = self.one(
            "SELECT count(*) FILTER (WHERE outcome != 'cached'), count(*) FILTER (WHERE outcome = 'cached'), "
            "count(*) FILTER (WHERE outcome IN ('retry', 'failed')), coalesce(sum(tokens_in), 0), "
            "coalesce(sum(tokens_out), 0), coalesce(sum(cost), 0) FROM ledger WHERE version = ?", v)
        return {"inputs done": n_sft + n_rejects, "sft rows": n_sft,
                "pairs": self.one(f"SELECT count(*) FROM {pairs}")[0],
                "rejects": n_rejects, "rejects by stage": by_stage,
                "pass rate": round(n_sft / max(1, n_sft + n_rejects), 4),
                "first-try pass rate": round(first_try / max(1, n_sft + n_rejects), 4),
                "mean revisions": round(revisions, 3),
                "llm requests": requests, "cache hits": cached, "failed requests": failed,
                "tokens in": t_in, "tokens out": t_out, "cost $": round(cost, 6)}
