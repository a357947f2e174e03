"""The IPD learning result over builds of the tiny model as well as training seeds: build ``coop-rl init-model tiny
--seed B`` for each build seed B, measure its untrained prior, then run ``learning_seeds.py`` on it.

The tiny model's outcome forks and the build tips the fork (docs/results.md): one build gave Advantage Alignment
10 of 10 seeds and the naive learner 5 of 10, the next 6 of 10 and 10 of 10. A seed of one build is therefore one
draw of two sources of chance; this counts the bar over (build, seed) pairs, so that a claim about a method is not a
claim about one build.

    .venv/bin/python benchmarks/learning_builds.py                              # builds 0-3, seeds 0-4 (~45 min)
    .venv/bin/python benchmarks/learning_builds.py --builds 1,2 --seeds 0,1     # a smaller grid

Each build (``<work>/tiny-b<B>``, its log beside it) is made in a child process, one after another; each build's
sweep is written to ``<work>/build-<B>.json`` by ``learning_seeds.py`` and the whole to ``--out`` after every build,
so an interrupted study keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # learning_seeds, bench_common, beside this script

import learning_seeds  # noqa: E402

from coop_rl.atomic_files import write_text_atomic  # noqa: E402


def build(seed: int, out: Path) -> float:
    """``coop-rl init-model tiny --seed <seed> --out <out>`` in a child process (its log at ``<out>.log``); its
    seconds. A model an earlier study left there is removed first: a study measures the build it makes."""
    from coop_rl.atomic_files import remove_folder

    if out.is_dir() and (out / "config.json").is_file() and not out.is_symlink():
        remove_folder(out)
    argv = [sys.executable, "-m", "coop_rl", "init-model", "tiny", "--seed", str(seed), "--out", str(out)]
    started = time.perf_counter()
    with open(f"{out}.log", "w") as log_file:
        status = subprocess.call(argv, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    if status != 0:
        raise SystemExit(f"learning_builds: init-model for build {seed} exited with status {status}; see {out}.log")
    return time.perf_counter() - started


def counts(runs: list[dict[str, Any]]) -> dict[str, str]:
    """Per credit: how many (build, seed) runs meet the bar, e.g. {"aa": "17/20", "naive": "12/20"}."""
    out = {}
    for credit in dict.fromkeys(run["credit"] for run in runs):
        verdicts = [bool(run["meets_bar"]) for run in runs if run["credit"] == credit]
        out[credit] = f"{sum(verdicts)}/{len(verdicts)}"
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", default="0,1,2,3", help="comma-separated seeds of init-model tiny")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated training seeds, per build")
    parser.add_argument("--matches", type=int, default=64, help="evaluation matches per opponent and seat")
    parser.add_argument("--eval-seed", type=int, default=7, help="base seed of the evaluation matches")
    parser.add_argument("--work", default="runs/learning-builds", help="where the builds and runs are kept")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "learning_builds.json"))
    args = parser.parse_args(argv)
    try:
        args.builds = [int(b) for b in args.builds.split(",") if b.strip()]
        [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error("--builds and --seeds take comma-separated integers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {**learning_seeds.report_header("learning_builds.py", argv), "builds": []}
    runs: list[dict[str, Any]] = []
    for seed in args.builds:
        model = work / f"tiny-b{seed}"
        build_s = build(seed, model)
        prior = learning_seeds.evaluate_run(model, args.matches, args.eval_seed)
        print(f"build {seed}: {build_s:.0f} s; untrained prior {prior}", flush=True)
        sweep_out = work / f"build-{seed}.json"
        learning_seeds.main(
            [
                *("--seeds", args.seeds, "--set", f"model_name_or_path={model}"),
                *("--matches", str(args.matches), "--eval-seed", str(args.eval_seed)),
                *("--work", str(work / f"runs-b{seed}"), "--out", str(sweep_out)),
            ]
        )
        sweep = json.loads(sweep_out.read_text())
        build_runs = [{"build": seed, **run} for run in sweep["runs"]]
        runs += build_runs
        entry = {"build": seed, "build_s": round(build_s, 1), "prior": prior, "summary": sweep["summary"]}
        report["builds"].append({**entry, "runs": build_runs})
        report["summary"] = counts(runs)
        write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
    print("over (build, seed):", report.get("summary"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
