"""The benchmark stages that train (``benchmarks/run_all.py --stages training,memory,sample_efficiency``): one AA
iteration beside one TRL GRPO step, the peak memory of a short AA run, and iterations to cooperation.

The memory and sample-efficiency runs train in a child process (this file run as a script on a spec file), so
that each peak resident set is that run's own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import (
    AA_RECIPE,
    NAIVE_RECIPE,
    StepTimer,
    aa_config,
    ensure_model,
    interleave,
    load_recipe,
    log,
    median,
)

COOP_TARGET = 0.9


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


def run_aa_iterations(model: Path, matches: int, steps: int, work: str) -> list[dict[str, float]]:
    """``steps`` AA iterations with aa_tiny.yaml's settings; per step: total, rollout, credit, update seconds."""
    from coop_rl.aa_trainer import AATrainer

    config = aa_config(
        AA_RECIPE, work, model_name_or_path=str(model), max_steps=steps, matches_per_iteration=matches, logging_steps=1
    )
    timer = StepTimer.make()
    trainer = AATrainer(model=str(model), args=config, callbacks=[timer])
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

    timer = StepTimer.make()
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
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(work_dir / "spec.json")])
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


if __name__ == "__main__":  # a child training run: python benchmarks/training_stages.py SPEC.json
    child_train(sys.argv[1])
