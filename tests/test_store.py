"""The store as files on disk: a home moved or copied reads its own Parquet parts (and a store
made before paths were relative still reads), orphan cleanup never deletes a cataloged part,
and a missing or damaged part is one line from show, export and `factory:VERSION`."""

import hashlib
import json
import os
import shutil
import subprocess

import duckdb
import pytest

from factory.store import SCHEMAS, Store
from factory.versions import export, show
from nanocode.common import InputError
from tests.conftest import BIN
from tests.test_factory_build import quiet_build
from trainer import conversations


def rows_hash(home) -> tuple[dict, str]:
    """Every version's row counts and one hash of all their rows, read through the store."""
    store = Store(home, read_only=True)
    try:
        rows = {f"v{r['version']}/{kind}": store.all(f"SELECT * FROM {store.relation(kind, r['version'])} ORDER BY ALL")
                for r in store.versions() for kind in SCHEMAS}
    finally:
        store.close()
    text = json.dumps(rows, sort_keys=True, default=str)
    return {k: len(v) for k, v in rows.items()}, hashlib.sha256(text.encode()).hexdigest()


def use(monkeypatch, home):
    monkeypatch.setenv("NANOCODE_HOME", str(home))


def test_a_moved_and_a_copied_home_each_read_their_own_files(tmp_path, monkeypatch):
    home = tmp_path / "home"
    quiet_build(limit=6)
    before = rows_hash(home)
    assert before[0] == {"v1/sft": 6, "v1/pairs": 5, "v1/rejects": 0}
    with duckdb.connect(str(home / "factory.duckdb"), read_only=True) as db:
        assert {p for (p,) in db.execute("SELECT path FROM parts").fetchall()} == {
            f"factory/v0001/{kind}-00000.parquet" for kind in SCHEMAS}  # relative to the home
    moved, copied = tmp_path / "moved", tmp_path / "copied"
    shutil.move(home, moved)
    shutil.copytree(moved, copied)
    for where in (moved, copied):
        use(monkeypatch, where)
        assert rows_hash(where) == before
        table, lines = show(Store(read_only=True), 1)
        assert any(line.startswith("sample sft row") for line in lines)
        export(Store(read_only=True), 1, where / "out")
        assert len((where / "out" / "sft.jsonl").read_text().splitlines()) == 6
        data = conversations.load(["factory:1"], "conversations", val_fraction=0.0)  # trainer --data factory:1
        assert len(data["train"]) == 6
        # the next build deletes no part of v1 as an "orphan", and the views name this home's files
        assert quiet_build(limit=7)["version"] == 2
        assert rows_hash(where)[1] != before[1] and rows_hash(where)[0]["v1/sft"] == 6
        with duckdb.connect(str(where / "factory.duckdb"), read_only=True) as db:
            (view,) = db.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'sft'").fetchone()
        assert f"{where}/factory/v*/sft-*.parquet" in view
    # each reads only its own files: damage the moved one's, the copy does not notice
    (moved / "factory" / "v0001" / "sft-00000.parquet").write_bytes(b"PAR1 not any more")
    use(monkeypatch, copied)
    assert conversations.load(["factory:1"], "conversations", val_fraction=0.0)["train"]


def test_a_store_with_absolute_paths_still_reads_and_keeps_its_parts(tmp_path):
    home = tmp_path / "home"
    quiet_build(limit=4)
    before = rows_hash(home)
    with duckdb.connect(str(home / "factory.duckdb")) as db:  # as a store made before relative paths was, then moved
        db.execute("UPDATE parts SET path = '/gone/elsewhere/' || path")
    assert rows_hash(home) == before
    store = Store(home)
    assert store.remove_orphans() == 0
    store.close()
    assert rows_hash(home) == before


def test_orphans_go_only_from_unfinished_versions(tmp_path):
    home = tmp_path / "home"
    quiet_build(limit=4)
    store = Store(home)
    v2 = store.create_version({"fingerprint": "x", "soul_sha256": "", "tools_sha256": "", "config_sha256": "",
                               "inputs_sha256": "", "code_version": "", "config": {}})
    stray = [home / "factory" / f"v000{v}" / "sft-00007.parquet" for v in (1, v2)]
    for path in stray:  # a kill between a part's rename and its catalog row
        path.parent.mkdir(exist_ok=True)
        shutil.copy(home / "factory" / "v0001" / "sft-00000.parquet", path)
    assert store.remove_orphans() == 1
    assert stray[0].exists() and not stray[1].exists()  # a finished version's folder is never touched
    store.close()


def test_a_damaged_part_is_one_line_and_export_leaves_no_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    quiet_build(limit=4)
    part = home / "factory" / "v0001" / "sft-00000.parquet"
    env = {**os.environ, "NANOCODE_HOME": str(home)}
    for damage in (lambda: part.write_bytes(part.read_bytes()[:100]), part.unlink):
        damage()
        for args in (["show", "1"], ["export", "1", str(tmp_path / "out")]):
            out = subprocess.run([str(BIN / "factory"), *args], env=env, capture_output=True, text=True, timeout=60)
            assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
            assert out.stderr.startswith(f"error: {home / 'factory.duckdb'}: cannot read a stored part: ")
            assert str(part) in out.stderr
        assert not (tmp_path / "out").exists()
        with pytest.raises(InputError, match="cannot read a stored part") as e:
            conversations.load(["factory:1"], "conversations")
        assert "\n" not in str(e.value)
