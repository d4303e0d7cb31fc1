"""Running one command as the shell builtin does: its own process group (one kill reaches every
child, on a timeout or Ctrl-C alike), no stdin, stdout and stderr drained concurrently and capped
head and tail, so a command printing gigabytes costs no memory and never blocks on a full pipe.
The result is the text the model reads: exit code (a signal death shown as one), then both streams.
"""

import contextlib
import os
import signal
import subprocess
import threading
import time

# no pagers, prompts or progress bars: nobody can answer them
QUIET_ENV = {"PAGER": "cat", "GIT_PAGER": "cat", "MANPAGER": "cat", "GIT_TERMINAL_PROMPT": "0",
             "PIP_PROGRESS_BAR": "off", "TQDM_DISABLE": "1"}


def elide(text: str, keep: int, tail: str = "", dropped: int = 0) -> str:
    """`text` + `tail` in about `keep` chars: both ends kept, the middle counted. `dropped`
    chars between text and tail were never captured (a huge shell output)."""
    if not dropped:
        if len(text) + len(tail) <= keep:
            return text + tail
        text, tail = text + tail, ""
    end = tail if dropped else text
    a, b = text[:keep // 2], end[max(0, len(end) - (keep - keep // 2)):]
    n = len(text) + dropped + len(tail) - len(a) - len(b)
    return f"{a}\n... [{n} chars elided] ...\n{b}"


class _Drain(threading.Thread):
    """Read a pipe to its end keeping only the first and last `keep` bytes, so a command
    printing gigabytes costs no memory and never blocks on a full pipe."""

    def __init__(self, pipe, keep: int):
        super().__init__(daemon=True)
        self.pipe, self.keep, self.head, self.tail, self.dropped = pipe, keep, bytearray(), bytearray(), 0

    def run(self):
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(self.pipe.fileno(), 1 << 16):
                room = max(0, self.keep - len(self.head))
                self.head += chunk[:room]
                self.tail += chunk[room:]
                if len(self.tail) > self.keep:
                    self.dropped += len(self.tail) - self.keep
                    del self.tail[:len(self.tail) - self.keep]

    def text(self) -> tuple[str, str, int]:
        head, tail = bytes(self.head), bytes(self.tail)
        if not self.dropped:  # contiguous: decode together so no character is split
            return (head + tail).decode("utf-8", "replace"), "", 0
        return head.decode("utf-8", "replace"), tail.decode("utf-8", "replace"), self.dropped


def run(argv: list[str], cwd, env: dict, timeout: float, keep: int, sandboxed: bool) -> str:
    """Run `argv` (a shell, or bwrap around one, then the command) in cwd: the result text."""
    # its own session, so one killpg reaches every child; no stdin to wait on
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    drains = [_Drain(proc.stdout, keep), _Drain(proc.stderr, keep)]
    for d in drains:
        d.start()
    code = None
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout=timeout)
    finally:  # on KeyboardInterrupt too, which then goes on up to the agent
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # background jobs too: nothing outlives the call
        proc.wait()
        deadline = time.monotonic() + 1.0
        for d, pipe in zip(drains, (proc.stdout, proc.stderr)):
            d.join(max(0.0, deadline - time.monotonic()))  # EOF, once the group is dead
            if not d.is_alive():  # a setsid escapee may hold a pipe: leave that fd open
                pipe.close()
    (oh, ot, od), (eh, et, ed) = drains[0].text(), drains[1].text()
    budget = keep - 200  # stdout and stderr share the cap; a small one leaves room to the other
    o_len, e_len = len(oh) + len(ot) + od, len(eh) + len(et) + ed
    e_keep = e_len if e_len <= budget // 2 else max(budget // 2, budget - o_len)
    out, err = elide(oh, budget - e_keep, ot, od), elide(eh, e_keep, et, ed)
    if sandboxed and code is not None and 128 < code <= 128 + 64:
        code = 128 - code  # bwrap reports a signal death as 128+N, like a shell: shown as one
    if code is None:
        head = f"error: command timed out after {timeout:g}s; killed it and its child processes"
    else:
        with contextlib.suppress(ValueError):
            code = f"{code} (killed by {signal.Signals(-code).name})" if code < 0 else code
        head = f"exit code: {code}"
    section = lambda name, s: f"{name}:\n{s}" if s else f"{name}: (empty)"  # noqa: E731
    return "\n".join([head, section("stdout", out.removesuffix("\n")),
                      section("stderr", err.removesuffix("\n"))])
