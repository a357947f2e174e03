"""IPD self-play of a model policy on the transformers engine with and without the prefix memo (the rules' key/value
cache reused from round to round, coop_rl/players/prefix_memo.py), side by side in one run: the two modes alternate
after an untimed run of each, and the medians and their ratio are reported, with each mode's cooperation rate (the
same matches are played: the same seeds, the same answers).

    .venv/bin/python benchmarks/prefix_memo.py --policy hf:runs/demo-smollm2/aa [--matches 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from coop_rl.atomic_files import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
MODES = ("recompute", "memo")


def play(policy: str, matches: int, memo_on: bool) -> tuple[float, float]:
    """Seconds and the policy's cooperation rate of ``matches`` self-play matches (seed 0)."""
    from coop_rl.players import make_player
    from coop_rl.players.prefix_memo import PrefixMemo
    from coop_rl.runner import run_matches, summarize

    seats = [make_player(policy, "ipd", seed=seat) for seat in range(2)]
    engine = seats[0].engine
    engine.prefix_memo = PrefixMemo() if memo_on else None  # a fresh memo: nothing carried from the last run
    started = time.perf_counter()
    results = run_matches("ipd", {}, seats, matches=matches, seed=0)
    seconds = time.perf_counter() - started
    return seconds, summarize("ipd", [policy, policy], results)["players"][0]["cooperation_rate"]


def run(policy: str, matches: int, repeats: int) -> dict:
    from coop_rl.precision import describe_cpu

    for mode in MODES:  # untimed: imports, model load, first calls
        play(policy, matches, mode == "memo")
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    cooperation: dict[str, float] = {}
    for _ in range(repeats):
        for mode in MODES:
            elapsed, cooperation[mode] = play(policy, matches, mode == "memo")
            seconds[mode].append(round(elapsed, 3))
    medians = {mode: round(statistics.median(values), 3) for mode, values in seconds.items()}
    return {
        "policy": policy,
        "matches": matches,
        "seconds": seconds,
        "seconds_median": medians,
        "speedup": round(medians["recompute"] / medians["memo"], 2),
        "cooperation_rate": cooperation,
        "cpu": describe_cpu(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="hf:<model_dir>[@<adapter_dir>]")
    parser.add_argument("--matches", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "prefix_memo.json"))
    args = parser.parse_args(argv)
    if not args.policy.startswith("hf:"):
        print(f"--policy must be an hf: policy (the transformers engine), not {args.policy!r}", file=sys.stderr)
        return 2
    result = run(args.policy, args.matches, args.repeats)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
