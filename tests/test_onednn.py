"""The oneDNN convolution kernel against XLA's convolution and NumPy."""
import importlib.metadata
import os
import pathlib
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax import models
from nfnets_jax.kernels import build
from nfnets_jax.kernels import onednn
from nfnets_jax.models import counting
from nfnets_jax.models import layers

REPO = pathlib.Path(__file__).resolve().parents[1]
# requirements.txt installs oneDNN on Linux x86_64: there the kernel must work.
_PINNED_HERE = sys.platform == "linux" and platform.machine() == "x86_64"


def _cpu_flags() -> set[str]:
  with open("/proc/cpuinfo") as f:
    return next((set(line.split(":", 1)[1].split()) for line in f
                 if line.startswith("flags")), set())


# The Linux kernel's word on bfloat16 instructions oneDNN uses: AVX512-BF16
# (every AMX CPU has it too) or AVX2-VNNI-2 (its AVX-NE-CONVERT part).
_BF16_CPU = _PINNED_HERE and bool({"avx512_bf16", "avx_ne_convert"} & _cpu_flags())
pytestmark = pytest.mark.skipif(
    not _PINNED_HERE and onednn.unavailable_reason() is not None,
    reason=f"no oneDNN kernel: {onednn.unavailable_reason()}")


def test_kernel_builds_where_requirements_install_onednn():
  assert importlib.metadata.version("onednn-devel-cpu-gomp").startswith("2023.")
  assert onednn.unavailable_reason() is None
  assert layers.default_grouped_conv_impl() == "onednn"
  assert onednn.native_bf16() == _BF16_CPU
  assert layers.default_grouped_conv_impl(jnp.bfloat16) == ("onednn" if _BF16_CPU else "split")
  assert layers.default_grouped_conv_impl(jnp.float16) == "split"


def _lax_conv(x, w, stride, groups, pads):
  return jax.lax.conv_general_dilated(
      x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups, precision=jax.lax.Precision.HIGHEST)


def _numpy_conv(x, w, stride, groups, pads):
  """The definition, in float64: y[n,h,w,o] = sum x_pad[n, h*s+i, w*s+j, c] w[i,j,c,o]."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)))
  w = np.asarray(w, np.float64)
  kh, kw, group_in, out_ch = w.shape
  oh = (x.shape[1] - kh) // stride + 1
  ow = (x.shape[2] - kw) // stride + 1
  group_out = out_ch // groups
  y = np.zeros((x.shape[0], oh, ow, out_ch))
  for g in range(groups):
    xg = x[..., g * group_in:(g + 1) * group_in]
    for i in range(kh):
      for j in range(kw):
        taps = xg[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride]
        y[..., g * group_out:(g + 1) * group_out] += taps @ w[i, j, :, g * group_out:(g + 1) * group_out]
  return y


def _scaled_close(ours, reference, rtol=1e-5):
  scale = np.max(np.abs(reference))
  np.testing.assert_allclose(np.asarray(ours) / scale, np.asarray(reference) / scale,
                             rtol=rtol, atol=rtol)


# (batch, height, width, channels, kernel, out channels, groups, stride, pads):
# dense, grouped (F0's group width 128 in small), depthwise; 1x1, 3x3 and 7x7;
# strides 1 and 2; odd and non-square inputs; SAME's (0, 1) and symmetric pads.
GEOMETRIES = [
    (2, 9, 7, 12, 3, 8, 4, 2, ((0, 1), (1, 1))),
    (2, 8, 8, 6, 1, 10, 1, 1, ((0, 0), (0, 0))),
    (1, 11, 11, 3, 3, 16, 1, 2, ((1, 1), (1, 1))),
    (3, 10, 12, 16, 3, 16, 2, 1, ((1, 1), (1, 1))),
    (2, 8, 8, 8, 3, 8, 8, 2, ((0, 1), (0, 1))),
    (1, 13, 9, 4, 7, 6, 2, 2, ((3, 3), (2, 4))),
    (2, 6, 6, 10, 1, 4, 1, 2, ((0, 0), (0, 0))),
]


@pytest.mark.parametrize("n,h,w,c,k,o,groups,stride,pads", GEOMETRIES)
def test_outputs_and_gradients_equal_xla_and_numpy(n, h, w, c, k, o, groups, stride, pads):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(h * w + c), 3)
  x = jax.random.normal(kx, (n, h, w, c))
  kernel = jax.random.normal(kw, (k, k, c // groups, o))
  ours = jax.jit(lambda x, w: onednn.conv(x, w, stride, groups, pads))
  out = ours(x, kernel)
  _scaled_close(out, _lax_conv(x, kernel, stride, groups, pads))
  _scaled_close(out, _numpy_conv(x, kernel, stride, groups, pads))
  cot = jax.random.normal(kg, out.shape)
  loss = lambda conv: lambda x, w: jnp.vdot(conv(x, w, stride, groups, pads), cot)
  for a, b in zip(jax.jit(jax.grad(loss(onednn.conv), (0, 1)))(x, kernel),
                  jax.grad(loss(_lax_conv), (0, 1))(x, kernel)):
    _scaled_close(a, b)


@pytest.mark.parametrize("n,h,w,c,k,o,groups,stride,pads", GEOMETRIES[:2] + GEOMETRIES[4:6])
def test_gradients_of_gradients_equal_xla(n, h, w, c, k, o, groups, stride, pads):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(c), 3)
  x = jax.random.normal(kx, (n, h, w, c))
  kernel = jax.random.normal(kw, (k, k, c // groups, o))
  cot = jax.random.normal(kg, onednn.output_shape(x.shape, kernel.shape, stride, pads))

  def second_order(conv):
    loss = lambda x, w: jnp.vdot(conv(x, w, stride, groups, pads), cot)
    # A non-linear function of both gradients reaches every VJP of every direction.
    return lambda x, w: sum(jnp.sum(jnp.sin(g)) for g in jax.grad(loss, (0, 1))(x, w))

  for a, b in zip(jax.jit(jax.grad(second_order(onednn.conv), (0, 1)))(x, kernel),
                  jax.grad(second_order(_lax_conv), (0, 1))(x, kernel)):
    _scaled_close(a, b)


def test_stride_1_1x1_convolutions_run_backward_as_matmuls():
  # oneDNN's verbose log names each primitive it runs; GEOMETRIES[1] is a
  # stride-1 1x1 convolution, GEOMETRIES[6] a stride-2 one. Eager calls: the
  # forward pass runs under jax.vjp, the backward one under its VJP.
  script = """if True:
    import jax, jax.numpy as jnp
    from nfnets_jax.kernels import onednn
    for n, h, w, c, k, o, groups, stride, pads in [GEOMETRIES[1], GEOMETRIES[6]]:
      x, kernel = jnp.ones((n, h, w, c)), jnp.ones((k, k, c // groups, o))
      print("part", flush=True)
      y, vjp = jax.vjp(lambda x, w: onednn.conv(x, w, stride, groups, pads), x, kernel)
      jax.block_until_ready(y)
      print("part", flush=True)
      jax.block_until_ready(vjp(jnp.ones_like(y)))
  """.replace("GEOMETRIES", repr(GEOMETRIES))
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, ONEDNN_VERBOSE="1"), check=True).stdout
  primitives = lambda log: {line.split(",")[3] for line in log.splitlines()
                            if line.startswith("onednn_verbose") and ",exec," in line}
  _, forward, backward, strided_forward, strided_backward = map(primitives, out.split("part"))
  assert "convolution" in forward and "matmul" not in forward
  assert backward == {"matmul"}  # No weight reorder either.
  assert "convolution" in strided_backward and "matmul" not in strided_backward


def test_pmap_and_vmap():
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 2, 6, 6, 4))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 6))
  pads = ((1, 1), (1, 1))
  expected = jax.vmap(lambda x: _lax_conv(x, w, 1, 2, pads))(x)
  conv = lambda x: onednn.conv(x, w, 1, 2, pads)
  _scaled_close(jax.pmap(conv)(x), expected)
  _scaled_close(jax.vmap(conv)(x), expected)


@pytest.mark.skipif(not _BF16_CPU, reason="this CPU has no bfloat16 instructions")
@pytest.mark.parametrize("n,h,w,c,k,o,groups,stride,pads", GEOMETRIES[:2] + GEOMETRIES[3:6])
def test_bfloat16_outputs_and_gradients_equal_numpy(n, h, w, c, k, o, groups, stride, pads):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(h * w + c), 3)
  x = jax.random.normal(kx, (n, h, w, c), jnp.bfloat16)
  kernel = jax.random.normal(kw, (k, k, c // groups, o), jnp.bfloat16)
  out = jax.jit(lambda x, w: onednn.conv(x, w, stride, groups, pads))(x, kernel)
  assert out.dtype == jnp.bfloat16
  # The exact convolution of the same bfloat16 numbers, in float64; ours
  # accumulates in float32 and rounds once to bfloat16 (8 significant bits).
  _scaled_close(out.astype(jnp.float32), _numpy_conv(x, kernel, stride, groups, pads), 2**-8)
  cot = jax.random.normal(kg, out.shape, jnp.bfloat16)
  x_grad, w_grad = jax.jit(jax.grad(
      lambda x, w: jnp.vdot(onednn.conv(x, w, stride, groups, pads), cot).astype(jnp.float32),
      (0, 1)))(x, kernel)
  # XLA's float32 gradients of the same numbers, exact to ~1e-6 here.
  f32 = lambda a: a.astype(jnp.float32)
  ref_x, ref_w = jax.grad(lambda x, w: jnp.vdot(_lax_conv(x, w, stride, groups, pads), f32(cot)),
                          (0, 1))(f32(x), f32(kernel))
  assert x_grad.dtype == w_grad.dtype == jnp.bfloat16
  _scaled_close(f32(x_grad), ref_x, 2**-8)
  _scaled_close(f32(w_grad), ref_w, 2**-8)


def test_bad_inputs_are_refused_with_the_fix():
  pads = ((1, 1), (1, 1))
  with pytest.raises(ValueError, match="float32 or bfloat16.*grouped_conv='split'"):
    onednn.conv(jnp.ones((1, 4, 4, 2), jnp.float16), jnp.ones((3, 3, 2, 2), jnp.float16),
                1, 1, pads)
  with pytest.raises(ValueError, match="one dtype.*cast"):
    onednn.conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2), jnp.bfloat16), 1, 1, pads)
  if not _BF16_CPU:
    with pytest.raises(ValueError, match="bfloat16 instructions.*compute in float32"):
      onednn.conv(jnp.ones((1, 4, 4, 2), jnp.bfloat16), jnp.ones((3, 3, 2, 2), jnp.bfloat16),
                  1, 1, pads)
  with pytest.raises(ValueError, match="do not make a 2-group"):
    onednn.conv(jnp.ones((1, 4, 4, 6)), jnp.ones((3, 3, 2, 4)), 1, 2, pads)


def test_macs_are_counted_as_for_xla():
  x = jax.ShapeDtypeStruct((2, 9, 9, 12), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 3, 8), jnp.float32)
  pads = ((0, 1), (0, 1))
  step = lambda conv: jax.grad(lambda x, w: jnp.sum(conv(x, w, 2, 4, pads)), (0, 1))
  forward = counting.count_macs(lambda x, w: onednn.conv(x, w, 2, 4, pads), x, w)
  # Each output element of 2 x 4 x 4 x 8 takes 3 x 3 x 3 multiply-adds.
  assert forward == counting.count_macs(lambda x, w: _lax_conv(x, w, 2, 4, pads), x, w) == 6912
  assert counting.count_macs(step(onednn.conv), x, w) == 3 * forward


def test_model_equals_xla_formulations_in_outputs_and_gradients(monkeypatch):
  kwargs = dict(variant="F0", stage_depths=(1, 1, 1, 1), width=0.125)
  net = models.transform("NFNet", 10, **kwargs)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  params, state = net.init(jax.random.PRNGKey(1), x, is_training=True)

  def logits_and_grads():
    def loss(p):
      out, _ = net.apply(p, state, None, x, is_training=False)
      return jnp.sum(jnp.sin(out["logits"])), out["logits"]
    return jax.jit(jax.grad(loss, has_aux=True))(params)

  hlo = lambda: jax.jit(lambda p: net.apply(p, state, None, x, is_training=False)[0]).lower(
      params).as_text()
  assert onednn.FORWARD in hlo() and "feature_group_count" not in hlo()
  grads, logits = logits_and_grads()
  monkeypatch.setattr(onednn, "available", lambda: False)  # Every conv in XLA ('split').
  assert onednn.FORWARD not in hlo()
  ref_grads, ref_logits = logits_and_grads()
  _scaled_close(logits, ref_logits)
  for path, a, b in zip(jax.tree_util.tree_leaves_with_path(grads),
                        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
    _scaled_close(a, b) if np.any(b) else np.testing.assert_array_equal(a, b, err_msg=str(path))


def _build_env(tmp_path, **extra):
  env = dict(os.environ, NFNETS_JAX_CACHE_DIR=str(tmp_path / "cache"), **extra)
  return env


def test_kernel_is_built_once_and_atomically(tmp_path):
  # Two fresh processes build into one empty cache at once; both load a whole library.
  script = ("from nfnets_jax.kernels import onednn; import sys; "
            "sys.exit(onednn.unavailable_reason())")
  procs = [subprocess.Popen([sys.executable, "-c", script], env=_build_env(tmp_path), cwd=REPO)
           for _ in range(2)]
  assert [p.wait(timeout=120) for p in procs] == [0, 0]
  built = list((tmp_path / "cache").iterdir())
  assert len(built) == 1 and built[0].name.startswith("onednn_conv-")
  stamp = built[0].stat().st_mtime_ns
  subprocess.run([sys.executable, "-c", script], env=_build_env(tmp_path), cwd=REPO, check=True)
  assert [p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()] == [stamp]


def test_build_failures_name_the_problem_and_the_fix(tmp_path, monkeypatch):
  monkeypatch.setenv("NFNETS_JAX_CACHE_DIR", str(tmp_path))
  broken = tmp_path / "broken.cc"
  broken.write_text("#include \"oneapi/dnnl/dnnl.hpp\"\nint f() { return undeclared; }\n")
  with pytest.raises(build.BuildError, match="(?s)Compiling broken.cc failed.*undeclared"):
    build.build_onednn_kernel(broken)
  assert list(tmp_path.iterdir()) == [broken]  # No partial library left behind.
  monkeypatch.setenv("CXX", "/nonexistent/c++")
  monkeypatch.setenv("PATH", str(tmp_path))
  with pytest.raises(build.BuildError, match="No C\\+\\+ compiler found.*install g\\+\\+"):
    build.build_onednn_kernel(broken)
  monkeypatch.setenv("NFNETS_JAX_ONEDNN_ROOT", str(tmp_path))
  with pytest.raises(build.BuildError, match="NFNETS_JAX_ONEDNN_ROOT=.*oneDNN 3"):
    build.find_onednn()
  monkeypatch.delenv("NFNETS_JAX_ONEDNN_ROOT")

  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(importlib.metadata, "distribution", missing)
  with pytest.raises(build.BuildError, match="oneDNN is not installed: pip install"):
    build.find_onednn()


def test_opt_out_falls_back_to_split(tmp_path):
  script = ("from nfnets_jax.models import layers; from nfnets_jax.kernels import onednn; "
            "print(layers.default_grouped_conv_impl(), onednn.unavailable_reason())")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=_build_env(tmp_path, NFNETS_JAX_ONEDNN="0"), cwd=REPO, check=True)
  assert out.stdout.strip() == "split NFNETS_JAX_ONEDNN=0 is set."
  assert not (tmp_path / "cache").exists()  # Nothing was built.
