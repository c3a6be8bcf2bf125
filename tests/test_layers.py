"""Layers: gammas, weight standardisation, grouped convs, SE, stochastic depth."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.models import layers


def test_exact_gamma_relu_matches_closed_form():
  # Var[relu(z)] = 1/2 - 1/(2 pi) for z ~ N(0, 1).
  expected = 1.0 / np.sqrt(0.5 - 1.0 / (2 * np.pi))
  assert layers.exact_gamma("relu") == pytest.approx(expected, rel=1e-6)
  assert layers.exact_gamma("identity") == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("name", sorted(layers.ACTIVATIONS))
def test_exact_gamma_matches_monte_carlo(name):
  z = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
  g = np.asarray(layers.ACTIVATIONS[name](jnp.asarray(z)), np.float64)
  # 1M samples: the std estimate is good to ~0.1%; allow 0.5%.
  assert layers.exact_gamma(name) == pytest.approx(1 / g.std(), rel=5e-3)


@pytest.mark.parametrize("name", sorted(layers.ACTIVATIONS))
def test_released_gammas_agree_with_definition(name):
  # The authors sampled their gammas; they sit within 0.1% of the exact value.
  assert layers.RELEASED_GAMMAS[name] == pytest.approx(layers.exact_gamma(name), rel=1e-3)


@pytest.mark.parametrize("gamma", ["released", "exact"])
def test_scaled_activations_preserve_variance(gamma):
  z = jax.random.normal(jax.random.PRNGKey(0), (1_000_000,))
  for name in layers.ACTIVATIONS:
    out = layers.scaled_activation(name, gamma)(z)
    assert float(jnp.var(out)) == pytest.approx(1.0, rel=5e-3), name


def test_unknown_activation_is_named():
  with pytest.raises(ValueError, match="Unknown activation 'swish'.*gelu"):
    layers.scaled_activation("swish")


def _apply_module(make, x, rng=0):
  f = hk.transform(lambda x: make()(x))
  params = f.init(jax.random.PRNGKey(rng), x)
  return params, f.apply(params, None, x)


@pytest.mark.parametrize("kernel, stride", [(3, 2), (1, 1), (1, 2)])
def test_ws_conv_equals_numpy_standardisation(kernel, stride):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 9, 6))
  params, out = _apply_module(lambda: layers.WSConv2D(5, kernel, stride=stride, name="c"), x)
  p = params["c"]
  w = np.asarray(p["w"], np.float64)
  gain = np.random.default_rng(0).uniform(0.5, 2, 5)
  bias = np.random.default_rng(1).normal(size=5)
  params = {"c": {"w": p["w"], "gain": jnp.asarray(gain, jnp.float32),
                  "bias": jnp.asarray(bias, jnp.float32)}}
  out = hk.transform(
      lambda x: layers.WSConv2D(5, kernel, stride=stride, name="c")(x)).apply(params, None, x)
  n = kernel * kernel * 6
  w_hat = gain * (w - w.mean(axis=(0, 1, 2))) / np.sqrt(n * w.var(axis=(0, 1, 2)))
  # Each standardised filter has unit norm times its gain.
  assert np.allclose(np.sqrt((w_hat**2).sum(axis=(0, 1, 2))), gain)
  ref = jax.lax.conv_general_dilated(
      x, jnp.asarray(w_hat, jnp.float32), (stride, stride), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def _standardize_by_autodiff(flat, gain, eps, eps_style):
  """The formulation `layers.standardize` replaces, differentiated by JAX."""
  n = flat.shape[0]
  mean, var = jnp.mean(flat, axis=0), jnp.var(flat, axis=0)
  denominator = jnp.maximum(var * n, eps) if eps_style == "floor" else (var + eps) * n
  scale = jax.lax.rsqrt(denominator) * gain
  return flat * scale - mean * scale


@pytest.mark.parametrize("eps_style, eps", [("floor", 1e-4), ("add", 1e-5), ("add", 0.3)])
def test_standardize_equals_autodiff_in_outputs_and_gradients(eps_style, eps):
  rng = np.random.default_rng(4)
  flat = rng.normal(0.2, 0.5, size=(72, 6)).astype(np.float32)
  flat[:, 2] = 0.7  # Zero variance.
  # N * var = 7e-7, below the floor: its output and gradient ignore the variance.
  flat[:, 3] = 0.01 + 1e-4 * rng.normal(size=72)
  gain = rng.uniform(0.5, 2, 6).astype(np.float32)
  cotangent = rng.normal(size=flat.shape).astype(np.float32)
  outputs, grads = [], []
  # The reference in float64: column 3 loses digits to cancellation in float32.
  for fn, dtype in ((layers.standardize, np.float32), (_standardize_by_autodiff, np.float64)):
    with jax.enable_x64(bool(dtype == np.float64)):
      args = [np.asarray(a, dtype) for a in (flat, gain, cotangent)]
      loss = lambda w, g: jnp.vdot(fn(w, g, eps, eps_style), args[2])
      outputs.append(np.asarray(fn(*args[:2], eps, eps_style)))
      grads.append(jax.device_get(jax.jit(jax.grad(loss, argnums=(0, 1)))(*args[:2])))
  for ours, reference in zip((outputs[0], *grads[0]), (outputs[1], *grads[1])):
    scale = np.max(np.abs(reference))
    np.testing.assert_allclose(ours / scale, reference / scale, rtol=1e-5, atol=1e-5)
  assert np.all(np.isfinite(grads[0][0]))


def test_ws_conv_floors_variance_at_eps():
  # A constant filter has zero variance: standardisation must give zeros, not NaN.
  x = jnp.ones((1, 4, 4, 2))
  params = {"c": {"w": jnp.full((1, 1, 2, 3), 0.7), "gain": jnp.ones(3),
                  "bias": jnp.arange(3.0)}}
  out = hk.transform(lambda x: layers.WSConv2D(3, 1, name="c")(x)).apply(params, None, x)
  np.testing.assert_array_equal(out, jnp.broadcast_to(jnp.arange(3.0), (1, 4, 4, 3)))


def test_ws_conv_init_is_fan_in_normal():
  params, _ = _apply_module(lambda: layers.WSConv2D(256, 3, name="c"),
                            jnp.zeros((1, 4, 4, 64)))
  w = np.asarray(params["c"]["w"])
  assert w.std() == pytest.approx(1 / np.sqrt(3 * 3 * 64), rel=0.02)
  np.testing.assert_array_equal(params["c"]["gain"], np.ones(256))
  np.testing.assert_array_equal(params["c"]["bias"], np.zeros(256))


def _numpy_grouped_conv(x, w, groups):
  """Brute-force stride-1 SAME grouped convolution, independent of XLA."""
  n, h, wd, c = x.shape
  k, _, ig, o = w.shape
  pad = k // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  og = o // groups
  out = np.zeros((n, h, wd, o))
  for g in range(groups):
    xg = xp[..., g * ig:(g + 1) * ig]
    wg = w[..., g * og:(g + 1) * og]
    for i in range(k):
      for j in range(k):
        out[..., g * og:(g + 1) * og] += np.einsum(
            "nhwc,co->nhwo", xg[:, i:i + h, j:j + wd], wg[i, j])
  return out


@pytest.mark.parametrize("groups,stride,size,padding", [
    (1, 1, 7, "same"), (2, 1, 8, "same"), (4, 2, 9, "same"), (3, 2, 10, "same"),
    (2, 2, 8, "symmetric"), (6, 1, 5, "symmetric")])
def test_grouped_conv_formulations_agree(groups, stride, size, padding):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(groups), 3)
  x = jax.random.normal(kx, (2, size, size, 12))
  w = jax.random.normal(kw, (3, 3, 12 // groups, 6 * groups))
  conv = {impl: (lambda impl: lambda x, w: layers.conv2d(x, w, stride, groups, impl, padding))(impl)
          for impl in ("xla", "split", "im2col")}
  outs = {impl: f(x, w) for impl, f in conv.items()}
  for impl in ("split", "im2col"):
    np.testing.assert_allclose(outs[impl], outs["xla"], rtol=1e-5, atol=1e-5, err_msg=impl)
  if stride == 1:
    np.testing.assert_allclose(outs["xla"], _numpy_grouped_conv(np.asarray(x), np.asarray(w), groups),
                               rtol=1e-4, atol=1e-4)
  cot = jax.random.normal(kg, outs["xla"].shape)
  grads = {impl: jax.grad(lambda x, w: jnp.sum(f(x, w) * cot), argnums=(0, 1))(x, w)
           for impl, f in conv.items()}
  for impl in ("split", "im2col"):
    for a, b in zip(grads[impl], grads["xla"]):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=impl)



@pytest.mark.parametrize("kernel,stride,size,groups,impl,padding", [
    (3, 1, 9, 1, "split", "same"), (3, 2, 8, 1, "split", "same"),
    (3, 2, 9, 1, "split", "symmetric"), (5, 1, 7, 1, "split", "same"),
    (3, 2, 10, 3, "split", "symmetric"), (3, 1, 6, 2, "split", "same"),
    (3, 2, 8, 2, "xla", "same")])
def test_tap_weight_gradient_equals_xlas(kernel, stride, size, groups, impl, padding):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(size), 3)
  x = jax.random.normal(kx, (2, size, size, 12))
  w = jax.random.normal(kw, (kernel, kernel, 12 // groups, 6 * groups))
  conv = {wg: (lambda wg: lambda x, w: layers.conv2d(x, w, stride, groups, impl, padding,
                                                     weight_grad=wg))(wg)
          for wg in ("xla", "taps")}
  out = conv["xla"](x, w)
  np.testing.assert_allclose(conv["taps"](x, w), out, rtol=1e-6, atol=1e-6)
  cot = jax.random.normal(kg, out.shape)
  grads = {wg: jax.grad(lambda x, w: jnp.sum(f(x, w) * cot), argnums=(0, 1))(x, w)
           for wg, f in conv.items()}
  for a, b in zip(grads["taps"], grads["xla"]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  # The kernel gradient from its definition, dW[i, j] = sum x_pad(shifted) (x) cot.
  pads = layers.window_padding(kernel, stride, padding)
  if pads == "SAME":
    pads = jax.lax.padtype_to_pads((size, size), (kernel, kernel), (stride, stride), "SAME")
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)))
  c = np.asarray(cot, np.float64)
  oh, ow = c.shape[1:3]
  ig, og = 12 // groups, 6
  expected = np.zeros(w.shape)
  for g in range(groups):
    for i in range(kernel):
      for j in range(kernel):
        taps = xp[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride,
                  g * ig:(g + 1) * ig]
        expected[i, j, :, g * og:(g + 1) * og] = np.einsum(
            "nhwc,nhwo->co", taps, c[..., g * og:(g + 1) * og])
  np.testing.assert_allclose(grads["taps"][1], expected, rtol=1e-4, atol=1e-4)


def test_conv2d_rejects_unknown_weight_grad():
  with pytest.raises(ValueError, match="Unknown weight_grad 'fast'"):
    layers.conv2d(jnp.zeros((1, 4, 4, 4)), jnp.zeros((3, 3, 4, 4)), 1, weight_grad="fast")

def test_1x1_conv_matches_xla_convolution_and_its_gradients():
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(kx, (2, 5, 6, 12))
  w = jax.random.normal(kw, (1, 1, 12, 7))
  cot = jax.random.normal(kg, (2, 5, 6, 7))
  def xla_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  convs = (xla_conv, lambda x, w: layers.conv2d(x, w, 1))
  for f in convs:
    np.testing.assert_allclose(f(x, w), _numpy_grouped_conv(np.asarray(x), np.asarray(w), 1),
                               rtol=1e-4, atol=1e-4)
  grads = [jax.grad(lambda x, w: jnp.sum(f(x, w) * cot), argnums=(0, 1))(x, w)
           for f in convs]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_grouped_conv_rejects_unknown_impl():
  with pytest.raises(ValueError, match="Unknown grouped conv impl 'fast'"):
    layers.conv2d(jnp.zeros((1, 4, 4, 4)), jnp.zeros((3, 3, 2, 4)), 1, 2, "fast")


def _numpy_avg_pool_2x2(x):
  """The definition in float64: each output averages the input pixels under its
  2x2 window (fewer at an odd edge), and the window's input gradient is the
  output gradient over that count."""
  x = np.asarray(x, np.float64)
  n, h, w, c = x.shape
  out = np.zeros((n, (h + 1) // 2, (w + 1) // 2, c))
  for i in range(out.shape[1]):
    for j in range(out.shape[2]):
      out[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
  return out


# [64, 1, 1, 96]: XLA:CPU's reduce-window (hk.avg_pool) returned 4x the input
# for this float32 shape (jaxlib 0.10.2), the digits model's last shortcut.
@pytest.mark.parametrize("shape", [(64, 1, 1, 96), (120, 1, 1, 96), (1, 1, 1, 1), (2, 3, 5, 4),
                                   (2, 4, 4, 3), (3, 7, 2, 8)])
def test_avg_pool_2x2_equals_its_definition(shape):
  x = jax.random.normal(jax.random.PRNGKey(sum(shape)), shape)
  out = jax.jit(layers.avg_pool_2x2)(x)
  np.testing.assert_allclose(out, _numpy_avg_pool_2x2(x), rtol=1e-6, atol=1e-6)
  bf16 = layers.avg_pool_2x2(x.astype(jnp.bfloat16))
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(bf16.astype(jnp.float32),
                             _numpy_avg_pool_2x2(x.astype(jnp.bfloat16).astype(jnp.float32)),
                             rtol=2**-8, atol=2**-8)
  # The pooling is linear: its gradient for output cotangent g is the
  # transpose of the definition, g / count spread over each window.
  g = np.asarray(jax.random.normal(jax.random.PRNGKey(1), out.shape), np.float64)
  grad = jax.grad(lambda x: jnp.vdot(layers.avg_pool_2x2(x), g.astype(np.float32)))(x)
  expected = np.zeros(shape)
  for i in range(out.shape[1]):
    for j in range(out.shape[2]):
      window = expected[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
      window += g[:, i, j][:, None, None] / (window.shape[1] * window.shape[2])
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


def test_squeeze_excite_matches_formula():
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 5, 8))
  params, gates = _apply_module(lambda: layers.SqueezeExcite(8, 8, 0.5), x)
  p0, p1 = params["squeeze_excite/~/linear"], params["squeeze_excite/~/linear_1"]
  assert p0["w"].shape == (8, 4)
  h = np.maximum(np.asarray(x).mean(axis=(1, 2)) @ p0["w"] + p0["b"], 0)
  expected = 1 / (1 + np.exp(-(h @ p1["w"] + p1["b"])))
  np.testing.assert_allclose(gates[:, 0, 0], expected, rtol=1e-5)
  assert gates.shape == (2, 1, 1, 8)


def test_stochastic_depth_drops_whole_examples():
  x = jnp.ones((4000, 2, 2, 3))
  f = hk.transform(lambda x, t: layers.stochastic_depth(x, 0.3, t))
  out = np.asarray(f.apply({}, jax.random.PRNGKey(0), x, True))
  per_example = out.reshape(4000, -1)
  # Every example is either untouched (no 1/keep rescaling) or entirely zero.
  assert set(np.unique(per_example)) <= {0.0, 1.0}
  assert np.all(per_example.min(1) == per_example.max(1))
  assert per_example[:, 0].mean() == pytest.approx(0.7, abs=0.03)
  np.testing.assert_array_equal(f.apply({}, None, x, False), x)


def test_block_specs_follow_the_variance_bookkeeping():
  alpha = 0.2
  specs = layers.block_specs((2, 3), (8, 16), in_ch=4, alpha=alpha, stochdepth_rate=0.5)
  # Input stds: 1 (first block); then sqrt(1 + a^2); the transition of stage 2
  # sees sqrt(1 + 2 a^2) and resets to sqrt(1 + a^2), then sqrt(1 + 2 a^2).
  stds = [1, np.sqrt(1 + alpha**2), np.sqrt(1 + 2 * alpha**2),
          np.sqrt(1 + alpha**2), np.sqrt(1 + 2 * alpha**2)]
  np.testing.assert_allclose([s.beta for s in specs], [1 / s for s in stds])
  assert [s.stride for s in specs] == [1, 1, 2, 1, 1]
  assert [(s.in_ch, s.out_ch) for s in specs] == [(4, 8), (8, 8), (8, 16), (16, 16), (16, 16)]
  np.testing.assert_allclose([s.stochdepth_rate for s in specs], [0, 0.1, 0.2, 0.3, 0.4])
