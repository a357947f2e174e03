"""Multi-process training on CPU through ``accelerate launch``: DDP over gloo and DeepSpeed ZeRO-2 (real engines)."""

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import free_port

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
SCRIPT = Path(__file__).parent / "distributed" / "ddp_equivalence.py"


def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _train(model_dir: Path, out: Path, *overrides: str) -> list[str]:
    """`-m coop_rl train` on the tiny IPD recipe: 16 matches an iteration, logged every step."""
    return [
        "-m", "coop_rl", "train", "--config", "recipes/ipd/aa_tiny.yaml", "--model_name_or_path", str(model_dir),
        "--output_dir", str(out), "--matches_per_iteration", "16", "--logging_steps", "1", *overrides,
    ]  # fmt: skip


def _launch(config: str, *args: str, processes: int | None = None) -> list[str]:
    count = ["--num_processes", str(processes)] if processes else []
    return [*ACCELERATE, "--config_file", config, *count, "--main_process_port", str(free_port()), *args]


def _relative_error(update: dict, reference: dict) -> float:
    difference = sum(((update[k] - reference[k]) ** 2).sum() for k in reference) ** 0.5
    return float(difference / sum((reference[k] ** 2).sum() for k in reference) ** 0.5)


@pytest.mark.slow
def test_two_process_ddp_update_equals_one_process_update_on_the_same_batch(tmp_path, tiny_model_dir):
    ranks, single, half = tmp_path / "ranks", tmp_path / "single", tmp_path / "half"
    model = ["--model", str(tiny_model_dir)]
    _run(_launch("recipes/accelerate/ddp.yaml", str(SCRIPT), "--mode", "ranks", *model, "--out", str(ranks)))
    info = json.loads((ranks / "coop_rl_run.json").read_text())
    assert info["num_processes"] == 2 and info["distributed_type"] == "MULTI_CPU"
    assert info["wrapped_model"] == "DistributedDataParallel"

    # Each rank played its share: whole seed groups (4 groups of 8 matches), interleaved, none split or repeated.
    played, cooperation = {}, {}
    for rank in (0, 1):
        with open(ranks / f"rollout-rank{rank}.pkl", "rb") as handle:
            records, results, learner_seats, groups = pickle.load(handle)
        rates = [
            r.metrics["cooperation_rate"][s] for r, seats in zip(results, learner_seats, strict=True) for s in seats
        ]
        cooperation[rank] = sum(rates) / len(rates)
        assert len(results) == 16 and sorted(set(groups)) == [rank, rank + 2]
        assert all(groups.count(group) == 8 for group in set(groups))
        played[rank] = [(r.action.prompt_ids, r.action.completion_ids) for r in records]
    assert played[0] != played[1]  # the ranks sample their own trajectories, not the same ones twice
    # The logged rollout metrics are the mean over both processes' matches, not process 0's alone.
    (logged,) = [e for e in json.loads((ranks / "info-ranks.json").read_text())["log_history"] if "loss" in e]
    assert logged["rollout/cooperation_rate"] == pytest.approx((cooperation[0] + cooperation[1]) / 2, abs=1e-9)

    source = ["--source", str(ranks)]
    _run([sys.executable, str(SCRIPT), "--mode", "single", *model, "--out", str(single), *source])
    _run([sys.executable, str(SCRIPT), "--mode", "single", *model, "--out", str(half), *source, "--ranks", "0"])
    update = torch.load(ranks / "update-ranks.pt")
    # Gradients averaged over ranks, each rank's loss normalised by the GLOBAL token count: the same update.
    assert _relative_error(update, torch.load(single / "update-single.pt")) < 1e-5
    # The check has teeth: rank 0's half of the batch alone gives a clearly different update.
    assert _relative_error(update, torch.load(half / "update-single.pt")) > 1e-2


@pytest.mark.slow
def test_two_machine_launch_on_localhost_update_equals_one_process_update(tmp_path, tiny_model_dir):
    # Two `accelerate launch` commands, one per "machine" (1 process each), meeting at 127.0.0.1 as two nodes would:
    # recipes/accelerate/multinode_ddp.yaml with --num_machines 2 and each its own --machine_rank.
    ranks, single = tmp_path / "ranks", tmp_path / "single"
    model, port = ["--model", str(tiny_model_dir)], str(free_port())
    nodes = [
        [*ACCELERATE, "--config_file", "recipes/accelerate/multinode_ddp.yaml", "--num_machines", "2",
         "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
         "--main_process_port", port, str(SCRIPT), "--mode", "ranks", *model, "--out", str(ranks)]
        for rank in (0, 1)
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launched = [
        subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for node in nodes
    ]
    outputs = [process.communicate(timeout=900)[0] for process in launched]
    assert [process.returncode for process in launched] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    info = json.loads((ranks / "coop_rl_run.json").read_text())
    assert (info["num_processes"], info["num_machines"], info["distributed_type"]) == (2, 2, "MULTI_CPU")
    _run([sys.executable, str(SCRIPT), "--mode", "single", *model, "--out", str(single), "--source", str(ranks)])
    assert _relative_error(torch.load(ranks / "update-ranks.pt"), torch.load(single / "update-single.pt")) < 1e-5


@pytest.mark.slow
def test_resume_with_another_number_of_processes(tmp_path, tiny_model_dir):
    # DDP: a checkpoint written by 2 processes resumes in 1, and one written by 1 resumes in 2 (the weights,
    # optimizer and the opponents' state are whole in every checkpoint; a missing rank's RNG state only warns).
    for first, then in (("ddp", "single"), ("single", "ddp")):
        out = tmp_path / f"{first}-then-{then}"
        _run(
            _launch(
                f"recipes/accelerate/{first}.yaml",
                *_train(tiny_model_dir, out, "--max_steps", "2", "--save_steps", "2"),
            )
        )
        resume = _train(
            tiny_model_dir,
            out,
            "--max_steps",
            "4",
            "--save_steps",
            "2",
            "--resume_from_checkpoint",
            str(out / "checkpoint-2"),
        )
        _run(_launch(f"recipes/accelerate/{then}.yaml", *resume))
        history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
        assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 3, 4]
        assert json.loads((out / "coop_rl_run.json").read_text())["num_processes"] == (2 if then == "ddp" else 1)


@pytest.mark.slow
@pytest.mark.parametrize("stage,lora", [(2, False), (2, True), (3, False)], ids=["zero2", "zero2-lora", "zero3"])
def test_accelerate_launch_deepspeed_trains_on_cpu(tmp_path, tiny_model_dir, stage, lora):
    out = tmp_path / "run"
    train = _train(tiny_model_dir, out, "--max_steps", "3", "--save_steps", "3")
    if lora:
        train += ["--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16", "--kl_coef", "0.05"]
    # ZeRO-3 shards the weights over two processes, whose matches end at different rounds (continuation 0.5): a
    # rollout on the sharded model needed every process to run each forward pass at once, and crashed.
    processes = 2 if stage == 3 else None
    if stage == 3:
        train += ["--game_params", '{"continuation": 0.5}']
    _run(_launch(f"recipes/accelerate/zero{stage}.yaml", *train, processes=processes))
    info = json.loads((out / "coop_rl_run.json").read_text())
    assert info["distributed_type"] == "DEEPSPEED" and info["deepspeed_zero_stage"] == stage
    assert info["num_processes"] == (processes or 1)
    assert info["wrapped_model"] == "DeepSpeedEngine"
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == [1, 2, 3]
    assert (out / "adapter_config.json").exists() == lora
    if lora:
        kl = [entry.get("loss/kl") for entry in state["log_history"] if "loss" in entry]
        assert len(kl) == 3 and all(value is not None and math.isfinite(value) for value in kl), kl  # every step
    # The trained policy plays as a player spec.
    from coop_rl.cli import main

    assert main(["play", "--game", "ipd", "--players", f"hf:{out},tft", "--matches", "4", "--rounds", "3"]) == 0


@pytest.mark.slow
def test_a_zero2_resume_brings_the_opponent_pool_back(tmp_path, tiny_model_dir):
    # DeepSpeed loads a checkpoint's weights without transformers' _load_from_checkpoint, where the pool was
    # restored: a ZeRO-2 resume started with an empty pool (pool size 1 at step 2, where an unbroken run has 2)
    out = tmp_path / "run"
    pool = ["--opponent", "pool", "--pool_every", "1", "--pool_prob", "1.0", "--save_steps", "1",
            # the recipe's accumulation and clipping reach DeepSpeed (the config once fixed them at 1 and 1.0)
            "--gradient_accumulation_steps", "2", "--max_grad_norm", "0.5"]  # fmt: skip
    _run(_launch("recipes/accelerate/zero2.yaml", *_train(tiny_model_dir, out, *pool, "--max_steps", "1")))
    resume = ["--max_steps", "2", "--resume_from_checkpoint", str(out / "checkpoint-1")]
    _run(_launch("recipes/accelerate/zero2.yaml", *_train(tiny_model_dir, out, *pool, *resume)))
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    sizes = [entry["rollout/pool_size"] for entry in state["log_history"] if "rollout/pool_size" in entry]
    assert sizes == [1, 2]  # with pool_every 1 each iteration adds the learner before its rollout


@pytest.mark.slow
def test_zero3_with_the_pool_opponent_is_refused_in_one_line(tmp_path, tiny_model_dir):
    # The pool's copies of the learner would be ZeRO-3's empty shards: refused when the trainer is built.
    train = _train(tiny_model_dir, tmp_path / "run", "--max_steps", "1", "--opponent", "pool")
    done = subprocess.run(_launch("recipes/accelerate/zero3.yaml", *train), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    refusals = [line for line in done.stderr.splitlines() if line.startswith("coop-rl: error: ")]
    assert refusals == [
        "coop-rl: error: opponent pool copies the learner's weights, which ZeRO-3 shards: use zero2, or another "
        "opponent"
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings,refusal",
    [
        (
            ["--use_peft", "true", "--seat_adapters", "true"],
            "seat_adapters trains on one process: its loss runs a forward pass per seat's adapter before one "
            "backward, which DDP and DeepSpeed refuse",
        ),
        (  # 3 seed groups: refused when the trainer is built, not mid-run at the first rollout
            ["--matches_per_iteration", "24", "--group_size", "8"],
            "3 seed groups (matches_per_iteration / group_size) cannot be split evenly over 2 processes: make them "
            "a multiple of the process count",
        ),
    ],
    ids=["seat_adapters", "odd_seed_groups"],
)
def test_what_two_processes_cannot_train_is_refused_in_one_line(tmp_path, tiny_model_dir, settings, refusal):
    train = _train(tiny_model_dir, tmp_path / "run", "--max_steps", "1", *settings)
    done = subprocess.run(_launch("recipes/accelerate/ddp.yaml", *train), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert {line for line in done.stderr.splitlines() if line.startswith("coop-rl: error: ")} == {
        f"coop-rl: error: {refusal}"
    }


@pytest.mark.slow
def test_coop_rl_train_under_two_process_ddp_ends_every_rank_cleanly(tmp_path, tiny_model_dir):
    # The user's path: `accelerate launch ... coop-rl train`. Both ranks must exit 0 (a rank left to the
    # interpreter's shutdown aborted in 8 of 30 runs, see coop_rl/distributed.py) with the policy saved once.
    out = tmp_path / "run"
    done = _run(_launch("recipes/accelerate/ddp.yaml", *_train(tiny_model_dir, out, "--max_steps", "2")))
    assert done.stdout.count(f"saved the trained policy to {out}") == 1  # the main process saves, and says so
    assert json.loads((out / "coop_rl_run.json").read_text())["num_processes"] == 2
    from coop_rl.cli import main

    assert main(["play", "--game", "ipd", "--players", f"hf:{out},tft", "--matches", "4", "--rounds", "3"]) == 0


def test_finish_distributed_run_returns_in_a_one_process_run():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from coop_rl.distributed import finish_distributed_run

    accelerator = Accelerator(cpu=True)
    try:
        assert accelerator.num_processes == 1
        assert finish_distributed_run(accelerator) is None  # still here: only a rank of several leaves the process
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # as accelerate's own tests do: no state leaks


def test_a_rank_that_exits_finishes_its_wandb_run_first(monkeypatch):
    # os._exit skips wandb's atexit hook (wandb is not installed here: a stand-in records the call)
    import types

    from coop_rl import distributed

    finished, exited = [], []
    stand_in = types.SimpleNamespace(run=object(), finish=lambda exit_code: finished.append(exit_code))
    monkeypatch.setitem(sys.modules, "wandb", stand_in)
    monkeypatch.setattr(distributed.os, "_exit", exited.append)
    distributed._exit_without_finalizing(3)
    assert (finished, exited) == ([3], [3])
