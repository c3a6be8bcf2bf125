r"""Signal propagation plots at initialisation (Brock, De, Smith, ICLR 2021, Fig. 1).

    python -m experiments.signal_propagation [--batch_size 8] [--out_dir experiments/results]

For each residual block of a ResNet-50 (stage depths 3, 4, 6, 3) fed N(0, 1)
images at 224 px: the average channel squared mean and average channel
variance of the block's output, and the average channel variance of its
residual branch (before skip_gain and alpha). Five networks:
  BN-ResNet-50          batch-normalised baseline, in training mode (batch
                        statistics, as at the first step of training);
  NF-ResNet-50, no WS   plain convolutions: relu's positive mean compounds;
  NF-ResNet-50          Scaled Weight Standardisation removes the mean shift;
  SkipInit-ResNet-50    the unnormalised baseline without alpha, beta or WS:
                        the variance grows with every block;
  Fixup-ResNet-50       zero-initialised branches: every block starts as the
                        identity (post-activation), the variance stays flat.
NF-ResNets and SkipInit get skip_gain = 1 (instead of 0) so that every
residual branch contributes, and no network has stochastic depth. At 224 px the last stage is 7x7; much
smaller inputs bias its statistics low through the zero padding.

Writes `signal_propagation.csv` (one row per network and block; block 0 is the
stem's output) and `signal_propagation.png`.
"""
from __future__ import annotations

import argparse
import csv
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")  # Files only, no display.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from nfnets_jax import models
from nfnets_jax.models.nfresnet import RESNET_DEPTHS

DEPTHS = RESNET_DEPTHS["ResNet50"]
NETWORKS: dict[str, tuple[str, dict[str, Any]]] = {
    "BN-ResNet-50": ("ResNet", dict(stochdepth_rate=0.0)),
    "NF-ResNet-50, no WS": ("NFResNet", dict(skipinit_gain=jnp.ones, stochdepth_rate=0.0,
                                             weight_standardization=False)),
    "NF-ResNet-50": ("NFResNet", dict(skipinit_gain=jnp.ones, stochdepth_rate=0.0)),
    "SkipInit-ResNet-50": ("SkipInitResNet", dict(skipinit_gain=jnp.ones, stochdepth_rate=0.0)),
    "Fixup-ResNet-50": ("FixupResNet", dict(stochdepth_rate=0.0)),
}
METRICS = ("avg_sq_mean", "avg_var", "res_avg_var")
TITLES = ("Average channel squared mean", "Average channel variance",
          "Residual branch variance")
CSV_FIELDS = ("network", "block", "stage", *METRICS)


def stage_of_blocks(depths: Sequence[int] = DEPTHS) -> list[int]:
  """Stage (1-based) of each block, with 0 for the stem (block 0)."""
  return [0] + [stage for stage, depth in enumerate(depths, 1) for _ in range(depth)]


def measure(network: str, batch_size: int, resolution: int = 224,
            seed: int = 0) -> list[dict[str, Any]]:
  """One CSV row per block (0 = stem) of `network` at initialisation."""
  name, kwargs = NETWORKS[network]
  forward = models.transform(name, 10, **kwargs)
  init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
  images = jax.random.normal(data_key, (batch_size, resolution, resolution, 3))

  @jax.jit  # One program for init and forward: compiling dominates the cost.
  def metrics_at_init(x):
    params, state = forward.init(init_key, x, is_training=True)
    # Training mode: BatchNorm normalises with the batch's statistics; NF
    # networks are the same in both modes without dropout and stochastic depth.
    return forward.apply(params, state, None, x, is_training=True, return_metrics=True)[0]

  outputs = metrics_at_init(images)
  rows = []
  for block, stage in enumerate(stage_of_blocks()):
    res = outputs.get(f"res_avg_var_{block - 1}")
    rows.append({
        "network": network, "block": block, "stage": stage,
        "avg_sq_mean": float(outputs[f"avg_sq_mean_{block}"]),
        "avg_var": float(outputs[f"avg_var_{block}"]),
        "res_avg_var": float(res) if res is not None else "",
    })
  return rows


def run(batch_size: int, networks: Sequence[str] = tuple(NETWORKS),
        resolution: int = 224) -> list[dict[str, Any]]:
  """Rows of every network, in order."""
  return [row for network in networks for row in measure(network, batch_size, resolution)]


def write_csv(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)


def read_csv(path: pathlib.Path) -> dict[str, dict[str, np.ndarray]]:
  """{network: {column: values by block}}; missing residual values are NaN."""
  table: dict[str, dict[str, list[float]]] = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      columns = table.setdefault(row["network"], {k: [] for k in CSV_FIELDS[1:]})
      for key in columns:
        columns[key].append(float(row[key]) if row[key] else np.nan)
  return {net: {k: np.asarray(v) for k, v in cols.items()} for net, cols in table.items()}


def plot(table: dict[str, dict[str, np.ndarray]], path: pathlib.Path) -> None:
  """Three panels (one per metric) of every network against block index."""
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  boundaries = np.cumsum(DEPTHS)[:-1] + 0.5  # Between the stages' last and first blocks.
  for ax, metric, title in zip(axes, METRICS, TITLES):
    for network, columns in table.items():
      ax.plot(columns["block"], columns[metric], marker="o", markersize=3, label=network)
    for x in boundaries:
      ax.axvline(x, color="grey", linewidth=0.5, linestyle=":")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("block (0 = stem output)")
  axes[1].legend(loc="upper left")
  fig.suptitle("Signal propagation at initialisation, ResNet-50 depths, N(0, 1) "
               "inputs at 224 px")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--resolution", type=int, default=224)
  parser.add_argument("--out_dir", default="experiments/results")
  args = parser.parse_args()
  out_dir = pathlib.Path(args.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  csv_path = out_dir / "signal_propagation.csv"
  write_csv(run(args.batch_size, resolution=args.resolution), csv_path)
  plot(read_csv(csv_path), out_dir / "signal_propagation.png")
  print(f"Wrote {csv_path} and {out_dir / 'signal_propagation.png'}")


if __name__ == "__main__":
  main()
