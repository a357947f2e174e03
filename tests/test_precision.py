"""Precision chosen by the machine: the rule, the probe, and where the choice is applied and recorded."""

import re

import pytest

from coop_rl.errors import UsageError
from coop_rl.precision import (
    BF16_MIN_SPEEDUP,
    Precision,
    choose_precision,
    cpu_info,
    describe_cpu,
    describe_device,
    has_native_bf16,
    weights_dtype,
)

AVX2_EPYC = {"model": "AMD EPYC", "flags": ["avx2"], "cores": 2, "torch_threads": 2, "torch_cpu_capability": "AVX2"}
AMX_XEON = {
    "model": "Intel Xeon",
    "flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"],
    "cores": 2,
    "torch_threads": 2,
    "torch_cpu_capability": "AVX512",
}


def test_native_bf16_needs_the_flags_and_torch_kernels_that_use_them():
    assert not has_native_bf16(AVX2_EPYC)
    assert has_native_bf16(AMX_XEON)
    # ATEN_CPU_CAPABILITY=avx2 on an AMX machine: torch takes the emulated path
    assert not has_native_bf16({**AMX_XEON, "torch_cpu_capability": "AVX2"})
    assert not has_native_bf16({**AMX_XEON, "flags": ["avx2", "avx512f"]})


def test_describe_cpu_names_model_flags_cores_and_threads():
    assert describe_cpu(AVX2_EPYC) == "AMD EPYC (avx2; 2 cores, 2 torch threads, torch kernels AVX2)"
    pinned = {**AVX2_EPYC, "numerics_env": {"MKL_CBWR": "COMPATIBLE"}}
    assert describe_cpu(pinned) == "AMD EPYC (avx2; 2 cores, 2 torch threads, torch kernels AVX2, MKL_CBWR=COMPATIBLE)"
    info = cpu_info()
    assert info["cores"] >= 1 and info["torch_threads"] >= 1
    assert describe_cpu().startswith(info["model"])


def test_a_device_is_named_with_its_gpu_where_it_has_one():
    import torch

    assert describe_device("cpu") == describe_device(torch.device("cpu")) == "cpu"
    if torch.cuda.is_available():
        assert describe_device("cuda:0") == f"cuda:0 ({torch.cuda.get_device_name(0)})"
    else:  # nothing to ask: the name is kept as it is
        assert describe_device("cuda:0") == "cuda:0"


def test_explicit_precision_is_kept_and_bad_names_are_refused():
    assert choose_precision("cpu", "float32") == Precision("float32", "set by the recipe or command line")
    assert choose_precision("cpu", "bfloat16").bf16
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16"):
        choose_precision("cpu", "fp8")


def test_environment_pins_every_auto_and_the_suite_runs_in_float32(monkeypatch):
    assert choose_precision("cpu", "auto") == Precision("float32", "set by COOP_RL_PRECISION")  # conftest's pin
    monkeypatch.setenv("COOP_RL_PRECISION", "bfloat16")
    assert choose_precision("cpu", "auto").bf16 and not choose_precision("cpu", "float32").bf16
    monkeypatch.setenv("COOP_RL_PRECISION", "bf16")  # a user error, named: it was a traceback in play and eval
    with pytest.raises(UsageError, match="^COOP_RL_PRECISION must be one of auto, float32, bfloat16, not 'bf16'$"):
        choose_precision("cpu", "auto")


def test_the_suite_takes_one_numerical_path_on_every_x86_cpu():
    """conftest's REPRODUCIBLE_CPU reaches torch (its kernels take AVX2 code, whatever this CPU has) and the
    processes the tests start, so a learning test's seed is meant to be one experiment on a Xeon and on an EPYC."""
    import subprocess
    import sys

    import torch

    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    child = "import os, torch; print(torch.backends.cpu.get_cpu_capability(), os.environ['MKL_CBWR'])"
    started = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert started.stdout.split() == ["AVX2", "COMPATIBLE"]
    assert cpu_info()["numerics_env"] == {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "COMPATIBLE",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    }


def _auto_on_this_cpu_unpinned() -> tuple[Precision, bool]:
    """choose_precision("cpu", "auto") and has_native_bf16() in a child process on the CPU's own path: the suite's
    REPRODUCIBLE_CPU holds torch at AVX2, where bf16 never counts as native and the probe would never run."""
    import json
    import os
    import subprocess
    import sys

    from coop_rl.precision import NUMERICS_ENV

    env = {k: v for k, v in os.environ.items() if k not in {*NUMERICS_ENV, "COOP_RL_PRECISION"}}
    child = (
        "import json; from dataclasses import asdict; from coop_rl.precision import choose_precision, has_native_bf16;"
        "print(json.dumps([asdict(choose_precision('cpu', 'auto', width=128)), has_native_bf16()]))"
    )
    printed = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True)
    chosen, native = json.loads(printed.stdout)
    return Precision(**chosen), native


def test_auto_on_this_cpu_follows_the_rule():
    chosen, native = _auto_on_this_cpu_unpinned()
    if not native:
        assert chosen == Precision("float32", "CPU without native bf16 (avx512_bf16/AMX): bf16 would be emulated")
        return
    # the probe decided, and the reason quotes its one measurement: the choice must agree with the threshold
    chose_bf16 = re.fullmatch(r"CPU with native bf16, measured (\d+\.\d\d)x faster than float32", chosen.reason)
    chose_fp32 = re.fullmatch(
        rf"CPU with native bf16, but bf16 measured (\d+\.\d\d)x of float32 \(< {re.escape(str(BF16_MIN_SPEEDUP))}x\)",
        chosen.reason,
    )
    assert (chose_bf16 is None) != (chose_fp32 is None), chosen.reason
    assert chosen.bf16 == (chose_bf16 is not None)
    speedup = float((chose_bf16 or chose_fp32).group(1))  # rounded to 2 decimals in the reason
    if chosen.bf16:
        assert speedup >= round(BF16_MIN_SPEEDUP, 2)
    else:
        assert speedup <= round(BF16_MIN_SPEEDUP, 2)


def test_aaconfig_resolves_precision_into_the_trainer_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("COOP_RL_PRECISION")
    from coop_rl.aa_config import AAConfig

    forced = AAConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=1, precision="float32")
    assert forced.resolved_precision.dtype == "float32" and not forced.bf16
    bf16 = AAConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=1, precision="bfloat16")
    assert bf16.bf16 and bf16.mixed_precision == "bf16"
    explicit = AAConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=1, bf16=True)  # auto keeps an explicit flag
    assert explicit.bf16 and explicit.resolved_precision.reason == "bf16/fp16 set explicitly"
    with pytest.raises(ValueError, match="precision='half'"):
        AAConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=1, precision="half")


def test_a_gpu_whose_bf16_is_emulated_runs_float32(monkeypatch):
    import torch

    from coop_rl.precision import choose_precision

    monkeypatch.delenv("COOP_RL_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # a T4 or a V100 as torch sees it: bf16 "supported" only when emulation counts
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert choose_precision("cuda", "auto").dtype == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100, an H200
    assert choose_precision("cuda:0", "auto") == choose_precision("cuda", "auto")
    assert choose_precision("cuda", "auto").dtype == "bfloat16"


def test_a_lora_base_loads_in_bf16_on_a_gpu_only():
    bf16, fp32 = Precision("bfloat16", "test"), Precision("float32", "test")
    assert weights_dtype(bf16, "cuda:0", lora=True) == "bfloat16"  # the frozen base: half the memory
    assert weights_dtype(bf16, "cuda:0", lora=False) == "float32"  # an optimizer's master weights
    assert weights_dtype(fp32, "cuda:0", lora=True) == "float32"
    assert weights_dtype(bf16, "cpu", lora=True) == "float32"  # the CPU results' path


def test_the_adapter_on_a_bf16_base_stays_float32_and_trains(tmp_path):
    # What the GPU path does, on the CPU: a bfloat16 base, the trainer's LoRA, one autocast forward and backward.
    import torch

    from coop_rl.aa_config import AAConfig
    from coop_rl.opponents import add_lora

    from helpers import small_qwen2

    base = small_qwen2().to(torch.bfloat16)
    args = AAConfig(output_dir=str(tmp_path), max_steps=1, use_peft=True, lora_r=4, lora_alpha=8, report_to="none")
    model = add_lora(base, args, num_seats=2)
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_a_resumed_run_keeps_the_precision_its_run_recorded(tmp_path, monkeypatch):
    # the bf16 probe is noisy near its threshold (0.93x to 1.89x measured on one CPU within minutes): a resume that
    # probed again could continue in the other precision
    import json

    import coop_rl.precision as precision
    from coop_rl.aa_config import AAConfig

    monkeypatch.delenv("COOP_RL_PRECISION", raising=False)
    monkeypatch.setattr(precision, "has_native_bf16", lambda *args: True)
    monkeypatch.setattr(precision, "bf16_speedup", lambda width: 0.5)  # this time the probe says float32
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    settings = dict(output_dir=str(out), use_cpu=True, max_steps=4, report_to="none")
    assert AAConfig(**settings).resolved_precision.dtype == "float32"  # a fresh run: the probe decides
    record = {"precision": {"dtype": "bfloat16", "reason": "CPU with native bf16, measured 1.42x faster"}}
    (out / "coop_rl_run.json").write_text(json.dumps(record))
    resumed = AAConfig(**settings, resume_from_checkpoint=str(out / "checkpoint-2"))
    assert resumed.resolved_precision == precision.Precision("bfloat16", "kept from the run resumed") and resumed.bf16
    forced = AAConfig(**settings, resume_from_checkpoint=str(out / "checkpoint-2"), precision="float32")
    assert forced.resolved_precision.dtype == "float32"  # a precision named is the user's choice
    (out / "coop_rl_run.json").write_text("{")  # unreadable: the probe decides
    assert AAConfig(**settings, resume_from_checkpoint=str(out / "checkpoint-2")).resolved_precision.dtype == "float32"


def test_several_cpu_processes_take_float32_without_probing(tmp_path, monkeypatch):
    # each rank of a CPU DDP run parses its config alone: a noisy probe could give one rank bf16, another float32
    import coop_rl.precision as precision
    from coop_rl.aa_config import AAConfig

    monkeypatch.delenv("COOP_RL_PRECISION", raising=False)
    monkeypatch.setattr(precision, "has_native_bf16", lambda *args: True)
    monkeypatch.setattr(precision, "bf16_speedup", lambda width: 2.0)  # alone, the probe would take bf16
    assert precision.choose_precision("cpu", "auto").bf16
    two = precision.Precision("float32", "2 CPU processes: bf16 is not probed (each rank would choose alone)")
    assert precision.choose_precision("cpu", "auto", processes=2) == two
    assert precision.choose_precision("cpu", "bfloat16", processes=2).bf16  # named: the user's choice
    assert precision.choose_precision("cuda", "float32", processes=2).dtype == "float32"

    class Chosen(Exception):  # stops the config before TrainingArguments sets up a 2-process state
        pass

    def spy(*args, processes=1, **kwargs):
        raise Chosen(processes)

    monkeypatch.setattr(precision, "choose_precision", spy)
    monkeypatch.setenv("WORLD_SIZE", "2")  # what accelerate launch sets in every rank
    with pytest.raises(Chosen) as chosen:
        AAConfig(output_dir=str(tmp_path / "run"), use_cpu=True, max_steps=4, report_to="none")
    assert chosen.value.args == (2,)
