"""Prompt openings: a batch laid out around its rows' common opening
(:func:`coop_rl.prefix_batch.shared_prefix_batch`, so that its key/value cache is computed once), and those caches
reused from one batch to the next while the weights stay fixed.

Every round of a rollout sends the transformers engine a new batch whose rows open with the same rules (the system
prompt: 83 of an IPD prompt's ~110 tokens in SmolLM2's template). Within a batch the engine runs that opening once
(:func:`coop_rl.prefix_batch.shared_prefix_batch`); across batches it would run it again every round. A
:class:`PrefixMemo` keeps the caches of the openings it has computed and serves the next one from the longest
match, computing only the tokens after it (as vLLM's automatic prefix caching does, at token granularity).

It is only correct while the weights do not change: an engine over a model loaded from a folder keeps one for its
whole life, and an engine over the trainer's live model has one only inside
:meth:`coop_rl.players.hf.HFEngine.frozen_weights` (opened around one rollout). It is keyed by what else decides
the keys and values: the active LoRA adapters, whether adapters are off, and the autocast precision. A few entries
suffice (each round's opening extends the rules that the last round's already holds), so memory stays bounded.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["PrefixMemo", "weights_state"]


def weights_state(model: Any, bf16: bool) -> tuple:
    """What, besides the frozen weights, decides a prefix's keys and values: the LoRA adapters active on the model
    (peft's layer state, however it was set: ``set_adapter``, ``disable_adapter()`` or the trainer's
    ``active_adapter``) and the autocast precision."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layer = next((m for m in model.modules() if isinstance(m, BaseTunerLayer)), None)
    if layer is None:
        return (bf16,)
    return (bf16, tuple(layer.active_adapters), bool(layer.disable_adapters))


def common_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """The number of leading tokens ``a`` and ``b`` share (as :func:`coop_rl.prefix_batch.shared_prefix_batch` counts
    them: ``os.path.commonprefix`` compares sequences element by element)."""
    return len(os.path.commonprefix([a, b]))


class PrefixMemo:
    """Caches of prompt openings under fixed weights: :meth:`cache` returns the key/value cache of an opening,
    computing only what no stored opening covers. Returned caches are fresh objects over the stored tensors (the
    models extend and re-index a cache by making new tensors, never in place), so a caller may extend them."""

    def __init__(self, max_entries: int = 8, min_shared: int = 8) -> None:
        self.max_entries, self.min_shared = max_entries, min_shared
        self.entries: list[tuple[tuple, tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self.computed_tokens = self.reused_tokens = 0  # what the memo ran and what it saved, for tests and benchmarks

    def cache(self, model: Any, ids: torch.Tensor, state: tuple) -> Any:
        """The key/value cache of ``ids`` ([1, L], an opening without padding) under ``state``
        (:func:`weights_state`)."""
        key = tuple(ids[0].tolist())
        shared, layers = 0, None
        for entry_state, entry_ids, entry_layers in self.entries:
            n = common_length(entry_ids, key) if entry_state == state else 0
            if n > shared:
                shared, layers = n, entry_layers
        if shared < self.min_shared:
            shared, layers = 0, None
        self.computed_tokens += len(key) - shared
        self.reused_tokens += shared
        if shared == len(key):
            return _cache_of(layers, shared)
        past = _cache_of(layers, shared) if layers else None
        cache = model(input_ids=ids[:, shared:], past_key_values=past, use_cache=True, logits_to_keep=1).past_key_values
        stored = _layers_of(cache)
        if stored is not None:
            if len(self.entries) >= self.max_entries:
                self.entries.pop(0)
            self.entries.append((state, key, stored))
        return cache


def _layers_of(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Each layer's (keys, values), or None for a cache this memo cannot rebuild (sliding windows and the like)."""
    from transformers.cache_utils import DynamicLayer

    if not all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
        return None
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_of(layers: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> Any:
    """A new cache holding the first ``length`` positions of stored layers (views: nothing is copied)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k[:, :, :length], v[:, :, :length]) for k, v in layers])
