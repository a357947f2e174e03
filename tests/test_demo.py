"""coop-rl demo: the report from synthetic evaluations (fast), the CLI's errors, and the whole pipeline on the tiny
model with two training iterations per method (slow)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from coop_rl.cli import main
from coop_rl.demo import (
    DEMOS,
    TRAINED_WITH_FILE,
    DemoError,
    is_trained,
    model_stage,
    run_demo,
    shipped_recipe,
    train_stage,
    training_request,
)
from coop_rl.demo_report import (
    complete_checkpoints,
    crossplay_matrices,
    ipd_bar_checks,
    learning_curve,
    log_history,
    summarize_method,
    training_precisions,
    write_report,
)


def _row(opponent, ret, coop, opp_ret=1.0, opp_coop=0.5, self_play=False):
    row = {
        "opponent": opponent,
        "policy_mean_return": ret,
        "opponent_mean_return": opp_ret,
        "policy_cooperation_rate": coop,
        "opponent_cooperation_rate": opp_coop,
        "policy_invalid_rate": 0.0,
    }
    if self_play:
        row["self_play"] = True
    return row


def _eval(self_coop, tft_coop, alld_coop, mean_return):
    return {
        "opponents": [_row("tft", 29.0, tft_coop), _row("alld", 9.0, alld_coop)],
        "self_play": _row("hf:x", 30.0, self_coop, self_play=True),
        "summary": {"mean_return": mean_return, "policy_invalid_rate": 0.01},
    }


def test_summarize_method_reads_cooperation_against_the_key_opponents():
    row = summarize_method(_eval(0.95, 0.97, 0.1, 19.0), ("tft", "alld"))
    assert row["metric"] == "cooperation rate"
    assert (row["self_play"], row["vs_tft"], row["vs_alld"], row["mean_return"]) == (0.95, 0.97, 0.1, 19.0)
    assert (row["vs_tft_return"], row["self_play_policy_return"]) == (29.0, 30.0)


def test_crossplay_matrix_diagonal_is_self_play_and_off_diagonal_reads_both_seats():
    evals = {"aa": _eval(0.9, 1, 0, 0), "naive": _eval(0.1, 0, 0, 0)}
    cross = {("aa", "naive"): _row("hf:naive", 12.0, 0.2, opp_ret=17.0, opp_coop=0.05)}
    matrices = crossplay_matrices(["aa", "naive"], evals, cross)
    returns = matrices["mean return of the row policy"]
    coop = matrices["cooperation rate of the row policy"]
    assert returns == [[30.0, 12.0], [17.0, 30.0]]
    assert coop == [[0.9, 0.2], [0.05, 0.1]]


def test_log_history_falls_back_to_the_last_checkpoint(tmp_path):
    for step, value in ((5, 0.2), (10, 0.6)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        history = [{"step": s, "rollout/cooperation_rate": 0.1 * s} for s in range(1, step + 1)]
        history[-1]["rollout/cooperation_rate"] = value
        (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    history = log_history(tmp_path)
    assert len(history) == 10  # checkpoint-10, not checkpoint-5 (numeric, not lexical, order)
    curve = learning_curve(history + [{"train_runtime": 1.0}], "rollout/cooperation_rate")
    assert curve[-1] == (10.0, 0.6) and len(curve) == 10


def test_a_checkpoint_whose_state_was_cut_short_is_not_complete(tmp_path):
    # transformers writes trainer_state.json last and in place: a run killed mid-write leaves it cut short, and
    # the run's history and a resume come from the checkpoint before
    for step, text in ((5, json.dumps({"log_history": [{"step": 5}]})), (10, '{"log_history": [{"st'), (15, "[]")):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(text)
    (tmp_path / "checkpoint-20").mkdir()  # killed before the state was written at all
    assert complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-5"]
    assert log_history(tmp_path) == [{"step": 5}]
    (tmp_path / "trainer_state.json").write_text("")  # the run's own, empty: the last complete checkpoint's
    assert log_history(tmp_path) == [{"step": 5}]


def test_training_precisions_name_the_gpu_a_training_ran_on(tmp_path):
    runs = {"aa": {"precision": {"dtype": "bfloat16"}, "device": "cuda:0 (NVIDIA H200)"}}
    runs["naive"] = {"precision": {"dtype": "float32"}, "device": "cpu"}
    runs["old"] = {"precision": {"dtype": "float32"}}  # written before runs recorded their device
    for method, info in runs.items():
        (tmp_path / method).mkdir()
        (tmp_path / method / "coop_rl_run.json").write_text(json.dumps(info))
    methods = ["aa", "naive", "old", "missing"]
    expected = "aa bfloat16 on cuda:0 (NVIDIA H200), naive float32, old float32, missing unrecorded"
    assert training_precisions(tmp_path, methods) == expected


def test_write_report_writes_the_table_plots_and_json(tmp_path):
    spec = DEMOS["ipd"]
    evals = {"aa": _eval(0.94, 0.98, 0.1, 19.5), "naive": _eval(0.0, 0.0, 0.0, 11.0)}
    rows = {m: summarize_method(e, spec.key_opponents) for m, e in evals.items()}
    cross = {("aa", "naive"): _row("hf:naive", 9.0, 0.1, opp_ret=14.0, opp_coop=0.0)}
    histories = {
        "aa": [{"step": s, "rollout/cooperation_rate": s / 10} for s in range(1, 10)],
        "naive": [{"step": s, "rollout/cooperation_rate": 1 / s} for s in range(1, 10)],
    }
    settings = {"model": "runs/tiny", "max_steps": None, "matches": 20, "seed": 0}
    report = write_report(spec, tmp_path, rows, evals, cross, histories, {"train aa": 1.0}, settings)
    text = report.read_text()
    assert "| aa | 0.94 | 0.98 | 0.10 | 19.50 |" in text
    assert "| naive | 0.00 | 0.00 | 0.00 | 11.00 |" in text
    assert "- yes: AA retaliates against alld" in text and "NO" not in text
    for name in ("learning_curves.png", "tournament.png", "crossplay.png"):
        assert (tmp_path / name).stat().st_size > 5000
        assert f"]({name})" in text
    data = json.loads((tmp_path / "demo.json").read_text())
    assert data["crossplay"]["mean return of the row policy"] == [[30.0, 9.0], [14.0, 30.0]]
    assert data["curves"]["aa"][-1] == [9.0, 0.9]


def test_write_report_says_when_an_outcome_is_missing(tmp_path):
    spec = DEMOS["ipd"]
    evals = {"aa": _eval(0.4, 0.5, 0.5, 15.0), "naive": _eval(0.0, 0.0, 0.0, 11.0)}
    rows = {m: summarize_method(e, spec.key_opponents) for m, e in evals.items()}
    cross = {("aa", "naive"): _row("hf:naive", 9.0, 0.1)}
    settings = {"model": "m", "max_steps": 2, "matches": 2, "seed": 0}
    text = write_report(spec, tmp_path, rows, evals, cross, {"aa": [], "naive": []}, {}, settings).read_text()
    assert "- NO: AA cooperates in self-play" in text and "- NO: AA retaliates against alld" in text
    assert "benchmarks/learning_seeds.py` measures the result over many seeds" in text


def test_the_model_stage_is_named_for_what_it_builds():
    assert model_stage(DEMOS["ipd"]) == "tiny model"
    assert model_stage(DEMOS["tas"]) == "tiny model"
    assert model_stage(DEMOS["ipd-smollm2"]) == "smollm2 warm start"
    assert model_stage(dataclasses.replace(DEMOS["ipd-smollm2"], tiny_games=())) == "smollm2 model"


def test_the_verdict_shows_each_measured_rate_unrounded(tmp_path):
    spec = DEMOS["ipd"]
    evals = {"aa": _eval(0.795, 0.9, 0.1, 25.0), "naive": _eval(0.0, 0.0, 0.0, 11.0)}
    rows = {m: summarize_method(e, spec.key_opponents) for m, e in evals.items()}
    cross = {("aa", "naive"): _row("hf:naive", 9.0, 0.1, opp_ret=14.0, opp_coop=0.0)}
    settings = {"model": "runs/tiny", "max_steps": None, "matches": 20, "seed": 0}
    text = write_report(spec, tmp_path, rows, evals, cross, {"aa": [], "naive": []}, {}, settings).read_text()
    assert "| aa | 0.80 |" in text  # the table's two decimals
    assert "- NO: AA cooperates in self-play (cooperation >= 0.8): 0.795\n" in text
    assert "- yes: naive defects in self-play (cooperation <= 0.3): 0\n" in text


def test_ipd_bar_checks_name_each_bound_and_fail_a_missing_rate():
    row = {"self_play": 0.8, "vs_tft": None, "vs_alld": 0.2}
    assert ipd_bar_checks("aa", row) == {
        "AA cooperates in self-play (cooperation >= 0.8)": True,
        "AA cooperates with tft (cooperation >= 0.8)": False,
        "AA retaliates against alld (cooperation <= 0.2)": True,
    }
    assert ipd_bar_checks("naive", {"self_play": 0.31}) == {"naive defects in self-play (cooperation <= 0.3)": False}
    assert ipd_bar_checks("sum", row) == {}


def test_the_demo_finds_its_recipes_from_any_folder(tmp_path, monkeypatch):
    recipe = DEMOS["ipd"].recipes["aa"]
    assert shipped_recipe(recipe) == recipe  # from the repository root: as given
    monkeypatch.chdir(tmp_path)
    found = Path(shipped_recipe(recipe))
    assert found.is_absolute() and found.read_text() == (Path(__file__).parents[1] / recipe).read_text()
    assert shipped_recipe("recipes/no-such.yaml") == "recipes/no-such.yaml"  # train reports it as not found


def test_demo_cli_rejects_an_unknown_game(capsys):
    assert main(["demo", "--game", "chess"]) == 2
    assert "no demo for game 'chess'" in capsys.readouterr().err


def test_demo_cli_rejects_bad_numbers(capsys):
    assert main(["demo", "--max-steps", "0"]) == 2
    assert "--max-steps must be >= 1" in capsys.readouterr().err


def test_demo_cli_rejects_bad_numbers_before_any_stage(tmp_path):
    for matches in (0, 1_000_001):
        with pytest.raises(DemoError, match=rf"^--matches must be between 1 and 1,000,000, got {matches}$"):
            run_demo(out=str(tmp_path / "demo"), matches=matches)
    assert not (tmp_path / "demo").exists()


def test_an_empty_out_is_refused_not_read_as_the_default_folder(capsys):
    assert main(["demo", "--out", " "]) == 2
    assert capsys.readouterr() == ("", "coop-rl: error: --out needs a folder path\n")


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]


def test_a_run_folder_is_reused_only_for_the_training_it_holds(tmp_path):
    model, run = tmp_path / "model", tmp_path / "run"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    request = training_request(DEMOS["ipd"].recipes["aa"], model, None)
    assert request["recipe_sha256"] == hashlib.sha256(Path(DEMOS["ipd"].recipes["aa"]).read_bytes()).hexdigest()
    run.mkdir()
    (run / "coop_rl_policy.json").write_text("{}")
    (run / "model.safetensors").write_bytes(b"trained")
    assert is_trained(run) and not is_trained(run, request)  # a policy, but no record of what it was trained for
    (run / TRAINED_WITH_FILE).write_text(json.dumps(request))
    assert is_trained(run, request)
    assert not is_trained(run, training_request(DEMOS["ipd"].recipes["aa"], model, 1))  # --max-steps 1
    assert not is_trained(run, training_request(DEMOS["ipd"].recipes["naive"], model, None))  # another recipe
    (model / "model.safetensors").write_bytes(b"rebuilt weights")
    assert not is_trained(run, training_request(DEMOS["ipd"].recipes["aa"], model, None))  # a rebuilt model


def test_a_folder_the_demo_did_not_make_is_not_removed_without_force(tmp_path):
    theirs = tmp_path / "aa"
    theirs.mkdir()
    (theirs / "coop_rl_policy.json").write_text("{}")
    (theirs / "model.safetensors").write_bytes(b"someone's training")
    with pytest.raises(DemoError, match=f"^{theirs} holds a training the demo did not record .*--force trains it"):
        train_stage(DEMOS["ipd"].recipes["aa"], tmp_path, theirs, 1, force=False)
    assert (theirs / "model.safetensors").read_bytes() == b"someone's training"


def test_a_refused_recipe_leaves_the_earlier_run_whole(tmp_path):
    # the recipe is checked before the earlier run is removed (it was removed first, then the recipe refused)
    ours = tmp_path / "aa"
    ours.mkdir()
    (ours / TRAINED_WITH_FILE).write_text("{}")
    (ours / "model.safetensors").write_bytes(b"the earlier training")
    with pytest.raises(DemoError, match=f"^training {ours} failed: .*no-such-recipe.yaml"):
        train_stage("recipes/ipd/no-such-recipe.yaml", tmp_path, ours, 1, force=True)
    assert (ours / "model.safetensors").read_bytes() == b"the earlier training"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aa"]  # nothing set aside either


def test_a_tiny_folder_that_is_no_model_is_one_error_line(tmp_path, capsys):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert main(["demo", "--tiny", str(folder), "--out", str(tmp_path / "demo"), "--max-steps", "1"]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert lines == [f"coop-rl: error: building the model in --tiny {folder} failed: {folder} exists and is not a "
                     "tiny model built by coop-rl"]  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_failed_demo_training_is_one_error_line_exit_2(model_config_dir, tmp_path, capsys, monkeypatch):
    """The training runs in-process through coop_rl.train: its error is reported once, naming the run."""
    recipe = tmp_path / "aa.yaml"
    recipe.write_text(Path(DEMOS["ipd"].recipes["aa"]).read_text() + "seat_adapters: true\n")  # needs use_peft
    monkeypatch.setitem(DEMOS, "ipd", dataclasses.replace(DEMOS["ipd"], recipes={"aa": str(recipe)}))
    out = tmp_path / "demo"
    assert main(["demo", "--tiny", str(model_config_dir), "--out", str(out), "--max-steps", "1"]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(
        f"coop-rl: error: training {out / 'aa'} failed: seat_adapters needs use_peft true"
    ), lines


def test_ctrl_c_during_a_demo_training_exits_130(model_config_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C raises KeyboardInterrupt in the training: the demo lets it through, the command line exits 130."""
    import coop_rl.train

    def interrupted(config):
        assert config.output_dir == str(tmp_path / "demo" / "aa")  # the recipe was read and checked first
        raise KeyboardInterrupt

    monkeypatch.setattr(coop_rl.train, "train", interrupted)
    assert main(["demo", "--tiny", str(model_config_dir), "--out", str(tmp_path / "demo"), "--max-steps", "1"]) == 130
    err = capsys.readouterr().err
    assert _error_lines(err) == [] and err.rstrip().endswith("\ncoop-rl: interrupted"), err


@pytest.mark.slow
def test_demo_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--tiny", str(tiny_model_dir), "--out", str(out), "--max-steps", "2", "--matches", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed and "self-play cooperation" in printed
    for method in ("aa", "naive"):
        assert (out / method / "coop_rl_policy.json").exists()
        assert (out / f"{method}-eval" / "results.json").exists()
        assert learning_curve(log_history(out / method), "rollout/cooperation_rate")
    data = json.loads((out / "demo.json").read_text())
    assert set(data["methods"]) == {"aa", "naive"}
    assert all(0.0 <= data["methods"][m]["self_play"] <= 1.0 for m in ("aa", "naive"))
    text = (out / "report.md").read_text()
    assert "| aa |" in text and "| naive |" in text
    # a second run finds both trainings done and only re-evaluates: the trained weights are not rewritten
    written = {m: (out / m / "model.safetensors").stat().st_mtime_ns for m in ("aa", "naive")}
    result = run_demo(tiny_dir=str(tiny_model_dir), out=str(out), max_steps=2, matches=2)
    assert {m: (out / m / "model.safetensors").stat().st_mtime_ns for m in ("aa", "naive")} == written
    assert Path(result["report"]).exists()
    # another request (here --max-steps 1) trains again, from an empty folder: no checkpoint of the earlier run is
    # left for the report's learning curves to read
    run_demo(tiny_dir=str(tiny_model_dir), out=str(out), max_steps=1, matches=2)
    for method in ("aa", "naive"):
        assert sorted(p.name for p in (out / method).glob("checkpoint-*")) == ["checkpoint-1"]
        assert json.loads((out / method / TRAINED_WITH_FILE).read_text())["max_steps"] == 1
    assert json.loads((out / "demo.json").read_text())["settings"]["max_steps"] == 1


def test_only_an_unfinished_training_of_the_same_request_is_resumed(tmp_path):
    from coop_rl.demo import _resume_point

    model, run = tmp_path / "model", tmp_path / "run"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    request = training_request(DEMOS["ipd"].recipes["aa"], model, None)
    for step in (40, 80, 120):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (run / "checkpoint-120" / "trainer_state.json").write_text('{"global_st')  # a save cut short
    assert _resume_point(run, request) is None  # no record: not the demo's training
    (run / TRAINED_WITH_FILE).write_text(json.dumps(request))
    assert _resume_point(run, request) == run / "checkpoint-80"
    assert _resume_point(run, training_request(DEMOS["ipd"].recipes["aa"], model, 100)) is None  # --max-steps 100


@pytest.mark.slow
def test_an_interrupted_demo_training_resumes_from_its_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    import coop_rl.demo as demo

    def every_two_steps(*args, **kwargs):  # the shipped recipe saves every 40
        config = training_config(*args, **kwargs)
        config.save_steps = 2
        return config

    training_config = demo.training_config
    monkeypatch.setattr(demo, "training_config", every_two_steps)
    recipe, run = DEMOS["ipd"].recipes["aa"], tmp_path / "aa"
    train_stage(recipe, tiny_model_dir, run, max_steps=4, force=False)
    finished = (run / "model.safetensors").read_bytes()
    for name in ("model.safetensors", "coop_rl_policy.json", "trainer_state.json"):  # killed after checkpoint-2
        (run / name).unlink(missing_ok=True)
    shutil.rmtree(run / "checkpoint-4")
    (run / "left-by-the-interrupted-run").write_text("")  # a retraining would start from an empty folder
    train_stage(recipe, tiny_model_dir, run, max_steps=4, force=False)
    assert json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert (run / "left-by-the-interrupted-run").exists()  # resumed in place
    assert (run / "model.safetensors").read_bytes() == finished  # where the uninterrupted run ended


@pytest.mark.slow
def test_demo_tas_pipeline_runs_and_reports_returns(tiny_model_dir, tmp_path):
    """The Trust-and-Split demo's stages on a tiny model (the matrix-game one: the pipeline, not a result)."""
    out = tmp_path / "demo-tas"
    built = (tiny_model_dir / "model.safetensors").stat().st_mtime_ns
    result = run_demo(game="tas", tiny_dir=str(tiny_model_dir), out=str(out), max_steps=1, matches=1)
    # a model the user names (--tiny), built for other games, is used as it is: never rebuilt in its place
    assert (tiny_model_dir / "model.safetensors").stat().st_mtime_ns == built
    data = json.loads((out / "demo.json").read_text())
    assert data["table"]["headers"][:4] == ["method", "self-play return", "vs honest (return)", "vs greedy (return)"]
    assert set(data["crossplay"]) == {"methods", "mean return of the row policy"}
    assert "No result is promised" in (out / "report.md").read_text()
    assert "self-play return" in result["table"]


def test_the_demos_own_model_is_rebuilt_when_its_build_settings_are_not_todays(tmp_path, monkeypatch):
    # building takes minutes: the builder is replaced by one that records the call (the decision is under test)
    from coop_rl import tiny_model
    from coop_rl.demo import ensure_tiny_model
    from coop_rl.warm_start import collect_examples, corpus_fingerprint

    spec = DEMOS["ipd"]
    config = tiny_model.TinyModelConfig(games=spec.tiny_games, data_scale=spec.tiny_data_scale)
    builds = []
    monkeypatch.setattr(tiny_model, "init_tiny_model", lambda path, config: builds.append(path) or path)
    folder = tmp_path / "tiny"
    folder.mkdir()
    record = {"kind": "coop-rl tiny", **json.loads(json.dumps(vars(config))), "precision": {"dtype": "float32"},
              "corpus_sha256": corpus_fingerprint(collect_examples(config.seed, config.data_scale))}  # fmt: skip
    (folder / "coop_rl_tiny.json").write_text(json.dumps(record))
    assert ensure_tiny_model(spec, str(folder)) == folder and builds == []  # today's build: kept
    (folder / "coop_rl_tiny.json").write_text(json.dumps({**record, "hidden_size": 64}))  # an older default
    ensure_tiny_model(spec, str(folder))
    assert builds == [folder]
    (folder / "coop_rl_tiny.json").write_text("[]")
    with pytest.raises(DemoError, match="coop_rl_tiny.json is not a coop-rl build record"):
        ensure_tiny_model(spec, str(folder))


def test_a_pretrained_model_built_with_other_settings_is_used_as_it_is(tmp_path, monkeypatch):
    # `demo --model smollm2 --tiny DIR` rebuilt (warm-started) a DIR that `init-model smollm2` had built without a
    # warm start: the user's model was lost. Converting takes minutes: the builder records the call instead.
    from dataclasses import asdict

    from coop_rl import pretrained
    from coop_rl.demo import ensure_tiny_model

    spec = DEMOS["ipd-smollm2"]
    builds = []
    monkeypatch.setattr(pretrained, "init_pretrained_model", lambda path, *a, **k: builds.append(path) or path)
    folder = tmp_path / "smollm2"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    settings = json.loads(json.dumps(asdict(pretrained.PretrainedWarmStart(spec.tiny_games, spec.tiny_data_scale))))
    demos = {"kind": "coop-rl pretrained smollm2", "constrain_answers": True, "warm_start": {"settings": settings}}
    others = [{**demos, "warm_start": None}, {**demos, "constrain_answers": False},
              {**demos, "warm_start": {"settings": {**settings, "seed": 1}}}, None]  # fmt: skip
    for record in others:  # no warm start, free answers, another seed, not built here
        (folder / pretrained.INFO_FILE).unlink(missing_ok=True)
        if record is not None:
            (folder / pretrained.INFO_FILE).write_text(json.dumps(record))
        assert ensure_tiny_model(spec, str(folder)) == folder
    assert builds == []
    (folder / pretrained.INFO_FILE).write_text(json.dumps(demos))  # the demo's own build: reused or rebuilt there
    assert ensure_tiny_model(spec, str(folder)) == folder and builds == [folder]
    older = {**demos, "warm_start": {"settings": {**settings, "epochs": 2.0}}}  # under an older default: stale
    (folder / pretrained.INFO_FILE).write_text(json.dumps(older))
    assert ensure_tiny_model(spec, str(folder)) == folder and builds == [folder, folder]
