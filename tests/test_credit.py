"""Credit assignment (coop_rl/credit.py) against small cases computed by hand (docs/algorithm.md 1-4)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coop_rl.credit import (
    advantage_alignment_credit,
    broadcast_to_tokens,
    compute_credit,
    discounted_returns,
    group_baseline_advantages,
    margin_credit,
    naive_credit,
    sum_of_rewards_credit,
)

T_, F_ = True, False


def approx(values, rel=1e-6, abs=1e-7):
    return pytest.approx(values, rel=rel, abs=abs)


def rows(x) -> list:
    """A tensor or nested list, flattened (pytest.approx compares flat sequences)."""
    if isinstance(x, torch.Tensor):
        return x.reshape(-1).tolist()
    return [v for item in x for v in rows(item)] if isinstance(x, (list, tuple)) else [x]


# ------------------------------------------------------------------------------------------------------ returns
def test_discounted_returns_gamma_09_scale_5():
    rewards = torch.tensor([[3.0, 1.0, 4.0], [2.0, 5.0, 99.0]])  # row 1 has 2 steps; 99 is padding
    mask = torch.tensor([[T_, T_, T_], [T_, T_, F_]])
    g = discounted_returns(rewards, mask, gamma=0.9, scale=5.0)
    assert g[0].tolist() == approx([(3 + 0.9 * 1 + 0.81 * 4) / 5, (1 + 0.9 * 4) / 5, 4 / 5])
    assert g[0].tolist() == approx([1.428, 0.92, 0.8])
    assert g[1].tolist() == approx([(2 + 0.9 * 5) / 5, 5 / 5, 0.0])
    assert g[1].tolist() == approx([1.3, 1.0, 0.0])
    assert g[1, 2].item() == 0.0  # padding comes out exactly 0


def test_discounted_returns_nan_padding_does_not_leak_and_k_axis():
    rewards = torch.tensor([[[1.0, math.nan], [2.0, math.inf]]])  # [B=1, K=2, T=2], step 1 padded
    mask = torch.tensor([[T_, F_]])
    g = discounted_returns(rewards, mask, gamma=0.5)
    assert g.tolist() == [[[1.0, 0.0], [2.0, 0.0]]]


# ---------------------------------------------------------------------------------------------------- baselines
# Five rows, two timesteps; seed groups interleaved: rows 0, 2, 4 form group 7, rows 1, 3 form group 3.
RETURNS = torch.tensor([[1.0, 0.0], [4.0, 1.0], [2.0, 3.0], [10.0, 5.0], [6.0, 3.0]])
GROUPS = torch.tensor([7, 3, 7, 3, 7])
FULL = torch.ones(5, 2, dtype=torch.bool)


def test_leave_one_out_groups_of_three_and_two():
    adv = group_baseline_advantages(RETURNS, FULL, GROUPS, mode="loo")
    # group 7 (rows 0, 2, 4): t=0 returns 1, 2, 6; t=1 returns 0, 3, 3
    assert rows(adv[0]) == approx([1 - (2 + 6) / 2, 0 - (3 + 3) / 2])  # [-3, -3]
    assert rows(adv[2]) == approx([2 - (1 + 6) / 2, 3 - (0 + 3) / 2])  # [-1.5, 1.5]
    assert rows(adv[4]) == approx([6 - (1 + 2) / 2, 3 - (0 + 3) / 2])  # [4.5, 1.5]
    # group 3 (rows 1, 3): t=0 returns 4, 10; t=1 returns 1, 5
    assert rows(adv[1]) == approx([4 - 10, 1 - 5])  # [-6, -4]
    assert rows(adv[3]) == approx([10 - 4, 5 - 1])  # [6, 4]
    assert rows(adv) == approx(rows([[-3, -3], [-6, -4], [-1.5, 1.5], [6, 4], [4.5, 1.5]]))


def test_leave_one_out_single_member_group_has_baseline_zero():
    groups = torch.tensor([7, 3, 7, 3, 42])  # row 4 alone in group 42
    adv = group_baseline_advantages(RETURNS, FULL, groups, mode="loo")
    assert rows(adv[4]) == approx([6.0, 3.0])  # A = G - 0
    assert rows(adv[0]) == approx([1 - 2, 0 - 3])  # group 7 is now rows 0 and 2 only
    assert rows(adv[2]) == approx([2 - 1, 3 - 0])


def test_leave_one_out_member_missing_a_timestep():
    # group of 3 where row 2 has only one step: at t=1 the group is rows 0 and 1
    returns = torch.tensor([[1.0, 4.0], [3.0, 2.0], [5.0, 77.0]])
    mask = torch.tensor([[T_, T_], [T_, T_], [T_, F_]])
    adv = group_baseline_advantages(returns, mask, torch.tensor([0, 0, 0]))
    assert rows(adv[:, 0]) == approx([1 - (3 + 5) / 2, 3 - (1 + 5) / 2, 5 - (1 + 3) / 2])  # [-3, 0, 3]
    assert rows(adv[:, 1]) == approx([4 - 2, 2 - 4, 0.0])  # [2, -2, 0]; padding 0


def test_batch_wide_baseline():
    adv = group_baseline_advantages(RETURNS, FULL, GROUPS, mode="batch")
    # t=0 returns 1, 4, 2, 10, 6 (sum 23); t=1 returns 0, 1, 3, 5, 3 (sum 12); baseline = (sum - own) / 4
    expected = [
        [1 - (23 - 1) / 4, 0 - (12 - 0) / 4],  # [-4.5, -3]
        [4 - (23 - 4) / 4, 1 - (12 - 1) / 4],  # [-0.75, -1.75]
        [2 - (23 - 2) / 4, 3 - (12 - 3) / 4],  # [-3.25, 0.75]
        [10 - (23 - 10) / 4, 5 - (12 - 5) / 4],  # [6.75, 3.25]
        [6 - (23 - 6) / 4, 3 - (12 - 3) / 4],  # [1.75, 0.75]
    ]
    assert rows(adv) == approx(rows(expected))
    assert rows(group_baseline_advantages(RETURNS, FULL, None, mode="batch")) == approx(rows(expected))  # groups unused


SEATS = torch.tensor([0, 0, 1, 1, 0])  # rows 0, 1, 4 in seat 0; rows 2, 3 in seat 1


def test_batch_baseline_is_per_seat():
    adv = group_baseline_advantages(RETURNS, FULL, GROUPS, mode="batch", seats=SEATS)
    # seat 0 (rows 0, 1, 4): t=0 returns 1, 4, 6; t=1 returns 0, 1, 3.  seat 1 (rows 2, 3): t=0 2, 10; t=1 3, 5
    expected = [
        [1 - (4 + 6) / 2, 0 - (1 + 3) / 2],  # [-4, -2]
        [4 - (1 + 6) / 2, 1 - (0 + 3) / 2],  # [0.5, -0.5]
        [2 - 10, 3 - 5],  # [-8, -2]
        [10 - 2, 5 - 3],  # [8, 2]
        [6 - (1 + 4) / 2, 3 - (0 + 1) / 2],  # [3.5, 2.5]
    ]
    assert rows(adv) == approx(rows(expected))
    assert rows(adv) == approx(rows([[-4, -2], [0.5, -0.5], [-8, -2], [8, 2], [3.5, 2.5]]))
    # groups play no part in it
    assert torch.equal(adv, group_baseline_advantages(RETURNS, FULL, None, mode="batch", seats=SEATS))


def test_batch_baseline_keeps_the_other_seat_of_the_same_match_out():
    # Two self-play matches, rows (match, seat) = (0, 0), (0, 1), (1, 0), (1, 1): changing seat 1's returns (in a
    # dilemma they move against seat 0's) leaves seat 0's advantages unchanged, and the other way round.
    seats = torch.tensor([0, 1, 0, 1])
    mask = torch.ones(4, 1, dtype=torch.bool)
    before = group_baseline_advantages(torch.tensor([[1.0], [5.0], [3.0], [0.0]]), mask, None, "batch", seats=seats)
    after = group_baseline_advantages(torch.tensor([[1.0], [-7.0], [3.0], [9.0]]), mask, None, "batch", seats=seats)
    assert rows(before) == approx([1 - 3, 5 - 0, 3 - 1, 0 - 5])  # [-2, 5, 2, -5]
    assert rows(after) == approx([1 - 3, -7 - 9, 3 - 1, 9 + 7])  # seat 0 unchanged: [-2, -16, 2, 16]
    pooled = group_baseline_advantages(torch.tensor([[1.0], [5.0], [3.0], [0.0]]), mask, None, "batch")
    assert rows(pooled) == approx([1 - 8 / 3, 5 - 4 / 3, 3 - 6 / 3, 0 - 9 / 3])  # without seats: one pool


def test_leave_one_out_with_seats_groups_seed_and_seat():
    adv = group_baseline_advantages(RETURNS, FULL, GROUPS, mode="loo", seats=SEATS)
    # (group 7, seat 0): rows 0, 4; rows 1 (3, 0), 2 (7, 1) and 3 (3, 1) are alone: A = G
    assert rows(adv) == approx(rows([[1 - 6, 0 - 3], [4, 1], [2, 3], [10, 5], [6 - 1, 3 - 0]]))
    # the same as seed-and-seat ids folded into one, which the trainer passed before
    assert torch.equal(adv, group_baseline_advantages(RETURNS, FULL, GROUPS * 2 + SEATS, mode="loo"))
    r_other = RETURNS.flip(0)
    for mode in ("loo", "batch"):
        with_seats = compute_credit(RETURNS, r_other, FULL, GROUPS, gamma=0.9, beta=0.5, gamma_a=0.9,
                                    baseline=mode, seats=SEATS)  # fmt: skip
        a_self = group_baseline_advantages(discounted_returns(RETURNS, FULL, 0.9), FULL, GROUPS, mode, seats=SEATS)
        a_other = group_baseline_advantages(discounted_returns(r_other, FULL, 0.9), FULL, GROUPS, mode, seats=SEATS)
        assert torch.equal(with_seats["adv_self"], a_self) and torch.equal(with_seats["adv_other"], a_other)


def test_no_baseline():
    assert rows(group_baseline_advantages(RETURNS, FULL, GROUPS, mode="none")) == rows(RETURNS)


def test_whitening_divides_by_std_of_valid_entries():
    returns = torch.tensor([[1.0, 99.0], [3.0, 99.0]])  # step 1 is padding in both rows
    mask = torch.tensor([[T_, F_], [T_, F_]])
    groups = torch.tensor([0, 0])
    raw = group_baseline_advantages(returns, mask, groups)
    assert rows(raw) == approx(rows([[1 - 3, 0.0], [3 - 1, 0.0]]))  # [-2, 2]: no std division by default
    white = group_baseline_advantages(returns, mask, groups, whiten=True)
    # valid advantages -2, 2: mean 0, population std sqrt((4 + 4) / 2) = 2 (padding would make it sqrt(2))
    assert rows(white) == approx(rows([[-2 / (2 + 1e-8), 0.0], [2 / (2 + 1e-8), 0.0]]))
    assert rows(white) == approx(rows([[-1.0, 0.0], [1.0, 0.0]]))


def test_whitening_leaves_advantages_that_are_all_equal_unscaled():
    # no baseline and the same return everywhere: std 0, and 0.3 / 1e-8 would be 3e7
    returns = torch.tensor([[0.3, 0.3], [0.3, 99.0]])
    mask = torch.tensor([[T_, T_], [T_, F_]])
    white = group_baseline_advantages(returns, mask, None, mode="none", whiten=True)
    assert torch.equal(white, torch.tensor([[0.3, 0.3], [0.3, 0.0]]))
    # a group of identical returns under the leave-one-out baseline: advantages exactly 0, and still 0
    same = group_baseline_advantages(
        torch.full((2, 2), 0.3), torch.ones(2, 2, dtype=torch.bool), torch.tensor([0, 0]), whiten=True
    )
    assert rows(same) == rows([[0.0, 0.0], [0.0, 0.0]])


# ------------------------------------------------------------------------------------------------------- credit
A_SELF = torch.tensor([[1.0, -2.0, 0.5]])
A_OTHER = torch.tensor([[0.4, 3.0, -1.0]])
MASK3 = torch.ones(1, 3, dtype=torch.bool)
# beta = 0.5, gamma_a = 0.9:  W_t = 0.9 * sum_{k<t} 0.9^(t-k) * A_k^self
w_hand = [0.0, 0.9 * 0.9 * 1.0, 0.9 * (0.9**2 * 1.0 + 0.9 * -2.0)]  # [0, 0.81, -0.891]


def test_advantage_alignment_exact_values():
    assert w_hand == approx([0.0, 0.81, -0.891])
    c = advantage_alignment_credit(A_SELF, A_OTHER, MASK3, beta=0.5, gamma_a=0.9)
    expected = [1.0 + 0.5 * w_hand[0] * 0.4, -2.0 + 0.5 * w_hand[1] * 3.0, 0.5 + 0.5 * w_hand[2] * -1.0]
    assert expected == approx([1.0, -0.785, 0.9455])
    assert rows(c[0]) == approx(expected)


def test_advantage_alignment_beta_zero_is_naive_exactly():
    c = advantage_alignment_credit(A_SELF, A_OTHER, MASK3, beta=0.0, gamma_a=0.9)
    assert torch.equal(c, naive_credit(A_SELF))
    assert torch.equal(c, A_SELF)


def test_sum_of_rewards_credit():
    assert rows(sum_of_rewards_credit(A_SELF, A_OTHER)[0]) == approx([1.0 + 0.4, -2.0 + 3.0, 0.5 - 1.0])


def test_margin_credit_exact_values():
    # C_t = A_t^self - A_t^other: [1 - 0.4, -2 - 3, 0.5 + 1]
    assert rows(margin_credit(A_SELF, A_OTHER)[0]) == approx([0.6, -5.0, 1.5])
    other = torch.tensor([[[0.4, 3.0, -1.0], [0.1, -1.0, 3.0]]])  # two co-players: summed first, [0.5, 2.0, 2.0]
    assert rows(margin_credit(A_SELF, other)[0]) == approx([1.0 - 0.5, -2.0 - 2.0, 0.5 - 2.0])
    assert rows(margin_credit(A_SELF, other)[0]) == approx([0.5, -4.0, -1.5])
    # the margin is the naive credit minus the co-players' part of the sum-of-rewards credit
    assert rows(margin_credit(A_SELF, A_OTHER)) == approx(rows(2 * A_SELF - sum_of_rewards_credit(A_SELF, A_OTHER)))
    with pytest.raises(ValueError, match="adv_self"):
        margin_credit(torch.zeros(3), A_OTHER)


def test_compute_credit_margin_is_own_minus_co_player_advantage():
    # two groups of two matches, 2 steps; match 3 has one step. gamma 0.5, scale 1, leave-one-out
    r_self = torch.tensor([[5.0, 5.0], [3.0, 1.0], [0.0, 3.0], [1.0, 7.0]])
    r_other = torch.tensor([[0.0, 0.0], [3.0, 1.0], [5.0, 3.0], [1.0, 7.0]])
    mask = torch.tensor([[T_, T_], [T_, T_], [T_, T_], [T_, F_]])
    out = compute_credit(r_self, r_other, mask, torch.tensor([0, 0, 1, 1]), method="margin", gamma=0.5, scale=1)
    # returns G_0 = r_0 + 0.5 r_1: self [7.5, 3.5, 1.5, 1], other [0, 3.5, 6.5, 1]; G_1 = r_1 (masked: 0)
    # group {0, 1}: A^self_0 = 7.5 - 3.5 = 4, A^other_0 = 0 - 3.5 = -3.5; A^self_1 = 5 - 1 = 4, A^other_1 = -1
    # group {2, 3} at t=0: A^self = 1.5 - 1 = 0.5, A^other = 6.5 - 1 = 5.5; at t=1 match 2 is alone: A = G
    expected = [
        [4.0 + 3.5, 4.0 + 1.0],  # match 0: [7.5, 5]
        [-4.0 - 3.5, -4.0 - 1.0],  # match 1: [-7.5, -5]
        [0.5 - 5.5, 3.0 - 3.0],  # match 2: [-5, 0]
        [-0.5 + 5.5, 0.0],  # match 3: [5, 0 (padded)]
    ]
    assert rows(out["credit"]) == approx(rows(expected))
    assert torch.equal(out["credit"], out["adv_self"] - out["adv_other"])
    with pytest.raises(ValueError, match="rewards_other"):
        compute_credit(r_self, None, mask, torch.tensor([0, 0, 1, 1]), method="margin", gamma=0.5)


def test_two_co_players_are_summed():
    other = torch.tensor([[[0.4, 3.0, -1.0], [0.1, -1.0, 3.0]]])  # [B=1, K=2, T=3]; sum [0.5, 2.0, 2.0]
    c = advantage_alignment_credit(A_SELF, other, MASK3, beta=0.5, gamma_a=0.9)
    assert rows(c[0]) == approx(
        [1.0 + 0.5 * w_hand[0] * 0.5, -2.0 + 0.5 * w_hand[1] * 2.0, 0.5 + 0.5 * w_hand[2] * 2.0]
    )
    assert rows(c[0]) == approx([1.0, -1.19, -0.391])
    assert rows(sum_of_rewards_credit(A_SELF, other)[0]) == approx([1.5, 0.0, 2.5])


def test_compute_credit_composes_the_steps():
    r_self = torch.tensor([[3.0, 0.0, 5.0], [5.0, 1.0, 1.0], [0.0, 3.0, 3.0], [1.0, 1.0, 0.0]])
    r_other = torch.tensor([[3.0, 5.0, 0.0], [0.0, 1.0, 1.0], [5.0, 3.0, 3.0], [1.0, 1.0, 5.0]])
    mask = torch.tensor([[T_, T_, T_], [T_, T_, T_], [T_, T_, T_], [T_, T_, F_]])
    groups = torch.tensor([0, 0, 1, 1])
    out = compute_credit(r_self, r_other, mask, groups, method="aa", gamma=0.9, scale=5, beta=0.5, gamma_a=0.9)
    g_self = discounted_returns(r_self, mask, 0.9, 5)
    g_other = discounted_returns(r_other, mask, 0.9, 5)
    a_self = group_baseline_advantages(g_self, mask, groups)
    a_other = group_baseline_advantages(g_other, mask, groups)  # the co-player's own returns, same groups
    assert torch.equal(out["returns_self"], g_self)
    assert torch.equal(out["adv_self"], a_self)
    assert torch.equal(out["adv_other"], a_other)
    assert torch.equal(out["credit"], advantage_alignment_credit(a_self, a_other, mask, 0.5, 0.9))
    # rows 0 and 1 at t=0: G_self = (3 + 0.9*0 + 0.81*5)/5 = 1.41 and (5 + 0.9*1 + 0.81*1)/5 = 1.342
    assert out["adv_self"][0, 0].item() == approx(1.41 - 1.342)
    naive = compute_credit(r_self, r_other, mask, groups, method="naive", gamma=0.9, scale=5)
    assert torch.equal(naive["credit"], a_self)
    total = compute_credit(r_self, r_other, mask, groups, method="sum", gamma=0.9, scale=5)
    assert torch.equal(total["credit"], a_self + a_other)
    assert total["credit"][3, 2].item() == 0.0


# ------------------------------------------------------------------------------------------------------ masking
def test_shorter_match_padding_contributes_nothing():
    # match 0 has 3 steps; match 1 has 2 steps and garbage (even NaN) in its padded step; separate seed groups
    r_self = torch.tensor([[3.0, 0.0, 5.0], [1.0, 4.0, math.nan]])
    r_other = torch.tensor([[3.0, 5.0, 0.0], [2.0, 2.0, 1e6]])
    mask = torch.tensor([[T_, T_, T_], [T_, T_, F_]])
    kwargs = dict(method="aa", gamma=0.9, scale=5.0, beta=0.5, gamma_a=0.9, baseline="loo")
    both = compute_credit(r_self, r_other, mask, torch.tensor([0, 1]), **kwargs)
    alone = compute_credit(
        r_self[1:, :2], r_other[1:, :2], torch.ones(1, 2, dtype=torch.bool), torch.tensor([0]), **kwargs
    )
    for key in ("returns_self", "adv_self", "adv_other", "credit"):
        assert both[key][1, :2].tolist() == approx(alone[key][0].tolist())
        assert both[key][1, 2].item() == 0.0
    assert rows(both["returns_self"][1]) == approx([(1 + 0.9 * 4) / 5, 4 / 5, 0.0])  # single-member groups: A = G
    assert rows(both["returns_other"][1]) == approx([(2 + 0.9 * 2) / 5, 2 / 5, 0.0])  # [0.76, 0.4, 0]
    # W_0 = 0, W_1 = 0.9 * 0.9 * 0.92 = 0.7452;  C_1 = 0.8 + 0.5 * 0.7452 * 0.4 = 0.94904
    assert rows(both["credit"][1]) == approx([0.92, 0.8 + 0.5 * (0.81 * 0.92) * 0.4, 0.0])
    assert rows(both["credit"][1]) == approx([0.92, 0.94904, 0.0])


def test_shorter_member_does_not_change_the_others_later_baseline():
    returns = torch.tensor([[1.0, 4.0, 2.0], [3.0, 2.0, 6.0], [5.0, 77.0, -9.0]])
    mask = torch.tensor([[T_, T_, T_], [T_, T_, T_], [T_, F_, F_]])
    adv = group_baseline_advantages(returns, mask, torch.tensor([0, 0, 0]))
    two = group_baseline_advantages(returns[:2, 1:], torch.ones(2, 2, dtype=torch.bool), torch.tensor([0, 0]))
    assert torch.equal(adv[:2, 1:], two)
    assert adv[2, 1:].tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------------------------------- tokens
def test_broadcast_to_tokens_is_a_gather():
    credit = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[T_, T_, T_], [T_, T_, F_]])
    timestep = torch.tensor([0, 2, 1, 0])
    match = torch.tensor([1, 0, 1, 0])
    assert broadcast_to_tokens(credit, timestep, match).tolist() == [4.0, 3.0, 5.0, 1.0]
    assert broadcast_to_tokens(credit, timestep, match, mask=mask).tolist() == [4.0, 3.0, 5.0, 1.0]
    with pytest.raises(ValueError, match="padded"):
        broadcast_to_tokens(credit, torch.tensor([2]), torch.tensor([1]), mask=mask)
    with pytest.raises(ValueError, match="out of range"):
        broadcast_to_tokens(credit, torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="shape"):
        broadcast_to_tokens(credit, torch.tensor([0, 1]), torch.tensor([0]))
    assert (
        broadcast_to_tokens(credit, torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)).numel() == 0
    )


# --------------------------------------------------------------------------------------------------- validation
def test_validation_errors():
    mask = torch.ones(2, 3, dtype=torch.bool)
    r = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(r, mask, gamma=1.5)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(r, mask, gamma=-0.1)
    with pytest.raises(ValueError, match="scale"):
        discounted_returns(r, mask, gamma=0.9, scale=0)
    with pytest.raises(ValueError, match="match"):
        discounted_returns(torch.zeros(2, 4), mask, gamma=0.9)
    with pytest.raises(ValueError, match="unknown baseline"):
        group_baseline_advantages(r, mask, torch.tensor([0, 0]), mode="mean")
    with pytest.raises(ValueError, match="groups"):
        group_baseline_advantages(r, mask, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="groups"):
        group_baseline_advantages(r, mask, None)
    with pytest.raises(ValueError, match="seats"):
        group_baseline_advantages(r, mask, None, mode="batch", seats=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="seats"):
        group_baseline_advantages(r, mask, torch.tensor([0, 0]), seats=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="gamma_a"):
        advantage_alignment_credit(r, r, mask, beta=0.5, gamma_a=2.0)
    with pytest.raises(ValueError, match="adv_other"):
        advantage_alignment_credit(r, torch.zeros(3, 3), mask, beta=0.5, gamma_a=0.9)
    with pytest.raises(ValueError, match="unknown credit method"):
        compute_credit(r, r, mask, torch.tensor([0, 0]), method="lola", gamma=0.9)
    with pytest.raises(ValueError, match="rewards_other"):
        compute_credit(r, None, mask, torch.tensor([0, 0]), method="aa", gamma=0.9)


# ----------------------------------------------------------------------------------------------------- property
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 8), st.lists(finite, min_size=1, max_size=6), st.lists(finite, min_size=1, max_size=6))
def test_loo_identical_returns_give_exactly_zero(n, values, other_values):
    steps = min(len(values), len(other_values))
    same = torch.tensor(values[:steps]).expand(n, steps)
    other = torch.tensor(other_values[:steps]).expand(3, steps) * torch.tensor([[1.0], [-2.0], [0.5]])
    returns = torch.cat([same, other])  # the identical group, then another group in the same batch
    groups = torch.tensor([5] * n + [9] * 3)
    adv = group_baseline_advantages(returns, torch.ones(n + 3, steps, dtype=torch.bool), groups)
    assert torch.equal(adv[:n], torch.zeros(n, steps))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_loo_advantages_sum_to_zero_per_group_and_timestep(data):
    steps = data.draw(st.integers(1, 5))
    n_rows = data.draw(st.integers(2, 12))
    groups = torch.tensor(data.draw(st.lists(st.integers(0, 3), min_size=n_rows, max_size=n_rows)))
    values = data.draw(st.lists(st.floats(-100, 100), min_size=n_rows * steps, max_size=n_rows * steps))
    returns = torch.tensor(values, dtype=torch.float64).reshape(n_rows, steps)
    adv = group_baseline_advantages(returns, torch.ones(n_rows, steps, dtype=torch.bool), groups)
    # sum_m (G_m - mean_{m' != m} G_m') = n * mean - n * mean = 0 for groups of n >= 2; a lone member keeps A = G
    for group in groups.unique():
        members = groups == group
        if int(members.sum()) >= 2:
            assert adv[members].sum(dim=0).abs().max().item() <= 1e-9
        else:
            assert torch.equal(adv[members], returns[members])
