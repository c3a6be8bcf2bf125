r"""Prints the README's model table: parameters and multiply-adds of every network.

    python -m experiments.model_table

Parameters for 1000 classes; GMACs (multiply-adds of convolutions and matrix
products, `nfnets_jax.model_macs`) of one image at the model's test
resolution: the release's for its networks, timm's pretrained config for
timm's names (its `test_input_size`, else its `input_size`).
"""
from nfnets_jax import models

# timm 1.0.31's evaluation resolution of each of its names.
TIMM_TEST_PX = {
    "eca_nfnet_l0": 288, "eca_nfnet_l1": 320, "eca_nfnet_l2": 384, "eca_nfnet_l3": 448,
    "nfnet_l0": 288, "nf_regnet_b0": 256, "nf_regnet_b1": 288, "nf_regnet_b2": 272,
    "nf_regnet_b3": 320, "nf_regnet_b4": 384, "nf_regnet_b5": 456, "nf_resnet26": 224,
    "nf_resnet50": 288, "nf_resnet101": 224, "dm_nfnet_f0": 256,
}


def rows():
  """(model, variant, test px) of every row."""
  yield "NFNet", "F0", models.NFNET_VARIANTS["F0"]["test_px"]
  for variant, spec in models.NFREGNET_VARIANTS.items():
    yield "NFRegNet", variant, spec["test_px"]
  for name in ("NFResNet", "SkipInitResNet", "FixupResNet"):
    yield name, "ResNet50", 224
  for name, px in TIMM_TEST_PX.items():
    yield name, None, px


def main():
  print("| model | params | test px | GMACs |\n|---|---|---|---|")
  for name, variant, px in rows():
    kwargs = {"variant": variant} if variant else {}
    params = models.model_param_count(name, **kwargs)
    gmacs = models.model_macs(name, px, **kwargs) / 1e9
    print(f"| {name} {variant or ''} | {params:,} | {px} | {gmacs:.2f} |".replace("  |", " |"),
          flush=True)


if __name__ == "__main__":
  main()
