"""Rollout throughput: batched play (all matches in flight, one generate call per step) against a loop that plays
one match at a time, on the same model, side by side in one run.

    .venv/bin/python benchmarks/rollout.py --model runs/tiny [--matches 64] [--backends hf,vllm]

Prints the ratios and merges them into benchmarks/results.json: rollout_batched_vs_sequential (transformers),
rollout_vllm_batched_vs_sequential, and rollout_vllm_vs_hf (batched games/s of vLLM over transformers).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

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


def time_backend(spec: str, matches: int, repeats: int) -> tuple[float, float]:
    """Best batched and sequential wall times of ``matches`` IPD matches of ``spec`` against tft."""
    from coop_rl.players import make_player

    model = make_player(spec, "ipd")
    tft = ScriptedPlayer("tft", "ipd")
    run_matches("ipd", {}, [model, tft], matches=2)  # warm up (first-call overheads)
    batched, sequential = [], []
    for _ in range(repeats):  # alternate, so that machine noise hits both sides alike
        started = time.perf_counter()
        run_matches("ipd", {}, [model, tft], matches=matches, seed=1)
        batched.append(time.perf_counter() - started)
        started = time.perf_counter()
        for match in range(matches):
            run_matches("ipd", {}, [model, tft], matches=1, seed=1000 + match)
        sequential.append(time.perf_counter() - started)
    return min(batched), min(sequential)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model directory (coop-rl init-model tiny --out DIR)")
    parser.add_argument("--matches", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best time of each is kept")
    parser.add_argument("--backends", default="hf,vllm", help="comma-separated: hf, vllm")
    args = parser.parse_args()

    update: dict = {}
    games_per_s = {}
    print(f"{args.matches} ipd matches (10 rounds) of the tiny model vs tft")
    for backend in args.backends.split(","):
        batched, sequential = time_backend(f"{backend}:{args.model}", args.matches, args.repeats)
        ratio = sequential / batched
        games_per_s[backend] = args.matches / batched
        print(f"  {backend:5s} batched:    {batched:.2f} s  ({args.matches / batched:.1f} games/s)")
        print(f"  {backend:5s} sequential: {sequential:.2f} s  ({args.matches / sequential:.1f} games/s)")
        print(f"  {backend:5s} batched vs sequential = {ratio:.1f}x")
        key = "rollout_batched_vs_sequential" if backend == "hf" else f"rollout_{backend}_batched_vs_sequential"
        update[key] = round(ratio, 2)
        update[f"rollout_{backend}_batched_games_per_s"] = round(games_per_s[backend], 2)
    if {"hf", "vllm"} <= set(games_per_s):
        update["rollout_vllm_vs_hf"] = round(games_per_s["vllm"] / games_per_s["hf"], 2)
        print(f"  vllm vs hf (batched) = {update['rollout_vllm_vs_hf']:.2f}x")
    merge_results(update)
    if "vllm" in games_per_s:
        from coop_rl.players.vllm_player import shutdown_engines

        shutdown_engines()


if __name__ == "__main__":  # vLLM's engine core runs in a child process: create it under the main guard
    main()
