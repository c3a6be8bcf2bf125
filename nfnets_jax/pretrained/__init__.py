"""Pretrained weights: the authors' released files and timm's safetensors.

    params = nfnets_jax.load_official_checkpoint("F0_haiku.npz")
    params = nfnets_jax.load_timm_checkpoint("model.safetensors")  # dm_nfnet_f0
    nfnets_jax.export_timm(params, "model.safetensors", arch="dm_nfnet_f0")

One module per format (`released`, `timm`); `weights` finds what a path holds
(a training workdir, a released file or a timm file) for the command-line
tools and for fine-tuning.
"""
from nfnets_jax.pretrained.released import (CheckpointError, ReleasedFileWarning,
                                            load_official_checkpoint,
                                            save_official_checkpoint)
from nfnets_jax.pretrained.timm import TIMM_ARCHS, export_timm, load_timm_checkpoint
