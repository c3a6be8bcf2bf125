"""Makes the timm fixtures in this folder with timm itself (run once; outputs committed).

Needs torch, timm and safetensors, in a scratch environment (never the
project's); the commit's fixtures came from timm 1.0.31 on torch 2.13.0 (CPU):

    python -m venv /tmp/timmenv
    /tmp/timmenv/bin/pip install torch==2.13.0 timm==1.0.31 safetensors
    /tmp/timmenv/bin/python tests/data/timm/make_fixture.py

(No CPU build of torchvision exists for that torch; timm imports a few names
from it that NFNets never use, so a stand-in module that defines them does.)

Writes:
  dm_nfnet_f0_shapes.json: key -> shape of timm's full `dm_nfnet_f0`.
  dm_nfnet_f0_small.safetensors: a `dm_nfnet_f0` with F0's blocks, timm's
    stem, small stage widths (SMALL) and every parameter random and
    non-trivial, saved as the hub's files are (`safetensors.torch.save_file`
    of the state dict).
  dm_nfnet_f0_small_logits.npy: timm's eval-mode logits for it on the NCHW
    images from numpy's default_rng(INPUT_SEED), standard normal.
"""
import json
import os

import numpy as np
import safetensors.torch
import timm
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# timm's deep_quad stem is (c/8, c/4, c/2, c) for stem_chs c; ours is
# (16, 32, 64, widths[0] / 2), so the first stage keeps its 256 channels.
SMALL = dict(channels=(256, 32, 32, 32), num_features=64, group_size=8, num_classes=10)
RESOLUTION = 35  # Odd: SAME padding and the shortcut's pooling are asymmetric.
INPUT_SEED = 5


def main():
  print(f"timm {timm.__version__}, torch {torch.__version__}")
  full = timm.create_model("dm_nfnet_f0")
  shapes = {k: list(v.shape) for k, v in full.state_dict().items()}
  with open(os.path.join(HERE, "dm_nfnet_f0_shapes.json"), "w") as f:
    json.dump(shapes, f, indent=0, sort_keys=True)

  model = timm.create_model("dm_nfnet_f0", **SMALL).eval()
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
      else:  # Weights: timm standardises them, any scale will do.
        p.copy_(noise)
    images = np.random.default_rng(INPUT_SEED).standard_normal(
        (2, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    logits = model(torch.from_numpy(images)).numpy()
  safetensors.torch.save_file(model.state_dict(),
                              os.path.join(HERE, "dm_nfnet_f0_small.safetensors"),
                              metadata={"format": "pt"})
  np.save(os.path.join(HERE, "dm_nfnet_f0_small_logits.npy"), logits)
  print("logits", logits.shape, float(np.abs(logits).max()))


if __name__ == "__main__":
  main()
