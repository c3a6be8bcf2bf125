"""Building blocks of Normalizer-Free networks.

Scaled Weight Standardised convolutions, variance-preserving ("gamma-scaled")
activations, Squeeze-Excite, batchwise stochastic depth and the signal metrics
of the NF-ResNet paper. Module and parameter names follow the authors' release,
so that its checkpoints load unchanged.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax.kernels import onednn

Array = jax.Array

# The plain non-linearities, before scaling. gelu is the tanh approximation
# (jax.nn.gelu's default), which the released checkpoints were trained with;
# gelu_exact is the erf form that timm's ports of them compute.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "identity": lambda x: x,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
}

# The gammas of the authors' release. They estimated 1 / std(g(z)) by sampling,
# so each sits 0.03-0.09% above the exact value `exact_gamma` computes; the
# released checkpoints were trained with these, so the networks use them.
RELEASED_GAMMAS: dict[str, float] = {
    "identity": 1.0,
    "relu": 1.7139588594436646,
    "gelu": 1.7015043497085571,
    "gelu_exact": 1.7015043497085571,  # timm scales its erf GELU by gelu's.
    "silu": 1.7881293296813965,
    "elu": 1.2716004848480225,
    "leaky_relu": 1.70590341091156,
    "tanh": 1.5939117670059204,
    "sigmoid": 4.803835391998291,
    "softplus": 1.9203323125839233,
}


def check_activation(name: str) -> None:
  if name not in ACTIVATIONS:
    raise ValueError(
        f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")


def exact_gamma(name: str, half_width: float = 12.0, nodes: int = 256) -> float:
  """`1 / sqrt(Var[g(z)])` for `z ~ N(0, 1)`, by Gauss-Legendre quadrature.

  Integrates each half-line separately so the kink of relu-like functions at
  zero sits on an interval boundary, where the quadrature stays exact.

  Args:
    name: a key of `ACTIVATIONS`.
    half_width: the integral is taken over [-half_width, half_width]; the
      Gaussian mass outside 12 standard deviations is below 1e-32.
    nodes: quadrature nodes per half-line.

  Returns:
    The variance-preserving gain of the activation.
  """
  check_activation(name)
  t, w = np.polynomial.legendre.leggauss(nodes)
  # Map [-1, 1] to [0, half_width] and mirror it for the negative half-line.
  pos = (t + 1) * half_width / 2
  z = np.concatenate([-pos, pos])
  weights = np.concatenate([w, w]) * half_width / 2
  weights *= np.exp(-z**2 / 2) / np.sqrt(2 * np.pi)
  g = np.asarray(ACTIVATIONS[name](jnp.asarray(z, jnp.float32)), np.float64)
  mean = np.sum(weights * g)
  var = np.sum(weights * g**2) - mean**2
  return float(1.0 / np.sqrt(var))


def scaled_activation(name: str, gamma: str = "released") -> Callable[[Array], Array]:
  """The activation `name` multiplied by its variance-preserving gamma.

  Args:
    name: a key of `ACTIVATIONS`.
    gamma: 'released' for the authors' constants (what their checkpoints
      expect) or 'exact' for the value computed from the definition.

  Returns:
    A function `x -> g(x) * gamma`.
  """
  check_activation(name)
  if gamma == "released":
    value = RELEASED_GAMMAS[name]
  elif gamma == "exact":
    value = exact_gamma(name)
  else:
    raise ValueError(f"gamma must be 'released' or 'exact', got {gamma!r}.")
  fn = ACTIVATIONS[name]
  return lambda x: fn(x) * value


def make_divisible(value: float, divisor: int, round_limit: float = 0.9) -> int:
  """`value` rounded to the nearest multiple of `divisor` (at least `divisor`).

  timm's channel rounding: a result below `round_limit * value` goes up one
  more multiple, so rounding never removes more than 10% of the channels.
  """
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < round_limit * value else rounded


def round_channels(value: float, divisor: int | None) -> int:
  """Channels from a real width: the release's `int()`, or timm's `make_divisible`."""
  return int(value) if divisor is None else make_divisible(value, divisor)


GAMMA_PLACEMENTS = ("activation", "conv")


def nf_activation_and_conv(activation: str, gamma_in: str = "activation",
                           **conv_kwargs) -> tuple[Callable[[Array], Array], Callable[..., hk.Module]]:
  """(activation, `WSConv2D` factory) of an NF network, with the gamma in either.

  Args:
    activation: a key of `ACTIVATIONS`.
    gamma_in: 'activation' scales every activation by its gamma (the
      release); 'conv' folds the gamma into every standardised weight and
      leaves activations plain (timm's own models). Convolutions are linear,
      so both compute the same except where a conv reads no activation (the
      first stem conv, a final conv on the last block's output) and where an
      activation feeds no conv (before the pooling of the head).
    **conv_kwargs: further `WSConv2D` arguments.
  """
  if gamma_in not in GAMMA_PLACEMENTS:
    raise ValueError(f"gamma_in must be one of {GAMMA_PLACEMENTS}, got {gamma_in!r}.")
  if gamma_in == "activation":
    return scaled_activation(activation), functools.partial(WSConv2D, **conv_kwargs)
  check_activation(activation)
  return ACTIVATIONS[activation], functools.partial(
      WSConv2D, gamma=RELEASED_GAMMAS[activation], **conv_kwargs)


def default_grouped_conv_impl(dtype: Any = jnp.float32) -> str:
  """What impl='auto' runs for `dtype` on the default backend.

  'onednn' on CPU where its kernel builds and runs `dtype` (float32, and
  bfloat16 on CPUs with bfloat16 instructions), else 'split' on CPU and 'xla'
  on GPU and TPU, which have fast grouped kernels.
  """
  # XLA's CPU backend runs feature_group_count convolutions far slower than
  # one dense convolution per group (F0's grouped 3x3 convs, forward and
  # backward: 4-13x), and every convolution slower than oneDNN
  # (experiments/step_parts.py --conv_shapes).
  if jax.default_backend() != "cpu":
    return "xla"
  if onednn.supports(dtype):
    return "onednn"
  return "split"


def default_weight_grad() -> str:
  """What weight_grad='auto' runs on the default backend: 'taps' or 'xla'."""
  # On CPU, XLA differentiates a 3x3 convolution into a whole-image-window
  # convolution behind transposes; with the tap matmuls instead, F0's
  # forward + backward ran 5% faster (experiments/step_parts.py
  # --compare_weight_grads). 'taps' has a custom VJP: no forward-mode AD.
  return "taps" if jax.default_backend() == "cpu" else "xla"


GROUPED_CONV_IMPLS = ("auto", "xla", "split", "im2col", "onednn")
_NHWC = ("NHWC", "HWIO", "NHWC")
WEIGHT_GRADS = ("auto", "xla", "taps")
PADDINGS = ("same", "symmetric")


def _check_padding(padding: str) -> None:
  if padding not in PADDINGS:
    raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}.")


def window_padding(kernel: int, stride: int, padding: str) -> str | list[tuple[int, int]]:
  """lax padding of a square window: 'SAME', or PyTorch's symmetric padding.

  'same' pads (0, 1) before a stride-2 3x3 window on even inputs, as the
  release (TensorFlow) does; 'symmetric' pads `((stride - 1) + (kernel - 1))
  // 2` on both sides, as PyTorch models (timm's own NF models) do.
  """
  _check_padding(padding)
  if padding == "same":
    return "SAME"
  pad = ((stride - 1) + (kernel - 1)) // 2
  return [(pad, pad)] * 2


def avg_pool_2x2(x: Array) -> Array:
  """NHWC 2x2 average pooling with stride 2 and SAME padding.

  `hk.avg_pool(x, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")`: an odd height or
  width gets one zero row or column at the end, which the average leaves out
  (timm's `AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)`).
  Written as a reshape and a sum rather than XLA's reduce-window, which
  XLA:CPU gets wrong for 1x1 inputs: jaxlib 0.10.2 returned 4x the input
  for float32 [64, 1, 1, 96] (and larger) arrays, the last block's shortcut
  in the digits experiment (tests/test_layers.py).
  """
  n, h, w, c = x.shape
  out_h, out_w = -(-h // 2), -(-w // 2)
  x = jnp.pad(x, ((0, 0), (0, 2 * out_h - h), (0, 2 * out_w - w), (0, 0)))
  sums = x.reshape(n, out_h, 2, out_w, 2, c).sum(axis=(2, 4))
  # Input pixels under each window: 2 x 2, less the padding on the last ones.
  rows = np.minimum(2, h - 2 * np.arange(out_h))
  cols = np.minimum(2, w - 2 * np.arange(out_w))
  return sums / jnp.asarray(np.outer(rows, cols)[:, :, None], x.dtype)


def max_pool(x: Array, window: int, stride: int, padding: str = "same") -> Array:
  """NHWC max pooling; padded positions never win."""
  pads = window_padding(window, stride, padding)
  if pads != "SAME":
    pads = [(0, 0), *pads, (0, 0)]
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), pads)


def conv2d(x: Array, w: Array, stride: int, groups: int = 1,
           impl: str = "auto", padding: str = "same", weight_grad: str = "auto") -> Array:
  """NHWC x HWIO convolution with `groups` feature groups.

  Args:
    x: input, NHWC.
    w: kernel, HWIO with I = channels of x // groups.
    stride: spatial stride.
    groups: number of feature groups.
    impl: 'onednn' runs the convolution with oneDNN's CPU kernels
      (`nfnets_jax.kernels.onednn`; CPU only: float32, and bfloat16 on
      CPUs with bfloat16 instructions); the others are XLA formulations of
      grouped convolutions with the same result: 'xla' uses
      `feature_group_count`; 'split' runs one dense convolution per group and
      concatenates; 'im2col' stacks the k*k shifted taps of the input and
      runs one matmul batched over the groups. Under these three an ungrouped
      convolution is one `lax` convolution, or a matmul if it is 1x1 with
      stride 1. 'auto' picks by backend and dtype, see
      `default_grouped_conv_impl`.
    padding: 'same' or 'symmetric', see `window_padding`.
    weight_grad: how the kernel's gradient of a k x k (k > 1) dense
      convolution, or of each group under 'split', is computed: 'xla'
      differentiates the convolution; 'taps' contracts each kernel row's
      stacked input taps with the output gradient in one matmul (same
      result; reverse-mode differentiation only); 'auto' picks by backend,
      see `default_weight_grad`.

  Returns:
    The output, NHWC.
  """
  if impl not in GROUPED_CONV_IMPLS:
    raise ValueError(f"Unknown grouped conv impl {impl!r}; choose one of {GROUPED_CONV_IMPLS}.")
  if weight_grad not in WEIGHT_GRADS:
    raise ValueError(f"Unknown weight_grad {weight_grad!r}; choose one of {WEIGHT_GRADS}.")
  if impl == "auto":
    impl = default_grouped_conv_impl(x.dtype)
  pads = _explicit_pads(x.shape[1:3], w.shape[0], stride, padding)
  if impl == "onednn":
    return onednn.conv(x, w, stride, groups, pads)
  if w.shape[:2] == (1, 1) and stride == 1 and groups == 1:
    # A matmul over channels. As a dot, its weight gradient is a matmul too;
    # as a convolution, XLA's CPU backend makes it a whole-image-window
    # convolution behind two transposes, several times slower.
    return jnp.einsum("nhwi,io->nhwo", x, w[0, 0])
  if weight_grad == "auto":
    weight_grad = default_weight_grad()
  if groups > 1 and impl == "xla":
    return jax.lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=_NHWC,
                                        feature_group_count=groups)
  if groups > 1 and impl == "im2col":
    return _im2col_conv(x, w, stride, groups, pads)
  if weight_grad == "taps":
    conv = lambda x, w: _conv_with_tap_weight_grad(x, w, stride, pads)
  else:
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), pads,
                                                     dimension_numbers=_NHWC)
  if groups == 1:
    return conv(x, w)
  # Group g reads input channels [g*I, (g+1)*I) and writes the g-th block of
  # output channels, so splitting both along their channel axes pairs them.
  xs = jnp.split(x, groups, axis=-1)
  ws = jnp.split(w, groups, axis=-1)
  return jnp.concatenate([conv(xg, wg) for xg, wg in zip(xs, ws)], axis=-1)


def _im2col_conv(x: Array, w: Array, stride: int, groups: int,
                 pads: tuple[tuple[int, int], ...]) -> Array:
  """`conv2d` as one batched matmul over groups of the k*k shifted input taps."""
  n = x.shape[0]
  k, _, group_in, out_ch = w.shape
  x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
  out_h = (x.shape[1] - k) // stride + 1
  out_w = (x.shape[2] - k) // stride + 1
  x = x.reshape(*x.shape[:3], groups, group_in)
  # [n, out_h, out_w, groups, k * k, group_in]: tap (i, j) of every window.
  taps = jnp.stack([
      x[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride]
      for i in range(k) for j in range(k)], axis=4)
  taps = taps.reshape(n * out_h * out_w, groups, k * k * group_in)
  # HWIO with O = groups * (out_ch // groups): [groups, k * k * group_in, out_ch // groups].
  kernel = w.reshape(k * k * group_in, groups, out_ch // groups).transpose(1, 0, 2)
  out = jnp.einsum("mgk,gko->mgo", taps, kernel)
  return out.reshape(n, out_h, out_w, out_ch)


def _explicit_pads(spatial: Sequence[int], kernel: int, stride: int,
                   padding: str) -> tuple[tuple[int, int], ...]:
  """`window_padding` as ((low, high), (low, high)) for an input of `spatial` size."""
  pads = window_padding(kernel, stride, padding)
  if pads == "SAME":
    pads = jax.lax.padtype_to_pads(spatial, (kernel, kernel), (stride, stride), "SAME")
  return tuple(tuple(p) for p in pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_with_tap_weight_grad(x: Array, w: Array, stride: int,
                               pads: tuple[tuple[int, int], ...]) -> Array:
  """A dense NHWC x HWIO convolution whose kernel gradient is `_tap_weight_grad`."""
  return jax.lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=_NHWC)


def _conv_forward(x, w, stride, pads):
  return _conv_with_tap_weight_grad(x, w, stride, pads), (x, w)


def _conv_backward(stride, pads, residuals, grad):
  x, w = residuals
  conv = lambda x: jax.lax.conv_general_dilated(x, w, (stride, stride), pads,
                                                dimension_numbers=_NHWC)
  (x_grad,) = jax.vjp(conv, x)[1](grad)
  return x_grad, _tap_weight_grad(x, grad, w.shape[0], stride, pads)


_conv_with_tap_weight_grad.defvjp(_conv_forward, _conv_backward)


def _tap_weight_grad(x: Array, grad: Array, kernel: int, stride: int,
                     pads: tuple[tuple[int, int], ...]) -> Array:
  """The HWIO kernel gradient of a convolution from its input and output gradient.

  `dW[i, j] = sum over (n, h, w) of x_pad[n, h*s + i, w*s + j, :] (x) grad[n, h, w, :]`.
  For each kernel row i, the k column taps are stacked on the channel axis
  and contracted with the output gradient in one matmul.
  """
  n, out_h, out_w, out_ch = grad.shape
  in_ch = x.shape[-1]
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  grad_t = grad.reshape(-1, out_ch).T
  rows = []
  for i in range(kernel):
    taps = jnp.concatenate([
        x[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride]
        for j in range(kernel)], axis=-1)
    # Materialised: fused into the matmul, the strided taps slow it down.
    taps = jax.lax.optimization_barrier(taps.reshape(n * out_h * out_w, kernel * in_ch))
    rows.append(grad_t @ taps)
  # [kernel, out, kernel * in] -> [kernel, kernel, in, out].
  return jnp.stack(rows).reshape(kernel, out_ch, kernel, in_ch).transpose(0, 2, 3, 1)


def _ws_forward(flat: Array, gain: Array, eps: float, eps_style: str):
  fan_in = flat.shape[0]
  mean = jnp.mean(flat, axis=0)
  n_var = jnp.sum(jnp.square(flat - mean), axis=0)
  if eps_style == "floor":
    live = n_var > eps  # Where the floor holds, the variance has no gradient.
    denominator = jnp.maximum(n_var, eps)
  else:
    live = jnp.ones_like(n_var, bool)
    denominator = n_var + eps * fan_in
  inv_std = jax.lax.rsqrt(denominator)
  # Fused (w - mean) * scale, with scale = gain / sqrt(denominator).
  scale = inv_std * gain
  return flat * scale - mean * scale, (flat, mean, inv_std, gain, live)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def standardize(flat: Array, gain: Array, eps: float, eps_style: str) -> Array:
  """`gain * (W - mean) / sqrt(N * var)` per column of a [N, out] weight.

  The denominator is `max(N * var, eps)` ('floor') or `N * (var + eps)`
  ('add'). Its gradient is written out (`_ws_backward`): two column sums of
  the output gradient and one elementwise pass, where differentiating the
  mean and the variance makes XLA materialise `W - mean` and read the
  weights twice more (F0's 57 standardisations, forward and backward, took
  a quarter less time on CPU).
  """
  return _ws_forward(flat, gain, eps, eps_style)[0]


def _ws_backward(eps, eps_style, residuals, grad):
  del eps, eps_style  # Their effect is in `live` and `inv_std`.
  flat, mean, inv_std, gain, live = residuals
  # With c = W - mean, r = inv_std, s = gain * r and y = c * s:
  #   dW = s * (dy - mean(dy)) - gain * r^3 * sum(dy * c) * c  (d r / d(N var)
  #   = -r^3 / 2, d(N var) / dW = 2 c), dgain = r * sum(dy * c).
  sum_grad = jnp.sum(grad, axis=0)
  sum_grad_centred = jnp.sum(grad * (flat - mean), axis=0)
  scale = inv_std * gain
  var_term = jnp.where(live, gain * inv_std**3 * sum_grad_centred, 0.0)
  flat_grad = (grad * scale - var_term * flat
               + (var_term * mean - scale * sum_grad / flat.shape[0]))
  return flat_grad, inv_std * sum_grad_centred


standardize.defvjp(_ws_forward, _ws_backward)


WS_EPS_STYLES = ("floor", "add")


class WSConv2D(hk.Module):
  """2D convolution with Scaled Weight Standardisation and an affine gain.

  `W_hat = gamma * gain * (W - mean) / sqrt(N * var)` per output channel over
  its fan-in of N = H * W * I numbers, with `N * var` floored at `eps` (the
  release) or `eps` added to `var` (timm); a bias is always added.
  Parameters: `w` (HWIO, init N(0, 1/fan_in)), `gain`, `bias`.
  """

  def __init__(self, output_channels: int, kernel_shape: int, stride: int = 1,
               feature_group_count: int = 1, standardize: bool = True,
               eps: float = 1e-4, eps_style: str = "floor", gamma: float = 1.0,
               gain_init: float = 1.0, padding: str = "same",
               grouped_conv: str = "auto", name: str | None = None):
    """Args:
      output_channels: number of output channels.
      kernel_shape: square kernel size.
      stride: spatial stride.
      feature_group_count: number of feature groups (grouped convolution).
      standardize: False gives a plain convolution with the same parameters
        (used to show the mean shift that standardisation removes).
      eps: the floor of `N * var` ('floor'), or what is added to `var`.
      eps_style: 'floor': `sqrt(max(N * var, eps))`, the release's; 'add':
        `sqrt(N * (var + eps))`, timm's.
      gamma: a constant factor of the standardised weight. timm's own NF
        models put the activation's gamma here instead of in the activation.
      gain_init: initial value of `gain` (0 makes the conv output zero).
      padding: 'same' or 'symmetric', see `window_padding`.
      grouped_conv: formulation of grouped convolutions, see `conv2d`.
      name: module name (part of the checkpoint format).
    """
    super().__init__(name=name)
    self.output_channels = output_channels
    self.kernel_shape = kernel_shape
    self.stride = stride
    self.feature_group_count = feature_group_count
    self.standardize = standardize
    if eps_style not in WS_EPS_STYLES:
      raise ValueError(f"eps_style must be one of {WS_EPS_STYLES}, got {eps_style!r}.")
    _check_padding(padding)
    self.eps = eps
    self.eps_style = eps_style
    self.gamma = gamma
    self.gain_init = gain_init
    self.padding = padding
    self.grouped_conv = grouped_conv

  def standardized_weight(self, w: Array) -> Array:
    gain = hk.get_parameter("gain", (w.shape[-1],), w.dtype,
                            init=hk.initializers.Constant(self.gain_init))
    if self.gamma != 1.0:
      gain = gain * self.gamma
    if not self.standardize:
      return w * gain
    # Statistics over a [fan_in, out] view: on CPU, XLA reduces the leading
    # unit axes of a [1, 1, I, O] kernel several times slower (measured 105 ms
    # vs 9 ms, forward + backward, for F0's 1536 x 3072 final conv).
    flat = w.reshape(-1, w.shape[-1])
    return standardize(flat, gain, self.eps, self.eps_style).reshape(w.shape)

  def __call__(self, x: Array) -> Array:
    in_ch = x.shape[-1]
    if in_ch % self.feature_group_count:
      raise ValueError(
          f"{self.module_name}: {in_ch} input channels do not split into "
          f"{self.feature_group_count} groups.")
    k = self.kernel_shape
    w_shape = (k, k, in_ch // self.feature_group_count, self.output_channels)
    w_init = hk.initializers.VarianceScaling(1.0, "fan_in", "normal")
    w = hk.get_parameter("w", w_shape, x.dtype, init=w_init)
    out = conv2d(x, self.standardized_weight(w), self.stride,
                 self.feature_group_count, self.grouped_conv, self.padding)
    bias = hk.get_parameter("bias", (self.output_channels,), x.dtype, init=jnp.zeros)
    return out + bias


class SqueezeExcite(hk.Module):
  """Squeeze-and-Excite: channel gates from the spatial mean of the input.

  mean-pool -> linear to `in_ch * se_ratio` -> relu (unscaled) -> linear to
  `out_ch` -> sigmoid. Returns the gates, shaped [N, 1, 1, out_ch].
  """

  def __init__(self, in_ch: int, out_ch: int, se_ratio: float = 0.5,
               divisor: int | None = None, name: str | None = None):
    """Args:
      in_ch, out_ch: input and output (gate) channels.
      se_ratio: hidden width as a fraction of `in_ch`.
      divisor: None truncates the hidden width (the release); a number
        rounds it to its nearest multiple, never up by the 10% rule (timm).
      name: module name.
    """
    super().__init__(name=name)
    hidden = in_ch * se_ratio
    hidden = int(hidden) if divisor is None else make_divisible(hidden, divisor, 0.0)
    self.fc0 = hk.Linear(max(1, hidden))
    self.fc1 = hk.Linear(out_ch)

  def __call__(self, x: Array) -> Array:
    h = jnp.mean(x, axis=(1, 2))
    h = self.fc1(jax.nn.relu(self.fc0(h)))
    return jax.nn.sigmoid(h)[:, None, None]


class EfficientChannelAttention(hk.Module):
  """ECA (Wang et al. 2020): channel gates from a 1-D conv over pooled channels.

  mean-pool -> a `kernel`-tap convolution along the channel axis, zero-padded
  at both ends, no bias -> sigmoid. The kernel size follows the channel
  count, `k = |log2(C) + 1| / 2` made odd and at least 3, as in timm's
  `EcaModule`. Returns the gates, shaped [N, 1, 1, C]. Parameter: `w` (k,).
  """

  def __init__(self, channels: int, name: str | None = None):
    super().__init__(name=name)
    t = int(abs(np.log2(channels) + 1) / 2)
    self.kernel = max(t if t % 2 else t + 1, 3)

  def __call__(self, x: Array) -> Array:
    k = self.kernel
    w = hk.get_parameter("w", (k,), x.dtype,
                         init=hk.initializers.VarianceScaling(1 / 3, "fan_in", "uniform"))
    h = jnp.pad(jnp.mean(x, axis=(1, 2)), ((0, 0), (k // 2, k // 2)))
    channels = x.shape[-1]
    # A cross-correlation (what PyTorch's Conv1d computes) as k shifted sums.
    h = sum(w[j] * h[:, j:j + channels] for j in range(k))
    return jax.nn.sigmoid(h)[:, None, None]


ATTENTIONS = (None, "se", "eca")


def stochastic_depth(x: Array, drop_rate: float, is_training: bool) -> Array:
  """Drops the whole residual branch per example with probability `drop_rate`.

  As in the authors' release, kept branches are not rescaled by 1/keep: the
  skip_gain learns the scale and evaluation needs no correction.
  """
  if not is_training or drop_rate <= 0.0:
    return x
  keep = jax.random.bernoulli(hk.next_rng_key(), 1.0 - drop_rate,
                              (x.shape[0],) + (1,) * (x.ndim - 1))
  return x * keep.astype(x.dtype)


def signal_metrics(x: Array, index: int) -> dict[str, Array]:
  """Average channel squared mean and average channel variance of NHWC `x`."""
  return {
      f"avg_sq_mean_{index}": jnp.mean(jnp.mean(x, axis=(0, 1, 2))**2),
      f"avg_var_{index}": jnp.mean(jnp.var(x, axis=(0, 1, 2))),
  }


def residual_variance(x: Array) -> Array:
  """Average channel variance of a residual branch, for the SPP plots."""
  return jnp.mean(jnp.var(x, axis=(0, 1, 2)))


def expected_stds(stage_depths: Sequence[int], alpha: float) -> list[float]:
  """Predicted std of each block's input, the `1 / beta` of every block.

  The transition block of each stage resets the running variance to 1 (its
  shortcut is a projection of the normalised input) before adding its alpha^2.
  """
  stds, expected_std = [], 1.0
  for depth in stage_depths:
    for block_index in range(depth):
      stds.append(expected_std)
      if block_index == 0:
        expected_std = 1.0
      expected_std = (expected_std**2 + alpha**2)**0.5
  return stds


def variant_entry(table: Mapping[str, Any], variant: str, family: str) -> Any:
  """`table[variant]`, or an error naming the family's variants."""
  if variant not in table:
    raise ValueError(f"Unknown {family} variant {variant!r}; choose one of {list(table)}.")
  return table[variant]


class BlockSpec(NamedTuple):
  """Constructor arguments that vary from block to block of a ResNet body."""
  in_ch: int
  out_ch: int
  stride: int
  beta: float
  stochdepth_rate: float


def block_specs(stage_depths: Sequence[int], stage_widths: Sequence[int],
                in_ch: int, alpha: float, stochdepth_rate: float,
                strides: Sequence[int] = (1, 2, 2, 2)) -> list[BlockSpec]:
  """Per-block arguments of a body whose stages start with `strides`.

  Block i of n (0-based over all blocks) gets stochastic-depth rate
  `stochdepth_rate * i / n` and `beta = 1 / expected_std`.
  """
  stds = expected_stds(stage_depths, alpha)
  num_blocks = sum(stage_depths)
  specs = []
  for stage, (depth, out_ch) in enumerate(zip(stage_depths, stage_widths)):
    for block_index in range(depth):
      i = len(specs)
      stride = strides[stage] if block_index == 0 else 1
      specs.append(BlockSpec(in_ch, out_ch, stride, 1.0 / stds[i],
                             stochdepth_rate * i / num_blocks))
      in_ch = out_ch
  return specs


def apply_blocks(x: Array, blocks: Sequence[Callable], is_training: bool,
                 return_metrics: bool) -> tuple[Array, dict[str, Array]]:
  """Runs residual blocks on the stem output `x`, optionally measuring signals.

  Each block returns (output, residual-branch variance). Returns the body's
  output and a dict that, with `return_metrics`, holds the signal metrics of
  the stem output (index 0) and of every block (index i + 1), and each
  block's `res_avg_var_i`; otherwise it is empty.
  """
  outputs = signal_metrics(x, 0) if return_metrics else {}
  for i, block in enumerate(blocks):
    x, res_var = block(x, is_training)
    if return_metrics:
      outputs.update(signal_metrics(x, i + 1))
      outputs[f"res_avg_var_{i}"] = res_var
  return x, outputs


def classify(pool: Array, fc: Callable[[Array], Array], drop_rate: float,
             is_training: bool, outputs: dict[str, Array]) -> dict[str, Array]:
  """Records pooled features, applies dropout in training, then the classifier."""
  outputs["pool"] = pool
  if is_training and drop_rate > 0.0:
    pool = hk.dropout(hk.next_rng_key(), drop_rate, pool)
  outputs["logits"] = fc(pool)
  return outputs
