#!/usr/bin/env bash
# coop-rl on a Slurm cluster: N nodes x G GPUs, one `accelerate launch` per node (DeepSpeed ZeRO-2 by default).
# Submit from the repository root with the venv active (sbatch passes the environment on; paths are relative):
#   OUTPUT_DIR=/shared/runs/ipd-aa-qwen7b sbatch recipes/accelerate/slurm_multinode.sh [--field value ...]
# Change to fit: --nodes (N), --gpus-per-node (G; GPUS_PER_NODE follows it), --cpus-per-task, --time, and add
# the --partition/--account your cluster wants. Environment variables (defaults after ':'):
#   OUTPUT_DIR (required): on storage every node (and every vLLM server) reads: checkpoints, the rollout adapter
#   RECIPE: recipes/ipd/aa_qwen2.5-7b.yaml; its matches_per_iteration / group_size must divide by N x G
#   ACCELERATE_CONFIG: recipes/accelerate/multinode_zero2.yaml (or multinode_ddp.yaml); MAIN_PROCESS_PORT: 29500
#   ROLLOUT: vllm = a vLLM engine colocated in every training process (30% of each GPU's memory);
#            server = rollouts on vLLM servers started beforehand (e.g. a separate allocation), named by
#   ROLLOUT_SERVERS: comma-separated URLs, e.g. http://gpu17:8000,http://gpu18:8000. Start each server as
#     VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE_MODEL --enable-lora --max-lora-rank R --max-loras P --max-cpu-loras 2P --logprobs-mode raw_logprobs --generation-config vllm
#   (add --port; --tensor-parallel-size for a large model) with BASE_MODEL the recipe's model_name_or_path,
#   R >= its lora_r (32 in the Qwen2.5 recipes), P >= the number of training processes (N x G, 16 here) and
#   --max-cpu-loras twice P (vLLM keeps unregistered adapters cached); see README.md, "Scaling out".
# Extra arguments go to `coop_rl train` after the recipe (e.g. --max_steps 100 --report_to wandb).
#SBATCH --job-name=coop-rl
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

die() { echo "slurm_multinode.sh: $*" >&2; exit 2; }
[[ -n "${OUTPUT_DIR:-}" ]] || die "set OUTPUT_DIR to a directory on storage shared by every node"
ROLLOUT=${ROLLOUT:-vllm}
case "$ROLLOUT" in
  vllm) rollout=(--use_peft true --rollout_backend vllm --vllm_gpu_memory_utilization 0.3) ;;
  server)
    [[ -n "${ROLLOUT_SERVERS:-}" ]] || die "ROLLOUT=server needs ROLLOUT_SERVERS (comma-separated vLLM server URLs)"
    rollout=(--use_peft true --rollout_backend vllm_server --rollout_servers "$ROLLOUT_SERVERS") ;;
  *) die "ROLLOUT must be vllm or server, not '$ROLLOUT'" ;;
esac
[[ -n "${SLURM_JOB_NODELIST:-}" ]] || die "no Slurm job: submit with sbatch (or run inside salloc)"

GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
launch=(
  --config_file "${ACCELERATE_CONFIG:-recipes/accelerate/multinode_zero2.yaml}"
  --num_machines "$SLURM_NNODES"
  --num_processes "$((SLURM_NNODES * GPUS_PER_NODE))"
  --main_process_ip "${hosts[0]}"
  --main_process_port "${MAIN_PROCESS_PORT:-29500}"
  --rdzv_backend static
  -m coop_rl train --config "${RECIPE:-recipes/ipd/aa_qwen2.5-7b.yaml}"
  --output_dir "$OUTPUT_DIR" "${rollout[@]}" "$@"
)
echo "nodes: ${hosts[*]}; main process ${hosts[0]}; ${GPUS_PER_NODE} processes per node; rollout: $ROLLOUT"
# One task per node; the single quotes keep $SLURM_NODEID for each task to expand (its node's rank).
srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
  bash -c 'exec accelerate launch --machine_rank "$SLURM_NODEID" "$@"' slurm_multinode "${launch[@]}"
