#!/usr/bin/env bash
# The one GPU check, in one device call of at most 9.5 minutes: environment report,
# direct launches against Triton's path (bench.launches), the whole test suite on
# CUDA (one autotune config per kernel), nnlib.selftest --quick (autotuned: compiles
# more configs than the tests), then the quick benchmark (autotuned for real), each
# suite in a process of its own (a kernel that loses the CUDA context costs its suite
# only), all adding to one report.
# Each step is time-boxed, so a hang in one still leaves the others' results in the
# folder given as first argument.
#   bash bench/gpu_check.sh OUTDIR [SUITES, comma-separated: activation,max_pool2d,norm,conv2d,e2e]
# The boxes (seconds) can be shortened to leave device time for a rerun (0 skips the step):
#   GPU_CHECK_LAUNCHES_S (60), GPU_CHECK_TESTS_S (225), GPU_CHECK_SELFTEST_S (105), GPU_CHECK_BENCH_S (180);
# GPU_CHECK_PYTEST_ARGS: more pytest arguments for the tests (a rerun's selection); GPU_CHECK_KERNELS=0:
# the bench does not profile each case's kernels after its timings (bench --no-kernels); GPU_CHECK_SWEEP:
# suites for bench.sweep, GPU_CHECK_NCU: cases for Nsight Compute (below; their boxes, GPU_CHECK_SWEEP_S
# and GPU_CHECK_NCU_S, add to the others: shorten those to fit).
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR [SUITES]}
set -- "${2:-activation,max_pool2d,norm,conv2d,e2e}"
mkdir -p "$out"
out=$(cd "$out" && pwd)     # absolute: the steps run from the repository root
rm -f "$out/summary.txt" "$out/tests.xml"     # a rerun into the same folder starts clean
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
step() {   # step NAME SECONDS COMMAND...: run, log to OUTDIR/NAME.txt, remember the status
  local name=$1 seconds=$2
  shift 2
  if (( seconds <= 0 )); then
    echo "$name: skipped (box of 0 s)" | tee -a "$out/summary.txt"
    return 0
  fi
  local start=$SECONDS
  timeout "$seconds" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $((SECONDS - start)) s (limit $seconds s)" | tee -a "$out/summary.txt"
  tail -n 3 "$out/$name.txt"
  return $rc
}
{
  date -u
  timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  timeout 60 $PY -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
rc=0
# Every test that can run on CUDA does (the compile test is the CPU's stand-in for a GPU: skipped here).
# Compiling every kernel once dominates a fresh machine's run: the suite launches about 2400 distinct
# kernel specialisations (counted under the interpreter, 2026-11-29), some 0.5 s of one core each to
# compile (sm_90, this project's CPU), so one worker per core of the device's 16.
# A test that hangs (a kernel that never returns) loses its worker after 120 s, not the summary.
# Direct launches (a bound launch straight to Triton's compiled kernel) against JITFunction.run: host time
# per call beside torch's for the same call, and the same bits; if they differ or fail, the rest runs with Triton's path
# (NNLIB_DIRECT_LAUNCH=0) and the summary says so.
if ! step launches "${GPU_CHECK_LAUNCHES_S:-60}" env NNLIB_AUTOTUNE=0 $PY -m bench.launches "$out"; then
  rc=1
  export NNLIB_DIRECT_LAUNCH=0
  echo "launches: failed; the steps below run with NNLIB_DIRECT_LAUNCH=0" | tee -a "$out/summary.txt"
fi
# test_bench's timings are the bench step's work (and pytest-benchmark switches itself off under xdist).
# -v: a line per test as it ends, so a run the box stops still says which tests failed.
step tests "${GPU_CHECK_TESTS_S:-225}" env NNLIB_AUTOTUNE=0 $PY -m pytest tests -v --tb=short -n 16 \
  -p no:cacheprovider --ignore=tests/test_compile.py --deselect tests/test_bench.py::test_bench \
  --timeout 120 --timeout-method thread --junitxml="$out/tests.xml" -o junit_family=xunit2 \
  ${GPU_CHECK_PYTEST_ARGS:-} || rc=1
step selftest "${GPU_CHECK_SELFTEST_S:-105}" $PY -m nnlib.selftest --quick || rc=1
# Suites in the order that keeps most rows if the box ends early: each case's row is written as it
# ends; the cheap suites first, then conv (a row per case), then the ResNet-50 steps (which find
# conv's compiled kernels in Triton's cache). The suites share one box (180 s).
# The first suite starts the report over, the others add to it.
deadline=$((SECONDS + ${GPU_CHECK_BENCH_S:-180})) append=""
kernels=$([[ "${GPU_CHECK_KERNELS:-1}" == 0 ]] && echo --no-kernels)
for suite in ${1//,/ }; do
  left=$((deadline - SECONDS))
  if (( left < 10 )); then
    echo "bench-$suite: not run, the bench's box was spent" | tee -a "$out/summary.txt"
    rc=1
    continue
  fi
  step "bench-$suite" $left $PY -m bench --quick $append $kernels --out "$out" --ops "$suite" || rc=1
  append=--append
done
# GPU_CHECK_SWEEP (suites of bench.sweep, comma- or space-separated: norm,activation,max_pool2d,conv2d): our side's
# times at other values of the tiling constants, in a box of GPU_CHECK_SWEEP_S (120 s).
if [[ -n "${GPU_CHECK_SWEEP:-}" ]]; then
  step sweep "${GPU_CHECK_SWEEP_S:-120}" $PY -m bench.sweep ${GPU_CHECK_SWEEP//,/ } --out "$out" || rc=1
fi
# GPU_CHECK_NCU (substrings of quick cases' ids, space-separated): Nsight Compute on those cases' calls
# (bench.one: after their compiles and tuning), both sides, in a box of GPU_CHECK_NCU_S (120 s).
if [[ -n "${GPU_CHECK_NCU:-}" ]]; then
  if command -v ncu > /dev/null; then
    step ncu "${GPU_CHECK_NCU_S:-120}" ncu --profile-from-start off --nvtx --section SpeedOfLight --section Occupancy \
      --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
      $PY -m bench.one $GPU_CHECK_NCU || rc=1
  else
    echo "ncu: not run, no ncu on PATH" | tee -a "$out/summary.txt"
  fi
fi
echo "gpu_check rc=$rc" | tee -a "$out/summary.txt"
exit $rc
