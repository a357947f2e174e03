"""Crash and resume: `coop-rl train` killed with SIGKILL at a random point after its first checkpoint, then resumed
from the latest complete checkpoint, ends where an uninterrupted run ends, with its optimizer state, its opponent
pool and one intact trajectory file per iteration.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "ipd" / "aa_tiny.yaml"
TRAJECTORY_KEYS = {"iteration", "match_id", "seat", "timestep", "phase", "text", "valid", "credit", "reward"}


def _argv(tiny_model_dir, out):
    return [sys.executable, "-m", "coop_rl", "train", "--config", str(RECIPE), "--matches_per_iteration", "16",
            "--max_steps", "6", "--save_steps", "2", "--model_name_or_path", str(tiny_model_dir),
            "--output_dir", str(out), "--opponent", "pool", "--pool_every", "1", "--logging_steps", "1"]  # fmt: skip


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _complete_checkpoints(out: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))


def _read_trajectories(out: Path) -> tuple[dict[str, list[dict]], list[str]]:
    """(the trajectory files, each line parsed as JSON; the names of temporary files)."""
    files, temporary = {}, []
    for path in sorted((out / "trajectories").iterdir()):
        if path.name.startswith("."):
            temporary.append(path.name)
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        files[path.name] = [json.loads(line) for line in lines]  # every line is valid JSON
    return files, temporary


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume(tmp_path, tiny_model_dir):
    seed = int(os.environ.get("COOP_RL_CRASH_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    out, cwd = tmp_path / "run", tmp_path / "cwd"
    cwd.mkdir()
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_argv(tiny_model_dir, out), cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while 2 not in _complete_checkpoints(out):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        # A random point after checkpoint-2: right away, or once a later iteration's file or checkpoint appears,
        # plus a random delay of up to 0.3 s.
        marks = [None, "trajectories/iteration-000003.jsonl", "trajectories/iteration-000004.jsonl",
                 "checkpoint-4/trainer_state.json", "trajectories/iteration-000005.jsonl"]  # fmt: skip
        mark = rng.choice(marks)
        while mark is not None and not (out / mark).exists() and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.3))
        killed_while_running = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        log.close()
    print(f"crash seed {seed}: kill after {mark}, killed while running: {killed_while_running}")

    latest = _complete_checkpoints(out)[-1]
    before, temporary = _read_trajectories(out)
    assert all(name.endswith(".tmp") for name in temporary)  # at most a write the kill interrupted
    written = sorted(before)
    assert written == [f"iteration-{i:06d}.jsonl" for i in range(1, len(written) + 1)]
    assert len(written) >= latest  # every iteration up to the checkpoint has its file

    log = (tmp_path / "resume.log").open("w")
    resumed = subprocess.run(
        [*_argv(tiny_model_dir, out), "--resume_from_checkpoint", str(out / f"checkpoint-{latest}")],
        cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT, timeout=600,
    )  # fmt: skip
    log.close()
    assert resumed.returncode == 0, (tmp_path / "resume.log").read_text()[-3000:]

    last = _complete_checkpoints(out)[-1]
    assert last == 6
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    optimizer = torch.load(out / "checkpoint-6" / "optimizer.pt", weights_only=False)
    assert optimizer["state"] and all(int(s["step"]) == 6 for s in optimizer["state"].values())
    pool = torch.load(out / "checkpoint-6" / "coop_rl_pool.pt", weights_only=False)
    assert len(pool["pool"]) == 6  # `latest` entries restored + one per resumed iteration (pool_every 1)
    assert all(torch.isfinite(t).all() for entry in pool["pool"] for t in entry.values())

    after, temporary = _read_trajectories(out)
    assert sorted(after) == [f"iteration-{i:06d}.jsonl" for i in range(1, 7)] and temporary == []
    for name, rows in after.items():
        iteration = int(name[len("iteration-") : -len(".jsonl")])
        assert rows and all(set(row) == TRAJECTORY_KEYS and row["iteration"] == iteration for row in rows)
        assert {row["match_id"] for row in rows} == set(range(16))
        assert all(row["phase"] == "action" and isinstance(row["valid"], bool) for row in rows)
    for i in range(1, latest + 1):  # the files of the checkpointed iterations were not touched by the resume
        name = f"iteration-{i:06d}.jsonl"
        assert after[name] == before[name]
    assert list(cwd.iterdir()) == []  # nothing written outside output_dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "first.log", "resume.log", "run"]
