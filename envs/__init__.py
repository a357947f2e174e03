"""The text games (pure Python, no torch): a registry by command-line name, and :func:`make_game`.

Shipped as ``coop_rl.envs`` (the build maps this folder into the coop_rl namespace).
"""

from __future__ import annotations

from typing import Any

from coop_rl.envs.base import GameConfigError, TextGame, Turn
from coop_rl.envs.matrix import BattleOfTheSexes, IteratedMatrixGame, PrisonersDilemma
from coop_rl.envs.spgg import SequentialPublicGoods
from coop_rl.envs.split import SplitNoComm
from coop_rl.envs.strategies import UnknownStrategyError, make_strategy, strategy_names
from coop_rl.envs.tas import TrustAndSplit

GAMES: dict[str, type[TextGame]] = {
    "ipd": PrisonersDilemma,
    "bos": BattleOfTheSexes,
    "tas": TrustAndSplit,
    "split": SplitNoComm,
    "spgg": SequentialPublicGoods,
}


class UnknownGameError(ValueError):
    """A game name that is not in :data:`GAMES` (a user error: exit status 2)."""


def game_class(name: str) -> type[TextGame]:
    try:
        return GAMES[name]
    except KeyError:
        raise UnknownGameError(f"unknown game {name!r}; known: {', '.join(GAMES)}") from None


def matrix_game_names() -> list[str]:
    """The registered games that are iterated 2x2 matrix games (what axelrod strategies and the memory-one
    exploit search play), in registry order."""
    return [name for name, cls in GAMES.items() if issubclass(cls, IteratedMatrixGame)]


def make_game(name: str, **params: Any) -> TextGame:
    """Build a game by command-line name with ``--set``-style parameters (strings are converted and checked)."""
    return game_class(name)(**params)


__all__ = [
    "GAMES",
    "GameConfigError",
    "TextGame",
    "Turn",
    "UnknownGameError",
    "UnknownStrategyError",
    "game_class",
    "make_game",
    "make_strategy",
    "matrix_game_names",
    "strategy_names",
]
