"""The SOUL and tool spec: loading, validation, hashing, typing calls, the system prompt,
the SOUL checks, and the CLIs' bad-input contract (one `error:` line, exit 2)."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nanocode.common import InputError
from nanocode.soul_checks import capitalized_words, check_message, check_reply
from nanocode.spec import DEFAULT_SOUL, DEFAULT_TOOLS, load_soul, load_tools, render_system_prompt, type_args

FIXTURES = Path(__file__).parent / "fixtures" / "spec"
BIN = Path(sys.executable).parent  # the venv's console scripts


@pytest.fixture(scope="module")
def soul():
    return load_soul()


@pytest.fixture(scope="module")
def tools():
    return load_tools()


# ------------------------------------------------------------------------- defaults

def test_defaults_load_and_hash_the_file_bytes(soul, tools):
    assert soul.sha256 == hashlib.sha256(DEFAULT_SOUL.read_bytes()).hexdigest()
    assert tools.sha256 == hashlib.sha256(DEFAULT_TOOLS.read_bytes()).hexdigest()
    assert load_soul().sha256 == soul.sha256 and load_tools().sha256 == tools.sha256
    assert {"voice", "values", "rules", "examples"} <= set(soul.sections)
    assert soul.rules.names() == ["lowercase_prose", "banned_openers", "banned_phrases", "max_reply_words",
                                  "max_think_words"]
    assert [t.name for t in tools.tools] == ["Read", "Grep", "Edit", "Bash"]


def test_default_tools_match_design(tools):
    args = {t.name: {a.name: (a.type, a.required) for a in t.args} for t in tools.tools}
    assert args == {
        "Read": {"file_path": ("string", True), "offset": ("int", False), "limit": ("int", False)},
        "Grep": {"pattern": ("string", True), "path": ("string", False), "glob": ("string", False)},
        "Edit": {"file_path": ("string", True), "old_string": ("string", False),
                 "new_string": ("string", True)},
        "Bash": {"command": ("string", True), "timeout": ("int", False)},
    }
    assert {t.name: t.needs_approval for t in tools.tools} == {
        "Read": False, "Grep": False, "Edit": True, "Bash": True}
    assert "    1→import re" in tools.get("Read").description  # the DESIGN result format
    assert "path:line:text" in tools.get("Grep").description


def test_soul_rules_text_agrees_with_front_matter(soul):
    # the prose rules quote the limits; keep them in step with the checkable ones
    assert f"{soul.rules.get('max_reply_words')['limit']} words" in soul.sections["rules"]
    assert f"at most {soul.rules.get('max_think_words')['limit']} words" in soul.sections["rules"]


def test_soul_examples_good_replies_pass_bad_ones_fail(soul):
    examples = re.findall(r"^- \*\*(good|bad)\*\*: (.*)$", soul.sections["examples"], re.M)
    assert len(examples) >= 6
    for kind, reply in examples:
        ok = all(c.ok for c in check_reply(reply, soul.rules))
        assert ok == (kind == "good"), (kind, reply)


def test_hash_changes_with_the_file(tmp_path, soul, tools):
    s, t = tmp_path / "SOUL.md", tmp_path / "tools.yaml"
    s.write_bytes(DEFAULT_SOUL.read_bytes() + b"\none more line.\n")
    t.write_bytes(DEFAULT_TOOLS.read_bytes() + b"\n# a comment\n")
    assert load_soul(s).sha256 != soul.sha256
    assert load_tools(t).sha256 != tools.sha256


# ---------------------------------------------------------------------- bad input

@pytest.mark.parametrize("load, name, problem", [
    (load_soul, "soul_empty.md", "is empty"),
    (load_soul, "soul_no_front_matter.md", "front matter"),
    (load_soul, "soul_bad_yaml.md", "bad YAML at line"),
    (load_soul, "soul_missing_key.md", "missing key(s): rules"),
    (load_soul, "soul_unknown_key.md", "unknown rule(s) under 'rules': max_reply_wrds (known: lowercase_prose"),
    (load_soul, "soul_bad_type.md", "rule 'max_reply_words': 'limit' must be a positive integer, got 'many'"),
    (load_soul, "soul_missing_section.md", "missing section(s): ## values, ## rules"),
    (load_soul, "soul_empty_section.md", "empty section(s): ## values"),
    (load_soul, "nope.md", "no such file"),
    (load_tools, "tools_bad_yaml.yaml", "bad YAML at line 4"),
    (load_tools, "tools_not_list.yaml", "'tools' must be a non-empty list"),
    (load_tools, "tools_missing_field.yaml", "tool 1 (Read): missing field 'description'"),
    (load_tools, "tools_bad_type.yaml", "unknown type 'str'"),
    (load_tools, "tools_dup_tool.yaml", "duplicate tool name 'Read'"),
    (load_tools, "tools_dup_arg.yaml", "duplicate arg name 'file_path'"),
    (load_tools, "tools_unknown_field.yaml", "unknown field(s): requried"),
    (load_tools, "tools_bad_name.yaml", "must be an identifier"),
    (load_tools, "tools_no_runner.yaml", "tool 1 (Read): say how the tool runs with exactly one of builtin"),
    (load_tools, "tools_unknown_builtin.yaml", "tool 1 (Read): unknown builtin 'reed' (expected read, search"),
    (load_tools, "tools_bad_placeholder.yaml", "tool 1 (Test): command placeholder {flags} is not one of its args"),
    (load_tools, "tools_bad_entry.yaml", "tool 1 (Deploy): entry 'no_such_module_here:deploy' does not import"),
    (load_tools, "tools_unmapped_arg.yaml", "tool 1 (Read): arg 'file_path' maps to nothing: builtin read has no "
                                            "argument 'file_path' (its arguments: path, offset, limit)"),
    (load_tools, "nope.yaml", "no such file"),
])
def test_bad_soul_or_tools(load, name, problem):
    with pytest.raises(InputError) as e:
        load(FIXTURES / name)
    assert name in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)


def test_not_utf8(tmp_path):
    bad = tmp_path / "latin1.md"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.md: not UTF-8"):
        load_soul(bad)
    with pytest.raises(InputError, match="latin1.md: not UTF-8"):
        load_tools(bad)


def test_soul_front_matter_edges(tmp_path):
    unclosed = tmp_path / "unclosed.md"
    unclosed.write_text("---\nsummary: x\n# soul\n")
    with pytest.raises(InputError, match="unclosed.md: .*no closing '---'"):
        load_soul(unclosed)
    crlf = tmp_path / "crlf.md"  # windows line endings load the same
    crlf.write_bytes(DEFAULT_SOUL.read_bytes().replace(b"\n", b"\r\n"))
    assert load_soul(crlf).rules == load_soul().rules


def test_bad_template(tmp_path, soul, tools):
    bad = tmp_path / "system.j2"
    bad.write_text("{{ soul.nope }}")
    with pytest.raises(InputError, match="system.j2: template error"):
        render_system_prompt(soul, tools, template=bad)


@pytest.mark.parametrize("argv", [
    ["factory", "check", "--soul", str(FIXTURES / "soul_missing_section.md")],
    ["factory", "check", "--tools", str(FIXTURES / "tools_bad_type.yaml")],
    ["nanocode", "prompt", "--soul", str(FIXTURES / "soul_bad_yaml.md")],
    ["evals", "soul-check", str(FIXTURES / "no_such_reply.txt")],
])
def test_cli_bad_input_is_one_error_line(argv):
    r = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_cli_good_input():
    r = subprocess.run([str(BIN / "factory"), "check"], capture_output=True, text=True)
    assert r.returncode == 0 and "Read" in r.stdout and load_soul().sha256[:12] in r.stdout
    r = subprocess.run([str(BIN / "nanocode"), "prompt"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == render_system_prompt(load_soul(), load_tools())
    for reply, code in [("Great question! I'd be happy to help.", 1),
                        ("found it: `parse` in `src/Main.java`, fixed.", 0)]:
        r = subprocess.run([str(BIN / "evals"), "soul-check", "-"], input=reply,
                           capture_output=True, text=True)
        assert r.returncode == code, r.stdout


# ----------------------------------------------------------------------- tool calls

@pytest.mark.parametrize("call, args", [
    ({"name": "Read", "args": {"file_path": "a.py", "offset": "3", "limit": " 10\n"}},
     {"file_path": "a.py", "offset": 3, "limit": 10}),
    ({"name": "Read", "args": {"file_path": "a.py", "offset": 3}}, {"file_path": "a.py", "offset": 3}),
    ({"name": "Edit", "args": {"file_path": "n.py", "new_string": "  x = 1\n"}},
     {"file_path": "n.py", "new_string": "  x = 1\n"}),  # verbatim, no stripping
    ({"name": "Bash", "args": {"command": "ls", "timeout": "-1"}}, {"command": "ls", "timeout": -1}),
])
def test_type_args_ok(tools, call, args):
    assert type_args(call, tools) == (args, None)


@pytest.mark.parametrize("call, problem", [
    ({"name": "Write", "args": {}}, "unknown tool 'Write'"),
    ({"name": "Read", "args": {"path": "a.py"}}, "Read has no argument 'path'"),
    ({"name": "Read", "args": {}}, "Read needs argument 'file_path'"),
    ({"name": "Read", "args": {"file_path": "a", "offset": "three"}}, "'offset' must be a whole number"),
    ({"name": "Read", "args": {"file_path": "a", "offset": "1.5"}}, "'offset' must be a whole number"),
    ({"name": "Read", "args": {"file_path": "a", "offset": True}}, "'offset' must be a whole number"),
    ({"name": "Read", "args": {"file_path": 3}}, "'file_path' must be text"),
    ({"name": "", "args": {}, "error": "tool call has no name"}, "tool call has no name"),
    ("Read", "malformed tool call"),
])
def test_type_args_errors(tools, call, problem):
    args, error = type_args(call, tools)
    assert args is None and error.startswith("error: ") and problem in error


def test_type_args_bool():
    spec = load_tools(FIXTURES / "tools_small.yaml")
    assert type_args({"name": "Look", "args": {"where": "x", "verbose": "true"}}, spec)[0]["verbose"] is True
    assert type_args({"name": "Look", "args": {"where": "x", "verbose": "False"}}, spec)[0]["verbose"] is False
    assert "must be true or false" in type_args({"name": "Look", "args": {"where": "x", "verbose": "yes"}}, spec)[1]


# -------------------------------------------------------------------- system prompt

def test_system_prompt_lists_every_tool_and_arg(soul, tools):
    prompt = render_system_prompt(soul, tools)
    assert prompt.startswith(soul.summary)
    for tool in tools.tools:
        assert tool.name in prompt and tool.description in prompt
        for arg in tool.args:
            assert arg.name in prompt and arg.description in prompt
    assert len(prompt.split()) < 600  # a tiny model reads it in every conversation


def test_system_prompt_follows_the_tool_spec(soul, tools):
    small = load_tools(FIXTURES / "tools_small.yaml")
    prompt = render_system_prompt(soul, small)
    assert prompt != render_system_prompt(soul, tools)
    assert "Look(where: string, verbose?: bool)" in prompt and "Grep" not in prompt


# ---------------------------------------------------------------------- soul checks

@pytest.mark.parametrize("front, problem", [
    ("lowercase_prose: true\nrules: {}", "unknown front matter key(s): lowercase_prose (rules go under 'rules:')"),
    ("rules: [lowercase_prose]", "'rules' must be a mapping of rule name -> its parameters"),
    ("rules: {banned_phrases: true}", "rule 'banned_phrases' needs its parameter 'phrases' (a list of non-empty"),
    ("rules: {banned_phrases: [ok, '']}", "rule 'banned_phrases': 'phrases' must be a list of non-empty strings"),
    ("rules: {max_reply_words: {limt: 3}}", "rule 'max_reply_words': unknown parameter(s) limt (its parameters: limit)"),
    ("rules: {max_reply_words: null}", "rule 'max_reply_words': None does not switch a rule off; leave the rule out"),
    ("rules: {sentence_case: [x]}", "rule 'sentence_case' takes true, got ['x']"),
    ("rules: {lowercase_prose: true, sentence_case: true}",
     "rules 'lowercase_prose' and 'sentence_case' contradict each other"),
])
def test_bad_rules_are_one_line_naming_the_file_and_the_rule(tmp_path, front, problem):
    path = tmp_path / "SOUL.md"
    path.write_text(f"---\nsummary: x\n{front}\n---\n## voice\nv\n## values\nv\n## rules\n1. r\n")
    with pytest.raises(InputError) as e:
        load_soul(path)
    assert str(e.value).startswith(f"{path}: ") and problem in str(e.value) and "\n" not in str(e.value)


def test_rules_take_a_mapping_a_bare_value_or_true(tmp_path):
    path = tmp_path / "SOUL.md"
    body = "---\nsummary: x\nrules:\n{}---\n## voice\nv\n## values\nv\n## rules\n1. r\n"
    path.write_text(body.format("  max_reply_words: {limit: 7}\n  lowercase_prose: true\n  banned_phrases: [a b]\n"))
    rules = load_soul(path).rules
    # registry order, whatever the file's; defaults filled in
    assert rules.names() == ["lowercase_prose", "banned_phrases", "max_reply_words"]
    assert rules.get("lowercase_prose") == {"proper_nouns": ()} and rules.get("max_reply_words") == {"limit": 7}
    assert rules.get("sentence_case") is None
    path.write_text(body.format("  max_reply_words: 7\n  banned_phrases: {phrases: [a b]}\n  lowercase_prose: {}\n"))
    assert load_soul(path).rules == rules
    path.write_text(body.format("  {}\n"))  # no rules: nothing is checked
    assert check_reply("Certainly! " * 99, load_soul(path).rules) == []


def test_soul_checks_flag_sycophancy(soul):
    checks = {c.rule: c for c in check_reply("Great question! I'd be happy to help.", soul.rules)}
    assert not checks["lowercase_prose"].ok and "Great" in checks["lowercase_prose"].detail
    assert not checks["banned_openers"].ok and not checks["banned_phrases"].ok


def test_soul_checks_pass_a_good_reply(soul):
    reply = ("found it: `CamelCase` was shadowing the import in src/Main.java, so i renamed the "
             "local. the HTTP test and the JSON fixtures in `tests/` pass now, and Python's "
             "type checker is happy too.\n\n```java\nclass Main { UserService s; }\n```\n")
    assert [c for c in check_reply(reply, soul.rules) if not c.ok] == []


def test_lowercase_heuristic(soul):
    nouns = soul.rules.get("lowercase_prose")["proper_nouns"]
    assert capitalized_words("ran it on GitHub with NumPy and the APIs, see README.md", nouns) == []
    assert capitalized_words("The fix. I think Done.", nouns) == ["The", "I", "Done"]
    assert capitalized_words("a well-Known thing", nouns) == ["Known"]


def test_soul_checks_length_and_offers(soul):
    long = " ".join(["word"] * (soul.rules.get("max_reply_words")["limit"] + 1))
    assert not {c.rule: c.ok for c in check_reply(long, soul.rules)}["max_reply_words"]
    code = "short.\n```\n" + long + "\n```\n"
    assert {c.rule: c.ok for c in check_reply(code, soul.rules)}["max_reply_words"]
    offer = "done, the test passes. let me know if you want more!"
    assert not {c.rule: c.ok for c in check_reply(offer, soul.rules)}["banned_phrases"]


def test_check_message_wants_brief_thinking_before_a_call(soul):
    call = [{"name": "Grep", "args": {"pattern": "def parse"}}]
    ok = {"role": "assistant", "content": "let me find `parse` first", "tool_calls": call}
    silent = {"role": "assistant", "content": "", "tool_calls": call}
    assert all(c.ok for c in check_message(ok, soul.rules))
    assert not {c.rule: c.ok for c in check_message(silent, soul.rules)}["max_think_words"]
