"""Credit assignment for group-relative Advantage Alignment, as pure tensor functions (docs/algorithm.md, 1-4).

Everything works on padded float tensors of shape [B, T] (B = matches or match-seats, T = timesteps), with a
boolean ``mask`` [B, T] that is True where a match has the timestep (matches can have different lengths).
Padded entries never leak into results: they are ignored on input (even NaN there is harmless) and come out 0.
Co-players' tensors may carry an extra axis, [B, K, T] (K co-players, as in the SPGG); the mask stays [B, T].

The trainer's rollout (:func:`coop_rl.rollout.assign_credit`) calls :func:`compute_credit` with each row's
rewards, then :func:`broadcast_to_tokens` to give each turn its credit (every token of that turn's completion gets
it; the loss multiplies by a completion mask, so prompt and other players' tokens get none).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "BASELINES",
    "METHODS",
    "advantage_alignment_credit",
    "broadcast_to_tokens",
    "compute_credit",
    "discounted_returns",
    "group_baseline_advantages",
    "margin_credit",
    "naive_credit",
    "sum_of_rewards_credit",
]

METHODS = ("aa", "naive", "sum", "margin")
BASELINES = ("loo", "batch", "none")
#: whitening leaves advantages whose standard deviation is below this unscaled (group_baseline_advantages)
WHITEN_MIN_STD = 1e-6


# --------------------------------------------------------------------------------------------------- validation
def _check_mask(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"{name} must have shape [B, T], got {tuple(mask.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _check_values(x: torch.Tensor, mask: torch.Tensor, name: str, allow_k: bool) -> None:
    """``x`` must be a float tensor of shape [B, T] (or [B, K, T] when ``allow_k``) matching ``mask`` [B, T]."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    shapes = "[B, T] or [B, K, T]" if allow_k else "[B, T]"
    if x.dim() not in ((2, 3) if allow_k else (2,)):
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(x.shape)}")
    batch, steps = mask.shape
    if x.shape[0] != batch or x.shape[-1] != steps:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, which does not match mask {tuple(mask.shape)} ({shapes})")


def _check_discount(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def _expand_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The [B, T] mask shaped like ``x`` ([B, T] or [B, K, T])."""
    return mask if x.dim() == 2 else mask.unsqueeze(1).expand_as(x)


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with padded entries set to 0 (``where``, not a product, so that NaN or inf padding cannot leak)."""
    return torch.where(_expand_mask(mask, x), x, torch.zeros((), dtype=x.dtype, device=x.device))


# ------------------------------------------------------------------------------------------------------ returns
def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float, scale: float = 1.0) -> torch.Tensor:
    """Discounted returns-to-go, divided by the reward scale (docs/algorithm.md, "Returns"):

        G_t = sum_{t' >= t} gamma^(t' - t) * r_t' / scale

    computed by the reverse recursion G_t = r_t / scale + gamma * G_{t+1}. Padded rewards count as 0 and padded
    returns come out 0. ``rewards`` is [B, T] or [B, K, T] (K co-players), ``mask`` [B, T]; ``gamma`` in [0, 1],
    ``scale`` > 0 (reference: gamma 0.9 and scale 5 for the IPD, 0.96 and 100 for Trust-and-Split).
    """
    mask = _check_mask(mask)
    _check_values(rewards, mask, "rewards", allow_k=True)
    gamma = _check_discount(gamma, "gamma")
    scale = float(scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    r = _masked(rewards, mask) / scale
    returns = torch.zeros_like(r)
    running = torch.zeros_like(r[..., 0])
    for t in range(r.shape[-1] - 1, -1, -1):
        running = r[..., t] + gamma * running
        returns[..., t] = running
    return _masked(returns, mask)


# ---------------------------------------------------------------------------------------------------- baselines
def group_baseline_advantages(
    returns: torch.Tensor,
    mask: torch.Tensor,
    groups: torch.Tensor | None,
    mode: str = "loo",
    whiten: bool = False,
    *,
    seats: torch.Tensor | None = None,
) -> torch.Tensor:
    """Advantages against a group-relative baseline, per timestep (docs/algorithm.md, "Leave-one-out baseline").

    ``mode="loo"`` (leave-one-out; the default): matches sharing a game seed form a group (``groups``, a
    LongTensor [B] of seed-group ids; with ``seats`` [B], a group is a (seed group, seat) pair: a seat is compared
    with the same seat of the other matches). At each timestep t, with n_t the number of members of m's group that
    have timestep t (masked),

        A_t(m) = G_t(m) - 1/(n_t - 1) * sum_{m' != m in group, m' has t} G_t(m')
               = n_t / (n_t - 1) * (G_t(m) - mean_{m' in group, m' has t} G_t(m'))

    (the two lines are the same number; the second is how it is computed, around a group reference value so that
    a group of identical returns gets advantages of exactly 0). A member that is alone in its group at timestep t
    (n_t = 1, including a one-member group) has no one to compare with: its baseline is 0 there, so A_t = G_t.

    ``mode="batch"``: the paper's batch-wide ablation, per seat; the baseline of a row is the mean over the other
    rows of the batch in the same seat (``seats``) that have timestep t: the formula above with the seat as the
    group (``groups`` is ignored). Without ``seats`` the whole batch is one group. Grouping by seat keeps the other
    seat of the same match (whose return moves against the row's own in a dilemma) out of the row's baseline.
    ``mode="none"``: A_t = G_t.

    ``whiten=True`` then divides by the (population) standard deviation of the advantages over the valid entries,
    plus 1e-8; where that deviation is below 1e-6 (advantages all equal: every return the same, no baseline) they
    are left as they are, since dividing a nonzero constant by ~1e-8 would scale it up to ~1e8. It is off by
    default: algorithm.md asks for no std division by default.

    ``returns`` is [B, T] or [B, K, T] (K co-players: each co-player slot k is baselined against slot k of the
    other members of the group); ``mask`` [B, T]. Padded entries come out 0.
    """
    mask = _check_mask(mask)
    _check_values(returns, mask, "returns", allow_k=True)
    if mode not in BASELINES:
        raise ValueError(f"unknown baseline mode {mode!r}; expected one of {BASELINES}")
    full_mask = _expand_mask(mask, returns)
    g = _masked(returns, mask)
    if mode == "none":
        adv = g
    else:
        if mode == "loo" and not isinstance(groups, torch.Tensor):
            raise ValueError("groups must be a LongTensor [B] of seed-group ids for mode='loo'")
        keys = [("groups", groups)] if mode == "loo" else []
        if seats is not None:
            keys.append(("seats", seats))
        index, n_groups = _group_index(keys, mask.shape[0], returns.device)
        adv = _leave_one_out(g, full_mask, index, n_groups)
    if whiten:
        valid = adv[full_mask]
        std = valid.std(correction=0) if valid.numel() > 0 else adv.new_zeros(())
        if std >= WHITEN_MIN_STD:
            adv = adv / (std + 1e-8)
    return _masked(adv, mask)


def _group_index(keys: list[tuple[str, torch.Tensor | None]], batch: int, device) -> tuple[torch.Tensor, int]:
    """A group index [B] in 0..n-1 for rows that agree on every id tensor in ``keys`` (all rows: one group)."""
    columns = []
    for name, ids in keys:
        if not isinstance(ids, torch.Tensor):
            raise ValueError(f"{name} must be a LongTensor [B], got {type(ids).__name__}")
        if ids.dim() != 1 or ids.shape[0] != batch:
            raise ValueError(f"{name} must have shape [B] = [{batch}], got {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor of group ids, got {ids.dtype}")
        columns.append(ids.to(device=device, dtype=torch.long))
    if not columns:
        return torch.zeros(batch, dtype=torch.long, device=device), 1
    uniques, index = torch.unique(torch.stack(columns, dim=1), dim=0, return_inverse=True)
    return index, uniques.shape[0]


def _leave_one_out(g: torch.Tensor, valid: torch.Tensor, index: torch.Tensor, n_groups: int) -> torch.Tensor:
    """n/(n-1) * (G - group mean) per group and timestep, over valid entries; G where n = 1; 0 where padded."""
    rest = g.shape[1:]  # [T] or [K, T]
    # A reference value per group and timestep (the largest valid return): centring on it first makes a group of
    # identical returns give exactly 0, and keeps the sums small.
    neg_inf = torch.full((), -math.inf, dtype=g.dtype, device=g.device)
    ref = torch.full((n_groups, *rest), -math.inf, dtype=g.dtype, device=g.device)
    spread = index.view(-1, *([1] * len(rest))).expand_as(g)
    ref = ref.scatter_reduce_(0, spread, torch.where(valid, g, neg_inf), "amax", include_self=True)
    ref = torch.where(torch.isfinite(ref), ref, torch.zeros((), dtype=g.dtype, device=g.device))
    d = torch.where(valid, g - ref[index], torch.zeros((), dtype=g.dtype, device=g.device))
    sums = torch.zeros((n_groups, *rest), dtype=g.dtype, device=g.device).index_add_(0, index, d)
    counts = torch.zeros((n_groups, *rest), dtype=g.dtype, device=g.device).index_add_(0, index, valid.to(g.dtype))
    n = counts[index]
    mean = sums[index] / n.clamp(min=1)
    adv = n / (n - 1).clamp(min=1) * (d - mean)
    return torch.where(n > 1, adv, g)


# ------------------------------------------------------------------------------------------------------- credit
def _sum_co_players(adv_other: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    _check_values(adv_other, mask, "adv_other", allow_k=True)
    other = _masked(adv_other, mask)
    return other.sum(dim=1) if other.dim() == 3 else other


def advantage_alignment_credit(
    adv_self: torch.Tensor, adv_other: torch.Tensor, mask: torch.Tensor, beta: float, gamma_a: float
) -> torch.Tensor:
    """Advantage Alignment credit of the learner against its co-player(s) in the same match (docs/algorithm.md,
    "The Advantage Alignment term"):

        W_t = gamma_a * sum_{k < t} gamma_a^(t - k) * A_k^self        (W_0 = 0)
        C_t = A_t^self + beta * W_t * A_t^other

    so W_1 = gamma_a^2 A_0, W_2 = gamma_a^3 A_0 + gamma_a^2 A_1, ... (computed by the recursion
    S_0 = 0, S_{t+1} = gamma_a * (S_t + A_t), W_t = gamma_a * S_t). ``adv_self`` and ``mask`` are [B, T];
    ``adv_other`` is [B, T] or [B, K, T] (K co-players, summed over K first, as in the SPGG). beta = 0 gives the
    naive credit exactly. Padded entries count as 0 in the sums and come out 0.
    """
    mask = _check_mask(mask)
    _check_values(adv_self, mask, "adv_self", allow_k=False)
    gamma_a = _check_discount(gamma_a, "gamma_a")
    beta = float(beta)
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    a_self = _masked(adv_self, mask)
    a_other = _sum_co_players(adv_other, mask)
    weights = torch.zeros_like(a_self)
    running = torch.zeros_like(a_self[:, 0])
    for t in range(a_self.shape[1]):
        weights[:, t] = gamma_a * running
        running = gamma_a * (running + a_self[:, t])
    if beta == 0.0:
        return a_self.clone()
    return _masked(a_self + beta * weights * a_other, mask)


def naive_credit(adv_self: torch.Tensor) -> torch.Tensor:
    """Naive credit: C_t = A_t^self (each player maximises its own return)."""
    if not isinstance(adv_self, torch.Tensor) or not adv_self.is_floating_point() or adv_self.dim() != 2:
        raise ValueError("adv_self must be a floating-point tensor of shape [B, T]")
    return adv_self.clone()


def sum_of_rewards_credit(adv_self: torch.Tensor, adv_other: torch.Tensor) -> torch.Tensor:
    """Sum-of-rewards credit: C_t = A_t^self + A_t^other (``adv_other`` [B, T], or [B, K, T] summed over K)."""
    if not isinstance(adv_self, torch.Tensor) or not adv_self.is_floating_point() or adv_self.dim() != 2:
        raise ValueError("adv_self must be a floating-point tensor of shape [B, T]")
    full = torch.ones(adv_self.shape, dtype=torch.bool, device=adv_self.device)
    return adv_self + _sum_co_players(adv_other, full)


def margin_credit(adv_self: torch.Tensor, adv_other: torch.Tensor) -> torch.Tensor:
    """Margin credit (an adversary's objective: its own return minus the co-players'):

        C_t = A_t^self - sum_k A_t^other,k

    ``adv_other`` [B, T], or [B, K, T] summed over the K co-players first (as in :func:`sum_of_rewards_credit`).
    A learned exploiter trained with it (``coop-rl exploit --learn --objective adv_margin``) is rewarded for what
    it takes from the policy, not only for what it earns.
    """
    if not isinstance(adv_self, torch.Tensor) or not adv_self.is_floating_point() or adv_self.dim() != 2:
        raise ValueError("adv_self must be a floating-point tensor of shape [B, T]")
    full = torch.ones(adv_self.shape, dtype=torch.bool, device=adv_self.device)
    return adv_self - _sum_co_players(adv_other, full)


def compute_credit(
    rewards_self: torch.Tensor,
    rewards_other: torch.Tensor | None,
    mask: torch.Tensor,
    groups: torch.Tensor | None,
    *,
    method: str = "aa",
    gamma: float,
    scale: float = 1.0,
    beta: float = 0.0,
    gamma_a: float = 1.0,
    baseline: str = "loo",
    whiten: bool = False,
    seats: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | None]:
    """The trainer's entry point: rewards in, per-timestep credit out (docs/algorithm.md: returns, baseline, the
    Advantage Alignment term).

    1. returns G = discounted_returns(r, mask, gamma, scale), for the learner and for each co-player from the
       co-player's own rewards;
    2. advantages A = group_baseline_advantages(G, mask, groups, baseline, whiten, seats=seats), the co-players'
       with the same groups (slot by slot when ``rewards_other`` is [B, K, T]; a row's seat fixes its co-players'
       seats, so grouping rows by the learner's seat groups the co-player slots by seat too);
    3. credit C by ``method``: "aa" (advantage_alignment_credit with beta, gamma_a), "naive" (C = A^self),
       "sum" (C = A^self + A^other, summed over co-players) or "margin" (C = A^self - A^other, summed likewise).

    ``rewards_self`` and ``mask`` are [B, T]; ``rewards_other`` [B, T] or [B, K, T] (it may be None only for
    "naive"); ``groups`` a LongTensor [B] (may be None unless baseline is "loo"); ``seats`` a LongTensor [B], the
    learner's seat of each row (None: one seat; with "batch" the baseline pools only rows of the same seat, with
    "loo" a group is a (seed group, seat) pair). Returns a dict with
    "returns_self", "returns_other", "adv_self", "adv_other" (None when there are no co-players) and "credit",
    all 0 at padded entries.
    """
    if method not in METHODS:
        raise ValueError(f"unknown credit method {method!r}; expected one of {METHODS}")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline mode {baseline!r}; expected one of {BASELINES}")
    mask = _check_mask(mask)
    _check_values(rewards_self, mask, "rewards_self", allow_k=False)
    if rewards_other is None and method != "naive":
        raise ValueError(f"method {method!r} needs rewards_other (the co-players' rewards)")
    returns_self = discounted_returns(rewards_self, mask, gamma, scale)
    adv_self = group_baseline_advantages(returns_self, mask, groups, baseline, whiten, seats=seats)
    returns_other = adv_other = None
    if rewards_other is not None:
        _check_values(rewards_other, mask, "rewards_other", allow_k=True)
        returns_other = discounted_returns(rewards_other, mask, gamma, scale)
        adv_other = group_baseline_advantages(returns_other, mask, groups, baseline, whiten, seats=seats)
    if method == "aa":
        credit = advantage_alignment_credit(adv_self, adv_other, mask, beta, gamma_a)
    elif method == "sum":
        credit = _masked(sum_of_rewards_credit(adv_self, adv_other), mask)
    elif method == "margin":
        credit = _masked(margin_credit(adv_self, adv_other), mask)
    else:
        credit = naive_credit(adv_self)
    return {
        "returns_self": returns_self,
        "returns_other": returns_other,
        "adv_self": adv_self,
        "adv_other": adv_other,
        "credit": credit,
    }


# ------------------------------------------------------------------------------------------------------- tokens
def broadcast_to_tokens(
    credit: torch.Tensor,
    timestep_index: torch.Tensor,
    match_index: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-turn credit (docs/algorithm.md, "One iteration", step 2): out[n] = credit[match_index[n],
    timestep_index[n]], a gather.

    ``credit`` is [B, T]; ``timestep_index`` and ``match_index`` are LongTensors [N] (one entry per turn, i.e. per
    rollout row). Every token of turn n's completion gets out[n]; prompt and other players' tokens get none (the
    trainer multiplies by its completion mask). If ``mask`` [B, T] is given, an index that points at a padded
    timestep raises a ValueError.
    """
    if not isinstance(credit, torch.Tensor) or credit.dim() != 2:
        raise ValueError("credit must be a tensor of shape [B, T]")
    for name, index in (("timestep_index", timestep_index), ("match_index", match_index)):
        if not isinstance(index, torch.Tensor) or index.dim() != 1:
            raise ValueError(f"{name} must be a 1-D LongTensor [N]")
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got {index.dtype}")
    if timestep_index.shape != match_index.shape:
        raise ValueError(
            f"timestep_index {tuple(timestep_index.shape)} and match_index {tuple(match_index.shape)} differ in shape"
        )
    batch, steps = credit.shape
    if timestep_index.numel():
        if int(match_index.min()) < 0 or int(match_index.max()) >= batch:
            raise ValueError(f"match_index out of range [0, {batch})")
        if int(timestep_index.min()) < 0 or int(timestep_index.max()) >= steps:
            raise ValueError(f"timestep_index out of range [0, {steps})")
    flat = match_index.long() * steps + timestep_index.long()
    if mask is not None:
        mask = _check_mask(mask)
        if mask.shape != credit.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match credit {tuple(credit.shape)}")
        if not bool(mask.reshape(-1)[flat].all()):
            raise ValueError("a (match_index, timestep_index) pair points at a padded timestep")
    return credit.reshape(-1)[flat]
