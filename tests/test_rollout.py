"""The trainer's rollout (coop_rl/rollout.py): play seed groups, credit per turn, learner turns, trajectory files.

Scripted players stand in for the learner here (no model): the rollout layer treats every player alike.
"""

from __future__ import annotations

import json

import pytest

from coop_rl.envs.base import MatchResult
from coop_rl.players.base import Action
from coop_rl.players.scripted import ScriptedPlayer
from coop_rl.rollout import (
    COLUMNS,
    TRAJECTORY_KEYS,
    Played,
    assign_credit,
    collect_rollout,
    format_penalties,
    learner_turns,
    play_groups,
    rollout_metrics,
    write_trajectory_file,
)
from coop_rl.runner import TurnRecord

ROUNDS = 3


def _play(my_groups=(0, 2), group_size=2, seed=100):
    """IPD: the 'learner' is allc; group g has the learner in seat g % 2 and alld in the other seat."""
    plan = [((g % 2,), "frozen:alld") for g in range(4)]
    calls = []

    def seat_players(setting):
        calls.append(setting)
        (seat,), _ = setting
        return [ScriptedPlayer("allc" if s == seat else "alld", "ipd") for s in range(2)]

    played = play_groups("ipd", {"rounds": ROUNDS}, plan, list(my_groups), group_size, seed, seat_players)
    return played, calls


def test_play_groups_plays_each_group_in_its_setting_and_keeps_learner_turns():
    played, calls = _play(my_groups=(0, 1, 2))
    assert calls == [((0,), "frozen:alld"), ((1,), "frozen:alld")]  # one batched run per setting
    assert played.learner_seats == [(0,), (0,), (1,), (1,), (0,), (0,)]
    assert played.groups == [0, 0, 1, 1, 2, 2]
    assert [r.seed for r in played.results] == [100, 100, 101, 101, 102, 102]  # a group shares its game seed
    for m, result in enumerate(played.results):
        learner = played.learner_seats[m][0]
        assert result.rewards[learner] == [0.0] * ROUNDS and result.rewards[1 - learner] == [5.0] * ROUNDS
    assert len(played.records) == 6 * ROUNDS  # the learner's turns only
    assert all(r.seat == played.learner_seats[r.match_id][0] for r in played.records)
    assert sorted({r.match_id for r in played.records}) == list(range(6))


def _record(match_id, seat, timestep, valid=True, completion=(7, 1)):
    action = Action(text=f"m{match_id}s{seat}t{timestep}", prompt_ids=[4, 5], completion_ids=list(completion),
                    logprobs=[-0.5] * len(completion))  # fmt: skip
    return TurnRecord(match_id, 0, seat, timestep, "action", action, valid=valid)


def _result(rewards):
    return MatchResult(seed=0, returns=[sum(r) for r in rewards], rewards=rewards, invalid_counts=[0, 0],
                       action_counts=[2, 2], metrics={})  # fmt: skip


def test_assign_credit_gives_each_turn_its_timestep_credit_with_penalties():
    # two matches of one seed group, self-play (both seats learn), naive credit = the leave-one-out advantage
    results = [_result([[1.0, 0.0], [3.0, 3.0]]), _result([[0.0, 2.0], [1.0, 1.0]])]
    records = [_record(m, s, t, valid=(m, s, t) != (0, 0, 1)) for m in (0, 1) for s in (0, 1) for t in (0, 1)]
    played = Played(records, results, [(0, 1), (0, 1)], [0, 0])
    penalties = format_penalties(records, 1.0, stop_ids=[1], max_new_tokens=16)
    assert penalties == {(0, 0, 1): 1.0}  # the invalid turn; the others end with eos
    scored = assign_credit(played, 2, penalties, method="naive", gamma=0.5, scale=1.0, baseline="loo")
    # returns, gamma 0.5: m0 s0 rewards [1, -1] -> G [0.5, -1]; m1 s0 [0, 2] -> [1, 2];
    # m0 s1 [3, 3] -> [4.5, 3]; m1 s1 [1, 1] -> [1.5, 1]. Leave-one-out over the two matches, seat by seat.
    expected = {(0, 0): [-0.5, -3.0], (0, 1): [3.0, 2.0], (1, 0): [0.5, 3.0], (1, 1): [-3.0, -2.0]}
    assert scored["pairs"] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert scored["turn_credit"] == [expected[(r.match_id, r.seat)][r.timestep] for r in records]
    assert scored["mask"].tolist() == [[True, True]] * 4
    assert scored["credit"]["returns_self"].tolist() == [[0.5, -1.0], [4.5, 3.0], [1.0, 2.0], [1.5, 1.0]]


def test_a_co_players_format_penalty_does_not_enter_the_learners_aa_credit():
    # self-play: seat 1's invalid turn at t=1 is penalised in seat 1's own returns, never in A^1_1, which seat 0's
    # AA term weighs at t=1 by W_1 = gamma_a^2 * A^0_0 = 0.25 (A^0_0 = 2 - 1, leave-one-out over the two matches)
    results = [_result([[2.0, 0.0], [3.0, 3.0]]), _result([[0.0, 2.0], [1.0, 1.0]])]
    records = [_record(m, s, t, valid=(m, s, t) != (0, 1, 1)) for m in (0, 1) for s in (0, 1) for t in (0, 1)]
    played = Played(records, results, [(0, 1), (0, 1)], [0, 0])
    settings = {"method": "aa", "gamma": 0.5, "scale": 1.0, "baseline": "loo", "beta": 0.5, "gamma_a": 0.5}
    penalised = assign_credit(played, 2, {(0, 1, 1): 5.0}, **settings)
    clean = assign_credit(played, 2, {}, **settings)
    seat0 = [i for i, r in enumerate(records) if r.seat == 0]
    assert [penalised["turn_credit"][i] for i in seat0] == [clean["turn_credit"][i] for i in seat0]
    assert penalised["credit"]["returns_self"][1].tolist() == [2.0, -2.0]  # seat 1 of match 0: [3, 3 - 5] -> G
    assert penalised["credit"]["returns_self"][1].tolist() != clean["credit"]["returns_self"][1].tolist()


def test_format_penalties_counts_invalid_and_unfinished_turns():
    records = [
        _record(0, 0, 0, valid=False),  # invalid
        _record(0, 0, 1, completion=(7, 8, 9, 9)),  # cut off at max_new_tokens without eos
        _record(0, 1, 0, completion=(7, 8, 1)),  # finished
        _record(1, 0, 0, valid=False, completion=(7, 8, 9, 9)),  # both: still one penalty per turn
        _record(1, 1, 0, completion=()),  # a scripted turn: no tokens, valid
        _record(2, 0, 0, completion=(7, 8, 9, 5)),  # ended by another stop token at max_new_tokens: finished
    ]
    penalties = format_penalties(records, 2.0, stop_ids=[1, 5], max_new_tokens=4)
    assert penalties == {(0, 0, 0): 2.0, (0, 0, 1): 2.0, (1, 0, 0): 2.0}
    assert format_penalties(records, 0.0, stop_ids=[1, 5], max_new_tokens=4) == {}
    assert format_penalties(records, 2.0, stop_ids=[1], max_new_tokens=4)[(2, 0, 0)] == 2.0


def test_learner_turns_feed_both_the_loss_rows_and_the_trajectory_lines():
    results = [_result([[1.0, 2.0], [0.0, 0.0]]), _result([[3.0], [0.0]])]
    records = [_record(0, 0, 0), _record(0, 0, 1), _record(1, 1, 0), _record(1, 0, 1, valid=False)]
    played = Played(records, results, [(0, 1), (0, 1)], [3, 3])
    turns = learner_turns(played, [0.25, -1.0, 2.0, 0.5], group_size=2, adapter_of=lambda seat: f"a{seat}")
    assert [t.match_id for t in turns] == [6, 6, 7, 7]  # group 3 of size 2: global matches 6 and 7
    assert [t.reward for t in turns] == [1.0, 2.0, 0.0, None]  # the second match has no reward at timestep 1
    line = turns[3].trajectory_line(iteration=5)
    assert tuple(line) == TRAJECTORY_KEYS
    assert line == {"iteration": 5, "match_id": 7, "seat": 0, "timestep": 1, "phase": "action",
                    "text": "m1s0t1", "valid": False, "credit": 0.5, "reward": None}  # fmt: skip
    assert json.loads(json.dumps(line)) == line
    assert turns[0].loss_turn() == ([4, 5], [7, 1], [-0.5, -0.5], 0.25, None, "a0")
    row = turns[3].dataset_row()
    assert tuple(row) == COLUMNS and row["completion_text"] == "m1s0t1" and row["invalid"] is True
    assert row["reward"] == 0.0 and row["seed_group"] == 3


def test_trajectory_file_is_sorted_by_match_and_written_whole(tmp_path):
    folder = tmp_path / "trajectories"
    folder.mkdir()
    stale = folder / ".iteration-000001.jsonl.999.tmp"
    stale.write_text("half a line")
    lines = [{"match_id": 2, "k": 0}, {"match_id": 0, "k": 1}, {"match_id": 2, "k": 2}, {"match_id": 0, "k": 3}]
    path = write_trajectory_file(folder, 7, lines)
    assert path == folder / "iteration-000007.jsonl" and stale.exists()  # only cleaned when asked
    assert [json.loads(x)["k"] for x in path.read_text().splitlines()] == [1, 3, 0, 2]  # play order within a match
    write_trajectory_file(folder, 8, lines[:1], clean_stale=True)
    assert sorted(p.name for p in folder.iterdir()) == ["iteration-000007.jsonl", "iteration-000008.jsonl"]


def test_rollout_cooperation_is_pooled_over_rounds_when_matches_differ_in_length():
    # the learner (tft) meets alld under continuation 0.5: it cooperates in the first round of each match only
    plan = [((0,), "frozen:alld")] * 8

    def seat_players(setting):
        return [ScriptedPlayer("tft", "ipd"), ScriptedPlayer("alld", "ipd")]

    played = play_groups("ipd", {"continuation": 0.5}, plan, list(range(8)), 2, 7, seat_players)
    scored = assign_credit(played, 2, {}, method="aa", gamma=0.9, scale=5.0, beta=0.5, gamma_a=0.9)
    lengths = [len(result.rewards[0]) for result in played.results]
    assert len(set(lengths)) > 1  # the case this is about
    metrics = rollout_metrics(played, scored, 2)
    assert metrics["rollout/cooperation_rate"] == 16 / sum(lengths)
    assert metrics["rollout/mutual_cooperation_rate"] == 0.0


def test_rollout_metrics_of_allc_against_alld():
    played, _ = _play()
    scored = assign_credit(played, 2, {}, method="aa", gamma=0.9, scale=5.0, beta=0.5, gamma_a=0.9)
    metrics = rollout_metrics(played, scored, 2)
    assert metrics["rollout/learner_return"] == 0.0 and metrics["rollout/cooperation_rate"] == 1.0
    assert metrics["rollout/mutual_cooperation_rate"] == 0.0 and metrics["rollout/invalid_rate"] == 0.0
    # groups 0 and 2: the learner (allc) in seat 0, alld in seat 1, every round
    assert metrics["rollout/return_seat0"] == 0.0 and metrics["rollout/return_seat1"] == 5.0 * ROUNDS
    # every match of a group plays out the same: no advantage, no credit
    zeros = ("credit/advantage_mean", "credit/advantage_std", "credit/mean", "credit/std")
    assert [metrics[key] for key in zeros] == [0.0] * 4
    assert metrics["rollout/learner_turns"] == 4 * ROUNDS


@pytest.mark.parametrize("record_seats,expected_seats", [(None, set()), ([1], {1})])
def test_collect_rollout_rows_are_learner_turns(record_seats, expected_seats):
    players = [ScriptedPlayer("tft", "ipd"), ScriptedPlayer("alld", "ipd")]
    rollout = collect_rollout("ipd", {"rounds": ROUNDS}, players, matches=2, record_seats=record_seats)
    assert {row["seat"] for row in rollout.rows} == expected_seats  # by default model seats only: none here
    for row in rollout.rows:
        assert tuple(row) == COLUMNS and row["completion_text"] == "D" and row["reward"] in (5.0, 1.0)
