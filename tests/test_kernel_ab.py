"""experiments.kernel_ab: other builds of the oneDNN kernel, side by side in one process."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import kernel_ab
from nfnets_jax.kernels import onednn

SOURCE = pathlib.Path(onednn.__file__).with_name("onednn_conv.cc")
pytestmark = pytest.mark.skipif(onednn.unavailable_reason() is not None,
                                reason=f"no oneDNN kernel: {onednn.unavailable_reason()}")


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
  """The kernel's own source built as 'abtest', once for the module."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("NFNETS_JAX_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield kernel_ab.load_variant("abtest", SOURCE)


def test_a_renamed_build_is_what_convolutions_call_inside_calling(targets):
  assert targets == ("abtest_conv_forward", "abtest_conv_backward_data",
                     "abtest_conv_backward_weights")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 8))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 8))
  step = lambda x, w: jax.grad(lambda x, w: jnp.sum(onednn.conv(x, w, 1, 2, ((1, 1), (1, 1)))
                                                    ** 2), (0, 1))(x, w)
  with kernel_ab.calling(targets):
    hlo = jax.jit(step).lower(x, w).as_text()
    ours = jax.jit(step)(x, w)
  assert all(t in hlo for t in targets) and onednn.FORWARD not in hlo
  assert onednn.TARGETS == (onednn.FORWARD, onednn.BACKWARD_DATA, onednn.BACKWARD_WEIGHTS)
  for a, b in zip(ours, jax.jit(step)(x, w)):  # The same source: the same numbers.
    np.testing.assert_array_equal(a, b)


def test_bad_builds_are_refused_with_the_fix(tmp_path):
  with pytest.raises(ValueError, match="C identifier other than 'base'"):
    kernel_ab.load_variant("base", SOURCE)
  other = tmp_path / "other.cc"
  other.write_text("int f() { return 0; }\n")
  with pytest.raises(ValueError, match="no nfnets_conv_.*onednn_conv.cc"):
    kernel_ab.load_variant("other", other)


def test_a_name_holds_one_source(targets, tmp_path):
  assert kernel_ab.load_variant("abtest", SOURCE) == targets  # Loaded once, not again.
  edited = tmp_path / "edited.cc"
  edited.write_text(SOURCE.read_text() + "// edited\n")
  with pytest.raises(ValueError, match="'abtest' already holds another source.*another name"):
    kernel_ab.load_variant("abtest", edited)


def test_prints_each_build_against_base(targets, capsys):
  # main finds 'abtest' loaded already (the fixture's build).
  kernel_ab.main([f"--source=abtest={SOURCE}", "--model=NFNet", "--resolution=32", "--batch=2",
                  "--steps=3", '--model_kwargs={"stage_depths": [1, 1, 1, 1], "width": 0.125}'])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("train    base") and "3 steps" in lines[0]
  assert lines[1].startswith("train    abtest") and "base faster in" in lines[1]
  assert lines[1].endswith("/3 pairs")
