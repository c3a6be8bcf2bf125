"""Input pipelines: TFDS / image folders / offline digits -> batches for jax.pmap.

    config = nfnets_jax.data.default_config()        # offline digits
    info = nfnets_jax.data.dataset_info(config)
    batches = nfnets_jax.data.train_iterator(config, global_batch_size=256, seed=0)
"""
# TensorFlow only runs tf.data here: off the accelerators JAX uses (its log
# level is set by nfnets_jax/__init__.py, before TensorFlow is imported).
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow already initialised its devices elsewhere
  pass
tfds.disable_progress_bar()

from nfnets_jax.data.config import default_config, imagenet_config  # pylint: disable=g-import-not-at-top
from nfnets_jax.data.pipeline import (  # pylint: disable=g-import-not-at-top
    DatasetInfo, dataset_info, eval_iterator, train_iterator)

__all__ = ["DatasetInfo", "dataset_info", "default_config", "eval_iterator",
           "imagenet_config", "train_iterator"]
