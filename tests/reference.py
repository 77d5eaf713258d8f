"""The float64 reference; the one tolerance table lives in nnlib.testing.

``check_op`` runs an nnlib function on the inputs as given and the torch
reference on float64 CPU copies, then compares outputs and the gradients of
every input that requires grad (for the same random output gradient), and
asserts that a Triton kernel ran.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as TF
from torch.utils._python_dispatch import _disable_current_modes

from kernels._runtime import count_launches
from nnlib.testing import FLOAT_DTYPES, TOLERANCES, assert_close, tolerance  # noqa: F401 (re-exported)


def exact_copy(t: torch.Tensor, cpu: bool = False) -> torch.Tensor:
    """A copy with t's sizes, strides and overlaps (an expanded tensor stays
    expanded), and its requires_grad; on the CPU with ``cpu`` (``.cpu()`` keeps a
    dense layout only)."""
    storage = t.detach().untyped_storage()
    storage = storage.cpu() if cpu and t.device.type != "cpu" else storage.clone()
    copy = torch.empty(0, dtype=t.dtype, device=storage.device)
    copy.set_(storage, t.storage_offset(), t.shape, t.stride())
    return copy.requires_grad_(t.requires_grad)


def to_reference(t):
    """A float64 CPU leaf copy with the same requires_grad (non-tensors pass through)."""
    if not isinstance(t, torch.Tensor):
        return t
    ref = t.detach().cpu()
    if ref.is_floating_point():
        ref = ref.double()
    return ref.requires_grad_(t.requires_grad)


def _at_kink(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Elements of a fused activation's output at its kink in both results (the
    float64 reference within its own rounding of zero, ours within fp32's), but not
    both exactly zero: which side of the kink each lands on is rounding (an input
    equal to the mean it is normalised by: exactly 0 in one, 3e-17 in the other),
    and so is whether its gradient passes."""
    o, r = out.detach().cpu().double(), ref.detach()
    if not r.numel():
        return r != r
    near = (r.abs() <= 1e-12 * r.abs().max().clamp_min(1)) & (o.abs() <= 2**-16 * o.abs().max().clamp_min(1))
    return near & ~((r == 0) & (o == 0))


def check_op(ours, reference, inputs: list, kind: str, dtype: torch.dtype | None = None,
             expect_launch: bool = True, grad_scale: float = 1.0, out_scale: float = 1.0,
             backward_launch: bool = True, kinks: bool = False, tf32: bool = False):
    """Run ``ours(*inputs)`` and ``reference(*float64 copies)``; compare outputs
    (a tensor or a tuple of tensors, non-float parts exactly) and gradients of
    every input with requires_grad; with ``expect_launch``, a Triton kernel ran
    in the call and (unless ``backward_launch`` is False: the gradients asked
    need no kernel) in the backward. ``kinks`` (a fused activation): no output
    gradient at elements on the activation's kink in both results (``_at_kink``).
    ``tf32``: fp32 convolutions compared at ``TF32_CONV``.
    Returns (our outputs, reference outputs)."""
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    dtype = dtype or next(t.dtype for t in tensors if t.is_floating_point())
    ref_inputs = [to_reference(t) for t in inputs]
    with count_launches() as launches:
        out = ours(*inputs)
    ref_out = reference(*ref_inputs)
    outs = out if isinstance(out, tuple) else (out,)
    ref_outs = ref_out if isinstance(ref_out, tuple) else (ref_out,)
    assert len(outs) == len(ref_outs)
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        assert o.shape == r.shape, f"output {i}: shape {tuple(o.shape)} != {tuple(r.shape)}"
        if r.is_floating_point():
            assert o.dtype == dtype, f"output {i}: dtype {o.dtype} != {dtype}"
            assert_close(o, r, dtype, kind, f"output {i}", scale=out_scale, tf32=tf32)
        else:
            assert torch.equal(o.cpu(), r.cpu()), f"output {i} differs"
    wants_grad = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    float_outs = [(o, r) for o, r in zip(outs, ref_outs) if r.is_floating_point() and r.requires_grad]
    if wants_grad and float_outs:
        grads_out = [torch.randn(r.shape, dtype=torch.float64) for _, r in float_outs]
        if kinks:
            grads_out = [g.masked_fill(_at_kink(o, r), 0) for g, (o, r) in zip(grads_out, float_outs)]
        with count_launches() as bwd_launches:
            grads = torch.autograd.grad([o for o, _ in float_outs], [inputs[i] for i in wants_grad],
                                        [g.to(o.dtype).to(o.device) for g, (o, _) in zip(grads_out, float_outs)],
                                        allow_unused=True)
        # Compare against the reference fed the same rounded output gradient.
        ref_grads = torch.autograd.grad([r for _, r in float_outs], [ref_inputs[i] for i in wants_grad],
                                        [g.to(o.dtype).double() for g, (o, _) in zip(grads_out, float_outs)],
                                        allow_unused=True)
        for i, g, rg in zip(wants_grad, grads, ref_grads):
            if rg is None:
                assert g is None or not g.abs().sum(), f"grad of input {i} should be zero"
                continue
            assert g is not None, f"grad of input {i} is missing"
            assert g.shape == inputs[i].shape
            assert_close(g, rg, inputs[i].dtype if inputs[i].is_floating_point() else dtype, kind,
                         f"grad of input {i}", scale=grad_scale, tf32=tf32)
        if expect_launch and backward_launch:
            assert bwd_launches.total > 0, "no Triton kernel ran in the backward"
    if expect_launch:
        assert launches.total > 0, "no Triton kernel ran: the call took the torch fallback"
    return out, ref_out


def check_double_backward(ours, reference, inputs: list, kind: str, grad_scale: float = 1.0,
                          expect_launch: bool = True, connected: bool = True):
    """Second derivatives (create_graph=True, as a gradient penalty takes them):
    the gradients of <r, first-order grads> with respect to every input that
    requires grad and to the output gradient itself, ours against the float64
    reference fed the same rounded vectors; a Triton kernel must run in the
    second backward unless ``expect_launch`` is False. A second gradient is None
    where the reference's is (zeros where torch's are: ``.grad`` after a penalty),
    unless not ``connected`` (max pool's reaches only the output gradient)."""
    dtype = next(t.dtype for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point())
    wants_grad = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    ref_inputs = [to_reference(t) for t in inputs]
    out, ref_out = ours(*inputs), reference(*ref_inputs)
    upstream = torch.randn(ref_out.shape, dtype=torch.float64).to(dtype)
    probes = [torch.randn(inputs[i].shape, dtype=torch.float64).to(dtype) for i in wants_grad]
    results = []
    for fn_out, fn_inputs, device_dtype in ((out, inputs, None), (ref_out, ref_inputs, torch.float64)):
        like = fn_inputs[wants_grad[0]]
        v = (upstream if device_dtype is None else upstream.double()).to(like.device).requires_grad_()
        targets = [fn_inputs[i] for i in wants_grad]
        first = torch.autograd.grad(fn_out, targets, v, create_graph=True)
        inner = sum((f * (p if device_dtype is None else p.double()).to(f.device)).sum()
                    for f, p in zip(first, probes) if f is not None and f.requires_grad)
        with count_launches() as launches:
            second = torch.autograd.grad(inner, targets + [v], allow_unused=True)
        results.append((first, second, launches.total))
    (first, second, launches), (ref_first, ref_second, _) = results
    assert launches > 0 or not expect_launch, "no Triton kernel ran in the double backward"
    names = [f"input {i}" for i in wants_grad] + ["output gradient"]
    for name, g, rg in zip(names, first, ref_first):
        assert_close(g, rg, dtype, kind, f"grad of {name}", scale=grad_scale)
    for name, g, rg in zip(names, second, ref_second):
        if rg is None or g is None:
            assert not connected or (g is None) == (rg is None), f"second grad of {name}: None on one side only"
            zero = rg if g is None else g
            assert zero is None or not zero.abs().sum(), f"second grad of {name}: one side is zero, one is not"
            continue
        assert_close(g, rg, dtype, kind, f"second grad of {name}", scale=grad_scale)


def check_raises_like_torch(ours, theirs, args: tuple, kwargs: dict | None = None, unchanged: tuple = ()) -> None:
    """The bad-argument check every op's table uses: torch's ``theirs(*args,
    **kwargs)`` (tensors copied to the CPU) raises; ``ours`` raises the same class
    (not a subclass: NotImplementedError is a RuntimeError),
    before launching any kernel, and every tensor of ``unchanged`` keeps its values."""
    kwargs = kwargs or {}

    def cpu(v):
        return v.cpu() if isinstance(v, torch.Tensor) else v
    with pytest.raises(Exception) as expected:
        theirs(*map(cpu, args), **{k: cpu(v) for k, v in kwargs.items()})
    before = [t.clone() for t in unchanged]
    with count_launches() as launches, pytest.raises(Exception) as raised:
        ours(*args, **kwargs)
    assert type(raised.value) is expected.type, f"torch raises {expected.type.__name__} ({expected.value}); " \
        f"nnlib raises {type(raised.value).__name__} ({raised.value})"
    assert launches.total == 0, "a kernel ran before the error"
    for t, saved in zip(unchanged, before):
        assert torch.equal(t, saved), "a tensor was written before the error"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (for whole models, where elementwise tolerances
    do not apply)."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def huge_view(shape, strides, dtype, device) -> torch.Tensor:
    """A random view of ``shape`` / ``strides`` whose element offsets may pass 2**31:
    its storage is allocated lazily, so only the pages the view touches are committed."""
    storage = sum((n - 1) * s for n, s in zip(shape, strides)) + 1
    view = torch.empty(storage, dtype=dtype, device=device).as_strided(shape, strides)
    return view.copy_(torch.randn(shape, dtype=dtype))


def make_input(shape, dtype, device, layout: str = "contiguous", requires_grad: bool = False):
    """A random leaf tensor in a layout: "contiguous", "channels_last" (rank 4),
    "transposed" (last two dims swapped) or "sliced" (every other element of the
    last dim: not dense)."""
    shape = tuple(shape)
    if layout == "sliced":
        t = torch.randn(*shape[:-1], shape[-1] * 2).to(dtype).to(device)[..., ::2]
    elif layout == "transposed":
        t = torch.randn(*shape[:-2], shape[-1], shape[-2]).to(dtype).to(device).transpose(-1, -2)
    elif layout == "channels_last":
        t = torch.randn(shape).to(dtype).to(device).contiguous(memory_format=torch.channels_last)
    else:
        assert layout == "contiguous", layout
        t = torch.randn(shape).to(dtype).to(device)
    return t.requires_grad_(requires_grad)


def epilogue(out, activation=None, negative_slope=0.01, residual=None):
    """torch's statement of nnlib's keyword-only extras: + residual, then the
    activation; applied to the first output of a tuple."""
    if isinstance(out, tuple):
        return (epilogue(out[0], activation, negative_slope, residual), *out[1:])
    if residual is not None:
        out = out + residual
    if activation == "relu":
        return TF.relu(out)
    if activation == "leaky_relu":
        return TF.leaky_relu(out, negative_slope)
    return out


@contextlib.contextmanager
def device_ops():
    """A Counter of the aten ops run inside that do device work, by name: neither
    allocations nor views (``bench.host.DeviceOps``; a host synchronisation shows
    up as _local_scalar_dense). Triton launches are not aten ops; the
    interpreter's own copies around a launch are left out."""
    from bench.host import DeviceOps
    from triton.runtime.interpreter import GridExecutor
    run = GridExecutor.__call__

    def quiet(self, *args, **kwargs):
        with _disable_current_modes():
            return run(self, *args, **kwargs)
    GridExecutor.__call__ = quiet
    try:
        with DeviceOps() as mode:
            yield mode.ops
    finally:
        GridExecutor.__call__ = run
