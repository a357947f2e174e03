"""`coop-rl train` rejects a bad configuration in one line on stderr, exit 2, before any model weights load.

Every case runs in-process through ``coop_rl.cli.main`` on a model directory that holds only the tiny model's
config.json (fixture ``model_config_dir``: fast, no model is built); loading weights is made to fail loudly so that
a check that comes too late shows up as a test failure, not as a slow pass.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

RECIPE = "recipes/ipd/aa_tiny.yaml"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip() and "[WARNING]" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("coop-rl: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _train(model_dir, tmp_path, *extra, config=RECIPE):
    from coop_rl.cli import main

    argv = ["train", "--config", str(config), "--model_name_or_path", str(model_dir),
            "--output_dir", str(tmp_path / "out"), *extra]  # fmt: skip
    return main(argv)


@pytest.mark.parametrize(
    "extra,needles",
    [
        (["--no_such_key", "1"], ["unknown option", "--no_such_key", "train --help"]),
        (["--betta", "0.1"], ["--betta", "did you mean beta"]),
        (["--bet", "1"], ["unknown option '--bet'", "did you mean beta"]),  # argparse took a prefix for the key
        (["--beta", "-0.5"], ["beta=-0.5", ">= 0"]),
        (["--gamma", "0"], ["gamma=0.0", "(0, 1]"]),
        (["--gamma", "1.01"], ["gamma=1.01", "(0, 1]"]),
        (["--gamma_a", "0"], ["gamma_a=0.0", "(0, 1]"]),
        (["--gamma_a", "2"], ["gamma_a=2.0", "(0, 1]"]),
        (["--group_size", "3"], ["group_size=3", "matches_per_iteration=128"]),
        (["--group_size", "1"], ["baseline loo needs group_size >= 2", "baseline batch or none"]),
        (["--is_clip", "0.5"], ["is_clip", ">= 1"]),
        (["--report_to", "nosuch"], ["report_to='nosuch': expected none, all or one of", "tensorboard"]),
        (["--output_dir", "README.md/run"], ["cannot use output_dir 'README.md/run': README.md is not a directory"]),
        (["--learning_rate", "-1"], ["learning_rate=-1.0: must be >= 0.0"]),
        (["--learning_rate", "nan"], ["learning_rate=nan"]),
        (["--gradient_accumulation_steps", "0"], ["gradient_accumulation_steps=0: must be >= 1"]),
        (["--save_steps", "0"], ["save_steps=0", "must be > 0"]),
        (["--max_grad_norm", "-1"], ["max_grad_norm=-1.0: must be >= 0.0"]),
        (["--matches_per_iteration", "0"], ["matches_per_iteration"]),
        (["--game", "chess"], ["game='chess'", "ipd, bos, tas, split, spgg"]),
        (["--game_params", '{"rounds": 0}'], ["game_params", "rounds"]),
        (["--game_params", "{not json"], ["game_params", "JSON"]),
        (["--opponent", "everyone"], ["opponent='everyone'", "self_play, pool, frozen"]),
        (["--opponent", "frozen"], ["opponents"]),
        (["--opponent", "frozen", "--opponents", " , "], ["opponent='frozen' needs opponents"]),  # was randrange(0)
        (["--opponents", "tft"], ["opponents is for opponent frozen, not self_play"]),  # else silently ignored
        (["--opponent", "pool", "--opponents", "tft"], ["opponents is for opponent frozen, not pool"]),
        (["--adam_beta1", "2"], ["adam_beta1=2.0: must be in [0, 1)"]),  # torch's Adam refused it after loading
        (["--adam_beta2", "1"], ["adam_beta2=1.0: must be in [0, 1)"]),
        (["--warmup_steps", "-1"], ["warmup_steps=-1.0: must be >= 0"]),  # transformers said "an integer or a float"
        (["--adam_epsilon", "-1"], ["adam_epsilon=-1.0: must be >= 0.0"]),
        (["--dataloader_num_workers", "-1"], ["dataloader_num_workers=-1: must be >= 0"]),
        (["--credit", "magic"], ["credit='magic'", "aa, naive, sum"]),
        (["--baseline", "median"], ["baseline='median'", "loo, batch, none"]),
        (["--loss_type", "dpo"], ["loss_type='dpo'", "reinforce, ppo"]),
        (["--rollout_backend", "tgi"], ["rollout_backend='tgi'", "hf", "vllm"]),
        (["--vllm_executor", "ray"], ["vllm_executor='ray'", "auto, default"]),
        (["--beta", "abc"], ["--beta", "abc"]),
        (["--matches_per_iteration", "1.5"], ["matches_per_iteration", "1.5"]),
        (["--use_peft", "maybe"], ["use_peft", "maybe"]),
        (["--top_p", "0"], ["top_p", "(0, 1]"]),
        (["--temperature", "0.7"], ["temperature=0.7: training needs temperature 1 and top_p 1", "untempered"]),
        (["--top_p", "0.9"], ["top_p=0.9: training needs temperature 1 and top_p 1"]),
        (["--num_iterations", "0"], ["num_iterations=0", ">= 1"]),
        (["--num_iterations", "1.5"], ["num_iterations", "1.5"]),
        (["--max_new_tokens", "0"], ["max_new_tokens", ">= 1"]),
        (["--reward_scale", "0"], ["reward_scale", "> 0"]),
        (["--pool_prob", "1.5"], ["pool_prob", "[0, 1]"]),
        (["--seed", "-1"], ["seed=-1: must be in [0, 4294967295]"]),
        (["--seed", "4294967296"], ["seed=4294967296: must be in [0, 4294967295]"]),
        (["--seed", "9" * 400], ["must be in [0, 4294967295]"]),  # no overflow in the check itself
        (["--use_peft", "true", "--lora_dropout", "1.5"], ["lora_dropout=1.5: must be in [0, 1)"]),
        (["--vllm_gpu_memory_utilization", "5"], ["vllm_gpu_memory_utilization=5.0: must be in (0, 1]"]),
        (["--vllm_gpu_memory_utilization", "nan"], ["vllm_gpu_memory_utilization=nan: must be in (0, 1]"]),
        (["--vllm_gpu_memory_utilization", "0.5"],  # hf rollouts, no vllm: opponent: it would be silently unused
         ["vllm_gpu_memory_utilization is for rollout_backend vllm or vllm: opponents"]),
        (["--vllm_gpu_memory_utilization", "0.5", "--opponent", "frozen", "--opponents", "tft",
          "--play_eval_every", "0", "--play_eval_opponents", "vllm:/no/such"],
         ["vllm_gpu_memory_utilization is for rollout_backend vllm or vllm: opponents"]),
        (["--matches_per_iteration", "1000000002"], ["matches_per_iteration=1000000002: must be in [1, 1000000]"]),
        (["--max_consecutive_faults", "0"], ["max_consecutive_faults", ">= 1"]),
        (["--use_peft", "true", "--lora_target_modules", "q_proj,attn_c"],
         ["lora_target_modules", "attn_c", "all-linear", "q_proj", "v_proj"]),
        (["--resume_from_checkpoint", "/no/such/checkpoint"], ["checkpoint not found"]),
        (["--resume_from_checkpoint", "tests"], ["tests is not a finished checkpoint (no trainer_state.json)"]),
        # settings that need one another (AAConfig._check_combinations)
        (["--seat_adapters", "true"], ["seat_adapters needs use_peft true, opponent self_play and rollout_backend hf"]),
        (["--use_peft", "true", "--seat_adapters", "true", "--opponent", "pool"], ["seat_adapters needs"]),
        (["--rollout_backend", "vllm"], ["rollout_backend vllm needs use_peft true"]),
        (["--rollout_backend", "vllm", "--use_peft", "true", "--constrain_answers", "true"],
         ["rollout_backend vllm does not support constrain_answers"]),
        (["--rollout_backend", "vllm_server", "--use_peft", "true", "--constrain_answers", "false"],
         ["rollout_backend vllm_server needs rollout_servers"]),
        (["--rollout_backend", "vllm_server", "--rollout_servers", "http://127.0.0.1:8000"],
         ["rollout_backend vllm_server needs use_peft true"]),
        (["--rollout_backend", "vllm_server", "--rollout_servers", "http://h:1,127.0.0.1:8000"],
         ["rollout_servers=['http://h:1', '127.0.0.1:8000']", "http://"]),
        (["--rollout_backend", "vllm_server", "--rollout_servers", "http://h:1,http://h:99999/v1"],
         ["rollout_servers: http://h:99999/v1: the server URL is malformed (Port out of range"]),
        (["--opponent", "frozen", "--opponents", "openai:m@http://[::1"], ["bad player spec", "Invalid IPv6 URL"]),
        (["--rollout_backend", "vllm_server", "--use_peft", "true", "--rollout_servers", "http://h:1,http://h:2"],
         ["rollout_backend vllm_server does not support constrain_answers"]),
        (["--rollout_servers", "http://127.0.0.1:8000"], ["rollout_servers is for rollout_backend vllm_server, not"]),
        (["--kl_coef", "0.1"], ["kl_coef > 0 needs use_peft"]),
        (["--learner_seat", "1"], ["learner_seat is for opponent pool or frozen"]),
        (["--opponent", "pool", "--learner_seat", "2"], ["learner_seat=2: ipd has seats 0 to 1"]),
        (["--opponent", "pool", "--learner_seat", "-1"], ["learner_seat=-1: ipd has seats 0 to 1"]),
        (["--play_eval_every", "5", "--play_eval_opponents", " , "], ["play_eval_every > 0 needs play_eval_opponents"]),
        (["--play_eval_every", "-1"], ["play_eval_every", ">= 0"]),
        # opponents are player specs, checked before the weights load
        (["--opponent", "frozen", "--opponents", "tft,nobody"], ["opponent 'nobody'", "unknown strategy 'nobody'"]),
        (["--play_eval_every", "5", "--play_eval_opponents", "tft,hf:/no/such/model"],
         ["opponent 'hf:/no/such/model'", "model directory not found"]),
        (["--opponent", "frozen", "--opponents", "openai:m"], ["opponent 'openai:m'", "no '@'"]),
        # silently set back to 1 once: the batch is the rollout
        (["--per_device_train_batch_size", "8"], ["per_device_train_batch_size=8", "fixed at 1"]),
    ],
)  # fmt: skip
def test_bad_setting_is_one_line_exit_2_before_weights(extra, needles, model_config_dir, tmp_path, capsys, no_weights):
    assert _train(model_config_dir, tmp_path, *extra) == 2
    line = _error_line(capsys)
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "out").exists()


def test_a_recipe_may_merge_mappings_but_not_set_a_key_twice(tmp_path):
    from coop_rl.errors import UsageError
    from coop_rl.train import check_recipe

    recipe = tmp_path / "merged.yaml"
    recipe.write_text("game: ipd\ngame_params: {<<: {rounds: 5, noise: 0.1}, rounds: 6}\n")
    check_recipe(str(recipe))  # a YAML merge key is no second key
    recipe.write_text("game: ipd\ngame_params: {rounds: 5, rounds: 6}\n")
    with pytest.raises(UsageError, match=r"\(line 2\): 'rounds' is set twice$"):
        check_recipe(str(recipe))


def test_no_recipe_is_pointed_to_one(capsys, no_weights):
    from coop_rl.cli import main

    assert main(["train"]) == 2
    assert _error_line(capsys) == (
        "coop-rl: error: max_steps (the number of optimizer steps) must be >= 1 "
        "(start from a recipe: coop-rl train --config recipes/ipd/aa_tiny.yaml)"
    )


def test_missing_model_and_recipe(tmp_path, capsys, no_weights):
    from coop_rl.cli import main

    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe not found" in _error_line(capsys)
    assert main(["train", "--config"]) == 2
    assert "--config needs a recipe file" in _error_line(capsys)
    assert main(["train", "--config", RECIPE, "--config", RECIPE]) == 2
    assert "--config given more than once" in _error_line(capsys)
    assert main(["train", "--config", RECIPE, "--model_name_or_path", str(tmp_path / "no-model")]) == 2
    line = _error_line(capsys)
    assert "model directory not found" in line and "build it with coop-rl init-model" in line
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert main(["train", "--config", RECIPE, "--model_name_or_path", str(tmp_path / "broken")]) == 2
    assert "cannot read the model config in" in _error_line(capsys)
    assert main(["train", f"--config={tmp_path / 'nope.yaml'}"]) == 2  # the --config=FILE form is read too
    assert "recipe not found" in _error_line(capsys)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("game: ipd\nmax_steps: 1\n")
    assert main(["train", "--config", str(recipe), "--output_dir", str(tmp_path / "o")]) == 2
    assert "model_name_or_path" in _error_line(capsys)


@pytest.mark.parametrize(
    "text,needles",
    [
        ("bogus_key: 3\n", ["unknown key 'bogus_key'"]),
        ("gama: 0.9\n", ["unknown key 'gama'", "did you mean gamma"]),
        ("beta: abc\n", ["beta", "abc"]),
        ("matches_per_iteration: [1, 2]\n", ["matches_per_iteration", "expected an integer", "list"]),
        ("matches_per_iteration: 1.5\n", ["matches_per_iteration=1.5", "expected an integer"]),
        ("game: 5\n", ["game=5", "expected a string"]),
        ("beta: true\n", ["beta=True", "expected a number"]),
        ("use_peft: maybe\n", ["use_peft", "maybe"]),
        ("game_params: [1, 2]\n", ["game_params", "mapping"]),
        ("game_params: {rounds: -3}\n", ["game_params", "rounds"]),
        ("- a\n- b\n", ["must be a YAML mapping"]),
        ("model_name_or_path: [unclosed\n", ["not a plain YAML mapping", "line"]),
        ("game: ipd\nbeta: 1\ngame: bos\n", ["not a plain YAML mapping (line 6): 'game' is set twice"]),
        ("game_params: {rounds: 3, rounds: 5}\n", ["'rounds' is set twice"]),
    ],
)
def test_bad_recipe_is_one_line_exit_2_before_weights(text, needles, model_config_dir, tmp_path, capsys, no_weights):
    recipe = tmp_path / "recipe.yaml"
    base = "" if text.startswith("-") else "max_steps: 1\nuse_cpu: true\nreport_to: none\n"
    recipe.write_text(base + text)
    assert _train(model_config_dir, tmp_path, config=recipe) == 2
    line = _error_line(capsys)
    for needle in needles:
        assert needle in line, line


def test_defaults_and_the_shipped_recipes_pass_validation():
    from trl import TrlParser

    from coop_rl.aa_config import AAConfig

    config = AAConfig(output_dir="/tmp/unused", max_steps=1, use_cpu=True, report_to="none", warmup_steps=0)
    assert config.save_trajectories is True and config.max_consecutive_faults == 3
    assert config.num_iterations == 1 and config.temperature == 1.0 and config.top_p == 1.0
    assert isinstance(config.warmup_steps, float)  # an integer given for a float field is converted
    assert config.num_seats == 2  # the ipd's
    spgg = AAConfig(output_dir="/tmp/unused", max_steps=1, use_cpu=True, report_to="none", game="spgg",
                    game_params={"players": 4}, group_size=2, matches_per_iteration=4)  # fmt: skip
    assert spgg.num_seats == 4
    from coop_rl.train import check_recipe

    recipes = sorted(p for p in Path("recipes").rglob("*.yaml") if p.parent.name != "accelerate")
    assert len(recipes) >= 2
    for recipe in recipes:
        check_recipe(str(recipe))
        gpu_off = ["--bf16", "false", "--fp16", "false"]  # the GPU recipes, checked on this CPU machine
        (parsed,) = TrlParser(AAConfig).parse_args_and_config(["--config", str(recipe), *gpu_off])
        assert 0 < parsed.gamma <= 1 and parsed.matches_per_iteration % parsed.group_size == 0
        assert parsed.temperature == 1.0 and parsed.top_p == 1.0  # what the loss accounts for


def test_resume_of_a_zero_checkpoint_with_another_number_of_processes_is_one_line(
    model_config_dir, tmp_path, capsys, no_weights
):
    # DeepSpeed's layout (as a 2-process ZeRO-2 run on CPU writes it): one optimizer partition per process.
    checkpoint = tmp_path / "checkpoint-2"
    (checkpoint / "global_step2").mkdir(parents=True)
    (checkpoint / "latest").write_text("global_step2")
    (checkpoint / "trainer_state.json").write_text('{"global_step": 2}')
    for rank in (0, 1):
        (checkpoint / "global_step2" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert _train(model_config_dir, tmp_path, "--resume_from_checkpoint", str(checkpoint)) == 2
    line = _error_line(capsys)
    assert "holds DeepSpeed ZeRO optimizer states of 2 processes, this run has 1" in line
    assert "accelerate launch --num_processes 2" in line


@pytest.mark.parametrize("value", [{"a": 1}, [1], 5, ["tensorboard", ["x"]]])
def test_report_to_that_names_no_tracker_is_refused_in_one_line(value):
    # a recipe's `report_to: {a: 1}` once read "unhashable type: 'dict'"
    from coop_rl.config_checks import check_trackers

    with pytest.raises(ValueError, match=r"^report_to=.*: expected a tracker's name or a list of them$"):
        check_trackers(value)


@pytest.mark.parametrize(
    "settings",
    [
        {"opponent": "frozen", "opponents": "tft, vllm:/models/x"},
        {"play_eval_every": 5, "play_eval_opponents": "tft,vllm:/models/x"},
        {"rollout_backend": "vllm", "use_peft": True, "constrain_answers": False},
    ],
)
def test_a_vllm_memory_share_is_taken_where_a_vllm_engine_starts(settings, tmp_path):
    from coop_rl.aa_config import AAConfig

    config = AAConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", vllm_gpu_memory_utilization=0.2,
                      **settings)  # fmt: skip
    assert config.vllm_gpu_memory_utilization == 0.2


@pytest.mark.parametrize(
    "settings,processes,zero_stage,refusal",
    [
        # a second vLLM engine in a rank's process would start on the first GPU, whatever the rank's device; the
        # in-training evaluation's opponent was refused only at the first evaluation, after that much training
        ({"opponent": "frozen", "opponents": "tft, vllm:/models/x"}, 2, None, "vllm:/models/x: vllm: opponents need"),
        ({"play_eval_every": 5, "play_eval_opponents": "tft,vllm:/models/x"}, 2, 2, "vllm:/models/x: vllm: opponents"),
        ({"play_eval_every": 5, "play_eval_opponents": "tft,vllm:/models/x"}, 1, None, None),
        ({"opponent": "frozen", "opponents": "tft,alld"}, 2, 3, None),
        ({"opponent": "pool"}, 1, 3, "opponent pool copies the learner's weights, which ZeRO-3 shards"),
        ({"opponent": "pool"}, 2, 2, None),
        ({"use_peft": True, "seat_adapters": True}, 2, None, "seat_adapters trains on one process"),
        ({"matches_per_iteration": 24, "group_size": 8}, 2, None, "3 seed groups (matches_per_iteration / group_size)"),
        ({"matches_per_iteration": 24, "group_size": 8}, 3, None, None),
    ],
)
def test_what_the_launch_rules_out_is_refused_before_a_rollout(settings, processes, zero_stage, refusal, tmp_path):
    from coop_rl.aa_config import AAConfig
    from coop_rl.config_checks import check_processes

    config = AAConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", **settings)
    if refusal is None:
        check_processes(config, processes, zero_stage)
    else:
        with pytest.raises(ValueError, match="^" + re.escape(refusal)):
            check_processes(config, processes, zero_stage)
