"""The guard against non-finite losses and gradients that :class:`coop_rl.aa_trainer.AATrainer` runs around each
optimizer step.

A non-finite loss in any micro-batch, or a non-finite gradient once the iteration's micro-batches are
accumulated, skips that optimizer step: the gradients are dropped (set to None, which torch optimizers skip: no
moment update, no weight decay, weights unchanged), a warning is logged and the count of skipped steps (the metric
``fault/skipped_steps``) goes up. ``max_consecutive_faults`` faulty steps in a row raise
:class:`NumericalFaultError` before the step and before any checkpoint of it. Under DeepSpeed the engine steps
inside backward, so there the guard can only stop the run at the first fault it sees, and it sees a non-finite loss
only (the engine has applied and cleared the gradients by then).

Under fp16 mixed precision a loss scaler (torch's ``GradScaler``) steps the optimizer: a step whose scaled
gradients overflow is how it finds its scale (it skips the step and halves the scale), not a fault, so there only
a non-finite loss is one. The scaler skips only what it sees: a faulty step's gradients are set to NaN for it, not
dropped (a scaler that finds no gradient to check raises "No inf checks were recorded for this optimizer").

The counts are part of each checkpoint (:meth:`FaultGuard.state`, in ``FAULTS_FILE``): a resumed run goes on
counting where it stopped, its consecutive run included.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from coop_rl.errors import CheckpointError

logger = logging.getLogger("coop_rl.trainer")  # the trainer's logger: these warnings are the run's
FAULTS_FILE = "coop_rl_faults.json"  # in each checkpoint: FaultGuard.state()


class NumericalFaultError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient: the run stops (no step applied)."""


class FaultGuard:
    """Counts faulty optimizer steps and drops their gradients (see the module docstring).

    ``any_process`` turns this process's verdict into the verdict of all processes (every process skips, or none
    does); ``steps_inside_backward`` is true under DeepSpeed, whose engine has stepped before the guard can look;
    ``loss_scaled`` is true under fp16's loss scaler, which skips the steps the guard marks.
    """

    def __init__(
        self,
        limit: int,
        steps_inside_backward: bool,
        any_process: Callable[[bool], bool] = lambda faulty: faulty,
        loss_scaled: bool = False,
    ) -> None:
        self.limit = limit
        self.steps_inside_backward = steps_inside_backward
        self.loss_scaled = loss_scaled
        self.any_process = any_process
        self.skipped_steps = 0
        self.consecutive = 0
        self._loss_fault = False

    def state(self) -> dict[str, int]:
        """The counts a checkpoint keeps (JSON-ready)."""
        return {"skipped_steps": self.skipped_steps, "consecutive": self.consecutive}

    def restore(self, path: str | Path) -> None:
        """Go on from the :meth:`state` a checkpoint's ``FAULTS_FILE`` at ``path`` holds."""
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
            skipped, consecutive = int(state["skipped_steps"]), int(state["consecutive"])
        except (OSError, ValueError, KeyError, TypeError):
            expected = "expected skipped_steps and consecutive"
            raise CheckpointError(f"{path}: not a coop-rl fault-count file ({expected})") from None
        self.skipped_steps, self.consecutive = skipped, consecutive

    def note_loss(self, loss: torch.Tensor) -> None:
        """Record one micro-batch's loss (before the optimizer step it feeds)."""
        self._loss_fault |= not bool(torch.isfinite(loss).all())

    def check_step(self, model: torch.nn.Module, step: int) -> bool:
        """After the last micro-batch of optimizer step ``step``: whether it is skipped (its gradients dropped).
        Raises :class:`NumericalFaultError` when the run must stop."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        overflow = not self.loss_scaled and not all(bool(torch.isfinite(g).all()) for g in grads)
        faulty = self.any_process(self._loss_fault or overflow)
        self._loss_fault = False
        self.consecutive = self.consecutive + 1 if faulty else 0
        self.skipped_steps += faulty
        if not faulty:
            return False
        for parameter in model.parameters():
            if not self.loss_scaled:
                parameter.grad = None
            elif parameter.grad is not None:
                parameter.grad.fill_(float("nan"))  # the scaler sees an overflow and skips the step
        logger.warning(
            "non-finite loss or gradient in the iteration of step %d: optimizer step skipped (%d in a row, stop at "
            "%d; %d skipped in all)", step, self.consecutive, self.limit, self.skipped_steps,
        )  # fmt: skip
        if self.steps_inside_backward:  # DeepSpeed stepped inside backward: stop before it is checkpointed
            raise NumericalFaultError(
                f"stopped at step {step}: a non-finite loss or gradient under DeepSpeed, which steps inside "
                "backward (the step cannot be skipped); no checkpoint of it written"
            )
        if self.consecutive >= self.limit:
            raise NumericalFaultError(
                f"stopped at step {step}: {self.consecutive} consecutive optimizer steps with a non-finite "
                f"loss or gradient (max_consecutive_faults={self.limit}); no step of them was applied and no "
                "checkpoint of them written"
            )
        return True
