"""Players: who sits in a seat. :func:`make_player` turns a command-line spec into a :class:`Player`.

Specs: a scripted strategy name (``tft``, ``greedy``, ...), ``axelrod:<StrategyName>``,
``hf:<model_dir>[@<adapter_dir>]`` (transformers), ``vllm:<model_dir>[@<adapter_dir>]`` (a vLLM engine),
``openai:<model>@<base_url>`` (an OpenAI-compatible server; key from ``OPENAI_API_KEY``). Model backends are
imported lazily so that scripted play never imports torch.
"""

from __future__ import annotations

from typing import Any

from coop_rl.config_checks import url_problem
from coop_rl.players.base import Action, Player, PlayerSpecError, TurnRequest
from coop_rl.players.sampling import SamplingConfig
from coop_rl.players.scripted import ScriptedPlayer

MODEL_PREFIXES = ("hf:", "vllm:", "openai:")


def _backend(spec: str) -> str | None:
    """The model backend a stripped spec names ("hf", "vllm" or "openai"), or None for a scripted strategy."""
    if not spec:
        raise PlayerSpecError("empty player spec")
    prefix = spec.split(":", 1)[0] + ":"
    return prefix[:-1] if prefix in MODEL_PREFIXES else None


def make_player(
    spec: str,
    game_name: str,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    constrain: bool | None = None,
    vllm_options: dict[str, Any] | None = None,
) -> Player:
    """Build the player a spec names, for a game (scripted strategies are per game).

    ``sampling`` (temperature, top_p, max_new_tokens) and ``seed`` apply to model players; ``constrain`` to local
    models (hf, vllm): True restricts answers to the game's declared answer sets, None follows the policy folder.
    ``vllm_options`` go to a ``vllm:`` spec's engine if this call starts it (e.g. ``gpu_memory_utilization``).
    A local policy whose ``sampling`` is None or names no ``max_new_tokens`` answers at the length it was trained
    with on this game (:class:`~coop_rl.policy_folder.PolicyFolder`), else at ``DEFAULT_MAX_NEW_TOKENS``.
    """
    spec = spec.strip()
    backend = _backend(spec)
    if sampling is None and backend in ("hf", "vllm"):  # a local policy: at the length it was trained with
        sampling = SamplingConfig(max_new_tokens=None)
    if sampling is not None and sampling.max_new_tokens is None:
        sampling = _with_answer_length(spec, sampling, game_name)
    if backend == "openai":
        return _make_openai_player(spec, sampling)
    if backend == "hf":
        from coop_rl.players.hf import HFPlayer

        return HFPlayer(spec, sampling=sampling, seed=seed, constrain=constrain)
    if backend == "vllm":
        from coop_rl.players.vllm_player import VLLMPlayer  # imports vllm itself only when an engine starts

        return VLLMPlayer(spec, sampling=sampling, seed=seed, constrain=constrain, **(vllm_options or {}))
    return ScriptedPlayer(spec, game_name)


def _with_answer_length(spec: str, sampling: SamplingConfig, game: str) -> SamplingConfig:
    """``sampling`` with the answer length a local policy was trained with on ``game``, else the default."""
    import dataclasses

    from coop_rl.players.sampling import DEFAULT_MAX_NEW_TOKENS

    return dataclasses.replace(sampling, max_new_tokens=trained_answer_length(spec, game) or DEFAULT_MAX_NEW_TOKENS)


def trained_answer_length(spec: str, game: str) -> int | None:
    """The answer length a local policy (``hf:``, ``vllm:``) was trained with on ``game``, as its folder records
    (another game's answers are another length); None for any other player or folder."""
    spec = spec.strip()
    backend = _backend(spec)
    if backend not in ("hf", "vllm"):
        return None
    from coop_rl.policy_folder import parse_policy_spec

    folder = parse_policy_spec(spec, backend)
    return folder.max_new_tokens if folder.settings().get("game") == game else None


def check_player_spec(spec: str, game_name: str) -> None:
    """What :func:`make_player` checks before it loads anything (a :class:`PlayerSpecError`): the strategy's name,
    a model spec's folders, an ``openai:`` spec's form. For configs checked before a run loads its weights."""
    from coop_rl.policy_folder import parse_policy_spec

    spec = spec.strip()
    backend = _backend(spec)
    if backend == "openai":
        parse_openai_spec(spec)
    elif backend is not None:
        parse_policy_spec(spec, backend)
    else:
        ScriptedPlayer(spec, game_name)


def parse_openai_spec(spec: str) -> tuple[str, str]:
    """``openai:<model>@<base_url>`` -> (model, base_url); a malformed spec raises :class:`PlayerSpecError`."""
    rest = spec.strip()[len("openai:") :]
    model, at, base_url = rest.partition("@")
    model, base_url = model.strip(), base_url.strip()
    usage = "expected openai:<model>@<base_url>, e.g. openai:Qwen2.5-72B@http://127.0.0.1:8000/v1"
    if not at:
        raise PlayerSpecError(f"bad player spec {spec!r}: no '@' before the server URL; {usage}")
    if not model:
        raise PlayerSpecError(f"bad player spec {spec!r}: empty model name; {usage}")
    if not base_url.startswith(("http://", "https://")) or len(base_url.split("://", 1)[1]) == 0:
        raise PlayerSpecError(f"bad player spec {spec!r}: the server URL must start with http:// or https://; {usage}")
    problem = url_problem(base_url)
    if problem:
        raise PlayerSpecError(f"bad player spec {spec!r}: {problem}; {usage}")
    return model, base_url


def _make_openai_player(spec: str, sampling: SamplingConfig | None) -> Player:
    model, base_url = parse_openai_spec(spec)
    from coop_rl.players.openai_player import OpenAIPlayer, redact_url

    options = {}
    if sampling is not None:
        options = dict(temperature=sampling.temperature, top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens)
    return OpenAIPlayer(model, base_url, spec=f"openai:{model}@{redact_url(base_url)}", **options)


__all__ = [
    "Action", "Player", "PlayerSpecError", "SamplingConfig", "TurnRequest", "check_player_spec", "make_player",
    "trained_answer_length",
]  # fmt: skip
