"""Sampling settings shared by the model backends (hf, vllm, openai)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the longest answer when neither the caller nor the policy folder (what it was trained with) says otherwise
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass
class SamplingConfig:
    """How model players sample. ``max_new_tokens`` None: each local policy's own training length (its folder's
    ``coop_rl_policy.json``), else :data:`DEFAULT_MAX_NEW_TOKENS`, resolved by ``make_player``."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int | None = DEFAULT_MAX_NEW_TOKENS


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """The tokens that end an answer: the tokenizer's EOS, then any other EOS the model folder's
    generation_config.json names (Qwen2.5-Instruct: ``<|endoftext|>`` besides ``<|im_end|>``), as vLLM stops, on
    every backend alike. An answer keeps the token it stopped at (its probability is learned too)."""
    named = getattr(generation_config, "eos_token_id", None)
    extra = named if isinstance(named, (list, tuple)) else [named]
    ids = [tokenizer.eos_token_id, *extra]
    return list(dict.fromkeys(int(i) for i in ids if isinstance(i, int) and not isinstance(i, bool)))


#: named in every transformers generate() call (coop_rl.players.hf): transformers fills any generation setting
#: left unset from the model folder's generation_config.json (Qwen2.5-Instruct's sets repetition_penalty 1.05),
#: and each of these would change the distribution sampled away from the model's own, whose log-probabilities the
#: loss is told (coop_rl.players.vllm_server.NEUTRAL_SAMPLING does the same for vLLM servers)
NEUTRAL_GENERATION: dict[str, Any] = {
    "num_beams": 1,
    "top_k": None,
    "min_p": None,
    "top_h": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "sequence_bias": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "guidance_scale": None,
    "watermarking_config": None,
    "renormalize_logits": False,
}
