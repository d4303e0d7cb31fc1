"""Joining a run on several hosts (`--multihost`): jax.distributed, with its failures as one line.

Every host runs the same command. TPU pods and SLURM jobs are found by jax itself; elsewhere
JAX_COORDINATOR_ADDRESS=host0:PORT (process 0's address: it runs the coordinator),
JAX_NUM_PROCESSES and JAX_PROCESS_ID say who is who (jax reads only the first; we pass the
others). Then one mesh spans every host's devices, each host feeds its shard of the same global
batch (the loaders are deterministic), and only process 0 writes files (trainer/train.py).

jax's coordination client aborts the process (a C++ CHECK, no exception) when it cannot reach
the coordinator, so that case is checked first, within the same timeout: process 0 must be able
to bind the coordinator's address, the others to connect to it. What remains for jax to end is a
peer that never comes: process 0 waits the timeout for it, then jax aborts with its own message.
"""

import os
import socket
import time
from contextlib import contextmanager

from nanocode.common import InputError

_ENV_HELP = "set JAX_COORDINATOR_ADDRESS=HOST:PORT, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every host"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.isdigit():
        raise InputError(f"{name}={value!r} is not a number")
    return int(value)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"the coordinator address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def check_coordinator(address: str, process_id: int, timeout: float) -> None:
    """Process 0: the address is one of this machine's and its port is free. The others: something
    listens there within `timeout` seconds (process 0 may start later)."""
    host, port = split_address(address)
    if process_id == 0:
        try:
            with socket.create_server((host, port)):
                return
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            raise InputError(f"process 0 runs the coordinator, but cannot listen on {address} ({why}): "
                             "start it on that host, or free the port") from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise InputError(f"no coordinator at {address} after {timeout:g}s ({e.strerror or e}): start "
                                 "process 0 there, or fix JAX_COORDINATOR_ADDRESS") from None
            time.sleep(0.2)


def join(timeout: float = 300) -> None:
    """jax.distributed.initialize with the environment's settings; call it before any other jax call."""
    import jax

    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    n, pid = _env_int("JAX_NUM_PROCESSES"), _env_int("JAX_PROCESS_ID")
    if address is not None:
        if n is None or pid is None:
            raise InputError(f"--multihost with JAX_COORDINATOR_ADDRESS={address} needs JAX_NUM_PROCESSES and "
                             "JAX_PROCESS_ID too")
        if not 0 <= pid < n:
            raise InputError(f"JAX_PROCESS_ID={pid} is not in 0..{n - 1} (JAX_NUM_PROCESSES={n})")
        start = time.monotonic()
        check_coordinator(address, pid, timeout)
        timeout = max(1.0, timeout - (time.monotonic() - start))
    try:
        jax.distributed.initialize(address, num_processes=n, process_id=pid, initialization_timeout=int(timeout))
    except ValueError as e:  # no cluster found and nothing set: jax says which setting it lacks
        raise InputError(f"--multihost found no coordinator ({e}): {_ENV_HELP}") from None


@contextmanager
def joined(multihost: bool, timeout: float = 300):
    """Around a command: join first (with --multihost), and name this process in its failure, which
    it reports itself (every host has its own stderr)."""
    if not multihost:
        yield
        return
    join(timeout)
    import jax

    try:
        yield
    except InputError as e:
        raise InputError(f"process {jax.process_index()} of {jax.process_count()}: {e}") from None
