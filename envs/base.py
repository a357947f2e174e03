"""The multi-agent text-game interface every game implements.

A game is a seeded, stateful match between ``num_players`` seats. At each step the game names the seats that
must act now (several at once for simultaneous moves, one for sequential moves) together with what each sees,
as chat messages. Each acting seat answers with free text; the game parses it, applies a documented default
for text it cannot parse (counted as invalid), and advances. Rewards are recorded per seat per *timestep*
(one timestep = one round: the unit the credit assignment works on), so a round may span several steps
(Trust-and-Split: a chat step per speaker, then a simultaneous split step).

Games are pure Python: they know nothing of models, tokenizers or torch. Scripted strategies read the
structured state through :meth:`TextGame.view`; model players read :attr:`Turn.messages`.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Messages = list[dict[str, str]]


class GameConfigError(ValueError):
    """A game parameter has an unknown key or a value out of its domain (a user error: exit status 2)."""


@dataclass(frozen=True)
class Turn:
    """A request for one seat to act now."""

    seat: int
    phase: str  # game-specific: "action", "chat", "split", "contribute", "answer"
    messages: Messages  # the observation as chat messages (system + user)
    timestep: int  # the round this action belongs to (credit is per timestep)


@dataclass
class Event:
    """One line of a match transcript: who acted, what text they sent, what the game made of it."""

    timestep: int
    seat: int
    phase: str
    text: str
    parsed: Any
    valid: bool
    #: the observation the seat answered (its turn's last message), where the runner keeps transcripts
    prompt: str | None = None

    def to_dict(self) -> dict:
        prompt = {"prompt": self.prompt} if self.prompt is not None else {}
        return {
            "timestep": self.timestep,
            "seat": self.seat,
            "phase": self.phase,
            **prompt,
            "text": self.text,
            "parsed": self.parsed,
            "valid": self.valid,
        }


#: the largest magnitude of a float game parameter: payoffs are sums of products of parameters over up to 100,000
#: rounds, and far beyond this they overflow to inf (a summary that is no JSON) or lose every unit of precision
MAX_PARAM_MAGNITUDE = 1e6

#: the most answers a phase enumerates for constrained decoding (TextGame.answer_choices): Split-no-comm has
#: (units + 1)**3 of them, and a million strings (units 99) would take the players' token tries minutes to build
MAX_ANSWER_CHOICES = 10_000


@dataclass
class GameParam:
    """A game parameter settable with ``--set key=value``: its type, default, domain check and help text."""

    default: Any
    help: str
    type: type = float
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None

    def coerce(self, key: str, value: Any) -> Any:
        """Convert a command-line string (or a YAML value) into this parameter's type, checking its domain."""
        try:
            if self.type is bool and isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError
                converted: Any = lowered in {"true", "1", "yes"}
            elif self.type is int and isinstance(value, str):
                converted = int(value.strip())
            elif self.type is float and isinstance(value, str):
                converted = float(value.strip())
            else:
                converted = self._from_value(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
            raise GameConfigError(f"{key}={value!r}: expected {self.type.__name__}") from None
        if self.type is float and converted != converted:  # NaN
            raise GameConfigError(f"{key}={value!r}: expected a number")
        if self.type is float and not -MAX_PARAM_MAGNITUDE <= converted <= MAX_PARAM_MAGNITUDE:
            low = -MAX_PARAM_MAGNITUDE if self.low is None else max(self.low, -MAX_PARAM_MAGNITUDE)
            high = MAX_PARAM_MAGNITUDE if self.high is None else min(self.high, MAX_PARAM_MAGNITUDE)
            shown = [f"{bound:,.0f}" if float(bound).is_integer() else f"{bound:g}" for bound in (low, high)]
            raise GameConfigError(f"{key}={value!r}: must be between {shown[0]} and {shown[1]}")
        if self.choices is not None and converted not in self.choices:
            raise GameConfigError(f"{key}={value!r}: expected one of {', '.join(map(str, self.choices))}")
        if self.low is not None and converted < self.low:
            raise GameConfigError(f"{key}={value!r}: must be >= {self.low}")
        if self.high is not None and converted > self.high:
            raise GameConfigError(f"{key}={value!r}: must be <= {self.high}")
        return converted

    def _from_value(self, value: Any) -> Any:
        """A value that is no string (a recipe's YAML, JSON, Python) converted without truncating it: 2.5 is no
        int (``int()`` would make it 2), 0.5 no bool, and a bool no number. A ValueError when it does not fit."""
        if self.type is bool:
            if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
                return bool(value)
            raise ValueError
        if self.type in (int, float) and isinstance(value, bool):
            raise ValueError
        if self.type is int and isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            return int(value)
        return self.type(value)


#: the repeated games' ``show_horizon`` parameter: off by default, the prompts name the round but not how many there
#: are (a known last round invites end-game defection, and under a continuation probability the total is false)
SHOW_HORIZON = GameParam(
    False, "state the number of rounds in the prompts ('Round k of N.'); off: 'Round k.' only", bool
)


def round_line(round_index: int, rounds: int, show_horizon: bool) -> str:
    """A prompt's round line for the 0-based ``round_index``: "Round k." (the default) or "Round k of N."."""
    return f"Round {round_index + 1} of {rounds}." if show_horizon else f"Round {round_index + 1}."


class TextGame(ABC):
    """Base class of every text game. Subclasses define ``PARAMS`` and the game logic.

    Life cycle: ``game = Cls(**params)`` then ``game.reset(seed)``; while not ``game.done``:
    ``turns = game.pending_turns()`` and ``game.step({turn.seat: text for each turn})``.
    """

    name: str = ""
    PARAMS: dict[str, GameParam] = {}
    min_players: int = 2
    max_players: int = 2

    # ----- traits: what evaluation, reports and players read from the game instead of its name ---------------
    #: the seats are interchangeable (same payoffs, same information): evaluation also plays the policy in seat 1
    symmetric: bool = False
    #: the key of :meth:`metrics` (a per-seat list) that measures a seat's cooperation, or None where there is none
    cooperation_metric: str | None = None
    #: how reports name that metric (in headers and plots)
    cooperation_label: str = "cooperation rate"

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            raise GameConfigError(
                f"unknown parameter {unknown[0]!r} for game {self.name!r}; known: {', '.join(sorted(self.PARAMS))}"
            )
        self.params: dict[str, Any] = {
            key: spec.coerce(key, params[key]) if key in params else spec.default for key, spec in self.PARAMS.items()
        }
        self.num_players = self._num_players()
        if not self.min_players <= self.num_players <= self.max_players:
            raise GameConfigError(
                f"game {self.name!r} takes {self.min_players}..{self.max_players} players, got {self.num_players}"
            )
        self.validate()
        self.seed: int | None = None
        self.rng = random.Random(0)
        self.transcript: list[Event] = []
        self.rewards: list[list[float]] = []
        self.invalid_counts: list[int] = []
        self.action_counts: list[int] = []

    # ----- parameters -------------------------------------------------------------------------------------
    def _num_players(self) -> int:
        return int(self.params.get("players", 2))

    def validate(self) -> None:  # noqa: B027 - optional hook
        """Cross-parameter checks; raise GameConfigError."""

    # ----- life cycle -------------------------------------------------------------------------------------
    def reset(self, seed: int) -> None:
        """Start a new match. The same seed gives the same hands, values, orders and noise."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.transcript = []
        self.rewards = [[] for _ in range(self.num_players)]
        self.invalid_counts = [0] * self.num_players
        self.action_counts = [0] * self.num_players
        self._reset()

    @abstractmethod
    def _reset(self) -> None: ...

    @property
    @abstractmethod
    def done(self) -> bool: ...

    @abstractmethod
    def pending_turns(self) -> list[Turn]:
        """The seats that must act now, with their observations. Empty when the match is over."""

    def _turns(self, seats: list[int], phase: str, rules: str, prompt: Callable[[int], str]) -> list[Turn]:
        """A turn this round for each of ``seats`` in ``phase``: ``rules`` as the system message and
        ``prompt(seat)`` as the user message (every game shows its observations this way; ``self.round`` is the
        game's 0-based round, the turn's timestep)."""
        return [
            Turn(
                seat=seat,
                phase=phase,
                messages=[{"role": "system", "content": rules}, {"role": "user", "content": prompt(seat)}],
                timestep=self.round,
            )
            for seat in seats
        ]

    @abstractmethod
    def step(self, actions: dict[int, str]) -> None:
        """Apply the text actions of every pending seat (all of them at once)."""

    @abstractmethod
    def view(self, seat: int) -> dict[str, Any]:
        """The structured state a scripted strategy of this seat may see (what the seat's prompt says)."""

    # ----- accounting -------------------------------------------------------------------------------------
    def _record(self, timestep: int, seat: int, phase: str, text: str, parsed: Any, valid: bool) -> None:
        self.transcript.append(Event(timestep, seat, phase, text, parsed, valid))
        self.action_counts[seat] += 1
        if not valid:
            self.invalid_counts[seat] += 1

    def _check_actions(self, actions: dict[int, str]) -> None:
        expected = {turn.seat for turn in self.pending_turns()}
        if set(actions) != expected:
            raise ValueError(f"step() needs actions for seats {sorted(expected)}, got {sorted(actions)}")

    def returns(self) -> list[float]:
        """Undiscounted sum of each seat's rewards so far."""
        return [float(sum(r)) for r in self.rewards]

    def invalid_rates(self) -> list[float]:
        return [inv / max(1, n) for inv, n in zip(self.invalid_counts, self.action_counts, strict=True)]

    def metrics(self) -> dict[str, Any]:
        """Game-specific metrics of this match (per-seat lists or scalars). Aggregated by the runner."""
        return {}

    def answer_choices(self, turn: Turn) -> list[str] | None:
        """Every valid answer of ``turn`` where its phase has a finite set of them (constrained decoding samples
        among these exact strings), or None where answers are free text. Games with such phases override this,
        returning None too where the set would exceed ``MAX_ANSWER_CHOICES`` (its answers are then free text under
        the phase's :meth:`answer_pattern`). Each choice fully matches the phase's :meth:`answer_pattern`."""
        return None

    def answer_patterns(self) -> dict[str, str]:
        """The answer grammar: per phase this game asks for, the regex a well-formed answer fully matches (guided
        decoding retries or constrains answers with it). Every game overrides this for each of its phases."""
        return {}

    def answer_pattern(self, phase: str) -> str | None:
        """The regex a well-formed answer to ``phase`` fully matches, or None for a phase this game does not have."""
        return self.answer_patterns().get(phase)

    def transcript_dicts(self) -> list[dict]:
        return [event.to_dict() for event in self.transcript]


def clean_text(text: Any, limit: int = 100_000) -> str:
    """Make any model output safe to parse: a str, bounded in length, without NUL characters."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if len(text) > limit:
        text = text[:limit]
    return text.replace("\x00", "")


@dataclass
class MatchResult:
    """What a finished match leaves behind."""

    seed: int
    returns: list[float]
    rewards: list[list[float]]
    invalid_counts: list[int]
    action_counts: list[int]
    metrics: dict[str, Any]
    transcript: list[dict] = field(default_factory=list)
