"""The agent loop, without any UI: user text in, model turns and tool calls out, as a record.

    session = Session(backend, Tools(root), system_prompt, approve, on_event)
    status = session.send("the tests fail, can you fix it?")

`send` streams a model turn, answers each of its tool calls in order (a malformed call gets an
error result the model reads; a call that needs approval asks `approve(call, preview)` first,
agent.tools.Preview: an edit or write is planned, previewed as a diff, then applied and kept for `undo`), and loops until the
model answers without calls. `session.messages` is always a valid conversation record
(nanocode.record.validate passes) whatever happens in between: a Ctrl-C answers every call
still pending with INTERRUPTED, a full context drops the oldest turns and retries once.

Events for the UI, `on_event(kind, payload)`:
    "text"          str            a piece of the model's reply as it is generated
    "assistant"     message        the model's turn is complete
    "call"          call           a tool call about to be handled (record format: name, args)
    "running"       call           approved (or needing no approval): the tool starts now
    "result"        (call, str)    what the model gets back
    "context_full"  str            the context overflowed; what was done about it
    "notice"        str            anything else worth a line (interrupted, step limit)
    "error"         str            the model server failed; the session stays usable
"""

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from agent.backend import BackendError, ContextFull
from agent.tools import Preview
from nanocode.common import write_text_atomic
from nanocode.record import record_id, refused
from nanocode.spec import type_args

INTERRUPTED = "error: interrupted by the user"
MAX_STEPS = 50            # model turns per send: a model stuck in a loop stops here
SNAPSHOT_MAX = 256_000    # bytes: bigger files are left out of the record's workspace


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: str = ""      # why not: goes back to the model in the tool result
    always: bool = False  # allow this tool without asking for the rest of the session


class Session:
    def __init__(self, backend, tools, system_prompt: str, approve, on_event=None, *,
                 soul_sha: str = "", tools_sha: str = "", source: str = "nanocode chat",
                 max_steps: int = MAX_STEPS):
        self.backend, self.tools, self.approve = backend, tools, approve
        self.on_event = on_event or (lambda kind, payload: None)
        self.system_prompt, self.max_steps = system_prompt, max_steps
        self.soul_sha, self.tools_sha, self.source = soul_sha, tools_sha, source
        self.allowed: set[str] = set()  # tools the user said "always" to
        self.edits: list = []           # applied EditPlans, newest last: what /undo reverts
        self.clear()

    # ------------------------------------------------------------------ conversation

    def send(self, text: str) -> str:
        """Run one user turn to the end. Returns why it stopped: "done", "interrupted",
        "context_full", "error" or "step_limit". Never leaves a tool call unanswered."""
        if self._notes:  # the model must know its edit was undone, or it reasons from a stale file
            text = "\n".join(self._notes) + "\n\n" + text
            self._notes = []
        self.messages.append({"role": "user", "content": text})
        try:
            for _ in range(self.max_steps):
                message, status = self._generate()
                if message is None:
                    return status
                self.messages.append(message)
                calls = message.get("tool_calls") or []
                if not calls:
                    return "done"
                for call in calls:
                    self.on_event("call", call)
                    result = self._run(call)
                    self.messages.append({"role": "tool", "name": call["name"], "content": result})
                    self.on_event("result", (call, result))
            self.on_event("notice", f"stopped after {self.max_steps} model turns in a row; "
                                    "send a message to let it go on")
            return "step_limit"
        except KeyboardInterrupt:
            self.repair()
            self.on_event("notice", "interrupted")
            return "interrupted"

    def _generate(self) -> tuple[dict | None, str]:
        """One model turn: (message, "ok"), or (None, why) after telling the UI."""
        for attempt in range(2):
            parts = []
            try:
                for kind, value in self.backend.stream(self.messages, self.tools.spec):
                    if kind == "text":
                        parts.append(value)
                        self.on_event("text", value)
                    elif kind == "message":
                        self.on_event("assistant", value)
                        return value, "ok"
                self.on_event("error", "the model server ended the reply without a message")
                return None, "error"
            except ContextFull as e:
                if dropped := (self._trim() if attempt == 0 else 0):
                    self.on_event("context_full", f"the context is full ({e}); dropped the "
                                  f"{dropped} oldest messages and trying again")
                    continue
                self.on_event("context_full", f"the context is still full ({e}); the session goes "
                              "on, but /clear starts a fresh conversation the model can answer")
                return None, "context_full"
            except BackendError as e:
                self.on_event("error", str(e))
                return None, "error"
            except KeyboardInterrupt:
                if parts:  # keep what the user saw; a turn cut short is still a valid turn
                    self.messages.append({"role": "assistant", "content": "".join(parts)})
                raise

    def _run(self, call: dict) -> str:
        args, error = type_args(call, self.tools.spec)
        if error:
            return error
        typed = {"name": call["name"], "args": args}
        plan = self.tools.plan(typed)  # an edit or write: planned and applied here, so /undo works
        if isinstance(plan, str):
            return plan
        if plan is not None:
            if refusal := self._refusal(typed, lambda: Preview("diff", self.tools.diff(plan), plan.rel)):
                return refusal
            if plan.before is not None:
                self.workspace.setdefault(plan.rel, plan.before)
            self.on_event("running", typed)
            result = self.tools.apply(plan)
            if not result.startswith("error"):
                self.edits.append(plan)
            return result
        if refusal := self._refusal(typed, lambda: self.tools.preview(typed)):
            return refusal
        builtin, canonical = self.tools.spec.canonical(typed)
        if builtin == "read":
            self._snapshot(canonical["path"])
        self.on_event("running", typed)
        return self.tools.run(typed)

    def _refusal(self, call: dict, preview) -> str | None:
        """Ask the user when the call needs it (`preview()`: what they are shown); the refusal
        result if they say no, None if the call may run."""
        if not self.tools.needs_approval(call["name"]) or call["name"] in self.allowed:
            return None
        decision = self.approve(call, preview())
        if decision.allow and decision.always:
            self.allowed.add(call["name"])
        return None if decision.allow else refused(decision.reason)

    def _snapshot(self, file_path) -> None:
        """Keep a file's contents as first read, so the record can replay the rollout."""
        root = Path(self.tools.root).resolve()
        try:
            path = (root / file_path).resolve()
            rel = path.relative_to(root).as_posix()
            if rel in self.workspace or not path.is_file() or path.stat().st_size > SNAPSHOT_MAX:
                return
            self.workspace[rel] = path.read_bytes().decode("utf-8")
        except (ValueError, OSError, UnicodeDecodeError):
            return  # outside the root, unreadable or binary: the tool itself reports it

    # ---------------------------------------------------------------- keeping it valid

    def repair(self) -> int:
        """Answer every tool call still pending with INTERRUPTED; returns how many.

        Safe to call any time (the chat calls it again if a second Ctrl-C lands mid-repair)."""
        pending = []
        for m in self.messages:
            if m["role"] == "assistant":
                pending = list(m.get("tool_calls") or [])
            elif m["role"] == "tool" and pending:
                pending.pop(0)
            else:
                pending = []
        for call in pending:
            self.messages.append({"role": "tool", "name": call["name"], "content": INTERRUPTED})
            self.on_event("result", (call, INTERRUPTED))
        return len(pending)

    def _trim(self) -> int:
        """Drop the oldest turns after the system prompt until about half the text is gone.

        A block is a user message, or an assistant message with all its tool results, so a call
        is never split from its result. The latest user message and the latest block stay.
        Returns how many messages were dropped (0: nothing left to drop)."""
        head = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        blocks: list[list[dict]] = []
        for m in self.messages[head:]:
            if m["role"] == "tool" and blocks:
                blocks[-1].append(m)
            else:
                blocks.append([m])
        users = [i for i, b in enumerate(blocks) if b[0]["role"] == "user"]
        keep = {len(blocks) - 1, users[-1] if users else -1}

        def size(block):
            return sum(len(m.get("content") or "") + len(json.dumps(m.get("tool_calls") or []))
                       for m in block)

        total = sum(map(size, blocks))
        target, dropped = total // 2, set()
        for i, block in enumerate(blocks):
            if total <= target:
                break
            if i not in keep:
                dropped.add(i)
                total -= size(block)
        if not dropped:
            return 0
        kept = [m for i, b in enumerate(blocks) if i not in dropped for m in b]
        count = len(self.messages) - head - len(kept)
        self.messages = self.messages[:head] + kept
        return count

    # ------------------------------------------------------------------- user commands

    def undo(self) -> str:
        """Revert the last applied edit or write; returns what happened, in one line."""
        if not self.edits:
            return "nothing to undo"
        plan = self.edits.pop()
        result = self.tools.revert(plan)
        if not result.startswith("error"):
            self._notes.append(f"(i undid your last edit to {plan.rel})")
        return result

    def clear(self) -> None:
        """Start a fresh conversation. Permissions ("always") and the /undo stack stay."""
        self.messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        self.workspace: dict[str, str] = {}  # rel path -> contents when the session first touched it
        self._notes: list[str] = []          # told to the model with the next user message

    def record(self) -> dict:
        """The session as a conversation record (docs/DESIGN.md).

        `workspace` holds each file the session read, edited or wrote, as it was when the session first
        touched it (files over SNAPSHOT_MAX bytes or not UTF-8 are left out). Files that only
        a search, listing or command saw are not captured, so such a rollout may not replay exactly."""
        messages = copy.deepcopy(self.messages)
        return {"id": record_id(messages), "messages": messages, "source": self.source,
                "soul": self.soul_sha, "tools": self.tools_sha, "workspace": dict(self.workspace)}

    def save(self, path) -> Path:
        """Write the record as one JSON object, atomically; returns the path."""
        path = Path(path).expanduser()
        write_text_atomic(path, json.dumps(self.record(), ensure_ascii=False, indent=2) + "\n")
        return path
