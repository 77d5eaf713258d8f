"""``python -m bench --host``: what nnlib's host code costs, without a GPU.

For each op (forward, and forward + backward) and for one ResNet-50 training
step, on CPU tensors with the Triton path on (``TRITON_INTERPRET=1``), after one
call that runs its kernels (the autotuners choose their configs there, as on a
GPU's first call), every kernel launch counted but not run
(``kernels._runtime.dry_run``):

* host time: the wall time of our Python per call, beside the floor (an empty
  ``torch.autograd.Function`` that allocates its output with one
  ``torch.empty``) timed alongside it, samples alternating: each the least of
  several repeats, so that a shared machine's slow spells (up to 1.6x) fall
  out of both;
* counts: Triton launches, other device ops (aten ops that do work on the
  device, as a ``TorchDispatchMode`` sees them: on a GPU each is a launch or a
  copy; views and ``empty*`` allocations are not; a ``LaunchersInSight`` mode,
  so that our calls take the eager path they take without a mode) and
  allocations (tensors with new storage), beside torch eager's counts for the
  same call (torch on CPU: ``native_batch_norm`` where cuDNN would run
  ``cudnn_batch_norm``, same count).

The counts are exact and repeatable (``tests/test_host.py`` keeps them from
growing back); the times are this machine's. Results: ``host-<date>.json`` and
``.md`` in the output folder.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as TF
from torch.utils._python_dispatch import TorchDispatchMode

import nnlib
import nnlib.functional as F
from kernels._library import LaunchersInSight
from kernels._runtime import count_launches, dry_run
from nnlib.models import reference

__all__ = ["OpCounts", "DeviceOps", "count_ops", "host_us", "floor_call", "cases", "measure", "main"]


# ---------------------------------------------------------------------------
# Counting

@dataclass
class OpCounts:
    """What one call issued: Triton launches, other device ops by name, allocations."""
    launches: int
    ops: Counter
    allocations: int

    @property
    def device_ops(self) -> int:
        return sum(self.ops.values())


_ALLOCATING = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


class DeviceOps(LaunchersInSight, TorchDispatchMode):
    """Counts the aten ops that do device work (not views, not bare allocations),
    by name in ``ops``, and in ``allocations`` the new storages every op returns
    (the tests' ``device_ops`` too)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.allocations = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if _is_view(func) or any(t.device.type == "meta" for t in _tensors(out)):    # meta: no memory, no work
            return out
        name = func.overloadpacket.__name__
        if name not in _ALLOCATING:
            self.ops[name] += 1
        seen = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs)) if t.numel()}
        self.allocations += sum(1 for t in _tensors(out) if t.numel() and t.untyped_storage().data_ptr() not in seen)
        return out


def _is_view(func) -> bool:
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def count_ops(fn: Callable, run_kernels: bool = False) -> OpCounts:
    """Counts of one ``fn()`` (kernels counted, not run, unless ``run_kernels``)."""
    mode = DeviceOps()
    with count_launches() as launches, (contextlib.nullcontext() if run_kernels else dry_run()), mode:
        fn()
    return OpCounts(launches.total, mode.ops, mode.allocations)


# ---------------------------------------------------------------------------
# Timing

def host_us(*fns: Callable, min_seconds: float = 0.2, repeats: int = 5) -> list[float]:
    """Per ``fn``, the least over ``repeats`` of the mean wall time of ``fn()`` in
    microseconds, kernels counted but not run. The functions' samples alternate,
    so that each sees the machine's slow spells as often as the others."""
    with dry_run():
        counts = []
        for fn in fns:
            for _ in range(3):
                fn()
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < min_seconds / repeats:
                fn()
                calls += 1
            counts.append(calls)
        samples = [[] for _ in fns]
        for _ in range(repeats):
            for fn, calls, out in zip(fns, counts, samples):
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                out.append((time.perf_counter() - start) / calls * 1e6)
    return [min(out) for out in samples]


class _EmptyFunction(torch.autograd.Function):
    """The floor: an autograd.Function that allocates its output and does nothing."""

    @staticmethod
    def forward(ctx, x):
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad):
        return grad


def floor_call() -> Callable:
    """The floor's call: ``_EmptyFunction`` on a small leaf that requires grad."""
    x = torch.empty(8, 8, requires_grad=True)
    return lambda: _EmptyFunction.apply(x)


# ---------------------------------------------------------------------------
# Cases: (name, ours, torch's) thunks on the same inputs

@dataclass
class HostCase:
    name: str
    ours: Callable
    theirs: Callable
    target: float | None = None      # host time budget, in floors (issue 9)


def _backward(forward: Callable, leaves: list[torch.Tensor]) -> Callable:
    """forward() then the gradients of ``leaves`` for a fixed output gradient."""
    grad = torch.randn_like(forward())

    def run():
        torch.autograd.grad(forward(), leaves, grad)
    return run


def _model_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable:
    def run():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = TF.cross_entropy(model(x), target)
        loss.backward()
    return run


def cases(quick: bool = False) -> list[HostCase]:
    """The per-op cases, channels_last activations of 32 channels (small, so that the
    torch ops around our kernels cost little real CPU time; the paths are the GPU
    shapes' paths), and the ResNet-50 training step (bf16 autocast, channels_last,
    width 16 at 32x32: ResNet-50's 53 convolutions and 53 batch norms, small tensors)."""
    torch.manual_seed(0)
    cl = torch.channels_last
    C = 32
    x = torch.randn(2, C, 8, 8).contiguous(memory_format=cl).requires_grad_()
    w3 = torch.randn(C, C, 3, 3).contiguous(memory_format=cl).requires_grad_()
    bias = torch.randn(C, requires_grad=True)
    slope = torch.full((C,), 0.25, requires_grad=True)
    bn_weight, bn_bias = torch.ones(C, requires_grad=True), torch.zeros(C, requires_grad=True)
    mean, var = torch.zeros(C), torch.ones(C)
    gn_weight, gn_bias = torch.ones(C, requires_grad=True), torch.zeros(C, requires_grad=True)
    ln_shape = [C, 8, 8]
    ln_weight, ln_bias = torch.ones(ln_shape, requires_grad=True), torch.zeros(ln_shape, requires_grad=True)
    leaves = {"relu": [x], "leaky_relu": [x], "prelu": [x, slope], "max_pool2d": [x], "conv2d 3x3": [x, w3, bias],
              "batch_norm train": [x, bn_weight, bn_bias], "batch_norm + add + relu": [x, bn_weight, bn_bias],
              "group_norm": [x, gn_weight, gn_bias], "layer_norm": [x, ln_weight, ln_bias]}

    pairs = [
        ("relu", lambda: F.relu(x), lambda: TF.relu(x), 2.0),
        ("leaky_relu", lambda: F.leaky_relu(x, 0.1), lambda: TF.leaky_relu(x, 0.1), None),
        ("prelu", lambda: F.prelu(x, slope), lambda: TF.prelu(x, slope), None),
        ("max_pool2d", lambda: F.max_pool2d(x, 3, 2, 1), lambda: TF.max_pool2d(x, 3, 2, 1), None),
        ("conv2d 3x3", lambda: F.conv2d(x, w3, bias, 1, 1), lambda: TF.conv2d(x, w3, bias, 1, 1), 3.0),
        ("batch_norm train", lambda: F.batch_norm(x, mean, var, bn_weight, bn_bias, True),
         lambda: TF.batch_norm(x, mean, var, bn_weight, bn_bias, True), 3.0),
        ("batch_norm + add + relu", lambda: F.batch_norm(x, mean, var, bn_weight, bn_bias, True, residual=x,
                                                         activation="relu"),
         lambda: TF.relu(TF.batch_norm(x, mean, var, bn_weight, bn_bias, True) + x), None),
        ("group_norm", lambda: F.group_norm(x, 8, gn_weight, gn_bias), lambda: TF.group_norm(x, 8, gn_weight, gn_bias),
         None),
        ("layer_norm", lambda: F.layer_norm(x, ln_shape, ln_weight, ln_bias),
         lambda: TF.layer_norm(x, ln_shape, ln_weight, ln_bias), None),
    ]
    out = []
    for name, ours, theirs, target in pairs:
        out.append(HostCase(f"{name} forward", ours, theirs, target))
        out.append(HostCase(f"{name} forward+backward", _backward(ours, leaves[name]),
                            _backward(theirs, leaves[name])))
    ours_model = nnlib.models.resnet50(num_classes=10, width=16).to(memory_format=cl)
    their_model = reference.resnet50(num_classes=10, width=16).to(memory_format=cl)
    image = torch.randn(2, 3, 32, 32).contiguous(memory_format=cl)
    label = torch.tensor([1, 2])
    out.append(HostCase("resnet50 training step (bf16 autocast)", _model_step(ours_model, image, label),
                        _model_step(their_model, image, label)))
    return out


def measure(quick: bool = False) -> dict:
    """Rows of host time and counts for every case, each with the floor timed
    alongside it."""
    seconds = 0.05 if quick else 0.3
    rows = []
    for case in cases(quick):
        case.ours()     # kernels run once, so that the autotuners choose (as a GPU's first call) before timing
        ours, theirs = count_ops(case.ours), count_ops(case.theirs, run_kernels=True)
        step = case.name.startswith("resnet50")
        us, floor = host_us(case.ours, floor_call(), min_seconds=2 * seconds if step else seconds,
                            repeats=5 if step else 9)
        rows.append({"case": case.name, "host_us": us, "floor_us": floor, "floors": us / floor,
                     "target_floors": case.target,
                     "launches": ours.launches, "device_ops": ours.device_ops, "allocations": ours.allocations,
                     "ops": dict(ours.ops), "torch_device_ops": theirs.device_ops,
                     "torch_allocations": theirs.allocations, "torch_ops": dict(theirs.ops)})
        print(f"{case.name}: {us:.1f} us ({us / floor:.1f} floors), {ours.launches} launches + "
              f"{ours.device_ops} other ops, {ours.allocations} allocations; torch: {theirs.device_ops} ops, "
              f"{theirs.allocations} allocations", flush=True)
    floors = [r["floor_us"] for r in rows]
    return {"floor_us": statistics.median(floors), "floor_range_us": [min(floors), max(floors)], "rows": rows}


def markdown(result: dict, meta: dict) -> str:
    lines = [f"# nnlib host cost: {meta['machine']}, {meta['date']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}, Python {meta['python']}. After one call that runs "
             "its kernels (the autotuners choose), kernel launches counted, not run; times are our Python per call, "
             "the least of several repeats. Floor: an empty "
             "autograd.Function with one torch.empty, timed alongside each case ("
             f"{result['floor_range_us'][0]:.1f} to {result['floor_range_us'][1]:.1f} us in this run). torch's "
             "counts: the same call in torch eager.",
             "", "| case | host us | floors | budget | Triton launches | other device ops | allocations | "
             "torch device ops | torch allocations |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        budget = f"<= {r['target_floors']:.0f}" if r["target_floors"] else ""
        lines.append(f"| {r['case']} | {r['host_us']:.1f} | {r['floors']:.1f} | {budget} | {r['launches']} | "
                     f"{r['device_ops']} | {r['allocations']} | {r['torch_device_ops']} | "
                     f"{r['torch_allocations']} |")
    lines += ["", "Other device ops by name (ours):", ""]
    for r in result["rows"]:
        if r["ops"]:
            lines.append(f"- {r['case']}: " + ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items())))
    return "\n".join(lines) + "\n"


def main(out_dir: str, quick: bool = False) -> int:
    from kernels._runtime import interpreting
    if not interpreting():
        print("bench --host needs the Triton path on CPU tensors: run it without a visible GPU "
              "(python -m bench sets TRITON_INTERPRET=1 then).")
        return 2
    import triton
    result = measure(quick)
    date = datetime.date.today().isoformat()
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "date": date, "torch": torch.__version__,
            "triton": triton.__version__, "python": platform.python_version(), "quick": quick}
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"host-{date}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, **result}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(result, meta))
    print(f"wrote {stem}.json / .md")
    return 0
