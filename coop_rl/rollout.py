"""Rollouts as data: play matches and record every model turn as a row of a ``datasets.Dataset``.

One row per turn: match id, seed group, seat, timestep, phase, the prompt and completion (token ids and text),
the sampler's per-token logprobs, the seat's reward at that timestep, and whether the game could parse the
answer. The trainer computes credit from these rows; ``save_to_disk``/``load_from_disk`` keep runs inspectable
and reusable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coop_rl.envs.base import MatchResult
from coop_rl.players.base import Player
from coop_rl.runner import TurnRecord, run_matches

logger = logging.getLogger("coop_rl.rollout")

COLUMNS = (
    "match_id",
    "seed_group",
    "seat",
    "timestep",
    "phase",
    "prompt_ids",
    "completion_ids",
    "prompt_text",
    "completion_text",
    "sampler_logprobs",
    "reward",
    "invalid",
)


@dataclass
class Rollout:
    """What one round of play leaves: per-match results and the per-turn rows."""

    results: list[MatchResult]
    rows: list[dict[str, Any]]
    seconds: float

    def to_dataset(self):
        from datasets import Dataset

        return Dataset.from_dict({column: [row[column] for row in self.rows] for column in COLUMNS})

    def summary(self) -> dict[str, float]:
        """Throughput and validity of this rollout (for the logs)."""
        tokens = sum(len(row["completion_ids"]) for row in self.rows)
        invalid = sum(row["invalid"] for row in self.rows)
        return {
            "rollout/matches": len(self.results),
            "rollout/games_per_s": len(self.results) / max(self.seconds, 1e-9),
            "rollout/tokens_per_s": tokens / max(self.seconds, 1e-9),
            "rollout/invalid_rate": invalid / max(1, len(self.rows)),
            "rollout/seconds": self.seconds,
        }


def collect_rollout(
    game_name: str,
    game_params: dict[str, Any],
    seat_players: Sequence[Player],
    matches: int,
    seed: int = 0,
    group_size: int = 1,
    record_seats: Sequence[int] | None = None,
    progress: bool = False,
) -> Rollout:
    """Play ``matches`` matches and record the turns of ``record_seats`` (default: every model seat)."""
    records: list[TurnRecord] = []
    started = time.perf_counter()
    results = run_matches(
        game_name,
        game_params,
        seat_players,
        matches=matches,
        seed=seed,
        group_size=group_size,
        on_turns=records.extend,
        progress=progress,
    )
    seconds = time.perf_counter() - started
    wanted = set(record_seats) if record_seats is not None else None
    rows = []
    for record in records:
        is_model_turn = bool(record.action.completion_ids)
        if (wanted is not None and record.seat not in wanted) or (wanted is None and not is_model_turn):
            continue
        result = results[record.match_id]
        rewards = result.rewards[record.seat]
        rows.append(
            {
                "match_id": record.match_id,
                "seed_group": record.seed_group,
                "seat": record.seat,
                "timestep": record.timestep,
                "phase": record.phase,
                "prompt_ids": list(record.action.prompt_ids),
                "completion_ids": list(record.action.completion_ids),
                "prompt_text": record.messages[-1]["content"] if record.messages else "",
                "completion_text": record.action.text,
                "sampler_logprobs": list(record.action.logprobs),
                "reward": float(rewards[record.timestep]) if record.timestep < len(rewards) else 0.0,
                "invalid": not record.valid,
            }
        )
    rollout = Rollout(results=results, rows=rows, seconds=seconds)
    logger.info(
        "rollout: %d matches in %.1fs, %.1f games/s, %.0f tokens/s, invalid rate %.3f",
        len(results),
        seconds,
        *(rollout.summary()[k] for k in ("rollout/games_per_s", "rollout/tokens_per_s", "rollout/invalid_rate")),
    )
    return rollout
