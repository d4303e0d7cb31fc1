"""Parse failures of a real small model with and without structured output: SmolLM2-135M-Instruct
on llama-cpp-python's server (tests/llama_server.py), answering the factory's own first-attempt
prompts (the generator's, through the request layer and the writers' parser, as a build asks).

    .venv/bin/python bench/real_model.py [--coding 4] [--scenarios 2] [--max-tokens 384]

Each prompt is asked in every mode (one fresh store each, so no reply comes from the cache):
    off          plain JSON asked for in the prompt, the tolerant parser
    json_object  response_format {"type": "json_object"}: the server's grammar allows any JSON
    auto         the factory's default: the reply's JSON schema, in OpenAI's spelling first,
                 which llama-cpp-python refuses (a 500), then in its own, {"type":
                 "json_object", "schema": ...}, where the server makes the schema a grammar
and the OpenAI spelling is sent once to show what the server says to it. Printed per mode:
replies parsed, not parsed (ParseError), stopped for length twice, other failures, seconds,
and the parse-failure rate (everything not parsed, over the prompts), then the ratio of the
plain rate to the schema rate.
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from factory.backends import BackendConfig  # noqa: E402

from factory.requester import Requester, RequestFailed  # noqa: E402
from factory.build import plan  # noqa: E402
from factory.config import load_config, make  # noqa: E402
from factory.convert import CONVERTERS  # noqa: E402
from factory.loop import Context  # noqa: E402
from factory.sources import SOURCES  # noqa: E402
from factory.store import Store  # noqa: E402
from factory.writers import ParseError, Prompts  # noqa: E402
from nanocode.spec import load_soul, load_tools  # noqa: E402
from tests.llama_server import LlamaServer  # noqa: E402

CONFIG = REPO / "factory" / "configs" / "default.yaml"


def drafts(n_coding: int, n_scenarios: int, soul, spec) -> list[tuple[str, dict]]:
    """(input id, converted draft) of the default config's first coding seeds and scenarios."""
    config = load_config(CONFIG)
    seeds = make("source", SOURCES, config.source, config.path).seeds()
    coding = [s for s in seeds if "converter" not in s][:n_coding]
    scenarios = [s for s in seeds if s.get("source") == "scenarios"][:n_scenarios]
    default = make("converter", CONVERTERS, config.converter, config.path)
    out = []
    for seed in coding + scenarios:
        converter = make("converter", CONVERTERS, seed["converter"], "seed") if "converter" in seed else default
        out.append((seed["input_id"], converter.convert(seed, soul, spec)))
    return out


async def ask(mode: str, base_url: str, model: str, items, soul, spec, max_tokens: int, home: Path) -> dict:
    cfg = BackendConfig(name="openai", model=model, base_url=base_url, concurrency=1, timeout=600,
                        max_retries=1, structured=mode)
    config = load_config(CONFIG)
    writer = plan(config, cfg)[0].generator
    writer.max_tokens = max_tokens
    store = Store(home / mode)
    requester = Requester(cfg, store, 1)
    counts, t0 = {"parsed": 0, "not parsed": 0, "length twice": 0, "other failure": 0}, time.perf_counter()
    for input_id, draft in items:
        ctx = Context(soul, spec, Prompts(soul, spec), requester, {}, input_id=input_id, attempt=1)
        try:
            await writer.write(draft, None, [], ctx)
            counts["parsed"] += 1
        except ParseError:
            counts["not parsed"] += 1
        except RequestFailed as e:
            counts["length twice" if "length twice" in str(e) else "other failure"] += 1
            if "length twice" not in str(e):
                print(f"  {mode} {input_id}: {e}")
    store.close()
    return {**counts, "seconds": round(time.perf_counter() - t0, 1), "tokens out": requester.stats.tokens_out,
            "sent as": requester.fallback_note or mode,
            "failure rate": round(1 - counts["parsed"] / len(items), 3)}


def openai_spelling(base_url: str, model: str) -> str:
    import httpx

    r = httpx.post(f"{base_url}/chat/completions", timeout=120, json={
        "model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}})
    return f"{r.status_code}: {' '.join(r.text.split())[:300]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coding", type=int, default=4, help="coding seeds (the slots shape)")
    ap.add_argument("--scenarios", type=int, default=2, help="scenario specs (the steps shape)")
    ap.add_argument("--max-tokens", type=int, default=384, help="per reply (a length stop asks again with twice)")
    ap.add_argument("--modes", default="off,json_object,auto")
    args = ap.parse_args()
    soul, spec = load_soul(None), load_tools(None)
    items = drafts(args.coding, args.scenarios, soul, spec)
    with LlamaServer(n_ctx=8192) as server, tempfile.TemporaryDirectory() as home:
        print(f"OpenAI's json_schema spelling -> {openai_spelling(server.base_url, server.model)}")
        results = {}
        for mode in args.modes.split(","):
            results[mode] = r = asyncio.run(ask(mode, server.base_url, server.model, items, soul, spec,
                                                args.max_tokens, Path(home)))
            print(f"{mode:12s} {len(items)} prompts: " + ", ".join(f"{k} {v}" for k, v in r.items()), flush=True)
    if "off" in results and "auto" in results:
        plain, schema = results["off"]["failure rate"], results["auto"]["failure rate"]
        print(f"parse-failure rate: plain {plain:.0%}, schema {schema:.0%}, ratio "
              f"{plain / schema:.2f}" if schema else f"parse-failure rate: plain {plain:.0%}, schema 0%")


if __name__ == "__main__":
    main()
