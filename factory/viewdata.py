"""The SQL behind `factory view`: one version's rows filtered and paged in DuckDB (never the
whole version in Python), one row, one pair, chart data, and the schema check.

A version's rows are its sft rows (status `passed`) and its rejects (`rejected`, row id
`reject:INPUT_ID`). Derived figures, computed in SQL:
  score   the lowest numeric critic score in `scores` (rejects have none)
  calls   tool calls in the rollout (tool_calls entries of assistant messages)
  tokens  an estimate: characters of the messages JSON / 4 (no tokenizer involved)
"""

from dataclasses import dataclass, field

from factory.curate import has_table
from factory.store import SCHEMAS, Store

PAGE = 50
SCORE = "list_min(list_transform(json_extract(scores, '$.*'), lambda x: TRY_CAST(x AS DOUBLE)))"
CALLS = "coalesce(list_sum(json_array_length(messages, '$[*].tool_calls')), 0)"
TOKENS = "coalesce(length(messages), 0) // 4"
RANGES = {"score": (SCORE, float), "calls": (CALLS, int), "tokens": (TOKENS, int)}  # NAME_min, NAME_max filters
# the catalog columns this viewer reads; an older store may lack some
CATALOG = {"versions": ("version", "status", "created", "finished", "fingerprint", "soul_sha256", "tools_sha256",
                        "config_sha256", "inputs_sha256", "code_version", "config", "summary"),
           "parts": ("version", "kind", "chunk", "path", "rows"),
           "ledger": ("version", "input_id", "cost")}


def missing_catalog(store: Store) -> list[str]:
    """Tables and columns of the catalog this viewer needs and the store lacks."""
    have = dict(store.all("SELECT table_name, list(column_name) FROM information_schema.columns GROUP BY 1"))
    return [f"table {t}" for t in CATALOG if t not in have] + [
        f"column {t}.{c}" for t, columns in CATALOG.items() if t in have for c in columns if c not in have[t]]


def missing_columns(store: Store, v: int) -> list[str]:
    """Parquet columns of version v's parts that an older factory did not write."""
    have = {kind: {r[0] for r in store.all(f"DESCRIBE SELECT * FROM {store.relation(kind, v)}")} for kind in SCHEMAS}
    return [f"column {kind}.{name}" for kind, schema in SCHEMAS.items() for name in schema.names
            if name not in have[kind]]


def rows_sql(store: Store, v: int) -> str:
    sft, rejects = store.relation("sft", v), store.relation("rejects", v)
    return (f"SELECT 'passed' AS status, id AS row_id, input_id, source, source_id, NULL::VARCHAR AS stage, "
            f"NULL::VARCHAR AS reason, attempt, revisions, scores, critique, messages FROM {sft} UNION ALL "
            f"SELECT 'rejected', 'reject:' || input_id, input_id, source, source_id, stage, reason, attempts, "
            f"NULL::INTEGER, NULL::VARCHAR, NULL::VARCHAR, messages FROM {rejects}")


@dataclass
class Filters:
    source: str = ""
    stage: str = ""
    status: str = ""       # passed | rejected | excluded
    reason: str = ""       # substring of the reject reason
    q: str = ""            # case-insensitive substring of the messages JSON (or the reason)
    bounds: dict = field(default_factory=dict)  # (RANGES name, ">=" or "<=") -> number
    errors: list = field(default_factory=list)

    @classmethod
    def parse(cls, args) -> "Filters":
        f = cls(**{k: args.get(k, "").strip() for k in ("source", "stage", "status", "reason", "q")})
        for name, (_, kind) in RANGES.items():
            for side, op in (("min", ">="), ("max", "<=")):
                if text := args.get(f"{name}_{side}", "").strip():
                    try:
                        f.bounds[name, op] = kind(text)
                    except ValueError:
                        f.errors.append(f"{name} {side}: {text!r} is not a number")
        return f

    def where(self, marked: bool) -> tuple[str, list]:
        """The SQL condition and its parameters (`marked`: the store has marks); an empty filter adds none."""
        tests = [("source = ?", self.source), ("stage = ?", self.stage),
                 ("status = ?", self.status if self.status in ("passed", "rejected") else ""),
                 ("contains(lower(reason), lower(?))", self.reason),
                 ("contains(lower(coalesce(messages, '') || coalesce(reason, '')), lower(?))", self.q)]
        tests = [(sql, x) for sql, x in tests if x] + [(f"{RANGES[name][0]} {op} ?", bound)
                                                     for (name, op), bound in self.bounds.items()]
        clauses = [sql for sql, _ in tests]
        if self.status == "excluded":
            clauses.append("row_id IN (SELECT row_id FROM marks)" if marked else "false")
        return " AND ".join(clauses) or "true", [x for _, x in tests]


def _marks_cte(store: Store, v: int) -> tuple[str, bool]:
    if has_table(store, "exclusions"):
        return f"marks AS (SELECT row_id, note FROM exclusions WHERE version = {int(v)})", True
    return "marks AS (SELECT NULL::VARCHAR AS row_id, NULL::VARCHAR AS note WHERE false)", False


def rows_page(store: Store, v: int, f: Filters, page: int) -> tuple[int, list[dict]]:
    """(matching rows, this page's rows). Two steps: the page's keys by a narrow top-N over
    the filter, then the figures of those PAGE rows only (the messages of the rest are not
    read unless a filter needs them)."""
    marks, marked = _marks_cte(store, v)
    where, params = f.where(marked)
    base = f"WITH r AS ({rows_sql(store, v)}), {marks} "
    total = store.one(base + f"SELECT count(*) FROM r WHERE {where}", *params)[0]
    keys = [k[0] for k in store.all(base + f"SELECT row_id FROM r WHERE {where} ORDER BY input_id, row_id "
                                    f"LIMIT {PAGE} OFFSET ?", *params, max(0, page) * PAGE)]
    if not keys:
        return total, []
    return total, store.rows(
        base + f"SELECT r.status, r.row_id, input_id, source, source_id, stage, left(reason, 160) AS reason, "
        f"attempt, revisions, {SCORE} AS score, {CALLS} AS calls, {TOKENS} AS tokens, "
        f"left(json_extract_string(messages, '$[1].content'), 140) AS opening, "
        f"marks.row_id IS NOT NULL AS excluded, marks.note "
        f"FROM r LEFT JOIN marks USING (row_id) WHERE r.row_id IN (SELECT unnest(?)) ORDER BY input_id, r.row_id",
        keys)


def choices(store: Store, v: int) -> dict:
    """Values for the filter drop-downs."""
    rel = f"({rows_sql(store, v)})"
    return {"source": [r[0] for r in store.all(f"SELECT DISTINCT source FROM {rel} ORDER BY 1")],
            "stage": [r[0] for r in store.all(f"SELECT DISTINCT stage FROM {rel} WHERE stage IS NOT NULL ORDER BY 1")]}


def row(store: Store, v: int, row_id: str) -> dict | None:
    marks, _ = _marks_cte(store, v)
    kind, key = ("rejects", "input_id") if row_id.startswith("reject:") else ("sft", "id")
    found = store.rows(f"SELECT * FROM {store.relation(kind, v)} WHERE {key} = ?", row_id.removeprefix("reject:"),
                       kind=kind)
    if not found:
        return None
    out = found[0]
    out["row_id"] = row_id
    out["mark"] = store.one(f"WITH {marks} SELECT note FROM marks WHERE row_id = ?", row_id)
    pair = store.one(f"SELECT id FROM {store.relation('pairs', v)} WHERE input_id = ?", out["input_id"])
    out["pair_id"] = pair[0] if pair else None
    return out


def pairs_page(store: Store, v: int, q: str, page: int) -> tuple[int, list[dict]]:
    rel = store.relation("pairs", v)
    where, params = ("contains(lower(chosen || rejected || critique), lower(?))", [q]) if q else ("true", [])
    total = store.one(f"SELECT count(*) FROM {rel} WHERE {where}", *params)[0]
    return total, store.rows(f"SELECT id, input_id, source, source_id, chosen_attempt, rejected_attempt, "
                             f"left(critique, 200) AS critique FROM {rel} WHERE {where} ORDER BY input_id, id "
                             f"LIMIT {PAGE} OFFSET ?", *params, max(0, page) * PAGE)


def pair(store: Store, v: int, pair_id: str) -> dict | None:
    found = store.rows(f"SELECT * FROM {store.relation('pairs', v)} WHERE id = ?", pair_id, kind="pairs")
    if not found:
        return None
    out = found[0]
    sft = store.one(f"SELECT id FROM {store.relation('sft', v)} WHERE input_id = ?", out["input_id"])
    out["sft_id"] = sft[0] if sft else None
    return out


def _hist(store: Store, sql: str, *params) -> list[tuple[str, float]]:
    return [(str(k), v) for k, v in store.all(sql, *params)]


def charts(store: Store, v: int) -> dict[str, list[tuple[str, float]]]:
    """Data for the version page's charts: (label, value) bars."""
    rel, sft = f"({rows_sql(store, v)})", store.relation("sft", v)
    edges = [0, 250, 500, 1000, 2000, 4000, 8000, 16000]
    bucket = " ".join(f"WHEN t < {hi} THEN '{lo}-{hi}'" for lo, hi in zip(edges, edges[1:]))
    return {
        "pass rate by source": _hist(store, f"SELECT source, round(avg((status = 'passed')::INTEGER), 4) FROM {rel} "
                                            "GROUP BY 1 ORDER BY 1"),
        "revisions (sft rows)": _hist(store, f"SELECT revisions, count(*) FROM {sft} GROUP BY 1 ORDER BY 1"),
        "token length, est. chars/4 (sft rows)": [
            (k, n) for _, k, n in store.all(
                f"SELECT min(t), CASE {bucket} ELSE '{edges[-1]}+' END AS b, count(*) "
                f"FROM (SELECT {TOKENS} AS t FROM {sft}) GROUP BY b ORDER BY 1")],
        "tool calls per rollout (sft rows)": _hist(
            store, f"SELECT CASE WHEN c >= 20 THEN '20+' ELSE c::VARCHAR END, count(*) "
                   f"FROM (SELECT {CALLS} AS c FROM {sft}) GROUP BY 1 ORDER BY min(c)"),
        "cost $ by source": _hist(store, f"SELECT r.source, coalesce(round(sum(l.cost), 6), 0.0) FROM {rel} r "
                                         f"LEFT JOIN (SELECT input_id, cost FROM ledger WHERE version = ?) l "
                                         f"USING (input_id) GROUP BY 1 ORDER BY 1", v),
    }
