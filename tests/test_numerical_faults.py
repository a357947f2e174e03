"""Numerical faults in training: a NaN/inf loss or gradient skips the optimizer step (weights unchanged), logs a
warning and the metric fault/skipped_steps, and max_consecutive_faults faults in a row stop the run before any
checkpoint of a faulty step is written.

Faults are real non-finite values injected into the real trainer: a subclass whose loss is multiplied by NaN on
chosen steps, or a gradient hook that turns one parameter's gradient into inf.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from transformers import TrainerCallback

# Every test here trains the tiny model (built in minutes): all slow.
pytestmark = pytest.mark.slow


def _config(tmp_path, **overrides):
    from coop_rl.aa_config import AAConfig

    settings = dict(
        output_dir=str(tmp_path / "run"), max_steps=6, matches_per_iteration=8, group_size=8,
        game_params={"rounds": 3}, constrain_answers=True, max_new_tokens=4, learning_rate=1e-3,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_steps=1, report_to="none",
        use_cpu=True, seed=0, max_consecutive_faults=3, entropy_coef=0.01,
    )  # fmt: skip
    settings.update(overrides)
    return AAConfig(**settings)


class Snapshots(TrainerCallback):
    """The trainable weights after every optimizer step (index = global step) and before the first."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.trainer = None

    def _take(self, step):
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        self.weights[step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, **kwargs):
        self._take(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self._take(state.global_step)


def _same(a, b):
    return all(torch.equal(a[n], b[n]) for n in a)


def _fault_trainer(fault_steps, kind, first_micro_batch_only=False):
    from coop_rl.aa_trainer import AATrainer

    class FaultyTrainer(AATrainer):
        """Injects a non-finite value in the iteration of optimizer step global_step + 1 when it is in fault_steps."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if kind == "grad":  # the loss stays finite; one parameter's gradient becomes inf
                parameter = next(p for p in self.model.parameters() if p.requires_grad)
                parameter.register_hook(lambda g: torch.full_like(g, math.inf) if self._faulty() else g)

        def _faulty(self):
            if first_micro_batch_only and self._micro_step % self.args.gradient_accumulation_steps != 1:
                return False
            return self.state.global_step + 1 in fault_steps

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return loss * float("nan") if kind == "loss" and self._faulty() else loss

    return FaultyTrainer


def _run(tmp_path, tiny_model_dir, fault_steps, kind, first_micro_batch_only=False, **overrides):
    snapshots = Snapshots()
    cls = _fault_trainer(set(fault_steps), kind, first_micro_batch_only)
    trainer = cls(model=str(tiny_model_dir), args=_config(tmp_path, **overrides), callbacks=[snapshots])
    snapshots.trainer = trainer
    return trainer, snapshots


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_faulty_steps_are_skipped_and_k_in_a_row_stop_the_run(kind, tmp_path, tiny_model_dir, caplog):
    from coop_rl.aa_trainer import NumericalFaultError

    # step 2 faulty (skipped), step 3 fine (counter reset), steps 4, 5, 6 faulty: the third in a row stops the run.
    trainer, snapshots = _run(tmp_path, tiny_model_dir, {2, 4, 5, 6}, kind)
    with caplog.at_level(logging.WARNING, logger="coop_rl.trainer"), pytest.raises(NumericalFaultError) as stop:
        trainer.train()
    assert "3 consecutive" in str(stop.value) and "max_consecutive_faults=3" in str(stop.value)
    assert "\n" not in str(stop.value)
    w = snapshots.weights
    assert sorted(w) == [0, 1, 2, 3, 4, 5]  # step 6 never completed
    assert not _same(w[1], w[0])  # a good step moves the weights
    assert _same(w[2], w[1])  # the faulty step 2 did not
    assert not _same(w[3], w[2])  # step 3 is good again
    assert _same(w[4], w[3]) and _same(w[5], w[3])
    final = {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert _same(final, w[3]) and all(torch.isfinite(t).all() for t in final.values())
    warnings = [r.getMessage() for r in caplog.records if "optimizer step skipped" in r.getMessage()]
    assert len(warnings) == 4
    out = tmp_path / "run"
    checkpoints = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert checkpoints == [1, 2, 3, 4, 5]  # nothing of the stopping step
    history = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())["log_history"]
    skipped = {h["step"]: h["fault/skipped_steps"] for h in history if "fault/skipped_steps" in h}
    assert skipped == {1: 0.0, 2: 1.0, 3: 1.0, 4: 2.0, 5: 3.0}
    from safetensors.torch import load_file

    saved = load_file(out / "checkpoint-5" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert json.loads((out / "checkpoint-5" / "coop_rl_faults.json").read_text()) == {
        "skipped_steps": 3, "consecutive": 2,
    }  # fmt: skip
    # a resume goes on counting: the faulty step 6 is the third in a row (it was the first, restarted from 0)
    trainer, _ = _run(tmp_path, tiny_model_dir, {6}, kind, resume_from_checkpoint=str(out / "checkpoint-5"))
    with pytest.raises(NumericalFaultError) as stop:
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-5"))
    assert "stopped at step 6: 3 consecutive" in str(stop.value)
    assert trainer._faults.skipped_steps == 4


def test_gradient_accumulation_skips_the_whole_step_when_one_micro_batch_faults(tmp_path, tiny_model_dir):
    trainer, snapshots = _run(tmp_path, tiny_model_dir, {2}, "loss", first_micro_batch_only=True, max_steps=3,
                              gradient_accumulation_steps=2, save_steps=100)  # fmt: skip
    trainer.train()
    w = snapshots.weights
    assert not _same(w[1], w[0]) and _same(w[2], w[1]) and not _same(w[3], w[2])
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(int(s["step"]) == 2 for s in state.values())  # Adam stepped twice, not three times


def test_cli_stops_with_one_line_and_exit_2(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from coop_rl.aa_trainer import AATrainer
    from coop_rl.cli import main

    original = AATrainer.compute_loss

    def nan_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return original(self, model, inputs, return_outputs, num_items_in_batch) * float("nan")

    monkeypatch.setattr(AATrainer, "compute_loss", nan_loss)
    out = tmp_path / "cli"
    argv = ["train", "--config", "recipes/ipd/aa_tiny.yaml", "--model_name_or_path", str(tiny_model_dir),
            "--output_dir", str(out), "--matches_per_iteration", "8", "--max_steps", "5", "--save_steps", "1",
            "--max_consecutive_faults", "2", "--game_params", '{"rounds": 2}']  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("coop-rl: error:")]
    assert len(errors) == 1 and "non-finite" in errors[0] and "max_consecutive_faults=2" in errors[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # step 1 skipped, step 2 stopped
    assert not (out / "model.safetensors").exists()  # no final policy saved
