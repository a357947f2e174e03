"""Every command in README.md runs as written, or is covered by a named test.

README code blocks are marked by an HTML comment on the line before them:

* ``<!-- runnable -->``: this test runs each command of the block. ``coop-rl`` commands run in-process in a
  sandbox directory (``recipes/`` linked in, ``runs/tiny`` a copy of the session's tiny model), in README order,
  so that later blocks find what earlier ones built; ``make`` commands are dry-run (``make -n``: the target
  exists and runs what it says), their work being tested by the tests of what they call. Speed-ups, appended to
  the command as written: ``train`` runs 2 iterations of 16 matches; ``init-model`` a 2% warm-start corpus.
* ``<!-- covered-by: tests/FILE.py::test_name ... -->``: commands that need a GPU, a network or an API key, or
  that take many minutes on a CPU however small the settings (SmolLM2's warm start: 9 min in CI when run from
  the README); the named tests exercise the same code paths on CPU (they must exist).

The sections that other maintainers keep with their own checks ("Performance", "Reliability") are left out.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OWNED_ELSEWHERE = ("Performance", "Reliability")
BLOCK = re.compile(r"(?:<!-- (?P<marker>[^>]*?) -->\n)?```bash\n(?P<body>.*?)```", re.DOTALL)
TRAIN_SPEEDUP = ["--max_steps", "2", "--save_steps", "2", "--logging_steps", "1", "--matches_per_iteration", "16"]
INIT_SPEEDUP = ["--data-scale", "0.02"]


def _sections(text: str) -> list[tuple[str, str]]:
    """(section title, its text) for each ``## `` section (the part before the first one has title '')."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return [("", parts[0])] + list(zip(parts[1::2], parts[2::2], strict=True))


def readme_blocks() -> list[dict]:
    blocks = []
    for title, text in _sections(README.read_text(encoding="utf-8")):
        if title.strip() in OWNED_ELSEWHERE:
            continue
        for match in BLOCK.finditer(text):
            blocks.append({"section": title, "marker": (match.group("marker") or "").strip(), "body": match["body"]})
    return blocks


def commands(body: str) -> list[list[str]]:
    """The block's commands as argument lists (continuation lines joined, comments dropped)."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


BLOCKS = readme_blocks()
RUNNABLE = [b for b in BLOCKS if b["marker"] == "runnable"]
COVERED = [b for b in BLOCKS if b["marker"].startswith("covered-by:")]


def _needs_a_model(block: dict) -> bool:
    """A block that loads or builds a model, or imports the axelrod library (slow: ~30 s on 2 busy cores);
    ``make`` commands are only dry-run."""
    return any(
        w.startswith(("hf:", "vllm:")) or "axelrod:" in w or w in ("train", "init-model", "demo")
        for c in commands(block["body"])
        if c[0] != "make"
        for w in c
    )


def test_every_readme_command_block_is_marked():
    assert BLOCKS, "README.md has no bash blocks"
    unmarked = [b["body"].splitlines()[0] for b in BLOCKS if b not in RUNNABLE and b not in COVERED]
    assert not unmarked, f"bash blocks with neither <!-- runnable --> nor <!-- covered-by: ... -->: {unmarked}"
    assert len(RUNNABLE) >= 4


@pytest.mark.parametrize("block", COVERED, ids=lambda b: commands(b["body"])[0][-1][:40])
def test_covering_tests_exist(block):
    names = block["marker"].removeprefix("covered-by:").split()
    assert names
    for name in names:
        path, _, function = name.partition("::")
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {re.escape(function)}\(", source, re.MULTILINE), f"{name} does not exist"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    (root / "recipes").symlink_to(ROOT / "recipes")
    (root / "runs").mkdir()
    return root


def run_command(words: list[str], cwd: Path) -> None:
    if words[0] == "make":
        done = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{shlex.join(words)}: {done.stderr}"
        target = next((w for w in words[1:] if "=" not in w), "")
        if target not in ("clean", "lint", "test", "bench"):
            assert "coop-rl" in done.stdout, f"{shlex.join(words)} does not run coop-rl: {done.stdout}"
        return
    assert words[0] in (".venv/bin/coop-rl", "coop-rl"), f"no rule to run {shlex.join(words)}"
    from coop_rl.cli import main

    args = words[1:]
    if args[0] == "train":
        args = args + TRAIN_SPEEDUP
    elif args[0] == "init-model":
        args = args + INIT_SPEEDUP
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        status = main(args)
    finally:
        os.chdir(previous)
    assert status == 0, f"{shlex.join(words)} exited with {status}"


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=pytest.mark.slow) if _needs_a_model(b) else b for b in RUNNABLE],
    ids=lambda b: f"{b['section'][:20]}:{commands(b['body'])[0][-1][:30]}",
)
def test_runnable_block(block, sandbox, capsys, request):
    if _needs_a_model(block) and not (sandbox / "runs" / "tiny").exists():
        shutil.copytree(request.getfixturevalue("tiny_model_dir"), sandbox / "runs" / "tiny")
    for words in commands(block["body"]):
        run_command(words, sandbox)
    capsys.readouterr()
