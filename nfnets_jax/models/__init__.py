"""The networks: NFNets, NF-ResNets, NF-RegNets, their baselines and timm's NF models.

One module per network on shared building blocks (`layers`, `blocks`); the
registry builds any of them by name, ours or timm's, and `counting` counts
their parameters and multiply-adds.
"""
from nfnets_jax.models.counting import count_macs, count_params, model_macs, model_param_count
from nfnets_jax.models.fixup import FixupResNet
from nfnets_jax.models.nfnet import NFNET_VARIANTS, NFNet
from nfnets_jax.models.nfregnet import NFREGNET_VARIANTS, NFRegNet
from nfnets_jax.models.nfresnet import RESNET_DEPTHS, NFResNet
from nfnets_jax.models.registry import (MODELS, TIMM_MODELS, TimmModel, abstract_init,
                                        create_model, resolve, transform,
                                        variant_depths)
from nfnets_jax.models.resnet import ResNet
from nfnets_jax.models.skipinit import SkipInitResNet
