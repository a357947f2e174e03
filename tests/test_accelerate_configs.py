"""The accelerate configs under recipes/accelerate/ load with accelerate's own config class and hold what their
names promise; the Slurm script parses, refuses to start without OUTPUT_DIR, and (with stand-ins for srun,
scontrol and accelerate on PATH) launches one `accelerate launch` per node with that node's rank. No launches."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate"
SCRIPT = CONFIGS / "slurm_multinode.sh"
BASH = shutil.which("bash")
MULTINODE = {"num_machines": 2, "num_processes": 16, "machine_rank": 0, "main_process_ip": None}
MULTINODE |= {"main_process_port": 29500, "rdzv_backend": "static", "same_network": True}
# Per file: distributed_type, the ClusterConfig fields its name implies, and the DeepSpeed keys it must set.
EXPECTED = {
    "single.yaml": ("NO", {"num_machines": 1, "num_processes": 1}, {}),
    "ddp.yaml": ("MULTI_GPU", {"num_machines": 1, "num_processes": 2}, {}),
    "zero2.yaml": ("DEEPSPEED", {"num_machines": 1, "num_processes": 1}, {"zero_stage": 2}),
    "zero3.yaml": ("DEEPSPEED", {"num_machines": 1}, {"zero_stage": 3, "zero3_save_16bit_model": True}),
    "multinode_ddp.yaml": ("MULTI_GPU", MULTINODE, {}),
    # "standard": torchrun on every machine (what srun starts); DeepSpeed's default, pdsh, would ssh to the others.
    "multinode_zero2.yaml": ("DEEPSPEED", MULTINODE, {"zero_stage": 2, "deepspeed_multinode_launcher": "standard"}),
}
FLAGS = ("--num_machines", "--num_processes", "--machine_rank", "--main_process_ip", "--main_process_port")


def test_every_config_has_an_expectation():
    assert sorted(path.name for path in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate_and_has_what_its_name_says(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    distributed_type, fields, deepspeed = EXPECTED[name]
    assert type(config) is ClusterConfig
    assert config.distributed_type.value == distributed_type
    assert {key: getattr(config, key) for key in fields} == fields
    assert {key: config.deepspeed_config.get(key) for key in deepspeed} == deepspeed
    assert bool(config.deepspeed_config) == (distributed_type == "DEEPSPEED")
    assert config.mixed_precision == "no"  # the trainer picks the precision (bf16 on a GPU), not the launcher


def test_slurm_script_parses_and_names_the_multinode_flags():
    assert SCRIPT.stat().st_mode & 0o111 == 0o111
    subprocess.run([BASH, "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    for needle in (*FLAGS, "--rdzv_backend static", "-m coop_rl train", "recipes/accelerate/multinode_zero2.yaml"):
        assert needle in text, needle
    for directive in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--exclusive", "--time=", "--job-name="):
        assert f"\n#SBATCH {directive}" in text, directive
    assert len(text.splitlines()) <= 70


def _fake_tools(tmp_path: Path) -> Path:
    """srun runs its command once per node (SLURM_NODEID 0 and 1); accelerate writes its argv to node<rank>."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {
        "srun": 'echo "$*" > "$LOG/srun"\nwhile [[ $1 == --* ]]; do shift; done\n'
        'for node in 0 1; do SLURM_NODEID=$node "$@" || exit; done\n',
        "scontrol": '[[ "$*" == "show hostnames gpu[01-02]" ]] && printf "gpu01\\ngpu02\\n"\n',
        "accelerate": 'printf "%s\\n" "$@" > "$LOG/node$SLURM_NODEID"\n',
    }
    for name, body in tools.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\nset -eu\n" + body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _run(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The script with only PATH (the stand-ins first), LOG and ``env``: no OUTPUT_DIR or SLURM_* of the caller."""
    path = f"{_fake_tools(tmp_path)}:/usr/bin:/bin"
    full = {"PATH": path, "LOG": str(tmp_path), **env}
    return subprocess.run([BASH, str(SCRIPT), *args], env=full, cwd=ROOT, capture_output=True, text=True, timeout=30)


SLURM = {"SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_NNODES": "2", "SLURM_NODEID": "0"}


@pytest.mark.parametrize(
    "env, message",
    [
        (SLURM, "set OUTPUT_DIR to a directory on storage shared by every node"),
        ({}, "set OUTPUT_DIR to a directory on storage shared by every node"),
        (
            {**SLURM, "OUTPUT_DIR": "/s/r", "ROLLOUT": "server"},
            "ROLLOUT=server needs ROLLOUT_SERVERS (comma-separated vLLM server URLs)",
        ),
        ({**SLURM, "OUTPUT_DIR": "/s/r", "ROLLOUT": "hf"}, "ROLLOUT must be vllm or server, not 'hf'"),
        ({"OUTPUT_DIR": "/s/r"}, "no Slurm job: submit with sbatch (or run inside salloc)"),
    ],
    ids=["no-output-dir", "no-output-dir-no-slurm", "server-without-urls", "unknown-rollout", "outside-slurm"],
)
def test_slurm_script_refuses_to_start_with_one_line(tmp_path, env, message):
    done = _run(tmp_path, env)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"slurm_multinode.sh: {message}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]  # neither srun nor accelerate ran


@pytest.mark.parametrize(
    "env, rollout",
    [
        ({}, ["--use_peft", "true", "--rollout_backend", "vllm", "--vllm_gpu_memory_utilization", "0.3"]),
        (
            {"ROLLOUT": "server", "ROLLOUT_SERVERS": "http://a:8000,http://b:8000"},
            [
                "--use_peft",
                "true",
                "--rollout_backend",
                "vllm_server",
                "--rollout_servers",
                "http://a:8000,http://b:8000",
            ],
        ),
    ],
    ids=["vllm", "server"],
)
def test_slurm_script_launches_one_accelerate_per_node_with_its_rank(tmp_path, env, rollout):
    done = _run(tmp_path, {**SLURM, "OUTPUT_DIR": "/shared/run one", **env}, "--max_steps", "3", "--run_name", "a b")
    mode = env.get("ROLLOUT", "vllm")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"nodes: gpu01 gpu02; main process gpu01; 8 processes per node; rollout: {mode}\n"
    assert (tmp_path / "srun").read_text().startswith("--nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c ")
    common = [
        "--config_file", "recipes/accelerate/multinode_zero2.yaml", "--num_machines", "2", "--num_processes", "16",
        "--main_process_ip", "gpu01", "--main_process_port", "29500", "--rdzv_backend", "static",
        "-m", "coop_rl", "train", "--config", "recipes/ipd/aa_qwen2.5-7b.yaml", "--output_dir", "/shared/run one",
        *rollout, "--max_steps", "3", "--run_name", "a b",
    ]  # fmt: skip
    for rank in (0, 1):
        argv = (tmp_path / f"node{rank}").read_text().splitlines()
        assert argv == ["launch", "--machine_rank", str(rank), *common]


def test_slurm_script_overrides_config_recipe_port_and_gpus(tmp_path):
    env = {**SLURM, "OUTPUT_DIR": "/s/r", "ACCELERATE_CONFIG": "recipes/accelerate/multinode_ddp.yaml"}
    env |= {"RECIPE": "recipes/tas/aa_qwen2.5-7b.yaml", "MAIN_PROCESS_PORT": "29611", "GPUS_PER_NODE": "4"}
    done = _run(tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "node1").read_text().splitlines() == [
        "launch", "--machine_rank", "1", "--config_file", "recipes/accelerate/multinode_ddp.yaml",
        "--num_machines", "2", "--num_processes", "8", "--main_process_ip", "gpu01", "--main_process_port", "29611",
        "--rdzv_backend", "static", "-m", "coop_rl", "train", "--config", "recipes/tas/aa_qwen2.5-7b.yaml",
        "--output_dir", "/s/r", "--use_peft", "true", "--rollout_backend", "vllm",
        "--vllm_gpu_memory_utilization", "0.3",
    ]  # fmt: skip


def test_the_default_launch_arguments_parse_into_the_trainer_config(tmp_path):
    """What the script passes to `coop_rl train` in vllm mode, on the default recipe, is a valid AAConfig (16 seed
    groups for 16 processes; use_cpu only because this machine has no bf16 GPU, as tests/test_recipes.py does)."""
    import torch
    from trl import TrlParser

    from coop_rl.aa_config import AAConfig

    args = ["--config", str(ROOT / "recipes/ipd/aa_qwen2.5-7b.yaml"), "--output_dir", str(tmp_path / "out")]
    args += ["--use_peft", "true", "--rollout_backend", "vllm", "--vllm_gpu_memory_utilization", "0.3"]
    if not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        args += ["--use_cpu", "true"]
    (config,) = TrlParser(AAConfig, prog="coop-rl train").parse_args_and_config(args)
    assert (config.rollout_backend, config.vllm_gpu_memory_utilization, config.use_peft) == ("vllm", 0.3, True)
    assert (config.matches_per_iteration // config.group_size) % 16 == 0
    assert not config.constrain_answers
