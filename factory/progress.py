"""The build's live display: a rich panel on a terminal, plain lines every few seconds when
stdout is a pipe or a file (CI logs), and the summary table at the end."""

import time
from dataclasses import dataclass
from datetime import timedelta

from rich.live import Live
from rich.table import Table


@dataclass
class Counts:
    total: int          # inputs in this version
    before: int = 0     # done by an earlier (interrupted) run of the same version
    done: int = 0       # done by this run
    sft: int = 0
    pairs: int = 0
    rejects: int = 0
    revisions: int = 0
    failed: int = 0     # inputs the backend could not serve (left for a rerun)


class Progress:
    def __init__(self, console, version: int, counts: Counts, calls=None, every: float = 2.0):
        self.console, self.version, self.counts, self.calls = console, version, counts, calls
        self.start, self.every, self.last, self.live = time.monotonic(), every, 0.0, None

    def figures(self) -> dict:
        c, elapsed = self.counts, max(1e-9, time.monotonic() - self.start)
        left = c.total - c.before - c.done - c.failed
        tokens = (self.calls.tokens_in + self.calls.tokens_out) if self.calls else 0
        cost = self.calls.cost if self.calls else 0.0
        rate = c.done / elapsed
        return {"rows": f"{c.before + c.done}/{c.total}",
                "pass rate": f"{c.sft / max(1, c.sft + c.rejects):.0%}",
                "mean revisions": f"{c.revisions / max(1, c.sft):.2f}",
                "rows/s": f"{rate:.1f}",
                "tokens/min": f"{tokens / elapsed * 60:,.0f}",
                "cost": f"${cost:.4f} (projected ${cost + cost / max(1, c.done) * left:.4f})",
                "eta": str(timedelta(seconds=int(left / rate))) if rate > 0 else "?"}

    def _table(self) -> Table:
        table = Table(title=f"factory build: version {self.version}", show_header=False, box=None)
        for key, value in self.figures().items():
            table.add_row(key, value)
        return table

    def __enter__(self):
        if self.console.is_terminal:
            self.live = Live(self._table(), console=self.console, refresh_per_second=4)
            self.live.start()
        return self

    def update(self, force: bool = False):
        if self.live:
            self.live.update(self._table())
        elif force or time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self.console.print(f"v{self.version}  " + "  ".join(f"{k} {v}" for k, v in self.figures().items()),
                               highlight=False, soft_wrap=True)

    def __exit__(self, *exc):
        if self.live:
            self.live.update(self._table())
            self.live.stop()


def facts_table(title: str, facts: dict) -> Table:
    """Names in bold, values folded: the build summary, `factory show`."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in facts.items():
        table.add_row(key, str(value))
    return table
