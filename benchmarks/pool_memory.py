"""Peak memory of a LoRA training run whose opponent pool holds 8 past learners, against a self-play run: under
``use_peft`` a pool entry is a LoRA adapter on the one live model (coop_rl/opponents.py), not a copy of it, so the
two peaks must lie within 10% of each other.

    .venv/bin/python benchmarks/pool_memory.py [--model runs/tiny] [--repeats 1]

Each case runs in its own child process (this script with ``--case``), side by side in one run, alternating
(self-play, pool, self-play, pool, ...) when repeated; a child reads its own peak RSS (``ru_maxrss``, the kernel's
high-water mark) at its end:

- ``self_play``: recipes/ipd/aa_tiny.yaml with LoRA (r 8), 16 matches of 3 rounds per iteration, 8 iterations;
- ``pool``: the same with ``opponent: pool``, ``pool_every: 1``, ``pool_size: 8``, ``pool_prob: 1`` (every group
  meets a past learner): 8 entries after the 8 iterations.

After training, both play 4 more matches per entry: the pool case against each of its 8 entries (all 8 loaded at
once: the case the bar is about), self-play against itself. The pool child also reports the bytes its entries'
adapters hold on the live model and the bytes one copy of the model would take (what an entry cost before).
Writes benchmarks/pool_memory.json with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coop_rl.atomic_files import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
RECIPE = ROOT / "recipes" / "ipd" / "aa_tiny.yaml"
ENTRIES, ITERATIONS, MATCHES, ROUNDS = 8, 8, 16, 3
CASES = ("self_play", "pool")
BAR = 1.10


def run_case(case: str, model: str, work: str) -> dict[str, Any]:
    """Train the case, play every entry, return the peak RSS of this process (MB) and the pool's sizes."""
    import yaml

    from coop_rl.aa_config import AAConfig
    from coop_rl.aa_trainer import AATrainer
    from coop_rl.runner import run_matches

    settings = yaml.safe_load(RECIPE.read_text())
    settings.update(
        model_name_or_path=model, output_dir=work, use_peft=True, lora_r=8, lora_alpha=16, max_steps=ITERATIONS,
        matches_per_iteration=MATCHES, group_size=2, game_params={"rounds": ROUNDS}, save_strategy="no",
        logging_steps=ITERATIONS, report_to="none", disable_tqdm=True,
    )  # fmt: skip
    if case == "pool":
        settings.update(opponent="pool", pool_every=1, pool_size=ENTRIES, pool_prob=1.0)
    trainer = AATrainer(model=model, args=AAConfig(**settings))
    trainer.train()
    live = trainer._live_player()
    opponents = [trainer.opponents.pool_player(i) for i in range(len(trainer.opponents.pool))] or [live] * ENTRIES
    for opponent in opponents:
        run_matches("ipd", {"rounds": ROUNDS}, [live, opponent], matches=4)
    model_state = trainer.accelerator.unwrap_model(trainer.model).named_parameters()
    parameters = [(name, p.numel() * p.element_size()) for name, p in model_state]
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "pool_entries": len(trainer.opponents.pool),
        "pool_adapter_bytes": sum(size for name, size in parameters if ".pool" in name),
        "model_copy_bytes": sum(size for name, size in parameters if "lora_" not in name),
    }


def child(case: str, model: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="coop_rl_pool_memory_") as work:
        command = [sys.executable, str(Path(__file__).resolve()), "--case", case, "--model", model, "--work", work]
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "runs" / "tiny"), help="the tiny model (coop-rl init-model)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(BENCH_DIR / "pool_memory.json"))
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # a child's one case
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.model, args.work)))
        return
    sys.path.insert(0, str(BENCH_DIR))
    from bench_common import ensure_model, interleave, machine

    model = str(ensure_model(args))  # the default runs/tiny is built when missing (a fresh clone)
    runs = interleave({case: (lambda c=case: child(c, model)) for case in CASES}, args.repeats)
    peaks = {case: round(statistics.median(r["peak_rss_mb"] for r in results), 1) for case, results in runs.items()}
    pool = runs["pool"][0]
    result = {
        "peak_rss_mb": peaks,
        "pool_vs_self_play": round(peaks["pool"] / peaks["self_play"], 3),
        "bar": BAR,
        "within_bar": peaks["pool"] <= BAR * peaks["self_play"],
        "pool_entries": pool["pool_entries"],
        "pool_adapter_bytes": pool["pool_adapter_bytes"],
        "model_copy_bytes": pool["model_copy_bytes"],
        "run": f"aa_tiny.yaml + LoRA r8, {ITERATIONS} iterations of {MATCHES} IPD matches ({ROUNDS} rounds), "
        f"then 4 matches against each of {ENTRIES} entries; {args.repeats} run(s) per case, median",
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("peak_rss_mb", "pool_vs_self_play", "within_bar", "pool_entries")}))


if __name__ == "__main__":
    main()
