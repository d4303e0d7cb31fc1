"""`nanocode`: the terminal coding agent."""

import sys
from pathlib import Path
from typing import Optional

import typer

from agent.backend import TEMPERATURE
from nanocode.common import InputError, cli_app, run_cli
from nanocode.spec import load_soul, load_tools, render_system_prompt

app = cli_app(__doc__)


@app.command()
def prompt(soul: Optional[Path] = typer.Option(None, "--soul", help="SOUL file [default: soul/SOUL.md]"),
           tools: Optional[Path] = typer.Option(None, "--tools", help="tool spec [default: soul/tools.yaml]")
           ) -> None:
    """Print the system prompt the model sees, rendered from the SOUL and the tool spec."""
    # plain print, not rich: the prompt holds brackets and backticks that must come out verbatim
    print(render_system_prompt(load_soul(soul), load_tools(tools)), end="")


# ------------------------------------------------------------------- chat and run

_BASE_URL_HELP = ("OpenAI-compatible server (`trainer serve`, vLLM, ...), e.g. http://127.0.0.1:8000/v1; "
                  "a bare host:port gets /v1. [default: none: --model names a local run to serve]")
_MODEL_HELP = ("with --base-url: the served model's name [default: the first the server lists]. "
               "Without: a run directory, or its checkpoints' URL (file://, gs://), served by a child `trainer serve` "
               "on a free loopback port and reached the same way.")

_YES_HELP = ("approve every call the tool spec marks needs_approval (default spec: Edit and Bash). "
             "Without it those calls are refused and the model is told so.")
_SANDBOX_HELP = ("run shell and command tools (default spec: Bash) in a bubblewrap sandbox: no network, the system read-only, the workspace the "
                 "only writable folder, no credentials in its environment, nothing outliving the call.")
_JSON_HELP = ("write the session as a conversation record to this file "
              "('-': to stdout, and the transcript goes to stderr) [default: not written]")


def _session(base_url, model, api_key, workspace, soul, tools, sandbox, temperature, approve, on_event, source):
    """Workspace, SOUL, tool spec, sandbox, backend, in that order: each bad input is one InputError line."""
    from agent.backend import OpenAIBackend
    from agent.sandbox import unavailable
    from agent.session import Session
    from agent.tools import Tools

    root = Path(workspace) if workspace is not None else Path.cwd()
    if not root.is_dir():  # said here too, so the message names the flag whatever Tools says
        raise InputError(f"--workspace {root}: no such directory")
    soul_, spec = load_soul(soul), load_tools(tools)
    if sandbox and (why := unavailable()):  # said here, so the message names this command's flag
        raise InputError(f"--sandbox: {why}")
    runtime = Tools(root, spec, sandbox=sandbox)
    if not base_url:
        if not model:
            raise InputError("no model to talk to: pass --model RUN_DIR (a trained run) or --base-url URL "
                             "(an OpenAI-compatible server)")
        if sys.stderr.isatty():  # restoring a big checkpoint takes a while; scripts get no noise
            print(f"loading {model} ...", file=sys.stderr, flush=True)
        base_url, model = serve_run(model)
    backend = OpenAIBackend(base_url, model=model, api_key=api_key, temperature=temperature)
    backend.check()
    session = Session(backend, runtime, render_system_prompt(soul_, spec), approve, on_event,
                      soul_sha=soul_.sha256, tools_sha=spec.sha256, source=source)
    return session, backend, runtime


def serve_run(run: str) -> tuple[str, str]:
    """Serve a local run with `trainer serve --child` in a child process: (base URL, model name).

    A process, not an import: the agent knows models only as OpenAI-compatible servers. The
    child stops when our end of its stdin closes, which happens however this process ends.
    """
    import json
    import subprocess
    import tempfile

    errors = tempfile.TemporaryFile(mode="w+")
    child = subprocess.Popen([sys.executable, "-m", "trainer.cli", "serve", "--checkpoint", run, "--child"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
                             start_new_session=True)  # Ctrl-C in the chat must not reach the server
    line = child.stdout.readline()
    if not line:  # it failed before listening: its `error: ...` line is the reason
        child.wait()
        errors.seek(0)
        said = [x for x in errors.read().splitlines() if x.strip()]
        reason = next((x.removeprefix("error: ") for x in said if x.startswith("error: ")),
                      said[-1] if said else f"exit status {child.returncode}")
        raise InputError(f"--model {run}: {reason}")
    _CHILDREN.append(child)  # keeps its stdin open for as long as we live
    ready = json.loads(line)
    return ready["url"], ready["model"]


_CHILDREN: list = []


_opts = dict(
    base_url=typer.Option(None, "--base-url", help=_BASE_URL_HELP),
    model=typer.Option(None, "--model", help=_MODEL_HELP),
    api_key=typer.Option(None, "--api-key", envvar="OPENAI_API_KEY",
                         help="API key for the server [default: $OPENAI_API_KEY, else 'none']"),
    workspace=typer.Option(None, "--workspace", help="the directory the tools work in [default: here]"),
    soul=typer.Option(None, "--soul", help="SOUL file [default: soul/SOUL.md]"),
    tools=typer.Option(None, "--tools", help="tool spec [default: soul/tools.yaml]"),
    sandbox=typer.Option(False, "--sandbox", help=_SANDBOX_HELP),
    temperature=typer.Option(TEMPERATURE, "--temperature", min=0.0, max=2.0,
                             help="sampling temperature sent with every request (0: the likeliest token)"),
)


@app.command()
def chat(base_url: Optional[str] = _opts["base_url"], model: Optional[str] = _opts["model"],
         api_key: Optional[str] = _opts["api_key"], workspace: Optional[Path] = _opts["workspace"],
         soul: Optional[Path] = _opts["soul"], tools: Optional[Path] = _opts["tools"],
         sandbox: bool = _opts["sandbox"], temperature: float = _opts["temperature"]) -> None:
    """Talk to the agent in your terminal: it reads, searches, edits and runs things in the workspace.

    Tools the spec marks needs_approval ask first (edits shown as a diff); with the default spec
    Read and Grep run without asking, Edit and Bash ask. Type /help inside.
    """
    from rich.console import Console

    from agent.chat import ChatUI
    from agent.chat import chat as chat_loop

    ui = ChatUI(Console(highlight=False, soft_wrap=True))
    session, backend, runtime = _session(base_url, model, api_key, workspace, soul, tools, sandbox, temperature,
                                         ui.approve, ui.on_event, "nanocode chat")
    chat_loop(session, ui, f"nanocode · {backend.label} · workspace {runtime.root}" + " · sandboxed" * sandbox)


@app.command()
def run(task: str = typer.Argument(..., help="what to do, as you would type it in chat."),
        yes: bool = typer.Option(False, "--yes", help=_YES_HELP),
        json_path: Optional[str] = typer.Option(None, "--json", help=_JSON_HELP),
        base_url: Optional[str] = _opts["base_url"], model: Optional[str] = _opts["model"],
        api_key: Optional[str] = _opts["api_key"], workspace: Optional[Path] = _opts["workspace"],
        soul: Optional[Path] = _opts["soul"], tools: Optional[Path] = _opts["tools"],
        sandbox: bool = _opts["sandbox"], temperature: float = _opts["temperature"]) -> None:
    """Run one task without asking anything, for scripts and evals; prints the transcript.

    Exit status: 0 the model finished, 1 it was stopped (server error, full context, step limit), 2 bad input.
    """
    import json

    from rich.console import Console

    from agent.chat import ChatUI, auto_approve, run_once

    console = Console(highlight=False, soft_wrap=True, stderr=json_path == "-")
    ui = ChatUI(console, preview_lines=20)
    session, _, _ = _session(base_url, model, api_key, workspace, soul, tools, sandbox, temperature,
                             auto_approve(yes), ui.on_event, "nanocode run")
    status = run_once(session, ui, task)
    if json_path == "-":
        print(json.dumps(session.record(), ensure_ascii=False))
    elif json_path:
        try:
            session.save(json_path)
        except OSError as e:
            raise InputError(f"--json {json_path}: cannot write it ({e.strerror or e})") from None
    if status != "done":
        console.print(f"stopped: {status.replace('_', ' ')}", markup=False)
        sys.exit(1)


def main() -> None:
    run_cli(app)
