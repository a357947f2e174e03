"""The loss terms (coop_rl/loss.py) against small cases computed by hand (docs/algorithm.md, "The loss")."""

from __future__ import annotations

import math

import pytest
import torch

from coop_rl.loss import (
    clip_binds,
    k3_kl,
    loss_metrics,
    masked_token_mean,
    merge_identical_turns,
    ppo_term,
    reinforce_term,
    token_entropy,
    token_loss,
)

T_, F_ = True, False
E = math.e


def approx(values, rel=1e-6, abs=1e-7):
    return pytest.approx(values, rel=rel, abs=abs)


def flat(x: torch.Tensor) -> list[float]:
    return x.reshape(-1).tolist()


# Two rows of two tokens; row 1's first token is padding (NaN and inf there must not leak, in value or gradient).
MASK = torch.tensor([[T_, T_], [F_, T_]])
SAMPLER = torch.tensor([[-1.0, -1.5], [math.inf, -1.9]])
CREDIT = torch.tensor([2.0, -1.0])


def logprobs() -> torch.Tensor:
    return torch.tensor([[-1.0, -0.5], [math.nan, -2.0]], requires_grad=True)


# ---------------------------------------------------------------------------------------------------- REINFORCE
def test_reinforce_values_and_gradient():
    lp = logprobs()
    term = reinforce_term(lp, SAMPLER, CREDIT, MASK, is_clip=2.0)
    # (0,0): ratio e^0 = 1 -> -2 * 1 * -1 = 2.  (0,1): ratio e^1 = 2.718 truncated to 2 -> -2 * 2 * -0.5 = 2.
    # (1,1): ratio e^-0.1 = 0.904837 -> -(-1) * 0.904837 * -2 = -1.809675.  (1,0): padding -> 0.
    assert flat(term) == approx([2.0, 2.0, 0.0, -2 * math.exp(-0.1)])
    assert flat(term) == approx([2.0, 2.0, 0.0, -1.8096748])
    term.sum().backward()
    # rho is detached: d/d log pi = -C * rho;  padding gets exactly 0 (not NaN)
    assert flat(lp.grad) == approx([-2.0, -4.0, 0.0, math.exp(-0.1)])
    assert lp.grad[1, 0].item() == 0.0


def test_reinforce_later_pass_is_the_importance_weighted_gradient():
    # num_iterations > 1 with reinforce: after an update log pi moved off the sampler's; the gradient of the token
    # is then -C * min(pi / pi_sampler, is_clip), the off-policy policy gradient (truncated), never -C alone.
    sampler = torch.tensor([[-1.0, -1.0, -1.0]])
    lp = torch.tensor([[-1.0 + math.log(0.5), -1.0 + math.log(1.5), -1.0 + math.log(3.0)]], requires_grad=True)
    reinforce_term(lp, sampler, torch.tensor([1.0]), torch.ones(1, 3, dtype=torch.bool), is_clip=2.0).sum().backward()
    assert flat(lp.grad) == approx([-0.5, -1.5, -2.0])


# ---------------------------------------------------------------------------------------------------------- PPO
# One token per row, old logprob -1, ratios r and credits C chosen so each case of the clip shows (clip 0.2):
RATIOS = [1.5, 0.5, 0.5, 1.5, 1.1]
CREDITS = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
OLD = torch.full((5, 1), -1.0)
ONE = torch.ones(5, 1, dtype=torch.bool)


def ppo_logprobs(ratios=RATIOS) -> torch.Tensor:
    return torch.tensor([[-1.0 + math.log(r)] for r in ratios], requires_grad=True)


def test_ppo_clip_binds_for_positive_and_negative_credit():
    lp = ppo_logprobs()
    term = ppo_term(lp, OLD, CREDITS, ONE, clip=0.2)
    expected = [
        -min(1.5 * 1, 1.2 * 1),  # C > 0, r > 1.2: clipped, -1.2
        -min(0.5 * 1, 0.8 * 1),  # C > 0, r < 0.8: min keeps r C, -0.5
        -min(0.5 * -1, 0.8 * -1),  # C < 0, r < 0.8: clipped, 0.8
        -min(1.5 * -1, 1.2 * -1),  # C < 0, r > 1.2: min keeps r C, 1.5
        -min(1.1 * 2, 1.1 * 2),  # inside the range: -2.2
    ]
    assert expected == approx([-1.2, -0.5, 0.8, 1.5, -2.2])
    assert flat(term) == approx(expected)
    term.sum().backward()
    # d/d log pi = -C * r where the unclipped term is the min, 0 where the clip binds
    assert flat(lp.grad) == approx([0.0, -0.5, 0.0, 1.5, -2.2])
    binds = clip_binds(lp, OLD, CREDITS, ONE, loss_type="ppo", is_clip=2.0, ppo_clip=0.2)
    assert flat(binds) == [True, False, True, False, False]
    assert flat(clip_binds(lp, OLD, CREDITS, ONE, loss_type="reinforce", is_clip=1.4, ppo_clip=0.2)) == [
        True, False, False, True, False,
    ]  # fmt: skip


def test_ppo_at_ratio_one_has_the_reinforce_gradient_and_padding_is_zero():
    lp_ppo, lp_pg = logprobs(), logprobs()
    sampler = torch.tensor([[-1.0, -0.5], [math.inf, -2.0]])  # the first pass: pi_theta = pi_sampler
    ppo = ppo_term(lp_ppo, sampler, CREDIT, MASK, clip=0.2)
    pg = reinforce_term(lp_pg, sampler, CREDIT, MASK, is_clip=2.0)
    assert flat(ppo) == approx([-2.0, -2.0, 0.0, 1.0])  # -C * r with r = 1
    ppo.sum().backward()
    pg.sum().backward()
    assert flat(lp_ppo.grad) == approx(flat(lp_pg.grad)) and flat(lp_ppo.grad) == approx([-2.0, -2.0, 0.0, 1.0])


# ------------------------------------------------------------------------------------------------- merge rule
def _rows_loss(rows, loss_type, ratio):
    """Summed per-token loss of merged rows over one 1-token turn whose ratio to the sampler is ``ratio``."""
    lp = torch.full((len(rows), 1), -1.0 + math.log(ratio), requires_grad=True)
    credit = torch.tensor([row["credit"] for row in rows])
    count = torch.tensor([float(row["count"]) for row in rows])
    old = torch.tensor([row["sampler_logprobs"] for row in rows])
    mask = torch.ones(len(rows), 1, dtype=torch.bool)
    loss = token_loss(lp, old, credit, count, mask, torch.zeros(len(rows), 1), loss_type=loss_type, is_clip=2.0,
                      ppo_clip=0.2).sum()  # fmt: skip
    loss.backward()
    return loss.item(), lp.grad.sum().item()  # the same token in every row: their gradients add up


@pytest.mark.parametrize("ratio", [0.5, 1.0, 1.5])
def test_ppo_merge_of_same_sign_credits_is_exact(ratio):
    # sum_k min(r C_k, clip(r) C_k) = min(r sum C_k, clip(r) sum C_k) when the C_k share a sign
    for credits in ([0.7, 1.3], [-0.7, -1.3, 0.0]):
        turns = [([1, 2], [7], [-1.0], c) for c in credits]
        single = _rows_loss([dict(prompt_ids=[1, 2], completion_ids=[7], sampler_logprobs=[-1.0], credit=c,
                                  count=1) for c in credits], "ppo", ratio)  # fmt: skip
        merged_rows = merge_identical_turns(turns, by_sign=True)
        assert len(merged_rows) == 1 and merged_rows[0]["credit"] == approx(sum(credits))
        assert _rows_loss(merged_rows, "ppo", ratio) == approx(single)


def test_ppo_merge_across_signs_would_not_be_exact_so_it_is_not_done():
    credits, ratio = [2.0, -1.0], 1.5
    turns = [([1, 2], [7], [-1.0], c) for c in credits]
    single = _rows_loss([dict(prompt_ids=[1, 2], completion_ids=[7], sampler_logprobs=[-1.0], credit=c, count=1)
                         for c in credits], "ppo", ratio)  # fmt: skip
    # per turn: -min(1.5 * 2, 1.2 * 2) = -2.4 (clipped, gradient 0) and -min(1.5 * -1, 1.2 * -1) = 1.5 (gradient 1.5)
    assert single == approx((-2.4 + 1.5, 1.5))
    across = merge_identical_turns(turns)  # the REINFORCE merge: one row of credit 1
    assert len(across) == 1 and _rows_loss(across, "ppo", ratio) == approx((-1.2, 0.0))  # not the same
    by_sign = merge_identical_turns(turns, by_sign=True)
    assert [(row["credit"], row["count"]) for row in by_sign] == [(2.0, 1), (-1.0, 1)]
    assert _rows_loss(by_sign, "ppo", ratio) == approx(single)
    # REINFORCE is linear in credit: merging across signs is exact
    assert _rows_loss(across, "reinforce", ratio) == approx(
        _rows_loss([dict(row, credit=c, count=1) for row, c in zip(across * 2, credits, strict=True)], "reinforce",
                   ratio)
    )  # fmt: skip


# -------------------------------------------------------------------------------------------------- KL, entropy
def test_k3_values_gradient_and_padding():
    lp = torch.tensor([[-1.0, -2.0], [math.nan, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0], [math.inf, -1.0]])
    kl = k3_kl(lp, ref, MASK)
    # d = ref - log pi: 0, 1, (padding), -0.5;  k3 = e^d - 1 - d
    assert flat(kl) == approx([0.0, E - 2, 0.0, math.exp(-0.5) - 0.5])
    kl.sum().backward()
    assert flat(lp.grad) == approx([0.0, 1 - E, 0.0, 1 - math.exp(-0.5)])  # d k3 / d log pi = 1 - e^d


def test_k3_estimates_kl_theta_ref_and_its_gradient_follows_kl_ref_theta():
    """docs/algorithm.md, "Which KL": on samples from pi_theta, not re-weighted, the k3 term has mean
    KL(pi_theta || pi_ref) and gradient grad KL(pi_ref || pi_theta) (checked exactly, summing over a vocabulary)."""
    logits = torch.tensor([0.3, -1.2, 2.0, 0.1], dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.tensor([1.0, 0.5, -0.5, 0.0], dtype=torch.float64), dim=0)
    logp = torch.log_softmax(logits, dim=0)
    p, p_ref = logp.exp(), ref_logp.exp()
    everything = torch.ones(1, 4, dtype=torch.bool)
    k3 = k3_kl(logp[None], ref_logp[None], everything)[0]
    expected = (p.detach() * k3).sum()  # E_{y ~ pi_theta}[k3(y)], the sampling weights not differentiated
    assert expected.item() == approx((p * (logp - ref_logp)).sum().item())  # KL(pi_theta || pi_ref)
    expected.backward()
    # grad KL(pi_ref || pi_theta) = grad(-sum p_ref log p_theta) = p_theta - p_ref for softmax logits
    assert flat(logits.grad) == approx(flat(p - p_ref), rel=1e-9, abs=1e-12)
    fresh = torch.log_softmax(logits, dim=0)
    theta_ref = torch.autograd.grad((fresh.exp() * (fresh - ref_logp)).sum(), logits)[0]  # grad KL(theta || ref)
    assert not torch.allclose(logits.grad, theta_ref)


def test_token_entropy_with_and_without_a_constrained_support():
    uniform = torch.log(torch.full((1, 1, 4), 0.25))
    assert token_entropy(uniform).item() == approx(math.log(4))
    two = torch.tensor([[[-math.inf, -math.inf, math.log(0.5), math.log(0.5)]]])
    assert token_entropy(two).item() == approx(math.log(2))  # -inf entries count 0: no NaN
    assert token_entropy(torch.tensor([[0.0, -math.inf]])).tolist() == [0.0]


def test_masked_token_mean_weights_rows_and_ignores_padding():
    values = torch.tensor([[1.0, 2.0], [3.0, math.nan]])
    mask = torch.tensor([[T_, T_], [T_, F_]])
    assert masked_token_mean(values, mask, torch.tensor([1.0, 3.0])).item() == approx((1 + 2 + 3 * 3) / (2 + 3))
    assert masked_token_mean(values, mask).item() == approx(2.0)
    assert masked_token_mean(values, mask.float()).item() == approx(2.0)  # a 0/1 float mask works alike
    assert masked_token_mean(values, torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0  # no token: 0


# ----------------------------------------------------------------------------------------------- the whole term
def test_token_loss_adds_entropy_and_kl_per_count():
    lp = logprobs()
    entropy = torch.tensor([[0.5, 1.0], [math.nan, 2.0]])
    ref = torch.tensor([[-1.0, -1.0], [math.nan, -3.0]])
    count = torch.tensor([1.0, 3.0])
    loss = token_loss(lp, SAMPLER, CREDIT, count, MASK, entropy, ref, loss_type="reinforce", is_clip=2.0,
                      entropy_coef=0.1, kl_coef=0.5)  # fmt: skip
    k3 = math.exp(-0.5) - 1 + 0.5  # (0,1): d = -1 - (-0.5) = -0.5
    k3_merged = math.exp(-1) - 1 + 1  # (1,1): d = -3 - (-2) = -1, a row standing for 3 turns: counted 3 times
    expected = [
        2.0 - 0.1 * 0.5,
        2.0 - 0.1 * 1.0 + 0.5 * k3,
        0.0,
        -2 * math.exp(-0.1) - 0.1 * 3 * 2.0 + 0.5 * 3 * k3_merged,
    ]
    assert flat(loss) == approx(expected)
    assert flat(loss) == approx([1.95, 1.9532653, 0.0, -1.8578557])
    with pytest.raises(ValueError, match="ref_logprobs"):
        token_loss(lp, SAMPLER, CREDIT, count, MASK, entropy, None, kl_coef=0.5)
    with pytest.raises(ValueError, match="loss_type"):
        token_loss(lp, SAMPLER, CREDIT, count, MASK, entropy, loss_type="dpo")


def test_loss_metrics_average_real_tokens_weighted_by_count():
    lp = logprobs()
    entropy = torch.tensor([[0.5, 1.0], [99.0, 2.0]])  # 99 at the padded position must not count
    ref = torch.tensor([[-1.0, -1.0], [-50.0, -2.0]])
    count = torch.tensor([1.0, 3.0])
    out = loss_metrics(lp, SAMPLER, CREDIT, count, MASK, entropy, ref, loss_type="reinforce", is_clip=2.0,
                       ppo_clip=0.2)  # fmt: skip
    # real tokens (0,0), (0,1) once, (1,1) three times: 5 in all
    assert out["loss/entropy"] == approx((0.5 + 1.0 + 3 * 2.0) / 5)
    assert out["loss/is_weight"] == approx((1 + E + 3 * math.exp(-0.1)) / 5)
    assert out["loss/clip_fraction"] == approx(1 / 5)  # (0,1): e > is_clip 2
    assert out["loss/kl"] == approx((0 + (math.exp(-0.5) - 0.5) + 3 * 0) / 5)
    assert "loss/kl" not in loss_metrics(lp, SAMPLER, CREDIT, count, MASK, entropy, loss_type="ppo", is_clip=2.0,
                                         ppo_clip=0.2)  # fmt: skip


def test_shape_errors():
    lp = logprobs()
    with pytest.raises(ValueError, match="mask"):
        reinforce_term(lp, SAMPLER, CREDIT, torch.ones(2, 3, dtype=torch.bool), is_clip=2.0)
    with pytest.raises(ValueError, match="credit"):
        ppo_term(lp, SAMPLER, torch.tensor([1.0, 2.0, 3.0]), MASK, clip=0.2)
    with pytest.raises(ValueError, match="loss_type"):
        clip_binds(lp, SAMPLER, CREDIT, MASK, loss_type="a2c", is_clip=2.0, ppo_clip=0.2)
