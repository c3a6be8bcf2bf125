"""Adaptive Gradient Clipping (AGC) as an optax transformation.

AGC rescales each *unit* of a gradient (the slice feeding one output unit) whose
norm exceeds `clipping` times the norm of the matching unit of the parameter:

    max_norm = clipping * max(||W_i||, eps)
    G_i <- G_i * max_norm / ||G_i||   if ||G_i|| > max_norm,   else G_i.

Units follow the authors' layout conventions (Haiku): conv kernels are HWIO,
linear weights IO; see `unitwise_norm`.
"""
import collections
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Floors the gradient norm in the rescaling factor; only engages for units whose
# gradient is (numerically) zero, which are never clipped anyway.
_DIVISION_EPS = 1e-6

# Leaves up to this size are reduced together with the others of their shape
# and dtype. On a GPU each reduction is a kernel launch: F0's update made 675
# of them over 233 leaves, 151 of them gains, biases and scalars of 11 shapes.
_STACK_MAX_SIZE = 1 << 16

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


def _axes_or_whole(shape: tuple[int, ...]) -> Optional[tuple[int, ...]]:
  """AGC's unit axes where it has units, else None (the whole tensor)."""
  try:
    return _reduction_axes(shape)
  except ValueError:
    return None


def _sums_of_squares(leaves: Sequence[jax.Array],
                     axes: Sequence[Optional[tuple[int, ...]]]) -> list[jax.Array]:
  """Per leaf, the sum of squares over `axes` (kept, size 1), float32 or wider.

  Small leaves of one shape, dtype and `axes` are stacked and summed in one
  reduction (the same sums, in fewer kernels); the others one by one.
  """
  groups = collections.defaultdict(list)
  for i, x in enumerate(leaves):
    small = np.size(x) <= _STACK_MAX_SIZE
    groups[(jnp.shape(x), jnp.result_type(x), axes[i]) if small else i].append(i)
  sums = [None] * len(leaves)
  for members in groups.values():
    unit_axes = axes[members[0]]
    if unit_axes is None:
      unit_axes = tuple(range(jnp.ndim(leaves[members[0]])))
    stacked = jnp.stack([leaves[i] for i in members])
    stacked = stacked.astype(_compute_dtype(stacked.dtype))
    group_sums = jnp.sum(jnp.square(stacked),
                         axis=tuple(a + 1 for a in unit_axes), keepdims=True)
    for j, i in enumerate(members):
      sums[i] = group_sums[j]
  return sums


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
  return jnp.sqrt(_sums_of_squares([x], [_reduction_axes(jnp.shape(x))])[0])


def global_norm(tree: Any, unitwise: bool = True) -> jax.Array:
  """`optax.global_norm` of `tree`, in float32, in few reductions.

  Equal to the norm over every element (to float32 rounding). Small leaves
  of one shape are summed together (`_sums_of_squares`).

  Args:
    tree: arrays.
    unitwise: reduce each leaf AGC has units for as AGC does, its unit norms
      first, so that XLA merges these reductions with AGC's on the same tree
      (the gradients: logging their norm next to AGC does not read them
      again). False reduces every leaf whole: fewer reductions where there
      are none to share (the parameters after the update).

  Returns:
    The scalar norm.
  """
  leaves = jax.tree.leaves(tree)
  if unitwise:
    sums = _sums_of_squares(leaves, [_axes_or_whole(jnp.shape(x)) for x in leaves])
    # From the unit norms, not their sums of squares: XLA turns a sum of sums
    # into one sum over the whole leaf, which reads it again (F0's AGC with
    # this norm took about 90 ms instead of 60 ms on a CPU).
    sums = [jnp.square(jnp.sqrt(s)) for s in sums]
  else:
    sums = _sums_of_squares(leaves, [None] * len(leaves))
  return jnp.sqrt(_total([s.reshape(-1) for s in sums], jnp.float32))


def _total(vectors: Sequence[jax.Array], dtype: Any) -> jax.Array:
  """Sum of every element of `vectors`, in one reduction."""
  if not vectors:
    return jnp.zeros([], dtype)
  return jnp.sum(jnp.concatenate(vectors), dtype=dtype)


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


def _unit_axes(path: str, grad: jax.Array,
               param: jax.Array) -> Optional[tuple[int, ...]]:
  """`_reduction_axes` of one leaf, with errors that name the parameter."""
  if jnp.shape(grad) != jnp.shape(param):
    raise ValueError(f"adaptive_grad_clip: gradient of '{path}' has shape "
                     f"{jnp.shape(grad)} but the parameter has "
                     f"{jnp.shape(param)}; pass the params the grads are of.")
  try:
    return _reduction_axes(jnp.shape(param))
  except ValueError as e:
    raise ValueError(f"Parameter '{path}': {e}") from None


def _clip_leaf(grad: jax.Array, grad_sums: jax.Array, param_sums: jax.Array,
               clipping: Any, eps: Any) -> tuple[jax.Array, jax.Array]:
  """Clips one leaf given its unit sums of squares; also returns the mask."""
  grad_norm = jnp.sqrt(grad_sums)
  max_norm = clipping * jnp.maximum(jnp.sqrt(param_sums), eps)
  clipped = grad_norm > max_norm
  # Scale on the (small) reduced array, then a single broadcast multiply.
  scale = jnp.where(clipped, max_norm / jnp.maximum(grad_norm, _DIVISION_EPS),
                    1.0)
  return (grad.astype(scale.dtype) * scale).astype(grad.dtype), clipped


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
    grads = [grad for _, grad in leaves]
    param_leaves = treedef.flatten_up_to(params)
    axes = [_unit_axes(param_path(key_path), grad, param)
            for (key_path, grad), param in zip(leaves, param_leaves)]
    new_leaves, masks = [], []
    for grad, grad_sums, param_sums in zip(
        grads, _sums_of_squares(grads, axes),
        _sums_of_squares(param_leaves, axes)):
      new_grad, clipped = _clip_leaf(grad, grad_sums, param_sums, clipping, eps)
      new_leaves.append(new_grad)
      masks.append(clipped.reshape(-1))
    num_units = sum(mask.size for mask in masks)
    fraction = (_total(masks, jnp.int32).astype(jnp.float32)
                / max(num_units, 1))
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
