"""The guard against non-finite losses and gradients that :class:`coop_rl.aa_trainer.AATrainer` runs around each
optimizer step.

A non-finite loss in any micro-batch, or a non-finite gradient once the iteration's micro-batches are
accumulated, skips that optimizer step: the gradients are dropped (set to None, which torch optimizers skip: no
moment update, no weight decay, weights unchanged), a warning is logged and the count of skipped steps (the metric
``fault/skipped_steps``) goes up. ``max_consecutive_faults`` faulty steps in a row raise
:class:`NumericalFaultError` before the step and before any checkpoint of it. Under DeepSpeed the engine steps
inside backward, so there the guard can only stop the run at the first fault it sees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

logger = logging.getLogger("coop_rl.trainer")  # the trainer's logger: these warnings are the run's


class NumericalFaultError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient: the run stops (no step applied)."""


class FaultGuard:
    """Counts faulty optimizer steps and drops their gradients (see the module docstring).

    ``any_process`` turns this process's verdict into the verdict of all processes (every process skips, or none
    does); ``steps_inside_backward`` is true under DeepSpeed, whose engine has stepped before the guard can look.
    """

    def __init__(
        self, limit: int, steps_inside_backward: bool, any_process: Callable[[bool], bool] = lambda faulty: faulty
    ) -> None:
        self.limit = limit
        self.steps_inside_backward = steps_inside_backward
        self.any_process = any_process
        self.skipped_steps = 0
        self.consecutive = 0
        self._loss_fault = False

    def note_loss(self, loss: torch.Tensor) -> None:
        """Record one micro-batch's loss (before the optimizer step it feeds)."""
        self._loss_fault |= not bool(torch.isfinite(loss).all())

    def check_step(self, model: torch.nn.Module, step: int) -> bool:
        """After the last micro-batch of optimizer step ``step``: whether it is skipped (its gradients dropped).
        Raises :class:`NumericalFaultError` when the run must stop."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        faulty = self._loss_fault or not all(bool(torch.isfinite(g).all()) for g in grads)
        self._loss_fault = False
        faulty = self.any_process(faulty)
        self.consecutive = self.consecutive + 1 if faulty else 0
        self.skipped_steps += faulty
        if not faulty:
            return False
        for parameter in model.parameters():
            parameter.grad = None
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
