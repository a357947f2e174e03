"""envs/base.py: a game parameter's value, from the command line or a recipe, is converted exactly or refused."""

import pytest

from coop_rl.envs import GameConfigError, make_game


@pytest.mark.parametrize(
    "params,expected",
    [
        ({"rounds": 3.0}, {"rounds": 3}),  # YAML's 3.0 is the integer 3
        ({"rounds": "4"}, {"rounds": 4}),  # --set rounds=4
        ({"show_horizon": 1}, {"show_horizon": True}),
        ({"show_horizon": "no"}, {"show_horizon": False}),
        ({"noise": 0}, {"noise": 0.0}),
    ],
)
def test_values_that_fit_are_converted(params, expected):
    game = make_game("ipd", **params)
    assert {key: game.params[key] for key in expected} == expected
    assert all(type(game.params[key]) is type(value) for key, value in expected.items())


@pytest.mark.parametrize(
    "params,message",
    [
        ({"rounds": 2.7}, "rounds=2.7: expected int"),  # int() made it 2: a recipe trained on 2-round matches
        ({"rounds": True}, "rounds=True: expected int"),
        ({"rounds": [1]}, r"rounds=\[1\]: expected int"),
        ({"show_horizon": 0.5}, "show_horizon=0.5: expected bool"),  # bool() made it True
        ({"show_horizon": 2}, "show_horizon=2: expected bool"),
        ({"noise": True}, "noise=True: expected float"),
        ({"noise": 10**400}, f"noise={10**400}: expected float"),  # float() overflows: an error, not a traceback
        ({"history": "9" * 5000}, f"history='{'9' * 5000}': expected 'last', 'full' or a positive integer"),
        ({"history": "\u0663"}, "history='\u0663': expected 'last', 'full' or a positive integer"),  # Arabic 3
        ({"history": "0"}, "history='0': expected 'last', 'full' or a positive integer"),
        (
            {"show_horizon": True, "continuation": 0.9},
            "show_horizon=true states a number of rounds that continuation < 1 makes false",
        ),  # fmt: skip
    ],
)
def test_values_that_do_not_fit_are_refused_not_truncated(params, message):
    with pytest.raises(GameConfigError, match=f"^{message}$"):
        make_game("ipd", **params)


def test_the_chat_grammar_is_bounded():
    # at most what a game reads of an answer; the chat grammar (guided decoding) stops at 200 characters
    assert make_game("tas", max_message_chars=100_000).answer_pattern("chat") == "<message>[^<]{0,200}</message>"
    with pytest.raises(GameConfigError, match="^max_message_chars=100001: must be <= 100000$"):
        make_game("tas", max_message_chars=100_001)
