"""Test-wide setup: runs before any test module imports JAX."""
import os

# Eight fake CPU devices, so pmap and multi-device code run on any machine.
# The tests run small models, whose cost is almost all XLA compile time:
# backend optimisation level 0 cuts it several-fold (measured: 61 s -> 9 s
# for a tiny NFNet's init + forward), and XLA's older loop emitters compile
# the ~1,300 small fusions of a training step faster than its fusion emitters
# (a tiny NFNet's forward: 2.8 s -> 1.2 s). Training runs started by the tests
# get the same flags (test_train_support.subprocess_env); benchmarks and
# training do not set them. One compute thread per process: pytest-xdist runs
# a worker per core, and several tests run training processes side by side.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    + " --xla_cpu_use_fusion_emitters=false"
    + " --xla_cpu_multi_thread_eigen=false"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One thread for oneDNN's convolutions (nfnets_jax.kernels) too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# TensorFlow is only used for tf.data: keep it off any accelerator.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


import contextlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import fcntl  # pylint: disable=g-import-not-at-top,wrong-import-position
import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


# Modules by their measured cost, heaviest first (the rest keep their order
# after these): pytest-xdist hands whole modules to the workers in this order
# (`--no-loadscope-reorder` in pytest.ini), so that the long ones start early
# and the workers finish together. test_finetune comes first: it builds the
# short run that test_train and test_evaluate then find ready.
_HEAVIEST_FIRST = (
    "test_finetune.py", "test_checkpointing.py", "test_model_family.py",
    "test_models.py", "test_train.py", "test_train_step.py", "test_multihost.py",
    "test_released.py", "test_signal_propagation.py", "test_predict.py",
    "test_timm.py", "test_agc_ablation.py",
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_HEAVIEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> pathlib.Path:
  """A directory that every pytest-xdist worker of this session shares."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _first_worker_builds(shared_dir: pathlib.Path, name: str):
  """Yields (path, whether to build it): built once, by the first worker."""
  path = shared_dir / name
  with open(shared_dir / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    done = path.with_name(name + ".done")
    yield path, not done.exists()
    done.touch()


@pytest.fixture(scope="session")
def dirs(shared_dir):
  """Keyword arguments of the tiny runs: digits data_dir and XLA cache.

  Shared by the workers: the digits are built once, and the training runs of
  all workers share one persistent compilation cache.
  """
  import test_train_support as support  # pylint: disable=import-outside-toplevel
  with _first_worker_builds(shared_dir, "tfds") as (data_dir, build):
    if build:
      support.build_digits(data_dir)
  return dict(data_dir=str(data_dir), cache_dir=str(shared_dir / "xla_cache"))


@pytest.fixture(scope="session")
def short_run(shared_dir, dirs):
  """A finished 90-step digits run: (workdir, its output), trained once."""
  import test_train_support as support  # pylint: disable=import-outside-toplevel
  with _first_worker_builds(shared_dir, "digits_run") as (workdir, build):
    if build:
      code, output = support.run_training(workdir, *support.SHORT_RUN, **dirs)
      assert code == 0, output
  return workdir, support.log_of_workdir(workdir)
