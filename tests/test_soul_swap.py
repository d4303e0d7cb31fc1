"""Swapping the SOUL: the default and soul/examples/formal/SOUL.md built offline from the same seeds.
The versions record their SOULs, every row obeys its own SOUL's declared rules and breaks the
other's where they differ, the critiques and pairs name the rule that differs, `factory diff`
shows it, and `evals soul` judges a model trained on each version by that version's SOUL."""

import json
import os
import subprocess

import pytest

from evals import soul as soul_eval
from factory.build import build
from factory.store import Store
from nanocode.common import InputError
from nanocode.soul_checks import check_message, declare_rules, sentence_case_slips
from nanocode.spec import DEFAULT_SOUL, load_soul
from tests.conftest import BIN, REPO
from tests.tiny_run import train_tiny_run
from trainer import checkpoint, sft

FORMAL = REPO / "soul" / "examples" / "formal" / "SOUL.md"
SMALL_TOOLS = REPO / "tests/fixtures/spec/tools_small.yaml"
LIMIT = 30  # the first seeds of the default mix: code edits and a few HumanEval problems


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A store holding version 1 (the default SOUL) and version 2 (the formal one)."""
    from rich.console import Console

    home = tmp_path_factory.mktemp("swap")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOCODE_HOME", str(home))
        quiet = Console(file=open(os.devnull, "w"))
        assert build(limit=LIMIT, console=quiet)["version"] == 1
        assert build(soul=FORMAL, limit=LIMIT, console=quiet)["version"] == 2
    return home


@pytest.fixture
def store(home, monkeypatch):
    monkeypatch.setenv("NANOCODE_HOME", str(home))
    s = Store(read_only=True)
    yield s
    s.close()


def rows(store, kind, v) -> dict:
    """input_id -> row of one version."""
    out = {}
    for r in store.db.sql(f"SELECT * FROM {store.relation(kind, v)}").to_arrow_table().to_pylist():
        out[r["input_id"]] = r
    return out


def failed(messages: list[dict], rules) -> set[str]:
    return {c.rule for m in messages if m["role"] == "assistant" for c in check_message(m, rules) if not c.ok}


def test_the_two_souls_declare_different_rules():
    default, formal = load_soul(), load_soul(FORMAL)
    assert "lowercase_prose" in default.rules.names() and default.rules.get("sentence_case") is None
    assert "sentence_case" in formal.rules.names() and formal.rules.get("lowercase_prose") is None
    assert formal.rules.get("max_reply_words")["limit"] < default.rules.get("max_reply_words")["limit"]
    assert set(formal.rules.get("banned_openers")["phrases"]) != set(default.rules.get("banned_openers")["phrases"])
    assert "no jokes" in formal.sections["voice"].lower()  # a value the judge reads, not a program


@pytest.mark.parametrize("path", [DEFAULT_SOUL, FORMAL])
def test_each_souls_examples_pass_its_own_rules_and_not_the_others(path):
    import re

    soul, other = load_soul(path), load_soul(FORMAL if path == DEFAULT_SOUL else DEFAULT_SOUL)
    examples = re.findall(r"^- \*\*(good|bad)\*\*: (.*)$", soul.sections["examples"], re.M)
    assert len(examples) >= 6
    for kind, reply in examples:
        reply_msg = {"role": "assistant", "content": reply}
        assert (not failed([reply_msg], soul.rules)) == (kind == "good"), (kind, reply)
        if kind == "good":
            assert failed([reply_msg], other.rules), reply  # the voices really differ


def test_sentence_case_checks_prose_and_its_fix_answers_the_check():
    from factory.rules import fix_text

    rules = declare_rules({"sentence_case": True, "banned_openers": ["sure"]})
    text = ("sure, the bug was in `parse`. i fixed it, e.g. by splitting once.\n\n- first item\n"
            "- `x` stays\n\n```py\nlower = 1\n```\nthat is all. 3 tests pass; see src/main.py.")
    assert [w for _, w in sentence_case_slips(text)] == ["sure", "i", "first", "that"]
    fixed = fix_text(text, rules)
    assert fixed == ("The bug was in `parse`. I fixed it, e.g. by splitting once.\n\n- First item\n"
                     "- `x` stays\n\n```py\nlower = 1\n```\nThat is all. 3 tests pass; see src/main.py.")
    assert not failed([{"role": "assistant", "content": fixed}], rules)


def test_the_versions_record_their_souls(store):
    default, formal = load_soul(), load_soul(FORMAL)
    assert store.version(1)["soul_sha256"] == default.sha256 != formal.sha256 == store.version(2)["soul_sha256"]
    assert {r["soul"] for r in rows(store, "sft", 1).values()} == {default.sha256}
    assert {r["soul"] for r in rows(store, "sft", 2).values()} == {formal.sha256}


def test_every_row_obeys_its_own_soul_and_breaks_the_other_where_they_differ(store):
    default, formal = load_soul().rules, load_soul(FORMAL).rules
    one, two = rows(store, "sft", 1), rows(store, "sft", 2)
    assert set(one) == set(two) and len(one) >= LIMIT - 2  # the same inputs became rows under both
    for input_id in one:
        m1, m2 = json.loads(one[input_id]["messages"]), json.loads(two[input_id]["messages"])
        assert not failed(m1, default) and not failed(m2, formal), input_id
        assert "sentence_case" in failed(m1, formal) and "lowercase_prose" in failed(m2, default), input_id
        # the system prompt speaks each SOUL's summary; the user, tool calls and results are the same
        assert m1[0]["content"].startswith(load_soul().summary)
        assert m2[0]["content"].startswith(load_soul(FORMAL).summary)
        assert [m for m in m1 if m["role"] in ("user", "tool")] == [m for m in m2 if m["role"] in ("user", "tool")]
        assert [m.get("tool_calls") for m in m1] == [m.get("tool_calls") for m in m2]


def test_the_critics_and_pairs_name_the_rule_that_differs(store):
    one, two = rows(store, "sft", 1), rows(store, "sft", 2)
    # a row the default SOUL took as drafted is revised under the formal one, for sentence case
    first_try = [i for i, r in one.items() if r["attempt"] == 1]
    assert first_try
    for i in first_try:
        assert two[i]["attempt"] == 2 and "sentence_case" in two[i]["critique"] and not one[i]["critique"]
    p1, p2 = rows(store, "pairs", 1), rows(store, "pairs", 2)
    assert set(p2) > set(p1) and set(p2) - set(p1) == set(first_try)  # new pairs: those rows' drafts
    assert all("lowercase_prose" in p["critique"] and "sentence_case" not in p["critique"] for p in p1.values())
    assert all("sentence_case" in p["critique"] and "lowercase_prose" not in p["critique"] for p in p2.values())
    formal = load_soul(FORMAL).rules
    for p in p2.values():  # the rejected side breaks the formal SOUL, the chosen side keeps it
        assert failed(json.loads(p["rejected"]), formal) and not failed(json.loads(p["chosen"]), formal)


def test_factory_diff_shows_the_swap(store, home):
    one, two = rows(store, "sft", 1), rows(store, "sft", 2)
    changed = sum(one[i]["id"] != two[i]["id"] for i in one)
    r = subprocess.run([str(BIN / "factory"), "diff", "1", "2"], capture_output=True, text=True,
                       env={**os.environ, "NANOCODE_HOME": str(home), "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "changed: soul" in r.stdout and "tools" not in r.stdout.split("changed:")[1].splitlines()[0]
    cells = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in r.stdout.splitlines() if line.count("│") == 6}
    assert sum(int(c[2]) for c in cells.values()) == changed == len(one)  # every row is in the other voice
    assert f"pairs: {len(rows(store, 'pairs', 1))} -> {len(rows(store, 'pairs', 2))}" in r.stdout


# ----------------------------------------------------------------------------- evals soul


@pytest.fixture(scope="module")
def runs(home, tmp_path_factory):
    """A tiny pretrained run and one SFT step on each version: (pretrain, sft on v1, sft on v2)."""
    root = tmp_path_factory.mktemp("swap-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOCODE_HOME", str(home))
        pre = train_tiny_run(root, seq_len=512, steps=1, corpus_chars=300_000, tokenizer_chars=200_000)
        out = []
        for v in (1, 2):
            # a context the rows' system prompt fits in; one step, no samples: only the meta matters here
            sft.run(pre, root / f"sft{v}", [f"factory:{v}"], num_steps=1, device_batch_size=1, seq_len=2048,
                    sample_every=0, overflow="truncate", log=lambda *a: None)
            out.append(root / f"sft{v}")
    convs = [{"messages": [{"role": "user", "content": f"where is parse defined? ({i})"},
                           {"role": "assistant", "content": "It is in utils.py."}]} for i in range(40)]
    (root / "convs.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    return pre, *out, root / "convs.jsonl"


def test_the_soul_eval_judges_each_model_by_its_own_soul(runs, store):
    pre, sft1, sft2, convs = runs
    default, formal = load_soul(), load_soul(FORMAL)
    for run, want, case in ((sft1, default, "lowercase_prose"), (sft2, formal, "sentence_case")):
        if run == sft1:
            r = soul_eval.evaluate(run, data=[str(convs)], limit=2, tools=SMALL_TOOLS, max_tokens=4)
        else:  # as a user runs it, with no --soul
            cli = subprocess.run([str(BIN / "evals"), "soul", str(run), "--data", str(convs), "--limit", "2",
                                  "--tools", str(SMALL_TOOLS), "--max-tokens", "4"], capture_output=True, text=True,
                                 env={**os.environ, "COLUMNS": "200"})
            assert cli.returncode == 0, cli.stdout + cli.stderr
            assert f"SOUL: {FORMAL} (the SOUL of factory:2, the run's data)" in cli.stdout
            r = json.loads((run / "evals" / "soul.json").read_text())
        assert r["soul"]["sha256"] == want.sha256 and r["soul"]["path"] == str(want.path)
        assert r["soul"]["from"].startswith("the SOUL of factory:") and r["replies"] >= 1
        # the rates are over the rules that SOUL declares, and its case rule among them
        assert case in r["rules"] and set(r["rules"]) <= set(want.rules.names())
        for sample in r["samples"]:
            assert set(sample["checks"]) == {c.rule for c in check_message(sample["message"], want.rules)}
    # --soul still overrides; a pretrained run (no factory data) is judged by the default SOUL
    r = soul_eval.evaluate(sft2, data=[str(convs)], limit=1, soul=DEFAULT_SOUL, tools=SMALL_TOOLS, max_tokens=4)
    assert r["soul"] == {"path": str(DEFAULT_SOUL), "sha256": default.sha256, "from": "--soul"}
    meta = checkpoint.find_checkpoints(pre).read_meta()[1]
    assert soul_eval.taught_soul(pre, meta) == (DEFAULT_SOUL, "the default (the run's data is not from the factory)")


def test_the_soul_eval_asks_for_soul_when_it_cannot_tell(runs, tmp_path):
    from rich.console import Console

    _, sft1, _, _ = runs
    meta = checkpoint.find_checkpoints(sft1).read_meta()[1]
    assert meta["data"]["sources"] == ["factory:1@1"]  # what the run recorded of its data
    # this test's own store: a version built from a SOUL that lives outside soul/
    elsewhere = tmp_path / "SOUL.md"
    elsewhere.write_text(DEFAULT_SOUL.read_text() + "\none more line.\n")
    build(soul=elsewhere, limit=1, console=Console(file=open(os.devnull, "w")))
    with pytest.raises(InputError, match=r"built from a SOUL \(sha256 \w{12}\) that no file under .*soul matches: "
                                         "pass --soul"):
        soul_eval.taught_soul(sft1, meta)
    build(limit=1, new=True, console=Console(file=open(os.devnull, "w")))
    mixed = {**meta, "data": {"sources": ["factory:1@1", "factory:2@1"]}}
    with pytest.raises(InputError, match=r"versions built from different SOULs \(factory:1 from .*pass --soul"):
        soul_eval.taught_soul(sft1, mixed)
    with pytest.raises(InputError, match="no version 9 in .*pass --soul"):
        soul_eval.taught_soul(sft1, {**meta, "data": {"sources": ["factory:9@1"]}})
