"""The text games (pure Python, no torch): the registry by command-line name, make_game, and each game's description.

:func:`make_game` builds a game by name; :func:`describe_game` and :func:`games_text` are what ``coop-rl games``
says of each (seats, strategies, ``--set`` parameters).

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


def describe_game(name: str) -> dict[str, Any]:
    """``coop-rl games --json``'s entry for a game: its seat range, scripted strategies and ``--set`` parameters
    (default, help, and the choices where the parameter has them)."""
    cls = game_class(name)
    return {
        "game": name,
        "players": [cls.min_players, cls.max_players],
        "strategies": strategy_names(name),
        "params": {
            key: {
                "default": spec.default,
                "help": spec.help,
                **({"choices": list(spec.choices)} if spec.choices else {}),
            }
            for key, spec in cls.PARAMS.items()
        },
    }


def games_text(described: list[dict[str, Any]]) -> str:
    """``coop-rl games``' plain text of :func:`describe_game` entries: a line per game, a line per parameter."""
    lines = []
    for game in described:
        low, high = game["players"]
        seats = str(low) if low == high else f"{low}-{high}"
        lines.append(f"{game['game']}  ({seats} players)  strategies: {', '.join(game['strategies'])}")
        for key, spec in game["params"].items():
            setting = f"{key}={spec['default']}"
            lines.append(f"  --set {setting:<24} {spec['help']}")
    return "\n".join(lines)


__all__ = [
    "GAMES",
    "GameConfigError",
    "TextGame",
    "Turn",
    "UnknownGameError",
    "UnknownStrategyError",
    "describe_game",
    "game_class",
    "games_text",
    "make_game",
    "make_strategy",
    "matrix_game_names",
    "strategy_names",
]
