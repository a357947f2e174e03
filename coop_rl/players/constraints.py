"""Constrained answers: restrict a model's answer to the game's finite set of valid answers.

Where a phase's valid answers form a small finite set (the option labels of a matrix game), decoding can be
restricted to exactly those strings followed by the end-of-text token, as the Advantage Alignment code does
with guided decoding. The policy is then the model's distribution renormalised over the valid continuations at
each position: the sampler reports those renormalised logprobs, and the trainer computes pi_theta the same way,
so importance weights compare like with like. A forced token (the end-of-text after a complete label) has
probability 1 and carries no gradient: credit on an answer no longer moves the end-of-text token, which is what
lets a small model drift into invalid text under unconstrained REINFORCE.
"""

from __future__ import annotations

from typing import Any

from coop_rl.envs.base import TextGame, Turn


def answer_choices(game: TextGame, turn: Turn) -> list[str] | None:
    """The finite set of valid answers of a turn, or None where answers are free text."""
    labels = getattr(game, "labels", None)
    if turn.phase == "action" and isinstance(labels, tuple) and all(isinstance(label, str) for label in labels):
        return list(labels)
    return None


class ChoiceConstraint:
    """A prefix trie over the token sequences of the choices, each followed by the end-of-text token."""

    def __init__(self, tokenizer: Any, choices: list[str]) -> None:
        eos = tokenizer.eos_token_id
        self.sequences = [tokenizer.encode(choice, add_special_tokens=False) + [eos] for choice in choices]
        self.key = tuple(tuple(sequence) for sequence in self.sequences)

    def allowed(self, prefix: list[int]) -> list[int]:
        """Tokens that may follow ``prefix`` (the tokens generated so far); empty when the answer is complete."""
        depth = len(prefix)
        return sorted(
            {sequence[depth] for sequence in self.sequences if len(sequence) > depth and sequence[:depth] == prefix}
        )

    def allowed_per_position(self, completion: list[int]) -> list[list[int]]:
        """The allowed set at each position of a generated completion."""
        return [self.allowed(completion[:position]) for position in range(len(completion))]


class ConstrainedLogitsProcessor:
    """A transformers logits processor: rows with a constraint may only sample an allowed token."""

    def __init__(self, constraints: list[ChoiceConstraint | None], prompt_length: int) -> None:
        self.constraints = constraints
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        import torch

        for row, constraint in enumerate(self.constraints):
            if constraint is None:
                continue
            allowed = constraint.allowed(input_ids[row, self.prompt_length :].tolist())
            if not allowed:  # complete: only end-of-text remains possible (generation stops at it anyway)
                allowed = [constraint.sequences[0][-1]]
            mask = torch.full_like(scores[row], float("-inf"))
            mask[allowed] = 0.0
            scores[row] = scores[row] + mask
        return scores
