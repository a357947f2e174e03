"""The loss on the learner's tokens, as pure tensor functions (docs/algorithm.md, "The loss"), and the merge rule.

Everything works on padded tensors of shape [R, L] (R rows = merged learner turns, L = the completion window; the
trainer left-pads, so every row ends at the last column) with a ``mask`` [R, L], bool or 0/1 float, that is true on
the tokens the learner generated. Per-row values (``credit``, ``count``) are [R] or [R, 1]. Padded entries never
leak: inputs are set to 0 there before any arithmetic (even NaN or inf padding is harmless, in the value and in the
gradient) and every per-token output is exactly 0 there, with gradient 0.

The trainer's per-token objective, summed over tokens and scaled by 1 / (number of generated tokens):

    loss(y) = pg(y)  -  entropy_coef * count * H(y)  +  kl_coef * count * k3(y)

with pg = :func:`reinforce_term` or :func:`ppo_term` (``loss_type``). A merged row stands for ``count`` identical
turns: its credit is their summed credit (see :func:`merge_identical_turns` for when that is exact), its entropy and
KL terms count ``count`` times.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "LOSS_TYPES",
    "clip_binds",
    "k3_kl",
    "loss_metrics",
    "masked_token_mean",
    "merge_identical_turns",
    "ppo_term",
    "reinforce_term",
    "token_entropy",
    "token_loss",
]

LOSS_TYPES = ("reinforce", "ppo")


# ------------------------------------------------------------------------------------------------------ helpers
def _bool_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.shape != like.shape:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor of shape {tuple(like.shape)} (rows, tokens), got {shape}")
    return mask if mask.dtype == torch.bool else mask != 0


def _per_row(x: torch.Tensor | float, rows: int, name: str, like: torch.Tensor) -> torch.Tensor:
    """A per-row value as an [R, 1] column (a number is the same for every row)."""
    x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if x.dim() == 0:
        return x.expand(rows, 1)
    if x.numel() != rows or x.dim() > 2 or (x.dim() == 2 and x.shape[1] != 1):
        raise ValueError(f"{name} must have shape [R] or [R, 1] with R = {rows}, got {tuple(x.shape)}")
    return x.reshape(rows, 1)


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with 0 where ``mask`` is false (``where``, not a product: NaN or inf there cannot leak)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


# ------------------------------------------------------------------------------------------- policy-gradient terms
def reinforce_term(
    logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    credit: torch.Tensor,
    mask: torch.Tensor,
    is_clip: float,
) -> torch.Tensor:
    """REINFORCE with the truncated importance weight, per token (algorithm.md 5):

        pg(y)  = -C * rho(y) * log pi_theta(y)
        rho(y) = min(pi_theta(y) / pi_sampler(y), is_clip) = min(exp(log pi_theta(y) - log pi_sampler(y)), is_clip)

    rho is detached, so the gradient is d pg / d log pi_theta(y) = -C * rho(y): the policy gradient at the current
    weights for tokens drawn from the sampler (rho corrects for the sampler being another policy: vLLM, or the
    weights of an earlier pass when ``num_iterations`` > 1), truncated at ``is_clip`` (biased where it binds).
    ``logprobs`` (log pi_theta, with grad), ``sampler_logprobs`` and ``mask`` are [R, L]; ``credit`` [R] or [R, 1]
    (the row's credit, every token of the row gets it). Padded entries come out 0, with gradient 0.
    """
    mask = _bool_mask(mask, logprobs)
    credit = _per_row(credit, logprobs.shape[0], "credit", logprobs)
    logp = _zero_padding(logprobs, mask)
    log_ratio = logp - _zero_padding(sampler_logprobs.to(logp.dtype), mask)
    weight = torch.clamp(torch.exp(log_ratio), max=is_clip).detach()
    return _zero_padding(-credit * weight * logp, mask)


def ppo_term(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    credit: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> torch.Tensor:
    """The PPO clipped surrogate, per token:

        pg(y) = -min(r(y) * C, clamp(r(y), 1 - clip, 1 + clip) * C),   r(y) = exp(log pi_theta(y) - log pi_old(y))

    with pi_old the policy that sampled the rollout (the trainer passes the sampler's logprobs). The gradient
    d pg / d log pi_theta(y) is -C * r(y) except where the clip binds (:func:`clip_binds`: C > 0 and r > 1 + clip,
    or C < 0 and r < 1 - clip), where it is 0. At r = 1 (the first pass over a rollout) it equals REINFORCE's
    -C * 1. Shapes as :func:`reinforce_term`; padded entries come out 0, with gradient 0.
    """
    mask = _bool_mask(mask, logprobs)
    credit = _per_row(credit, logprobs.shape[0], "credit", logprobs)
    log_ratio = _zero_padding(logprobs, mask) - _zero_padding(old_logprobs.to(logprobs.dtype), mask)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip)
    return _zero_padding(-torch.minimum(ratio * credit, clipped * credit), mask)


def clip_binds(
    logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    credit: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str,
    is_clip: float,
    ppo_clip: float,
) -> torch.Tensor:
    """Where the clip of ``loss_type`` binds (a bool [R, L]; False at padding). With r = pi_theta / pi_sampler:

        reinforce: r > is_clip                                  (the importance weight is truncated)
        ppo:       (C > 0 and r > 1 + ppo_clip) or (C < 0 and r < 1 - ppo_clip)   (the token's gradient is 0)

    A PPO ratio outside [1 - clip, 1 + clip] on the other side (C > 0 and r < 1 - clip, say) does not bind: min()
    keeps the unclipped term there. Its mean over tokens is the metric ``loss/clip_fraction``.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    mask = _bool_mask(mask, logprobs)
    credit = _per_row(credit, logprobs.shape[0], "credit", logprobs)
    log_ratio = _zero_padding(logprobs.detach(), mask) - _zero_padding(sampler_logprobs.to(logprobs.dtype), mask)
    ratio = torch.exp(log_ratio)
    if loss_type == "ppo":
        binds = ((credit > 0) & (ratio > 1 + ppo_clip)) | ((credit < 0) & (ratio < 1 - ppo_clip))
    else:
        binds = ratio > is_clip
    return binds & mask


# ---------------------------------------------------------------------------------------- regularisers, metrics
def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The k3 estimator of the KL to the reference, per token (algorithm.md, "Which KL"):

        k3(y) = exp(d) - 1 - d,   d = log pi_ref(y) - log pi_theta(y)          (>= 0, 0 where d = 0)

    On y ~ pi_theta its mean is KL(pi_theta || pi_ref). Its gradient, d k3 / d log pi_theta(y) = 1 - exp(d) =
    1 - pi_ref(y) / pi_theta(y); on y ~ pi_theta, not re-weighted, that estimates the gradient of
    KL(pi_ref || pi_theta), the other direction. ``ref_logprobs`` is a constant (detached). Shapes [R, L];
    padded entries come out 0, with gradient 0.
    """
    mask = _bool_mask(mask, logprobs)
    delta = _zero_padding(ref_logprobs.detach().to(logprobs.dtype), mask) - _zero_padding(logprobs, mask)
    return _zero_padding(torch.exp(delta) - 1 - delta, mask)


def token_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the policy at each position, from its log-probabilities over the vocabulary [..., V]:

        H = -sum_v p_v * log p_v

    Entries of -inf (tokens outside a constrained support) count 0 (p log p -> 0), so a policy renormalised over
    k allowed tokens has H <= log k and no NaN. Returns [...] (the trainer masks padded positions in the loss).
    """
    return -(log_probs.exp() * log_probs.masked_fill(torch.isinf(log_probs), 0.0)).sum(-1)


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of a per-token metric over real tokens, each counted ``weights`` times (a merged row's ``count``):

        mean = sum_{r, l} mask * w_r * v_{r,l} / sum_{r, l} mask * w_r            (0 when there is no token)

    ``values`` and ``mask`` are [R, L], ``weights`` [R] or [R, 1] (None: 1). Padded values are ignored, NaN too.
    """
    mask = _bool_mask(mask, values)
    w = _per_row(1.0 if weights is None else weights, values.shape[0], "weights", values)
    w = _zero_padding(w.expand_as(values), mask)
    total = w.sum()
    mean = (_zero_padding(values, mask) * w).sum() / total.clamp(min=torch.finfo(values.dtype).tiny)
    return torch.where(total > 0, mean, torch.zeros_like(mean))


# ---------------------------------------------------------------------------------------------- the whole term
def token_loss(
    logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    credit: torch.Tensor,
    count: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    *,
    loss_type: str = "reinforce",
    is_clip: float = 2.0,
    ppo_clip: float = 0.2,
    entropy_coef: float = 0.0,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """The trainer's per-token objective [R, L] (module docstring), 0 at padding:

        loss(y) = pg(y) - entropy_coef * count * H(y) + kl_coef * count * k3(y)

    pg is :func:`reinforce_term` (with ``is_clip``) or :func:`ppo_term` (with ``ppo_clip``, against the sampler's
    logprobs); ``entropy`` is H [R, L] (:func:`token_entropy`); the KL term is added when ``kl_coef`` > 0 and then
    needs ``ref_logprobs``. The trainer sums it and multiplies by 1 / (generated tokens of the iteration).
    """
    if loss_type == "ppo":
        per_token = ppo_term(logprobs, sampler_logprobs, credit, mask, ppo_clip)
    elif loss_type == "reinforce":
        per_token = reinforce_term(logprobs, sampler_logprobs, credit, mask, is_clip)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    bool_mask = _bool_mask(mask, logprobs)
    count = _per_row(count, logprobs.shape[0], "count", logprobs)
    per_token = per_token - entropy_coef * count * _zero_padding(entropy, bool_mask)
    if kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs (the reference policy's logprobs)")
        per_token = per_token + kl_coef * count * k3_kl(logprobs, ref_logprobs, bool_mask)
    return _zero_padding(per_token, bool_mask)


@torch.no_grad()
def loss_metrics(
    logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    credit: torch.Tensor,
    count: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    *,
    loss_type: str,
    is_clip: float,
    ppo_clip: float,
) -> dict[str, float]:
    """The loss metrics of a batch of rows, each a :func:`masked_token_mean` over real tokens weighted by count:
    ``loss/entropy`` (H), ``loss/is_weight`` (pi_theta / pi_sampler, untruncated), ``loss/clip_fraction`` (the
    share where :func:`clip_binds`) and, given ``ref_logprobs``, ``loss/kl`` (k3)."""
    bool_mask = _bool_mask(mask, logprobs)
    ratio = torch.exp(_zero_padding(logprobs, bool_mask) - _zero_padding(sampler_logprobs, bool_mask))
    binds = clip_binds(logprobs, sampler_logprobs, credit, bool_mask, loss_type=loss_type, is_clip=is_clip,
                       ppo_clip=ppo_clip)  # fmt: skip
    out = {
        "loss/entropy": masked_token_mean(entropy, bool_mask, count).item(),
        "loss/is_weight": masked_token_mean(ratio, bool_mask, count).item(),
        "loss/clip_fraction": masked_token_mean(binds.to(logprobs.dtype), bool_mask, count).item(),
    }
    if ref_logprobs is not None:
        out["loss/kl"] = masked_token_mean(k3_kl(logprobs, ref_logprobs, bool_mask), bool_mask, count).item()
    return out


# ---------------------------------------------------------------------------------------------------- merging
def merge_identical_turns(turns: list[tuple], by_sign: bool = False) -> list[dict[str, Any]]:
    """Merge turns with the same prompt and completion tokens into one row whose credit is their sum.

    ``turns`` are tuples (prompt_ids, completion_ids, sampler_logprobs, credit[, allowed[, adapter]]); turns of
    different adapters never merge. For identical token sequences rho, r and log pi are identical (same weights;
    the row keeps the first turn's sampler log-probs, which vLLM may give its twins differently in the last bits),
    so one forward pass serves them all, exactly, as long as the loss is linear in the credit:

    * REINFORCE: sum_k -C_k * rho * log pi = -(sum_k C_k) * rho * log pi, whatever the signs: merge all.
    * PPO (``by_sign=True``): min(r * C, clip(r) * C) is C * min(r, clip(r)) for C >= 0 and C * max(r, clip(r))
      for C <= 0, so sum_k min(r C_k, clip(r) C_k) = min(r sum_k C_k, clip(r) sum_k C_k) only when the C_k share a
      sign. Turns merge only with turns of the same sign of credit (C > 0 apart from C <= 0; C = 0 adds nothing
      to either side). Entropy and KL terms are linear in the count: exact in both cases.

    Rows keep first-seen order. In the IPD a few dozen distinct (prompt, answer) pairs stand for thousands of
    turns; in games with free text nearly every turn stays its own row.
    """
    merged: dict[tuple, dict[str, Any]] = {}
    for prompt_ids, completion_ids, logprobs, credit, *rest in turns:
        adapter = rest[1] if len(rest) > 1 else None  # seat_adapters: turns of different adapters never merge
        key = (tuple(prompt_ids), tuple(completion_ids), adapter, by_sign and credit > 0)
        if key in merged:
            merged[key]["credit"] += credit
            merged[key]["count"] += 1
        else:
            merged[key] = {
                "prompt_ids": list(prompt_ids),
                "completion_ids": list(completion_ids),
                "sampler_logprobs": list(logprobs),
                "credit": float(credit),
                "count": 1,
                "allowed": rest[0] if rest else None,  # constrained answers: the allowed tokens per position
                "adapter": adapter,
            }
    return list(merged.values())
