"""Multi-process (``accelerate launch``) runs: the whole weights for play under ZeRO-3, and ending a run cleanly.

``whole_weights`` wraps every rollout and evaluation on the transformers engine; ``gathered`` makes a few weights
whole (the LoRA adapter the vLLM rollout backends save for their engines). Under ZeRO-3 each forward pass gathers
the shards of its layers from every process, a collective call, so a sharded model plays only if every process runs
each forward pass at the same moment; matches end at different rounds on different processes, and a shard gathered
inside the players' ``torch.inference_mode`` comes back as a tensor autograd refuses to train (measured: two
processes crashed at the first update). TRL's ``unwrap_model_for_generation`` gathers the whole model once and lifts
DeepSpeed's hooks for the while, as TRL's GRPO does around generation.

A rank of a gloo run that simply returns to the interpreter aborts now and then at exit with SIGABRT ("terminate
called without an active exception"; measured: 8 of 30 two-process runs on CPU). Gloo's worker threads destroy
finished collective work after the Python side has moved on; that work can hold the last reference to tensors made
in Python (``gather_object``, the barrier that follows it), and dropping them needs the GIL, which a thread can no
longer take once the interpreter is finalizing (pytorch/pytorch#190489). ``destroy_process_group`` does not join
those threads while DDP still holds the backend, so it narrows the window without closing it (1 of 30 runs).

``finish_distributed_run`` waits for every rank, tears the process group down, flushes what the process wrote and
leaves with ``os._exit``: nothing is left for finalization to race with, and nothing written is lost (0 aborts in
40 runs of ``tests/distributed/ddp_equivalence.py``). vLLM engines are shut down first: their engine-core
processes would otherwise outlive the rank (``atexit`` does not run under ``os._exit``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

from accelerate import Accelerator


def zero_stage(accelerator: Accelerator) -> int | None:
    """The DeepSpeed ZeRO stage of this run, None without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin
    return None if plugin is None else plugin.deepspeed_config.get("zero_optimization", {}).get("stage")


@contextlib.contextmanager
def whole_weights(model_wrapped: Any, accelerator: Accelerator) -> Iterator[None]:
    """Under ZeRO-3, the whole weights on every process and no DeepSpeed hooks while the block runs (nothing to do
    otherwise): each process may then run forward passes on its own."""
    if zero_stage(accelerator) != 3:
        yield
        return
    from trl.models.utils import unwrap_model_for_generation

    with unwrap_model_for_generation(model_wrapped, accelerator):
        yield


@contextlib.contextmanager
def gathered(parameters: list[Any], accelerator: Accelerator) -> Iterator[None]:
    """Under ZeRO-3, ``parameters`` whole on every process while the block runs, to be read (a collective call:
    every process enters the block at the same point); nothing to do otherwise."""
    if zero_stage(accelerator) != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(parameters):
        yield


def finish_distributed_run(accelerator: Accelerator, status: int = 0) -> None:
    """End this process with ``status`` if it is one rank of several; return at once in a 1-process run."""
    if accelerator.num_processes <= 1:
        return
    accelerator.wait_for_everyone()
    accelerator.end_training()  # trackers finish, then the process group is destroyed
    _exit_without_finalizing(status)


def _exit_without_finalizing(status: int) -> NoReturn:
    if "coop_rl.players.vllm_engine" in sys.modules:
        # os._exit skips atexit: stop vLLM engine-core processes here, else they outlive the rank and keep its
        # output pipes open (a caller reading them would wait forever)
        sys.modules["coop_rl.players.vllm_engine"].shutdown_engines()
    wandb = sys.modules.get("wandb")  # report_to wandb: its run ends in its atexit hook, which os._exit skips
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=status)  # else the run reads as crashed and may lose its last logged values
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: the process started with that descriptor closed
            stream.flush()
    os._exit(status)
