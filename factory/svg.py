"""Server-side charts: horizontal bar charts as inline SVG (no JS, no library)."""

from markupsafe import Markup, escape

ROW, LABEL, WIDTH = 20, 150, 320


def bars(title: str, items: list[tuple[str, float]], percent: bool = False) -> Markup:
    """One bar per (label, value), scaled to the largest value (or to 1 for rates)."""
    if not items:
        return Markup(f'<figure class="chart"><figcaption>{escape(title)}</figcaption><p class="muted">no data</p></figure>')
    top = 1.0 if percent else max(v for _, v in items) or 1.0
    height = ROW * len(items) + 4
    out = [f'<figure class="chart"><figcaption>{escape(title)}</figcaption>',
           f'<svg role="img" aria-label="{escape(title)}" width="{LABEL + WIDTH + 70}" height="{height}" '
           f'viewBox="0 0 {LABEL + WIDTH + 70} {height}">']
    for i, (label, value) in enumerate(items):
        y, w = i * ROW + 2, max(0.0, value / top * WIDTH)
        text = f"{value:.1%}" if percent else (f"{value:g}" if isinstance(value, float) else str(value))
        out.append(f'<text x="{LABEL - 6}" y="{y + 14}" text-anchor="end">{escape(str(label)[:24])}</text>'
                   f'<rect x="{LABEL}" y="{y + 2}" width="{w:.1f}" height="{ROW - 6}" class="bar"/>'
                   f'<text x="{LABEL + w + 4:.1f}" y="{y + 14}">{escape(text)}</text>')
    out.append("</svg></figure>")
    return Markup("".join(out))
