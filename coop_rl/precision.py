"""Numeric precision chosen by the machine, never by a library default.

On a CPU without native bf16 (no ``avx512_bf16``, no AMX) every bf16 matmul is emulated and several times slower
than float32: TRL's ``SFTConfig`` defaults to ``bf16=True``, and that default turned a 5-minute warm start into 34
minutes on an AVX2-only EPYC. So the rule is:

- CUDA: bfloat16 where the GPU supports it, else float32;
- CPU without native bf16: float32;
- CPU with native bf16: bfloat16 only if a short probe (a forward and backward pass of one transformer layer of
  the model's width, under autocast, against the same in float32) measures it faster on this machine, else float32.

``precision: auto`` in a recipe (the default) applies that rule; ``float32`` or ``bfloat16`` force it, and so does
the environment variable ``COOP_RL_PRECISION`` for every ``auto``. The choice
and its reason are recorded beside the CPU's description in every run's info file and benchmark result.

bf16 is mixed precision: the weights stay float32 and autocast runs the matmuls in bf16
(:func:`weights_dtype` names the one exception, a LoRA base on a GPU).
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

PRECISIONS = ("auto", "float32", "bfloat16")
#: an environment override of every "auto" (the test suite pins float32: its exact checks must not hang on a probe)
PRECISION_ENV = "COOP_RL_PRECISION"
#: environment variables that change which kernels sum a model's floats, and so what a seed trains
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
#: CPU flags that matter for speed, as /proc/cpuinfo names them
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
#: bf16 must beat float32 by this factor in the probe to be chosen. The probe is short and a loaded machine makes
#: it noisy (measured 0.93-1.05 at width 128, 1.64-1.78 at 576 on one AMX Xeon): 1.3 keeps the choice stable.
BF16_MIN_SPEEDUP = 1.3


@dataclass(frozen=True)
class Precision:
    """The dtype training and generation run in, and why."""

    dtype: str  # "float32" or "bfloat16"
    reason: str

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU model, the flags in :data:`SPEED_FLAGS` it has, its core count and torch's thread count."""
    import torch

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: the model name from platform, no flags
        pass
    return {
        "model": model,
        "flags": [flag for flag in SPEED_FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # set only where a run pinned its float sums (the test suite does): a seed's result depends on them
        "numerics_env": {name: os.environ[name] for name in NUMERICS_ENV if os.environ.get(name)},
    }


def describe_cpu(info: dict[str, Any] | None = None) -> str:
    """One line naming the CPU for timings: model, flags that matter, cores, torch threads, pinned numerics."""
    info = info or cpu_info()
    flags = ", ".join(info["flags"]) or "no AVX2"
    kernels = info.get("torch_cpu_capability", "unknown")  # ATEN_CPU_CAPABILITY can hold torch below the CPU's best
    threads = f"{info['cores']} cores, {info['torch_threads']} torch threads"
    pinned = "".join(f", {name}={value}" for name, value in info.get("numerics_env", {}).items())
    return f"{info['model']} ({flags}; {threads}, torch kernels {kernels}{pinned})"


def describe_device(device: Any) -> str:
    """The device a run trains on, for its info file and the demo's report: "cpu", or "cuda:0 (NVIDIA H200)"."""
    import torch

    name = str(device)
    if name.startswith("cuda") and torch.cuda.is_available():
        return f"{name} ({torch.cuda.get_device_name(torch.device(name))})"
    return name


def has_native_bf16(info: dict[str, Any] | None = None) -> bool:
    flags = set((info or cpu_info())["flags"])
    # torch's ATEN_CPU_CAPABILITY=avx2 (or an older build) takes the emulated path even on such a CPU
    capability = (info or cpu_info())["torch_cpu_capability"]
    return bool(flags & {"avx512_bf16", "amx_bf16"}) and capability.startswith("AVX512")


@functools.lru_cache(maxsize=8)
def bf16_speedup(width: int = 128) -> float:
    """float32 time / bf16-autocast time of a forward+backward of one transformer layer of ``width`` on this CPU.

    A whole layer (attention, norms, MLP; 16 x 64 tokens), not a bare matmul: on a small model the casts and the
    float32 ops around the matmuls decide. Measured on a Xeon with AMX: 0.96x at width 128 (the tiny model, whose
    AA update indeed ran no faster in bf16), 1.64x at 576 (SmolLM2-135M), 1.93x at 896; about 0.1-1.3 s.
    """
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(width, max(1, width // 64), 2 * width, dropout=0.0, batch_first=True)
        inputs = torch.randn(16, 64, width)

    def timed(bf16: bool) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = layer(inputs)
        out.float().square().mean().backward()
        return time.perf_counter() - started

    timed(False), timed(True)  # warm both paths (oneDNN builds its kernels on first use)
    # The median of paired ratios: a pause from another process hits one trial of one pair, not the verdict.
    return statistics.median(timed(False) / timed(True) for _ in range(9))


def choose_precision(
    device: str = "cpu",
    requested: str = "auto",
    width: int = 128,
    resumed: Precision | None = None,
    processes: int = 1,
) -> Precision:
    """Resolve ``requested`` (auto, float32, bfloat16) for ``device`` ("cpu" or "cuda[:k]"): see the module doc.
    ``resumed``: what the run being resumed chose, kept where the probe would decide again (a CPU with native bf16:
    the probe is noisy near its threshold, and a resume must not switch precision midway). ``processes``: how many
    processes train together; above 1 a CPU with native bf16 takes float32 without probing, because each process
    would probe on its own and the ranks of one run could choose differently."""
    if requested == "auto" and os.environ.get(PRECISION_ENV):
        requested = os.environ[PRECISION_ENV]
        if requested not in PRECISIONS:  # a user error wherever a model loads (play, eval, train): one line
            from coop_rl.errors import UsageError

            raise UsageError(f"{PRECISION_ENV} must be one of {', '.join(PRECISIONS)}, not {requested!r}")
        if requested != "auto":
            return Precision(requested, f"set by {PRECISION_ENV}")
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    if requested != "auto":
        return Precision(requested, "set by the recipe or command line")
    if str(device).startswith("cuda"):
        import torch

        # native only: torch counts emulated bf16 (a T4, a V100) as supported by default
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision("bfloat16", "GPU with native bf16")
        return Precision("float32", "GPU without native bf16")
    if not has_native_bf16():
        return Precision("float32", "CPU without native bf16 (avx512_bf16/AMX): bf16 would be emulated")
    if resumed is not None:
        return resumed
    if processes > 1:
        return Precision("float32", f"{processes} CPU processes: bf16 is not probed (each rank would choose alone)")
    speedup = bf16_speedup(width)
    if speedup >= BF16_MIN_SPEEDUP:
        return Precision("bfloat16", f"CPU with native bf16, measured {speedup:.2f}x faster than float32")
    return Precision(
        "float32", f"CPU with native bf16, but bf16 measured {speedup:.2f}x of float32 (< {BF16_MIN_SPEEDUP}x)"
    )


def weights_dtype(precision: Precision, device: str, lora: bool) -> str:
    """The dtype a trainer loads a model's weights in. float32, the optimizer's master weights, except the frozen
    base under LoRA with bf16 on a GPU: bfloat16 there, half the memory (a 7B base takes 15 GB, not 30), as TRL
    loads a hub model; peft keeps the adapter float32 (``autocast_adapter_dtype``). On a CPU the base stays
    float32: a CPU model is small, and its float32 norms and embeddings keep the residual stream in float32 under
    autocast, the path the CPU results were measured on."""
    if lora and precision.bf16 and str(device).startswith("cuda"):
        return "bfloat16"
    return "float32"


def recorded_precision(run_info: str | os.PathLike) -> Precision | None:
    """The precision a run's info file (``coop_rl_run.json``) records, None where it records none (or is no such
    file): a resumed run continues in it."""
    import json
    from pathlib import Path

    try:
        dtype = json.loads(Path(run_info).read_text(encoding="utf-8"))["precision"]["dtype"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Precision(dtype, "kept from the run resumed") if dtype in ("float32", "bfloat16") else None


def precision_record(precision: Precision) -> dict[str, Any]:
    """What a run's info file and a benchmark result record: the choice, its reason and the CPU."""
    return {**asdict(precision), "cpu": cpu_info()}
