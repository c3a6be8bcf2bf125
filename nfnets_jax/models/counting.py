"""Parameter and multiply-add (MAC) counts."""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.extend import core as jex_core

from nfnets_jax.kernels import onednn
from nfnets_jax.models import registry


def count_params(params: Any) -> int:
  """Total number of parameters in a pytree of arrays (or ShapeDtypeStructs)."""
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree_util.tree_leaves(params)))


def _eqn_macs(eqn) -> int:
  if eqn.primitive.name == "conv_general_dilated":
    (out,) = eqn.outvars
    rhs = eqn.invars[1].aval
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    # Each output element costs one MAC per kernel weight feeding it.
    per_output = np.prod(rhs.shape) // rhs.shape[out_feature_dim]
    return int(np.prod(out.aval.shape) * per_output)
  if eqn.primitive.name == "dot_general":
    (out,) = eqn.outvars
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval
    return int(np.prod(out.aval.shape) * np.prod([lhs.shape[d] for d in lhs_contract]))
  if eqn.primitive.name == "ffi_call" and eqn.params["target_name"] in onednn.TARGETS:
    return onednn.macs(eqn.params["target_name"], [v.aval for v in eqn.invars],
                       eqn.outvars[0].aval)
  return 0


def _jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    total += _eqn_macs(eqn)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jex_core.ClosedJaxpr):
          total += _jaxpr_macs(sub.jaxpr)
        elif isinstance(sub, jex_core.Jaxpr):
          total += _jaxpr_macs(sub)
  return total


def count_macs(fn: Callable, *args: Any) -> int:
  """Multiply-adds of every convolution and matrix product `fn(*args)` runs.

  Traces `fn` abstractly (args may be `jax.ShapeDtypeStruct`s), so models of
  any size are counted without running them. Elementwise work is not counted.
  """
  return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def model_macs(name: str, resolution: int, num_classes: int = 1000, **kwargs: Any) -> int:
  """MACs of one forward pass of one image at `resolution` px (convs, SE, classifier)."""
  net, params, state, image = registry.abstract_init(name, num_classes, resolution, **kwargs)
  return count_macs(lambda p, s, x: net.apply(p, s, None, x, is_training=False),
                    params, state, image)


def model_param_count(name: str, num_classes: int = 1000, **kwargs: Any) -> int:
  """Parameter count of a model, from shapes alone (nothing is allocated)."""
  return count_params(registry.abstract_init(name, num_classes, **kwargs)[1])
