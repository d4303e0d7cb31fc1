"""Compression of our tokenizer against a baseline, text type by text type (bytes per token).

The fixed texts under eval_texts/ were written for this project (so none of them is in any
training corpus): prose, code (Python, JavaScript, shell), math (LaTeX and arithmetic), and
non-English prose in nine languages. The corpus's two validation shards are added when given.
"""

from pathlib import Path

from trainer import corpus
from trainer.tokenizer import Tokenizer

EVAL_TEXTS = Path(__file__).parent / "eval_texts"
TEXT_TYPES = ("prose", "code", "math", "non_english")


def eval_texts(corpus_dir: Path | None = None, val_chars: int = 2_000_000) -> dict[str, str]:
    texts = {name: (EVAL_TEXTS / f"{name}.txt").read_text(encoding="utf-8") for name in TEXT_TYPES}
    if corpus_dir is not None:
        for kind in ("prose", "code"):
            parts, n = [], 0
            for text in corpus.iter_texts(corpus.shards(corpus_dir, kind, "val")):
                parts.append(text)
                n += len(text)
                if n >= val_chars:
                    break
            texts[f"val_{kind}"] = "\n".join(parts)
    return texts


def compare(ours: Tokenizer, baseline: Tokenizer | None, texts: dict[str, str]) -> list[dict]:
    """One row per text: bytes, tokens and bytes/token for each tokenizer, and the token saving."""
    rows = []
    for name, text in texts.items():
        n_bytes, n = len(text.encode("utf-8")), len(ours.encode(text))
        rows.append({"text": name, "bytes": n_bytes, "ours_tokens": n, "ours_bpt": n_bytes / n})
        if baseline is not None:
            base = len(baseline.encode(text))  # fewer_tokens > 0: ours is better
            rows[-1].update(base_tokens=base, base_bpt=n_bytes / base, fewer_tokens=1 - n / base)
    return rows


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """compare()'s rows as (headers, cells) of text, for the terminal (a header's `\n` breaks it
    there) and for markdown."""
    base = "base_tokens" in rows[0]
    headers = ["text", "bytes", "ours\ntokens", "ours\nbytes/token"]
    headers += ["prose-only\ntokens", "prose-only\nbytes/token", "ours uses\nfewer tokens"] if base else []
    return headers, [[r["text"], f"{r['bytes']:,}", f"{r['ours_tokens']:,}", f"{r['ours_bpt']:.2f}"]
                     + ([f"{r['base_tokens']:,}", f"{r['base_bpt']:.2f}", f"{r['fewer_tokens']:+.1%}"] if base else [])
                     for r in rows]


def markdown_table(rows: list[dict]) -> str:
    headers, cells = table(rows)
    lines = [[h.replace("\n", " ") for h in headers], ["---"] * len(headers), *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
