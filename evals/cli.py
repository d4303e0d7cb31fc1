"""`evals`: measure the model (bits per byte, CORE, agentic tasks, SOUL adherence) and report a run.

RUN is a stage directory (`trainer run ... --out DIR`) or a root holding pretrain/ sft/ dpo/; model
evals use its last stage with a checkpoint. Each eval writes RUN/evals/<name>.json (what
`evals report RUN` reads) and prints a table.
"""

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evals import runs
from evals.agentic import SEED, TEMPERATURE, TOP_K
from evals.report import cell, pct, result_table, sampling
from nanocode.common import InputError, cli_app, nanocode_home, run_cli
from nanocode.soul_checks import check_reply
from nanocode.spec import load_soul, read_file

app = cli_app(__doc__)


@app.command("soul-check")
def soul_check(reply: str = typer.Argument(..., metavar="TEXT_FILE_OR_-",
                                           help="an assistant reply as text; - reads stdin."),
               soul: Optional[Path] = typer.Option(None, "--soul", help="SOUL file [default: soul/SOUL.md]")
               ) -> None:
    """Run the SOUL's programmatic checks on one final reply; exit 1 if any fails."""
    rules = load_soul(soul).rules
    checks = check_reply(sys.stdin.read() if reply == "-" else read_file(Path(reply), empty_ok=True)[1], rules)
    console = Console(highlight=False)
    for c in checks:
        mark = "[green]pass[/]" if c.ok else "[red]fail[/]"
        console.print(f"{mark}  {c.rule:<16} {escape(c.detail)}")
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


# ----------------------------------------------------------------------------- model evals

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def _table(title: str, r: dict) -> None:
    """The result's table, as the report shows it."""
    headers, rows = result_table(r["kind"], r)
    t = Table(*headers, title=title)
    for row in rows:
        t.add_row(*map(cell, row))
    console.print(t)


def _load(run: Path):
    """(the stage directory evaluated, load_model's result)."""
    from trainer.checkpoint import load_model

    d = runs.model_dir(run)
    return d, load_model(d)


def _saved(run, name, result) -> None:
    console.print(f"wrote {runs.write_result(run, name, result)}")


@app.command()
def bpb(run: Path = typer.Argument(..., help="run directory"),
        corpus: Optional[Path] = typer.Option(None, help="corpus with val shards [default: $NANOCODE_HOME/corpus/local]"),
        max_tokens: int = typer.Option(2**16, help="tokens per text kind"),
        batch_size: int = typer.Option(8)) -> None:
    """Bits per byte on the corpus's held-out prose and code."""
    from evals import bpb as bpb_eval
    from trainer.corpus import default_corpus

    d, loaded = _load(run)
    r = bpb_eval.evaluate(d, corpus or default_corpus(), max_tokens, batch_size, loaded=loaded)
    _table(f"bits per byte: {d} step {r['step']}", r)
    _saved(run, "bpb", r)


@app.command("copy")
def copy_probe(run: Path = typer.Argument(..., help="run directory"),
               runs_: Optional[int] = typer.Option(None, "--runs", help="random runs of tokens, each shown "
                                                   "twice [default: 16]"),
               length: Optional[int] = typer.Option(None, help="tokens a run [default: 40]"),
               seed: int = typer.Option(0)) -> None:
    """Can the model copy from its context (the induction probe): loss on a random run shown twice."""
    from evals import copying

    d, loaded = _load(run)
    r = copying.evaluate(d, runs_ or copying.RUNS, length or copying.LENGTH, seed, loaded=loaded)
    _table(f"copying: {d} step {r['step']}", r)
    _saved(run, "copy", r)


@app.command()
def core(run: str = typer.Argument(..., metavar="RUN|download",
                                   help="run directory, or `download` to fetch nanochat's eval bundle"),
         bundle: Optional[Path] = typer.Option(None, help="eval bundle directory [default: $NANOCODE_HOME/eval_bundle]"),
         max_per_task: int = typer.Option(-1, help="examples per task (-1: all)"),
         url: str = typer.Option(None, help="with download: the bundle's URL [default: nanochat's]")) -> None:
    """CORE (DCLM's in-context tasks, centered accuracy) from an eval bundle; `core download` fetches it."""
    from evals import core as core_eval

    if run == "download" and not Path(run).is_dir():
        core_eval.download(bundle, url or core_eval.BUNDLE_URL, log=console.print)
        return
    d, loaded = _load(Path(run))
    r = core_eval.evaluate(d, bundle or core_eval.default_bundle(), max_per_task, loaded=loaded, log=console.print)
    _table(f"CORE: {d} step {r['step']}", r)
    for m in r["missing"]:
        console.print(f"[yellow]skipped[/] {escape(m)}")
    _saved(Path(run), "core", r)


@app.command()
def agentic(run: Optional[Path] = typer.Argument(None, help="run directory (served in-process); or use --base-url"),
            base_url: Optional[str] = typer.Option(None, "--base-url", help="any OpenAI-compatible server [default: serve RUN in-process]"),
            model: Optional[str] = typer.Option(None, "--model", help="with --base-url: the model name [default: the first it lists]"),
            api_key: Optional[str] = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="[default: $OPENAI_API_KEY]"),
            limit: Optional[int] = typer.Option(None, help="run only the first N tasks [default: all]"),
            kinds: str = typer.Option("stub,bugfix", help="task kinds, comma-separated"),
            max_steps: int = typer.Option(20, help="model turns per task"),
            max_tokens: int = typer.Option(1024, help="tokens per model turn"),
            temperature: float = typer.Option(TEMPERATURE, min=0.0, max=2.0, help="sampling temperature sent with "
                                              "every request (0: greedy)"),
            top_k: int = typer.Option(TOP_K, min=0, help="sample from the k likeliest tokens (0: all)"),
            seed: int = typer.Option(SEED, help="sampling seed sent with every request: the same model and "
                                     "seed give the same eval"),
            out: Optional[Path] = typer.Option(None, help="where evals/agentic.json goes [default: RUN, or "
                                               "$NANOCODE_HOME/evals/MODEL with --base-url]"),
            soul: Optional[Path] = typer.Option(None, "--soul", help="[default: soul/SOUL.md]"),
            tools: Optional[Path] = typer.Option(None, "--tools", help="[default: soul/tools.yaml]"),
            unsafe_bash: bool = typer.Option(False, "--unsafe-bash", help="run the model's Bash calls and its code's "
                                             "tests outside the bubblewrap sandbox (only where bwrap cannot run)"),
            ) -> None:
    """Held-out HumanEval problems as small repos, solved through the agent; hidden tests decide."""
    from evals import agentic as agentic_eval

    if (run is None) == (base_url is None):
        raise InputError("pass a RUN directory or --base-url URL (not both)")
    from agent.sandbox import unavailable

    if not unsafe_bash and (why := unavailable()):  # before a model is loaded for nothing
        raise InputError(f"cannot run the model's commands in a sandbox: {why}; pass --unsafe-bash to run "
                         "them unsandboxed")
    prompt = None
    if run is not None:
        from trainer.checkpoint import read_run
        from trainer.server import serve_in_background
        from trainer.sft import system_prompt_of

        prompt = system_prompt_of(read_run(runs.model_dir(run))[2])  # the variant the run trained with
        base_url, model = serve_in_background(runs.model_dir(run))
    r = agentic_eval.evaluate(base_url, model, api_key=api_key, limit=limit,
                              kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()), soul=soul, tools=tools,
                              max_steps=max_steps, max_tokens=max_tokens, unsafe_bash=unsafe_bash, prompt=prompt,
                              temperature=temperature, top_k=top_k, seed=seed, log=console.print)
    s = r["summary"]
    _table(f"agentic: {r['model']} ({s['tasks']} tasks, {r['tasks_per_s']:.3g} tasks/s, {sampling(r)})", r)
    where = out or run or nanocode_home() / "evals" / "".join(c if c.isalnum() or c in "-_." else "_" for c in r["model"])
    _saved(where, "agentic", r)


@app.command()
def soul(run: Path = typer.Argument(..., help="run directory"),
         data: Optional[list[str]] = typer.Option(None, help="conversations whose held-out first user turns are the "
                                                  "prompts [default: one per held-out HumanEval problem]"),
         limit: Optional[int] = typer.Option(None, help="at most N prompts [default: all]"),
         max_tokens: int = typer.Option(256, help="tokens per reply"),
         judge_backend: Optional[str] = typer.Option(None, help="the factory's SOUL judge on this backend: "
                                                     "openai, litellm or vllm [default: no judge]"),
         judge_model: Optional[str] = typer.Option(None, help="the judge's model [default: none]"),
         judge_base_url: Optional[str] = typer.Option(None, help="the judge's server [default: the backend's own]"),
         soul_path: Optional[Path] = typer.Option(None, "--soul", help="the SOUL to judge by [default: the one the "
                                                   "run's factory data was built from, else soul/SOUL.md]"),
         tools: Optional[Path] = typer.Option(None, "--tools", help="[default: soul/tools.yaml]"),
         ) -> None:
    """SOUL adherence: the SOUL's checks as pass rates over replies to held-out prompts (+ an optional judge)."""
    from evals import soul as soul_eval

    judge_cfg = None
    if judge_backend:
        from factory.backends import BackendConfig

        try:
            judge_cfg = BackendConfig(name=judge_backend, model=judge_model, base_url=judge_base_url)
        except ValueError as e:
            raise InputError(f"--judge-backend: {e}") from None
    d, loaded = _load(run)
    r = soul_eval.evaluate(d, data=data, limit=limit, soul=soul_path, tools=tools, max_tokens=max_tokens,
                           judge_cfg=judge_cfg, loaded=loaded)
    console.print(escape(f"SOUL: {r['soul']['path']} ({r['soul']['from']})"))
    _table(f"SOUL checks: {r['replies']} replies, {pct(r['degenerate_rate'])} degenerate, all pass "
           f"{pct(r['all_pass_rate'])}", r)
    if r.get("judge"):
        console.print(f"judge {r['judge']['model']}: mean rating {r['judge']['mean_rating']} "
                      f"({r['judge']['unrated']} unrated)")
    _saved(run, "soul", r)


@app.command()
def preference(run: Path = typer.Argument(..., help="run directory"),
               data: list[str] = typer.Option(..., help="preference pairs, as `trainer run dpo --data` takes them"),
               val_fraction: float = typer.Option(0.05, help="the held-out share (as DPO used it)"),
               all_pairs: bool = typer.Option(False, "--all", help="score every pair, not only the held-out ones"),
               beta: float = typer.Option(0.1)) -> None:
    """DPO preference accuracy on held-out pairs (implicit reward vs the reference, and raw log-probs)."""
    from evals import preference as pref_eval

    d, loaded = _load(run)
    r = pref_eval.evaluate(d, data, val_fraction=val_fraction, all_pairs=all_pairs, beta=beta, loaded=loaded)
    _table(f"preference: {r['pairs']} {r['split']} pairs", r)
    _saved(run, "preference", r)


@app.command()
def report(run: Path = typer.Argument(..., help="a stage directory or a root with pretrain/ sft/ dpo/")) -> None:
    """One self-contained HTML page for a run: config, curves, evals, samples."""
    from evals import report as report_mod

    console.print(f"wrote {report_mod.write(run, log=lambda m: console.print(f'[yellow]{escape(m)}[/]'))}")
    for line in report_mod.abilities(runs.read_results(run)):  # the report's "what this model can do" box
        console.print(escape(line))


def main() -> None:
    run_cli(app)
