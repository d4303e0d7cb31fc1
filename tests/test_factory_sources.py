"""Factory inputs: the Hugging Face source adapters on local stand-ins in the real schemas
(tests/fixtures/sources, read by datasets.load_dataset, never the Hub), the shipped HumanEval
seed file, diff-based targeted edits, dedup + decontamination, and bad input end to end."""

import json
import os
import re
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from agent.tools import Tools
from factory.config import make
from factory.convert import MISSED_SEARCH, RECOVER, CodeDiff, CodeEdit, _slip, diff_edits
from factory.dedup import NEAR, Contamination, screen, signature
from factory.heldout import held_out, is_held_out, seedable
from factory.loop import Skip
from factory.sources import HUMANEVAL_SEEDS, SOURCES, humaneval_rows, seed_row
from nanocode.common import InputError, nanocode_home
from nanocode.record import validate
from nanocode.soul_checks import check_message
from nanocode.spec import load_soul, load_tools
from tests.conftest import REPO

SOUL, SPEC = load_soul(), load_tools()
FIXTURES = REPO / "tests" / "fixtures" / "sources"
HUB = {"tulu_personas_code": "tulu-personas-code", "self_oss_instruct": "self-oss-instruct",
       "evol_codealpaca": "evol-codealpaca", "smoltalk": "smoltalk"}


def hub(name, **settings):
    return make("source", SOURCES, {"name": name, "dataset": str(FIXTURES / HUB[name]), **settings})


def replay(draft, root: Path) -> list[str]:
    for path, text in draft["workspace"].items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    tools = Tools(root, SPEC)
    return [tools.run(c) for m in draft["messages"] if m["role"] == "assistant" for c in m.get("tool_calls", [])]


def test_hub_adapters_map_each_real_schema():
    tulu = hub("tulu_personas_code").seeds()
    assert [s["input_id"] for s in tulu][:2] == ["tulu-personas-code:personas_code_a1", "tulu-personas-code:personas_code_b2"]
    assert tulu[0]["instruction"].startswith("Write a Python function") and "def median" in tulu[0]["answer"]
    oss = hub("self_oss_instruct", limit=3).seeds()  # limit: the first rows only
    assert [s["source_id"] for s in oss] == ["101", "102", "103"]
    assert "\r" not in oss[2]["answer"] and "du -a ." in oss[2]["answer"]  # CRLF read as LF
    evol = hub("evol_codealpaca", label="evol").seeds()
    assert evol[0]["input_id"] == "evol:1" and evol[0]["answer"].startswith("Good catch!")
    smol = hub("smoltalk").seeds()  # config `all`, as on the Hub; the system turn is skipped
    assert smol[1]["instruction"] == "How do I reverse a string in Go?" and "func Reverse" in smol[1]["answer"]
    assert smol[2]["skip"] == ["source", "the row has no instruction text"]
    # the identity of a local copy is its bytes and the settings
    assert hub("evol_codealpaca").sha256 == hub("evol_codealpaca").sha256 != hub("evol_codealpaca", limit=1).sha256
    with pytest.raises(InputError, match=r"no column\(s\) instruction, output for EvolCodeAlpaca; its columns: messages"):
        make("source", SOURCES, {"name": "evol_codealpaca", "dataset": str(FIXTURES / "smoltalk"),
                                 "config": "all"}).seeds()
    with pytest.raises(InputError, match="source 'smoltalk': limit must be a positive integer"):
        hub("smoltalk", limit=0)
    with pytest.raises(InputError, match="mix: input id 'smoltalk:1' comes from two sources"):
        make("source", SOURCES, {"name": "mix", "sources": [{"name": "smoltalk", "dataset": str(FIXTURES / "smoltalk")}] * 2}).seeds()


def test_the_shipped_humaneval_seeds_are_the_seedable_problems_only():
    rows = [json.loads(line) for line in HUMANEVAL_SEEDS.read_text().splitlines()]
    assert rows == humaneval_rows() and len(rows) == len(seedable()) == 123
    numbers = {int(r["id"].rsplit("-", 1)[1]) for r in rows}
    assert not any(is_held_out(f"HumanEval/{n}") for n in numbers) and len(numbers) == 123
    assert "MIT" in (REPO / "factory" / "seeds" / "README.md").read_text()
    # each becomes a line-numbered Read of the file the user named (no search first: its name is
    # known) and one targeted Edit filling in the stub; this one (a recovery row) slips first
    seed = seed_row("humaneval", rows[0]["id"], rows[0]["instruction"], rows[0]["answer"], rows[0]["workspace"])
    draft = CodeEdit(system_prompt=False).convert(seed, SOUL, SPEC)
    calls = [c for m in draft["messages"] if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    assert [c["name"] for c in calls] == ["Read", "Edit", "Read", "Edit"]
    assert calls[0]["args"] == {"file_path": "solution.py"} and "def separate_paren_groups" in rows[0]["workspace"]["solution.py"]
    # the file's name varies apart from the function's, as in real repos, and is too varied to recall:
    # no name in more than 3 rows, no stem in more than 4, most do not spell the function, and never
    # one of the agentic eval's unseen modules (a model copies the name it is given)
    names = [re.search(r"[\w/]+\.py", r["instruction"])[0] for r in rows]
    fns = [p["entry_point"] for p in seedable()]
    stems = Counter(n.rsplit("/", 1)[-1] for n, f in zip(names, fns) if f not in n)
    assert max(Counter(names).values()) <= 3 and max(stems.values()) <= 4 and len(stems) >= 40
    assert 123 / 10 < sum(f in n for n, f in zip(names, fns)) < 123 / 4
    assert not {"impl.py", "answer.py"} & set(stems)
    assert all(n in r["workspace"] for n, r in zip(names, rows) if r["workspace"])
    assert calls[1]["args"]["old_string"] != rows[0]["workspace"][calls[1]["args"]["file_path"]]  # targeted


def test_some_rows_recover_from_a_missed_edit_or_search_with_the_runtimes_real_results(tmp_path):
    # the shipped HumanEval seeds, converted: every row is a valid record whose results are what
    # agent.tools.Tools gives for its calls on its workspace, and the file ends as the answer's code
    shapes = Counter()
    for n, row in enumerate(json.loads(line) for line in HUMANEVAL_SEEDS.read_text().splitlines()):
        seed = seed_row("humaneval", row["id"], row["instruction"], row["answer"], row["workspace"])
        draft = CodeEdit(system_prompt=False).convert(seed, SOUL, SPEC)
        msgs = draft["messages"]
        validate(msgs)
        calls = [c for m in msgs if m["role"] == "assistant" for c in m.get("tool_calls", [])]
        results = [m["content"] for m in msgs if m["role"] == "tool"]
        assert replay(draft, tmp_path / str(n)) == results, row["id"]
        target = calls[-1]["args"]["file_path"]
        assert (tmp_path / str(n) / target).read_text() == re.search(r"```python\n(.*?)```", row["answer"], re.S)[1]
        shape = " ".join(c["name"] + "!" * r.startswith("error") for c, r in zip(calls, results))
        shapes[shape] += 1
        if "Edit!" in shape:  # the slip is a stub line the file does not have; the retry copies the file
            at = [c["name"] for c in calls].index("Edit")
            assert results[at].startswith("error: old_string not found in") and calls[at + 1:][-1]["args"]["old_string"] in draft["workspace"][target]
            assert calls[at]["args"]["old_string"] not in draft["workspace"][target]
            assert all(c.ok for c in check_message(msgs[2 * at + 3], SOUL.rules))  # the remark after it: the SOUL's voice
        if shape.startswith("Grep"):
            assert results[0] == "no matches" and calls[1] == {"name": "Read", "args": {"file_path": target}}
    # the shares the converter promises (by a hash: near, not exact)
    assert set(shapes) == {"Read Edit", "Read Edit! Read Edit", "Grep Read Edit"}
    assert abs(shapes["Read Edit! Read Edit"] / 122 - 1 / RECOVER) < 0.08
    assert 5 <= shapes["Grep Read Edit"] <= 2 * 122 / MISSED_SEARCH and shapes["Read Edit"] >= 0.3 * 122


def test_a_slip_is_a_stub_spelled_otherwise_or_another_indentation():
    assert _slip('    raise NotImplementedError("implement me")\n') == ("stub", "    pass\n")
    assert _slip('    """\n') == ("stub", '    """\n    pass\n')
    assert _slip("    x = 1\n\n    return x\n") == ("indent", "        x = 1\n\n        return x\n")
    assert _slip("x = 1\n") == ("indent", "    x = 1\n") and _slip("\n") is None
    # code that is not a stub slips on its indentation: the runtime's error says so, the retry applies
    for k in range(40):  # which rows recover follows a hash of the file: find one
        seed = {"instruction": "fix `f` in `m.py`", "answer": f"```python\ndef f():\n    return {k + 1}\n```",
                "workspace": {"m.py": f"def f():\n    return {k}\n"}}
        msgs = CodeEdit(system_prompt=False).convert(seed, SOUL, SPEC)["messages"]
        if any(m["role"] == "tool" and m["content"].startswith("error") for m in msgs):
            break
    assert msgs[3]["tool_calls"][0]["args"]["old_string"] == f"        return {k}\n" and "check indentation" in msgs[4]["content"]
    assert "indentation was off" in msgs[5]["content"] and msgs[-2]["content"].startswith("edited m.py")


def test_pasted_code_and_a_modified_answer_become_unique_targeted_edits(tmp_path):
    seed = hub("evol_codealpaca").seeds()[0]
    draft = CodeDiff(system_prompt=False).convert(seed, SOUL, SPEC)
    msgs = draft["messages"]
    assert list(draft["workspace"]) == ["storage.py"] and "return None" in draft["workspace"]["storage.py"]
    calls = [c for m in msgs if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    assert [c["name"] for c in calls] == ["Read", "Edit", "Edit"] and calls[0]["args"] == {"file_path": "storage.py"}
    original = draft["workspace"]["storage.py"]
    for edit in calls[1:]:  # small regions, not the whole file
        assert edit["args"]["old_string"] in original and len(edit["args"]["old_string"]) < len(original) / 2
    # the results are the real tool runtime's, and replaying them yields the answer's code
    assert replay(draft, tmp_path) == [m["content"] for m in msgs if m["role"] == "tool"]
    assert msgs[2]["content"].startswith("    1→def load(path):\n    2→    with open(path) as f:")
    assert "return data" in (tmp_path / "storage.py").read_text() and msgs[-1]["content"].startswith("Both now use")
    with pytest.raises(Skip, match="holds no code that the answer modifies"):
        CodeDiff().convert(hub("tulu_personas_code").seeds()[0], SOUL, SPEC)


@pytest.mark.parametrize("old, new", [
    ("a\nb\nc\n", "a\nB\nc\n"),
    ("x = 1\nreturn None\nx = 1\nreturn None\n", "x = 1\nreturn None\nx = 1\nreturn 2\n"),  # repeated lines
    ("pass\npass\npass\n", "pass\npass\npass\npass\n"),                                    # insert among copies
    ("one\ntwo\n", "zero\none\ntwo\nthree\n"),                                              # both ends
    ("a\nb\nc\nd\ne\nf\ng\nh\n", "a\nc\nd\nE\nf\ng\nh\ni\n"),                                # delete + change + add
    ("keep\n" * 3 + "".join(f"v{i}\n" for i in range(30)), "keep\n" * 3 + "".join(f"w{i}\n" for i in range(30))),
])
def test_diff_edits_apply_one_unique_occurrence_at_a_time(old, new):
    text = old
    for old_string, new_string in diff_edits(old, new):
        assert text.count(old_string) == 1 and old_string.strip()
        text = text.replace(old_string, new_string, 1)
    assert text == new


def test_dedup_and_decontamination_mark_rows_with_reasons():
    base = ("write a function that merges two sorted lists of integers into one sorted list without "
            "using sort, walking both lists with two indices and appending the rest at the end")
    seeds = [seed_row("a", "1", base, "x"),
             seed_row("a", "2", base.upper().replace(" ", "  "), "x"),          # exact after folding
             seed_row("b", "1", base.replace("integers", "numbers"), "x"),     # near, other source
             seed_row("b", "2", "write a function that reverses a linked list in place", "x"),
             seed_row("b", "3", f"finish this:\n{held_out()[5]['prompt']}", "x")]
    counts = screen(seeds)
    assert counts == {"decontaminated": 1, "exact duplicates": 1, "near duplicates": 1}
    assert seeds[1]["skip"] == ["dedup", "exact duplicate of a:1"]
    assert seeds[2]["skip"][0] == "dedup" and seeds[2]["skip"][1].startswith("near duplicate of a:1")
    assert "skip" not in seeds[0] and "skip" not in seeds[3]
    assert seeds[4]["skip"][0] == "decontaminate" and held_out()[5]["task_id"] in seeds[4]["skip"][1]
    again = [seed_row("a", str(n), base, "x") for n in range(3)]
    assert screen(again, dedup=False) == {"decontaminated": 0} and not any("skip" in s for s in again)
    # MinHash estimates track the real similarity; unrelated prompts are far apart
    assert (signature(base) == signature(seeds[2]["instruction"])).mean() >= NEAR
    assert (signature(base) == signature(seeds[3]["instruction"])).mean() < 0.2
    # every held-out problem is caught; of the seedable ones only HumanEval/61 (a clone of 56)
    index = Contamination()
    assert all(index.check(p["prompt"]) for p in held_out())
    assert [p["task_id"] for p in seedable() if index.check(p["prompt"] + p["canonical_solution"])] == ["HumanEval/61"]


def test_bad_input_and_duplicates_across_sources_become_rejects_with_reasons(tmp_path):
    from rich.console import Console

    from factory.build import build

    bad = [{"id": "giant", "instruction": "refactor this", "answer": "```python\n" + "x = 1\n" * 20000 + "```"},
           {"id": "binary", "instruction": "what is in here?", "answer": "```text\nPK\x03\x04\x00\x00\n```"},
           {"id": "crlf", "instruction": "print a greeting in bash\r\n", "answer": "```bash\r\necho hi\r\n```\r\n"}]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    config = (REPO / "factory" / "configs" / "default.yaml").read_text().split("\nconverter:", 1)[1]
    sources = [{"name": n, "dataset": str(FIXTURES / f)} for n, f in HUB.items()]
    sources.append({"name": "local", "path": str(tmp_path / "bad.jsonl"), "columns": {"id": "id", "instruction": "instruction",
                                                                                    "answer": "answer"}})
    (tmp_path / "build.yaml").write_text(f"source: {json.dumps({'name': 'mix', 'sources': sources})}\nconverter:{config}")
    summary = build(config=tmp_path / "build.yaml", console=Console(file=open(os.devnull, "w")))
    assert (summary["decontaminated"], summary["exact duplicates"], summary["near duplicates"]) == (1, 1, 1)
    with duckdb.connect(str(nanocode_home() / "factory.duckdb"), read_only=True) as db:
        rejects = dict(db.execute("SELECT input_id, stage || ': ' || reason FROM rejects").fetchall())
        sft = {i: json.loads(m) for i, m in db.execute("SELECT input_id, messages FROM sft").fetchall()}
    assert rejects == {
        "tulu-personas-code:personas_code_c3": "dedup: exact duplicate of tulu-personas-code:personas_code_a1",
        "self-oss-instruct:102": f"decontaminate: overlaps held-out {held_out()[3]['task_id']} (100% of 8-word n-grams)",
        "self-oss-instruct:104": "input: the instruction spells the special token <|assistant_end|>",
        "self-oss-instruct:105": "convert: the answer's code block is never closed (unbalanced ```)",
        "evol-codealpaca:2": rejects["evol-codealpaca:2"],
        "evol-codealpaca:3": "convert: the answer has no fenced code block",
        "smoltalk:3": "source: the row has no instruction text",
        "bad:giant": "input: instruction + answer are 120026 chars (limit 60000)",
        "bad:binary": "input: binary content (control bytes) in the answer"}
    assert rejects["evol-codealpaca:2"].startswith("dedup: near duplicate of self-oss-instruct:101")
    assert set(sft) == {"tulu-personas-code:personas_code_a1", "tulu-personas-code:personas_code_b2",
                        "self-oss-instruct:101", "self-oss-instruct:103", "evol-codealpaca:1", "smoltalk:1", "smoltalk:2",
                        "bad:crlf"}
    # general chat goes through its own `chat` converter: a plain exchange, held to the SOUL like the rest
    for chat in (sft["smoltalk:1"], sft["smoltalk:2"]):
        assert [m["role"] for m in chat] == ["system", "user", "assistant"] and "tool_calls" not in chat[-1]
        assert all(c.ok for c in check_message(chat[-1], load_soul().rules))
    assert not any("\r" in json.dumps(m) for m in sft["bad:crlf"])
