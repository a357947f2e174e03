"""Credit-assignment micro-benchmark: compute_credit (Advantage Alignment, leave-one-out baseline) on 1024 matches
of 10 steps in seed groups of 8, best of 20 runs.

    .venv/bin/python benchmarks/credit.py

Prints milliseconds and merges {"credit_ms_1024x10": ...} into benchmarks/results.json, keeping the other keys.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from coop_rl.credit import compute_credit

RESULTS = Path(__file__).with_name("results.json")
MATCHES, STEPS, GROUP, REPEATS = 1024, 10, 8, 20


def merge_results(update: dict) -> dict:
    """Read-modify-write benchmarks/results.json: add ``update``, keep every other key."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(update)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return results


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    rewards_self = torch.randint(0, 6, (MATCHES, STEPS), generator=generator).float()
    rewards_other = torch.randint(0, 6, (MATCHES, STEPS), generator=generator).float()
    lengths = torch.randint(STEPS // 2, STEPS + 1, (MATCHES,), generator=generator)
    mask = torch.arange(STEPS).unsqueeze(0) < lengths.unsqueeze(1)
    groups = torch.arange(MATCHES) // GROUP
    kwargs = dict(method="aa", gamma=0.9, scale=5.0, beta=0.5, gamma_a=0.9, baseline="loo")
    compute_credit(rewards_self, rewards_other, mask, groups, **kwargs)  # warm up
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        compute_credit(rewards_self, rewards_other, mask, groups, **kwargs)
        times.append(time.perf_counter() - started)
    best_ms = min(times) * 1000
    print(f"compute_credit, {MATCHES} matches x {STEPS} steps, groups of {GROUP}: {best_ms:.3f} ms (best of {REPEATS})")
    merge_results({"credit_ms_1024x10": round(best_ms, 3)})


if __name__ == "__main__":
    main()
