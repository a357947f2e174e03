"""Game traits: what evaluation, reports and players read from the game class instead of its name.

``symmetric`` (evaluation also plays seat 1), the cooperation metric and its label (eval rows, reports, plots),
the answer choices per turn (constrained decoding) and the answer grammar per phase (vLLM guided decoding).
"""

import re

import pytest

from coop_rl.envs import GAMES, make_game, matrix_game_names
from coop_rl.envs.base import MAX_ANSWER_CHOICES
from coop_rl.envs.parsing import integer_pattern

# game: (symmetric, cooperation_metric, cooperation_label)
TRAITS = {
    "ipd": (True, "cooperation_rate", "cooperation rate"),
    "bos": (False, "cooperation_rate", "rate of choosing J"),
    "tas": (True, None, "cooperation rate"),
    "split": (True, None, "cooperation rate"),
    "spgg": (False, "mean_contribution", "mean contribution level"),
}

# game: its answer grammar with the default parameters
PATTERNS = {
    "ipd": {"action": r"\s*(C|D)\s*"},
    "bos": {"action": r"\s*(J|F)\s*"},
    "tas": {"chat": "<message>[^<]{0,200}</message>", "split": "<propose>(10|[0-9])</propose>"},
    "split": {"split": "<propose>hats=(10|[0-9]) books=(10|[0-9]) balls=(10|[0-9])</propose>"},
    "spgg": {
        "contribute": r"<contribute>(0(\.[0-9])?|1(\.0)?)</contribute>(\s*<message>[^<]{0,300}</message>)?",
        "answer": r"<answer>-?[0-9]{1,4}</answer>(\s*<message>[^<]{0,300}</message>)?",
    },
}


def test_every_game_declares_its_traits_exactly():
    assert set(GAMES) == set(TRAITS)
    for name, cls in GAMES.items():
        assert (cls.symmetric, cls.cooperation_metric, cls.cooperation_label) == TRAITS[name], name
    assert matrix_game_names() == ["ipd", "bos"]


# game: its cooperation metric per seat after a match (seed 0) of invalid answers only, each replaced by the game's
# default: ipd defects; bos draws J or F at random from a generator seeded by the match seed (seed 0: 5 J in 10
# rounds for each seat); spgg contributes 0; tas and split name no cooperation metric
DEFAULT_COOPERATION = {
    "ipd": [0.0, 0.0],
    "bos": [0.5, 0.5],
    "tas": None,
    "split": None,
    "spgg": [0.0, 0.0, 0.0],
}


@pytest.mark.parametrize("name", sorted(TRAITS))
def test_the_cooperation_metric_is_a_per_seat_metric(name):
    """The metric a game names is in its metrics, one number per seat: here the invalid answers' defaults."""
    game = make_game(name)
    game.reset(0)
    while not game.done:
        game.step({turn.seat: "" for turn in game.pending_turns()})  # invalid answers: every game's default
    assert game.invalid_counts == game.action_counts  # every answer was invalid
    key = GAMES[name].cooperation_metric
    if key is None:
        assert not {"cooperation_rate", "mean_contribution"} & set(game.metrics())
        assert DEFAULT_COOPERATION[name] is None
        return
    assert game.metrics()[key] == DEFAULT_COOPERATION[name]


def test_answer_grammar_per_game_and_phase():
    for name, expected in PATTERNS.items():
        game = make_game(name)
        assert game.answer_patterns() == expected, name
        for phase, pattern in expected.items():
            assert game.answer_pattern(phase) == pattern
        assert game.answer_pattern("unknown-phase") is None
    # the phases every game asks for, together: exactly the five the players know
    assert set().union(*(make_game(n).answer_patterns() for n in GAMES)) == {
        "action",
        "split",
        "chat",
        "contribute",
        "answer",
    }


def test_answer_grammar_follows_the_parameters():
    assert make_game("ipd", payoffs="akata").answer_pattern("action") == r"\s*(J|F)\s*"
    assert make_game("tas", coins=5).answer_pattern("split") == "<propose>([0-5])</propose>"
    assert make_game("tas", coins=1000).answer_pattern("split") == "<propose>(0|[1-9][0-9]{0,3})</propose>"
    assert (
        make_game("split", units=3).answer_pattern("split")
        == "<propose>hats=([0-3]) books=([0-3]) balls=([0-3])</propose>"
    )
    levels4 = r"<contribute>(0(\.[0-9]{1,9})?|1(\.0{1,9})?)</contribute>(\s*<message>[^<]{0,300}</message>)?"
    assert make_game("spgg", levels=4).answer_pattern("contribute") == levels4


def test_answer_grammar_admits_every_answer_the_prompts_ask_for():
    """What a prompt asks for fully matches the grammar (a guided retry resamples any answer that does not)."""
    cot = make_game("ipd", social_cot=True)
    cot.reset(0)
    assert (
        "<prediction>X</prediction>, then answer <action>X</action>" in cot.pending_turns()[0].messages[-1]["content"]
    )
    assert re.fullmatch(cot.answer_pattern("action"), "<prediction>D</prediction>\n<action> C </action>")
    assert not re.fullmatch(cot.answer_pattern("action"), "C")
    assert cot.answer_choices(cot.pending_turns()[0]) == [
        f"<prediction>{guess}</prediction> <action>{move}</action>" for guess in "CD" for move in "CD"
    ]
    spgg = make_game("spgg", players=2)
    spgg.reset(0)
    assert "<message>...</message>" in spgg.pending_turns()[0].messages[-1]["content"]
    assert re.fullmatch(spgg.answer_pattern("contribute"), "<contribute>0.7</contribute> <message>Match me.</message>")
    assert not re.fullmatch(
        spgg.answer_pattern("contribute"), f"<contribute>1</contribute><message>{'x' * 301}</message>"
    )
    # a task's value has up to task_digits + 2 digits: (99,999 + 99,999) * 9 = 1,799,982 at five
    task = make_game("spgg", mode="task", task_digits=5)
    assert re.fullmatch(task.answer_pattern("answer"), "<answer>1799982</answer>")
    assert not re.fullmatch(task.answer_pattern("answer"), "<answer>17999820</answer>")
    tas = make_game("tas", max_message_chars=40)
    assert tas.answer_pattern("chat") == "<message>[^<]{0,40}</message>"


def test_answer_sets_too_large_to_enumerate_are_free_text():
    """Split-no-comm enumerates (units + 1)**3 proposals: at most MAX_ANSWER_CHOICES, units 20, else None."""
    assert MAX_ANSWER_CHOICES == 10_000
    for game_name, params, expected in [
        ("split", {"units": 20}, 21**3),
        ("split", {"units": 21}, None),
        ("split", {"units": 1_000_000}, None),  # 10**18 strings were built before
        ("tas", {"coins": 9_999}, 10_000),
        ("tas", {"coins": 10_000}, None),
    ]:
        game = make_game(game_name, **params)
        game.reset(0)
        while game.pending_turns()[0].phase != "split":
            game.step({turn.seat: "<message>hi</message>" for turn in game.pending_turns()})
        choices = game.answer_choices(game.pending_turns()[0])
        assert (None if choices is None else len(choices)) == expected, (game_name, params)


def test_integer_pattern():
    assert integer_pattern(0) == "([0-0])"
    assert integer_pattern(9) == "([0-9])"
    assert integer_pattern(12) == "(12|11|10|[0-9])"
    assert integer_pattern(100).startswith("(100|99|98|") and integer_pattern(100).endswith("|10|[0-9])")
    assert integer_pattern(101) == "(0|[1-9][0-9]{0,2})"
    for n in range(101):
        assert re.fullmatch(integer_pattern(100), str(n))
    assert not re.fullmatch(integer_pattern(100), "101")
    assert not re.fullmatch(integer_pattern(12), "07")


def test_answer_choices_by_game_and_phase():
    ipd = make_game("ipd")
    ipd.reset(0)
    assert ipd.answer_choices(ipd.pending_turns()[0]) == ["C", "D"]
    akata = make_game("ipd", payoffs="akata")
    akata.reset(0)
    assert akata.answer_choices(akata.pending_turns()[0]) == ["J", "F"]
    tas = make_game("tas")
    tas.reset(0)
    assert tas.answer_choices(tas.pending_turns()[0]) is None  # the chat is free text


@pytest.mark.parametrize("game_name", ["ipd", "bos", "tas", "split", "spgg"])
def test_every_declared_choice_is_a_valid_answer_and_free_text_phases_have_none(game_name):
    """Play each game to its end answering the first declared choice (the last one on odd steps): every such
    answer parses as valid, and phases without choices (chat) are the only ones left free."""
    game = make_game(game_name, rounds=2)
    game.reset(3)
    phases = {}
    step = 0
    while not game.done:
        actions = {}
        for turn in game.pending_turns():
            choices = game.answer_choices(turn)
            phases[turn.phase] = None if choices is None else len(choices)
            actions[turn.seat] = "hello" if choices is None else choices[-(step % 2)]
        seen = len(game.transcript)
        game.step(actions)
        assert all(event.valid for event in game.transcript[seen:] if phases[event.phase] is not None)
        step += 1
    expected = {"ipd": {"action": 2}, "bos": {"action": 2}, "tas": {"chat": None, "split": 11}}
    expected |= {"split": {"split": 11**3}, "spgg": {"contribute": 11}}
    assert phases == expected[game_name]


@pytest.mark.parametrize(
    ("game_name", "params"),
    [
        ("ipd", {}),
        ("ipd", {"payoffs": "akata"}),
        ("bos", {}),
        ("tas", {"coins": 7}),
        ("tas", {"coins": 150}),
        ("split", {"units": 4}),
        ("spgg", {}),
        ("spgg", {"levels": 3}),
        ("spgg", {"levels": 1000}),
        ("spgg", {"levels": 30}),  # 1/30 is 0.0333333: seven decimals
        ("spgg", {"levels": 997}),  # 1/997 is 0.00100301: eight
        ("spgg", {"mode": "task"}),
    ],
)
def test_each_declared_choice_fully_matches_its_phase_grammar(game_name, params):
    """One source: the finite choices of a turn (constrained decoding) are well-formed answers under the phase's
    grammar (guided decoding), and every phase a game asks for has a grammar."""
    game = make_game(game_name, rounds=2, **params)
    game.reset(0)
    while not game.done:
        turns = game.pending_turns()
        for turn in turns:
            pattern = game.answer_pattern(turn.phase)
            assert pattern is not None, turn.phase
            for choice in game.answer_choices(turn) or []:
                assert re.fullmatch(pattern, choice), (turn.phase, choice)
        game.step({turn.seat: (game.answer_choices(turn) or ["<message>hi</message>"])[0] for turn in turns})
