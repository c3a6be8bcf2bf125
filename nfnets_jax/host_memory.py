"""Host-memory reuse for XLA:CPU: freed buffers stay in the process's heap.

XLA:CPU allocates each step's temporaries and outputs afresh (1.7 GB for an
NFNet-F0 training step at batch 8) and frees them after it. glibc malloc
serves allocations that large with mmap and unmaps them on free, and the
threads that run XLA each get their own arena, whose large requests are
mmapped too; so every step touches hundreds of thousands of new pages, each
a page fault the kernel zeroes. On a 2-core CPU, NFNet-F0's training step at
batch 8 and 128 px took 208,000 faults a step without this and none with it
(`python -m nfnets_jax.bench ... --json`, `page_faults_per_step`), and its
forward + backward ran 11% faster, alternating both in one process
(`python -m experiments.host_memory_ab`: 1470 vs 1655 ms median).

`reuse_freed_memory` asks glibc for one arena, no mmapped chunks and no heap
trimming, so freed memory is reused by the next step. The process keeps its
peak heap (what one step needs) until it exits. `nfnets_jax.bench` and the
step-timing experiments call it before JAX starts its threads; set
`NFNETS_JAX_REUSE_FREED_MEMORY=0` to leave malloc as it is. Training does
not call it: with these settings the digits experiment, whose tf.data pipeline
runs many host threads, took 100 s instead of 54 s (`python -m
nfnets_jax.train --config=experiments/digits.py`, each way once). It is not
applied where JAX has an accelerator plugin (GPU, TPU) either.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import sys

ENV_VAR = "NFNETS_JAX_REUSE_FREED_MEMORY"

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
INT_MAX = 2**31 - 1


def _accelerator_plugin() -> str | None:
  """The name of an installed JAX accelerator plugin (or libtpu), if any."""
  for plugin in importlib.metadata.entry_points(group="jax_plugins"):
    return plugin.name
  return "libtpu" if importlib.util.find_spec("libtpu") else None


def _runs_on_cpu() -> bool:
  """Whether JAX will pick its CPU backend, decided without starting it."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return _accelerator_plugin() is None


def reuse_freed_memory() -> bool:
  """Makes glibc malloc keep freed memory for reuse; see the module docstring.

  Call it before JAX runs anything: an arena limit set after other threads
  have created their arenas does not apply to them.

  Returns:
    True if malloc was reconfigured; False on a platform without glibc,
    where JAX has an accelerator, or when `NFNETS_JAX_REUSE_FREED_MEMORY=0`.
  """
  if os.environ.get(ENV_VAR, "1") == "0" or not sys.platform.startswith("linux"):
    return False
  if not _runs_on_cpu():
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # musl and other libcs without mallopt.
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return all(mallopt(param, value) == 1 for param, value in (
      (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, INT_MAX)))
