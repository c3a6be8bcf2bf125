"""The package as others install it: wheel metadata, a clean install, run.sh's set-up."""
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

from packaging.requirements import Requirement
import pytest

import nfnets_jax
import test_train_support as support

SCRIPTS = ("nfnets-train", "nfnets-evaluate", "nfnets-predict", "nfnets-export", "nfnets-bench")


def _locked_versions():
  lines = (support.REPO / "requirements.txt").read_text().splitlines()
  pins = [Requirement(l) for l in lines if "==" in l and not l.startswith("#")]
  return {r.name.lower().replace("_", "-"): next(iter(r.specifier)).version for r in pins}


def test_dependency_ranges_admit_the_tested_lock():
  project = tomllib.loads((support.REPO / "pyproject.toml").read_text())["project"]
  locked = _locked_versions()
  requirements = [Requirement(r) for r in project["dependencies"]]
  for extra in ("plots", "test"):
    requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
  for requirement in requirements:
    assert "==" not in str(requirement.specifier), requirement
    if requirement.marker and not requirement.marker.evaluate({"sys_platform": "linux"}):
      continue
    name = requirement.name.lower().replace("_", "-")
    assert name in locked, f"{name} is a dependency but not in requirements.txt"
    assert requirement.specifier.contains(locked[name]), (requirement, locked[name])
  for extra in ("cuda12", "cuda13", "tpu"):
    (jax,) = [Requirement(r) for r in project["optional-dependencies"][extra]]
    assert jax.name == "jax" and jax.extras == {extra}
    assert jax.specifier.contains(locked["jax"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """A wheel built from a copy of the checkout (no network: no build isolation)."""
  source = tmp_path_factory.mktemp("source") / "nfnets_jax"
  shutil.copytree(support.REPO, source, ignore=shutil.ignore_patterns(
      ".venv", ".git", "workdirs", "*.egg-info", "build", "__pycache__", "tests"))
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "--no-index", "-w", str(out), str(source)],
                 check=True, capture_output=True, text=True, timeout=300)
  (path,) = out.glob("nfnets_jax-*.whl")
  return path


def test_wheel_metadata(wheel):
  assert wheel.name.startswith(f"nfnets_jax-{nfnets_jax.__version__}-py3-none-any")
  with zipfile.ZipFile(wheel) as archive:
    info = f"nfnets_jax-{nfnets_jax.__version__}.dist-info"
    metadata = archive.read(f"{info}/METADATA").decode()
    entry_points = archive.read(f"{info}/entry_points.txt").decode()
    files = archive.namelist()
  requires = [Requirement(l.split(":", 1)[1]) for l in metadata.splitlines()
              if l.startswith("Requires-Dist:")]
  assert requires
  for requirement in requires:  # Ranges only (markers may say ==).
    assert "==" not in str(requirement.specifier), requirement
  for extra in ("cuda12", "cuda13", "tpu"):
    assert f"Provides-Extra: {extra}" in metadata
    assert f'Requires-Dist: jax[{extra}]' in metadata
  for script in SCRIPTS:
    assert f"{script} = nfnets_jax." in entry_points
  assert "nfnets_jax/pretrained/timm.py" in files and "nfnets_jax/data/digits.py" in files
  assert "nfnets_jax/kernels/onednn_conv.cc" in files  # Built on first use.
  assert not any(f.startswith(("tests/", "experiments/")) for f in files)


def test_installed_package_works_from_another_directory(wheel, tmp_path):
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                  "--no-index", "--target", str(target), str(wheel)],
                 check=True, capture_output=True, text=True, timeout=300)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(target), JAX_PLATFORMS="cpu",
             NFNETS_JAX_CACHE_DIR=str(tmp_path / "cache"))
  code = ("import nfnets_jax, optax; "
          "optax.chain(nfnets_jax.adaptive_grad_clip(0.01), "
          "optax.sgd(0.1, momentum=0.9, nesterov=True)); print(nfnets_jax.__file__); "
          # The oneDNN kernel builds from the installed source.
          "from nfnets_jax.kernels import onednn; print(onednn.unavailable_reason())")
  result = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300, check=True)
  package, kernel = result.stdout.split()[-2:]
  assert package.startswith(str(target)) and kernel == "None", result.stdout
  # A console script, with a config given by path from another directory.
  config = support.REPO / "experiments" / "digits.py"
  result = subprocess.run([str(target / "bin" / "nfnets-train"), f"--config={config}",
                           "--help"], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  # absl's --help exits 1 after printing the tool's flags.
  assert result.returncode in (0, 1), result.stderr
  assert "--workdir: Directory for checkpoints" in result.stdout, result.stdout
  assert "--config: Experiment config file" in result.stdout


def _run_sh_accelerator(tmp_path, nvidia_smi=None, **env):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  if nvidia_smi is not None:
    fake = bin_dir / "nvidia-smi"
    fake.write_text(nvidia_smi)
    fake.chmod(0o755)
  environment = {k: v for k, v in os.environ.items()
                 if k not in ("ACCELERATOR", "TPU_ACCELERATOR_TYPE")}
  environment.update(env, PATH=f"{bin_dir}:{os.environ['PATH']}")
  return subprocess.run([str(support.REPO / "run.sh"), "accelerator"], env=environment,
                        capture_output=True, text=True, timeout=60, check=False)


_SMI = """#!/bin/sh
[ "$1" = "-L" ] && {{ echo "GPU 0: NVIDIA H100 (UUID: GPU-0)"; exit 0; }}
echo "| NVIDIA-SMI 580.00   Driver Version: 580.00   CUDA Version: {cuda}     |"
"""


@pytest.mark.parametrize("nvidia_smi,env,expected", [
    (_SMI.format(cuda="13.0"), {}, "cuda13 jax[cuda13]=={jax}"),
    (_SMI.format(cuda="12.8"), {}, "cuda12 jax[cuda12]=={jax}"),
    # nvidia-smi without a working driver: no GPU.
    ("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2; exit 9\n", {}, "cpu"),
    ("#!/bin/sh\nexit 9\n", {"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, "tpu jax[tpu]=={jax}"),
    (_SMI.format(cuda="13.0"), {"ACCELERATOR": "cpu"}, "cpu"),
])
def test_run_sh_installs_the_accelerators_jax(tmp_path, nvidia_smi, env, expected):
  result = _run_sh_accelerator(tmp_path, nvidia_smi, **env)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == expected.format(jax=_locked_versions()["jax"])


def test_run_sh_refuses_an_unknown_accelerator(tmp_path):
  result = _run_sh_accelerator(tmp_path, ACCELERATOR="rocm")
  assert result.returncode == 2
  assert "unknown ACCELERATOR=rocm; use cpu, cuda12, cuda13 or tpu" in result.stderr


@pytest.mark.skipif(os.environ.get("NFNETS_REGISTRY_TESTS") != "1",
                    reason="asks the package registry; set NFNETS_REGISTRY_TESTS=1")
@pytest.mark.parametrize("accelerator", ["cuda12", "cuda13", "tpu"])
def test_accelerator_builds_resolve_on_the_registry(accelerator, tmp_path):
  requirement = f"jax[{accelerator}]=={_locked_versions()['jax']}"
  result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run",
                           "--ignore-installed", "--quiet", "--report",
                           str(tmp_path / "report.json"), requirement],
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr
