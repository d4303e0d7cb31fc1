"""`factory build`: config + SOUL + tool spec + seeds -> one immutable, numbered store version.

`build()` takes the config as a path or a config.BuildConfig. Identity: a build's fingerprint
hashes the SOUL, the tool spec, the data-relevant config (stages and their settings, the
backend's kind and model; not concurrency, timeouts, retries, URLs or keys), the inputs (file
bytes, column mapping, --limit) and the code version (package version + hash of factory/*.py,
prompts and the modules of your own `module:Class` stages). Then:
  - a finished version with this fingerprint: "up to date", nothing runs, no LLM call
    (`--new` makes a new version anyway; its LLM calls are all served by the cache);
  - an unfinished one (killed, or backend failures): resumed, skipping the inputs its
    committed chunks hold;
  - none: a new version.
  - `--retry-rejected` with a finished one: a new version holding its rows, except the inputs
    it rejected at stage `generate` (a call that could not succeed then: too long a prompt, a
    reply stopped for length twice), which run again.
Before the first call, one request checks each endpoint (backends.check_endpoint): of several
(`base_url` a list, factory/endpoints.py), one that does not answer is a warning line and starts
out of the pool; none answering is one error line. The summary has each endpoint's figures.
`--ray auto|ADDRESS` runs the stages' CPU work (conversion, deterministic critics, replay) on a
Ray cluster (factory/distributed.py); model calls and every commit stay here, in this process.
Tool calls (conversion, scenario expansion and grounding, replay) run shell commands in the sandbox
(agent/sandbox.py); `unsafe_bash` (--unsafe-bash) runs them as the user, and is identity.
Offline (no backend), stages that need a model fall back: the generator hands on the
converter's draft, the reviser is the rule reviser, a critic that needs one (the LLM judge) is
skipped. The summary says which stages ran without a model.
"""

import asyncio
import hashlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console

from factory.backends import BackendConfig, check_endpoint
from factory.config import FACTORY, BuildConfig, construct, load_config, make, stage_entry
from factory.convert import CONVERTERS
from factory.critics import CRITICS
from factory.distributed import WorkerLost
from factory.dedup import screen
from factory.loop import Context, Stages, entry_key, run_input
from factory.progress import Counts, Progress, facts_table
from factory.replay import ToolReplay, replay_figures
from factory.requester import Requester, RequestFailed, run_closing
from factory.sources import SOURCES
from factory.store import Store
from factory.writers import GENERATORS, REVISERS, Prompts
from nanocode.common import InputError, version
from nanocode.spec import load_soul, load_tools


OFFLINE_WORKERS = 4  # inputs at once without a model: conversion and replay overlap their shell runs


def code_version(stages=()) -> str:
    h = hashlib.sha256()
    own = {sys.modules[type(s).__module__] for s in stages if not type(s).__module__.startswith("factory.")}
    files = sorted(FACTORY.glob("*.py")) + sorted((FACTORY / "prompts").glob("*.j2"))
    for path in files + sorted(Path(m.__file__) for m in own if getattr(m, "__file__", None)):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"nanocode {version('nanocode', missing='0')} factory {h.hexdigest()[:12]}"


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def plan(config, backend: BackendConfig):
    """Build every stage the config names (InputError on unknown names or settings). Offline, a
    stage that needs a model falls back (the generator to the converter's draft, the reviser to
    the rules) or, a critic, is skipped. Returns (stages, the effective config, notes on stages
    without a model)."""
    where, offline = config.path, backend.name == "offline"
    converter = stage_entry("converter", config.converter, where)
    notes = [f"converter {converter['name']}"]
    critics = [stage_entry("critic", c, where) for c in config.critics]
    critics = [(c, make("critic", CRITICS, c, where)) for c in critics]
    if offline:
        notes += [f"{c['name']} skipped (no model)" for c, s in critics if s.needs_model]
        critics = [(c, s) for c, s in critics if not s.needs_model]
    writers = {}
    for kind, registry, fallback in (("generator", GENERATORS, "converter"), ("reviser", REVISERS, "rules")):
        entry = stage_entry(kind, getattr(config, kind), where)
        writer = make(kind, registry, entry, where)
        if offline and writer.needs_model:
            entry, writer = {"name": fallback}, registry[fallback]()
        if not writer.needs_model:
            notes.append(f"{kind} {entry['name']}")
        writers[kind] = entry, writer
    notes += [f"critic {c['name']}" for c, s in critics if not s.needs_model]
    stages = Stages(converter=make("converter", CONVERTERS, converter, where), generator=writers["generator"][1],
                    critics=[s for _, s in critics], reviser=writers["reviser"][1], max_rounds=config.max_rounds,
                    replay=None if config.replay is None else construct("replay", ToolReplay, config.replay, where))
    effective = {"source": config.source, "converter": converter, "generator": writers["generator"][0],
                 "critics": [c for c, _ in critics], "reviser": writers["reviser"][0], "max_rounds": config.max_rounds,
                 "dedup": config.dedup, "replay": config.replay, "backend": backend.fingerprint()}
    return stages, effective, notes


def reply_figures(ctx, requester) -> dict:
    """How the writers' model replies parsed (this run's; none offline) and how JSON was asked for."""
    if requester is None:
        return {}
    n, unparsed = ctx.replies["parsed"] + ctx.replies["unparsed"], ctx.replies["unparsed"]
    return {"writer replies": n, "parse failure rate": round(unparsed / max(1, n), 4),
            "structured output": requester.fallback_note or {"auto": "json_schema (auto)"}.get(requester.cfg.structured,
                                                                                          requester.cfg.structured)}


def models_of(stages, backend: BackendConfig) -> dict:
    label = lambda s, rule: f"{backend.name}:{backend.model}" if s.needs_model else rule  # noqa: E731
    judge = [c for c in stages.critics if c.needs_model]
    return {"generator": label(stages.generator, "converter draft"),
            "reviser": label(stages.reviser, "rules"),
            "critic": label(judge[0], "") if judge else "rules only"}


def build(soul=None, tools=None, config=None, backend_overrides=None, limit=None, new=False,
          retry_rejected=False, unsafe_bash=False, ray=None, console=None) -> dict:
    """Make (or resume, or find up to date, or retry the rejects of) a version; returns its summary."""
    console = console or Console(highlight=False)
    if new and retry_rejected:
        raise InputError("--new and --retry-rejected: pick one (--retry-rejected keeps the rows that passed)")
    soul, spec = load_soul(soul), load_tools(tools)
    config = config if isinstance(config, BuildConfig) else load_config(config)
    settings = {**(config.backend if isinstance(config.backend, dict) else {"name": config.backend}),
                **{k: v for k, v in (backend_overrides or {}).items() if v is not None}}
    if (settings.get("base_url") or settings.get("model")) and settings.get("name", "offline") == "offline":
        settings["name"] = "openai"  # a server or model alone means an OpenAI-compatible server
    backend = construct("backend", BackendConfig, settings, config.path)
    stages, effective, notes = plan(config, backend)
    source = make("source", SOURCES, config.source, config.path)
    seeds = source.seeds()[:limit]  # limit None: all
    screened = screen(seeds, dedup=config.dedup)  # dedup + decontamination: marked seeds become rejects
    own = {entry_key(s["converter"]): (s["converter"], s["source"]) for s in seeds if "converter" in s}
    stages.converters = {key: make("converter", CONVERTERS, entry, f"source {label}")
                         for key, (entry, label) in own.items()}  # a source's own converter (scenarios, smoltalk)
    for stage in (stages.converter, *stages.converters.values(), stages.replay):
        if hasattr(stage, "unsafe_bash"):  # the stages that run tool calls
            stage.unsafe_bash = unsafe_bash
    effective["unsafe_bash"] = unsafe_bash
    inputs_sha = _sha([source.sha256, source.columns, limit])
    # the seed file's path is not identity (its bytes are, in inputs_sha256): a build run from
    # another directory is still up to date
    where_free = {**effective, "source": {k: v for k, v in stage_entry("source", config.source, config.path).items()
                                          if k != "path"}}
    used = [source, stages.converter, stages.generator, stages.reviser, *stages.critics, *stages.converters.values()]
    meta = {"soul_sha256": soul.sha256, "tools_sha256": spec.sha256, "config_sha256": _sha(where_free),
            "inputs_sha256": inputs_sha, "code_version": code_version(used), "config": effective}
    meta["fingerprint"] = _sha({k: meta[k] for k in ("soul_sha256", "tools_sha256", "config_sha256",
                                                     "inputs_sha256", "code_version")})
    prompts = Prompts(soul, spec)
    for stage in [stages.generator, stages.reviser, *stages.critics]:
        template = getattr(stage, "prompt", None) or getattr(stage, "default_prompt", None)
        if stage.needs_model and template:  # template errors surface now, not mid-build
            prompts.template(template)

    store = Store()
    try:
        store.remove_orphans()
        found = store.find(meta["fingerprint"])
        retry = found["version"] if retry_rejected and found and found["status"] == "done" else None
        if retry:  # the finished version whose generate rejects run again, if it has any
            rejected = f"SELECT input_id FROM {store.relation('rejects', retry)} WHERE stage = 'generate'"
            retry = retry if store.all(rejected) else None
        if found and found["status"] == "done" and not new and not retry:
            console.print(f"up to date: version {found['version']} was built from the same SOUL, tools, "
                          "config, inputs and code (--new builds another" +
                          ("; it has no generate rejects to retry)" if retry_rejected else ")"))
            return {"version": found["version"], "up_to_date": True, **found["summary"]}
        dead = check_endpoint(backend) if backend.name != "offline" else {}  # a wrong URL, key or model: one line now
        for why in dead.values():
            console.print(f"warning: {why}; the build goes on without it, and tries it again later",
                          markup=False, soft_wrap=True)
        cluster = None
        if ray is not None:  # an address that does not answer: one line, before any version
            from factory.distributed import Cluster

            cluster = Cluster(ray, soul, spec)
            stages = cluster.wrap(stages)
        resumed = found is not None and found["status"] == "building" and not new
        v = found["version"] if resumed else store.create_version(meta)
        if retry:
            store.copy_version(retry, v, f"input_id NOT IN ({rejected})")
        done = store.done_inputs(v)
        todo = [s for s in seeds if s["input_id"] not in done]
        if resumed or retry:
            what = f"version {v} = version {retry}, its generate rejects retried" if retry else f"resuming version {v}"
            console.print(f"{what}: {len(done)} inputs done, {len(todo)} to go")
        requester = None if backend.name == "offline" else Requester(backend, store, v)
        for url, why in dead.items():
            requester.pool.take_out_url(url, why)
        workers = OFFLINE_WORKERS if requester is None else 2 * requester.limit.ceiling
        counts = Counts(total=len(seeds), before=len(seeds) - len(todo), stored=len(seeds) - len(todo))
        ctx = Context(soul, spec, prompts, requester, models_of(stages, backend),
                      verdict=lambda line: setattr(counts, "verdict", line))
        start = time.monotonic()
        with Progress(console, v, counts, requester) as progress:
            error = run_closing(_run(todo, stages, ctx, store, v, config, counts, progress,
                                     workers=max(workers, 2 * cluster.cpus) if cluster else workers), requester)
            progress.update(force=True)
        summary = {"version": v, **store.figures(v), **replay_figures(store, v), "seconds": round(time.monotonic() - start, 2),
                   "stages without a model": ", ".join(notes) or "none", "models": ctx.models, **screened,
                   **({"retried from version": retry} if retry else {}), **reply_figures(ctx, requester),
                   **({"endpoints": requester.pool.figures()} if requester else {}),
                   **({"ray": cluster.figures()} if cluster else {})}
        if counts.failed:
            raise InputError(f"{counts.failed} input(s) failed on the backend ({error}); version {v} is "
                             "incomplete: run the same command again to finish it")
        store.finish(v, summary)
        console.print(facts_table(f"version {v}", {k: val for k, val in summary.items() if k != "version"}))
        return summary
    finally:
        store.close()


async def _run(todo, stages, ctx, store, v, config, counts, progress, workers) -> str | None:
    """Run the inputs with `workers` coroutines. Finished inputs commit as one chunk when
    `chunk_size` of them wait, or when `commit_seconds` passed since the last commit (a ticker
    checks every second): with a slow model rows reach the store all the same. When the run
    ends or is stopped (Ctrl-C, an error), what finished commits too. Returns the last backend
    error, if any input failed on it."""
    buffer, pending, last_error = {"sft": [], "pairs": [], "rejects": []}, [], None
    # a thread per input in flight (its blocking step: shell runs, or waiting on a Ray task) and the cache writer
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers + 2))
    seeds, last_commit = iter(todo), time.monotonic()

    def commit():  # no await inside: no other coroutine touches the buffer meanwhile
        nonlocal last_commit
        rows, done = {kind: list(r) for kind, r in buffer.items()}, list(pending)
        for r in buffer.values():
            r.clear()
        pending.clear()  # before the write: a failing store is not asked twice for the same chunk
        last_commit = time.monotonic()
        store.commit_chunk(v, rows, done)
        counts.stored += len(done)

    async def tick():
        while True:
            await asyncio.sleep(min(1.0, config.commit_seconds))
            if pending and time.monotonic() - last_commit >= config.commit_seconds:
                commit()
            progress.update()

    async def worker():
        nonlocal last_error
        for seed in seeds:  # a shared iterator: each seed goes to exactly one worker
            if counts.failed >= 10 and counts.failed > counts.done:
                return  # the backend fails more often than not: stop spending, report it
            try:
                out = await run_input(seed, stages, ctx)
            except (RequestFailed, WorkerLost) as e:  # left undone: a rerun retries it
                counts.failed, last_error = counts.failed + 1, str(e)
                continue
            if "sft" in out:
                buffer["sft"].append(out["sft"])
                counts.sft, counts.revisions = counts.sft + 1, counts.revisions + out["sft"]["revisions"]
                if out["pair"]:
                    buffer["pairs"].append(out["pair"])
                    counts.pairs += 1
            else:
                buffer["rejects"].append(out["reject"])
                counts.rejects += 1
            pending.append((seed["input_id"], "sft" if "sft" in out else "reject"))
            counts.done += 1
            if len(pending) >= config.chunk_size:
                commit()
            progress.update()

    ticker = asyncio.ensure_future(tick())
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(workers, len(todo))))))
    finally:
        ticker.cancel()
        if pending:  # the tail, or what finished before a stop: kept, not redone
            commit()
    if not store.one("SELECT count(*) FROM parts WHERE version = ?", v)[0]:
        commit()  # an empty chunk, so that every version has parts to query
    return last_error
