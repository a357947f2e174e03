"""The loss's inputs as tensors: merged turn rows batched around their shared prompt prefix (:func:`batch_rows`), the
support of a constrained policy (:func:`constrained_support`), and the policy's log-probabilities and entropy on the
rows' completion tokens (:func:`token_logprobs`). Pure functions of rows and a model; :mod:`coop_rl.loss` takes the
tensors from here.

A row is a dict as :func:`coop_rl.loss.merge_identical_turns` makes it: ``prompt_ids``, ``completion_ids``,
``sampler_logprobs`` (one per completion token), ``credit``, ``count`` and optionally ``allowed`` (per completion
position, the allowed token ids; an empty entry: unconstrained there).

Layout (R rows, W = the longest completion, the "window"): every row ends at the last column; its completion
occupies its last ``len(completion_ids)`` columns, left-padded to W in the [R, W] tensors (``completion_mask`` 1 on
its tokens, 0 on padding, ``sampler_logprobs`` 0 there).
"""

from __future__ import annotations

from typing import Any

import torch

from coop_rl.loss import token_entropy
from coop_rl.players.hf import shared_prefix_batch

__all__ = ["batch_rows", "constrained_support", "token_logprobs"]


def constrained_support(rows: list[dict[str, Any]], window: int, vocab: int) -> torch.Tensor | None:
    """[R, W, vocab] bool: True where a token is in the policy's support. A row with ``allowed`` is restricted, at
    completion position k (column W - len(allowed) + k), to ``allowed[k]`` (an empty list leaves it unrestricted);
    every other position and row allows every token. None when no row is constrained (the free policy)."""
    constrained = [(i, row["allowed"]) for i, row in enumerate(rows) if row.get("allowed")]
    if not constrained:
        return None
    support = torch.ones((len(rows), window, vocab), dtype=torch.bool)
    for i, allowed in constrained:
        offset = window - len(allowed)
        for k, options in enumerate(allowed):
            if options:
                support[i, offset + k] = False
                support[i, offset + k, options] = True
    return support


def batch_rows(
    rows: list[dict[str, Any]], pad_id: int, vocab: int, share_prefix: bool, device: Any = "cpu"
) -> dict[str, Any]:
    """The rows as tensors: prompt + completion laid out as ``shared prefix + padding + own tokens`` (every row ends
    at the last column; :func:`coop_rl.players.hf.shared_prefix_batch`), with:

    * ``input_ids``, ``attention_mask`` [R, S]; ``prefix_length`` (int): the leading columns every row shares,
      run once by :func:`token_logprobs`. With ``share_prefix`` the prefix stops before the shortest prompt's last
      token, so every completion and the token before it are in each row's own columns; without it, 0;
    * ``completion_mask``, ``sampler_logprobs`` [R, W]; ``credit``, ``count`` [R]; ``window`` W (int);
    * ``support`` [R, W, vocab] or None (:func:`constrained_support`).
    """
    sequences = [r["prompt_ids"] + r["completion_ids"] for r in rows]
    shortest_prompt = min(len(r["prompt_ids"]) for r in rows)
    limit = shortest_prompt - 1 if share_prefix else 0
    layout = shared_prefix_batch(sequences, pad_id, min_prefix=8, max_prefix=limit)
    window = max(len(r["completion_ids"]) for r in rows)
    completion_mask = torch.zeros((len(rows), window), dtype=torch.float)
    sampler = torch.zeros((len(rows), window))
    for i, row in enumerate(rows):
        c = len(row["completion_ids"])
        completion_mask[i, window - c :] = 1.0
        sampler[i, window - c :] = torch.tensor(row["sampler_logprobs"])
    support = constrained_support(rows, window, vocab)
    return {
        "input_ids": layout["input_ids"].to(device),
        "attention_mask": layout["attention_mask"].to(device),
        "prefix_length": layout["prefix_length"],
        "completion_mask": completion_mask.to(device),
        "sampler_logprobs": sampler.to(device),
        "credit": torch.tensor([r["credit"] for r in rows], device=device),
        "count": torch.tensor([float(r["count"]) for r in rows], device=device),
        "support": support.to(device) if support is not None else None,
        "window": window,
    }


def token_logprobs(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi_theta of the window's tokens and the policy's entropy there, [R, W] each (padding included: the loss
    masks it), renormalised over ``support`` where answers are constrained:

        log pi(y_k) = log_softmax(logits_k masked to the support)[y_k],  H_k = token_entropy(that log_softmax)

    The rows' shared prefix (the rules, the system prompt) runs once and its keys and values serve every row: the
    same logprobs as running each row whole, and the same gradient (the copies' gradients add up in the one
    prefix), for a fraction of the tokens. Positions follow the attention mask, as ``generate()`` numbers its rows.
    """
    window, prefix = batch["window"], batch["prefix_length"]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = None
    if prefix:
        cache = model(input_ids=ids[:1, :prefix], use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(ids))
    logits = (
        model(
            input_ids=ids[:, prefix:],
            attention_mask=mask,
            position_ids=position_ids[:, prefix:],
            past_key_values=cache,
            use_cache=cache is not None,
            logits_to_keep=window + 1,
        )
        .logits[:, :-1]
        .float()
    )
    if batch.get("support") is not None:
        logits = logits.masked_fill(~batch["support"][:, :, : logits.shape[-1]], float("-inf"))
    log_probs = torch.log_softmax(logits, dim=-1)
    targets = ids[:, -window:]
    entropy = token_entropy(log_probs)  # before the gather: the gradient sums in the order it always did
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1), entropy
