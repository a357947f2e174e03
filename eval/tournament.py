"""Round-robin tournaments: every ordered pair of players meets for a number of matches.

The row player's mean return against each column player makes the table; scripted strategies play instantly,
model players are built once and reused for every pairing, their sampling restarted from ``seed`` before each, so
that a cell is what ``coop-rl play --players ROW,COLUMN --seed SEED`` plays. In a symmetric game (ipd) the row
player sits in seat 0;
in one whose seats pay differently (bos) a cell is the mean of the row player's two seats, from the ordered pairs
(row, column) and (column, row), so that no strategy is ranked by one seat alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coop_rl.players import Player, SamplingConfig, make_player
from coop_rl.runner import reseed_players, run_matches, summarize


@dataclass
class TournamentResult:
    game: str
    specs: list[str]
    #: mean_return[i][j]: mean return of specs[i] against specs[j]: in seat 0 when ``both_seats`` is False (a
    #: symmetric game), else the mean of its returns in seat 0 and in seat 1
    mean_return: list[list[float]]
    #: cooperation[i][j]: cooperation rate of specs[i] against specs[j], seats as above (matrix games; else None)
    cooperation: list[list[float | None]]
    #: whether each cell averages both seats (a game whose seats are not interchangeable)
    both_seats: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "game": self.game,
            "specs": self.specs,
            "mean_return": self.mean_return,
            "cooperation": self.cooperation,
            "average": [sum(row) / len(row) for row in self.mean_return],
            "both_seats": self.both_seats,
        }

    def table(self) -> str:
        width = max(8, *(len(s) for s in self.specs)) + 2
        seats = "mean of both seats" if self.both_seats else "row player in seat 0"
        lines = [f"{self.game} round robin: mean return of the row player against the column player ({seats})"]
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
    sampling: SamplingConfig | None = None,
    constrain: bool | None = None,
) -> TournamentResult:
    """Play every ordered pair (including self-play) of a two-player game. A spec named twice plays once (its
    first place kept), so that no player's average counts one opponent twice.

    ``sampling``, ``seed`` and ``constrain`` apply to model players as in :func:`~coop_rl.runner.play`; each pairing
    starts their sampling from ``seed``, so no cell depends on the pairings played before it.
    """
    from coop_rl.envs import game_class

    specs = list(dict.fromkeys(specs))
    players: dict[str, Player] = {}
    seat_stats: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (seat 0, seat 1) -> summarize's two players
    try:
        for spec in specs:
            if spec not in players:
                players[spec] = make_player(spec, game_name, sampling=sampling, seed=seed, constrain=constrain)
        for row in specs:
            for column in specs:
                if (row, column) not in seat_stats:
                    reseed_players([players[row], players[column]], seed)
                    results = run_matches(
                        game_name, dict(game_params or {}), [players[row], players[column]], matches=matches, seed=seed
                    )
                    seat_stats[row, column] = summarize(game_name, [row, column], results)["players"]
    finally:
        for player in players.values():
            player.close()
    both_seats = not game_class(game_name).symmetric
    returns = [[_cell(seat_stats, row, column, "mean_return", both_seats) for column in specs] for row in specs]
    cooperation = [
        [_cell(seat_stats, row, column, "cooperation_rate", both_seats) for column in specs] for row in specs
    ]
    return TournamentResult(game_name, list(specs), returns, cooperation, both_seats)


def _cell(seat_stats: dict[tuple[str, str], list[dict[str, Any]]], row: str, column: str, key: str,
          both_seats: bool) -> Any:  # fmt: skip
    """``row``'s ``key`` against ``column``: in seat 0, or the mean of seat 0 (row, column) and seat 1 (column, row)."""
    first = seat_stats[row, column][0].get(key)
    if not both_seats or first is None:
        return first
    return (first + seat_stats[column, row][1][key]) / 2
