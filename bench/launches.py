"""``python -m bench.launches [OUTDIR]``: on a GPU, a bound launch's host time
straight to the kernel Triton compiled (``kernels._runtime._direct``, the default)
against through ``JITFunction.run`` (``NNLIB_DIRECT_LAUNCH=0``), and that both
give the same bits.

Calls small enough that the host, not the GPU, sets their pace (a 3x3 conv2d and
a batch-norm training step on 2x64x8x8, channels_last, fp16; the batch norm's
forward alone too, so that its backward's share shows), each timed as the least
of five means over 200 calls, with the plans built with direct launches on, then
off, and beside them torch's same call (cuDNN, torch's batch norm and relu): the
host's pace for one call of torch. Prints a table, writes ``launches.json`` to
OUTDIR when given, exits 1 when the two ways give different results. With OUTDIR
it also writes ``launches-profile.txt``: each case's calls (direct launches)
under cProfile and under torch.profiler (every thread, CUDA runtime and driver
calls included), and the host synchronisations one call makes (on an H200's
host, 2026-11-30, these calls took 35-920 us: several times what ``python -m
bench --host`` counts on a 2-core CPU, cause not yet known). bench/gpu_check.sh
runs it.
"""
from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import sys
import time
import warnings

import torch
import torch.nn.functional as TF

import nnlib.functional as F
from kernels import _runtime

CALLS = 200
REPEATS = 5


def _cases(functional=F):
    """name -> call returning the tensors to compare, of nnlib's ops (``functional``:
    nnlib.functional) or torch's (torch.nn.functional)."""
    torch.manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(2, 64, 8, 8, device="cuda", dtype=torch.half).contiguous(memory_format=cl).requires_grad_()
    w = torch.randn(64, 64, 3, 3, device="cuda", dtype=torch.half).contiguous(memory_format=cl).requires_grad_()
    weight = torch.ones(64, device="cuda", dtype=torch.half, requires_grad=True)
    bias = torch.zeros(64, device="cuda", dtype=torch.half, requires_grad=True)

    def batch_norm_relu():
        if functional is F:
            return F.batch_norm(x, None, None, weight, bias, True, activation="relu")
        return TF.relu(TF.batch_norm(x, None, None, weight, bias, True))

    def conv_forward():
        with torch.no_grad():
            return [functional.conv2d(x, w, padding=1)]

    def conv_step():
        y = functional.conv2d(x, w, padding=1)
        return [y, *torch.autograd.grad(y.float().square().sum(), (x, w))]

    def batch_norm_step():
        y = batch_norm_relu()
        return [y, *torch.autograd.grad(y.float().square().sum(), (x, weight, bias))]
    return {"conv2d 3x3 forward": conv_forward, "conv2d 3x3 forward+backward": conv_step,
            "batch_norm + relu train forward": lambda: [batch_norm_relu()],
            "batch_norm + relu train forward+backward": batch_norm_step}


def _run_calls(call, calls: int = CALLS) -> None:
    """``calls`` calls of ``call``, then a synchronisation (their GPU work done)."""
    for _ in range(calls):
        call()
    torch.cuda.synchronize()


def _per_call_us(call) -> float:
    """Wall time of one ``call()`` in microseconds, after two calls (compiles, tunes,
    binds): the least of REPEATS means over CALLS calls."""
    _run_calls(call, 2)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        _run_calls(call)
        best = min(best, (time.perf_counter() - start) / CALLS)
    return best * 1e6


def _measure(direct: bool) -> dict:
    """name -> (outputs, us per call) with direct launches on or off."""
    _runtime._DIRECT = direct
    _runtime.clear_plan_caches()
    return {name: ([t.detach().clone() for t in call()], _per_call_us(call)) for name, call in _cases().items()}


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available():
        print("bench.launches: no CUDA GPU (direct launches exist only there)")
        return 0
    direct_on = _runtime._DIRECT
    try:
        direct, through = _measure(True), _measure(False)
    finally:
        _runtime._DIRECT = direct_on
        _runtime.clear_plan_caches()
    torch_us = {}
    for name, call in _cases(TF).items():
        try:                # torch's pace is context: its failure leaves the verdict alone
            torch_us[name] = _per_call_us(call)
        except Exception as exc:  # noqa: BLE001
            torch_us[name] = None
            print(f"torch's {name}: {type(exc).__name__}: {exc}")
    rows, same_everywhere = [], True
    print(f"{torch.cuda.get_device_name()}: us per call (wall over {CALLS} calls, least of {REPEATS})")
    print("| case | direct | JITFunction.run | torch | same results |\n|---|---|---|---|---|")
    for name in direct:
        (ours, direct_us), (theirs, through_us) = direct[name], through[name]
        same = all(torch.equal(a, b) for a, b in zip(ours, theirs))
        same_everywhere &= same
        rows.append({"case": name, "direct_us": direct_us, "jit_run_us": through_us, "torch_us": torch_us[name],
                     "same": same})
        shown = "failed" if torch_us[name] is None else f"{torch_us[name]:.1f}"
        print(f"| {name} | {direct_us:.1f} | {through_us:.1f} | {shown} | {same} |")
    if argv:
        with open(os.path.join(argv[0], "launches.json"), "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
        with open(os.path.join(argv[0], "launches-profile.txt"), "w") as f:
            try:            # a lead for later: its failure leaves the verdict above alone
                f.write(_profiles())
            except Exception as exc:  # noqa: BLE001
                f.write(f"profiling failed: {type(exc).__name__}: {exc}\n")
    return 0 if same_everywhere else 1


def _profiles(top: int = 25) -> str:
    """Each case's ``CALLS`` calls (direct launches, plans built), as text: under
    cProfile, the ``top`` functions by time of their own; under torch.profiler
    (every thread, the autograd engine's included, and the CUDA runtime and driver
    calls: a synchronisation, an allocation that reaches cudaMalloc, a module load
    show there) the ``top`` events by host time of their own; and the host
    synchronisations torch's sync debug mode reports in one call."""
    _runtime.clear_plan_caches()
    out = io.StringIO()
    for name, call in _cases().items():
        _run_calls(call, 1)
        profile = cProfile.Profile()
        profile.enable()
        _run_calls(call)
        profile.disable()
        out.write(f"=== {name}: {CALLS} calls\n")
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as events:
            _run_calls(call)
        out.write(f"=== {name}: {CALLS} calls under torch.profiler\n")
        out.write(events.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught]
        out.write(f"\n=== {name}: host synchronisations in one call: {len(syncs)}\n")
        out.writelines(f"  {line}\n" for line in syncs)
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
