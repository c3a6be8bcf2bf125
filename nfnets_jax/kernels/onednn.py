"""2D convolutions run by oneDNN on the CPU, differentiable to any order.

XLA's CPU backend runs convolutions, grouped ones above all, well below what
the CPU can do; oneDNN (the library PyTorch runs them with) is 1.5x faster on
NFNet-F0's grouped 3x3 convolutions, forward and backward
(experiments/step_parts.py --conv_shapes). `conv` calls oneDNN's forward,
backward-data and backward-weights primitives through XLA's FFI
(`onednn_conv.cc`, built on first use by `build.py`; a stride-1 1x1
convolution's backward directions are oneDNN matmuls); each of the three is a
custom VJP of the others, so gradients of gradients work too. Forward-mode
differentiation (`jax.jvp`) is not supported. float32, and bfloat16 on CPUs
with bfloat16 instructions (AVX512-BF16, AMX, AVX2-VNNI-2; `native_bf16()`),
where oneDNN multiplies in bfloat16 and accumulates in float32.

`available()` says whether the kernel can be used here; `NFNETS_JAX_ONEDNN=0`
keeps `conv2d`'s 'auto' choice off it.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax.kernels import build

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]

_SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
# FFI target names (the handler symbols in onednn_conv.cc); `counting` counts
# the multiply-adds of calls to these.
FORWARD = "nfnets_conv_forward"
BACKWARD_DATA = "nfnets_conv_backward_data"
BACKWARD_WEIGHTS = "nfnets_conv_backward_weights"
TARGETS = (FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS)


@functools.cache
def _load() -> ctypes.CDLL | str:
  """Builds and registers the kernel: its library, or why it cannot be used."""
  if os.environ.get("NFNETS_JAX_ONEDNN", "1") == "0":
    return "NFNETS_JAX_ONEDNN=0 is set."
  try:
    library = ctypes.cdll.LoadLibrary(str(build.build_onednn_kernel(_SOURCE)))
  except (build.BuildError, OSError) as e:
    return str(e)
  for name in TARGETS:
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
  return library


def unavailable_reason() -> str | None:
  """Why `conv` cannot run here (None when it can): builds the kernel once."""
  loaded = _load()
  return loaded if isinstance(loaded, str) else None


def available() -> bool:
  """Whether `conv` can run here; logs why not the first time it cannot."""
  reason = unavailable_reason()
  if reason is not None:
    _log_once(reason)
  return reason is None


@functools.cache
def native_bf16() -> bool:
  """Whether `conv` runs bfloat16 here: the kernel loads and the CPU has
  bfloat16 instructions that oneDNN uses (AVX512-BF16, AMX or AVX2-VNNI-2)."""
  return available() and bool(_load().nfnets_onednn_native_bf16())


def supports(dtype: jnp.dtype | type) -> bool:
  """Whether `conv` runs arrays of `dtype` here."""
  if jnp.dtype(dtype) == jnp.float32:
    return available()
  return jnp.dtype(dtype) == jnp.bfloat16 and native_bf16()


@functools.cache
def _log_once(reason: str) -> None:
  logging.info("oneDNN convolutions are off, grouped convolutions fall back to "
               "'split': %s", reason)


def _attributes(stride: int, groups: int, pads: Pads) -> dict[str, np.ndarray]:
  return dict(groups=np.int64(groups), strides=np.array([stride, stride], np.int64),
              pads=np.array([*pads[0], *pads[1]], np.int64))


def _call(target: str, shape: Sequence[int], a: Array, b: Array, stride: int, groups: int,
          pads: Pads) -> Array:
  reason = unavailable_reason()
  if reason is not None:
    raise RuntimeError(f"The oneDNN convolution cannot run here: {reason}")
  for operand in (a, b):
    if operand.dtype not in (jnp.float32, jnp.bfloat16) or operand.ndim != 4:
      raise ValueError(f"The oneDNN convolution takes 4-D float32 or bfloat16 arrays, got "
                       f"{operand.dtype} {operand.shape}; use grouped_conv='split'.")
  if a.dtype != b.dtype:
    raise ValueError(f"The oneDNN convolution takes operands of one dtype, got {a.dtype} "
                     f"and {b.dtype}; cast them to one.")
  if not supports(a.dtype):
    raise ValueError("The oneDNN convolution runs bfloat16 only on CPUs with bfloat16 "
                     "instructions (AVX512-BF16, AMX or AVX2-VNNI-2), which this one lacks; "
                     "compute in float32 or use grouped_conv='split'.")
  out = jax.ShapeDtypeStruct(tuple(shape), a.dtype)
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(
      a, b, **_attributes(stride, groups, pads))


def output_shape(x_shape: Sequence[int], w_shape: Sequence[int], stride: int,
                 pads: Pads) -> tuple[int, int, int, int]:
  """NHWC shape of `conv(x, w, stride, groups, pads)`."""
  n, h, width, _ = x_shape
  kh, kw, _, out_ch = w_shape
  return (n, (h + sum(pads[0]) - kh) // stride + 1,
          (width + sum(pads[1]) - kw) // stride + 1, out_ch)


def conv(x: Array, w: Array, stride: int, groups: int, pads: Pads) -> Array:
  """NHWC x HWIO convolution with `groups` feature groups, by oneDNN.

  Args:
    x: input, NHWC, float32, or bfloat16 where `native_bf16()`.
    w: kernel, HWIO with I = channels of x // groups, of x's dtype.
    stride: spatial stride (both axes).
    groups: number of feature groups.
    pads: explicit ((top, bottom), (left, right)) zero padding.

  Returns:
    `lax.conv_general_dilated(x, w, (stride, stride), pads,
    feature_group_count=groups)` in NHWC, computed by oneDNN.
  """
  if x.shape[-1] != w.shape[2] * groups or w.shape[3] % groups:
    raise ValueError(f"Input {x.shape} and kernel {w.shape} do not make a "
                     f"{groups}-group NHWC x HWIO convolution.")
  return _forward(x, w, stride, groups, _pads(pads))


def _pads(pads: Sequence[Sequence[int]]) -> Pads:
  (top, bottom), (left, right) = pads
  return (int(top), int(bottom)), (int(left), int(right))


# y = conv(x, w) is bilinear, so each direction's VJP is made of the other two:
#   <y, g> = <conv(x, w), g>:  d/dx = backward_data(g, w), d/dw = backward_weights(x, g)
#   <dx, a> = <conv(a, w), dy>:  d/d(dy) = conv(a, w), d/dw = backward_weights(a, dy)
#   <dw, b> = <conv(x, b), dy>:  d/dx = backward_data(dy, b), d/d(dy) = conv(x, b)
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _forward(x, w, stride, groups, pads):
  return _call(FORWARD, output_shape(x.shape, w.shape, stride, pads), x, w, stride, groups, pads)


def _forward_fwd(x, w, stride, groups, pads):
  return _forward(x, w, stride, groups, pads), (x, w)


def _forward_bwd(stride, groups, pads, residuals, g):
  x, w = residuals
  return (_backward_data(g, w, x.shape, stride, groups, pads),
          _backward_weights(x, g, w.shape, stride, groups, pads))


_forward.defvjp(_forward_fwd, _forward_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _backward_data(dy, w, x_shape, stride, groups, pads):
  return _call(BACKWARD_DATA, x_shape, dy, w, stride, groups, pads)


def _backward_data_fwd(dy, w, x_shape, stride, groups, pads):
  return _backward_data(dy, w, x_shape, stride, groups, pads), (dy, w)


def _backward_data_bwd(x_shape, stride, groups, pads, residuals, a):
  dy, w = residuals
  return (_forward(a, w, stride, groups, pads),
          _backward_weights(a, dy, w.shape, stride, groups, pads))


_backward_data.defvjp(_backward_data_fwd, _backward_data_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _backward_weights(x, dy, w_shape, stride, groups, pads):
  return _call(BACKWARD_WEIGHTS, w_shape, x, dy, stride, groups, pads)


def _backward_weights_fwd(x, dy, w_shape, stride, groups, pads):
  return _backward_weights(x, dy, w_shape, stride, groups, pads), (x, dy)


def _backward_weights_bwd(w_shape, stride, groups, pads, residuals, b):
  x, dy = residuals
  return (_backward_data(dy, b, x.shape, stride, groups, pads),
          _forward(x, b, stride, groups, pads))


_backward_weights.defvjp(_backward_weights_fwd, _backward_weights_bwd)


def macs(target: str, operands: Sequence[jax.core.ShapedArray],
         result: jax.core.ShapedArray) -> int:
  """Multiply-adds of one call to `target` (any of `TARGETS`), from its shapes."""
  # Every direction does the forward convolution's work: one MAC per output
  # element per kernel weight feeding it.
  y_shape, w_shape = {FORWARD: (result.shape, operands[1].shape),
                      BACKWARD_DATA: (operands[0].shape, operands[1].shape),
                      BACKWARD_WEIGHTS: (operands[1].shape, result.shape)}[target]
  kh, kw, group_in, _ = w_shape
  return int(np.prod(y_shape, dtype=np.int64)) * kh * kw * group_in
