"""The benchmark cases (bench/suites) as tests. On CPU each quick case runs once
through the interpreter and its result is checked against torch's, as ``make
bench`` does without a GPU; on a GPU they are pytest-benchmark timings
(``pytest tests/test_bench.py --benchmark-only``), each side checked first."""
import pytest
import torch

from bench.core import check, collect, setup

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = collect(None, DEVICE, quick=True)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_matches_torch(case):
    check(case, *setup(case))


@pytest.mark.skipif(DEVICE != "cuda", reason="timings need a CUDA GPU")
@pytest.mark.parametrize("side", ["nnlib", "torch"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bench(benchmark, case, side):
    torch.backends.cudnn.benchmark = True
    ours, baseline = setup(case)
    check(case, ours, baseline)
    fn = ours if side == "nnlib" else baseline

    def run():
        fn()
        torch.cuda.synchronize()
    benchmark(run)
