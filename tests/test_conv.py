"""conv2d against the float64 reference: outputs and the three gradients, every
argument torch accepts, every kernel path (implicit GEMM, FLAT GEMM for few input
channels, register-blocked depthwise, direct for few output channels per group), layouts, the fused
activation, nnlib.Conv2d's padding modes, and torch's errors for bad input.

Shapes are small and awkward (odd channel counts, tiny images, strides that do
not divide): the interpreter pays per program and per loop iteration.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as TF
import triton

import nnlib
import nnlib.functional as F
from kernels.conv import conv_paths
from kernels._runtime import clear_plan_caches, count_launches
from tests.reference import assert_close, check_double_backward, check_op, device_ops, huge_view, make_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# torch's own reference warns that 'same' padding of an even kernel copies its input.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

# (id, N, C, H, W, K, (kh, kw), stride, padding, dilation, groups, path of each pass)
G, FL, D, DW = "gemm", "gemm-flat", "direct", "depthwise"
GEOMETRIES = [
    ("3x3-odd-channels", 2, 19, 9, 11, 21, (3, 3), 1, 1, 1, 1, (G, G, G)),
    ("1x1-stride2", 2, 17, 10, 7, 18, (1, 1), 2, 0, 1, 1, (G, G, G)),
    ("5x5-stride32-pad21-batch1", 1, 16, 13, 12, 20, (5, 5), (3, 2), (2, 1), 1, 1, (G, G, G)),
    ("7x7-stride2", 2, 24, 11, 9, 16, (7, 7), 2, 3, 1, 1, (G, G, G)),
    ("same-dilation2", 2, 18, 8, 10, 17, (3, 3), 1, "same", 2, 1, (G, G, G)),
    ("groups2-dilation13-stride2", 2, 40, 9, 11, 34, (3, 3), 2, 2, (1, 3), 2, (G, G, G)),
    ("dilation44", 1, 16, 11, 10, 16, (3, 3), 1, 4, (4, 4), 1, (G, G, G)),
    ("2x4-same-even", 2, 20, 8, 9, 19, (2, 4), 1, "same", 1, 1, (G, G, G)),
    ("1x3-valid-stride2", 2, 17, 10, 9, 22, (1, 3), 2, "valid", 1, 1, (G, G, G)),
    ("3x1-tiny-image", 2, 17, 3, 2, 19, (3, 1), 1, 2, 2, 1, (G, G, G)),
    ("rgb-stem-5x5", 2, 3, 15, 13, 17, (5, 5), 2, 2, 1, 1, (FL, D, FL)),
    ("C1-3x3", 2, 1, 9, 8, 16, (3, 3), 1, 1, 1, 1, (FL, D, FL)),
    ("flat-groups2-stride2", 2, 8, 9, 9, 32, (3, 3), 2, 1, 1, 2, (FL, D, FL)),
    ("depthwise-stride2", 2, 6, 9, 11, 6, (3, 3), 2, 1, 1, 6, (DW, DW, DW)),
    ("multiplier-dilation2", 2, 5, 8, 9, 10, (3, 3), 1, (2, 1), 2, 5, (D, D, D)),
    ("K1-same", 2, 3, 9, 9, 1, (3, 3), 1, "same", 1, 1, (D, D, D)),
    ("K3-from-16-stride32", 2, 16, 7, 8, 3, (3, 2), (3, 2), 2, 1, 1, (D, D, D)),
    ("groups4-3x1", 1, 12, 8, 8, 20, (3, 1), 1, 0, 1, 4, (D, D, D)),
    ("depthwise-tiny-image-5x5", 2, 4, 2, 3, 4, (5, 5), 1, 2, 1, 4, (DW, DW, DW)),
    ("depthwise-33-stride2-dilation23", 2, 33, 12, 13, 33, (3, 3), 2, 1, (2, 3), 33, (DW, DW, DW)),
    ("depthwise-7x7-stride32", 1, 10, 11, 9, 10, (7, 7), (3, 2), 3, 1, 10, (DW, DW, DW)),
    ("depthwise-same-2x4", 2, 9, 6, 7, 9, (2, 4), 1, "same", 1, 9, (DW, DW, DW)),
    ("depthwise-9x3-direct", 1, 3, 10, 9, 3, (9, 3), 1, 4, 1, 3, (D, D, D)),
    ("depthwise-1x1-stride2", 2, 5, 7, 6, 5, (1, 1), 2, 0, 1, 5, (DW, DW, DW)),
]
LAYOUTS = ["contiguous", "channels_last", "sliced", "transposed"]
ACTIVATIONS = [None, "relu", None, "leaky_relu", None]


@pytest.fixture(autouse=True)
def _own_launch_plans():
    """Each test builds its own launch plans (the plan caches emptied before and
    after it): tests patch what plans are built from (``_splits``, tile configs,
    ``_image_needs_int64``), which a plan cached before would not see, and their
    patched plans must not serve later tests."""
    clear_plan_caches()
    yield
    clear_plan_caches()


def _inputs(N, C, H, W, K, kernel, groups, dtype, device, layout="contiguous", bias=True, unbatched=False):
    shape = (C, H, W) if unbatched else (N, C, H, W)
    x = make_input(shape, dtype, device, layout, requires_grad=True)
    fan_in = C // groups * kernel[0] * kernel[1]
    w = (torch.randn(K, C // groups, *kernel) / fan_in ** 0.5).to(dtype).to(device).requires_grad_(True)
    b = torch.randn(K).to(dtype).to(device).requires_grad_(True) if bias else None
    return x, w, b


def _conv_fns(stride, padding, dilation, groups, activation=None, negative_slope=0.01):
    def ours(x, w, b):
        return F.conv2d(x, w, b, stride, padding, dilation, groups,
                        activation=activation, negative_slope=negative_slope)

    def reference(x, w, b):
        y = TF.conv2d(x, w, b, stride, padding, dilation, groups)
        if activation == "relu":
            return TF.relu(y)
        return TF.leaky_relu(y, negative_slope) if activation == "leaky_relu" else y
    return ours, reference


def _check(geometry, dtype, device, layout, bias, activation, unbatched=False, **kw):
    _, N, C, H, W, K, kernel, stride, padding, dilation, groups, paths = geometry
    assert tuple(conv_paths(C, K, groups, kernel).values()) == paths, \
        "geometry no longer exercises its path"
    x, w, b = _inputs(N, C, H, W, K, kernel, groups, dtype, device, layout, bias, unbatched)
    ours, reference = _conv_fns(stride, padding, dilation, groups, activation)
    return check_op(ours, reference, [x, w, b], "conv", **kw)


@pytest.mark.parametrize("i", range(len(GEOMETRIES)), ids=[g[0] for g in GEOMETRIES])
def test_conv2d_fp32(i, device):
    """Every geometry in fp32, with layouts, bias None and the fused activations
    spread over the rows."""
    _check(GEOMETRIES[i], torch.float32, device, LAYOUTS[i % 4], bias=i % 3 != 2,
           activation=ACTIVATIONS[i % 5])


# fp16 on two or three geometries per path, bf16 on one or two (interpreter time).
HALF = [(i, torch.float16) for i in (0, 5, 7, 10, 12, 13, 14, 17)] + \
    [(i, torch.bfloat16) for i in (0, 5, 10, 13, 19)]


@pytest.mark.parametrize("i,dtype", HALF, ids=[f"{GEOMETRIES[i][0]}-{str(d)[6:]}" for i, d in HALF])
def test_conv2d_half(i, dtype, device):
    """fp16 and bf16 (tensor-core operands; the interpreter upcasts bf16 dots), with
    channels_last and the fused relu on some rows."""
    _check(GEOMETRIES[i], dtype, device, LAYOUTS[(i + 1) % 2], bias=True,
           activation="relu" if i % 2 else None)


@pytest.mark.parametrize("i,activation",
                         [(0, "relu"), (5, "leaky_relu"), (10, None), (13, "relu"), (14, "relu"), (16, None)],
                         ids=["gemm-relu", "gemm-groups-stride-leaky", "flat", "depthwise-relu", "multiplier-relu",
                              "direct-K3"])
def test_double_backward(i, activation, device):
    """Gradients of gradients (a gradient penalty): all three passes call each
    other's Functions, so second derivatives of x, w, b and the output gradient
    match torch's on every kernel path."""
    _, N, C, H, W, K, kernel, stride, padding, dilation, groups, _ = GEOMETRIES[i]
    x, w, b = _inputs(N, C, H, W, K, kernel, groups, torch.float32, device)
    ours, reference = _conv_fns(stride, padding, dilation, groups, activation)
    check_double_backward(ours, reference, [x, w, b], "conv")


def test_input_gradient_of_a_stride_phase_past_one_tile(device):
    """A stride-2 input gradient whose largest stride phase (12 x 12 of a 23 x 23
    input) holds more pixels than one tile of the interpreter's or a GPU's config."""
    x, w, b = _inputs(1, 16, 23, 23, 16, (3, 3), 1, torch.float32, device)
    ours, reference = _conv_fns(2, 1, 1, 1)
    check_op(ours, reference, [x, w, b], "conv")


@pytest.mark.parametrize("i", [0, 13, 14], ids=["gemm", "depthwise", "direct"])
def test_unbatched(i, device):
    _check(GEOMETRIES[i], torch.float32, device, "contiguous", bias=True, activation=None, unbatched=True)


@pytest.mark.parametrize("i", [0, 10, 13, 14], ids=["gemm", "flat", "depthwise", "direct"])
def test_empty_batch(i, device):
    _, N, C, H, W, K, kernel, stride, padding, dilation, groups, _ = GEOMETRIES[i]
    x, w, b = _inputs(0, C, H, W, K, kernel, groups, torch.float32, device)
    ours, reference = _conv_fns(stride, padding, dilation, groups, "relu")
    check_op(ours, reference, [x, w, b], "conv", expect_launch=False)


@pytest.mark.parametrize("kernel", [(3, 3), (0, 2)])
def test_input_without_channels(kernel, device):
    """An input of zero channels: torch's empty-input path gives (N, 0, P, Q) whatever
    the weight's K, gradients of zeros for the bias; so do we (batched or not, any
    kernel size, zero included)."""
    for shape in ((2, 0, 5, 6), (0, 5, 6)):
        tensors = [torch.randn(*s, device=device, requires_grad=True) for s in (shape, (6, 0, *kernel), (6,))]
        copies = [t.detach().cpu().requires_grad_(True) for t in tensors]
        ours, theirs = F.conv2d(*tensors, 2, 1), TF.conv2d(*copies, 2, 1)
        assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
        ours.sum().backward()
        theirs.sum().backward()
        for t, c in zip(tensors, copies):
            assert t.grad.shape == c.grad.shape and torch.equal(t.grad.cpu(), c.grad)


def test_empty_batch_with_other_dtypes(device):
    """torch sends an empty batch to its empty backend before it checks the
    weight's dtype, and the bias's too when padding is a string: an empty output in
    the input's dtype where torch gives one, its exception class where it raises."""
    x = torch.randn(0, 2, 3, 3, device=device)
    w32, b32 = torch.randn(2, 1, 1, 1, device=device), torch.randn(2, device=device)
    for padding in (0, "valid", "same"):
        for w, b in ((w32, b32.double()), (w32.double(), None), (w32.double(), b32)):
            args = (None if b is None else b.cpu(), 1, padding, 1, 2)
            try:
                theirs, error = TF.conv2d(x.cpu(), w.cpu(), *args), None
            except RuntimeError as e:
                error = e
            if error is not None:
                with pytest.raises(RuntimeError):
                    F.conv2d(x, w, b, 1, padding, 1, 2)
                continue
            ours = F.conv2d(x, w, b, 1, padding, 1, 2)
            assert (ours.shape, ours.dtype) == (theirs.shape, theirs.dtype), (padding, w.dtype, b)


def test_checks_after_a_good_call_of_the_same_shapes(device):
    """check_conv2d caches its checks of sizes and dtypes: a call that differs from a
    good one in a dtype, or in padding given as a string rather than as the same
    numbers, is still checked (torch's class), and the good call still passes."""
    x, w = torch.randn(2, 4, 5, 5, device=device), torch.randn(6, 4, 3, 3, device=device)
    b = torch.randn(6, device=device)
    empty = torch.randn(0, 4, 5, 5, device=device)
    for _ in range(2):
        F.conv2d(x, w, b)
        F.conv2d(empty, w, b.double(), 1, "valid")      # torch returns this (string padding, empty batch)
        for args in ((x, w, b.half()), (x, w.half(), b), (x.half(), w, b), (empty, w, b.double(), 1, 0)):
            with pytest.raises(RuntimeError):
                TF.conv2d(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
            with pytest.raises(RuntimeError):
                F.conv2d(*args)


@pytest.mark.parametrize("groups", [1, 4])
def test_arguments_that_cannot_matter(groups, device):
    """torch takes a dilation of 2**31 on a one-tap kernel axis and a stride of 2**31
    on an axis with one output position (past the kernels' int32 arguments): the
    same values and gradients (GEMM and depthwise paths)."""
    x = make_input((2, 4, 3, 5), torch.float32, device, requires_grad=True)
    w = make_input((16 if groups == 1 else 4, 4 // groups, 1, 3), torch.float32, device, requires_grad=True)
    ours, reference = _conv_fns((2**31, 1), 0, (2**31, 1), groups)
    check_op(ours, reference, [x, w, None], "conv")


@pytest.mark.parametrize("channels,path", [((3, 16, 1), FL), ((32, 32, 1), G), ((8, 8, 8), DW), ((6, 4, 2), D)],
                         ids=["gemm-flat", "gemm", "depthwise", "direct"])
@pytest.mark.parametrize("extent", [2**31, 2**29 - 2], ids=["past-int32", "just-below"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_padding_and_dilation(channels, path, extent, layout, device, monkeypatch):
    """torch takes a stride, padding and dilation of 2**31 where the padded input
    still holds the dilated kernel: a 2-tap row, each output column meeting one tap
    (two output columns, each from another tap), and padding='same' whose taps all
    fall in the padding, and the stride alone (three output columns, or rows, the
    outer ones all padding: no kernel unrolls or loops over a stride). Where the
    padded input reaches 2**30, past what the kernels' int32 rows hold, torch's
    convolution runs (no launch); below it our kernels, on every path. Values and
    gradients, outputs allocated NaN-filled.
    channels_last: a tap's offset in x (dilation x C) passes int32 (the GEMM
    forward and the direct weight gradient read it through int64 offsets; in
    int32 they read far outside x: an illegal address on an H200, 2026-11-30)."""
    from kernels.conv import ops
    if extent >= 2**30 and device == "cuda":
        pytest.skip("torch's own convolution runs these: whether cuDNN takes padding of 2**31 is torch's affair")
    C, K, groups = channels
    assert tuple(conv_paths(C, K, groups, (1, 2)).values())[0] == path
    empty_strided = torch.empty_strided
    monkeypatch.setattr(ops.torch, "empty_strided", lambda *a, **k: empty_strided(*a, **k).fill_(float("nan")))
    x = make_input((2, C, 2, 3), torch.float32, device, layout, requires_grad=True)
    w = make_input((K, C // groups, 1, 2), torch.float32, device, requires_grad=True)
    b = make_input((K,), torch.float32, device, requires_grad=True)
    ours_launch = extent < 2**30
    check_op(*_conv_fns((1, extent), (0, extent), (1, extent), groups, "relu"), [x, w, b], "conv",
             expect_launch=ours_launch)
    check_op(*_conv_fns(1, "same", (1, 2 * extent), groups), [x, w, b], "conv", expect_launch=ours_launch)
    check_op(*_conv_fns((1, extent), (0, extent), 1, groups), [x, w, b], "conv", expect_launch=ours_launch)
    check_op(*_conv_fns((extent, 1), (extent, 0), 1, groups), [x, w, b], "conv", expect_launch=ours_launch)


def test_negative_slope_leaky_relu(device):
    """A negative slope flips the output's sign, so conv2d runs the activation as
    its own kernel; gradients still match."""
    _, N, C, H, W, K, kernel, stride, padding, dilation, groups, _ = GEOMETRIES[0]
    x, w, b = _inputs(N, C, H, W, K, kernel, groups, torch.float32, device)
    ours, reference = _conv_fns(stride, padding, dilation, groups, "leaky_relu", -0.3)
    check_op(ours, reference, [x, w, b], "conv")


def test_weight_layouts_and_expanded_grad(device):
    """channels_last and sliced weights, and an expanded (stride 0) output gradient
    from .sum(): the kernels read all of them through strides."""
    x = make_input((2, 19, 7, 9), torch.float32, device, requires_grad=True)
    for w in (torch.randn(21, 19, 3, 3).to(device).contiguous(memory_format=torch.channels_last),
              torch.randn(42, 19, 3, 3).to(device)[::2]):
        w = (w / 13).requires_grad_(True)
        y = F.conv2d(x, w, None, 1, 1)
        ref = TF.conv2d(x.detach().double(), w.detach().double(), None, 1, 1)
        torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-4)
        dx, dw = torch.autograd.grad(y.sum(), (x, w))
        xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        dxr, dwr = torch.autograd.grad(TF.conv2d(xr, wr, None, 1, 1).sum(), (xr, wr))
        torch.testing.assert_close(dx.double(), dxr, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(dw.double(), dwr, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("i", [0, 13, 14], ids=["gemm", "depthwise", "direct"])
def test_memory_format_follows_torch(i, device):
    _, N, C, H, W, K, kernel, stride, padding, dilation, groups, _ = GEOMETRIES[i]
    cl = torch.channels_last
    for x_cl, w_cl in ((False, False), (True, False), (False, True)):
        x, w, b = _inputs(N, C, H, W, K, kernel, groups, torch.float32, device)
        x = x.detach().contiguous(memory_format=cl) if x_cl else x.detach()
        w = w.detach().contiguous(memory_format=cl) if w_cl else w.detach()
        ours = F.conv2d(x, w, b, stride, padding, dilation, groups)
        ref = TF.conv2d(x.cpu(), w.cpu(), b.detach().cpu(), stride, padding, dilation, groups)
        assert ours.is_contiguous(memory_format=cl) == ref.is_contiguous(memory_format=cl)
        assert ours.is_contiguous() == ref.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("C,H,W,K,groups,stride,kernel", [(32, 9, 10, 48, 2, 2, 3), (144, 6, 7, 80, 1, 1, 3),
                                                          (64, 5, 6, 40, 1, 1, 1), (32, 6, 1, 48, 1, 1, 3)],
                         ids=["grouped-strided", "channel-blocks", "pointwise", "one-column"])
def test_aligned_channels_last(C, H, W, K, groups, stride, kernel, dtype, device, launch_log):
    """channels_last input with 16-byte channel rows: the three GEMM kernels get
    VEC > 1 (the alignment promise of the GPU path), grouped and strided, with
    several channel blocks per tap in every pass (144 input, 80 output channels),
    for a 1x1 weight as torch lays it out (strides (C, 1, 1, 1)) and an image one
    pixel wide (padded: masked rows at the column stride, which is free)."""
    x = make_input((2, C, H, W), dtype, device, "channels_last", requires_grad=True)
    w = (torch.randn(K, C // groups, kernel, kernel) / (kernel * (C // groups) ** 0.5)).to(dtype).to(device)
    w = (w if kernel == 1 else w.contiguous(memory_format=torch.channels_last)).requires_grad_(True)
    b = torch.randn(K).to(dtype).to(device).requires_grad_(True)
    ours, reference = _conv_fns(stride, kernel // 2, 1, groups, "relu")
    out, _ = check_op(ours, reference, [x, w, b], "conv")
    assert out.is_contiguous(memory_format=torch.channels_last)
    launch_log.clear()     # check_op's output gradient is NCHW: once more with a channels_last one
    torch.autograd.grad(ours(x, w, b), [x, w], torch.randn_like(out))
    seen = {launch.name: launch.args.get("VEC") for launch in launch_log}
    vec = 16 // x.element_size()
    descriptors = kernel == 1 and dtype != torch.float32       # fp32 without tf32 (the tests' default): FMA dots
    names = (["_conv_pointwise_gemm_kernel", "_conv_pointwise_wgrad_kernel"] if descriptors
             else ["_conv_fwd_gemm_kernel", "_conv_dgrad_gemm_kernel", "_conv_wgrad_gemm_kernel"])
    assert [seen.get(name) for name in names] == [vec] * len(names), seen


@pytest.mark.parametrize("C,layout,dilation,groups,dtype,pad_c", [
    (3, "contiguous", 1, 1, torch.bfloat16, 4), (3, "transposed", 1, 1, torch.float32, 4),
    (2, "sliced", 1, 1, torch.float16, 4), (3, "channels_last", 1, 1, torch.float16, 4),
    (4, "channels_last", 1, 1, torch.float32, 4), (3, "contiguous", (1, 2), 1, torch.float32, 0),
    (6, "contiguous", 1, 2, torch.float32, 0), (5, "contiguous", 1, 1, torch.float32, 0)],
    ids=["nchw-bf16", "transposed-fp32", "2-channels-sliced-fp16", "channels-last", "4-channels-channels-last",
         "column-dilation", "groups", "5-channels"])
def test_stem_padded_channels(C, layout, dilation, groups, dtype, pad_c, device, launch_log):
    """A FLAT forward (few input channels: an RGB stem) reads x and w as
    channels_last tensors zero-padded to PAD_C channels, whose kernel rows the
    GEMM loads as aligned vectors: a copy (``_pad_channels_kernel``, one launch)
    unless the tensor is one already (4 channels, channels_last); the weight
    gradient pads only such a tensor (a copy timed slower: ``_flat_padding``).
    Column dilation, groups, more channels and ``read_in_place`` keep them as
    they are. Against float64, gradients and the padded columns of the weight
    gradient (dropped on store) included."""
    from kernels.conv import ops

    def seen():
        return [(launch.name, launch.args.get("PAD_C")) for launch in launch_log]
    x, w, b = _inputs(2, C, 13, 11, 32, (5, 5), groups, dtype, device, layout)
    x = x.detach()          # (as a stem's images: x's gradient, a direct kernel's, is tested elsewhere)
    if layout == "channels_last":
        w = w.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    ours, reference = _conv_fns(2, 2, dilation, groups, "relu")
    assert conv_paths(C, 32, groups, (5, 5))["forward"] == FL
    padded_already = C == 4 and layout == "channels_last"

    def copies(pad_c):
        return [] if padded_already or not pad_c else [("_pad_channels_kernel", pad_c)]
    launch_log.clear()
    ours(x, w, b)
    assert seen() == copies(pad_c) * 2 + [("_conv_fwd_gemm_kernel", pad_c)], seen()
    y = ours(x, w, b)
    launch_log.clear()
    torch.autograd.grad(y, w, torch.randn_like(y))
    assert [call for call in seen() if call[0] in ("_pad_channels_kernel", "_conv_wgrad_gemm_kernel")] == \
        [("_conv_wgrad_gemm_kernel", pad_c if padded_already else 0)], seen()
    launch_log.clear()
    with ops.read_in_place():                   # the benchmark's alternative: no copy
        torch.autograd.grad(ours(x, w, b), w, torch.randn_like(y))
    assert [call for call in seen() if call[1] is not None] == \
        [("_conv_fwd_gemm_kernel", 0), ("_conv_wgrad_gemm_kernel", 0)], seen()
    check_op(ours, reference, [x, w, b], "conv")


def test_stem_weight_grad_plans_per_padding(device, launch_log):
    """One geometry's weight gradient of a 4-channel channels_last x, first read
    in place (PAD_C 0), then read as padded (PAD_C 4, the same tensor): each gets
    its own launch plan, both right."""
    from kernels.conv import ops
    w = torch.randn(16, 4, 7, 7).to(device)
    for in_place in (True, False):
        x = make_input((1, 4, 9, 9), torch.float32, device, "channels_last")
        dy = torch.randn(1, 16, 9, 9).to(device)
        with ops.read_in_place() if in_place else contextlib.nullcontext():
            dw = ops.conv2d_weight_grad(dy, x, w, [1, 1], [3, 3, 3, 3], [1, 1], 1, None)
        ref = torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double(), padding=3)
        assert_close(dw, ref, torch.float32, "conv")
    pads = [launch.args["PAD_C"] for launch in launch_log if launch.name == "_conv_wgrad_gemm_kernel"]
    assert pads == [0, 4], pads


def test_padded_channels_are_zero(device, monkeypatch):
    """The padded copy's extra channels are written as zeros, whatever the memory
    held (NaN here): the GEMM multiplies them by w's zero channels."""
    from kernels.conv import ops
    empty = torch.empty
    monkeypatch.setattr(ops.torch, "empty", lambda *a, **k: empty(*a, **k).fill_(float("nan")))
    x = make_input((2, 3, 5, 4), torch.float16, device, "sliced")
    padded = ops._padded_channels_last(x, 4)
    monkeypatch.undo()
    assert padded.shape == (2, 4, 5, 4) and padded.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(padded[:, :3], x) and torch.equal(padded[:, 3:], torch.zeros_like(padded[:, 3:]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("groups,channel_slice", [(1, False), (2, False), (2, True)],
                         ids=["plain", "grouped", "grouped-channel-slice"])
def test_pointwise_descriptor_passes(groups, channel_slice, dtype, device, monkeypatch):
    """A 1x1 stride-1 convolution of channels_last tensors runs its three passes as
    plain GEMMs through tensor descriptors (``_conv_pointwise_gemm_kernel``: forward
    and input gradient; ``_conv_pointwise_wgrad_kernel``): per group (the
    descriptors stop at the group's channels), with partial tiles (70 pixels, 32
    channels per group), the reductions split three ways, and on a channel slice
    of a wider tensor (pixels at a stride of 80 channels, not C). Against float64
    (fp32 as tf32: ``TF32_CONV``); an fp32 convolution without tf32 keeps the
    implicit GEMM."""
    from kernels.conv import ops
    monkeypatch.setattr(ops, "_splits", lambda *args: 3)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    C, K = 64, 48
    if channel_slice:
        wide = torch.randn(2, C + 16, 5, 7).to(dtype).to(device).contiguous(memory_format=torch.channels_last)
        x = wide[:, 8:8 + C].detach().requires_grad_(True)
    else:
        x = make_input((2, C, 5, 7), dtype, device, "channels_last", requires_grad=True)
    _, w, b = _inputs(2, C, 5, 7, K, (1, 1), groups, dtype, device)
    ours, reference = _conv_fns(1, 0, 1, groups, "relu")
    tf32 = dtype == torch.float32
    with count_launches() as launches:
        check_op(ours, reference, [x, w, b], "conv", tf32=tf32)
    assert launches.counts["_conv_pointwise_gemm_kernel"] >= 1, launches.counts
    assert launches.counts["_conv_pointwise_wgrad_kernel"] == 1, launches.counts
    # the input gradient takes descriptors from a channels_last output gradient
    dy = torch.randn(2, K, 5, 7).to(dtype).to(device).contiguous(memory_format=torch.channels_last)
    with count_launches() as launches:
        dx, dw = torch.autograd.grad(ours(x, w, b), (x, w), dy)
    assert launches.counts["_conv_pointwise_gemm_kernel"] == 2, launches.counts
    x64, w64, b64 = (t.detach().cpu().double().requires_grad_(True) for t in (x, w, b))
    dx64, dw64 = torch.autograd.grad(reference(x64, w64, b64), (x64, w64), dy.cpu().double())
    assert_close(dx, dx64, dtype, "conv", "input gradient", tf32=tf32)
    assert_close(dw, dw64, dtype, "conv", "weight gradient", tf32=tf32)
    if dtype == torch.float32:
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        with count_launches() as launches:
            torch.autograd.grad(ours(x, w, b), (x, w), dy)
        assert not any("pointwise" in name for name in launches.counts), launches.counts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pointwise_descriptor_nchw_small_images(dtype, device, monkeypatch, launch_log):
    """What a GPU does with an NCHW 1x1 convolution of images under PLANAR_MIN_PIXELS:
    one channels_last copy of each operand (``_copied_to_channels_last``, made to copy here as
    on a GPU), the descriptor GEMMs, and the outputs (y, dx) written back into NCHW
    in place along the pixels (PIXEL_VEC > 1). Against float64."""
    from kernels.conv import ops
    monkeypatch.setattr(ops, "_copied_to_channels_last", lambda t, copy_operands: True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    x, w, b = _inputs(2, 64, 4, 8, 48, (1, 1), 2, dtype, device)       # 32 pixels < PLANAR_MIN_PIXELS
    ours, reference = _conv_fns(1, 0, 1, 2, "relu")
    out, _ = check_op(ours, reference, [x, w, b], "conv", tf32=dtype == torch.float32)
    assert out.is_contiguous()
    seen = {}
    for launch in launch_log:
        seen.setdefault(launch.name, []).append(launch.args.get("PIXEL_VEC"))
    vec = 16 // x.element_size()
    assert seen["_conv_pointwise_gemm_kernel"] == [vec, vec], seen     # forward, input gradient
    assert "_conv_pointwise_wgrad_kernel" in seen, seen


def test_gemm_operands_copied_to_channels_last_on_a_gpu():
    """On a GPU an implicit-GEMM operand that is not channels_last is read through a
    channels_last copy, unless copies are off: inside ``read_in_place`` (the
    benchmark's alternative), which restores them on leaving (Operands of CUDA
    tensors: no GPU needed)."""
    from kernels.conv import ops
    shape, gpu = (2, 16, 5, 7), torch.device("cuda", 0)
    nchw = ops.Operand(shape, (560, 35, 7, 1), torch.float16, gpu, True)
    channels_last = ops.Operand(shape, (560, 1, 112, 16), torch.float16, gpu, True)
    assert nchw.channels_last() == channels_last
    assert ops._gemm_read(nchw, True) == channels_last
    assert ops._gemm_read(channels_last, True) is channels_last
    assert ops._gemm_read(nchw, False) is nchw
    assert ops.Switches(*ops.Switches.now()).copy_operands
    with ops.read_in_place():
        assert not ops.Switches(*ops.Switches.now()).copy_operands
    assert ops.Switches(*ops.Switches.now()).copy_operands
    cpu = ops.Operand.of(torch.empty(shape))
    assert ops._gemm_read(cpu, True) is cpu            # the interpreter reads every layout in place


def test_operand_layouts_match_torch():
    """The layouts plans compute for tensors a launch allocates or copies are the
    ones torch gives, on 3000 random 4-D views (permuted, sliced, expanded, size-1
    and size-0 dims): ``empty_like`` (a dense tensor's own strides, size-1 dims'
    too; else dense ones in its stride order), channels_last copies and tests."""
    from kernels.conv import ops
    gen = torch.Generator().manual_seed(0)

    def randint(low, high):
        return int(torch.randint(low, high, (), generator=gen))
    for _ in range(3000):
        shape = [randint(0, 4) if randint(0, 12) == 0 else randint(1, 5) for _ in range(4)]
        steps = [randint(1, 3) for _ in range(4)]
        t = torch.empty([n * s for n, s in zip(shape, steps)])[tuple(slice(None, None, s) for s in steps)]
        t = t.permute(*torch.randperm(4, generator=gen).tolist())
        dim = randint(0, 4)
        if randint(0, 4) == 0 and t.shape[dim]:
            t = t.narrow(dim, 0, 1).expand(*t.shape[:dim], 3, *t.shape[dim + 1:])
        op = ops.Operand.of(t)
        assert op.empty_like().strides == torch.empty_like(t).stride(), (t.shape, t.stride())
        assert op.is_channels_last() == t.is_contiguous(memory_format=torch.channels_last), (t.shape, t.stride())
        if not op.is_channels_last():
            assert op.channels_last().strides == t.contiguous(memory_format=torch.channels_last).stride()


def test_input_gradient_of_strided_inputs(device):
    """dx in ``torch.empty_like(x)``'s layout for inputs whose stride order is not
    a memory format's (a transposed slice, an expanded batch, a permuted slice):
    the input gradient's launch plan writes through the strides torch gives dx.
    Against float64, on the implicit-GEMM and direct paths."""
    base = torch.randn(2, 16, 7, 6)
    views = [base.transpose(2, 3)[:, :, 1:], torch.randn(1, 5, 5, 16).permute(0, 3, 1, 2).expand(3, 16, 5, 5),
             torch.randn(4, 2, 16, 10)[..., ::2].permute(1, 2, 0, 3), torch.randn(4, 2, 3, 10)[..., ::2].permute(1, 2, 0, 3)]
    for x in views:
        x = x.to(device).requires_grad_(True)
        w = (torch.randn(16, x.shape[1], 3, 3) / 12).to(device).requires_grad_(True)
        check_op(lambda x, w: F.conv2d(x, w, None, 1, 1), lambda x, w: TF.conv2d(x, w, None, 1, 1), [x, w], "conv")


def test_descriptor_allocator_set_where_unset():
    """On a GPU the descriptor GEMM's descriptors live in memory from triton's
    allocator, a context variable that every new thread (autograd's workers) starts
    without: the launcher sets ours where none is set, and keeps one a user set."""
    import contextvars
    from triton.runtime import _allocation
    from kernels.conv import ops

    def user_allocator(size, alignment, stream):
        raise AssertionError("not called here")

    def in_a_new_thread():
        assert isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
        ops._use_descriptor_allocator(torch.device("cpu"))          # the interpreter needs none
        assert isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
        ops._use_descriptor_allocator(torch.device("cuda", 0))
        assert _allocation._allocator.get() is ops._descriptor_scratch
        triton.set_allocator(user_allocator)
        ops._use_descriptor_allocator(torch.device("cuda", 0))
        assert _allocation._allocator.get() is user_allocator
    contextvars.Context().run(in_a_new_thread)


_PRUNE_CHECK = """
import json
import torch
from kernels._runtime import _capability, _serves
from kernels.conv import _gemm as g
capability = _capability(torch.cuda.current_device()) if torch.cuda.is_available() else None
pairs = [(g.conv_fwd_gemm.half, g.FWD_CONFIGS, g.UNALIGNED_CONFIGS),
         (g.conv_dgrad_gemm.fp32, g.FP32_CONFIGS, g.FP32_UNALIGNED_CONFIGS),
         (g.conv_wgrad_gemm.half, g.WGRAD_CONFIGS, g.UNALIGNED_CONFIGS)]
result = []
for tuned, aligned, unaligned in pairs:
    tuned.nargs = {}
    result.append([tuned.prune_configs({"VEC": vec}) == [c for c in configs if _serves(c, capability)]
                   for vec, configs in ((1, unaligned), (8, aligned))])
print(json.dumps(result))
"""


def test_unaligned_channels_tune_over_their_own_tiles():
    """On a GPU (no interpreter), GEMM launches with VEC = 1 (channel rows not
    16-byte aligned) tune over the small tiles that compile without spills, the
    others over the full lists (those configs that serve this GPU, when there is
    one): checked in a subprocess without TRITON_INTERPRET, tuning on."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["NNLIB_AUTOTUNE"] = "1"
    proc = subprocess.run([sys.executable, "-c", _PRUNE_CHECK], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [[True, True]] * 3


# Tiny geometries of the three paths (same fields as GEOMETRIES).
SMALL = [("gemm", 1, 16, 5, 6, 16, (3, 3), 1, 1, 1, 1, (G, G, G)),
         ("flat", 1, 3, 7, 6, 16, (3, 3), 2, 1, 1, 1, (FL, D, FL)),
         ("depthwise", 1, 4, 6, 5, 4, (3, 3), 1, 1, 1, 4, (DW, DW, DW)),
         ("direct", 1, 4, 6, 5, 8, (3, 3), 1, 1, 1, 4, (D, D, D))]


@pytest.mark.parametrize("geometry,activation", [(SMALL[0], None), (SMALL[1], "relu"), (SMALL[2], None),
                                                 (SMALL[3], "relu")], ids=[g[0] for g in SMALL])
def test_split_reductions(geometry, activation, device, monkeypatch):
    """Every reduction split three ways (the GPU splits small grids; the interpreter
    only when forced): forward and input gradient over k-steps, weight and bias
    gradients over pixels (some splits empty), each summed in the kernel by the
    tile's last program in a fixed order (deterministic by construction: the
    interpreter runs programs in order, so a run-to-run check could not fail)."""
    from kernels.conv import ops
    monkeypatch.setattr(ops, "_splits", lambda *args: 3)
    _, N, C, H, W, K, kernel, stride, padding, dilation, groups, paths = geometry
    assert tuple(conv_paths(C, K, groups, kernel).values()) == paths
    x, w, b = _inputs(N, C, H, W, K, kernel, groups, torch.float32, device)
    ours, reference = _conv_fns(stride, padding, dilation, groups, activation)
    check_op(ours, reference, [x, w, b], "conv")


@pytest.mark.parametrize("geometry", [("depthwise", 4, 4, 4, (DW, DW, DW)), ("direct", 4, 8, 4, (D, D, D))],
                         ids=["depthwise", "direct"])
def test_split_sums_in_chunks(geometry, device, monkeypatch, launch_log):
    """The direct kernels' split reductions (weight gradient, bias and activation
    gradient) summed by their last programs CHUNK splits per load (``sum_splits``):
    11 splits, 4 a load, so three rounds, the last one part masked. The weight
    gradients' splits each hold pixels (11 images: the depthwise patch kernel's 11
    steps of an image, ``DEPTHWISE_ROWS`` False keeping it off the rows kernel;
    the direct one's 21 of 16 pixels); the epilogue's interpreter tile (512 pixels)
    holds every pixel in one step, so it takes one split (no split is planned
    without a step; its sum is the same ``sum_splits``). Against float64."""
    from kernels.conv import ops
    monkeypatch.setattr(ops, "_splits", lambda *args: 11)
    monkeypatch.setattr(ops, "split_chunk", lambda tile_elements: 4)
    monkeypatch.setattr(ops, "_direct_tiles", lambda channels, pixels, element_size: (16, 8))
    monkeypatch.setattr(ops, "DEPTHWISE_ROWS", False)
    _, C, K, groups, paths = geometry
    assert tuple(conv_paths(C, K, groups, (3, 3)).values()) == paths
    x, w, b = _inputs(11, C, 6, 5, K, (3, 3), groups, torch.float32, device)
    check_op(*_conv_fns(1, 1, 1, groups, "relu"), [x, w, b], "conv")
    chunked = {launch.name: (launch.grid[2], launch.args["CHUNK"]) for launch in launch_log if "CHUNK" in launch.args}
    assert chunked == {f"_conv_wgrad_{geometry[0]}_kernel": (11, 4), "_conv_bwd_epilogue_kernel": (1, 4)}, chunked


@pytest.mark.parametrize("N,C,H,W,stride,padding,layout,splits", [
    (2, 16, 6, 20, 1, 1, "contiguous", 1), (2, 16, 4, 5, 1, 0, "contiguous", 1), (3, 16, 5, 5, 1, 0, "contiguous", 1),
    (2, 3, 7, 5, 1, 1, "contiguous", 4), (2, 3, 5, 40, 2, 1, "in-place", 3),
    (2, 4, 9, 40, 2, 1, "channels_last", 1), (3, 3, 4, 16, 1, 1, "in-place", 4)],
    ids=["q-wraps", "p-wraps", "n-steps", "flat-rows", "flat-row-blocks", "flat-row-blocks-padded", "flat-split"])
def test_weight_grad_pixel_walk(N, C, H, W, stride, padding, layout, splits, device, monkeypatch, launch_log):
    """The weight-gradient GEMM walks N*P*Q pixels BLOCK_K at a time, advancing
    (n, p, q) by carries: with 16-pixel steps, steps shorter than a row, longer
    than a row and longer than an image (3x3 taps, output rows of 20, 3 and 5).
    The FLAT walk (3 channels read in place, or 4 channels_last ones as padded) steps by whole
    rows: 3 rows of 5 pixels (7 rows: the last step holds one), rows of 20 (stride
    2) in blocks of 16 and 4, rows of exactly 16; split into ranges that start
    inside rows and images."""
    from kernels.conv import _gemm, ops
    for tuned in (*_gemm.conv_wgrad_gemm, *_gemm.conv_wgrad_flat):
        configs = [triton.Config({**tuned.configs[0].kwargs, "BLOCK_K": 16}, num_warps=4)]
        monkeypatch.setattr(tuned, "configs", configs)
        monkeypatch.setattr(tuned, "nnlib_configs_for", lambda constexprs, capability=None, configs=configs: configs)
    monkeypatch.setattr(ops, "_splits", lambda *args: splits)
    x = make_input((N, C, H, W), torch.float32, device, "channels_last" if layout == "in-place" else layout)
    w = (torch.randn(16, C, 3, 3) / 12).to(device).requires_grad_(True)
    with ops.read_in_place() if layout == "in-place" else contextlib.nullcontext():
        y = F.conv2d(x, w, None, stride, padding)
        g = torch.randn_like(y)
        (dw,) = torch.autograd.grad(y, (w,), g)
    launched_splits = [(launch.grid(launch.kernel.configs[0].kwargs) if callable(launch.grid) else launch.grid)[2]
                       for launch in launch_log if launch.name == "_conv_wgrad_gemm_kernel"]
    assert launched_splits == [splits], launched_splits
    wr = w.detach().double().cpu().requires_grad_(True)
    (dwr,) = torch.autograd.grad(TF.conv2d(x.double().cpu(), wr, None, stride, padding), (wr,), g.double().cpu())
    assert_close(dw, dwr, torch.float32, "conv")


FLOP_CASES = [g for g in GEOMETRIES if g[0] in ("groups2-dilation13-stride2", "rgb-stem-5x5", "depthwise-stride2",
                                                  "same-dilation2")]


@pytest.mark.parametrize("input_grad", [True, False], ids=["input-grad", "no-input-grad"])
@pytest.mark.parametrize("geometry", FLOP_CASES, ids=[g[0] for g in FLOP_CASES])
def test_flop_counter_counts_as_torch(geometry, input_grad, device):
    """torch.utils.flop_counter.FlopCounterMode sees our convolutions (a dispatch
    mode: the calls go through the dispatcher) and counts each pass as torch's
    convolution and convolution_backward (grouped weight gradients included, as
    torch counts them); no input gradient, no input-gradient FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode
    _, N, C, H, W, K, kernel, stride, padding, dilation, groups, _ = geometry
    x, w, b = _inputs(N, C, H, W, K, kernel, groups, torch.float32, device)
    x.requires_grad_(input_grad)
    counts = []
    for fn in _conv_fns(stride, padding, dilation, groups, "relu"):
        with FlopCounterMode(display=False) as counter:
            y = fn(x, w, b)
            y.backward(torch.ones_like(y))
        counts.append({str(op): n for op, n in counter.get_flop_counts()["Global"].items()})
    ours, theirs = counts
    assert ours["nnlib.conv2d"] == theirs["aten.convolution"] > 0
    assert ours.get("nnlib.conv2d_input_grad", 0) + ours["nnlib.conv2d_weight_grad"] == \
        theirs["aten.convolution_backward"]
    assert ("nnlib.conv2d_input_grad" in ours) == input_grad


@pytest.mark.parametrize("geometry", [SMALL[0], SMALL[2], SMALL[3]], ids=["gemm", "depthwise", "direct"])
def test_launch_budget(geometry, device):
    """conv2d with bias and relu on a channels_last input and weight (as
    ``model.to(memory_format=torch.channels_last)`` leaves them): the forward is one
    launch, the backward (input, weight and bias gradients) three (activation and
    bias gradient, input gradient, weight gradient: the split reductions finish in
    the kernels), and around them torch only allocates: no copy, no zero fill, no
    partial sum, no cast."""
    from kernels._reduce import tickets
    _, N, C, H, W, K, kernel, stride, padding, dilation, groups, _ = geometry
    x, w, b = _inputs(N, C, H, W, K, kernel, groups, torch.float32, device, "channels_last")
    w = w.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    tickets(torch.device(device), 1)              # the ticket buffer, zero-filled once per process
    with count_launches() as launches, device_ops() as ops:
        y = F.conv2d(x, w, b, stride, padding, dilation, groups, activation="relu")
    assert launches.total == 1 and not ops, (launches, ops)
    g = torch.randn_like(y)
    with count_launches() as launches, device_ops() as ops:
        torch.autograd.grad(y, (x, w, b), g)
    assert launches.total == 3 and not ops, (launches, ops)


def test_split_count():
    """The split policy: splits only a grid smaller than wanted, keeps min_steps
    k-steps per split, obeys the cap."""
    from kernels.conv.ops import split_count
    assert split_count(264, 52, 72, 8) == 6          # 7x7 layer: 52 tiles -> 312 programs
    assert split_count(264, 300, 72, 8) == 1         # a full grid is not split
    assert split_count(264, 52, 20, 8) == 2          # short reductions split less
    assert split_count(264, 52, 72, 8, cap=3) == 3
    assert split_count(264, 52, 72, 8, cap=0) == 1


def test_direct_splits_fill_an_h100(monkeypatch):
    """The direct kernels' pixel reductions on a 132-SM GPU: the patch kernel's plan of
    a MobileNet depthwise weight gradient (32x144x56x56, bf16 channels_last; that
    layer now runs the rows kernel: ``test_depthwise_row_tiles``)
    tiles 16 channels by 4x8 pixels, 9 channel tiles of 3136 steps split 117 ways
    (27 steps each, none empty: 1053 programs of 4 warps, about 8 an SM, where the
    GEMMs' two an SM made 264), summed 8 splits a load; the bias / activation
    gradient of a 32x256x56x56 layer alike (131 ways); a large tile's
    splits stop at sqrt(steps * CHUNK) (4096 steps of a 2048-element tile: 64
    ways, not the 512 that 8 steps a split would allow)."""
    from kernels.conv import ops
    monkeypatch.setattr(ops, "_sm_count", lambda index: 132)
    gpu = torch.device("cuda", 0)
    assert ops._depthwise_tiles(56, 56, 144, True, 3, 2, 16, interpreter=False) == (4, 8, 16)
    assert ops._direct_splits(gpu, 9, 3136, 16 * 16) == (117, 8)
    assert ops._direct_splits(gpu, 8, 3136, 32) == (131, 64)
    assert ops._direct_splits(gpu, 2, 4096, 2048) == (64, 1)
    assert ops._direct_splits(torch.device("cpu"), 9, 3136, 256) == (1, 8)


def test_launch_plans_follow_what_they_decide_from(device, monkeypatch, launch_log):
    """A launch plan serves only calls that repeat what it was decided from: the
    same shapes and strides on a pointer of the same 16-byte alignment (VEC 4 on
    an aligned fp32 channels_last x, 1 on one shifted by an element), and the
    same switches (cudnn.allow_tf32 for fp32). Each pass's launch flags, call
    after call (the input gradient does not read x: VEC 4 throughout), against
    float64."""
    shape = (2, 16, 5, 6)
    storage = torch.randn(2 * 16 * 5 * 6 + 1, device=device)
    aligned = storage[:-1].view(2, 5, 6, 16).permute(0, 3, 1, 2)
    shifted = storage[1:].view(2, 5, 6, 16).permute(0, 3, 1, 2)
    assert aligned.shape == shifted.shape == shape and aligned.stride() == shifted.stride()
    w = (torch.randn(16, 16, 3, 3, device=device) / 12).contiguous(memory_format=torch.channels_last)
    passes = ["_conv_fwd_gemm_kernel", "_conv_dgrad_gemm_kernel", "_conv_wgrad_gemm_kernel"]
    for x, vecs, tf32 in [(aligned, (4, 4, 4), False), (shifted, (1, 4, 1), False), (aligned, (4, 4, 4), False),
                          (aligned, (4, 4, 4), True)]:
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
        launch_log.clear()
        x = x.detach().requires_grad_(True)
        w.requires_grad_(True)
        y = F.conv2d(x, w, None, 1, 1)
        dy = torch.randn_like(y)
        dx, dw = torch.autograd.grad(y, (x, w), dy)
        seen = [(launch.name, launch.args["VEC"], launch.args["ALLOW_TF32"]) for launch in launch_log
                if "VEC" in launch.args]
        assert seen == [(name, vec, tf32) for name, vec in zip(passes, vecs)], seen
        x64, w64 = (t.detach().double().cpu().requires_grad_(True) for t in (x, w))
        y64 = TF.conv2d(x64, w64, None, 1, 1)
        dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double().cpu())
        for ours, ref, what in ((y, y64, "output"), (dx, dx64, "input gradient"), (dw, dw64, "weight gradient")):
            assert_close(ours, ref, torch.float32, "conv", what, tf32=tf32)


def test_autotuned_launches_go_straight_to_the_chosen_config(device, launch_log):
    """A plan's autotuned GEMM goes through Triton's autotuner until a launch of it
    has run (a dry run chooses nothing), then straight to the kernel with the
    config the autotuner chose (``bind_config``); every call right against float64."""
    from kernels.conv import ops
    from kernels._runtime import dry_run
    x = make_input((2, 16, 5, 6), torch.float32, device, "channels_last")
    w = (torch.randn(16, 16, 3, 3, device=device) / 12).contiguous(memory_format=torch.channels_last)
    with dry_run():
        F.conv2d(x, w, None, 1, 1)
    for _ in range(3):
        assert_close(F.conv2d(x, w, None, 1, 1), TF.conv2d(x.double().cpu(), w.double().cpu(), None, 1, 1),
                     torch.float32, "conv", "output")
    tuned = ops._for_dtype(ops.conv_fwd_gemm, torch.float32)
    chosen = tuned.best_config.kwargs["BLOCK_M"]
    seen = [(isinstance(launch.kernel, triton.runtime.Autotuner), launch.args.get("BLOCK_M")) for launch in launch_log
            if launch.name == "_conv_fwd_gemm_kernel"]
    assert seen == [(True, None), (True, None), (False, chosen), (False, chosen)], seen


def test_direct_input_gradient_accuracy(device):
    """The direct path's fp32 input gradient over a long reduction (512 output
    channels x 9 taps, 4 input channels) sums each tap's channels, then the taps:
    within 3x torch's error against float64 (summed in one row it was 5.8x)."""
    assert conv_paths(4, 512, 1, (3, 3))["input_grad"] == "direct"
    torch.manual_seed(0)
    x = torch.randn(1, 4, 10, 10, device=device, requires_grad=True)
    w, dy = torch.randn(512, 4, 3, 3, device=device) / 6, torch.randn(1, 512, 10, 10, device=device)
    exact = torch.nn.grad.conv2d_input(x.shape, w.double().cpu(), dy.double().cpu(), padding=1)

    def error(functional):
        with torch.backends.cudnn.flags(allow_tf32=False):
            grad, = torch.autograd.grad(functional.conv2d(x, w, padding=1), x, dy)
        return ((grad.double().cpu() - exact).abs().max() / exact.abs().max()).item()
    assert error(F) <= 3 * error(TF)


@pytest.mark.parametrize("allow_tf32", [True, False])
def test_tf32_policy(allow_tf32, device, monkeypatch, launch_log):
    """Every GEMM launch of an fp32 conv (forward and both gradients) follows
    cudnn.allow_tf32; fp16 always uses tensor cores. Values within tf32's
    tolerance when allowed (a GPU's tensor cores), fp32's when not."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow_tf32)
    _, N, C, H, W, K, kernel, stride, padding, dilation, groups, _ = GEOMETRIES[0]
    x, w, b = _inputs(N, C, H, W, K, kernel, groups, torch.float32, device)
    y = F.conv2d(x, w, b, stride, padding)
    y.backward(torch.randn_like(y))
    flags = [launch.args.get("ALLOW_TF32") for launch in launch_log]
    gemm_flags = [f for f in flags if f is not None]
    assert len(gemm_flags) == 3 and all(f is allow_tf32 for f in gemm_flags), flags
    ref = TF.conv2d(x.detach().double().cpu(), w.detach().double().cpu(), b.detach().double().cpu(), stride, padding)
    assert_close(y, ref, torch.float32, "conv", tf32=allow_tf32)
    launch_log.clear()
    F.conv2d(x.half(), w.half(), b.half(), stride, padding)
    flags = [launch.args.get("ALLOW_TF32") for launch in launch_log]
    gemm_flags = [f for f in flags if f is not None]
    assert gemm_flags and all(f is True for f in gemm_flags), flags


def test_float64_takes_torch_path(device):
    x = torch.randn(2, 5, 7, 7, dtype=torch.float64, device=device)
    w = torch.randn(4, 5, 3, 3, dtype=torch.float64, device=device)
    with count_launches() as launches:
        y = F.conv2d(x, w, None, 1, 1, activation="relu")
    assert launches.total == 0
    torch.testing.assert_close(y, TF.relu(TF.conv2d(x, w, None, 1, 1)))


# ---------------------------------------------------------------------------
# nnlib.Conv2d

@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_module_padding_modes(padding_mode, device):
    """Same weights as torch.nn.Conv2d, every padding mode, 'same' padding with an
    even kernel in one case; outputs and all three gradients; ``_conv_forward`` (what
    subclasses and parametrizations call) with another weight and no bias."""
    torch.manual_seed(0)
    even = padding_mode == "circular"
    kwargs = dict(kernel_size=(2, 3) if even else 3, padding="same" if even else (2, 1),
                  groups=1 if padding_mode != "replicate" else 2, dilation=(2, 1) if even else 1)
    channels = (4, 6) if padding_mode in ("zeros", "reflect") else (18, 20)
    ours = nnlib.Conv2d(*channels, padding_mode=padding_mode, **kwargs).to(device)
    ref = torch.nn.Conv2d(*channels, padding_mode=padding_mode, **kwargs).double()
    ref.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x = torch.randn(2, channels[0], 7, 6, device=device, requires_grad=True)
    xr = x.detach().double().cpu().requires_grad_(True)
    with count_launches() as launches:
        y = ours(x)
    assert launches.total > 0
    yr = ref(xr)
    torch.testing.assert_close(y.double().cpu(), yr, atol=1e-4, rtol=1e-4)
    other = torch.randn_like(ours.weight)
    with torch.no_grad(), count_launches() as launches:
        y_other = ours._conv_forward(x, other, None)
    assert launches.total > 0
    torch.testing.assert_close(y_other.double().cpu(), ref._conv_forward(xr, other.double().cpu(), None).detach(),
                               atol=1e-4, rtol=1e-4)
    g = torch.randn_like(yr)
    y.backward(g.float().to(device))
    yr.backward(g)
    torch.testing.assert_close(x.grad.double().cpu(), xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.weight.grad.double().cpu(), ref.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.bias.grad.double().cpu(), ref.bias.grad, atol=1e-4, rtol=1e-4)


def test_module_is_a_torch_conv2d_with_fused_activation(device):
    torch.manual_seed(0)
    conv = nnlib.Conv2d(3, 16, 3, padding=1, bias=False, activation="leaky_relu", negative_slope=0.2).to(device)
    assert isinstance(conv, torch.nn.Conv2d)
    assert set(conv.state_dict()) == {"weight"}
    assert "activation='leaky_relu'" in repr(conv) and "negative_slope=0.2" in repr(conv)
    x = torch.randn(2, 3, 5, 6, device=device)
    torch.testing.assert_close(conv(x), TF.leaky_relu(TF.conv2d(x, conv.weight, None, 1, 1), 0.2),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        nnlib.Conv2d(3, 16, 3, activation="gelu")
    with pytest.raises(ValueError):
        nnlib.Conv2d(3, 16, 3, padding_mode="mirror")


# ---------------------------------------------------------------------------
# Bad input: torch's exception class, before anything runs

def _bad_cases():
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(6, 4, 3, 3)
    return {
        "channel-mismatch": ((x, torch.randn(6, 3, 3, 3)), {}),
        "groups-not-dividing-C": ((torch.randn(2, 5, 8, 8), torch.randn(6, 2, 3, 3)), {"groups": 2}),
        "groups-not-dividing-K": ((x, torch.randn(5, 2, 3, 3)), {"groups": 2}),
        "groups-zero": ((x, w), {"groups": 0}),
        "weight-rank-3": ((x, torch.randn(6, 4, 3)), {}),
        "weight-rank-3-same": ((x, torch.randn(6, 4, 3)), {"padding": "same"}),
        "weight-rank-2-same": ((x, torch.randn(6, 4)), {"padding": "same"}),
        "input-rank-2": ((torch.randn(4, 8), w), {}),
        "input-rank-5": ((torch.randn(1, 2, 4, 8, 8), w), {}),
        "stride-zero": ((x, w), {"stride": 0}),
        "stride-negative": ((x, w), {"stride": (1, -1)}),
        "stride-three-values": ((x, w), {"stride": (1, 1, 1)}),
        "stride-float": ((x, w), {"stride": 1.5}),
        "padding-negative": ((x, w), {"padding": -1}),
        "padding-bad-string": ((x, w), {"padding": "full"}),
        "padding-same-strided": ((x, w), {"padding": "same", "stride": 2}),
        "dilation-zero": ((x, w), {"dilation": 0}),
        "input-smaller-than-kernel": ((torch.randn(2, 4, 2, 2), w), {}),
        "dilated-kernel-too-large": ((x, w), {"dilation": 4}),
        "kernel-taller-than-input": ((torch.randn(2, 4, 2, 8), w), {}),
        "kernel-wider-than-input": ((torch.randn(2, 4, 8, 2), w), {}),
        "zero-height": ((torch.randn(2, 4, 0, 8), w), {"padding": 2}),
        "mixed-dtypes": ((x, w.half()), {}),
        "mixed-bias-dtype": ((x, w, torch.randn(6).half()), {}),
        "bias-shape": ((x, w, torch.randn(5)), {}),
        "bias-2d": ((x, w, torch.randn(6, 1)), {}),
        "no-output-channels": ((x, torch.randn(0, 4, 3, 3)), {}),
        "kernel-height-zero": ((x, torch.randn(6, 4, 0, 3)), {"padding": "same"}),
        "kernel-width-zero-unbatched": ((x[0], torch.randn(6, 4, 3, 0)), {}),
        "kernel-zero-empty-batch": ((x[:0], torch.randn(6, 4, 0, 3)), {}),     # torch: IndexError
        # 'same' pads a kernel of size 0 by (dilation * -1) / 2 rounded toward zero: negative from dilation 2
        "kernel-zero-same-dilated-no-channels": ((x[:, :0], torch.randn(6, 0, 0, 3)), {"padding": "same",
                                                                                     "dilation": 2}),
        "input-not-tensor": ((3.0, w), {}),
        # torch's parser checks argument types before shapes
        "stride-float-with-bad-rank": ((torch.randn(1, 1, 3, 6, 6), w), {"stride": 1.5}),
        "dilation-none-with-bad-weight": ((x, torch.randn(6, 4, 3)), {"dilation": None}),
        "groups-none-with-bad-stride": ((x, w), {"stride": (1, 1, 1), "groups": None}),
        "padding-float-with-zero-stride": ((x, w), {"stride": 0, "padding": 1.5}),
        "padding-bool-first": ((x, w), {"padding": (False, 1)}),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_like_torch(name, device):
    args, kwargs = BAD[name]
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    with pytest.raises(Exception) as expected:
        TF.conv2d(*args, **kwargs)
    with count_launches() as launches, pytest.raises(expected.type):
        F.conv2d(*args, **kwargs)
    assert launches.total == 0


def test_sparse_parameters_are_refused_by_name(device):
    """A sparse weight or bias of a dense input: torch's RuntimeError, naming the
    argument, after a dense call of the same shapes too (whose checks' result is
    kept for its call signature: a sparse tensor's layout is read at every call);
    prelu's sparse slopes alike."""
    x, w, b = torch.randn(2, 4, 8, 8, device=device), torch.randn(6, 4, 3, 3, device=device), torch.randn(6)
    F.conv2d(x, w, b.to(device))
    for args, name in (((x, w.to_sparse(), b.to(device)), "weight"), ((x, w, b.to(device).to_sparse()), "bias")):
        with pytest.raises(RuntimeError):
            TF.conv2d(*args)
        with count_launches() as launches, pytest.raises(RuntimeError, match=f"{name} type"):
            F.conv2d(*args)
        assert launches.total == 0
    slopes = torch.rand(4, device=device)
    F.prelu(x, slopes)
    with pytest.raises(RuntimeError, match="'weight'"):
        F.prelu(x, slopes.to_sparse())


@pytest.mark.parametrize("i", [0, 13, 14], ids=["gemm", "depthwise", "direct"])
def test_strided_bias(i, device):
    """A sliced or expanded bias is read through its strides (one small copy)."""
    _, N, C, H, W, K, kernel, stride, padding, dilation, groups, _ = GEOMETRIES[i]
    x, w, _ = _inputs(N, C, H, W, K, kernel, groups, torch.float32, device, bias=False)
    ours, reference = _conv_fns(stride, padding, dilation, groups)
    sliced = torch.randn(2 * K).to(device)[::2].requires_grad_()
    check_op(ours, reference, [x, w, sliced], "conv")
    expanded = torch.tensor(0.5, device=device).expand(K)
    check_op(ours, reference, [x, w, expanded], "conv")


# 1x1, stride 1, unpadded, on tensors whose pixels sit at stride 1 (at least
# ops.PLANAR_MIN_PIXELS = 128 per image): the planar kernels.
PLANAR = [("groups2-fp32", 3, 34, 9, 15, 48, 2, torch.float32, "contiguous", "relu"),
          ("channel-slice-fp32", 2, 19, 12, 11, 17, 1, torch.float32, "channel-slice", None),
          ("aligned-fp16", 2, 32, 16, 8, 24, 1, torch.float16, "contiguous", "leaky_relu"),
          ("odd-pixels-bf16", 1, 24, 13, 11, 16, 1, torch.bfloat16, "contiguous", None)]


@pytest.mark.parametrize("N,C,H,W,K,groups,dtype,layout,activation", [p[1:] for p in PLANAR],
                         ids=[p[0] for p in PLANAR])
def test_planar_pointwise(N, C, H, W, K, groups, dtype, layout, activation, device):
    """1x1 stride-1 convolutions of NCHW tensors (and channel slices of them) run on
    the planar GEMMs, which read and write each image's (channels, pixels) matrix in
    place (no channels_last copy on a GPU): forward with bias and activation, input
    and weight gradients, against float64."""
    if layout == "channel-slice":     # channels 2 .. C+1 of a larger NCHW tensor: pixels still at stride 1
        x = make_input((N, C + 3, H, W), dtype, device)[:, 2:C + 2].detach().requires_grad_(True)
    else:
        x = make_input((N, C, H, W), dtype, device, layout, requires_grad=True)
    w = (torch.randn(K, C // groups, 1, 1) / C ** 0.5).to(dtype).to(device).requires_grad_(True)
    b = torch.randn(K).to(dtype).to(device).requires_grad_(True)
    ours, reference = _conv_fns(1, 0, 1, groups, activation)
    with count_launches() as launches:
        check_op(ours, reference, [x, w, b], "conv")
    assert launches.counts["_conv_planar_gemm_kernel"] == 2 and launches.counts["_conv_planar_wgrad_kernel"] == 1, \
        launches.counts


def test_planar_split_weight_grad_and_double_backward(device, monkeypatch):
    """The planar weight gradient split three ways over its pixel blocks (summed in
    the kernel in split order; 3 images of 3 blocks, so splits cross images), and
    second derivatives through the planar passes; small images (fewer pixels than
    PLANAR_MIN_PIXELS) take the implicit GEMM."""
    from kernels.conv import ops
    x, w, b = _inputs(3, 40, 12, 11, 36, (1, 1), 2, torch.float32, device)
    ours, reference = _conv_fns(1, 0, 1, 2, "relu")
    with count_launches() as launches:
        check_double_backward(ours, reference, [x, w, b], "conv")
    assert launches.counts["_conv_planar_gemm_kernel"] and launches.counts["_conv_planar_wgrad_kernel"], \
        launches.counts
    monkeypatch.setattr(ops, "_splits", lambda *args: 3)
    clear_plan_caches()             # the plans above were built unsplit
    with count_launches() as launches:
        check_op(ours, reference, [x, w, b], "conv")
    assert launches.counts["_conv_planar_wgrad_kernel"] == 1, launches.counts
    small = _inputs(2, 16, 5, 7, 16, (1, 1), 1, torch.float32, device)
    with count_launches() as launches:
        check_op(*_conv_fns(1, 0, 1, 1), small, "conv")
    assert not any("planar" in name for name in launches.counts), launches.counts


# (id, H, W, stride, layout, PIXEL_VEC of the forward / input gradient / backward
# epilogue, per dtype size; "cuda": where a GPU differs: it writes a GEMM's output
# along scalar pixel runs through a channels_last buffer instead)
NCHW_OUTPUTS = [("aligned-runs", 8, 8, 1, "contiguous", {4: (4, 4, 4), 2: (8, 8, 8)}),
                ("odd-pixels", 5, 7, 1, "contiguous", {4: (1, 1, 1), 2: (1, 1, 1), "cuda": (0, 0, 1)}),
                ("stride2-phases", 8, 8, 2, "contiguous", {4: (4, 0, 4), 2: (8, 0, 8)}),
                ("channels-last", 8, 8, 1, "channels_last", {4: (0, 0, 0), 2: (0, 0, 0)})]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("H,W,stride,layout,pixel_vec", [c[1:] for c in NCHW_OUTPUTS], ids=[c[0] for c in NCHW_OUTPUTS])
def test_nchw_outputs_written_in_place(H, W, stride, layout, pixel_vec, dtype, device, monkeypatch, launch_log):
    """The implicit-GEMM forward and the stride-1 input gradient write NCHW outputs
    in place along their pixels (PIXEL_VEC > 0: on a GPU no channels_last buffer and
    copy where the runs are 16-byte aligned, PIXEL_VEC > 1); channels_last outputs
    and a strided input gradient (one program per stride phase) keep channel rows
    (PIXEL_VEC 0). The bias / activation gradient tiles NCHW along the pixels too.
    Against float64, with the reductions split three ways."""
    from kernels.conv import ops
    monkeypatch.setattr(ops, "_splits", lambda *args: 3)
    x, w, b = _inputs(2, 32, H, W, 24, (3, 3), 1, dtype, device, layout)
    out, _ = check_op(*_conv_fns(stride, 1, 1, 1, "relu"), [x, w, b], "conv")
    seen = {launch.name: launch.args["PIXEL_VEC"] for launch in launch_log if "PIXEL_VEC" in launch.args}
    expected = pixel_vec.get(torch.device(device).type, pixel_vec[torch.empty((), dtype=dtype).element_size()])
    assert tuple(seen[name] for name in ("_conv_fwd_gemm_kernel", "_conv_dgrad_gemm_kernel",
                                         "_conv_bwd_epilogue_kernel")) == expected, seen
    assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


# 3x3 depthwise convolutions (the rows kernels): N, C, H, W, stride, padding, dilation, layout.
ROWS_CASES = [(2, 12, 9, 11, 1, 1, 1, "channels_last"), (1, 9, 7, 12, (1, 2), 2, (1, 2), "channels_last"),
              (2, 5, 6, 5, 1, 3, 1, "channels_last"), (1, 7, 8, 6, 1, "same", (1, 3), "channels_last"),
              (2, 10, 7, 9, 1, 1, 1, "contiguous"), (2, 6, 11, 9, 2, 1, 1, "contiguous"),
              (1, 9, 8, 7, (2, 1), (2, 0), (1, 2), "channels_last"), (2, 9, 8, 10, 2, 0, 1, "channels_last"),
              (1, 12, 7, 8, 2, (2, 3), 1, "channels_last"), (1, 8, 13, 9, (3, 2), 1, 1, "contiguous"),
              (1, 8, 13, 9, 1, 2, (2, 1), "channels_last"), (1, 6, 14, 10, 1, 4, 4, "contiguous"),
              (1, 7, 15, 9, 2, 2, (3, 1), "channels_last"), (1, 7, 12, 11, 2, 2, 2, "contiguous"),
              (1, 6, 9, 7, 1, 0, (4, 1), "channels_last"), (1, 7, 10, 14, (2, 3), 1, (3, 2), "contiguous")]


@pytest.mark.parametrize("case", ROWS_CASES, ids=["pad1", "stride12-dilation12", "pad3", "same-dilation13", "nchw",
                                                  "nchw-stride2", "stride21-pad20-dilation12", "stride2-pad0",
                                                  "stride2-pad23", "nchw-stride32", "dilation21", "nchw-dilation4",
                                                  "stride2-dilation31", "nchw-stride2-dilation2",
                                                  "dilation41-one-row", "nchw-stride23-dilation32"])
@pytest.mark.parametrize("tiles", [None, (3, 4, 8)], ids=["interpreter-tiles", "chunks"])
def test_depthwise_rows(case, tiles, device, monkeypatch, launch_log):
    """The rows kernels (each input row loaded once, the output rows' sums rolling)
    for the forward with bias and leaky ReLU, the weight gradient (the dy rows
    rolling) and the input gradient: at stride 1 the forward's kernel turned by 180
    degrees (a padding past the kernel makes its padding negative), at other
    strides by units of stride rows and columns (with padding 0 the last row and
    column get no tap, nor do the unit rows and columns a dilation skips:
    zeros); row dilations by row sets (4 sets of 4 and 3 rows: the last chunk of
    the short ones is empty; stride 2 with dilation 3: three sets; with dilation
    2: one of stride 1; dilation 4 with one output row: one set, not four);
    channels_last and NCHW; with the interpreter's tiles (every row in one
    program, no split) and with a GPU's kind (chunks of 3 rows, tiles of 4
    columns by 8 channels, both partly outside the image and the channels; the
    last chunk shorter where the rows are not a multiple of 3; the weight
    gradient's strips split 5 ways, fewer where that would leave a split without
    a strip (3 or 5), summed 2 splits a load: the last round part masked). Values and gradients against float64."""
    from kernels.conv import ops
    if tiles is not None:
        monkeypatch.setattr(ops, "_depthwise_row_tiles", lambda *args: tiles)
        monkeypatch.setattr(ops, "_splits", lambda *args: 5)
        monkeypatch.setattr(ops, "split_chunk", lambda tile_elements: 2)
    N, C, H, W, stride, padding, dilation, layout = case
    x, w, b = _inputs(N, C, H, W, C, (3, 3), C, torch.float32, device, layout)
    y = _rows_check(x, w, b, stride, padding, dilation, "leaky_relu", torch.float32)
    assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    _assert_rows_kernels(launch_log, stride, dilation)
    _assert_chunked_splits(launch_log, tiles, N, y, stride, dilation)


def _assert_chunked_splits(launch_log, tiles, N, y, stride, dilation):
    """The rows weight gradient's split: none with the interpreter's tiles; with the
    GPU kind's chunks (3 rows of a row set by 4 columns) 5 splits, fewer where that
    would leave one without a strip, summed 2 a load."""
    (wgrad,) = [launch for launch in launch_log if launch.name == "_conv_wgrad_depthwise_rows_kernel"]
    if tiles is None:
        assert wgrad.grid[2] == 1
        return
    stride_h, dilation_h = torch.nn.modules.utils._pair(stride)[0], torch.nn.modules.utils._pair(dilation)[0]
    P, Q = y.shape[2], y.shape[3]
    row_step = max(1, min(dilation_h // math.gcd(stride_h, dilation_h), P))      # the row sets
    steps = N * row_step * -(-(-(-P // row_step)) // 3) * -(-Q // 4)
    assert (wgrad.grid[2], wgrad.args["CHUNK"]) == (-(-steps // -(-steps // 5)), 2)


# Depthwise kernels of other sizes (the input gradient at strides other than 1 by units where they fit, else the patch
# kernel): N, C, H, W, kernel, stride, padding, dilation, layout.
WIDE_ROWS_CASES = [(1, 8, 10, 9, (7, 7), 1, 3, 1, "channels_last"),
                   (1, 9, 8, 12, (5, 5), (1, 2), 2, (1, 2), "contiguous"),
                   (2, 6, 7, 6, (2, 4), 1, "same", 1, "channels_last"),
                   (1, 5, 6, 7, (1, 3), 1, (0, 4), (1, 2), "contiguous"),
                   (1, 7, 4, 12, (7, 5), 1, (2, 1), 1, "channels_last"),
                   (1, 9, 13, 11, (5, 5), 2, 2, 1, "channels_last"),
                   (1, 6, 12, 9, (7, 7), (2, 1), 3, (1, 2), "contiguous"),
                   (1, 7, 13, 10, (4, 3), 3, (1, 2), 1, "channels_last"),
                   (1, 5, 9, 8, (1, 3), (2, 1), (0, 1), 1, "contiguous"),
                   (1, 6, 10, 9, (2, 2), (3, 2), 0, 1, "channels_last"),
                   (1, 6, 9, 11, (5, 3), (1, 2), (2, 1), 1, "channels_last"),
                   (1, 5, 15, 13, (7, 7), 2, 3, 1, "contiguous"),
                   (1, 6, 17, 9, (5, 5), (2, 1), 4, (4, 1), "channels_last"),
                   (1, 5, 13, 8, (7, 3), 1, (6, 1), (2, 1), "contiguous"),
                   (1, 5, 20, 9, (7, 7), 2, 9, 3, "channels_last"),
                   (1, 6, 11, 10, (3, 3), (5, 4), 1, 1, "contiguous")]


@pytest.mark.parametrize("case", WIDE_ROWS_CASES, ids=["7x7", "5x5-stride12-dilation12-nchw", "2x4-same", "1x3-nchw",
                                                       "7x5-short-image", "5x5-stride2", "7x7-stride21-nchw",
                                                       "4x3-stride3", "1x3-stride21-nchw", "2x2-stride32-pad0",
                                                       "5x3-stride12", "7x7-stride2-nchw", "5x5-stride21-dilation41",
                                                       "7x3-dilation21-nchw", "7x7-stride2-dilation3",
                                                       "stride54-nchw"])
@pytest.mark.parametrize("tiles", [None, (3, 4, 8)], ids=["interpreter-tiles", "chunks"])
def test_depthwise_rows_wide(case, tiles, device, monkeypatch, launch_log):
    """The rows kernels for kernels other than 3x3 (R x S weights or sums in
    registers): the forward with bias and leaky ReLU and the weight gradient at
    row strides 1 to 3 (a step loads min(stride, R) input rows: below the kernel
    height they feed several output rows, above it some rows are never read), and
    the input gradient: at stride (1, 1) the kernel turned by 180 degrees
    (padding (R - 1) dil - pad, negative where the padding passes it), at other
    strides by units (dy rows kept for the unit rows below;
    strides past the kernel leave rows and columns no tap reaches; a row
    dilation of 4 at stride 2 keeps 9 dy rows), but for a dilation that would
    make them carry too many (a 7x7 of stride 2 and dilation 3: 10 rows of 10
    shifts) or a stride that makes a unit of more than 16 pixels (5x4), the
    patch kernel; row dilations by row sets (stride 2 with
    dilation 4: two sets of stride 1). With the interpreter's tiles and with
    chunks of 3 rows by 4 columns by 8 channels, the weight gradient split as in
    ``test_depthwise_rows``. Values and gradients against float64."""
    from kernels.conv import ops
    if tiles is not None:
        monkeypatch.setattr(ops, "_depthwise_row_tiles", lambda *args: tiles)
        monkeypatch.setattr(ops, "_splits", lambda *args: 5)
        monkeypatch.setattr(ops, "split_chunk", lambda tile_elements: 2)
    N, C, H, W, kernel, stride, padding, dilation, layout = case
    x, w, b = _inputs(N, C, H, W, C, kernel, C, torch.float32, device, layout)
    y = _rows_check(x, w, b, stride, padding, dilation, "leaky_relu", torch.float32)
    _assert_rows_kernels(launch_log, stride, dilation, kernel)
    _assert_chunked_splits(launch_log, tiles, N, y, stride, dilation)


def _assert_rows_kernels(launch_log, stride, dilation, kernel=(3, 3)):
    """The rows kernels ran the forward and the weight gradient, and the input
    gradient at stride 1 (the forward's kernel, flipped) or, at other strides, by
    units of stride rows and columns where those carry at most
    DEPTHWISE_UNITS_MAX_SHIFTS dy tiles, (dil_h (R - 1) // stride_h + 1) times
    (dil_w (S - 1) // stride_w + 1), and hold at most DEPTHWISE_UNITS_MAX_PIXELS
    dx pixels, stride_h stride_w; the patch kernel else."""
    from kernels.conv import ops
    names = [launch.name for launch in launch_log]
    pair = torch.nn.modules.utils._pair
    (stride_h, stride_w), (dil_h, dil_w), (R, S) = pair(stride), pair(dilation), kernel
    flipped = pair(stride) == (1, 1)
    shifts = (dil_h * (R - 1) // stride_h + 1) * (dil_w * (S - 1) // stride_w + 1)
    units = (not flipped and shifts <= ops.DEPTHWISE_UNITS_MAX_SHIFTS
             and stride_h * stride_w <= ops.DEPTHWISE_UNITS_MAX_PIXELS)
    assert names.count("_conv_depthwise_rows_kernel") == (2 if flipped else 1), names
    assert ("_conv_dgrad_depthwise_rows_kernel" in names, "_conv_dgrad_depthwise_kernel" in names) == (
        units, not (flipped or units)), names
    assert "_conv_wgrad_depthwise_rows_kernel" in names, names


def _rows_check(x, w, b, stride, padding, dilation, activation, dtype):
    """A depthwise conv2d's values and three gradients against float64 (the output
    gradient in y's layout, as a model's backward hands it over; a leaky ReLU's
    slope 0.2); returns y."""
    ours, reference = _conv_fns(stride, padding, dilation, x.shape[1], activation, 0.2)
    y = ours(x, w, b)
    x64, w64, b64 = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    y64 = reference(x64, w64, b64)
    assert_close(y, y64, dtype, "conv", "output")
    dy = torch.randn_like(y)
    for name, grad, grad64 in zip("xwb", torch.autograd.grad(y, (x, w, b), dy),
                                  torch.autograd.grad(y64, (x64, w64, b64), dy.double())):
        assert_close(grad, grad64, dtype, "conv", f"grad of {name}")
    return y


@pytest.mark.parametrize("layout,stride,dilation", [("channels_last", 1, 1), ("contiguous", 2, 1),
                                                   ("channels_last", 2, (1, 2))],
                         ids=["channels_last", "nchw-stride2", "stride2-dilation12"])
def test_depthwise_rows_half_and_int64(layout, stride, dilation, device, monkeypatch, launch_log):
    """The rows kernels in fp16 with int64 offsets inside an image (INDEX_64, which
    the host sets for images of 2**31 elements), chunked: forward, input gradient
    (by units at stride 2, with a column dilation too) and weight gradient."""
    from kernels.conv import ops
    monkeypatch.setattr(ops, "_image_needs_int64", lambda *args: True)
    monkeypatch.setattr(ops, "_depthwise_row_tiles", lambda *args: (4, 8, 16))
    x, w, b = _inputs(2, 24, 9, 10, 24, (3, 3), 24, torch.float16, device, layout)
    _rows_check(x, w, b, stride, 1, dilation, "relu", torch.float16)
    rows = [launch.args["INDEX_64"] for launch in launch_log if "depthwise_rows" in launch.name]
    assert rows == [True] * 3, [launch.name for launch in launch_log]


DEPTHWISE_GEOMETRIES = [i for i, g in enumerate(GEOMETRIES) if g[-1] == (DW, DW, DW)]


@pytest.mark.parametrize("i", DEPTHWISE_GEOMETRIES, ids=[GEOMETRIES[i][0] for i in DEPTHWISE_GEOMETRIES])
def test_depthwise_patch_kernels(i, device, monkeypatch, launch_log):
    """The depthwise patch kernels, which the rows kernels replace but for a
    strided input gradient past ``_units_fit`` (``DEPTHWISE_ROWS`` False: every
    pass, as bench.sweep times them), on the depthwise geometries, NCHW and
    channels_last: values and gradients against float64."""
    from kernels.conv import ops
    monkeypatch.setattr(ops, "DEPTHWISE_ROWS", False)
    _check(GEOMETRIES[i], torch.float32, device, LAYOUTS[i % 2], bias=True, activation="relu")
    names = {launch.name for launch in launch_log}
    assert {"_conv_fwd_depthwise_kernel", "_conv_dgrad_depthwise_kernel", "_conv_wgrad_depthwise_kernel"} <= names
    assert not any("rows" in name for name in names), names


def test_depthwise_row_tiles():
    """The rows kernel's tiles on a 132-SM GPU: MobileNet-v2's 144 channels at 56x56
    (batch 32) take 16 channels by 32 columns (9 channel tiles, none padded), in 4
    chunks of 14 rows: 2304 programs, about 16 an SM; a small batch keeps at least 8
    rows a chunk; the interpreter one chunk of every row. In NCHW the columns are
    the contiguous axis: 64 columns by 8 channels (7x7 images: 8 by 64). Kernels of
    more taps take fewer elements a thread. Its weight gradient splits the strips
    for about 8 programs an SM, none without a strip."""
    from kernels.conv import ops
    gpu = torch.device("cuda", 0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ops, "_sm_count", lambda index: 132)
        assert ops._depthwise_row_tiles(32, 56, 56, 144, gpu, interpreter=False) == (14, 32, 16)
        assert ops._depthwise_row_tiles(1, 56, 56, 32, gpu, interpreter=False) == (8, 16, 32)
        assert ops._depthwise_row_tiles(32, 7, 7, 960, gpu, interpreter=False) == (7, 8, 64)
        assert ops._depthwise_row_tiles(32, 56, 56, 144, gpu, False, interpreter=False) == (14, 64, 8)
        assert ops._depthwise_row_tiles(32, 7, 7, 960, gpu, False, interpreter=False) == (7, 8, 64)
        # a 7x7 (ConvNeXt-T's 192 channels at 28x28): one element a thread, 128 a tile; a 5x5: two, 256
        assert ops._depthwise_row_tiles(32, 28, 28, 192, gpu, True, 49, interpreter=False) == (14, 2, 64)
        assert ops._depthwise_row_tiles(32, 28, 28, 240, gpu, True, 25, interpreter=False) == (10, 4, 64)
        # the weight gradient's 9 channel tiles: 256 strips of 16 input rows, 3 a split (118 splits, about 8
        # programs an SM, would leave some empty): 86 splits, 774 programs, summed 8 a load
        assert ops._direct_splits(gpu, 9, 32 * 4 * 2, 16 * 16, 14 + 2) == (86, 8)
        assert ops._depthwise_row_tiles(0, 5, 5, 8, gpu, interpreter=False) == (5, 8, 8)    # an empty batch
    assert ops._depthwise_row_tiles(2, 9, 11, 20, torch.device("cpu"), interpreter=True) == (9, 16, 32)


def test_depthwise_int64_offsets(device, monkeypatch):
    """The depthwise kernels with int64 offsets inside an image (INDEX_64: the host
    sets it for images of 2**31 elements, too large to test), on strided views."""
    from kernels.conv import ops
    monkeypatch.setattr(ops, "_image_needs_int64", lambda *args: True)
    _check(GEOMETRIES[19], torch.float32, device, "transposed", bias=True, activation="relu")


@pytest.mark.parametrize("in_place", [False, True], ids=["padded", "in-place"])
def test_flat_weight_grad_int64_offsets(in_place, device, monkeypatch):
    """The FLAT weight gradient with int64 offsets inside an image of x (INDEX_64,
    as the depthwise kernels), on x's padded copy and on a transposed x read in
    place."""
    from kernels.conv import ops
    monkeypatch.setattr(ops, "_image_needs_int64", lambda *args: True)
    x, w, b = _inputs(2, 3, 13, 11, 32, (5, 5), 1, torch.float32, device, "transposed")
    with ops.read_in_place() if in_place else contextlib.nullcontext():
        check_op(*_conv_fns(2, 2, 1, 1, "relu"), [x, w, b], "conv")


@pytest.mark.parametrize("C,K,groups,strides", [
    (16, 16, 1, (2**30 + 8, 16, 4, 1)),     # GEMM passes: images 2**30 + 8 elements apart
    (16, 3, 1, (2**30 + 8, 16, 4, 1)),      # direct kernels
    (3, 3, 3, (3 * 2**30, 2**30 + 8, 4, 1)),  # depthwise: channels 2**30 + 8 apart inside one image
    (65, 16, 1, (65 * (2**25 + 16), 2**25 + 16, 4, 1)),     # GEMM: channel 64 past 2**31 inside the image
    (12, 16, 1, (12 * (2**28 + 8), 2**28 + 8, 4, 1)),       # FLAT GEMM (few channels): likewise
], ids=["gemm-batch", "direct-batch", "depthwise-image", "gemm-image", "flat-image"])
def test_offsets_past_int32(C, K, groups, strides, device):
    """Inputs whose element offsets pass 2**31 (between images, or inside one, where
    the host must see it unpatched): every pass against float64 (lazily allocated
    storage: only the pages the view touches are committed). Channels far apart
    inside an image: the GEMM forward and weight gradient read them through int64
    offsets (found by a review: int32 channel offsets read outside x)."""
    shape = (3 if strides[0] < 2**31 else 1, C, 4, 4)
    x = huge_view(shape, strides, torch.float16, device).requires_grad_()
    w = (torch.randn(K, C // groups, 3, 3) / 3).to(torch.float16).to(device).requires_grad_()
    check_op(*_conv_fns(1, 1, 1, groups), [x, w, None], "conv")


def test_bool_after_first_int_is_accepted_like_torch(device):
    """torch's parser takes padding=(1, False) (a bool after an int) as (1, 0)."""
    x, w = torch.randn(1, 4, 6, 6, device=device), torch.randn(6, 4, 3, 3, device=device)
    out = F.conv2d(x, w, padding=(1, False), stride=(1, True))
    assert out.shape == TF.conv2d(x.cpu(), w.cpu(), padding=(1, False), stride=(1, True)).shape == (1, 6, 6, 4)


def test_bad_activation_and_devices(device):
    x, w = torch.randn(2, 4, 8, 8, device=device), torch.randn(6, 4, 3, 3, device=device)
    with pytest.raises(ValueError):
        F.conv2d(x, w, activation="sigmoid")
    with pytest.raises(RuntimeError, match="device"):
        F.conv2d(x, w.to("meta"))


def test_autocast_runs_in_lower_precision(device):
    """Under torch.autocast the convolution runs in autocast's dtype, as torch's does."""
    x = torch.randn(2, 16, 7, 7, device=device)
    w = torch.randn(16, 16, 3, 3, device=device)
    b = torch.randn(16, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        expected = torch.nn.functional.conv2d(x, w, b, padding=1)
        with count_launches() as launches:
            out = F.conv2d(x, w, b, padding=1)
    assert out.dtype == expected.dtype == torch.bfloat16
    assert launches.total > 0
    assert_close(out, expected, torch.bfloat16, "conv", scale=4.0)


@pytest.mark.parametrize("geometry,activation", [(SMALL[0], "relu"), (SMALL[1], None), (SMALL[2], "relu"),
                                                 (SMALL[3], ("leaky_relu", -0.5))], ids=[g[0] for g in SMALL])
def test_autocast_writes_weight_and_bias_gradients_in_their_dtypes(geometry, activation, device):
    """Under bf16 autocast the kernels write the weight and bias gradients in the
    fp32 parameters' dtype: fp32-exact against float64 on the bf16 operands
    autocast made (torch's are rounded to bf16, then cast: about 3e-3 relative),
    and the backward casts only x's gradient back, where torch's casts all three.
    Every weight-gradient path, and a negative leaky slope (its own leaky_relu op)."""
    from kernels._runtime import dry_run
    _, N, C, H, W, K, kernel, stride, padding, dilation, groups, _ = geometry
    x, w, b = _inputs(N, C, H, W, K, kernel, groups, torch.float32, device)
    act, slope = activation if isinstance(activation, tuple) else (activation, 0.01)

    def forward():
        with torch.autocast(device, dtype=torch.bfloat16):
            return F.conv2d(x, w, b, stride, padding, dilation, groups, activation=act, negative_slope=slope)
    y = forward()
    g = torch.randn_like(y)
    y.backward(g)
    assert y.dtype == torch.bfloat16 and w.grad.dtype == b.grad.dtype == torch.float32
    z = TF.conv2d(x.detach().bfloat16().double(), w.detach().bfloat16().double(), b.detach().bfloat16().double(),
                  stride, padding, dilation, groups)
    slope_of_z = {None: 1.0, "relu": 0.0, "leaky_relu": slope}[act]
    dz = torch.where(z > 0, 1.0, slope_of_z) * g.double()
    ref = torch.nn.grad.conv2d_weight(x.detach().bfloat16().double(), w.shape, dz, stride, padding, dilation, groups)
    assert_close(w.grad, ref, torch.float32, "conv")
    assert_close(b.grad, dz.sum((0, 2, 3)), torch.float32, "reduction")
    with dry_run(), device_ops() as ops:
        forward().backward(g)
    assert ops["_to_copy"] == 3 + 1, ops     # forward: x, w, b; backward: x


def test_autocast_backward_under_compiled_autograd(device):
    """An eager conv under autocast, its backward compiled (compiled autograd): the
    weight and bias take their fp32 gradients from the conv alone (no cast's
    backward feeding them None besides, which compiled autograd cannot add)."""
    x, w, b = _inputs(2, 8, 5, 5, 16, (3, 3), 1, torch.float32, device)
    x.requires_grad_(False)
    grads = []
    with torch._dynamo.config.patch(compiled_autograd=True):
        for conv in (F.conv2d, TF.conv2d):
            torch._dynamo.reset()
            w.grad = b.grad = None
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = conv(x, w, b, padding=1).float().square().sum()
            torch.compile(lambda loss: loss.backward(), backend="eager")(loss)
            grads.append((w.grad, b.grad))
    torch._dynamo.reset()
    for ours, theirs in zip(*grads):
        assert ours.dtype == theirs.dtype == torch.float32
        assert_close(ours, theirs, torch.bfloat16, "conv", scale=theirs.abs().max().item())


@pytest.mark.parametrize("op", ["conv2d", "prelu"])
def test_autocast_keeps_the_master_weight_only_for_an_input_gradient(op, device):
    """Under autocast the fp32 weight is kept for the backward (and version-checked)
    only when x takes a gradient (a create_graph input gradient reads it): a first
    layer's weight changed in place between forward and backward raises nothing,
    as torch's autocast ops; a later layer's raises, as torch's ops outside autocast."""
    w = torch.randn(8, 8, 3, 3, device=device) if op == "conv2d" else torch.rand(8, device=device)
    w.requires_grad_()
    call = (lambda x: F.conv2d(x, w, padding=1)) if op == "conv2d" else (lambda x: F.prelu(x, w))
    for x_grad in (False, True):
        x = torch.randn(2, 8, 5, 5, device=device, requires_grad=x_grad)
        with torch.autocast(device, dtype=torch.bfloat16):
            y = call(x)
        with torch.no_grad():
            w.add_(1)
        if x_grad:
            with pytest.raises(RuntimeError, match="inplace"):
                y.float().sum().backward()
        else:
            y.float().sum().backward()
            assert w.grad.dtype == torch.float32


def test_autocast_second_derivatives_reach_every_operand(device):
    """Gradient penalties through a conv under bf16 autocast (the weight's and
    bias's gradients written in fp32) on the input's, the weight's and the bias's
    gradient: the penalised gradient and the penalty's gradients of input, weight
    and bias are torch's autocast ones (bf16 tolerance)."""
    x, w, b = _inputs(2, 16, 6, 5, 16, (3, 3), 1, torch.float32, device)

    def derivatives(conv):
        results = []
        for penalised in (x, w, b):
            x.grad = w.grad = b.grad = None
            with torch.autocast(device, dtype=torch.bfloat16):
                y = conv(x, w, b, padding=1)
            (first,) = torch.autograd.grad(y.float().square().sum(), penalised, create_graph=True)
            (first.float().square().sum() / first.numel()).backward()
            results += [first, x.grad, w.grad, b.grad]
        return results
    for ours, theirs in zip(derivatives(F.conv2d), derivatives(TF.conv2d)):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert ours.dtype == theirs.dtype
            assert_close(ours, theirs, torch.bfloat16, "conv", scale=theirs.abs().max().item())
