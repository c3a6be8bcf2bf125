"""Multi-host set-up and preemption notices for the training loop.

Every process runs the same program (SPMD): it initialises the JAX distributed
runtime, feeds its own shard of the data to its local devices, and the
collectives inside `jax.pmap` span the devices of all processes.
"""
from __future__ import annotations

import signal
from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils


def default_config() -> ml_collections.ConfigDict:
  """Fields of `config.distributed`: when and how to join a multi-host job."""
  config = ml_collections.ConfigDict()
  # Call jax.distributed.initialize. With the three fields below left at their
  # defaults JAX auto-detects them (TPU VMs, SLURM, Open MPI, ...).
  config.initialize = False
  config.coordinator_address = ""  # 'host:port' of process 0.
  config.num_processes = -1  # -1: auto-detect.
  config.process_id = -1  # -1: auto-detect.
  return config


def initialize(config: ml_collections.ConfigDict) -> None:
  """Joins the multi-host job described by `config` (a no-op if not asked).

  Must run before anything touches a JAX device. On CPU the cross-process
  collectives go through gloo (TCP), so CPU clusters and tests work too.

  Args:
    config: `config.distributed`, see `default_config()`.
  """
  if not config.initialize:
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs: dict[str, Any] = {}
  if config.coordinator_address:
    kwargs["coordinator_address"] = config.coordinator_address
  if config.num_processes >= 0:
    kwargs["num_processes"] = config.num_processes
  if config.process_id >= 0:
    kwargs["process_id"] = config.process_id
  jax.distributed.initialize(**kwargs)


def is_primary() -> bool:
  """True on the process that writes logs (process 0)."""
  return jax.process_index() == 0


class PreemptionWatch:
  """Turns SIGTERM (how TPU VMs and schedulers preempt) into a step-level flag.

  Single process: a signal handler sets the flag; the loop reads it between
  steps. Multi-process: JAX's preemption service receives the signal on any
  process and all processes agree on the same step to stop at, so that they
  save the same checkpoint.
  """

  def __init__(self):
    self._received = False
    self._previous_handler = None
    self._use_jax_service = jax.process_count() > 1

  def __enter__(self) -> "PreemptionWatch":
    if not self._use_jax_service:
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._received = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step` (call it at every step)."""
    if self._use_jax_service:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._received
