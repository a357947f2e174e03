"""Iterated two-player matrix games played as text: the prisoner's dilemma (``ipd``) and battle of the sexes (``bos``).

Both players move simultaneously each round. Each sees the rules with the payoffs, the round number, the
history (the last round or the whole history) and, right before the question, what happened last round.
The prompt names the current round ("Round 3.") but not how many there are: with a known last round, defection
there goes unpunished and backward induction unravels cooperation (and under ``continuation < 1`` a stated total
would be false, so ``show_horizon`` is refused there). ``show_horizon=true`` states it ("Round 3 of 10."); the
scripted strategies know ``rounds`` either way, and the axelrod library's read the match length as axelrod's Match
tells it (``rounds``, or infinite under ``continuation < 1``).

Answer format (documented to players in the prompt): the option's label, alone or wrapped as
``<action>C</action>``. The parser takes the text inside the last complete ``<action>`` tag when there is one,
otherwise the whole text, and accepts it when exactly one of the two labels appears there as a standalone word
("C", "I choose C.", "<action> d </action>"); anything else is invalid. Invalid answers count as defection in
the PD (as the Advantage Alignment code does) and as a random option (from the game's seeded generator) in BoS.

Payoffs: the PD defaults to Axelrod's R=3, S=0, T=5, P=1 with labels C/D; ``payoffs=akata`` uses Akata et al.'s
R=8, S=0, T=10, P=5 with labels J (cooperate) and F (defect) and shuffles the order in which the options are
named each round. BoS (Akata et al.): J/J -> (10, 7), F/F -> (7, 10), mismatch -> (0, 0).
"""

from __future__ import annotations

import random
import re
import warnings
from typing import Any

from coop_rl.envs.base import SHOW_HORIZON, GameConfigError, GameParam, TextGame, Turn, clean_text, round_line
from coop_rl.envs.parsing import last_tag_content, strip_tag
from coop_rl.envs.strategies import ScriptedStrategy, register

COOPERATE, DEFECT = 0, 1  # option indices: option 0 is "cooperate" in the PD and "J" in BoS

PD_PAYOFFS = {
    # name: ((R, S, T, P), (label_cooperate, label_defect))
    "axelrod": ((3.0, 0.0, 5.0, 1.0), ("C", "D")),
    "akata": ((8.0, 0.0, 10.0, 5.0), ("J", "F")),
}

#: a word, with its apostrophe inside it: "I'd" is one word, not "I" and the label "d"
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)


def parse_option(text: str, labels: tuple[str, str]) -> int | None:
    """Option index named by ``text``, or None when it names neither or both labels."""
    text = clean_text(text)
    action = last_tag_content(text, "action")
    candidate = action if action is not None else strip_tag(text, "prediction")
    lowered = [label.lower() for label in labels]
    found = {lowered.index(word) for word in (w.lower() for w in _WORD.findall(candidate)) if word in lowered}
    return found.pop() if len(found) == 1 else None


def _social_cot_answer(prediction: str, action: str) -> str:
    return f"<prediction>{prediction}</prediction> <action>{action}</action>"


class IteratedMatrixGame(TextGame):
    """Shared logic of the iterated 2x2 games; subclasses fix the payoff table, labels and the invalid default."""

    PARAMS = {
        "rounds": GameParam(10, "number of rounds (the maximum when continuation < 1)", int, low=1, high=100_000),
        "continuation": GameParam(
            1.0, "probability that another round follows each round (1 = fixed length)", float, low=0.0, high=1.0
        ),
        "noise": GameParam(0.0, "probability that an intended action is flipped", float, low=0.0, high=1.0),
        "history": GameParam(
            "last", "history shown in the prompt: 'last' round only, 'full', or a number of rounds", str
        ),
        "social_cot": GameParam(
            False, "ask each player to predict the other's move before choosing (Akata et al.)", bool
        ),
        "shuffle_options": GameParam(
            False,
            "name the two options in a random order each round (Akata et al.; on by default with payoffs=akata)",
            bool,
        ),
        "show_horizon": SHOW_HORIZON,
    }

    def validate(self) -> None:
        history = self.params["history"]
        # ASCII digits, at most as many as the most rounds has (int() of 5,000 digits raises; "٣" is a digit too)
        digits = history.isascii() and history.isdigit() and len(history) <= 6
        if history not in {"last", "full"} and not (digits and int(history) >= 1):
            raise GameConfigError(f"history={history!r}: expected 'last', 'full' or a positive integer")
        if self.params["show_horizon"] and self.params["continuation"] < 1:
            raise GameConfigError("show_horizon=true states a number of rounds that continuation < 1 makes false")

    # --- traits (a subclass whose seats are interchangeable sets symmetric) ----------------------------------
    #: the fraction of rounds a seat chose option 0 (cooperate in the PD, J in BoS)
    cooperation_metric = "cooperation_rate"

    # --- subclass hooks -----------------------------------------------------------------------------------
    labels: tuple[str, str] = ("C", "D")

    def payoff(self, a0: int, a1: int) -> tuple[float, float]:
        raise NotImplementedError

    def default_option(self) -> int:
        raise NotImplementedError

    def rules_text(self) -> str:
        raise NotImplementedError

    # --- life cycle ---------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.moves: list[list[int]] = [[], []]  # actual plays (after noise)
        self.intended: list[list[int]] = [[], []]
        self.predictions: list[list[int | None]] = [[], []]
        self.round = 0
        self._over = False
        self._option_order = self._draw_order()

    def _draw_order(self) -> tuple[int, int]:
        if self.params["shuffle_options"] and self.rng.random() < 0.5:
            return (1, 0)
        return (0, 1)

    @property
    def done(self) -> bool:
        return self._over

    def _history_lines(self, seat: int) -> list[str]:
        other = 1 - seat
        history = self.params["history"]
        start = 0 if history == "full" else max(0, self.round - (1 if history == "last" else int(history)))
        lines = []
        for r in range(start, self.round):
            mine, theirs = self.moves[seat][r], self.moves[other][r]
            points = self.payoff(*((mine, theirs) if seat == 0 else (theirs, mine)))[seat]
            lines.append(
                f"Round {r + 1}: you played {self.labels[mine]}, the other played {self.labels[theirs]}; "
                f"you got {points:g} points."
            )
        return lines

    def _prompt(self, seat: int) -> str:
        first, second = (self.labels[i] for i in self._option_order)
        parts = [round_line(self.round, self.params["rounds"], self.params["show_horizon"])]
        if self.params["history"] != "last" and self.round > 0:
            parts.append("History:\n" + "\n".join(self._history_lines(seat)))
        if self.round == 0:
            parts.append("This is the first round.")
        else:
            other = 1 - seat
            # The co-player's last move is stated last, right before the question: what reciprocity reads.
            parts.append(
                f"Last round you played {self.labels[self.moves[seat][-1]]} "
                f"and the other played {self.labels[self.moves[other][-1]]}."
            )
        if self.params["social_cot"]:
            parts.append(
                "First predict the other player's choice as <prediction>X</prediction>, "
                f"then answer <action>X</action> with X = {first} or {second}."
            )
        else:
            parts.append(f"Answer {first} or {second}.")
        return "\n".join(parts)

    def pending_turns(self) -> list[Turn]:
        if self._over:
            return []
        return self._turns([0, 1], "action", self.rules_text(), self._prompt)

    def step(self, actions: dict[int, str]) -> None:
        self._check_actions(actions)
        plays = []
        for seat in (0, 1):
            text = clean_text(actions[seat])
            option = parse_option(text, self.labels)
            valid = option is not None
            if option is None:
                option = self.default_option()
            self.intended[seat].append(option)
            if self.params["social_cot"]:
                self.predictions[seat].append(self._parse_prediction(text))
            self._record(self.round, seat, "action", text, self.labels[option], valid)
            plays.append(option)
        # Noise flips the intended action after the choice (draws happen every round so that the same seed
        # gives the same flips whatever the players do: matches of one seed group stay comparable).
        flips = [self.rng.random() < self.params["noise"] for _ in (0, 1)]
        plays = [1 - p if flip else p for p, flip in zip(plays, flips, strict=True)]
        for seat in (0, 1):
            self.moves[seat].append(plays[seat])
        r0, r1 = self.payoff(plays[0], plays[1])
        self.rewards[0].append(r0)
        self.rewards[1].append(r1)
        self.round += 1
        ended_by_chance = self.rng.random() >= self.params["continuation"]
        self._over = self.round >= self.params["rounds"] or ended_by_chance
        self._option_order = self._draw_order()

    def _parse_prediction(self, text: str) -> int | None:
        prediction = last_tag_content(text, "prediction")
        return parse_option(prediction, self.labels) if prediction is not None else None

    def view(self, seat: int) -> dict[str, Any]:
        other = 1 - seat
        return {
            "round": self.round,
            "my_moves": list(self.moves[seat]),
            "their_moves": list(self.moves[other]),
            "labels": self.labels,
        }

    def answer_choices(self, turn: Turn) -> list[str] | None:
        """The option labels (e.g. C and D) in the action phase; with ``social_cot``, each prediction and action
        pair as the prompt asks for it (``<prediction>C</prediction> <action>D</action>``)."""
        if turn.phase != "action":
            return None
        if self.params["social_cot"]:
            return [_social_cot_answer(guess, move) for guess in self.labels for move in self.labels]
        return list(self.labels)

    def answer_patterns(self) -> dict[str, str]:
        """The action phase: one option label alone, whitespace around it allowed (``\\s*(C|D)\\s*``); with
        ``social_cot``, a ``<prediction>`` then an ``<action>``, each holding one label."""
        label = "(" + "|".join(re.escape(label) for label in self.labels) + ")"
        if self.params["social_cot"]:
            return {"action": rf"\s*<prediction>\s*{label}\s*</prediction>\s*<action>\s*{label}\s*</action>\s*"}
        return {"action": rf"\s*{label}\s*"}

    def metrics(self) -> dict[str, Any]:
        """Cooperation counts what the players chose (``intended``), before any noise flipped it."""
        rounds = max(1, self.round)
        coop = [sum(1 for m in self.intended[s] if m == COOPERATE) / rounds for s in (0, 1)]
        mutual = sum(1 for a, b in zip(*self.intended, strict=True) if a == b == COOPERATE) / rounds
        out: dict[str, Any] = {"cooperation_rate": coop, "mutual_cooperation_rate": mutual, "rounds": self.round}
        if self.params["social_cot"]:
            accuracy = []
            for seat in (0, 1):
                hits = [p == t for p, t in zip(self.predictions[seat], self.moves[1 - seat], strict=False)]
                accuracy.append(sum(hits) / max(1, len(hits)))
            out["prediction_accuracy"] = accuracy
        return out


class PrisonersDilemma(IteratedMatrixGame):
    name = "ipd"
    symmetric = True
    PARAMS = {
        **IteratedMatrixGame.PARAMS,
        "payoffs": GameParam(
            "axelrod",
            "payoff table: 'axelrod' (3,0,5,1; C/D) or 'akata' (8,0,10,5; J/F)",
            str,
            choices=tuple(PD_PAYOFFS),
        ),
    }

    def __init__(self, **params: Any) -> None:
        if params.get("payoffs") == "akata":  # Akata et al. shuffle the options: the default there, not a rule
            params.setdefault("shuffle_options", True)
        super().__init__(**params)

    def validate(self) -> None:
        super().validate()
        (self.R, self.S, self.T, self.P), self.labels = PD_PAYOFFS[self.params["payoffs"]]

    def payoff(self, a0: int, a1: int) -> tuple[float, float]:
        table = {
            (COOPERATE, COOPERATE): (self.R, self.R),
            (COOPERATE, DEFECT): (self.S, self.T),
            (DEFECT, COOPERATE): (self.T, self.S),
            (DEFECT, DEFECT): (self.P, self.P),
        }
        return table[(a0, a1)]

    def default_option(self) -> int:
        return DEFECT

    def rules_text(self) -> str:
        c, d = self.labels
        return (
            "You are playing a repeated game with another player. Each round you both choose "
            f"{c} or {d} at the same time. Points: both {c}: {self.R:g} each. Both {d}: {self.P:g} each. "
            f"You {d} and they {c}: you {self.T:g}, they {self.S:g}. You {c} and they {d}: you {self.S:g}, "
            f"they {self.T:g}. Maximize your total points."
        )


class BattleOfTheSexes(IteratedMatrixGame):
    name = "bos"
    symmetric = False  # the seats' payoffs differ: J/J pays the first player more, F/F the second
    labels = ("J", "F")
    # the metric counts J, which is seat 0's own preference and seat 1's concession: not a "cooperation" rate
    cooperation_label = "rate of choosing J"

    def payoff(self, a0: int, a1: int) -> tuple[float, float]:
        if a0 != a1:
            return (0.0, 0.0)
        return (10.0, 7.0) if a0 == COOPERATE else (7.0, 10.0)

    def _reset(self) -> None:
        super()._reset()
        # The random default of an invalid answer has a generator of its own: drawn from the game's, it would
        # shift every later noise flip, option order and match end by what the players said, where matches of
        # one seed group share those draws whatever the players do (docs/games.md).
        self._default_rng = random.Random(f"{self.seed}/invalid-default")

    def default_option(self) -> int:
        return self._default_rng.randrange(2)

    def rules_text(self) -> str:
        return (
            "You are playing a repeated game with another player. Each round you both choose J or F at the "
            "same time. Both J: the first player gets 10 points, the second 7. Both F: the first player gets 7, "
            "the second 10. Different choices: 0 points each. Maximize your total points."
        )

    def _prompt(self, seat: int) -> str:
        role = "You are the first player." if seat == 0 else "You are the second player."
        return role + "\n" + super()._prompt(seat)


# ----- scripted strategies, exactly as the axelrod library defines them --------------------------------------
MATRIX_GAMES = ("ipd", "bos")


class _MatrixStrategy(ScriptedStrategy):
    def act(self, game: TextGame, turn: Turn) -> str:
        view = game.view(turn.seat)
        return view["labels"][self.choose(view["my_moves"], view["their_moves"])]

    def choose(self, mine: list[int], theirs: list[int]) -> int:
        raise NotImplementedError


@register(MATRIX_GAMES, "allc")
class Cooperator(_MatrixStrategy):
    def choose(self, mine, theirs):
        return COOPERATE


@register(MATRIX_GAMES, "alld")
class Defector(_MatrixStrategy):
    def choose(self, mine, theirs):
        return DEFECT


@register(MATRIX_GAMES, "tft")
class TitForTat(_MatrixStrategy):
    def choose(self, mine, theirs):
        return theirs[-1] if theirs else COOPERATE


@register(MATRIX_GAMES, "stft")
class SuspiciousTitForTat(_MatrixStrategy):
    def choose(self, mine, theirs):
        return theirs[-1] if theirs else DEFECT


@register(MATRIX_GAMES, "tf2t")
class TitFor2Tats(_MatrixStrategy):
    def choose(self, mine, theirs):
        return DEFECT if theirs[-2:] == [DEFECT, DEFECT] else COOPERATE


@register(MATRIX_GAMES, "grim")
class Grudger(_MatrixStrategy):
    def choose(self, mine, theirs):
        return DEFECT if DEFECT in theirs else COOPERATE


@register(MATRIX_GAMES, "wsls")
class WinStayLoseShift(_MatrixStrategy):
    """Axelrod's WinStayLoseShift: a memory-one player (C after CC, D after CD, D after DC, C after DD)."""

    def choose(self, mine, theirs):
        if not mine:
            return COOPERATE
        return mine[-1] if theirs[-1] == COOPERATE else 1 - mine[-1]


@register(MATRIX_GAMES, "alternator")
class Alternator(_MatrixStrategy):
    def choose(self, mine, theirs):
        return DEFECT if mine and mine[-1] == COOPERATE else COOPERATE


@register(MATRIX_GAMES, "random")
class RandomStrategy(_MatrixStrategy):
    def choose(self, mine, theirs):
        return COOPERATE if self.rng.random() < 0.5 else DEFECT


class AxelrodStrategy(ScriptedStrategy):
    """Any strategy of the axelrod library (optional dependency), driven through the same text interface."""

    def __init__(self, strategy_name: str) -> None:
        super().__init__()
        try:
            with warnings.catch_warnings():  # axelrod warns at import about optional extras it does not need here
                warnings.simplefilter("ignore")
                import axelrod
        except ImportError:
            raise ImportError("axelrod: strategies need the axelrod package: pip install 'coop-rl[axelrod]'") from None
        cls = getattr(axelrod, strategy_name, None)
        if not (isinstance(cls, type) and issubclass(cls, axelrod.Player)):
            raise ValueError(f"unknown axelrod strategy {strategy_name!r}")
        self._axl = axelrod
        self._cls = cls
        self.name = f"axelrod:{strategy_name}"
        self._player = cls()
        self._opponent = axelrod.Player()
        self._synced = 0

    def reset(self, rng: random.Random) -> None:
        super().reset(rng)
        self._player = self._cls()
        self._opponent = self._axl.Player()
        self._player.set_seed(rng.randrange(2**31))
        self._synced = 0

    def act(self, game: TextGame, turn: Turn) -> str:
        view = game.view(turn.seat)
        axl_action = self._axl.Action
        to_axl = [axl_action.C, axl_action.D]
        # The match length and noise are the strategy's information (axelrod's Match tells its players), whatever
        # the prompt says: show_horizon only changes what model players are told. A match that may end after any
        # round (continuation < 1) has no known length: axelrod's Match with prob_end says inf.
        if self._synced == 0 and "rounds" in game.params:
            length = game.params["rounds"] if game.params.get("continuation", 1.0) == 1.0 else float("inf")
            self._player.set_match_attributes(length=length, noise=game.params.get("noise", 0.0))
        # Feed the rounds played since the last call into both histories, as axelrod's Match does after each
        # turn; the player object persists through the match, so strategies that keep internal state work.
        for mine, theirs in list(zip(view["my_moves"], view["their_moves"], strict=True))[self._synced :]:
            self._player.update_history(to_axl[mine], to_axl[theirs])
            self._opponent.update_history(to_axl[theirs], to_axl[mine])
        self._synced = len(view["my_moves"])
        move = self._player.strategy(self._opponent)
        return view["labels"][COOPERATE if move == axl_action.C else DEFECT]
