"""The build config: a YAML file (default factory/configs/default.yaml) read into dataclasses.

Every stage is an entry `{name: ..., <its settings>}` looked up in its module's registry
(`make`), so swapping a source, converter, critic, reviser, pair policy or backend is a
config edit or a flag. Unknown names and unknown keys are errors: a typo must never switch a
stage off silently. All problems are one-line InputErrors naming the file.
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nanocode.common import InputError

FACTORY = Path(__file__).resolve().parent
DEFAULT_CONFIG = FACTORY / "configs" / "default.yaml"


@dataclass
class BuildConfig:
    source: dict = field(default_factory=lambda: {"name": "local"})
    converter: dict = field(default_factory=lambda: {"name": "code_edit"})
    generator: dict = field(default_factory=lambda: {"name": "llm"})
    critics: list = field(default_factory=lambda: [{"name": "grammar"}, {"name": "soul_rules"}])
    reviser: dict = field(default_factory=lambda: {"name": "llm"})
    pairs: dict = field(default_factory=lambda: {"name": "first_fail_vs_final"})
    # run every chosen rollout's tool calls for real (factory/replay.py); null: no replay
    replay: dict | None = field(default_factory=lambda: {"name": "tools"})
    backend: dict = field(default_factory=lambda: {"name": "offline"})
    max_rounds: int = 4    # attempts per input: the first draft plus revisions
    chunk_size: int = 16   # inputs per committed Parquet part: what a kill can cost at most
    dedup: bool = True     # drop exact and near-duplicate prompts (decontamination always runs)
    path: str = "<defaults>"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("path")
        return d

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def load_config(path=None) -> BuildConfig:
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}: bad YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a build config must be a YAML mapping")
    known = {f.name for f in dataclasses.fields(BuildConfig)} - {"path"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{path}: unknown key(s): {', '.join(map(str, unknown))} "
                         f"(known: {', '.join(sorted(known))})")
    config = BuildConfig(**data, path=str(path))
    for key in ("max_rounds", "chunk_size"):
        value = getattr(config, key)
        if type(value) is not int or value < 1:
            raise InputError(f"{path}: {key} must be a positive integer, got {value!r}")
    if not isinstance(config.dedup, bool):
        raise InputError(f"{path}: dedup must be true or false, got {config.dedup!r}")
    if not isinstance(config.critics, list):
        raise InputError(f"{path}: critics must be a list of stages")
    return config


def make(kind: str, registry: dict, entry, where: str = "config", **extra):
    """Build the stage `entry` names ({name, settings...} or just the name) from `registry`
    (name -> dataclass); its settings must be fields of that dataclass."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise InputError(f"{where}: {kind} must be a mapping with a 'name'")
    cls = registry.get(entry["name"])
    if cls is None:
        raise InputError(f"{where}: unknown {kind} {entry['name']!r} (known: {', '.join(sorted(registry))})")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    settings = {k: v for k, v in entry.items() if k != "name"}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise InputError(f"{where}: {kind} {entry['name']!r} has no setting(s) {', '.join(unknown)} "
                         f"(its settings: {', '.join(sorted(fields - set(extra))) or 'none'})")
    try:
        return cls(**settings, **extra)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: {kind} {entry['name']!r}: {e}") from None
