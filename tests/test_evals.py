"""evals/: bpb, CORE, the agentic eval, SOUL adherence, preference accuracy and the run report,
on a tiny real run (pretrain + DPO, trained in-process) and loopback OpenAI-compatible servers."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from evals import agentic, bpb, copying, core, preference, report, runs, soul
from factory.heldout import humaneval_problems, is_held_out
from nanocode.common import InputError
from nanocode.spec import load_soul, load_tools
from tests import fake_model
from tests.conftest import BIN, REPO
from tests.scripted_server import ScriptedServer
from tests.tiny_run import train_tiny_run
from trainer import checkpoint, dpo, model

BUNDLE = REPO / "tests/fixtures/core"
SMALL_TOOLS = REPO / "tests/fixtures/spec/tools_small.yaml"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """ROOT/run/{pretrain,dpo}: a d1 model (seq 512) pretrained 3 steps, then 2 DPO steps; pairs and
    conversations beside it."""
    root = tmp_path_factory.mktemp("evals")
    train_tiny_run(root, seq_len=512, steps=3, corpus_chars=600_000, tokenizer_chars=300_000, eval_every=2,
                   out="run/pretrain")
    pairs = [{"prompt": [{"role": "user", "content": f"where is parse defined? ({i})"}],
              "chosen": [{"role": "assistant", "content": "it is in utils.py."}],
              "rejected": [{"role": "assistant", "content": "Certainly! I would be happy to help you with that."}]}
             for i in range(40)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    convs = [{"messages": p["prompt"] + p["chosen"]} for p in pairs]
    (root / "convs.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    dpo.run(root / "run" / "pretrain", root / "run" / "dpo", [str(root / "pairs.jsonl")], num_steps=2,
            device_batch_size=2, lr_scale=0.1, val_fraction=0.25, seed=0)
    return root


@pytest.fixture(scope="module")
def loaded(root):
    return checkpoint.load_model(root / "run" / "dpo")


def last_val(stage_dir):
    return [e for e in runs.read_metrics(stage_dir) if e["event"] == "val"][-1]


# ----------------------------------------------------------------------------- runs and bpb


def test_a_root_holds_stages_and_model_evals_use_the_last(root):
    assert list(runs.stages(root / "run")) == ["pretrain", "dpo"]
    assert runs.stages(root / "run" / "dpo") == {"dpo": root / "run" / "dpo"}
    assert runs.model_dir(root / "run") == root / "run" / "dpo"
    (root / "empty").mkdir(exist_ok=True)
    with pytest.raises(InputError, match="no checkpoint to evaluate"):
        runs.model_dir(root / "empty")


def test_bpb_is_trainings_own_validation_number(root):
    pre = root / "run" / "pretrain"
    r = bpb.evaluate(pre, root / "corpus", max_tokens=1024, batch_size=2)
    val = last_val(pre)
    assert r["bpb"]["prose"] == pytest.approx(val["val_bpb_prose"], rel=1e-5)
    assert r["bpb"]["code"] == pytest.approx(val["val_bpb_code"], rel=1e-5)


# ----------------------------------------------------------------------------- CORE


def test_the_copy_probe_shows_each_run_twice_and_an_untrained_model_cannot_copy(root, loaded):
    params, cfg, tok, meta = loaded
    rows = copying.copy_rows(tok, 4, 10, seed=1)
    assert rows.shape == (4, 21) and (rows[:, 0] == tok.bos_id).all()
    assert (rows[:, 1:11] == rows[:, 11:]).all() and len(set(rows[:, 1:].ravel())) > 20  # runs differ
    assert rows[:, 1:].min() >= 256 and rows[:, 1:].max() < min(256 + copying.COMMON, len(tok.ranks))
    r = copying.evaluate(root / "run" / "dpo", loaded=loaded)
    # 3 pretraining steps: no copying, both showings scored like any random token (ln 512 = 6.24)
    assert r["second_accuracy"] < 0.05 and abs(r["copy_gain"]) < 0.2 and r["first_loss"] > 5
    assert r["runs"] * (r["length"] - 1) == copying.RUNS * (copying.LENGTH - 1)
    assert copying.evaluate(None, runs=2, length=1000, loaded=loaded)["length"] == (cfg.seq_len - 1) // 2


def test_the_fixture_bundle_loads_and_prompts_render_like_nanochat(tiny_tok):
    tasks, problems = core.load_bundle(BUNDLE)
    assert problems == [] and [(t.label, t.kind, t.num_fewshot, t.baseline) for t in tasks] == [
        ("tiny_mc", "multiple_choice", 2, 0.25), ("tiny_schema", "schema", 0, 0.5), ("tiny_lm", "language_modeling", 1, 0.0)]
    mc, schema, lm = tasks
    shot = mc.data[1]
    p = core.prompts(mc.data[0], mc.kind, mc.delimiter, [shot])
    assert p[0] == f"{shot['query']}\nAnswer: json\n\n{mc.data[0]['query']}\nAnswer: def" and len(p) == 4
    # schema: different contexts, one continuation, scored on the shared suffix
    seqs = [[tiny_tok.bos_id] + tiny_tok.encode(x) for x in core.prompts(schema.data[0], schema.kind, " ", [])]
    runs_, starts, ends = core.spans(seqs, schema.kind)
    scored = {tuple(s[st:e]) for s, st, e in zip(seqs, starts, ends)}
    assert len(scored) == 1 and tiny_tok.decode(list(scored.pop())).endswith(" there was nothing to read.")
    assert core.prompts(lm.data[0], lm.kind, " ", []) == ["import os\nimport", "import os\nimport sys"]


def test_core_picks_the_choice_with_the_lowest_mean_loss_under_the_model(loaded):
    params, cfg, tok, _ = loaded
    tasks, _ = core.load_bundle(BUNDLE)
    mc = tasks[0]
    item = mc.data[2]
    got = core.score_example(core.Scorer(params, cfg, tok), item, mc.kind, mc.delimiter, [])
    # independently: each choice's mean token loss, from the model's own token_losses
    means = []
    prefix = [tok.bos_id] + tok.encode(item["query"] + mc.delimiter)
    for choice in item["choices"]:
        ids = [tok.bos_id] + tok.encode(item["query"] + mc.delimiter + choice)
        start = next(i for i in range(len(ids)) if i >= len(prefix) or ids[i] != prefix[i])
        x, y = np.zeros((1, 64), np.int32), np.full((1, 64), -1, np.int32)  # one shape: one compile
        x[0, :len(ids) - 1], y[0, start - 1:len(ids) - 1] = ids[:-1], ids[start:]
        losses = np.asarray(model.token_losses(params, x, y, cfg))[0]
        means.append(losses[start - 1:len(ids) - 1].mean())
    np.testing.assert_allclose(got["losses"], means, rtol=1e-4)
    assert got["pred"] == int(np.argmin(means)) and got["correct"] == (got["pred"] == item["gold"])


@pytest.fixture(scope="module")
def core_result(root, loaded):
    return core.evaluate(root / "run" / "dpo", BUNDLE, loaded=loaded)


def test_core_centers_each_task_and_averages(root, loaded, core_result):
    r = core_result
    assert [t["task"] for t in r["tasks"]] == ["tiny_mc", "tiny_schema", "tiny_lm"] and r["missing"] == []
    for t in r["tasks"]:
        assert t["centered"] == pytest.approx((t["accuracy"] - t["baseline"]) / (1 - t["baseline"]))
    assert r["core"] == pytest.approx(np.mean([t["centered"] for t in r["tasks"]]))
    assert core.evaluate(root / "run" / "dpo", BUNDLE, max_per_task=2, loaded=loaded)["tasks"][0]["examples"] == 2


def test_a_bundle_with_missing_files_scores_what_it_has_and_names_the_rest(root, loaded, tmp_path):
    shutil.copytree(BUNDLE, tmp_path / "eval_bundle")
    (tmp_path / "eval_bundle/eval_data/tiny/lm.jsonl").unlink()
    r = core.evaluate(root / "run" / "dpo", tmp_path, loaded=loaded)  # the zip's layout: DIR/eval_bundle
    assert [t["task"] for t in r["tasks"]] == ["tiny_mc", "tiny_schema"]
    assert r["missing"] == ["tiny_lm: data file eval_data/tiny/lm.jsonl is missing"]
    (tmp_path / "eval_bundle/eval_meta_data.csv").unlink()
    with pytest.raises(InputError, match="eval_meta_data.csv: missing"):
        core.load_bundle(tmp_path)
    with pytest.raises(InputError, match="no eval bundle at"):
        core.load_bundle(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- agentic tasks


def test_tasks_are_held_out_problems_with_a_stub_or_one_injected_bug():
    tasks = agentic.build_tasks(limit=6)
    assert [t.kind for t in tasks] == ["stub", "bugfix"] * 3
    assert all(is_held_out(t.problem) for t in tasks)
    assert [t.files for t in agentic.build_tasks(limit=6)] == [t.files for t in tasks]  # deterministic
    problems = humaneval_problems()
    for t in tasks:
        p = problems[t.problem]
        canonical, code = p["prompt"] + p["canonical_solution"], t.files[t.code_file]
        assert f"in {t.code_file}" in t.instruction  # the task names the module its code is in
        if t.kind == "bugfix":
            diff = [(a, b) for a, b in zip(canonical.splitlines(), code.splitlines()) if a != b]
            assert len(diff) == 1 and len(canonical.splitlines()) == len(code.splitlines())
            assert set(t.files) == {t.code_file, f"test_{t.code_file}"}
        else:
            assert code.endswith(agentic.STUB_BODY) and set(t.files) == {t.code_file}
    # the problems' modules go round MODULES: solution.py for one problem in six, never a stdlib name
    modules = [t.module for t in agentic.build_tasks(kinds=("stub",))]
    assert modules[:6] == ["solution", "main", problems[tasks[4].problem]["entry_point"], "impl", "utils", "answer"]
    assert modules.count("solution") <= len(modules) / 5 and not set(modules) & sys.stdlib_module_names


def test_hidden_tests_fail_the_given_code_and_pass_the_canonical_solution(tmp_path):
    problems = humaneval_problems()
    for t in agentic.build_tasks(limit=4):
        (tmp_path / t.code_file).write_text(t.files[t.code_file])
        assert agentic.hidden_tests(t, tmp_path)[0] is False
        p = problems[t.problem]
        (tmp_path / t.code_file).write_text(p["prompt"] + p["canonical_solution"])
        assert agentic.hidden_tests(t, tmp_path) == (True, "all tests passed")
    (tmp_path / t.code_file).write_text("def f():\n    while True: pass\n" + p["prompt"] + p["canonical_solution"]
                                        + "\nf()\n")
    assert agentic.hidden_tests(t, tmp_path, timeout=1) == (False, "timed out after 1s")
    (tmp_path / t.code_file).unlink()
    assert agentic.hidden_tests(t, tmp_path) == (False, f"{t.code_file} is gone")


def test_hidden_tests_run_the_models_code_in_the_sandbox(tmp_path):
    from agent.sandbox import unavailable

    if unavailable():
        pytest.skip(f"no sandbox here: {unavailable()}")
    t = agentic.build_tasks(limit=1)[0]
    p = humaneval_problems()[t.problem]
    outside = tmp_path / "outside" / "escaped.txt"  # the host's /tmp: a private, empty one inside
    outside.parent.mkdir()
    escape = f"open({str(outside)!r}, 'w').write('out')\n"
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / t.code_file).write_text(escape + p["prompt"] + p["canonical_solution"])
    passed, said = agentic.hidden_tests(t, tmp_path / "work")
    assert not passed and "No such file or directory" in said and not outside.exists()
    # unsandboxed (--unsafe-bash) the same code does write there: the check above can fail
    assert agentic.hidden_tests(t, tmp_path / "work", sandbox=False)[0] and outside.read_text() == "out"


def solver(body: dict) -> dict:
    """A model that solves the task: a Read of a wrong file (a tool error), a Read that works (a
    recovery), an Edit to the canonical solution, a Bash run of the tests, then a short reply."""
    messages = body["messages"]
    task = next(m["content"] for m in messages if m["role"] == "user")
    entry, module = re.search(r"`(\w+)` in (\w+)\.py", task).groups()
    p = next(p for p in humaneval_problems().values() if p["entry_point"] == entry and is_held_out(p["task_id"]))
    turn = sum(m["role"] == "assistant" for m in messages)
    if turn == 0:
        return {"text": "looking", "tool_calls": [{"name": "Read", "arguments": {"file_path": "nope.py"}}]}
    if turn == 1:
        return {"text": "reading it", "tool_calls": [{"name": "Read", "arguments": {"file_path": f"{module}.py"}}]}
    if turn == 2:
        current = re.sub(r"^ *\d+→", "", messages[-1]["content"], flags=re.M)
        body_start = len(p["prompt"]) if current.startswith(p["prompt"]) else current.index(p["prompt"].rstrip())
        return {"text": "fixing", "tool_calls": [{"name": "Edit", "arguments": {
            "file_path": f"{module}.py", "old_string": current[body_start:].rstrip("\n") or current,
            "new_string": p["canonical_solution"].rstrip("\n")}}]}
    if turn == 3:
        return {"text": "testing", "tool_calls": [{"name": "Bash", "arguments": {
            "command": f"python -c 'import {module}; print({module}.{entry})'"}}]}
    return {"text": "done, it works now."}


def test_a_model_that_solves_the_tasks_passes_them_all():
    with ScriptedServer(respond=solver) as server:
        r = agentic.evaluate(server.base_url, limit=4)
    s = r["summary"]
    assert [t["passed"] for t in r["tasks"]] == [True] * 4, [t["test_output"] for t in r["tasks"]]
    assert s["pass_rate"] == 1.0 and s["pass_rate_stub"] == s["pass_rate_bugfix"] == 1.0
    assert s["calls"] == 16 and s["calls_per_task"] == 4 and s["valid_call_rate"] == 1.0
    # the first call is a valid Read of a file that is not there; of the 3 calls with a path, 2 name one that is
    assert s["tasks_with_calls"] == 4 and s["first_call_valid_rate"] == 1.0 and s["first_call_on_existing_rate"] == 0
    assert s["existing_path_rate"] == pytest.approx(2 / 3)
    assert s["tool_errors"] == 4 and s["recoveries"] == 4 and s["statuses"] == {"done": 4}
    assert r["tasks_per_s"] > 0 and r["tasks"][0]["messages"][0]["role"] == "user"
    # every request carries the eval's sampling, so the server does not pick a fresh seed a reply
    sent = {(b.get("temperature"), b.get("top_k"), b.get("seed")) for b in server.requests}
    assert sent == {(agentic.TEMPERATURE, agentic.TOP_K, agentic.SEED)} and len(server.requests) == 20
    assert r["sampling"] == {"temperature": agentic.TEMPERATURE, "top_k": agentic.TOP_K, "seed": agentic.SEED}


def test_garbage_fails_and_the_invalid_calls_are_counted(tmp_path):
    def garbage(body):
        if sum(m["role"] == "assistant" for m in body["messages"]) == 0:
            return {"text": "@@ ##", "tool_calls": [{"name": "Edit", "arguments": "{not json"},
                                                    {"name": "Launch", "arguments": {"x": 1}}]}
        return {"text": "zzz"}

    with ScriptedServer(respond=garbage) as server:
        r = subprocess.run([str(BIN / "evals"), "agentic", "--base-url", server.base_url, "--limit", "2",
                            "--out", str(tmp_path), "--temperature", "0", "--top-k", "0", "--seed", "7"],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "evals/agentic.json").read_text())
    # --top-k 0 (all tokens) sends none; temperature 0 and the seed are sent as given
    assert {(b.get("temperature"), "top_k" in b, b.get("seed")) for b in server.requests} == {(0.0, False, 7)}
    assert result["sampling"] == {"temperature": 0.0, "top_k": 0, "seed": 7}
    assert "temperature 0, seed 7" in " ".join(r.stdout.split())
    s = result["summary"]
    assert s["pass_rate"] == 0 and s["calls"] == 4 and s["valid_call_rate"] == 0.0
    assert s["tool_errors"] == 4 and s["recoveries"] == 0
    assert s["first_call_valid_rate"] == 0 and s["existing_path_rate"] is None  # no call got as far as a path
    assert "valid calls" in r.stdout and "first call" in r.stdout and "0.0%" in r.stdout


def test_a_model_that_never_stops_is_one_line_and_the_eval_finishes(root):
    """A real checkpoint whose every reply the server cuts at max_tokens (finish_reason "length"): the
    summary counts them and the report's box says so in one line; a model that stops is not flagged."""
    from trainer.server import serve_in_background

    url, name = serve_in_background(root / "run" / "dpo")
    cut = agentic.evaluate(url, name, limit=2, tools=SMALL_TOOLS, max_tokens=2, max_steps=1)
    s = cut["summary"]
    assert s["replies"] == s["replies_cut"] >= 2 and cut["max_tokens"] == 2
    assert f"never stops: all {s['replies']} replies hit --max-tokens (2), so its calls are cut" in \
        report.abilities({"agentic": cut})
    with ScriptedServer(respond=lambda body: {"text": "done."}) as server:
        fine = agentic.evaluate(server.base_url, limit=2)
    assert fine["summary"]["replies"] == 2 and fine["summary"]["replies_cut"] == 0
    assert not [line for line in report.abilities({"agentic": fine}) if "max-tokens" in line]


def test_a_call_on_an_existing_file_means_one_inside_the_workspace(tmp_path):
    (tmp_path / "ws" / "src").mkdir(parents=True)
    (tmp_path / "ws" / "src" / "a.py").write_text("x = 1\n")
    (tmp_path / "outside.py").write_text("")
    ws = tmp_path / "ws"
    assert agentic._exists_in(ws, "src/a.py") and agentic._exists_in(ws, str(ws / "src")) and agentic._exists_in(ws, ".")
    assert not agentic._exists_in(ws, "src/b.py") and not agentic._exists_in(ws, "../outside.py")
    assert not agentic._exists_in(ws, str(tmp_path / "outside.py")) and not agentic._exists_in(ws, "a\0b")


def test_the_agentic_eval_runs_a_real_checkpoint_through_the_server(root):
    from trainer.server import serve_in_background

    url, name = serve_in_background(root / "run" / "dpo")
    r = agentic.evaluate(url, name, limit=1, tools=SMALL_TOOLS, max_tokens=32, max_steps=3)
    [task] = r["tasks"]
    # a 3-step model writes noise; what counts is that the loop ran to a status and was judged
    assert task["status"] in ("done", "step_limit", "context_full", "error") and task["passed"] is False
    assert r["model"] == "dpo" and r["summary"]["tasks"] == 1
    # the server honours the seed: at temperature 1 the same seed is the same eval, another one is not
    a, b, c = (agentic.evaluate(url, name, limit=1, tools=SMALL_TOOLS, max_tokens=32, max_steps=3, temperature=1.0,
                                top_k=0, seed=seed)["tasks"][0]["messages"] for seed in (3, 3, 4))
    assert a == b != c


# ----------------------------------------------------------------------------- SOUL and preference


def test_soul_rates_count_each_rule_over_the_replies():
    rules = load_soul(None).rules
    replies = [{"prompt": "a", "message": {"role": "assistant", "content": "done, the tests pass."}},
               {"prompt": "b", "message": {"role": "assistant", "content": "Certainly! I Fixed It."}}]
    r = soul.rates(replies, rules)
    assert r["replies"] == 2 and r["all_pass_rate"] == 0.5
    assert r["rules"]["lowercase_prose"] == {"replies": 2, "pass_rate": 0.5}
    assert replies[1]["checks"]["lowercase_prose"]["ok"] is False
    assert r["degenerate"] == 0 and r["degenerate_rate"] == 0.0


NOISE = ["", ", 0, 0, 0, 0, 0, 0", "the the the the the the", "... !!! ??? ---", "1 2 3 4 5 6 7 8",
         "return return x return return", "это исправлено, тесты проходят", "ing urn elf ptr cx ion str ox",
         "ils ont corrigé la fonction dans le fichier principal",
         "\ufffdqu Fixv of;org\ufffdedFew\x04\ufffd\x16ttps p"]  # a 5-step model's reply, bytes cut mid-character


def noise_model(prompt: str, i: int) -> dict:
    """What an untrained model says: nothing, repeats, symbols, numbers, another language, subwords,
    broken bytes."""
    return {"role": "assistant", "content": NOISE[i % len(NOISE)]}


def voice_model(prompt: str, i: int) -> dict:
    """Answers in soul/SOUL.md's voice: lowercase, short, no banned phrase; every other turn a
    one-line thinking before a Read."""
    entry = re.search(r"`(\w+)`", prompt).group(1)
    if i % 2:
        return {"role": "assistant", "content": f"reading how `{entry}` is called first",
                "tool_calls": [{"name": "Read", "args": {"file_path": "solution.py"}}]}
    return {"role": "assistant", "content": f"`{entry}` walks the input once and returns the result. i'd write it "
            f"as a loop:\n\n```python\ndef {entry}(x):\n    return x\n```\n\nthe docstring's examples are the tests."}


@pytest.mark.parametrize("model, degenerate, all_pass", [(noise_model, 1.0, 0.0), (voice_model, 0.0, 1.0)])
def test_noise_fails_soul_adherence_as_degenerate_and_the_souls_voice_passes(model, degenerate, all_pass):
    prompts = soul.default_prompts(limit=18)
    replies = [{"prompt": p, "message": model(p, i)} for i, p in enumerate(prompts)]
    r = soul.rates(replies, load_soul(None).rules)
    assert r["replies"] == 18 and r["degenerate_rate"] == degenerate and r["all_pass_rate"] == all_pass
    if degenerate:  # no rule is scored on noise: it passed them all before
        assert r["rules"] == {} and all(x["degenerate"] for x in replies)
    else:
        assert r["rules"]["lowercase_prose"] == {"replies": 18, "pass_rate": 1.0}
        assert r["rules"]["max_think_words"]["replies"] == 9
    table = report.result_table("soul", r)[1]
    assert table[0] == ("degenerate (not language)", 18, f"{degenerate:.1%}")


def test_soul_eval_generates_replies_and_asks_an_optional_judge(root, loaded):
    from factory.backends import BackendConfig

    with ScriptedServer(respond=fake_model.respond) as server:
        cfg = BackendConfig(name="openai", model="scripted", base_url=server.base_url)
        r = soul.evaluate(root / "run" / "dpo", data=[str(root / "convs.jsonl")], limit=2, tools=SMALL_TOOLS,
                          max_tokens=16, judge_cfg=cfg, loaded=loaded)
        asked = len(server.requests)
        # the factory's judge and request layer: the same replies again come from its cache
        again = soul.judge(r["samples"], load_soul(None), load_tools(SMALL_TOOLS), cfg)
        assert again == r["judge"] and len(server.requests) == asked
    assert r["replies"] == 2 and len(r["samples"]) == 2 and 0 <= r["all_pass_rate"] <= 1
    # a 5-step model writes noise, which passed every rule before: now it is degenerate, and fails
    assert r["degenerate"] == 2 and all(x["degenerate"] for x in r["samples"])
    assert r["rules"] == {} and r["all_pass_rate"] == 0
    assert r["judge"] == {"model": "scripted", "rated": 2, "unrated": 0, "mean_rating": 9.0}
    assert "where is parse defined" in server.requests[0]["messages"][0]["content"]
    assert "Rate how well the assistant" in server.requests[0]["messages"][0]["content"]  # critic.j2


def test_preference_accuracy_is_dpos_own_validation_number(root, loaded):
    dpo_dir = root / "run" / "dpo"
    r = preference.evaluate(dpo_dir, [str(root / "pairs.jsonl")], val_fraction=0.25, loaded=loaded)
    val = last_val(dpo_dir)
    assert r["reference"] == str(root / "run" / "pretrain")
    assert r["reward_accuracy"] == pytest.approx(val["val_rewards/accuracies"])
    assert r["reward_margin"] == pytest.approx(val["val_rewards/margins"], rel=1e-4, abs=1e-7)
    pre = preference.evaluate(root / "run" / "pretrain", [str(root / "pairs.jsonl")], val_fraction=0.25)
    assert "reward_accuracy" not in pre and "did not start from another run" in pre["note"]
    with pytest.raises(InputError, match="no held-out pairs"):
        preference.evaluate(dpo_dir, [str(root / "pairs.jsonl")], val_fraction=0.0, loaded=loaded)


# ----------------------------------------------------------------------------- the report


def test_the_report_renders_a_whole_run_and_names_what_is_missing(root, loaded, core_result):
    run = root / "run"
    runs.write_result(run, "core", core_result)
    runs.write_result(run, "copy", copying.evaluate(run / "dpo", loaded=loaded))
    runs.write_result(run, "preference", preference.evaluate(run / "dpo", [str(root / "pairs.jsonl")],
                                                             val_fraction=0.25, loaded=loaded))
    with ScriptedServer(respond=solver) as server:
        runs.write_result(run, "agentic", agentic.evaluate(server.base_url, limit=1))
    (run / "evals/broken.json").write_text("{oops")
    said = []
    assert report.write(run, log=said.append) == run / "report.html"
    assert f"missing: stage sft: no {run / 'sft'} directory" in said
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # loss and bpb of two stages, embedded
    assert "src='http" not in page and "<link" not in page  # nothing fetched: opens offline
    for text in ("tiny_mc", "CORE", "reward accuracy", "pass rate", "bytes/token", "jax", "→ Edit("):
        assert text in page, text
    # computed from the agentic result: the solver makes 4 calls, all valid, the first on a missing file
    assert "what this model can do" in page and "makes tool calls: 1 of 1 tasks (4 calls, 4.0 a task)" in page
    assert "valid calls: 100.0%; first call valid: 100.0% of tasks" in page
    assert "calls on existing files: 66.7%; first call on one: 0.0% of tasks" in page
    assert "copies from its context: " in page and "second (a copy)" in page  # chance: 1 in ~256
    assert "stage sft: no" in page and "evals/broken.json: unreadable" in page


def test_the_report_survives_bad_runs(root, tiny_tok, tmp_path):
    # a stage with a checkpoint but another tokenizer beside it, and no evals at all
    stage = tmp_path / "pretrain"
    shutil.copytree(root / "run" / "pretrain", stage)
    shutil.rmtree(stage / "tokenizer")
    tiny_tok.save(stage / "tokenizer")
    page = report.build(stage)
    assert any("not the tokenizer" in m for m in page.missing)
    assert any(m.startswith("evals: no results") for m in page.missing)
    # a stage that never got a checkpoint, and a root with nothing in it
    (tmp_path / "bare" / "sft").mkdir(parents=True)
    (tmp_path / "bare" / "sft" / "metrics.jsonl").write_text('{"step": 0, "event": "start", "stage": "sft"}\n{"ste')
    page = report.build(tmp_path / "bare")
    assert any("sft:" in m and "checkpoint" in m for m in page.missing)
    assert "stage" in report.to_html(page, "t")
    (tmp_path / "nothing").mkdir()
    page = report.build(tmp_path / "nothing")
    assert any("no stage directories" in m for m in page.missing)
    r = subprocess.run([str(BIN / "evals"), "report", str(tmp_path / "absent")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == f"error: no such run directory: {tmp_path / 'absent'}"
