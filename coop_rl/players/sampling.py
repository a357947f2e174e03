"""Sampling settings shared by the model backends (hf, vllm, openai)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SamplingConfig:
    """How model players sample."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
