"""CORE (DCLM, arXiv:2406.11794) as nanochat computes it, from the eval bundle on disk.

The bundle (`evals core download` fetches nanochat's copy) is a directory with
    core.yaml            icl_tasks: [{label, dataset_uri, num_fewshot: [k], icl_task_type,
                         continuation_delimiter}]
    eval_meta_data.csv   columns "Eval Task" and "Random baseline" (in percent)
    eval_data/<dataset_uri>   one JSON object per line
Three task types, all scored by the model's log-likelihoods:
    multiple_choice  {query, choices, gold}: one context, several continuations; the pick is the
                     continuation with the lowest mean loss
    schema           {context_options, continuation, gold}: several contexts, one continuation;
                     the pick is the context under which the continuation has the lowest mean loss
    language_modeling {context, continuation}: right iff greedy argmax reproduces every token
Few-shot examples are drawn with Random(1234 + index) from the task's other examples, the data is
shuffled with Random(1337) before --max-per-task crops it (nanochat's seeds, so a cropped run
scores the same subset). Per task, centered = (accuracy - baseline) / (1 - baseline); CORE is the
mean centered accuracy over the tasks that ran. Tasks whose data file is missing are skipped and
named in the result.
"""

import csv
import functools
import json
import os
import random
import shutil
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from nanocode.common import InputError, nanocode_home
from trainer import model

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"  # nanochat's
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")


@dataclass
class Task:
    label: str
    kind: str
    num_fewshot: int
    delimiter: str
    baseline: float          # a fraction (the CSV's percent / 100)
    data: list[dict] = field(default_factory=list)


def default_bundle() -> Path:
    return nanocode_home() / "eval_bundle"


def bundle_root(path) -> Path:
    """The directory holding core.yaml: PATH itself or PATH/eval_bundle (how the zip unpacks)."""
    path = Path(path)
    for d in (path, path / "eval_bundle"):
        if (d / "core.yaml").exists():
            return d
    if not path.exists():
        raise InputError(f"no eval bundle at {path}: run `evals core download` or pass --bundle DIR")
    raise InputError(f"{path} has no core.yaml: not a CORE eval bundle")


def load_bundle(path) -> tuple[list[Task], list[str]]:
    """(tasks whose data loaded, problems: one line per task left out and why)."""
    root = bundle_root(path)
    try:
        config = yaml.safe_load((root / "core.yaml").read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{root / 'core.yaml'}: not YAML ({str(e).splitlines()[0]})") from None
    entries = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{root / 'core.yaml'}: no icl_tasks list")
    meta = root / "eval_meta_data.csv"
    if not meta.exists():
        raise InputError(f"{meta}: missing (it holds each task's random baseline)")
    with meta.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"Eval Task", "Random baseline"} <= set(rows[0]):
        raise InputError(f"{meta}: needs the columns 'Eval Task' and 'Random baseline'")
    baselines = {r["Eval Task"]: float(r["Random baseline"]) / 100 for r in rows}
    tasks, problems = [], []
    for i, e in enumerate(entries):
        label = e.get("label", f"task {i}") if isinstance(e, dict) else f"task {i}"
        try:
            kind, uri = e["icl_task_type"], e["dataset_uri"]
            shots = e.get("num_fewshot", [0])
            shots = int(shots[0] if isinstance(shots, list) else shots)
        except (KeyError, TypeError, ValueError, IndexError):
            problems.append(f"{label}: core.yaml entry needs icl_task_type, dataset_uri and num_fewshot")
            continue
        if kind not in TASK_TYPES:
            problems.append(f"{label}: unknown icl_task_type {kind!r}")
            continue
        if label not in baselines:
            problems.append(f"{label}: no random baseline in eval_meta_data.csv")
            continue
        data_path = root / "eval_data" / uri
        if not data_path.exists():
            problems.append(f"{label}: data file eval_data/{uri} is missing")
            continue
        try:
            data = [json.loads(line) for line in data_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problems.append(f"{label}: eval_data/{uri} is not JSON lines ({e})")
            continue
        if not data:
            problems.append(f"{label}: eval_data/{uri} is empty")
            continue
        tasks.append(Task(label, kind, shots, e.get("continuation_delimiter", " "), baselines[label], data))
    return tasks, problems


# ----------------------------------------------------------------------------- prompts


def _shots(examples: list[dict], kind: str, delim: str) -> str:
    def one(ex):
        if kind == "multiple_choice":
            return f"{ex['query']}{delim}{ex['choices'][ex['gold']]}"
        if kind == "schema":
            return f"{ex['context_options'][ex['gold']]}{delim}{ex['continuation']}"
        return f"{ex['context'].strip()}{delim}{ex['continuation']}"
    return "".join(one(ex) + "\n\n" for ex in examples)


def prompts(item: dict, kind: str, delim: str, fewshot: list[dict]) -> list[str]:
    """The texts to score: one per choice (mc), per context option (schema), or [without, with]
    the continuation (lm)."""
    head = _shots(fewshot, kind, delim)
    if kind == "multiple_choice":
        return [f"{head}{item['query']}{delim}{c}" for c in item["choices"]]
    if kind == "schema":
        return [f"{head}{c}{delim}{item['continuation']}" for c in item["context_options"]]
    context = f"{head}{item['context'].strip()}{delim}"
    return [context.strip(), context + item["continuation"]]


def spans(token_seqs: list[list[int]], kind: str) -> tuple[list[list[int]], list[int], list[int]]:
    """(sequences to run, start, end) of the scored span of each: the continuations (mc: after the
    common prefix), the shared continuation (schema: the common suffix), the continuation (lm)."""
    if kind == "multiple_choice":
        start = len(os.path.commonprefix(token_seqs))
        return token_seqs, [start] * len(token_seqs), [len(s) for s in token_seqs]
    if kind == "schema":
        suffix = len(os.path.commonprefix([s[::-1] for s in token_seqs]))
        return token_seqs, [len(s) - suffix for s in token_seqs], [len(s) for s in token_seqs]
    without, with_ = token_seqs
    start = len(without) if with_[:len(without)] == without else len(os.path.commonprefix(token_seqs))
    return [with_], [start], [len(with_)]


# ----------------------------------------------------------------------------- scoring


@functools.partial(jax.jit, static_argnames="cfg")  # compiled once per model shape, shared by every Scorer
def _losses_and_argmax(params, ids, cfg):
    logits = model.forward(params, ids, cfg)
    targets = jnp.roll(ids, -1, axis=1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked, logits.argmax(-1)


class Scorer:
    """Per-position losses and greedy predictions of a model, in a few padded shapes."""

    def __init__(self, params, cfg, tok):
        self.params, self.cfg, self.tok = params, cfg, tok

    def __call__(self, seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        # padded shapes, so few compiles: rows a power of two from 4 (most tasks have 2-4
        # choices), widths a power of two from 64
        rows = max(4, 1 << (len(seqs) - 1).bit_length())
        width = max(64, 1 << (max(map(len, seqs)) - 1).bit_length())
        ids = np.full((rows, width), self.tok.bos_id, np.int32)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = s
        losses, preds = _losses_and_argmax(self.params, ids, cfg=self.cfg)
        return np.asarray(losses), np.asarray(preds)


def score_example(scorer: Scorer, item: dict, kind: str, delim: str, fewshot: list[dict]) -> dict:
    tok, max_len = scorer.tok, scorer.cfg.seq_len
    seqs = [[tok.bos_id] + tok.encode(p) for p in prompts(item, kind, delim, fewshot)]
    seqs, starts, ends = spans(seqs, kind)
    for i, s in enumerate(seqs):  # too long for the model: keep the end, as nanochat does
        if len(s) > max_len:
            cut = len(s) - max_len
            seqs[i], starts[i], ends[i] = s[cut:], max(1, starts[i] - cut), ends[i] - cut
    losses, preds = scorer(seqs)
    if kind == "language_modeling":
        s, e = starts[0], ends[0]
        return {"correct": bool((preds[0, s - 1:e - 1] == np.asarray(seqs[0][s:e])).all())}
    means = [float(losses[i, s - 1:e - 1].mean()) for i, (s, e) in enumerate(zip(starts, ends))]
    pred = int(np.argmin(means))
    return {"correct": pred == item["gold"], "pred": pred, "losses": means}


def evaluate_task(scorer: Scorer, task: Task, max_per_task: int = -1) -> dict:
    data = list(task.data)
    random.Random(1337).shuffle(data)
    if max_per_task > 0:
        data = data[:max_per_task]
    correct = 0
    for idx, item in enumerate(data):
        fewshot = []
        if task.num_fewshot > 0:
            others = [i for i in range(len(data)) if i != idx]
            fewshot = [data[i] for i in random.Random(1234 + idx).sample(others, min(task.num_fewshot, len(others)))]
        correct += score_example(scorer, item, task.kind, task.delimiter, fewshot)["correct"]
    accuracy = correct / len(data)
    return {"task": task.label, "type": task.kind, "examples": len(data), "shots": task.num_fewshot,
            "accuracy": accuracy, "baseline": task.baseline,
            "centered": (accuracy - task.baseline) / (1 - task.baseline)}


def evaluate(run_dir, bundle, max_per_task: int = -1, loaded=None, log=lambda *_: None) -> dict:
    from trainer.checkpoint import load_model

    tasks, problems = load_bundle(bundle)
    if not tasks:
        raise InputError(f"no CORE task could be loaded from {bundle}: " + "; ".join(problems))
    params, cfg, tok, meta = loaded or load_model(run_dir)
    scorer = Scorer(params, cfg, tok)
    t0, rows = time.perf_counter(), []
    for task in tasks:
        rows.append(evaluate_task(scorer, task, max_per_task))
        log(f"{task.label}: accuracy {rows[-1]['accuracy']:.4f}, centered {rows[-1]['centered']:+.4f}")
    return {"kind": "core", "run": str(run_dir), "step": meta["step"], "bundle": str(bundle_root(bundle)),
            "max_per_task": max_per_task, "tasks": rows, "missing": problems,
            "core": float(np.mean([r["centered"] for r in rows])), "seconds": time.perf_counter() - t0}


def download(dest=None, url: str = BUNDLE_URL, log=print) -> Path:
    """Fetch and unpack the bundle into DEST (default $NANOCODE_HOME/eval_bundle); returns its root."""
    dest = Path(dest) if dest else default_bundle()
    if (dest / "core.yaml").exists():
        log(f"{dest} already holds the bundle")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    zip_path = dest.parent / (dest.name + ".zip.part")
    log(f"downloading {url} ...")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, zip_path.open("wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        zip_path.unlink(missing_ok=True)
        raise InputError(f"cannot download {url}: {e}") from None
    tmp = dest.parent / (dest.name + ".unpacking")
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(tmp)
    inner = tmp / "eval_bundle" if (tmp / "eval_bundle" / "core.yaml").exists() else tmp
    inner.rename(dest)
    zip_path.unlink()
    shutil.rmtree(tmp, ignore_errors=True)  # what is left of it once the bundle moved out
    log(f"unpacked to {dest}")
    return dest
