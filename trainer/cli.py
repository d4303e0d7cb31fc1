"""`trainer`: corpora, the tokenizer, the training stages (pretrain, sft, dpo) and the model server."""

import inspect
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from nanocode.common import InputError, cli_app, nanocode_home, run_cli
from trainer import corpus, hosts, local_corpus, malloc, tokenizer_eval
from trainer.corpus import default_corpus
from trainer.tokenizer import Tokenizer

console = Console(width=None if sys.stdout.isatty() else 120)  # pipes and logs get whole tables

app = cli_app(__doc__)
tokenizer_app = cli_app("Train and evaluate the BPE tokenizer.", root=False)
data_app = cli_app("Download or build pretraining corpora as parquet shards.", root=False)
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(data_app, name="data")
run_app = cli_app("Run a training stage (resumable).", root=False)
app.add_typer(run_app, name="run")


CHECKPOINT_DIR_HELP = ("checkpoints elsewhere: a local path, file:///path or gs://bucket/path (OUT/checkpoints.url "
                       "records it for the later stages) [default: OUT/checkpoints]")
MULTIHOST_HELP = ("join a run on several hosts first: the same command on each, with JAX_COORDINATOR_ADDRESS="
                  "HOST:PORT (process 0's), JAX_NUM_PROCESSES and JAX_PROCESS_ID set (TPU pods and SLURM jobs need none)")


def default_tokenizer() -> Path:
    return nanocode_home() / "tokenizer"


# ---------------------------------------------------------------------------- data


def training(multihost: bool, join_timeout: float):
    """Around a training command, before its first jax call: glibc set to keep freed memory
    (trainer/malloc.py), then the hosts joined (with --multihost)."""
    malloc.keep_freed_memory()
    return hosts.joined(multihost, join_timeout)


def print_corpus(corpus_dir: Path) -> None:
    table = Table(title=str(corpus_dir))
    for c in ["kind", "split", "shards", "docs", "chars", "MB on disk"]:
        table.add_column(c, justify="left" if c in ("kind", "split") else "right")
    for r in corpus.describe(corpus_dir):
        table.add_row(r["kind"], r["split"], f"{r['shards']:,}", f"{r['docs']:,}", f"{r['chars']:,}",
                      f"{r['bytes'] / 1e6:,.1f}")
    console.print(table)


@data_app.command("local")
def data_local(
    out: Path = typer.Option(None, help="corpus directory [default: $NANOCODE_HOME/corpus/local]"),
    max_chars: int = typer.Option(None, help="cap on total chars, split 1:5 between code and prose [default: all]"),
    seed: int = typer.Option(42, help="which files a cap picks, and the shuffle"),
    doc_chars: int = typer.Option(4000, help="longest document, cut at line boundaries"),
):
    """Build an offline corpus: stdlib .py files (code), /usr/share/doc and docstrings (prose)."""
    out = out or default_corpus()
    t0 = time.perf_counter()
    local_corpus.build(out, max_chars=max_chars, seed=seed, doc_chars=doc_chars)
    console.print(f"built {out} in {time.perf_counter() - t0:.1f}s")
    print_corpus(out)


@data_app.command("download")
def data_download(
    dataset: str = typer.Argument(..., help="HF dataset id (HuggingFaceFW/fineweb-edu) or a local folder"),
    kind: str = typer.Option(..., help="prose or code"),
    column: str = typer.Option("text", help="the text column (`content` in Stack-like code sets)"),
    config: str = typer.Option(None, help="dataset config name (fineweb-edu: sample-10BT) [default: the dataset's default]"),
    data_dir: str = typer.Option(None, help="dataset subfolder (the-stack-dedup: data/python) [default: all of it]"),
    split: str = typer.Option("train"),
    max_docs: int = typer.Option(None, help="train docs to fetch, after the val docs [default: all]"),
    val_docs: int = typer.Option(corpus.ROWS_PER_GROUP, help="the first docs of the stream, kept for val.parquet"),
    out: Path = typer.Option(None, help="corpus directory [default: $NANOCODE_HOME/corpus/hf]"),
):
    """Stream a dataset into parquet shards; run it again to resume or to fetch more."""
    out = out or nanocode_home() / "corpus" / "hf"
    entry = corpus.download(dataset, kind, out, column=column, config=config, split=split,
                            data_dir=data_dir, max_docs=max_docs, val_docs=val_docs)
    end = " (the whole dataset)" if entry["exhausted"] else ""
    console.print(f"{out / kind}: {entry['train']['docs']:,} train docs in {entry['train']['shards']} shards "
                  f"+ {entry['val']['docs']:,} val docs{end}")


@data_app.command("show")
def data_show(corpus_dir: Path = typer.Argument(None, help="[default: $NANOCODE_HOME/corpus/local]")):
    """Kinds, splits, docs and chars of a corpus."""
    print_corpus(corpus_dir or default_corpus())


# ---------------------------------------------------------------------------- tokenizer


@tokenizer_app.command("train")
def tokenizer_train(
    corpus_dir: Path = typer.Option(None, "--corpus", help="corpus directory [default: $NANOCODE_HOME/corpus/local]"),
    out: Path = typer.Option(None, help="where to save it [default: $NANOCODE_HOME/tokenizer]"),
    vocab_size: int = typer.Option(32768, help="including the special tokens"),
    max_chars: int = typer.Option(2_000_000_000, help="stop after this many characters of training text"),
    doc_cap: int = typer.Option(10_000, help="crop each document to this many characters"),
    code_ratio: str = typer.Option("1:5", help="code:prose characters; 0:1 trains a prose-only tokenizer"),
    seed: int = typer.Option(0, help="order in which the two kinds are interleaved"),
):
    """Train the BPE tokenizer on the corpus (rustbpe) and save it for tiktoken."""
    corpus_dir, out = corpus_dir or default_corpus(), out or default_tokenizer()
    ratio = corpus.check_ratio(code_ratio)
    texts = (t[:doc_cap] for t in corpus.mixed_texts(corpus_dir, "train", ratio, seed, max_chars))
    t0 = time.perf_counter()
    tok = Tokenizer.train(texts, vocab_size)
    seconds = time.perf_counter() - t0
    tok.info.update(corpus=str(corpus_dir), code_ratio=code_ratio, max_chars=max_chars, doc_cap=doc_cap,
                    seconds=round(seconds, 2))
    tok.save(out)
    console.print(f"trained vocab {tok.vocab_size:,} on {tok.info['chars']:,} chars in {seconds:.1f}s -> {out}")


@tokenizer_app.command("eval")
def tokenizer_eval_cmd(
    tokenizer: Path = typer.Option(None, help="[default: $NANOCODE_HOME/tokenizer]"),
    baseline: Path = typer.Option(None, help="prose-only tokenizer to compare with [default: $NANOCODE_HOME/tokenizer-prose]"),
    corpus_dir: Path = typer.Option(None, "--corpus", help="adds its validation shards [default: the one it was trained on]"),
    markdown: bool = typer.Option(False, help="print a markdown table"),
):
    """Bytes per token on prose, code, math, non-English and the validation shards."""
    ours = Tokenizer.load(tokenizer or default_tokenizer())
    baseline = baseline or nanocode_home() / "tokenizer-prose"
    base = Tokenizer.load(baseline) if (baseline / "tokenizer.json").exists() else None
    if base is not None and base.vocab_size != ours.vocab_size:
        raise InputError(f"baseline {baseline} has vocab {base.vocab_size:,}, ours {ours.vocab_size:,}: compare equal sizes")
    corpus_dir = corpus_dir or (Path(ours.info["corpus"]) if ours.info.get("corpus") else None)
    rows = tokenizer_eval.compare(ours, base, tokenizer_eval.eval_texts(corpus_dir))
    if markdown:
        print(tokenizer_eval.markdown_table(rows))
        return
    table = Table(title=f"our tokenizer vs a prose-only one, vocab {ours.vocab_size:,}")
    headers, cells = tokenizer_eval.table(rows)
    for c in headers:
        table.add_column(c, justify="left" if c == "text" else "right", no_wrap=True)
    for row in cells:
        table.add_row(*row)
    console.print(table)
    if base is None:
        console.print(f"(no prose-only baseline at {baseline}: train one with "
                      f"`trainer tokenizer train --code-ratio 0:1 --out {baseline}`)")


# ---------------------------------------------------------------------------- run

DTYPE_HELP = ("compute dtype on CPU: float32, or bfloat16 (1.7-1.8x the training tokens/s on CPUs with AMX, "
              "expect it slower on CPUs without; a d3 learned worse in it: bench/RESULTS.md) [default: float32; "
              "GPUs and TPUs train in bfloat16]")


def compute_dtype(dtype: str | None) -> str | None:
    if dtype not in (None, "float32", "bfloat16"):
        raise InputError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    return dtype


@run_app.command("pretrain")
def run_pretrain(
    config: str = typer.Option("d3", help="preset: d3 d6 d12 d20 d24, or dN for any depth N"),
    corpus_dir: Path = typer.Option(None, "--corpus", help="[default: $NANOCODE_HOME/corpus/local]"),
    tokenizer: Path = typer.Option(None, help="[default: $NANOCODE_HOME/tokenizer]; the model takes its vocab"),
    out: Path = typer.Option(None, help="metrics.jsonl and checkpoints/ [default: $NANOCODE_HOME/runs/CONFIG]"),
    checkpoint_dir: str = typer.Option(None, help=CHECKPOINT_DIR_HELP),
    steps: int = typer.Option(None, help="optimizer steps [default: from the param:data ratio]"),
    seq_len: int = typer.Option(None, help="context length [default: the preset's]"),
    device_batch_size: int = typer.Option(None, help="sequences per micro-batch per device [default: the preset's]"),
    total_batch_tokens: int = typer.Option(None, help="tokens per optimizer step [default: the preset's]"),
    eval_every: int = typer.Option(None, help="steps between val evals [default: the preset's]"),
    eval_tokens: int = typer.Option(None, help="val tokens per eval [default: the preset's]"),
    sample_every: int = typer.Option(None, help="steps between samples, 0: none [default: the preset's]"),
    save_every: int = typer.Option(None, help="steps between checkpoints [default: the preset's]"),
    seed: int = typer.Option(None, help="init and data order [default: the preset's]"),
    lr_scale: float = typer.Option(None, help="every learning rate times this (the mixing scalars' too), on top "
                                   "of the batch and width scaling [default: 1]"),
    dtype: str = typer.Option(None, help=DTYPE_HELP),
    resume: bool = typer.Option(False, help="continue from the latest checkpoint in --out"),
    dry_run: bool = typer.Option(False, help="print the plan (params, FLOPs, tokens, memory, time) and exit"),
    multihost: bool = typer.Option(False, help=MULTIHOST_HELP),
    join_timeout: float = typer.Option(300, help="--multihost: seconds to wait for the coordinator and the other hosts"),
    hf_compatible: bool = typer.Option(False, help="train without the parts transformers' NanoChat lacks (x0 "
                                       "mixing, q/k gain), so `trainer export` can write the run"),
):
    """Pretrain the GPT on the corpus; every N steps a checkpoint, val bits-per-byte and samples."""
    with training(multihost, join_timeout):
        import jax

        from trainer import configs, train

        overrides = {k: v for k, v in dict(
            num_steps=steps, seq_len=seq_len, device_batch_size=device_batch_size,
            total_batch_tokens=total_batch_tokens, eval_every=eval_every, eval_tokens=eval_tokens,
            sample_every=sample_every, save_every=save_every, seed=seed, lr_scale=lr_scale,
            compute_dtype=compute_dtype(dtype)).items() if v is not None}
        if hf_compatible:
            overrides.update(x0_mix=False, qk_gain=1.0)
        tokenizer = tokenizer or default_tokenizer()
        if not dry_run or (tokenizer / "tokenizer.json").exists():
            overrides["vocab_size"] = Tokenizer.load(tokenizer).vocab_size
        cfg = configs.for_platform(configs.get_config(config, **overrides), jax.default_backend())
        if dry_run:
            print_plan(cfg, jax.device_count())
            return
        paths = train.RunPaths(corpus=corpus_dir or default_corpus(), tokenizer=tokenizer,
                               out=out or nanocode_home() / "runs" / cfg.name, checkpoints=checkpoint_dir)
        train.train(cfg, paths, resume=resume, log=console.print)


def finetune_options(
    from_: str = typer.Option(..., "--from", help="the run to start from: its directory (checkpoints/ or "
                              "checkpoints.url, and tokenizer/), or its checkpoints' directory or URL"),
    out: Path = typer.Option(..., help="this run's directory (metrics.jsonl, checkpoints/, tokenizer/)"),
    checkpoint_dir: str = typer.Option(None, help=CHECKPOINT_DIR_HELP),
    num_steps: int = typer.Option(None, "--steps", help="optimizer steps [default: one epoch]"),
    seq_len: int = typer.Option(None, help="context length [default: the model's]; RoPE lets it grow"),
    device_batch_size: int = typer.Option(None, help="rows (SFT) or pairs (DPO) per micro-batch per device [default: up to 8]"),
    lr_scale: float = typer.Option(None, help="every learning rate times this [default: 0.8 for sft, 0.1 for dpo]"),
    val_fraction: float = typer.Option(0.05, help="share of rows held out for validation (by a hash of their id)"),
    prompt: str = typer.Option(None, help="system prompt variant, nanocode/prompts/VARIANT.j2: system (the rows' "
                               "own) or compact (tiny contexts) [default: the --from run's, else system]"),
    eval_every: int = typer.Option(None, help="steps between val evals [default: a quarter of the run]"),
    save_every: int = typer.Option(None, help="steps between checkpoints [default: half the run]"),
    seed: int = typer.Option(0),
    compute_dtype: str = typer.Option(None, "--dtype", help=DTYPE_HELP),
    resume: bool = typer.Option(False, help="continue from the latest checkpoint in --out"),
    multihost: bool = typer.Option(False, help=MULTIHOST_HELP),
    join_timeout: float = typer.Option(300, help="--multihost: seconds to wait for the coordinator and the other hosts"),
):
    """The options every fine-tuning stage takes: a signature for finetune_command, never called."""


def finetune_command(fn):
    """Register run_NAME as `trainer run NAME`: its own options, then finetune_options', all as keywords."""
    own = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
    fn.__signature__ = inspect.Signature(own + list(inspect.signature(finetune_options).parameters.values()))
    return run_app.command(fn.__name__.removeprefix("run_"))(fn)


@finetune_command
def run_sft(
    data: list[str] = typer.Option(..., help="conversations: factory:VERSION, a .jsonl/.parquet file, a dataset "
                                   "folder or a Hub id, each SOURCE[@WEIGHT]; repeat to mix"),
    overflow: str = typer.Option("drop", help="conversations longer than the context: drop or truncate"),
    **common,
):
    """Supervised fine-tuning on conversations: loss on the assistant's tokens only."""
    with training(common.pop("multihost"), common.pop("join_timeout")):
        from trainer import sft

        compute_dtype(common["compute_dtype"])
        sft.run(data=data, overflow=overflow, log=console.print, **common)


@finetune_command
def run_dpo(
    data: list[str] = typer.Option(..., help="preference pairs (prompt, chosen, rejected): factory:VERSION, a "
                                   ".jsonl/.parquet file, a dataset folder or a Hub id, each SOURCE[@WEIGHT]"),
    val_data: list[str] = typer.Option(None, help="held-out conversations whose bpb shows SFT skills did not "
                                       "regress [default: the held-out pairs' prompt + chosen]"),
    beta: float = typer.Option(0.1), loss: str = typer.Option("sigmoid", help="sigmoid or ipo"),
    reference: str = typer.Option("auto", help="cached: reference log-probs computed once before training; "
                                  "live: the reference model runs in every step; auto: cached when the run sees "
                                  "every pair at least once, else live"),
    **common,
):
    """Direct preference optimization on chosen/rejected pairs against the frozen --from model."""
    with training(common.pop("multihost"), common.pop("join_timeout")):
        from trainer import dpo

        compute_dtype(common["compute_dtype"])
        dpo.run(data=data, val_data=val_data, beta=beta, loss=loss, reference=reference, log=console.print,
                **common)


@app.command("serve")
def serve(
    checkpoint: str = typer.Option(..., help="a run directory (checkpoints/ or checkpoints.url, and tokenizer/), "
                                   "or a checkpoints directory or URL (file:///path, gs://bucket/path)"),
    host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
    model_name: str = typer.Option(None, help="the model id clients send [default: the run directory's name]"),
    child: bool = typer.Option(False, "--child", hidden=True,
                               help="for a parent process: say {url, model} as one JSON line when "
                                    "ready, serve quietly, stop when stdin closes"),
):
    """An OpenAI-compatible server (/v1/chat/completions, /v1/models) for a trained checkpoint."""
    from trainer import server

    if child:
        server.serve_for_parent(checkpoint, model_name)
    else:
        server.serve(checkpoint, host=host, port=port, model_name=model_name, log=console.print)


@app.command("export")
def export_cmd(
    run: str = typer.Argument(..., help="a run directory (checkpoints/ and tokenizer/) or its checkpoints' directory or URL"),
    out: Path = typer.Argument(..., help="the model folder to write (must not exist, or be empty)"),
    step: int = typer.Option(None, help="which checkpoint [default: the latest]"),
    push: str = typer.Option(None, help="then upload it to this Hub model repo, USER/NAME [default: no upload]"),
    private: bool = typer.Option(False, help="--push: create the repo private"),
):
    """Write a run as a Hugging Face model folder (transformers' NanoChat, tokenizer, chat template, card)."""
    from trainer import export

    export.export(run, out, step=step, repo=push, log=console.print)
    if push:
        console.print(f"pushed {out} -> {export.push(out, push, private=private)}")


def print_plan(cfg, n_devices: int) -> None:
    from trainer.configs import describe
    from trainer.train import device_peak_flops

    info = describe(cfg, n_devices)
    # fp32 master weights + Adam's two moments (Muon keeps one: a bound from above), grads, plus
    # the fp32 logits of one micro-batch and their gradient: the usual dominant activations
    state_bytes = info["params"] * 4 * 4
    logits_bytes = 2 * 4 * cfg.device_batch_size * cfg.model.seq_len * cfg.model.vocab_size
    peak = device_peak_flops(cfg.model.compute_dtype) * n_devices
    table = Table(title=f"{cfg.name}: plan on {n_devices} device(s)", show_header=False)
    rows = [("params", f"{info['params']:,} ({info['matmul_params']:,} in matmuls)"),
            ("shape", f"depth {info['depth']}, d_model {info['d_model']}, {info['heads']} heads of "
                      f"{info['head_dim']}, seq {info['seq_len']}, vocab {info['vocab']:,}"),
            ("FLOPs/token", f"{info['flops_per_token']:.3g}"),
            ("tokens", f"{info['tokens']:,} ({info['tokens_per_param']:.1f} per matmul param)"),
            ("steps", f"{info['steps']:,} x {info['total_batch_tokens']:,} tokens, grad accum {info['grad_accum']}"),
            ("memory", f"~{(state_bytes + logits_bytes) / 2**30:.2f} GiB per device (state {state_bytes / 2**30:.2f}, "
                       f"logits {logits_bytes / 2**30:.2f}) + activations"),
            ("time", f"~{info['total_flops'] / (0.4 * peak) / 3600:.2f} h at 40% MFU of "
                     f"{peak / 1e12:.3g} TFLOP/s ({cfg.model.compute_dtype})")]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()
