#!/usr/bin/env bash
# One call for a GPU session: the kernel tests on CUDA (real Triton, no interpreter), then the
# kernel benchmark. Under 8 minutes on an H100/H200. Results: $OUT (if set) or benchmarks/results.
#   bash benchmarks/gpu_check.sh            # full benchmark
#   BENCH_ARGS=--quick bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
unset TRITON_INTERPRET LORAFLEET_KERNELS   # real kernels, dispatched by device
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"

if ! "$PY" -c "import lorafleet.kernels" 2>/dev/null; then
  echo "lorafleet is not installed for $PY: installing it editable, without dependencies"
  "$PY" -m pip install -q --no-deps --no-build-isolation -e .
fi
"$PY" - <<'PY'
import torch, triton
assert torch.cuda.is_available(), "gpu_check.sh needs a CUDA device"
print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
PY

status=0
timeout 240 "$PY" -m pytest tests/kernels -q -p no:cacheprovider --junitxml="$RESULTS/kernel-tests.xml" \
  2>&1 | tee "$RESULTS/kernel-tests.txt" || status=$?
timeout 300 "$PY" benchmarks/kernels.py --out "$RESULTS" ${BENCH_ARGS:-} 2>&1 | tee "$RESULTS/bench.txt" \
  || status=$?
exit "$status"
