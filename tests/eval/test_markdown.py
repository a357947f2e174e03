"""coop_rl/eval/markdown.py: the one table helper (plain text and markdown) and the number format, exactly."""

import math

from coop_rl.eval import report
from coop_rl.eval.markdown import fmt, markdown_table, split_exploit_section, text_table


def test_fmt():
    assert fmt(2.0) == "2.00"
    assert fmt(1 / 3, 3) == "0.333"
    assert fmt(-0.125, 1) == "-0.1"
    assert fmt(7, 0) == "7"
    assert fmt(None) == "n/a" and fmt(None, 3) == "n/a"
    assert fmt(math.nan) == "n/a"  # a number the run does not have (e.g. no cooperation metric)
    assert fmt(math.inf) == "inf"


def test_text_table_left_aligns_columns_as_wide_as_their_widest_cell():
    table = text_table(["seat", "player", "mean_return"], [["0", "tft", "30.00"], ["1", "alternator", "3.5"]])
    assert table.split("\n") == [
        "seat  player      mean_return",
        "0     tft         30.00      ",
        "1     alternator  3.5        ",
    ]
    assert text_table(["a", "bb"], []) == "a  bb"  # no rows: the header alone
    assert text_table(["n"], [[1], [22]]) == "n \n1 \n22"  # cells are written with str


def test_markdown_table_escapes_pipes_in_cells():
    table = markdown_table(["opponent", "return"], [["axelrod:A|B", "1.00"], ["tft", 2]])
    assert table == "| opponent | return |\n|---|---|\n| axelrod:A\\|B | 1.00 |\n| tft | 2 |"
    assert markdown_table(["x"], []) == "| x |\n|---|"


def test_split_exploit_section():
    section = "<!-- exploit:start -->\n## Exploitability\n<!-- exploit:end -->"
    rest, found = split_exploit_section("# Evaluation\n\ntext\n\n" + section + "\n\n## After\n")
    assert found == section + "\n"
    assert rest == "# Evaluation\n\ntext\n## After\n"
    assert split_exploit_section("# Evaluation\n") == ("# Evaluation\n", "")


def test_report_keeps_its_old_names():
    """coop_rl.eval.report still serves what imports it: the writers, and the plots and text re-exported."""
    from coop_rl.eval import markdown, plots

    assert report.eval_table is markdown.eval_table and report.exploit_table is markdown.exploit_table
    assert report.plot_returns is plots.plot_returns and report.DPI == plots.DPI == 100
    assert report.LEARNING_CURVES_PNG == "learning_curves.png" and report.CROSSPLAY_PNG == "crossplay.png"


def test_the_summary_names_each_games_metric_once_and_counts_its_opponents():
    from coop_rl.eval.evaluate import evaluate
    from coop_rl.eval.markdown import eval_markdown

    spgg = eval_markdown(evaluate("conditional", "spgg", "free_rider", matches=2, seed=0))
    assert "Against the 1 opponent, `conditional` averages" in spgg
    assert "Its mean contribution level is " in spgg and "mean mean" not in spgg
    ipd = eval_markdown(evaluate("tft", "ipd", "alld,allc", matches=2, seed=0))
    assert "Against the 2 opponents, `tft`" in ipd and "Its mean cooperation rate is " in ipd


def test_one_match_gives_no_interval_to_show():
    from coop_rl.eval.evaluate import evaluate
    from coop_rl.eval.markdown import eval_markdown, eval_table

    one = evaluate("tft", "ipd", "alld", matches=1, seed=0)
    assert one["opponents"][0]["policy_ci95"] == [9.0, 9.0]  # the bootstrap's, kept in results.json
    assert "| alld | 9.00 [n/a] | 14.00 |" in eval_markdown(one)
    table = eval_table(one).splitlines()
    assert table[0] == "tft on ipd | 1 match | seed 0 | policy in seat 0"
    assert table[-1] == "mean return 9.00 over 1 opponent"
    assert table[2].split()[:3] == ["alld", "9.00", "[n/a]"]
    two = evaluate("tft", "ipd", "alld", matches=2, seed=0)
    assert "| alld | 9.00 [9.00, 9.00] | 14.00 |" in eval_markdown(two)
