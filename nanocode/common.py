"""Small pieces every part shares: the bad-input error, atomic writes, the CLI entry wrapper."""

import contextlib
import os
import sys
import tempfile
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: umask can only be read by setting it


class InputError(Exception):
    """Bad input the user can fix (a missing file, a malformed spec, a vocab too small).

    The CLIs print it as one line and exit 2; anything else is a bug and keeps its traceback.
    """


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or kill mid-write leaves the old file (or nothing), never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def cli_app(help: str | None = None, root: bool = True):
    """A typer app as every nanocode command is made: help in markdown mode (rich markup would
    swallow a help text's `[default: ...]` and `SOURCE[@WEIGHT]`), no pretty tracebacks, and on a
    root app `--version` (its callback also keeps a single command a subcommand)."""
    import typer

    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="markdown", help=help)
    if root:
        def show_version(value: bool) -> None:
            if value:
                print(f"nanocode {version()}")
                raise typer.Exit()

        @app.callback()
        def _root(_: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                         help="print the version and exit")) -> None:
            pass
    return app


def version(package: str = "nanocode", missing: str = "0+unknown") -> str:
    """An installed package's version; `missing` when it is not installed (nanocode: a checkout
    run without `pip install -e .`)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return missing


def run_cli(app) -> None:
    """Run a typer app; an InputError becomes `error: ...` on stderr and exit status 2."""
    try:
        app()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def nanocode_home() -> Path:
    """Where stores, corpora and tokenizers live: $NANOCODE_HOME or ~/.cache/nanocode."""
    return Path(os.environ.get("NANOCODE_HOME") or Path.home() / ".cache" / "nanocode")
