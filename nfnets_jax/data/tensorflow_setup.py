"""TensorFlow and TFDS as the input pipeline uses them; every data module imports them from here.

TensorFlow only runs tf.data: it stays off the accelerators JAX uses (its log
level is set by nfnets_jax/__init__.py, before TensorFlow is imported), and
TFDS draws no progress bars.
"""
import tensorflow as tf
import tensorflow_datasets as tfds

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow already initialised its devices elsewhere
  pass
tfds.disable_progress_bar()

__all__ = ["tf", "tfds"]
