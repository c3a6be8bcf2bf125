"""The signal-propagation experiment's CSV: the NF-ResNet paper's findings."""
import numpy as np
import pytest

from experiments import signal_propagation as sp

ALPHA = 0.2
WS, NO_WS, SKIPINIT = "NF-ResNet-50", "NF-ResNet-50, no WS", "SkipInit-ResNet-50"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
  # Batch 2 instead of the plot's 8; only the networks the checks need.
  path = tmp_path_factory.mktemp("spp") / "signal_propagation.csv"
  sp.write_csv(sp.run(batch_size=2, networks=(NO_WS, WS, SKIPINIT)), path)
  sp.plot(sp.read_csv(path), path.with_suffix(".png"))
  assert path.with_suffix(".png").stat().st_size > 10_000
  return sp.read_csv(path)


def test_csv_has_every_block_of_resnet50(table):
  for columns in table.values():
    np.testing.assert_array_equal(columns["block"], np.arange(17))
    np.testing.assert_array_equal(columns["stage"], [0] + [1] * 3 + [2] * 4 + [3] * 6 + [4] * 3)
    assert np.isnan(columns["res_avg_var"][0]) and np.all(columns["res_avg_var"][1:] > 0)


def test_weight_standardisation_keeps_the_channel_mean_near_zero(table):
  assert np.all(table[WS]["avg_sq_mean"][1:] < 0.05)


def test_without_ws_the_squared_mean_grows_with_depth(table):
  sq_mean = table[NO_WS]["avg_sq_mean"][1:]
  # Within each stage and across stage ends, relu's positive mean compounds.
  assert np.all(np.diff(sq_mean) > 0)
  assert sq_mean[-1] > 5 * sq_mean[0] and sq_mean[-1] > 100 * table[WS]["avg_sq_mean"][-1]


def test_nf_variance_follows_one_plus_k_alpha_squared(table):
  # The k-th block of a stage (1-based) outputs variance 1 + k * alpha^2: each
  # stage starts from a unit-variance projection shortcut, then every block
  # adds alpha^2 times its unit-variance residual branch.
  k = np.concatenate([np.arange(1, depth + 1) for depth in sp.DEPTHS])
  np.testing.assert_allclose(table[WS]["avg_var"][1:], 1 + k * ALPHA**2, rtol=0.05)
  # The branches themselves have unit variance, as the scaling assumes.
  np.testing.assert_allclose(table[WS]["res_avg_var"][1:], 1.0, rtol=0.15)


def test_without_alpha_beta_and_ws_the_variance_is_uncontrolled(table):
  # SkipInit (gains at 1): plain He-initialised convs after a relu halve the
  # variance, so each stage's projection shortcut cuts it by about 2.3x
  # (measured 0.25 -> 0.10 -> 0.044 -> 0.027), while the blocks of a stage add
  # to it; the NF-ResNet's stays at 1 + k alpha^2 (the test above).
  var = table[SKIPINIT]["avg_var"][1:]
  starts = np.cumsum(sp.DEPTHS)[:-1]
  assert np.all(var[starts] < 0.6 * var[starts - 1])
  within = np.diff(var)[np.setdiff1d(np.arange(len(var) - 1), starts - 1)]
  assert np.all(within > 0)
  assert var[-1] < 0.1 < 0.9 < table[WS]["avg_var"][-1]
