"""The worked examples of docs/extending.md run as written (each in a fresh interpreter: they register a game and
strategies, which must not leak into the other tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
EXAMPLE = re.compile(r"<!-- example: (?P<name>[\w-]+) -->\n```python\n(?P<code>.*?)```", re.DOTALL)
EXAMPLES = {m.group("name"): m.group("code") for m in EXAMPLE.finditer(DOC.read_text(encoding="utf-8"))}


def test_the_three_examples_are_there():
    assert set(EXAMPLES) == {"new-game", "new-opponent", "new-credit"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, tmp_path):
    script = tmp_path / f"{name}.py"
    script.write_text(EXAMPLES[name], encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "each example prints its result"
