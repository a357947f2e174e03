"""Scripted players: the games' own strategies (``tft``, ``greedy``, ...) and ``axelrod:<Name>``."""

from __future__ import annotations

import random

from coop_rl.envs import matrix_game_names
from coop_rl.envs.strategies import ScriptedStrategy, make_strategy
from coop_rl.players.base import Action, Player, PlayerSpecError, TurnRequest


class ScriptedPlayer(Player):
    """One strategy instance per (match, seat): strategies may keep memory, and each gets its own seeded RNG."""

    def __init__(self, spec: str, game_name: str) -> None:
        self.spec = spec
        self.game_name = game_name
        self._make()  # fail early on an unknown name
        self._strategies: dict[tuple[int, int], ScriptedStrategy] = {}

    def _make(self) -> ScriptedStrategy:
        if self.spec.startswith("axelrod:"):
            matrix_games = matrix_game_names()
            if self.game_name not in matrix_games:
                names = ", ".join(matrix_games)
                raise PlayerSpecError(f"axelrod: strategies play matrix games ({names}), not {self.game_name!r}")
            from coop_rl.envs.matrix import AxelrodStrategy

            try:
                return AxelrodStrategy(self.spec.split(":", 1)[1])
            except (ImportError, ValueError) as error:
                raise PlayerSpecError(str(error)) from None
        try:
            return make_strategy(self.game_name, self.spec)
        except ValueError as error:
            raise PlayerSpecError(str(error)) from None

    def start_match(self, match_id: int, seat: int, seed: int) -> None:
        strategy = self._make()
        # A per-(seed, seat) generator: reproducible, and independent of the other seat's draws.
        strategy.reset(random.Random(f"{seed}:{seat}:{self.spec}"))
        self._strategies[(match_id, seat)] = strategy

    def act(self, requests: list[TurnRequest]) -> list[Action]:
        return [Action(text=self._strategies[(r.match_id, r.turn.seat)].act(r.game, r.turn)) for r in requests]
