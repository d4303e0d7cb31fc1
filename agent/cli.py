"""`nanocode`: the terminal coding agent."""

from pathlib import Path
from typing import Optional

import typer

from agent.common import run_cli
from agent.spec import load_soul, load_tools, render_system_prompt

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__)


@app.callback()
def _group() -> None:
    # a callback keeps `nanocode prompt` a subcommand while it is the app's only one
    pass


@app.command()
def prompt(soul: Optional[Path] = typer.Option(None, "--soul", help="SOUL file (default soul/SOUL.md)."),
           tools: Optional[Path] = typer.Option(None, "--tools", help="tool spec (default soul/tools.yaml).")
           ) -> None:
    """Print the system prompt the model sees, rendered from the SOUL and the tool spec."""
    # plain print, not rich: the prompt holds brackets and backticks that must come out verbatim
    print(render_system_prompt(load_soul(soul), load_tools(tools)), end="")


def main() -> None:
    run_cli(app)
