"""glibc's malloc set for a training process on a CPU: memory a step frees stays for the next step.

XLA's CPU runtime takes each run of a compiled step's temporaries (411 MB a step for bench/train.py's
d4) from its worker threads. glibc gives each thread its own arena, which cannot grow to hold an
allocation that large, so every step mmaps it anew, page-faults all of it (105k faults, ~0.17 CPU-s
a step) and unmaps it. One arena (the main one, which grows in place), no mmap and no trimming keep
those pages: the next step finds them. Measured in bench/RESULTS.md ("Training step"): 1.1x the step.
The price is memory: the one heap fragments while it settles (the d4 bench's peak RSS 1.2 -> 1.5-1.9 GB)
and the process keeps what it took until it exits.
"""

import ctypes
import ctypes.util

# (mallopt option from glibc's <malloc.h>, the environment variable glibc reads for it at start, value)
SETTINGS = ((-8, "MALLOC_ARENA_MAX", 1),             # M_ARENA_MAX: one arena
            (-4, "MALLOC_MMAP_MAX_", 0),             # M_MMAP_MAX: no mmap
            (-1, "MALLOC_TRIM_THRESHOLD_", 2**31 - 1))  # M_TRIM_THRESHOLD: never trim
ENV = {name: str(value) for _, name, value in SETTINGS}  # the same for another program, set at its start


def keep_freed_memory() -> bool:
    """Call before the process's first JAX computation (its threads pick their arena then). False where
    the C library is not glibc (musl, macOS): nothing changed."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(option, value) == 1 for option, _, value in SETTINGS)
