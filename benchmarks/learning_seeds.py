"""The IPD learning result over many seeds: train each recipe once per seed, play every trained policy against
itself, tft and alld, and check the learning result's bar (coop_rl.demo_report.IPD_BAR) for each run.

The bar (issue 13): Advantage Alignment (``credit: aa``) cooperates >= 0.8 with itself and with tft and <= 0.2
against alld; the naive learner (``credit: naive``) cooperates <= 0.3 with itself. Cooperation rates are the
trained policy's, from ``coop_rl.eval.evaluate`` (the policy in both seats, ``--matches`` matches per opponent).

    .venv/bin/python benchmarks/learning_seeds.py                    # tiny recipes, seeds 0-9 (~18 min on 2 cores)
    .venv/bin/python benchmarks/learning_seeds.py --seeds 0,1,2 --set opponent=pool --set pool_prob=0.5 \\
        --set pool_size=8 --set pool_every=5 --out benchmarks/learning_seeds_pool.json   # the agent buffer

Each run trains in its own child process (``python -m coop_rl train``; its log beside its output directory under
``--work``) one after another, never two at once. Writes ``--out`` after every run (the machine's CPU, the date,
each run's cooperation rates, training time, the self-play cooperation curve (the log's, and per iteration for the
first 20) and whether it meets the bar, and a count per recipe), so an interrupted sweep keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from coop_rl.atomic_files import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_common, beside this script

from bench_common import fresh_run_dir  # noqa: E402

RECIPES = ("recipes/ipd/aa_tiny.yaml", "recipes/ipd/naive_tiny.yaml")
KEY_OPPONENTS = ("tft", "alld")


def meets_bar(credit: str, row: dict[str, Any]) -> bool | None:
    """The learning result's bar for one run (coop_rl.demo_report.IPD_BAR, the demo report's; None: no bar for
    this credit)."""
    from coop_rl.demo_report import ipd_bar_checks

    checks = ipd_bar_checks(credit, row)
    return all(checks.values()) if checks else None


def describe_bar() -> str:
    """The bar in one line, from coop_rl.demo_report.IPD_BAR (e.g. "aa: self_play >= 0.8, ...; naive: ...")."""
    from coop_rl.demo_report import IPD_BAR

    def bound(key: str, least: float | None, most: float | None) -> str:
        return f"{key} >= {least}" if least is not None else f"{key} <= {most}"

    return "; ".join(f"{m}: " + ", ".join(bound(k, lo, hi) for _, k, lo, hi in lines) for m, lines in IPD_BAR.items())


def cooperation_curve(run_dir: Path) -> list[list[float]]:
    """[iteration, rollout/cooperation_rate] from the run's log history (as the demo report's learning curves)."""
    from coop_rl.demo_report import COOPERATION_KEY, learning_curve, log_history

    return [[int(step), round(rate, 3)] for step, rate in learning_curve(log_history(run_dir), COOPERATION_KEY)]


def early_curve(run_dir: Path, iterations: int = 20) -> list[list[float]]:
    """[iteration, share of C among the learner's sampled actions] for each of the first ``iterations``, counted
    from ``trajectories/iteration-*.jsonl``. The log's curve averages over ``logging_steps``; the naive learner's
    fork is decided within its first few updates (docs/results.md), which only the per-iteration counts show."""
    curve = []
    for iteration in range(1, iterations + 1):
        path = run_dir / "trajectories" / f"iteration-{iteration:06d}.jsonl"
        if not path.exists():
            break
        actions = [json.loads(line)["text"].strip() for line in path.read_text().splitlines() if line.strip()]
        curve.append([iteration, round(sum(a == "C" for a in actions) / max(len(actions), 1), 3)])
    return curve


def train(recipe: str, seed: int, run_dir: Path, overrides: dict[str, str]) -> float:
    """Train one run in a child process; its seconds. The child's output goes to ``<run_dir>.log``. A run folder
    of an earlier call (this script's own, under ``--work``) is removed first: ``coop-rl train`` refuses to write a
    new run over it."""
    fresh_run_dir(run_dir, "learning_seeds.py")
    argv = [sys.executable, "-m", "coop_rl", "train", "--config", recipe, "--seed", str(seed)]
    argv += ["--output_dir", str(run_dir)]
    for key, value in overrides.items():
        argv += [f"--{key}", value]
    started = time.perf_counter()
    with open(f"{run_dir}.log", "w") as log_file:
        status = subprocess.call(argv, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    if status != 0:
        raise SystemExit(f"learning_seeds: training {run_dir} exited with status {status}; see {run_dir}.log")
    return time.perf_counter() - started


def evaluate_run(run_dir: Path, matches: int, seed: int) -> dict[str, Any]:
    from coop_rl.demo_report import summarize_method
    from coop_rl.eval.evaluate import evaluate
    from coop_rl.players import SamplingConfig

    results = evaluate(
        f"hf:{run_dir}",
        "ipd",
        list(KEY_OPPONENTS),
        matches=matches,
        seed=seed,
        sampling=SamplingConfig(max_new_tokens=4),
    )
    row = summarize_method(results, KEY_OPPONENTS)
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in row.items()}


def summarize(runs: list[dict[str, Any]]) -> dict[str, str]:
    counts: dict[str, str] = {}
    for recipe in dict.fromkeys(run["recipe"] for run in runs):
        verdicts = [run["meets_bar"] for run in runs if run["recipe"] == recipe]
        met = [run["seed"] for run in runs if run["recipe"] == recipe and run["meets_bar"]]
        counts[recipe] = f"{sum(bool(v) for v in verdicts)}/{len(verdicts)} meet the bar (seeds {met})"
    return counts


def report_header(script: str, argv: list[str] | None) -> dict[str, Any]:
    """What a sweep's JSON opens with: the machine's CPU, the date, the command (``script`` and its arguments) and
    the bar."""
    from coop_rl.precision import describe_cpu

    return {
        "machine": {"cpu": describe_cpu()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv),
        "bar": describe_bar(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe paths")
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9", help="comma-separated training seeds")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a training override for every run (repeatable), e.g. opponent=pool",
    )
    parser.add_argument("--matches", type=int, default=64, help="evaluation matches per opponent and seat")
    parser.add_argument("--eval-seed", type=int, default=7, help="base seed of the evaluation matches")
    parser.add_argument("--work", default="runs/learning-seeds", help="where the trained runs are kept")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "learning_seeds.json"))
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, not {args.seeds!r}")
    if any("=" not in item for item in args.set):
        parser.error("--set takes FIELD=VALUE")
    args.overrides = dict(item.split("=", 1) for item in args.set)
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    for recipe in args.recipes:
        if not (ROOT / recipe).is_file():
            parser.error(f"no recipe {recipe}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        **report_header("learning_seeds.py", argv),
        "evaluation": {"matches": args.matches, "seed": args.eval_seed, "opponents": ["self", *KEY_OPPONENTS]},
        "overrides": args.overrides,
        "runs": [],
    }
    for recipe in args.recipes:
        config = yaml.safe_load((ROOT / recipe).read_text())
        credit = args.overrides.get("credit", config.get("credit", "aa"))
        for seed in args.seeds:
            run_dir = work / f"{Path(recipe).stem}-s{seed}"
            seconds = train(recipe, seed, run_dir, args.overrides)
            row = evaluate_run(run_dir, args.matches, args.eval_seed)
            run = {"recipe": recipe, "credit": credit, "seed": seed, "train_s": round(seconds, 1), **row}
            run.update(
                meets_bar=meets_bar(credit, row), curve=cooperation_curve(run_dir), early_curve=early_curve(run_dir)
            )
            report["runs"].append(run)
            report["summary"] = summarize(report["runs"])
            write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
            print(
                f"{Path(recipe).stem} seed {seed}: self-play {row['self_play']}, vs tft {row['vs_tft']}, "
                f"vs alld {row['vs_alld']}, {seconds:.0f} s, bar {'met' if run['meets_bar'] else 'NOT met'}",
                flush=True,
            )
    for recipe, line in report.get("summary", {}).items():
        print(f"{recipe}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
