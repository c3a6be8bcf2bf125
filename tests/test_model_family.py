"""The whole NF family against its references: the release's code and timm.

tests/data/release_models/ was made by the release's own `nf_regnet.py`,
`skipinit_resnet.py` and `fixup_resnet.py` (its make_fixture.py);
tests/data/timm/ by timm 1.0.31 on torch 2.13.0 (its make_fixture.py).
"""
import importlib.util
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy

from nfnets_jax import models
from nfnets_jax.models import inference
from nfnets_jax.pretrained import timm

DATA = pathlib.Path(__file__).parent / "data"
TIMM = DATA / "timm"
RELEASE = DATA / "release_models"

# PRETRAINED.md: parameter counts for 1000 classes, from the release's code.
RELEASE_COUNTS = {
    ("NFRegNet", "B0"): 8_595_372, ("NFRegNet", "B1"): 10_019_208,
    ("NFRegNet", "B2"): 13_785_904, ("NFRegNet", "B3"): 18_136_667,
    ("NFRegNet", "B4"): 29_315_830, ("NFRegNet", "B5"): 48_707_138,
    ("NFRegNet", "B6"): 70_045_805, ("NFRegNet", "B7"): 101_743_204,
    ("NFRegNet", "B8"): 142_314_441, ("SkipInitResNet", "ResNet50"): 25_530_424,
}
# PRETRAINED.md: timm 1.0.31's counts.
TIMM_COUNTS = {
    "eca_nfnet_l0": 24_143_924, "eca_nfnet_l1": 41_407_728, "eca_nfnet_l2": 56_722_348,
    "eca_nfnet_l3": 72_036_968, "nfnet_l0": 35_074_488, "nf_regnet_b0": 8_764_288,
    "nf_regnet_b1": 10_223_984, "nf_resnet50": 25_557_032, "dm_nfnet_f0": 71_489_284,
}
# Our names and overrides for the release fixture's small networks.
RELEASE_SMALL = {
    "NF-RegNet-B0": ("NFRegNet", dict(variant="B0", width=0.25)),
    "SkipInit-ResNet50": ("SkipInitResNet", dict(width=1)),
    "Fixup-ResNet50": ("FixupResNet", dict(width=1)),
}
RELEASE_FULL = {"NF-RegNet-B0": ("NFRegNet", "B0"),
                "SkipInit-ResNet50": ("SkipInitResNet", "ResNet50"),
                "Fixup-ResNet50": ("FixupResNet", "ResNet50")}
# Our overrides for the timm fixture's small widths (make_fixture.SMALL).
TIMM_SMALL = {
    "eca_nfnet_l0": dict(stage_widths=(256, 32, 48, 64), group_width=8),
    "nfnet_l0": dict(stage_widths=(256, 32, 48, 64), group_width=8),
    "nf_regnet_b1": dict(stage_widths=(16, 24, 32, 48)),
    "nf_resnet50": dict(width=1, stage_widths=(32, 32, 64, 64)),
}


def _count(name, **kwargs):
  return models.count_params(models.abstract_init(name, 1000, **kwargs)[1])


def _shapes(params):
  return {m: {n: list(a.shape) for n, a in v.items()} for m, v in params.items()}


def _both_logits(net, params, images):
  """Eval-mode logits as `forward.apply` and as evaluation computes them
  (weights standardised once, `models.inference`)."""
  def plain(p, x):
    return net.apply(p, {}, None, x, is_training=False)[0]["logits"]

  def standardized(p, x):
    weights = inference.standardized_params(net, p, {}, x)
    return inference.apply_standardized(net, weights, {}, x)["logits"]
  return [np.asarray(jax.jit(f)(params, images)) for f in (plain, standardized)]


@pytest.mark.parametrize("name,variant", sorted(RELEASE_COUNTS))
def test_release_parameter_counts(name, variant):
  assert _count(name, variant=variant) == RELEASE_COUNTS[name, variant]


def test_every_timm_name_counts_as_timm_does():
  counts = json.loads((TIMM / "param_counts.json").read_text())  # Made by timm itself.
  assert {name: counts[name] for name in TIMM_COUNTS} == TIMM_COUNTS  # = PRETRAINED.md.
  assert set(counts) >= {"nf_regnet_b5", "nf_resnet26", "nf_resnet101"}
  assert {name: _count(name) for name in counts} == counts


@pytest.mark.parametrize("key", sorted(RELEASE_FULL))
def test_parameter_tree_equals_the_releases(key):
  name, variant = RELEASE_FULL[key]
  expected = json.loads((RELEASE / "release_trees.json").read_text())[key]
  _, params, state, _ = models.abstract_init(name, 1000, variant=variant)
  assert _shapes(params) == expected and not state


@pytest.mark.parametrize("variant", ["B0", "B3", "B8"])
def test_nfregnet_macs_equal_the_releases_own_count(variant):
  # The release's NF_RegNet.count_flops at 256 px, where all its divisions
  # of the resolution are exact.
  expected = json.loads((RELEASE / "release_macs.json").read_text())[variant]
  assert models.model_macs("NFRegNet", 256, variant=variant, grouped_conv="xla") == expected


def _release_fixture():
  spec = importlib.util.spec_from_file_location("release_fixture", RELEASE / "make_fixture.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # Defines functions only; the release is not imported.
  return module


@pytest.mark.parametrize("key", sorted(RELEASE_SMALL))
def test_logits_equal_the_releases(key):
  fixture = _release_fixture()
  name, kwargs = RELEASE_SMALL[key]
  net, shapes, _, _ = models.abstract_init(name, fixture.NUM_CLASSES, **kwargs)
  params = fixture.random_params(_shapes(shapes))
  expected = np.load(RELEASE / "release_logits.npz")[key]
  for logits in _both_logits(net, params, fixture.input_images()):
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.fixture(scope="module", params=sorted(TIMM_SMALL))
def timm_small(request):
  """(arch, our overrides, its timm file, our params read from it)."""
  arch = request.param
  path = TIMM / f"{arch}_small.safetensors"
  return arch, TIMM_SMALL[arch], path, timm.load_timm_checkpoint(path, arch, **TIMM_SMALL[arch])


def test_timm_logits_agree(timm_small):
  arch, kwargs, _, params = timm_small
  images = np.random.default_rng(5).standard_normal((2, 3, 35, 35)).astype(np.float32)
  net = models.transform(arch, 10, **kwargs)
  expected = np.load(TIMM / f"{arch}_small_logits.npy")
  # Only float32 summation order differs: measured 6e-7 to 2.3e-6 of the largest.
  for logits in _both_logits(net, params, images.transpose(0, 2, 3, 1)):
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_timm_export_is_exact_and_reproduces_timms_file(timm_small, tmp_path):
  arch, kwargs, path, params = timm_small
  out = tmp_path / "exported.safetensors"
  assert timm.export_timm(params, out, arch, **kwargs) == arch
  jax.tree.map(np.testing.assert_array_equal, timm.load_timm_checkpoint(out, arch, **kwargs),
               params)
  ours, theirs = safetensors.numpy.load_file(out), safetensors.numpy.load_file(path)
  assert set(ours) == set(theirs)
  for key, value in theirs.items():
    np.testing.assert_array_equal(ours[key], value, err_msg=key)
  # A renamed file: the architecture follows from its blocks and keys, also
  # where another architecture has the same blocks per stage (nfnet_l0,
  # eca_nfnet_l0 and dm_nfnet_f0 all have F0's).
  renamed = tmp_path / "weights.bin"
  shutil.copy(path, renamed)
  assert timm.read_timm_checkpoint(renamed, **kwargs)[0] == arch


@pytest.mark.parametrize("arch", sorted(TIMM_SMALL))
def test_full_size_export_has_timms_keys_and_shapes(arch):
  _, shapes, _, _ = models.abstract_init(arch, 1000)
  # Zero-stride views: the full model's shapes without allocating its weights.
  params = {m: {n: np.broadcast_to(np.float32(0), s.shape) for n, s in v.items()}
            for m, v in shapes.items()}
  state_dict = timm.to_timm_state_dict(params, arch)
  expected = json.loads((TIMM / f"{arch}_shapes.json").read_text())
  assert {k: list(v.shape) for k, v in state_dict.items()} == expected
  back = timm.from_timm_state_dict(state_dict, arch)
  assert _shapes(back) == _shapes(shapes)


def test_timm_names_take_overrides_and_bad_names_are_refused():
  cls, kwargs = models.resolve("nf_regnet_b1", drop_rate=0.0)
  assert cls is models.NFRegNet and kwargs["drop_rate"] == 0.0
  assert kwargs["channel_divisor"] == 8 and kwargs["padding"] == "symmetric"
  with pytest.raises(ValueError, match="Unknown model 'nf_regnet_b9'.*timm's names"):
    models.resolve("nf_regnet_b9")
