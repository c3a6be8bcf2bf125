"""Released-checkpoint format: safe loading, validation and round trips."""
import hashlib
import json
import os
import pathlib
import pickle
import re
import warnings

import jax
import numpy as np
import pytest

from nfnets_jax import models
from nfnets_jax.pretrained import released

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
  released.save_official_checkpoint(params, path)
  loaded = released.load_official_checkpoint(path, variant=kwargs["variant"])
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
  with pytest.raises(released.CheckpointError, match="Refusing to unpickle the global (posix|os).system"):
    released.load_official_checkpoint(path)
  assert not marker.exists()


def test_not_a_pickle(tmp_path):
  path = tmp_path / "garbage.npz"
  path.write_bytes(b"\x00\x01 definitely not a pickle")
  with pytest.raises(released.CheckpointError, match="not a readable pickle"):
    released.load_official_checkpoint(path)
  zipped = tmp_path / "real.npz"
  np.savez(zipped, w=np.zeros(3))
  with pytest.raises(released.CheckpointError, match="zip archive"):
    released.load_official_checkpoint(zipped)
  wrong = _write(tmp_path, [np.zeros(3)], "list.npz")
  with pytest.raises(released.CheckpointError, match="holds a list"):
    released.load_official_checkpoint(wrong)


def test_loads_reference_tree_and_infers_variant(tmp_path, resnet50_tree):
  params = released.load_official_checkpoint(_write(tmp_path, resnet50_tree))
  assert set(params) == set(resnet50_tree)
  assert released.infer_variant(resnet50_tree) == ("NFResNet", "ResNet50")


def test_variant_mismatch_names_the_files_variant(tmp_path, resnet50_tree):
  path = _write(tmp_path, resnet50_tree)
  with pytest.raises(released.CheckpointError, match="looks like NFResNet variant 'ResNet50', not 'ResNet101'"):
    released.load_official_checkpoint(path, variant="ResNet101")


def test_missing_and_unexpected_modules_are_named(tmp_path, resnet50_tree):
  tree = dict(resnet50_tree)
  del tree["NF_ResNet/~/nf_res_block_3/~/conv_shortcut"]
  tree["NF_ResNet/~/extra_head"] = {"w": np.zeros(3, np.float32)}
  with pytest.raises(released.CheckpointError) as e:
    released.load_official_checkpoint(_write(tmp_path, tree))
  assert "nf_res_block_3/~/conv_shortcut" in str(e.value) and "extra_head" in str(e.value)


def test_shape_mismatch_names_path_and_both_shapes(tmp_path, resnet50_tree):
  tree = dict(resnet50_tree)
  tree["NF_ResNet/~/nf_res_block_5/~/conv1"] = dict(
      tree["NF_ResNet/~/nf_res_block_5/~/conv1"], w=np.zeros((3, 3, 128, 64), np.float32))
  with pytest.raises(released.CheckpointError,
                     match=r"nf_res_block_5/~/conv1/w has shape \(3, 3, 128, 64\), "
                           r"the model expects \(3, 3, 128, 128\)"):
    released.load_official_checkpoint(_write(tmp_path, tree))


def test_nfnet_variants_are_told_apart():
  for variant in ("F0", "F1", "F0+"):
    _, params, _, _ = models.abstract_init("NFNet", 1000, variant=variant)
    assert released.infer_variant(params) == ("NFNet", variant)


def test_the_releases_other_networks_are_told_apart_and_round_trip(tmp_path):
  for name, variant in [("NFRegNet", "B0"), ("NFRegNet", "B3"),
                        ("SkipInitResNet", "ResNet50"), ("FixupResNet", "ResNet101")]:
    _, params, _, _ = models.abstract_init(name, 1000, variant=variant, **(
        {"grouped_conv": "xla"} if name == "NFRegNet" else {}))
    assert released.infer_variant(params) == (name, variant)
  # The release's own NF_RegNet-B0 tree (tests/data/release_models/), saved in
  # the released format and read back exactly.
  shapes = json.loads((pathlib.Path(__file__).parent / "data" / "release_models" /
                       "release_trees.json").read_text())["NF-RegNet-B0"]
  rng = np.random.default_rng(0)
  tree = {m: {n: rng.standard_normal(s).astype(np.float32) for n, s in v.items()}
          for m, v in shapes.items()}
  released.save_official_checkpoint(tree, tmp_path / "b0.npz")
  loaded = released.load_official_checkpoint(tmp_path / "b0.npz", variant="B0")
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), tree)


# Files written as the authors' were: dill 0.3.3 (and 0.3.6) in a scratch
# environment with NumPy 1.26, by tests/data/released/make_fixtures.py.
FIXTURES = pathlib.Path(__file__).parent / "data" / "released"
SMALL_F0 = dict(variant="F0", stage_widths=(16, 16, 16, 16), group_width=8)
DILL_FILES = ["f0_small_FlatMapping.dill", "f0_small_FlatMap.dill",
              "f0_small_frozendict.dill", "f0_small_FlatMapping_dill0.3.6.dill"]


@pytest.fixture(scope="module")
def reference_params():
  with np.load(FIXTURES / "reference_params.npz") as flat:
    tree = {}
    for key in flat.files:
      module, name = key.split("|")
      tree.setdefault(module, {})[name] = flat[key]
  return tree


@pytest.mark.parametrize("name", DILL_FILES)
def test_dill_written_files_load_exactly(name, reference_params):
  data = (FIXTURES / name).read_bytes()
  # What the stream really holds: Haiku's class by name, dill's helpers.
  assert b"haiku._src.data_structures" in data and b"dill._dill" in data
  params = released.load_official_checkpoint(FIXTURES / name, **SMALL_F0)
  assert set(params) == set(reference_params)
  for module, names in reference_params.items():
    assert set(params[module]) == set(names)
    for n, array in names.items():
      assert params[module][n].dtype == np.float32
      np.testing.assert_array_equal(params[module][n], array)


def test_dill_written_file_gives_the_reference_logits():
  params = released.load_official_checkpoint(FIXTURES / DILL_FILES[0], **SMALL_F0)
  net = models.transform("NFNet", 10, **SMALL_F0)
  images = np.random.default_rng(3).standard_normal((2, 33, 33, 3)).astype(np.float32)
  logits = jax.jit(net.apply, static_argnames="is_training")(
      params, {}, None, images, is_training=False)[0]["logits"]
  expected = np.load(FIXTURES / "reference_logits.npy")
  np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("name,refused", [
    ("hostile_system_FlatMapping.dill", "dill._dill._import_module('posix')"),
    ("hostile_system_FlatMap.dill", "dill._dill._import_module('posix')"),
    ("hostile_system_frozendict.dill", "dill._dill._import_module('posix')"),
    ("hostile_module.dill", "dill._dill._import_module('os')"),
])
def test_hostile_dill_files_are_refused_before_running(name, refused, tmp_path, monkeypatch):
  data = (FIXTURES / name).read_bytes()
  if "system" in name:  # The payload is really there, as dill wrote it.
    assert b"_get_attr" in data and b"system" in data and b"touch nfnets_pwned_marker" in data
  monkeypatch.chdir(tmp_path)
  with pytest.raises(released.CheckpointError, match=re.escape(refused)):
    released.load_official_checkpoint(FIXTURES / name, **SMALL_F0)
  assert not (tmp_path / "nfnets_pwned_marker").exists()


@pytest.mark.parametrize("stream,refused", [
    # A NumPy module, but not an array reconstructor.
    (b"cdill._dill\n_get_attr\n(cdill._dill\n_import_module\n"
     b"(S'numpy.core._multiarray_umath'\ntRS'fromfile'\ntR.",
     "_get_attr('numpy.core._multiarray_umath', 'fromfile')"),
    # _get_attr on something that did not come from the checked _import_module.
    (b"cdill._dill\n_get_attr\n(S'numpy.core.multiarray'\nS'_reconstruct'\ntR.",
     "_get_attr('numpy.core.multiarray', '_reconstruct')"),
    # _create_array with a constructor that is not NumPy's reconstructor.
    (b"cdill._dill\n_create_array\n(cnumpy\nndarray\n(tNNtR.",
     "_create_array with constructor <class 'numpy.ndarray'>"),
    # A plain global inside a Haiku container.
    (b"chaiku._src.data_structures\nFlatMapping\n(cposix\nsystem\n(S'touch x'\ntRtR.",
     "posix.system"),
])
def test_hand_built_hostile_streams_are_refused(stream, refused, tmp_path):
  path = tmp_path / "hostile.npz"
  path.write_bytes(stream)
  with pytest.raises(released.CheckpointError, match=re.escape(refused)):
    released.read_param_pickle(path)


def test_md5_of_a_file_named_like_a_released_one_is_checked(tmp_path, monkeypatch):
  data = (FIXTURES / DILL_FILES[0]).read_bytes()
  named = tmp_path / "F0_haiku.npz"
  named.write_bytes(data)
  with pytest.warns(released.ReleasedFileWarning,
                    match=f"MD5 {hashlib.md5(data).hexdigest()} differs from the "
                          "published F0_haiku.npz's 0a41039da1cb43adf47f1b7d86ddfe0f"):
    released.load_official_checkpoint(named, **SMALL_F0)
  # A truncated download: the error says why.
  named.write_bytes(data[:len(data) // 2])
  with pytest.raises(released.CheckpointError, match="not a readable pickle.*MD5 .* differs"):
    released.load_official_checkpoint(named, **SMALL_F0)
  # The published sum passes silently; a renamed file is not checked.
  named.write_bytes(data)
  monkeypatch.setitem(released.RELEASED_MD5, "F0_haiku.npz", hashlib.md5(data).hexdigest())
  renamed = tmp_path / "my_f0.pkl"
  renamed.write_bytes(data)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    released.load_official_checkpoint(named, **SMALL_F0)
    released.load_official_checkpoint(renamed, **SMALL_F0)
