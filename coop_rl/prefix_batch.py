"""A batch of token-id prompts laid out around their common opening, so that the opening's key/value cache can be
computed once for every row. Pure: lists of ids in, tensors out. The transformers engine batches generation this way
(:mod:`coop_rl.players.hf`) and the loss batches its prompt tree this way (:mod:`coop_rl.loss_batch`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["shared_prefix_batch"]


def shared_prefix_batch(
    prompts: list[list[int]], pad_id: int, min_prefix: int = 8, max_prefix: int | None = None
) -> dict[str, Any]:
    """Batch token-id prompts as ``prefix + padding + suffix`` rows around their longest common prefix.

    Padding sits between the shared prefix and each row's own suffix (masked out; positions follow the mask), so
    the prefix occupies the same positions in every row and its key/value cache can be computed once. Every row
    keeps at least one token of its own after the prefix. Without a useful common prefix (shorter than
    ``min_prefix``) this is plain left padding and ``prefix_length`` is 0. ``max_prefix`` caps the prefix (the
    trainer keeps every completion, and the token before it, out of the shared part).
    """
    shortest = min(len(p) for p in prompts)
    prefix = min(len(os.path.commonprefix(prompts)), shortest - 1)  # commonprefix compares lists element-wise
    if max_prefix is not None:
        prefix = min(prefix, max_prefix)
    if prefix < min_prefix or len(prompts) == 1:
        prefix = 0
    width = max(len(p) for p in prompts) - prefix
    rows, masks = [], []
    for prompt in prompts:
        gap = width - (len(prompt) - prefix)
        rows.append(prompt[:prefix] + [pad_id] * gap + prompt[prefix:])
        masks.append([1] * prefix + [0] * gap + [1] * (len(prompt) - prefix))
    input_ids = torch.tensor(rows, dtype=torch.long)
    attention_mask = torch.tensor(masks, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "prefix_length": prefix}
