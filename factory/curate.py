"""Curation: rows marked out of a version (`factory view --curate`) and the new version made
without them (`factory build --from V --exclude-marked`).

A mark is an sft row id with a note, in the store's `exclusions` table. A version is never
changed: the derived version copies V's rows minus the marked inputs' (their sft row and the
pairs whose chosen side it is; such an input has no reject) with Store.copy_version, and
records where it came from in its config and summary ("from version", "excluded").
"""

import datetime
import hashlib
import json

from rich.console import Console

from factory.replay import replay_figures
from factory.store import Store
from nanocode.common import InputError


def has_table(store: Store, name: str) -> bool:
    return store.one("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", name)[0] > 0


def exclusions(store: Store, v: int) -> list[dict]:
    """Marks on version v, oldest first; none in a store made before marks existed."""
    if not has_table(store, "exclusions"):
        return []
    return store.rows("SELECT row_id, input_id, note, created FROM exclusions WHERE version = ? "
                      "ORDER BY created, row_id", v)


def mark(store: Store, v: int, row_id: str, note: str) -> None:
    """Mark an sft row of v excluded (again: the note is replaced)."""
    found = store.one(f"SELECT input_id FROM {store.relation('sft', v)} WHERE id = ?", row_id)
    if found is None:
        raise InputError(f"version {v} has no sft row {row_id!r} (only sft rows can be marked)")
    store.db.execute("INSERT OR REPLACE INTO exclusions VALUES (?, ?, ?, ?, ?)",
                     [v, row_id, found[0], note.strip(), datetime.datetime.now()])


def unmark(store: Store, v: int, row_id: str) -> None:
    store.db.execute("DELETE FROM exclusions WHERE version = ? AND row_id = ?", [v, row_id])


def derive(v: int, console=None) -> dict:
    """A new version = v's rows minus its marked ones; returns its summary. The same marks on
    the same version again: "up to date" (the fingerprint hashes v's and the marked ids)."""
    console = console or Console(highlight=False)
    store = Store()
    try:
        meta = store.finished(v)
        if not (marks := exclusions(store, v)):
            raise InputError(f"version {v} has no rows marked excluded: mark some in `factory view --curate`")
        ids = sorted(m["row_id"] for m in marks)
        fingerprint = hashlib.sha256(json.dumps([meta["fingerprint"], ids]).encode()).hexdigest()
        if (found := store.find(fingerprint)) and found["status"] == "done":
            console.print(f"up to date: version {found['version']} is version {v} minus the same {len(ids)} marked rows")
            return {"version": found["version"], "up_to_date": True, **found["summary"]}
        config = {**meta["config"], "from_version": v, "excluded": len(ids)}
        new = store.create_version({**{k: meta[k] for k in ("soul_sha256", "tools_sha256", "config_sha256",
                                                              "inputs_sha256", "code_version")},
                                    "fingerprint": fingerprint, "config": config})
        store.copy_version(v, new, f"input_id NOT IN (SELECT input_id FROM exclusions WHERE version = {int(v)})")
        summary = {"version": new, **store.figures(new), **replay_figures(store, new), "from version": v,
                   "excluded": len(ids), "excluded ids": ids,
                   "models": meta["summary"].get("models", {})}
        store.finish(new, summary)
        console.print(f"version {new} = version {v} minus {len(ids)} marked row(s): "
                      f"{summary['sft rows']} sft rows, {summary['pairs']} pairs, {summary['rejects']} rejects")
        return summary
    finally:
        store.close()


def diff_lines(store: Store, v1: int, v2: int) -> list[str]:
    """What `factory diff` adds about marks: those on either version, and whether v2 is v1
    minus them."""
    lines = []
    summary2 = store.version(v2)["summary"]
    if summary2.get("from version") == v1:
        lines.append(f"version {v2} is version {v1} minus {summary2.get('excluded', 0)} marked row(s)")
    for v in (v1, v2):
        if marks := exclusions(store, v):
            lines.append(f"exclusions marked on version {v}: {len(marks)}")
            lines += [f"  {m['row_id'][:16]}  {m['input_id']}  {m['note'] or '(no note)'}" for m in marks]
    return lines
