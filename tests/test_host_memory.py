"""host_memory.reuse_freed_memory: XLA:CPU's fresh buffers stop page-faulting."""
import json
import os
import subprocess
import sys

import pytest

from nfnets_jax import host_memory

# Output of the jitted function: 64 MiB, so 16384 pages of 4 KiB that a
# freshly mapped buffer faults in one by one.
_FLOATS = 16 * 2**20
_PAGES = _FLOATS * 4 // 4096

_SCRIPT = f"""
import json, resource
from nfnets_jax import host_memory
reused = host_memory.reuse_freed_memory()
import jax, jax.numpy as jnp
double = jax.jit(lambda x: x * 2.0)
x = jnp.ones(({_FLOATS},), jnp.float32)
faults = []
for _ in range(24):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  double(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"reused": reused, "faults": faults[16:]}}))
"""


def _run(reuse: str) -> dict:
  env = {**os.environ, host_memory.ENV_VAR: reuse, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, check=True,
                       capture_output=True, text=True, timeout=120)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_reused_memory_takes_no_page_faults_and_the_opt_out_restores_them():
  default = _run("0")
  assert default["reused"] is False
  # Every call maps a new output buffer and faults in (nearly) all its pages.
  assert min(default["faults"]) > _PAGES * 0.9, default
  reused = _run("1")
  assert reused["reused"] is True
  # The heap grows to what the loop holds at once, then reuses it: most
  # calls fault no page (an occasional one still extends the heap).
  assert sorted(reused["faults"])[len(reused["faults"]) // 2] < _PAGES * 0.05, reused


@pytest.mark.parametrize("platforms,expected", [
    ("cpu", True), ("cuda", False), ("tpu,cpu", False), ("cpu,cuda", True)])
def test_only_cpu_platforms_count_as_cpu(monkeypatch, platforms, expected):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_memory._runs_on_cpu() is expected


def test_an_accelerator_plugin_or_the_opt_out_leaves_malloc_alone(monkeypatch):
  called = []
  monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *a: called.append(a))
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setattr(host_memory, "_accelerator_plugin", lambda: "cuda")
  assert host_memory.reuse_freed_memory() is False
  monkeypatch.setattr(host_memory, "_accelerator_plugin", lambda: None)
  monkeypatch.setenv(host_memory.ENV_VAR, "0")
  assert host_memory.reuse_freed_memory() is False
  assert called == []
