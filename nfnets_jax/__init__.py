"""nfnets_jax: Normalizer-Free networks and Adaptive Gradient Clipping in JAX + Haiku."""
from nfnets_jax import optim
from nfnets_jax.agc import AdaptiveGradClipState, adaptive_grad_clip, clipped_fraction, unitwise_norm
from nfnets_jax.counting import count_macs, count_params, model_macs, model_param_count
from nfnets_jax.models import create_model, transform
from nfnets_jax.nfnet import NFNet, NFNET_VARIANTS
from nfnets_jax.nfresnet import NFResNet
from nfnets_jax.pretrained import (CheckpointError, export_timm, load_official_checkpoint,
                                   load_timm_checkpoint, save_official_checkpoint)
from nfnets_jax.resnet import ResNet

__version__ = "0.1.0"
