r"""Write a checkpoint's weights in the released format or as a timm state dict.

    python -m nfnets_jax.export --checkpoint=workdirs/f0 --format=timm \
        --arch=dm_nfnet_f0 --out=f0.safetensors
    python -m nfnets_jax.export --checkpoint=workdirs/digits --format=released \
        --out=digits_haiku.npz
    python -m nfnets_jax.export --checkpoint=F0_haiku.npz --format=timm --out=f0.safetensors

The checkpoint is anything `evaluate` reads: a workdir (EMA weights by
default), a released file or a timm file. 'released' writes the authors'
format (a pickle of `{module_path: {name: array}}`, readable by their
`utils.load_haiku_file` and by `nfnets_jax.load_official_checkpoint`); 'timm'
writes a safetensors state dict that `timm.create_model(arch)` loads. A
workdir's model may have non-standard widths: timm then needs the same
overrides, and the released loader the same constructor arguments.
"""
from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags

from nfnets_jax import cli
from nfnets_jax.pretrained import released
from nfnets_jax.pretrained import timm
from nfnets_jax.pretrained import weights as pretrained_weights


def export(checkpoint: str, out: str, output_format: str, weights: str = "ema",
           arch: str | None = None) -> str:
  """Writes `checkpoint`'s weights to `out`; returns a line saying what was written."""
  loaded = pretrained_weights.load_weights(checkpoint, weights=weights)
  if loaded.model_state:
    raise ValueError(f"{loaded.description} is a {loaded.model} with BatchNorm "
                     "statistics; only normaliser-free networks have released and "
                     "timm formats.")
  if output_format == "released":
    released.save_official_checkpoint(loaded.params, out)
    return f"Wrote {out}: {loaded.description} in the released format."
  if arch is None and loaded.model in timm.TIMM_ARCHS:  # A run of a timm name.
    arch = loaded.model
  written = timm.export_timm(loaded.params, out, arch, **loaded.model_kwargs)
  return f"Wrote {out}: {loaded.description} as timm's {written}."


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    print(export(flags.FLAGS.checkpoint, flags.FLAGS.out, flags.FLAGS.format,
                 flags.FLAGS.weights, flags.FLAGS.arch), flush=True)
  except cli.USER_ERRORS as e:
    cli.fail(e)


def _define_flags() -> None:
  cli.define_checkpoint_flags()
  flags.DEFINE_enum("format", None, ["released", "timm"], "Output format.")
  flags.DEFINE_string("out", None, "Output file.")
  flags.DEFINE_string(
      "arch", None, "timm only: the timm architecture (dm_nfnet_f0 ...); default: "
      "the one of the model's variant.")


def run() -> None:
  """Console-script entry point (`nfnets-export`)."""
  cli.run(main, _define_flags, ["checkpoint", "format", "out"])


if __name__ == "__main__":
  run()
