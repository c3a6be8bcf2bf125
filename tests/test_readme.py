"""The README's examples run as written."""
import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", ["agc"])
def test_readme_example_runs(name, capsys):
  match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", README, re.S)
  assert match, f"README has no example marked {name!r}"
  exec(compile(match.group(1), f"README:{name}", "exec"), {})
  # Every unit of an all-ones gradient is far above 0.01 x its weight norm,
  # and the zero-initialised head bias has norm < eps: all clip.
  assert "fraction of units clipped: 1.0" in capsys.readouterr().out
