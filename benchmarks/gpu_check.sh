#!/usr/bin/env bash
# The GPU check: one command on a bare GPU machine, under 8 minutes, nothing installed, no network.
# It needs python3 with a CUDA build of torch, triton, safetensors, tokenizers, numpy, pytest (+ xdist
# if there: faster), matplotlib, and transformers + peft for the PEFT oracle tests; no FastAPI,
# SQLAlchemy or pydantic-settings: only lorafleet.kernels and lorafleet.runtime.engine are imported,
# mapped onto this checkout by a shim on PYTHONPATH (no pip install).
#
#   bash benchmarks/gpu_check.sh          # results in $OUT, else benchmarks/results/gpu_check
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#   DECODE_SHAPE=tiny PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh   # a dry run on a CPU
#
# Sections, each time-boxed (a failure or a timeout is recorded, the rest still runs):
#   kernel_tests  pytest tests/kernels on CUDA (real Triton)                        } side by side,
#   engine        gpu_engine.py: engine on CUDA vs CPU, CUDA graphs on/off,         } no timings
#                 warm-up (nothing compiles while serving), gpu_smoke's checks     }
#   build_model   gpu_decode.py --build: the 1B-shaped checkpoint for `decode`       }
#   attention     benchmarks/attention.py --quick (decode bandwidth vs HBM, graphs vs graphs)
#   lora_kernels  benchmarks/kernels.py --quick (ours vs loop / bmm, paged vs stacked)
#   decode        gpu_decode.py: decode tokens/s with and without CUDA graphs at batch 1/8/32,
#                 LoRA kernel vs a per-adapter loop at 32 tokens x 32 adapters (graph vs graph)
#   sharded       gpu_sharded.py, only with 2+ GPUs: --num-shard 2 (NCCL) vs 1, identical greedy
#                 tokens, tokens/s and the all-reduce share (sharded.json, a 9th file)
# Files in the results folder (8): gpu_check.json (the summary, also printed), kernel_tests.json,
# engine.json, attention.json, kernels.json, decode.json + decode.png, log.txt (every section's output).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
RESULTS=${OUT:-$REPO/benchmarks/results/gpu_check}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/lf_gpu_check.XXXXXX)
mkdir -p "$RESULTS" "$WORK/shim/lorafleet"
: > "$WORK/shim/lorafleet/__init__.py"
ln -s "$REPO/kernels" "$WORK/shim/lorafleet/kernels"
ln -s "$REPO/runtime" "$WORK/shim/lorafleet/runtime"
export PYTHONPATH="$WORK/shim:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export LORAFLEET_FIXTURES_DIR="$WORK/fixtures" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET LORAFLEET_KERNELS  # real kernels, dispatched by device

# section NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output in WORK/NAME.log,
# and appends "NAME exit-code seconds" to WORK/sections.tsv.
section() {
  local name=$1 limit=$2 began rc
  shift 2
  began=$(date +%s)
  echo "== $name (at most ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  echo "$name $rc $(( $(date +%s) - began ))" >> "$WORK/sections.tsv"
  echo "== $name: exit $rc after $(( $(date +%s) - began )) s"
}

"$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)" \
  || echo "WARNING: no usable CUDA device for $PY; the sections below will say why"

PARALLEL=()
if "$PY" -c "import xdist" 2> /dev/null; then PARALLEL=(-n 6); fi
section kernel_tests 160 "$PY" -m pytest tests/kernels -q -p no:cacheprovider ${PARALLEL[@]+"${PARALLEL[@]}"} \
  -o addopts="" --junitxml="$WORK/kernel_tests.xml" &
section engine 160 "$PY" benchmarks/gpu_engine.py --json-out "$RESULTS/engine.json" &
section build_model 160 "$PY" benchmarks/gpu_decode.py --build "$WORK/decode_model" \
  --shape "${DECODE_SHAPE:-llama-1b}" &
wait

mkdir -p "$WORK/attention" "$WORK/kernels"  # the benchmarks' PNGs stay here: 8 files come back at most
section attention 75 "$PY" benchmarks/attention.py --quick --json-out "$WORK/attention/attention.json"
cp "$WORK/attention/attention.json" "$RESULTS/" 2> /dev/null
section lora_kernels 75 "$PY" benchmarks/kernels.py --quick --json-out "$WORK/kernels/kernels.json"
cp "$WORK/kernels/kernels.json" "$RESULTS/" 2> /dev/null
section decode 150 "$PY" benchmarks/gpu_decode.py --json-out "$RESULTS/decode.json" \
  --model-root "$WORK/decode_model"
if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2> /dev/null || echo 0)" -ge 2 ]; then
  section sharded 120 "$PY" benchmarks/gpu_sharded.py --json-out "$RESULTS/sharded.json"
fi

for log in "$WORK"/*.log; do
  echo "===== $(basename "$log")"
  tail -c 400000 "$log"
done > "$RESULTS/log.txt"
"$PY" benchmarks/gpu_summary.py --work "$WORK" --out "$RESULTS"
