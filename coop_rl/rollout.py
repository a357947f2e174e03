"""The trainer's rollout: an iteration's matches played, their rewards turned into credit, and the learner's turns
(one :class:`LearnerTurn` each) turned into loss rows and trajectory files.

The steps, each a function the trainer calls in turn:

1. :func:`play_groups`: every seed group of this process played through :func:`coop_rl.runner.run_matches`, one
   batched run per (learner seats, co-player) setting -> :class:`Played` (turns, results, learner seats, groups);
2. :func:`assign_credit`: the rewards as [B, T] tensors (B = learner (match, seat) pairs, minus any format
   penalty), :func:`coop_rl.credit.compute_credit` on them, and each turn's credit by
   :func:`coop_rl.credit.broadcast_to_tokens`;
3. :func:`learner_turns`: one :class:`LearnerTurn` per learner turn, the one record the loss rows
   (:meth:`LearnerTurn.loss_turn`, merged by :func:`coop_rl.loss.merge_identical_turns`) and the trajectory lines
   (:meth:`LearnerTurn.trajectory_line`, written by :func:`write_trajectory_file`) are made from.

:func:`collect_rollout` plays matches outside training and keeps the same turns as a ``datasets.Dataset``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from coop_rl.atomic_files import write_text_atomic
from coop_rl.credit import broadcast_to_tokens, compute_credit
from coop_rl.envs.base import MatchResult
from coop_rl.players.base import Player
from coop_rl.runner import TurnRecord, run_matches

logger = logging.getLogger("coop_rl.rollout")

#: the keys of a trajectory line, in file order (tests/test_crash_resume.py and the README name them)
TRAJECTORY_KEYS = ("iteration", "match_id", "seat", "timestep", "phase", "text", "valid", "credit", "reward")
#: the columns of :meth:`Rollout.to_dataset`
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
class LearnerTurn:
    """One turn a learner played: where, what it said (text and tokens), and what it earned."""

    match_id: int  # in training: seed group * group_size + the match's place in its group (global over processes)
    seed_group: int
    seat: int
    timestep: int
    phase: str
    text: str
    valid: bool  # whether the game could parse the answer
    reward: float | None  # the seat's reward at this timestep (None if the match has none there)
    credit: float = 0.0
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    sampler_logprobs: list[float] = field(default_factory=list)
    allowed: list[list[int]] | None = None  # constrained answers: the tokens allowed at each completion position
    adapter: str | None = None  # seat_adapters: the LoRA adapter that played it
    prompt_text: str = ""

    @classmethod
    def from_record(cls, record: TurnRecord, result: MatchResult, match_id: int, seed_group: int, **extra: Any):
        rewards = result.rewards[record.seat]
        action = record.action
        return cls(
            match_id=match_id,
            seed_group=seed_group,
            seat=record.seat,
            timestep=record.timestep,
            phase=record.phase,
            text=action.text,
            valid=bool(record.valid),
            reward=float(rewards[record.timestep]) if record.timestep < len(rewards) else None,
            prompt_ids=list(action.prompt_ids),
            completion_ids=list(action.completion_ids),
            sampler_logprobs=list(action.logprobs),
            allowed=action.allowed,
            prompt_text=record.messages[-1]["content"] if record.messages else "",
            **extra,
        )

    def trajectory_line(self, iteration: int) -> dict[str, Any]:
        """The turn's line of ``trajectories/iteration-<step>.jsonl`` (:data:`TRAJECTORY_KEYS`)."""
        return {"iteration": iteration, **{key: getattr(self, key) for key in TRAJECTORY_KEYS[1:]}}

    def loss_turn(self) -> tuple:
        """The turn as :func:`coop_rl.loss.merge_identical_turns` takes it."""
        return (self.prompt_ids, self.completion_ids, self.sampler_logprobs, self.credit, self.allowed, self.adapter)

    def dataset_row(self) -> dict[str, Any]:
        """The turn as a row of :meth:`Rollout.to_dataset` (:data:`COLUMNS`)."""
        return {
            **{key: getattr(self, key) for key in ("match_id", "seed_group", "seat", "timestep", "phase")},
            "prompt_ids": self.prompt_ids,
            "completion_ids": self.completion_ids,
            "prompt_text": self.prompt_text,
            "completion_text": self.text,
            "sampler_logprobs": self.sampler_logprobs,
            "reward": self.reward if self.reward is not None else 0.0,
            "invalid": not self.valid,
        }


class Played(NamedTuple):
    """One process's share of an iteration: the learner's turns (``match_id`` indexes ``results``), each match's
    result, its learner seats and its seed group."""

    records: list[TurnRecord]
    results: list[MatchResult]
    learner_seats: list[tuple[int, ...]]
    groups: list[int]


# ----- 1. play ------------------------------------------------------------------------------------------------
def play_groups(
    game: str,
    game_params: dict[str, Any],
    plan: Sequence[tuple[tuple[int, ...], str]],
    my_groups: Sequence[int],
    group_size: int,
    iteration_seed: int,
    seat_players: Callable[[tuple[tuple[int, ...], str]], list[Player]],
) -> Played:
    """Play ``group_size`` matches of each seed group in ``my_groups`` (group g's setting is ``plan[g]``: learner
    seats and co-player key; ``seat_players`` gives the players of a setting). Match ``k`` of the ``i``-th group is
    local match ``i * group_size + k``; every match of group g has the game seed ``iteration_seed + g``. Only
    learner seats' turns are kept."""
    records: list[TurnRecord] = []
    results: list[Any] = [None] * (len(my_groups) * group_size)
    learner_seats: list[tuple[int, ...]] = [()] * len(results)
    groups: list[int] = [0] * len(results)
    # One batched run per setting: matches of different co-players cannot share a call.
    by_setting: dict[tuple, list[int]] = defaultdict(list)
    for local, group in enumerate(my_groups):
        by_setting[plan[group]].append(local)
    for setting, locals_ in by_setting.items():
        seats = setting[0]
        players = seat_players(setting)
        match_ids = [local * group_size + k for local in locals_ for k in range(group_size)]
        seeds = [iteration_seed + my_groups[m // group_size] for m in match_ids]
        turns: list[TurnRecord] = []
        out = run_matches(game, game_params, players, matches=len(match_ids), match_seeds=seeds, on_turns=turns.extend)
        for local_match, match_id in enumerate(match_ids):
            results[match_id] = out[local_match]
            learner_seats[match_id] = seats
            groups[match_id] = my_groups[match_id // group_size]
        for turn in turns:
            turn.match_id = match_ids[turn.match_id]
            if turn.seat in seats:
                records.append(turn)
    return Played(records, results, learner_seats, groups)


# ----- 2. credit ----------------------------------------------------------------------------------------------
def format_penalties(
    records: Sequence[TurnRecord], penalty: float, stop_ids: Sequence[int], max_new_tokens: int
) -> dict[tuple[int, int, int], float]:
    """Penalty per (match, seat, timestep): ``penalty`` for each learner turn that the game could not parse or that
    ran out of ``max_new_tokens`` without ending (its last token none of ``stop_ids``: the tokens that end an
    answer, :func:`coop_rl.players.sampling.stop_token_ids`)."""
    if not penalty:
        return {}
    out: dict[tuple[int, int, int], float] = defaultdict(float)
    for r in records:
        ids = r.action.completion_ids
        truncated = bool(ids) and ids[-1] not in stop_ids and len(ids) >= max_new_tokens
        if not r.valid or truncated:
            out[(r.match_id, r.seat, r.timestep)] += penalty
    return out


def assign_credit(
    played: Played, num_seats: int, penalties: dict[tuple[int, int, int], float], **settings: Any
) -> dict[str, Any]:
    """Credit per learner (match, seat) and timestep, then per turn.

    Row b of the tensors is the b-th learner (match, seat) pair: its rewards minus its own penalties [B, T] (T = the
    longest match, padded and masked), its co-players' game rewards [B, K, T] (or [B, T] with one co-player), its
    seed group and seat (the baseline compares like seat with like). ``settings`` go to
    :func:`coop_rl.credit.compute_credit` (method, gamma, scale, beta, gamma_a, baseline, whiten). Returns
    "turn_credit" (a float per record, in order), "credit" (compute_credit's dict), "mask" and "pairs".
    """
    records, results = played.records, played.results
    pairs = [(m, s) for m, seats in enumerate(played.learner_seats) for s in seats]
    horizon = max(len(r.rewards[0]) for r in results)
    others = num_seats - 1
    rewards_self = torch.zeros(len(pairs), horizon)
    rewards_other = torch.zeros(len(pairs), others, horizon)
    mask = torch.zeros(len(pairs), horizon, dtype=torch.bool)
    group_ids = torch.tensor([played.groups[m] for m, _ in pairs], dtype=torch.long)
    seat_ids = torch.tensor([s for _, s in pairs], dtype=torch.long)
    for b, (m, s) in enumerate(pairs):
        rewards = [list(seat_rewards) for seat_rewards in results[m].rewards]
        # the format penalty shapes the learner's own reward only: a co-player's advantage (the AA term's A^j) is
        # its game reward alone, in self-play as against a frozen or past copy (whose turns carry no penalty)
        rewards[s] = [r - penalties.get((m, s, t), 0.0) for t, r in enumerate(rewards[s])]
        length = len(rewards[s])
        rewards_self[b, :length] = torch.tensor(rewards[s])
        for k, other in enumerate(o for o in range(num_seats) if o != s):
            rewards_other[b, k, :length] = torch.tensor(rewards[other])
        mask[b, :length] = True
    other = rewards_other if others > 1 else rewards_other[:, 0]
    credit = compute_credit(rewards_self, other, mask, group_ids, seats=seat_ids, **settings)
    index = {pair: b for b, pair in enumerate(pairs)}
    rows = torch.tensor([index[(r.match_id, r.seat)] for r in records], dtype=torch.long)
    timesteps = torch.tensor([r.timestep for r in records], dtype=torch.long)
    turn_credit = broadcast_to_tokens(credit["credit"], timesteps, rows).tolist()
    return {"turn_credit": turn_credit, "credit": credit, "mask": mask, "pairs": pairs}


def _per_round(rates: list[tuple[float, int]]) -> float:
    """The mean of per-match rates weighted by their matches' rounds: (rate, rounds) pairs."""
    return sum(rate * n for rate, n in rates) / max(1, sum(n for _, n in rates))


def rollout_metrics(played: Played, scored: dict[str, Any], num_seats: int) -> dict[str, float]:
    """The iteration's rollout and credit metrics (``rollout/...``, ``credit/...``), this process's share."""
    records, results, learner_seats = played.records, played.results, played.learner_seats
    out: dict[str, float] = {}
    learner_returns = [sum(results[m].rewards[s]) for m, seats in enumerate(learner_seats) for s in seats]
    out["rollout/learner_return"] = sum(learner_returns) / max(1, len(learner_returns))
    out["rollout/invalid_rate"] = sum(not r.valid for r in records) / max(1, len(records))
    # rates pooled over rounds, as play and eval pool them (runner.pooled_over_rounds)
    coop = [r.metrics.get("cooperation_rate") for r in results]
    if coop and coop[0] is not None:
        rates = [(c[s], len(results[m].rewards[s])) for m, c in enumerate(coop) for s in learner_seats[m]]
        out["rollout/cooperation_rate"] = _per_round(rates)
    mutual = [r.metrics.get("mutual_cooperation_rate") for r in results]
    if mutual and mutual[0] is not None:
        rates = [(rate, len(result.rewards[0])) for rate, result in zip(mutual, results, strict=True)]
        out["rollout/mutual_cooperation_rate"] = _per_round(rates)
    for seat in range(num_seats):
        seat_returns = [sum(result.rewards[seat]) for result in results]
        out[f"rollout/return_seat{seat}"] = sum(seat_returns) / max(1, len(seat_returns))
    for prefix, key in (("credit/advantage_", "adv_self"), ("credit/", "credit")):
        values = scored["credit"][key][scored["mask"]]
        out[prefix + "mean"] = values.mean().item()
        out[prefix + "std"] = values.std().item() if values.numel() > 1 else 0.0
    out["rollout/learner_turns"] = float(len(records))
    return out


# ----- 3. turns, rows, files ----------------------------------------------------------------------------------
def learner_turns(
    played: Played, turn_credit: Sequence[float], group_size: int, adapter_of: Callable[[int], str | None]
) -> list[LearnerTurn]:
    """One :class:`LearnerTurn` per learner turn of ``played``, with its credit, its global match id and the
    adapter of its seat (``adapter_of(seat)``)."""
    turns = []
    for record, credit in zip(played.records, turn_credit, strict=True):
        m, group = record.match_id, played.groups[record.match_id]
        global_id = group * group_size + m % group_size
        extra = {"credit": float(credit), "adapter": adapter_of(record.seat)}
        turns.append(LearnerTurn.from_record(record, played.results[m], global_id, group, **extra))
    return turns


def write_trajectory_file(folder: Path, step: int, lines: list[dict[str, Any]], clean_stale: bool = False) -> Path:
    """Write ``lines`` (trajectory lines, sorted here by match id, play order kept within a match) to
    ``folder/iteration-<step:06d>.jsonl``, atomically: a temporary file in the same folder, flushed to disk, then
    renamed over the final name, so a crash leaves the whole file or none. ``clean_stale`` first removes temporary
    files a killed run left."""
    folder.mkdir(parents=True, exist_ok=True)
    if clean_stale:
        for stale in folder.glob(".iteration-*.tmp"):
            stale.unlink(missing_ok=True)
    lines = sorted(lines, key=lambda line: line["match_id"])  # stable: turns of a match stay in play order
    return write_text_atomic(folder / f"iteration-{step:06d}.jsonl", "".join(json.dumps(line) + "\n" for line in lines))


# ----- outside training ---------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """What one round of play leaves: per-match results and the per-turn rows (:data:`COLUMNS`)."""

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
        game_name, game_params, seat_players, matches=matches, seed=seed, group_size=group_size,
        on_turns=records.extend, progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    wanted = set(record_seats) if record_seats is not None else None
    rows = [
        LearnerTurn.from_record(r, results[r.match_id], r.match_id, r.seed_group).dataset_row()
        for r in records
        if (r.seat in wanted if wanted is not None else bool(r.action.completion_ids))
    ]
    rollout = Rollout(results=results, rows=rows, seconds=seconds)
    summary = rollout.summary()
    logger.info(
        "rollout: %d matches in %.1fs, %.1f games/s, %.0f tokens/s, invalid rate %.3f", len(results), seconds,
        summary["rollout/games_per_s"], summary["rollout/tokens_per_s"], summary["rollout/invalid_rate"],
    )  # fmt: skip
    return rollout
