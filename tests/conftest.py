"""Test-wide setup: runs before any test module imports JAX."""
import os

# Eight fake CPU devices, so pmap and multi-device code run on any machine.
# Backend optimisation level 0: the tests run small models, whose cost is
# almost all XLA compile time, which this cuts several-fold (measured: 61 s ->
# 9 s for a tiny NFNet's init + forward). Benchmarks and training do not set it.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow is only used for tf.data: keep it off any accelerator.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def dirs(tmp_path_factory):
  """Keyword arguments of the tiny runs: digits data_dir and XLA cache."""
  import test_train_support as support  # pylint: disable=import-outside-toplevel
  return dict(data_dir=support.build_digits(tmp_path_factory),
              cache_dir=str(tmp_path_factory.mktemp("xla_cache")))


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, dirs):
  """A finished 90-step digits run: (workdir, its output)."""
  import test_train_support as support  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp("runs") / "digits"
  code, output = support.run_training(workdir, *support.SHORT_RUN, **dirs)
  assert code == 0, output
  return workdir, output
