"""Makes the timm fixtures in this folder with timm itself (run once; outputs committed).

Needs torch, timm and safetensors, in a scratch environment (never the
project's); the commit's fixtures came from timm 1.0.31 on torch 2.13.0 (CPU):

    python -m venv /tmp/timmenv
    /tmp/timmenv/bin/pip install torch==2.13.0 timm==1.0.31 safetensors
    /tmp/timmenv/bin/python tests/data/timm/make_fixture.py

(No CPU build of torchvision exists for that torch; timm imports a few names
from it that NFNets never use, so a stand-in module that defines them does.)

Writes, for each architecture `arch` of SMALL:
  {arch}_shapes.json: key -> shape of timm's full `arch`.
  {arch}_small.safetensors: an `arch` with its blocks per stage, small widths
    (SMALL[arch], overrides of timm's own config) and every parameter random
    and non-trivial, saved as the hub's files are
    (`safetensors.torch.save_file` of the state dict).
  {arch}_small_logits.npy: timm's eval-mode logits for it on the NCHW
    images from numpy's default_rng(INPUT_SEED), standard normal.
and param_counts.json: the parameter count of every timm name in COUNTED at
1000 classes.
"""
import json
import os

import numpy as np
import safetensors.torch
import timm
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# Small widths our models can express too. timm's deep_quad stem is
# (c/8, c/4, c/2, c) for stem_chs c, ours (16, 32, 64, widths[0] / 2), so the
# NFNets keep a first stage of 256 channels.
SMALL = {
    "dm_nfnet_f0": dict(channels=(256, 32, 32, 32), num_features=64, group_size=8),
    "eca_nfnet_l0": dict(channels=(256, 32, 48, 64), num_features=96, group_size=8),
    # SE widths 64, 8, 12 -> 16 (timm rounds them to multiples of 8), 16.
    "nfnet_l0": dict(channels=(256, 32, 48, 64), num_features=96, group_size=8),
    # Stage widths 0.75 x (16, 24, 32, 48) rounded to multiples of 8: 16, 24,
    # 24, 40; the final conv is 0.75 x 1280 x 48 // 440 = 104.
    "nf_regnet_b1": dict(channels=(16, 24, 32, 48), num_features=1280 * 48 // 440),
    "nf_resnet50": dict(channels=(32, 32, 64, 64), stem_chs=16),
}
COUNTED = ("dm_nfnet_f0", "dm_nfnet_f1", "eca_nfnet_l0", "eca_nfnet_l1", "eca_nfnet_l2",
           "eca_nfnet_l3", "nfnet_l0", "nf_regnet_b0", "nf_regnet_b1", "nf_regnet_b2",
           "nf_regnet_b3", "nf_regnet_b4", "nf_regnet_b5", "nf_resnet26",
           "nf_resnet50", "nf_resnet101")
RESOLUTION = 35  # Odd: SAME padding and the shortcut's pooling are asymmetric.
INPUT_SEED = 5


def randomise(model):
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if name.endswith("gain") and "skipinit" not in name:
        p.copy_(1.0 + 0.1 * noise)
      elif name.endswith("skipinit_gain"):
        p.copy_(0.5 + 0.1 * noise)
      elif name.endswith("bias"):
        p.copy_(0.1 * noise)
      elif name.endswith("attn_last.conv.weight"):  # ECA's 1-D kernel, not standardised.
        p.copy_(0.5 * noise)
      else:  # Weights: timm standardises them, any scale will do.
        p.copy_(noise)


def main():
  print(f"timm {timm.__version__}, torch {torch.__version__}")
  counts = {name: sum(p.numel() for p in timm.create_model(name).parameters())
            for name in COUNTED}
  with open(os.path.join(HERE, "param_counts.json"), "w") as f:
    json.dump(counts, f, indent=0, sort_keys=True)
  for arch, small in SMALL.items():
    full = timm.create_model(arch)
    shapes = {k: list(v.shape) for k, v in full.state_dict().items()}
    with open(os.path.join(HERE, f"{arch}_shapes.json"), "w") as f:
      json.dump(shapes, f, indent=0, sort_keys=True)

    model = timm.create_model(arch, num_classes=10, **small).eval()
    randomise(model)
    images = np.random.default_rng(INPUT_SEED).standard_normal(
        (2, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    with torch.no_grad():
      logits = model(torch.from_numpy(images)).numpy()
    safetensors.torch.save_file(model.state_dict(),
                                os.path.join(HERE, f"{arch}_small.safetensors"),
                                metadata={"format": "pt"})
    np.save(os.path.join(HERE, f"{arch}_small_logits.npy"), logits)
    print(arch, "logits", logits.shape, float(np.abs(logits).max()),
          sum(p.numel() for p in model.parameters()), "parameters")


if __name__ == "__main__":
  main()
