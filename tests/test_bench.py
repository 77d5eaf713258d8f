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
    ours, baseline, *exact = setup(case)
    check(case, ours, baseline, *exact)
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
    rows.append({**rows[0], "speedup": 8.0})
    report = markdown(rows, meta)
    assert "nchw-in-place" in report
    assert "| conv2d | resnet50 | bfloat16 | channels_last | forward | 4.00 | 2 |" in report
    assert "| conv2d | resnet50 | bfloat16 | contiguous | forward | 0.50 | 1 |" in report     # layouts apart
    failed = {**rows[0], "id": "conv2d-broken", "speedup": None, "error": "out of memory"}
    report = markdown([*rows, failed], meta)     # a failed case: marked, listed, out of the geomean
    assert "| channels_last | forward | error |" in report and "- conv2d-broken: out of memory" in report
    assert "| conv2d | resnet50 | bfloat16 | channels_last | forward | 4.00 | 2 |" in report


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
        return _fake_row(core, case)
    _fake_gpu(monkeypatch, core)
    monkeypatch.setattr(core, "time_case", time_case)
    total = len(core.collect(["conv2d"], "cuda", True))
    with pytest.raises(SystemExit):
        core.run(["conv2d"], True, str(tmp_path))
    (result,) = tmp_path.glob("Fake_GPU-*.json")
    saved = json.loads(result.read_text())
    assert [r["id"] for r in saved["rows"]] == timed and saved["meta"]["runs"]["conv2d"]["done"] == 2
    assert f"Cases run: 2 of {total} (quick run" in result.with_suffix(".md").read_text()
    assert not list(tmp_path.glob("*.tmp"))


def _fake_gpu(monkeypatch, core) -> list:
    """The GPU side of ``core.run`` stood in for; returns the list that counts the
    ceilings' measurements."""
    measured = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90000)
    monkeypatch.setattr(core, "measure_ceilings",
                        lambda device: measured.append(1) or {"copy_gbps": 1.0, "bf16_matmul_tflops": 1.0})
    monkeypatch.setattr(core, "kernel_fields", lambda case: {})
    return measured


def _fake_row(core, case, speedup=2.0):
    return {**core.row_of(case), "ours_ms": 1.0, "baseline_ms": speedup, "speedup": speedup, "spread": 0.01,
            "setup_s": 0.5, "timing_s": 0.5}


def test_gpu_runs_of_one_suite_each_append_to_one_report(tmp_path, monkeypatch):
    """gpu_check runs each suite in a process of its own with ``--append``: one JSON
    and Markdown for the GPU and day, the ceilings measured once, a case timed again
    replacing its row when it ends (a rerun stopped early keeps the rows it did
    not reach), a run without --append, or a report of an older format, starting
    over."""
    import json
    from bench import core
    measured = _fake_gpu(monkeypatch, core)
    speedup = {"now": 2.0, "stop_after": None}
    timed = []

    def time_case(case, ceilings):
        if len(timed) == speedup["stop_after"]:
            raise SystemExit("time box")
        timed.append(case.id)
        return _fake_row(core, case, speedup["now"])
    monkeypatch.setattr(core, "time_case", time_case)
    pool, act = (core.collect([suite], "cuda", True) for suite in ("max_pool2d", "activation"))
    assert core.run(["max_pool2d"], True, str(tmp_path), append=True) == 0
    assert core.run(["activation"], True, str(tmp_path), append=True) == 0
    speedup.update(now=3.0, stop_after=len(timed) + 2)
    with pytest.raises(SystemExit):     # max_pool2d again, stopped after two cases
        core.run(["max_pool2d"], True, str(tmp_path), append=True)
    (result,) = tmp_path.glob("Fake_GPU-*.json")
    saved = json.loads(result.read_text())
    assert [r["id"] for r in saved["rows"]] == [c.id for c in pool + act] and len(measured) == 1
    assert [r["speedup"] for r in saved["rows"]] == [3.0] * 2 + [2.0] * (len(pool) - 2 + len(act))
    total = len(pool) + len(act)
    assert f"Cases run: {total} of {total} (quick run" in result.with_suffix(".md").read_text()
    speedup["stop_after"] = None
    assert core.run(["activation"], True, str(tmp_path)) == 0
    assert len(json.loads(result.read_text())["rows"]) == len(act) and len(measured) == 2
    saved = json.loads(result.read_text())
    del saved["meta"]["runs"]       # a report of before ``runs``
    result.write_text(json.dumps(saved))
    assert core.run(["max_pool2d"], True, str(tmp_path), append=True) == 0
    assert len(json.loads(result.read_text())["rows"]) == len(pool) and len(measured) == 3


def test_gpu_run_stops_when_the_cuda_context_is_lost(tmp_path, monkeypatch):
    """After a sticky CUDA error (an illegal address) every later case would fail
    alike: the run records the case, says why it stopped and stops; an error that
    leaves the context usable (out of memory, cuBLAS's) does not stop it."""
    import json
    from bench import core
    _fake_gpu(monkeypatch, core)
    calls = []

    def time_case(case, ceilings):
        calls.append(case.id)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if len(calls) == 2:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        if len(calls) == 4:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return _fake_row(core, case)
    monkeypatch.setattr(core, "time_case", time_case)
    assert core.run(["activation"], True, str(tmp_path)) == 1
    (result,) = tmp_path.glob("Fake_GPU-*.json")
    saved = json.loads(result.read_text())
    assert len(calls) == 4 and len(saved["rows"]) == 4
    assert "illegal memory access" in saved["meta"]["runs"]["activation"]["stopped"]
    assert "The run of activation stopped: " in result.with_suffix(".md").read_text()
    monkeypatch.setattr(core, "time_case", lambda case, ceilings: _fake_row(core, case))
    assert core.run(["max_pool2d"], True, str(tmp_path), append=True) == 0      # its own cases passed
    assert core.run(["activation"], True, str(tmp_path), append=True) == 0      # rerun: the stop is gone
    assert "stopped" not in result.with_suffix(".md").read_text()


def test_sides_are_timed_twice_interleaved(monkeypatch):
    """time_case compiles our side's kernels ahead of its check, warms both sides
    (the GPU's clocks), then times ours, torch, ours, torch: each side's time is
    the mean of its two medians, its spread their difference, with the case's
    repetition time."""
    import triton.testing
    from bench import core
    case = core.collect(["activation"], DEVICE, quick=True)[0]
    case.rep_ms = 400
    order, times = [], iter([9.0, 9.0, 1.0, 4.0, 1.2, 4.0])

    def do_bench(fn, warmup, rep, return_mode):
        order.append((fn, rep))
        return next(times)
    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    monkeypatch.setattr(core, "setup", lambda case: ("ours", "torch"))
    monkeypatch.setattr(core, "compile_first", lambda fn: order.append(("compiled", fn)))
    monkeypatch.setattr(core, "check", lambda case, ours, baseline: order.append("checked"))
    monkeypatch.setattr(core, "host_us", lambda fn, calls: {"ours": 12.0, "torch": 9.0}[fn] * calls)
    row = core.time_case(case, {"copy_gbps": 1.0, "bf16_matmul_tflops": 1.0})
    warm = core.CLOCK_WARMUP_MS
    assert order == [("compiled", "ours"), "checked", ("ours", warm), ("torch", warm), ("ours", 400), ("torch", 400),
                     ("ours", 400), ("torch", 400)]
    assert row["ours_ms"] == pytest.approx(1.1) and row["baseline_ms"] == 4.0
    assert row["speedup"] == pytest.approx(4.0 / 1.1) and row["spread"] == pytest.approx(0.2)
    assert (row["host_us"], row["baseline_host_us"]) == (12.0 * core.HOST_CALLS, 9.0 * core.HOST_CALLS)


def test_rows_say_what_their_times_are_made_of(tmp_path, monkeypatch):
    """A GPU run times every case, then profiles each (a new setup: no timing runs
    under the profiler's hooks): a row carries both sides' host time per call, their
    kernels' summed device time and longest kernels, which the report shows as ours /
    torch; a case that cannot be profiled keeps its times and says why; a failed
    case is not profiled. ``kernel_us`` sums a call's events by name (here CPU ops:
    kernels need CUPTI), ``host_us`` times calls queued back to back."""
    import json
    import time
    from bench import core
    times = core.kernel_us(lambda: torch.ones(256).mul(2).add(1), calls=3, device="cpu")
    assert times["aten::mul"] > 0 and times["aten::add"] > 0
    assert 2000 <= core.host_us(lambda: time.sleep(0.002), calls=2) < 20000
    _fake_gpu(monkeypatch, core)
    first, second, third = core.collect(["activation"], "cuda", True)[:3]
    monkeypatch.setattr(core, "collect", lambda ops, device, quick: [first, second, third])
    monkeypatch.setattr(core, "time_case", lambda case, ceilings: {
        **_fake_row(core, case), "host_us": 12.0, "baseline_host_us": 9.0} if case is not third else 1 / 0)
    profiled = []

    def kernel_fields(case):
        profiled.append(case)
        if case is second:
            raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")
        return {"kernel_us": 31.5, "baseline_kernel_us": 20.0,
                "kernels": {"_relu_kernel": 30.0, "memset": 1.5}, "baseline_kernels": {"elementwise_kernel": 20.0}}
    monkeypatch.setattr(core, "kernel_fields", kernel_fields)
    assert core.run(["activation"], True, str(tmp_path)) == 1
    assert profiled == [first, second]
    (result,) = tmp_path.glob("Fake_GPU-*.json")
    rows = json.loads(result.read_text())["rows"]
    assert rows[0]["kernel_us"] == 31.5 and rows[1]["profile_error"] == "RuntimeError: CUPTI_ERROR_NOT_INITIALIZED"
    report = result.with_suffix(".md").read_text()
    assert "| 12 / 9 | 32 / 20 |" in report
    assert f"- {first.id}: ours `_relu_kernel` 30.0, `memset` 1.5; torch `elementwise_kernel` 20.0" in report
    assert f"- {second.id}: RuntimeError: CUPTI_ERROR_NOT_INITIALIZED" in report
    profiled.clear()
    assert core.run(["activation"], True, str(tmp_path), kernels=False) == 1 and not profiled

    def context_lost(case):
        profiled.append(case)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(core, "kernel_fields", context_lost)
    assert core.run(["activation"], True, str(tmp_path)) == 1 and profiled == [first]
    assert f"profiling {first.id} lost the CUDA context" in result.with_suffix(".md").read_text()
    assert core._top({"a" * 90 + "1": 1.0, "a" * 90 + "2": 2.0, "b": 0.5}) == {"a" * 80: 3.0, "b": 0.5}


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


def test_resnet50_flops():
    """The e2e rows' arithmetic: ResNet-50's forward is 4.09 G multiply-adds an image
    (torchvision's figure); a training step three times it, less the stem's input
    gradient, which neither side computes (the images do not require grad)."""
    from bench.suites.e2e import layer_flops, training_flops
    from nnlib.models import reference
    with torch.device("meta"):
        flops = layer_flops(reference.resnet50(1000), (1, 3, 224, 224))
    assert len(flops) == 54 and round(sum(flops.values()) / 2e9, 2) == 4.09
    assert flops["conv1"] == 2 * 112 * 112 * 64 * 3 * 7 * 7
    assert training_flops(flops) == 3 * 8_178_368_512 - 236_027_904


def test_one_runs_the_cases_asked_for_a_profiler(monkeypatch, capsys):
    """``python -m bench.one`` sets up the quick cases whose id holds a pattern and
    calls each side once, then ``calls`` times between cudaProfilerStart and Stop
    (the GPU stood in for); no CUDA GPU, or no case matched: exit status 2."""
    from bench import core, one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert one.main(["relu"]) == 2 and "no CUDA GPU" in capsys.readouterr().out
    events = []
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)   # restored after
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda.nvtx, "range_start", lambda name: events.append(("range", name)) or 7)
    monkeypatch.setattr(torch.cuda.nvtx, "range_end", lambda marker: events.append(("end", marker)))
    monkeypatch.setattr(torch.cuda.profiler, "start", lambda: events.append("start"))
    monkeypatch.setattr(torch.cuda.profiler, "stop", lambda: events.append("stop"))
    monkeypatch.setattr(one, "setup", lambda case: (lambda: events.append("ours"), lambda: events.append("torch")))
    wanted = [c.id for c in core.collect(core.suite_names(), "cuda", True) if "max_pool2d-vgg16" in c.id]
    assert len(wanted) == 4
    assert one.main(["max_pool2d-vgg16", "--side", "ours", "--calls", "2"]) == 0
    assert events == [e for case in wanted
                      for e in ("ours", ("range", f"ours {case}"), "start", "ours", "ours", "stop", ("end", 7))]
    assert one.main(["no-such-case"]) == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="kernels need a CUDA GPU")
def test_kernel_times_name_the_kernels_a_call_launches():
    """On a GPU ``kernel_us`` names the kernels a call launches (ours: the Triton
    kernel's name) with their device times, not the ops that launched them."""
    import nnlib.functional as F
    from bench import core
    x = torch.randn(1 << 20, device="cuda")
    times = core.kernel_us(lambda: F.relu(x))
    assert any("_activation_fwd_kernel" in name for name in times), times
    assert all(us > 0 for us in times.values()) and not any(name.startswith("aten::") for name in times)


def test_compile_first_calls_inside_compile_ahead(monkeypatch):
    """``compile_first(fn)`` calls ``fn`` once inside ``compile_ahead`` where that
    compiles (else not: fn would run for real); an error there (it computes on
    uninitialised values) is left for the real call to show."""
    import contextlib
    from bench import core
    from kernels import _runtime
    events = []

    @contextlib.contextmanager
    def compile_ahead():
        events.append("ahead")
        yield
        events.append("compiled")
    monkeypatch.setattr(_runtime, "compile_ahead", compile_ahead)
    core.compile_first(lambda: events.append("call"))       # on this CPU nothing compiles ahead
    assert events == ["ahead", "compiled"]
    monkeypatch.setattr(_runtime, "compiling_ahead", lambda: True)
    core.compile_first(lambda: events.append("call"))
    core.compile_first(lambda: 1 / 0)
    assert events == ["ahead", "compiled", "ahead", "call", "compiled", "ahead"]


def test_sweep_times_each_setting_and_restores_the_defaults(monkeypatch, capsys):
    """``python -m bench.sweep`` sets each constant of a suite to each of its values
    (plans rebuilt: the caches emptied each time), times our side of the suite's
    cases (a failing case recorded, not fatal) and restores the default; the
    report gives each time against the default value's. Without a GPU: status 2."""
    from bench import sweep
    from kernels import _runtime, activation
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sweep.main([]) == 2 and "no CUDA GPU" in capsys.readouterr().out
    cleared = []
    monkeypatch.setattr(_runtime, "clear_plan_caches", lambda: cleared.append(activation._BLOCK))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)

    def time_ours(case):
        if activation._BLOCK == 8192 and "backward" in case.id:
            raise RuntimeError("out of resources")
        return activation._BLOCK / 1024.0
    monkeypatch.setattr(sweep, "time_ours", time_ours)
    rows = []

    def record(knob, value, default, case, ms):
        rows.append({"constant": knob.name, "value": value, "default": default, "case": case.id, "ms": ms})
    assert sweep.sweep("activation", record)
    (knob,) = sweep.SWEEPS["activation"]
    cases = sweep._cases("activation", knob)
    assert len(cases) == 4 and activation._BLOCK == 1024 and cleared == [1024, 2048, 4096, 8192, 1024]
    assert [(r["value"], r["case"]) for r in rows] == [(v, c.id) for v in (1024, 2048, 4096, 8192) for c in cases]
    assert rows[-1]["ms"] == "RuntimeError: out of resources"
    report = sweep.markdown(rows, {"gpu": "GPU", "date": "today", "torch": "t", "triton": "t"})
    assert f"| _BLOCK | 1024 (default) | {cases[0].id} | 1.0000 | 1.00 |" in report
    assert f"| _BLOCK | 4096 | {cases[0].id} | 4.0000 | 0.25 |" in report
    assert f"| _BLOCK | 8192 | {cases[1].id} | RuntimeError: out of resources |  |" in report
    import importlib
    for suite, knobs in sweep.SWEEPS.items():       # each default among its values, each knob reaching a case
        for knob in knobs:
            assert getattr(importlib.import_module(knob.module), knob.name) in knob.values, knob
            assert sweep._cases(suite, knob), knob
    assert all("contiguous" not in c.id for c in sweep._cases("norm", sweep.SWEEPS["norm"][2]))
    for knob in sweep.SWEEPS["conv2d"]:             # a knob's passes only (every one when it names none)
        cases = sweep._cases("conv2d", knob)
        assert {c.pass_name for c in cases} == set(knob.passes or ("forward", "input_grad", "weight_grad"))
        assert all("depthwise" in c.id for c in cases)
    assert [len(sweep._cases("conv2d", knob)) for knob in sweep.SWEEPS["conv2d"]] == [11, 3, 4, 4]

    def context_lost(case):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(sweep, "time_ours", context_lost)
    rows.clear()
    assert not sweep.sweep("activation", record)        # a lost context stops the sweep
    assert [r["value"] for r in rows] == [1024] and activation._BLOCK == 1024
