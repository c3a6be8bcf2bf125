"""The AGC ablation end to end at a toy size (one block, 8 px, six steps)."""
import math

import numpy as np
import pytest
from PIL import Image
from sklearn import datasets

from experiments import agc_ablation

BATCH, EPOCHS, BASE_LR = 16, 0.06, 50.0
COMMAND = "python -m experiments.agc_ablation --config.epochs=0.06"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  config = agc_ablation.get_config()
  config.stage_depths, config.width, config.resolution = (1,), 0.25, 8
  config.batch_sizes, config.clippings = (BATCH,), (0.01,)
  # A learning rate far too large for an unclipped NF-ResNet, no warm-up.
  config.epochs, config.warmup_epochs, config.base_lr = EPOCHS, 0.0, BASE_LR
  out_dir = tmp_path_factory.mktemp("ablation")
  rows = agc_ablation.ablate(config, out_dir, COMMAND)
  return rows, out_dir


def test_one_row_per_method_with_the_scaled_learning_rate(outputs):
  rows, out_dir = outputs
  assert [r["method"] for r in rows] == [
      "NF-ResNet, no clipping", "NF-ResNet, AGC 0.01", "BN-ResNet", "SkipInit-ResNet",
      "Fixup-ResNet"]
  num_train = len(datasets.load_digits().target) - 360  # The digits test split.
  for row in rows:
    assert row["batch_size"] == BATCH
    assert row["peak_lr"] == pytest.approx(BASE_LR * BATCH / 256)
    assert row["steps"] == math.ceil(EPOCHS * num_train / BATCH)
  read_back = agc_ablation.read_csv(out_dir / "agc_ablation.csv")
  assert [(r["method"], r["diverged"]) for r in read_back] == [
      (r["method"], r["diverged"]) for r in rows]


def test_agc_prevents_the_divergence_of_the_unclipped_nf_resnet(outputs):
  no_clip, agc, bn = outputs[0][:3]
  assert no_clip["diverged"] and math.isnan(no_clip["test_top1"])
  for row in (agc, bn):
    assert not row["diverged"] and row["steps_run"] == row["steps"]
    # 360 test images: the accuracy is a whole number of them.
    assert 0 <= row["test_top1"] <= 1
    assert row["test_top1"] * 360 == pytest.approx(round(row["test_top1"] * 360))


def _skip_gain_bound(lr: float, clipping: float, eps: float, steps: int,
                     momentum: float = 0.9) -> float:
  """Largest |skip_gain| reachable from 0 when AGC clips every gradient.

  Worst case: every step's gradient has the largest norm AGC lets through,
  clipping * max(|g|, eps), always with the same sign, through Nesterov SGD.
  """
  gain = trace = 0.0
  for _ in range(steps):
    grad = clipping * max(gain, eps)
    trace = momentum * trace + grad
    gain += lr * (grad + momentum * trace)
  return gain


def test_agc_caps_the_growth_of_the_zero_initialised_skip_gains(outputs):
  no_clip, agc, bn, skipinit, fixup = outputs[0]
  bound = _skip_gain_bound(BASE_LR * BATCH / 256, 0.01, 1e-3, agc["steps"])
  assert 0 < agc["max_abs_skip_gain"] <= bound
  # The BN-ResNet and Fixup have no skip gains; SkipInit's moved off 0.
  assert math.isnan(bn["max_abs_skip_gain"]) and math.isnan(fixup["max_abs_skip_gain"])
  assert skipinit["diverged"] or skipinit["max_abs_skip_gain"] > 0


def test_report_and_plot(outputs):
  _, out_dir = outputs
  report = (out_dir / "agc_ablation.md").read_text()
  assert COMMAND in report
  assert report.count("| NF-ResNet, no clipping | diverged |") == 2  # top-1, skip gains
  assert f"| batch {BATCH} (lr {BASE_LR * BATCH / 256:g}) |" in report
  with Image.open(out_dir / "agc_ablation.png") as image:
    assert image.size[0] > 1000 and np.asarray(image).std() > 0
