"""Trust-and-Split (``tas``) and Split-no-comm (``split``): rules, exact returns, parsers, determinism, robustness."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coop_rl.envs.base import GameConfigError
from coop_rl.envs.parsing import last_tag_content
from coop_rl.envs.split import VALUE_PAIRS, SplitNoComm
from coop_rl.envs.strategies import make_strategy
from coop_rl.envs.tas import (
    BEATS,
    HANDS,
    ITEMS,
    TrustAndSplit,
    parse_message,
    parse_proposal,
    parse_split_proposal,
    split_amounts,
    stated_hand,
)

from helpers import play_scripted

SEEDS = range(12)
HUGE = 1_000_000  # characters: far beyond clean_text's limit (100,000), where the parsers cut every text


def upper_rounds(game: TrustAndSplit, seat: int) -> int:
    return sum(1 for r in range(len(game.hands)) if game.kind(seat, r) == "upper")


# ----- the proportional rule ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x0", "x1", "expected"),
    [
        (7, 7, (5.0, 5.0)),
        (3, 4, (3.0, 4.0)),
        (10, 10, (5.0, 5.0)),
        (10, 0, (10.0, 0.0)),
        (0, 0, (0.0, 0.0)),
        (6, 4, (6.0, 4.0)),
        (9, 3, (7.5, 2.5)),
        (10, 5, (20 / 3, 10 / 3)),
    ],
)
def test_split_amounts(x0, x1, expected):
    assert split_amounts(x0, x1, 10) == expected


def test_tas_round_uses_proportional_rule():
    game = TrustAndSplit(rounds=1)
    game.reset(0)
    for _ in range(2):  # one chat message from each seat, in turn
        (turn,) = game.pending_turns()
        game.step({turn.seat: "<message>hi</message>"})
    assert game.phase == "split"
    game.step({0: "<propose>7</propose>", 1: "<propose>7</propose>"})
    values = [game.value(s, 0) for s in (0, 1)]
    assert game.rewards == [[5 * values[0]], [5 * values[1]]]
    assert game.history[0]["coins"] == (5.0, 5.0)


# ----- exact returns of the scripted strategies ---------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_tas_greedy_vs_greedy_welfare_550(seed):
    game = play_scripted("tas", ["greedy", "greedy"], seed)
    assert sum(game.returns()) == 550.0
    # each round: 5 coins each, worth 10 to the upper hand and 1 to the lower hand
    for seat in (0, 1):
        up = upper_rounds(game, seat)
        assert game.returns()[seat] == 50 * up + 5 * (10 - up)
    assert game.metrics()["efficiency"] == 0.55
    assert game.metrics()["mean_claim"] == [10.0, 10.0]


@pytest.mark.parametrize("seed", SEEDS)
def test_tas_honest_vs_honest_welfare_1000(seed):
    game = play_scripted("tas", ["honest", "honest"], seed)
    assert sum(game.returns()) == 1000.0
    assert game.returns() == [100.0 * upper_rounds(game, s) for s in (0, 1)]
    m = game.metrics()
    assert m["efficiency"] == 1.0
    assert m["upper_coin_share"] == 1.0
    assert m["message_invalid_rate"] == [0.0, 0.0]
    assert m["proposal_invalid_rate"] == [0.0, 0.0]


@pytest.mark.parametrize("seed", SEEDS)
def test_tas_fair_vs_fair(seed):
    game = play_scripted("tas", ["fair", "fair"], seed)
    # 5 coins each every round, like greedy/greedy, but without exceeding the pot
    assert sum(game.returns()) == 550.0
    for seat in (0, 1):
        up = upper_rounds(game, seat)
        assert game.returns()[seat] == 50 * up + 5 * (10 - up)
    assert game.metrics()["mean_claim"] == [5.0, 5.0]


@pytest.mark.parametrize("seed", SEEDS)
def test_tas_greedy_vs_honest(seed):
    game = play_scripted("tas", ["greedy", "honest"], seed)
    greedy_up = upper_rounds(game, 0)
    honest_up = 10 - greedy_up
    # greedy states no hand, so honest does not know its value and claims 5 against greedy's 10: 15 > 10 coins,
    # greedy gets 10 * 10 / 15 coins, honest 10 * 5 / 15, each at its own value (thirds: approx)
    greedy, honest = 100 / 15, 50 / 15
    expected = [greedy * (10 * greedy_up + honest_up), honest * (greedy_up + 10 * honest_up)]
    assert game.returns() == pytest.approx(expected)
    assert game.metrics()["mean_claim"] == [10.0, 5.0]


def test_tas_greedy_vs_honest_seed0_exact():
    game = play_scripted("tas", ["greedy", "honest"], 0)
    # seed 0: seat 0 holds the upper hand in rounds 1, 2, 3 and 7 (4 rounds), seat 1 in the other 6
    upper = {1, 2, 3, 7}
    assert [game.kind(0, r) for r in range(10)] == ["upper" if r in upper else "lower" for r in range(10)]
    # 6.67 coins to greedy and 3.33 to honest every round: greedy 4 * 66.67 + 6 * 6.67, honest 4 * 3.33 + 6 * 33.33
    assert game.returns() == pytest.approx([920 / 3, 640 / 3])
    assert game.metrics()["efficiency"] == pytest.approx(0.52)


@pytest.mark.parametrize("seed", SEEDS)
def test_honest_believes_the_hand_the_other_states(seed):
    # a liar in seat 0 names the hand that beats honest's (it reads the game: a scripted worst case) and claims 10
    class Liar:
        def act(self, game, turn):
            if turn.phase == "chat":
                honest_hand = game.hands[game.round][1 - turn.seat]
                winner = next(h for h in HANDS if BEATS[h] == honest_hand)
                return f"<message>My hand is {winner}.</message>"
            return "<propose>10</propose>"

    game = TrustAndSplit()
    game.reset(seed)
    honest = make_strategy("tas", "honest")
    while not game.done:
        turns = game.pending_turns()
        game.step({t.seat: (Liar() if t.seat == 0 else honest).act(game, t) for t in turns})
    # told every round that it has the lower hand, honest claims 0: the liar takes all 10 coins every round
    assert [h["claims"] for h in game.history] == [(10, 0)] * 10
    assert game.returns()[1] == 0.0
    assert game.returns()[0] == 100.0 * upper_rounds(game, 0) + 10.0 * (10 - upper_rounds(game, 0))


@pytest.mark.parametrize(
    ("message", "hand"),
    [
        ("My hand is rock.", "rock"),
        ("I have PAPER, you?", "paper"),
        ("scissors", "scissors"),
        ("I hold paper; paper beats rock", "paper"),  # the first named
        ("rocks and papers", None),  # whole words only
        ("", None),
        ("no idea", None),
    ],
)
def test_stated_hand(message, hand):
    assert stated_hand(message) == hand


@pytest.mark.parametrize("seed", SEEDS)
def test_tas_fair_vs_greedy(seed):
    game = play_scripted("tas", ["fair", "greedy"], seed)
    # claims 5 + 10 = 15 > 10: fair gets 10 * 5 / 15, greedy 10 * 10 / 15 (thirds: not exact in floats, and the
    # game sums its rounds one by one, hence approx)
    fair_up = upper_rounds(game, 0)
    fair_coins, greedy_coins = 10 * 5 / 15, 10 * 10 / 15
    expected_fair = fair_coins * (10 * fair_up + 1 * (10 - fair_up))
    expected_greedy = greedy_coins * (1 * fair_up + 10 * (10 - fair_up))
    assert game.returns() == pytest.approx([expected_fair, expected_greedy])


@pytest.mark.parametrize("seed", SEEDS)
def test_split_greedy_and_fair(seed):
    for names in (("greedy", "greedy"), ("fair", "fair")):
        game = play_scripted("split", list(names), seed)
        # 5 units of every item each, every round
        for seat in (0, 1):
            expected = sum(5 * sum(values[seat].values()) for values in game.values)
            assert game.returns()[seat] == expected
        best = sum(game.max_welfare(r) for r in range(10))
        assert game.metrics()["efficiency"] == sum(game.returns()) / best
        assert game.metrics()["invalid_rate"] == [0.0, 0.0]


def test_split_greedy_vs_fair_exact():
    game = play_scripted("split", ["greedy", "fair"], 3)
    # per item 10 + 5 = 15 > 10: greedy gets 20/3 units, fair 10/3 units of everything (thirds: approx)
    for seat, share in ((0, 20 / 3), (1, 10 / 3)):
        assert game.returns()[seat] == pytest.approx(sum(share * sum(v[seat].values()) for v in game.values))


def test_split_round_exact_numbers():
    game = SplitNoComm(rounds=1)
    game.reset(0)
    v0, v1 = game.values[0]
    game.step({0: "<propose>hats=7 books=3 balls=0</propose>", 1: "<propose>hats: 7, books: 4, balls: 10</propose>"})
    got0 = {"hats": 5.0, "books": 3.0, "balls": 0.0}
    got1 = {"hats": 5.0, "books": 4.0, "balls": 10.0}
    assert game.rewards[0] == [sum(got0[i] * v0[i] for i in ITEMS)]
    assert game.rewards[1] == [sum(got1[i] * v1[i] for i in ITEMS)]


# ----- the values and hands -----------------------------------------------------------------------------------
def test_split_value_pairs():
    assert len(VALUE_PAIRS) == 12
    for a, b in VALUE_PAIRS:
        assert a != b and sum(a) == sum(b) and set(a) | set(b) <= {1, 10}
    for seed in SEEDS:
        game = play_scripted("split", ["greedy", "greedy"], seed)
        for v0, v1 in game.values:
            assert v0 != v1 and sum(v0.values()) == sum(v1.values())


@pytest.mark.parametrize("seed", SEEDS)
def test_tas_hands_differ_and_depend_on_seed_only(seed):
    reference = play_scripted("tas", ["greedy", "greedy"], seed).hands
    assert len(reference) == 10
    for h0, h1 in reference:
        assert h0 != h1 and h0 in HANDS and h1 in HANDS
    for names in (("honest", "fair"), ("fair", "greedy"), ("honest", "honest")):
        assert play_scripted("tas", list(names), seed).hands == reference
    # garbage answers do not change the draws either
    game = TrustAndSplit()
    game.reset(seed)
    while not game.done:
        game.step({t.seat: "???" for t in game.pending_turns()})
    assert game.hands == reference


def test_tas_hands_vary_with_seed():
    hands = {tuple(play_scripted("tas", ["fair", "fair"], seed).hands) for seed in SEEDS}
    assert len(hands) > 1


def test_tas_kind_and_value():
    game = TrustAndSplit(upper_value=8, lower_value=2)
    game.reset(5)
    h0, h1 = game.hands[0]
    upper = 0 if BEATS[h0] == h1 else 1
    assert game.kind(upper) == "upper" and game.kind(1 - upper) == "lower"
    assert game.value(upper) == 8.0 and game.value(1 - upper) == 2.0
    view = game.view(upper)  # the seat's own hand, not its kind or value: it knows only its hand
    assert view["hand"] == game.hands[0][upper] and "kind" not in view and "value" not in view
    prompt = game.pending_turns()[0].messages[1]["content"]
    assert "upper hand" not in prompt and "lower hand" not in prompt and "worth" not in prompt


# ----- turn order, timesteps, prompts and views ---------------------------------------------------------------
def test_tas_turn_structure():
    game = TrustAndSplit(rounds=3)
    game.reset(0)
    assert game.first_speaker(0) == 1  # seed 0 draws seat 1 to speak first, then the seats alternate
    for r in range(3):
        first = (1 + r) % 2
        assert game.first_speaker(r) == first
        turns = game.pending_turns()
        assert [(t.seat, t.phase, t.timestep) for t in turns] == [(first, "chat", r)]
        game.step({first: f"<message>round {r} from {first}</message>"})
        turns = game.pending_turns()
        assert [(t.seat, t.phase, t.timestep) for t in turns] == [(1 - first, "chat", r)]
        assert f"round {r} from {first}" in turns[0].messages[1]["content"]
        assert game.view(1 - first)["messages"] == [{"seat": first, "text": f"round {r} from {first}"}]
        game.step({1 - first: "<message>ok</message>"})
        turns = game.pending_turns()
        assert [(t.seat, t.phase, t.timestep) for t in turns] == [(0, "split", r), (1, "split", r)]
        game.step({0: "<propose>4</propose>", 1: "6"})
        assert [len(rw) for rw in game.rewards] == [r + 1, r + 1]
    assert game.done and game.pending_turns() == []
    assert [e.timestep for e in game.transcript] == [0] * 4 + [1] * 4 + [2] * 4


def _chat_order(game: TrustAndSplit) -> list[list[int]]:
    """The seats that sent each round's messages, in speaking order."""
    return [[seat for seat, _ in h["messages"]] for h in game.history]


def test_tas_first_speaker_is_drawn_per_match_then_alternates():
    firsts = {}
    for seed in range(40):
        game = play_scripted("tas", ["honest", "greedy"], seed)
        first = game.first_speaker(0)
        # within a match the first speaker alternates between rounds, and the transcript follows it
        assert _chat_order(game) == [[(first + r) % 2, (first + r + 1) % 2] for r in range(10)]
        assert [e.seat for e in game.transcript if e.phase == "chat"][:2] == [first, 1 - first]
        firsts[seed] = first
    assert set(firsts.values()) == {0, 1}  # both seats open some matches
    assert 10 <= sum(firsts.values()) <= 30  # a fair draw, not a fixed pattern
    # the same seed gives the same order, whoever plays and whatever they answer (the draw comes from the seed)
    for seed in (0, 1, 5, 6):
        assert play_scripted("tas", ["fair", "fair"], seed).first_speaker(0) == firsts[seed]
        game = TrustAndSplit(rounds=3)
        game.reset(seed)
        while not game.done:
            game.step({t.seat: "???" for t in game.pending_turns()})
        assert _chat_order(game) == [[(firsts[seed] + r) % 2, (firsts[seed] + r + 1) % 2] for r in range(3)]
    # a reused game object draws again from the new seed
    game = TrustAndSplit()
    game.reset(0)
    game.reset(1)
    assert game.first_speaker(0) == firsts[1] != firsts[0]


@pytest.mark.parametrize("cls", [TrustAndSplit, SplitNoComm])
def test_prompts_hide_the_horizon_by_default(cls):
    names = ("honest", "greedy") if cls is TrustAndSplit else ("greedy", "fair")
    players = [make_strategy(cls.name, name) for name in names]
    game = cls(rounds=13)
    game.reset(0)
    seen = []
    while not game.done:
        turns = game.pending_turns()
        seen += [(game.round, t.messages) for t in turns]
        game.step({t.seat: players[t.seat].act(game, t) for t in turns})
    for round_index, messages in seen:
        system, user = (m["content"] for m in messages)
        assert system.startswith("You are playing a repeated negotiation game with another player. Each round ")
        assert "13" not in system and "rounds" not in system
        assert user.startswith(f"Round {round_index + 1}.\n") and " of 13" not in user
    shown = cls(rounds=13, show_horizon="true")
    shown.reset(0)
    system, user = (m["content"] for m in shown.pending_turns()[0].messages)
    assert system.startswith("You are playing a repeated negotiation game with another player: 13 rounds. Each round ")
    assert user.startswith("Round 1 of 13.\n")
    # the parameter changes the text only
    assert play_scripted(cls.name, list(names), 3, show_horizon=True).returns() == (
        play_scripted(cls.name, list(names), 3).returns()
    )


def test_tas_wrong_seats_rejected():
    game = TrustAndSplit()
    game.reset(0)
    with pytest.raises(ValueError):
        game.step({1 - game.first_speaker(0): "<message>x</message>"})
    with pytest.raises(ValueError):
        game.step({0: "<message>x</message>", 1: "<message>y</message>"})


def test_tas_prompt_contents():
    game = TrustAndSplit()
    game.reset(2)
    turn = game.pending_turns()[0]
    assert turn.seat == 0  # seed 2 draws seat 0 to speak first
    system, user = turn.messages[0]["content"], turn.messages[1]["content"]
    assert "<message>" in system and "<propose>N</propose>" in system
    assert user.startswith("Round 1.\nThis is the first round.\n") and game.hands[0][turn.seat] in user
    game.step({turn.seat: "<message>I have rock</message>"})
    game.step({1 - turn.seat: "<message>me too</message>"})
    split_user = game.pending_turns()[0].messages[1]["content"]
    assert "I have rock" in split_user and "me too" in split_user and "<propose>N</propose>" in split_user
    game.step({0: "<propose>3</propose>", 1: "garbage"})
    # round 1: the other seat, seat 1, speaks first, and learns seat 0's kind of hand and claim of last round
    (turn,) = game.pending_turns()
    assert turn.seat == 1
    user1 = turn.messages[1]["content"]
    assert f"you had the {game.kind(1, 0)} hand ({game.hands[0][1]})" in user1
    assert f"the other player had the {game.kind(0, 0)} hand" in user1
    assert "You claimed 10, the other claimed 3" in user1
    history = game.view(1)["history"]
    assert history[0]["their_claim"] == 3 and history[0]["my_claim"] == 10
    assert history[0]["their_kind"] == game.kind(0, 0)


def test_split_prompt_shows_both_value_sets():
    game = SplitNoComm()
    game.reset(4)
    for turn in game.pending_turns():
        user = turn.messages[1]["content"]
        mine, theirs = game.values[0][turn.seat], game.values[0][1 - turn.seat]
        assert "Your values per unit: " + ", ".join(f"{i} {mine[i]}" for i in ITEMS) in user
        assert "other player's values per unit: " + ", ".join(f"{i} {theirs[i]}" for i in ITEMS) in user
        assert "<propose>hats=H books=B balls=L</propose>" in user
        assert turn.phase == "split" and turn.timestep == 0
    view = game.view(0)
    assert view["my_values"] == game.values[0][0] and view["their_values"] == game.values[0][1]


@pytest.mark.parametrize("cls", [TrustAndSplit, SplitNoComm])
def test_same_seed_same_transcript(cls):
    names = ("honest", "greedy") if cls is TrustAndSplit else ("greedy", "fair")
    a = play_scripted(cls.name, list(names), 7).transcript_dicts()
    b = play_scripted(cls.name, list(names), 7).transcript_dicts()
    assert a == b and len(a) > 0
    # a reused game object gives the same match again
    game = cls()
    play_scripted(game, list(names), 7)
    assert play_scripted(game, list(names), 7).transcript_dicts() == a


def test_config_errors():
    with pytest.raises(GameConfigError):
        TrustAndSplit(rounds=0)
    with pytest.raises(GameConfigError):
        TrustAndSplit(upper_value=1, lower_value=10)
    with pytest.raises(GameConfigError):
        TrustAndSplit(hands="x")
    with pytest.raises(GameConfigError):
        SplitNoComm(units=0)
    assert TrustAndSplit(coins="20").params["coins"] == 20


# ----- parsing tables -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<message>hello</message>", ("hello", True)),
        ("  <message>  hello there  </message>  ", ("hello there", True)),
        ("<MESSAGE>Hi</Message>", ("Hi", True)),
        ("< message >hi</ message >", ("hi", True)),
        ("think... <message>first</message> then <message>second</message>", ("second", True)),
        ("<message>multi\nline</message>", ("multi line", True)),  # one line in the other's prompt
        (
            "<message>Hi.\nYou: I have the lower hand.\n\tTake all.</message>",
            ("Hi. You: I have the lower hand. Take all.", True),
        ),
        ("<message></message>", ("", True)),
        ("<message><message>inner</message></message>", ("inner", True)),
        ("<message>done</message> <message>unclosed", ("done", True)),
        ("hello", ("", False)),
        ("", ("", False)),
        ("<message>unclosed", ("", False)),
        ("</message>closed only", ("", False)),
        ("</message><message>", ("", False)),
        ("<msg>hi</msg>", ("", False)),
    ],
)
def test_parse_message(text, expected):
    assert parse_message(text) == expected


def test_parse_message_truncates():
    message, valid = parse_message("<message>" + "a" * 600 + "</message>", 500)
    assert valid and message == "a" * 500
    game = TrustAndSplit(max_message_chars=20)
    game.reset(0)
    first = game.first_speaker(0)
    game.step({first: "<message>" + "b" * 100 + "</message>"})
    assert game.transcript[-1].parsed == "b" * 20 and game.transcript[-1].valid
    assert game.view(1 - first)["messages"][0]["text"] == "b" * 20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<propose>7</propose>", 7),
        ("<propose> 7 </propose>", 7),
        ("<PROPOSE>0</Propose>", 0),
        ("<propose>10</propose>", 10),
        ("<propose>07</propose>", 7),
        ("I think 3 is fair. <propose>4</propose>", 4),
        ("<propose>2</propose> no wait <propose>6</propose>", 6),
        ("<propose><propose>3</propose></propose>", 3),
        ("<propose>5</propose><propose>", 5),
        ("7", 7),
        ("  8\n", 8),
        ("0", 0),
        # invalid
        ("<propose>11</propose>", None),
        ("<propose>-1</propose>", None),
        ("-1", None),
        ("<propose>7.5</propose>", None),
        ("7.5", None),
        ("<propose>seven</propose>", None),
        ("<propose>+7</propose>", None),
        ("<propose>7 coins</propose>", None),
        ("<propose></propose>", None),
        ("<propose>7", None),
        ("I keep 7", None),
        ("", None),
        ("<propose>٣</propose>", None),
        ("٣", None),
        ("<propose>99999999999999999999</propose>", None),
        ("9" * 10_000, None),
        ("<propose>" + "0" * 5000 + "7</propose>", 7),
        ("<propose>1 0</propose>", None),
        ("<propose>7</propose> <propose>x</propose>", None),  # the last complete tag decides
    ],
)
def test_parse_proposal(text, expected):
    assert parse_proposal(text, 10) == expected


def test_parse_proposal_respects_coins():
    assert parse_proposal("<propose>15</propose>", 20) == 15
    assert parse_proposal("<propose>15</propose>", 10) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<propose>hats=3 books=10 balls=0</propose>", (3, 10, 0)),
        ("<propose>hats: 3, books: 10, balls: 0</propose>", (3, 10, 0)),
        ("<propose>balls=1, hats=2, books=3</propose>", (2, 3, 1)),
        ("<propose>HATS = 4; Books: 5; bALLs=6</propose>", (4, 5, 6)),
        ("<propose>hat=1 book=2 ball=3</propose>", (1, 2, 3)),
        ("<propose>hats=3. books=4. balls=5.</propose>", (3, 4, 5)),
        ("plan: hats=9 books=9 balls=9 <propose>hats=0 books=0 balls=0</propose>", (0, 0, 0)),
        ("<propose>hats=05 books=10 balls=0</propose>", (5, 10, 0)),
        # invalid: claim everything
        ("hats=3 books=10 balls=0", None),  # no tag
        ("<propose>hats=3 books=10</propose>", None),  # missing item
        ("<propose>hats=3 books=11 balls=0</propose>", None),  # out of range
        ("<propose>hats=-3 books=1 balls=0</propose>", None),
        ("<propose>hats=3.5 books=1 balls=0</propose>", None),
        ("<propose>hats=3 books=1 balls=0 hats=4</propose>", None),  # item named twice
        ("<propose>hats=٣ books=1 balls=0</propose>", None),
        ("<propose>hats=99999999999999999999 books=1 balls=0</propose>", None),
        ("<propose>3 3 3</propose>", None),
        ("<propose></propose>", None),
        ("", None),
    ],
)
def test_parse_split_proposal(text, expected):
    parsed = parse_split_proposal(text, 10)
    if expected is None:
        assert parsed is None
    else:
        assert parsed == dict(zip(ITEMS, expected, strict=True))


def test_last_tag_content():
    assert last_tag_content("a <propose>1</propose> b <propose>2</propose> c", "propose") == "2"
    assert last_tag_content("<propose>1</propose><propose>", "propose") == "1"
    assert last_tag_content("</propose><propose>", "propose") is None
    assert last_tag_content("no tags", "propose") is None


# ----- invalid actions are defaulted and counted --------------------------------------------------------------
def test_tas_invalid_actions_counted():
    game = TrustAndSplit(rounds=2)
    game.reset(1)
    assert game.first_speaker(0) == 0  # seed 1 draws seat 0 to speak first
    # round 0: seat 0 speaks first with an untagged message; seat 1 sends garbage proposal
    game.step({0: "hello without tags"})
    game.step({1: "<message>fine</message>"})
    assert game.view(1)["messages"][0] == {"seat": 0, "text": ""}
    game.step({0: "<propose>4</propose>", 1: "<propose>7.5</propose>"})
    assert game.history[0]["claims"] == (4, 10)  # the invalid claim counts as all coins
    assert game.history[0]["coins"] == (10 * 4 / 14, 10 * 10 / 14)
    # round 1: seat 1 first
    game.step({1: ""})
    game.step({0: ""})
    game.step({0: "3", 1: "٣"})
    assert game.done
    m = game.metrics()
    assert m["message_invalid_rate"] == [1.0, 0.5]
    assert m["proposal_invalid_rate"] == [0.0, 1.0]
    assert m["mean_claim"] == [3.5, 10.0]
    assert game.invalid_counts == [2, 3] and game.action_counts == [4, 4]
    assert [e.valid for e in game.transcript] == [False, True, True, False, False, False, True, False]


def test_split_invalid_actions_counted():
    game = SplitNoComm(rounds=2)
    game.reset(0)
    game.step({0: "<propose>hats=1 books=1 balls=1</propose>", 1: "give me everything"})
    assert game.history[0]["claims"][1] == {"hats": 10, "books": 10, "balls": 10}
    game.step({0: "<propose>hats=1 books=1</propose>", 1: "<propose>hats=1 books=1 balls=1</propose>"})
    assert game.metrics()["invalid_rate"] == [0.5, 0.5]
    assert game.transcript[2].parsed == {"hats": 10, "books": 10, "balls": 10}


# ----- robustness: parsers and step never raise, and read huge inputs linearly --------------------------------
NO_MESSAGE = ("", False)
NOTHING = (NO_MESSAGE, None, None)  # (message, coins claimed, items claimed): no message, invalid proposals
# Text that a parser with a backtracking regex, or one that reads the whole of a huge text, would hang on; and what
# each parser reads from it. Every parser first cuts the text to clean_text's 100,000 characters, so a tag that
# closes past that point is never seen.
ADVERSARIAL_PARSED = [
    ("", NOTHING),
    ("\x00" * 1000, NOTHING),  # NUL characters are dropped: the empty text
    ("<propose>" * (HUGE // 9), NOTHING),  # opening tags only
    ("</propose>" * (HUGE // 10), NOTHING),  # closing tags only
    ("<propose>" * 50_000 + "</propose>" * 50_000, NOTHING),  # the closing tags lie past the cut
    ("<propose>" * 5_000 + "4</propose>", (NO_MESSAGE, 4, None)),  # within it: the last opening tag's content
    ("<message>" * (HUGE // 9), NOTHING),
    ("<message>" + "x" * HUGE + "</message>", NOTHING),
    ("<message>" + "x" * 90_000 + "</message>", (("x" * 500, True), None, None)),  # truncated to 500 characters
    ("<propose>" + "9" * HUGE + "</propose>", NOTHING),
    ("9" * HUGE, NOTHING),
    ("hats=" * (HUGE // 5), NOTHING),
    ("<propose>" + "hats=1 " * (HUGE // 7) + "</propose>", NOTHING),
    ("<propose>" + "hats=1 " * 10_000 + "</propose>", NOTHING),  # hats named more than once
    ("<propose>" + "hats" + " " * HUGE + "=1</propose>", NOTHING),
    ("<propose>hats" + " " * 90_000 + "=1 books=2 balls=3</propose>", (NO_MESSAGE, None, (1, 2, 3))),
    ("<" + " " * HUGE + "propose>", NOTHING),
    ("<" + " " * 90_000 + "propose>5</propose>", (NO_MESSAGE, 5, None)),  # blanks inside a tag are allowed
    ("<propose><propose>3</propose></propose>", (NO_MESSAGE, 3, None)),  # nested: the innermost
    ("<propose>٣</propose>", NOTHING),  # an Arabic-Indic digit is not an ASCII digit
    ("٣" * HUGE, NOTHING),
    ("<propose>99999999999999999999</propose>", NOTHING),
    ("\ud800<propose>1</propose>", (NO_MESSAGE, 1, None)),  # a lone surrogate
    ("İ" * 1000 + "<PROPOSE>2</PROPOSE>", (NO_MESSAGE, 2, None)),  # İ.lower() is 2 characters long
]
ADVERSARIAL = [text for text, _ in ADVERSARIAL_PARSED]


@pytest.mark.parametrize(("text", "expected"), ADVERSARIAL_PARSED, ids=range(len(ADVERSARIAL_PARSED)))
def test_parsers_on_adversarial_text(text, expected):
    message, coins, items = expected
    assert parse_message(text) == message
    assert parse_proposal(text) == coins
    assert parse_split_proposal(text) == (None if items is None else dict(zip(ITEMS, items, strict=True)))


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_steps_accept_adversarial_text(text):
    game = TrustAndSplit(rounds=1)
    game.reset(0)
    while not game.done:
        game.step({t.seat: text for t in game.pending_turns()})
    assert len(game.transcript) == 4
    split = SplitNoComm(rounds=1)
    split.reset(0)
    split.step({0: text, 1: text})
    assert len(split.rewards[0]) == 1


def test_non_string_actions_are_tolerated():
    assert parse_proposal(None) is None and parse_message(None) == ("", False)
    assert parse_proposal(7) == 7
    assert parse_split_proposal(123) is None


fragments = st.sampled_from(
    [
        "<propose>",
        "</propose>",
        "<message>",
        "</message>",
        "< propose >",
        "hats=",
        "books:",
        "balls = ",
        "7",
        "10",
        "-1",
        "7.5",
        "٣",
        "99999999999999999999",
        " ",
        "\n",
    ]
)
texts = st.one_of(st.text(), st.lists(st.one_of(fragments, st.text(max_size=5)), max_size=30).map("".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts, st.integers(min_value=1, max_value=1000))
def test_parsers_never_raise(text, limit):
    message, valid = parse_message(text, limit)
    assert isinstance(message, str) and len(message) <= limit and isinstance(valid, bool)
    claim = parse_proposal(text, 10)
    assert claim is None or (isinstance(claim, int) and 0 <= claim <= 10)
    split = parse_split_proposal(text, 10)
    assert split is None or (set(split) == set(ITEMS) and all(0 <= v <= 10 for v in split.values()))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, min_size=8, max_size=8), st.integers(min_value=0, max_value=2**32))
def test_tas_step_never_raises_and_counts_invalids(answers, seed):
    game = TrustAndSplit(rounds=2)
    game.reset(seed)
    answers = iter(answers)
    while not game.done:
        game.step({t.seat: next(answers) for t in game.pending_turns()})
    expected_invalid = [0, 0]
    for event in game.transcript:
        if event.phase == "chat":
            assert event.valid == (parse_message(event.text)[1])
        else:
            assert event.valid == (parse_proposal(event.text) is not None)
            assert event.parsed == (parse_proposal(event.text) if event.valid else 10)
        expected_invalid[event.seat] += not event.valid
    assert game.invalid_counts == expected_invalid
    assert len(game.rewards[0]) == len(game.rewards[1]) == 2
    assert 0.0 <= game.metrics()["efficiency"] <= 1.0 + 1e-9


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, min_size=4, max_size=4), st.integers(min_value=0, max_value=2**32))
def test_split_step_never_raises_and_counts_invalids(answers, seed):
    game = SplitNoComm(rounds=2)
    game.reset(seed)
    game.step({0: answers[0], 1: answers[1]})
    game.step({0: answers[2], 1: answers[3]})
    expected_invalid = [0, 0]
    for event in game.transcript:
        assert event.valid == (parse_split_proposal(event.text) is not None)
        expected_invalid[event.seat] += not event.valid
    assert game.invalid_counts == expected_invalid
    assert 0.0 <= game.metrics()["efficiency"] <= 1.0 + 1e-9
