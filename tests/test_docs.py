"""The prompts in docs/games.md are the games' own output, verbatim.

Each prompt block in docs/games.md is preceded by a marker
``<!-- prompt: GAME players=A,B[,C] seat=S phase=P round=R [key=value ...] -->``: the prompt that seat S sees for
phase P of round R (counting from 0) when the scripted players A, B, ... play one match of GAME with seed 0 and
the given game parameters. The test regenerates every block and compares; after changing a prompt, run
``python tests/test_docs.py`` to rewrite the blocks in docs/games.md.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GAMES_MD = ROOT / "docs" / "games.md"
MARKER = re.compile(r"<!-- prompt: (?P<args>[^>]*?) -->\n```text\n(?P<body>.*?)```\n", re.DOTALL)


def render(messages) -> str:
    """A prompt as shown in the docs: each message as ``[role]`` then its content."""
    return "".join(f"[{m['role']}]\n{m['content']}\n" for m in messages)


def generate(args: str) -> str:
    """The prompt a marker's arguments describe, from the game itself."""
    from coop_rl.envs import make_game, make_strategy

    game_name, *items = args.split()
    options = dict(item.split("=", 1) for item in items)
    players = options.pop("players").split(",")
    seat, phase, round_index = int(options.pop("seat")), options.pop("phase"), int(options.pop("round"))
    if "players" in make_game(game_name).PARAMS:
        options["players"] = str(len(players))
    game = make_game(game_name, **options)
    strategies = [make_strategy(game_name, name) for name in players]
    for index, strategy in enumerate(strategies):
        strategy.reset(random.Random(f"0:{index}"))
    game.reset(0)
    while not game.done:
        turns = game.pending_turns()
        for turn in turns:
            if (turn.seat, turn.phase, turn.timestep) == (seat, phase, round_index):
                return render(turn.messages)
        game.step({turn.seat: strategies[turn.seat].act(game, turn) for turn in turns})
    raise ValueError(f"no turn matches {args!r}")


def blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group("args"), m.group("body")) for m in MARKER.finditer(text)]


def test_games_doc_has_a_prompt_for_every_game():
    from coop_rl.envs import GAMES

    documented = {args.split()[0] for args, _ in blocks(GAMES_MD.read_text(encoding="utf-8"))}
    assert set(GAMES) <= documented


def test_games_doc_prompts_are_verbatim():
    found = blocks(GAMES_MD.read_text(encoding="utf-8"))
    assert len(found) >= 5
    for args, body in found:
        assert body == generate(args), f"docs/games.md prompt `{args}` differs: run python tests/test_docs.py"


def rewrite() -> None:
    text = GAMES_MD.read_text(encoding="utf-8")
    text = MARKER.sub(lambda m: f"<!-- prompt: {m.group('args')} -->\n```text\n{generate(m.group('args'))}```\n", text)
    GAMES_MD.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    rewrite()
    print(f"rewrote the prompt blocks of {GAMES_MD}")
