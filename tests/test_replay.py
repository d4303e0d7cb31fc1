"""Replay verification (factory/replay.py): a rollout's tool calls run for real in a temp copy
of its workspace; wrong results are rewritten (or reject), Edits that do not apply reject,
refused calls are not run; a build records the outcome and `factory show` prints the rate."""

import json
import os
import subprocess
import tempfile

from agent.tools import Tools
from factory.build import build
from factory.replay import ToolReplay
from nanocode.record import refused
from nanocode.spec import load_tools
from tests.conftest import BIN

SPEC = load_tools()
WORKSPACE = {"utils.py": "import re\n\n\ndef parse(s):\n    return s.split(',')[1:]\n", "pkg/notes.md": "todo\n"}


def rollout(calls, workspace=WORKSPACE) -> list[dict]:
    """user, then per call an assistant turn and its result as the real runtime gives it."""
    messages = [{"role": "user", "content": "the split in utils.py is off by one, fix it"}]
    with tempfile.TemporaryDirectory() as root:
        tools = Tools(root, SPEC)
        for path, text in workspace.items():
            os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
            with open(os.path.join(root, path), "w") as f:
                f.write(text)
        for call in calls:
            messages.append({"role": "assistant", "content": "one sec", "tool_calls": [call]})
            messages.append({"role": "tool", "name": call["name"], "content": tools.run(call)})
    messages.append({"role": "assistant", "content": "fixed: the split starts at 0 now."})
    return messages


GREP = {"name": "Grep", "args": {"pattern": "def parse"}}
READ = {"name": "Read", "args": {"file_path": "utils.py"}}
EDIT = {"name": "Edit", "args": {"file_path": "utils.py", "old_string": "[1:]", "new_string": "[0:]"}}
BASH = {"name": "Bash", "args": {"command": "grep -c split utils.py && ls pkg"}}


def test_a_correct_rollout_passes_unchanged():
    messages = rollout([GREP, READ, EDIT, READ, BASH])
    v = ToolReplay().replay(messages, WORKSPACE, SPEC)
    assert (v.status, v.calls, v.rewritten, v.refused) == ("ok", 5, 0, 0)
    assert v.messages == messages
    assert messages[8]["content"].endswith("    5→    return s.split(',')[0:]")  # the Read after the Edit


def test_wrong_read_and_grep_results_are_rewritten_to_the_real_ones():
    messages = rollout([GREP, READ, EDIT])
    wrong = json.loads(json.dumps(messages))
    wrong[2]["content"] = "utils.py:9:def parse(s):"           # made-up line number
    wrong[4]["content"] = "    1→import re\n    2→def parse(s): ..."  # made-up file
    v = ToolReplay().replay(wrong, WORKSPACE, SPEC)
    assert (v.status, v.rewritten) == ("rewritten", 2) and "message 2 (Grep), message 4 (Read)" in v.reason
    assert v.messages == messages and wrong[2]["content"] == "utils.py:9:def parse(s):"  # input untouched
    r = ToolReplay(mode="reject").replay(wrong, WORKSPACE, SPEC)
    assert r.status == "rejected" and r.reason.startswith("message 2: the Grep result differs from the real one")


def test_an_edit_that_does_not_apply_rejects_the_row():
    messages = rollout([READ, EDIT])
    bad = json.loads(json.dumps(messages))
    bad[3]["tool_calls"][0]["args"]["old_string"] = "[2:]"  # not in the file; the rollout claims it applied
    v = ToolReplay().replay(bad, WORKSPACE, SPEC)
    assert v.status == "rejected"
    assert v.reason.startswith("message 4: Edit of 'utils.py' does not apply: error: old_string not found in utils.py")
    # an Edit that failed in the rollout and fails for real is a faithful error: kept
    failing = rollout([{**EDIT, "args": {**EDIT["args"], "old_string": "[2:]"}}])
    assert failing[2]["content"].startswith("error: old_string not found")
    assert ToolReplay().replay(failing, WORKSPACE, SPEC).status == "ok"


def test_a_refused_bash_call_is_not_run():
    messages = rollout([{"name": "Read", "args": {"file_path": "ran.txt"}}])  # real: no such file
    refusal = [{"role": "assistant", "content": "let me run it", "tool_calls": [
                   {"name": "Bash", "args": {"command": "echo ran > ran.txt"}}]},
               {"role": "tool", "name": "Bash", "content": refused("not on my machine")}]
    messages[1:1] = refusal  # the refused call comes before the Read
    v = ToolReplay().replay(messages, WORKSPACE, SPEC)
    assert (v.status, v.refused, v.calls) == ("ok", 1, 1)
    assert v.messages[4]["content"] == "error: no such file: ran.txt"  # the refused command never ran
    # the same call, not refused, runs for real (and the made-up result is replaced)
    messages[2]["content"] = "exit code: 0\nstdout: (empty)\nstderr: (empty)"
    messages[4]["content"] = "ran"
    v = ToolReplay().replay(messages, WORKSPACE, SPEC)
    assert (v.status, v.calls, v.messages[4]["content"]) == ("rewritten", 2, "    1→ran")


def test_a_result_differing_only_in_the_temp_folder_is_kept():
    import tempfile as tf

    messages = rollout([{"name": "Bash", "args": {"command": "echo $PWD/utils.py"}}])
    recorded = messages[2]["content"]
    messages[2]["content"] = recorded.replace(messages[2]["content"].split("stdout:\n")[1].split("/utils.py")[0],
                                              f"{tf.gettempdir()}/nanocode-convert-abc123")
    v = ToolReplay().replay(messages, WORKSPACE, SPEC)
    assert v.status == "ok" and v.messages == messages and "nanocode-convert-abc123" in v.messages[2]["content"]
    timed = rollout([{"name": "Bash", "args": {"command": "echo 'Ran 4 tests in 0.000s'"}}])
    timed[2]["content"] = timed[2]["content"].replace("0.000s", "0.004s")  # a test runner's timing
    assert ToolReplay().replay(timed, WORKSPACE, SPEC).status == "ok"


def test_malformed_rollouts_and_workspaces_reject():
    messages = rollout([READ])
    assert "have no result" in ToolReplay().replay(messages[:2] + messages[3:], WORKSPACE, SPEC).reason
    assert "leads outside" in ToolReplay().replay(messages, {"../x.py": "x"}, SPEC).reason
    slow = [{"role": "user", "content": "wait"},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "Bash", "args": {"command": "sleep 5"}}]},
            {"role": "tool", "name": "Bash", "content": "exit code: 0\nstdout: (empty)\nstderr: (empty)"}]
    v = ToolReplay(bash_timeout=0.2).replay(slow, {}, SPEC)  # the replay's own time limit holds
    assert v.status == "rewritten" and v.messages[2]["content"].startswith("error: command timed out after 0.2s")


def test_a_build_records_replay_outcomes_and_show_prints_the_rate(tmp_path):
    from rich.console import Console

    summary = build(console=Console(file=open(os.devnull, "w")), limit=30)
    assert summary["replay pass rate"] == 1.0
    assert summary["replay pass rate by source"] == {"coding": 1.0, "humaneval": 1.0}
    assert summary["replayed rows"] == {"ok": summary["sft rows"], "rewritten": 0, "rejected": 0}
    show = subprocess.run([BIN / "factory", "show", "1"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert show.returncode == 0, show.stderr
    lines = show.stdout.splitlines()
    assert any("replay pass rate by source" in line and "coding 1.0, humaneval 1.0" in line for line in lines)
    assert any("replayed rows" in line and f"ok {summary['sft rows']}, rewritten 0, rejected 0" in line for line in lines)


def test_rollouts_run_python_from_the_factorys_own_interpreter(tmp_path, monkeypatch):
    """Scenario tests call `python`; plain Debian has only python3. Rollouts (made and replayed)
    find the factory's own Python first, so they give the same result on any machine."""
    import sys

    from factory.rollout import rollout_tools

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no pyenv shim, no venv
    out = rollout_tools(tmp_path, SPEC).run({"name": "Bash", "args": {"command": "python -c 'import sys; print(sys.executable)'"}})
    assert f"\n{sys.executable}\n" in out and "exit code: 0" in out, out
