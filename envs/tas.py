"""Trust-and-Split (``tas``), its strategies, and the rules and parsers of both negotiation games (tas, ``split``).

The negotiation games of Advantage Alignment for LLMs; Split-no-comm's game class and strategies are in
:mod:`coop_rl.envs.split`, which reads its parser and the proportional rule from here.

Trust-and-Split (rock-paper-scissors variant). Two players, ``rounds`` rounds, ``coins`` coins per round. At the
start of each round each player privately draws a different hand of rock-paper-scissors from the game's seeded
generator (the draws never depend on what the players do, so every match of one seed gets the same hands). The
winning hand is the "upper" hand (each coin worth ``upper_value``), the losing one the "lower" hand (each coin
worth ``lower_value``); a player knows only its own hand, and so not its coin value, which depends on the other's
hand: the prompt names the seat's hand and nothing more (as AdAlignLLM's: "You don't know the other agent's hand
yet"). The chat is where hands can be told, truly or not. Each round has two phases:

* ``chat``: each player sends exactly one message, one after the other. The first speaker of round 0 is drawn
  from the game's seeded generator at reset (one draw per match, before the hands: the same seed gives the same
  order), then the first speaker alternates between rounds. The second speaker sees the first message.
* ``split``: both players simultaneously propose how many coins they keep (an integer 0..coins). If the claims
  add up to ``coins`` or less, each gets its claim; otherwise coins_i = coins * x_i / max(coins, x_0 + x_1).
  Reward = coins_i * own coin value, one reward per seat per round (timestep = round index, shared by the chat
  and split turns of that round). Afterwards each player learns whether the other had the upper or the lower
  hand and what it claimed (shown in the next round's prompt).

The prompts name the current round ("Round 3.") but not how many there are (a known last round invites a lie
or a grab there that cannot be punished); ``show_horizon=true`` states it ("Round 3 of 10.") and the number of
rounds in the rules. The same holds for Split-no-comm.

Answer formats (also stated in the prompts):

* chat: ``<message>your message</message>``. The parser takes the content of the last complete tag (the last
  opening tag that has a closing tag after it, up to its first closing tag), on one line (whitespace runs and
  line breaks as single spaces). No complete tag: the
  message is sent as an empty string and counted invalid. A message longer than ``max_message_chars`` is
  truncated (still valid).
* split: ``<propose>N</propose>``, N an integer 0..coins written with ASCII digits. The parser takes the last
  complete tag as above; a bare answer that is just an integer ("7") is accepted too. Anything else (no tag,
  out of range, "7.5", "-1", "seven", unicode digits such as "٣") is invalid and counts as a claim of ``coins``.

Tags are matched case-insensitively and may carry spaces inside the brackets (``< propose >``). All parsing is
linear in the length of the text (no regex backtracking across the text) and never raises.

Split-no-comm (``split``): three item kinds (hats, books, balls) with ``units`` units each. Each round the game
draws per-item values for both players from {1, 10} such that the two value sets differ on at least one item
and both players' totals are equal (the same number of 10s, in different positions). Both players see both
value sets; there is no chat; one simultaneous ``split`` phase per round, with the proportional rule above
applied to each item. Reward = sum over items of units_i * own value. Answer format:
``<propose>hats=H books=B balls=L</propose>``; inside the tag the items may come in any order, in any case,
with ``=`` or ``:`` and any separators (``hats: 3, books: 10, balls: 0``), singular names allowed. Each item must
appear exactly once with an integer 0..units (ASCII digits); otherwise the whole proposal is invalid and
counts as a claim of every unit of every item.
"""

from __future__ import annotations

import re
from typing import Any

from coop_rl.envs.base import (
    MAX_ANSWER_CHOICES,
    SHOW_HORIZON,
    GameConfigError,
    GameParam,
    TextGame,
    Turn,
    clean_text,
    round_line,
)
from coop_rl.envs.parsing import integer_pattern, last_tag_content
from coop_rl.envs.strategies import ScriptedStrategy, register

HANDS = ("rock", "paper", "scissors")
# BEATS[h] is the hand that h beats: rock beats scissors, paper beats rock, scissors beats paper.
BEATS = {"rock": "scissors", "paper": "rock", "scissors": "paper"}
ITEMS = ("hats", "books", "balls")
SPLIT_VALUES = (1, 10)

# A number with more significant digits than this is out of range of any sensible game (and int() of a
# 5000-digit string raises ValueError on Python >= 3.11), so it is rejected before conversion.
_MAX_DIGITS = 9
_INTEGER = re.compile(r"[0-9]+")


# ----- parsing -----------------------------------------------------------------------------------------------
def _small_int(text: str) -> int | None:
    """The value of a string of ASCII digits, or None when it has too many significant digits."""
    significant = text.lstrip("0")
    if len(significant) > _MAX_DIGITS:
        return None
    return int(significant) if significant else 0


def parse_message(text: Any, max_chars: int = 500) -> tuple[str, bool]:
    """The chat message in ``text`` and whether it was well-formed (no tag: ``("", False)``). Its line breaks
    and runs of whitespace become single spaces: the other's prompt shows it on one line, where a message could
    otherwise write lines that read as the game's own ("You: ...")."""
    text = clean_text(text)
    content = last_tag_content(text, "message")
    if content is None:
        return "", False
    return " ".join(content.split())[:max_chars], True


def parse_proposal(text: Any, coins: int = 10) -> int | None:
    """The number of coins claimed in ``text`` (0..coins), or None when the proposal is invalid."""
    text = clean_text(text)
    content = last_tag_content(text, "propose")
    candidate = (content if content is not None else text).strip()
    if not _INTEGER.fullmatch(candidate):
        return None
    value = _small_int(candidate)
    if value is None or not 0 <= value <= coins:
        return None
    return value


# An item name, ":" or "=", and an integer that is not the start of a decimal ("3.5") or a longer number.
_ITEM_CLAIM = re.compile(r"\b(hats?|books?|balls?)\s*[:=]\s*([0-9]+)(?!\.?[0-9])", re.IGNORECASE)


def parse_split_proposal(text: Any, units: int = 10) -> dict[str, int] | None:
    """Units claimed of each item in ``text`` (``{"hats": H, "books": B, "balls": L}``), or None when invalid."""
    text = clean_text(text)
    content = last_tag_content(text, "propose")
    if content is None:
        return None
    claims: dict[str, int] = {}
    for match in _ITEM_CLAIM.finditer(content):
        item = match.group(1).lower()
        item = item if item.endswith("s") else item + "s"
        value = _small_int(match.group(2))
        if item in claims or value is None or not 0 <= value <= units:
            return None  # an item named twice is ambiguous; out of range is invalid
        claims[item] = value
    if set(claims) != set(ITEMS):
        return None
    return {item: claims[item] for item in ITEMS}


def points_text(x: float) -> str:
    return f"{x:g} point" if x == 1 else f"{x:g} points"


def horizon_text(params: dict[str, Any]) -> str:
    """The rules' statement of the number of rounds: only with show_horizon."""
    return f": {params['rounds']} rounds" if params["show_horizon"] else ""


def split_amounts(x0: float, x1: float, total: float) -> tuple[float, float]:
    """The proportional rule: claims that fit are granted; otherwise total * x_i / (x_0 + x_1)."""
    denominator = max(total, x0 + x1)
    return total * x0 / denominator, total * x1 / denominator


# ----- Trust-and-Split ---------------------------------------------------------------------------------------
#: the longest chat message the answer grammar admits (guided decoding's bound; see answer_patterns)
GUIDED_MESSAGE_CHARS = 200


class TrustAndSplit(TextGame):
    """Trust-and-Split, rock-paper-scissors variant: one chat message each, then a simultaneous coin split."""

    name = "tas"
    symmetric = True  # hands are drawn at random, the first speaker alternates: no seat is favoured
    PARAMS = {
        "rounds": GameParam(10, "number of rounds", int, low=1, high=100_000),
        "coins": GameParam(10, "coins split each round", int, low=1, high=1_000_000),
        "upper_value": GameParam(
            10.0, "value of each coin to the player with the winning (upper) hand", float, low=0.0
        ),
        "lower_value": GameParam(1.0, "value of each coin to the player with the losing (lower) hand", float, low=0.0),
        "max_message_chars": GameParam(
            500, "chat messages are truncated to this many characters", int, low=1, high=100_000
        ),  # high: the most text a game reads of an answer (clean_text); the chat grammar repeats up to it
        "show_horizon": SHOW_HORIZON,
    }

    def validate(self) -> None:
        if not self.params["upper_value"] > 0:
            raise GameConfigError(f"upper_value={self.params['upper_value']!r}: must be > 0")
        if self.params["lower_value"] > self.params["upper_value"]:
            raise GameConfigError(
                f"lower_value={self.params['lower_value']!r}: must be <= upper_value={self.params['upper_value']!r}"
            )

    # --- life cycle ---------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.round = 0
        # Who speaks first in round 0: one draw per match, first, so it and the hands are functions of the seed.
        self.first_seat = self.rng.randrange(2)
        self.hands: list[tuple[str, str]] = []  # per round: (hand of seat 0, hand of seat 1)
        self.history: list[dict[str, Any]] = []  # per finished round: hands, kinds, claims, coins, rewards
        self.message_count = [0, 0]
        self.message_invalid = [0, 0]
        self.proposal_invalid = [0, 0]
        self._start_round()

    def _start_round(self) -> None:
        # Two draws per round whatever the players did: the hands are a function of the seed only.
        first = self.rng.randrange(3)
        second = (first + 1 + self.rng.randrange(2)) % 3
        self.hands.append((HANDS[first], HANDS[second]))
        self.phase = "chat"
        self.messages: list[tuple[int, str]] = []  # (seat, message) in speaking order, this round

    @property
    def done(self) -> bool:
        return self.round >= self.params["rounds"]

    def first_speaker(self, round_index: int) -> int:
        """The seat that sends the first message of that round: drawn per match, then alternating."""
        return (self.first_seat + round_index) % 2

    def kind(self, seat: int, round_index: int | None = None) -> str:
        """Whether the seat holds the "upper" (winning) or "lower" hand in that round (default: the current one)."""
        hands = self.hands[self.round if round_index is None else round_index]
        return "upper" if BEATS[hands[seat]] == hands[1 - seat] else "lower"

    def value(self, seat: int, round_index: int | None = None) -> float:
        return self.params[f"{self.kind(seat, round_index)}_value"]

    # --- prompts ------------------------------------------------------------------------------------------
    def rules_text(self) -> str:
        p = self.params
        return (
            f"You are playing a repeated negotiation game with another player{horizon_text(p)}. Each round "
            f"both of you draw different rock-paper-scissors hands (rock beats scissors, scissors beats paper, "
            f"paper beats rock). The player whose hand wins has the upper hand: each coin is worth "
            f"{points_text(p['upper_value'])} to them. The other has the lower hand: each coin is worth "
            f"{points_text(p['lower_value'])} to them. You know only your own hand, so not your coin value: it "
            f"depends on the other's hand, which you can learn only from what the other tells you. "
            f"{p['coins']} coins are split each "
            f"round. First each player sends one message to the other (who speaks first in the first round is "
            f"drawn at random; then the first speaker alternates). Then both propose at the same time how many "
            f"of the {p['coins']} coins they keep. If the two claims add up to "
            f"{p['coins']} or less, each gets its claim; otherwise the coins are shared in proportion to the "
            f"claims ({p['coins']} * your claim / sum of claims). After each round you learn whether the other "
            f"had the upper or the lower hand and what it claimed. Maximize your total points.\n"
            f"Answer formats: a message as <message>your message</message> (at most {p['max_message_chars']} "
            f"characters); a proposal as <propose>N</propose> with N an integer from 0 to {p['coins']}. "
            f"A message without the tags is sent as empty; an invalid proposal counts as a claim of {p['coins']}."
        )

    def _last_round_line(self, seat: int) -> str:
        if not self.history:
            return "This is the first round."
        last = self.history[-1]
        other = 1 - seat
        return (
            f"Last round you had the {last['kinds'][seat]} hand ({last['hands'][seat]}) and the other player had "
            f"the {last['kinds'][other]} hand. You claimed {last['claims'][seat]}, the other claimed "
            f"{last['claims'][other]}; you got {last['coins'][seat]:g} coins = {points_text(last['rewards'][seat])}."
        )

    def _prompt(self, seat: int) -> str:
        p = self.params
        parts = [
            round_line(self.round, p["rounds"], p["show_horizon"]),
            self._last_round_line(seat),
            f"Your hand this round: {self.hands[self.round][seat]}. You do not know the other player's hand.",
        ]
        if self.messages:
            lines = [
                f"{'You' if s == seat else 'Other player'}: {m if m else '(empty message)'}" for s, m in self.messages
            ]
            parts.append("Messages this round:\n" + "\n".join(lines))
        if self.phase == "chat":
            parts.append(
                f"Send your message to the other player as <message>your message</message> "
                f"(at most {p['max_message_chars']} characters)."
            )
        else:
            parts.append(
                f"Propose how many of the {p['coins']} coins you keep: answer <propose>N</propose> with N an "
                f"integer from 0 to {p['coins']}."
            )
        return "\n".join(parts)

    def pending_turns(self) -> list[Turn]:
        if self.done:
            return []
        # chat: the speakers take turns (first speaker, then the other); split: both at once
        seats = [(self.first_speaker(self.round) + len(self.messages)) % 2] if self.phase == "chat" else [0, 1]
        return self._turns(seats, self.phase, self.rules_text(), self._prompt)

    # --- moves --------------------------------------------------------------------------------------------
    def step(self, actions: dict[int, str]) -> None:
        self._check_actions(actions)
        if self.phase == "chat":
            (seat,) = actions
            text = clean_text(actions[seat])
            message, valid = parse_message(text, self.params["max_message_chars"])
            self.message_count[seat] += 1
            if not valid:
                self.message_invalid[seat] += 1
            self._record(self.round, seat, "chat", text, message, valid)
            self.messages.append((seat, message))
            if len(self.messages) == 2:
                self.phase = "split"
            return
        coins = self.params["coins"]
        claims = []
        for seat in (0, 1):
            text = clean_text(actions[seat])
            claim = parse_proposal(text, coins)
            valid = claim is not None
            if claim is None:
                claim = coins
                self.proposal_invalid[seat] += 1
            self._record(self.round, seat, "split", text, claim, valid)
            claims.append(claim)
        got = split_amounts(claims[0], claims[1], coins)
        rewards = [got[seat] * self.value(seat) for seat in (0, 1)]
        for seat in (0, 1):
            self.rewards[seat].append(rewards[seat])
        self.history.append(
            {
                "round": self.round,
                "hands": self.hands[self.round],
                "kinds": (self.kind(0), self.kind(1)),
                "messages": list(self.messages),
                "claims": tuple(claims),
                "coins": got,
                "rewards": tuple(rewards),
            }
        )
        self.round += 1
        if not self.done:
            self._start_round()

    # --- structured state ---------------------------------------------------------------------------------
    def answer_choices(self, turn: Turn) -> list[str] | None:
        """The split phase: ``<propose>N</propose>`` for N = 0..coins (None above ``MAX_ANSWER_CHOICES``); the chat
        is free text."""
        if turn.phase != "split" or self.params["coins"] + 1 > MAX_ANSWER_CHOICES:
            return None
        return [_propose(n) for n in range(self.params["coins"] + 1)]

    def answer_patterns(self) -> dict[str, str]:
        """The chat: one ``<message>`` without '<' of at most ``max_message_chars`` characters, and at most
        ``GUIDED_MESSAGE_CHARS`` (200): the game reads a longer message (truncated), but a guided one must close its
        tag within the answer's token budget (a random model filled 500 characters past 256 tokens, cut before its
        ``</message>``); the split: ``<propose>N</propose>``."""
        chars = min(GUIDED_MESSAGE_CHARS, self.params["max_message_chars"])
        return {
            "chat": rf"<message>[^<]{{0,{chars}}}</message>",
            "split": "<propose>" + integer_pattern(self.params["coins"]) + "</propose>",
        }

    def view(self, seat: int) -> dict[str, Any]:
        other = 1 - seat
        current = not self.done
        return {
            "round": self.round,
            "phase": self.phase if current else "done",
            "coins": self.params["coins"],
            "hand": self.hands[self.round][seat] if current else None,  # not its kind: the seat does not know it
            "messages": [{"seat": s, "text": m} for s, m in self.messages] if current else [],
            # what this seat learned about each finished round
            "history": [
                {
                    "round": h["round"],
                    "my_hand": h["hands"][seat],
                    "my_kind": h["kinds"][seat],
                    "their_kind": h["kinds"][other],
                    "my_claim": h["claims"][seat],
                    "their_claim": h["claims"][other],
                    "my_coins": h["coins"][seat],
                    "my_reward": h["rewards"][seat],
                }
                for h in self.history
            ],
        }

    def metrics(self) -> dict[str, Any]:
        played = len(self.history)
        p = self.params
        welfare = sum(self.returns())
        upper_coins = sum(h["coins"][h["kinds"].index("upper")] for h in self.history)
        return {
            "rounds": played,
            "welfare": welfare,
            "efficiency": welfare / (p["upper_value"] * p["coins"] * played) if played else 0.0,
            "message_invalid_rate": [self.message_invalid[s] / max(1, self.message_count[s]) for s in (0, 1)],
            "proposal_invalid_rate": [self.proposal_invalid[s] / max(1, played) for s in (0, 1)],
            "mean_claim": [sum(h["claims"][s] for h in self.history) / max(1, played) for s in (0, 1)],
            # share of the coins that went to the upper hand (1 = the welfare-maximizing split)
            "upper_coin_share": upper_coins / (p["coins"] * played) if played else 0.0,
        }


# ----- scripted strategies (they answer in text, through the game's own parser) -------------------------------
def _propose(n: int) -> str:
    return f"<propose>{n}</propose>"


@register(("tas",), "greedy")
class TasGreedy(ScriptedStrategy):
    """Always claims every coin; says something neutral."""

    def act(self, game: TextGame, turn: Turn) -> str:
        if turn.phase == "chat":
            return "<message>Hello. Let's make a deal this round.</message>"
        return _propose(game.view(turn.seat)["coins"])


_HAND_WORD = re.compile(r"\b(rock|paper|scissors)\b", re.IGNORECASE)


def stated_hand(message: str) -> str | None:
    """The hand a chat message states: the first of rock, paper and scissors it names as a word, or None."""
    match = _HAND_WORD.search(message)
    return match.group(1).lower() if match else None


@register(("tas",), "honest")
class TasHonest(ScriptedStrategy):
    """Welfare-maximizing, honest and trusting: tells its true hand and believes the hand the other's message states
    (:func:`stated_hand`); claims all coins when that makes its hand the upper one, none when the lower. When the
    other states no hand (or its own), it does not know its value and claims half (rounded down)."""

    def act(self, game: TextGame, turn: Turn) -> str:
        view = game.view(turn.seat)
        if turn.phase == "chat":
            return f"<message>My hand is {view['hand']}. The upper hand should take all the coins.</message>"
        theirs = [stated_hand(m["text"]) for m in view["messages"] if m["seat"] != turn.seat]
        other = theirs[0] if theirs else None
        if other is None or other == view["hand"]:
            return _propose(view["coins"] // 2)
        return _propose(view["coins"] if BEATS[view["hand"]] == other else 0)


@register(("tas",), "fair")
class TasFair(ScriptedStrategy):
    """Always claims half the coins (rounded down)."""

    def act(self, game: TextGame, turn: Turn) -> str:
        if turn.phase == "chat":
            return "<message>Let's split the coins evenly.</message>"
        return _propose(game.view(turn.seat)["coins"] // 2)
