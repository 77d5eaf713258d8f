"""The benchmark harness: cases, ceilings, timing, checks and reports.

A suite (``bench/suites/<name>.py``) exposes ``cases(device, quick) -> list[Case]``.
On a GPU each case is timed, ours against the baseline, with
``triton.testing.do_bench(return_mode="median")`` (CUDA events, L2 flushed),
the two sides interleaved and each timed twice (ours, torch, ours, torch): a
drift lands on both, and the two medians' spread is the noise a speedup must
exceed; without one each case runs once on small shapes through the
interpreter and is checked against torch.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import math
import os
import pkgutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from nnlib.testing import tolerance


@dataclass
class Case:
    """One benchmark row. ``setup()`` allocates the inputs (the harness seeds torch
    first) and returns ``(ours, baseline)``: two thunks doing the same work, or
    ``(ours, baseline, exact)``, ``exact`` the baseline's result in float64 (see
    ``check``).
    ``bytes`` is the minimal traffic (read once, written once), ``flops`` the
    arithmetic; ``extra`` goes into the row (``alternative``: a path nnlib does
    not take by default, timed for comparison, left out of the geomeans). The
    check compares both sides' results with twice the test suite's tolerance for
    ``kind`` (nnlib.testing: each side may be off from the exact result by one
    tolerance), or with ``atol`` / ``rtol`` when no kind is given (whole
    models). ``rep_ms``: each of do_bench's timings runs about this long (whole
    models: long enough for tens of steps). ``note``: what differs between the
    sides' work, printed with the row (a fused kernel against torch's ops,
    outputs torch writes and we do not)."""
    op: str
    set: str
    shape: tuple
    dtype: torch.dtype
    layout: str
    pass_name: str
    setup: Callable[[], tuple[Callable, Callable]]
    bytes: int = 0
    flops: int = 0
    kind: str = ""
    atol: float = 1e-2
    rtol: float = 1e-2
    rep_ms: int = 100
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        shape = "x".join(map(str, self.shape))
        return f"{self.op}-{self.set}-{shape}-{str(self.dtype).replace('torch.', '')}-{self.layout}-{self.pass_name}"


def suite_names() -> list[str]:
    from . import suites
    return sorted(m.name for m in pkgutil.iter_modules(suites.__path__))


def collect(ops: list[str] | None, device: str, quick: bool) -> list[Case]:
    """The cases of the suites ``ops`` in that order (None: every suite, by name)."""
    cases = []
    for name in ops or suite_names():
        module = importlib.import_module(f"bench.suites.{name}")
        cases.extend(module.cases(device, quick))
    return cases


def _flatten(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten(v)]
    return []


def check(case: Case, ours, baseline, exact=None) -> None:
    """Our result against the baseline's (same thunks, one run each). With
    ``exact`` (the result in float64), against that instead: within the
    tolerance, or no further off than 1.5x the baseline's own worst error. Where
    many rounded terms are summed (a weight gradient over 10**5 pixels) or a
    ReLU's mask follows rounding (torch rounds bn(x) before the residual add,
    nnlib does not), the two low-precision sides differ by more than either
    differs from the exact result."""
    got, want = _flatten(ours()), _flatten(baseline())
    assert len(got) == len(want), f"{case.id}: {len(got)} outputs against {len(want)}"
    atol, rtol = case.atol, case.rtol
    if case.kind:
        atol, rtol = (2 * t for t in tolerance(case.dtype, case.kind))
    exact_values = [None] * len(got) if exact is None else _flatten(exact())
    assert len(exact_values) == len(got), f"{case.id}: {len(got)} outputs against {len(exact_values)} exact ones"
    for i, (g, w, e) in enumerate(zip(got, want, exact_values)):
        if e is None:
            torch.testing.assert_close(g.double(), w.double(), atol=atol, rtol=rtol,
                                       equal_nan=True, msg=lambda m: f"{case.id}: {m}")
            continue
        g, w, e = g.double(), w.double(), e.double()
        assert g.shape == w.shape == e.shape, f"{case.id}: output {i}: shapes {g.shape}, {w.shape}, {e.shape}"
        finite = e.isfinite()
        assert g[finite].isfinite().all(), f"{case.id}: output {i} is not finite where the float64 result is"
        ours_error, torch_error = ((t[finite] - e[finite]).abs().max().item() if finite.any() else 0.0
                                   for t in (g, w))
        within = torch.allclose(g, e, atol=atol, rtol=rtol, equal_nan=True)
        closer = math.isfinite(torch_error) and ours_error <= 1.5 * torch_error
        assert within or closer, (
            f"{case.id}: output {i} is off the float64 result by {ours_error:.4g} (beyond atol {atol}, rtol "
            f"{rtol}), torch's by {torch_error:.4g}")


def setup(case: Case):
    """``case.setup()`` on seeded inputs: every run checks the same numbers."""
    torch.manual_seed(0)
    return case.setup()


def measure_ceilings(device: str) -> dict:
    """Copy bandwidth (GB/s, 1 GiB device-to-device) and bf16 matmul rate (TFLOP/s)."""
    from triton.testing import do_bench
    src = torch.empty(1 << 29, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    copy_gbps = 2 * src.numel() * src.element_size() / ms / 1e6
    n = 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    ms = do_bench(lambda: a @ b, return_mode="median")
    return {"copy_gbps": copy_gbps, "bf16_matmul_tflops": 2 * n**3 / ms / 1e9}


CLOCK_WARMUP_MS = 100      # per side, before a case's timings (``time_case``)


def time_case(case: Case, ceilings: dict) -> dict:
    """One row: setup, our kernels compiled (``compile_first``) and the check
    (autotuning, cuDNN's search), a warm-up of
    ``CLOCK_WARMUP_MS`` per side, then each side timed twice, interleaved; a side's
    time is the mean of its two medians and its spread their relative difference.
    Then each side's host time per call (``host_us``)."""
    from triton.testing import do_bench
    start = time.perf_counter()
    ours, baseline, *exact = setup(case)
    compile_first(ours)
    check(case, ours, baseline, *exact)
    del exact               # (a float64 copy of a whole model, say: not kept through the timings)
    checked = time.perf_counter()
    # The GPU idles while a case compiles and its clocks drop (an H200 read 345 MHz idle):
    # both sides run for a while before the first timing, so that it does not pay the climb.
    for fn in (ours, baseline):
        do_bench(fn, warmup=0, rep=CLOCK_WARMUP_MS, return_mode="median")
    medians = ([], [])
    for side, fn in ((0, ours), (1, baseline), (0, ours), (1, baseline)):
        medians[side].append(do_bench(fn, warmup=max(25, case.rep_ms // 4), rep=case.rep_ms, return_mode="median"))
    ours_ms, base_ms = (sum(m) / len(m) for m in medians)
    row = row_of(case)
    row.update(ours_ms=ours_ms, baseline_ms=base_ms, speedup=base_ms / ours_ms,
               spread=max((max(m) - min(m)) / min(m) for m in medians), setup_s=checked - start)
    if case.bytes:
        row["gbps"] = case.bytes / ours_ms / 1e6
        row["pct_copy_bw"] = 100 * row["gbps"] / ceilings["copy_gbps"]
    if case.flops:
        row["tflops"] = case.flops / ours_ms / 1e9
        row["pct_bf16_matmul"] = 100 * row["tflops"] / ceilings["bf16_matmul_tflops"]
    if case.extra.get("images"):        # whole-model cases
        row.update(whole_model_figures(case.extra["images"], ours, baseline, ours_ms, base_ms))
    calls = 1 if case.extra.get("images") else HOST_CALLS
    row.update(host_us=host_us(ours, calls), baseline_host_us=host_us(baseline, calls),
               timing_s=time.perf_counter() - checked)
    return row


def compile_first(fn) -> None:
    """Compile the kernels ``fn()`` launches all at once (``compile_ahead``: one
    thread per core) before its first real call, which would compile them one after
    another (a ResNet-50 step: about a hundred). An error there (``fn`` computes on
    uninitialised values inside) is left to show in the real call."""
    from kernels._runtime import compile_ahead, compiling_ahead
    try:
        with compile_ahead():
            if compiling_ahead():       # (else fn would run for real: the check's call compiles)
                fn()
    except Exception:  # noqa: BLE001
        pass


def kernel_fields(case: Case) -> dict:
    """Each side's kernels (``kernel_us``) on a new setup of ``case``: their summed
    device time per call and the TOP_KERNELS longest. ``run`` profiles after every
    case is timed, so that no timing runs with the profiler's hooks left in place."""
    ours, baseline, *_ = setup(case)
    fields = {}
    for prefix, side, fn in (("", "ours", ours), ("baseline_", "torch", baseline)):
        times = kernel_us(fn)
        if not times:
            raise RuntimeError(f"the profiler saw no kernel of {side} (CUPTI off?)")
        fields.update({f"{prefix}kernel_us": sum(times.values()), f"{prefix}kernels": _top(times)})
    return fields


HOST_CALLS = 10         # calls queued per host timing (a whole model: 1, its launches would fill the queue)
PROFILED_CALLS = 5      # calls per side under the profiler (``kernel_fields``)
TOP_KERNELS = 4         # kernels per side named in a row


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def host_us(fn, calls: int) -> float:
    """Host time of one call of ``fn`` in us (its Python, torch's dispatch, the
    launches): the least of three timings of ``calls`` calls queued one after
    another without waiting for the GPU. Where it approaches the call's GPU time
    the GPU waits for the host, and the row's time is partly the host's."""
    best = math.inf
    for _ in range(3):
        _synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    _synchronize()
    return best / calls * 1e6


def kernel_us(fn, calls: int = PROFILED_CALLS, device: str = "cuda") -> dict[str, float]:
    """Device time per call of each kernel, memset and copy that ``fn`` makes, in
    us by name (torch.profiler, CUPTI on a GPU: its device activity only; user
    annotations, which span kernels, left out; ``device="cpu"``: its CPU ops). The
    calls run back to back, so their inputs may sit in L2, unlike the timed ones."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    activity, kind = ((ProfilerActivity.CUDA, DeviceType.CUDA) if device == "cuda"
                      else (ProfilerActivity.CPU, DeviceType.CPU))
    fn()
    _synchronize()
    with profile(activities=[activity]) as prof:
        for _ in range(calls):
            fn()
        _synchronize()
    times: dict[str, float] = {}
    for event in prof.events():
        if event.device_type == kind and not getattr(event, "is_user_annotation", False):
            times[event.name] = times.get(event.name, 0.0) + event.time_range.elapsed_us() / calls
    return times


def _top(times: dict[str, float]) -> dict[str, float]:
    """The TOP_KERNELS longest of ``times`` by name cut to 80 characters (names alike
    that far summed: torch's templated kernels)."""
    cut: dict[str, float] = {}
    for name, us in times.items():
        cut[name[:80]] = cut.get(name[:80], 0.0) + us
    ranked = sorted(cut.items(), key=lambda item: -item[1])[:TOP_KERNELS]
    return {name: round(us, 2) for name, us in ranked}


def whole_model_figures(images: int, ours, baseline, ours_ms: float, base_ms: float) -> dict:
    """Both sides' images/s (from the median times) and the peak memory of one call
    of each (``peak_mib``)."""
    return {"images_per_s": images * 1e3 / ours_ms, "torch_images_per_s": images * 1e3 / base_ms,
            "peak_mib": peak_mib(ours), "torch_peak_mib": peak_mib(baseline)}


def peak_mib(fn) -> float:
    """MiB of GPU memory that one call of ``fn`` takes at its peak beyond what was
    allocated before it. A training step frees the last step's gradients and makes
    its own: its figure is what it keeps for the backward and its workspaces; a
    step replayed from a CUDA graph, whose memory the graph holds already, reads
    about 0."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def row_of(case: Case) -> dict:
    row = {"id": case.id, "op": case.op, "set": case.set, "shape": list(case.shape),
           "dtype": str(case.dtype).replace("torch.", ""), "layout": case.layout,
           "pass": case.pass_name, **case.extra}
    if case.note:
        row["note"] = case.note
    return row


def geomean(values) -> float:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def _settings(meta: dict) -> str:
    """The run's versions and the flags both sides ran under, as recorded in ``meta``."""
    keys = ("cuda", "cudnn", "cudnn_allow_tf32", "matmul_allow_tf32")
    return "".join(f", {k} {meta[k]}" for k in keys if k in meta)


def _of_cases(meta: dict) -> str:
    """" of n": the cases of the suites run (``meta["runs"]``, one entry per suite list)."""
    runs = meta.get("runs", {}).values()
    return f" of {sum(r['cases'] for r in runs)}" if runs else ""


def _pair(row: dict, key: str) -> str:
    """"ours / torch" of a figure both sides have (``key``, ``baseline_`` + key), or ""."""
    ours, theirs = row.get(key), row.get("baseline_" + key)
    if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)):
        return f"{ours:.0f} / {theirs:.0f}"
    return ""


def markdown(rows: list[dict], meta: dict) -> str:
    runs = list(meta.get("runs", {}).values())
    lines = [f"# nnlib benchmark: {meta['gpu']}, {meta['date']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}{_settings(meta)}. Baseline: torch with "
             "cudnn.benchmark = True and the same tf32 policy. Each side timed twice, interleaved with the "
             "other (ours, torch, ours, torch), each time the median of do_bench (CUDA events, L2 flushed "
             "before each call); a time is the mean of its two medians, \"spread\" the larger relative "
             "difference of the two sides' pairs: a speedup within it of 1 is noise. Per-op rows are GPU time "
             "(a call's host time overlaps the flush before it); whole-model rows include the host's, except "
             "\"train-graphed\". Speedup: torch ms / ours ms (above 1: nnlib is faster). \"host us\": a "
             "call's host time (Python, dispatch, launches; calls queued without waiting for the GPU), ours / "
             "torch: where it nears the row's time, the GPU waited for the host. \"kernels us\": the summed "
             "device time of a call's kernels, memsets and copies (torch.profiler, calls back to back: L2 not "
             "flushed), ours / torch: well under the row's time, the GPU sat idle within the call.", "",
             f"Ceilings measured in this run: copy {meta['ceilings']['copy_gbps']:.0f} GB/s, "
             f"bf16 matmul {meta['ceilings']['bf16_matmul_tflops']:.0f} TFLOP/s. "
             f"Cases run: {len(rows)}{_of_cases(meta)}"
             + (" (quick run: a few shapes per suite, the suites' QUICK lists; the geomeans cover these rows "
                "only)." if runs and all(r["quick"] for r in runs) else ".")]
    for suites, entry in meta.get("runs", {}).items():
        if entry.get("stopped"):
            lines += ["", f"The run of {suites} stopped: {entry['stopped']}."]
    lines += ["", "| op | set | shape | dtype | layout | pass | ours ms | torch ms | speedup | spread | GB/s | "
              "% copy | TFLOP/s | % of bf16 matmul | host us | kernels us | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else ""

    for r in rows:
        spread = r.get("spread")
        lines.append("| " + " | ".join([
            r["op"], r["set"], "x".join(map(str, r["shape"])), r["dtype"], r["layout"], r["pass"],
            "error" if "error" in r else fmt(r.get("ours_ms"), ".4f"), fmt(r.get("baseline_ms"), ".4f"),
            fmt(r.get("speedup"), ".2f"), f"{100 * spread:.0f}%" if spread is not None else "",
            fmt(r.get("gbps"), ".0f"), fmt(r.get("pct_copy_bw"), ".0f"), fmt(r.get("tflops"), ".1f"),
            fmt(r.get("pct_bf16_matmul"), ".0f"), _pair(r, "host_us"), _pair(r, "kernel_us"),
            r.get("note", "")]) + " |")
    lines += ["", "Geomean speedup per op, set, dtype, layout and pass (of the paths nnlib takes: rows marked "
              "\"alternative\" left out):", "", "| op | set | dtype | layout | pass | geomean | rows |",
              "|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        if not r.get("alternative"):
            groups.setdefault((r["op"], r["set"], r["dtype"], r["layout"], r["pass"]), []).append(r.get("speedup"))
    for key, values in sorted(groups.items()):
        lines.append(f"| {' | '.join(key)} | {geomean(values):.2f} | {sum(1 for v in values if v)} |")
    models = [r for r in rows if r.get("images_per_s")]
    if models:
        lines += ["", "Whole models: throughput and the peak memory one call takes beyond what was allocated "
                  "before it (a training step's: what it keeps for the backward and its workspaces; a graphed "
                  "step's: about 0):", "",
                  "| op | dtype | pass | images/s | torch images/s | peak MiB | torch peak MiB |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['op']} | {r['dtype']} | {r['pass']} | {r['images_per_s']:.0f} | "
                  f"{r['torch_images_per_s']:.0f} | {fmt(r.get('peak_mib'), '.0f')} | "
                  f"{fmt(r.get('torch_peak_mib'), '.0f')} |" for r in models]
    profiled = [r for r in rows if r.get("kernels") or r.get("baseline_kernels")]
    if profiled:
        lines += ["", f"Longest kernels per call (us, torch.profiler; up to {TOP_KERNELS} a side):", ""]
        for r in profiled:
            sides = [f"{side} " + ", ".join(f"`{name}` {us:.1f}" for name, us in r.get(key, {}).items())
                     for side, key in (("ours", "kernels"), ("torch", "baseline_kernels"))]
            lines.append(f"- {r['id']}: " + "; ".join(sides))
    unprofiled = [r for r in rows if "profile_error" in r]
    if unprofiled:
        lines += ["", "Cases whose kernels could not be profiled:", ""]
        lines += [f"- {r['id']}: {r['profile_error']}" for r in unprofiled]
    failed = [r for r in rows if "error" in r]
    if failed:
        lines += ["", "Cases that failed (left out of the geomeans):", ""]
        lines += [f"- {r['id']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r.get("speedup")]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(max(8, 0.18 * len(rows)), 5))
    colors = ["tab:green" if r["speedup"] >= 1 else "tab:red" for r in rows]
    ax.bar(range(len(rows)), [r["speedup"] for r in rows], color=colors)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["id"] for r in rows], rotation=90, fontsize=5)
    ax.set_ylabel("speedup over torch (x)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def run(ops: list[str] | None, quick: bool, out_dir: str, append: bool = False, kernels: bool = True) -> int:
    """Check (CPU) or time (GPU) the cases of the suites ``ops``; on a GPU, then
    profile each timed case's kernels (``kernels``) and write the report to
    ``out_dir``. Returns the exit status: 1 when a case failed."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        from kernels._runtime import interpreting
        if not interpreting():      # nnlib would take torch's path: torch against torch
            print("No CUDA GPU and TRITON_INTERPRET is not 1: nnlib's kernels cannot run here. Run "
                  "`python -m bench` with TRITON_INTERPRET unset or 1.")
            return 2
    cases = collect(ops, device, quick)
    if device == "cpu":
        print(f"No CUDA GPU: running {len(cases)} cases once on small shapes through the Triton "
              "interpreter and checking them against torch. Timings need a CUDA GPU.", flush=True)
        failed = 0
        for i, case in enumerate(cases, 1):
            try:
                check(case, *setup(case))
                status = "ok"
            except Exception as exc:  # report every case, then fail
                failed += 1
                status = f"FAILED: {str(exc).splitlines()[0][:200]}"
            print(f"[{i}/{len(cases)}] {case.id}: {status}", flush=True)
        print(f"{len(cases) - failed} cases matched torch, {failed} failed. No timings: they need a CUDA GPU.")
        return 1 if failed else 0

    torch.backends.cudnn.benchmark = True
    gpu = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{gpu.replace(' ', '_').replace('/', '_')}-{date}")
    earlier = _load(stem) if append else None
    if earlier is None:     # a report started over: nothing of an earlier one left beside it
        for suffix in (".json", ".md", ".png"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(stem + suffix)
        print(f"{gpu}: measuring ceilings...", flush=True)
        meta = {**run_meta(gpu, date), "ceilings": measure_ceilings(device), "runs": {}}
        rows = []
    else:       # the same GPU and day: the ceilings kept, each case's row replaced as the case ends
        meta, rows = earlier["meta"], earlier["rows"]
    ceilings = meta["ceilings"]
    print(f"copy {ceilings['copy_gbps']:.0f} GB/s, bf16 matmul {ceilings['bf16_matmul_tflops']:.0f} TFLOP/s",
          flush=True)
    this_run = {"quick": quick, "cases": len(cases), "done": 0}
    meta["runs"][",".join(ops or suite_names())] = this_run      # suites run again: their entry replaced
    at = {r["id"]: i for i, r in enumerate(rows)}
    failed = 0
    for i, case in enumerate(cases, 1):
        lost = None
        try:
            row = time_case(case, ceilings)
            msg = (f"ours {row['ours_ms']:.4f} ms, torch {row['baseline_ms']:.4f} ms, {row['speedup']:.2f}x "
                   f"(spread {100 * row['spread']:.0f}%; host {_pair(row, 'host_us')} us; setup "
                   f"{row['setup_s']:.1f} s, timing {row['timing_s']:.1f} s)")
        except Exception as exc:
            row = row_of(case)
            row["error"] = str(exc).splitlines()[0][:300]
            msg = f"ERROR {row['error']}"
            lost, failed = context_lost(exc), failed + 1
        if not lost:
            torch.cuda.empty_cache()
        if case.id in at:
            rows[at[case.id]] = row
        else:
            at[case.id] = len(rows)
            rows.append(row)
        print(f"[{i}/{len(cases)}] {case.id}: {msg}", flush=True)
        # saved after every case: a run stopped early (gpu_check's time box) keeps its rows
        this_run["done"] = i
        if lost:
            this_run["stopped"] = f"{case.id} lost the CUDA context ({row['error']}); the cases after it did not run"
        _save(stem, meta, rows)
        if lost:
            print(this_run["stopped"], flush=True)
            break
    _plot(rows, stem, gpu, date)
    if kernels and not this_run.get("stopped"):
        lost = _profile_rows(cases, rows, at, lambda: _save(stem, meta, rows))
        if lost:
            this_run["stopped"] = f"profiling {lost} lost the CUDA context; the cases after it were not profiled"
            _save(stem, meta, rows)
    return 1 if failed else 0


def _plot(rows: list[dict], stem: str, gpu: str, date: str) -> None:
    try:
        plot(rows, stem + ".png", f"nnlib vs torch, {gpu}, {date}")
        print(f"wrote {stem}.json / .md / .png")
    except ImportError as exc:
        print(f"wrote {stem}.json / .md (no plot: {exc})")


def _profile_rows(cases: list[Case], rows: list[dict], at: dict, save) -> str | None:
    """Add ``kernel_fields`` to the row of each timed case (``at``: id -> index in
    ``rows``), calling ``save()`` after each; a case that fails says why in its row.
    Returns the id of a case whose profiling lost the CUDA context (the rest not
    profiled), or None."""
    print(f"profiling the kernels of {len(cases)} cases...", flush=True)
    for i, case in enumerate(cases, 1):
        row = rows[at[case.id]]
        if "error" in row:
            continue
        lost = False
        try:
            row.update(kernel_fields(case))
            msg = f"kernels {_pair(row, 'kernel_us')} us a call"
        except Exception as exc:  # noqa: BLE001
            row["profile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            msg, lost = f"not profiled: {row['profile_error']}", context_lost(exc)
        if not lost:
            torch.cuda.empty_cache()
        print(f"[{i}/{len(cases)}] {case.id}: {msg}", flush=True)
        save()
        if lost:
            return case.id
    return None


def run_meta(gpu: str, date: str) -> dict:
    """The run's GPU, date, versions and the flags both sides run under."""
    import triton
    return {"gpu": gpu, "date": date, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


# CUDA's sticky errors: after one the context is unusable, and every later case would fail alike
# (out of memory, cuBLAS's allocation failures, an invalid launch configuration are not sticky).
_STICKY_ERRORS = ("illegal memory access", "illegal address", "illegal instruction", "misaligned address",
                  "device-side assert", "unspecified launch failure")


def context_lost(exc: Exception) -> bool:
    """Whether ``exc`` is one of CUDA's sticky errors."""
    return any(text in str(exc) for text in _STICKY_ERRORS)


def _load(stem: str) -> dict | None:
    """The report this GPU wrote today, or None: none, or one unreadable or of an
    older format (started over)."""
    try:
        with open(stem + ".json") as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get("meta", {}).get("runs"), dict):
        print(f"{stem}.json is unreadable or of an older format: the report starts over", flush=True)
        return None
    return saved


def _save(stem: str, meta: dict, rows: list[dict]) -> None:
    """The JSON and Markdown, each written beside and renamed into place: a run
    stopped while writing leaves the last complete ones."""
    for suffix, text in ((".json", json.dumps({"meta": meta, "rows": rows}, indent=1)),
                         (".md", markdown(rows, meta))):
        with open(stem + suffix + ".tmp", "w") as f:
            f.write(text)
        os.replace(stem + suffix + ".tmp", stem + suffix)


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m bench", description="nnlib benchmarks against torch / cuDNN")
    parser.add_argument("--ops", help=f"comma-separated suites, run in that order (default all: "
                                      f"{','.join(suite_names())})")
    parser.add_argument("--quick", action="store_true", help="a few representative shapes per suite")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                        help="results folder (default bench/results)")
    parser.add_argument("--append", action="store_true",
                        help="add to the results this GPU wrote today in --out (its ceilings kept; rows of the "
                             "same cases replaced): gpu_check runs each suite in a process of its own")
    parser.add_argument("--no-kernels", action="store_true",
                        help="skip profiling each timed case's kernels (torch.profiler) after the timings")
    parser.add_argument("--host", action="store_true",
                        help="host cost per call and launch / device-op counts (CPU, no GPU needed)")
    args = parser.parse_args(argv)
    if args.host:
        from bench import host
        return host.main(args.out, args.quick)
    ops = args.ops.split(",") if args.ops else None
    unknown = set(ops or ()) - set(suite_names())
    if unknown:
        parser.error(f"unknown suites {sorted(unknown)}; choose from {suite_names()}")
    return run(ops, args.quick, args.out, args.append, not args.no_kernels)


if __name__ == "__main__":
    sys.exit(main())
