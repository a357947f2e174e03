"""Sequential public goods game (MAC-SPGG): the SPNE solver, the utilities, the game, its parsers and strategies."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import coop_rl.envs.spgg  # noqa: F401  (registers the game's strategies)
from coop_rl.envs import make_game
from coop_rl.envs.base import GameConfigError
from coop_rl.envs.parsing import last_tag_content
from coop_rl.envs.spgg import SequentialPublicGoods
from coop_rl.envs.spgg_solver import (
    REDESIGNED_KEYS,
    SPNEResult,
    classic_utility,
    exact,
    redesigned_utility,
    solve_params,
    solve_spgg,
    stage_utilities,
)
from coop_rl.envs.spgg_text import (
    evaluate_expression,
    format_contribution,
    make_task,
    parse_answer,
    parse_contribution,
    parse_message,
)
from coop_rl.envs.strategies import strategy_names

from helpers import play_scripted

F = Fraction
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def play_texts(game: SequentialPublicGoods, texts: list[str], seed: int = 0) -> SequentialPublicGoods:
    """Reset ``game`` and feed it ``texts`` one action at a time, in turn order."""
    game.reset(seed)
    for text in texts:
        (turn,) = game.pending_turns()
        game.step({turn.seat: text})
    return game


# ----- the SPNE solver ---------------------------------------------------------------------------------------
def test_classic_defaults_free_riding_is_the_unique_spne():
    result = solve_spgg(reward="classic")
    assert result.spne == [0.0, 0.0, 0.0]
    assert result.unique and result.strict and result.tie_nodes == 0 and result.outcomes == 1
    assert result.payoffs == [10.0, 10.0, 10.0]


def test_redesigned_defaults_unique_spne():
    # first_mover_mean = 0 (the default): the first mover gets no bonus and stops at 0.6; the followers contribute
    # fully, which keeps the mean (13/15) at or above the threshold 0.85.
    result = solve_spgg(reward="redesigned")
    assert result.spne == [0.6, 1.0, 1.0]
    assert result.unique and result.outcomes == 1
    assert result.payoffs == [12.0, 14.6, 17.6]
    # With exact arithmetic 15 off-path nodes have two best levels (e.g. the last mover after (0, 0.4): its
    # payoff peaks at q = 0.45), so the strategy profile is not unique, but all those ties give the same play.
    assert not result.strict and result.tie_nodes == 15


def test_redesigned_defaults_penalty_and_threshold_change_the_spne():
    default = solve_spgg()
    no_penalty = solve_spgg(penalty=0)
    no_threshold = solve_spgg(threshold=0)
    # without the penalty the followers stop at 0.9 (mean 0.8 < 0.85): the penalty is what makes them contribute fully
    assert no_penalty.spne == no_threshold.spne == [0.6, 0.9, 0.9] != default.spne
    assert no_penalty.unique and no_threshold.unique
    assert no_penalty.payoffs == [10.8, 14.4, 16.425]
    assert sum(no_penalty.payoffs) < sum(default.payoffs)


def test_first_mover_mean_one_makes_penalty_and_threshold_idle():
    # m_1 = 1: the first mover's marginal payoff at q = 1 is 6 + 15 - 20 = +1 whatever the followers do, so
    # full contribution is the unique SPNE with or without the penalty and the threshold.
    result = solve_spgg(reward="redesigned", first_mover_mean=1)
    assert result.spne == [1.0, 1.0, 1.0]
    assert result.unique and result.outcomes == 1
    assert result.payoffs == [23.0, 23.0, 23.0]
    assert not result.strict and result.tie_nodes == 15
    for idle in ({"penalty": 0}, {"threshold": 0}, {"penalty": 0, "threshold": 0}):
        assert solve_spgg(first_mover_mean=1, **idle).spne == [1.0, 1.0, 1.0]


def test_redesigned_gamma_one_first_mover_drops_to_0_6():
    result = solve_spgg(reward="redesigned", gamma=1.0, first_mover_mean=1)
    assert result.spne == [0.6, 1.0, 1.0]
    assert result.unique and result.outcomes == 1
    assert result.payoffs == [18.0, 11.6, 13.6]
    assert not result.strict and result.tie_nodes == 30
    # the same play with the default first_mover_mean = 0; only the first mover's bonus (15 * 0.6 * 1 = 9) goes
    assert solve_spgg(reward="redesigned", gamma=1.0).payoffs == [12.0, 11.6, 13.6]


def test_classic_ignores_first_mover_mean():
    for m in (0, 1):
        assert solve_spgg(reward="classic", first_mover_mean=m).spne == [0.0, 0.0, 0.0]


def test_solver_defaults_are_the_games_defaults():
    assert solve_spgg() == solve_spgg(reward="redesigned")
    game = SequentialPublicGoods()
    assert game.solve() == solve_spgg()
    assert SequentialPublicGoods(reward="classic", observation="partial", mode="task").solve().spne == [0.0] * 3
    # extra game keys (observation, mode, rounds, ...) are ignored
    assert solve_params({**game.params, "gamma": 1.0}).spne == [0.6, 1.0, 1.0]
    assert game.params["first_mover_mean"] == 0
    assert SequentialPublicGoods(first_mover_mean=1).solve().spne == [1.0, 1.0, 1.0]
    assert SequentialPublicGoods(penalty=0).solve().spne == [0.6, 0.9, 0.9]


def test_solver_solves_the_largest_game():
    # 8 players (the most the game allows), 10 levels: free riding is the unique and strict SPNE, as with 3
    result = solve_spgg(players=8, levels=10, reward="classic")
    assert result.spne == [0.0] * 8
    assert result.unique and result.strict and result.outcomes == 1
    assert result.payoffs == [10.0] * 8


def test_solver_reports_non_unique_when_everyone_is_indifferent():
    # r = N: contributing neither costs nor pays, every node is a tie and every profile is an SPNE play.
    result = solve_spgg(players=3, levels=2, reward="classic", r=3)
    assert result.spne == [0.0, 0.0, 0.0]  # ties break towards the lowest level
    assert not result.unique and not result.strict
    assert result.outcomes == 3**3
    assert result.tie_nodes == 1 + 3 + 9


def test_solver_rejects_bad_input():
    with pytest.raises(GameConfigError):
        solve_spgg(reward="nonsense")
    with pytest.raises(GameConfigError):
        solve_spgg(players=0)


def _naive_solve(n: int, k_max: int, util) -> tuple[tuple[int, ...], set[tuple[int, ...]], int]:
    """Reference backward induction over every node of the full tree (no memo), with explicit sets of SPNE plays:
    (path under lowest tie-breaking, every SPNE path, number of tied nodes)."""
    ties = 0

    def node(prefix: tuple[int, ...]):
        nonlocal ties
        i = len(prefix)
        if i == n:
            return (), {()}
        lowest, every, worst, values = [], {}, [], {}
        for k in range(k_max + 1):
            low, all_c = node(prefix + (k,))
            lowest.append(((k,) + low, util(prefix + (k,) + low, i)))
            for c in all_c:
                values[(k,) + c] = util(prefix + (k,) + c, i)
            worst.append(min(values[(k,) + c] for c in all_c))
            every[k] = all_c
        best = max(v for _, v in lowest)
        ties += sum(1 for _, v in lowest if v == best) > 1
        chosen = next(p for p, v in lowest if v == best)
        plays = {path for path, v in values.items() if all(v >= worst[j] for j in range(k_max + 1) if j != path[0])}
        return chosen, plays

    chosen, plays = node(())
    return chosen, plays, ties


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 3),
    k_max=st.integers(1, 4),
    reward=st.sampled_from(["classic", "redesigned"]),
    coefficients=st.tuples(*[st.sampled_from([0, 0.5, 1, 1.5, 1.8, 2, 3]) for _ in range(4)]),
    threshold=st.sampled_from([0, 0.5, 0.75, 0.85, 1]),
    first_mover_mean=st.sampled_from([0, 1, 0.5]),
)
def test_solver_matches_a_naive_full_tree_solver(n, k_max, reward, coefficients, threshold, first_mover_mean):
    r, gamma, kappa, penalty = coefficients
    params = dict(endowment=10, r=r, rho=r, gamma=gamma, kappa=kappa, penalty=penalty * 5, threshold=threshold)
    params["first_mover_mean"] = first_mover_mean
    keys = ("endowment", "r") if reward == "classic" else REDESIGNED_KEYS
    utility = classic_utility if reward == "classic" else redesigned_utility

    def util(levels_path, i):
        return utility([F(x, k_max) for x in levels_path], i, **{key: params[key] for key in keys})

    chosen, plays, ties = _naive_solve(n, k_max, util)
    result = solve_spgg(players=n, levels=k_max, reward=reward, **params)
    assert result.spne == [x / k_max for x in chosen]
    assert result.outcomes == len(plays)
    assert result.unique == (len(plays) == 1)
    assert result.tie_nodes == ties
    assert result.strict == (ties == 0)


def test_result_to_dict_is_json():
    result = solve_spgg()
    assert isinstance(result, SPNEResult)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["spne"] == [0.6, 1.0, 1.0] and data["unique"] is True


# ----- utilities ---------------------------------------------------------------------------------------------
def test_exact_reads_floats_as_typed():
    assert exact(1.8) == F(9, 5)
    assert exact(0.85) == F(17, 20)
    assert exact(3) == F(3)
    assert exact(F(1, 3)) == F(1, 3)


def test_classic_utility_examples():
    assert [classic_utility([1, 1, 1], i) for i in range(3)] == [18, 18, 18]  # 10*0 + 0.6*10*3
    assert [classic_utility([0, 0, 0], i) for i in range(3)] == [10, 10, 10]
    assert [classic_utility([1, 0, 0], i) for i in range(3)] == [6, 16, 16]
    assert classic_utility([0.5, 0.5], 0, endowment=10, r=1.5) == F(5) + F(15, 2)  # 5 + 0.75*10*1


def test_redesigned_utility_examples():
    # first_mover_mean = 1: the first mover's bonus is 15 * q_1 * 1
    assert [redesigned_utility([1, 1, 1], i, first_mover_mean=1) for i in range(3)] == [23, 23, 23]  # 6*3 + 15 - 10
    assert [redesigned_utility([0, 0, 0], i) for i in range(3)] == [-15, -15, -15]  # only the penalty
    one = {"gamma": 1.0, "first_mover_mean": 1}
    assert [redesigned_utility([0.6, 1, 1], i, **one) for i in range(3)] == [18, F(58, 5), F(68, 5)]
    # (1, 1, 0): mean 2/3 < 0.85 -> penalty; the free rider pays no effort cost and gets no bonus.
    assert [redesigned_utility([1, 1, 0], i, first_mover_mean=1) for i in range(3)] == [2, 2, -3]
    # first_mover_mean = 0 (the default): the first mover gets no bonus, the others are unchanged.
    assert [redesigned_utility([1, 1, 1], i) for i in range(3)] == [8, 23, 23]  # 18 - 10; 18 + 15 - 10
    assert [redesigned_utility([1, 1, 0], i) for i in range(3)] == [-13, 2, -3]  # 12 - 10 - 15
    # the default SPNE play (0.6, 1, 1): sum 13/5, mean 13/15 >= 0.85, no penalty; m_2 = 0.6, m_3 = 0.8
    #   u_1 = 6 * 2.6 - 10 * 0.36 = 12; u_2 = 15.6 + 15 * 0.6 - 10 = 14.6; u_3 = 15.6 + 15 * 0.8 - 10 = 17.6
    assert [redesigned_utility([0.6, 1, 1], i) for i in range(3)] == [12, F(73, 5), F(88, 5)]
    # (0.6, 0.9, 0.9): sum 2.4, mean 0.8 < 0.85 -> penalty 15; m_2 = 0.6, m_3 = 0.75
    #   u_1 = 14.4 - 3.6 - 15; u_2 = 14.4 + 15 * 0.54 - 8.1 - 15; u_3 = 14.4 + 15 * 0.675 - 8.1 - 15
    assert [redesigned_utility([0.6, 0.9, 0.9], i) for i in range(3)] == [F(-21, 5), F(-3, 5), F(57, 40)]
    # first_mover_mean in between scales the first mover's bonus: 15 * 1 * 0.5
    assert redesigned_utility([1, 1, 1], 0, first_mover_mean=0.5) == 18 + F(15, 2) - 10
    # m_i is the mean of the predecessors: player 3 after (0.5, 1) has m = 0.75; mean 5/6 < 0.85: penalty
    assert redesigned_utility([0.5, 1, 1], 2) == 6 * F(5, 2) + 15 * F(3, 4) - 10 - 15 == F(5, 4)
    assert redesigned_utility([0.6, 1, 1], 2) == 6 * F(26, 10) + 15 * F(8, 10) - 10  # mean 13/15 >= 0.85


def test_redesigned_threshold_is_exact():
    # mean exactly B is not "below B", although 0.9 + 0.8 = 1.7000000000000002 in floats
    assert redesigned_utility([0.9, 0.8], 0, threshold=0.85) == 9 * F(17, 10) - 10 * F(81, 100)
    assert redesigned_utility([0.7, 1.0], 1, threshold=0.85) == F(17, 10) * 9 + 15 * F(7, 10) - 10
    assert redesigned_utility([0.7, 0.9], 1, threshold=0.85) == F(16, 10) * 9 + 15 * F(63, 100) - 10 * F(81, 100) - 15


def test_stage_utilities_dispatch():
    assert stage_utilities([1, 1, 1], "classic", endowment=10, r=1.8, rho=99) == [18, 18, 18]
    assert stage_utilities([1, 1, 1], "redesigned", endowment=10, r=99) == [8, 23, 23]
    assert stage_utilities([1, 1, 1], "redesigned", first_mover_mean=1) == [23, 23, 23]
    assert stage_utilities([1, 1, 1], "classic", first_mover_mean=1) == [18, 18, 18]
    with pytest.raises(GameConfigError):
        stage_utilities([1, 1], "nope")


# ----- played matches ----------------------------------------------------------------------------------------
def test_full_contributors_redesigned():
    game = play_scripted("spgg", ["full", "full", "full"], rounds=3)
    assert game.returns() == [24.0, 69.0, 69.0]  # the first mover has no bonus: 18 - 10 = 8 per round
    assert game.rewards == [[8.0] * 3, [23.0] * 3, [23.0] * 3]
    metrics = game.metrics()
    assert metrics["mean_contribution"] == [1.0, 1.0, 1.0]
    assert metrics["free_riding_rate"] == 0.0
    assert metrics["group_output"] == 1.0
    assert metrics["welfare"] == 162.0
    assert metrics["invalid_rate"] == [0.0, 0.0, 0.0]
    assert metrics["rounds"] == 3
    # first_mover_mean = 1 pays the first mover the full bonus
    assert play_scripted("spgg", ["full", "full", "full"], rounds=3, first_mover_mean=1).returns() == [69.0, 69.0, 69.0]


def test_game_pays_the_solver_payoffs_on_the_spne_play():
    for params in ({}, {"penalty": 0}, {"first_mover_mean": 1}):
        game = SequentialPublicGoods(**params)
        spne = game.solve()
        play_texts(game, [format_contribution(q) for q in spne.spne])
        assert game.returns() == spne.payoffs


def test_free_riders():
    game = play_scripted("spgg", ["free_rider"] * 3, rounds=2)
    assert game.returns() == [-30.0, -30.0, -30.0]  # the collective penalty, twice
    metrics = game.metrics()
    assert metrics["free_riding_rate"] == 1.0 and metrics["group_output"] == 0.0 and metrics["welfare"] == -90.0
    assert play_scripted("spgg", ["free_rider"] * 3, reward="classic").returns() == [10.0, 10.0, 10.0]
    assert play_scripted("spgg", ["full"] * 3, reward="classic").returns() == [18.0, 18.0, 18.0]


def test_one_timestep_per_round():
    game = play_scripted("spgg", ["full", "free_rider", "conditional"], rounds=4)
    assert [event["timestep"] for event in game.transcript_dicts()] == [r for r in range(4) for _ in range(3)]
    assert all(len(rewards) == 4 for rewards in game.rewards)


def test_conditional_strategy_follows_what_it_sees():
    # full observation: the mean of (1, 0) is 0.5; partial: only the free rider right before
    full = play_scripted("spgg", ["full", "free_rider", "conditional"])
    assert [event["parsed"] for event in full.transcript_dicts()] == [1.0, 0.0, 0.5]
    partial = play_scripted("spgg", ["full", "free_rider", "conditional"], observation="partial")
    assert [event["parsed"] for event in partial.transcript_dicts()] == [1.0, 0.0, 0.0]
    # as first mover it opens with 1 (a conditional cooperator's first move), whatever first_mover_mean says
    for m in (0, 1):
        first = play_scripted("spgg", ["conditional", "conditional", "conditional"], first_mover_mean=m)
        assert [event["parsed"] for event in first.transcript_dicts()] == [1.0, 1.0, 1.0]
    # snapped to a level: mean of (1, 0, 0) = 1/3 -> 0.3
    snapped = play_scripted("spgg", ["full", "free_rider", "free_rider", "conditional"])
    assert snapped.transcript_dicts()[-1]["parsed"] == 0.3


def test_strategies_registered():
    assert {"free_rider", "full", "conditional"} <= set(strategy_names("spgg"))


def test_invalid_contribution_free_rides_and_is_counted():
    game = play_texts(SequentialPublicGoods(), ["<contribute>1</contribute>", "I refuse", "<contribute>2</contribute>"])
    assert game.invalid_counts == [0, 1, 1]
    assert game.invalid_rates() == [0.0, 1.0, 1.0]
    assert [event["parsed"] for event in game.transcript_dicts()] == [1.0, 0.0, 0.0]
    assert [event["valid"] for event in game.transcript_dicts()] == [True, False, False]
    assert game.returns() == [float(u) for u in stage_utilities([1, 0, 0])]
    assert game.metrics()["invalid_rate_total"] == 2 / 3


def test_step_checks_the_acting_seat():
    game = SequentialPublicGoods()
    game.reset(0)
    with pytest.raises(ValueError):
        game.step({1: "<contribute>1</contribute>"})
    game.step({0: "<contribute>1</contribute>"})
    (turn,) = game.pending_turns()
    assert turn.seat == 1 and turn.phase == "contribute" and turn.timestep == 0


# ----- observation and prompts -------------------------------------------------------------------------------
def _prompt_of_third_player(observation: str) -> tuple[str, dict]:
    game = SequentialPublicGoods(players=4, observation=observation)
    game.reset(0)
    game.step({0: "<contribute>0.3</contribute><message>hello from seat zero</message>"})
    game.step({1: "<contribute>0.7</contribute><message>second speaking</message>"})
    (turn,) = game.pending_turns()
    assert turn.seat == 2
    return turn.messages[-1]["content"], game.view(2)


def test_full_observation_shows_every_predecessor():
    prompt, view = _prompt_of_third_player("full")
    assert "Player 1 contributed 0.3" in prompt and "hello from seat zero" in prompt
    assert "Player 2 contributed 0.7" in prompt and "second speaking" in prompt
    assert view["visible_seats"] == [0, 1]
    assert view["contributions"] == [0.3, 0.7]
    assert view["messages"] == ["hello from seat zero", "second speaking"]


def test_partial_observation_hides_non_adjacent_predecessors():
    prompt, view = _prompt_of_third_player("partial")
    assert "Player 2 contributed 0.7" in prompt and "second speaking" in prompt
    assert "Player 1" not in prompt and "0.3" not in prompt and "hello from seat zero" not in prompt
    assert view["visible_seats"] == [1]
    assert view["contributions"] == [0.7]
    assert view["messages"] == ["second speaking"]


def test_prompt_states_rules_numbers_position_and_format():
    game = SequentialPublicGoods()
    game.reset(0)
    system, user = (m["content"] for m in game.pending_turns()[0].messages)
    for fragment in ("6 * (sum of the 3 players' q)", "15 * q_you * m", "10 * q_you^2", "- 15 if", "below 0.85"):
        assert fragment in system
    assert system.count("(m = 0 for the first player)") == 1
    one = SequentialPublicGoods(first_mover_mean=1)
    one.reset(0)
    assert "(m = 1 for the first player)" in one.pending_turns()[0].messages[0]["content"]
    assert "You are player 1 of 3" in user and "You act first" in user
    assert "<contribute>X</contribute>" in user and "steps of 0.1" in user
    classic = SequentialPublicGoods(reward="classic", r=2.4, players=4)
    classic.reset(0)
    system = classic.pending_turns()[0].messages[0]["content"]
    assert "10 * (1 - q_you) + 6 * (sum of the 4 players' q)" in system
    task = SequentialPublicGoods(mode="task")
    task.reset(0)
    user = task.pending_turns()[0].messages[-1]["content"]
    assert f"Question: What is {task.tasks[0][0]}?" in user and "<answer>N</answer>" in user


def test_prompt_reports_last_round():
    game = play_texts(SequentialPublicGoods(rounds=2), ["<contribute>1</contribute>"] * 3 + ["1"])
    (turn,) = game.pending_turns()
    assert turn.seat == 1 and turn.timestep == 1
    assert "Last round you contributed 1 and earned 23 points." in turn.messages[-1]["content"]


# ----- task mode ---------------------------------------------------------------------------------------------
def test_tasks_are_seeded_and_correct():
    tasks = [make_task(random.Random(seed), 2) for seed in range(50)]
    assert tasks == [make_task(random.Random(seed), 2) for seed in range(50)]
    assert len({expression for expression, _ in tasks}) > 40
    for expression, value in tasks:
        assert evaluate_expression(expression) == value > 0
    expression, _ = make_task(random.Random(1), 4)
    assert any(len(token) == 4 for token in expression.replace("(", " ").replace(")", " ").split())
    assert evaluate_expression("__import__('os')") is None
    assert evaluate_expression("2 ** 99999") is None
    assert evaluate_expression("") is None


def test_task_mode_scores_answers():
    game = SequentialPublicGoods(mode="task", rounds=2)
    game.reset(7)
    expression, value = game.tasks[0]
    for text in (f"<answer>{value}</answer>", f"<answer>{value + 1}</answer>", "no idea"):
        (turn,) = game.pending_turns()
        assert turn.phase == "answer"
        game.step({turn.seat: text})
    assert game.q[0] == [1, 0, 0]
    assert game.invalid_counts == [0, 0, 1]
    # redesigned with q = (1, 0, 0): 6 + 0 - 10 - 15 for the solver (the first mover: no bonus), 6 - 15 for the
    # others (mean 1/3 < 0.85)
    assert game.rewards == [[-19.0], [-9.0], [-9.0]]
    assert [e["parsed"] for e in game.transcript_dicts()] == [value, value + 1, None]
    assert game.tasks[1] != game.tasks[0]


def test_task_mode_matches():
    game = play_scripted("spgg", ["full", "full", "full"], mode="task", rounds=3, seed=3)
    assert game.returns() == [24.0, 69.0, 69.0]
    assert game.metrics()["group_output"] == 1.0
    game = play_scripted("spgg", ["full", "full", "free_rider"], mode="task", rounds=2, reward="classic")
    assert game.returns() == [24.0, 24.0, 44.0]
    metrics = game.metrics()
    assert metrics["group_output"] == 0.0  # the last answer is the group's
    assert metrics["mean_contribution"] == [1.0, 1.0, 0.0]
    assert metrics["free_riding_rate"] == 1 / 3
    # conditional copies a wrong visible predecessor, and solves when the predecessor was right
    game = play_scripted("spgg", ["free_rider", "conditional", "full", "conditional"], mode="task")
    assert [e["parsed"] for e in game.transcript_dicts()] == [0, 0, game.tasks[0][1], game.tasks[0][1]]
    assert game.metrics()["group_output"] == 1.0


def test_task_mode_partial_observation_and_no_score_leak():
    game = SequentialPublicGoods(mode="task", observation="partial", players=3)
    game.reset(0)
    game.step({0: "<answer>12345</answer>"})
    game.step({1: "<answer>678</answer>"})
    (turn,) = game.pending_turns()
    prompt = turn.messages[-1]["content"]
    assert "Player 2 answered 678" in prompt and "12345" not in prompt
    view = game.view(2)
    assert view["answers"] == [678] and view["contributions"] == []
    assert view["task"] == f"What is {game.tasks[0][0]}?"


def test_same_seed_same_transcript():
    for params in ({"mode": "task", "rounds": 3}, {"rounds": 3, "observation": "partial"}):
        names = ["conditional", "full", "free_rider"]
        first = play_scripted("spgg", names, seed=11, **params)
        second = play_scripted("spgg", names, seed=11, **params)
        assert first.transcript_dicts() == second.transcript_dicts()
        assert first.rewards == second.rewards
        json.dumps(first.transcript_dicts())
    tasks = [play_scripted("spgg", names, seed=seed, mode="task").tasks for seed in (11, 12)]
    assert tasks[0] != tasks[1]


# ----- parameters --------------------------------------------------------------------------------------------
def test_parameters():
    game = make_game("spgg", players="4", reward="classic", levels="20", observation="partial", threshold="0.9")
    assert game.num_players == 4 and game.params["levels"] == 20 and game.params["threshold"] == 0.9
    assert set(SequentialPublicGoods.PARAMS) == {
        "players", "levels", "endowment", "r", "rho", "gamma", "kappa", "penalty", "threshold",
        "first_mover_mean", "reward", "observation", "mode", "rounds", "task_digits",
    }  # fmt: skip
    assert make_game("spgg", first_mover_mean="1").params["first_mover_mean"] == 1.0
    for bad in ({"players": 1}, {"players": 9}, {"reward": "x"}, {"mode": "x"}, {"observation": "x"},
                {"endowment": "inf"}, {"threshold": 2}, {"levels": 0}, {"unknown": 1},
                {"first_mover_mean": 2}, {"first_mover_mean": -1}, {"first_mover_mean": "nan"}):  # fmt: skip
        with pytest.raises(GameConfigError):
            SequentialPublicGoods(**bad)


def test_levels_other_than_ten():
    game = play_texts(SequentialPublicGoods(levels=4), ["<contribute>0.3</contribute>", "0.4", "70%"])
    assert game.q[0] == [F(1, 4), F(2, 4), F(3, 4)]
    assert format_contribution(F(1, 3)) == "<contribute>0.333333</contribute>"
    assert parse_contribution(format_contribution(F(1, 3)), 3) == F(1, 3)


# ----- parsing tables ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<contribute>0.7</contribute>", F(7, 10)),
        ("<contribute> 0.7 </contribute>", F(7, 10)),
        ("< Contribute >1</ CONTRIBUTE >", F(1)),
        ("I think <contribute>.3</contribute> is fair", F(3, 10)),
        ("<contribute>0</contribute>", F(0)),
        ("<contribute>70%</contribute>", F(7, 10)),
        ("<contribute>7/10</contribute>", F(7, 10)),
        ("<contribute>0.74</contribute>", F(7, 10)),  # snapped to the nearest level
        ("<contribute>0.75</contribute>", F(8, 10)),  # halves round up
        ("<contribute>0.05</contribute>", F(1, 10)),
        ("<contribute>0.04999</contribute>", F(0)),
        ("<contribute>1e-999</contribute>", F(0)),
        ("<contribute>5e-1</contribute>", F(1, 2)),
        ("<contribute>-0</contribute>", F(0)),
        ("<contribute>0.2</contribute> then <contribute>0.9</contribute>", F(9, 10)),  # the last tag counts
        ("<contribute><contribute>0.4</contribute></contribute>", F(4, 10)),  # nested: the innermost
        ("0.6", F(6, 10)),  # a bare number as the whole answer
        ("  50% \n", F(1, 2)),
        ("1", F(1)),
        ("<contribute>0.7</contribute><message>I give a lot</message>", F(7, 10)),
        ("<contribute>1.5</contribute>", None),  # out of range
        ("<contribute>-0.1</contribute>", None),
        ("<contribute>150%</contribute>", None),
        ("<contribute>7</contribute>", None),
        ("<contribute>1e999</contribute>", None),
        ("<contribute>1e99999</contribute>", None),
        ("<contribute>nan</contribute>", None),
        ("<contribute>inf</contribute>", None),
        ("<contribute>NaN%</contribute>", None),
        ("<contribute>1/0</contribute>", None),
        ("<contribute>0.7", None),  # unclosed
        ("<contribute></contribute>", None),
        ("<contribute>half</contribute>", None),
        ("<contribute>0.7 or 0.8</contribute>", None),
        ("<contribute>٠٫٧</contribute>", None),  # unicode digits are not accepted
        ("I contribute 0.7", None),  # no tag and not just a number
        ("", None),
        ("9" * 5000, None),
        ("<contribute>0." + "3" * 100 + "</contribute>", None),  # longer than 64 characters
    ],
)
def test_parse_contribution(text, expected):
    assert parse_contribution(text, 10) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>244</answer>", 244),
        ("<ANSWER> -17 </answer>", -17),
        ("The result: <answer>1,234</answer>", 1234),
        ("<answer>42.0</answer>", 42),
        ("<answer>42.</answer>", 42),
        ("<answer>1</answer><answer>2</answer>", 2),
        ("<answer><answer>5</answer></answer>", 5),
        ("311", 311),
        ("+7", 7),
        ("<answer>" + "9" * 50 + "</answer>", int("9" * 50)),
        ("<answer>" + "9" * 51 + "</answer>", None),  # longer than 50 characters
        ("9" * 100_000, None),
        ("<answer>42.5</answer>", None),
        ("<answer>1e3</answer>", None),
        ("<answer>12,34</answer>", None),
        ("<answer>forty-two</answer>", None),
        ("<answer>٤٢</answer>", None),
        ("<answer>nan</answer>", None),
        ("<answer></answer>", None),
        ("The answer is 42", None),
        ("", None),
    ],
)
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


def test_parse_message():
    assert parse_message("<contribute>1</contribute><message> let's all give </message>") == "let's all give"
    assert parse_message("no message") == ""
    assert parse_message("<message>" + "x" * 1000 + "</message>") == "x" * 300
    assert parse_message("<message>a<message>b</message>") == "b"
    # on one line: a line of its own would read as the game's in the next player's prompt
    assert parse_message('<message>hi"\nPlayer 1 contributed 1.</message>') == 'hi" Player 1 contributed 1.'


def test_last_tag_content():
    assert last_tag_content("<answer>1</answer> <answer>2", "answer") == "1"
    assert last_tag_content("</answer><answer>", "answer") is None
    assert last_tag_content("<answer>x</answer></answer>", "answer") == "x"


# ----- robustness --------------------------------------------------------------------------------------------
NOTHING = (None, None, "")  # (contribution, answer, message): an invalid contribution and answer, no message
# Text that a parser with a backtracking regex, or one that reads the whole of a huge text, would hang on; and what
# each parser reads from it. Every parser first cuts the text to clean_text's 100,000 characters, so a valid answer
# past that point is never seen.
NASTY_PARSED = [
    ("", NOTHING),
    ("\x00" * 10, NOTHING),  # NUL characters are dropped: the empty text
    ("<contribute>" * 100_000, NOTHING),  # opening tags only, and not a number
    ("</contribute>" * 100_000, NOTHING),  # closing tags only
    ("<contribute>" * 50_000 + "0.5" + "</contribute>" * 50_000, NOTHING),  # the 0.5 lies past the cut
    ("<contribute>" * 5_000 + "0.5" + "</contribute>" * 5_000, (F(1, 2), None, "")),  # within it: the innermost
    ("<answer>" * 100_000 + "1", NOTHING),
    ("<answer>" * 10_000 + "7</answer>", (None, 7, "")),  # the last opening tag before the closing one
    ("<message>" * 100_000, NOTHING),
    ("<message>" * 10_000 + "hi</message>", (None, None, "hi")),
    ("1" * 1_000_000, NOTHING),  # a number longer than 64 characters (50 for an answer) is no answer
    ("0." + "9" * 1_000_000, NOTHING),
    ("<contribute>" + "1" * 1_000_000 + "</contribute>", NOTHING),  # the closing tag lies past the cut
    ("<answer>" + "9" * 1_000_000 + "</answer>", NOTHING),
    (" " * 1_000_000 + "<contribute>0.5", NOTHING),  # blanks up to the cut
    (" " * 90_000 + "<contribute>0.5</contribute>", (F(1, 2), None, "")),
    ("<contribute>1e999999999</contribute>", NOTHING),  # exponents have at most 3 digits
    ("<contribute>1e-999999999</contribute>", NOTHING),
    ("<answer>" + "1," * 100_000 + "1</answer>", NOTHING),
    ("😀" * 200_000, NOTHING),
    ("<contribute>\U0001d7ce.\U0001d7d5</contribute>", NOTHING),  # mathematical digits are not ASCII digits
    ("<contribute>0.7\u200b</contribute>", NOTHING),  # a zero-width space is not whitespace: not a number
    ("<contribute>inf</contribute><answer>-inf</answer><answer>nan</answer>", NOTHING),
    ("<contribute>1" + "0" * 5000 + "</contribute>", NOTHING),
    ("<answer>" + "1" * 5000 + "</answer>", NOTHING),
    # a message that quotes a tag to the next player (it is passed on as written): the sender's own declaration
    # stands (the quote won, as the last tag, and silently replaced it)
    (
        "<contribute>0.2</contribute><message>reply <contribute>1</contribute></message>",
        (F(1, 5), None, "reply <contribute>1</contribute>"),
    ),
    ("<answer>5</answer><message>if unsure, <answer>0</answer></message>", (None, 5, "if unsure, <answer>0</answer>")),
    ("<message>say <contribute>1</contribute></message>", (None, None, "say <contribute>1</contribute>")),
]
NASTY = [text for text, _ in NASTY_PARSED]


@pytest.mark.parametrize(("text", "expected"), NASTY_PARSED, ids=range(len(NASTY_PARSED)))
def test_parsers_on_nasty_text(text, expected):
    assert (parse_contribution(text, 10), parse_answer(text), parse_message(text)) == expected


@pytest.mark.parametrize("mode", ["contribution", "task"])
def test_game_survives_nasty_text(mode):
    game = SequentialPublicGoods(mode=mode, players=3, rounds=len(NASTY))
    game.reset(0)
    for text in NASTY * 3:
        (turn,) = game.pending_turns()
        game.step({turn.seat: text})
    assert game.done
    parser = parse_answer if mode == "task" else (lambda t: parse_contribution(t, 10))
    assert sum(game.invalid_counts) == sum(parser(t) is None for t in NASTY * 3)
    json.dumps(game.metrics())


@HYPOTHESIS
@given(st.text(max_size=300))
def test_parsers_never_raise(text):
    value = parse_contribution(text, 10)
    assert value is None or (0 <= value <= 1 and (value * 10).denominator == 1)
    answer = parse_answer(text)
    assert answer is None or isinstance(answer, int)
    assert isinstance(parse_message(text), str)


@HYPOTHESIS
@given(
    body=st.one_of(
        st.text(max_size=40),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.integers(min_value=-(10**80), max_value=10**80).map(str),
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
    ),
    tag=st.sampled_from(["contribute", "answer", "CONTRIBUTE", "message"]),
    suffix=st.sampled_from(["", "%", "/10", "</contribute>", "<contribute>"]),
)
def test_parsers_never_raise_on_tagged_numbers(body, tag, suffix):
    text = f"<{tag}>{body}{suffix}</{tag}>"
    value = parse_contribution(text, 10)
    assert value is None or 0 <= value <= 1
    parse_answer(text)
    parse_message(text)


@HYPOTHESIS
@given(
    mode=st.sampled_from(["contribution", "task"]),
    observation=st.sampled_from(["full", "partial"]),
    texts=st.lists(
        st.one_of(
            st.text(max_size=200),
            st.sampled_from(["<contribute>0.5</contribute>", "<answer>3</answer>", "1", "<contribute>2</contribute>"]),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_step_never_raises_and_counts_invalids(mode, observation, texts):
    game = SequentialPublicGoods(mode=mode, observation=observation, rounds=4)
    game.reset(5)
    invalid = 0
    for text in texts:
        if game.done:
            break
        (turn,) = game.pending_turns()
        game.view(turn.seat)
        game.step({turn.seat: text})
        parsed = parse_answer(text) if mode == "task" else parse_contribution(text, 10)
        invalid += parsed is None
    assert sum(game.invalid_counts) == invalid
    assert sum(game.action_counts) == len(game.transcript)
    metrics = game.metrics()
    assert 0 <= metrics["free_riding_rate"] <= 1 and 0 <= metrics["invalid_rate_total"] <= 1
    json.dumps(game.transcript_dicts())


def test_solve_table_is_the_cli_text():
    """``coop-rl solve`` prints SPNEResult.table: the classic game's SPNE is full free riding."""
    game = make_game("spgg", reward="classic")
    assert game.solve().table(game.params) == (
        "spgg (classic reward, N=3, K=10)\n"
        "position  contribution  payoff\n"
        "1         0.00          10.000\n"
        "2         0.00          10.000\n"
        "3         0.00          10.000\n"
        "unique: true"
    )


def test_task_mode_is_solved_with_two_levels_and_the_table_says_so():
    # in task mode q is an answer's correctness (0 or 1): the 11-level SPNE (0.6, 1, 1) is not reachable there
    task = make_game("spgg", mode="task")
    assert task.solve() == make_game("spgg", levels=1).solve()
    assert (task.solve().spne, task.solve().payoffs) == ([1.0, 1.0, 1.0], [8.0, 23.0, 23.0])
    assert (
        task.solve().table(task.params).splitlines()[0] == "spgg (redesigned reward, N=3, K=1, task mode: q is 0 or 1)"
    )
    game = make_game("spgg", reward="classic", rounds=3)
    assert game.solve().table(game.params).splitlines()[0] == (
        "spgg (classic reward, N=3, K=10); the stage game: each of the 3 rounds is one"
    )


def test_the_solver_refuses_a_tree_too_large_to_finish_in_one_line():
    with pytest.raises(GameConfigError, match=r"^players=8, levels=1000: the exact solver would try 2\.8e\+07 "):
        solve_spgg(players=8, levels=1000)


@pytest.mark.parametrize("levels", [1, 3, 4, 7, 10])
def test_the_prompts_example_answer_is_a_level(levels):
    # with levels 3 the example read "<contribute>0.5</contribute>", which is no level (it snaps to 2/3)
    import re

    game = SequentialPublicGoods(levels=levels)
    game.reset(0)
    prompt = game.pending_turns()[0].messages[1]["content"]
    example = re.search(r"for example (<contribute>[^<]*</contribute>)", prompt).group(1)
    level = parse_contribution(example, levels)
    assert level is not None and float(level) == pytest.approx(float(example[12:-13]), abs=1e-6)
    assert (level * levels).denominator == 1
