"""Reading evaluation results back: the row order every table and plot shows, the exploiters ranked, the labels.

Pure functions on the objects :func:`coop_rl.eval.evaluate.evaluate` (results.json) and
:func:`coop_rl.eval.exploit.exploit` (exploit.json) return; this module imports neither, so that the reports
(:mod:`coop_rl.eval.plots`, :mod:`coop_rl.eval.markdown`) and the searches can share it without an import circle.
"""

from __future__ import annotations

from typing import Any

from coop_rl.envs import GAMES
from coop_rl.envs.base import TextGame


def rows_with_self_play(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The opponent rows of a results.json object, then its self-play row (the order of every table and plot)."""
    return [*results["opponents"], results["self_play"]]


def row_label(row: dict[str, Any]) -> str:
    """A row's name in plots and terminal tables: the opponent's spec, or "self-play"."""
    return "self-play" if row.get("self_play") else row["opponent"]


def ranked_candidates(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidates of an exploit.json object, best first: the highest exploiter return, then the lowest return
    left to the policy, then the search order (the first is the best exploiter)."""
    candidates = result["candidates"]
    order = sorted(
        range(len(candidates)),
        key=lambda i: (-candidates[i]["exploiter_mean_return"], candidates[i]["policy_mean_return"], i),
    )
    return [candidates[i] for i in order]


def cooperation_label(game: str) -> str:
    """How reports name a game's cooperation metric (its ``cooperation_label`` trait; the default for a game that
    is not registered in this process, e.g. a results.json written elsewhere)."""
    return GAMES[game].cooperation_label if game in GAMES else TextGame.cooperation_label


__all__ = ["cooperation_label", "ranked_candidates", "row_label", "rows_with_self_play"]
