"""nfnets_jax: Normalizer-Free networks and Adaptive Gradient Clipping in JAX + Haiku."""
import os

# TensorFlow only runs tf.data here. Before anything imports it (or jaxlib):
# no C++ INFO/WARNING lines, and no oneDNN kernels, whose notices ("oneDNN
# custom operations are on", "supports DT_UINT8 only ... AVX-512") are noise
# for image preprocessing. Set either variable yourself to override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# pylint: disable=wrong-import-position
from nfnets_jax import optim
from nfnets_jax.agc import AdaptiveGradClipState, adaptive_grad_clip, clipped_fraction, unitwise_norm
from nfnets_jax.models import (NFNET_VARIANTS, NFREGNET_VARIANTS, FixupResNet, NFNet, NFRegNet,
                               NFResNet, ResNet, SkipInitResNet, abstract_init, count_macs,
                               count_params, create_model, model_macs, model_param_count,
                               transform)
from nfnets_jax.pretrained import (CheckpointError, export_timm, load_official_checkpoint,
                                   load_timm_checkpoint, save_official_checkpoint)

__version__ = "0.1.0"
