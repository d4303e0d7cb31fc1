"""`factory`: turn the SOUL, the tool spec and seed data into training conversations."""

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent.common import run_cli
from agent.spec import load_soul, load_tools

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__)

SoulOption = typer.Option(None, "--soul", help="SOUL file (default soul/SOUL.md).")
ToolsOption = typer.Option(None, "--tools", help="tool spec (default soul/tools.yaml).")


@app.callback()
def _group() -> None:
    # a callback keeps `factory check` a subcommand while it is the app's only one
    pass


@app.command()
def check(soul: Optional[Path] = SoulOption, tools: Optional[Path] = ToolsOption) -> None:
    """Load and validate the SOUL and the tool spec; show what they hold and their hashes."""
    s, t = load_soul(soul), load_tools(tools)
    rules = s.rules.active()
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("soul", escape(f"{s.path}  sha256 {s.sha256[:12]}"))
    table.add_row("  sections", ", ".join(s.sections))
    table.add_row("  checkable rules", f"{len(rules)}: {', '.join(rules)}")
    table.add_row("tools", escape(f"{t.path}  sha256 {t.sha256[:12]}"))
    for tool in t.tools:
        args = ", ".join(a.name + ("" if a.required else "?") for a in tool.args)
        table.add_row(f"  {tool.name}", f"({args})" + ("  asks first" if tool.needs_approval else ""))
    Console(highlight=False).print(table)


def main() -> None:
    run_cli(app)
