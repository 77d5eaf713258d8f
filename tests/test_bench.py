"""The benchmark cases (bench/suites) as tests. On CPU each quick case runs once
through the interpreter and its result is checked against torch's, as ``make
bench`` does without a GPU; on a GPU they are pytest-benchmark timings
(``pytest tests/test_bench.py --benchmark-only``), each side checked first."""
import pytest
import torch
import torch.distributed as dist

from bench.core import check, collect, setup

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = collect(None, DEVICE, quick=True)


@pytest.fixture(autouse=True)
def _leave_the_worker_as_found():
    """After each case: no process group (the sync_batch_norm cases start one of this
    process alone; later tests in the worker expect none) and no cached GPU memory (a
    worker that ran a ResNet-50 case would keep its peak from the other workers)."""
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


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


def test_report_geomeans_leave_alternatives_out():
    """The report's geomeans cover the paths nnlib takes: a row timed as an
    alternative (conv2d's "nchw-in-place") is listed but not averaged in."""
    from bench.core import markdown
    meta = {"gpu": "GPU", "date": "today", "torch": "t", "triton": "t",
            "ceilings": {"copy_gbps": 1.0, "bf16_matmul_tflops": 1.0}}
    rows = [{"op": "conv2d", "set": "resnet50", "shape": [1], "dtype": "bfloat16", "layout": layout,
             "pass": "forward", "speedup": speedup, **extra}
            for layout, speedup, extra in (("channels_last", 2.0, {}), ("contiguous", 0.5, {}),
                                           ("nchw-in-place", 0.01, {"alternative": True}))]
    report = markdown(rows, meta)
    assert "nchw-in-place" in report and "| conv2d | resnet50 | bfloat16 | forward | 1.00 |" in report
    failed = {**rows[0], "id": "conv2d-broken", "layout": "broken", "speedup": None, "error": "out of memory"}
    report = markdown([*rows, failed], meta)     # a failed case: marked, listed, out of the geomean
    assert "| broken | forward | error |" in report and "- conv2d-broken: out of memory" in report
    assert "| conv2d | resnet50 | bfloat16 | forward | 1.00 |" in report


def test_whole_model_rows_report_throughput_and_peak_memory(monkeypatch):
    """A whole-model row carries both sides' images/s and the peak memory one call
    takes beyond what was allocated before it (``peak_mib``; the GPU's counters
    stood in for), and the report lists them."""
    from bench import core
    allocated = {"now": 3 * 2**20, "peak": 0}

    def call(mib):      # a call that allocates ``mib`` MiB at its peak and frees them
        return lambda: allocated.update(peak=allocated["now"] + mib * 2**20)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: allocated["now"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: allocated.update(peak=allocated["now"]))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: allocated["peak"])
    assert core.whole_model_figures(32, call(5), call(7), 20.0, 40.0) == {
        "images_per_s": 1600.0, "torch_images_per_s": 800.0, "peak_mib": 5.0, "torch_peak_mib": 7.0}
    meta = {"gpu": "GPU", "date": "today", "torch": "t", "triton": "t",
            "ceilings": {"copy_gbps": 1.0, "bf16_matmul_tflops": 1.0}}
    row = {"op": "resnet50", "set": "e2e", "shape": [32], "dtype": "bfloat16", "layout": "channels_last",
           "pass": "train", "speedup": 1.1, "images_per_s": 1100.0, "torch_images_per_s": 1000.0,
           "peak_mib": 5000.0, "torch_peak_mib": 5300.0}
    assert "| resnet50 | bfloat16 | train | 1100 | 1000 | 5000 | 5300 |" in core.markdown([row], meta)


def test_gpu_run_keeps_its_rows_when_stopped_early(tmp_path, monkeypatch):
    """``python -m bench`` on a GPU rewrites its JSON and Markdown after every case,
    so a run that gpu_check's time box stops keeps what it timed (the GPU side
    stood in for: fake ceilings and timings, a stop after the second case)."""
    import json
    from bench import core
    timed = []

    def time_case(case, ceilings):
        if len(timed) == 2:
            raise SystemExit("time box")
        timed.append(case.id)
        return {**core.row_of(case), "ours_ms": 1.0, "baseline_ms": 2.0, "speedup": 2.0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(core, "measure_ceilings", lambda device: {"copy_gbps": 1.0, "bf16_matmul_tflops": 1.0})
    monkeypatch.setattr(core, "time_case", time_case)
    total = len(core.collect(["conv2d"], "cuda", True))
    with pytest.raises(SystemExit):
        core.run(["conv2d"], True, str(tmp_path))
    (result,) = tmp_path.glob("Fake_GPU-*.json")
    saved = json.loads(result.read_text())
    assert [r["id"] for r in saved["rows"]] == timed and saved["meta"]["cases_done"] == f"2 of {total}"
    assert f"Cases timed: 2 of {total}." in result.with_suffix(".md").read_text()


def test_suites_run_in_the_order_asked():
    """gpu_check asks for the suites in the order that keeps most rows when its box ends."""
    norm, activation = (collect([suite], DEVICE, quick=True) for suite in ("norm", "activation"))
    assert norm and activation
    assert [c.id for c in collect(["norm", "activation"], DEVICE, quick=True)] == [c.id for c in norm + activation]


def test_cpu_run_without_the_interpreter_refuses(monkeypatch, tmp_path, capsys):
    """Without a GPU and without the interpreter nnlib takes torch's path: the
    benchmark says so and fails instead of checking torch against torch."""
    from bench import core
    from kernels import _runtime
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(_runtime, "interpreting", lambda: False)
    assert core.run(["activation"], True, str(tmp_path)) == 2
    assert "TRITON_INTERPRET" in capsys.readouterr().out
