"""One AA iteration of SmolLM2-135M-Instruct on the IPD (self-play matches, LoRA r8, constrained answers) in each mode
of the CPU speed work, side by side in one run: iterations cycle through the modes (after a warm-up iteration of
each), and the medians of each mode's rollout / update / iteration seconds are compared. Every mode is exact (the
same distribution sampled, the same gradient):

- before: constrained answers through ``generate()`` with a logits processor, and the loss running every row's
  whole prompt (``HFEngine.choice_sampler = False``, ``AATrainer._share_prefix = False``);
- after: the choice-trie sampler (each distinct prompt run once, forced tokens free) and the loss running the rows'
  shared prompt prefix once (``AATrainer._share_stems = False``, the rollout outside ``frozen_weights``);
- reuse: as after, and the loss runs each distinct prompt once (the prompt tree: the 2 answers of an IPD state share
  its prompt) and the rollout reuses the rules' cache from round to round (``HFEngine.frozen_weights``).

    .venv/bin/coop-rl init-model smollm2 --out runs/smollm2
    .venv/bin/python benchmarks/smollm2.py --model runs/smollm2 [--iterations 6] [--out benchmarks/smollm2.json]
    .venv/bin/coop-rl init-model smollm2 --warm-start --out runs/smollm2-ipd
    .venv/bin/python benchmarks/smollm2.py --model runs/smollm2-ipd --modes after,reuse --matches 64 \
        --out benchmarks/smollm2_reuse.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from coop_rl.atomic_files import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
MODES = ("before", "after", "reuse")
#: what each mode turns on: (choice-trie sampler, loss shares the prefix, loss shares the stems, rollout memo)
SETTINGS = {
    "before": (False, False, False, False),
    "after": (True, True, False, False),
    "reuse": (True, True, True, True),
}


def run(model: str, iterations: int, matches: int, modes: tuple[str, ...] = MODES) -> dict:
    from transformers import TrainerCallback

    from coop_rl.aa_config import AAConfig
    from coop_rl.aa_trainer import AATrainer
    from coop_rl.precision import describe_cpu, precision_record

    with tempfile.TemporaryDirectory(prefix="coop_rl_smollm2_") as work:
        config = AAConfig(
            output_dir=work, model_name_or_path=model, game="ipd", matches_per_iteration=matches, group_size=8,
            credit="aa", beta=0.5, gamma=0.9, gamma_a=0.9, reward_scale=5.0, entropy_coef=0.01,
            constrain_answers=True, max_new_tokens=4, use_peft=True, lora_r=8, lora_alpha=16,
            learning_rate=1e-4, max_steps=len(modes) * (1 + iterations), logging_steps=1, save_strategy="no",
            report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
        )  # fmt: skip
        trainer = AATrainer(model=model, args=config)
        steps: list[dict] = []

        class Modes(TrainerCallback):
            """Step k runs modes[k % len(modes)]; times each step and its rollout."""

            def on_step_begin(self, args, state, control, **kwargs):
                mode = modes[state.global_step % len(modes)]
                trainer._share_prefix, trainer._share_stems = SETTINGS[mode][1:3]
                steps.append({"mode": mode, "started": time.perf_counter(), "rollout": 0.0})

            def on_step_end(self, args, state, control, **kwargs):
                steps[-1]["total"] = time.perf_counter() - steps[-1]["started"]

        live_player = trainer._live_player

        def player_in_mode():
            player = live_player()
            player.engine.choice_sampler = SETTINGS[steps[-1]["mode"]][0]
            return player

        rollout = trainer._rollout
        engine = trainer.opponents.engine()
        frozen_weights = engine.frozen_weights

        def timed_rollout():
            memo = SETTINGS[steps[-1]["mode"]][3]
            engine.frozen_weights = frozen_weights if memo else contextlib.nullcontext
            started = time.perf_counter()
            out = rollout()
            steps[-1]["rollout"] += time.perf_counter() - started
            return out

        trainer._live_player, trainer._rollout = player_in_mode, timed_rollout
        trainer.add_callback(Modes())
        trainer.train()
        precision = precision_record(config.resolved_precision)
    timed = steps[len(modes) :]  # the first iteration of each mode is a warm-up
    summary = {}
    for mode in modes:
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
        "modes": list(modes),
        "speedup": round(summary[modes[0]]["total_s"] / summary[modes[-1]]["total_s"], 2),  # first mode / last
        "goal_s": 20,
        "cpu": describe_cpu(),
        "precision": precision,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "runs" / "smollm2"), help="coop-rl init-model smollm2 --out DIR")
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations per mode")
    parser.add_argument("--matches", type=int, default=16)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "smollm2.json"))
    args = parser.parse_args(argv)
    modes = tuple(args.modes.split(","))
    if not modes or set(modes) - set(MODES) or len(set(modes)) != len(modes):
        print(f"--modes takes distinct names from {', '.join(MODES)}, not {args.modes!r}", file=sys.stderr)
        return 2
    if not (Path(args.model) / "config.json").exists():
        print(f"no model at {args.model}: run `coop-rl init-model smollm2 --out {args.model}` first", file=sys.stderr)
        return 2
    result = run(args.model, args.iterations, args.matches, modes)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
