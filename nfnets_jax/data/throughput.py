"""Throughput of the training input pipeline, and its headroom over a train step.

The pipeline keeps the accelerators busy only if it makes batches several times
faster than the training step consumes them: in training both share the CPU.
`nfnets_jax.bench --input` and `experiments/bench_input.py` measure with this.
"""
import time
from typing import Iterator, NamedTuple

import ml_collections
import numpy as np

from nfnets_jax.data import pipeline

# Pipeline batches/s x step seconds needed for the input not to be a bottleneck.
REQUIRED_HEADROOM = 5.0


class Throughput(NamedTuple):
  batches_per_s: float
  images_per_s: float


def measure(batches: Iterator[pipeline.Batch], num_batches: int,
            warmup: int) -> Throughput:
  """Batches/s and images/s over `num_batches`, after `warmup` batches."""
  for _ in range(warmup):
    next(batches)
  start = time.perf_counter()
  images = 0
  for _ in range(num_batches):
    images += int(np.prod(next(batches)["images"].shape[:2]))
  seconds = time.perf_counter() - start
  return Throughput(num_batches / seconds, images / seconds)


def pipeline_throughput(config: ml_collections.ConfigDict, global_batch_size: int,
                        num_batches: int = 20, warmup: int = 3) -> Throughput:
  """Throughput of `train_iterator` on one process with one device."""
  batches = pipeline.train_iterator(config, global_batch_size=global_batch_size, seed=0,
                                    process_index=0, process_count=1, num_local_devices=1)
  return measure(batches, num_batches, warmup)


def headroom(pipeline_batches_per_s: float, train_step_seconds: float) -> float:
  """How many times faster the pipeline makes batches than the step eats them.

  Compare a `pipeline_throughput(...)` with the seconds per training step at
  the same global batch size; the input is not a bottleneck when this is
  >= REQUIRED_HEADROOM.
  """
  return pipeline_batches_per_s * train_step_seconds
