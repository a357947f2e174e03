"""The loss's inputs as tensors: merged turn rows batched as a prompt tree (:func:`batch_rows`: the prefix every row
shares, then each distinct prompt, then each row's answer), the support of a constrained policy
(:func:`constrained_support`), and the policy's log-probabilities and entropy on the rows' completion tokens
(:func:`token_logprobs`). Pure functions of rows and a model; :mod:`coop_rl.loss` takes the tensors from here.

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
from coop_rl.prefix_batch import shared_prefix_batch

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


def prompt_tree_layout(rows: list[dict[str, Any]], pad_id: int, min_prefix: int = 8) -> dict[str, Any]:
    """The rows as ``prefix | stem | tail`` columns, for a loss that runs each distinct prompt once:

    * prefix: the tokens every row's prompt opens with (the rules), at most the shortest prompt less its last token
      (0 when shorter than ``min_prefix``);
    * stem: the rest of the prompt but its last token, right-aligned in ``stem_width`` columns after padding. Rows
      with the same stem form a group (``stem_index`` [R]: the group of each row; ``stem_rows`` [G]: its first row),
      and their stem columns are identical;
    * tail: the prompt's last token and the completion, right-aligned in ``1 + W`` columns after padding, so every
      row still ends at the last column and its completion is the last ``len(completion_ids)`` of them.

    The stem level pays only when groups hold several rows: it is used when it runs fewer token positions than one
    flat batch (``G * stem_width + R * (1 + W)`` < ``R * widest``, every row ``prefix + padding + own tokens``);
    otherwise ``stem_width`` is 0 and the layout is :func:`coop_rl.prefix_batch.shared_prefix_batch`'s. A
    constrained IPD rollout's 74 rows come from 37 prompts, each answered C and D: half the stems.
    """
    prompts = [r["prompt_ids"] for r in rows]
    flat = shared_prefix_batch(
        [p + r["completion_ids"] for p, r in zip(prompts, rows, strict=True)],
        pad_id,
        min_prefix,
        min(map(len, prompts)) - 1,
    )
    prefix = flat["prefix_length"]
    stems = [tuple(p[prefix:-1]) for p in prompts]
    groups: dict[tuple[int, ...], int] = {}
    stem_index = [groups.setdefault(stem, len(groups)) for stem in stems]
    tails = [p[-1:] + r["completion_ids"] for p, r in zip(prompts, rows, strict=True)]
    stem_width, tail_width = max(map(len, stems)), max(map(len, tails))
    if len(groups) * stem_width + len(rows) * tail_width >= flat["input_ids"].numel() - len(rows) * prefix:
        return {**flat, "stem_width": 0, "stem_index": None, "stem_rows": None}
    ids, masks = [], []
    for prompt, stem, tail in zip(prompts, stems, tails, strict=True):
        gaps = (stem_width - len(stem), tail_width - len(tail))
        ids.append(prompt[:prefix] + [pad_id] * gaps[0] + list(stem) + [pad_id] * gaps[1] + tail)
        masks.append([1] * prefix + [0] * gaps[0] + [1] * len(stem) + [0] * gaps[1] + [1] * len(tail))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.tensor(masks, dtype=torch.long),
        "prefix_length": prefix,
        "stem_width": stem_width,
        "stem_index": torch.tensor(stem_index),
        "stem_rows": torch.tensor([stem_index.index(g) for g in range(len(groups))]),
    }


def batch_rows(
    rows: list[dict[str, Any]],
    pad_id: int,
    vocab: int,
    share_prefix: bool,
    device: Any = "cpu",
    share_stems: bool = True,
) -> dict[str, Any]:
    """The rows as tensors, every row ending at the last column: with ``share_prefix`` the prompt tree of
    :func:`prompt_tree_layout` (``share_stems`` False: its prefix level only, the benchmarks' reference), run by
    :func:`token_logprobs` one level at a time; without it plain left padding (``prefix_length`` and ``stem_width``
    0). With:

    * ``input_ids``, ``attention_mask`` [R, S]; ``prefix_length``, ``stem_width`` (ints), ``stem_index`` [R] and
      ``stem_rows`` [G] (or None);
    * ``completion_mask``, ``sampler_logprobs`` [R, W]; ``credit``, ``count`` [R]; ``window`` W (int);
    * ``support`` [R, W, vocab] or None (:func:`constrained_support`).
    """
    if share_prefix and share_stems:
        layout = prompt_tree_layout(rows, pad_id)
    else:
        limit = min(len(r["prompt_ids"]) for r in rows) - 1 if share_prefix else 0
        sequences = [r["prompt_ids"] + r["completion_ids"] for r in rows]
        layout = {**shared_prefix_batch(sequences, pad_id, max_prefix=limit), "stem_width": 0}
        layout.update(stem_index=None, stem_rows=None)
    window = max(len(r["completion_ids"]) for r in rows)
    completion_mask = torch.zeros((len(rows), window), dtype=torch.float)
    sampler = torch.zeros((len(rows), window))
    for i, row in enumerate(rows):
        c = len(row["completion_ids"])
        completion_mask[i, window - c :] = 1.0
        sampler[i, window - c :] = torch.tensor(row["sampler_logprobs"])
    support = constrained_support(rows, window, vocab)
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in layout.items()}
    return {
        **moved,
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

    The prompt tree of :func:`batch_rows` runs one level at a time, each level's keys and values serving the next:
    the shared prefix (the rules) once, each distinct stem once (the stem columns of its group's first row), then
    every row's tail. The same logprobs as running each row whole, and the same gradient (the copies' gradients add
    up in the one prefix and the one stem), for a fraction of the tokens. Positions follow the attention mask, as
    ``generate()`` numbers its rows.
    """
    window, prefix, stem = batch["window"], batch["prefix_length"], batch.get("stem_width", 0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = None
    if prefix:
        cache = model(input_ids=ids[:1, :prefix], use_cache=True, logits_to_keep=1).past_key_values
    if stem:
        first, end = batch["stem_rows"], prefix + stem
        if cache is not None:
            cache.batch_repeat_interleave(len(first))
        cache = model(
            input_ids=ids[first, prefix:end],
            attention_mask=mask[first, :end],
            position_ids=position_ids[first, prefix:end],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).past_key_values
        cache.batch_select_indices(batch["stem_index"])
    elif cache is not None:
        cache.batch_repeat_interleave(len(ids))
    start = prefix + stem
    logits = (
        model(
            input_ids=ids[:, start:],
            attention_mask=mask,
            position_ids=position_ids[:, start:],
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
