"""The build config: a YAML file (default factory/configs/default.yaml) read into dataclasses.

Every stage is an entry `{name: ..., <its settings>}` that `make` builds: a name from its
module's registry (SOURCES, CONVERTERS, GENERATORS, CRITICS, REVISERS) or `module:Class`, a
class of your own. So swapping a source, converter, critic, reviser or backend, or adding your
own, is a config edit or a flag. Unknown names and unknown keys are errors: a typo must never
switch a stage off silently. All problems are one-line InputErrors naming the file.
"""

import dataclasses
import importlib
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
    # run every chosen rollout's tool calls for real: factory/replay.py's settings; None: no replay
    replay: dict | None = field(default_factory=dict)
    backend: dict = field(default_factory=lambda: {"name": "offline"})
    max_rounds: int = 4    # attempts per input: the first draft plus revisions
    chunk_size: int = 16   # inputs per committed Parquet part: what a kill can cost at most
    commit_seconds: float = 30.0  # and finished inputs commit at least this often, whatever the chunk size
    dedup: bool = True     # drop exact and near-duplicate prompts (decontamination always runs)
    path: str = "<defaults>"

    def __post_init__(self):
        for key in ("max_rounds", "chunk_size"):
            value = getattr(self, key)
            if type(value) is not int or value < 1:
                raise InputError(f"{self.path}: {key} must be a positive integer, got {value!r}")
        if type(self.commit_seconds) not in (int, float) or not self.commit_seconds > 0:
            raise InputError(f"{self.path}: commit_seconds must be a positive number, got {self.commit_seconds!r}")
        if not isinstance(self.dedup, bool):
            raise InputError(f"{self.path}: dedup must be true or false, got {self.dedup!r}")
        if not isinstance(self.critics, list):
            raise InputError(f"{self.path}: critics must be a list of stages")
        if self.replay is not None and not isinstance(self.replay, dict):
            raise InputError(f"{self.path}: replay must be a mapping of its settings, or null")


def read_yaml(path: Path, what: str):
    """A YAML file's contents (a build config, a scenario spec); InputError naming the file, and
    the line of a syntax error."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}: bad YAML{where}: {getattr(e, 'problem', None) or e}") from None


def load_config(path=None) -> BuildConfig:
    path = Path(path) if path is not None else DEFAULT_CONFIG
    data = read_yaml(path, "config")
    if not isinstance(data, dict):
        raise InputError(f"{path}: a build config must be a YAML mapping")
    known = {f.name for f in dataclasses.fields(BuildConfig)} - {"path"}
    if unknown := sorted(set(data) - known):
        raise InputError(f"{path}: unknown key(s): {', '.join(map(str, unknown))} "
                         f"(known: {', '.join(sorted(known))})")
    return BuildConfig(**data, path=str(path))


def stage_entry(kind: str, entry, where: str) -> dict:
    """A stage entry as a mapping (`critic: grammar` is short for `{name: grammar}`)."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise InputError(f"{where}: {kind} must be a mapping with a 'name'")
    return dict(entry)


def make(kind: str, registry: dict, entry, where: str = "config"):
    """Build the stage `entry` names: a class from `registry` (name -> class) or `module:Class`,
    given the entry's other keys as settings (a dataclass's fields, or its keyword arguments)."""
    entry = stage_entry(kind, entry, where)
    name = entry.pop("name")
    # every source may say its rows' license (the dataset card's, factory/publish.py): no source's own setting
    license_id = entry.pop("license", None) if kind == "source" else None
    if license_id is not None and not (isinstance(license_id, str) and license_id.strip()):
        raise InputError(f"{where}: source {name!r}: license must be a license id such as cc0-1.0, "
                         f"got {license_id!r}")
    cls = registry.get(name)
    if cls is None and ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except ImportError as e:
            raise InputError(f"{where}: {kind} {name!r}: cannot import {module} ({e})") from None
        except AttributeError:
            raise InputError(f"{where}: {kind} {name!r}: {module} has no {attr}") from None
    if cls is None:
        raise InputError(f"{where}: unknown {kind} {name!r} (known: {', '.join(sorted(registry))}; "
                         "or module:Class for your own)")
    stage = construct(f"{kind} {name!r}", cls, entry, where)
    if kind == "source":
        stage.license = license_id
    return stage


def construct(what: str, cls, settings: dict, where: str):
    """cls(**settings), with unknown settings and the class's own ValueError or TypeError as
    one-line InputErrors."""
    if dataclasses.is_dataclass(cls):
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        if unknown := sorted(set(settings) - fields):
            raise InputError(f"{where}: {what} has no setting(s) {', '.join(unknown)} "
                             f"(its settings: {', '.join(sorted(fields)) or 'none'})")
    try:
        return cls(**settings)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: {what}: {e}") from None
