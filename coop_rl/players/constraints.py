"""Constrained answers: restrict a model's answer to the game's finite set of valid answers.

Where a phase's valid answers form a small finite set (the game declares it, ``TextGame.answer_choices``: the option
labels of a matrix game), decoding can be restricted to exactly those strings followed by the end-of-text token, as
the Advantage Alignment code does with guided decoding. The policy is then the model's distribution renormalised
over the valid continuations at each position: the sampler reports those renormalised logprobs, and the trainer
computes pi_theta the same way, so importance weights compare like with like. A forced token (the end-of-text after
a complete label) has probability 1 and carries no gradient: credit on an answer no longer moves the end-of-text
token, which is what lets a small model drift into invalid text under unconstrained REINFORCE.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any


class ChoiceConstraint:
    """A prefix trie over the token sequences of the choices, each followed by the end-of-text token."""

    def __init__(self, tokenizer: Any, choices: list[str]) -> None:
        eos = tokenizer.eos_token_id
        self.sequences = [tokenizer.encode(choice, add_special_tokens=False) + [eos] for choice in choices]
        self.key = tuple(tuple(sequence) for sequence in self.sequences)
        self.longest = max(len(sequence) for sequence in self.sequences)  # tokens of the longest choice, end included
        self._allowed: dict[tuple[int, ...], list[int]] = {}  # a trie has few nodes: memoise every one asked

    def allowed(self, prefix: list[int]) -> list[int]:
        """Tokens that may follow ``prefix`` (the tokens generated so far); empty when the answer is complete."""
        key = tuple(prefix)
        if key not in self._allowed:
            depth = len(key)
            self._allowed[key] = sorted(
                {
                    sequence[depth]
                    for sequence in self.sequences
                    if len(sequence) > depth and tuple(sequence[:depth]) == key
                }
            )
        return self._allowed[key]

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


def room_for_choices(max_new_tokens: int, longest_choice: int) -> int:
    """The answer length a constrained batch is sampled with: ``max_new_tokens``, or the longest declared choice's
    tokens (its end-of-text included) where that is longer. A constrained answer is one whole choice: a social-CoT
    answer is 26 tokens where the IPD recipes answer in 4, and a cut choice would be the invalid answer the
    constraint is there to rule out. Free-text rows of the same batch get the same room."""
    return max(max_new_tokens, longest_choice)


def sample_choices(
    constraints: list[ChoiceConstraint],
    first_logits: Any,
    next_logits: Callable[[Any], Any],
    temperature: float,
    top_p: float,
    generator: Any,
    max_tokens: int,
) -> list[tuple[list[int], list[float], list[list[int]]]]:
    """Sample one constrained answer per row by walking each row's choice trie: (token ids, logprobs, allowed sets).

    ``first_logits`` [rows, vocab] are the model's logits after the prompt; ``next_logits(columns)`` feeds the
    tokens chosen since the last call (a LongTensor [rows, k]) and returns the logits after them. The model runs
    only where some row still has a real choice: a forced token (one allowed option, e.g. the end-of-text after a
    complete label) is appended without a forward pass and has logprob 0. The logprob of a chosen token is the raw
    model distribution renormalised over the allowed set (what the trainer differentiates); sampling applies
    ``temperature`` and ``top_p`` to that renormalised distribution, as a logits processor in ``generate`` would.
    A finished row (its trie exhausted) feeds its last token again; its outputs are ignored. At most
    ``max_tokens`` tokens are chosen per row (a longer choice comes out cut, as ``max_new_tokens`` cuts it; the
    players make room for their longest choice, :func:`room_for_choices`).
    """
    import torch

    rows = len(constraints)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    allowed_sets: list[list[list[int]]] = [[] for _ in range(rows)]
    logits, unfed = first_logits, []  # unfed: columns of tokens appended since the logits were computed
    for depth in itertools.count():
        allowed = [constraint.allowed(tokens[row]) for row, constraint in enumerate(constraints)]
        if not any(allowed) or depth == max_tokens:
            return [(tokens[row], logprobs[row], allowed_sets[row]) for row in range(rows)]
        choosing = [row for row in range(rows) if len(allowed[row]) > 1]
        if choosing and unfed:
            logits = next_logits(torch.tensor(unfed, device=first_logits.device).T)
            unfed = []
        picks = _sample_allowed(logits, choosing, [allowed[row] for row in choosing], temperature, top_p, generator)
        for row in range(rows):
            if allowed[row]:
                token, logprob = picks.get(row, (allowed[row][0], 0.0))
                tokens[row].append(token)
                logprobs[row].append(logprob)
                allowed_sets[row].append(allowed[row])
        unfed.append([row_tokens[-1] if row_tokens else 0 for row_tokens in tokens])


def _sample_allowed(logits, rows, allowed, temperature, top_p, generator) -> dict[int, tuple[int, float]]:
    """{row: (token, raw logprob renormalised over its allowed tokens)} for the given rows of ``logits``.

    Works on the allowed tokens' logits only ([rows, most options], padded and masked), not the vocabulary.
    """
    import torch

    if not rows:
        return {}
    width = max(len(options) for options in allowed)
    device = logits.device
    options = torch.tensor([o + [o[0]] * (width - len(o)) for o in allowed], device=device)
    valid = torch.tensor([[True] * len(o) + [False] * (width - len(o)) for o in allowed], device=device)
    scores = logits[torch.tensor(rows, device=device)].float().gather(-1, options).masked_fill(~valid, float("-inf"))
    raw = torch.log_softmax(scores, dim=-1)
    if temperature <= 0:
        picked = scores.argmax(dim=-1)
    else:
        probs = torch.softmax(scores / temperature, dim=-1)
        if top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p (at least one)
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        picked = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    tokens = options.gather(-1, picked.unsqueeze(-1)).squeeze(-1)
    chosen = raw.gather(-1, picked.unsqueeze(-1)).squeeze(-1)
    return {row: (int(t), float(lp)) for row, t, lp in zip(rows, tokens.tolist(), chosen.tolist(), strict=True)}
