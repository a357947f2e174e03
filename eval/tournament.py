"""Round-robin tournaments: every ordered pair of players meets for a number of matches.

The row player's mean return against each column player makes the table; scripted strategies play instantly,
model players are built once and reused for every pairing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coop_rl.players import Player, make_player
from coop_rl.runner import run_matches, summarize


@dataclass
class TournamentResult:
    game: str
    specs: list[str]
    #: mean_return[i][j]: mean return of specs[i] (seat 0) against specs[j] (seat 1)
    mean_return: list[list[float]]
    #: cooperation[i][j]: cooperation rate of specs[i] against specs[j] (matrix games; None otherwise)
    cooperation: list[list[float | None]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "game": self.game,
            "specs": self.specs,
            "mean_return": self.mean_return,
            "cooperation": self.cooperation,
            "average": [sum(row) / len(row) for row in self.mean_return],
        }

    def table(self) -> str:
        width = max(8, *(len(s) for s in self.specs)) + 2
        lines = [f"{self.game} round robin: mean return of the row player against the column player"]
        lines.append("".ljust(width) + "".join(s.rjust(width) for s in self.specs) + "average".rjust(width))
        for spec, row in zip(self.specs, self.mean_return, strict=True):
            cells = "".join(f"{v:.2f}".rjust(width) for v in row)
            lines.append(spec.ljust(width) + cells + f"{sum(row) / len(row):.2f}".rjust(width))
        return "\n".join(lines)


def round_robin(
    game_name: str,
    specs: Sequence[str],
    matches: int = 10,
    seed: int = 0,
    game_params: dict[str, Any] | None = None,
) -> TournamentResult:
    """Play every ordered pair (including self-play) of a two-player game."""
    players: dict[str, Player] = {}
    try:
        for spec in specs:
            players.setdefault(spec, make_player(spec, game_name))
        returns, cooperation = [], []
        for row in specs:
            return_row, coop_row = [], []
            for column in specs:
                results = run_matches(
                    game_name, dict(game_params or {}), [players[row], players[column]], matches=matches, seed=seed
                )
                seat0 = summarize(game_name, [row, column], results)["players"][0]
                return_row.append(seat0["mean_return"])
                coop_row.append(seat0.get("cooperation_rate"))
            returns.append(return_row)
            cooperation.append(coop_row)
    finally:
        for player in players.values():
            player.close()
    return TournamentResult(game_name, list(specs), returns, cooperation)
