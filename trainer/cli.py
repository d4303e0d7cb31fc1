"""`trainer`: corpus preparation, tokenizer training and evaluation (stages come later)."""

import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from agent.common import InputError, nanocode_home, run_cli
from trainer import corpus, tokenizer_eval
from trainer.tokenizer import Tokenizer

console = Console(width=None if sys.stdout.isatty() else 120)  # pipes and logs get whole tables

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__)
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train and evaluate the BPE tokenizer.")
data_app = typer.Typer(no_args_is_help=True, help="Download or build pretraining corpora as parquet shards.")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(data_app, name="data")


def default_corpus() -> Path:
    return nanocode_home() / "corpus" / "local"


def default_tokenizer() -> Path:
    return nanocode_home() / "tokenizer"


# ---------------------------------------------------------------------------- data
# (owned by trainer/corpus.py's author)


def default_download_corpus() -> Path:
    return nanocode_home() / "corpus" / "hf"


def print_corpus(corpus_dir: Path) -> None:
    table = Table(title=str(corpus_dir))
    for c in ["kind", "split", "shards", "docs", "chars", "MB on disk"]:
        table.add_column(c, justify="left" if c in ("kind", "split") else "right")
    for r in corpus.describe(corpus_dir):
        table.add_row(r["kind"], r["split"], f"{r['shards']:,}", f"{r['docs']:,}", f"{r['chars']:,}",
                      f"{r['bytes'] / 1e6:,.1f}")
    console.print(table)


@data_app.command("local")
def data_local(
    out: Path = typer.Option(None, help="corpus directory [default: $NANOCODE_HOME/corpus/local]"),
    max_chars: int = typer.Option(None, help="cap on total chars, split 1:5 between code and prose [default: all]"),
    seed: int = typer.Option(42, help="which files a cap picks, and the shuffle"),
    doc_chars: int = typer.Option(4000, help="longest document, cut at line boundaries"),
):
    """Build an offline corpus: stdlib .py files (code), /usr/share/doc and docstrings (prose)."""
    out = out or default_corpus()
    t0 = time.perf_counter()
    corpus.build_local(out, max_chars=max_chars, seed=seed, doc_chars=doc_chars)
    console.print(f"built {out} in {time.perf_counter() - t0:.1f}s")
    print_corpus(out)


@data_app.command("download")
def data_download(
    dataset: str = typer.Argument(..., help="HF dataset id (HuggingFaceFW/fineweb-edu) or a local folder"),
    kind: str = typer.Option(..., help="prose or code"),
    column: str = typer.Option("text", help="the text column (`content` in Stack-like code sets)"),
    config: str = typer.Option(None, help="dataset config name (fineweb-edu: sample-10BT)"),
    data_dir: str = typer.Option(None, help="dataset subfolder (the-stack-dedup: data/python)"),
    split: str = typer.Option("train"),
    max_docs: int = typer.Option(None, help="train docs to fetch, after the val docs [default: all]"),
    val_docs: int = typer.Option(corpus.ROWS_PER_GROUP, help="the first docs of the stream, kept for val.parquet"),
    out: Path = typer.Option(None, help="corpus directory [default: $NANOCODE_HOME/corpus/hf]"),
):
    """Stream a dataset into parquet shards; run it again to resume or to fetch more."""
    out = out or default_download_corpus()
    entry = corpus.download(dataset, kind, out, column=column, config=config, split=split,
                            data_dir=data_dir, max_docs=max_docs, val_docs=val_docs)
    end = " (the whole dataset)" if entry["exhausted"] else ""
    console.print(f"{out / kind}: {entry['train']['docs']:,} train docs in {entry['train']['shards']} shards "
                  f"+ {entry['val']['docs']:,} val docs{end}")


@data_app.command("show")
def data_show(corpus_dir: Path = typer.Argument(None, help="[default: $NANOCODE_HOME/corpus/local]")):
    """Kinds, splits, docs and chars of a corpus."""
    print_corpus(corpus_dir or default_corpus())


# ---------------------------------------------------------------------------- tokenizer


@tokenizer_app.command("train")
def tokenizer_train(
    corpus_dir: Path = typer.Option(None, "--corpus", help="corpus directory [default: $NANOCODE_HOME/corpus/local]"),
    out: Path = typer.Option(None, help="where to save it [default: $NANOCODE_HOME/tokenizer]"),
    vocab_size: int = typer.Option(32768, help="including the special tokens"),
    max_chars: int = typer.Option(2_000_000_000, help="stop after this many characters of training text"),
    doc_cap: int = typer.Option(10_000, help="crop each document to this many characters"),
    code_ratio: str = typer.Option("1:5", help="code:prose characters; 0:1 trains a prose-only tokenizer"),
    seed: int = typer.Option(0, help="order in which the two kinds are interleaved"),
):
    """Train the BPE tokenizer on the corpus (rustbpe) and save it for tiktoken."""
    corpus_dir, out = corpus_dir or default_corpus(), out or default_tokenizer()
    ratio = corpus.check_ratio(code_ratio)
    texts = (t[:doc_cap] for t in corpus.mixed_texts(corpus_dir, "train", ratio, seed, max_chars))
    t0 = time.perf_counter()
    tok = Tokenizer.train(texts, vocab_size)
    seconds = time.perf_counter() - t0
    tok.info.update(corpus=str(corpus_dir), code_ratio=code_ratio, max_chars=max_chars, doc_cap=doc_cap,
                    seconds=round(seconds, 2))
    tok.save(out)
    console.print(f"trained vocab {tok.vocab_size:,} on {tok.info['chars']:,} chars in {seconds:.1f}s -> {out}")


@tokenizer_app.command("eval")
def tokenizer_eval_cmd(
    tokenizer: Path = typer.Option(None, help="[default: $NANOCODE_HOME/tokenizer]"),
    baseline: Path = typer.Option(None, help="prose-only tokenizer to compare with [default: $NANOCODE_HOME/tokenizer-prose]"),
    corpus_dir: Path = typer.Option(None, "--corpus", help="adds its validation shards [default: the one it was trained on]"),
    markdown: bool = typer.Option(False, help="print a markdown table"),
):
    """Bytes per token on prose, code, math, non-English and the validation shards."""
    ours = Tokenizer.load(tokenizer or default_tokenizer())
    baseline = baseline or nanocode_home() / "tokenizer-prose"
    base = Tokenizer.load(baseline) if (baseline / "tokenizer.json").exists() else None
    if base is not None and base.vocab_size != ours.vocab_size:
        raise InputError(f"baseline {baseline} has vocab {base.vocab_size:,}, ours {ours.vocab_size:,}: compare equal sizes")
    corpus_dir = corpus_dir or (Path(ours.info["corpus"]) if ours.info.get("corpus") else None)
    rows = tokenizer_eval.compare(ours, base, tokenizer_eval.eval_texts(corpus_dir))
    if markdown:
        print(tokenizer_eval.markdown_table(rows))
        return
    table = Table(title=f"our tokenizer vs a prose-only one, vocab {ours.vocab_size:,}")
    columns = ["text", "bytes", "tokens", "bytes/tok"]
    if base:
        columns += ["prose-only\ntokens", "prose-only\nbytes/tok", "ours\nsaves"]
    for c in columns:
        table.add_column(c, justify="left" if c == "text" else "right", no_wrap=True)
    for r in rows:
        cells = [r["text"], f"{r['bytes']:,}", f"{r['ours_tokens']:,}", f"{r['ours_bpt']:.2f}"]
        if base:
            cells += [f"{r['base_tokens']:,}", f"{r['base_bpt']:.2f}", f"{r['fewer_tokens']:+.1%}"]
        table.add_row(*cells)
    console.print(table)
    if base is None:
        console.print(f"(no prose-only baseline at {baseline}: train one with "
                      f"`trainer tokenizer train --code-ratio 0:1 --out {baseline}`)")


def main() -> None:
    run_cli(app)
