"""Credit-assignment micro-benchmark: compute_credit (Advantage Alignment, leave-one-out baseline) on 1024 matches
of 10 steps in seed groups of 8.

    .venv/bin/python benchmarks/credit.py

Prints the median and best milliseconds; ``benchmarks/run_all.py`` (``make bench``) writes them to
benchmarks/results.json.
"""

from __future__ import annotations

import statistics
import time

import torch

from coop_rl.credit import compute_credit

MATCHES, STEPS, GROUP, REPEATS = 1024, 10, 8, 50
KWARGS = dict(method="aa", gamma=0.9, scale=5.0, beta=0.5, gamma_a=0.9, baseline="loo")


def credit_inputs() -> tuple[torch.Tensor, ...]:
    """Random rewards of both seats, ragged lengths (a mask) and seed groups, seeded."""
    generator = torch.Generator().manual_seed(0)
    rewards_self = torch.randint(0, 6, (MATCHES, STEPS), generator=generator).float()
    rewards_other = torch.randint(0, 6, (MATCHES, STEPS), generator=generator).float()
    lengths = torch.randint(STEPS // 2, STEPS + 1, (MATCHES,), generator=generator)
    mask = torch.arange(STEPS).unsqueeze(0) < lengths.unsqueeze(1)
    groups = torch.arange(MATCHES) // GROUP
    return rewards_self, rewards_other, mask, groups


def time_credit(rewards_self, rewards_other, mask, groups, repeats: int = REPEATS) -> list[float]:
    """Seconds of each of ``repeats`` calls, after one warm-up call."""
    compute_credit(rewards_self, rewards_other, mask, groups, **KWARGS)  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        compute_credit(rewards_self, rewards_other, mask, groups, **KWARGS)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    times = [t * 1000 for t in time_credit(*credit_inputs())]
    print(
        f"compute_credit, {MATCHES} matches x {STEPS} steps, groups of {GROUP}: "
        f"median {statistics.median(times):.3f} ms, best {min(times):.3f} ms ({REPEATS} runs)"
    )


if __name__ == "__main__":
    main()
