"""Group-relative Advantage Alignment, TRL-style: a transformers ``Trainer`` whose batches are played, not loaded.

One rollout feeds ``num_iterations`` optimizer steps (1 by default), each of ``gradient_accumulation_steps``
micro-batches; ``max_steps`` counts optimizer steps, as in TRL's GRPO. The trainer keeps the Trainer's hooks and
orders the work of the modules beside it:

1. co-players (:mod:`coop_rl.opponents`): self-play, the paper's pool of past checkpoints, or frozen opponents;
2. the rollout (:mod:`coop_rl.rollout`): ``matches_per_iteration`` matches at once, credit (pure tensor math in
   :mod:`coop_rl.credit`) on their rewards, the learner's turns merged into loss rows and written to trajectory
   files;
3. the loss on learner tokens (:mod:`coop_rl.loss_batch` makes the tensors, :mod:`coop_rl.loss` the pure loss):
   REINFORCE with the truncated importance weight or the PPO clipped surrogate, the k3 KL to the reference (the
   model with its LoRA adapter off) and an entropy bonus;
4. a guard against non-finite losses and gradients (:mod:`coop_rl.fault_guard`), the in-training evaluation
   (``play_eval_every``), logging, and checkpoints that keep the opponent pool;
5. the optimizer step, gradient accumulation, DeepSpeed, ``report_to`` and ``resume_from_checkpoint`` come from
   transformers' Trainer and accelerate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback

from coop_rl.aa_config import RUN_INFO_FILE, AAConfig
from coop_rl.atomic_files import write_text_atomic
from coop_rl.config_checks import check_processes
from coop_rl.distributed import gathered, whole_weights, zero_stage
from coop_rl.errors import CheckpointError
from coop_rl.fault_guard import FAULTS_FILE, FaultGuard, NumericalFaultError
from coop_rl.loss import loss_metrics, merge_identical_turns, token_loss
from coop_rl.loss_batch import batch_rows, token_logprobs
from coop_rl.metric_log import MetricLog, over_processes
from coop_rl.opponents import (
    POOL_FILE,
    Opponents,
    active_adapter,
    adapters_off,
    add_lora,
    load_pool_file,
    load_seat_adapters,
    playing,
    seat_adapter_name,
)
from coop_rl.players import SamplingConfig
from coop_rl.players.base import Player, check_chat_template
from coop_rl.players.sampling import stop_token_ids
from coop_rl.policy_folder import POLICY_SETTINGS_FILE, write_policy_settings
from coop_rl.precision import describe_device, precision_record, weights_dtype
from coop_rl.rollout import (
    LearnerTurn,
    Played,
    assign_credit,
    format_penalties,
    learner_turns,
    play_groups,
    rollout_metrics,
    write_trajectory_file,
)
from coop_rl.runner import run_matches

__all__ = ["AATrainer", "CheckpointError", "NumericalFaultError", "load_pool_file"]

logger = logging.getLogger("coop_rl.trainer")

TRAJECTORY_DIR = "trajectories"


class AATrainer(Trainer):
    """Trainer for group-relative Advantage Alignment (see the module docstring). Settings: :class:`AAConfig`."""

    def __init__(
        self,
        model: str | torch.nn.Module | None = None,
        args: AAConfig | None = None,
        processing_class: Any = None,
        callbacks: list | None = None,
    ) -> None:
        if args is None:
            raise ValueError("AATrainer needs an AAConfig")
        model_id = model if isinstance(model, str) else (model is None and args.model_name_or_path)
        if model is None or isinstance(model, str):
            if not model_id:
                raise ValueError("no model: set model_name_or_path")
            # absolute: peft records it as a saved adapter's base, which hf:<output_dir> must find from any folder
            model_id = os.path.abspath(model_id) if os.path.isdir(model_id) else model_id
            from safetensors import SafetensorError

            try:
                dtype = weights_dtype(args.resolved_precision, str(args.device), args.use_peft)
                model = AutoModelForCausalLM.from_pretrained(model_id, dtype=getattr(torch, dtype))
            except SafetensorError as error:  # a truncated or corrupt weights file
                raise ValueError(f"cannot load the weights in {model_id}: {error}") from None
        if processing_class is None:
            name = model_id or model.config._name_or_path
            processing_class = AutoTokenizer.from_pretrained(name, padding_side="left")
        check_chat_template(processing_class, model_id or "the model", "train")  # before any rollout
        if processing_class.pad_token_id is None:  # the loss pads its rows (Llama-3's tokenizer has no pad token)
            processing_class.pad_token = processing_class.eos_token  # as the transformers engine pads its batches
        self.game_params = args.parsed_game_params
        self.num_seats = args.num_seats
        if args.use_peft:
            model = add_lora(model, args, self.num_seats)
        # One placeholder item per micro-batch of every iteration (the rollout makes the data): the Trainer's loop
        # counts steps from it. A range, read in order (AAConfig's sequential sampler), holds none of them in memory.
        world = max(1, int(getattr(args, "world_size", 1)))
        dataset = range(args.max_steps * args.gradient_accumulation_steps * world)
        super().__init__(
            model=model, args=args, train_dataset=dataset, processing_class=processing_class,
            data_collator=lambda features: features, callbacks=callbacks,
        )  # fmt: skip
        # compute_loss returns the micro-batch's share of the iteration's loss (already normalised over every
        # generated token of the iteration), so the Trainer must not divide it by the accumulation steps again.
        self.loss_is_scaled_for_ga = True
        check_processes(args, self.accelerator.num_processes, zero_stage(self.accelerator))
        self.sampling = SamplingConfig(args.temperature, args.top_p, args.max_new_tokens)
        self.opponents = Opponents(  # the model through a function: DDP or DeepSpeed wrap it later
            args, self.num_seats, lambda: self.accelerator.unwrap_model(self.model), processing_class, self.sampling,
            self._player_seed, self.accelerator.process_index, self.accelerator.num_processes,
        )  # fmt: skip
        self._buffer, self._buffer_pass = [], 0  # the rollout's micro-batches, the pass over them (< num_iterations)
        self._micro_step = 0
        self._metrics = MetricLog()
        self._iteration_started, self._iteration_scoring_s = 0.0, 0.0
        self._run_info_written = self._trajectory_dir_clean = False
        scaled = self.accelerator.scaler is not None  # fp16's loss scaler: it skips the steps the guard marks
        self._faults = FaultGuard(args.max_consecutive_faults, self.is_deepspeed_enabled, self._on_any_process, scaled)
        # The loss runs the rows' shared prompt prefix once, then each distinct prompt once (exact; see
        # loss_batch.token_logprobs). One process only: a second forward call before backward is outside what DDP
        # and DeepSpeed's engines are tested for. Not under gradient checkpointing either: its layers drop the cache
        # in training, which the later calls read. _share_stems False runs the prefix only (the benchmarks' reference).
        self._share_prefix = (
            self.accelerator.num_processes == 1 and not self.is_deepspeed_enabled and not args.gradient_checkpointing
        )
        self._share_stems = True
        self.add_callback(_IterationHooks(self))

    # ----- players ------------------------------------------------------------------------------------------
    def _live_player(self) -> Player:
        """The learner's player; on the vLLM backends it saves the adapter its engines load, whole under ZeRO-3."""
        adapter = [p for p in self.model.parameters() if p.requires_grad] if self.args.rollout_backend != "hf" else []
        with gathered(adapter, self.accelerator):
            return self.opponents.live_player(self.state.global_step)

    def _player_seed(self, salt: int) -> int:
        """A sampling seed distinct per process: ranks must not draw the same trajectories from the same prompts."""
        return (self.args.seed * 7919 + salt) * 1_000 + self.accelerator.process_index

    # ----- rollout ------------------------------------------------------------------------------------------
    def _rollout(self) -> Played:
        """Play this process's share of the iteration's seed groups (whole groups: the baseline needs them)."""
        args = self.args
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        num_groups = args.matches_per_iteration // args.group_size
        plan = self.opponents.assign_groups(num_groups, self.state.global_step // args.num_iterations)
        live = self._live_player()
        seed = args.seed * 1_000_003 + self.state.global_step * 10_007
        with self._playing():
            return play_groups(
                args.game, self.game_params, plan, list(range(rank, num_groups, world)), args.group_size, seed,
                lambda setting: self.opponents.seat_players(setting, live),
            )  # fmt: skip

    @contextlib.contextmanager
    def _playing(self):
        """Around play (a rollout, an evaluation): the model whole on this process (ZeRO-3 shards it:
        :func:`coop_rl.distributed.whole_weights`), in eval mode, with its weights fixed, so that the hf engine
        reuses the rules' cache from round to round (:meth:`coop_rl.players.hf.HFEngine.frozen_weights`)."""
        hf = self.args.rollout_backend == "hf"  # else the learner plays on vLLM: no forward pass of the model here
        fixed = self.opponents.engine().frozen_weights() if hf else contextlib.nullcontext()
        whole = whole_weights(self.model_wrapped, self.accelerator) if hf else contextlib.nullcontext()
        with whole, playing(self.accelerator.unwrap_model(self.model)), fixed:
            yield

    def _credit_rows(self, records, results, learner_seats, groups) -> dict[str, Any]:
        """Credit per learner (match, seat) and timestep, then per turn (:func:`coop_rl.rollout.assign_credit`)."""
        args = self.args
        stops = stop_token_ids(self.processing_class, self.accelerator.unwrap_model(self.model).generation_config)
        penalties = format_penalties(records, args.invalid_penalty, stops, args.max_new_tokens)
        settings = dict(method=args.credit, gamma=args.gamma, scale=args.reward_scale, beta=args.beta,
                        gamma_a=args.gamma_a, baseline=args.baseline, whiten=args.whiten)  # fmt: skip
        return assign_credit(Played(records, results, learner_seats, groups), self.num_seats, penalties, **settings)

    def _generate_and_score(self) -> list[dict[str, Any]]:
        """One rollout: play, credit, trajectories, then the merged loss rows split into micro-batches."""
        args = self.args
        if not self._run_info_written:
            self._write_run_info()
        self.opponents.grow(self.accelerator.unwrap_model(self.model), self.state.global_step)
        started = time.perf_counter()
        played = Played(*self._rollout())
        rollout_seconds = time.perf_counter() - started
        scored = self._credit_rows(*played)
        credit_seconds = time.perf_counter() - started - rollout_seconds
        generated = sum(len(r.action.completion_ids) for r in played.records)
        for key, value in rollout_metrics(played, scored, self.num_seats).items():
            self._metrics.add(key, value)
        self._metrics.add("rollout/pool_size", float(len(self.opponents.pool)))
        self._metrics.add("time/rollout_s", rollout_seconds)
        self._metrics.add("time/credit_s", credit_seconds)
        self._metrics.add("perf/learner_tokens_per_s", generated / max(rollout_seconds, 1e-9))
        self._iteration_started, self._iteration_scoring_s = started, rollout_seconds + credit_seconds
        turns = learner_turns(played, scored["turn_credit"], args.group_size, self.opponents.adapter_of)
        self._write_trajectories(turns)
        ppo = args.loss_type == "ppo"  # the clipped surrogate is linear in credit only within one sign
        rows = merge_identical_turns([t.loss_turn() for t in turns if t.completion_ids], by_sign=ppo)
        self._metrics.add("loss/unique_rows", float(len(rows)))  # the rollout's, not each micro-batch's share
        local_tokens = torch.tensor(float(sum(len(r["completion_ids"]) * r["count"] for r in rows)), device=args.device)
        total_tokens = self.accelerator.reduce(local_tokens, reduction="sum").item()
        gas = args.gradient_accumulation_steps
        # Each process's loss is its tokens' sum over the GLOBAL token count, times the number of processes:
        # data parallelism averages gradients, so the update is the sum over all tokens / all tokens.
        scale = self.accelerator.num_processes / max(total_tokens, 1.0)
        return [{"rows": rows[k::gas], "scale": scale} for k in range(gas)]

    def _write_trajectories(self, turns: list[LearnerTurn]) -> None:
        """This iteration's learner turns to <output_dir>/trajectories/iteration-<step>.jsonl, one JSON line each
        (``LearnerTurn.trajectory_line``), written atomically (:func:`coop_rl.rollout.write_trajectory_file`).

        ``<step>`` is the first optimizer step the rollout feeds (global_step + 1: checkpoint-N holds steps 1..N;
        with ``num_iterations`` k the files are iteration-000001, iteration-<k+1>, ...); a resumed run rewrites the
        iterations it replays. All processes' turns are gathered and the main process writes.
        """
        if not self.args.save_trajectories:
            return
        step = self.state.global_step + 1
        lines = [turn.trajectory_line(step) for turn in turns]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            lines = gather_object(lines)
        if self.args.should_save:
            folder = Path(self.args.output_dir) / TRAJECTORY_DIR
            write_trajectory_file(folder, step, lines, clean_stale=not self._trajectory_dir_clean)
            self._trajectory_dir_clean = True

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
        """The loss of a list of merged rows (:func:`coop_rl.loss.token_loss`, summed, times the iteration's
        1 / tokens); logs the loss metrics."""
        args = self.args
        vocab = self.accelerator.unwrap_model(model).config.get_text_config().vocab_size
        batch = batch_rows(
            rows, self.processing_class.pad_token_id, vocab, self._share_prefix, args.device, self._share_stems
        )
        mask = batch["completion_mask"]
        logprobs, entropy = token_logprobs(model, batch)
        reference = None
        if args.kl_coef > 0:  # the reference policy: the model with its adapter off (use_peft, checked by AAConfig)
            with torch.no_grad(), adapters_off(self.accelerator.unwrap_model(model)):
                reference, _ = token_logprobs(model, batch)
        terms = (logprobs, batch["sampler_logprobs"], batch["credit"], batch["count"], mask, entropy, reference)
        clips = {"loss_type": args.loss_type, "is_clip": args.is_clip, "ppo_clip": args.ppo_clip}
        per_token = token_loss(*terms, **clips, entropy_coef=args.entropy_coef, kl_coef=args.kl_coef)
        tokens = float((mask * batch["count"].reshape(-1, 1)).sum())  # real tokens, a merged row's once per turn
        self._metrics.add_token_means(loss_metrics(*terms, **clips), tokens)
        if inputs.get("first_micro_batch"):  # weights not yet updated by this rollout: the sampler's weights
            with torch.no_grad():
                gap = ((logprobs - batch["sampler_logprobs"]).abs() * mask).sum() / mask.sum().clamp(min=1)
            self._metrics.add("rollout/sampler_logprob_gap", gap.item())
            self._metrics.add("rollout/sampler_logprob_gap_max", gap.item())  # the worst process and iteration
        return per_token.sum() * inputs["scale"]

    # ----- numerical faults ---------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        """transformers' training step (forward + backward), then the guard against non-finite values
        (:mod:`coop_rl.fault_guard`): a faulty optimizer step is skipped, too many in a row stop the run."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._faults.note_loss(loss)
        if self.accelerator.gradient_state.sync_gradients:  # the last micro-batch: the optimizer steps next
            self._faults.check_step(model, self.state.global_step + 1)
            self._metrics.set("fault/skipped_steps", float(self._faults.skipped_steps))
        return loss

    def _on_any_process(self, faulty: bool) -> bool:
        """Whether any process found a fault: every process skips the step, or none does."""
        if self.accelerator.num_processes == 1:
            return faulty
        flag = torch.tensor(float(faulty), device=self.args.device)
        return self.accelerator.reduce(flag, reduction="sum").item() > 0

    # ----- evaluation and logging ---------------------------------------------------------------------------
    def play_eval(self) -> dict[str, float]:
        """Play the current policy (the rollout engine, the training sampling) in seat 0 against each of
        ``play_eval_opponents`` (``play_eval_matches`` matches, the same game seeds every time) and log, through
        the Trainer's ``log``, ``eval/<opponent>/return`` (the policy's mean return) and, in games with a
        cooperation metric, ``eval/<opponent>/cooperation_rate`` (:func:`coop_rl.eval.evaluate.seat_row`)."""
        from coop_rl.eval.evaluate import seat_row

        args, logs = self.args, {}
        live = self._live_player()
        with self._playing():
            for spec in args.play_eval_specs:
                seats = [live] + [self.opponents.frozen_player(spec, for_eval=True)] * (self.num_seats - 1)
                matches = args.play_eval_matches
                results = run_matches(args.game, self.game_params, seats, matches=matches, seed=args.seed)
                row = seat_row(args.game, spec, results, 0, ci_seed=args.seed)
                logs[f"eval/{spec}/return"] = row["policy_mean_return"]
                if row["policy_cooperation_rate"] is not None:
                    logs[f"eval/{spec}/cooperation_rate"] = row["policy_cooperation_rate"]
        logs, should_log = self._over_processes(logs), self.control.should_log
        Trainer.log(self, dict(logs))  # its own line in log_history, apart from the step's training metrics
        self.control.should_log = should_log  # (on_log clears it: the step's own line must still be written)
        return logs

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.update(self._over_processes(*self._metrics.take()))
        super().log(logs, start_time)

    def _over_processes(self, means: dict[str, float], weighted: dict | None = None) -> dict[str, float]:
        """Every process played its own matches: the metrics over all processes, not process 0's share alone
        (:func:`~coop_rl.metric_log.over_processes`). Every process calls this at the same step, as transformers
        gathers the loss there too."""
        gathered = [(means, weighted or {})]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            gathered = gather_object(gathered)
        return over_processes(gathered)

    # ----- checkpoints and saving ---------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial) -> None:
        # The opponent pool and the group-assignment RNG come back on resume. They are written (atomically) BEFORE
        # transformers saves the checkpoint, whose trainer_state.json comes last: a checkpoint that has its
        # trainer_state.json, the mark of a complete one, also has its pool, even if the run was killed mid-save.
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        if self.args.should_save:
            checkpoint = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.opponents.save(checkpoint)
            write_text_atomic(checkpoint / FAULTS_FILE, json.dumps(self._faults.state()) + "\n")
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The policy (a checkpoint's too), then its settings file: ``hf:<folder>`` plays it as trained, and the
        file marks a finished save (the demo and the exploiter read it so): an earlier one goes first."""
        if self.args.use_peft:  # peft saves every adapter the model holds: the pool's are not the policy
            self.opponents.release_adapters(self.accelerator.unwrap_model(self.model))
        folder = Path(output_dir or self.args.output_dir)
        folders = [folder]
        if self.args.seat_adapters:  # peft saves adapter k > 0 in output_dir/seat<k>: each plays as hf:<that dir>
            folders += [folder / seat_adapter_name(seat) for seat in range(1, self.num_seats)]
        for each in folders:
            (each / POLICY_SETTINGS_FILE).unlink(missing_ok=True)
        super()._save(output_dir, state_dict)
        for each in folders[::-1]:  # output_dir's own settings last
            if each != folder:
                self.processing_class.save_pretrained(each)
            write_policy_settings(each, self.args.policy_settings())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.args.seat_adapters:
            load_seat_adapters(Path(resume_from_checkpoint), model or self.model, self.num_seats)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # The pool is restored here, which every resume calls: under DeepSpeed transformers loads the weights with
        # deepspeed_load_checkpoint and never calls _load_from_checkpoint (a ZeRO-2 resume started with no pool).
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and (Path(checkpoint) / POOL_FILE).exists():
            self.opponents.load(Path(checkpoint) / POOL_FILE)
        if checkpoint is not None and (Path(checkpoint) / FAULTS_FILE).exists():  # absent in older checkpoints
            self._faults.restore(Path(checkpoint) / FAULTS_FILE)

    def _write_run_info(self) -> None:
        """Record how this run is distributed (engine, processes, ZeRO stage) in output_dir/coop_rl_run.json."""
        self._run_info_written = True
        if not self.args.should_save:
            return
        info = {
            "distributed_type": str(self.accelerator.distributed_type).split(".")[-1],
            "num_processes": self.accelerator.num_processes,
            "deepspeed_zero_stage": zero_stage(self.accelerator),
            "wrapped_model": type(self.model_wrapped).__name__,
            "trainable_parameters": sum(
                getattr(p, "ds_numel", p.numel()) for p in self.model.parameters() if p.requires_grad
            ),  # ds_numel: the full size of a ZeRO-3 shard
            "rollout_backend": self.args.rollout_backend,
            "rollout_servers": self.args.rollout_servers,
            "vllm_executor": self.opponents.vllm_executor(),
            # torchrun (under accelerate launch) sets LOCAL_WORLD_SIZE: the processes on this machine
            "num_machines": self.accelerator.num_processes // int(os.environ.get("LOCAL_WORLD_SIZE") or 1),
            "precision": precision_record(self.args.resolved_precision),
            "device": describe_device(self.args.device),
        }
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(self.args.output_dir) / RUN_INFO_FILE, json.dumps(info, indent=2) + "\n")


class _IterationHooks(TrainerCallback):
    """At each step's end: the split of its wall time (rollout and credit are timed where they run, the rest is the
    update), then every ``play_eval_every`` steps the in-training evaluation (not counted in the step's time)."""

    def __init__(self, trainer: AATrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer._iteration_started:  # before the step is logged: the metrics join this step's log line
            total = time.perf_counter() - trainer._iteration_started
            trainer._metrics.add("time/update_s", max(0.0, total - trainer._iteration_scoring_s))
            trainer._metrics.add("time/iteration_s", total)
        if args.play_eval_every and state.global_step % args.play_eval_every == 0:
            trainer.play_eval()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.opponents.close()  # e.g. vLLM servers unregister the learner's last adapter
