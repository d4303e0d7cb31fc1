"""nanochat as a same-run anchor: its own scripts, run from a checkout of karpathy/nanochat at DIR.

Nothing of nanochat is copied here. We write a corpus in its data layout (parquet shards with a
`text` column under NANOCHAT_BASE_DIR/base_data_climbmix; the last shard is its val split), train
its tokenizer with its own `scripts.tok_train`, and run its `scripts.base_train` at our shape. Our
side of the benchmark reads the same shards through the same tokenizer (its tokenizer.pkl is a
pickled tiktoken Encoding), so both sides train on the same tokens' distribution.

The corpus is this Python's standard library sources, cut into documents of at most 4,000
characters at line boundaries (long single documents stall nanochat's loader), so every machine
with our venv builds the same one.

For decoding, `engine_decode` runs nanochat's own GPT (its init, at our shape) and its own
Engine.generate in a subprocess inside the checkout; only the timing around it is ours.
"""

import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nanocode.common import InputError

DOC_CHARS = 4000
STEP_LINE = re.compile(r"step (\d+)/\d+ .*\| dt: ([\d.]+)ms \| tok/sec: ([\d,]+)")


def checkout(path: str) -> Path:
    """DIR if it holds nanochat's scripts, else InputError."""
    root = Path(path)
    missing = [p for p in ("scripts/base_train.py", "scripts/tok_train.py", "nanochat/gpt.py", "nanochat/engine.py")
               if not (root / p).is_file()]
    if missing:
        raise InputError(f"--anchor {path} is not a nanochat checkout (no {missing[0]}): "
                         "pass a clone of karpathy/nanochat")
    return root


def documents(max_chars: int) -> list[str]:
    """The standard library's .py files as <= DOC_CHARS-character documents, in a fixed order."""
    docs, total = [], 0
    for path in sorted(Path(os.__file__).parent.rglob("*.py")):
        doc = ""
        for line in path.read_text(errors="replace").splitlines(keepends=True):
            if len(doc) + len(line) > DOC_CHARS and doc:
                docs.append(doc)
                total += len(doc)
                doc = ""
            doc += line[:DOC_CHARS]
        if doc:
            docs.append(doc)
            total += len(doc)
        if total >= max_chars:
            break
    rng = np.random.default_rng(42)
    return [docs[i] for i in rng.permutation(len(docs))]


def _peak_rss_gb(pid: int) -> float:
    """The process's high-water RSS (VmHWM: its own since exec; rusage would count ours from the fork)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone, or no /proc
        return 0.0
    return next((int(line.split()[1]) / 2**20 for line in status.splitlines() if line.startswith("VmHWM:")), 0.0)


def _run(cmd: list[str], cwd: Path, env: dict, what: str) -> tuple[str, float]:
    """(stdout, peak RSS in GB) of a nanochat script; InputError with its last output line when it fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        peak = 0.0
        while proc.poll() is None:  # the high-water mark only grows: the last read before exit is it
            peak = max(peak, _peak_rss_gb(proc.pid))
            time.sleep(0.5)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["no output"])[-1]
        raise InputError(f"nanochat's {what} failed in {cwd} (exit {proc.returncode}): {last}")
    return stdout, peak


def prepare(root: Path, base_dir: Path, max_chars: int = 20_000_000, vocab: int = 32768):
    """Shards and nanochat's tokenizer under base_dir (kept: a second run reuses them) -> the
    tiktoken Encoding both sides tokenize with."""
    data = base_dir / "base_data_climbmix"
    tok_file = base_dir / "tokenizer" / "tokenizer.pkl"
    if not tok_file.exists():
        docs = documents(max_chars)
        data.mkdir(parents=True, exist_ok=True)
        n_val = max(len(docs) // 20, 1)
        for i, part in enumerate((docs[:-n_val], docs[-n_val:])):  # the last shard is nanochat's val split
            pq.write_table(pa.table({"text": part}), data / f"shard_{i:05d}.parquet", row_group_size=1024)
        _run([sys.executable, "-m", "scripts.tok_train", f"--max-chars={max_chars}", f"--vocab-size={vocab}"],
             root, {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir)}, "scripts.tok_train")
    with open(tok_file, "rb") as f:
        return pickle.load(f)


def token_batches(enc, base_dir: Path, steps: int, rows: int, seq_len: int) -> np.ndarray:
    """(steps, rows, seq_len + 1) int32: train-shard documents, each BOS-first, packed back to back."""
    bos = enc.encode_single_token("<|bos|>")
    need = steps * rows * (seq_len + 1)
    texts = pq.read_table(base_dir / "base_data_climbmix" / "shard_00000.parquet").column("text").to_pylist()
    ids: list[int] = []
    for batch in (texts[i:i + 256] for i in range(0, len(texts), 256)):
        for doc in enc.encode_ordinary_batch(batch):
            ids += [bos, *doc]
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise InputError(f"the shared corpus has {len(ids):,} tokens, fewer than the {need:,} the steps need")
    return np.asarray(ids[:need], np.int32).reshape(steps, rows, seq_len + 1)


def base_train(root: Path, base_dir: Path, *, depth: int, seq_len: int, rows: int, steps: int,
               skip: int = 10) -> dict:
    """nanochat's scripts.base_train at our shape -> tok/s (median and range over steps >= skip,
    which nanochat's own timer also leaves out), first-step seconds (compile included), peak RSS."""
    cmd = [sys.executable, "-m", "scripts.base_train", f"--depth={depth}", "--head-dim=64", "--window-pattern=L",
           f"--max-seq-len={seq_len}", f"--device-batch-size={rows}", f"--total-batch-size={rows * seq_len}",
           f"--num-iterations={steps}", "--eval-every=-1", "--core-metric-every=-1", "--sample-every=-1",
           "--model-tag=bench"]
    t0 = time.perf_counter()
    out, peak_gb = _run(cmd, root, {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir)}, "scripts.base_train")
    wall = time.perf_counter() - t0
    rows_seen = [(int(s), float(dt) / 1000, int(t.replace(",", ""))) for s, dt, t in STEP_LINE.findall(out)]
    timed = [r for r in rows_seen if r[0] >= skip]
    if not timed:
        raise InputError(f"nanochat's scripts.base_train printed no step lines past step {skip} "
                         f"(ran {steps} steps): its output format changed?")
    tok_s = [r[2] for r in timed]
    return {"tok_s": float(np.median(tok_s)), "tok_s_range": (min(tok_s), max(tok_s)),
            "step_s": float(np.median([r[1] for r in timed])), "first_step_s": rows_seen[0][1],
            "wall_s": wall, "peak_rss_gb": peak_gb}


# nanochat's own GPT at our shape (the json spec in argv[1]), its own init, on the CPU.
BUILD_MODEL = """
import json, sys
import torch
from nanochat.gpt import GPT, GPTConfig
a = json.loads(sys.argv[1])
torch.manual_seed(0)
config = GPTConfig(sequence_len=a["seq_len"], vocab_size=a["vocab"], n_layer=a["depth"], n_head=a["n_head"],
                   n_kv_head=a["n_head"], n_embd=a["d_model"], window_pattern="L")
with torch.device("meta"):
    model = GPT(config)
model.to_empty(device="cpu")
model.init_weights()
"""

# Run inside nanochat's checkout (cwd DIR, so `nanochat` imports from there): its own GPT at our
# shape, its own init, its own Engine.generate with num_samples=B, greedy. Only the timing is ours.
DECODE_DRIVER = BUILD_MODEL + """
import statistics, time
from nanochat.engine import Engine
from nanochat.tokenizer import get_tokenizer

model.eval()
tok = get_tokenizer()
engine = Engine(model, tok)
prompt = [tok.get_bos_token_id()] + torch.randint(600, a["vocab"], (a["prompt_len"] - 1,)).tolist()

def decode(B):
    t0, times = time.perf_counter(), []
    for _ in engine.generate(prompt, num_samples=B, max_tokens=a["new_tokens"], temperature=0.0):
        times.append(time.perf_counter())
    steps = [t1 - t0 for t0, t1 in zip(times, times[1:])]
    return {"ttft_s": times[0] - t0, "tpot_s": statistics.median(steps), "steps": len(times)}

out = {}
for B in a["batches"]:
    decode(B)  # warm-up: allocator, threads
    out[B] = decode(B)
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "decode": out}))
"""


def _drive(driver: str, root: Path, base_dir: Path, what: str, **spec) -> dict:
    """Run a driver inside the checkout with the json spec -> the json its last line prints, + peak RSS."""
    out, peak = _run([sys.executable, "-c", driver, json.dumps(spec)], root,
                     {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir)}, what)
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise InputError(f"nanochat's {what} run in {root} printed no result: its API changed?") from None
    return {**result, "peak_rss_gb": peak}


def engine_decode(root: Path, base_dir: Path, *, depth: int, d_model: int, n_head: int, vocab: int, seq_len: int,
                  batches: list[int], prompt_len: int, new_tokens: int) -> dict:
    """nanochat's Engine.generate (one prompt, num_samples=B rows, greedy, randomly initialised
    model of our shape) -> {B: {"ttft_s", "tpot_s" (median per decode step), "steps"}}, torch version."""
    result = _drive(DECODE_DRIVER, root, base_dir, "Engine.generate", depth=depth, d_model=d_model, n_head=n_head,
                    vocab=vocab, seq_len=seq_len, batches=batches, prompt_len=prompt_len, new_tokens=new_tokens)
    result["decode"] = {int(b): r for b, r in result["decode"].items()}
    return result


# Run inside nanochat's checkout: its own GPT at our shape, compiled as scripts.base_train compiles
# it, its own MuonAdamW from setup_optimizer, random tokens; torch.profiler around a few steps. Each
# profiled event is put in one part: inside optimizer.step, "muon" (its compiled muon_step_fused:
# Polar Express + update) or "adamw"; in forward/backward, "lm_head + CE" (matmuls with a vocab-sized
# dimension, and inductor's fused kernels named for the soft-cap/softmax/nll over the logits) or "blocks".
PROFILE_DRIVER = BUILD_MODEL + """
import time
import torch._inductor.config as inductor_config
inductor_config.cpp.enable_kernel_profile = True  # name each fused C++ kernel in the profile
from torch.profiler import profile, record_function, ProfilerActivity

optimizer = model.setup_optimizer()
model = torch.compile(model, dynamic=False)
x = torch.randint(0, a["vocab"], (a["rows"], a["seq_len"]))
y = torch.randint(0, a["vocab"], (a["rows"], a["seq_len"]))

def step():
    with record_function("part:forward"):
        loss = model(x, y)
    with record_function("part:backward"):
        loss.backward()
    with record_function("part:optimizer"):
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return loss.item()

t0 = time.perf_counter()
step()
first = time.perf_counter() - t0
for _ in range(a["warmup"]):
    step()
walls = []
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    for _ in range(a["steps"]):
        t0 = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
V = a["vocab"]
events = [e for e in prof.events()]
regions = {n: [(e.time_range.start, e.time_range.end) for e in events if e.name == "part:" + n]
           for n in ("forward", "backward", "optimizer")}
def region(e):
    t = e.time_range.start
    return next((n for n, spans in regions.items() if any(s <= t < f for s, f in spans)), None)
parts, kernels = {}, {}
CE = ("log_softmax", "nll", "tanh", "softmax", "cross_entropy")
for e in events:
    if e.name.startswith("part:"):
        continue
    r = region(e)
    if r is None:
        continue
    if r == "optimizer":  # its matmuls are Polar Express's; its fused kernels with a norm are Muon's
        if e.name in ("aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmm"):
            part = "Muon: Polar Express matmuls"
        elif "cpp_fused" in e.name:
            part = "Muon: fused momentum/norm/update" if "linalg_vector_norm" in e.name else "AdamW: fused update"
        elif e.name in ("aten::cat", "aten::stack", "aten::copy_", "aten::_foreach_copy_"):
            part = "stacking and copies"
        else:
            part = None
    else:
        shapes = [s for s in (e.input_shapes or []) if isinstance(s, list)]
        vocab_mm = e.name in ("aten::mm", "aten::addmm", "aten::bmm") and any(V in s for s in shapes)
        ce = "cpp_fused" in e.name and any(k in e.name for k in CE)
        part = "lm_head + CE" if vocab_mm or ce else "blocks + embedding"
    key = (r, part)
    parts[key] = parts.get(key, 0.0) + e.self_cpu_time_total
    kernels[(r, e.name)] = kernels.get((r, e.name), 0.0) + e.self_cpu_time_total
top = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "first_step_s": first,
                  "step_s": walls, "self_us": [[r, p, t] for (r, p), t in parts.items()],
                  "top": [[r, n, t] for (r, n), t in top]}))
"""


def train_profile(root: Path, base_dir: Path, *, depth: int, d_model: int, n_head: int, vocab: int, seq_len: int,
                  rows: int, steps: int = 4, warmup: int = 2) -> dict:
    """torch.profiler over nanochat's own compiled training step (our shape, random tokens) ->
    per-step wall seconds and self CPU microseconds per (region, part), summed over `steps` steps."""
    return _drive(PROFILE_DRIVER, root, base_dir, "training step under torch.profiler", depth=depth,
                  d_model=d_model, n_head=n_head, vocab=vocab, seq_len=seq_len, rows=rows, steps=steps, warmup=warmup)
