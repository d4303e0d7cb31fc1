"""Replay verification: every tool call of a finished rollout is run for real.

The rollout's `workspace` (its starting files) is written to a temp folder and each call is
run in order with agent.tools.Tools, the runtime the terminal agent uses, so later calls see
earlier edits. Then per call:

  - a result the user refused in the rollout (nanocode.record.refused) is kept and the call is
    not run: the user said no, so nothing happened;
  - an edit or write (the tool spec's, by behaviour) whose outcome flips (the rollout shows it
    applied and for real it fails, or the other way round) rejects the row: the rest of the
    rollout builds on a change that does not exist;
  - any other result that differs from the real one is rewritten to the real one (mode
    `rewrite`) or rejects the row (mode `reject`).

Shell commands (the shell tool's, command templates') run for real in the temp folder with
`bash_timeout`. With a model as the generator the
commands are model-written (an injected seed can steer them), so they run in the sandbox
(agent/sandbox.py: no network, no credentials, the temp folder the only writable place)
unless the build was given --unsafe-bash; nothing they start outlives the call.
The build records the outcome in the row's scores (`"replay": "ok" | "rewritten"`); a rejected
row goes to the rejects table with stage `replay` and the reason.
"""

import os
import re
import tempfile
from dataclasses import dataclass

from agent.tools import Limits, Tools
from factory.rollout import workspace_tools
from nanocode.record import REFUSED


@dataclass
class ReplayResult:
    status: str            # ok | rewritten | rejected
    messages: list         # the rollout, real results in place (the input if rejected)
    reason: str = ""       # why it was rejected, or which results were rewritten
    calls: int = 0         # calls run for real
    refused: int = 0       # calls the user refused in the rollout (not run)
    rewritten: int = 0


class _Reject(Exception):
    pass


@dataclass
class ToolReplay:
    mode: str = "rewrite"        # rewrite | reject: what a result differing from the real one does
    bash_timeout: float = 10.0   # seconds per shell or command-template call (a call's own timeout is capped by it)
    unsafe_bash = False          # set by the build (--unsafe-bash): shell commands unsandboxed

    def __post_init__(self):
        if self.mode not in ("rewrite", "reject"):
            raise ValueError(f"mode must be rewrite or reject, got {self.mode!r}")
        if not isinstance(self.bash_timeout, (int, float)) or self.bash_timeout <= 0:
            raise ValueError(f"bash_timeout must be a positive number of seconds, got {self.bash_timeout!r}")

    def replay(self, messages: list[dict], workspace: dict, spec) -> ReplayResult:
        with tempfile.TemporaryDirectory(prefix="nanocode-replay-") as root:
            try:
                tools = workspace_tools(root, workspace or {}, spec,
                                        Limits(bash_timeout=self.bash_timeout, bash_max_timeout=self.bash_timeout),
                                        self.unsafe_bash)
                return self._walk(messages, tools)
            except (ValueError, _Reject) as e:  # ValueError: a workspace path leading out, a file not text
                return ReplayResult("rejected", messages, reason=str(e))

    def _walk(self, messages: list[dict], tools: Tools) -> ReplayResult:
        out, pending, notes = [], [], []
        v = ReplayResult("ok", out)
        for i, m in enumerate(messages):
            role = m.get("role")
            if role != "tool" and pending:
                raise _Reject(f"message {i}: {len(pending)} tool call(s) before it have no result")
            if role == "assistant":
                pending = list(m.get("tool_calls") or [])
            elif role == "tool":
                if not pending:
                    raise _Reject(f"message {i}: a tool result that answers no call")
                call, recorded = pending.pop(0), m.get("content") or ""
                if recorded.startswith(REFUSED):
                    v.refused += 1  # the user said no in the rollout: not run, result kept
                    out.append(m)
                    continue
                real = tools.run(call)
                v.calls += 1
                name = call.get("name")
                behaviour, args = tools.spec.canonical(call)
                if behaviour in ("edit", "write") and real.startswith("error") != recorded.startswith("error"):
                    path = args.get("path")
                    if real.startswith("error"):
                        raise _Reject(f"message {i}: {name} of {path!r} does not apply: {real[:300]}")
                    raise _Reject(f"message {i}: {name} of {path!r} applies for real, but the rollout shows "
                                  f"{recorded[:200]!r}")
                if real != recorded and _masked(real) != _masked(recorded):
                    if self.mode == "reject":
                        raise _Reject(f"message {i}: the {name} result differs from the real one "
                                      f"(rollout {recorded[:120]!r}, real {real[:120]!r})")
                    m = {**m, "content": real}
                    v.rewritten += 1
                    notes.append(f"message {i} ({name})")
            out.append(m)
        if pending:
            raise _Reject(f"the rollout ends with {len(pending)} tool call(s) that have no result")
        if v.rewritten:
            v.status, v.reason = "rewritten", "real results for " + ", ".join(notes)
        return v


_TMP = "|".join(re.escape(d) for d in dict.fromkeys((tempfile.gettempdir(), os.path.realpath(tempfile.gettempdir()))))
_TMP_DIR = re.compile(rf"(?:{_TMP})/[^/\s:'\"]+")
_DURATION = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s|sec|secs|seconds?)\b")  # "Ran 4 tests in 0.004s"


def _masked(text: str) -> str:
    """Temp-folder roots and durations masked: a stack trace naming the workspace's absolute
    path (node, pytest) or a test runner's timing differs on every run only there, and such a
    result is kept as recorded, so a rebuild's rows keep their ids."""
    return _DURATION.sub("<t>", _TMP_DIR.sub("<tmp>", text))


def replay_figures(store, v: int) -> dict:
    """Replay outcomes of one version, overall and per source (what `show` and the build
    summary print): pass rate = rows whose results all matched / rows replayed."""
    sft, rejects = store.relation("sft", v), store.relation("rejects", v)
    counts = {}
    for source, outcome, n in store.all(
            f"SELECT source, scores::JSON->>'replay', count(*) FROM {sft} GROUP BY ALL UNION ALL "
            f"SELECT source, 'rejected', count(*) FROM {rejects} WHERE stage = 'replay' GROUP BY ALL"):
        if outcome is not None:
            counts.setdefault(source, {}).update({outcome: n})
    if not counts:
        return {"replay pass rate": "not run"}
    rate = lambda c: round(c.get("ok", 0) / max(1, sum(c.values())), 4)
    total = {k: sum(c.get(k, 0) for c in counts.values()) for k in ("ok", "rewritten", "rejected")}
    return {"replay pass rate": rate(total),
            "replay pass rate by source": {s: rate(c) for s, c in sorted(counts.items())},
            "replayed rows": total}
