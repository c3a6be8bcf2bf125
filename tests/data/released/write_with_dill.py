"""Writes released-format files the way the authors' were written (scratch env only).

Run with dill 0.3.3 and NumPy 1.x, as in February 2021, never in the project's
environment (see make_fixtures.py, which calls it):

    python -m venv /tmp/dillenv && /tmp/dillenv/bin/pip install dill==0.3.3 "numpy<2"
    /tmp/dillenv/bin/python write_with_dill.py PARAMS.npz OUT_DIR

With dill 0.3.3 it writes the parameters in each Haiku container and the
hostile variants; with any other dill (0.3.6 writes arrays through
`_create_array`), the parameters in a FlatMapping only.

Haiku 0.0.3 is not installable on today's Python, so its containers are
stand-ins with the same module path, class names and `__reduce__`
(`(cls, (plain_dict,))`), which is all of them that reaches the stream.
"""
import importlib
import os
import sys
import tempfile

import dill
import numpy as np


# Haiku 0.0.3's containers, reduced to what reaches the stream. They live in a
# module file on sys.path, as Haiku's did, so dill pickles them by reference.
_STANDINS = """
class _Container:  # Haiku's are Mappings; only __reduce__ reaches the stream.
  def __init__(self, mapping):
    self._mapping = dict(mapping)

  def __reduce__(self):  # Haiku 0.0.3: (FlatMapping, (plain_dict,))
    return (type(self), (dict(self._mapping),))


class FlatMapping(_Container):
  pass


class FlatMap(_Container):
  pass


class frozendict(_Container):
  pass
"""


def _import_haiku_standins():
  root = tempfile.mkdtemp()
  os.makedirs(os.path.join(root, "haiku", "_src"))
  for init in ("haiku/__init__.py", "haiku/_src/__init__.py"):
    open(os.path.join(root, init), "w").close()
  with open(os.path.join(root, "haiku", "_src", "data_structures.py"), "w") as f:
    f.write(_STANDINS)
  sys.path.insert(0, root)
  return importlib.import_module("haiku._src.data_structures")


_HAIKU = _import_haiku_standins()


class RunsACommand:
  """What an attacker would put in a file: os.system on unpickling."""

  def __reduce__(self):
    return (os.system, ("touch nfnets_pwned_marker",))


def _dump(tree, path):
  with open(path, "wb") as f:
    dill.dump(tree, f)


def main(params_path, out_dir):
  print(f"dill {dill.__version__}, numpy {np.__version__}")
  with np.load(params_path) as flat:
    tree = {}
    for key in flat.files:
      module, name = key.split("|")
      tree.setdefault(module, {})[name] = flat[key]
  first = sorted(tree)[0]
  if dill.__version__ != "0.3.3":
    # Later dill writes arrays as _create_array(_reconstruct, ...): one file.
    _dump(_HAIKU.FlatMapping({m: _HAIKU.FlatMapping(v) for m, v in tree.items()}),
          os.path.join(out_dir, f"f0_small_FlatMapping_dill{dill.__version__}.dill"))
    return
  for name in ("FlatMapping", "FlatMap", "frozendict"):
    cls = getattr(_HAIKU, name)
    _dump(cls({m: cls(v) for m, v in tree.items()}),
          os.path.join(out_dir, f"f0_small_{name}.dill"))
    # The first module with its weight replaced by a command: dill writes
    # os.system as _get_attr(_import_module('posix'), 'system').
    hostile = {first: dict(tree[first], w=RunsACommand())}
    _dump(cls({m: cls(v) for m, v in hostile.items()}),
          os.path.join(out_dir, f"hostile_system_{name}.dill"))
  # A module object: dill writes _import_module('os').
  hostile = {first: dict(tree[first], w=os)}
  _dump(_HAIKU.FlatMapping(hostile), os.path.join(out_dir, "hostile_module.dill"))


if __name__ == "__main__":
  main(*sys.argv[1:])
