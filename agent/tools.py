"""The tool runtime: runs a tool spec's calls as docs/DESIGN.md specifies.

Each tool in the spec runs one of the builtin behaviours below (read, search, edit, write,
list, shell) with its arguments renamed to the builtin's, or a command template through the
shell, or a Python entry point. Shared by the terminal agent and the factory's replay check.
`Tools.run(call)` never raises (KeyboardInterrupt aside): every failure is a result starting
`error: ` that the model reads, naming the arguments as the spec names them.

Confinement (read, search, edit, write, list): the root is resolved once; each target is joined to it and resolved
with symlinks followed (a not-yet-existing tail stays lexical), then compared by path
components. Absolute paths, `~`, `..` and symlinks (leaf or parent) leading out are refused,
and edit writes the resolved path it checked. search and list do not descend into symlinked
directories and skip file symlinks that lead out.

The shell (and every command template) runs with the root as its cwd, through agent/shell.py
(its own process group, capped output). Unsandboxed (the terminal agent's default) it is NOT
confined: the user approves it call by call, and the group kill ends what it started unless a
child escapes with `setsid`. With `sandbox=True` (agent/sandbox.py: bubblewrap; what the
factory runs model-written calls with) it has no network, a read-only system, the workspace as
its only writable folder, no credentials in its environment, CPU/memory limits, and its own PID
namespace, so nothing at all outlives the call. Its result reads the same either way.

Lines are split on `\\n` only (a trailing `\\r` is dropped for display) in read, search and
edit alike, so their line numbers agree. search and list pick the files here (the confinement
above) and agent/ripgrep.py matches them: Rust regex syntax, linear time, under a time limit. File names
with control characters (a newline) are shown escaped (`a\\nb.py`), so `path:line:text` stays
one line.
"""

import contextlib
import difflib
import fnmatch
import functools
import os
import re
import shlex
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from agent import ripgrep, shell
from agent.sandbox import Sandbox, unavailable
from nanocode.common import InputError, atomic_path
from nanocode.spec import Tool, ToolSpec, entry_function, load_tools, type_args

SKIP_DIRS = {".git", ".hg", ".svn"}
SNIFF = 8192            # bytes looked at for a NUL byte: binary files are refused or skipped
CONTEXT = 3             # lines of context around an edit
SNIPPET_HALF = 10       # a changed region longer than twice this shows only its two ends
_PREFIX = re.compile(r"^ *\d+→")  # read's line-number prefix, when copied into edit strings


@dataclass
class Limits:
    max_output_chars: int = 30_000   # longer results keep head + tail around "... [N chars elided] ..."
    read_lines: int = 2000           # read's default limit
    max_line_chars: int = 2000       # longer lines are cut in read, search and edit output
    grep_matches: int = 250
    grep_timeout: float = 30.0       # search's (and list's) walk and match together, in seconds
    max_file_bytes: int = 10_000_000  # search skips, edit refuses bigger files; read streams them
    bash_timeout: float = 120.0
    bash_max_timeout: float = 600.0


@dataclass
class EditPlan:
    path: Path            # resolved absolute path inside the workspace
    rel: str              # workspace-relative, as shown to the user/model
    before: str | None    # None: the file does not exist (a create)
    after: str


@dataclass
class Preview:
    """What the user is shown before approving a call."""
    kind: str         # "diff" (an edit's or write's unified diff) or "command" (the command line)
    text: str
    target: str = ""  # the file a diff changes


class ToolError(Exception):
    """A failure for the model to read: `error: <message>`."""


def _show(name) -> str:
    """A name on one line: control characters escaped (`a\\nb.py`)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(name))


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # a final newline ends the last line rather than starting one
    return [line.removesuffix("\r") for line in lines]


def _all_prefixed(s: str) -> bool:
    return all(_PREFIX.match(line) for line in s.split("\n") if line)


def _unprefix(s: str) -> str:
    return "\n".join(_PREFIX.sub("", line) for line in s.split("\n"))


def _changed(a: list[str], b: list[str]) -> tuple[int, int]:
    """Where lines `b` differ from `a`: b[first:last] (empty for a pure deletion)."""
    first = len(os.path.commonprefix([a, b]))
    same = len(os.path.commonprefix([a[first:][::-1], b[first:][::-1]]))  # equal at the end, after the start
    return first, len(b) - same


def _errors_as_text(method):
    """Failures come back as the `error: ...` text the model reads, never as exceptions
    (KeyboardInterrupt aside: the agent turns it into "interrupted by the user")."""
    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except ToolError as e:
            return f"error: {e}"
        except OSError as e:
            name = e.filename and _show(os.path.relpath(e.filename, self.root)
                                        if os.path.isabs(e.filename) else e.filename)
            return f"error: {e.strerror or e}" + (f": {name}" if name else "")
        except Exception as e:  # a bug must not end the session: the model sees it instead
            return f"error: {type(e).__name__}: {e}"
    return wrapper


class _Names(dict):
    """A builtin's argument -> the spec's name for it (and `.tool`, the tool's), so errors speak
    the model's names."""

    def __init__(self, names=(), tool="the tool"):
        super().__init__(names)
        self.tool = tool

    def __missing__(self, key):
        return key


def _canonical(tool: Tool, args: dict) -> tuple[dict, _Names]:
    """A builtin tool's typed args by the builtin's names, and the names back for messages."""
    return tool.canonical(args), _Names({a.feeds: a.name for a in tool.args}, tool.name)


def command_line(tool: Tool, args: dict) -> str:
    """A command template filled in: each `{arg}` shell-quoted, empty when the call left it out."""
    text = lambda v: ("true" if v else "false") if isinstance(v, bool) else str(v)  # noqa: E731
    return tool.command.format(**{a.name: shlex.quote(text(args[a.name])) if a.name in args else ""
                                  for a in tool.args})


class Tools:
    def __init__(self, root, spec: ToolSpec | None = None, limits: Limits | None = None, bin_dirs=(),
                 sandbox: Sandbox | bool = False):
        """bin_dirs: folders put first on the shell's PATH (the factory runs rollouts with its own
        Python, so `python` means the same interpreter on every machine). sandbox: run the shell in
        one (True: the default Sandbox()); False runs it as the user, which only an approving
        user should allow."""
        if not os.path.isdir(root):
            raise InputError(f"workspace {root} is not an existing directory")
        sandbox = Sandbox() if sandbox is True else sandbox or None
        if sandbox is not None and (why := unavailable()):
            raise InputError(f"cannot run model-written commands in a sandbox: {why}; "
                             "pass --unsafe-bash to run it unsandboxed")
        self.root = Path(os.path.realpath(root))
        self.spec = spec if spec is not None else load_tools()
        self.limits = limits or Limits()
        self.sandbox = sandbox
        self._builtins = {"read": self._read, "search": self._grep, "list": self._list, "shell": self._bash,
                          "edit": lambda args, say: self.apply(self._plan_edit(args, say)),
                          "write": lambda args, say: self.apply(self._plan_write(args, say))}
        # the spec's own names in hints ("use Bash", "Read the file"), as a verb if need be
        self._shell = getattr(self.spec.for_builtin("shell"), "name", "a shell command")
        self._reader = getattr(self.spec.for_builtin("read"), "name", "read")
        path = os.pathsep.join([*map(str, bin_dirs), os.environ.get("PATH", "")])
        if sandbox is not None:
            self.env, self._argv = sandbox.env(path, shell.QUIET_ENV), sandbox.argv(self.root)
        else:
            self.env, self._argv = {**os.environ, **shell.QUIET_ENV, **({"PATH": path} if bin_dirs else {})}, ["bash", "-c"]

    def needs_approval(self, name: str) -> bool:
        tool = self.spec.get(name)
        return bool(tool and tool.needs_approval)

    @_errors_as_text
    def run(self, call: dict) -> str:
        """Run one parsed tool call: its result text or `error: ...`. Never raises."""
        args, err = type_args(call, self.spec)
        if err:
            return err
        tool = self.spec.get(call["name"])
        if tool.builtin:
            out = self._builtins[tool.builtin](*_canonical(tool, args))
        elif tool.command:
            out = self._bash({"command": command_line(tool, args)}, _Names(tool=tool.name))
        else:  # an entry point: the spec author's own code, run in this process
            out = entry_function(tool)(dict(args), self.root)
            if not isinstance(out, str):
                raise ToolError(f"{tool.name} returned {type(out).__name__}, not text")
        return shell.elide(out, self.limits.max_output_chars)

    def plan(self, call: dict) -> "EditPlan | str | None":
        """The change an edit or write call would make, without writing it: an EditPlan (for
        diff/apply/revert) or `error: ...`; None when the call is not an edit or a write."""
        args, err = type_args(call, self.spec)
        if err:
            return err
        tool = self.spec.get(call["name"])
        if tool.builtin == "edit":
            return self._plan_edit(*_canonical(tool, args))
        if tool.builtin == "write":
            return self._plan_write(*_canonical(tool, args))
        return None

    def preview(self, call: dict) -> Preview | None:
        """The command line a shell or command-template call will run, for the approval prompt."""
        args, err = type_args(call, self.spec)
        tool = None if err else self.spec.get(call["name"])
        if tool and tool.command:
            return Preview("command", command_line(tool, args))
        if tool and tool.builtin == "shell":
            return Preview("command", _canonical(tool, args)[0]["command"])
        return None

    # ------------------------------------------------------------------ helpers

    def _resolve(self, given, what="path") -> tuple[Path, str]:
        """The resolved path inside the root and its workspace-relative name, or ToolError."""
        if not isinstance(given, str) or not given:
            raise ToolError(f"{what} is empty")
        if "\0" in given:
            raise ToolError(f"{what} contains a NUL byte")
        if os.path.isabs(given) or os.path.expanduser(given) != given:
            kind = "an absolute path" if os.path.isabs(given) else "a home-directory path"
            raise ToolError(f"{_show(given)} is {kind}; paths are relative to the workspace root")
        path = Path(os.path.realpath(self.root / given))  # every existing symlink followed
        if path != self.root and self.root not in path.parents:  # by components, not prefix
            how = "" if os.path.normpath(given).split(os.sep)[0] == ".." else " through a symlink"
            raise ToolError(f"{_show(given)} leads outside the workspace{how}; "
                            "paths are relative to the workspace root")
        return path, path.relative_to(self.root).as_posix()

    def _regular(self, path: Path, given: str) -> os.stat_result:
        """stat a file that must exist and be a regular file (reading a FIFO would block)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ToolError(f"no such file: {_show(given)}") from None
        if stat.S_ISDIR(st.st_mode):
            raise ToolError(f"{_show(given)} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise ToolError(f"{_show(given)} is not a regular file")
        return st

    def _clip(self, line: str, unread: int = 0) -> str:
        """A line cut to max_line_chars (`unread`: more of it, skipped without decoding)."""
        cap = self.limits.max_line_chars
        if len(line) <= cap and not unread:
            return line
        return f"{line[:cap]}... [{max(0, len(line) - cap) + unread} chars cut]"

    def _numbered(self, lines, first: int) -> list[str]:
        return [f"{n:>5}→{self._clip(line)}" for n, line in enumerate(lines, first)]

    # ------------------------------------------------------------------------ read

    def _read(self, args: dict, say) -> str:
        given = args["path"]
        path, _ = self._resolve(given, say["path"])
        size = self._regular(path, given).st_size
        offset, limit = args.get("offset", 0), args.get("limit", self.limits.read_lines)
        if offset < 0 or limit < 1:
            raise ToolError(f"{say['offset']} must be 0 or more and {say['limit']} 1 or more, got {offset} and {limit}")
        with open(path, "rb") as f:
            if b"\0" in f.read(SNIFF):
                raise ToolError(f"{_show(given)} is a binary file")
            if size == 0:
                return f"({_show(given)} is empty)"
            f.seek(0)
            out, used, n, more = [], 0, 0, False
            # line by line, each at most a few KB in memory: a 5 GB file is never loaded whole
            while line := f.readline(4 * self.limits.max_line_chars + 4):
                unread = 0
                while not line.endswith(b"\n") and (rest := f.readline(1 << 20)):
                    unread += len(rest) - rest.endswith(b"\n")  # the rest of a huge line
                    if rest.endswith(b"\n"):
                        break
                n += 1
                if n <= offset:
                    continue
                text = line.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
                shown = f"{n:>5}→{self._clip(text, unread)}"
                if len(out) == limit or (out and used + len(shown) > self.limits.max_output_chars - 100):
                    more = True
                    break
                out.append(shown)
                used += len(shown) + 1
        if not out:
            raise ToolError(f"{say['offset']} {offset} is past the end of {_show(given)} (it has {n} lines)")
        if more:
            out.append(f"(more lines follow: read on with {say['offset']}={offset + len(out)})")
        return "\n".join(out)

    # ------------------------------------------------------------------------ search

    def _grep(self, args: dict, say) -> str:
        pattern, glob, given = args["pattern"], args.get("glob"), args.get("path") or "."
        start, _ = self._resolve(given, say["path"])
        if not start.exists():
            raise ToolError(f"no such file or directory: {_show(given)}")
        deadline = time.monotonic() + self.limits.grep_timeout
        files = self._files(start, given, glob, deadline, self._late(say))
        out, used, capped = [], 0, None
        try:
            for rel, n, line in ripgrep.search(pattern, [r for r, small in files if small], self.root, deadline):
                shown = f"{_show(rel)}:{n}:{self._clip(line)}"
                if len(out) == self.limits.grep_matches or (
                        out and used + len(shown) > self.limits.max_output_chars - 200):
                    capped = rel
                    break
                out.append(shown)
                used += len(shown) + 1
        except ripgrep.RipgrepError as e:
            raise ToolError(str(e)) from None
        except TimeoutError:
            raise ToolError(self._late(say)) from None
        seen = files if capped is None else files[:[rel for rel, _ in files].index(capped)]
        big = sum(not small for _, small in seen)  # the too-big files before the cap, as the walk met them
        narrow = f"{say['pattern']}, {say['path']} or {say['glob']}"
        notes = [f"(capped at {len(out)} matches: narrow the {narrow} to see the rest)"] * bool(capped)
        notes += [f"(skipped {big} files over {self.limits.max_file_bytes} bytes)"] * bool(big)
        return "\n".join((out or ["no matches"]) + notes)

    def _files(self, start: Path, given: str, glob, deadline: float, late: str, text_only=True) -> list[tuple[str, bool]]:
        """The files search (text_only) and list look at, in path order: (workspace-relative name,
        small enough to search). Plain strings, and realpath only for symlinks: a big tree's walk
        is most of a search."""
        inside, one_file, found = str(self.root).rstrip("/") + "/", not start.is_dir(), [str(start)]
        if not one_file:
            found = []
            # symlinked dirs are not entered, so every folder met is a real one in the root
            for dirpath, dirnames, filenames in os.walk(start):
                if time.monotonic() > deadline:
                    raise ToolError(late)
                dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
                found += [os.path.join(dirpath, name) for name in filenames]
        files = []
        for rel, p in sorted((p[len(inside):], p) for p in found):
            if glob and not one_file and not self._glob_ok(rel, glob):
                continue
            try:
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    if not os.path.realpath(p).startswith(inside):
                        continue  # a symlink leading out of the workspace
                    st = os.stat(p)
                if not stat.S_ISREG(st.st_mode):
                    continue  # a FIFO or device would block or never end
                if st.st_size > self.limits.max_file_bytes or not text_only:
                    files.append((rel, st.st_size <= self.limits.max_file_bytes))
                    continue
                with open(p, "rb") as f:
                    head = f.read(SNIFF)
            except OSError:
                continue  # unreadable or a symlink loop: nothing the model could fix
            if b"\0" in head:
                if one_file:
                    raise ToolError(f"{_show(given)} is a binary file")
                continue
            files.append((rel, True))
        return files

    def _late(self, say, glob="glob") -> str:
        return f"{say.tool} ran past its {self.limits.grep_timeout:g}s limit; narrow the {say['path']} or {say[glob]}"

    @staticmethod
    def _glob_ok(rel: str, glob: str) -> bool:
        """The glob against the file name or the workspace-relative path (`**/` may be empty)."""
        return any(fnmatch.fnmatchcase(s, glob) for s in (rel.rsplit("/", 1)[-1], rel)) or (
            glob.startswith("**/") and fnmatch.fnmatchcase(rel, glob[3:]))

    # ------------------------------------------------------------------------ list

    def _list(self, args: dict, say) -> str:
        given = args.get("path") or "."
        start, _ = self._resolve(given, say["path"])
        if not start.is_dir():
            raise ToolError(f"no such directory: {_show(given)}")
        files = self._files(start, given, args.get("pattern"), time.monotonic() + self.limits.grep_timeout,
                            self._late(say, "pattern"), text_only=False)
        cap = self.limits.grep_matches
        shown = [_show(rel) for rel, _ in files[:cap]]
        more = [f"(capped at {cap} of {len(files)} files: narrow the {say['pattern']} or {say['path']})"]
        return "\n".join((shown or ["no files"]) + more * (len(files) > cap))

    # ------------------------------------------------------------------------ edit and write

    @_errors_as_text
    def _plan_write(self, args: dict, say) -> EditPlan | str:
        """A write: the whole file, created or replaced (a text file only)."""
        path, rel = self._resolve(args["path"], say["path"])
        before = self._text(path, args["path"]) if os.path.lexists(path) else None
        content = args["content"]
        return EditPlan(path, rel, before, _unprefix(content) if _all_prefixed(content) else content)

    def _text(self, path: Path, given: str) -> str:
        """A file's text for an edit or write: a regular, small, UTF-8, non-binary file."""
        if self._regular(path, given).st_size > self.limits.max_file_bytes:
            raise ToolError(f"{_show(given)} is larger than {self.limits.max_file_bytes} bytes; use {self._shell}")
        data = path.read_bytes()
        if b"\0" in data[:SNIFF]:
            raise ToolError(f"{_show(given)} is a binary file")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"{_show(given)} is not UTF-8 text; editing would corrupt it, use {self._shell}") from None

    @_errors_as_text
    def _plan_edit(self, args: dict, say) -> EditPlan | str:
        """Check an edit and compute the new text without writing: an EditPlan or `error: ...`."""
        given, old, new = args["path"], args.get("old"), args["new"]
        path, rel = self._resolve(given, say["path"])
        if not old:  # a create
            if os.path.lexists(path):
                raise ToolError(f"{_show(given)} already exists; give {say['old']} to change it")
            return EditPlan(path, rel, None, _unprefix(new) if _all_prefixed(new) else new)
        text = self._text(path, given)
        crlf = text.count("\r\n") * 2 > text.count("\n")  # mostly CRLF: write CRLF too
        for o, n in self._variants(old, new, crlf):
            if o == n:
                raise ToolError(f"{say['old']} and {say['new']} are the same; there is nothing to change")
            count = text.count(o)
            if count == 1:
                return EditPlan(path, rel, text, text.replace(o, n, 1))
            if count > 1:
                at, where = -1, []
                while (at := text.find(o, at + 1)) >= 0 and len(where) < 10:
                    where.append(str(text.count("\n", 0, at) + 1))
                raise ToolError(f"{say['old']} occurs {count} times in {_show(given)} (at lines "
                                f"{', '.join(where)}); add surrounding lines to make it unique")
        hint = ""
        if " ".join(old.split()) in " ".join(text.split()):
            hint = " (it matches when whitespace is ignored: check indentation, tabs and line ends)"
        raise ToolError(f"{say['old']} not found in {_show(given)}{hint}; it must match the file "
                        f"exactly: {self._reader} the file and copy the text")

    @staticmethod
    def _variants(old: str, new: str, crlf: bool) -> list[tuple[str, str]]:
        """(old, new) spellings to try in turn: as given, then with read's line-number prefixes
        dropped (only if every line of old has one, so real code holding `→` survives). In a
        CRLF file new gets CRLF line ends, and old is tried as given and with CRLF."""
        pairs = [(old, new)]
        if _all_prefixed(old):
            pairs.append((_unprefix(old), _unprefix(new)))
        if crlf:
            to_crlf = lambda s: s.replace("\r\n", "\n").replace("\n", "\r\n")  # noqa: E731
            pairs = [(o2, to_crlf(n)) for o, n in pairs for o2 in dict.fromkeys((o, to_crlf(o)))]
        return pairs

    def diff(self, plan: EditPlan) -> str:
        """A unified diff (a/rel, b/rel) for the approval prompt, capped like a result."""
        split = lambda s: re.findall(r"[^\n]*\n|[^\n]+", s or "")  # noqa: E731  (ends kept)
        out = [line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
               for line in difflib.unified_diff(split(plan.before), split(plan.after),
                                                f"a/{_show(plan.rel)}", f"b/{_show(plan.rel)}")]
        return shell.elide("".join(out), self.limits.max_output_chars)

    @staticmethod
    def _current(plan: EditPlan) -> str | None:
        """The file's text now (None if missing): a change behind our back stops apply/revert."""
        with contextlib.suppress(FileNotFoundError):
            return plan.path.read_bytes().decode("utf-8", "replace")
        return None

    def _write(self, path: Path, text: str) -> None:
        """Atomic (temp + rename), keeping the old file's mode; missing parents are created."""
        if Path(os.path.realpath(path)) != path:  # a parent was swapped for a symlink since
            raise ToolError(f"{_show(path.relative_to(self.root))} moved since the edit was planned")
        mode = stat.S_IMODE(os.stat(path).st_mode) if path.exists() else None
        with atomic_path(path) as tmp:
            tmp.write_bytes(text.encode("utf-8"))
            if mode is not None:
                os.chmod(tmp, mode)

    @_errors_as_text
    def apply(self, plan: EditPlan) -> str:
        """Write the plan: the result text run() gives for the edit or write, or `error: ...`."""
        if isinstance(plan, str):  # the plan's error, passed straight on
            return plan
        if self._current(plan) != plan.before:
            raise ToolError(f"{_show(plan.rel)} changed since the edit was planned; {self._reader} it again")
        self._write(plan.path, plan.after)
        a, b = _lines(plan.before or ""), _lines(plan.after)
        first, last = _changed(a, b)
        lo, hi = max(0, first - CONTEXT), min(len(b), last + CONTEXT)
        head = [f"created {_show(plan.rel)} ({len(b)} line{'s' * (len(b) != 1)}):"
                if plan.before is None else f"edited {_show(plan.rel)}:"]
        if last - first <= 2 * SNIPPET_HALF:
            return "\n".join(head + self._numbered(b[lo:hi], lo + 1))
        mid = last - SNIPPET_HALF  # a long region: its two ends
        return "\n".join(head + self._numbered(b[lo:first + SNIPPET_HALF], lo + 1)
                         + [f"      ... ({mid - first - SNIPPET_HALF} lines not shown)"]
                         + self._numbered(b[mid:hi], mid + 1))

    @_errors_as_text
    def revert(self, plan: EditPlan) -> str:
        """Undo an applied plan (/undo): `before` back, or the created file removed."""
        if self._current(plan) != plan.after:
            raise ToolError(f"{_show(plan.rel)} changed since the edit; not reverting it")
        if plan.before is None:
            plan.path.unlink()
            return f"removed {_show(plan.rel)} (the edit had created it)"
        self._write(plan.path, plan.before)
        return f"restored {_show(plan.rel)}"

    # ------------------------------------------------------------------------ shell

    def _bash(self, args: dict, say) -> str:
        command, timeout = args["command"], args.get("timeout", self.limits.bash_timeout)
        if not command.strip():
            raise ToolError(f"{say['command']} is empty")
        if timeout <= 0:
            raise ToolError(f"{say['timeout']} must be a positive number of seconds")
        timeout, keep = min(timeout, self.limits.bash_max_timeout), self.limits.max_output_chars
        return shell.run([*self._argv, command], self.root, self.env, timeout, keep, self.sandbox is not None)
