"""Where a run's pieces are: its stages, its checkpoints and the eval results written beside them.

A RUN given to `evals` is either
  - one stage directory (what `trainer run ... --out DIR` writes: metrics.jsonl, checkpoints/ or
    checkpoints.url naming where they are, tokenizer/), or
  - a root holding stage directories named pretrain/, sft/, dpo/ (any of them, in that order).
Model evals use the last stage that has a checkpoint (dpo, else sft, else pretrain); results go to
RUN/evals/<name>.json (the root's evals/ for a root), which `evals report` reads back.
"""

import json
from pathlib import Path

from nanocode.common import InputError, write_text_atomic

STAGES = ("pretrain", "sft", "dpo")


def is_stage(d: Path) -> bool:
    # checkpoints.url: trainer.checkpoint.POINTER, where a run whose checkpoints live elsewhere says they are
    return (d / "metrics.jsonl").exists() or (d / "checkpoints").is_dir() or (d / "checkpoints.url").is_file()


def stages(run) -> dict[str, Path]:
    """Stage name -> directory, in pipeline order. A single stage directory is named by its
    metrics' start event (or "run" when it has none)."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"no such run directory: {run}")
    if found := {name: run / name for name in STAGES if is_stage(run / name)}:
        return found
    if is_stage(run):
        return {next((e.get("stage", "run") for e in read_metrics(run) if e.get("event") == "start"), "run"): run}
    return {}


def read_metrics(d: Path) -> list[dict]:
    """The events of a stage's metrics.jsonl; a torn last line (a killed run) is skipped."""
    path = Path(d) / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def model_dir(run) -> Path:
    """The stage whose checkpoint model evals use: the last one that has a checkpoint."""
    from trainer.checkpoint import find_checkpoints

    found = stages(run)
    for d in reversed(list(found.values())):
        try:
            find_checkpoints(d).close()
            return d
        except InputError:
            continue
    what = ", ".join(found) or "no stage directories (pretrain/, sft/, dpo/) and no metrics.jsonl"
    raise InputError(f"{run} has no checkpoint to evaluate (found: {what})")


def write_result(run, name: str, result: dict) -> Path:
    path = Path(run) / "evals" / f"{name}.json"
    write_text_atomic(path, json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    return path


def read_results(run) -> dict[str, dict]:
    """name -> result of every RUN/evals/*.json; an unreadable file becomes {"error": why}."""
    out = {}
    for path in sorted((Path(run) / "evals").glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            out[path.stem] = {"error": f"{path}: unreadable ({e})"}
    return out
