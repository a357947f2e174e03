"""Data-parallel AA update vs a 1-process update on the same batch (run by tests/test_distributed.py).

``--mode ranks`` runs under ``accelerate launch`` (2 processes over gloo on CPU): each rank plays its share of the
seed groups, saves what it played, and rank 0 saves the weights after one SGD step. ``--mode single`` runs in one
process, replays the union of what the ranks played (the same batch) and saves its weights after the same step.
SGD, not Adam: Adam's first step is nearly sign(g) and would hide a wrongly scaled gradient.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import torch

from coop_rl.aa_config import AAConfig
from coop_rl.aa_trainer import AATrainer
from coop_rl.distributed import finish_distributed_run


class RecordingTrainer(AATrainer):
    """Saves each rank's rollout (turns, results, learner seats, seed groups) next to the run."""

    def _rollout(self):
        rollout = super()._rollout()
        rank = self.accelerator.process_index
        with open(Path(self.args.output_dir) / f"rollout-rank{rank}.pkl", "wb") as handle:
            pickle.dump(rollout, handle)
        return rollout


class ReplayTrainer(AATrainer):
    """Trains on the union of the ranks' rollouts instead of playing: the same batch in one process."""

    source: Path
    ranks: list[int]

    def _rollout(self):
        records, results, learner_seats, groups = [], [], [], []
        for path in [self.source / f"rollout-rank{rank}.pkl" for rank in self.ranks]:
            with open(path, "rb") as handle:
                rank_records, rank_results, rank_seats, rank_groups = pickle.load(handle)
            offset = len(results)
            for record in rank_records:
                record.match_id += offset
                records.append(record)
            results += rank_results
            learner_seats += rank_seats
            groups += rank_groups
        return records, results, learner_seats, groups


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["ranks", "single"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--source", help="the ranks' output folder (single mode)")
    parser.add_argument("--ranks", default="0,1", help="whose rollouts to replay (single mode)")
    cli = parser.parse_args()
    args = AAConfig(
        output_dir=cli.out,
        model_name_or_path=cli.model,
        game="ipd",
        game_params={"rounds": 5},
        matches_per_iteration=32,
        group_size=8,
        constrain_answers=True,
        max_new_tokens=4,
        entropy_coef=0.01,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    trainer_class = RecordingTrainer if cli.mode == "ranks" else ReplayTrainer
    trainer_class.source = Path(cli.source) if cli.source else Path(cli.out)
    trainer_class.ranks = [int(rank) for rank in cli.ranks.split(",")]
    trainer = trainer_class(model=cli.model, args=args)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        update = {n: p.detach() - before[n] for n, p in model.named_parameters()}
        torch.save(update, Path(cli.out) / f"update-{cli.mode}.pt")
        info = {"num_processes": trainer.accelerator.num_processes, "log_history": trainer.state.log_history}
        (Path(cli.out) / f"info-{cli.mode}.json").write_text(json.dumps(info))
    finish_distributed_run(trainer.accelerator)  # as `coop-rl train` does: a rank exiting plainly may abort


if __name__ == "__main__":
    main()
