"""The warm start: a model imitates a population of classic scripted strategies before any RL (TRL's SFTTrainer).

From a prior that does not read the history, every credit collapses to defection: a policy that plays the same
in every state gains by defecting whatever the co-player does (docs/algorithm.md, "What the result looks like"). The
tiny model starts from random weights and SmolLM2-135M-Instruct, measured here, cooperates about 0.9 whatever the
co-player did last (history-blind). Imitating a balanced population (the IPD's allc, alld, tft, stft, wsls,
random) gives either one a history-aware prior, where Advantage Alignment can start.

``collect_examples`` records the population's matches as prompt/completion pairs (what each seat saw and
answered); ``imitate`` fits them with the loss on the answers only, phase by phase, in full (the tiny model) or
through a LoRA adapter merged into the weights afterwards (a pretrained model: its trunk stays as it was, the
update costs a fraction of a full one); ``save_model_atomically`` writes a model folder that is never left half
written.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("coop_rl.warm_start")

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


@dataclass(frozen=True)
class ImitationSettings:
    """How ``imitate`` fits the population (each builder of a model fills it from its own config)."""

    #: epochs of each phase (index phase - 1)
    epochs: tuple[float, ...]
    batch_size: int
    learning_rate: float
    #: gradient-norm clip (from random weights the first gradients are large: the tiny model clips at 10)
    max_grad_norm: float
    seed: int
    #: auto (the machine's choice at ``width``, coop_rl.precision), float32 or bfloat16
    precision: str
    #: the model's hidden size: the width at which an auto precision is probed
    width: int
    max_length: int = 2048
    #: 0: fine-tune every weight; > 0: a LoRA adapter of this rank on every linear layer, merged after
    lora_r: int = 0


def unknown_games(games: tuple[str, ...]) -> list[str]:
    """The names in ``games`` that have no population to imitate."""
    return sorted(set(games) - set(POPULATIONS))


def check_populations(populations: Mapping[str, Sequence[str]]) -> None:
    """Raise ValueError (one line) for a game without a warm-start population, an empty population, or a
    strategy the game's scripted players do not know."""
    from coop_rl.players.base import PlayerSpecError
    from coop_rl.players.scripted import ScriptedPlayer

    for game_name, names in populations.items():
        if game_name not in POPULATIONS:
            raise ValueError(f"no warm-start population for game {game_name!r}; known: {', '.join(POPULATIONS)}")
        if not names:
            raise ValueError(f"the {game_name} population names no strategy")
        for name in names:
            try:
                ScriptedPlayer(name, game_name)
            except PlayerSpecError as error:
                raise ValueError(f"{game_name} population: {error}") from None


def collect_examples(
    seed: int = 0,
    scale: float = 1.0,
    games: tuple[str, ...] = tuple(POPULATIONS),
    populations: Mapping[str, Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """Prompt/completion examples from scripted matches of every game: what each seat saw and answered.

    Every pair of the game's population (both orders, self-play included) plays the same number of matches, so
    the examples are a balanced mixture of the population's behaviour in every state. ``populations`` replaces
    the strategies of the games it names (POPULATIONS' match count stays: the corpus keeps its size).
    """
    from coop_rl.envs import make_game
    from coop_rl.players.scripted import ScriptedPlayer
    from coop_rl.runner import TurnRecord, run_matches

    examples: list[dict[str, Any]] = []
    for game_name in games:
        population = POPULATIONS[game_name]
        names = list((populations or {}).get(game_name, population["strategies"]))
        pairs = [(a, b) for a in names for b in names]
        per_pair = max(1, round(population["matches"] * scale / len(pairs)))
        players = {name: ScriptedPlayer(name, game_name) for name in names}
        params = dict(population.get("params", {}))
        seat_count = make_game(game_name, **params).num_players  # the game's default (SPGG: 3)
        for index, (a, b) in enumerate(pairs):
            # a pair of the population, and any further seats drawn from it in turn
            extra = [players[names[(index + k) % len(names)]] for k in range(seat_count - 2)]
            seats = [players[a], players[b], *extra]

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
    """sha256 of a warm-start corpus (every prompt and answer): a model built from other game texts (an older
    prompt format, say) is stale, and ``coop-rl demo`` rebuilds it."""
    return hashlib.sha256(json.dumps(examples, sort_keys=True).encode("utf-8")).hexdigest()


def imitate(model, tokenizer, examples: list[dict[str, Any]], settings: ImitationSettings, work_dir: Path):
    """Fit ``examples`` with TRL's SFTTrainer, phase by phase, loss on the completion (the answer) only.

    Returns ``(model, stats)``: the same model trained in place, or (``lora_r`` > 0) the base model with the
    trained adapter merged into its weights, and ``{"steps", "train_loss", "precision"}``. Precision is the
    machine's choice (:mod:`coop_rl.precision`), never SFTConfig's default of bf16, which is emulated and several
    times slower on a CPU without native bf16. It runs on the GPU where there is one (55 s for SmolLM2's
    conversion and warm start on an H200), else on the CPU.
    """
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from coop_rl.precision import choose_precision, precision_record

    device = "cuda" if torch.cuda.is_available() else "cpu"  # SFTConfig's use_cpu below follows it
    precision = choose_precision(device, settings.precision, width=settings.width)
    stats: dict[str, Any] = {"steps": 0, "train_loss": {}, "precision": precision_record(precision)}
    if settings.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=settings.lora_r, lora_alpha=2 * settings.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        model = get_peft_model(model, lora)
    for phase in sorted({e["phase"] for e in examples}):
        rows = [{"prompt": e["prompt"], "completion": e["completion"]} for e in examples if e["phase"] == phase]
        args = SFTConfig(
            output_dir=str(work_dir / f"phase{phase}"),
            num_train_epochs=settings.epochs[phase - 1],
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=0.05,
            max_grad_norm=settings.max_grad_norm,
            weight_decay=0.0,
            max_length=settings.max_length,
            completion_only_loss=True,
            logging_steps=25,
            save_strategy="no",
            report_to="none",
            use_cpu=device == "cpu",
            bf16=precision.bf16,
            # SFTConfig turns gradient checkpointing on; these prompts are short, and recomputing the
            # activations cost a third of each step (profiled on the tiny model).
            gradient_checkpointing=False,
            seed=settings.seed + phase,
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        result = trainer.train()
        stats["steps"] += result.global_step
        stats["train_loss"][f"phase{phase}"] = result.training_loss
    if settings.lora_r > 0:
        model = model.merge_and_unload()  # a plain model again: its folder loads without peft
    return model, stats


def _process_alive(pid: str) -> bool:
    """Whether ``pid`` (a partial folder's suffix) names a running process of this machine."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def save_model_atomically(
    out: Path,
    model: Any,
    tokenizer: Any,
    info: dict[str, Any],
    info_file: str,
    extra_files: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Save under a temporary name and rename, so an interrupted build never leaves a half-saved model at ``out``.

    ``info`` goes to ``info_file`` (JSON) and each of ``extra_files`` (name -> JSON object) beside the weights.
    """
    for leftover in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        if not _process_alive(leftover.name.rsplit("-", 1)[-1]):  # a build killed before it could clean up; a
            shutil.rmtree(leftover, ignore_errors=True)  # running one's folder is left to it
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        for name, content in (extra_files or {}).items():
            (partial / name).write_text(json.dumps(content, indent=2) + "\n")
        (partial / info_file).write_text(json.dumps(info, indent=2))
        if not (partial / "config.json").is_file() or not any(partial.glob("*.safetensors")):
            raise OSError(f"the save of {out} lost its config or weights (another build removed {partial.name}?)")
    except BaseException:  # interrupted or failed (disk full): no half-saved copy left beside ``out`` either
        shutil.rmtree(partial, ignore_errors=True)
        raise
    # The old build is renamed aside before it is removed: a crash in between leaves no half-deleted folder whose
    # info file still reads as a finished build (the aside copy is removed by the next build).
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(partial, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
