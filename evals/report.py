"""`evals report RUN`: one self-contained HTML page for a run.

RUN is a stage directory or a root holding pretrain/ sft/ dpo/ (see evals/runs.py). Written:
    RUN/report.html          plots embedded as base64 PNG: opens offline, mails as one file
The page is built block by block (heading, text, table, plot, conversation), each written as HTML when it
is added. Each section is built on its own: a missing stage, an empty or unreadable eval result, a
checkpoint whose tokenizer does not match, or a stage without metrics leaves that section out and adds a
line to "what is missing" at the top.
"""

import base64
import io
import json
import platform
import subprocess
import time
from html import escape
from pathlib import Path

from evals import runs
from nanocode.common import InputError, version, write_text_atomic
from nanocode.paths import CHECKOUT, ROOT
from nanocode.record import call_text


class Page:
    def __init__(self):
        self.body: list[str] = []
        self.missing: list[str] = []

    def h2(self, t): self.body.append(f"<h2>{escape(t)}</h2>")
    def h3(self, t): self.body.append(f"<h3>{escape(t)}</h3>")
    def p(self, t): self.body.append(f"<p>{escape(t)}</p>")
    def pre(self, t): self.body.append(f"<pre>{escape(t)}</pre>")

    def table(self, headers, rows):
        self.body.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>" +
                         "".join("<tr>" + "".join(f"<td>{escape(cell(c))}</td>" for c in r) + "</tr>" for r in rows)
                         + "</table>")

    def plot(self, name, png):
        self.body.append(f"<img alt='{escape(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")

    def conversation(self, title, messages):
        self.body.append(f"<h4>{escape(title)}</h4>")
        for m in messages:
            role = m["role"]
            body = escape(m.get("content") or "")[:3000]
            calls = "".join(f"<div class='call'>→ {escape(call_text(c))}</div>" for c in m.get("tool_calls") or [])
            label = role + (f" · {m['name']}" if m.get("name") else "")
            self.body.append(f"<div class='msg {escape(role)}'><div class='role'>{escape(label)}</div>"
                             f"<div style='white-space:pre-wrap'>{body}</div>{calls}</div>")


def cell(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def pct(v) -> str:
    return "n/a" if v is None else f"{v:.1%}"


# ----------------------------------------------------------------------------- plots


def _figure(series: dict[str, tuple[list, list]], title: str, ylabel: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label, marker="o" if len(x) < 30 else None, markersize=3)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# ----------------------------------------------------------------------------- sections


def _versions(page: Page) -> None:
    commit = f"{version()} (installed)"  # a wheel: site-packages is no git work tree
    try:
        if CHECKOUT:
            commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                                    text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        commit = "unknown"
    page.h2("versions")
    packages = [(n, version(n, "not installed")) for n in ("jax", "numpy", "orbax-checkpoint", "tiktoken")]
    page.table(["what", "version"], [("nanocode", commit), ("python", platform.python_version()), *packages,
                                     ("machine", f"{platform.machine()} {platform.system()}")])


def _stage_config(page: Page, name: str, d: Path) -> dict | None:
    """The stage's config table; returns its checkpoint meta (or None)."""
    from trainer.checkpoint import find_checkpoints

    start = next((e for e in reversed(runs.read_metrics(d)) if e.get("event") == "start"), None)
    meta = None
    try:
        ckpt = find_checkpoints(d)
        _, meta = ckpt.read_meta()
        ckpt.close()
    except InputError as e:
        page.missing.append(f"{name}: {e}")
    except Exception as e:  # a corrupt checkpoint must not stop the report
        page.missing.append(f"{name}: checkpoint unreadable ({type(e).__name__}: {e})")
    rows = [("directory", str(d))]
    if start:
        info = start.get("config", {})
        rows += [(k, info[k]) for k in ("name", "params", "depth", "d_model", "heads", "seq_len", "vocab",
                                         "steps", "total_batch_tokens", "tokens") if k in info]
        rows += [("devices", start.get("devices")), ("compile s", start.get("compile_s"))]
    else:
        page.missing.append(f"{name}: no metrics.jsonl (or no start event in it)")
    if meta:
        rows += [("checkpoint step", meta.get("step")), ("started from", meta.get("from") or "scratch"),
                 ("data fingerprint", json.dumps(meta.get("data") or {}))]
    page.h3(f"{name}")
    page.table(["setting", "value"], rows)
    return meta


def _curves(page: Page, name: str, d: Path) -> None:
    events = runs.read_metrics(d)
    train = [e for e in events if e.get("event") == "train"]
    val = [e for e in events if e.get("event") == "val"]
    if not train and not val:
        return
    page.h3(f"{name}: curves")
    if train:
        series = {"loss": ([e["step"] for e in train], [e["loss"] for e in train])}
        page.plot(f"{name}_loss.png", _figure(series, f"{name}: training loss", "loss"))
    val_keys = sorted({k for e in val for k in e if k.startswith("val_")})
    for tag, title, ylabel in (("bpb", "validation bits per byte", "bpb"), ("val", "validation metrics", "value")):
        if keys := [k for k in val_keys if ("bpb" in k) == (tag == "bpb")]:
            series = {k: ([e["step"] for e in val if k in e], [e[k] for e in val if k in e]) for k in keys}
            page.plot(f"{name}_{tag}.png", _figure(series, f"{name}: {title}", ylabel))
    if train:
        steady = train[1:] or train  # the first step carries warm-up costs
        med = lambda k: sorted(e[k] for e in steady)[len(steady) // 2]  # noqa: E731
        last = val[-1] if val else {}
        page.table(["stage", "steps", "final loss", "median tokens/s", "median MFU", "median step ms",
                    *val_keys],
                   [(name, train[-1]["step"], train[-1]["loss"], med("tokens_per_s"), pct(med("mfu")),
                     1000 * med("dt"), *[last.get(k) for k in val_keys])])
    if samples := [e for e in events if e.get("event") == "sample"]:
        last_step = samples[-1]["step"]
        page.p(f"samples at step {last_step}:")
        page.pre("\n---\n".join(e["text"] for e in samples if e["step"] == last_step))


def _tokenizer(page: Page, run_dir: Path, meta: dict | None) -> None:
    from trainer import tokenizer_eval
    from trainer.tokenizer import Tokenizer
    from trainer.checkpoint import tokenizer_dir

    page.h2("tokenizer")
    try:
        tok = Tokenizer.load(tdir := tokenizer_dir(run_dir))
    except InputError as e:
        page.missing.append(f"tokenizer: {e}")
        page.p("no tokenizer beside the checkpoint.")
        return
    rows = [("directory", str(tdir)), ("vocab", tok.vocab_size), ("fingerprint", tok.fingerprint()[:16])]
    rows += [(k, tok.info[k]) for k in ("chars", "code_ratio", "max_chars", "seconds") if k in tok.info]
    if meta:
        ok = meta["fingerprint"].get("tokenizer") == tok.fingerprint()
        rows.append(("matches the checkpoint", "yes" if ok else "NO"))
        if not ok:
            page.missing.append(f"tokenizer: {tdir} is not the tokenizer {run_dir}'s checkpoint was trained with "
                                "(model evals on this run are not meaningful)")
    page.table(["", ""], rows)
    page.p("bytes per token on texts written for this project (higher is better):")
    page.table(*tokenizer_eval.table(tokenizer_eval.compare(tok, None, tokenizer_eval.eval_texts())))


def _dataset(page: Page, metas: dict) -> None:
    page.h2("dataset")
    fps = [(n, m.get("data")) for n, m in metas.items() if m and m.get("data")]
    if fps:
        page.table(["stage", "data fingerprint (from the checkpoint)"], [(n, json.dumps(fp)) for n, fp in fps])
    try:
        from factory.store import Store

        store = Store(read_only=True)
    except (InputError, Exception) as e:  # no store on this machine: say so, go on
        page.p(f"no factory store to summarize ({e}).")
        return
    try:
        done = [v for v in store.versions() if v["status"] == "done"]
        if not done:
            page.p(f"the factory store at {store.path} has no finished version.")
            return
        used = sorted({int(src.split("@")[0].split(":")[1]) for _, fp in fps for src in fp.get("sources", [])
                       if src.startswith("factory:")})
        known = {v["version"]: v for v in done}
        if used and used[-1] in known:
            v = known[used[-1]]
            page.p(f"factory store {store.path}: the runs trained on version(s) {', '.join(map(str, used))}; "
                   f"v{v['version']}:")
        else:
            v = done[-1]
            page.p(f"factory store {store.path}: {len(done)} finished version(s). The checkpoints name no factory "
                   f"version they trained on, so this is the latest: v{v['version']}.")
        page.table(["figure", "value"], [(k, json.dumps(val) if isinstance(val, dict) else val)
                                          for k, val in store.figures(v["version"]).items()])
    finally:
        store.close()


def _eval_tables(page: Page, results: dict) -> None:
    page.h2("evals")
    if not results:
        page.p("no eval results yet (RUN/evals/*.json): run `evals bpb|copy|core|agentic|soul|preference RUN`.")
        page.missing.append("evals: no results in evals/")
        return
    try:
        if lines := abilities(results):
            page.body.append("<div class='can'><b>what this model can do</b><ul>" +
                             "".join(f"<li>{escape(x)}</li>" for x in lines) + "</ul></div>")
    except Exception as e:  # results from another version of this code
        page.missing.append(f"what this model can do: cannot compute it ({type(e).__name__}: {e})")
    for name, r in results.items():
        try:
            _one_eval(page, name, r)
        except Exception as e:  # a result from another version of this code: name it, go on
            page.missing.append(f"evals/{name}.json: cannot show it ({type(e).__name__}: {e})")


def result_table(kind: str, r: dict) -> tuple[list[str], list[tuple]] | None:
    """An eval result as (headers, rows), what `evals KIND` prints and the report shows; None for
    a kind this code does not know."""
    if kind == "bpb":
        return ["text", "bits per byte", "tokens"], [(k, v, r["tokens"].get(k)) for k, v in r["bpb"].items()]
    if kind == "copy":
        return (["showing", "loss (nats a token)", "argmax right"],
                [("first (unguessable)", r["first_loss"], pct(r["first_accuracy"])),
                 ("second (a copy)", r["second_loss"], pct(r["second_accuracy"]))])
    if kind == "core":
        return (["task", "type", "shots", "examples", "accuracy", "baseline", "centered"],
                [(t["task"], t["type"], t["shots"], t["examples"], t["accuracy"], t["baseline"], t["centered"])
                 for t in r["tasks"]] + [("CORE", "", "", "", "", "", r["core"])])
    if kind == "agentic":
        s = r["summary"]
        return (["pass rate", "stub", "bugfix", "calls/task", "valid calls", "first call valid",
                 "calls on existing files", "tool errors", "recoveries", "statuses"],
                [(pct(s["pass_rate"]), pct(s.get("pass_rate_stub")), pct(s.get("pass_rate_bugfix")),
                  s["calls_per_task"], pct(s["valid_call_rate"]), pct(s["first_call_valid_rate"]),
                  pct(s["existing_path_rate"]), s["tool_errors"], s["recoveries"],
                  ", ".join(f"{k} {v}" for k, v in s["statuses"].items()))])
    if kind == "soul":  # the rules' rates are over the replies that are not degenerate
        return ["check", "replies", "rate"], [("degenerate (not language)", r["replies"], pct(r["degenerate_rate"])),
                                              *[(rule, v["replies"], pct(v["pass_rate"]))
                                                for rule, v in r["rules"].items()]]
    if kind == "preference":
        return (["pairs", "split", "reward accuracy", "log-prob accuracy", "reference"],
                [(r["pairs"], r["split"], pct(r.get("reward_accuracy")), pct(r["logp_accuracy"]),
                  r.get("reference") or r.get("note"))])
    return None


def sampling(r: dict) -> str:
    """An agentic result's sampling settings in words (older results sent none)."""
    s = r.get("sampling") or {}
    if s.get("temperature") is None:
        return "sampled at the server's defaults, a fresh seed a reply"
    top_k = f", top-k {s['top_k']}" if s.get("top_k") else ""
    return f"sampled at temperature {s['temperature']:g}{top_k}, seed {s.get('seed')}"


def abilities(results: dict) -> list[str]:
    """What this model can do, one line a figure, from the agentic and SOUL results there are."""
    lines = []
    if (a := results.get("agentic")) and "summary" in a:
        s = a["summary"]
        lines += [f"makes tool calls: {s['tasks_with_calls']} of {s['tasks']} tasks ({s['calls']} calls, "
                  f"{s['calls_per_task']:.1f} a task)",
                  f"valid calls: {pct(s['valid_call_rate'])}; first call valid: {pct(s['first_call_valid_rate'])} "
                  "of tasks",
                  f"calls on existing files: {pct(s['existing_path_rate'])}; first call on one: "
                  f"{pct(s['first_call_on_existing_rate'])} of tasks",
                  f"passes the hidden tests: {s['passed']} of {s['tasks']} tasks"]
        if s.get("replies") and s.get("replies_cut") == s["replies"]:
            lines.append(f"never stops: all {s['replies']} replies hit --max-tokens ({a.get('max_tokens')}), "
                         "so its calls are cut")
        elif s.get("replies_cut"):
            lines.append(f"{s['replies_cut']} of {s['replies']} replies hit --max-tokens ({a.get('max_tokens')})")
    if (c := results.get("copy")) and "second_accuracy" in c:
        lines.append(f"copies from its context: {pct(c['second_accuracy'])} of a repeated run's tokens "
                     f"({c['first_loss']:.2f} -> {c['second_loss']:.2f} nats a token the second time)")
    if (v := results.get("soul")) and "rules" in v:
        lines.append(f"SOUL: {pct(v['degenerate_rate'])} degenerate replies; all checks pass on "
                     f"{pct(v['all_pass_rate'])} of {v['replies']}")
    return lines


def _one_eval(page: Page, name: str, r: dict) -> None:
    if "error" in r:
        page.missing.append(r["error"])
        return
    kind, table = r.get("kind", name), result_table(r.get("kind", name), r)
    page.h3(name)
    if table is None:
        page.pre(json.dumps(r, indent=2)[:4000])
        return
    if kind == "agentic":
        page.p(f"model {r.get('model')} at {r.get('base_url')}; {r['summary']['tasks']} task(s), "
               f"{r['tasks_per_s']:.3g} tasks/s; {sampling(r)}")
    elif kind == "soul":
        page.p(f"{r['replies']} replies to {r['prompts']} prompts; degenerate: {pct(r['degenerate_rate'])} (the rule "
               f"rates are over the others); all checks pass: {pct(r['all_pass_rate'])}"
               + (f"; {r['too_long']} prompt(s) did not fit the context" if r.get("too_long") else ""))
    page.table(*table)
    if kind == "core":
        page.missing += [f"core bundle: {m}" for m in r.get("missing", [])]
    elif kind == "agentic":
        tasks = r.get("tasks", [])
        for t in [t for t in tasks if t["passed"]][:1] + [t for t in tasks if not t["passed"]][:1]:
            page.conversation(f"{t['id']}: {'passed' if t['passed'] else 'failed'} ({t['status']}, "
                              f"hidden tests: {t['test_output']})", t["messages"])
    elif kind == "soul":
        if j := r.get("judge"):
            page.p(f"LLM judge {j['model']}: mean rating {j['mean_rating']} over {j['rated']} replies "
                   f"({j['unrated']} unrated)")
        for s in r.get("samples", [])[:2]:
            page.conversation("a reply", [{"role": "user", "content": s["prompt"]}, s["message"]])


# ----------------------------------------------------------------------------- rendering


CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.missing{background:#fff4e5;border:1px solid #f0b86e;padding:.5em 1em}.can{background:#eef7ff;border:1px solid #8ab4e8;padding:.5em 1em}.msg{margin:.3em 0;padding:.4em .6em;border-radius:4px}
.user{background:#eef4ff}.assistant{background:#f0faf0}.tool{background:#f7f7f7;font-family:monospace;font-size:12px}
.call{color:#8a3ffc;font-family:monospace}.role{font-weight:600;font-size:12px;color:#555}"""


def to_html(page: Page, title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
           f"<style>{CSS}</style></head><body>", f"<h1>{escape(title)}</h1>"]
    if page.missing:
        out.append("<div class='missing'><b>what is missing</b><ul>" +
                   "".join(f"<li>{escape(m)}</li>" for m in page.missing) + "</ul></div>")
    out += page.body
    out.append(f"<p style='color:#888'>generated {time.strftime('%Y-%m-%d %H:%M:%S')} by evals report</p></body></html>")
    return "\n".join(out)


# ----------------------------------------------------------------------------- the report


def build(run) -> Page:
    run = Path(run)
    found = runs.stages(run)  # InputError when RUN is not a directory at all
    page, metas = Page(), {}
    if not found:
        page.missing.append(f"{run}: no stage directories (pretrain/, sft/, dpo/) and no metrics.jsonl")
    if len(found) > 1:
        page.missing += [f"stage {name}: no {run / name} directory" for name in runs.STAGES if name not in found]
    _versions(page)
    page.h2("stages")
    for name, d in found.items():
        try:
            metas[name] = _stage_config(page, name, d)
            _curves(page, name, d)
        except Exception as e:
            page.missing.append(f"{name}: cannot read it ({type(e).__name__}: {e})")
    _dataset(page, metas)
    if found:
        last_name, last = list(found.items())[-1]
        try:
            _tokenizer(page, last, metas.get(last_name))
        except Exception as e:
            page.missing.append(f"tokenizer: {type(e).__name__}: {e}")
    _eval_tables(page, runs.read_results(run))
    return page


def write(run, log=print) -> Path:
    run = Path(run)
    page = build(run)
    html_path = run / "report.html"
    write_text_atomic(html_path, to_html(page, f"nanocode run report: {run.resolve().name}"))
    for m in page.missing:
        log(f"missing: {m}")
    return html_path
