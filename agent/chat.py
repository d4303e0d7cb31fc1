"""The terminal around a Session: `nanocode chat` (interactive) and `nanocode run` (scripted).

Everything the model or the workspace says is printed as rich `Text`, never as markup, so
brackets in code cannot restyle the terminal. Model text is written as it arrives.
"""

import re
import time

from rich.console import Console
from rich.text import Text

from agent.session import Decision, Session
from nanocode.common import nanocode_home
from nanocode.record import REFUSED, call_text

try:
    import readline  # noqa: F401  line editing and history for input(), where available
except ImportError:  # pragma: no cover - Windows
    pass

PROMPT = "› "
HELP = """commands:
  /undo         revert the last edit the model applied
  /clear        start a fresh conversation (permissions and /undo history stay)
  /save [path]  save the session as a conversation record (JSON; the factory can ingest it)
  /help         this list
  /quit         leave (Ctrl-D works too)
Ctrl-C stops the model or the running tool and comes back here; twice at an empty prompt quits.
{free} run without asking; {asking} ask: y = yes, n = no (you may give a reason,
which the model reads), a = always allow that tool for this session."""


def help_text(spec) -> str:
    """/help, naming the tool spec's own tools."""
    names = lambda ask: ", ".join(t.name for t in spec.tools if t.needs_approval == ask) or "no tools"  # noqa: E731
    return HELP.format(free=names(False), asking=names(True))


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")


def clean(text: str) -> str:
    """Text safe for the terminal: a model or a file could hold escape sequences that move the
    cursor or retitle the window, so control characters are shown escaped (CRs dropped)."""
    return _CONTROL.sub(lambda m: "" if m[0] == "\r" else repr(m[0])[1:-1], text)


# a unified diff's line styles, by prefix (the first that matches): file names before +/- lines
DIFF_STYLES = (("+++", "bold"), ("---", "bold"), ("+", "green"), ("-", "red"), ("@@", "cyan"), ("", "dim"))


def diff_text(diff: str) -> Text:
    """A unified diff, coloured: additions green, removals red, hunk headers cyan."""
    out = Text()
    for line in diff.splitlines():
        out.append(clean(line) + "\n", style=next(s for prefix, s in DIFF_STYLES if line.startswith(prefix)))
    return out


class ChatUI:
    """Renders session events and asks for approvals on a rich console."""

    def __init__(self, console: Console, preview_lines: int = 4):
        self.console = console
        self.preview_lines = preview_lines
        self._midline = False  # model text was written without a final newline
        self._status = None    # the spinner while a tool runs

    # ------------------------------------------------------------------ events

    def on_event(self, kind: str, payload) -> None:
        if kind == "text":
            self.console.file.write(clean(payload))
            self.console.file.flush()
            self._midline = not payload.endswith("\n")
            return
        self._stop_status()
        self._newline()
        if kind == "assistant" and not payload.get("content") and not payload.get("tool_calls"):
            self.console.print(Text("(the model said nothing)", style="dim"))
        elif kind == "call":
            self.console.print(Text("● ", style="cyan") + Text(clean(call_text(payload, 60)), style="bold"))
        elif kind == "running" and self.console.is_terminal:
            self._status = self.console.status(f"running {payload['name']}… (Ctrl-C stops it)")
            self._status.start()
        elif kind == "result":
            self._result(payload[1])
        elif kind in ("notice", "context_full"):
            self.console.print(Text(f"· {clean(payload)}", style="yellow"))
        elif kind == "error":
            self.console.print(Text(f"error: {clean(payload)}", style="red"))

    def _result(self, text: str) -> None:
        lines = text.splitlines() or [""]
        style = "red" if text.startswith("error") or text.startswith(REFUSED) else "dim"
        shown = lines[:self.preview_lines]
        for i, line in enumerate(shown):
            self.console.print(Text(("  ⎿ " if i == 0 else "    ") + clean(line), style=style))
        if len(lines) > len(shown):
            self.console.print(Text(f"    … +{len(lines) - len(shown)} lines", style="dim"))

    def _newline(self) -> None:
        if self._midline:
            self.console.file.write("\n")
            self._midline = False

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def end_turn(self) -> None:
        self._stop_status()
        self._newline()

    # ---------------------------------------------------------------- approval

    def approve(self, call: dict, preview) -> Decision:
        name = call["name"]
        question = f"allow {name}?"
        if preview and preview.kind == "diff":
            self.console.print(diff_text(preview.text), end="")
            question = f"allow {name} on {clean(preview.target)}?"
        elif preview and preview.kind == "command":
            self.console.print(Text(f"  $ {clean(preview.text)}", style="bold"))
        try:
            while True:
                answer = input(f"{question} [y]es / [n]o / [a]lways ").strip()
                word, _, rest = answer.partition(" ")  # `n don't touch that` works in one go
                word = word.lower()
                if word in ("y", "yes"):
                    return Decision(True)
                if word in ("a", "always"):
                    self.console.print(Text(f"· {name} is allowed for the rest of the session", style="yellow"))
                    return Decision(True, always=True)
                if word in ("n", "no"):
                    reason = rest.strip() or input("reason for the model (optional, Enter to skip): ").strip()
                    return Decision(False, reason=reason)
                self.console.print(Text("answer y, n or a", style="yellow"))
        except EOFError:  # input closed (piped stdin): nobody can approve, so it is a no
            self.console.print()
            return Decision(False, reason="nobody there to approve it")


def auto_approve(yes: bool):
    """Approvals for `nanocode run`: all yes, or all no with a reason the model reads.

    Yes covers shell and command tools too: they run in the workspace but, unlike the file
    tools, are not confined (unless the runtime has a sandbox)."""
    return lambda call, preview: Decision(True) if yes else Decision(False, reason="not approved (run without --yes)")


def command(session: Session, ui: ChatUI, line: str) -> bool:
    """Run a slash command; False means quit."""
    name, _, arg = line.strip().partition(" ")
    say = lambda text, style="yellow": ui.console.print(Text(text, style=style))  # noqa: E731
    if name in ("/quit", "/exit", "/q"):
        return False
    if name == "/help":
        ui.console.print(Text(help_text(session.tools.spec)))
    elif name == "/undo":
        result = session.undo()
        say(f"· {result}", "red" if result.startswith("error") else "yellow")
    elif name == "/clear":
        session.clear()
        say("· cleared: a fresh conversation")
    elif name == "/save":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = arg.strip() or nanocode_home() / "sessions" / f"{stamp}-{session.record()['id'][:8]}.json"
        try:
            saved = session.save(path)
        except OSError as e:
            say(f"error: cannot save to {path}: {e.strerror or e}", "red")
        else:
            say(f"· saved {len(session.messages)} messages to {saved}")
    else:
        say(f"unknown command {name} (see /help)")
    return True


def chat(session: Session, ui: ChatUI, banner: str) -> None:
    """The interactive loop: read a line, run it, repeat until /quit, Ctrl-D or Ctrl-C twice."""
    ui.console.print(Text(banner, style="bold"))
    ui.console.print(Text("/help for commands · Ctrl-C stops the model or a tool · Ctrl-D quits", style="dim"))
    interrupted_at_prompt = False
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            ui.console.print()
            return
        except KeyboardInterrupt:
            if interrupted_at_prompt:
                ui.console.print()
                return
            interrupted_at_prompt = True
            ui.console.print(Text("\n(Ctrl-C again or Ctrl-D to quit)", style="dim"))
            continue
        interrupted_at_prompt = False
        try:
            if not line.strip():
                continue
            if line.startswith("/"):
                if not command(session, ui, line):
                    return
                continue
            session.send(line)
        except KeyboardInterrupt:  # a second Ctrl-C while the first was being handled
            session.repair()
            ui.end_turn()
            ui.console.print(Text("· interrupted", style="yellow"))
        finally:
            ui.end_turn()


def run_once(session: Session, ui: ChatUI, task: str) -> str:
    """`nanocode run`: one task to the end, the transcript on the console; returns the status."""
    ui.console.print(Text(PROMPT + task, style="bold"))
    try:
        return session.send(task)
    finally:
        ui.end_turn()
