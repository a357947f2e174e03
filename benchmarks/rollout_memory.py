"""Memory under load: a long rollout (thousands of matches, in chunks, as the trainer plays them iteration after
iteration) must hold memory flat: what grows is the results kept, nothing per match beyond them.

    .venv/bin/python benchmarks/rollout_memory.py                       # 5000 IPD matches, tft vs alld
    .venv/bin/python benchmarks/rollout_memory.py --matches 5000 --game tas --players honest,greedy --json

Plays ``--matches`` matches in chunks of ``--chunk`` through :func:`coop_rl.runner.run_matches` with every turn
recorded (``on_turns``, as the trainer records them) and two ways of keeping results: ``discard`` (aggregate
numbers only, the trainer's case: an iteration's results are dropped after its update) and ``keep`` (every
MatchResult kept, as ``coop-rl play`` keeps them). Python allocations are traced with tracemalloc after a warm-up
chunk; the process RSS is read from psutil. Prints (or with --json, one JSON object) the growth per match.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from typing import Any

import psutil

from coop_rl.players.scripted import ScriptedPlayer
from coop_rl.runner import run_matches


def measure(game: str, players: list[str], matches: int, chunk: int, keep: bool, params: dict | None = None):
    """Play ``matches`` matches in chunks; return memory figures (bytes) and the number of matches played."""
    params = params or {}
    seats = [ScriptedPlayer(name, game) for name in players]
    process = psutil.Process()
    kept: list[Any] = []
    totals = [0.0] * len(players)
    turns_seen = 0

    def play(n: int, seed: int) -> None:
        nonlocal turns_seen
        records: list = []
        results = run_matches(game, params, seats, matches=n, seed=seed, group_size=8, on_turns=records.extend)
        turns_seen += len(records)
        for result in results:
            for seat, value in enumerate(result.returns):
                totals[seat] += value
        if keep:
            kept.extend(results)

    # Warm-up, traced: caches, interned strings, and the state players keep per (match id, seat) of the last
    # chunk (a scripted player's strategies, replaced by the next chunk's): steady state, not growth.
    tracemalloc.start()
    play(chunk, seed=0)
    gc.collect()
    base_traced = tracemalloc.get_traced_memory()[0]
    base_rss = process.memory_info().rss
    kept_before = len(kept)
    started = time.perf_counter()
    played, rss_trace = 0, []
    while played < matches:
        n = min(chunk, matches - played)
        play(n, seed=1 + played // chunk)
        played += n
        gc.collect()
        rss_trace.append(process.memory_info().rss - base_rss)
    seconds = time.perf_counter() - started
    settled = len(rss_trace) // 5
    matches_settled = min(played, (settled + 1) * chunk)
    traced = tracemalloc.get_traced_memory()[0] - base_traced
    kept_results = kept[kept_before:]
    # The size of what was deliberately kept, measured the same way: allocate a copy of it and trace that.
    kept_bytes = 0
    if kept_results:
        snapshot_before = tracemalloc.get_traced_memory()[0]
        copies = [_copy_result(r) for r in kept_results]
        kept_bytes = tracemalloc.get_traced_memory()[0] - snapshot_before
        del copies
    tracemalloc.stop()
    beyond = traced - kept_bytes
    return {
        "game": game,
        "players": players,
        "matches": played,
        "turns": turns_seen,
        "chunk": chunk,
        "keep_results": keep,
        "seconds": round(seconds, 2),
        "matches_per_s": round(played / seconds, 1),
        "traced_growth_bytes": traced,
        "kept_results_bytes": kept_bytes,
        "growth_beyond_results_bytes": beyond,
        "growth_beyond_results_per_match_bytes": round(beyond / played, 2),
        "rss_growth_bytes": rss_trace[-1],
        "rss_growth_max_bytes": max(rss_trace),
        "rss_growth_per_match_bytes": round(rss_trace[-1] / played, 2),
        # the RSS slope once the allocator has settled: growth after the first fifth of the chunks, per match
        "rss_late_growth_per_match_bytes": round(
            (rss_trace[-1] - rss_trace[settled]) / max(1, played - matches_settled), 2
        ),
        "rss_trace_mib": [round(r / 2**20, 2) for r in rss_trace],
        "rss_mib": round(process.memory_info().rss / 2**20, 1),
        "mean_returns": [round(t / (played + chunk), 3) for t in totals],
    }


def _copy_result(result):
    from coop_rl.envs.base import MatchResult

    return MatchResult(
        seed=result.seed,
        returns=list(result.returns),
        rewards=[list(r) for r in result.rewards],
        invalid_counts=list(result.invalid_counts),
        action_counts=list(result.action_counts),
        metrics=json.loads(json.dumps(result.metrics)),
        transcript=list(result.transcript),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="ipd")
    parser.add_argument("--players", default="tft,alld")
    parser.add_argument("--matches", type=int, default=5000)
    parser.add_argument("--chunk", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    params = {"rounds": args.rounds} if args.rounds else {}
    figures = [
        measure(args.game, args.players.split(","), args.matches, args.chunk, keep, params) for keep in (False, True)
    ]
    if args.json:
        print(json.dumps(figures))
        return 0
    for f in figures:
        mode = "keep results" if f["keep_results"] else "discard results"
        print(
            f"{f['game']} {','.join(f['players'])}: {f['matches']} matches ({f['turns']} turns) in chunks of "
            f"{f['chunk']}, {mode}: {f['seconds']} s ({f['matches_per_s']} matches/s); traced Python memory "
            f"+{f['traced_growth_bytes'] / 1024:.1f} KiB, of which kept results {f['kept_results_bytes'] / 1024:.1f}"
            f" KiB, beyond them {f['growth_beyond_results_per_match_bytes']} B/match; RSS "
            f"+{f['rss_growth_bytes'] / 2**20:.2f} MiB (max +{f['rss_growth_max_bytes'] / 2**20:.2f} MiB), "
            f"{f['rss_mib']} MiB in all"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
