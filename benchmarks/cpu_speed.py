"""CPU speed of the tiny pipeline, side by side in one process (interleaved repeats, medians): two stages of
``benchmarks/run_all.py``.

- ``constrained``: one AA rollout of recipes/ipd/aa_tiny.yaml (128 self-play IPD matches, constrained answers) with
  the choice-trie sampler (``HFEngine._choose_batch``: each distinct prompt run once, forced tokens free) against
  ``generate()`` with the constraint's logits processor (the path before it); cooperation rates of both, to show
  they sample the same policy.
- ``precision``: one warm-start SFT step of the tiny model (64 IPD prompts with their answers) in float32 and
  under bf16 autocast, and the probe :func:`coop_rl.precision.bf16_speedup` at the tiny model's width (128) and
  SmolLM2-135M's (576): what ``precision: auto`` decides from, on this CPU.

    .venv/bin/python benchmarks/run_all.py --stages constrained,precision
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any


def constrained_rollout(model: Path, matches: int, repeats: int) -> dict[str, Any]:
    """Seconds of one rollout of ``matches`` self-play IPD matches, trie sampler vs generate(); medians."""
    from bench_common import interleave  # the sibling module

    from coop_rl.players.hf import HFPlayer
    from coop_rl.runner import run_matches

    player = HFPlayer(f"hf:{model}", constrain=True)
    seeds = iter(range(1, 10_000))

    def rollout(trie: bool):
        def play() -> tuple[float, float]:
            player.engine.choice_sampler = trie
            started = time.perf_counter()
            results = run_matches("ipd", {}, [player, player], matches=matches, seed=next(seeds), group_size=8)
            seconds = time.perf_counter() - started
            cooperation = statistics.mean(statistics.mean(r.metrics["cooperation_rate"]) for r in results)
            return seconds, cooperation

        return play

    run_matches("ipd", {}, [player, player], matches=8, seed=0)  # warm up
    samples = interleave({"trie": rollout(True), "generate": rollout(False)}, repeats)
    seconds = {name: statistics.median(s for s, _ in runs) for name, runs in samples.items()}
    cooperation = {name: round(statistics.mean(c for _, c in runs), 3) for name, runs in samples.items()}
    return {
        "constrained_rollout_s": {name: round(value, 3) for name, value in seconds.items()},
        "constrained_trie_vs_generate": round(seconds["generate"] / seconds["trie"], 2),
        "constrained_cooperation_rate": cooperation,
        "constrained_matches": matches,
    }


def precision_step(model: Path, repeats: int) -> dict[str, Any]:
    """Seconds of one forward+backward of a 64-example warm-start batch, float32 vs bf16 autocast; the probe."""
    import torch
    from bench_common import interleave
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from coop_rl.precision import bf16_speedup, choose_precision, has_native_bf16
    from coop_rl.warm_start import collect_examples

    tokenizer = AutoTokenizer.from_pretrained(model)
    network = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    examples = [e for e in collect_examples(0, 0.2, games=("ipd",))][:64]
    texts = [tokenizer.apply_chat_template(e["prompt"] + e["completion"], tokenize=False) for e in examples]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def step(bf16: bool):
        def run() -> float:
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = network(**batch, labels=batch["input_ids"]).loss
            loss.backward()
            network.zero_grad()
            return time.perf_counter() - started

        return run

    step(False)(), step(True)()  # warm up both
    samples = interleave({"float32": step(False), "bfloat16": step(True)}, repeats)
    seconds = {name: statistics.median(runs) for name, runs in samples.items()}
    native = has_native_bf16()
    return {
        "precision_sft_step_s": {name: round(value, 3) for name, value in seconds.items()},
        "precision_sft_step_bf16_vs_fp32": round(seconds["float32"] / seconds["bfloat16"], 2),
        "precision_probe_bf16_speedup": {str(w): round(bf16_speedup(w), 2) if native else None for w in (128, 576)},
        "precision_auto": {str(w): choose_precision("cpu", "auto", width=w).dtype for w in (128, 576)},
        "precision_sft_batch_tokens": int(batch["attention_mask"].sum()),
    }
