"""Compiles this package's C++ kernels on first use, once per machine.

A kernel is built with the system's C++ compiler (`$CXX`, else `c++`, else
`g++`) against XLA's FFI headers (shipped with jaxlib) and oneDNN (the
`onednn-devel-cpu-gomp` wheel, or an installation under
`$NFNETS_JAX_ONEDNN_ROOT`), into a cache folder: `$NFNETS_JAX_CACHE_DIR`, else
`$XDG_CACHE_HOME/nfnets_jax`, else `~/.cache/nfnets_jax`. The file name holds
a hash of everything the build depends on, so a new source, jaxlib or oneDNN
builds afresh; the library is written to a temporary file and renamed into
place, so processes building at once never load a half-written one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax

_DEVEL_WHEEL = "onednn-devel-cpu-gomp"
_LIBRARY = "libdnnl.so.3"


class BuildError(RuntimeError):
  """A kernel could not be built; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class OneDNN:
  """Where oneDNN's headers and shared library are."""
  include_dir: pathlib.Path
  library: pathlib.Path


def find_onednn() -> OneDNN:
  """oneDNN 3.x under `$NFNETS_JAX_ONEDNN_ROOT`, else from its pip wheels."""
  root = os.environ.get("NFNETS_JAX_ONEDNN_ROOT")
  if root:
    root = pathlib.Path(root)
    libraries = [root / d / _LIBRARY for d in ("lib", "lib64") if (root / d / _LIBRARY).exists()]
    if not (root / "include/oneapi/dnnl/dnnl.hpp").exists() or not libraries:
      raise BuildError(f"NFNETS_JAX_ONEDNN_ROOT={root} has no include/oneapi/dnnl/dnnl.hpp "
                       f"and lib/{_LIBRARY} (oneDNN 3.x); point it at a oneDNN 3 "
                       "installation or unset it to use the pip wheel.")
    return OneDNN(root / "include", libraries[0])
  try:
    files = importlib.metadata.distribution(_DEVEL_WHEEL).files or []
  except importlib.metadata.PackageNotFoundError:
    raise BuildError(f"oneDNN is not installed: pip install '{_DEVEL_WHEEL}>=2023,<2024' "
                     "(Linux x86_64), or set NFNETS_JAX_ONEDNN_ROOT to a oneDNN 3 "
                     "installation.") from None
  headers = [f.locate() for f in files if str(f).endswith("oneapi/dnnl/dnnl.hpp")]
  if not headers:
    raise BuildError(f"The {_DEVEL_WHEEL} wheel has no oneapi/dnnl/dnnl.hpp; reinstall it.")
  include_dir = pathlib.Path(os.path.normpath(headers[0])).parents[2]
  # The headers wheel depends on the runtime wheel, which puts the library in
  # the environment's lib/ beside include/.
  library = include_dir.parent / "lib" / _LIBRARY
  if not library.exists():
    raise BuildError(f"{library} is missing: pip install --force-reinstall onednn-cpu-gomp.")
  return OneDNN(include_dir, library)


def cache_dir() -> pathlib.Path:
  """The folder built kernels are kept in (see the module docstring)."""
  if os.environ.get("NFNETS_JAX_CACHE_DIR"):
    return pathlib.Path(os.environ["NFNETS_JAX_CACHE_DIR"])
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "nfnets_jax"


def _compiler() -> str:
  for name in (os.environ.get("CXX"), "c++", "g++"):
    if name and shutil.which(name):
      return shutil.which(name)
  raise BuildError("No C++ compiler found (tried $CXX, c++, g++): install g++ "
                   "(Debian/Ubuntu: apt install g++) or set CXX.")


def build_onednn_kernel(source: pathlib.Path) -> pathlib.Path:
  """The shared library of the oneDNN kernel `source`, built if not cached."""
  onednn = find_onednn()
  compiler = _compiler()
  command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
             f"-I{jax.ffi.include_dir()}", f"-I{onednn.include_dir}", str(source),
             f"-L{onednn.library.parent}", f"-l:{onednn.library.name}",
             f"-Wl,-rpath,{onednn.library.parent}"]
  key = hashlib.sha256()
  key.update(source.read_bytes())
  key.update(" ".join([*command, importlib.metadata.version("jaxlib"),
                       str(onednn.library.stat().st_size)]).encode())
  target = cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
  os.close(fd)
  try:
    done = subprocess.run([*command, "-o", partial], capture_output=True, text=True)
    if done.returncode:
      raise BuildError(f"Compiling {source.name} failed ({' '.join(command)}):\n"
                       f"{done.stderr[-4000:]}")
    os.replace(partial, target)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return target
