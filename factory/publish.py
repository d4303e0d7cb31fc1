"""`factory publish`: one finished version -> a Hugging Face Hub dataset repo, in one commit.

The folder layout (what `factory export` writes and what is uploaded, made by `write_hub`):

    README.md                     dataset card: YAML header (configs, licenses, tags) + provenance
    manifest.json                 version, hashes, counts per split, models, pass and replay rates, file hashes
    SOUL.md, tools.yaml           the SOUL and tool spec the version was built under (hashes checked)
    sft/{train,test}-00000-of-00001.parquet           config `sft` (the default): conversation records
    preference/{train,test}-00000-of-00001.parquet    config `preference`: chosen/rejected pairs

Rows go to `test` by a hash of their input id (sha256 < test_fraction), so one input's SFT row
and pair land in the same split: DPO never tests on a conversation SFT trained on. JSON-valued
columns stay JSON text (args differ per tool, so a struct column would invent null keys).

`publish` checks everything before the first request (repo name, finished version, token,
offline mode, the tag not taken), then create_repo, one create_commit with every file, and
create_tag on that commit: a failure before the commit leaves the repo untouched.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import jinja2
import pyarrow.parquet as pq
import yaml

from nanocode.common import InputError
from nanocode.record import hash_unit
from nanocode.spec import load_soul, load_tools

CONFIGS = {"sft": "sft", "preference": "pairs"}  # Hub config -> store kind
HUB_FILES = ("README.md", "manifest.json", "SOUL.md", "tools.yaml")  # plus the configs' folders
TEST_FRACTION = 0.1
# licenses by source label, from factory/seeds/README.md (our seed files, and the Hub seeds' cards
# as read there); self-oss-instruct is given as ODC-By in one place and Apache-2.0 in another, so
# it stays `other` until someone settles it. A source entry's own `license:` wins.
KNOWN_LICENSES = {"coding": "cc0-1.0", "humaneval": "mit", "tulu-personas-code": "odc-by",
                  "evol-codealpaca": "apache-2.0", "smoltalk": "apache-2.0"}


def split_of(input_id: str, test_fraction: float) -> str:
    return "test" if hash_unit(input_id) < test_fraction else "train"


def _licenses(config: dict, sources: list[str]) -> dict:
    """source label -> license id: a source entry's `license` (a `mix` is looked into), else the
    known table, else `other`."""
    entries, given = [config.get("source")], {}
    while entries:
        e = entries.pop()
        if isinstance(e, dict):
            entries += e.get("sources") or []
            label = e.get("label") or (Path(e["path"]).stem if isinstance(e.get("path"), str) else None)
            if e.get("license") and label:
                given[label] = e["license"]
    return {s: given.get(s) or KNOWN_LICENSES.get(s) or "other" for s in sources}


def _size_category(n: int) -> str:
    return next((name for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                                          (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")) if n < limit), "n>10M")


def write_hub(store, v: int, meta: dict, directory: Path, soul=None, tools=None,
              test_fraction: float = TEST_FRACTION, repo: str | None = None) -> list[str]:
    """Write the Hub layout of version v into `directory`; returns the paths written, relative."""
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
    for config, kind in CONFIGS.items():
        table = store.db.sql(f"SELECT * FROM {store.relation(kind, v)} ORDER BY input_id, id").to_arrow_table()
        splits = [split_of(i, test_fraction) for i in table.column("input_id").to_pylist()]
        for source in table.column("source").to_pylist():
            sources[source] = sources.get(source, 0) + (kind == "sft")
        (directory / config).mkdir(parents=True, exist_ok=True)
        counts[config] = {}
        for split in ("train", "test"):
            part = table.filter([s == split for s in splits])
            rel = f"{config}/{split}-00000-of-00001.parquet"
            pq.write_table(part, directory / rel, row_group_size=1000)  # small groups: the viewer pages by them
            written.append(rel)
            counts[config][split] = part.num_rows
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
                     "data_files": [{"split": s, "path": f"{config}/{s}-*.parquet"} for s in ("train", "test")]}
                    for config in CONFIGS],
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
    import huggingface_hub
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    try:
        huggingface_hub.utils.validate_repo_id(repo)
    except HFValidationError as e:
        raise InputError(f"--repo {repo!r} is not a valid repo name: {e}") from None
    if "/" not in repo:
        raise InputError(f"--repo {repo!r}: give the owner too, as USER/NAME")
    tag = revision or f"v{v}"
    meta = store.finished(v)
    token = huggingface_hub.get_token()
    if not token:
        raise InputError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token)")
    if huggingface_hub.constants.is_offline_mode():
        raise InputError("HF_HUB_OFFLINE is set: unset it to publish")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)

    def hub(what, call, *args, **kw):
        try:
            return call(*args, **kw)
        except HfHubHTTPError as e:
            status = getattr(e.response, "status_code", "?")
            raise InputError(f"the Hub refused to {what} ({status}): {str(e).splitlines()[0]}") from None
        except OSError as e:  # connection refused, DNS: nothing was sent
            raise InputError(f"cannot reach the Hub at {api.endpoint} to {what}: {e}") from None

    with tempfile.TemporaryDirectory(prefix="nanocode-publish-") as tmp:
        files = write_hub(store, v, meta, Path(tmp), soul, tools, test_fraction, repo=repo)
        url = hub("create the repo", api.create_repo, repo, repo_type="dataset", private=private, exist_ok=True)
        refs = hub("list the repo's tags", api.list_repo_refs, repo, repo_type="dataset")
        if any(t.name == tag for t in refs.tags):
            raise InputError(f"{repo} already has a tag {tag!r}: pass --revision with another one "
                             "(nothing was uploaded)")
        ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(Path(tmp) / rel)) for rel in files]
        commit = hub("commit the files", api.create_commit, repo, operations=ops, repo_type="dataset",
                     commit_message=f"nanocode factory version {v}",
                     commit_description=f"fingerprint {meta['fingerprint']}")
        hub("tag the commit", api.create_tag, repo, tag=tag, revision=commit.oid, repo_type="dataset",
            tag_message=f"nanocode factory version {v}")
    return {"url": str(url), "commit": commit.oid, "tag": tag, "files": files}
