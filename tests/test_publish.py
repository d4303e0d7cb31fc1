"""`factory export` writes the Hub layout `datasets.load_dataset` reads, as nested columns that a
chat template with tools and our trainer take as they are; licenses come from the sources;
`factory publish` uploads that folder to a loopback Hub (tests/hub_server.py) in one commit plus
a tag; bad input stops before the first request."""

import json
import os
import subprocess
from pathlib import Path

import huggingface_hub
import pytest
import yaml

from factory.build import build
from factory.publish import publish as publish_version
from factory.publish import split_of
from factory.store import Store
from factory.versions import export
from nanocode.common import InputError
from nanocode.openai_format import tools_schema
from nanocode.spec import load_tools
from tests.conftest import BIN
from tests.hub_server import HubServer

DATA = ["sft/train-00000-of-00001.parquet", "sft/test-00000-of-00001.parquet",
        "preference/train-00000-of-00001.parquet", "preference/test-00000-of-00001.parquet"]
UPLOADED = {"README.md", "manifest.json", "SOUL.md", "tools.yaml", *DATA}


def quiet_build(**kw):
    from rich.console import Console
    return build(console=Console(file=open(os.devnull, "w")), **kw)


@pytest.fixture
def hub(monkeypatch):
    """A loopback Hub the client reaches through HF_ENDPOINT, with a token and offline mode off."""
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at its import
        yield server


def test_export_is_a_dataset_folder_with_sft_and_preference_splits(tmp_path):
    import datasets

    summary = quiet_build(limit=40)  # the coding seeds and 12 HumanEval ones: both sources, a quick build
    store = Store(read_only=True)
    files = export(store, 1, tmp_path / "out")
    out = tmp_path / "out"
    assert UPLOADED <= {p.relative_to(out).as_posix() for p in files}
    # a cache of its own: datasets keys a local folder with a card by its name ("out"), not its files
    cache = tmp_path / "cache"
    sft, pref = (datasets.load_dataset(str(out), name, cache_dir=cache) for name in ("sft", "preference"))
    assert set(sft) == set(pref) == {"train", "test"}
    assert sft["train"].num_rows + sft["test"].num_rows == summary["sft rows"]
    assert pref["train"].num_rows + pref["test"].num_rows == summary["pairs"]
    assert sft["test"].num_rows > 0 and pref["test"].num_rows > 0
    for ds in (sft, pref):  # the split is the input id's hash: one input's row and pair share it
        for split in ("train", "test"):
            assert {split_of(i, 0.1) for i in ds[split]["input_id"]} == {split}
    row = sft["train"][0]
    assert row["messages"][0]["role"] == "system" and row["id"]  # nested columns, no JSON text to decode
    assert row["tools"] == tools_schema(load_tools())  # each tool's parameters as written, no null padding
    assert {s["critic"] for s in row["scores"]} >= {"grammar", "soul_rules"}
    assert row["replay"] in ("ok", "rewritten") and row["models"]["reviser"] == "rules"
    with_ws = next(r for r in sft["train"] if r["workspace"])
    assert all(set(f) == {"path", "content"} for f in with_ws["workspace"])
    assert pref["train"].features["chosen"] == sft["train"].features["messages"]
    # a folder given to load_dataset without a config (the trainer's way) reads sft/train
    assert datasets.load_dataset(str(out), split="train", cache_dir=cache).num_rows == sft["train"].num_rows

    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["license"] == ["cc0-1.0", "mit"] and "text-generation" in header["task_categories"]  # per source
    assert [c["config_name"] for c in header["configs"]] == ["sft", "preference"]
    assert header["configs"][0]["data_files"][1] == {"split": "test", "path": "sft/test-*.parquet"}
    meta = store.version(1)
    assert meta["soul_sha256"] in card and "replay" in card
    assert "| coding | 27 | cc0-1.0 |" in card and "| humaneval |" in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["counts"]["sft"] == {"train": sft["train"].num_rows,
                                                                      "test": sft["test"].num_rows}
    assert manifest["replay"]["replay pass rate"] == 1.0 and manifest["licenses"] == {"coding": "cc0-1.0", "humaneval": "mit"}
    assert manifest["models"]["reviser"] == "rules" and manifest["rates"]["pass rate"] == summary["pass rate"]
    assert set(manifest["files"]) == UPLOADED - {"manifest.json"}
    assert (out / "SOUL.md").read_bytes() == (Path(__file__).parents[1] / "soul" / "SOUL.md").read_bytes()


def test_publish_uploads_the_export_in_one_commit_and_tags_it(tmp_path, hub):
    quiet_build(limit=12)
    store = Store(read_only=True)
    out = publish_version(store, 1, "me/nc-data", private=True)
    assert out["tag"] == "v1" and out["url"].endswith("/datasets/me/nc-data")
    routes = [(method, path.replace("/api/datasets/me/nc-data", "")) for method, path, *_ in hub.calls]
    assert routes == [("POST", "/api/repos/create"), ("GET", "/refs"), ("POST", "/api/validate-yaml"),
                      ("POST", "/preupload/main"), ("POST", "/commit/main"), ("POST", f"/tag/{out['commit']}")]
    create, preupload, commit, tag = (hub.calls[i][2] for i in (0, 3, 4, 5))
    assert create == {"name": "nc-data", "organization": "me", "visibility": "private", "type": "dataset"}
    assert {f["path"] for f in preupload["files"]} == UPLOADED
    assert commit[0] == {"key": "header", "value": {"summary": "nanocode factory version 1",
                                                     "description": f"fingerprint {store.version(1)['fingerprint']}"}}
    assert len(commit) == 1 + len(UPLOADED) and tag == {"tag": "v1", "message": "nanocode factory version 1"}
    assert all(h.get("authorization") == "Bearer hf_test_token" for *_, h in hub.calls)
    # what went up is byte for byte what `factory export` writes for that repo
    export(store, 1, tmp_path / "out", repo="me/nc-data")
    files = hub.repos["me/nc-data"]["files"]
    assert {p: (tmp_path / "out" / p).read_bytes() for p in UPLOADED} == files
    assert 'load_dataset("me/nc-data", "sft"' in files["README.md"].decode()

    # the same tag again: refused before any upload; another tag: a second commit
    n = len(hub.calls)
    with pytest.raises(InputError, match="already has a tag 'v1'.*nothing was uploaded"):
        publish_version(store, 1, "me/nc-data")
    assert [c[1].rsplit("/", 1)[-1] for c in hub.calls[n:]] == ["create", "refs"]
    assert publish_version(store, 1, "me/nc-data", revision="release-1")["tag"] == "release-1"
    assert set(hub.repos["me/nc-data"]["tags"]) == {"v1", "release-1"}


def test_bad_input_stops_before_any_request(tmp_path, hub, monkeypatch):
    quiet_build(limit=3)
    store = Store()
    meta = {k: "x" for k in ("fingerprint", "soul_sha256", "tools_sha256", "config_sha256", "inputs_sha256",
                             "code_version")}
    store.create_version({**meta, "config": {}})  # version 2: started, never finished
    store.close()
    store = Store(read_only=True)
    for repo, why in (("me/bad..name", "not a valid repo name"), ("a/b/c", "not a valid repo name"),
                      ("nameonly", "as USER/NAME")):
        with pytest.raises(InputError, match=why):
            publish_version(store, 1, repo)
    with pytest.raises(InputError, match="version 2 is not finished"):
        publish_version(store, 2, "me/x")
    with pytest.raises(InputError, match=r"no version 9 .*versions: 1, 2"):
        publish_version(store, 9, "me/x")
    with pytest.raises(InputError, match="is not the SOUL version 1 was built with.*--soul"):
        publish_version(store, 1, "me/x", soul=_other_soul(tmp_path))
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(InputError, match="no Hugging Face token: set HF_TOKEN"):
        publish_version(store, 1, "me/x")
    assert hub.calls == [] and hub.repos == {}
    store.close()
    # through the command line: one line on stderr, exit 2, nothing sent
    run = subprocess.run([BIN / "factory", "publish", "1", "--repo", "me/x"], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "HF_TOKEN"})
    assert (run.returncode, run.stderr.strip()) == (2, "error: no Hugging Face token: set HF_TOKEN or run "
                                                    "`hf auth login` (a write token)")
    assert hub.calls == []


def _tools_template_tokenizer():
    """A word-level tokenizer made here, with the tool-calling chat template transformers ships
    for Llama 4 (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.llama4.processing_llama4 import chat_template

    words = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", bos_token="<|begin_of_text|>")
    tokenizer.chat_template = chat_template
    return tokenizer


def test_published_rows_render_through_a_tools_chat_template_and_train_as_they_are(tmp_path):
    import datasets

    from trainer import conversations

    quiet_build(limit=12)
    store = Store(read_only=True)
    out = tmp_path / "out"
    export(store, 1, out)
    sft, pref = (datasets.load_dataset(str(out), name, split="train", cache_dir=tmp_path / "cache")
                 for name in ("sft", "preference"))
    tokenizer = _tools_template_tokenizer()

    # an sft row, straight from load_dataset into apply_chat_template: tools, calls, results, replies
    row = next(r for r in sft if sum(bool(m["tool_calls"]) for m in r["messages"]) >= 2)
    text = tokenizer.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    assert text.startswith("<|begin_of_text|><|header_start|>system<|header_end|>")
    for tool in row["tools"]:
        assert f'"name": "{tool["function"]["name"]}"' in text
        assert all(f'"{arg}": {{' in text for arg in tool["function"]["parameters"]["properties"])
    as_json = lambda value: json.dumps(value, ensure_ascii=False)  # noqa: E731  (the template's tojson)
    for m in row["messages"][1:]:
        for call in m["tool_calls"] or []:
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            assert f'{{"name": "{name}", "parameters": {as_json(arguments)}}}' in text
        if m["role"] == "tool":  # this template writes a result as JSON
            assert f"<|header_start|>ipython<|header_end|>\n\n{as_json(m['content'])}<|eot|>" in text
        elif m["content"]:
            assert m["content"] in text
    # a pair, as DPOTrainer renders it: the prompt is the start of prompt + each side
    pair = pref[0]
    prompt = tokenizer.apply_chat_template(pair["prompt"], tools=pair["tools"], tokenize=False,
                                           add_generation_prompt=True)
    for side in ("chosen", "rejected"):
        whole = tokenizer.apply_chat_template(pair["prompt"] + pair[side], tools=pair["tools"], tokenize=False)
        assert whole.startswith(prompt) and len(whole) > len(prompt)
    assert pair["chosen"] != pair["rejected"]

    # our trainer reads the folder back into the very records the store holds (a fresh read: the
    # first test's folder has the same name)
    loaded = conversations.load(str(out), val_fraction=0.0)
    stored = store.db.sql(f"SELECT input_id, messages FROM {store.relation('sft', 1)}").fetchall()
    canon = lambda ms: json.dumps(ms, sort_keys=True)  # noqa: E731
    assert sorted(map(canon, loaded["train"])) == sorted(canon(json.loads(m)) for i, m in stored
                                                         if split_of(i, 0.1) == "train")
    store.close()


def test_licenses_come_from_the_sources_and_an_entry_may_give_its_own(tmp_path):
    columns = {"id": "id", "instruction": "instruction", "answer": "answer", "workspace": "workspace"}
    mine = {"name": "local", "path": "factory/seeds/coding.jsonl", "label": "mine", "columns": columns,
            "license": "cc-by-4.0"}
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump({"source": {"name": "mix", "sources": [
        {"name": "scenarios", "dir": "scenarios", "glob": "py-interval-merge.yaml"}, mine]}}))
    quiet_build(config=config, limit=3)
    export(Store(read_only=True), 1, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["licenses"] == {"mine": "cc-by-4.0", "scenarios": "cc0-1.0"}  # scenarios/README.md: CC0
    header = yaml.safe_load((tmp_path / "out" / "README.md").read_text().split("---")[1])
    assert header["license"] == ["cc-by-4.0", "cc0-1.0"] and "license_name" not in header

    config.write_text(yaml.safe_dump({"source": {**mine, "license": 3}}))
    with pytest.raises(InputError, match=r"build.yaml: source 'local': license must be a license id such as "
                                         r"cc0-1.0, got 3$"):
        quiet_build(config=config)


def _other_soul(tmp_path) -> Path:
    soul = Path(__file__).parents[1] / "soul" / "SOUL.md"
    other = tmp_path / "SOUL.md"
    other.write_text(soul.read_text() + "\nan extra line.\n")
    return other
