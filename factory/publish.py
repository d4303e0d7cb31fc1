"""`factory publish`: one finished version -> a Hugging Face Hub dataset repo, in one commit.

The folder layout (what `factory export` writes and what is uploaded, made by `write_hub`):

    README.md                     dataset card: YAML header (configs, licenses, tags) + provenance
    manifest.json                 version, hashes, counts per split, models, pass and replay rates, file hashes
    SOUL.md, tools.yaml           the SOUL and tool spec the version was built under (hashes checked)
    sft/{train,test}-00000-of-00001.parquet           config `sft` (the default): conversations
    preference/{train,test}-00000-of-00001.parquet    config `preference`: prompt/chosen/rejected pairs

Rows go to `test` by a hash of their input id (sha256 < test_fraction), so one input's SFT row
and pair land in the same split: DPO never tests on a conversation SFT trained on. A split with
no rows is left out (its file and its card entry): `load_dataset` refuses an empty one.

The published rows are for training on as they are, so unlike the store (records, JSON text)
they are nested columns in the shape TRL's SFTTrainer and DPOTrainer and the chat templates
with tools read: `messages` (and `prompt`, `chosen`, `rejected`) are OpenAI chat messages,
lists of {role, content, tool_calls: [{id, type, function: {name, arguments}}], tool_call_id}
made by `nanocode.openai_format.to_openai` (arguments are JSON text, as on the wire); `tools`
is the spec's OpenAI tool schema on every row, each tool's `parameters` a datasets `Json()`
value (tools take different arguments: a struct would pad each with the others' as nulls);
`workspace` is [{path, content}], `scores` [{critic, score}] (a pair's: {chosen, rejected}),
the replay outcome is `replay`, and the SOUL and tool spec hashes are `soul_sha256` and
`tools_sha256`. The column types ride in the Parquet files' `huggingface` metadata.

`publish` checks everything before the first request (repo name, finished version, token,
offline mode, the tag not taken), then create_repo, one create_commit with every file, and
create_tag on that commit: a failure before the commit leaves the repo untouched.
"""

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import jinja2
import pyarrow.parquet as pq
import yaml

from factory.config import make
from factory.sources import SOURCES
from nanocode.common import InputError
from nanocode.hub import hub_errors, upload_api
from nanocode.openai_format import to_openai, tools_schema
from nanocode.record import hash_unit
from nanocode.spec import load_soul, load_tools

CONFIGS = {"sft": "sft", "preference": "pairs"}  # Hub config -> store kind
HUB_FILES = ("README.md", "manifest.json", "SOUL.md", "tools.yaml")  # plus the configs' folders
TEST_FRACTION = 0.1
# licenses by source label, from factory/seeds/README.md and scenarios/README.md (our seed files
# and scenario specs, and the Hub seeds' cards as read there); self-oss-instruct is given as ODC-By
# in one place and Apache-2.0 in another, so it stays `other` until someone settles it. A source
# entry's own `license:` wins (say one for specs a model wrote into scenarios/generated/).
KNOWN_LICENSES = {"coding": "cc0-1.0", "humaneval": "mit", "scenarios": "cc0-1.0", "tulu-personas-code": "odc-by",
                  "evol-codealpaca": "apache-2.0", "smoltalk": "apache-2.0"}


def split_of(input_id: str, test_fraction: float) -> str:
    return "test" if hash_unit(input_id) < test_fraction else "train"


def _licenses(config: dict, sources: list[str]) -> dict:
    """source label -> license id: a source entry's `license` (a `mix`'s parts too), else the
    known table, else `other`. The version's source is built again to learn its parts' labels."""
    given, stack = {}, [make("source", SOURCES, config["source"], "the version's config")]
    while stack:
        source = stack.pop()
        stack += getattr(source, "parts", [])
        if source.license:
            given[source.name] = source.license
    return {s: given.get(s) or KNOWN_LICENSES.get(s) or "other" for s in sources}


def _features(models: list[str]) -> dict:
    """The published column types (datasets Features), by config."""
    from datasets import Features, Json, List, Value

    text, count = Value("string"), Value("int32")
    message = {"role": text, "content": text, "tool_call_id": text,
               "tool_calls": List({"id": text, "type": text, "function": {"name": text, "arguments": text}})}
    tool = {"type": text, "function": {"name": text, "description": text, "parameters": Json()}}
    scores = List({"critic": text, "score": Value("float64")})
    row = {"version": count, "id": text, "input_id": text, "source": text, "source_id": text}
    return {"sft": Features({**row, "messages": List(message), "tools": List(tool),
                             "workspace": List({"path": text, "content": text}), "attempt": count,
                             "revisions": count, "scores": scores, "replay": text, "critique": text,
                             "models": {name: text for name in models}, "soul_sha256": text, "tools_sha256": text}),
            "preference": Features({**row, "prompt": List(message), "chosen": List(message),
                                    "rejected": List(message), "tools": List(tool),
                                    "scores": {"chosen": scores, "rejected": scores}, "replay": text,
                                    "critique": text, "chosen_attempt": count, "rejected_attempt": count})}


def _scores(scores: dict) -> list[dict]:
    return [{"critic": name, "score": value} for name, value in scores.items() if name != "replay"]


def _published(config: str, row: dict, tools: list[dict]) -> dict:
    """A store row (JSON text) as the published row."""
    out = {k: row[k] for k in ("version", "id", "input_id", "source", "source_id")}
    scores = json.loads(row["scores"])
    if config == "sft":
        workspace = json.loads(row["workspace"] or "{}")
        return {**out, "messages": to_openai(json.loads(row["messages"])), "tools": tools,
                "workspace": [{"path": path, "content": text} for path, text in workspace.items()],
                "attempt": row["attempt"], "revisions": row["revisions"], "scores": _scores(scores),
                "replay": scores.get("replay"), "critique": row["critique"],
                "models": json.loads(row["models"] or "{}"), "soul_sha256": row["soul"], "tools_sha256": row["tools"]}
    prompt = json.loads(row["prompt"])
    # each side is translated with its prompt: call ids count from the conversation's start
    chosen, rejected = (to_openai(prompt + json.loads(row[side])) for side in ("chosen", "rejected"))
    return {**out, "prompt": chosen[:len(prompt)], "chosen": chosen[len(prompt):], "rejected": rejected[len(prompt):],
            "tools": tools, "scores": {side: _scores(scores.get(side) or {}) for side in ("chosen", "rejected")},
            "replay": (scores.get("chosen") or {}).get("replay"), "critique": row["critique"],
            "chosen_attempt": row["chosen_attempt"], "rejected_attempt": row["rejected_attempt"]}


def _size_category(n: int) -> str:
    return next((name for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                                          (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")) if n < limit), "n>10M")


def write_hub(store, v: int, meta: dict, directory: Path, soul=None, tools=None,
              test_fraction: float = TEST_FRACTION, repo: str | None = None) -> list[str]:
    """Write the Hub layout of version v into `directory`; returns the paths written, relative."""
    import datasets

    from factory.replay import replay_figures

    if not 0 <= test_fraction < 1:
        raise InputError(f"test fraction must be in [0, 1), got {test_fraction}")
    soul, spec = load_soul(soul), load_tools(tools)
    for what, flag, obj, want in (("SOUL", "--soul", soul, meta["soul_sha256"]),
                                  ("tool spec", "--tools", spec, meta["tools_sha256"])):
        if obj.sha256 != want:
            raise InputError(f"{obj.path} is not the {what} version {v} was built with (sha256 {obj.sha256[:12]}, "
                             f"the version has {want[:12]}): pass {flag} with that file")
    directory = Path(directory)
    written, counts, sources = [], {}, {}
    rows = {config: store.db.sql(f"SELECT * FROM {store.relation(kind, v)} ORDER BY input_id, id").to_arrow_table()
            .to_pylist() for config, kind in CONFIGS.items()}
    models = sorted({name for r in rows["sft"] for name in json.loads(r["models"] or "{}")}
                    | set(meta["summary"].get("models", {})))
    features, tools = _features(models), tools_schema(spec)
    for config, table in rows.items():
        for row in table:
            sources[row["source"]] = sources.get(row["source"], 0) + (config == "sft")
        counts[config] = {}
        for split in ("train", "test"):
            part = [_published(config, r, tools) for r in table if split_of(r["input_id"], test_fraction) == split]
            counts[config][split] = len(part)
            if not part:
                continue
            rel = f"{config}/{split}-00000-of-00001.parquet"
            (directory / config).mkdir(parents=True, exist_ok=True)
            columns = {name: [r[name] for r in part] for name in features[config]}
            arrow = datasets.Dataset.from_dict(columns, features=features[config]).with_format("arrow")[:]
            pq.write_table(arrow, directory / rel, row_group_size=1000)  # small groups: the viewer pages by them
            written.append(rel)
    shutil.copyfile(soul.path, directory / "SOUL.md")
    shutil.copyfile(spec.path, directory / "tools.yaml")
    summary = meta["summary"]
    manifest = {k: (str(val) if k in ("created", "finished") else val) for k, val in meta.items()}
    manifest.update(counts=counts, test_fraction=test_fraction,
                    split="test if sha256(input_id)[:8] / 2**32 < test_fraction",
                    models=summary.get("models", {}), licenses=_licenses(meta["config"], sorted(sources)),
                    rates={k: summary.get(k) for k in ("pass rate", "first-try pass rate", "mean revisions")},
                    replay=replay_figures(store, v), rejects=summary.get("rejects by stage", {}),
                    sources=dict(sorted(sources.items())))
    (directory / "README.md").write_text(card(manifest, repo), encoding="utf-8")
    manifest["files"] = {rel: hashlib.sha256((directory / rel).read_bytes()).hexdigest()
                         for rel in written + ["SOUL.md", "tools.yaml", "README.md"]}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return list(HUB_FILES) + written


def card(m: dict, repo: str | None = None) -> str:
    """The dataset card (templates/card.md): the YAML the Hub and `load_dataset` read, then the provenance."""
    licenses = sorted(set(m["licenses"].values())) or ["other"]
    header = {
        "license": licenses[0] if len(licenses) == 1 else licenses,
        "pretty_name": f"nanocode factory v{m['version']}",
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "agent", "tool-use", "code", "sft", "dpo", "nanocode"],
        "size_categories": [_size_category(sum(m["counts"]["sft"].values()))],
        "configs": [{"config_name": config, **({"default": True} if config == "sft" else {}),
                     "data_files": [{"split": s, "path": f"{config}/{s}-*.parquet"} for s, n in splits.items() if n]}
                    for config, splits in m["counts"].items() if any(splits.values())],
    }
    if "other" in licenses:
        header["license_name"] = "see-card"
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    template = env.from_string((Path(__file__).parent / "templates" / "card.md").read_text(encoding="utf-8"))
    return template.render(m=m, repo=repo or "USER/NAME", other="other" in licenses,
                           header=yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip())


def publish(store, v: int, repo: str, private: bool = False, revision: str | None = None, soul=None,
            tools=None, test_fraction: float = TEST_FRACTION) -> dict:
    """Upload version v to the dataset repo `repo` in one commit and tag it; returns what was made."""
    from huggingface_hub import CommitOperationAdd

    api = upload_api(repo, "--repo", "publish")
    tag = revision or f"v{v}"
    meta = store.finished(v)
    with tempfile.TemporaryDirectory(prefix="nanocode-publish-") as tmp:
        files = write_hub(store, v, meta, Path(tmp), soul, tools, test_fraction, repo=repo)
        with hub_errors(api, "create the repo"):
            url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        with hub_errors(api, "list the repo's tags"):
            refs = api.list_repo_refs(repo, repo_type="dataset")
        if any(t.name == tag for t in refs.tags):
            raise InputError(f"{repo} already has a tag {tag!r}: pass --revision with another one "
                             "(nothing was uploaded)")
        ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(Path(tmp) / rel)) for rel in files]
        with hub_errors(api, "commit the files"):
            commit = api.create_commit(repo, operations=ops, repo_type="dataset",
                                       commit_message=f"nanocode factory version {v}",
                                       commit_description=f"fingerprint {meta['fingerprint']}")
        with hub_errors(api, "tag the commit"):
            api.create_tag(repo, tag=tag, revision=commit.oid, repo_type="dataset",
                           tag_message=f"nanocode factory version {v}")
    return {"url": str(url), "commit": commit.oid, "tag": tag, "files": files}
