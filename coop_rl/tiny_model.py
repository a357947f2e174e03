"""The embedded tiny model: built fully offline by ``coop-rl init-model tiny --out DIR``.

Three steps, each with the ecosystem's own tools:
1. a byte-level BPE tokenizer (``tokenizers``) trained on the games' own text, wrapped as a
   ``PreTrainedTokenizerFast`` with a ChatML chat template;
2. a small Qwen2-architecture causal LM (head_dim 32 so vLLM can serve it) from random initialisation;
3. a short warm start with TRL's ``SFTTrainer`` on transcripts of a population of classic strategies (for the
   IPD: allc, alld, tft, stft, wsls, random; similar mixes for the other games), the stand-in for the prior a
   pretrained LLM brings. From random initialisation a model cannot tell game states apart and collapses to
   defection under any credit (docs/algorithm.md); after this warm start it answers validly and reads the history
   (in the IPD it cooperates 0.93 with tit-for-tat, 0.47 against always-defect and 0.86 with itself:
   docs/results.md), which is where Advantage Alignment can start. ``--population`` swaps a game's population (an
   experimental variable).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coop_rl.warm_start import (
    POPULATIONS,
    ImitationSettings,
    check_populations,
    collect_examples,
    corpus_fingerprint,
    imitate,
    save_model_atomically,
    unknown_games,
)

logger = logging.getLogger("coop_rl.tiny_model")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


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
    #: strategies to imitate instead of POPULATIONS' for the games named (``init-model tiny --population
    #: ipd=allc,alld,random``: a prior that does not read the co-player's moves), an experimental variable
    populations: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: warm-start precision: auto (the machine's choice, coop_rl.precision), float32 or bfloat16
    precision: str = "auto"

    def imitation_settings(self) -> ImitationSettings:
        """The warm start's settings. From random initialisation the first gradients are large; clipping them to
        1 (TRL's default) slowed the warm start several-fold for no stability gain on a model this small."""
        return ImitationSettings(
            epochs=self.sft_epochs,
            batch_size=self.sft_batch_size,
            learning_rate=self.sft_learning_rate,
            max_grad_norm=10.0,
            seed=self.seed,
            precision=self.precision,
            width=self.hidden_size,
            max_length=self.max_position_embeddings,
        )


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
    unknown = unknown_games(config.games)
    if unknown:
        raise ValueError(f"no warm-start population for game {unknown[0]!r}; known: {', '.join(POPULATIONS)}")
    check_populations(config.populations)
    # The tokenizer learns every game's text (so any game's prompt encodes compactly); the warm start imitates
    # the populations of ``config.games`` only.
    examples = collect_examples(config.seed, config.data_scale, populations=config.populations)
    logger.info("recorded %d scripted turns", len(examples))
    fingerprint = corpus_fingerprint(examples)  # the tokenizer's corpus: every game's text
    tokenizer = build_tokenizer(examples, config.vocab_size)
    examples = [example for example in examples if example["game"] in config.games]
    model = build_model(tokenizer, config)
    with tempfile.TemporaryDirectory(prefix="coop_rl_sft_") as work_dir:
        model, stats = imitate(model, tokenizer, examples, config.imitation_settings(), Path(work_dir))
    info = {
        "kind": "coop-rl tiny",
        "examples": len(examples),
        "corpus_sha256": fingerprint,
        "seconds": round(time.perf_counter() - started, 1),
        **vars(config),
        **stats,  # after the config: "precision" is the resolved choice, not the requested "auto"
    }
    return save_model_atomically(out, model, tokenizer, info, info_file="coop_rl_tiny.json")


#: ``init-model random-<size>``: the tiny model's tokenizer and architecture family at other sizes, randomly
#: initialised and not warm-started (no TRL needed): for throughput and memory benchmarks, e.g. on a GPU machine
#: without network. random-0.5b has Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 key/value heads,
#: intermediate 4864); with the tiny tokenizer (a 2,048-token budget, of which its BPE learns 827) that is about
#: 0.36B parameters (Qwen2-0.5B's 151k vocabulary embeddings make up the rest of its 0.49B).
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
    return save_model_atomically(out, model, tokenizer, info, info_file="coop_rl_tiny.json")
