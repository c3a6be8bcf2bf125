"""Adaptive Gradient Clipping (AGC) as an optax transformation.

AGC rescales each *unit* of a gradient (the slice feeding one output unit) whose
norm exceeds `clipping` times the norm of the matching unit of the parameter:

    max_norm = clipping * max(||W_i||, eps)
    G_i <- G_i * max_norm / ||G_i||   if ||G_i|| > max_norm,   else G_i.

Units follow the authors' layout conventions (Haiku): conv kernels are HWIO,
linear weights IO; see `unitwise_norm`.
"""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Floors the gradient norm in the rescaling factor; only engages for units whose
# gradient is (numerically) zero, which are never clipped anyway.
_DIVISION_EPS = 1e-6

_SUPPORTED_RANKS = (
    "scalars and vectors (one unit), linear weights IO and multi-head linear "
    "weights of rank 3 (units along axis 0), conv kernels HWIO (units along "
    "axes 0, 1, 2)")


def param_path(key_path: tuple[Any, ...]) -> str:
  """Joins a JAX key path into a '/'-separated string.

  For a Haiku params dict this gives `'<module path>/<param name>'`, e.g.
  `'NFNet/~/linear/w'`: the string that masks and error messages use.
  """
  parts = []
  for key in key_path:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey.
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _reduction_axes(shape: tuple[int, ...]) -> Optional[tuple[int, ...]]:
  """Axes summed over for one unit's norm; None means the whole tensor."""
  if sum(d != 1 for d in shape) <= 1:  # Rank of the squeezed tensor.
    return None
  if len(shape) in (2, 3):
    return (0,)
  if len(shape) == 4:
    return (0, 1, 2)
  raise ValueError(
      f"AGC cannot tell the units of a parameter of shape {shape} (rank "
      f"{len(shape)}); it understands {_SUPPORTED_RANKS}. Exclude this "
      "parameter from AGC (optax.masked, or the optimizer config's "
      "`agc_exclude`) or store it in one of those layouts.")


def _compute_dtype(dtype: Any) -> Any:
  """float32 for low-precision inputs (bf16/fp16 sums lose too many bits)."""
  return jnp.promote_types(dtype, jnp.float32)


def _norm(x: jax.Array, axes: Optional[tuple[int, ...]]) -> jax.Array:
  x = x.astype(_compute_dtype(x.dtype))
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))


def unitwise_norm(x: jax.Array) -> jax.Array:
  """L2 norm of each unit of `x`, in float32 (or wider).

  Args:
    x: a parameter or gradient. If it has at most one dimension larger than 1
      it is a single unit; rank 2 (linear, IO) and rank 3 (multi-head linear)
      have one unit per slice along axis 0; rank 4 (conv, HWIO) one unit per
      output channel, reduced over axes (0, 1, 2).

  Returns:
    The norms with the reduced axes kept (size 1), so they broadcast against
    `x`.

  Raises:
    ValueError: for ranks above 4 with more than one non-trivial dimension.

  References:
    Brock et al., High-Performance Large-Scale Image Recognition Without
    Normalization, arXiv 2102.06171, 2021.
  """
  return _norm(x, _reduction_axes(jnp.shape(x)))


def global_norm(tree: Any) -> jax.Array:
  """`optax.global_norm` of `tree`, in float32, summed from unit norms.

  Equal to the norm over every element (to float32 rounding). Each leaf AGC
  has units for goes through `unitwise_norm`, the reductions AGC itself
  makes, so that XLA merges the two (common subexpressions) and logging the
  gradient's norm next to AGC does not read the gradients again; other
  leaves (rank above 4) are reduced whole.
  """
  def sum_of_squares(x):
    if x.ndim <= 4 or sum(d != 1 for d in x.shape) <= 1:
      x = unitwise_norm(x)
    return jnp.sum(jnp.square(x.astype(_compute_dtype(x.dtype))))

  return jnp.sqrt(sum((sum_of_squares(x) for x in jax.tree.leaves(tree)),
                      jnp.zeros([], jnp.float32)))


class AdaptiveGradClipState(NamedTuple):
  """State of `adaptive_grad_clip`.

  Attributes:
    clipped_fraction: fraction of the units (over every leaf this
      transformation saw) whose gradient was rescaled at the last update;
      0 before the first update.
  """
  clipped_fraction: jax.Array


def _check_scalar(name: str, value: Any, minimum: float, strict: bool) -> None:
  """Validates a hyper-parameter; traced values (inject_hyperparams) pass."""
  try:
    value = float(value)
  except jax.errors.ConcretizationTypeError:
    return
  if not (value > minimum if strict else value >= minimum):
    bound = f"> {minimum}" if strict else f">= {minimum}"
    raise ValueError(f"adaptive_grad_clip: {name} must be {bound}, got "
                     f"{value}. To disable AGC leave it out of the chain (optimizer "
                     "config: clipping=None).")


def _clip_leaf(path: str, grad: jax.Array, param: jax.Array, clipping: Any,
               eps: Any) -> tuple[jax.Array, jax.Array, int]:
  """Clips one leaf; returns (clipped grad, clipped units, total units)."""
  if jnp.shape(grad) != jnp.shape(param):
    raise ValueError(f"adaptive_grad_clip: gradient of '{path}' has shape "
                     f"{jnp.shape(grad)} but the parameter has "
                     f"{jnp.shape(param)}; pass the params the grads are of.")
  try:
    axes = _reduction_axes(jnp.shape(param))
  except ValueError as e:
    raise ValueError(f"Parameter '{path}': {e}") from None
  grad_norm = _norm(grad, axes)
  max_norm = clipping * jnp.maximum(_norm(param, axes), eps)
  clipped = grad_norm > max_norm
  # Scale on the (small) reduced array, then a single broadcast multiply.
  scale = jnp.where(clipped, max_norm / jnp.maximum(grad_norm, _DIVISION_EPS),
                    1.0)
  new_grad = (grad.astype(scale.dtype) * scale).astype(grad.dtype)
  return new_grad, jnp.sum(clipped), int(np.prod(clipped.shape))


def adaptive_grad_clip(clipping: float,
                       eps: float = 1e-3) -> optax.GradientTransformation:
  """Adaptive Gradient Clipping, unit-wise.

  Each unit (see `unitwise_norm`) of the gradient is rescaled to norm
  `clipping * max(||param unit||, eps)` when it is larger; other units pass
  unchanged. Norms are computed in float32 for bf16/fp16 inputs and updates
  keep the gradient's dtype. Apply it to the raw gradient, in front of weight
  decay and momentum, e.g.
  `optax.chain(adaptive_grad_clip(0.01), optax.sgd(lr, 0.9, nesterov=True))`;
  use `optax.masked` to exempt parameters (the paper exempts the classifier's
  weight matrix).

  Args:
    clipping: maximum ratio of gradient-unit norm to parameter-unit norm
      (lambda in the paper, 0.01 at batch 4096); must be > 0.
    eps: floor on the parameter norm, so that zero-initialised parameters
      (e.g. `skip_gain`) still receive gradients of norm up to
      `clipping * eps`; must be >= 0.

  Returns:
    An `optax.GradientTransformation` whose state is an
    `AdaptiveGradClipState`; its `update` requires `params`.

  References:
    Brock et al., High-Performance Large-Scale Image Recognition Without
    Normalization, arXiv 2102.06171, 2021.
  """
  _check_scalar("clipping", clipping, 0.0, strict=True)
  _check_scalar("eps", eps, 0.0, strict=False)

  def init_fn(params):
    del params
    return AdaptiveGradClipState(clipped_fraction=jnp.zeros([], jnp.float32))

  def update_fn(updates, state, params=None):
    del state
    if params is None:
      raise ValueError(
          "adaptive_grad_clip needs the parameters: call "
          "`update(grads, opt_state, params)` (optax.chain and optax.masked "
          "forward them).")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    param_leaves = treedef.flatten_up_to(params)
    new_leaves, num_clipped, num_units = [], [], 0
    for (key_path, grad), param in zip(leaves, param_leaves):
      new_grad, clipped, units = _clip_leaf(param_path(key_path), grad, param,
                                            clipping, eps)
      new_leaves.append(new_grad)
      num_clipped.append(clipped)
      num_units += units
    total_clipped = sum(num_clipped, jnp.zeros([], jnp.int32))
    fraction = total_clipped.astype(jnp.float32) / max(num_units, 1)
    return (jax.tree_util.tree_unflatten(treedef, new_leaves),
            AdaptiveGradClipState(clipped_fraction=fraction))

  return optax.GradientTransformation(init_fn, update_fn)


def clipped_fraction(opt_state: Any) -> Optional[jax.Array]:
  """Fraction of units AGC clipped at the last step, read from any opt state.

  Finds the single `AdaptiveGradClipState` inside a nested optax state (chain,
  masked, inject_hyperparams, ...). Works inside jit/pmap.

  Args:
    opt_state: the state of an optimizer that contains `adaptive_grad_clip`.

  Returns:
    The scalar fraction, or None when the optimizer has no AGC (e.g. it was
    disabled in the config).

  Raises:
    ValueError: if the state holds more than one AGC state (ambiguous).
  """
  is_agc = lambda x: isinstance(x, AdaptiveGradClipState)
  found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=is_agc)
           if is_agc(x)]
  if len(found) > 1:
    raise ValueError(f"Found {len(found)} adaptive_grad_clip states in the "
                     "optimizer state; read each one's `clipped_fraction` "
                     "directly.")
  return found[0].clipped_fraction if found else None
