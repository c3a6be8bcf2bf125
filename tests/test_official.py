"""Released-checkpoint format: safe loading, validation and round trips."""
import json
import os
import pathlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax import models, official

REFERENCE = json.loads(
    (pathlib.Path(__file__).parent / "data" / "official_param_shapes.json").read_text())


def _random_params(name, **kwargs):
  """Random params of a model's shapes: weights, gains, biases and skip_gains all non-trivial."""
  net, shapes, _, _ = models.abstract_init(name, 1000, **kwargs)
  rng = np.random.default_rng(0)
  params = {m: {n: (1.0 if n == "gain" else 0.0) + 0.1 * rng.standard_normal(a.shape, np.float32)
                for n, a in v.items()} for m, v in shapes.items()}
  return net, params


@pytest.mark.parametrize("name,resolution,kwargs", [
    ("NFNet", 97, dict(variant="F0")),
    ("NFResNet", 64, dict(variant="ResNet50")),
])
def test_round_trip_gives_identical_logits(tmp_path, name, resolution, kwargs):
  net, params = _random_params(name, **kwargs)
  path = tmp_path / "model_haiku.npz"
  official.save_official_checkpoint(params, path)
  loaded = official.load_official_checkpoint(path, variant=kwargs["variant"])
  x = jax.random.normal(jax.random.PRNGKey(2), (2, resolution, resolution, 3))
  apply = jax.jit(lambda p: net.apply(p, {}, None, x, is_training=False)[0]["logits"])
  np.testing.assert_array_equal(apply(loaded), apply(params))
  # The file is a plain pickle of {module_path: {name: ndarray}}, as released.
  with open(path, "rb") as f:
    raw = pickle.load(f)
  assert {m: {n: list(a.shape) for n, a in v.items()} for m, v in raw.items()} == \
      REFERENCE["F0" if name == "NFNet" else "NF-ResNet50"]


@pytest.fixture(scope="module")
def resnet50_tree():
  """NF-ResNet-50 params in the released layout, built from the reference shapes."""
  return {m: {n: np.zeros(s, np.float32) for n, s in v.items()}
          for m, v in REFERENCE["NF-ResNet50"].items()}


def _write(tmp_path, tree, name="ckpt.npz"):
  path = tmp_path / name
  with open(path, "wb") as f:
    pickle.dump(tree, f)
  return path


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
  marker = tmp_path / "pwned"

  class Exploit:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = _write(tmp_path, {"NF_ResNet/~/linear": {"w": Exploit()}})
  with pytest.raises(official.CheckpointError, match="Refusing to unpickle the global (posix|os).system"):
    official.load_official_checkpoint(path)
  assert not marker.exists()


def test_not_a_pickle(tmp_path):
  path = tmp_path / "garbage.npz"
  path.write_bytes(b"\x00\x01 definitely not a pickle")
  with pytest.raises(official.CheckpointError, match="not a readable pickle"):
    official.load_official_checkpoint(path)
  zipped = tmp_path / "real.npz"
  np.savez(zipped, w=np.zeros(3))
  with pytest.raises(official.CheckpointError, match="zip archive"):
    official.load_official_checkpoint(zipped)
  wrong = _write(tmp_path, [np.zeros(3)], "list.npz")
  with pytest.raises(official.CheckpointError, match="holds a list"):
    official.load_official_checkpoint(wrong)


def test_loads_reference_tree_and_infers_variant(tmp_path, resnet50_tree):
  params = official.load_official_checkpoint(_write(tmp_path, resnet50_tree))
  assert set(params) == set(resnet50_tree)
  assert official.infer_variant(resnet50_tree) == ("NFResNet", "ResNet50")


def test_variant_mismatch_names_the_files_variant(tmp_path, resnet50_tree):
  path = _write(tmp_path, resnet50_tree)
  with pytest.raises(official.CheckpointError, match="looks like NFResNet variant 'ResNet50', not 'ResNet101'"):
    official.load_official_checkpoint(path, variant="ResNet101")


def test_missing_and_unexpected_modules_are_named(tmp_path, resnet50_tree):
  tree = dict(resnet50_tree)
  del tree["NF_ResNet/~/nf_res_block_3/~/conv_shortcut"]
  tree["NF_ResNet/~/extra_head"] = {"w": np.zeros(3, np.float32)}
  with pytest.raises(official.CheckpointError) as e:
    official.load_official_checkpoint(_write(tmp_path, tree))
  assert "nf_res_block_3/~/conv_shortcut" in str(e.value) and "extra_head" in str(e.value)


def test_shape_mismatch_names_path_and_both_shapes(tmp_path, resnet50_tree):
  tree = dict(resnet50_tree)
  tree["NF_ResNet/~/nf_res_block_5/~/conv1"] = dict(
      tree["NF_ResNet/~/nf_res_block_5/~/conv1"], w=np.zeros((3, 3, 128, 64), np.float32))
  with pytest.raises(official.CheckpointError,
                     match=r"nf_res_block_5/~/conv1/w has shape \(3, 3, 128, 64\), "
                           r"the model expects \(3, 3, 128, 128\)"):
    official.load_official_checkpoint(_write(tmp_path, tree))


def test_nfnet_variants_are_told_apart():
  for variant in ("F0", "F1", "F0+"):
    _, params, _, _ = models.abstract_init("NFNet", 1000, variant=variant)
    assert official.infer_variant(params) == ("NFNet", variant)
