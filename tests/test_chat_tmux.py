"""`nanocode chat` end to end in a real terminal: tmux runs it against the scripted server, the
test types keys and reads the screen (send-keys / capture-pane), polling with timeouts."""

import os
import re
import shlex
import shutil
import subprocess
import time
import uuid

import pytest

from tests.conftest import BIN
from tests.scripted_server import ScriptedServer

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (CI installs it; apt-get install tmux)")

BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"


class Terminal:
    """One tmux session on a private socket (the user's own tmux server is never touched)."""

    def __init__(self, command: str, env: dict):
        self.socket = f"nanocode-test-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        self._tmux("new-session", "-d", "-s", "t", "-x", "200", "-y", "50",
                   f"env {exports} {command}; echo '[exited]'; sleep 60")

    def _tmux(self, *args) -> str:
        env = {k: v for k, v in os.environ.items() if k != "TMUX"}  # also when run inside tmux
        return subprocess.run(["tmux", "-u", "-L", self.socket, *args], env=env, check=True,
                              capture_output=True, text=True, timeout=10).stdout

    def send(self, *keys) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", line)  # -l: literally, no key names
        self.send("Enter")

    def colours(self) -> str:
        """The screen with its escape sequences (-e)."""
        return self._tmux("capture-pane", "-p", "-e", "-J", "-S", "-", "-t", "t")

    def screen(self) -> str:
        """Everything printed so far (scrollback too), without the blank rows under the cursor,
        so a length taken now marks where later output starts."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "t").rstrip()

    def wait_for(self, text: str, after: int = 0, timeout: float = 10.0) -> str:
        """Poll until `text` shows up past character `after` of the screen; the screen."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen[after:]:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} did not appear within {timeout}s; the screen:\n{screen}")
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


def test_chat_in_a_real_terminal(tmp_path):
    ws = tmp_path / "ws"
    (ws / "build").mkdir(parents=True)
    (ws / "calc.py").write_text(BUGGY)
    token = uuid.uuid4().hex  # names the long Bash's process, to check it is gone
    script = [
        {"text": "let me look", "tool_calls": [call("Read", file_path="calc.py")]},
        {"text": "found it", "tool_calls": [call("Edit", file_path="calc.py", old_string="a - b",
                                                 new_string="a + b")]},
        {"text": "fixed! it subtracted."},
        {"text": "cleaning up", "tool_calls": [call("Bash", command="rm -rf build")]},
        {"text": "ok, i'll leave it."},
        {"text": "napping", "tool_calls": [call("Bash", command=f"touch started; sleep 30; echo {token}")]},
        {"text": "still here, what next?"},
    ]
    env = {"NANOCODE_HOME": os.environ["NANOCODE_HOME"], "LANG": "C.UTF-8", "TERM": "xterm-256color",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    with ScriptedServer(script) as server:
        term = Terminal(f"{BIN / 'nanocode'} chat --base-url {server.base_url} --workspace {ws}", env)
        try:
            term.wait_for("/help for commands", timeout=30)

            # an Edit: the diff is on screen before the approval, the file changes after it
            term.type("add is broken, fix it")
            screen = term.wait_for("allow Edit on calc.py?")
            assert "Read(" in screen and "-    return a - b" in screen and "+    return a + b" in screen
            assert (ws / "calc.py").read_text() == BUGGY
            coloured, sgr = term.colours(), r"(\x1b\[[0-9;]*m)*"  # removals red (31), additions green (32)
            assert re.search(r"\x1b\[31m" + sgr + re.escape("-    return a - b"), coloured)
            assert re.search(r"\x1b\[32m" + sgr + re.escape("+    return a + b"), coloured)
            mark = len(screen)
            term.type("y")
            term.wait_for("fixed! it subtracted.", mark)
            assert (ws / "calc.py").read_text() == FIXED

            # a refused Bash: the reason reaches the server's next request
            term.type("clean up the build dir")
            mark = len(term.wait_for("allow Bash?", mark))
            term.type("n")
            term.wait_for("reason for the model", mark)
            term.type("keep build, i need it")
            mark = len(term.wait_for("ok, i'll leave it.", mark))
            result = server.requests[-1]["messages"][-1]
            assert result["role"] == "tool" and "keep build, i need it" in result["content"]
            assert (ws / "build").is_dir()

            # /undo puts the file back
            term.type("/undo")
            mark = len(term.wait_for("restored calc.py", mark))
            assert (ws / "calc.py").read_text() == BUGGY

            # Ctrl-C during a long Bash: back at the prompt in moments, the command killed
            term.type("take a nap")
            mark = len(term.wait_for("allow Bash?", mark))
            term.type("y")
            deadline = time.monotonic() + 10
            while not (ws / "started").exists():
                assert time.monotonic() < deadline, "the Bash never started:\n" + term.screen()
                time.sleep(0.05)
            started = time.monotonic()
            term.send("C-c")
            screen = term.wait_for("interrupted", mark, timeout=5)
            term.wait_for("\n›", mark, timeout=5)
            assert time.monotonic() - started < 5
            assert "error: interrupted by the user" in screen
            gone = subprocess.run(["pgrep", "-f", token], capture_output=True)
            assert gone.returncode == 1, f"the Bash outlived Ctrl-C: {gone.stdout!r}"

            # ... and the session still answers, the interrupted call answered in the record
            mark = len(screen)
            term.type("still there?")
            term.wait_for("still here, what next?", mark)
            sent = server.requests[-1]["messages"]
            assert sent[-2] == {"role": "tool", "tool_call_id": sent[-3]["tool_calls"][0]["id"],
                                "content": "error: interrupted by the user"}
            assert "undid your last edit to calc.py" in sent[-4]["content"]  # the nap's user turn

            term.type("/quit")
            term.wait_for("[exited]")
        finally:
            term.close()
