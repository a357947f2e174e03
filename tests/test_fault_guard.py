"""coop_rl.fault_guard: which optimizer steps are skipped, what is dropped, when the run stops (the trainer's use of
it, with real models and DeepSpeed, is in tests/test_numerical_faults.py)."""

import json

import pytest
import torch

from coop_rl.fault_guard import FaultGuard, NumericalFaultError


def model_with_grad(value: float) -> torch.nn.Module:
    model = torch.nn.Linear(2, 1)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, value)
    return model


def test_a_finite_step_passes_and_keeps_its_gradients():
    guard, model = FaultGuard(limit=3, steps_inside_backward=False), model_with_grad(0.5)
    guard.note_loss(torch.tensor(1.0))
    assert guard.check_step(model, 1) is False
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert (guard.skipped_steps, guard.consecutive) == (0, 0)


@pytest.mark.parametrize("loss,grad", [(float("nan"), 0.5), (1.0, float("inf")), (float("-inf"), float("nan"))])
def test_a_non_finite_loss_or_gradient_skips_the_step_and_drops_every_gradient(loss, grad, caplog):
    guard, model = FaultGuard(limit=3, steps_inside_backward=False), model_with_grad(grad)
    guard.note_loss(torch.tensor(1.0))
    guard.note_loss(torch.tensor(loss))  # one bad micro-batch of two is enough
    assert guard.check_step(model, 7) is True
    assert all(p.grad is None for p in model.parameters())
    assert (guard.skipped_steps, guard.consecutive) == (1, 1)
    assert "step 7: optimizer step skipped (1 in a row, stop at 3; 1 skipped in all)" in caplog.text


def test_the_limit_counts_consecutive_faults_only():
    guard = FaultGuard(limit=2, steps_inside_backward=False)
    assert guard.check_step(model_with_grad(float("nan")), 1) is True
    assert guard.check_step(model_with_grad(1.0), 2) is False  # a finite step resets the run of faults
    assert guard.check_step(model_with_grad(float("nan")), 3) is True
    with pytest.raises(NumericalFaultError, match=r"stopped at step 4: 2 consecutive .*max_consecutive_faults=2"):
        guard.check_step(model_with_grad(float("nan")), 4)
    assert guard.skipped_steps == 3


def test_under_deepspeed_the_first_fault_stops_the_run():
    guard = FaultGuard(limit=5, steps_inside_backward=True)
    with pytest.raises(NumericalFaultError, match="under DeepSpeed"):
        guard.check_step(model_with_grad(float("nan")), 1)


def test_every_process_skips_when_any_process_found_a_fault():
    guard = FaultGuard(limit=3, steps_inside_backward=False, any_process=lambda faulty: True)  # another rank's
    model = model_with_grad(1.0)
    assert guard.check_step(model, 1) is True and all(p.grad is None for p in model.parameters())


def test_under_fp16s_loss_scaler_an_overflow_is_its_own_and_a_faulty_step_is_skipped_by_it():
    model = torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    guard = FaultGuard(limit=3, steps_inside_backward=False, loss_scaled=True)
    # an overflow of the scaled gradients (the loss finite): how the scaler finds its scale, not a fault
    loss = model(torch.ones(1, 2)).sum()
    scaler.scale(loss).backward()
    for parameter in model.parameters():
        parameter.grad.fill_(float("inf"))
    guard.note_loss(loss)
    assert guard.check_step(model, 1) is False and guard.skipped_steps == 0
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 2.0**15
    # a non-finite loss is a fault: its gradients (finite here) are set to NaN, so the scaler skips the step
    optimizer.zero_grad()
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    guard.note_loss(torch.tensor(float("nan")))
    assert guard.check_step(model, 2) is True and guard.skipped_steps == 1
    scaler.step(optimizer)  # dropped gradients (None) would raise "No inf checks were recorded for this optimizer"
    scaler.update()
    assert scaler.get_scale() == 2.0**14
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert optimizer.state == {}  # no step reached AdamW


def test_a_scaler_finds_nothing_to_check_in_dropped_gradients():
    # why the guard fills the gradients with NaN under the scaler instead of dropping them
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    for parameter in model.parameters():
        parameter.grad = None
    with pytest.raises(AssertionError, match="No inf checks were recorded for this optimizer"):
        scaler.step(optimizer)


def test_the_counts_a_checkpoint_keeps_come_back_and_a_bad_file_is_one_error(tmp_path):
    from coop_rl.errors import CheckpointError

    guard = FaultGuard(limit=3, steps_inside_backward=False)
    guard.skipped_steps, guard.consecutive = 5, 2
    (tmp_path / "faults.json").write_text(json.dumps(guard.state()))
    resumed = FaultGuard(limit=3, steps_inside_backward=False)
    resumed.restore(tmp_path / "faults.json")
    assert (resumed.skipped_steps, resumed.consecutive) == (5, 2)
    for bad in ("{", "[]", '{"skipped_steps": 1}', '{"skipped_steps": "x", "consecutive": 0}'):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(CheckpointError, match="not a coop-rl fault-count file"):
            resumed.restore(tmp_path / "bad.json")
    assert (resumed.skipped_steps, resumed.consecutive) == (5, 2)
