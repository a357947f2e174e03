"""The match runner: keeps many matches in flight and batches every pending turn per player.

At each step it collects the pending turns of every unfinished match, groups them by the player that serves the
seat, asks each player once for the whole group (one batched generate call for a model), then steps every game
whose turns are all answered. Matches in a seed group share a game seed (same hands, values, noise), which the
group-relative baseline relies on. :func:`play` is ``coop-rl play`` without its parsing: build the seats' players,
run the matches, close the players, write the transcripts and return the summary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from coop_rl.atomic_files import write_text_atomic
from coop_rl.envs import make_game
from coop_rl.envs.base import MatchResult, TextGame
from coop_rl.players import SamplingConfig, make_player
from coop_rl.players.base import Action, Player, TurnRequest


@dataclass
class TurnRecord:
    """One answered turn, as the rollout layer hands it to the trainer."""

    match_id: int
    seed_group: int
    seat: int
    timestep: int
    phase: str
    action: Action
    messages: list[dict[str, str]] = field(default_factory=list)
    valid: bool = True  # whether the game could parse the answer (filled in after the game steps)


def progress_bar(total: int, desc: str, unit: str, enabled: bool) -> Any:
    """A progress bar on stderr (tqdm), or one that shows nothing when ``enabled`` is false (``--json``, no
    terminal); usable as a context manager."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not enabled, dynamic_ncols=True)


def match_seed(seed: int, match_id: int, group_size: int) -> int:
    """The game seed of a match: consecutive ``group_size`` matches share one."""
    return seed * 1_000_003 + match_id // group_size


def reseed_players(seat_players: Sequence[Player], seed: int) -> None:
    """Restart every distinct player's sampling randomness from ``seed`` (:meth:`Player.reseed`), so that what a
    pairing of model players plays does not depend on the pairings played before it."""
    for player in {id(p): p for p in seat_players}.values():
        player.reseed(seed)


def run_matches(
    game_name: str,
    game_params: dict[str, Any],
    seat_players: Sequence[Player],
    matches: int,
    seed: int = 0,
    group_size: int = 1,
    on_turns: Callable[[list[TurnRecord]], None] | None = None,
    keep_transcripts: bool = False,
    progress: bool = False,
    match_seeds: Sequence[int] | None = None,
) -> list[MatchResult]:
    """Play ``matches`` matches of a game, seat ``i`` served by ``seat_players[i]``, all at once.

    ``on_turns`` receives the answered turns of each batched step (the rollout layer records trajectories
    through it). ``match_seeds`` gives each match's game seed explicitly (the trainer's seed groups); otherwise
    consecutive ``group_size`` matches share one seed derived from ``seed``. ``TurnRecord.seed_group`` is then the
    match's seed.
    """
    if match_seeds is not None and len(match_seeds) != matches:
        raise ValueError(f"{len(match_seeds)} match seeds for {matches} matches")
    games = _start_games(game_name, game_params, seat_players, matches, seed, group_size, match_seeds)

    def seed_group(match_id: int) -> int:
        return match_seeds[match_id] if match_seeds is not None else match_id // group_size

    bar = progress_bar(matches, f"{game_name} matches", "match", progress)
    active = [m for m in range(matches) if not games[m].done]
    while active:
        records = _step(games, active, seat_players, seed_group if on_turns is not None else None, keep_transcripts)
        if on_turns is not None:
            on_turns(records)
        still_active = [m for m in active if not games[m].done]
        bar.update(len(active) - len(still_active))
        active = still_active
    bar.close()
    return [_match_result(game, keep_transcripts) for game in games]


def _start_games(
    game_name: str,
    game_params: dict[str, Any],
    seat_players: Sequence[Player],
    matches: int,
    seed: int,
    group_size: int,
    match_seeds: Sequence[int] | None,
) -> list[TextGame]:
    """One game per match, reset to its seed, and every seat's player told the match has started."""
    games: list[TextGame] = []
    for match_id in range(matches):
        game = make_game(game_name, **game_params)
        if len(seat_players) != game.num_players:
            raise ValueError(f"{game_name} is set for {game.num_players} players, got {len(seat_players)}")
        game_seed = match_seeds[match_id] if match_seeds is not None else match_seed(seed, match_id, group_size)
        game.reset(game_seed)
        for seat, player in enumerate(seat_players):
            player.start_match(match_id, seat, game_seed)
        games.append(game)
    return games


def _step(
    games: Sequence[TextGame],
    active: Sequence[int],
    seat_players: Sequence[Player],
    seed_group: Callable[[int], int] | None,
    keep_prompts: bool = False,
) -> list[TurnRecord]:
    """One batched step of every active match: each player answers all its pending turns in one call, then every
    game steps. Returns the answered turns with the game's verdict on each (none when ``seed_group`` is None: no
    one records them). With ``keep_prompts`` each transcript event keeps the observation it answered."""
    # One batch per player object: seats served by the same player (same model) share one call.
    batches: dict[int, tuple[Player, list[TurnRequest]]] = {}
    prompts: dict[tuple[int, int], str] = {}
    for match_id in active:
        for turn in games[match_id].pending_turns():
            player = seat_players[turn.seat]
            batches.setdefault(id(player), (player, []))[1].append(TurnRequest(match_id, games[match_id], turn))
            if keep_prompts:
                prompts[(match_id, turn.seat)] = turn.messages[-1]["content"]
    answers: dict[int, dict[int, str]] = {m: {} for m in active}
    records: list[TurnRecord] = []
    for player, requests in batches.values():
        actions = player.act(requests)
        if len(actions) != len(requests):
            raise RuntimeError(f"player {player.spec!r} answered {len(actions)} of {len(requests)} turns")
        for request, action in zip(requests, actions, strict=True):
            answers[request.match_id][request.turn.seat] = action.text
            if seed_group is not None:
                turn = request.turn
                records.append(
                    TurnRecord(
                        match_id=request.match_id,
                        seed_group=seed_group(request.match_id),
                        seat=turn.seat,
                        timestep=turn.timestep,
                        phase=turn.phase,
                        action=action,
                        messages=turn.messages,
                    )
                )
    records_by_match: dict[int, dict[int, TurnRecord]] = {}
    for record in records:
        records_by_match.setdefault(record.match_id, {})[record.seat] = record
    for match_id in active:
        game = games[match_id]
        seen = len(game.transcript)
        game.step(answers[match_id])
        for event in game.transcript[seen:]:  # the game's verdict on each answer of this step
            event.prompt = prompts.get((match_id, event.seat))
            if event.seat in records_by_match.get(match_id, {}):
                records_by_match[match_id][event.seat].valid = event.valid
    return records


def _match_result(game: TextGame, keep_transcript: bool) -> MatchResult:
    """What a finished match leaves: its seed, returns, per-timestep rewards, counts, metrics (and transcript)."""
    return MatchResult(
        seed=game.seed if game.seed is not None else 0,
        returns=game.returns(),
        rewards=[list(r) for r in game.rewards],
        invalid_counts=list(game.invalid_counts),
        action_counts=list(game.action_counts),
        metrics=game.metrics(),
        transcript=game.transcript_dicts() if keep_transcript else [],
    )


def mean(values: Sequence[float]) -> float:
    """The exact (fsum) mean of ``values``; 0.0 for none."""
    return math.fsum(values) / len(values) if values else 0.0


def aggregate_metrics(results: Sequence[MatchResult]) -> dict[str, Any]:
    """Average every metric over matches: scalars to a scalar, per-seat lists elementwise."""
    out: dict[str, Any] = {}
    keys = sorted({key for result in results for key in result.metrics})
    for key in keys:
        values = [result.metrics[key] for result in results if key in result.metrics]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = mean(values)
        elif all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
            out[key] = [mean([v[i] for v in values]) for i in range(len(values[0]))]
    return out


def pooled_over_rounds(results: Sequence[MatchResult], key: str | None, seat: int) -> float | None:
    """A seat's per-round rate over ``results`` (a per-match, per-seat metric ``key``: the fraction of cooperative
    rounds, a mean contribution or claim) pooled over rounds, sum_m rate_m * rounds_m / sum_m rounds_m: a one-round
    match under ``continuation < 1`` weighs one round, not as much as a ten-round one. None where a match lacks it.
    ``play``, ``tournament``, ``eval`` and the training's rollout metrics all read a seat's rate this way."""
    values = [r.metrics.get(key) if key else None for r in results]
    if not values or not all(isinstance(v, list) and seat < len(v) for v in values):
        return None
    rounds = [len(r.rewards[seat]) for r in results]
    total = sum(rounds)
    if not total:
        return None
    return math.fsum(float(v[seat]) * n for v, n in zip(values, rounds, strict=True)) / total


def summarize(game_name: str, specs: Sequence[str], results: Sequence[MatchResult]) -> dict[str, Any]:
    """The ``coop-rl play --json`` object (architecture.md's command-line contract). A player's rates are pooled
    over rounds (:func:`pooled_over_rounds`); ``metrics`` averages each match's own metrics over matches."""
    metrics = aggregate_metrics(results)
    players = []
    for seat, spec in enumerate(specs):
        invalid = sum(r.invalid_counts[seat] for r in results)
        acted = sum(r.action_counts[seat] for r in results)
        entry: dict[str, Any] = {
            "spec": spec,
            "mean_return": mean([r.returns[seat] for r in results]),
            "invalid_rate": invalid / acted if acted else 0.0,
        }
        for key in ("cooperation_rate", "mean_contribution", "mean_claim"):
            if isinstance(metrics.get(key), list) and len(metrics[key]) == len(specs):
                entry[key] = pooled_over_rounds(results, key, seat)
        players.append(entry)
    return {
        "game": game_name,
        "matches": len(results),
        "players": players,
        "welfare": sum(p["mean_return"] for p in players),
        "metrics": metrics,
    }


def play(
    game_name: str,
    game_params: dict[str, Any],
    specs: Sequence[str],
    matches: int,
    seed: int = 0,
    group_size: int = 1,
    sampling: SamplingConfig | None = None,
    constrain: bool | None = None,
    transcripts: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Play ``matches`` matches between the players ``specs`` name (one per seat) and return :func:`summarize`'s
    object; with ``transcripts``, every match's transcript is written there as JSON lines.

    Seats with the same spec share one player (one engine for a model). Every player built is closed, also when a
    match fails.
    """
    players: dict[str, Player] = {}
    seat_players = []
    try:
        for spec in specs:
            if spec not in players:
                players[spec] = make_player(spec, game_name, sampling=sampling, seed=seed, constrain=constrain)
            seat_players.append(players[spec])
        results = run_matches(
            game_name,
            game_params,
            seat_players,
            matches=matches,
            seed=seed,
            group_size=group_size,
            keep_transcripts=transcripts is not None,
            progress=progress,
        )
    finally:
        for player in players.values():
            player.close()
    summary = summarize(game_name, specs, results)
    if transcripts:
        lines = [
            json.dumps({"match": m, "seed": result.seed, "events": result.transcript})
            for m, result in enumerate(results)
        ]
        write_text_atomic(transcripts, "".join(line + "\n" for line in lines))
    return summary
