"""The pretraining corpus: the offline local build, HF-style downloads from fixture folders, mixing,
and bad input through the real `trainer` command."""

import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanocode.common import InputError
from trainer import corpus, local_corpus

FIXTURES = Path(__file__).parent / "fixtures" / "corpus"
FINEWEB, STACK = FIXTURES / "fineweb_like", FIXTURES / "stack_like"
TRAINER = Path(sys.executable).parent / "trainer"


def files_of(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[Path]:
    """Temp files or build dirs a write left behind."""
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".building")) or p.name.endswith(".old")]


def index(text: str) -> int:
    return int(re.search(r"\d+", text).group())


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "corpus"
    local_corpus.build(out, max_chars=400_000, seed=1, doc_chars=200)
    return out


# ------------------------------------------------------------------------------ local build


def test_build_local_layout(local):
    manifest = corpus.read_manifest(local)
    assert manifest["source"] == "local" and manifest["seed"] == 1
    for kind in corpus.KINDS:
        for split in corpus.SPLITS:
            files = corpus.shards(local, kind, split)
            assert [f.parent.name for f in files] == [kind] * len(files)
            docs = 0
            for f in files:
                pf = pq.ParquetFile(f)
                assert pf.schema_arrow.names == ["text"] and pf.schema_arrow.field("text").type == pa.string()
                assert all(pf.metadata.row_group(i).num_rows <= corpus.ROWS_PER_GROUP
                           for i in range(pf.num_row_groups))
                docs += pf.metadata.num_rows
            texts = list(corpus.iter_texts(files))
            assert len(texts) == docs == manifest["kinds"][kind][split]["docs"]
            assert sum(map(len, texts)) == manifest["kinds"][kind][split]["chars"]
            assert all(0 < len(t) <= 200 for t in texts)
    # 400k chars of 200-char docs: prose spans more than one row group
    assert pq.ParquetFile(corpus.shards(local, "prose")[0]).num_row_groups > 1
    code, prose = (sum(manifest["kinds"][k][s]["chars"] for s in corpus.SPLITS) for k in corpus.KINDS)
    assert 0.18 < code / prose < 0.22  # the cap keeps the default 1:5
    assert 390_000 <= code + prose <= 401_000
    val = manifest["kinds"]["prose"]["val"]["chars"] / (code + prose)
    assert 0.01 < val < 0.03
    # code is python source, prose is not
    code_texts = list(corpus.iter_texts(corpus.shards(local, "code")))
    assert sum("def " in t or "import " in t for t in code_texts) > len(code_texts) / 4


def test_build_local_is_deterministic_and_rebuilds_cleanly(local, tmp_path):
    again = tmp_path / "again"
    local_corpus.build(again, max_chars=400_000, seed=1, doc_chars=200)
    assert files_of(again) == files_of(local)
    other = tmp_path / "other"
    local_corpus.build(other, max_chars=400_000, seed=2, doc_chars=200)
    assert files_of(other) != files_of(local)
    # a rebuild replaces the whole corpus: no stale shards, no temp dirs
    local_corpus.build(again, max_chars=50_000, seed=1)
    assert sorted(files_of(again)) == ["code/shard_00000.parquet", "code/val.parquet", "manifest.json",
                                       "prose/shard_00000.parquet", "prose/val.parquet"]
    assert corpus.read_manifest(again)["max_chars"] == 50_000
    assert not leftovers(tmp_path)


def test_build_local_refuses_a_foreign_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        local_corpus.build(tmp_path, max_chars=10_000)
    assert os.listdir(tmp_path) == ["notes.txt"]


# ------------------------------------------------------------------------------ mixing


def test_mixed_texts_ratio_and_determinism(local):
    kind_of = {t: k for k in corpus.KINDS for t in corpus.iter_texts(corpus.shards(local, k))}
    a = list(corpus.mixed_texts(local, seed=0, max_chars=150_000))
    assert a == list(corpus.mixed_texts(local, seed=0, max_chars=150_000))
    assert a != list(corpus.mixed_texts(local, seed=1, max_chars=150_000))
    assert sum(map(len, a)) == 150_000
    chars = {k: sum(len(t) for t in a if kind_of.get(t) == k) for k in corpus.KINDS}
    assert abs(chars["code"] / chars["prose"] - 1 / 5) < 0.01
    # interleaved, not one kind then the other
    assert {kind_of.get(t) for t in a[:20]} == {"code", "prose"}

    b = list(corpus.mixed_texts(local, code_ratio=(1, 1), max_chars=60_000))
    chars = {k: sum(len(t) for t in b if kind_of.get(t) == k) for k in corpus.KINDS}
    assert abs(chars["code"] / chars["prose"] - 1) < 0.02

    prose_only = list(corpus.mixed_texts(local, code_ratio=(0, 1)))
    assert {kind_of[t] for t in prose_only} == {"prose"} and len(prose_only) == sum(
        v == "prose" for v in kind_of.values())

    val = list(corpus.mixed_texts(local, split="val"))
    val_set = {t for k in corpus.KINDS for t in corpus.iter_texts(corpus.shards(local, k, "val"))}
    assert val and set(val) <= val_set


def test_mixed_texts_bad_input(tmp_path, local):
    with pytest.raises(InputError, match=f"no corpus at {tmp_path}"):
        corpus.mixed_texts(tmp_path)
    with pytest.raises(InputError, match="not both zero"):
        corpus.mixed_texts(local, code_ratio=(0, 0))
    with pytest.raises(InputError, match="unknown split"):
        corpus.mixed_texts(local, split="test")


def test_iter_texts_reports_corrupt_shards(tmp_path, local):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all" * 10)
    with pytest.raises(InputError, match=f"{garbage} is not a readable parquet file"):
        list(corpus.iter_texts([garbage]))
    # a good footer over damaged pages: caught when that row group is read
    damaged = tmp_path / "damaged.parquet"
    data = bytearray(corpus.shards(local, "prose")[0].read_bytes())
    for i in range(200, 4000):
        data[i] ^= 0x5A
    damaged.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"{damaged} is corrupt"):
        list(corpus.iter_texts([damaged]))
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"content": ["x"]}), no_text)
    with pytest.raises(InputError, match=r"no_text.parquet has no `text` column \(it has: content\)"):
        list(corpus.iter_texts([no_text]))


# ------------------------------------------------------------------------------ download


def test_download_prose_and_code_from_fixture_folders(tmp_path):
    out = tmp_path / "hf"
    prose = corpus.download(str(FINEWEB), "prose", out, val_docs=5, docs_per_shard=10)
    code = corpus.download(str(STACK), "code", out, column="content", val_docs=4, docs_per_shard=16)
    assert prose["exhausted"] and code["exhausted"]
    assert [index(t) for t in corpus.iter_texts(corpus.shards(out, "prose", "val"))] == list(range(5))
    train = corpus.shards(out, "prose")
    assert [pq.ParquetFile(f).metadata.num_rows for f in train] == [10, 10, 10, 10, 10, 5]
    assert [index(t) for t in corpus.iter_texts(train)] == list(range(5, 60))
    code_texts = list(corpus.iter_texts(corpus.shards(out, "code")))
    assert len(code_texts) == 36 and code_texts[0].startswith("# snippet 4\ndef f4")
    manifest = corpus.read_manifest(out)
    assert manifest["kinds"]["prose"]["train"] == {"docs": 55, "chars": sum(map(len, corpus.iter_texts(train))),
                                                  "shards": 6}
    assert manifest["kinds"]["code"]["column"] == "content"
    # the mix ends when the kind it needs next runs out (code is the larger share here)
    mixed = list(corpus.mixed_texts(out, code_ratio=(5, 1)))
    assert sum(t.startswith("# snippet") for t in mixed) == 36


def test_download_resumes_without_dups_or_gaps(tmp_path):
    out = tmp_path / "hf"
    first = corpus.download(str(FINEWEB), "prose", out, max_docs=23, val_docs=5, docs_per_shard=10)
    assert first["train"]["docs"] == 23 and not first["exhausted"]
    assert [pq.ParquetFile(f).metadata.num_rows for f in corpus.shards(out, "prose")] == [10, 10, 3]
    # a killed run leaves a temp file; the next run clears it and rewrites the short shard whole
    (out / "prose" / ".shard_00003.parquet.abc123.tmp").write_bytes(b"half a shard")
    full = corpus.shards(out, "prose")[:2]
    kept = [f.stat().st_mtime_ns for f in full]
    second = corpus.download(str(FINEWEB), "prose", out, max_docs=41, val_docs=5, docs_per_shard=10)
    assert second["train"]["docs"] == 41
    assert [f.stat().st_mtime_ns for f in full] == kept  # complete shards are not rewritten
    corpus.download(str(FINEWEB), "prose", out, val_docs=5, docs_per_shard=10)
    texts = list(corpus.iter_texts(corpus.shards(out, "prose", "val") + corpus.shards(out, "prose")))
    assert [index(t) for t in texts] == list(range(60))
    assert not leftovers(tmp_path)
    # a finished download is not fetched again; a different layout is refused
    before = files_of(out)
    assert corpus.download(str(FINEWEB), "prose", out, val_docs=5, docs_per_shard=10)["exhausted"]
    assert files_of(out) == before
    with pytest.raises(InputError, match="docs_per_shard was 10, now 20"):
        corpus.download(str(FINEWEB), "prose", out, val_docs=5, docs_per_shard=20)


def test_download_retries_by_reopening_the_stream(tmp_path, monkeypatch):
    real_load = datasets.load_dataset
    opened = []  # the skip each stream was opened with

    class Flaky:
        """The real streaming dataset, except that the first stream breaks after 7 rows."""

        def __init__(self, ds, skip=0):
            self.ds, self.skip_n, self.column_names = ds, skip, ds.column_names

        def skip(self, n):
            return Flaky(self.ds.skip(n), n)

        def __iter__(self):
            opened.append(self.skip_n)
            for i, row in enumerate(self.ds):
                if len(opened) <= 2 and i == 7:
                    raise ConnectionError("connection reset by peer")
                yield row

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: Flaky(real_load(*a, **k)))
    corpus.download(str(FINEWEB), "prose", tmp_path, val_docs=5, docs_per_shard=10, backoff=0)
    assert opened == [0, 7, 14]  # two breaks, each re-opened at the next unread doc
    texts = list(corpus.iter_texts(corpus.shards(tmp_path, "prose", "val") + corpus.shards(tmp_path, "prose")))
    assert [index(t) for t in texts] == list(range(60))

    opened.clear()
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    with pytest.raises(InputError, match="gave up on .* after 2 retries: down"):
        corpus.download(str(FINEWEB), "code", tmp_path / "other", retries=2, backoff=0)


# ------------------------------------------------------------------------------ the command line


def trainer(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NANOCODE_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([str(TRAINER), "data", *args], capture_output=True, text=True, env=env, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0]


def test_cli_local_and_show(tmp_path):
    result = trainer("local", "--max-chars", "60000", home=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "corpus" / "local"
    assert str(out) in result.stdout.replace("\n", "") and "prose" in result.stdout
    assert len(corpus.shards(out, "code")) == 1
    shown = trainer("show", home=tmp_path)
    assert shown.returncode == 0 and "val" in shown.stdout and "code" in shown.stdout


def test_cli_bad_input(tmp_path, local):
    home = tmp_path / "home"
    missing = tmp_path / "missing"
    assert_one_line_error(trainer("show", str(missing), home=home), f"no corpus at {missing}")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(trainer("show", str(empty), home=home), f"no corpus at {empty}")

    broken = tmp_path / "broken"
    (broken / "prose").mkdir(parents=True)
    bad = broken / "prose" / "shard_00000.parquet"
    bad.write_bytes(os.urandom(512))
    assert_one_line_error(trainer("show", str(broken), home=home), str(bad), "not a readable parquet file")
    pq.write_table(pa.table({"body": ["x"]}), bad)
    assert_one_line_error(trainer("show", str(broken), home=home), str(bad), "no `text` column", "body")

    out = tmp_path / "hf"
    result = trainer("download", str(STACK), "--kind", "code", "--val-docs", "3", "--out", str(out), home=home)
    assert_one_line_error(result, str(STACK), "no column 'text'", "content, path, lang, size")
    assert not (out / "code").exists() and "code" not in corpus.read_manifest(out).get("kinds", {})
    result = trainer("download", str(STACK), "--kind", "code", "--column", "content", "--val-docs", "3",
                     "--out", str(out), home=home)
    assert result.returncode == 0 and "37 train docs" in result.stdout, result.stderr

    damaged = tmp_path / "damaged_dataset" / "data" / "train-00000-of-00001.parquet"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(os.urandom(600))
    result = trainer("download", str(damaged.parent.parent), "--kind", "prose", "--out", str(out), home=home)
    assert_one_line_error(result, str(damaged))
    nowhere = tmp_path / "no_such_dataset"
    result = trainer("download", str(nowhere), "--kind", "prose", "--out", str(out), home=home)
    assert_one_line_error(result, str(nowhere))
    assert_one_line_error(trainer("download", str(FINEWEB), "--kind", "poetry", "--out", str(out), home=home),
                          "unknown kind 'poetry'")
    assert_one_line_error(trainer("local", "--out", str(tmp_path / "broken"), "--max-chars", "1000", home=home),
                          str(tmp_path / "broken"), "not empty")
    assert not leftovers(tmp_path)
