"""`trainer`: corpus preparation, tokenizer training and evaluation (stages come later)."""

from pathlib import Path

import typer

from agent.common import InputError, nanocode_home, run_cli

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


# ---------------------------------------------------------------------------- tokenizer


def main() -> None:
    run_cli(app)
