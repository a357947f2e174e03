"""coop_rl.train: ``load_recipe`` (every check of a recipe, before any weights load) and ``train`` (build, train,
save), called directly as ``coop-rl demo`` calls them. The command-line cases of each check are in
tests/test_config_validation.py and tests/test_untrusted_input.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from coop_rl.cli import main
from coop_rl.errors import UsageError
from coop_rl.train import check_no_earlier_run, load_recipe, train

RECIPE = "recipes/ipd/aa_tiny.yaml"


def _argv(model_dir, out, *extra, recipe=RECIPE):
    return ["--config", str(recipe), "--model_name_or_path", str(model_dir), "--output_dir", str(out), *extra]


def test_load_recipe_reads_the_recipe_then_the_overrides(model_config_dir, tmp_path, no_weights):
    from coop_rl.aa_config import AAConfig

    config = load_recipe(_argv(model_config_dir, tmp_path / "out", "--beta", "0.25", "--use_peft", "true"))
    assert isinstance(config, AAConfig)
    assert (config.beta, config.use_peft) == (0.25, True)  # the command line wins over the recipe
    assert (config.model_name_or_path, config.output_dir) == (str(model_config_dir), str(tmp_path / "out"))
    recipe = yaml.safe_load(Path(RECIPE).read_text())
    for key in ("game", "matches_per_iteration", "group_size", "gamma", "gamma_a", "reward_scale", "max_new_tokens"):
        assert getattr(config, key) == recipe[key], key
    assert config.learning_rate == 3.0e-4 and config.max_steps == 160
    assert not (tmp_path / "out").exists()  # checking writes nothing


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--gama", "0.9"],
         "unknown option '--gama'; did you mean gamma or game or gamma_a? (every setting: coop-rl train --help)"),
        (["--beta", "-0.5"], "beta=-0.5: must be >= 0"),
        (["--resume_from_checkpoint", "/no/such/dir"], "checkpoint not found: /no/such/dir"),
        (["--use_peft", "true", "--lora_target_modules", "nope"], "lora_target_modules: nope not in the model"),
    ],
)  # fmt: skip
def test_load_recipe_raises_one_usage_error_per_problem(extra, message, model_config_dir, tmp_path, no_weights):
    with pytest.raises(UsageError) as caught:
        load_recipe(_argv(model_config_dir, tmp_path / "out", *extra))
    assert str(caught.value).startswith(message), caught.value
    assert "\n" not in str(caught.value)


def test_a_new_run_into_an_earlier_runs_folder_is_refused(model_config_dir, tmp_path, no_weights):
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (out / "trajectories").mkdir()
    refusal = rf"^output_dir {out} holds an earlier run \(checkpoint-2, trajectories\): resume it with "
    with pytest.raises(
        UsageError, match=refusal + "--resume_from_checkpoint, or choose another output_dir, or remove it$"
    ):
        check_no_earlier_run(load_recipe(_argv(model_config_dir, out)))
    check_no_earlier_run(
        load_recipe(_argv(model_config_dir, out, "--resume_from_checkpoint", str(out / "checkpoint-2")))
    )
    check_no_earlier_run(load_recipe(_argv(model_config_dir, tmp_path / "fresh")))
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "notes.txt").write_text("a user's file is no run")
    check_no_earlier_run(load_recipe(_argv(model_config_dir, tmp_path / "fresh")))
    # the command: one line, exit 2, before any weights load
    assert main(["train", *_argv(model_config_dir, out)]) == 2


def test_load_recipe_checks_the_file_before_parsing_it(tmp_path):
    with pytest.raises(UsageError, match=r"^--config needs a recipe file$"):
        load_recipe(["--config"])
    with pytest.raises(UsageError, match=r"^recipe not found: "):
        load_recipe(["--config", str(tmp_path / "nope.yaml")])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("env: {LD_PRELOAD: /tmp/evil.so}\n")
    with pytest.raises(UsageError, match=r"^env in recipe .*: LD_PRELOAD may not be set from a recipe$"):
        load_recipe(["--config", str(recipe)])
    recipe.write_text("game: ipd\nmax_steps: 1\nuse_cpu: true\n")
    with pytest.raises(UsageError, match=r"^no model: set model_name_or_path"):
        load_recipe(["--config", str(recipe), "--output_dir", str(tmp_path / "o")])


def test_one_usage_error_class_for_every_command():
    from coop_rl import cli
    from coop_rl.demo import DemoError

    assert cli.UsageError is UsageError and issubclass(DemoError, UsageError)


def test_a_setting_the_trainer_refuses_is_a_usage_error(model_config_dir, tmp_path, no_weights):
    """Checked where it is checked (the config or the trainer's first lines): one line, before weights load."""
    argv = _argv(model_config_dir, tmp_path / "out", "--seat_adapters", "true", "--use_peft", "false")
    with pytest.raises(UsageError, match=r"^seat_adapters needs use_peft true"):
        train(load_recipe(argv))


def test_train_help_lists_every_setting(capsys):
    from coop_rl.cli import main

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: coop-rl train --config RECIPE.yaml [--key value ...]")  # how a run is given
    assert "YAML recipe" in out
    for option in ("--beta", "--gamma_a", "--matches_per_iteration", "--use_peft", "--output_dir"):
        assert option in out


@pytest.mark.slow
def test_train_saves_the_policy_folder_and_returns_it(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    extra = ["--max_steps", "1", "--matches_per_iteration", "8", "--game_params", '{"rounds": 2}']
    extra += ["--save_steps", "1", "--logging_steps", "1"]
    assert train(load_recipe(_argv(tiny_model_dir, out, *extra))) == out
    assert f"saved the trained policy to {out} (play it as hf:{out})" in capsys.readouterr().out
    settings = json.loads((out / "coop_rl_policy.json").read_text())
    assert (settings["constrain_answers"], settings["game"]) == (True, "ipd")  # the recipe's, kept with the policy
    # a checkpoint is a policy folder too: hf:<run>/checkpoint-1 plays constrained, as trained
    assert json.loads((out / "checkpoint-1" / "coop_rl_policy.json").read_text()) == settings
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    assert json.loads((out / "coop_rl_run.json").read_text())["device"] == "cpu"  # the demo's report reads it
    history = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["log_history"]
    assert history[0]["step"] == 1 and 0.0 <= history[0]["rollout/cooperation_rate"] <= 1.0


@pytest.mark.slow
def test_a_chat_template_that_refuses_the_games_messages_is_a_usage_error(tiny_model_dir, tmp_path):
    import shutil

    model = tmp_path / "no-system"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text("{{ raise_exception('System role not supported') }}")
    config = load_recipe(_argv(model, tmp_path / "run", "--max_steps", "1"))
    with pytest.raises(UsageError, match="^cannot train .*no-system: its chat template refuses the games' system"):
        train(config)  # when the trainer is built, before any rollout
    assert not (tmp_path / "run" / "trajectories").exists()


@pytest.mark.slow
def test_a_run_that_stops_early_still_closes_its_opponents(tiny_model_dir, tmp_path, monkeypatch):
    # a vLLM server fleet unregisters the learner's adapter in close(); on_train_end never runs on a crash or Ctrl-C
    from coop_rl.aa_trainer import AATrainer
    from coop_rl.opponents import Opponents

    closed = []
    real_close = Opponents.close

    def recorded_close(self):
        closed.append(self)
        real_close(self)  # the real close runs too: it must release what the run built

    monkeypatch.setattr(Opponents, "close", recorded_close)

    def interrupted(self, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(AATrainer, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(_argv(tiny_model_dir, tmp_path / "run", "--max_steps", "1")))
    assert len(closed) == 1


@pytest.mark.slow
def test_a_lora_policy_names_its_base_model_by_an_absolute_path(tiny_model_dir, tmp_path, monkeypatch, capsys):
    # trained from the model's parent folder with a relative path, then played from elsewhere: peft wrote the
    # relative path as the adapter's base, and hf:<output_dir> worked only from the folder training ran in
    from coop_rl.cli import main

    recipe = Path(__file__).resolve().parents[1] / RECIPE
    monkeypatch.chdir(tiny_model_dir.parent)
    out = tmp_path / "lora"
    lora = ["--max_steps", "1", "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8"]
    train(load_recipe(_argv(tiny_model_dir.name, out, *lora, recipe=recipe)))
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(tiny_model_dir.absolute())
    monkeypatch.chdir(tmp_path)
    assert main(["play", "--game", "ipd", "--players", f"hf:{out},tft", "--matches", "2", "--rounds", "2"]) == 0
    capsys.readouterr()
