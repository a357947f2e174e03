"""One AA iteration of SmolLM2-135M-Instruct on the IPD (16 self-play matches, LoRA r8, constrained answers), before
and after the CPU speed work, side by side in one run: iterations alternate between the two modes (after a
warm-up iteration of each), and the medians of each mode's rollout / update / iteration seconds are compared.

- before: constrained answers through ``generate()`` with a logits processor, and the loss running every row's
  whole prompt (``HFEngine.choice_sampler = False``, ``AATrainer._share_prefix = False``);
- after: the choice-trie sampler (each distinct prompt run once, forced tokens free) and the loss running the rows'
  shared prompt prefix once (both exact: same distribution, same gradient).

    .venv/bin/coop-rl init-model smollm2 --out runs/smollm2
    .venv/bin/python benchmarks/smollm2.py --model runs/smollm2 [--iterations 6] [--out benchmarks/smollm2.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("before", "after")


def run(model: str, iterations: int, matches: int) -> dict:
    from transformers import TrainerCallback

    from coop_rl.aa_config import AAConfig
    from coop_rl.aa_trainer import AATrainer
    from coop_rl.precision import describe_cpu, precision_record

    with tempfile.TemporaryDirectory(prefix="coop_rl_smollm2_") as work:
        config = AAConfig(
            output_dir=work, model_name_or_path=model, game="ipd", matches_per_iteration=matches, group_size=8,
            credit="aa", beta=0.5, gamma=0.9, gamma_a=0.9, reward_scale=5.0, entropy_coef=0.01,
            constrain_answers=True, max_new_tokens=4, use_peft=True, lora_r=8, lora_alpha=16,
            learning_rate=1e-4, max_steps=2 + 2 * iterations, logging_steps=1, save_strategy="no",
            report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
        )  # fmt: skip
        trainer = AATrainer(model=model, args=config)
        steps: list[dict] = []

        class Modes(TrainerCallback):
            """Even steps run 'before', odd steps 'after'; times each step and its rollout."""

            def on_step_begin(self, args, state, control, **kwargs):
                mode = MODES[state.global_step % 2]
                trainer._share_prefix = mode == "after"
                steps.append({"mode": mode, "started": time.perf_counter(), "rollout": 0.0})

            def on_step_end(self, args, state, control, **kwargs):
                steps[-1]["total"] = time.perf_counter() - steps[-1]["started"]

        live_player = trainer._live_player

        def player_in_mode():
            player = live_player()
            player.engine.choice_sampler = steps[-1]["mode"] == "after"
            return player

        rollout = trainer._rollout

        def timed_rollout():
            started = time.perf_counter()
            out = rollout()
            steps[-1]["rollout"] += time.perf_counter() - started
            return out

        trainer._live_player, trainer._rollout = player_in_mode, timed_rollout
        trainer.add_callback(Modes())
        trainer.train()
        precision = precision_record(config.resolved_precision)
    timed = steps[2:]  # the first iteration of each mode is a warm-up
    summary = {}
    for mode in MODES:
        runs = [s for s in timed if s["mode"] == mode]
        rollout = statistics.median(s["rollout"] for s in runs)
        total = statistics.median(s["total"] for s in runs)
        summary[mode] = {
            "rollout_s": round(rollout, 2),
            "update_s": round(total - rollout, 2),
            "total_s": round(total, 2),
        }
    return {
        "model": model,
        "matches_per_iteration": matches,
        "timed_iterations_per_mode": iterations,
        "iteration_s": summary,
        "speedup": round(summary["before"]["total_s"] / summary["after"]["total_s"], 2),
        "goal_s": 20,
        "cpu": describe_cpu(),
        "precision": precision,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "runs" / "smollm2"), help="coop-rl init-model smollm2 --out DIR")
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations per mode")
    parser.add_argument("--matches", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "smollm2.json"))
    args = parser.parse_args(argv)
    if not (Path(args.model) / "config.json").exists():
        print(f"no model at {args.model}: run `coop-rl init-model smollm2 --out {args.model}` first", file=sys.stderr)
        return 2
    result = run(args.model, args.iterations, args.matches)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
