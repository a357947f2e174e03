"""The player interface: whoever sits in a seat, scripted or a model, answers batches of turns.

The match runner gathers every pending turn that a player must answer, across all matches in flight, and hands
them over in one call, so a model backend can serve them with one batched generate call. A scripted player just
answers them one by one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from coop_rl.envs.base import TextGame, Turn


class PlayerSpecError(ValueError):
    """A player spec that cannot be understood or loaded (a user error: exit status 2)."""


#: the shape of every prompt the games send: the rules as a system message, then the state as a user message
SAMPLE_CHAT = ({"role": "system", "content": "The rules."}, {"role": "user", "content": "The state."})


def check_chat_template(tokenizer: Any, source: object, verb: str = "play") -> None:
    """A PlayerSpecError unless ``tokenizer`` renders a system and a user message into tokens: checked when a model
    loads, so that a template that refuses a system role (Gemma's, for one), or a tokenizer without its vocabulary,
    is one line, not a traceback in a match."""
    if not getattr(tokenizer, "chat_template", None):  # every prompt is a chat conversation
        raise PlayerSpecError(f"cannot {verb} {source}: its tokenizer has no chat template")
    try:
        text = tokenizer.apply_chat_template(list(SAMPLE_CHAT), tokenize=False, add_generation_prompt=True)
    except Exception as error:  # a template is code: jinja2's TemplateError from raise_exception(), or any other
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        raise PlayerSpecError(
            f"cannot {verb} {source}: its chat template refuses the games' system and user messages ({reason})"
        ) from None
    if not tokenizer(text, add_special_tokens=False)["input_ids"]:  # a folder whose tokenizer.json is missing loads
        # as a tokenizer with no vocabulary: every prompt would be empty, and the first batch a traceback
        raise PlayerSpecError(f"cannot {verb} {source}: its tokenizer turns a prompt into no tokens (no vocabulary?)")


@dataclass
class TurnRequest:
    """One turn to answer: the match it belongs to, and what the seat sees."""

    match_id: int
    game: TextGame
    turn: Turn


@dataclass
class Action:
    """A player's answer. Model players also return what the trainer needs: token ids and sampler logprobs."""

    text: str
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    #: with constrained answers: the tokens allowed at each completion position (the policy's support there)
    allowed: list[list[int]] | None = None


class Player(ABC):
    """Serves one or more seats. ``start_match`` is called for every (match, seat) it sits in before play."""

    spec: str = ""

    def start_match(self, match_id: int, seat: int, seed: int) -> None:  # noqa: B027 - optional hook
        """Reset any per-match state (scripted strategies' memory and randomness)."""

    @abstractmethod
    def act(self, requests: list[TurnRequest]) -> list[Action]:
        """Answer every request, in order."""

    def reseed(self, seed: int) -> None:  # noqa: B027 - optional hook
        """Restart the sampling randomness a model player keeps across calls from ``seed`` (the trainer does so
        every rollout, so that a resumed run samples as the unbroken one did)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engines and servers."""
