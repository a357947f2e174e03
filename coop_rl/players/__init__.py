"""Players: who sits in a seat. :func:`make_player` turns a command-line spec into a :class:`Player`.

Specs: a scripted strategy name (``tft``, ``greedy``, ...), ``axelrod:<StrategyName>``. Model backends are
imported lazily so that scripted play never imports torch.
"""

from __future__ import annotations

from coop_rl.players.base import Action, Player, PlayerSpecError, TurnRequest
from coop_rl.players.scripted import ScriptedPlayer

MODEL_PREFIXES = ("hf:", "vllm:", "openai:")


def make_player(spec: str, game_name: str) -> Player:
    """Build the player a spec names, for a game (scripted strategies are per game)."""
    spec = spec.strip()
    if not spec:
        raise PlayerSpecError("empty player spec")
    if spec.startswith(MODEL_PREFIXES):
        prefix = spec.split(":", 1)[0]
        raise PlayerSpecError(f"player backend {prefix!r} is not available in this build")
    return ScriptedPlayer(spec, game_name)


__all__ = ["Action", "Player", "PlayerSpecError", "TurnRequest", "make_player"]
