"""Makes the released-format fixtures in this folder (run once; outputs committed).

    python tests/data/released/make_fixtures.py \
        --dill_python=/tmp/dillenv/bin/python --dill_python=/tmp/dill36/bin/python

1. Here (the project's environment): random parameters for an NFNet with F0's
   block structure and small widths (`MODEL_KWARGS`), saved with `np.savez`
   as `reference_params.npz`, and the logits our model gives for them on
   `INPUT_SEED`'s images, `reference_logits.npy`.
2. In each scratch environment of `--dill_python` (dill 0.3.3 and 0.3.6, with
   NumPy 1.26): `write_with_dill.py` writes them as the authors did, in each
   Haiku container, plus hostile variants.
"""
import argparse
import os
import subprocess
import sys

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_KWARGS = dict(variant="F0", stage_widths=(16, 16, 16, 16), group_width=8)
NUM_CLASSES = 10
RESOLUTION = 33
INPUT_SEED = 3


def input_images():
  return np.random.default_rng(INPUT_SEED).standard_normal(
      (2, RESOLUTION, RESOLUTION, 3)).astype(np.float32)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--dill_python", action="append", required=True)
  args = parser.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
  from nfnets_jax import models  # pylint: disable=import-outside-toplevel

  net, shapes, _, _ = models.abstract_init("NFNet", NUM_CLASSES, **MODEL_KWARGS)
  rng = np.random.default_rng(0)
  # Non-trivial everywhere: gains near 1, skip_gains open, biases non-zero.
  params = {m: {n: ((1.0 if n == "gain" else 0.0) +
                    (0.5 if n == "skip_gain" else 0.1) *
                    rng.standard_normal(a.shape)).astype(np.float32)
                for n, a in v.items()} for m, v in shapes.items()}
  npz = os.path.join(HERE, "reference_params.npz")
  np.savez(npz, **{f"{m}|{n}": a for m, v in params.items() for n, a in v.items()})
  logits = net.apply(params, {}, None, input_images(), is_training=False)[0]["logits"]
  np.save(os.path.join(HERE, "reference_logits.npy"), np.asarray(jax.device_get(logits)))
  for python in args.dill_python:
    subprocess.run([python, os.path.join(HERE, "write_with_dill.py"), npz, HERE],
                   check=True)


if __name__ == "__main__":
  main()
