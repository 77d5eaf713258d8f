"""``python -m bench.sweep [SUITE ...] [--out DIR]``: on a GPU, time our side of a few
quick benchmark cases at other values of the tiling constants their launch plans
read (one constant at a time, the others at their defaults), for choosing them.

Each setting sets the constant, empties the plan caches (plans read the constants
when they are built), then for each case: setup, the check against torch (a
setting that breaks a kernel fails here, not silently), and our side's time
(as ``python -m bench`` times a side: ``time_ours``). Writes
``sweep-<gpu>-<date>.json`` and ``.md`` to DIR (the time of each case at each
value, and against the default's), rewritten after each case, and restores
every constant. Suites: norm, activation, max_pool2d, conv2d (default: all).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from dataclasses import dataclass

import torch

from bench.core import CLOCK_WARMUP_MS, Case, check, collect, compile_first, context_lost, run_meta, setup


@dataclass(frozen=True)
class Knob:
    """A module constant a suite's plans read, its values to try (its default among
    them), and the starts of the ids of the suite's cases whose plans read it (of
    those, only the passes ``passes`` names, when it names any)."""
    module: str
    name: str
    values: tuple
    cases: tuple
    passes: tuple = ()


# suite -> its knobs, the first the most wanted (a time box that ends keeps the rows so far). Left out:
# values that spill (norm NUM_WARPS=4: 8-16 bytes of stack in three kernels, sm_90, triton 3.6).
_DEPTHWISE_STRIDE_1 = "conv2d-depthwise-32x144x56x56x144x3x3x1x"      # MobileNet-v2's 3x3 of stride 1
SWEEPS = {
    "norm": (Knob("kernels.norm._plan", "TILE", (1024, 2048, 4096), ("batch_norm-", "layer_norm-")),
             Knob("kernels.norm._plan", "TARGET_PROGRAMS", (512, 1024, 2048, 4096),
                  ("batch_norm-", "layer_norm-", "instance_norm-")),
             Knob("kernels.norm._plan", "CHANNELS_LAST_WIDTH", (32, 64, 128), ("batch_norm-",))),
    "activation": (Knob("kernels.activation", "_BLOCK", (1024, 2048, 4096, 8192), ("relu-resnet50",)),),
    "max_pool2d": (Knob("kernels.pool", "_TILE", (256, 512, 1024), ("max_pool2d-",)),
                   Knob("kernels.pool", "_NUM_WARPS", (4, 8), ("max_pool2d-",))),
    # the depthwise rows kernels against the patch kernels they replaced (untimed: first; every quick depthwise
    # case: 3x3 of stride 1 and 2, channels_last and NCHW, the 7x7's forward and weight gradient, a 5x5's stride-2
    # input gradient, a dilated forward), their tiles (at stride 1); the direct kernels' split reductions (2: a
    # GEMM's programs an SM, the plan before 2026-11-30), timed on the quick suite's depthwise weight gradients
    # (the direct ones and the bias gradient follow the same plan). The patch kernels' tile (DEPTHWISE_TILE_BYTES)
    # is left out: no quick case runs them now but with DEPTHWISE_ROWS False
    "conv2d": (Knob("kernels.conv.ops", "DEPTHWISE_ROWS", (True, False), ("conv2d-depthwise-",)),
               Knob("kernels.conv.ops", "DIRECT_PROGRAMS_PER_SM", (2, 4, 8, 16), ("conv2d-depthwise-",),
                    ("weight_grad",)),
               Knob("kernels.conv.ops", "DEPTHWISE_ROW_TILE", (256, 512, 1024), (_DEPTHWISE_STRIDE_1,)),
               Knob("kernels.conv.ops", "DEPTHWISE_ROW_PROGRAMS_PER_SM", (8, 16, 32), (_DEPTHWISE_STRIDE_1,))),
}
# Cases whose plans do not read a knob although their ids match (timing them would be noise).
_NOT_READ = {"CHANNELS_LAST_WIDTH": "contiguous", "_NUM_WARPS": "channels_last-forward"}


def _cases(suite: str, knob: Knob) -> list[Case]:
    skip = _NOT_READ.get(knob.name)
    return [c for c in collect([suite], "cuda", True)
            if c.id.startswith(knob.cases) and not (skip and skip in c.id)
            and (not knob.passes or c.pass_name in knob.passes)]


def time_ours(case: Case) -> float:
    """Our side of ``case`` as ``python -m bench`` times a side: compiled at once,
    checked against torch, run ``CLOCK_WARMUP_MS`` (the clocks drop while a new
    setting compiles), then the mean of two do_bench medians; checked again after
    (a setting that goes wrong only on later calls). In ms."""
    from triton.testing import do_bench
    ours, baseline, *exact = setup(case)
    compile_first(ours)
    check(case, ours, baseline, *exact)
    do_bench(ours, warmup=0, rep=CLOCK_WARMUP_MS, return_mode="median")
    ms = sum(do_bench(ours, warmup=25, rep=100, return_mode="median") for _ in range(2)) / 2
    check(case, ours, baseline, *exact)
    return ms


def sweep(suite: str, record) -> bool:
    """Every knob of ``suite`` at each of its values: ``record(knob, value, default,
    case, ms or error)`` per case it reaches; the constant restored after. Returns
    False when a case lost the CUDA context (the sweep stops there)."""
    import importlib
    from kernels._runtime import clear_plan_caches
    for knob in SWEEPS[suite]:
        module = importlib.import_module(knob.module)
        default = getattr(module, knob.name)
        try:
            for value in knob.values:
                setattr(module, knob.name, value)
                clear_plan_caches()
                for case in _cases(suite, knob):
                    try:
                        result = time_ours(case)
                    except Exception as exc:  # noqa: BLE001 -- a setting that breaks a case says so
                        result = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                        if context_lost(exc):
                            record(knob, value, default, case, result)
                            return False
                    record(knob, value, default, case, result)
                    torch.cuda.empty_cache()
        finally:
            setattr(module, knob.name, default)
            clear_plan_caches()
    return True


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# nnlib tiling sweep: {meta['gpu']}, {meta['date']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}. Our side of each case whose plans read the constant "
             "(timed as the benchmark times a side: after a clock warm-up, the mean of two do_bench medians, L2 "
             "flushed), one constant at a time at each value, the others at their defaults; \"vs default\": the "
             "default value's time / this value's (above 1: faster than the default).", "",
             "| constant | value | case | ms | vs default |", "|---|---|---|---|---|"]
    defaults = {(r["constant"], r["case"]): r["ms"] for r in rows if r["value"] == r["default"]}
    for r in rows:
        ms = r["ms"]
        base = defaults.get((r["constant"], r["case"]))
        ratio = f"{base / ms:.2f}" if isinstance(ms, float) and isinstance(base, float) else ""
        shown = f"{ms:.4f}" if isinstance(ms, float) else ms
        mark = " (default)" if r["value"] == r["default"] else ""
        lines.append(f"| {r['constant']} | {r['value']}{mark} | {r['case']} | {shown} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", help=f"of {list(SWEEPS)} (default all)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    unknown = set(args.suites) - set(SWEEPS)
    if unknown:
        parser.error(f"unknown suites {sorted(unknown)}; choose from {list(SWEEPS)}")
    if not torch.cuda.is_available():
        print("bench.sweep: no CUDA GPU (it times kernels)")
        return 2
    gpu, date = torch.cuda.get_device_name(), datetime.date.today().isoformat()
    meta, rows = run_meta(gpu, date), []
    stem = os.path.join(args.out, f"sweep-{gpu.replace(' ', '_').replace('/', '_')}-{date}")
    os.makedirs(args.out, exist_ok=True)

    def record(knob, value, default, case, result):
        rows.append({"constant": f"{knob.module}.{knob.name}", "value": value, "default": default,
                     "case": case.id, "ms": result})
        shown = f"{result:.4f} ms" if isinstance(result, float) else result
        print(f"{knob.name}={value}: {case.id}: {shown}", flush=True)
        for suffix, text in ((".json", json.dumps({"meta": meta, "rows": rows}, indent=1)),
                             (".md", markdown(rows, meta))):
            with open(stem + suffix, "w") as f:      # after each case: a time box that ends keeps the rows
                f.write(text)

    for suite in args.suites or list(SWEEPS):
        if not sweep(suite, record):
            print("bench.sweep: the CUDA context was lost; stopped", flush=True)
            break
    failed = sum(not isinstance(r["ms"], float) for r in rows)
    print(f"wrote {stem}.json / .md: {len(rows) - failed} of {len(rows)} timings ({failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
