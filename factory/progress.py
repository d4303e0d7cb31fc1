"""The build's live display: a rich panel on a terminal, plain lines when stdout is a pipe or a
file (CI logs), and the summary table at the end.

A slow model must be visible: besides the rows, the display shows the model calls in flight and
done, the tokens of the calls answered so far (the backends report usage per completed call),
what the store holds (build.py commits at least every `commit_seconds`) and the last verdict of
any attempt. The panel re-reads them four times a second; the build's ticker calls `update`
every second, and a plain line is printed when something changed (at most every `every`
seconds) or, if nothing did, every `quiet` seconds to say the build is still alive."""

import time
from dataclasses import astuple, dataclass
from datetime import timedelta

from rich.live import Live
from rich.markup import escape
from rich.table import Table


@dataclass
class Counts:
    total: int          # inputs in this version
    before: int = 0     # done by an earlier (interrupted) run of the same version
    done: int = 0       # done by this run
    stored: int = 0     # done inputs committed to the store, earlier runs' included
    sft: int = 0
    pairs: int = 0
    rejects: int = 0
    revisions: int = 0
    failed: int = 0     # inputs the backend could not serve (left for a rerun)
    verdict: str = ""   # the last attempt's verdict: "INPUT attempt N: passed|failed: problems"


class Progress:
    def __init__(self, console, version: int, counts: Counts, requester=None, every: float = 2.0,
                 quiet: float = 30.0):
        self.console, self.version, self.counts, self.requester = console, version, counts, requester
        self.start, self.every, self.quiet, self.live = time.monotonic(), every, quiet, None
        self.last, self.printed = 0.0, None

    def figures(self) -> dict:
        c, elapsed = self.counts, max(1e-9, time.monotonic() - self.start)
        left = c.total - c.before - c.done - c.failed
        rate = c.done / elapsed
        out = {"rows": f"{c.before + c.done}/{c.total}", "stored": f"{c.stored}/{c.total}",
               "pass rate": f"{c.sft / max(1, c.sft + c.rejects):.0%}",
               "mean revisions": f"{c.revisions / max(1, c.sft):.2f}", "rows/s": f"{rate:.2f}"}
        if self.requester:
            s = self.requester.stats
            out["calls"] = (f"{self.requester.limit.active} in flight, {s.requests} done, {s.cached} cached"
                            + (f", {s.retries} retried" if s.retries else "") + (f", {s.failed} failed" if s.failed else ""))
            out["tokens"] = f"{s.tokens_in:,} in, {s.tokens_out:,} out ({(s.tokens_in + s.tokens_out) / elapsed * 60:,.0f}/min)"
            out["cost"] = f"${s.cost:.4f} (projected ${s.cost + s.cost / max(1, c.done) * left:.4f})"
        out["eta"] = str(timedelta(seconds=int(left / rate))) if rate > 0 else "?"
        if c.verdict:
            out["last verdict"] = c.verdict if len(c.verdict) <= 120 else c.verdict[:117] + "..."
        return out

    def _state(self) -> tuple:
        """What a new plain line would report (not the clock-driven rates)."""
        stats = self.requester and (astuple(self.requester.stats), self.requester.limit.active)
        return astuple(self.counts), stats

    def _table(self) -> Table:
        table = Table(title=f"factory build: version {self.version}", show_header=False, box=None)
        for key, value in self.figures().items():
            table.add_row(key, escape(value))
        return table

    def __enter__(self):
        if self.console.is_terminal:  # re-rendered 4 times a second: calls in flight move between updates
            self.live = Live(get_renderable=self._table, console=self.console, refresh_per_second=4)
            self.live.start()
        return self

    def update(self, force: bool = False):
        if self.live:
            return self.live.refresh()
        now, state = time.monotonic(), self._state()
        if force or (now - self.last >= self.every and state != self.printed) or now - self.last >= self.quiet:
            self.last, self.printed = now, state
            self.console.print(f"v{self.version}  " + "  ".join(f"{k} {v}" for k, v in self.figures().items()),
                               highlight=False, soft_wrap=True, markup=False)

    def __exit__(self, *exc):
        if self.live:
            self.live.refresh()
            self.live.stop()


def facts_table(title: str, facts: dict) -> Table:
    """Names in bold, values folded: the build summary, `factory show`."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in facts.items():
        table.add_row(key, str(value))
    return table
