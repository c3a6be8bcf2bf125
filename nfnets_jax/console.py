"""Keeping the console to our own lines: other libraries' notices that are not news."""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from absl import logging as absl_logging


@contextlib.contextmanager
def absl_warnings_off() -> Iterator[None]:
  """Hides absl INFO and WARNING records (TFDS's, orbax's) inside the block."""
  absl_logger = absl_logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    absl_logger.setLevel(level)
