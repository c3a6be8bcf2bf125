"""TensorFlow and TFDS as the input pipeline uses them; every data module imports them from here.

TensorFlow only runs tf.data: it stays off the accelerators JAX uses (its log
level is set by nfnets_jax/__init__.py, before TensorFlow is imported), and
TFDS draws no progress bars.

TensorFlow's import also loads all of Keras (2.5 s of a 7 s import here,
scikit-learn and SciPy with it), which tf.data does not use, unless
TF_USE_LEGACY_KERAS points it at the separate tf_keras package, whose absence
it tolerates. So when this module is the first to import TensorFlow it sets
TF_USE_LEGACY_KERAS=1; set TF_USE_LEGACY_KERAS=0 before importing
nfnets_jax.data to use `tf.keras` in the same process.
"""
import os
import sys

if "tensorflow" not in sys.modules:
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf
import tensorflow_datasets as tfds

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow already initialised its devices elsewhere
  pass
tfds.disable_progress_bar()

__all__ = ["tf", "tfds"]
