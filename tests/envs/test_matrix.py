import itertools
import random

import axelrod
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coop_rl.envs import GameConfigError, make_game
from coop_rl.envs.matrix import COOPERATE, DEFECT, AxelrodStrategy, parse_option

from helpers import play_scripted

DETERMINISTIC = {
    "allc": axelrod.Cooperator,
    "alld": axelrod.Defector,
    "tft": axelrod.TitForTat,
    "tf2t": axelrod.TitFor2Tats,
    "grim": axelrod.Grudger,
    "wsls": axelrod.WinStayLoseShift,
    "stft": axelrod.SuspiciousTitForTat,
    "alternator": axelrod.Alternator,
}


@pytest.mark.parametrize("a,b", list(itertools.combinations_with_replacement(sorted(DETERMINISTIC), 2)))
def test_every_pair_scores_what_axelrod_scores(a, b):
    match = axelrod.Match((DETERMINISTIC[a](), DETERMINISTIC[b]()), turns=200)
    match.play()
    expected = [float(s) for s in match.final_score()]
    game = play_scripted("ipd", [a, b], rounds=200)
    assert game.returns() == expected
    # and the moves themselves, round by round
    to_index = {axelrod.Action.C: COOPERATE, axelrod.Action.D: DEFECT}
    assert game.moves[0] == [to_index[p] for p, _ in match.result]
    assert game.moves[1] == [to_index[q] for _, q in match.result]


def test_tft_vs_alld_over_ten_rounds():
    game = play_scripted("ipd", ["tft", "alld"])
    assert game.returns() == [9.0, 14.0]
    assert game.metrics()["cooperation_rate"] == [0.1, 0.0]


def test_axelrod_library_strategy_plays_like_the_builtin():
    from coop_rl.players.scripted import ScriptedPlayer

    player = ScriptedPlayer("axelrod:TitForTat", "ipd")
    opponent = ScriptedPlayer("alternator", "ipd")
    from coop_rl.runner import run_matches

    results = run_matches("ipd", {"rounds": 20}, [player, opponent], matches=1)
    builtin = play_scripted("ipd", ["tft", "alternator"], rounds=20)
    assert results[0].returns == builtin.returns()


def _backstabber_vs_cooperator(game):
    """``game`` played to its end by axelrod's BackStabber (seat 0) and Cooperator; the game and BackStabber."""
    backstabber, cooperator = AxelrodStrategy("BackStabber"), AxelrodStrategy("Cooperator")
    backstabber.reset(random.Random(0))
    cooperator.reset(random.Random(1))
    game.reset(0)
    while not game.done:
        turns = game.pending_turns()
        game.step({0: backstabber.act(game, turns[0]), 1: cooperator.act(game, turns[1])})
    return game, backstabber


def test_axelrod_strategies_know_the_match_length_when_the_prompt_hides_it():
    # BackStabber defects on the last two rounds of a match: it reads the length axelrod's Match gives it, which
    # the adapter takes from the game's rounds whatever the prompt says (show_horizon off by default).
    expected = axelrod.Match((axelrod.BackStabber(), axelrod.Cooperator()), turns=10)
    expected.play()
    for show_horizon in (False, True):
        game, _ = _backstabber_vs_cooperator(make_game("ipd", rounds=10, show_horizon=show_horizon))
        assert game.moves[0] == [COOPERATE] * 8 + [DEFECT] * 2
        assert game.returns() == [float(x) for x in expected.final_score()]


def test_axelrod_strategies_are_told_no_length_when_the_match_may_end_any_round():
    # under continuation < 1 axelrod's Match (prob_end) tells its players the length is inf: BackStabber, which
    # defects in the last two rounds of a known length, then cooperates throughout, as it does under axelrod
    expected = axelrod.Match((axelrod.BackStabber(), axelrod.Cooperator()), turns=10, prob_end=0.01, seed=0)
    expected.play()
    assert expected.players[0].match_attributes["length"] == float("inf")
    game, backstabber = _backstabber_vs_cooperator(make_game("ipd", rounds=10, continuation=0.999, noise=0.0))
    assert game.round == 10 and game.moves[0] == [COOPERATE] * 10
    assert backstabber._player.match_attributes["length"] == float("inf")


def _user_prompts(game_name: str, rounds: int = 3, **params) -> list[str]:
    """Seat 0's user message in every round of a match where both seats play option 0."""
    game = make_game(game_name, rounds=rounds, **params)
    game.reset(0)
    prompts = []
    while not game.done:
        turns = game.pending_turns()
        prompts.append(turns[0].messages[-1]["content"])
        game.step({t.seat: game.labels[COOPERATE] for t in turns})
    return prompts


def test_prompt_hides_the_horizon_by_default():
    prompts = _user_prompts("ipd")
    assert prompts == [
        "Round 1.\nThis is the first round.\nAnswer C or D.",
        "Round 2.\nLast round you played C and the other played C.\nAnswer C or D.",
        "Round 3.\nLast round you played C and the other played C.\nAnswer C or D.",
    ]
    assert _user_prompts("bos")[1] == (
        "You are the first player.\nRound 2.\nLast round you played J and the other played J.\nAnswer J or F."
    )
    # the rules text never states the number of rounds either (13 appears in no payoff)
    for name in ("ipd", "bos"):
        for params in ({}, {"history": "full"}, {"continuation": 0.9}, {"social_cot": True}):
            game = make_game(name, rounds=13, **params)
            game.reset(0)
            for turn in game.pending_turns():
                assert all("13" not in m["content"] for m in turn.messages)
                assert "rounds" not in turn.messages[0]["content"]


def test_show_horizon_states_the_number_of_rounds():
    prompts = _user_prompts("ipd", show_horizon="true")
    assert [p.splitlines()[0] for p in prompts] == ["Round 1 of 3.", "Round 2 of 3.", "Round 3 of 3."]
    assert prompts[0] == "Round 1 of 3.\nThis is the first round.\nAnswer C or D."
    assert _user_prompts("bos", show_horizon=True)[0] == (
        "You are the first player.\nRound 1 of 3.\nThis is the first round.\nAnswer J or F."
    )
    # the parameter changes the text only: the same moves and payoffs either way
    shown = play_scripted("ipd", ["tft", "alld"], show_horizon=True)
    assert shown.returns() == play_scripted("ipd", ["tft", "alld"]).returns() == [9.0, 14.0]
    with pytest.raises(GameConfigError):
        make_game("ipd", show_horizon="sometimes")


def test_akata_payoffs_shuffle_the_options_unless_told_not_to():
    from coop_rl.envs import make_game

    assert make_game("ipd", payoffs="akata").params["shuffle_options"] is True
    assert make_game("ipd", payoffs="akata", shuffle_options=False).params["shuffle_options"] is False  # was overridden
    assert make_game("ipd").params["shuffle_options"] is False


def test_mutual_cooperation_payoffs_and_labels_akata():
    game = play_scripted("ipd", ["allc", "allc"], payoffs="akata", rounds=4)
    assert game.returns() == [32.0, 32.0]
    assert game.labels == ("J", "F")
    game = play_scripted("ipd", ["allc", "alld"], payoffs="akata", rounds=1)
    assert game.returns() == [0.0, 10.0]


def test_bos_payoffs():
    assert play_scripted("bos", ["allc", "allc"], rounds=3).returns() == [30.0, 21.0]
    assert play_scripted("bos", ["alld", "alld"], rounds=3).returns() == [21.0, 30.0]
    assert play_scripted("bos", ["allc", "alld"], rounds=3).returns() == [0.0, 0.0]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("C", COOPERATE),
        ("d", DEFECT),
        ("I choose C.", COOPERATE),
        ("<action> D </action>", DEFECT),
        ("C or D? <action>C</action>", COOPERATE),
        ("<prediction>D</prediction> <action>C</action>", COOPERATE),
        ("C D", None),
        ("", None),
        ("Cooperate", None),
        ("<action>X</action>", None),
        ("I'd cooperate.", None),  # "I'd" is one word: its "d" is not the label D
        ("I’d say C", COOPERATE),
        ("C'est la vie: D", DEFECT),
    ],
)
def test_parse_option(text, expected):
    assert parse_option(text, ("C", "D")) == expected


def test_invalid_counts_as_defection_in_pd():
    game = make_game("ipd", rounds=1)
    game.reset(0)
    game.step({0: "no idea", 1: "C"})
    assert game.moves == [[DEFECT], [COOPERATE]]
    assert game.returns() == [5.0, 0.0]
    assert game.invalid_counts == [1, 0]
    assert game.invalid_rates() == [1.0, 0.0]


def test_invalid_is_a_seeded_random_option_in_bos():
    chosen = set()
    for seed in range(20):
        game = make_game("bos", rounds=1)
        game.reset(seed)
        game.step({0: "???", 1: "J"})
        chosen.add(game.moves[0][0])
        again = make_game("bos", rounds=1)
        again.reset(seed)
        again.step({0: "???", 1: "J"})
        assert again.moves == game.moves
    assert chosen == {0, 1}


def test_an_invalid_bos_answer_leaves_the_seeds_draws_alone():
    """Noise flips and the match's end under a continuation are the seed's, whether an answer was invalid or not."""

    def play(first_answer):
        game = make_game("bos", rounds=50, continuation=0.8, noise=0.3)
        game.reset(7)
        answers = iter([first_answer])
        while not game.done:
            game.step({0: next(answers, "J"), 1: "J"})
        return game

    valid, invalid = play("J"), play("???")
    assert invalid.invalid_counts == [1, 0] and valid.invalid_counts == [0, 0]
    assert invalid.round == valid.round
    assert invalid.moves[1] == valid.moves[1]
    flips = [[m != c for m, c in zip(g.moves[0], g.intended[0], strict=True)] for g in (valid, invalid)]
    assert flips[0] == flips[1]


def test_cooperation_counts_choices_before_noise():
    game = play_scripted("ipd", ["allc", "allc"], seed=7, noise=0.3, rounds=50)
    assert any(m == DEFECT for m in game.moves[0])
    assert game.metrics()["cooperation_rate"] == [1.0, 1.0]
    assert game.metrics()["mutual_cooperation_rate"] == 1.0


def test_same_seed_same_transcript_with_noise_and_random():
    def transcript(seed):
        return play_scripted("ipd", ["random", "tft"], seed=seed, noise=0.1, continuation=0.95).transcript_dicts()

    assert transcript(3) == transcript(3)
    assert transcript(3) != transcript(4)


def test_noise_flips_do_not_depend_on_actions():
    a = play_scripted("ipd", ["allc", "allc"], seed=7, noise=0.3, rounds=50)
    b = play_scripted("ipd", ["alld", "alld"], seed=7, noise=0.3, rounds=50)
    flipped_a = [m == DEFECT for m in a.moves[0]]
    flipped_b = [m == COOPERATE for m in b.moves[0]]
    assert flipped_a == flipped_b and any(flipped_a)


def test_continuation_ends_matches_early_and_by_seed():
    lengths = {play_scripted("ipd", ["tft", "tft"], seed=s, continuation=0.5, rounds=100).round for s in range(10)}
    assert max(lengths) < 100 and len(lengths) > 1


def test_history_window_in_prompt():
    game = make_game("ipd", history="full", rounds=5)
    game.reset(0)
    for _ in range(3):
        game.step({0: "C", 1: "D"})
    prompt = game.pending_turns()[0].messages[-1]["content"]
    assert "Round 1:" in prompt and "Round 3:" in prompt
    assert prompt.strip().endswith("Answer C or D.")
    assert "Last round you played C and the other played D." in prompt
    game = make_game("ipd", history="2", rounds=5)
    game.reset(0)
    for _ in range(3):
        game.step({0: "C", 1: "D"})
    prompt = game.pending_turns()[0].messages[-1]["content"]
    assert "Round 1:" not in prompt and "Round 2:" in prompt


def test_social_cot_prediction_accuracy():
    game = make_game("ipd", social_cot=True, rounds=2)
    game.reset(0)
    assert "<prediction>" in game.pending_turns()[0].messages[-1]["content"]
    game.step({0: "<prediction>D</prediction><action>C</action>", 1: "<prediction>C</prediction><action>D</action>"})
    game.step({0: "<prediction>C</prediction><action>C</action>", 1: "<prediction>C</prediction><action>C</action>"})
    assert game.metrics()["prediction_accuracy"] == [1.0, 1.0]


@pytest.mark.parametrize(
    "params", [{"rounds": "0"}, {"noise": "2"}, {"history": "some"}, {"history": "²"}, {"payoffs": "x"}, {"k": 1}]
)
def test_bad_parameters(params):
    with pytest.raises(GameConfigError):
        make_game("ipd", **params)


adversarial = st.one_of(
    st.text(),
    st.text(alphabet="CDJF<>/actionprediction \n", max_size=200),
    st.builds(lambda s: "<action>" * 3 + s + "</action>" * 2, st.text(max_size=50)),
    st.sampled_from(["C" * 1_000_000, "<action>" * 100_000, "\x00C\x00", "Ｃ", "ç", "<action>C<action>D</action>"]),
)


@settings(max_examples=200, deadline=None)
@given(a=adversarial, b=adversarial, game_name=st.sampled_from(["ipd", "bos"]))
def test_any_text_never_raises(a, b, game_name):
    game = make_game(game_name, rounds=2, social_cot=True)
    game.reset(0)
    game.step({0: a, 1: b})
    game.step({0: b, 1: a})
    assert game.done and len(game.rewards[0]) == 2
    assert 0 <= game.invalid_counts[0] <= 2
