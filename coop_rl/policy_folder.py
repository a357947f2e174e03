"""The policy folder: what a trained or served policy's directory holds, and how a player spec names one.

A policy folder is either

* a full model: ``config.json`` and the weights (``coop-rl init-model``, a merged or fully fine-tuned policy), or
* a peft adapter: ``adapter_config.json`` (whose ``base_model_name_or_path`` names the local base model folder)
  and the adapter weights, as a LoRA run saves it;

and, beside either, optionally the policy settings file :data:`POLICY_SETTINGS_FILE` (``coop_rl_policy.json``):
how the policy must be played to be the policy it was trained as, e.g. ``{"constrain_answers": true, "game": "ipd",
"max_new_tokens": 4}`` (answers restricted to the game's declared choices, at most 4 tokens unless the caller says
otherwise). A folder without it is played with the defaults.

A local model spec names a policy as ``<backend>:<model_dir>[@<adapter_dir>]`` (``hf:``, ``vllm:``): the model
directory may itself be an adapter folder (its base is then read from its config), or a base model with an
explicit adapter after ``@``. Every backend parses it with :func:`parse_policy_spec`. Errors are
:class:`~coop_rl.players.base.PlayerSpecError` (a user error: exit status 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from coop_rl.atomic_files import write_text_atomic
from coop_rl.players.base import PlayerSpecError

POLICY_SETTINGS_FILE = "coop_rl_policy.json"


def read_policy_settings(directory: Path) -> dict[str, Any]:
    """Settings a trainer saved beside a policy (e.g. that its answers are constrained); {} when none."""
    path = Path(directory) / POLICY_SETTINGS_FILE
    try:
        settings = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        raise PlayerSpecError(f"unreadable {path}") from None
    if not isinstance(settings, dict):
        raise PlayerSpecError(f"unreadable {path}: not a JSON object")
    return settings


def write_policy_settings(directory: Path, settings: dict[str, Any]) -> Path:
    """Write ``settings`` as the policy settings file of ``directory`` (what :func:`read_policy_settings` reads)."""
    path = Path(directory) / POLICY_SETTINGS_FILE
    return write_text_atomic(path, json.dumps(settings, indent=2) + "\n")


def resolve_model_dir(path: str) -> tuple[Path, Path | None]:
    """(base model dir, adapter dir or None) for ``model_dir`` or a peft adapter dir (as a trainer saves it)."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise PlayerSpecError(f"model directory not found: {path}")
    if (directory / "config.json").exists():
        _check_config_file(directory / "config.json")
        if not has_weights(directory):  # else transformers and vLLM fail with a traceback, vLLM in its own process
            raise PlayerSpecError(f"{path} holds a model config but no weights ({', '.join(WEIGHT_FILES)})")
        return directory.resolve(), None
    adapter_config = directory / "adapter_config.json"
    if adapter_config.exists():
        try:
            base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        except (KeyError, TypeError, ValueError, OSError):  # TypeError: JSON that is not an object
            base = None
        if not isinstance(base, str) or not base.strip():
            raise PlayerSpecError(f"{adapter_config} names no base model (base_model_name_or_path)")
        base_dir = Path(base)
        if not (base_dir / "config.json").exists():
            raise PlayerSpecError(f"adapter {path} needs base model {base}, which is not a local model directory")
        return base_dir.resolve(), directory.resolve()
    raise PlayerSpecError(f"{path} holds neither a model (config.json) nor a peft adapter (adapter_config.json)")


#: the files a model's weights may lie in (vLLM's patterns): one of them must be beside its config.json
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")


def has_weights(directory: Path) -> bool:
    """Whether ``directory`` holds a weights file (:data:`WEIGHT_FILES`)."""
    return any(next(Path(directory).glob(pattern), None) for pattern in WEIGHT_FILES)


def _check_config_file(path: Path) -> None:
    """A model's config.json is a JSON object (transformers and vLLM fail with a traceback on anything else)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PlayerSpecError(f"cannot read the model config in {path.parent}: {error}".splitlines()[0]) from None
    if not isinstance(config, dict):
        kind = type(config).__name__
        raise PlayerSpecError(
            f"cannot read the model config in {path.parent}: config.json holds a {kind}, not an object"
        )


class PolicyFolder(NamedTuple):
    """A policy a spec names: its base model folder and, for a LoRA policy, its adapter folder.

    A tuple, so ``base_dir, adapter_dir = folder`` unpacks it."""

    base_dir: Path
    adapter_dir: Path | None

    @property
    def path(self) -> Path:
        """The folder that holds the policy (and its settings file): the adapter's, else the base model's."""
        return self.adapter_dir or self.base_dir

    def settings(self) -> dict[str, Any]:
        """The policy settings saved in :attr:`path` ({} when none)."""
        return read_policy_settings(self.path)

    @property
    def constrain_answers(self) -> bool:
        """Whether the policy was trained (or marked) to answer only the game's declared choices."""
        return bool(self.settings().get("constrain_answers", False))

    @property
    def max_new_tokens(self) -> int | None:
        """The longest answer the policy was trained to give (None: not recorded)."""
        value = self.settings().get("max_new_tokens")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def parse_policy_spec(spec: str, backend: str) -> PolicyFolder:
    """``<backend>:<model_dir>[@<adapter_dir>]`` -> its :class:`PolicyFolder`; the directories are checked.

    The prefix is optional (a bare ``<model_dir>[@<adapter_dir>]`` is read the same way). ``model_dir`` may be an
    adapter folder; giving an adapter after an adapter folder is an error."""
    body = spec.strip()
    body = body[len(backend) + 1 :] if body.startswith(f"{backend}:") else body
    model_path, at, adapter_path = body.partition("@")
    model_path = model_path.strip()
    if not model_path or (at and not adapter_path.strip()):
        raise PlayerSpecError(f"malformed spec {spec!r}: expected {backend}:<model_dir>[@<adapter_dir>]")
    base_dir, adapter_dir = resolve_model_dir(model_path)
    if adapter_path:
        if adapter_dir is not None:
            raise PlayerSpecError(f"{model_path} is itself an adapter; give {backend}:<base>@<adapter>")
        if not (Path(adapter_path) / "adapter_config.json").exists():
            raise PlayerSpecError(f"adapter directory not found or not a peft adapter: {adapter_path}")
        adapter_dir = Path(adapter_path).resolve()
    return PolicyFolder(base_dir, adapter_dir)


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Every tensor's shape in a safetensors file, from its header alone (8 bytes of length, then JSON); a
    PlayerSpecError for a file that is not one (cut short, a header longer than the file, not a mapping)."""
    import struct

    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                raise ValueError("the header runs past the end of the file")
            header = json.loads(handle.read(length))
        return {name: list(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
    except (struct.error, ValueError, AttributeError, KeyError, TypeError):  # cut short, or not a tensor mapping
        raise PlayerSpecError(f"{path} is not a readable safetensors file") from None


def adapter_misfit(adapter_dir: Path, base_dir: Path) -> str | None:
    """The first LoRA weight of ``adapter_dir`` whose shape does not fit ``base_dir``'s layer (an adapter of another
    base model), as ``"<layer>: lora_A [4, 64] against [128, 128]"``; None when all fit. Read from the safetensors
    headers: no weights load. vLLM pads a smaller adapter with zeros and serves it without a word."""
    import re

    adapter_file = Path(adapter_dir) / "adapter_model.safetensors"
    if not adapter_file.exists():
        return None
    base: dict[str, list[int]] = {}
    for weights in sorted(Path(base_dir).glob("*.safetensors")):
        base.update(_tensor_shapes(weights))
    for name, shape in _tensor_shapes(adapter_file).items():
        match = re.fullmatch(r"base_model\.model\.(.+)\.(lora_[AB])\.weight", name)
        layer = base.get(f"{match[1]}.weight") if match else None
        if layer is None or len(shape) != 2 or len(layer) != 2:  # not a LoRA matrix of a known layer
            continue
        if (match[2] == "lora_A" and shape[1] != layer[1]) or (match[2] == "lora_B" and shape[0] != layer[0]):
            return f"{match[1]}: {match[2]} {shape} against {layer}"
    return None


__all__ = [
    "POLICY_SETTINGS_FILE",
    "PolicyFolder",
    "adapter_misfit",
    "parse_policy_spec",
    "read_policy_settings",
    "resolve_model_dir",
    "write_policy_settings",
]
