"""``python -m nnlib.selftest [--quick] [--device cuda|cpu]``: are nnlib's kernels
right on this machine?

Runs every op, forward and backward, on the chosen device (CUDA, or the CPU
through Triton's interpreter) on a spread of shapes, dtypes and layouts, and
compares outputs and the gradients of every input with torch in float64 on the
CPU, with the test suite's tolerances (``nnlib.testing``), TF32 off (float32
is checked as float32); on a GPU the convolutions are also checked with TF32 on
(cuDNN's default, which nnlib follows) at ``TF32_CONV``'s tolerance. A NaN or
infinity where the reference has none fails.
Prints one row per check (worst error as a fraction of the tolerance) and
exits with status 0 only if every check passes, forward and backward each
having run a Triton kernel. For an installed package, which has no tests
folder: run it on a new GPU, driver or triton. ``--quick`` keeps float32
(contiguous) and bfloat16 (channels_last where the op takes it): seconds on a
GPU, after a first run's compiling (over a hundred kernel specialisations, of the
order of a minute of one CPU core).
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as TF

__all__ = ["Check", "checks", "run_check", "main"]


@dataclass
class Check:
    """One op call: ``ours`` / ``theirs`` take the same arguments, built by
    ``make(dtype, device, layout)`` (tensors that require grad get gradients);
    ``dtypes``: the only dtypes it runs at (empty: every one of the sweep)."""
    op: str
    kind: str
    make: Callable
    ours: Callable
    theirs: Callable
    layouts: tuple = ("contiguous", "channels_last")
    dtypes: tuple = ()


def _x(shape, dtype, device, layout, grad=True):
    x = torch.randn(shape).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device).requires_grad_(grad)


def _param(n, dtype, device, low=0.5, high=1.5):
    return (torch.rand(n) * (high - low) + low).to(dtype).to(device).requires_grad_()


def checks() -> list[Check]:
    import nnlib.functional as F
    conv = [  # (name, x shape, weight shape, stride, padding, dilation, groups)
        ("conv2d 3x3", (2, 16, 9, 9), (24, 16, 3, 3), 1, 1, 1, 1),
        ("conv2d 1x1", (2, 32, 12, 11), (24, 32, 1, 1), 1, 0, 1, 1),
        ("conv2d 1x1 stride 2", (2, 32, 9, 9), (16, 32, 1, 1), 2, 0, 1, 1),
        ("conv2d stem 7x7/2", (2, 3, 17, 17), (16, 3, 7, 7), 2, 3, 1, 1),
        ("conv2d dilated 3x3 d2", (2, 16, 11, 11), (16, 16, 3, 3), 1, 2, 2, 1),
        ("conv2d depthwise 3x3", (2, 16, 9, 9), (16, 1, 3, 3), 1, 1, 1, 16),
        ("conv2d depthwise 3x3/2", (2, 16, 11, 10), (16, 1, 3, 3), 2, 1, 1, 16),
        ("conv2d depthwise 5x5/2", (2, 24, 11, 10), (24, 1, 5, 5), 2, 2, 1, 24),
        ("conv2d depthwise 7x7", (2, 16, 10, 9), (16, 1, 7, 7), 1, 3, 1, 16),
        ("conv2d multiplier 2", (2, 8, 9, 9), (16, 1, 3, 3), 1, 1, 1, 8),
        ("conv2d grouped", (2, 12, 7, 7), (18, 4, 3, 3), 1, 1, 1, 3),
    ]
    out = [
        Check("relu", "elementwise", lambda dt, dev, lay: [_x((2, 5, 7, 9), dt, dev, lay)], F.relu, TF.relu),
        Check("leaky_relu", "elementwise", lambda dt, dev, lay: [_x((2, 5, 7, 9), dt, dev, lay)],
              lambda x: F.leaky_relu(x, 0.1), lambda x: TF.leaky_relu(x, 0.1)),
        Check("prelu", "reduction", lambda dt, dev, lay: [_x((2, 5, 7, 9), dt, dev, lay), _param(5, dt, dev, 0.1, 0.3)],
              F.prelu, TF.prelu),
        Check("prelu one slope", "reduction",
              lambda dt, dev, lay: [_x((2, 5, 7, 9), dt, dev, lay), _param(1, dt, dev, 0.1, 0.3)], F.prelu, TF.prelu),
        Check("max_pool2d 3x3/2", "elementwise", lambda dt, dev, lay: [_x((2, 5, 11, 9), dt, dev, lay)],
              lambda x: F.max_pool2d(x, 3, 2, 1), lambda x: TF.max_pool2d(x, 3, 2, 1)),
        Check("batch_norm train", "reduction",
              lambda dt, dev, lay: [_x((4, 6, 5, 7), dt, dev, lay), _param(6, torch.float32, dev),
                                    _param(6, torch.float32, dev)],
              lambda x, w, b: F.batch_norm(x, None, None, w, b, True),
              lambda x, w, b: TF.batch_norm(x, None, None, w, b, True)),
        Check("batch_norm + add + relu", "reduction",
              lambda dt, dev, lay: [_x((4, 6, 5, 7), dt, dev, lay), _param(6, torch.float32, dev),
                                    _param(6, torch.float32, dev), _x((4, 6, 5, 7), dt, dev, lay)],
              lambda x, w, b, r: F.batch_norm(x, None, None, w, b, True, residual=r, activation="relu"),
              lambda x, w, b, r: TF.relu(TF.batch_norm(x, None, None, w, b, True) + r)),
        Check("group_norm", "reduction",
              lambda dt, dev, lay: [_x((2, 6, 5, 7), dt, dev, lay), _param(6, dt, dev), _param(6, dt, dev)],
              lambda x, w, b: F.group_norm(x, 3, w, b), lambda x, w, b: TF.group_norm(x, 3, w, b)),
        Check("instance_norm", "reduction", lambda dt, dev, lay: [_x((2, 6, 5, 7), dt, dev, lay)],
              F.instance_norm, TF.instance_norm),
        Check("layer_norm", "reduction",
              lambda dt, dev, lay: [_x((3, 5, 16), dt, dev, lay), _param(16, dt, dev), _param(16, dt, dev)],
              lambda x, w, b: F.layer_norm(x, (16,), w, b), lambda x, w, b: TF.layer_norm(x, (16,), w, b),
              layouts=("contiguous",)),
    ]
    for name, xs, ws, stride, padding, dilation, groups in conv:
        def make(dt, dev, lay, xs=xs, ws=ws):
            return [_x(xs, dt, dev, lay), _x(ws, dt, dev, lay) * (1.0 / (ws[1] * ws[2] * ws[3]) ** 0.5),
                    _x(ws[:1], dt, dev, "contiguous")]

        def ours(x, w, b, args=(stride, padding, dilation, groups)):
            return F.conv2d(x, w, b, *args)

        def theirs(x, w, b, args=(stride, padding, dilation, groups)):
            return TF.conv2d(x, w, b, *args)
        out.append(Check(name, "conv", make, ours, theirs))
    out.append(Check("conv2d 3x3 bf16 autocast", "conv",
                     lambda dt, dev, lay: [_x((2, 16, 9, 9), torch.float32, dev, lay),
                                           _x((24, 16, 3, 3), torch.float32, dev, lay) * (1 / 12),
                                           _x((24,), torch.float32, dev, "contiguous")],
                     _conv_under_autocast, _conv_of_bf16_operands, layouts=("channels_last", "contiguous"),
                     dtypes=(torch.bfloat16,)))
    out.append(Check("group_norm bf16 autocast", "reduction",
                     lambda dt, dev, lay: [_x((2, 6, 5, 7), dt, dev, lay), _param(6, torch.float32, dev),
                                           _param(6, torch.float32, dev)],
                     _group_norm_under_autocast, lambda x, w, b: TF.group_norm(x, 3, w, b),
                     dtypes=(torch.bfloat16,)))
    return out


def _group_norm_under_autocast(x, w, b):
    """A bf16 x under bf16 autocast: torch's output dtype (float32 on CUDA, whose
    autocast runs group norm in float32: the kernels read x as it is)."""
    import nnlib.functional as F
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        y = F.group_norm(x, 3, w, b)
        expected = TF.group_norm(x.detach(), 3, w.detach(), b.detach()).dtype
    if y.dtype != expected:
        raise RuntimeError(f"group_norm under autocast returned {y.dtype}, torch's {expected}")
    return y


def _conv_under_autocast(x, w, b):
    """float32 operands under bf16 autocast: a bf16 output, the weight's and bias's
    gradients written in float32 by the kernels."""
    import nnlib.functional as F
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        return F.conv2d(x, w, b, 1, 1)


def _conv_of_bf16_operands(x, w, b):
    """The reference of ``_conv_under_autocast``: the operands rounded as autocast rounds them."""
    return TF.conv2d(*(t.to(torch.bfloat16).to(t.dtype) for t in (x, w, b)), 1, 1)


def _leaf(t):
    return t.detach().requires_grad_() if isinstance(t, torch.Tensor) and t.requires_grad else t


def _ours(check: Check, inputs: list, grad: torch.Tensor | None = None) -> tuple:
    """(out, grads): ``check.ours(*inputs)`` and the gradients of the inputs that
    require grad for the output gradient ``grad``, copied to out's dtype, device
    and layout (a channels_last model's backward hands a channels_last layer a
    channels_last gradient; None: an uninitialised one). Raises if the forward or
    the backward ran no Triton kernel."""
    from kernels._runtime import count_launches
    with count_launches() as launches:
        out = check.ours(*inputs)
    if launches.total == 0:
        raise RuntimeError("no Triton kernel ran: the call took torch's path")
    grad = torch.empty_like(out) if grad is None else torch.empty_like(out).copy_(grad)
    with count_launches() as launches:
        grads = torch.autograd.grad(out, [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad], grad)
    if launches.total == 0:
        raise RuntimeError("no Triton kernel ran in the backward: it took torch's path")
    return out, grads


def run_check(check: Check, dtype: torch.dtype, device: str, layout: str,
              tf32: bool = False) -> float:
    """Worst |ours - reference| / (atol + rtol |reference|) over the output and every
    input gradient (inf where one is NaN or infinite and the other not): <= 1
    passes. Raises if the forward or the backward ran no Triton kernel.
    ``tf32``: compared at ``TF32_CONV`` (an fp32 convolution on tensor cores)."""
    from nnlib.testing import tolerance
    torch.manual_seed(0)
    inputs = [_leaf(t) for t in check.make(dtype, device, layout)]
    refs = [t.detach().cpu().double().requires_grad_(t.requires_grad) for t in inputs]
    ref = check.theirs(*refs)
    grad = torch.randn(ref.shape, dtype=torch.float64)
    out, grads = _ours(check, inputs, grad)
    ref_grads = torch.autograd.grad(ref, [r for r in refs if r.requires_grad], grad.to(out.dtype).double())
    atol, rtol = tolerance(dtype, check.kind, tf32)
    worst = 0.0
    for got, want in [(out, ref), *zip(grads, ref_grads)]:
        got, want = got.detach().cpu().double(), want.detach().double()
        if got.shape != want.shape:
            return math.inf
        same = (got == want) | (got.isnan() & want.isnan())
        ratio = ((got - want).abs() / (atol + rtol * want.abs())).nan_to_num(math.inf, math.inf).masked_fill(same, 0.0)
        worst = max(worst, ratio.max().item() if ratio.numel() else 0.0)
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnlib.selftest",
                                     description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--quick", action="store_true",
                        help="float32 (contiguous) and bfloat16 (channels_last where the op takes it)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="auto (the default): CUDA when a GPU is visible, else the CPU through Triton's "
                             "interpreter")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    from kernels._runtime import interpreting
    if device == "cpu" and not interpreting():
        # Triton reads TRITON_INTERPRET when it is imported: run again in a process with it set.
        sys.stdout.flush()
        return subprocess.call([sys.executable, "-m", "nnlib.selftest", *argv],
                               env={**os.environ, "TRITON_INTERPRET": "1"})
    import triton
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter)"
    print(f"nnlib selftest on {name}: torch {torch.__version__}, triton {triton.__version__}", flush=True)
    dtypes = [torch.float32, torch.bfloat16] if args.quick else [torch.float32, torch.float16, torch.bfloat16]
    start = time.perf_counter()
    print(f"{'op':26s} {'dtype':9s} {'layout':14s} {'error / tolerance':>18s}")
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        failed, rows = _sweep(dtypes, device, args.quick)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    print(f"{rows - failed} of {rows} checks passed in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


def _runs(dtypes, device: str, quick: bool) -> list[tuple[Check, torch.dtype, str, bool]]:
    """(check, dtype, layout, tf32) of every row of the sweep: TF32 off; on a GPU
    the convolutions once more with TF32 on."""
    runs = []
    for check in checks():
        check_dtypes = [dtype for dtype in dtypes if not check.dtypes or dtype in check.dtypes]
        runs += [(check, dtype, layout, False) for i, dtype in enumerate(check_dtypes)
                 for layout in ([check.layouts[i % len(check.layouts)]] if quick else check.layouts)]
        if device == "cuda" and check.kind == "conv" and not check.dtypes:
            runs.append((check, torch.float32, check.layouts[-1], True))
    return runs


def _compile_ahead(runs, device: str) -> None:
    """The kernels of every row's forward and backward, compiled at once
    (``kernels._runtime.compile_ahead``: on a fresh GPU machine the sweep would
    otherwise compile them one after another); an error here shows again in its row."""
    from kernels._runtime import compile_ahead, compiling_ahead
    with compile_ahead():
        if not compiling_ahead():       # launches would run (NNLIB_PARALLEL_COMPILE=0, triton < 3.5): the rows compile
            return
        for check, dtype, layout, tf32 in runs:
            torch.backends.cudnn.allow_tf32 = tf32
            try:
                _ours(check, [_leaf(t) for t in check.make(dtype, device, layout)])
            except Exception:  # noqa: BLE001
                pass
            finally:
                torch.backends.cudnn.allow_tf32 = False


def _sweep(dtypes, device: str, quick: bool) -> tuple[int, int]:
    """Runs and prints every check (``_runs``); returns (failed, rows)."""
    runs = _runs(dtypes, device, quick)
    if device == "cuda":
        _compile_ahead(runs, device)
    failed = 0
    for check, dtype, layout, tf32 in runs:
        torch.backends.cudnn.allow_tf32 = tf32
        try:
            ratio = run_check(check, dtype, device, layout, tf32)
            status = f"{ratio:18.3f}" + ("" if ratio <= 1 else "  FAIL")
            failed += ratio > 1
        except Exception as exc:     # report every check, then fail
            status = f"{'ERROR':>18s}  {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            failed += 1
        finally:
            torch.backends.cudnn.allow_tf32 = False
        name = "tf32" if tf32 else str(dtype).replace("torch.", "")
        print(f"{check.op:26s} {name:9s} {layout:14s} {status}", flush=True)
    return failed, len(runs)


if __name__ == "__main__":
    sys.exit(main())
