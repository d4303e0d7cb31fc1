"""`factory`: turn the SOUL, the tool spec and seed data into training conversations."""

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nanocode.common import InputError, cli_app, run_cli
from nanocode.spec import load_soul, load_tools

app = cli_app(__doc__)

SoulOption = typer.Option(None, "--soul", help="SOUL file [default: soul/SOUL.md]")
ToolsOption = typer.Option(None, "--tools", help="tool spec [default: soul/tools.yaml]")
UnsafeBashOption = typer.Option(False, "--unsafe-bash", help="run the rollouts' Bash calls (model-written with a "
                                "model) as you, with your environment, not in the bubblewrap sandbox.")


def _console() -> Console:
    return Console(highlight=False)


@app.command()
def check(soul: Optional[Path] = SoulOption, tools: Optional[Path] = ToolsOption) -> None:
    """Load and validate the SOUL and the tool spec; show what they hold, their hashes, and which
    converters (and scenario events) can make rows with this tool spec."""
    from factory.convert import support

    s, t = load_soul(soul), load_tools(tools)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("soul", escape(f"{s.path}  sha256 {s.sha256[:12]}"))
    table.add_row("  sections", ", ".join(s.sections))
    table.add_row("  rules", escape(f"{len(s.rules.declared)}: {', '.join(d.brief for d in s.rules)}"))
    table.add_row("tools", escape(f"{t.path}  sha256 {t.sha256[:12]}"))
    for tool in t.tools:
        args = ", ".join(a.name + ("" if a.required else "?") for a in tool.args)
        runs = (f"runs {tool.builtin}" if tool.builtin else
                f"runs `{tool.command}`" if tool.command else f"calls {tool.entry}")
        table.add_row(f"  {tool.name}", escape(f"({args})  {runs}") + ("  asks first" if tool.needs_approval else ""))
    lacking = support(t)  # converter or scenario part -> why this spec cannot make it
    table.add_row("can make", ", ".join(name for name, why in lacking.items() if not why) or "nothing")
    for name, why in lacking.items():
        if why:
            table.add_row("  not", escape(f"{name}: {'; '.join(why)}"))
    _console().print(table)


@app.command()
def build(soul: Optional[Path] = SoulOption, tools: Optional[Path] = ToolsOption,
          config: Optional[Path] = typer.Option(None, "--config", help="build config YAML [default: factory/configs/default.yaml]"),
          backend: Optional[str] = typer.Option(None, "--backend", help="offline | openai | litellm | vllm [default: the config's, offline]"),
          model: Optional[str] = typer.Option(None, "--model", help="model id for the backend (implies --backend openai if none is set) [default: the config's]"),
          base_url: Optional[list[str]] = typer.Option(None, "--base-url", help="OpenAI-compatible server URL (implies --backend openai); repeat it for several endpoints of one model: each request goes to the least busy healthy one [default: the config's]"),
          concurrency: Optional[int] = typer.Option(None, "--concurrency", help="LLM requests in flight per endpoint [default: the config's, 8]"),
          limit: Optional[int] = typer.Option(None, "--limit", min=0, help="only the first N inputs [default: all]"),
          new: bool = typer.Option(False, "--new", help="a new version even if an identical one is done (cached calls)."),
          from_version: Optional[int] = typer.Option(None, "--from", help="derive from this version (with --exclude-marked) [default: build from the sources]"),
          exclude_marked: bool = typer.Option(False, "--exclude-marked", help="with --from V: a new version = V minus the rows marked in `factory view --curate`."),
          retry_rejected: bool = typer.Option(False, "--retry-rejected", help="a new version = the finished one with its `generate` rejects (calls that could not succeed) run again."),
          ray: Optional[str] = typer.Option(None, "--ray", help="run conversion, critics and replay on a Ray cluster: auto (this machine's, or a new local one) or the head's HOST:PORT; model calls and the store stay here [default: no Ray, one process]"),
          unsafe_bash: bool = UnsafeBashOption) -> None:
    """Build a dataset version: convert, generate, critique, revise; resumes an interrupted build."""
    from factory.build import build as run_build

    base_url = base_url or None  # typer: [] when not given

    if from_version is not None or exclude_marked:
        from factory.curate import derive

        if from_version is None or not exclude_marked:
            raise InputError("--from V and --exclude-marked go together (a new version = V minus its marked rows)")
        if any(x is not None for x in (soul, tools, config, backend, model, base_url, limit, ray)) or new or retry_rejected:
            raise InputError("--from V --exclude-marked copies V's rows: it takes no SOUL, tools, config, backend or --limit")
        derive(from_version, console=_console())
        return

    run_build(soul, tools, config, {"name": backend, "model": model, "base_url": base_url,
                                    "concurrency": concurrency}, limit=limit, new=new, retry_rejected=retry_rejected,
              unsafe_bash=unsafe_bash, ray=ray, console=_console())


scenarios_app = cli_app("Scenario specs (scenarios/*.yaml): check them, write new ones.", root=False)
app.add_typer(scenarios_app, name="scenarios")


@scenarios_app.command("check")
def scenarios_check(paths: list[Path] = typer.Argument(None, help="spec files or directories [default: scenarios/ and, if any, $NANOCODE_HOME/scenarios/generated]"),
                    tools: Optional[Path] = ToolsOption, unsafe_bash: bool = UnsafeBashOption) -> None:
    """Validate specs and expand them offline, in the tool spec's calls (their events must
    happen, their tests pass)."""
    from factory.scenarios import GENERATED, ScenarioSource, check_specs

    paths = paths or [Path("scenarios"), *ScenarioSource(dir=GENERATED, optional=True).files()]
    bad = check_specs(paths, load_tools(tools), say=print, unsafe_bash=unsafe_bash)
    if bad:
        raise InputError(f"{bad} spec(s) failed")


@scenarios_app.command("generate")
def scenarios_generate(n: int = typer.Option(..., "--n", min=1, help="how many specs to ask for."),
                       out: Optional[Path] = typer.Option(None, "--out", help="where kept specs go [default: $NANOCODE_HOME/scenarios/generated, which the default build reads]"),
                       soul: Optional[Path] = SoulOption, tools: Optional[Path] = ToolsOption,
                       backend: Optional[str] = typer.Option(None, "--backend", help="openai | litellm | vllm [default: openai]"),
                       model: Optional[str] = typer.Option(None, "--model", help="model id for the backend [default: none: required]"),
                       base_url: Optional[list[str]] = typer.Option(None, "--base-url", help="OpenAI-compatible server URL; repeat it for several endpoints of one model, as in build [default: the backend's own]"),
                       concurrency: int = typer.Option(4, "--concurrency", min=1, help="requests in flight."),
                       unsafe_bash: bool = UnsafeBashOption) -> None:
    """Write N new scenario specs with a model, few-shot from shipped ones; invalid ones are dropped."""
    from factory.backends import BackendConfig
    from factory.config import construct
    from factory.scenarios import GENERATED, generate

    cfg = construct("backend", BackendConfig, {"name": backend or "openai", "model": model,
                                               "base_url": base_url or None,  # typer: [] when not given
                                               "concurrency": concurrency}, "scenarios generate")
    if cfg.name == "offline":
        raise InputError("scenarios generate needs a model backend (--base-url/--model)")
    result = generate(n, cfg, out or GENERATED, load_soul(soul), load_tools(tools), say=print, unsafe_bash=unsafe_bash)
    print(f"{len(result['kept'])} kept, {len(result['dropped'])} dropped")


@app.command("ls")
def ls() -> None:
    """List the versions in the store."""
    from factory.store import Store
    from factory.versions import ls_table

    _console().print(ls_table(Store(read_only=True)))


@app.command()
def show(version: int, samples: int = typer.Option(1, "--samples", min=0, help="sample rows to print.")) -> None:
    """Counts, pass rates, cost and sample rows of one version."""
    from factory.store import Store
    from factory.versions import show as show_version

    table, lines = show_version(Store(read_only=True), version, samples)
    console = _console()
    console.print(table)
    for line in lines:
        console.print(escape(line), soft_wrap=True)


@app.command()
def diff(v1: int, v2: int) -> None:
    """Rows added, removed and changed between two versions, by source; rows marked excluded."""
    from factory.curate import diff_lines
    from factory.store import Store
    from factory.versions import diff as diff_versions

    store = Store(read_only=True)
    _console().print(diff_versions(store, v1, v2))
    for line in diff_lines(store, v1, v2):
        print(line)


TestFraction = typer.Option(0.1, "--test-fraction", min=0.0, max=0.99, help="share of inputs in the test split.")


@app.command()
def export(version: int, directory: Path, soul: Optional[Path] = SoulOption, tools: Optional[Path] = ToolsOption,
           test_fraction: float = TestFraction) -> None:
    """Write a version's sft rows, pairs and rejects as Parquet and JSONL, plus the Hub layout
    `publish` uploads (card, manifest, SOUL, tool spec, sft/ and preference/ train/test splits)."""
    from factory.store import Store
    from factory.versions import export as export_version

    for path in export_version(Store(read_only=True), version, directory, soul, tools, test_fraction):
        print(path)


@app.command()
def publish(version: int, repo: str = typer.Option(..., "--repo", help="the Hub dataset repo, USER/NAME."),
            private: bool = typer.Option(False, "--private", help="create the repo private."),
            revision: Optional[str] = typer.Option(None, "--revision", help="tag for the commit [default: vVERSION]"),
            soul: Optional[Path] = SoulOption, tools: Optional[Path] = ToolsOption,
            test_fraction: float = TestFraction) -> None:
    """Upload a finished version to the Hugging Face Hub in one commit and tag it (token: HF_TOKEN)."""
    from factory.publish import publish as publish_version
    from factory.store import Store

    out = publish_version(Store(read_only=True), version, repo, private, revision, soul, tools, test_fraction)
    print(f"published version {version} to {out['url']}: commit {out['commit']}, tag {out['tag']}, "
          f"{len(out['files'])} files")


@app.command()
def view(version: Optional[int] = typer.Option(None, "--version", help="open this version's page first [default: the list of versions]"),
         port: int = typer.Option(8765, "--port", min=1, max=65535, help="port on 127.0.0.1."),
         curate: bool = typer.Option(False, "--curate", help="allow marking rows excluded (writes the exclusions table).")) -> None:
    """A local web page to inspect, compare and curate versions (read-only unless --curate)."""
    from factory.view import serve

    serve(version, port, curate)


def main() -> None:
    run_cli(app)
