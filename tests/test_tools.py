"""The tool runtime (agent/tools.py): each tool's results and errors, the attack set
(traversal, absolute and `~` paths, symlinks out, odd names, huge and binary files,
runaway Bash), typing errors from the model, and plan/apply/revert for /undo."""

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.tools import EditPlan, Limits, Tools
from nanocode.common import InputError
from nanocode.spec import load_tools


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "a.py").write_text("import re\n\ndef parse(s):\n    return s.split()\n")
    (root / "pkg").mkdir()
    (root / "pkg" / "util.py").write_text("def parse(x):\n    pass\n")
    return root


@pytest.fixture
def tools(ws):
    return Tools(ws)


def call(tools, name, **args):
    return tools.run({"name": name, "args": {k: str(v) for k, v in args.items()}})


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process in the group? Zombies wait for a reaper, not for us."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _gone(pgid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def popens(monkeypatch):
    """Every Popen the runtime starts, to find its process group afterwards."""
    started = []

    class Recording(subprocess.Popen):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            started.append(self)

    monkeypatch.setattr("agent.shell.subprocess.Popen", Recording)
    return started


# ------------------------------------------------------------------------ construction

def test_workspace_must_exist(tmp_path):
    with pytest.raises(InputError, match="not an existing directory"):
        Tools(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError):
        Tools(tmp_path / "f")


def test_needs_approval_comes_from_the_spec(tools):
    assert not tools.needs_approval("Read") and not tools.needs_approval("Grep")
    assert tools.needs_approval("Edit") and tools.needs_approval("Bash")
    assert not tools.needs_approval("Nope")


def test_root_may_itself_be_a_symlink(ws, tmp_path):
    (tmp_path / "alias").symlink_to(ws)
    t = Tools(tmp_path / "alias")
    assert t.root == ws.resolve()
    assert call(t, "Read", file_path="a.py").startswith("    1→import re")


# ----------------------------------------------------------------- malformed calls

@pytest.mark.parametrize("bad, expected", [
    ({"name": "Read", "args": {"file_path": "a.py", "offset": "abc"}}, "must be a whole number"),
    ({"name": "Read", "args": {}}, "needs argument 'file_path'"),
    ({"name": "Read", "args": {"file_path": "a.py", "path": "x"}}, "has no argument 'path'"),
    ({"name": "Frobnicate", "args": {}}, "unknown tool 'Frobnicate'"),
    ({"name": "", "args": {}, "error": "tool call has no name"}, "tool call has no name"),
    ({"name": "Read", "args": "a.py"}, "must be key/value pairs"),
    (None, "malformed tool call"),
    ({"name": "Bash", "args": {"command": "true", "timeout": "soon"}}, "must be a whole number"),
])
def test_malformed_calls_are_error_text(tools, bad, expected):
    result = tools.run(bad)
    assert result.startswith("error: ") and expected in result


def test_typed_record_values_work(tools):
    assert tools.run({"name": "Read", "args": {"file_path": "a.py", "offset": 3, "limit": 1}}) \
        == "    4→    return s.split()"


def shout(args, workspace):
    """An entry-point tool for the test below: it sees the typed args and the workspace."""
    return f"{args['word'].upper()} in {sorted(p.name for p in workspace.iterdir())[:1]}"


SWAPPED = """tools:
  - {name: cat, builtin: read, needs_approval: false, description: read,
     args: [{name: p, as: path, type: string, required: true, description: p},
            {name: skip, as: offset, type: int, required: false, description: s}]}
  - {name: put, builtin: write, needs_approval: true, description: write,
     args: [{name: p, as: path, type: string, required: true, description: p},
            {name: text, as: content, type: string, required: true, description: t}]}
  - {name: ls, builtin: list, needs_approval: false, description: list,
     args: [{name: glob, as: pattern, type: string, required: false, description: g},
            {name: path, type: string, required: false, description: d}]}
  - {name: count, command: "wc -l {file} {flag}", needs_approval: true, description: count,
     args: [{name: file, type: string, required: true, description: f},
            {name: flag, type: string, required: false, description: f}]}
  - {name: shout, entry: "tests.test_tools:shout", needs_approval: false, description: shout,
     args: [{name: word, type: string, required: true, description: w}]}
"""


def test_a_spec_of_other_names_and_kinds_runs(ws, tmp_path):
    spec = tmp_path / "tools.yaml"
    spec.write_text(SWAPPED)
    t = Tools(ws, spec=load_tools(spec))
    assert call(t, "cat", p="a.py", skip=2) == "    3→def parse(s):\n    4→    return s.split()"
    assert call(t, "cat", p="nope.py") == "error: no such file: nope.py"
    assert call(t, "cat", file_path="a.py") == ("error: cat has no argument 'file_path' (its arguments: p, skip); "
                                                "cat needs argument 'p'")
    assert "unknown tool 'Read'" in call(t, "Read", file_path="a.py")
    assert call(t, "put", p="new/b.txt", text="one\ntwo\n") == "created new/b.txt (2 lines):\n    1→one\n    2→two"
    assert call(t, "put", p="new/b.txt", text="three\n").startswith("edited new/b.txt:")
    assert (ws / "new" / "b.txt").read_text() == "three\n"
    assert call(t, "ls", glob="*.txt") == "new/b.txt"
    assert call(t, "ls", path="pkg") == "\n".join(sorted(
        p.relative_to(ws).as_posix() for p in (ws / "pkg").rglob("*") if p.is_file()))
    assert call(t, "ls", path="a.py") == "error: no such directory: a.py"
    # a command template: values are shell-quoted, so a space or `;` is one argument, not a command
    assert call(t, "count", file="new/b.txt").startswith("exit code: 0\nstdout:\n1 new/b.txt")
    (ws / "x; touch pwned").write_text("a\n")
    assert call(t, "count", file="x; touch pwned").startswith("exit code: 0\nstdout:\n1 x; touch pwned")
    assert not (ws / "pwned").exists()
    assert t.preview({"name": "count", "args": {"file": "x; y"}}).text == "wc -l 'x; y' "
    assert call(t, "shout", word="hey") == "HEY in ['a.py']"
    assert t.needs_approval("put") and not t.needs_approval("cat")
    plan = t.plan({"name": "put", "args": {"p": "a.py", "text": "x = 1\n"}})
    assert plan.before.startswith("import re") and t.plan({"name": "cat", "args": {"p": "a.py"}}) is None


# ------------------------------------------------------------------------------- Read

def test_read_numbers_lines_from_one_and_pages_from_zero(tools):
    assert call(tools, "Read", file_path="a.py") == (
        "    1→import re\n    2→\n    3→def parse(s):\n    4→    return s.split()")
    assert call(tools, "Read", file_path="a.py", offset=2, limit=2) == (
        "    3→def parse(s):\n    4→    return s.split()")
    assert call(tools, "Read", file_path="a.py", offset=1, limit=1) == (
        "    2→\n(more lines follow: read on with offset=2)")


def test_read_errors(tools, ws):
    assert call(tools, "Read", file_path="x.py") == "error: no such file: x.py"
    assert call(tools, "Read", file_path="pkg") == "error: pkg is a directory, not a file"
    assert call(tools, "Read", file_path=".") == "error: . is a directory, not a file"
    assert call(tools, "Read", file_path="a.py", offset=9) == (
        "error: offset 9 is past the end of a.py (it has 4 lines)")
    for bad in ({"offset": -1}, {"limit": 0}):
        assert call(tools, "Read", file_path="a.py", **bad).startswith(
            "error: offset must be 0 or more and limit 1 or more")
    (ws / "empty.txt").write_text("")
    assert call(tools, "Read", file_path="empty.txt") == "(empty.txt is empty)"


def test_read_binary_and_non_utf8(tools, ws):
    (ws / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    assert call(tools, "Read", file_path="img.png") == "error: img.png is a binary file"
    (ws / "latin.txt").write_bytes("café\r\nnaïve\n".encode("latin-1"))
    assert call(tools, "Read", file_path="latin.txt") == "    1→caf\ufffd\n    2→na\ufffdve"


def test_read_refuses_a_fifo_instead_of_blocking(tools, ws):
    os.mkfifo(ws / "pipe")
    assert call(tools, "Read", file_path="pipe") == "error: pipe is not a regular file"


def test_read_caps_long_lines_and_total_output(ws):
    t = Tools(ws, limits=Limits(max_line_chars=10, max_output_chars=200, read_lines=1000))
    (ws / "long.txt").write_text("x" * 25 + "\nshort\n")
    assert call(t, "Read", file_path="long.txt") == "    1→xxxxxxxxxx... [15 chars cut]\n    2→short"
    (ws / "many.txt").write_text("".join(f"line {i}\n" for i in range(100)))
    out = call(t, "Read", file_path="many.txt")
    assert len(out) <= 200 and out.endswith(")")
    n = int(re.search(r"offset=(\d+)", out)[1])
    assert f"{n:>5}→line {n - 1}" in out and call(t, "Read", file_path="many.txt", offset=n) \
        .startswith(f"{n + 1:>5}→line {n}\n")


def test_read_streams_a_huge_single_line(tools, ws):
    with open(ws / "big.txt", "wb") as f:
        f.write(b"head\n" + b"y" * 12_000_000 + b"\ntail\n")  # over max_file_bytes
    out = call(tools, "Read", file_path="big.txt")
    assert out.splitlines() == ["    1→head", "    2→" + "y" * 2000 + "... [11998000 chars cut]",
                                "    3→tail"]


# ------------------------------------------------------------------------------- Grep

def test_grep_matches_sorted_with_relative_paths(tools):
    assert call(tools, "Grep", pattern=r"def \w+") == (
        "a.py:3:def parse(s):\npkg/util.py:1:def parse(x):")
    assert call(tools, "Grep", pattern="parse", path="pkg") == "pkg/util.py:1:def parse(x):"
    assert call(tools, "Grep", pattern="pass", path="pkg/util.py") == "pkg/util.py:2:    pass"
    assert call(tools, "Grep", pattern="nothing-here") == "no matches"


def test_grep_glob_on_name_or_relative_path(tools, ws):
    (ws / "notes.md").write_text("def parse in prose\n")
    assert call(tools, "Grep", pattern="parse", glob="*.md") == "notes.md:1:def parse in prose"
    assert call(tools, "Grep", pattern="parse", glob="pkg/*") == "pkg/util.py:1:def parse(x):"
    assert call(tools, "Grep", pattern="def parse", glob="**/*.py").count("\n") == 1  # both .py


def test_grep_errors(tools):
    out = call(tools, "Grep", pattern="(unclosed")
    assert out.startswith("error: invalid regular expression '(unclosed'")
    assert call(tools, "Grep", pattern="x", path="nope") == "error: no such file or directory: nope"


def test_grep_skips_git_binary_and_big_files(ws):
    (ws / ".git").mkdir()
    (ws / ".git" / "config").write_text("parse\n")
    (ws / "blob.bin").write_bytes(b"parse\0\0")
    (ws / "big.txt").write_text("parse\n" * 100)
    t = Tools(ws, limits=Limits(max_file_bytes=200))
    assert call(t, "Grep", pattern="parse") == (
        "a.py:3:def parse(s):\npkg/util.py:1:def parse(x):\n(skipped 1 files over 200 bytes)")
    assert call(t, "Grep", pattern="parse", path="blob.bin") == "error: blob.bin is a binary file"


def test_grep_caps_matches(ws):
    (ws / "many.txt").write_text("hit\n" * 50)
    t = Tools(ws, limits=Limits(grep_matches=5))
    lines = call(t, "Grep", pattern="hit").splitlines()
    assert lines[:5] == [f"many.txt:{i}:hit" for i in range(1, 6)]
    assert lines[5] == "(capped at 5 matches: narrow the pattern, path or glob to see the rest)"


def test_grep_a_catastrophic_pattern_cannot_hang(ws):
    (ws / "aaa.txt").write_text("a" * 40 + "b\n")
    # in a child process: Python's re would hold the GIL for ever, so no in-process timeout could fire
    code = ("import sys; from agent.tools import Tools; "
            "print(Tools(sys.argv[1]).run({'name': 'Grep', 'args': {'pattern': '(a+)+$'}}))")
    r = subprocess.run([sys.executable, "-c", code, str(ws)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "no matches\n", r.stderr


def test_grep_regex_syntax_is_ripgreps(tools, ws):
    assert "ripgrep's (rust regex)" in load_tools().get("Grep").description  # the model is told
    assert call(tools, "Grep", pattern=r"(?i)^DEF \w+\(x\)") == "pkg/util.py:1:def parse(x):"
    assert call(tools, "Grep", pattern="--files") == "no matches"  # a pattern, never an option
    out = call(tools, "Grep", pattern="parse(?=\\()")
    assert out.startswith("error: invalid regular expression 'parse(?=\\\\()': ") and out.count("\n") == 0
    assert out.endswith("(Rust regex syntax, as ripgrep reads it)")
    assert call(Tools(ws / "pkg"), "Grep", pattern="(").startswith("error: invalid regular expression")


def test_grep_has_a_time_limit(ws):
    t = Tools(ws, limits=Limits(grep_timeout=0))
    assert call(t, "Grep", pattern="parse") == "error: Grep ran past its 0s limit; narrow the path or glob"


def test_grep_crlf_and_lines_past_the_sniff(tools, ws):
    (ws / "dos.txt").write_bytes(b"one\r\nend here\r\n" + b"x" * 9000 + b"\0 end too\n")
    assert call(tools, "Grep", pattern="end.*$", glob="*.txt") == (
        "dos.txt:2:end here\ndos.txt:3:" + "x" * 2000 + "... [7009 chars cut]")


# ------------------------------------------------------------------------------- Edit

def test_edit_replaces_the_one_occurrence_and_shows_the_region(tools, ws):
    out = call(tools, "Edit", file_path="a.py", old_string="s.split()", new_string="s.split(',')")
    assert out == ("edited a.py:\n    1→import re\n    2→\n    3→def parse(s):\n"
                   "    4→    return s.split(',')")
    assert (ws / "a.py").read_text().endswith("return s.split(',')\n")


def test_edit_errors(tools, ws):
    before = (ws / "a.py").read_text()
    out = call(tools, "Edit", file_path="a.py", old_string="def nope", new_string="x")
    assert out.startswith("error: old_string not found in a.py")
    out = call(tools, "Edit", file_path="a.py", old_string="def  parse(s):", new_string="x")
    assert "matches when whitespace is ignored" in out
    (ws / "dup.py").write_text("x = 1\ny = 2\nx = 1\n")
    assert call(tools, "Edit", file_path="dup.py", old_string="x = 1", new_string="x = 3") == (
        "error: old_string occurs 2 times in dup.py (at lines 1, 3); "
        "add surrounding lines to make it unique")
    assert call(tools, "Edit", file_path="a.py", old_string="re", new_string="re").startswith(
        "error: old_string and new_string are the same")
    assert call(tools, "Edit", file_path="gone.py", old_string="a", new_string="b") == (
        "error: no such file: gone.py")
    assert call(tools, "Edit", file_path="a.py", new_string="x").startswith(
        "error: a.py already exists")
    assert (ws / "a.py").read_text() == before


def test_edit_creates_files_and_parents(tools, ws):
    assert call(tools, "Edit", file_path="new/deep/m.py", new_string="A = 1\n") == (
        "created new/deep/m.py (1 line):\n    1→A = 1")
    assert (ws / "new" / "deep" / "m.py").read_text() == "A = 1\n"
    tools.run({"name": "Edit", "args": {"file_path": "e.txt", "old_string": "", "new_string": ""}})
    assert (ws / "e.txt").read_text() == ""


def test_edit_long_region_shows_both_ends(tools, ws):
    body = "".join(f"v{i} = {i}\n" for i in range(100))
    lines = call(tools, "Edit", file_path="gen.py", new_string=body).splitlines()
    assert lines[0] == "created gen.py (100 lines):" and lines[1] == "    1→v0 = 0"
    assert "(80 lines not shown)" in lines[11] and lines[-1] == "  100→v99 = 99"


def test_edit_strips_pasted_read_prefixes(tools, ws):
    old = "    3→def parse(s):\n    4→    return s.split()"
    new = "    3→def parse(s):\n    4→    return s.split(';')"
    assert call(tools, "Edit", file_path="a.py", old_string=old, new_string=new).startswith("edited")
    assert (ws / "a.py").read_text() == "import re\n\ndef parse(s):\n    return s.split(';')\n"


def test_edit_keeps_real_arrows(tools, ws):
    (ws / "arrow.txt").write_text("12→b\nkeep 1→x\n")
    call(tools, "Edit", file_path="arrow.txt", old_string="12→b", new_string="12→c")
    assert (ws / "arrow.txt").read_text() == "12→c\nkeep 1→x\n"  # matched as written
    # not every line has a prefix: nothing is stripped, so nothing matches
    out = call(tools, "Edit", file_path="arrow.txt", old_string="    1→12→c\nkeep 1→x", new_string="z")
    assert out.startswith("error: old_string not found")


def test_edit_preserves_crlf_and_mode(tools, ws):
    f = ws / "win.bat"
    f.write_bytes(b"@echo off\r\necho one\r\necho two\r\n")
    f.chmod(0o755)
    out = call(tools, "Edit", file_path="win.bat", old_string="echo one\necho two",
               new_string="echo 1\necho 2\necho 3")
    assert out == "edited win.bat:\n    1→@echo off\n    2→echo 1\n    3→echo 2\n    4→echo 3"
    assert f.read_bytes() == b"@echo off\r\necho 1\r\necho 2\r\necho 3\r\n"
    assert stat.S_IMODE(f.stat().st_mode) == 0o755
    # one-line old_string, new lines in new_string: they get the file's CRLF too
    call(tools, "Edit", file_path="win.bat", old_string="echo 3", new_string="echo 3\necho 4")
    assert f.read_bytes() == b"@echo off\r\necho 1\r\necho 2\r\necho 3\r\necho 4\r\n"


def test_edit_refuses_binary_and_non_utf8(tools, ws):
    (ws / "b.bin").write_bytes(b"ab\0cd")
    assert call(tools, "Edit", file_path="b.bin", old_string="ab", new_string="x") == (
        "error: b.bin is a binary file")
    (ws / "l.txt").write_bytes("café\n".encode("latin-1"))
    assert "not UTF-8" in call(tools, "Edit", file_path="l.txt", old_string="caf", new_string="x")


def test_plan_diff_apply_revert(tools, ws):
    plan = tools.plan({"name": "Edit", "args": {"file_path": "a.py", "old_string": "import re", "new_string": "import os"}})
    assert isinstance(plan, EditPlan) and plan.rel == "a.py" and plan.path == ws.resolve() / "a.py"
    assert (ws / "a.py").read_text().startswith("import re")  # planning writes nothing
    diff = tools.diff(plan)
    assert diff.startswith("--- a/a.py\n+++ b/a.py\n@@") and "-import re\n+import os\n" in diff
    assert tools.apply(plan).startswith("edited a.py:")
    assert tools.revert(plan) == "restored a.py"
    assert (ws / "a.py").read_text().startswith("import re")
    assert tools.plan({"name": "Edit", "args": {"file_path": "../x", "new_string": "x"}}).startswith("error: ")


def test_revert_of_a_create_and_stale_files(tools, ws):
    plan = tools.plan({"name": "Edit", "args": {"file_path": "n.py", "new_string": "x = 1"}})
    assert plan.before is None
    assert "\\ No newline at end of file" in tools.diff(plan)
    tools.apply(plan)
    assert tools.revert(plan) == "removed n.py (the edit had created it)"
    assert not (ws / "n.py").exists()
    plan = tools.plan({"name": "Edit", "args": {"file_path": "a.py", "old_string": "import re", "new_string": "import os"}})
    (ws / "a.py").write_text("changed behind our back\n")
    assert tools.apply(plan).startswith("error: a.py changed since the edit was planned")
    (ws / "a.py").write_text(plan.before)
    tools.apply(plan)
    (ws / "a.py").write_text("edited again by the user\n")
    assert tools.revert(plan).startswith("error: a.py changed since the edit")
    assert (ws / "a.py").read_text() == "edited again by the user\n"


# ------------------------------------------------------------------------ attack set

ESCAPES = ["../outside.txt", "../../etc/passwd", "pkg/../../outside.txt", "/etc/passwd",
           "~", "~/outside.txt", "../ws2/secret.txt"]


@pytest.fixture
def outside(ws, tmp_path):
    """Files beside the workspace, including `ws2`, whose path string starts with `ws`."""
    (tmp_path / "outside.txt").write_text("secret\n")
    (tmp_path / "ws2").mkdir()
    (tmp_path / "ws2" / "secret.txt").write_text("secret\n")
    return tmp_path


@pytest.mark.parametrize("path", ESCAPES)
def test_paths_out_of_the_workspace_are_refused(tools, outside, path):
    for result in (call(tools, "Read", file_path=path),
                   call(tools, "Grep", pattern="secret", path=path),
                   call(tools, "Edit", file_path=path, old_string="secret", new_string="x"),
                   call(tools, "Edit", file_path=f"{path}/new.py", new_string="x")):
        assert result.startswith("error: ") and "relative to the workspace root" in result
    assert (outside / "outside.txt").read_text() == "secret\n"
    assert not list(outside.rglob("new.py"))


def test_symlinks_leading_out_are_refused(tools, ws, outside):
    (ws / "leaf.txt").symlink_to(outside / "outside.txt")
    (ws / "sib").symlink_to(outside / "ws2")           # a prefix-lookalike directory
    (ws / "dangling").symlink_to(outside / "nowhere.txt")
    for path in ("leaf.txt", "sib/secret.txt", "sib"):
        out = call(tools, "Read", file_path=path)
        assert out.startswith(f"error: {path} leads outside the workspace through a symlink"), out
    assert call(tools, "Edit", file_path="leaf.txt", old_string="secret", new_string="x") \
        .startswith("error: leaf.txt leads outside")
    assert call(tools, "Edit", file_path="sib/new.py", new_string="x").startswith("error: ")
    assert call(tools, "Edit", file_path="dangling", new_string="x").startswith("error: ")
    assert not (outside / "nowhere.txt").exists() and not (outside / "ws2" / "new.py").exists()
    assert (outside / "outside.txt").read_text() == "secret\n"
    # Grep neither follows them nor searches through them
    assert call(tools, "Grep", pattern="secret") == "no matches"
    assert call(tools, "Grep", pattern="secret", path="sib").startswith("error: ")


def test_symlinks_inside_the_workspace_work(tools, ws):
    (ws / "alias.py").symlink_to(ws / "a.py")
    (ws / "lib").symlink_to(ws / "pkg")
    assert call(tools, "Read", file_path="lib/util.py").startswith("    1→def parse(x):")
    out = call(tools, "Edit", file_path="alias.py", old_string="import re", new_string="import os")
    assert out.startswith("edited a.py:")  # the real file is what gets written
    assert (ws / "alias.py").is_symlink() and (ws / "a.py").read_text().startswith("import os")
    assert "alias.py:1:import os" in call(tools, "Grep", pattern="import")


def test_symlink_loop_is_an_error(tools, ws):
    (ws / "loop").symlink_to(ws / "loop")
    assert call(tools, "Read", file_path="loop").startswith("error: ")
    assert call(tools, "Grep", pattern="import") == "a.py:1:import re"  # the walk survives it


def test_names_with_newlines(tools, ws):
    name = "odd\nname.py"
    assert call(tools, "Edit", file_path=name, new_string="def parse(): pass\n").startswith(
        "created odd\\nname.py")
    assert (ws / name).read_text() == "def parse(): pass\n"
    assert call(tools, "Read", file_path=name) == "    1→def parse(): pass"
    assert call(tools, "Grep", pattern="def parse\\(\\)") == "odd\\nname.py:1:def parse(): pass"
    assert call(tools, "Read", file_path="no\nsuch") == "error: no such file: no\\nsuch"


def test_nul_in_a_path_is_an_error(tools):
    assert call(tools, "Read", file_path="a.py\0x") == "error: file_path contains a NUL byte"


# ------------------------------------------------------------------------------- Bash

def test_bash_result_format(tools, ws):
    assert call(tools, "Bash", command="echo out; echo err >&2; exit 3") == (
        "exit code: 3\nstdout:\nout\nstderr:\nerr")
    assert call(tools, "Bash", command="pwd; cat") == f"exit code: 0\nstdout:\n{ws.resolve()}\nstderr: (empty)"
    assert call(tools, "Bash", command="true") == "exit code: 0\nstdout: (empty)\nstderr: (empty)"
    assert call(tools, "Bash", command="  ") == "error: command is empty"
    assert call(tools, "Bash", command="true", timeout=0).startswith("error: timeout must be")


def test_bash_timeout_kills_the_whole_group(tools, popens):
    t0 = time.monotonic()
    out = call(tools, "Bash", command="echo started; sleep 1000", timeout=1)
    assert time.monotonic() - t0 < 3.0
    assert out == ("error: command timed out after 1s; killed it and its child processes\n"
                   "stdout:\nstarted\nstderr: (empty)")
    assert _gone(popens[-1].pid)


def test_bash_timeout_kills_forked_children(tools, popens):
    t0 = time.monotonic()
    out = call(tools, "Bash", command="sleep 1000 & sleep 1000 & wait", timeout=1)
    assert time.monotonic() - t0 < 3.0 and out.startswith("error: command timed out after 1s")
    assert _gone(popens[-1].pid)


def test_bash_background_child_holding_the_pipe(tools, popens):
    t0 = time.monotonic()
    assert call(tools, "Bash", command="sleep 1000 & echo done") == (
        "exit code: 0\nstdout:\ndone\nstderr: (empty)")
    assert time.monotonic() - t0 < 3.0 and _gone(popens[-1].pid)


def test_bash_timeout_is_clamped(ws):
    t = Tools(ws, limits=Limits(bash_max_timeout=1))
    t0 = time.monotonic()
    assert call(t, "Bash", command="sleep 1000", timeout=999).startswith(
        "error: command timed out after 1s")
    assert time.monotonic() - t0 < 3.0


def test_bash_huge_output_keeps_head_and_tail(tools):
    py = f"{sys.executable} -c \"import sys; sys.stdout.write('h' + 'x' * 49_999_998 + 't')\""
    out = call(tools, "Bash", command=py + "; echo oops >&2")
    assert len(out) <= tools.limits.max_output_chars
    stdout = out.split("stdout:\n", 1)[1].split("\nstderr:")[0]
    head, n, tail = re.fullmatch(r"(x*|hx*)\n\.\.\. \[(\d+) chars elided\] \.\.\.\n(x*t)", stdout).groups()
    assert head.startswith("h") and len(head) + int(n) + len(tail) == 50_000_000
    assert out.endswith("stderr:\noops")


def test_bash_huge_stderr_and_stdout_share_the_cap(ws):
    t = Tools(ws, limits=Limits(max_output_chars=1000))
    out = call(t, "Bash", command="yes o | head -c 100000; yes e | head -c 100000 >&2")
    assert len(out) <= 1000 and out.count("chars elided") == 2


def test_bash_keyboard_interrupt_kills_the_group_and_propagates(tools, popens, monkeypatch):
    real_wait = subprocess.Popen.wait

    def wait(self, timeout=None):
        if timeout is not None:  # the wait for the command: the user presses ctrl-c
            time.sleep(0.3)
            raise KeyboardInterrupt
        return real_wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, "wait", wait)
    with pytest.raises(KeyboardInterrupt):
        call(tools, "Bash", command="sleep 1000 & sleep 1000", timeout=30)
    assert _gone(popens[-1].pid)


def test_bash_reports_a_signal_death(tools):
    assert call(tools, "Bash", command="kill -9 $$").startswith("exit code: -9 (killed by SIGKILL)")


def test_run_never_raises_on_internal_failures(tools, monkeypatch):
    def boom(args, say):
        raise RuntimeError("kaboom")

    monkeypatch.setitem(tools._builtins, "read", boom)
    assert call(tools, "Read", file_path="a.py") == "error: RuntimeError: kaboom"
    monkeypatch.setattr("agent.shell.subprocess.Popen", lambda *a, **k: (_ for _ in ()).throw(
        FileNotFoundError(2, "No such file or directory", "bash")))
    assert call(tools, "Bash", command="ls") == "error: No such file or directory: bash"


def test_signals_untouched(tools):
    # the runtime must not leave SIGINT ignored or changed for the agent
    before = signal.getsignal(signal.SIGINT)
    call(tools, "Bash", command="true")
    assert signal.getsignal(signal.SIGINT) is before
