"""The checks of a training configuration that read its values alone (:class:`coop_rl.aa_config.AAConfig` calls
them): types of YAML values, numeric lower bounds, tracker names and vLLM server URLs; and what the launch rules out
(:func:`check_processes`, which the trainer calls). Each raises ValueError in one line that names the setting."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import fields
from typing import Any

# (field, lower bound, strict): numeric settings outside these are rejected with the field's name.
LOWER_BOUNDS = (
    ("beta", 0.0, False),
    ("reward_scale", 0.0, True),
    ("temperature", 0.0, False),
    ("max_new_tokens", 1, False),
    ("lora_r", 1, False),
    ("lora_alpha", 0.0, True),
    ("lora_dropout", 0.0, False),
    ("pool_size", 1, False),
    ("pool_every", 1, False),
    ("is_clip", 1.0, False),  # below 1 it would scale down even the first pass, where pi_theta / pi_sampler = 1
    ("ppo_clip", 0.0, True),
    ("num_iterations", 1, False),
    ("kl_coef", 0.0, False),
    ("entropy_coef", 0.0, False),
    ("invalid_penalty", 0.0, False),
    ("play_eval_every", 0, False),
    ("play_eval_matches", 1, False),
    ("max_consecutive_faults", 1, False),
    # transformers' own settings that it does not check (a negative learning rate failed in the optimizer)
    ("learning_rate", 0.0, False),
    ("adam_epsilon", 0.0, False),
    ("dataloader_num_workers", 0, False),
    ("weight_decay", 0.0, False),
    ("max_grad_norm", 0.0, False),
    ("warmup_steps", 0, False),
    ("gradient_accumulation_steps", 1, False),
    ("logging_steps", 0, True),
    ("save_steps", 0, True),
)


MAX_SEED = 2**32 - 1  # numpy's and transformers' set_seed bound
MAX_MATCHES = 1_000_000  # the most matches one command or iteration plays (their results stay in memory)

# (field, low, low included, high, high included): settings bounded on both sides; None values are left unset.
RANGES = (
    ("gamma", 0.0, False, 1.0, True),
    ("gamma_a", 0.0, False, 1.0, True),
    ("pool_prob", 0.0, True, 1.0, True),
    ("top_p", 0.0, False, 1.0, True),
    ("lora_dropout", 0.0, True, 1.0, False),
    ("vllm_gpu_memory_utilization", 0.0, False, 1.0, True),
    ("adam_beta1", 0.0, True, 1.0, False),  # torch's Adam refuses others, once the weights are loaded
    ("adam_beta2", 0.0, True, 1.0, False),
    ("seed", 0, True, MAX_SEED, True),
    ("matches_per_iteration", 1, True, MAX_MATCHES, True),
)


def check_ranges(config: Any) -> None:
    """Every setting of :data:`RANGES` inside its interval (checked before any model loads: a seed of -1 or a
    dropout of 1.5 failed only in the libraries, after the weights were read)."""
    for name, low, low_in, high, high_in in RANGES:
        value = getattr(config, name)
        if value is None:
            continue
        inside = finite(value) and (low <= value if low_in else low < value)
        inside = inside and (value <= high if high_in else value < high)
        if not inside:
            interval = f"{'[' if low_in else '('}{_number(low)}, {_number(high)}{']' if high_in else ')'}"
            raise ValueError(f"{name}={value}: must be in {interval}")


def finite(value: float) -> bool:
    """Not NaN or infinite; an int always is (math.isfinite overflows on one of 400 digits)."""
    return isinstance(value, int) or math.isfinite(value)


def _number(value: float) -> str:
    """A bound as a person writes it: 1, not 1.0; 4294967295, not 4.29e+09."""
    return str(int(value)) if float(value).is_integer() else str(value)


def check_trackers(report_to: list[str] | str | None) -> None:
    """Every name of ``report_to`` is a tracker transformers knows (it says so only when the trainer is built)."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else report_to or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"report_to={report_to!r}: expected a tracker's name or a list of them")
    unknown = [name for name in names if name not in INTEGRATION_TO_CALLBACK and name not in ("all", "none")]
    if unknown:
        raise ValueError(f"report_to={unknown[0]!r}: expected none, all or one of {', '.join(INTEGRATION_TO_CALLBACK)}")


def server_urls(value: object) -> list[str] | None:
    """``rollout_servers`` as a list of URLs: a YAML list or a comma-separated string (the command line gives a list
    of one such string); anything but http(s) URLs is refused."""
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list) and all(isinstance(item, str) for item in items):
        items = [url.strip() for item in items for url in item.split(",") if url.strip()]
        if all(url.startswith(("http://", "https://")) for url in items):
            problems = [(url, url_problem(url)) for url in items]
            bad = next(((url, problem) for url, problem in problems if problem), None)
            if bad:
                raise ValueError(f"rollout_servers: {bad[0]}: {bad[1]}")
            return items or None
    if value is None:
        return None
    raise ValueError(f"rollout_servers={items!r}: expected a list of http:// or https:// URLs")


def url_problem(url: str) -> str | None:
    """What makes ``url`` (http or https) unusable as a server address, or None: the HTTP client would raise on it
    at the first request, or retry a port that cannot exist as if the server were down."""
    from urllib.parse import urlsplit

    if any(c.isspace() for c in url):
        return "the server URL holds a space"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError: not a number, or outside 0..65535
    except ValueError as error:
        return f"the server URL is malformed ({error})"
    if not parts.hostname:
        return "the server URL names no host"
    if port == 0:
        return "the server URL's port must be 1 to 65535"
    return None


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def check_types(config: Any) -> None:
    """YAML values reach the dataclass unconverted: check every field of a plain type (int, float, str, bool).

    Integers are accepted for float fields (and converted); booleans are not accepted as numbers.
    """
    hints = typing.get_type_hints(type(config))
    for item in fields(config):
        hint = hints.get(item.name)
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        options = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
        optional = union and type(None) in typing.get_args(hint)
        if not options or not all(o in _TYPE_NAMES for o in options):
            continue
        value = getattr(config, item.name)
        if value is None and optional:
            continue
        if isinstance(value, bool):
            ok = bool in options
        elif isinstance(value, int):
            ok = int in options or float in options
            if ok and int not in options:
                setattr(config, item.name, float(value))
        else:
            ok = any(isinstance(value, o) for o in options)
        if not ok:
            expected = " or ".join(_TYPE_NAMES[o] for o in options) + (" or null" if optional else "")
            raise ValueError(f"{item.name}={value!r}: expected {expected}, got {type(value).__name__}")


def check_processes(config: Any, num_processes: int, zero_stage: int | None) -> None:
    """What the launch (its process count, its ZeRO stage) rules out, checked when the trainer is built: a
    ValueError naming the setting, before any rollout."""
    if zero_stage == 3 and config.opponent == "pool":  # the pool's copies would be ZeRO-3's empty shards
        raise ValueError(
            "opponent pool copies the learner's weights, which ZeRO-3 shards: use zero2, or another opponent"
        )
    if num_processes == 1:
        return
    if config.seat_adapters:  # DDP's reducer marks a weight ready once per backward, and one runs per seat here
        raise ValueError(
            "seat_adapters trains on one process: its loss runs a forward pass per seat's adapter before one "
            "backward, which DDP and DeepSpeed refuse"
        )
    num_groups = config.matches_per_iteration // config.group_size
    if num_groups % num_processes:  # each process plays whole seed groups: the baseline needs them
        raise ValueError(
            f"{num_groups} seed groups (matches_per_iteration / group_size) cannot be split evenly over "
            f"{num_processes} processes: make them a multiple of the process count"
        )
    engines = [spec for spec in config.played_specs() if spec.startswith("vllm:")]
    if engines:  # a second engine in a rank's process would start on the first GPU, whatever the rank's device
        raise ValueError(f"{engines[0]}: vllm: opponents need one process; under several, serve them as openai: specs")
