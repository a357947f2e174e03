"""Small helpers shared by the tests: drive a game with scripted strategies, without the runner."""

from __future__ import annotations

import random

from coop_rl.envs import make_game, make_strategy
from coop_rl.envs.base import TextGame


def play_scripted(game_name: str, names: list[str], seed: int = 0, **params) -> TextGame:
    """Play one match of ``game_name`` between scripted strategies and return the finished game."""
    game = make_game(game_name, **params)
    strategies = [make_strategy(game_name, name) for name in names]
    for seat, strategy in enumerate(strategies):
        strategy.reset(random.Random(f"{seed}:{seat}"))
    game.reset(seed)
    while not game.done:
        turns = game.pending_turns()
        game.step({turn.seat: strategies[turn.seat].act(game, turn) for turn in turns})
    return game
