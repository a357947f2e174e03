"""Small helpers shared by the tests: drive a game with scripted strategies, without the runner."""

from __future__ import annotations

import random

from coop_rl.envs import make_game, make_strategy
from coop_rl.envs.base import TextGame


def play_scripted(game_name: str, names: list[str], seed: int = 0, **params) -> TextGame:
    """Play one match of ``game_name`` between scripted strategies and return the finished game."""
    game = make_game(game_name, **params)
    strategies = [make_strategy(game_name, name) for name in names]
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
