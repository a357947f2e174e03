"""eval/tournament.py: every ordered pair plays; a game whose seats pay differently is scored over both seats."""

import pytest

from coop_rl.eval.tournament import round_robin
from coop_rl.players import SamplingConfig, make_player
from coop_rl.runner import play, run_matches, summarize


def _seat_returns(game: str, specs: list[str]) -> list[float]:
    players = [make_player(spec, game) for spec in specs]
    return [p["mean_return"] for p in summarize(game, specs, run_matches(game, {}, players, matches=2))["players"]]


def test_a_symmetric_game_scores_the_row_player_in_seat_0():
    result = round_robin("ipd", ["allc", "alld", "tft"], matches=2)
    assert result.mean_return == [[30.0, 0.0, 30.0], [50.0, 10.0, 14.0], [30.0, 9.0, 30.0]]
    assert result.cooperation[2] == [1.0, 0.1, 1.0] and result.to_dict()["both_seats"] is False
    assert "(row player in seat 0)" in result.table().splitlines()[0]


def test_a_spec_named_twice_plays_once():
    # tft's average once counted tft twice: (30 + 30 + 9) / 3
    result = round_robin("ipd", ["tft", "tft", "alld", "tft"], matches=2)
    assert result.specs == ["tft", "alld"] and result.mean_return == [[30.0, 9.0], [14.0, 10.0]]
    assert result.to_dict()["average"] == [19.5, 12.0]


def test_an_asymmetric_game_averages_the_row_players_two_seats():
    # BoS pays the seats differently: alld in self-play gets 70 as the first player and 100 as the second
    first, second = _seat_returns("bos", ["alld", "alld"])
    assert first != second
    result = round_robin("bos", ["allc", "alld"], matches=2)
    assert result.mean_return[1][1] == (first + second) / 2
    allc_first, alld_second = _seat_returns("bos", ["allc", "alld"])
    alld_first, allc_second = _seat_returns("bos", ["alld", "allc"])
    assert result.mean_return[0][1] == (allc_first + allc_second) / 2
    assert result.mean_return[1][0] == (alld_first + alld_second) / 2
    assert result.to_dict()["both_seats"] is True and "(mean of both seats)" in result.table().splitlines()[0]


@pytest.mark.slow
def test_a_model_players_cell_is_what_play_plays_whatever_came_before(tiny_model_dir):
    # each pairing restarts the model's sampling from the seed: a cell does not depend on the table's order
    policy = f"hf:{tiny_model_dir}"
    sampling = SamplingConfig(temperature=1.5, max_new_tokens=8)
    played = play("ipd", {}, [policy, "tft"], matches=4, seed=3, sampling=sampling)["players"][0]["mean_return"]
    for specs in ([policy, "tft"], ["alld", "tft", policy], ["tft", policy, "allc"]):
        result = round_robin("ipd", specs, matches=4, seed=3, sampling=sampling)
        assert result.mean_return[specs.index(policy)][specs.index("tft")] == played
    other_seed = round_robin("ipd", [policy, "tft"], matches=4, seed=4, sampling=sampling)
    assert (
        other_seed.mean_return[0][1]
        == play("ipd", {}, [policy, "tft"], matches=4, seed=4, sampling=sampling)["players"][0]["mean_return"]
    )
