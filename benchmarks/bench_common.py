"""What the benchmark scripts share: the machine they ran on, interleaved medians, the recipes and the tiny model
they measure, and a callback timing each optimizer step of a transformers Trainer."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AA_RECIPE = ROOT / "recipes" / "ipd" / "aa_tiny.yaml"
NAIVE_RECIPE = ROOT / "recipes" / "ipd" / "naive_tiny.yaml"
DEFAULT_MODEL = ROOT / "runs" / "tiny"


def machine() -> dict[str, Any]:
    """The CPU (model, the flags that matter for speed, cores, torch threads), the precision the hf backend chooses
    on it (``auto``: what every stage that does not set one ran in), load average, library versions."""
    import torch

    from coop_rl.precision import choose_precision, cpu_info, describe_cpu, precision_record

    info: dict[str, Any] = {**cpu_info(), "cpu": describe_cpu(), "python": platform.python_version()}
    info["torch"] = torch.__version__
    info["auto_precision"] = precision_record(choose_precision("cpu", "auto"))
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    return info


#: the mark of a run folder a benchmark script made (the only kind it removes)
BENCHMARK_RUN_FILE = ".coop_rl_benchmark_run"


def fresh_run_dir(run_dir: Path, script: str) -> Path:
    """An empty ``run_dir`` for a new training by ``script``: an earlier run of this script there is removed
    (``coop-rl train`` refuses to write a new run over one); a non-empty folder without the script's mark is
    refused, so that a mistyped ``--work`` or ``--runs`` never deletes the user's own runs."""
    from coop_rl.atomic_files import remove_folder, write_text_atomic

    mark = run_dir / BENCHMARK_RUN_FILE
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise SystemExit(f"{script}: {run_dir} is not a folder; choose another")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not mark.is_file() or mark.read_text(encoding="utf-8").strip() != script:
            raise SystemExit(f"{script}: {run_dir} holds files this script did not make; choose another folder")
        remove_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(mark, script + "\n")
    return run_dir


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


def ensure_model(args: Any) -> Path:
    """The tiny model directory (``--model``); built with ``init-model tiny`` when the default is missing."""
    model = Path(args.model)
    if (model / "config.json").exists():
        return model
    if model.resolve() != DEFAULT_MODEL.resolve():
        raise FileNotFoundError(f"no model at {model}")
    from coop_rl.tiny_model import init_tiny_model

    log(f"building the tiny model into {model} (coop-rl init-model tiny, ~2.5 min)")
    return init_tiny_model(model)


STAGE_METRICS = ("rollout", "credit")  # the stages AATrainer times itself


class StepTimer:
    """A TrainerCallback (built lazily: transformers is imported late) timing each optimizer step, and recording
    AATrainer's own stage times of it (run AATrainer at ``logging_steps=1``)."""

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

            def on_log(self, args, state, control, logs=None, **kwargs):
                # AATrainer logs its own stage times (time/rollout_s, time/credit_s); at logging_steps 1 each
                # logged line is the step just ended
                for name in STAGE_METRICS:
                    if self.steps and logs and f"time/{name}_s" in logs:
                        self.steps[-1][name] = logs[f"time/{name}_s"]

        return StepTimer()


def aa_config(recipe: Path, output_dir: str, **overrides: Any):
    from coop_rl.aa_config import AAConfig

    settings = load_recipe(recipe)
    settings.update(output_dir=output_dir, save_strategy="no", report_to="none", disable_tqdm=True)
    settings.update(overrides)
    return AAConfig(**settings)
