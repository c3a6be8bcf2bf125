"""Makes the fixtures in this folder with the authors' own code (run once; outputs committed).

Needs the release's `nfnets` package (deepmind-research at any commit since
2021-02; it runs on today's JAX and Haiku) and JAX + Haiku:

    git clone https://github.com/google-deepmind/deepmind-research /tmp/dmr
    python tests/data/release_models/make_fixture.py --release=/tmp/dmr

Writes:
  release_trees.json: parameter path -> name -> shape of the release's
    `NF_RegNet` B0, `SkipInit_ResNet` and `FixUp_ResNet` (ResNet50), 1000
    classes, exactly as its code builds them.
  release_macs.json: the release's own `NF_RegNet.count_flops` (multiply-adds,
    which its paper calls FLOPs) of B0...B8 at 256 px (all its divisions
    exact) for one image.
  release_logits.npz: for each of SMALL's networks, the release's eval-mode
    logits on INPUT_SEED's images (NHWC, standard normal) with the
    parameters `random_params` makes from the network's shapes alone, so a
    test rebuilds the same numbers without this file's code running the
    release.
"""
import argparse
import json
import os
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
NUM_CLASSES = 10
RESOLUTION = 35  # Odd: SAME padding and the pooling are asymmetric.
INPUT_SEED = 7
# name -> (release module, class, kwargs); our counterparts are in the tests.
SMALL = {
    "NF-RegNet-B0": ("nf_regnet", "NF_RegNet", dict(variant="B0", width=0.25)),
    "SkipInit-ResNet50": ("skipinit_resnet", "SkipInit_ResNet",
                          dict(variant="ResNet50", width=1, drop_rate=0.0)),
    "Fixup-ResNet50": ("fixup_resnet", "FixUp_ResNet",
                       dict(variant="ResNet50", width=1, drop_rate=0.0)),
}
FULL = {
    "NF-RegNet-B0": ("nf_regnet", "NF_RegNet", dict(variant="B0")),
    "SkipInit-ResNet50": ("skipinit_resnet", "SkipInit_ResNet", dict(drop_rate=0.0)),
    "Fixup-ResNet50": ("fixup_resnet", "FixUp_ResNet", dict(drop_rate=0.0)),
}


def random_params(shapes, seed=0):
  """Non-trivial values for a tree of shapes, in sorted (module, name) order."""
  rng = np.random.default_rng(seed)
  params = {}
  for module in sorted(shapes):
    for name in sorted(shapes[module]):
      noise = rng.standard_normal(shapes[module][name]).astype(np.float32)
      if name in ("gain", "scale"):
        value = 1.0 + 0.1 * noise
      elif name == "skip_gain":
        value = 0.5 + 0.1 * noise
      elif name in ("w", "b") and len(noise.shape) == 4:  # A plain conv: fan-in scaled.
        value = noise / np.sqrt(np.prod(noise.shape[:3]))
      elif name == "w":
        value = noise / np.sqrt(noise.shape[0])
      else:  # Biases, Fixup's scalar biases.
        value = 0.1 * noise
      params.setdefault(module, {})[name] = value
  return params


def input_images():
  return np.random.default_rng(INPUT_SEED).standard_normal(
      (2, RESOLUTION, RESOLUTION, 3)).astype(np.float32)


def _transformed(release, module, cls, kwargs, num_classes):
  sys.path.insert(0, release)
  from nfnets import base  # pylint: disable=import-outside-toplevel
  # NF_RegNet's default activation name 'swish' is missing from its own table.
  base.nonlinearities.setdefault("swish", base.nonlinearities["silu"])
  model_cls = getattr(__import__(f"nfnets.{module}", fromlist=[cls]), cls)
  return hk.transform_with_state(
      lambda x, t: model_cls(num_classes, **kwargs)(x, is_training=t))


def _shapes(net, resolution):
  image = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  params, _ = jax.eval_shape(lambda x: net.init(jax.random.PRNGKey(0), x, True), image)
  return {m: {n: list(a.shape) for n, a in v.items()} for m, v in params.items()}


def _count_flops(release, variant, resolution):
  """The release's NF_RegNet.count_flops, which needs a Haiku context."""
  _transformed(release, "nf_regnet", "NF_RegNet", {}, 1000)  # Imports the release.
  from nfnets import nf_regnet  # pylint: disable=import-outside-toplevel
  counter = hk.transform(
      lambda: nf_regnet.NF_RegNet(1000, variant=variant).count_flops(resolution, resolution)[1])
  return counter.apply({}, None)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--release", required=True, help="a deepmind-research checkout")
  args = parser.parse_args()
  trees = {name: _shapes(_transformed(args.release, *spec, 1000), 64)
           for name, spec in FULL.items()}
  with open(os.path.join(HERE, "release_trees.json"), "w") as f:
    json.dump(trees, f, indent=0, sort_keys=True)
  macs = {}
  for variant in [f"B{i}" for i in range(9)]:
    count = _count_flops(args.release, variant, 256)
    macs[variant] = int(round(count))
    print(variant, macs[variant])
  with open(os.path.join(HERE, "release_macs.json"), "w") as f:
    json.dump(macs, f, indent=0, sort_keys=True)
  logits = {}
  for name, spec in SMALL.items():
    net = _transformed(args.release, *spec, NUM_CLASSES)
    params = random_params(_shapes(net, RESOLUTION))
    out, _ = net.apply(params, {}, None, input_images(), False)
    logits[name] = np.asarray(out["logits"])
    print(name, logits[name].shape, float(np.abs(logits[name]).max()))
  np.savez(os.path.join(HERE, "release_logits.npz"), **logits)


if __name__ == "__main__":
  main()
