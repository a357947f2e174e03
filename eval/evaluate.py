"""Evaluation of one policy against frozen opponents: ``coop-rl eval``.

For each opponent the policy plays ``matches`` matches in seat 0 with the opponent in every other seat (one
seat in the two-player games, ``players - 1`` seats in spgg). In the two-player games whose seats are
interchangeable (the game's ``symmetric`` trait: ipd, tas, split) it also plays the same matches with the seats
swapped (policy in seat 1), reported separately under ``"swapped"``; every headline number is the seat-0 one
(``"policy_seat": 0``). BoS is not symmetric (the seats have different payoffs) and spgg is sequential, so they
are played in seat 0 only. The policy also plays
itself (self-play, every seat served by the policy) as its own row. Match ``i`` of every pairing uses the same
game seed (:func:`coop_rl.runner.match_seed`), so opponents are compared on the same hands and noise.

results.json (what :func:`evaluate` returns; :func:`coop_rl.eval.report.write_eval` adds ``"plots"``)::

    {
      "policy": str, "game": str, "game_params": {every game parameter, resolved},
      "matches": int, "seed": int, "seats": int,
      "symmetric": bool,                         # the policy also played seat 1: a symmetric game, not --no-swap
      "ci": {"method": "percentile bootstrap", "level": 0.95, "resamples": int},
      "opponents": [                             # one row per opponent, in the order given (suites expanded)
        {
          "opponent": str,                       # the opponent's player spec
          "policy_seat": 0,                      # the seat the policy sat in for this row's numbers
          "policy_mean_return": float,           # mean over matches of the policy's undiscounted return
          "policy_ci95": [lo, hi],               # 95% bootstrap CI of that mean (width 0: every match equal)
          "opponent_mean_return": float,         # the opponent's (mean over its seats in spgg)
          "policy_cooperation_rate": float|null, # the game's cooperation_metric pooled over all rounds of all
                                                 # matches: ipd/bos: fraction of rounds choosing C (J in bos);
          "opponent_cooperation_rate": float|null,  # spgg: mean contribution level q per round;
                                                    # tas/split (no such metric): null
          "welfare": float,                      # mean over matches of the sum of all seats' returns
          "policy_invalid_rate": float,          # unparseable answers / answers, over all matches
          "opponent_invalid_rate": float,
          "policy_returns": [float, ...],        # per match
          "opponent_returns": [float, ...],      # per match
          "per_match": [{"seed", "returns": [per seat], "invalid_rate": [per seat], "metrics": {game metrics}}],
          "metrics": {game metrics averaged over matches (per-seat lists stay lists)},
          "swapped": {the same fields with "policy_seat": 1}   # symmetric games only
        }, ...
      ],
      "self_play": {the same fields, "opponent": the policy spec, "self_play": true},
      "summary": {
        "policy_seat": 0,
        "mean_return": float,                    # the policy's mean return averaged over the opponents (not self-play)
        "mean_opponent_return": float, "mean_welfare": float,
        "mean_cooperation_rate": float|null, "mean_opponent_cooperation_rate": float|null,
        "policy_invalid_rate": float,            # the policy's invalid rate averaged over the opponents
        "self_play_policy_return": float,         # the policy's return in seat 0 of its self-play
        "best_opponent": {"opponent", "policy_mean_return"},   # where the policy scores most
        "worst_opponent": {"opponent", "policy_mean_return"},  # where it scores least
        "mean_return_swapped": float             # symmetric games only: the same average in seat 1
      }
    }
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from coop_rl.envs import game_class
from coop_rl.envs.base import MatchResult
from coop_rl.eval.suites import resolve_opponents, suite_names
from coop_rl.players import Player, PlayerSpecError, SamplingConfig, make_player
from coop_rl.runner import aggregate_metrics, mean, pooled_over_rounds, progress_bar, reseed_players, run_matches

BOOTSTRAP_RESAMPLES = 2000
CI_LEVEL = 0.95


def bootstrap_ci(
    values: Sequence[float], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES, level: float = CI_LEVEL
) -> list[float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (seeded: the same input gives the same
    interval). When every value is the same (a deterministic pairing) the interval is exactly [v, v]."""
    values = [float(v) for v in values]
    if not values:
        return [0.0, 0.0]
    if all(v == values[0] for v in values):
        return [values[0], values[0]]
    import numpy as np

    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed % 2**64)  # numpy refuses a negative seed (--seed -1); the rest are unchanged
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return [float(low), float(high)]


def _invalid_rate(results: Sequence[MatchResult], seats: Sequence[int]) -> float:
    invalid = sum(r.invalid_counts[s] for r in results for s in seats)
    acted = sum(r.action_counts[s] for r in results for s in seats)
    return invalid / acted if acted else 0.0


def seat_row(game: str, opponent: str, results: Sequence[MatchResult], policy_seat: int, ci_seed: int) -> dict:
    """The numbers of one pairing, seen from the policy's seat (the other seats are the opponent's)."""
    seats = len(results[0].returns)
    others = [s for s in range(seats) if s != policy_seat]
    metrics = aggregate_metrics(results)
    cooperation = game_class(game).cooperation_metric
    policy_returns = [float(r.returns[policy_seat]) for r in results]
    opponent_returns = [mean([r.returns[s] for s in others]) for r in results]
    opponent_coop = [pooled_over_rounds(results, cooperation, s) for s in others]
    return {
        "opponent": opponent,
        "policy_seat": policy_seat,
        "policy_mean_return": mean(policy_returns),
        "policy_ci95": bootstrap_ci(policy_returns, seed=ci_seed),
        "opponent_mean_return": mean(opponent_returns),
        "policy_cooperation_rate": pooled_over_rounds(results, cooperation, policy_seat),
        "opponent_cooperation_rate": None if None in opponent_coop else mean(opponent_coop),
        "welfare": mean([math.fsum(r.returns) for r in results]),
        "policy_invalid_rate": _invalid_rate(results, [policy_seat]),
        "opponent_invalid_rate": _invalid_rate(results, others),
        "policy_returns": policy_returns,
        "opponent_returns": opponent_returns,
        "per_match": [
            {
                "seed": r.seed,
                "returns": [float(x) for x in r.returns],
                "invalid_rate": [i / n if n else 0.0 for i, n in zip(r.invalid_counts, r.action_counts, strict=True)],
                "metrics": r.metrics,
            }
            for r in results
        ],
        "metrics": metrics,
    }


def build_player(spec: str, role: str, game: str, sampling: SamplingConfig | None, seed: int) -> Player:
    """The player ``spec`` names, as the evaluation's ``role`` ("policy" or "opponent"): a bad spec is a
    PlayerSpecError naming the role (and, for an opponent, the game's suites)."""
    try:
        return make_player(spec, game, sampling=sampling, seed=seed)
    except PlayerSpecError as error:
        hint = ""
        if role == "opponent" and suite_names(game):
            hint = f" (suites for {game}: {', '.join(suite_names(game))})"
        raise PlayerSpecError(f"bad {role} {spec!r}: {error}{hint}") from None


def evaluate(
    policy_spec: str,
    game: str,
    opponents: str | Sequence[str],
    matches: int = 20,
    seed: int = 0,
    game_params: dict[str, Any] | None = None,
    sampling: SamplingConfig | None = None,
    swap: bool = True,
    out_dir: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Play the policy against every opponent (suite names expand) and itself; return the results.json object.
    ``progress``: a bar on stderr, one step per opponent (with a model policy an evaluation takes minutes).

    ``swap``: also play seat 1 in symmetric games. ``out_dir``: also write results.json, report.md and the plots
    there (:func:`coop_rl.eval.report.write_eval`). User errors raise ``SuiteError`` (opponent list),
    ``GameConfigError``/``UnknownGameError`` (game) or ``PlayerSpecError`` (a spec, a missing checkpoint),
    before any match is played.
    """
    if matches < 1:
        raise ValueError("matches must be >= 1")
    cls = game_class(game)
    params = dict(game_params or {})
    instance = cls(**params)  # validates the parameters
    seats = instance.num_players
    specs = resolve_opponents(opponents, game)
    symmetric = swap and cls.symmetric and seats == 2

    players: dict[str, Player] = {}
    bar = progress_bar(len(specs) + 1, f"eval {policy_spec}", "opponent", progress)
    try:
        # The policy first: a missing checkpoint is reported before anything else is loaded.
        players[policy_spec] = build_player(policy_spec, "policy", game, sampling, seed)
        for spec in specs:  # an opponent with the policy's spec shares its player (one engine per model)
            if spec not in players:
                players[spec] = build_player(spec, "opponent", game, sampling, seed)
        policy = players[policy_spec]

        def play(seat_players: list[Player]) -> list[MatchResult]:
            reseed_players(seat_players, seed)  # a row is what this pairing plays, whatever came before it
            return run_matches(game, params, seat_players, matches=matches, seed=seed)

        rows = []
        for index, spec in enumerate(specs):
            opponent = players[spec]
            row = seat_row(game, spec, play([policy] + [opponent] * (seats - 1)), 0, ci_seed=seed * 7919 + index)
            if symmetric:
                swapped = seat_row(game, spec, play([opponent, policy]), 1, ci_seed=seed * 7919 + index)
                row["swapped"] = swapped
            rows.append(row)
            bar.update(1)
        self_play = seat_row(game, policy_spec, play([policy] * seats), 0, ci_seed=seed * 7919 + len(specs))
        self_play["self_play"] = True
        bar.update(1)
    finally:
        bar.close()
        for player in players.values():
            player.close()

    results: dict[str, Any] = {
        "policy": policy_spec,
        "game": game,
        "game_params": dict(instance.params),
        "matches": matches,
        "seed": seed,
        "seats": seats,
        "symmetric": symmetric,
        "ci": {"method": "percentile bootstrap", "level": CI_LEVEL, "resamples": BOOTSTRAP_RESAMPLES},
        "opponents": rows,
        "self_play": self_play,
        "summary": summarize_rows(rows, self_play),
    }
    if out_dir is not None:
        from coop_rl.eval.report import write_eval

        write_eval(results, out_dir)
    return results


def summarize_rows(rows: Sequence[dict[str, Any]], self_play: dict[str, Any]) -> dict[str, Any]:
    """The ``summary`` block: averages over the opponents (self-play reported apart)."""

    def average(key: str, block: Sequence[dict[str, Any]]) -> float | None:
        values = [row[key] for row in block]
        return None if not values or None in values else mean(values)

    best = max(rows, key=lambda row: row["policy_mean_return"])
    worst = min(rows, key=lambda row: row["policy_mean_return"])
    invalid = [row["policy_invalid_rate"] for row in rows]
    summary: dict[str, Any] = {
        "policy_seat": 0,
        "mean_return": average("policy_mean_return", rows),
        "mean_opponent_return": average("opponent_mean_return", rows),
        "mean_welfare": average("welfare", rows),
        "mean_cooperation_rate": average("policy_cooperation_rate", rows),
        "mean_opponent_cooperation_rate": average("opponent_cooperation_rate", rows),
        "policy_invalid_rate": mean(invalid),
        "self_play_policy_return": self_play["policy_mean_return"],
        "best_opponent": {"opponent": best["opponent"], "policy_mean_return": best["policy_mean_return"]},
        "worst_opponent": {"opponent": worst["opponent"], "policy_mean_return": worst["policy_mean_return"]},
    }
    swapped = [row["swapped"] for row in rows if "swapped" in row]
    if swapped:
        summary["mean_return_swapped"] = average("policy_mean_return", swapped)
    return summary


__all__ = ["bootstrap_ci", "build_player", "evaluate", "seat_row", "summarize_rows"]
