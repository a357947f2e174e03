"""Rollout throughput: batched play (all matches in flight, one generate call per step) against a loop that plays
one match at a time, on the same model, side by side in one run.

    .venv/bin/python benchmarks/rollout.py --model runs/tiny [--matches 64]

Prints the ratio and merges it into benchmarks/results.json (key rollout_batched_vs_sequential).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

from coop_rl.players.hf import HFPlayer
from coop_rl.players.scripted import ScriptedPlayer
from coop_rl.runner import run_matches

RESULTS = Path(__file__).with_name("results.json")


def machine() -> dict:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count()}


def merge_results(update: dict) -> dict:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(update)
    results["machine"] = machine()
    results["date"] = date.today().isoformat()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model directory (coop-rl init-model tiny --out DIR)")
    parser.add_argument("--matches", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best time of each is kept")
    args = parser.parse_args()

    model = HFPlayer(f"hf:{args.model}")
    tft = ScriptedPlayer("tft", "ipd")
    run_matches("ipd", {}, [model, tft], matches=2)  # warm up (first-call overheads)

    batched, sequential = [], []
    for _ in range(args.repeats):  # alternate, so that machine noise hits both sides alike
        started = time.perf_counter()
        run_matches("ipd", {}, [model, tft], matches=args.matches, seed=1)
        batched.append(time.perf_counter() - started)
        started = time.perf_counter()
        for match in range(args.matches):
            run_matches("ipd", {}, [model, tft], matches=1, seed=1000 + match)
        sequential.append(time.perf_counter() - started)
    ratio = min(sequential) / min(batched)
    print(f"{args.matches} ipd matches (10 rounds) of the tiny model vs tft")
    print(f"  batched:    {min(batched):.2f} s  ({args.matches / min(batched):.1f} games/s)")
    print(f"  sequential: {min(sequential):.2f} s  ({args.matches / min(sequential):.1f} games/s)")
    print(f"  rollout_batched_vs_sequential = {ratio:.1f}x")
    merge_results(
        {
            "rollout_batched_vs_sequential": round(ratio, 2),
            "rollout_batched_games_per_s": round(args.matches / min(batched), 2),
        }
    )


if __name__ == "__main__":
    main()
