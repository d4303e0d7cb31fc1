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
        n_bytes = len(text.encode("utf-8"))
        row = {"text": name, "bytes": n_bytes, "ours_tokens": len(ours.encode(text))}
        row["ours_bpt"] = n_bytes / row["ours_tokens"]
        if baseline is not None:
            row["base_tokens"] = len(baseline.encode(text))
            row["base_bpt"] = n_bytes / row["base_tokens"]
            row["fewer_tokens"] = 1 - row["ours_tokens"] / row["base_tokens"]  # > 0: ours is better
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    has_base = "base_tokens" in rows[0]
    head = "| text | bytes | ours tokens | ours bytes/token |"
    head += " prose-only tokens | prose-only bytes/token | ours uses fewer tokens |" if has_base else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = f"| {r['text']} | {r['bytes']:,} | {r['ours_tokens']:,} | {r['ours_bpt']:.2f} |"
        if has_base:
            line += f" {r['base_tokens']:,} | {r['base_bpt']:.2f} | {r['fewer_tokens']:+.1%} |"
        lines.append(line)
    return "\n".join(lines)
