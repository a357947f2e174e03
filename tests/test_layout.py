"""The house stays a house: no module of coop_rl/, envs/, eval/ or benchmarks/ over 450 lines, no function over 80,
every module opens with a docstring whose first line says what it holds, and the pure layers import no other layer
(tests/test_cli.py checks for import circles)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("coop_rl", "envs", "eval", "benchmarks")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_walk_finds_the_package():
    names = {_name(path) for path in _modules()}
    assert {"coop_rl/cli.py", "coop_rl/runner.py", "envs/base.py", "eval/evaluate.py"} <= names


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_module_and_function_sizes(path):
    text = path.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{_name(path)} has {lines} lines (at most {MAX_MODULE_LINES})"
    long = {
        f"{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert not long, f"{_name(path)}: functions over {MAX_FUNCTION_LINES} lines: {sorted(long)}"


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_every_module_says_what_it_holds(path):
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring and docstring.splitlines()[0].strip(), f"{_name(path)} does not open with a docstring line"


# What each pure layer may pull in with it: the credit, the loss and its batching are tensor math over rows (no game,
# no player, no evaluation); the games know nothing of models.
PURE_LAYERS = {
    "coop_rl.credit": ("coop_rl.envs", "coop_rl.players", "coop_rl.eval", "transformers"),
    "coop_rl.loss": ("coop_rl.envs", "coop_rl.players", "coop_rl.eval", "transformers"),
    "coop_rl.loss_batch": ("coop_rl.envs", "coop_rl.players", "coop_rl.eval", "transformers"),
    "coop_rl.envs": ("torch", "transformers", "coop_rl.players", "coop_rl.eval", "coop_rl.aa_trainer"),
}


@pytest.mark.parametrize("module", sorted(PURE_LAYERS))
def test_a_pure_layer_imports_no_other_layer(module):
    forbidden = PURE_LAYERS[module]
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); forbidden = {forbidden!r};"
        "print(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in forbidden)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]", f"{module} imports {proc.stdout.strip()}"
