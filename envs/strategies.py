"""Scripted strategies: the co-players that need no model.

A strategy reads the structured state of its seat (``game.view(seat)``) and answers with *text* in the game's
own answer format, so its moves go through exactly the parser a model's text goes through.
Each game module registers its strategies with :func:`register`; ``make_strategy(game_name, name)`` builds one.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable

from coop_rl.envs.base import TextGame, Turn


class UnknownStrategyError(ValueError):
    """A strategy name that no game module registered for this game (a user error: exit status 2)."""


class ScriptedStrategy(ABC):
    """A stateless-by-default scripted player; per-match randomness comes from ``self.rng`` (seeded per match)."""

    name: str = ""

    def __init__(self) -> None:
        self.rng = random.Random(0)

    def reset(self, rng: random.Random) -> None:
        """Called at the start of each match with a generator derived from the match seed and the seat."""
        self.rng = rng

    @abstractmethod
    def act(self, game: TextGame, turn: Turn) -> str:
        """The text this strategy sends for ``turn``."""


_REGISTRY: dict[str, dict[str, Callable[[], ScriptedStrategy]]] = {}


def register(games: tuple[str, ...], name: str) -> Callable:
    """Class decorator: make ``name`` a strategy of each game in ``games``."""

    def decorator(cls: type[ScriptedStrategy]) -> type[ScriptedStrategy]:
        cls.name = name
        for game in games:
            _REGISTRY.setdefault(game, {})[name] = cls
        return cls

    return decorator


def strategy_names(game: str) -> list[str]:
    return sorted(_REGISTRY.get(game, {}))


def make_strategy(game: str, name: str) -> ScriptedStrategy:
    try:
        return _REGISTRY[game][name]()
    except KeyError:
        known = ", ".join(strategy_names(game)) or "none"
        raise UnknownStrategyError(f"unknown strategy {name!r} for game {game!r}; known: {known}") from None
