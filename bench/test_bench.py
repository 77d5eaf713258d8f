"""The benchmark cases as pytest-benchmark tests: ``pytest bench/ --benchmark-only``
on a GPU. Without one they skip, saying so."""
import pytest
import torch

from bench.core import check, collect

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = collect(None, "cuda", quick=True) if DEVICE == "cuda" else []


@pytest.mark.skipif(DEVICE != "cuda", reason="benchmarks time CUDA kernels: no CUDA GPU here")
@pytest.mark.parametrize("side", ["nnlib", "torch"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bench(benchmark, case, side):
    torch.backends.cudnn.benchmark = True
    ours, baseline = case.setup()
    check(case, ours, baseline)
    fn = ours if side == "nnlib" else baseline

    def run():
        fn()
        torch.cuda.synchronize()
    benchmark(run)
