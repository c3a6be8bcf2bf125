"""What the command-line tools share: flag parsing, log levels, one-line errors."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging

from nfnets_jax import checkpointing

# Errors that are the user's to fix: one message, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, checkpointing.CheckpointReadError)


def fail(error: BaseException) -> NoReturn:
  print(f"error: {error}", file=sys.stderr, flush=True)
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with one-line errors for bad flags or config fields."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}")
  except (AttributeError, KeyError) as e:
    # ml_collections reports an unknown override field by its last name only,
    # as an AttributeError wrapping a KeyError whose message is the quoted
    # name, then a line with a suggestion.
    message = e
    while isinstance(message, BaseException) and message.args:
      message = message.args[0]
    name, _, suggestion = str(message).partition("\n")
    name = name.strip("\"' ")
    culprits = [arg.split("=")[0] for arg in argv
                if arg.startswith("--config.") and
                name in arg.split("=")[0].split(".")]
    sys.exit(f"error: unknown config field {name!r} in "
             f"{', '.join(culprits) or 'the --config overrides'}. "
             f"{suggestion + ' ' if suggestion else ''}Check the field path "
             "against the config file (sections are documented in "
             "nfnets_jax/train_config.py).")


def define_checkpoint_flags() -> None:
  """--checkpoint and --weights, as every tool that reads weights takes them."""
  flags.DEFINE_string(
      "checkpoint", None, "A training workdir (or its checkpoints/ folder), one "
      "of the authors' released checkpoint files (F0_haiku.npz ...), or a timm "
      "safetensors file or Hugging Face cache folder.")
  flags.DEFINE_enum("weights", "ema", ["ema", "raw"],
                    "Workdirs only: the EMA or the raw weights.")


def run(main: Callable[[Sequence[str]], None], define_flags: Callable[[], None],
        required: Sequence[str]) -> None:
  """Defines the tool's flags, then `absl.app.run(main)` with quiet logging.

  Warnings and errors only from absl logging. `--help` lists the tool's flags
  also when it runs as a console script (absl lists those of the main
  program's file only).
  """
  define_flags()
  flags.mark_flags_as_required(list(required))
  for module in (sys.modules[main.__module__], sys.modules[__name__]):
    for flag in flags.FLAGS.get_flags_for_module(module):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

  def quiet_main(argv: Sequence[str]) -> None:
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax and TFDS are chatty.
    main(argv)
  app.run(quiet_main, flags_parser=parse_flags)
