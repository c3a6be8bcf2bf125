r"""The benchmark's step with other builds of the oneDNN kernel, alternating in one process.

    git show HEAD~1:nfnets_jax/kernels/onednn_conv.cc > /tmp/old.cc
    python -m experiments.kernel_ab --source=old=/tmp/old.cc --steps=16
    python -m experiments.kernel_ab --source=old=/tmp/old.cc --forward --forward_resolution=256
    python -m experiments.kernel_ab --source=old=/tmp/old.cc --model=NFResNet --variant=ResNet50

Each `--source=NAME=PATH` is a version of `nfnets_jax/kernels/onednn_conv.cc`:
its handler symbols are renamed (`nfnets_conv_*` to `NAME_conv_*`), it is
built like the kernel and registered under those names, and the step of
`nfnets_jax.bench` (the same model flags) is compiled calling them. 'base',
the installed kernel, comes first. The steps of all builds alternate one by
one after the warm-up, so that a shared CPU's drifting speed hits them alike
(separate processes run minutes apart). It prints each build's median, min
and max, and against base the median of the step-by-step ratios and the
steps base won (`nfnets_jax.lockstep.compare`). `--forward` times the
inference forward pass (eval mode, at `--forward_resolution`) instead of the
training step.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import pathlib
import re
import tempfile
from typing import Iterator, Optional, Sequence

import jax

from nfnets_jax import bench
from nfnets_jax import host_memory
from nfnets_jax import lockstep
from nfnets_jax.kernels import build
from nfnets_jax.kernels import onednn

_PREFIX = "nfnets_conv_"
# The sources loaded in this process by name: XLA registers a target name once.
_LOADED: dict[str, str] = {}


def load_variant(name: str, source: pathlib.Path) -> tuple[str, ...]:
  """Builds `source` with its handlers renamed for `name`; their FFI target names."""
  if not re.fullmatch(r"[A-Za-z_]\w*", name) or name in ("base", "nfnets"):
    raise ValueError(f"A build needs a name that is a C identifier other than 'base' and "
                     f"'nfnets', got {name!r}.")
  text = source.read_text()
  if _PREFIX not in text:
    raise ValueError(f"{source} defines no {_PREFIX}* handlers: pass a version of "
                     "nfnets_jax/kernels/onednn_conv.cc.")
  targets = tuple(t.replace(_PREFIX, f"{name}_conv_") for t in onednn.TARGETS)
  if name in _LOADED:
    if _LOADED[name] != text:
      raise ValueError(f"The name {name!r} already holds another source in this process; "
                       "give this one another name.")
    return targets
  renamed = pathlib.Path(tempfile.mkdtemp(prefix="kernel_ab_")) / f"{name}_onednn_conv.cc"
  renamed.write_text(text.replace(_PREFIX, f"{name}_conv_"))
  library = ctypes.cdll.LoadLibrary(str(build.build_onednn_kernel(renamed)))
  for target in targets:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)),
                                platform="cpu")
  _LOADED[name] = text
  return targets


@contextlib.contextmanager
def calling(targets: Sequence[str]) -> Iterator[None]:
  """Convolutions traced inside call `targets` (forward, backward data, backward weights)."""
  saved = onednn.FORWARD, onednn.BACKWARD_DATA, onednn.BACKWARD_WEIGHTS
  onednn.FORWARD, onednn.BACKWARD_DATA, onednn.BACKWARD_WEIGHTS = targets
  try:
    yield
  finally:
    onednn.FORWARD, onednn.BACKWARD_DATA, onednn.BACKWARD_WEIGHTS = saved


def main(argv: Optional[Sequence[str]] = None) -> None:
  host_memory.reuse_freed_memory()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--source", action="append", required=True, metavar="NAME=PATH",
                      help="A version of onednn_conv.cc to time against the installed one.")
  own, rest = parser.parse_known_args(argv)
  args = bench.parse_args(["--no-agc_overhead", *rest])
  if not onednn.available():
    raise SystemExit(f"error: the oneDNN kernel cannot run here: {onednn.unavailable_reason()}")
  config, num_classes, per_device_batch = bench.resolve_config(args)
  builds = {"base": onednn.TARGETS}
  for spec in own.source:
    name, _, path = spec.partition("=")
    builds[name] = load_variant(name, pathlib.Path(path))
  variants = {}
  for name, targets in builds.items():
    with calling(targets):
      if args.forward:
        variants[name] = bench.build_forward_variant(
            config, num_classes, per_device_batch, bench.forward_resolution(args, config))
      else:
        variants[name] = bench.build_variant(config, num_classes, per_device_batch)
  bench.time_interleaved(list(variants.values()), args.steps, args.warmup_steps)
  kind = "forward" if args.forward else "train"
  results = {name: {kind: {"step_times_s": v.times}} for name, v in variants.items()}
  print(lockstep.format_table(lockstep.compare(results)))


if __name__ == "__main__":
  main()
