"""The prompt openings' caches reused across batches (coop_rl/players/prefix_memo.py): served from the longest stored
match, equal to computing the opening afresh, never served across adapters. A small random Qwen2 built from its
config, with two LoRA adapters, is the model (fast: no tiny-model build)."""

from __future__ import annotations

import torch

from coop_rl.players.prefix_memo import PrefixMemo, common_length, weights_state

from helpers import small_qwen2

RULES = list(range(10, 22))  # 12 tokens every opening starts with


def _model():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(small_qwen2(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.add_adapter("other", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at zero (a no-op adapter): make both adapters change the keys and values
            parameter.data.normal_(0, 0.5)
    return model.eval()


def _fresh(model, ids):
    return model(input_ids=torch.tensor([ids]), use_cache=True).past_key_values


def _equal(cache, reference):
    return all(
        torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)
        for a, b in zip(cache.layers, reference.layers, strict=True)
    )


def test_common_length():
    assert common_length((1, 2, 3), (1, 2, 4, 5)) == 2 and common_length((), (1,)) == 0
    assert common_length((1, 2), (1, 2)) == 2 and common_length((7,), (1,)) == 0


@torch.inference_mode()
def test_an_opening_is_served_from_the_longest_stored_match():
    model, memo = _model(), PrefixMemo(min_shared=8)
    state = weights_state(model, bf16=False)
    round_2, round_3 = RULES + [30, 31, 32], RULES + [33, 34]
    first = memo.cache(model, torch.tensor([round_2]), state)
    assert (memo.computed_tokens, memo.reused_tokens) == (15, 0) and _equal(first, _fresh(model, round_2))
    first.batch_repeat_interleave(3)  # what the engine does with it: the stored tensors stay as they were
    second = memo.cache(model, torch.tensor([round_3]), state)
    assert (memo.computed_tokens, memo.reused_tokens) == (15 + 2, 12)  # the 12 rules' tokens came from round 2
    assert _equal(second, _fresh(model, round_3))
    again = memo.cache(model, torch.tensor([round_2]), state)  # stored whole: nothing to compute
    assert (memo.computed_tokens, memo.reused_tokens) == (17, 12 + 15) and _equal(again, _fresh(model, round_2))
    short = [10, 11, 12, 13, 50, 51, 52, 53, 54, 55]  # shares 4 tokens: fewer than min_shared, computed whole
    assert _equal(memo.cache(model, torch.tensor([short]), state), _fresh(model, short))
    assert (memo.computed_tokens, memo.reused_tokens) == (27, 27)


@torch.inference_mode()
def test_an_opening_is_never_served_across_adapters():
    model, memo = _model(), PrefixMemo()
    ids = RULES + [30, 31]
    default = weights_state(model, bf16=False)
    model.set_adapter("other")
    other = weights_state(model, bf16=False)
    with model.disable_adapter():
        base = weights_state(model, bf16=False)
        base_cache = memo.cache(model, torch.tensor([ids]), base)
        assert _equal(base_cache, _fresh(model, ids))
    assert len({default, other, base, weights_state(model, bf16=True)}) == 4
    other_cache = memo.cache(model, torch.tensor([ids]), other)
    assert memo.reused_tokens == 0 and _equal(other_cache, _fresh(model, ids))
    assert not _equal(other_cache, base_cache)  # the adapter changes the keys and values: a shared entry would be wrong
