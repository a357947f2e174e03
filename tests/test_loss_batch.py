"""The loss's tensors (coop_rl/loss_batch.py): the batch layout (flat, and the prompt tree), the constrained support,
and token log-probs that run the rows' shared prompt prefix and each distinct prompt once yet equal running each row
whole. A small random Qwen2 built from its config is the model (fast: no tiny-model build)."""

from __future__ import annotations

import math

import pytest
import torch

from coop_rl.loss import token_entropy
from coop_rl.loss_batch import batch_rows, constrained_support, token_logprobs

from helpers import small_qwen2

PREFIX = list(range(10, 20))  # a common opening of 10 tokens (the rules, in a real prompt)


def _rows():
    return [
        {"prompt_ids": PREFIX + [30, 31], "completion_ids": [40, 41, 42], "sampler_logprobs": [-1.0, -2.0, -3.0],
         "credit": 0.5, "count": 2, "allowed": None},
        {"prompt_ids": PREFIX + [32], "completion_ids": [43], "sampler_logprobs": [-4.0], "credit": -1.0,
         "count": 1, "allowed": [[43, 44]]},
    ]  # fmt: skip


def test_rows_share_their_prefix_and_end_at_the_last_column():
    batch = batch_rows(_rows(), pad_id=0, vocab=64, share_prefix=True)
    # the prefix stops before the shortest prompt's last token (11 tokens: at most 10 shared)
    assert batch["prefix_length"] == 10 and batch["window"] == 3
    assert batch["stem_width"] == 0 and batch["stem_index"] is None  # two prompts, two rows: no stem level
    assert batch["input_ids"].tolist() == [PREFIX + [30, 31, 40, 41, 42], PREFIX + [0, 0, 0, 32, 43]]
    assert batch["attention_mask"].tolist() == [[1] * 15, [1] * 10 + [0, 0, 0, 1, 1]]
    assert batch["completion_mask"].tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    assert batch["sampler_logprobs"].tolist() == [[-1.0, -2.0, -3.0], [0.0, 0.0, -4.0]]
    assert batch["credit"].tolist() == [0.5, -1.0] and batch["count"].tolist() == [2.0, 1.0]
    support = batch["support"]
    assert support.shape == (2, 3, 64) and support[0].all() and support[1, :2].all()
    assert support[1, 2].nonzero().flatten().tolist() == [43, 44]
    plain = batch_rows(_rows(), pad_id=0, vocab=64, share_prefix=False)
    assert plain["prefix_length"] == 0  # plain left padding
    assert plain["input_ids"].tolist() == [PREFIX + [30, 31, 40, 41, 42], [0, 0, 0] + PREFIX + [32, 43]]


def _tree_rows(opening=PREFIX):
    """Three answers to one prompt (one of them shorter) and one answer to another: two stems."""
    first, second = opening + [30, 31, 33], PREFIX + [32, 33]
    answers = [(first, [40, 41]), (first, [42]), (first, [43, 44]), (second, [45, 46])]
    return [
        {"prompt_ids": prompt, "completion_ids": completion, "sampler_logprobs": [-1.0] * len(completion),
         "credit": 1.0, "count": 1, "allowed": None}
        for prompt, completion in answers
    ]  # fmt: skip


def test_rows_of_one_prompt_share_its_stem():
    batch = batch_rows(_tree_rows(), pad_id=0, vocab=64, share_prefix=True)
    assert (batch["prefix_length"], batch["stem_width"], batch["window"]) == (10, 2, 2)
    assert batch["stem_index"].tolist() == [0, 0, 0, 1] and batch["stem_rows"].tolist() == [0, 3]
    # prefix | stem (the prompt but its last token, right-aligned) | tail (last prompt token + answer, right-aligned)
    assert batch["input_ids"].tolist() == [
        PREFIX + [30, 31] + [33, 40, 41],
        PREFIX + [30, 31] + [0, 33, 42],
        PREFIX + [30, 31] + [33, 43, 44],
        PREFIX + [0, 32] + [33, 45, 46],
    ]
    assert batch["attention_mask"].tolist() == [
        [1] * 15, [1] * 12 + [0, 1, 1], [1] * 15, [1] * 10 + [0, 1, 1, 1, 1]
    ]  # fmt: skip
    assert batch["completion_mask"].tolist() == [[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    # 2 stems x 2 + 4 tails x 3 = 16 positions against 4 rows x 5 flat: the tree is cheaper, so it is used


def test_constrained_support_restricts_only_the_constrained_positions():
    rows = [{"allowed": [[5, 7], []]}, {"allowed": None}, {}]
    support = constrained_support(rows, window=3, vocab=10)
    expected = torch.ones(3, 3, 10, dtype=torch.bool)
    expected[0, 1] = False
    expected[0, 1, [5, 7]] = True  # completion position 0 of a 2-token answer is column 1 of the window
    assert torch.equal(support, expected)
    assert constrained_support([{"allowed": None}, {}], window=3, vocab=10) is None


def _model():
    return small_qwen2()


def _whole_row_logprobs(model, row):
    """log pi of each completion token from one forward pass over that row alone."""
    ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
    log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    start = len(row["prompt_ids"])
    return log_probs[start - 1 : -1].gather(-1, ids[0, start:, None]).squeeze(-1)


@pytest.mark.parametrize("share", [True, False])
def test_token_logprobs_equal_running_each_row_whole(share):
    model = _model()
    rows = _rows()
    rows[1]["allowed"] = None  # the free policy here; the support below
    batch = batch_rows(rows, pad_id=0, vocab=64, share_prefix=share)
    logprobs, entropy = token_logprobs(model, batch)
    assert logprobs.shape == entropy.shape == (2, 3)
    (logprobs * batch["completion_mask"]).sum().backward()
    gradient = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    expected = [_whole_row_logprobs(model, row) for row in rows]
    assert torch.allclose(logprobs[0], expected[0], atol=1e-5) and torch.allclose(
        logprobs[1, 2:], expected[1], atol=1e-5
    )
    sum(e.sum() for e in expected).backward()
    whole = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert (gradient - whole).abs().max() <= 1e-4 * whole.abs().max()


@pytest.mark.parametrize("opening", [PREFIX, [5] + PREFIX[1:]], ids=["prefix", "no-common-prefix"])
def test_prompt_tree_logprobs_and_gradient_equal_running_each_row_whole(opening):
    model = _model()
    rows = _tree_rows(opening)
    batch = batch_rows(rows, pad_id=0, vocab=64, share_prefix=True)
    assert batch["stem_width"] > 0 and batch["prefix_length"] == (10 if opening == PREFIX else 0)
    logprobs, _ = token_logprobs(model, batch)
    (logprobs * batch["completion_mask"]).sum().backward()
    gradient = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    expected = [_whole_row_logprobs(model, row) for row in rows]
    for i, row in enumerate(rows):
        assert torch.allclose(logprobs[i, 2 - len(row["completion_ids"]) :], expected[i], atol=1e-5)
    sum(e.sum() for e in expected).backward()
    whole = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert (gradient - whole).abs().max() <= 1e-4 * whole.abs().max()


def test_constrained_token_logprobs_are_renormalised_over_the_support():
    model = _model()
    rows = _rows()  # row 1's one answer token is restricted to {43, 44}
    batch = batch_rows(rows, pad_id=0, vocab=64, share_prefix=True)
    with torch.no_grad():
        logprobs, entropy = token_logprobs(model, batch)
        ids = torch.tensor([rows[1]["prompt_ids"]])
        free = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    p43, p44 = free[43].exp(), free[44].exp()
    assert math.isclose(logprobs[1, 2].item(), math.log(p43 / (p43 + p44)), abs_tol=1e-5)
    q = torch.stack([p43, p44]) / (p43 + p44)
    assert math.isclose(entropy[1, 2].item(), -(q * q.log()).sum().item(), abs_tol=1e-5)
    assert entropy[1, 2] <= math.log(2) + 1e-6
    assert torch.allclose(entropy[0], token_entropy(torch.log_softmax(_free_logits(model, rows[0]), -1)), atol=1e-5)


def _free_logits(model, row):
    ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, len(row["prompt_ids"]) - 1 : -1].float()
