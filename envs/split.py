"""Split-no-comm (``split``), the second negotiation game of Advantage Alignment for LLMs, and its strategies.

Three item kinds (hats, books, balls), ``units`` units each, split every round by simultaneous per-item
proposals; both players see both value sets; no chat. The rules and the answer format are stated with
Trust-and-Split's in :mod:`coop_rl.envs.tas`, which also holds the proposal parser
(:func:`~coop_rl.envs.tas.parse_split_proposal`) and the proportional rule both games apply
(:func:`~coop_rl.envs.tas.split_amounts`).
"""

from __future__ import annotations

import itertools
from typing import Any

from coop_rl.envs.base import MAX_ANSWER_CHOICES, SHOW_HORIZON, GameParam, TextGame, Turn, clean_text, round_line
from coop_rl.envs.parsing import integer_pattern
from coop_rl.envs.strategies import ScriptedStrategy, register
from coop_rl.envs.tas import ITEMS, SPLIT_VALUES, horizon_text, parse_split_proposal, points_text, split_amounts


# ----- the game ------------------------------------------------------------------------------------------------
def _value_pairs() -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every ordered pair of value sets over ITEMS from SPLIT_VALUES that differ and have equal totals."""
    low, high = SPLIT_VALUES
    sets = [tuple(high if (mask >> i) & 1 else low for i in range(len(ITEMS))) for mask in range(2 ** len(ITEMS))]
    return [(a, b) for a in sets for b in sets if a != b and sum(a) == sum(b)]


VALUE_PAIRS = _value_pairs()  # fixed order, so a seeded draw from it is reproducible


class SplitNoComm(TextGame):
    """Split-no-comm: both players see both value sets and propose per-item splits simultaneously; no chat."""

    name = "split"
    symmetric = True  # each seat's value set is drawn from the same pairs, in either order
    PARAMS = {
        "rounds": GameParam(10, "number of rounds", int, low=1, high=100_000),
        "units": GameParam(10, "units of each item kind split each round", int, low=1, high=1_000_000),
        "show_horizon": SHOW_HORIZON,
    }

    def _reset(self) -> None:
        self.round = 0
        self.values: list[tuple[dict[str, int], dict[str, int]]] = []  # per round: (values of seat 0, of seat 1)
        self.history: list[dict[str, Any]] = []
        self._start_round()

    def _start_round(self) -> None:
        a, b = self.rng.choice(VALUE_PAIRS)  # one draw per round whatever the players did
        self.values.append((dict(zip(ITEMS, a, strict=True)), dict(zip(ITEMS, b, strict=True))))

    @property
    def done(self) -> bool:
        return self.round >= self.params["rounds"]

    def max_welfare(self, round_index: int) -> float:
        """Welfare when every item goes entirely to the player who values it more."""
        v0, v1 = self.values[round_index]
        return float(sum(self.params["units"] * max(v0[i], v1[i]) for i in ITEMS))

    # --- prompts ------------------------------------------------------------------------------------------
    def rules_text(self) -> str:
        u = self.params["units"]
        return (
            f"You are playing a repeated negotiation game with another player{horizon_text(self.params)}. "
            f"Each round {u} hats, {u} books and {u} balls are split between you. Each item kind is worth "
            f"{SPLIT_VALUES[0]} or {SPLIT_VALUES[1]} points per unit to each player; both players see both "
            f"players' values, and both players' values add up to the same total. There is no communication. "
            f"Both propose at the same time how many units of each item they keep. For each item, if the two "
            f"claims add up to {u} or less, each gets its claim; otherwise the units are shared in proportion "
            f"to the claims ({u} * your claim / sum of claims). Maximize your total points.\n"
            f"Answer format: <propose>hats=H books=B balls=L</propose> with H, B, L integers from 0 to {u}. "
            f"An invalid proposal counts as claiming all {u} units of every item."
        )

    @staticmethod
    def _values_text(values: dict[str, int]) -> str:
        return ", ".join(f"{item} {values[item]}" for item in ITEMS)

    def _prompt(self, seat: int) -> str:
        other = 1 - seat
        u = self.params["units"]
        parts = [round_line(self.round, self.params["rounds"], self.params["show_horizon"])]
        if self.history:
            last = self.history[-1]
            parts.append(
                "Last round you claimed "
                + self._values_text(last["claims"][seat])
                + "; the other claimed "
                + self._values_text(last["claims"][other])
                + f"; you got {points_text(last['rewards'][seat])}."
            )
        else:
            parts.append("This is the first round.")
        mine, theirs = self.values[self.round][seat], self.values[self.round][other]
        parts.append("Your values per unit: " + self._values_text(mine) + ".")
        parts.append("The other player's values per unit: " + self._values_text(theirs) + ".")
        parts.append(f"Answer <propose>hats=H books=B balls=L</propose> with H, B, L integers from 0 to {u}.")
        return "\n".join(parts)

    def pending_turns(self) -> list[Turn]:
        if self.done:
            return []
        return self._turns([0, 1], "split", self.rules_text(), self._prompt)

    def step(self, actions: dict[int, str]) -> None:
        self._check_actions(actions)
        units = self.params["units"]
        claims = []
        for seat in (0, 1):
            text = clean_text(actions[seat])
            claim = parse_split_proposal(text, units)
            valid = claim is not None
            if claim is None:
                claim = dict.fromkeys(ITEMS, units)
            self._record(self.round, seat, "split", text, claim, valid)
            claims.append(claim)
        got: tuple[dict[str, float], dict[str, float]] = ({}, {})
        for item in ITEMS:
            got[0][item], got[1][item] = split_amounts(claims[0][item], claims[1][item], units)
        values = self.values[self.round]
        rewards = [sum(got[seat][item] * values[seat][item] for item in ITEMS) for seat in (0, 1)]
        for seat in (0, 1):
            self.rewards[seat].append(rewards[seat])
        self.history.append(
            {"round": self.round, "values": values, "claims": tuple(claims), "got": got, "rewards": tuple(rewards)}
        )
        self.round += 1
        if not self.done:
            self._start_round()

    def answer_choices(self, turn: Turn) -> list[str] | None:
        """Every per-item proposal ``<propose>hats=H books=B balls=L</propose>`` (units + 1 cubed of them), or None
        above ``MAX_ANSWER_CHOICES`` (units over 20)."""
        units = range(self.params["units"] + 1)
        if len(units) ** len(ITEMS) > MAX_ANSWER_CHOICES:
            return None
        return [_propose_items(dict(zip(ITEMS, c, strict=True))) for c in itertools.product(units, repeat=len(ITEMS))]

    def answer_patterns(self) -> dict[str, str]:
        """The split: ``<propose>hats=H books=B balls=L</propose>``, each count 0..units."""
        number = integer_pattern(self.params["units"])
        return {"split": "<propose>" + " ".join(f"{item}={number}" for item in ITEMS) + "</propose>"}

    def view(self, seat: int) -> dict[str, Any]:
        other = 1 - seat
        current = not self.done
        return {
            "round": self.round,
            "phase": "split" if current else "done",
            "units": self.params["units"],
            "my_values": dict(self.values[self.round][seat]) if current else None,
            "their_values": dict(self.values[self.round][other]) if current else None,
            "history": [
                {
                    "round": h["round"],
                    "my_values": dict(h["values"][seat]),
                    "their_values": dict(h["values"][other]),
                    "my_claim": dict(h["claims"][seat]),
                    "their_claim": dict(h["claims"][other]),
                    "my_reward": h["rewards"][seat],
                }
                for h in self.history
            ],
        }

    def metrics(self) -> dict[str, Any]:
        played = len(self.history)
        welfare = sum(self.returns())
        best = sum(self.max_welfare(r) for r in range(played))
        return {
            "rounds": played,
            "welfare": welfare,
            "efficiency": welfare / best if best else 0.0,
            "invalid_rate": self.invalid_rates(),
        }


# ----- scripted strategies (they answer in text, through the game's parser) ------------------------------------
def _propose_items(claims: dict[str, int]) -> str:
    return "<propose>" + " ".join(f"{item}={claims[item]}" for item in ITEMS) + "</propose>"


@register(("split",), "greedy")
class SplitGreedy(ScriptedStrategy):
    """Claims every unit of every item."""

    def act(self, game: TextGame, turn: Turn) -> str:
        return _propose_items(dict.fromkeys(ITEMS, game.view(turn.seat)["units"]))


@register(("split",), "fair")
class SplitFair(ScriptedStrategy):
    """Claims half of every item (rounded down)."""

    def act(self, game: TextGame, turn: Turn) -> str:
        return _propose_items(dict.fromkeys(ITEMS, game.view(turn.seat)["units"] // 2))
