"""trainer/malloc.py: after keep_freed_memory, a jitted step's large temporaries stop page-faulting."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# a step whose temporaries (two 128 MB arrays in flight) are far larger than a glibc thread arena
STEP = """
import resource, sys
from trainer import malloc
kept = sys.argv[1] == "keep" and malloc.keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.sin(x) * jnp.cos(x + 1.0), axis=0))
x = jnp.ones((8192, 4096), jnp.float32)
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, min(faults[5:]))  # the first steps settle the heap's layout
"""


def faults_of_a_settled_step(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", STEP, mode], capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
@pytest.mark.skipif(THP.exists() and "[always]" in THP.read_text(), reason="huge pages: faults come 2 MB at a time")
def test_kept_memory_is_reused_by_the_next_step():
    kept, faults_kept = faults_of_a_settled_step("keep")
    _, faults_default = faults_of_a_settled_step("default")
    pages = 128 * 2**20 // 4096  # one 128 MB temporary, in 4 KiB pages
    assert kept
    assert faults_default > pages / 2, faults_default  # glibc's default: mapped anew, every step
    assert faults_kept < pages / 20, faults_kept
