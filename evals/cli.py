"""`evals`: measure the model (bits per byte, CORE, agentic tasks, SOUL adherence)."""

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from agent.common import InputError, run_cli
from agent.soul_checks import check_reply
from agent.spec import load_soul

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__)


@app.callback()
def _group() -> None:
    # a callback keeps `evals soul-check` a subcommand while it is the app's only one
    pass


def _read_reply(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{source}: not UTF-8 text") from None
    except OSError as e:
        raise InputError(f"{source}: cannot read it ({e.strerror})") from None


@app.command("soul-check")
def soul_check(reply: str = typer.Argument(..., metavar="TEXT_FILE_OR_-",
                                           help="an assistant reply as text; - reads stdin."),
               soul: Optional[Path] = typer.Option(None, "--soul", help="SOUL file (default soul/SOUL.md).")
               ) -> None:
    """Run the SOUL's programmatic checks on one final reply; exit 1 if any fails."""
    rules = load_soul(soul).rules
    checks = check_reply(_read_reply(reply), rules)
    console = Console(highlight=False)
    for c in checks:
        mark = "[green]pass[/]" if c.ok else "[red]fail[/]"
        console.print(f"{mark}  {c.rule:<16} {escape(c.detail)}")
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


def main() -> None:
    run_cli(app)
