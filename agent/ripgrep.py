"""Grep's engine: ripgrep (`rg`, from the `ripgrep` wheel), what Claude Code's Grep runs.

Its regex engine is linear in the input (Rust regex: no lookaround, no backreferences), so no
pattern can hang a session the way `(a+)+$` hangs Python's `re`, which also holds the GIL so
that not even Ctrl-C gets through. It runs in a child process that a deadline, the caller's
Ctrl-C or the caller having enough matches all kill.

agent/tools.py picks the files (its workspace confinement) and hands them over in path order;
rg runs with one thread so its matches come back in that order, and `--null` ends each path
with a NUL so a file name holding a newline still parses.
"""

import os
import subprocess
import sys
import sysconfig
import threading
import time

ARGS_BYTES = 100_000  # file names per rg run: a command line has a size limit
FLAGS = ["--no-config", "--no-messages", "--threads=1", "--text", "--crlf", "--null", "--line-number",
         "--with-filename", "--no-heading", "--color=never"]


class RipgrepError(Exception):
    """A pattern rg refuses, or no rg: the message the model reads."""


def rg() -> str:
    """The `rg` the ripgrep wheel installed beside this Python, not whatever PATH holds."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        if os.access(path := os.path.join(folder, "rg"), os.X_OK):
            return path
    raise RipgrepError(f"ripgrep is not installed for {sys.executable} (pip install ripgrep)")


def search(pattern: str, names: list[str], cwd, deadline: float):
    """(name, line number, line) for each line of the files `names` (relative to `cwd`) that
    matches `pattern`, files in the order given. TimeoutError past `deadline` (time.monotonic)."""
    by_bytes, batches, size = {os.fsencode(n): n for n in names}, [[]], 0
    for name in names:
        if size > ARGS_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(name)
        size += len(name) + 1
    for batch in batches:  # no file at all still runs once: a bad pattern is still an error
        proc = subprocess.Popen([rg(), *FLAGS, "--regexp", pattern, "--", *(batch or [os.devnull])], cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), proc.kill)
        timer.start()
        try:
            for path, n, text in _records(proc.stdout):
                yield by_bytes[path], n, text.removesuffix(b"\r").decode("utf-8", "replace")
        finally:  # Ctrl-C, enough matches or the end: rg is done either way
            timer.cancel()
            proc.kill()
            proc.wait()
            said = proc.stderr.read().decode("utf-8", "replace").splitlines()
            proc.stdout.close()
            proc.stderr.close()
        if proc.returncode < 0:
            raise TimeoutError
        if proc.returncode == 2 and said:  # with --no-messages only a fatal error is said
            why = next((x.removeprefix("error: ") for x in said if x.startswith("error: ")),
                       said[0].removeprefix("rg: "))
            raise RipgrepError(f"invalid regular expression {pattern!r}: {why} "
                               "(Rust regex syntax, as ripgrep reads it)")


def _records(pipe):
    """rg's `path\\0line:text\\n` records as (path, line, text) bytes, read as they come. The path
    may hold a newline and the text a NUL, never the other way round."""
    buf, at = b"", 0
    while chunk := os.read(pipe.fileno(), 1 << 20):
        buf, at = buf[at:] + chunk, 0
        while (nul := buf.find(b"\0", at)) >= 0 and (end := buf.find(b"\n", nul)) >= 0:
            number, _, text = buf[nul + 1:end].partition(b":")
            yield buf[at:nul], int(number), text
            at = end + 1
