"""Rollout throughput: batched play (all matches in flight, one generate call per step) against a loop that plays
one match at a time, on the same model, side by side in one run (interleaved repeats, medians).

    .venv/bin/python benchmarks/rollout.py --model runs/tiny [--matches 64] [--backends hf,vllm]

Prints games/s, generated tokens/s and the ratios. ``benchmarks/run_all.py`` (``make bench``) uses
:func:`rollout_functions` and writes benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from coop_rl.players.scripted import ScriptedPlayer
from coop_rl.runner import run_matches


def rollout_functions(spec: str, matches: int, sequential: bool = True) -> dict[str, Callable[[], tuple[float, int]]]:
    """Timed plays of ``matches`` IPD matches of ``spec`` (seat 0) against tft: 'batched' (all at once) and
    'sequential' (one match at a time); each returns (seconds, tokens the model generated). Warmed up."""
    from coop_rl.players import make_player

    model = make_player(spec, "ipd")
    tft = ScriptedPlayer("tft", "ipd")

    def play(count: int, seed: int) -> int:
        tokens = 0

        def count_tokens(turns) -> None:
            nonlocal tokens
            tokens += sum(len(t.action.completion_ids or []) for t in turns if t.seat == 0)

        run_matches("ipd", {}, [model, tft], matches=count, seed=seed, on_turns=count_tokens)
        return tokens

    def batched() -> tuple[float, int]:
        started = time.perf_counter()
        tokens = play(matches, seed=1)
        return time.perf_counter() - started, tokens

    def one_at_a_time() -> tuple[float, int]:
        started = time.perf_counter()
        tokens = sum(play(1, seed=1000 + match) for match in range(matches))
        return time.perf_counter() - started, tokens

    play(2, seed=0)  # warm up (first-call overheads)
    functions = {"batched": batched}
    if sequential:
        functions["sequential"] = one_at_a_time
    return functions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model directory (coop-rl init-model tiny --out DIR)")
    parser.add_argument("--matches", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median of each is kept")
    parser.add_argument("--backends", default="hf,vllm", help="comma-separated: hf, vllm")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    try:  # a vLLM engine started here is shut down whatever happens
        samples = _measure(args)
    finally:
        if "vllm" in args.backends.split(","):
            from coop_rl.players.vllm_player import shutdown_engines

            shutdown_engines()
    print(f"{args.matches} ipd matches (10 rounds) of the model vs tft, median of {args.repeats}")
    seconds = {name: statistics.median(s for s, _ in runs) for name, runs in samples.items()}
    for name, runs in samples.items():
        tokens_per_s = statistics.median(tokens / s for s, tokens in runs)
        print(
            f"  {name:16s} {seconds[name]:7.2f} s  {args.matches / seconds[name]:8.1f} games/s  "
            f"{tokens_per_s:9.1f} tokens/s"
        )
    for backend in args.backends.split(","):
        ratio = seconds[f"{backend} sequential"] / seconds[f"{backend} batched"]
        print(f"  {backend}: batched vs sequential = {ratio:.1f}x")
    if "vllm batched" in seconds and "hf batched" in seconds:
        print(f"  vllm vs hf (batched games/s) = {seconds['hf batched'] / seconds['vllm batched']:.2f}x")


def _measure(args: argparse.Namespace) -> dict[str, list[tuple[float, int]]]:
    """(seconds, tokens) of each backend and mode, ``args.repeats`` times, interleaved so that machine noise hits
    every side alike."""
    functions = {}
    for backend in args.backends.split(","):
        for mode, function in rollout_functions(f"{backend}:{args.model}", args.matches).items():
            functions[f"{backend} {mode}"] = function
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in functions}
    for _ in range(args.repeats):
        for name, function in functions.items():
            samples[name].append(function())
    return samples


if __name__ == "__main__":  # vLLM's engine core runs in a child process: create it under the main guard
    main()
