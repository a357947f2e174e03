"""coop_rl/eval/results.py: the row order of reports, the exploiters' ranking, the cooperation label."""

from coop_rl.eval.results import cooperation_label, ranked_candidates, row_label, rows_with_self_play


def candidate(name, exploiter, policy):
    return {"exploiter": name, "exploiter_mean_return": exploiter, "policy_mean_return": policy}


def test_rows_with_self_play_last():
    results = {
        "opponents": [{"opponent": "tft"}, {"opponent": "alld"}],
        "self_play": {"opponent": "p", "self_play": True},
    }
    rows = rows_with_self_play(results)
    assert [row_label(row) for row in rows] == ["tft", "alld", "self-play"]


def test_ranked_candidates_best_first_then_the_lowest_policy_return_then_search_order():
    candidates = [
        candidate("a", 30.0, 30.0),
        candidate("b", 50.0, 0.0),
        candidate("c", 50.0, 5.0),
        candidate("d", 50.0, 0.0),
        candidate("e", 10.0, 10.0),
    ]
    assert [c["exploiter"] for c in ranked_candidates({"candidates": candidates})] == ["b", "d", "c", "a", "e"]


def test_cooperation_label_reads_the_game_trait():
    assert cooperation_label("ipd") == "cooperation rate"
    assert cooperation_label("spgg") == "mean contribution level"
    assert cooperation_label("not-registered-here") == "cooperation rate"
