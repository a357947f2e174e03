"""Sequential public goods game (``spgg``), after MAC-SPGG (arXiv 2508.02076).

N players (``players``, default 3) act one after another in seat order (seat 0 first) in each of ``rounds``
rounds; every round is one stage game and pays every seat one reward at its end (timestep = round index).
Each player's score q_i in [0, 1] enters one of two reward rules (the formulas live in
:mod:`coop_rl.envs.spgg_solver`, which the game calls, so the game and the SPNE solver cannot disagree):

* ``classic``:     u_i = e*(1 - q_i) + (r/N) * e * sum_j q_j
* ``redesigned``:  u_i = (rho/N)*e*sum_j q_j + gamma*e*q_i*m_i - kappa*e*q_i^2 - P*[ (1/N)*sum_j q_j < B ],
  m_i = mean q of the players before i this round; the first mover has none and uses ``first_mover_mean``
  (default 0: no cooperation bonus for the first mover). With m_1 = 1 the first mover's marginal payoff at full
  contribution is (rho/N)e + gamma*e - 2*kappa*e = +1 under the default coefficients whatever the followers do,
  so the SPNE is (1, 1, 1) with or without the penalty; with m_1 = 0 it is (0.6, 1, 1), and (0.6, 0.9, 0.9)
  without the penalty (``coop-rl solve --game spgg``; see :mod:`coop_rl.envs.spgg_solver`).

Rewards are computed exactly (fractions) and paid as floats.

Modes:

* ``contribution``: each player declares q_i, a contribution level k/K of its endowment (K = ``levels``).
* ``task``: each round the game draws an arithmetic question from its seeded generator (the same seed gives
  the same questions whatever the players do); players answer in turn and q_i = 1 when player i's answer is
  correct, else 0 (the verifier). The group's output is the correctness of the last player's answer.

Observation: ``full`` - a player sees every predecessor's contribution (task mode: answer) and message this
round; ``partial`` - only its immediate predecessor's. Players also see their own contribution and reward of
the previous round. Predecessors' correctness is never shown in task mode.

Answer formats (stated in the prompts):

* contribution: ``<contribute>X</contribute>``, X a number in [0, 1] ("0.7", ".7", "1"), a percentage ("70%")
  or a fraction ("7/10"); a bare answer that is just such a number is accepted too. X is snapped to the
  nearest level k/K (halves round up). Out of range, unparseable, longer than 64 characters, "nan", "inf",
  or no tag around other text: invalid, and the player contributes 0 (free rides).
* task: ``<answer>N</answer>``, N an integer written with ASCII digits (sign, thousands commas "1,234" and a
  trailing ".0"/"." allowed, at most 50 characters); a bare integer as the whole answer is accepted too.
  Anything else is invalid and scores q = 0.
* both modes, optional: ``<message>text</message>`` (at most 300 characters, longer is truncated) is shown to
  the players after you who can see you. A tag quoted inside it is the message's text, not a declaration.

Tags are matched case-insensitively, may carry spaces inside the brackets, and the last complete tag counts
(nested tags resolve to the innermost one). Parsing is linear in the text length and never raises. The parsers,
the answer formats and the task family live in :mod:`coop_rl.envs.spgg_text`.

Scripted strategies: ``free_rider`` (contributes 0; task mode: answers 0, which is never a correct answer),
``full`` (contributes 1; task mode: the correct answer), ``conditional`` (the mean of the visible predecessors'
contributions snapped to a level; as first mover it opens with 1, a conditional cooperator's first move, which
is not the reward's ``first_mover_mean``; task mode: the correct answer when first or when the
immediate predecessor's answer is correct, otherwise a copy of that answer).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from coop_rl.envs.base import GameConfigError, GameParam, TextGame, Turn, clean_text
from coop_rl.envs.spgg_solver import FIRST_MOVER_MEAN, REDESIGNED_KEYS, SPNEResult, exact, solve_params, stage_utilities
from coop_rl.envs.spgg_text import (
    MAX_MESSAGE_CHARS,
    evaluate_expression,
    format_answer,
    format_contribution,
    make_task,
    parse_answer,
    parse_contribution,
    parse_message,
    snap,
)
from coop_rl.envs.strategies import ScriptedStrategy, register


def _num(x: Fraction | float) -> str:
    """A coefficient as the prompt shows it: exact integers as integers, the rest with 6 significant digits."""
    x = exact(x)
    return str(x.numerator) if x.denominator == 1 else f"{float(x):.6g}"


# ----- the game ----------------------------------------------------------------------------------------------
class SequentialPublicGoods(TextGame):
    """MAC-SPGG: players act in seat order; one reward per seat per round from the classic or redesigned rule."""

    name = "spgg"
    #: seats act in order and see their predecessors: not symmetric. Cooperation is the mean contribution level
    #: (task mode: the mean answer correctness, the same score q).
    cooperation_metric = "mean_contribution"
    cooperation_label = "mean contribution level"
    min_players = 2
    max_players = 8
    PARAMS = {
        "players": GameParam(3, "number of players N (they act in seat order)", int, low=2, high=8),
        "levels": GameParam(10, "K: a contribution is a level k/K of the endowment, k = 0..K", int, low=1, high=1000),
        "endowment": GameParam(10.0, "e: each player's endowment per round", float, low=0.0),
        "r": GameParam(1.8, "classic reward: multiplier of the public pot", float, low=0.0),
        "rho": GameParam(1.8, "redesigned reward: multiplier of the public pot", float, low=0.0),
        "gamma": GameParam(1.5, "redesigned reward: cooperation bonus tied to the predecessors' mean", float, low=0.0),
        "kappa": GameParam(1.0, "redesigned reward: convex effort cost", float, low=0.0),
        "penalty": GameParam(15.0, "redesigned reward: P, collective penalty under the threshold", float, low=0.0),
        "threshold": GameParam(
            0.85,
            "redesigned reward: B, the mean contribution under which the penalty applies",
            float,
            low=0.0,
            high=1.0,
        ),
        "first_mover_mean": GameParam(
            FIRST_MOVER_MEAN,
            "redesigned reward: the predecessor mean m the first mover's bonus uses (0: no bonus; 1: full bonus)",
            float,
            low=0.0,
            high=1.0,
        ),
        "reward": GameParam(
            "redesigned", "reward rule: 'redesigned' (MAC-SPGG) or 'classic'", str, choices=("redesigned", "classic")
        ),
        "observation": GameParam(
            "full",
            "'full': see every predecessor; 'partial': only the immediate predecessor",
            str,
            choices=("full", "partial"),
        ),
        "mode": GameParam(
            "contribution",
            "'contribution': declare a level; 'task': answer an arithmetic question",
            str,
            choices=("contribution", "task"),
        ),
        "rounds": GameParam(1, "number of stage games (one reward per seat per round)", int, low=1, high=100_000),
        "task_digits": GameParam(2, "task mode: digits of the two main operands", int, low=1, high=9),
    }

    def validate(self) -> None:
        for key in ("endowment", "r", "rho", "gamma", "kappa", "penalty", "threshold", "first_mover_mean"):
            if not math.isfinite(self.params[key]):
                raise GameConfigError(f"{key}={self.params[key]!r}: must be finite")

    # --- life cycle ---------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.round = 0
        # Per round (the last one may be in progress), in seat order as the players act:
        self.q: list[list[Fraction]] = []  # scores: declared level, or 1/0 answer correctness
        self.answers: list[list[int | None]] = []  # task mode: parsed answers (None = invalid)
        self.messages: list[list[str]] = []
        self.tasks: list[tuple[str, int]] = []  # task mode: (expression, correct value)
        self._over = False
        self._start_round()

    def _start_round(self) -> None:
        self.q.append([])
        self.answers.append([])
        self.messages.append([])
        if self.params["mode"] == "task":
            # Only the task draws use the generator, one per round: the tasks are a function of the seed alone.
            self.tasks.append(make_task(self.rng, self.params["task_digits"]))

    @property
    def done(self) -> bool:
        return self._over

    @property
    def acting_seat(self) -> int:
        return len(self.q[-1])

    def _visible(self, seat: int) -> list[int]:
        """Seats before ``seat`` that have acted this round and that ``seat`` may see."""
        acted = range(min(seat, len(self.q[-1]) if self.q else 0))
        if self.params["observation"] == "partial":
            return [j for j in acted if j == seat - 1]
        return list(acted)

    # --- prompts ------------------------------------------------------------------------------------------
    def _formula(self) -> str:
        p, n = self.params, self.num_players
        e = exact(p["endowment"])
        if p["reward"] == "classic":
            formula = (
                f"Your reward for a round = {_num(e)} * (1 - q_you) + {_num(exact(p['r']) / n * e)} * "
                f"(sum of the {n} players' q)."
            )
            if p["mode"] == "contribution":
                formula += (
                    f" (What you keep is yours; the pot is multiplied by {_num(p['r'])} and shared equally among "
                    f"the {n} players.)"
                )
            return formula
        return (
            f"Your reward for a round = {_num(exact(p['rho']) / n * e)} * (sum of the {n} players' q) "
            f"+ {_num(exact(p['gamma']) * e)} * q_you * m - {_num(exact(p['kappa']) * e)} * q_you^2 "
            f"- {_num(p['penalty'])} if the average q of the {n} players is below {_num(p['threshold'])} "
            "(no penalty otherwise), where m is the average q of the players who acted before you this round "
            f"(m = {_num(p['first_mover_mean'])} for the first player)."
        )

    def rules_text(self) -> str:
        p, n = self.params, self.num_players
        rounds = p["rounds"]
        parts = [
            f"You are playing a sequential public goods game with {n} players over {rounds} "
            f"round{'s' if rounds != 1 else ''}. Each round the players act one after another in a fixed order "
            "(player 1 first)."
        ]
        if p["mode"] == "contribution":
            step = _num(Fraction(1, p["levels"]))
            parts.append(
                f"Each round every player has an endowment of {_num(p['endowment'])} points and chooses q, the "
                f"fraction of it to contribute to the public pot: a number from 0 to 1 in steps of {step}."
            )
        else:
            parts.append(
                "Each round the group answers an arithmetic question. The players answer one after another; the "
                "last player's answer is the group's answer. Your score q is 1 if your answer is correct and 0 "
                f"otherwise. Each player has an endowment of {_num(p['endowment'])} points."
            )
        parts.append(self._formula())
        if p["observation"] == "full":
            seen = "the answers" if p["mode"] == "task" else "the contributions"
            parts.append(f"You see {seen} and messages of all players who acted before you this round.")
        else:
            seen = "answer" if p["mode"] == "task" else "contribution"
            parts.append(
                f"You see only the {seen} and message of the player right before you, not those of earlier players."
            )
        parts.append("Maximize your total reward.")
        return " ".join(parts)

    def _prompt(self, seat: int) -> str:
        p, n = self.params, self.num_players
        task_mode = p["mode"] == "task"
        parts = [f"Round {self.round + 1} of {p['rounds']}. You are player {seat + 1} of {n}."]
        if self.round > 0:
            mine, reward = self.q[self.round - 1][seat], self.rewards[seat][self.round - 1]
            if task_mode:
                expression, value = self.tasks[self.round - 1]
                outcome = "correct" if mine == 1 else "wrong"
                parts.append(
                    f"Last round the answer to {expression} was {value}; yours was {outcome} and you earned "
                    f"{reward:g} points."
                )
            else:
                parts.append(f"Last round you contributed {_num(mine)} and earned {reward:g} points.")
        if task_mode:
            parts.append(f"Question: What is {self.tasks[-1][0]}?")
        visible = self._visible(seat)
        if seat == 0:
            parts.append("You act first this round.")
        elif not visible:
            parts.append("You see nothing of the players before you.")
        for j in visible:
            done = (
                f"answered {self._answer_text(self.answers[-1][j])}"
                if task_mode
                else (f"contributed {_num(self.q[-1][j])}")
            )
            line = f"Player {j + 1} {done}."
            if self.messages[-1][j]:
                line += f' Player {j + 1} said: "{self.messages[-1][j]}"'
            parts.append(line)
        if task_mode:
            parts.append("Reply with your answer as <answer>N</answer>, N an integer.")
        else:
            parts.append(
                f"Reply with your contribution as <contribute>X</contribute>, X from 0 to 1 in steps of "
                f"{_num(Fraction(1, p['levels']))} (for example <contribute>{_num(snap(Fraction(1, 2), p['levels']))}"
                f"</contribute>)."  # a level: with an odd number of steps 0.5 is none
            )
        if seat < n - 1:
            parts.append("You may add a short message for the players after you as <message>...</message>.")
        return "\n".join(parts)

    @staticmethod
    def _answer_text(answer: int | None) -> str:
        return "nothing valid" if answer is None else str(answer)

    def pending_turns(self) -> list[Turn]:
        if self._over:
            return []
        phase = "answer" if self.params["mode"] == "task" else "contribute"
        return self._turns([self.acting_seat], phase, self.rules_text(), self._prompt)

    # --- acting -------------------------------------------------------------------------------------------
    def step(self, actions: dict[int, str]) -> None:
        self._check_actions(actions)
        seat = self.acting_seat
        text = clean_text(actions[seat])
        if self.params["mode"] == "task":
            answer = parse_answer(text)
            valid = answer is not None
            score = Fraction(int(valid and answer == self.tasks[-1][1]))
            self.answers[-1].append(answer)
            self._record(self.round, seat, "answer", text, answer, valid)
        else:
            level = parse_contribution(text, self.params["levels"])
            valid = level is not None
            score = level if level is not None else Fraction(0)  # invalid: free ride
            self.answers[-1].append(None)
            self._record(self.round, seat, "contribute", text, float(score), valid)
        self.q[-1].append(score)
        self.messages[-1].append(parse_message(text))
        if len(self.q[-1]) == self.num_players:
            self._end_round()

    def _end_round(self) -> None:
        p = self.params
        utilities = stage_utilities(
            self.q[-1],
            p["reward"],
            **{k: p[k] for k in ("r", *REDESIGNED_KEYS)},
        )
        for seat, utility in enumerate(utilities):
            self.rewards[seat].append(float(utility))
        self.round += 1
        if self.round >= p["rounds"]:
            self._over = True
        else:
            self._start_round()

    # --- state for scripted strategies and analysis -------------------------------------------------------
    def view(self, seat: int) -> dict[str, Any]:
        task_mode = self.params["mode"] == "task"
        visible = self._visible(seat)
        return {
            "round": self.round,
            "rounds": self.params["rounds"],
            "position": seat,  # 0-based; players act in seat order
            "players": self.num_players,
            "levels": self.params["levels"],
            "mode": self.params["mode"],
            "observation": self.params["observation"],
            "visible_seats": visible,
            # contribution mode: the visible predecessors' levels; task mode: not shown (it would reveal scores)
            "contributions": [] if task_mode else [float(self.q[-1][j]) for j in visible],
            "answers": [self.answers[-1][j] for j in visible] if task_mode else [],
            "messages": [self.messages[-1][j] for j in visible],
            "task": f"What is {self.tasks[-1][0]}?" if task_mode and not self._over else None,
            "expression": self.tasks[-1][0] if task_mode and not self._over else None,
            "my_scores": [float(self.q[r][seat]) for r in range(self.round)],
            "my_rewards": list(self.rewards[seat]),
        }

    def solve(self) -> SPNEResult:
        """The subgame-perfect equilibrium of this game's stage game (backward induction, exact)."""
        return solve_params(self.params)

    def answer_choices(self, turn: Turn) -> list[str] | None:
        """Contribution mode: one ``<contribute>X</contribute>`` per level X = k/K (no message); task mode: None."""
        if turn.phase != "contribute":
            return None
        return [format_contribution(Fraction(k, self.params["levels"])) for k in range(self.params["levels"] + 1)]

    def answer_patterns(self) -> dict[str, str]:
        """Contribution mode: ``<contribute>X</contribute>``, X a decimal in [0, 1] (one decimal for K = 10, up to
        nine otherwise: :func:`format_contribution` writes 6 significant digits, 1/997 as 0.00100301); task mode:
        ``<answer>N</answer>``, N as long as a task's value can be (``task_digits`` + 2 digits). Either may be
        followed by the optional ``<message>`` the prompt offers (at most 300 characters)."""
        digits = "" if self.params["levels"] == 10 else "{1,9}"  # how many decimals follow the point
        message = rf"(\s*<message>[^<]{{0,{MAX_MESSAGE_CHARS}}}</message>)?"
        answer_digits = self.params["task_digits"] + 2  # the largest task, (a + b) * 9, is below 18 * 10**digits
        return {
            "contribute": rf"<contribute>(0(\.[0-9]{digits})?|1(\.0{digits})?)</contribute>{message}",
            "answer": rf"<answer>-?[0-9]{{1,{answer_digits}}}</answer>{message}",
        }

    def metrics(self) -> dict[str, Any]:
        n = self.num_players
        scores = [s for row in self.q for s in row]  # every action taken, the round in progress included
        per_position = [[row[j] for row in self.q if len(row) > j] for j in range(n)]
        finished = self.q[: self.round]
        # Task mode: the group's output is the last answer's correctness; contribution mode: the mean level.
        task_mode = self.params["mode"] == "task"
        outputs = [row[-1] if task_mode else sum(row) / n for row in finished]
        return {
            "rounds": self.round,
            "mean_contribution": [float(sum(col) / len(col)) if col else 0.0 for col in per_position],
            "free_riding_rate": sum(1 for s in scores if s == 0) / len(scores) if scores else 0.0,
            "group_output": float(sum(outputs) / len(outputs)) if outputs else 0.0,
            "welfare": sum(self.returns()),
            "invalid_rate": self.invalid_rates(),
            "invalid_rate_total": sum(self.invalid_counts) / max(1, sum(self.action_counts)),
        }


# ----- scripted strategies -----------------------------------------------------------------------------------
class _SpggStrategy(ScriptedStrategy):
    def act(self, game: TextGame, turn: Turn) -> str:
        view = game.view(turn.seat)
        if view["mode"] == "task":
            return format_answer(self.answer(view))
        return format_contribution(self.contribute(view))

    def contribute(self, view: dict[str, Any]) -> Fraction:
        raise NotImplementedError

    def answer(self, view: dict[str, Any]) -> int | None:
        raise NotImplementedError


@register(("spgg",), "free_rider")
class FreeRider(_SpggStrategy):
    """Contributes nothing; in task mode answers 0 (never correct: every task's value is positive)."""

    def contribute(self, view):
        return Fraction(0)

    def answer(self, view):
        return 0


@register(("spgg",), "full")
class FullContributor(_SpggStrategy):
    """Contributes the whole endowment; in task mode solves the task."""

    def contribute(self, view):
        return Fraction(1)

    def answer(self, view):
        return evaluate_expression(view["expression"])


@register(("spgg",), "conditional")
class ConditionalCooperator(_SpggStrategy):
    """Matches what it sees: the mean of the visible predecessors' contributions (1 as first mover) snapped to a
    level; in task mode, solves the task when first or when the visible predecessor got it right, else copies it."""

    def contribute(self, view):
        seen = [exact(x) for x in view["contributions"]]
        return snap(sum(seen) / len(seen), view["levels"]) if seen else Fraction(1)

    def answer(self, view):
        correct = evaluate_expression(view["expression"])
        if view["position"] == 0 or not view["answers"]:
            return correct
        previous = view["answers"][-1]  # the immediate predecessor (the last visible seat)
        return correct if previous == correct else previous
