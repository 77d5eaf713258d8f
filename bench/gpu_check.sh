#!/usr/bin/env bash
# The one GPU check: environment report, the test suite on CUDA, then the quick
# benchmark. Everything is written to the folder given as the first argument.
#   bash bench/gpu_check.sh OUTDIR [bench args, e.g. --ops conv2d]
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR [bench args]}
shift
mkdir -p "$out"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/env.txt"
timeout 300 $PY -m pytest tests -m cuda -q -x -p no:cacheprovider 2>&1 | tail -n 40 | tee "$out/tests.txt"
tests_rc=${PIPESTATUS[0]}
timeout 240 $PY -m bench --quick --out "$out" "$@" 2>&1 | tee "$out/bench.txt"
bench_rc=${PIPESTATUS[0]}
echo "tests rc=$tests_rc bench rc=$bench_rc" | tee -a "$out/env.txt"
exit $(( tests_rc || bench_rc ))
