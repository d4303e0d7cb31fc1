"""`factory build --ray auto|ADDRESS`: the CPU-heavy half of a build on a Ray cluster.

What runs where:
  driver   the build loop (build._run), every model call (its Requester: endpoints, call cache,
           ledger) and every commit to the store. One process holds the store, so resume, the
           call cache and the no-duplicate guarantee are those of a one-process build, unchanged.
  workers  the stages' CPU work, as Ray tasks: conversion (a scenario's expansion and grounding
           included: its tests run in the sandbox), the deterministic critics, and the replay of
           the chosen rollout's tool calls in the sandbox.

`Cluster.wrap` puts a stand-in (`OnRay`) in place of each such stage: the same attributes, and
its work methods send the call to a worker and hand back what it returned, or raise what it
raised (a Skip is still a reject, a MissingTool still a `tools` reject). The stage objects, the
SOUL and the tool spec travel to the object store once. A task whose worker dies is run again by
Ray (TASK_RETRIES); the stages are functions of their arguments (each run in its own temporary
workspace), so a rerun gives the same result and the version has exactly the rows of a
one-process build. Past the retries the input stays undone (WorkerLost), for a rerun to finish.

`auto` joins the Ray cluster this machine runs (`ray start --head`) or starts a local one;
ADDRESS (host:port of a cluster's head, or ray://host:port) must answer a TCP connection within
CONNECT_TIMEOUT seconds, or the build stops with one line before any version exists (ray.init
itself would wait minutes). Every worker must run the same factory code as the driver (the code
version is part of a build's identity): a worker that does not is one error line.
ray is imported here only, and only with --ray (the `ray` extra).
"""

import asyncio
import contextlib
import functools
import inspect
import socket

from factory.loop import Context
from nanocode.common import InputError

TASK_RETRIES = 3       # Ray runs a task again when its worker dies, this many times
CONNECT_TIMEOUT = 5.0  # seconds for a cluster's head to answer
WORK = ("convert", "ground", "replay", "judge")  # the stage methods that run on a worker


class WorkerLost(Exception):
    """A stage's task failed in Ray itself (its worker died past the retries, a node left): the
    input stays undone and a rerun retries it."""


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray {address}: not a cluster address (auto, HOST:PORT or ray://HOST:PORT)")
    return host, int(port)


def _reachable(address: str) -> None:
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise InputError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e}); start one with "
                         "`ray start --head`, or use --ray auto") from None


@functools.cache
def _ray():
    """ray and the one remote function every stage call goes through (defined once ray is imported)."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs the ray package: pip install 'nanocode[ray]'") from None

    @ray.remote(max_retries=TASK_RETRIES)
    def call(stage, method, soul, spec, packed):
        args = [soul if kind == "soul" else spec if kind == "spec" else
                Context(soul, spec, None, None, {}, input_id=value[0], attempt=value[1]) if kind == "ctx" else value
                for kind, value in packed]
        try:
            result = getattr(stage, method)(*args)
            return True, asyncio.run(result) if inspect.iscoroutine(result) else result
        except Exception as e:  # sent back as its parts: exceptions with their own __init__ do not unpickle
            return False, (type(e), e.args, e.__dict__)

    @ray.remote
    def code():
        from factory.build import code_version
        return code_version()
    return ray, call, code


class Cluster:
    def __init__(self, address: str, soul, spec):
        ray, self.call, code = _ray()
        if address != "auto":
            _host_port(address)
        if not ray.is_initialized():  # initialized: this process joined a cluster already (a test, a notebook)
            if address != "auto":
                _reachable(address)
            ray.init(address=None if address == "auto" else address, logging_level="ERROR", log_to_driver=False)
        from factory.build import code_version

        theirs, ours = ray.get(code.remote()), code_version()
        if theirs != ours:
            raise InputError(f"--ray {address}: the cluster's workers run other factory code ({theirs}; "
                             f"here: {ours}): install the same nanocode on every node")
        self.ray, self.address, self.soul, self.spec = ray, address, soul, spec
        self.shared = ray.put(soul), ray.put(spec)
        self.cpus, self.tasks = int(ray.cluster_resources().get("CPU", 1)), 0

    def wrap(self, stages):
        """`stages` with their CPU work on the cluster; the model's stages stay as they are."""
        on = functools.partial(OnRay, cluster=self)
        return type(stages)(**{**vars(stages), "converter": on(stages.converter),
                               "converters": {k: on(c) for k, c in stages.converters.items()},
                               "critics": [c if c.needs_model else on(c) for c in stages.critics],
                               "replay": stages.replay and on(stages.replay)})

    def _pack(self, args) -> list:
        """The call's arguments, with the SOUL and the tool spec as references to their shipped
        copies, and a build Context as the little a CPU stage reads of it (input and attempt)."""
        return [("soul", None) if a is self.soul else ("spec", None) if a is self.spec else
                ("ctx", (a.input_id, a.attempt)) if isinstance(a, Context) else ("arg", a) for a in args]

    def _submit(self, ref, method, args):
        self.tasks += 1
        return self.call.remote(ref, method, *self.shared, self._pack(args))

    @contextlib.contextmanager
    def _worker_lost(self):
        try:
            yield
        except self.ray.exceptions.RayError as e:
            raise WorkerLost(f"ray: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None

    def get(self, ref, method, *args):
        """Run stage `ref`'s `method` on a worker and wait for it (from a driver thread)."""
        with self._worker_lost():
            return _result(self.ray.get(self._submit(ref, method, args)))

    async def wait(self, ref, method, *args):
        with self._worker_lost():
            return _result(await self._submit(ref, method, args))

    def figures(self) -> str:
        return f"{self.cpus} CPUs ({self.address}), {self.tasks} tasks"


class OnRay:
    """A stage whose work methods run as Ray tasks: sync ones (called in a driver thread by the
    loop) wait for their task, async ones (a critic's judge) await it. Other attributes are the
    stage's own, so the loop and the build see the same stage."""

    def __init__(self, stage, cluster: Cluster):
        self._stage, self._cluster, self._ref = stage, cluster, cluster.ray.put(stage)

    def __getattr__(self, name):
        value = getattr(self._stage, name)  # AttributeError: the stage has no such method (ground)
        if name not in WORK or not callable(value):
            return value
        run = self._cluster.wait if inspect.iscoroutinefunction(value) else self._cluster.get
        return functools.partial(run, self._ref, name)


def _result(answer):
    """A task's answer: its stage's return value, or the exception the stage raised, raised here."""
    ok, value = answer
    if ok:
        return value
    cls, args, state = value
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    raise error
