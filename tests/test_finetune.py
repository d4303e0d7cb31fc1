"""SFT and DPO through the real CLI, on a tiny pretrained checkpoint and synthetic chat data."""

import json
import math
import random
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import BIN
from tests.tiny_run import train_tiny_run
from trainer import checkpoint, cli, conversations, dpo, sft, template


def grep_conversation(i: int, rng) -> list[dict]:
    f = rng.choice(["utils.py", "main.py", "app/models.py", "lib/parse.py", "server.py"])
    fn = rng.choice(["parse", "load", "save", "render", "merge"])
    return [{"role": "user", "content": f"where is {fn} defined? ({i})"},
            {"role": "assistant", "content": "let me search.",
             "tool_calls": [{"name": "Grep", "args": {"pattern": f"def {fn}", "path": "."}}]},
            {"role": "tool", "name": "Grep", "content": f"{f}:{i % 50 + 1}:def {fn}(x):"},
            {"role": "assistant", "content": f"it is in {f}, line {i % 50 + 1}."}]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny pretrained run (in-process, a few seconds) plus chat data files beside it."""
    root = tmp_path_factory.mktemp("ft")
    train_tiny_run(root, seq_len=64, steps=20, device_batch_size=8, corpus_chars=2_000_000)
    shutil.move(root / "run", root / "pre")
    rng = random.Random(0)
    convs = [{"messages": grep_conversation(i, rng)} for i in range(200)]
    (root / "convs.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    pairs = [{"prompt": c["messages"][:1], "chosen": [{"role": "assistant", "content": "it is in utils.py."}],
              "rejected": [{"role": "assistant", "content": "Certainly! I would be happy to help you with that."}]}
             for c in convs]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return root


def trainer(*args, timeout=300):
    return subprocess.run([str(BIN / "trainer"), "run", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def events(run, kind):
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


# ----------------------------------------------------------------------------- SFT


def test_sft_trains_only_on_what_the_assistant_writes(tiny_tok):
    messages = grep_conversation(7, random.Random(1))
    [(ids, mask)], cut = sft.render_all([messages], tiny_tok, 512)
    x, y, cursor = sft.pack_rows([(ids, mask)], [0], 0, 1, 512, tiny_tok.bos_id)
    sid, enc = tiny_tok.special_id, tiny_tok.encode
    call = messages[1]["tool_calls"][0]
    pieces = [  # (tokens, trained?) in the order the template renders them
        ([sid(template.BOS)], False),
        ([sid(template.USER_START)] + enc(messages[0]["content"]) + [sid(template.USER_END)], False),
        ([sid(template.ASSISTANT_START)], False),
        (enc("let me search.") + [sid(template.CALL_START)] + enc("Grep") + [sid(template.ARG)] + enc("pattern")
         + [sid(template.VAL)] + enc(call["args"]["pattern"]) + [sid(template.ARG)] + enc("path")
         + [sid(template.VAL)] + enc(".") + [sid(template.CALL_END), sid(template.ASSISTANT_END)], True),
        ([sid(template.RESULT_START)] + enc(messages[2]["content"]) + [sid(template.RESULT_END)], False),
        ([sid(template.ASSISTANT_START)], False),
        (enc(messages[3]["content"]) + [sid(template.ASSISTANT_END)], True),
    ]
    expected_ids = [t for tokens, _ in pieces for t in tokens]
    expected_targets = [t if trained else -1 for tokens, trained in pieces for t in tokens][1:]
    assert cut == 0 and cursor == 1 and ids.tolist() == expected_ids
    n = len(expected_ids) - 1
    assert x[0, :n].tolist() == expected_ids[:-1]
    assert y[0, :n].tolist() == expected_targets
    assert (y[0, n:] == -1).all()  # padding trains nothing


def test_packing_keeps_conversations_whole_and_the_loader_resumes_exactly(tiny_tok):
    rng = random.Random(2)
    items, _ = sft.render_all([grep_conversation(i, rng) for i in range(40)], tiny_tok, 96)
    a = sft.ConversationLoader(items, 4, 96, tiny_tok.bos_id, seed=3, fingerprint="f")
    for _ in range(7):
        a.next_batch()
    b = sft.ConversationLoader(items, 4, 96, tiny_tok.bos_id, seed=3, state=a.state(), fingerprint="f")
    for _ in range(9):  # across an epoch boundary
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert (xa == xb).all() and (ya == yb).all()
    # every row starts with a conversation's BOS; trained tokens appear in every non-empty row
    assert (xa[:, 0] == tiny_tok.bos_id).all()
    with pytest.raises(Exception, match="other data"):
        sft.ConversationLoader(items, 4, 96, tiny_tok.bos_id, state=a.state(), fingerprint="g")


@pytest.fixture(scope="module")
def sft_run(base):
    out = base / "sft"
    r = trainer("sft", "--from", base / "pre", "--data", base / "convs.jsonl", "--out", out, "--seq-len", 128,
                "--steps", 16, "--save-every", 8)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


def test_sft_run_learns_saves_and_samples(sft_run):
    out, r = sft_run
    losses = [e["loss"] for e in events(out, "train")]
    assert len(losses) == 16 and losses[-1] < losses[0] - 0.5
    val = events(out, "val")
    assert val[-1]["val_loss"] < val[0]["val_loss"] and val[-1]["val_bpb"] > 0
    assert events(out, "sample")  # generations from held-out prompts, through the engine
    assert "starting from" in r.stdout and (out / "tokenizer" / "tokenizer.json").exists()
    params, cfg, tok, meta = checkpoint.load_model(out)
    assert meta["stage"] == "sft" and meta["step"] == 16 and cfg.seq_len == 128


def test_sft_resumes_to_the_same_curve(base, sft_run, tmp_path):
    crashed = tmp_path / "crashed"
    shutil.copytree(sft_run[0], crashed)
    shutil.rmtree(crashed / "checkpoints" / "16")  # as if killed after the step-8 checkpoint
    resumed = trainer("sft", "--from", base / "pre", "--data", base / "convs.jsonl", "--out", crashed,
                      "--seq-len", 128, "--steps", 16, "--save-every", 8, "--resume")
    assert resumed.returncode == 0 and "resuming at step 8" in resumed.stdout, resumed.stdout + resumed.stderr
    want = [e["loss"] for e in events(sft_run[0], "train")]
    got = [e["loss"] for e in events(crashed, "train")]
    assert len(got) == 16 and np.allclose(got, want, rtol=1e-5), (got, want)


def test_sft_reads_a_dataset_folder_and_mixes_by_weight(base, tmp_path, tiny_tok):
    """SmolTalk's shape (messages without tools) through the real `datasets` loader, mixed 2:1."""
    import datasets

    folder = tmp_path / "smol"
    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}
            for i in range(30)]
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "data" / "train-00000.parquet"))
    data = conversations.load([f"{folder}@2", f"{base / 'convs.jsonl'}@0.5"], val_fraction=0.1)
    by_source = {s["source"]: s for s in data["sources"]}
    smol, ours = by_source[str(folder)], by_source[str(base / "convs.jsonl")]
    assert smol["rows"] == 30 and ours["rows"] == 200
    assert len(data["train"]) == 2 * smol["train"] + round(0.5 * ours["train"])
    assert sum(1 for m in data["train"] if m[0]["content"].startswith("hi ")) == 2 * smol["train"]


def test_factory_versions_feed_sft_and_dpo(tiny_tok):
    """`factory:latest` and `factory:1` read the offline build's rows and pairs through the store."""
    import os

    from rich.console import Console

    from factory.build import build

    summary = build(console=Console(file=open(os.devnull, "w")))
    convs = conversations.load(["factory:latest"], "conversations", val_fraction=0.1)
    pairs = conversations.load(["factory:1"], "pairs", val_fraction=0.1)
    assert convs["sources"][0]["source"] == "factory:1"  # latest resolved: a run records what it read
    assert len(convs["train"]) + len(convs["val"]) == summary["sft rows"]
    assert len(pairs["train"]) + len(pairs["val"]) == summary["pairs"] and not pairs["dropped"]
    # 8192: the test tokenizer's small vocab spells a row in many more tokens than the real one, and the rows
    # that recover from a failed Edit read their file twice
    items, cut = sft.render_all(convs["train"], tiny_tok, 8192)
    assert cut == 0 and all(mask.any() for _, mask in items)
    rendered, too_long = dpo.render_pairs(pairs["train"], tiny_tok, 8192)
    assert too_long == 0 and len(rendered) == len(pairs["train"])
    with pytest.raises(Exception, match="no version 7"):
        conversations.load(["factory:7"], "pairs")


# ----------------------------------------------------------------------------- DPO


def test_dpo_loss_is_log_2_when_policy_is_the_reference(tiny_tok):
    from trainer.model import GPTConfig, init_params

    cfg = GPTConfig(vocab_size=tiny_tok.vocab_size, seq_len=64, n_layer=2, d_model=64, n_head=2, n_kv_head=2,
                    head_dim=32)
    params = init_params(cfg, jax.random.key(0))
    params["lm_head"] = jax.random.normal(jax.random.key(1), params["lm_head"].shape)
    pairs = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "yes"}],
              "rejected": [{"role": "assistant", "content": f"No way {i}"}]} for i in range(4)]
    items, _ = dpo.render_pairs(pairs, tiny_tok, 64)
    batch = dpo.as_batch(items, range(4))
    for kind in ("sigmoid", "ipo"):
        loss, m = dpo.dpo_loss(params, batch, params, cfg=cfg, beta=0.1, kind=kind)
        want = math.log(2) if kind == "sigmoid" else (1 / 0.2) ** 2
        assert float(loss) == pytest.approx(want, rel=1e-6)
        assert float(m["rewards/margins"]) == 0 and float(m["logps/chosen"]) < 0
    # the completion mask covers the reply only: the prompt's tokens are never scored
    ids, mask = items[0]
    prompt_len = len(template.render(pairs[0]["prompt"], tiny_tok)[0])
    assert not mask[:, :prompt_len].any() and mask[:, prompt_len:].any(axis=1).all()


@pytest.fixture(scope="module")
def dpo_run(base, sft_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo") / "cached"
    r = trainer("dpo", "--from", sft_run[0], "--data", base / "pairs.jsonl", "--out", out, "--steps", 20,
                "--reference", "cached")
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_dpo_run_learns_the_preference(dpo_run):
    steps = events(dpo_run, "train")
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected", "ref_logps/chosen", "ref_logps/rejected"):
        assert key in steps[-1]
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["rewards/margins"] > 0
    val = events(dpo_run, "val")
    assert val[-1]["val_rewards/accuracies"] > 0.8 and "val_bpb" in val[-1]


def test_dpo_live_reference_follows_the_cached_curve(base, sft_run, dpo_run, tmp_path):
    """The reference run inside every step gives the same losses as log-probs cached up front. The
    default (auto) picks live here: 20 steps see fewer pairs than the data holds."""
    out = tmp_path / "live"
    r = trainer("dpo", "--from", sft_run[0], "--data", base / "pairs.jsonl", "--out", out, "--steps", 20,
                "--eval-every", 1000)
    assert r.returncode == 0 and "reference: live" in r.stdout, r.stdout + r.stderr
    live, cached = ([e["loss"] for e in events(run, "train")][:3] for run in (out, dpo_run))
    assert np.allclose(live, cached, rtol=1e-4), (live, cached)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_one_clear_line(base, tmp_path, monkeypatch, capsys):
    bad_pairs = tmp_path / "bad.jsonl"
    bad_pairs.write_text(json.dumps({"prompt": [{"role": "user", "content": "x"}], "chosen": []}) + "\n")
    no_tok = tmp_path / "no-tok"
    shutil.copytree(base / "pre" / "checkpoints", no_tok / "checkpoints")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "latin1.jsonl").write_bytes('{"messages": "caf\xe9"}\n'.encode("latin-1"))
    (tmp_path / "cut.json").write_text('[{"messages": [{"role": "user", "content": "x"}]}, {"mess')
    (tmp_path / "empty").mkdir()
    cases = [
        (["dpo", "--from", base / "pre", "--data", bad_pairs], "missing rejected"),
        (["sft", "--from", no_tok, "--data", base / "convs.jsonl"], "no tokenizer/"),
        (["sft", "--from", tmp_path / "nowhere", "--data", base / "convs.jsonl"], "no such run"),
        (["sft", "--from", base / "pre", "--data", tmp_path / "missing.jsonl"], "no such data file"),
        (["sft", "--from", base / "pre", "--data", bad_pairs], "no `messages` field"),
        (["sft", "--from", base / "pre", "--data", f"{base / 'convs.jsonl'}@x"], "must be a number"),
        (["sft", "--from", base / "pre", "--data", tmp_path / "corrupt.parquet"], "not a readable Parquet file"),
        (["sft", "--from", base / "pre", "--data", tmp_path / "latin1.jsonl"], "latin1.jsonl: not UTF-8 text"),
        (["dpo", "--from", base / "pre", "--data", tmp_path / "cut.json"], "cut.json: not a JSON array"),
        (["sft", "--from", base / "pre", "--data", tmp_path / "empty"], "not a dataset folder datasets can read"),
    ]
    for args, message in cases:  # the console script's own entry point, in this process (no JAX start-up each)
        monkeypatch.setattr(sys, "argv", ["trainer", "run", *map(str, args), "--out", str(tmp_path / "out")])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error:") and message in err, (args, err)


def test_conversations_too_long_are_dropped_or_truncated_with_a_count(base, tmp_path):
    r = trainer("sft", "--from", base / "pre", "--data", base / "convs.jsonl", "--out", tmp_path / "a",
                "--seq-len", 48, "--steps", 1)
    assert r.returncode == 2 and "dropped 200 conversation(s) longer than 49 tokens" in r.stdout
    r = trainer("sft", "--from", base / "pre", "--data", base / "convs.jsonl", "--out", tmp_path / "b",
                "--seq-len", 48, "--steps", 1, "--overflow", "truncate")
    assert r.returncode == 0 and "truncated 200 conversation(s)" in r.stdout, r.stdout + r.stderr


# ----------------------------------------------------------------------------- the system prompt variant


def test_a_compact_prompt_replaces_the_rows_own_and_the_run_says_so(base, tmp_path):
    """`--prompt compact` trains on nanocode/prompts/compact.j2 instead of the rows' system prompt; the
    checkpoint names the variant, DPO from it inherits it, and an unknown variant is one clear line."""
    full, compact = sft.system_prompt("system"), sft.system_prompt("compact")
    assert len(compact) < len(full) / 3 and "Read(file_path, offset?, limit?)" in compact
    rows = [{"messages": [{"role": "system", "content": full}, *grep_conversation(i, random.Random(i))]}
            for i in range(40)]
    data = tmp_path / "with-system.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = conversations.load(str(data), val_fraction=0.1, system_prompt=compact)
    assert {m[0]["content"] for m in loaded["train"] + loaded["val"]} == {compact}
    assert [m[1:] for m in loaded["val"]] == [m[1:] for m in conversations.load(str(data), val_fraction=0.1)["val"]]  # same split

    out = tmp_path / "sft"
    r = trainer("sft", "--from", base / "pre", "--data", data, "--out", out, "--seq-len", 512, "--steps", 2,
                "--prompt", "compact")
    assert r.returncode == 0, r.stdout + r.stderr
    meta = checkpoint.load_model(out)[3]
    assert sft.prompt_of(meta) == "compact" and sft.system_prompt_of(meta).name == "compact.j2"
    assert sft.prompt_of(checkpoint.load_model(base / "pre")[3]) == "system"  # a run that never chose one

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": r["messages"][:2], "chosen": [{"role": "assistant", "content": "it is in utils.py."}],
                                         "rejected": [{"role": "assistant", "content": "Certainly!"}]}) + "\n"
                             for r in rows))
    r = trainer("dpo", "--from", out, "--data", pairs, "--out", tmp_path / "dpo", "--seq-len", 512, "--steps", 1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sft.prompt_of(checkpoint.load_model(tmp_path / "dpo")[3]) == "compact"

    r = trainer("sft", "--from", base / "pre", "--data", data, "--out", tmp_path / "bad", "--prompt", "tiny")
    assert r.returncode == 2 and "error: no system prompt variant 'tiny' (the variants: compact, system)" in r.stderr
