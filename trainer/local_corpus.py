"""The offline corpus (`trainer data local`): built from text already on the machine.

code  = every `.py` under the stdlib dir (site-/dist-packages excluded, `test/` kept).
prose = (a) text files under /usr/share/doc: READMEs, NEWS, changelogs, copyright notices,
        `.txt/.md/.rst` (`.gz` decompressed); HTML, PostScript, JSON, logs, scripts (`#!`),
        tests results and anything binary or non-UTF-8 are skipped;
        (b) docstrings of stdlib modules (not of their tests: those are terse and
        repetitive), read with `ast`, one document per module, each docstring headed by its
        dotted name — the closest thing to English prose about code that every machine has.
Man pages are not used: they are roff markup and rendering 18k of them takes minutes.
Prose documents that zlib compresses below MIN_PROSE_COMPRESSION (tables, file lists, glyph
maps: about 2% of them) are dropped. Whole files are deduplicated (Debian ships one changelog
per binary package) and each is cut to its first MAX_SOURCE_CHARS so no single changelog
dominates. Files are cut into documents of at most `doc_chars` at line boundaries. The val split is chosen per *file*
(by a hash of its path and the seed), so no file straddles train and val; a stdlib module's
code and its docstrings land in the same split. The layout is trainer/corpus.py's.
"""

import ast
import gzip
import hashlib
import itertools
import os
import random
import shutil
import sysconfig
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

from nanocode.common import InputError
from nanocode.record import hash_unit
from trainer import corpus
from trainer.corpus import DEFAULT_RATIO, DOCS_PER_SHARD, KINDS, SPLITS

MAX_SOURCE_CHARS = 1_000_000
DOC_ROOT = Path("/usr/share/doc")
# /usr/share/doc: which file names count as prose (after dropping `.gz`)
PROSE_SUFFIXES = {"", ".txt", ".md", ".rst", ".debian"}
NOT_PROSE_NAMES = {"makefile", "postinst", "postrm", "preinst", "prerm", "gdbinit"}
# a prose doc that zlib squeezes below this is a table, a file list or a glyph map, not prose
MIN_PROSE_COMPRESSION = 0.15


def _write_split(kind_dir: Path, split: str, docs: list[str]) -> dict:
    """Write one split as shards (train) or val.parquet; return its counts."""
    if split == "val":
        corpus.write_shard(kind_dir / "val.parquet", docs)
        n_shards = 1
    else:
        starts = range(0, max(len(docs), 1), DOCS_PER_SHARD)
        for i, start in enumerate(starts):
            corpus.write_shard(kind_dir / f"shard_{i:05d}.parquet", docs[start:start + DOCS_PER_SHARD])
        n_shards = len(starts)
    return {"docs": len(docs), "chars": sum(map(len, docs)), "shards": n_shards}


def _chunk(text: str, doc_chars: int) -> Iterator[str]:
    """Cut text into docs of at most doc_chars, at line boundaries (a longer line is split)."""
    doc, size = [], 0
    for line in text.splitlines(keepends=True):
        while len(line) > doc_chars:  # one huge line: emit what we have, then hard-split it
            if doc:
                yield "".join(doc)
                doc, size = [], 0
            yield line[:doc_chars]
            line = line[doc_chars:]
        if size + len(line) > doc_chars:
            yield "".join(doc)
            doc, size = [], 0
        doc.append(line)
        size += len(line)
    if doc:
        yield "".join(doc)


def _walk(root: Path, skip_dirs=frozenset()) -> Iterator[Path]:
    """Files under root in a fixed order, not following directory symlinks."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)  # prune: site-packages is huge
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _is_prose_name(path: Path) -> bool:
    name = path.name.removesuffix(".gz").lower()
    return (Path(name).suffix in PROSE_SUFFIXES and name not in NOT_PROSE_NAMES
            and "test" not in name and not name.startswith("."))


def _decode(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\0" in text else text


def _read_doc(path: Path) -> str | None:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return None
    text = _decode(data)
    return None if text is None or text.startswith("#!") else text


def _read_docstrings(path: Path, module: str) -> str | None:
    """A module's docstrings as prose: each headed by its dotted name, separated by blank lines."""
    source = _decode(path.read_bytes())
    if source is None:
        return None
    try:
        with warnings.catch_warnings(action="ignore"):  # invalid escapes in old modules are not our business
            tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return None
    parts = []

    def visit(node, name):
        if doc := ast.get_docstring(node):
            parts.append(f"{name}\n\n{doc.strip()}\n")
        for child in node.body:
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{name}.{child.name}")

    visit(tree, module)
    return "\n".join(parts) or None


def _local_sources(kind: str, stdlib: Path, doc_root: Path) -> list[tuple[str, Path, str]]:
    """(key, path, reader) per source file; the key names the file for the val split."""
    def module(p):
        parts = p.relative_to(stdlib).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    py = [p for p in _walk(stdlib, {"site-packages", "dist-packages", "__pycache__"}) if p.suffix == ".py"]
    if kind == "code":
        return [(f"stdlib/{p.relative_to(stdlib)}", p, "code") for p in py]
    tests = {"test", "tests", "idle_test"}
    out = [(f"stdlib/{p.relative_to(stdlib)}", p, module(p)) for p in py
           if not tests & set(p.relative_to(stdlib).parts)]
    if doc_root.is_dir():
        out += [(f"doc/{p.relative_to(doc_root)}", p, "doc") for p in _walk(doc_root)
                if p.is_file() and _is_prose_name(p)]
    return out


def _read_source(path: Path, reader: str) -> str | None:
    try:
        if reader == "code":
            return _decode(path.read_bytes())
        if reader == "doc":
            return _read_doc(path)
        return _read_docstrings(path, reader)
    except OSError:  # unreadable file (permissions, vanished): not our corpus
        return None


def _collect_local(kind: str, seed: int, cap: float | None, doc_chars: int, val_fraction: float,
                   stdlib: Path, doc_root: Path) -> dict[str, list[str]]:
    rng = random.Random(f"{seed}:{kind}")
    sources = _local_sources(kind, stdlib, doc_root)
    rng.shuffle(sources)  # with a cap, read a random subset of files, stopping once it is met
    caps = dict.fromkeys(SPLITS) if cap is None else {"train": cap * (1 - val_fraction), "val": cap * val_fraction}
    docs, chars = {s: [] for s in SPLITS}, dict.fromkeys(SPLITS, 0)
    seen_files, seen_docs = set(), set()
    for key, path, reader in sources:
        full = [s for s in SPLITS if caps[s] is not None and chars[s] >= caps[s]]
        if len(full) == 2:
            break
        split = "val" if hash_unit(seed, key) < val_fraction else "train"
        if split in full:
            continue
        text = _read_source(path, reader)
        if not text:
            continue
        text = text[:MAX_SOURCE_CHARS]
        digest = hashlib.sha256(text.encode()).digest()
        if digest in seen_files:
            continue
        seen_files.add(digest)
        for doc in _chunk(text, doc_chars):
            data = doc.encode()
            digest = hashlib.sha256(data).digest()
            if kind == "prose" and len(zlib.compress(data, 1)) / max(len(data), 1) < MIN_PROSE_COMPRESSION:
                continue
            if doc.strip() and digest not in seen_docs:
                seen_docs.add(digest)
                docs[split].append(doc)
                chars[split] += len(doc)
    for split in SPLITS:
        rng.shuffle(docs[split])
        if caps[split] is not None:  # the last files read overshoot: drop random docs past the cap
            before = itertools.accumulate(map(len, docs[split]), initial=0)  # chars of the docs before each
            docs[split] = [doc for doc, n in zip(docs[split], before) if n < caps[split]]
    return docs


def build(out_dir: str | os.PathLike, max_chars: int | None = None, seed: int = 42, doc_chars: int = 4000,
          val_fraction: float = 0.02, code_ratio=DEFAULT_RATIO, stdlib: str | os.PathLike | None = None,
          doc_root: str | os.PathLike = DOC_ROOT) -> dict:
    """Build the offline corpus into out_dir (replacing an earlier local build); return the manifest.

    `max_chars` caps the total, split between kinds by `code_ratio` (so a small corpus keeps the
    mix) and between splits by `val_fraction`. Same machine + same args -> identical shards.
    """
    out_dir = Path(out_dir)
    c, p = corpus.check_ratio(code_ratio)
    if not 0 < val_fraction < 1:
        raise InputError(f"val fraction {val_fraction} must be between 0 and 1")
    if doc_chars < 1 or (max_chars is not None and max_chars < 1):
        raise InputError("doc chars and max chars must be positive")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} is a file, not a corpus directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and corpus.read_manifest(out_dir).get("source") != "local":
        raise InputError(f"{out_dir} is not empty and holds no local corpus: pick another --out")
    stdlib = Path(stdlib or sysconfig.get_paths()["stdlib"])
    doc_root = Path(doc_root)
    manifest = {"source": "local", "seed": seed, "max_chars": max_chars, "doc_chars": doc_chars,
                "val_fraction": val_fraction, "code_ratio": [c, p], "kinds": {}}
    describes = {"code": f"python stdlib .py files under {stdlib}",
                 "prose": f"text files under {doc_root} + stdlib docstrings under {stdlib}"}
    # build beside out_dir, then swap it in: a failed build leaves the old corpus untouched
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".building", dir=out_dir.parent))
    try:
        for kind, weight in zip(KINDS, (c, p)):
            if weight == 0:
                continue
            cap = None if max_chars is None else max_chars * weight / (c + p)
            docs = _collect_local(kind, seed, cap, doc_chars, val_fraction, stdlib, doc_root)
            if not docs["train"] or not docs["val"]:
                raise InputError(f"found too little {kind} text for a train and a val split "
                                 f"({describes[kind]}); raise --max-chars")
            entry = {"source": describes[kind]}
            for split in SPLITS:
                entry[split] = _write_split(tmp / kind, split, docs[split])
            manifest["kinds"][kind] = entry
        corpus.write_manifest(tmp, manifest)
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
