"""The embedded tiny model: built fully offline by ``coop-rl init-model tiny --out DIR``.

Three steps, each with the ecosystem's own tools:
1. a byte-level BPE tokenizer (``tokenizers``) trained on the games' own text, wrapped as a
   ``PreTrainedTokenizerFast`` with a ChatML chat template;
2. a small Qwen2-architecture causal LM (head_dim 32 so vLLM can serve it) from random initialisation;
3. a short warm start with TRL's ``SFTTrainer`` on transcripts of a population of classic strategies (for the
   IPD: allc, alld, tft, stft, wsls, random; similar mixes for the other games), the stand-in for the prior a
   pretrained LLM brings. From random initialisation a model cannot tell game states apart and collapses to
   defection under any credit (docs/algorithm.md); after this warm start it answers validly, reads the history,
   and is unbiased overall (cooperation near 0.5 in the IPD), which is where Advantage Alignment can start.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("coop_rl.tiny_model")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

#: the population each game's warm start imitates (scripted strategy names), how many matches to record, and the
#: warm-start phase: phase 1 (long prompts and answers: chat, proposals) before phase 2 (the matrix games), so that
#: the IPD's state-dependent behaviour is what the model fits last and best. Within a phase, batches are sampled at
#: random: length-sorted batches of the IPD are all first rounds or all later rounds, and such unmixed batches
#: kept the model from learning to read the co-player's move (measured: one action distribution in every state).
POPULATIONS: dict[str, dict[str, Any]] = {
    "ipd": {"strategies": ["allc", "alld", "tft", "stft", "wsls", "random"], "matches": 360, "phase": 2},
    "bos": {"strategies": ["allc", "alld", "tft", "stft", "wsls", "random"], "matches": 72, "phase": 2},
    "tas": {"strategies": ["greedy", "honest", "fair"], "matches": 18, "phase": 1},
    "split": {"strategies": ["greedy", "fair"], "matches": 16, "phase": 1},
    "spgg": {"strategies": ["free_rider", "full", "conditional"], "matches": 162, "phase": 1, "params": {"rounds": 2}},
}


@dataclass
class TinyModelConfig:
    """Sizes and warm-start settings of the tiny model (the defaults are what ``init-model tiny`` builds)."""

    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4  # head_dim = 32: vLLM's CPU attention needs head_dim >= 32
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    #: epochs of each warm-start phase (1: negotiation and public goods, 2: the matrix games, trained last)
    sft_epochs: tuple[float, ...] = (1.0, 3.0)
    #: games whose scripted populations the warm start imitates. The matrix games by default: a warm start
    #: that makes the tiny model answer the long negotiation prompts validly needs far more compute than this
    #: offline build's budget, and training on them before the IPD measurably blurs its reading of the history.
    games: tuple[str, ...] = ("ipd", "bos")
    sft_learning_rate: float = 1e-3
    sft_batch_size: int = 64
    seed: int = 0
    #: scale the number of recorded matches (tests use a smaller corpus)
    data_scale: float = 1.0
    #: warm-start precision: auto (the machine's choice, coop_rl.precision), float32 or bfloat16
    precision: str = "auto"


def collect_examples(
    seed: int = 0, scale: float = 1.0, games: tuple[str, ...] = tuple(POPULATIONS)
) -> list[dict[str, Any]]:
    """Prompt/completion examples from scripted matches of every game: what each seat saw and answered.

    Every pair of the game's population (both orders, self-play included) plays the same number of matches, so
    the examples are a balanced mixture of the population's behaviour in every state.
    """
    from coop_rl.players.scripted import ScriptedPlayer
    from coop_rl.runner import TurnRecord, run_matches

    examples: list[dict[str, Any]] = []
    for game_name in games:
        population = POPULATIONS[game_name]
        names = population["strategies"]
        pairs = [(a, b) for a in names for b in names]
        per_pair = max(1, round(population["matches"] * scale / len(pairs)))
        players = {name: ScriptedPlayer(name, game_name) for name in names}
        for index, (a, b) in enumerate(pairs):
            seats = [players[a], players[b]]
            params = dict(population.get("params", {}))
            if game_name == "spgg":  # three seats: the third is drawn from the population too
                seats.append(players[names[index % len(names)]])
                params["players"] = 3

            turns: list[TurnRecord] = []
            run_matches(game_name, params, seats, matches=per_pair, seed=seed * 7919 + index, on_turns=turns.extend)
            examples += [
                {
                    "prompt": turn.messages,
                    "completion": [{"role": "assistant", "content": turn.action.text}],
                    "game": game_name,
                    "phase": population["phase"],
                }
                for turn in turns
            ]
    random.Random(seed).shuffle(examples)
    return examples


def corpus_fingerprint(examples: list[dict[str, Any]]) -> str:
    """sha256 of the warm-start corpus (every prompt and answer): a model built from other game texts (an older
    prompt format, say) is stale, and ``coop-rl demo`` rebuilds it."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(examples, sort_keys=True).encode("utf-8")).hexdigest()


def _corpus(examples: list[dict[str, Any]]):
    for example in examples:
        for message in example["prompt"] + example["completion"]:
            yield message["role"] + "\n" + message["content"]


def build_tokenizer(examples: list[dict[str, Any]], vocab_size: int):
    """A byte-level BPE over the games' text: any string can be encoded (no unknown token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(examples), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        padding_side="left",
        model_max_length=2048,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(tokenizer, config: TinyModelConfig):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(config.seed)
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(model_config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=1.0
    )
    return model


def warm_start(model, tokenizer, examples: list[dict[str, Any]], config: TinyModelConfig, work_dir: Path) -> dict:
    """Imitate the population with TRL's SFTTrainer, phase by phase: loss on the completion (the answer) only.

    Precision is the machine's choice (:mod:`coop_rl.precision`), never SFTConfig's default of bf16, which is
    emulated and several times slower on a CPU without native bf16.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from coop_rl.precision import choose_precision, precision_record

    precision = choose_precision("cpu", config.precision, width=config.hidden_size)
    stats: dict[str, Any] = {"steps": 0, "train_loss": {}, "precision": precision_record(precision)}
    for phase in sorted({e["phase"] for e in examples}):
        rows = [{"prompt": e["prompt"], "completion": e["completion"]} for e in examples if e["phase"] == phase]
        args = SFTConfig(
            output_dir=str(work_dir / f"phase{phase}"),
            num_train_epochs=config.sft_epochs[phase - 1],
            per_device_train_batch_size=config.sft_batch_size,
            learning_rate=config.sft_learning_rate,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=0.05,
            # From random initialisation the first gradients are large; clipping them to 1 (the default) slows
            # the warm start several-fold for no stability gain on a model this small.
            max_grad_norm=10.0,
            weight_decay=0.0,
            max_length=config.max_position_embeddings,
            completion_only_loss=True,
            logging_steps=25,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=precision.bf16,
            # SFTConfig turns gradient checkpointing on; a 0.5M-parameter model's activations are small, and
            # recomputing them cost a third of each step (profiled).
            gradient_checkpointing=False,
            seed=config.seed + phase,
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        result = trainer.train()
        stats["steps"] += result.global_step
        stats["train_loss"][f"phase{phase}"] = result.training_loss
    return stats


def init_tiny_model(out_dir: str | Path, config: TinyModelConfig | None = None) -> Path:
    """Build tokenizer + model, warm-start it, and ``save_pretrained`` both into ``out_dir``."""
    import tempfile
    import time

    config = config or TinyModelConfig()
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "coop_rl_tiny.json").exists())):
        raise FileExistsError(f"{out} exists and is not a tiny model built by coop-rl; choose another --out")
    started = time.perf_counter()
    unknown = sorted(set(config.games) - set(POPULATIONS))
    if unknown:
        raise ValueError(f"no warm-start population for game {unknown[0]!r}; known: {', '.join(POPULATIONS)}")
    # The tokenizer learns every game's text (so any game's prompt encodes compactly); the warm start imitates
    # the populations of ``config.games`` only.
    examples = collect_examples(config.seed, config.data_scale)
    logger.info("recorded %d scripted turns", len(examples))
    fingerprint = corpus_fingerprint(examples)  # the tokenizer's corpus: every game's text
    tokenizer = build_tokenizer(examples, config.vocab_size)
    examples = [example for example in examples if example["game"] in config.games]
    model = build_model(tokenizer, config)
    with tempfile.TemporaryDirectory(prefix="coop_rl_sft_") as work_dir:
        stats = warm_start(model, tokenizer, examples, config, Path(work_dir))
    info = {
        "kind": "coop-rl tiny",
        "examples": len(examples),
        "corpus_sha256": fingerprint,
        "seconds": round(time.perf_counter() - started, 1),
        **vars(config),
        **stats,  # after the config: "precision" is the resolved choice, not the requested "auto"
    }
    return _save_model_atomically(out, model, tokenizer, info)


def _save_model_atomically(
    out: Path,
    model: Any,
    tokenizer: Any,
    info: dict[str, Any],
    info_file: str = "coop_rl_tiny.json",
    extra_files: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Save under a temporary name and rename, so an interrupted build never leaves a half-saved model at ``out``.

    ``info`` goes to ``info_file`` (JSON) and each of ``extra_files`` (name -> JSON object) beside the weights.
    """
    import json
    import os
    import shutil

    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        for name, content in (extra_files or {}).items():
            (partial / name).write_text(json.dumps(content, indent=2) + "\n")
        (partial / info_file).write_text(json.dumps(info, indent=2))
    except BaseException:  # interrupted or failed (disk full): no half-saved copy left beside ``out`` either
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return out


#: ``init-model random-<size>``: the tiny model's tokenizer and architecture family at other sizes, randomly
#: initialised and not warm-started (no TRL needed): for throughput and memory benchmarks, e.g. on a GPU machine
#: without network. random-0.5b has Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 key/value heads,
#: intermediate 4864); with the tiny 2,048-token vocabulary that is about 0.36B parameters (Qwen2-0.5B's 151k
#: vocabulary embeddings make up the rest of its 0.49B).
RANDOM_MODEL_SIZES: dict[str, dict[str, int]] = {
    "random-tiny": {},  # TinyModelConfig's defaults
    "random-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
    },
}


def init_random_model(out_dir: str | Path, kind: str = "random-0.5b", seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Build the tiny BPE tokenizer and a randomly initialised Qwen2 model of size ``kind``; save both to ``out_dir``.

    No warm start: the model's answers are noise unless constrained (``constrain_answers``), which is all a
    throughput benchmark needs. Saved in ``dtype`` (bfloat16 halves the file of the 0.5B-size model).
    """
    import time

    import torch

    if kind not in RANDOM_MODEL_SIZES:
        raise ValueError(f"unknown model kind {kind!r}; known: tiny, {', '.join(RANDOM_MODEL_SIZES)}")
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "coop_rl_tiny.json").exists())):
        raise FileExistsError(f"{out} exists and is not a model built by coop-rl; choose another --out")
    started = time.perf_counter()
    config = TinyModelConfig(seed=seed, **RANDOM_MODEL_SIZES[kind])
    tokenizer = build_tokenizer(collect_examples(seed, config.data_scale), config.vocab_size)
    model = build_model(tokenizer, config).to(getattr(torch, dtype))
    model.config.dtype = dtype
    parameters = sum(p.numel() for p in model.parameters())
    info = {
        "kind": f"coop-rl {kind}",
        "parameters": parameters,
        "dtype": dtype,
        "seconds": round(time.perf_counter() - started, 1),
        **{k: v for k, v in vars(config).items() if not k.startswith("sft_")},
    }
    return _save_model_atomically(out, model, tokenizer, info)
