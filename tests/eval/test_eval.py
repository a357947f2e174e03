"""Evaluation against frozen opponents: exact scripted values, reports and plots, exploitability, user errors.

Expected values follow from the ipd rules (R=3, S=0, T=5, P=1, 10 rounds), tft in seat 0:
  allc, tft, tf2t, grim, wsls: mutual cooperation every round -> 30 / 30
  alld:       CD then DD x9 -> tft 0 + 9 = 9, alld 5 + 9 = 14
  stft:       CD, DC, CD, DC, ... -> 0+5+0+5+... = 25 each
  alternator: CC, then (C,D), (D,C), ... for rounds 2-10 -> tft 3 + 4*5 = 23, alternator 3 + 5*5 = 28
"""

import json
import math
import struct
import subprocess
import sys

import pytest

from coop_rl.cli import main
from coop_rl.envs import game_class
from coop_rl.eval.evaluate import bootstrap_ci, evaluate
from coop_rl.eval.exploit import (
    KNOWN_MEMORY_ONE,
    MemoryOneRule,
    MemoryOneStrategy,
    end_game_rules,
    exploit,
    memory_one_rules,
)
from coop_rl.eval.plots import DPI, figure_size, plot_returns
from coop_rl.eval.suites import SuiteError, resolve_opponents

# opponent: (tft's return, opponent's return, tft's cooperation rate, opponent's cooperation rate)
TFT_EXPECTED = {
    "allc": (30.0, 30.0, 1.0, 1.0),
    "alld": (9.0, 14.0, 0.1, 0.0),
    "tft": (30.0, 30.0, 1.0, 1.0),
    "tf2t": (30.0, 30.0, 1.0, 1.0),
    "grim": (30.0, 30.0, 1.0, 1.0),
    "wsls": (30.0, 30.0, 1.0, 1.0),
    "stft": (25.0, 25.0, 0.5, 0.5),
    "alternator": (23.0, 28.0, 0.6, 0.5),
}
MATCHES = 20


@pytest.fixture(scope="module")
def tft_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    results = evaluate("tft", "ipd", "ipd-classic", matches=MATCHES, seed=0, out_dir=str(out))
    return results, out


def rows_by_opponent(results):
    return {row["opponent"]: row for row in results["opponents"]}


def test_tft_against_the_classic_suite_gives_the_exact_scripted_values(tft_eval):
    results, _ = tft_eval
    rows = rows_by_opponent(results)
    assert list(rows) == ["allc", "alld", "tft", "tf2t", "grim", "wsls", "stft", "alternator", "random"]
    for name, (mine, theirs, my_coop, their_coop) in TFT_EXPECTED.items():
        row = rows[name]
        assert row["policy_seat"] == 0
        assert row["policy_mean_return"] == mine, name
        assert row["opponent_mean_return"] == theirs, name
        assert row["policy_ci95"] == [mine, mine], name  # deterministic pair: width 0
        assert row["policy_cooperation_rate"] == my_coop, name
        assert row["opponent_cooperation_rate"] == their_coop, name
        assert row["welfare"] == mine + theirs
        assert row["policy_invalid_rate"] == 0.0
        assert row["policy_returns"] == [mine] * MATCHES and len(row["per_match"]) == MATCHES
        # ipd is symmetric: the same pairing with the seats swapped gives the same numbers
        assert row["swapped"]["policy_seat"] == 1
        assert row["swapped"]["policy_mean_return"] == mine and row["swapped"]["opponent_mean_return"] == theirs
    assert results["self_play"]["policy_mean_return"] == 30.0 and results["self_play"]["policy_ci95"] == [30.0, 30.0]
    # random is random: the interval brackets the mean and has a width
    random_row = rows["random"]
    low, high = random_row["policy_ci95"]
    assert low < random_row["policy_mean_return"] < high
    summary = results["summary"]
    assert summary["mean_return"] == math.fsum(r["policy_mean_return"] for r in rows.values()) / 9
    assert summary["worst_opponent"] == {"opponent": "alld", "policy_mean_return": 9.0}
    assert summary["self_play_policy_return"] == 30.0


def test_results_json_and_report(tft_eval):
    results, out = tft_eval
    on_disk = json.loads((out / "results.json").read_text())
    for key in ("policy", "game", "matches", "seed", "opponents", "self_play", "summary", "plots"):
        assert key in on_disk
    assert on_disk["policy"] == "tft" and on_disk["game"] == "ipd" and on_disk["matches"] == MATCHES
    assert on_disk["plots"] == ["returns.png", "cooperation.png"]
    report = (out / "report.md").read_text()
    assert "| opponent | policy return [95% CI] | opponent return |" in report
    assert "| alld | 9.00 [9.00, 9.00] | 14.00 | 0.100 | 0.000 | 23.00 | 0.000 |" in report
    assert "| stft | 25.00 [25.00, 25.00] | 25.00 | 0.500 | 0.500 | 50.00 | 0.000 |" in report
    assert "## Summary" in report and "least against `alld` (9.00)" in report
    for name in on_disk["plots"]:
        assert f"]({name})" in report


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_real_images_of_the_reported_numbers(tft_eval, tmp_path):
    import matplotlib.image
    import numpy as np

    results, out = tft_eval
    groups = len(results["opponents"]) + 1  # the opponents and self-play
    width, height = (round(inches * DPI) for inches in figure_size(groups))
    assert results["plots"] == ["returns.png", "cooperation.png"]
    for name in results["plots"]:
        assert png_size(out / name) == (width, height)
        pixels = matplotlib.image.imread(out / name)
        assert pixels.shape[:2] == (height, width)
        assert float(np.var(pixels[..., :3])) > 0.0  # not a blank canvas
    # The bars are the reported numbers: the policy's bars, then the opponent's, self-play last.
    figure = plot_returns(results, tmp_path / "again.png")
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    rows = [*results["opponents"], results["self_play"]]
    assert heights == [r["policy_mean_return"] for r in rows] + [r["opponent_mean_return"] for r in rows]
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()][-1] == "self-play"


def test_exploit_allc_finds_always_defect(tmp_path):
    result = exploit("allc", "ipd", matches=3, out_dir=str(tmp_path))
    best = result["best"]
    assert best["exploiter"] == "alld" and best["exploiter_cooperation_rate"] == 0.0
    assert "first D; after CC:D, CD:D, DC:D, DD:D" in best["description"]
    assert result["exploiter_return"] == 50.0 and result["policy_return"] == 0.0
    assert result["self_play_return"] == 30.0
    assert result["gain"] == 20.0 and result["gain_per_round"] == 2.0  # 50 - 30 over 10 rounds
    # the classic suite (alld included), every memory-one rule, every end-game variant (all but DDDDD's)
    assert len(result["candidates"]) == 9 + 32 + 31
    saved = json.loads((tmp_path / "exploit.json").read_text())
    assert saved["gain"] == 20.0 and saved["plots"] == ["exploit.png"]
    report = (tmp_path / "report.md").read_text()
    assert "| gain | 20.00 |" in report and "| exploiter return | 50.00 |" in report
    assert png_size(tmp_path / "exploit.png") == tuple(round(x * DPI) for x in figure_size(10))


def test_exploit_tft_is_beaten_by_the_last_round_defection_only():
    # Against tft nothing that cannot count rounds beats mutual cooperation (30 over 10 rounds); an end-game variant
    # cooperates for 9 rounds and defects in round 10, which tft cannot answer: 9 x 3 + 5 = 32, tft 9 x 3 = 27.
    result = exploit("tft", "ipd", matches=2)
    assert result["exploiter_return"] == 32.0 and result["policy_return"] == 27.0
    assert result["self_play_return"] == 30.0
    assert result["gain"] == 2.0 and result["gain_per_round"] == 0.2
    best = result["best"]
    assert best["kind"] == "end-game" and best["exploiter"] == "m1:CCCCC+endD"  # the first of the ties
    assert best["exploiter_cooperation_rate"] == 0.9
    assert best["description"].endswith("; in the last round (round 10): D (allc's end-game variant)")
    # without the end-game variants no candidate beats cooperation
    others = [c["exploiter_mean_return"] for c in result["candidates"] if c["kind"] != "end-game"]
    assert max(others) == 30.0


def play_moves(rule, opponent_move, **params):
    """The moves the rule plays in seat 1 of one ipd match (``params``: the game's) against a seat 0 that always
    answers ``opponent_move``."""
    game = game_class("ipd")(**params)
    game.reset(0)
    strategy = MemoryOneStrategy(rule)
    while not game.done:
        (turn,) = [t for t in game.pending_turns() if t.seat == 1]
        game.step({0: opponent_move, 1: strategy.act(game, turn)})
    return "".join(game.labels[move] for move in game.moves[1])


def test_end_game_variants_defect_in_the_round_cap():
    tft_end = MemoryOneRule.from_code("CCDCD").end_game()
    assert tft_end.name == "m1:CCDCD+endD" and tft_end.kind == "end-game"
    assert MemoryOneRule.from_code("ccdcd+endd") == tft_end and MemoryOneRule.from_code(tft_end.code) == tft_end
    assert play_moves(tft_end, "C") == "C" * 9 + "D"  # rounds 1..9: C, round 10 (the cap): D
    assert play_moves(tft_end, "C", rounds=5) == "CCCCD"
    assert play_moves(MemoryOneRule.from_code("CCDCD"), "C") == "C" * 10  # the base rule: tft
    assert play_moves(tft_end, "D", rounds=5) == "CDDDD"
    assert tft_end.describe(rounds=10) == (
        "first C; after CC:C, CD:D, DC:C, DD:D; in the last round (round 10): D (tft's end-game variant)"
    )
    rules = end_game_rules()
    names = [rule.name for rule in rules]
    assert len(rules) == 31 and len(set(names)) == 31 and "m1:DDDDD+endD" not in names  # alld: no variant
    assert names == sorted(names) and names[0] == "m1:CCCCC+endD"
    assert [rule.memory_code for rule in rules] == [rule.code for rule in memory_one_rules()][:-1]
    for bad in ("CCDCD+end", "CCDCD+endX", "CCDC+endD"):
        with pytest.raises(ValueError):
            MemoryOneRule.from_code(bad)


def test_exploit_tft_with_five_rounds_defects_in_round_5():
    result = exploit("tft", "ipd", matches=2, game_params={"rounds": 5})
    assert result["exploiter_return"] == 4 * 3 + 5 and result["policy_return"] == 4 * 3
    assert result["gain"] == 2.0 and result["best"]["kind"] == "end-game"
    assert result["best"]["description"].endswith("in the last round (round 5): D (allc's end-game variant)")


def test_cli_exploit_tft_reports_the_end_game_gain(capsys):
    assert main(["exploit", "--policy", "tft", "--game", "ipd", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["gain"] == 2.0 and result["exploiter_return"] == 32.0 and result["self_play_return"] == 30.0
    assert result["best"]["exploiter"].endswith("+endD") and len(result["candidates"]) == 72


def test_memory_one_rules_match_the_classic_strategies():
    rules = memory_one_rules()
    assert len(rules) == 32 and len({rule.code for rule in rules}) == 32
    assert MemoryOneRule.from_code("CCDCD").describe() == "first C; after CC:C, CD:D, DC:C, DD:D (= tft)"
    # Against a policy that varies its moves, each memory-one twin scores exactly like the named strategy.
    result = exploit("alternator", "ipd", matches=2)
    by_name = {c["exploiter"]: c for c in result["candidates"]}
    for code, name in KNOWN_MEMORY_ONE.items():
        twin = by_name[f"m1:{code}"]
        assert twin["exploiter_mean_return"] == by_name[name]["exploiter_mean_return"], name
        assert twin["policy_mean_return"] == by_name[name]["policy_mean_return"], name


def test_cli_eval_and_exploit_write_one_report(capsys, tmp_path):
    out = tmp_path / "run"
    code = main(
        ["eval", "--policy", "tft", "--game", "ipd", "--opponents", "alld,allc", "--matches", "3"]
        + ["--out", str(out), "--json"]
    )
    printed = capsys.readouterr().out
    assert code == 0
    results = json.loads(printed)
    assert [row["policy_mean_return"] for row in results["opponents"]] == [9.0, 30.0]
    assert main(["exploit", "--policy", "tft", "--game", "ipd", "--matches", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "gain 2.00" in table and "m1:CCCCC+endD" in table
    report = (out / "report.md").read_text()
    assert "# Evaluation of `tft` on ipd" in report and "## Exploitability of `tft` on ipd" in report
    assert {p.name for p in out.iterdir()} >= {"results.json", "report.md", "returns.png", "exploit.json"}
    main(["eval", "--policy", "tft", "--game", "ipd", "--opponents", "alld", "--matches", "2", "--out", str(out)])
    assert "## Exploitability of `tft` on ipd" in (out / "report.md").read_text()  # the same policy's: kept


def test_a_report_never_mixes_two_policies(capsys, tmp_path):
    out = tmp_path / "run"
    assert (
        main(["eval", "--policy", "tft", "--game", "ipd", "--opponents", "alld", "--matches", "2", "--out", str(out)])
        == 0
    )
    assert main(["exploit", "--policy", "allc", "--game", "ipd", "--matches", "2", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()  # allc's exploitability is not put under tft's evaluation
    assert "## Exploitability of `allc` on ipd" in report and "Evaluation of `tft`" not in report
    assert (
        main(["eval", "--policy", "alld", "--game", "ipd", "--opponents", "allc", "--matches", "2", "--out", str(out)])
        == 0
    )
    report = (out / "report.md").read_text()  # nor under alld's
    assert "# Evaluation of `alld` on ipd" in report and "Exploitability" not in report
    capsys.readouterr()


def test_a_report_never_mixes_two_settings_of_one_game(capsys, tmp_path):
    """The same policy and game with other parameters is another task: a 10-round noisy search is not reported
    beside a 20-round evaluation (nor the other way round)."""
    out = tmp_path / "run"
    evaluation = ["eval", "--policy", "tft", "--game", "ipd", "--opponents", "alld", "--matches", "2"]
    assert main([*evaluation, "--rounds", "20", "--out", str(out)]) == 0
    search = ["exploit", "--policy", "tft", "--game", "ipd", "--matches", "2", "--set", "noise=0.2"]
    assert main([*search, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## Exploitability of `tft` on ipd" in report and "Evaluation of `tft`" not in report
    assert main([*evaluation, "--rounds", "20", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "# Evaluation of `tft` on ipd" in report and "Exploitability" not in report
    capsys.readouterr()


def test_unreadable_or_malformed_earlier_reports_are_written_anew(capsys, tmp_path):
    """What an output folder already holds is read, not trusted: a report.md that is not text, or a results.json
    about the same task whose learned-exploiter entry the report cannot show, once crashed eval and exploit after
    every match was played (a traceback, exit 1)."""
    out = tmp_path / "run"
    evaluation = ["eval", "--policy", "tft", "--game", "ipd", "--opponents", "alld", "--matches", "2"]
    evaluation += ["--out", str(out)]
    assert main([*evaluation, "--json"]) == 0
    capsys.readouterr()
    search = ["exploit", "--policy", "tft", "--game", "ipd", "--matches", "2", "--out", str(out)]
    for command, heading in ((evaluation, "# Evaluation of `tft`"), (search, "## Exploitability of `tft`")):
        (out / "report.md").write_bytes(b"\xe8\xff\x00 not text")
        assert main([*command, "--json"]) == 0
        json.loads(capsys.readouterr().out)  # one JSON object
        assert heading in (out / "report.md").read_text(encoding="utf-8")
    results = json.loads((out / "results.json").read_text())
    for entry in (5, "x", [], None, {}, {"plots": []}):
        (out / "results.json").write_text(json.dumps({**results, "learned_exploiter": entry}))
        assert main(evaluation) == 0
        assert "learned_exploiter" not in json.loads((out / "results.json").read_text()), entry  # dropped
        assert "Non-exploitability" not in (out / "report.md").read_text()
    capsys.readouterr()


def test_suites_expand_and_deduplicate():
    assert resolve_opponents("tft,ipd-classic", "ipd")[:3] == ["tft", "allc", "alld"]
    assert len(resolve_opponents("ipd-classic,alld", "bos")) == 9
    assert resolve_opponents("tas-classic", "tas") == ["greedy", "honest", "fair"]
    assert resolve_opponents(["spgg-classic"], "spgg") == ["free_rider", "full", "conditional"]
    for bad in ("", " , ", "tft,,alld", "tas-classic", "nope-classic"):
        with pytest.raises(SuiteError):
            resolve_opponents(bad, "ipd")


def test_bootstrap_is_seeded_and_exact_for_constants():
    assert bootstrap_ci([0.1] * 7) == [0.1, 0.1]
    values = [1.0, 2.0, 3.0, 10.0]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    low, high = bootstrap_ci(values, seed=3)
    assert 1.0 <= low < 4.0 < high <= 10.0
    # a negative seed (--seed -1: seed * 7919 + index) is numpy's seed modulo 2**64; other seeds are unchanged
    assert bootstrap_ci(values, seed=-7919) == bootstrap_ci(values, seed=2**64 - 7919)


def test_a_negative_seed_evaluates_and_exploits(capsys, tmp_path):
    # --seed -1 used to play every match, then fail in the bootstrap with a traceback and write nothing
    assert main(["eval", "--policy", "tft", "--game", "ipd", "--opponents", "random", "--matches", "4",
                 "--seed", "-1", "--out", str(tmp_path / "e")]) == 0  # fmt: skip
    assert main(["exploit", "--policy", "random", "--game", "ipd", "--matches", "3", "--seed", "-1"]) == 0
    assert (tmp_path / "e" / "results.json").exists()
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["eval", "--policy", "tft", "--game", "ipd", "--opponents", "tft,nobody"], "bad opponent 'nobody'"),
        (["eval", "--policy", "hf:/no/such/dir", "--game", "ipd", "--opponents", "ipd-classic"], "not found"),
        (["eval", "--policy", "tft", "--game", "ipd", "--opponents", ""], "empty opponent list"),
        (["eval", "--policy", "tft", "--game", "ipd", "--opponents", "tas-classic"], "is for tas"),
        (["exploit", "--policy", "hf:/no/such/dir", "--game", "ipd"], "not found"),
        (["exploit", "--policy", "greedy", "--game", "tas"], "matrix games"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, needle, tmp_path):
    if argv[0] == "eval":
        argv = [*argv, "--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-m", "coop_rl", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written before the error


def test_an_out_dir_under_a_file_is_refused_before_any_match(capsys, tmp_path):
    """eval and exploit check --out first (atomic_files.check_out_dir): one line, exit 2, nothing played or written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for argv in (
        ["eval", "--policy", "tft", "--game", "ipd", "--opponents", "alld"],
        ["exploit", "--policy", "tft", "--game", "ipd"],
    ):
        assert main([*argv, "--out", str(blocker / "out")]) == 2
        out, err = capsys.readouterr()
        target = blocker / "out"
        assert (out, err) == ("", f"coop-rl: error: cannot use --out '{target}': {blocker} is not a directory\n")


def test_an_output_file_that_is_a_folder_is_refused_before_any_match(capsys, tmp_path):
    for name, argv in (
        ("report.md", ["eval", "--policy", "tft", "--game", "ipd", "--opponents", "alld"]),
        ("exploit.png", ["exploit", "--policy", "tft", "--game", "ipd"]),
    ):
        out = tmp_path / name.replace(".", "-")
        (out / name).mkdir(parents=True)
        assert main([*argv, "--out", str(out)]) == 2
        assert capsys.readouterr() == ("", f"coop-rl: error: cannot use --out '{out}': {out / name} is a directory\n")
        assert sorted(p.name for p in out.iterdir()) == [name]  # nothing played or written


def test_the_user_errors_of_eval():
    from coop_rl.errors import UsageError
    from coop_rl.eval.exploit import ExploitError

    # one UsageError base (exit 2 in the CLI); still ValueErrors for library callers that catch those
    for error in (SuiteError, ExploitError):
        assert issubclass(error, UsageError) and issubclass(error, ValueError)
    with pytest.raises(SuiteError, match="^suite 'tas-classic' is for tas, not 'ipd'"):
        resolve_opponents("tas-classic", "ipd")


def test_evaluation_reads_the_game_traits(monkeypatch, tmp_path):
    """Seat swapping, the cooperation numbers and their label come from the game class, not from its name."""
    from coop_rl.envs.matrix import PrisonersDilemma

    monkeypatch.setattr(PrisonersDilemma, "symmetric", False)
    monkeypatch.setattr(PrisonersDilemma, "cooperation_metric", None)
    monkeypatch.setattr(PrisonersDilemma, "cooperation_label", "trust")
    results = evaluate("tft", "ipd", "alld", matches=2, seed=0, out_dir=str(tmp_path))
    row = results["opponents"][0]
    assert results["symmetric"] is False and "swapped" not in row and "mean_return_swapped" not in results["summary"]
    assert row["policy_mean_return"] == 9.0
    assert row["policy_cooperation_rate"] is None and row["opponent_cooperation_rate"] is None
    assert results["plots"] == ["returns.png"]  # no cooperation numbers: no cooperation plot
    report = (tmp_path / "report.md").read_text()
    assert "| opponent | policy return [95% CI] | opponent return | policy trust | opponent trust |" in report
    assert "| alld | 9.00 [9.00, 9.00] | 14.00 | n/a | n/a | 23.00 | 0.000 |" in report
    assert "## Seats swapped" not in report


def test_an_evaluation_without_cooperation_numbers_leaves_no_earlier_cooperation_plot(tmp_path):
    evaluate("tft", "ipd", "alld", matches=2, seed=0, out_dir=str(tmp_path))
    assert (tmp_path / "cooperation.png").exists()
    results = evaluate("greedy", "tas", "fair", matches=2, seed=0, out_dir=str(tmp_path))  # into the same folder
    assert results["plots"] == ["returns.png"] and not (tmp_path / "cooperation.png").exists()


def test_spgg_cooperation_is_the_mean_contribution_level(tmp_path):
    results = evaluate("full", "spgg", "free_rider", matches=2, seed=0, out_dir=str(tmp_path))
    row = results["opponents"][0]
    assert results["symmetric"] is False and "swapped" not in row
    assert row["policy_cooperation_rate"] == 1.0 and row["opponent_cooperation_rate"] == 0.0
    assert results["plots"] == ["returns.png", "cooperation.png"]
    report = (tmp_path / "report.md").read_text()
    assert "| policy mean contribution level | opponent mean contribution level |" in report
    assert "![Mean contribution level per opponent](cooperation.png)" in report


def test_progress_bars_count_opponents_and_candidates_on_stderr_and_change_no_result(capsys):
    quiet = evaluate("tft", "ipd", "alld,allc", matches=2)
    shown = evaluate("tft", "ipd", "alld,allc", matches=2, progress=True)
    err = capsys.readouterr().err
    assert shown == quiet and "eval tft:" in err and "/3 [" in err and "opponent" in err  # 2 opponents, self-play
    assert exploit("tft", "ipd", matches=2, progress=True) == exploit("tft", "ipd", matches=2)
    err = capsys.readouterr().err
    assert "exploit tft:" in err and "/72 [" in err and "candidate" in err


def test_cooperation_is_pooled_over_rounds_when_matches_differ_in_length(tmp_path):
    """Under continuation < 1 the matches differ in length: tft cooperates in the first round of each match against
    alld, so its cooperation rate is matches / rounds played (not the mean of each match's 1 / length)."""
    results = evaluate("tft", "ipd", "alld", matches=20, seed=0, game_params={"continuation": 0.5}, swap=False)
    row = results["opponents"][0]
    lengths = [match["metrics"]["rounds"] for match in row["per_match"]]
    assert len(set(lengths)) > 1  # the case this is about
    assert row["policy_cooperation_rate"] == 20 / sum(lengths)
    assert row["opponent_cooperation_rate"] == 0.0
    # play and the tournament read the same matches the same way
    from coop_rl.eval.tournament import round_robin
    from coop_rl.runner import play

    played = play("ipd", {"continuation": 0.5}, ["tft", "alld"], matches=20, seed=0)
    assert [p["cooperation_rate"] for p in played["players"]] == [20 / sum(lengths), 0.0]
    cells = round_robin("ipd", ["tft", "alld"], matches=20, seed=0, game_params={"continuation": 0.5}).cooperation
    assert cells[0][1] == 20 / sum(lengths) and cells[1][0] == 0.0


@pytest.mark.slow
def test_a_model_policys_row_does_not_depend_on_the_opponents_before_it(tiny_model_dir):
    from coop_rl.players import SamplingConfig

    policy, sampling = f"hf:{tiny_model_dir}", SamplingConfig(temperature=1.5, max_new_tokens=8)

    def tft_row(opponents: str) -> dict:
        results = evaluate(policy, "ipd", opponents, matches=4, seed=3, sampling=sampling, swap=False)
        return next(row for row in results["opponents"] if row["opponent"] == "tft")

    alone, after_alld = tft_row("tft"), tft_row("alld,tft")
    assert alone["policy_returns"] == after_alld["policy_returns"]
    assert alone["policy_cooperation_rate"] == after_alld["policy_cooperation_rate"]


def test_a_results_file_from_before_the_self_play_key_was_renamed_still_renders(tmp_path):
    # exploit --learn re-renders the evaluation already in its --out folder, which may predate the rename
    from coop_rl.eval.report import write_eval

    results = evaluate("tft", "ipd", "alld", matches=2, seed=0)
    results["summary"]["self_play_return"] = results["summary"].pop("self_play_policy_return")
    write_eval(results, tmp_path)
    assert "in self-play it gets 30.00." in (tmp_path / "report.md").read_text()
