"""The shape table `experiments.step_parts --conv_shapes` times."""
import collections

import haiku as hk
import jax

from experiments import step_parts
from nfnets_jax import models
from nfnets_jax.models import layers


def test_f0_grouped_convs_are_the_models():
  # The table was read off timm's dm_nfnet_f0 (bench_timm.py --conv_shapes);
  # here it is checked against the grouped convs our F0 applies at 128 px.
  found = collections.Counter()

  def record(next_fn, args, kwargs, context):
    conv = context.module
    if (isinstance(conv, layers.WSConv2D) and context.method_name == "__call__"
        and conv.feature_group_count > 1):
      x = args[0]
      found[(x.shape[0], x.shape[1], x.shape[-1], conv.feature_group_count, conv.stride)] += 1
    return next_fn(*args, **kwargs)

  net = models.transform("NFNet", 1000, variant="F0")
  images = jax.ShapeDtypeStruct((8, 128, 128, 3), jax.numpy.float32)

  def init(images):
    with hk.intercept_methods(record):
      return net.init(jax.random.PRNGKey(0), images, is_training=True)

  jax.eval_shape(init, images)
  assert dict(found) == step_parts.F0_GROUPED_CONVS
