"""Reading versions back: `factory ls`, `show`, `diff` and `export`."""

import json
import os
import shutil
import tempfile
from pathlib import Path

from rich.table import Table

from factory.progress import facts_table
from factory.publish import TEST_FRACTION, write_hub
from factory.replay import replay_figures
from factory.store import JSON_COLUMNS, SCHEMAS, Store
from nanocode.common import InputError
from nanocode.record import call_text


def ls_table(store: Store) -> Table:
    table = Table(title=f"factory versions in {store.path}")
    for col in ("version", "status", "created", "sft", "pairs", "rejects", "cost $", "soul", "fingerprint"):
        table.add_column(col, justify="right" if col in ("version", "sft", "pairs", "rejects", "cost $") else "left")
    for r in store.versions():
        f = store.figures(r["version"])
        table.add_row(str(r["version"]), r["status"], f"{r['created']:%m-%d %H:%M}", str(f["sft rows"]),
                      str(f["pairs"]), str(f["rejects"]), f"{f['cost $']:.4f}", r["soul_sha256"][:12],
                      r["fingerprint"][:12])
    return table


def _short(messages: list[dict], width: int = 100) -> list[str]:
    out = []
    for m in messages:
        text = " ".join((m.get("content") or "").split())
        calls = " ".join(call_text(c, 30) for c in m.get("tool_calls") or [])
        out.append(f"{m['role']:>9}: {text[:width]}{'…' if len(text) > width else ''}"
                   + (f"  -> {calls}" if calls else ""))
    return out


def show(store: Store, v: int, samples: int = 1) -> tuple[Table, list[str]]:
    meta = store.version(v)
    figures = {**store.figures(v), **replay_figures(store, v)}
    facts = {key: meta[key] for key in ("created", "finished", "fingerprint", "soul_sha256", "tools_sha256",
                                        "config_sha256", "inputs_sha256", "code_version")}
    for key, value in figures.items():
        facts[key] = ", ".join(f"{k} {n}" for k, n in value.items()) or "none" if isinstance(value, dict) else value
    if meta["summary"].get("stages without a model"):
        facts["stages without a model"] = meta["summary"]["stages without a model"]
    table = facts_table(f"version {v} ({meta['status']})", facts)
    lines = []
    sft, pairs, rejects = (store.relation(k, v) for k in SCHEMAS)
    for (messages,) in store.all(f"SELECT messages FROM {sft} ORDER BY id LIMIT ?", samples):
        lines += ["sample sft row:"] + _short([m for m in json.loads(messages) if m["role"] != "system"])
    for chosen, rejected, critique in store.all(f"SELECT chosen, rejected, critique FROM {pairs} ORDER BY id LIMIT ?", samples):
        lines += ["sample pair, rejected:"] + _short(json.loads(rejected)) + ["  chosen:"] + _short(json.loads(chosen))
        lines.append(f"  critique: {critique[:300]}")
    for stage, reason in store.all(f"SELECT stage, reason FROM {rejects} ORDER BY input_id LIMIT ?", samples):
        lines.append(f"sample reject: [{stage}] {reason[:200]}")
    return table, lines


def diff(store: Store, v1: int, v2: int) -> Table:
    """Rows added, removed and changed from v1 to v2 by source; an input whose row differs
    (another id, or a reject became a row) is `changed`."""
    m1, m2 = store.version(v1), store.version(v2)
    union = [f"SELECT source, input_id, id AS rid FROM {store.relation('sft', v)} UNION ALL "
             f"SELECT source, input_id, 'reject:' || stage FROM {store.relation('rejects', v)}" for v in (v1, v2)]
    rows = store.all(f"""
        WITH a AS ({union[0]}), b AS ({union[1]})
        SELECT coalesce(a.source, b.source) AS source,
               count(*) FILTER (WHERE a.input_id IS NULL) AS added,
               count(*) FILTER (WHERE b.input_id IS NULL) AS removed,
               count(*) FILTER (WHERE a.rid != b.rid) AS changed,
               count(*) FILTER (WHERE a.rid = b.rid) AS same
        FROM a FULL OUTER JOIN b ON a.input_id = b.input_id GROUP BY 1 ORDER BY 1""")
    changed_hashes = [k.removesuffix("_sha256") for k in ("soul_sha256", "tools_sha256", "config_sha256",
                                                           "inputs_sha256", "code_version") if m1[k] != m2[k]]
    table = Table(title=f"version {v1} -> {v2}; changed: {', '.join(changed_hashes) or 'nothing'}")
    for col in ("source", "added", "removed", "changed", "same"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for row in rows:
        table.add_row(*map(str, row))
    p1, p2 = (store.one(f"SELECT count(*) FROM {store.relation('pairs', v)}")[0] for v in (v1, v2))
    table.caption = f"pairs: {p1} -> {p2}"
    return table


def export(store: Store, v: int, directory, soul=None, tools=None, test_fraction: float = TEST_FRACTION,
           repo: str | None = None) -> list[Path]:
    """Write sft/pairs/rejects as Parquet and JSONL (JSON columns as real JSON) into directory,
    plus the Hub layout `factory publish` uploads (factory/publish.py: card, manifest, SOUL,
    tool spec, sft/ and preference/ splits). Files are made in a temp folder and moved in at
    the end: nothing half-written."""
    meta = store.finished(v)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory} exists and is not a directory")
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    try:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as tmp:
            for kind in SCHEMAS:
                rel = store.relation(kind, v)
                as_json = ", ".join(f"{c}::JSON AS {c}" for c in JSON_COLUMNS[kind])
                store.copy(f"SELECT * FROM {rel} ORDER BY input_id", f"{tmp}/{kind}.parquet")
                store.copy(f"SELECT * REPLACE ({as_json}) FROM {rel} ORDER BY input_id", f"{tmp}/{kind}.jsonl", "json")
                out += [directory / f"{kind}.parquet", directory / f"{kind}.jsonl"]
            out += [directory / rel for rel in write_hub(store, v, meta, Path(tmp), soul, tools, test_fraction, repo)]
            for path in out:
                path.parent.mkdir(exist_ok=True)
                os.replace(Path(tmp) / path.relative_to(directory), path)
    except BaseException:
        if created:  # a damaged part: no empty folder left behind either
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return out
