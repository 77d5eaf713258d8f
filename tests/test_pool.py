"""max_pool2d against torch: values, indices and gradients for every argument
mode, dtype and layout; ties, NaN and -inf; the fused relu; bad arguments."""

import pytest
import torch
import torch.nn.functional as TF

import nnlib
import nnlib.functional as F
from kernels import pool
from kernels._runtime import count_launches, needs_int64
from tests.reference import (FLOAT_DTYPES, assert_close, check_double_backward, check_op, check_raises_like_torch,
                             huge_view, make_input)

# (shape, kernel_size, stride, padding, dilation, ceil_mode). Small planes of batch > 1
# merge samples into one tile (MERGE_N); batch 1 and large planes do not.
GEOMETRIES = [
    ((2, 3, 9, 11), 1, 1, 0, 1, False),
    ((2, 3, 9, 11), 2, None, 0, 1, False),                  # stride = kernel
    ((2, 3, 9, 11), 3, 2, 1, 1, False),                     # ResNet stem
    ((2, 1, 10, 9), 3, 1, 1, 1, False),                     # stride < kernel: overlapping windows
    ((1, 2, 13, 12), 4, 3, 2, 1, False),                    # padding = half the kernel
    ((1, 2, 13, 14), 5, 2, 2, 2, False),                    # dilation 2
    ((1, 2, 15, 16), 6, 6, 3, 1, False),
    ((1, 2, 17, 15), 7, 3, 3, 1, False),
    ((2, 3, 9, 11), 2, 3, 1, 1, False),                     # stride > kernel
    ((2, 2, 11, 13), (3, 2), (2, 1), (1, 0), (1, 3), False),  # non-square everything
    ((2, 2, 12, 9), (1, 5), (2, 3), (0, 2), (3, 1), False),
    ((1, 3, 14, 13), 3, 2, 1, 3, False),                    # dilation 3
    ((2, 3, 8, 9), 3, 2, 0, 1, True),                       # ceil adds a row and a column
    ((2, 3, 7, 9), 2, 2, 0, 1, True),
    ((1, 2, 7, 9), (2, 3), 3, 1, 1, True),                  # ceil: H's last window would start in the padding
    ((1, 2, 11, 12), 3, 2, 1, 2, True),                     # ceil with dilation
    ((1, 2, 13, 12), (12, 11), 1, 0, 1, False),             # 132 taps: int16 local indices
    ((2, 2, 91, 90), 2, 1, 1, 1, False),                    # a sample fills an interpreter tile: no merging
]


def _ours(kernel_size, stride, padding, dilation, ceil_mode, return_indices, activation=None):
    return lambda x: F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                                  activation=activation)


def _reference(kernel_size, stride, padding, dilation, ceil_mode, return_indices, activation=None):
    def ref(x):
        out = TF.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
        if activation is None:
            return out
        return (TF.relu(out[0]), out[1]) if return_indices else TF.relu(out)
    return ref


def _check(x, *args, activation=None):
    """Both index modes: torch's int64 indices (return_indices) and the compact
    codes the backward uses otherwise. Returns the outputs with indices."""
    check_op(_ours(*args, False, activation), _reference(*args, False, activation), [x], "elementwise")
    out, _ = check_op(_ours(*args, True, activation), _reference(*args, True, activation), [x], "elementwise")
    return out


@pytest.mark.parametrize("shape,kernel_size,stride,padding,dilation,ceil_mode", GEOMETRIES,
                         ids=[f"{g[0]}-k{g[1]}-s{g[2]}-p{g[3]}-d{g[4]}-ceil{int(g[5])}" for g in GEOMETRIES])
def test_geometry(shape, kernel_size, stride, padding, dilation, ceil_mode, device):
    x = make_input(shape, torch.float32, device, requires_grad=True)
    _check(x, kernel_size, stride, padding, dilation, ceil_mode)
    if ceil_mode:   # the sizes are chosen so that ceil_mode matters
        floor = TF.max_pool2d(x.detach().cpu(), kernel_size, stride, padding, dilation, False)
        ceil = F.max_pool2d(x.detach(), kernel_size, stride, padding, dilation, True)
        assert floor.shape != ceil.shape


LAYOUTS = ["contiguous", "channels_last", "transposed", "sliced", "channel-sliced channels_last"]


def _layout_input(shape, dtype, device, layout, requires_grad=True):
    if layout == "channel-sliced channels_last":   # a non-dense view torch still calls channels_last
        n, c, h, w = shape
        base = torch.randn(n, 2 * c, h, w).to(dtype).to(device).contiguous(memory_format=torch.channels_last)
        return base[:, ::2].requires_grad_(requires_grad)
    return make_input(shape, dtype, device, layout, requires_grad)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtypes_and_layouts(layout, dtype, device):
    x = _layout_input((2, 5, 9, 11), dtype, device, layout)
    y, idx = _check(x, 3, 2, 1, 1, False)
    expected = TF.max_pool2d(x.detach().cpu(), 3, 2, 1, return_indices=True)
    assert y.stride() == expected[0].stride(), "output in the input's memory format, as torch"
    assert idx.stride() == expected[1].stride()
    grad = torch.autograd.grad(F.max_pool2d(x, 3, 2, 1), x, torch.ones(y.shape, dtype=dtype, device=device))[0]
    if layout == "channels_last":
        assert grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_ties_nan_and_inf(dtype, device):
    """Few distinct values (many ties), NaN and -inf, and whole windows of -inf:
    indices equal torch's own in the same dtype; values and gradients follow them."""
    x = torch.randint(-2, 3, (2, 3, 12, 11)).to(dtype)
    x[0, 0, 2, 3] = x[0, 1, 5, 5] = x[0, 1, 5, 6] = x[1, 2, 0, 0] = float("nan")
    x[0, 2, 3:7, 2:6] = float("-inf")
    x[1, 0, :4, :5] = float("-inf")
    x[1, 1, 7, :] = float("-inf")
    for args in [(3, 1, 1, 1, False), (3, 2, 1, 1, True), ((2, 4), (1, 3), (1, 2), (2, 1), False)]:
        expected = TF.max_pool2d(x, *args, return_indices=True)
        ours = F.max_pool2d(x.to(device), *args, return_indices=True)
        assert torch.equal(ours[1].cpu(), expected[1])
        torch.testing.assert_close(ours[0].cpu(), expected[0], atol=0, rtol=0, equal_nan=True)
        _check(x.to(device).requires_grad_(), *args)


def test_window_without_input(device):
    """kernel 2, padding 1, dilation 3 on a 2x2 input: the only window's taps both
    fall in the padding. torch gives -inf and index 6; no element gets a gradient."""
    x = torch.randn(1, 2, 2, 2, device=device, requires_grad=True)
    y, idx = F.max_pool2d(x, 2, 1, 1, 3, return_indices=True)
    assert torch.equal(idx.cpu(), TF.max_pool2d(x.detach().cpu(), 2, 1, 1, 3, return_indices=True)[1])
    assert torch.isneginf(y).all()
    assert torch.equal(torch.autograd.grad(F.max_pool2d(x, 2, 1, 1, 3), x, torch.ones_like(y))[0],
                       torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_relu(dtype, device):
    """relu after the max: values, indices (those of the max before relu) and
    gradients, which are zero where the pooled value is <= 0 (NaN passes)."""
    x = torch.randn(2, 3, 9, 10).to(dtype)
    x[0, 0] = -x[0, 0].abs()             # a plane whose pooled values are all negative
    x[1, 1, 2:5, 2:5] = 0.0              # pooled values exactly 0
    x[1, 2, 4, 4] = float("nan")
    _check(x.to(device).requires_grad_(), 3, 2, 1, 1, False, activation="relu")
    _check(x.to(device).requires_grad_(), (2, 3), 1, (1, 0), (2, 1), True, activation="relu")


@pytest.mark.parametrize("g", [2, 3, 9, 12, 16], ids=["stem", "overlapping", "non-square-dilated", "ceil", "int16"])
@pytest.mark.parametrize("indices", ["local", "flat"])
def test_double_backward(g, indices, device):
    """Second derivatives: the backward (scatter by argmax) and the gather are
    each other's transpose, so gradients of gradients match torch's, in both index
    forms; the fused relu masks both."""
    shape, *args = GEOMETRIES[g]
    flat = indices == "flat"
    layout = "channels_last" if g == 3 else "contiguous"
    x = make_input(shape, torch.float32, device, layout, requires_grad=True)
    for activation in (None, "relu"):
        ours, reference = _ours(*args, flat, activation), _reference(*args, flat, activation)
        check_double_backward((lambda t: ours(t)[0]) if flat else ours,
                              (lambda t: reference(t)[0]) if flat else reference, [x], "elementwise",
                              connected=False)     # the input's second gradient: None (README)


@pytest.mark.parametrize("return_indices", [False, True])
def test_double_backward_windows_wholly_in_padding(return_indices, device):
    """Windows whose taps all fall in the padding send their gradient nowhere, so
    the gather (the backward's transpose) must give them 0, in both index forms,
    and never read outside the plane: <backward(v), p> == <v, gather(p)>."""
    x = torch.randn(2, 2, 2, 2, device=device, requires_grad=True)
    out = F.max_pool2d(x, 2, 1, 1, 3, return_indices=return_indices)    # every window: taps at -1 and 2
    y = out[0] if return_indices else out
    v = torch.randn(y.shape, device=device, requires_grad=True)
    (grad_x,) = torch.autograd.grad(y, x, v, create_graph=True)
    probe = torch.randn(x.shape, device=device)
    (gathered,) = torch.autograd.grad((grad_x * probe).sum(), v)
    assert not grad_x.any() and not gathered.any()
    x = torch.randn(2, 3, 7, 6, device=device, requires_grad=True)        # and an ordinary geometry
    out = F.max_pool2d(x, (3, 2), (2, 1), 1, (1, 2), return_indices=return_indices)
    y = out[0] if return_indices else out
    v = torch.randn(y.shape, device=device, requires_grad=True)
    (grad_x,) = torch.autograd.grad(y, x, v, create_graph=True)
    probe = torch.randn(x.shape, device=device)
    (gathered,) = torch.autograd.grad((grad_x * probe).sum(), v)
    torch.testing.assert_close((grad_x * probe).sum(), (v * gathered).sum())


def test_double_backward_unbatched(device):
    x = torch.randn(3, 9, 8, device=device, requires_grad=True)
    check_double_backward(lambda t: F.max_pool2d(t, 3, 2, 1), lambda t: TF.max_pool2d(t, 3, 2, 1), [x],
                          "elementwise", connected=False)


def test_batch_one_unbatched_and_empty(device):
    _check(make_input((1, 3, 7, 9), torch.float16, device, requires_grad=True), 3, 2, 1, 1, False)
    _check(make_input((3, 7, 9), torch.float32, device, requires_grad=True), 2, 1, 0, 2, True)
    hwc = torch.randn(7, 9, 3, device=device).permute(2, 0, 1).requires_grad_()   # unbatched view
    y, _ = _check(hwc, 3, 2, 1, 1, False)
    assert y.is_contiguous(), "unbatched output is contiguous, as torch"
    empty = torch.randn(0, 3, 8, 8, device=device, requires_grad=True)
    y, idx = F.max_pool2d(empty, 2, return_indices=True)
    assert y.shape == idx.shape == (0, 3, 4, 4)
    assert torch.autograd.grad(y.sum(), empty)[0].shape == empty.shape


def test_gradient_views_and_determinism(device):
    """An expanded (stride 0) output gradient, a channels_last one for an NCHW
    output; repeated backward passes are bitwise equal."""
    x = make_input((2, 3, 11, 10), torch.float32, device, requires_grad=True)
    y = F.max_pool2d(x, 3, 1, 1)
    grad, = torch.autograd.grad(y.sum(), x, retain_graph=True)
    ref_x = x.detach().cpu().double().requires_grad_()
    assert_close(grad, torch.autograd.grad(TF.max_pool2d(ref_x, 3, 1, 1).sum(), ref_x)[0],
                 torch.float32, "elementwise")
    g = torch.randn(y.shape, device=device).contiguous(memory_format=torch.channels_last)
    first = torch.autograd.grad(y, x, g, retain_graph=True)[0]
    assert torch.equal(first, torch.autograd.grad(y, x, g.contiguous())[0])
    assert_close(first, torch.autograd.grad(TF.max_pool2d(ref_x, 3, 1, 1), ref_x, g.cpu().double())[0],
                 torch.float32, "elementwise")


def test_launches_and_saved_indices(device):
    """No index is written without autograd; with it, 1-byte codes are saved
    (int16 past 127 taps), and the backward is a single gather launch."""
    x = torch.randn(2, 3, 9, 9, device=device)
    with count_launches() as launches:
        F.max_pool2d(x, 3, 2, 1)
    assert launches.counts == {"_max_pool2d_fwd_kernel": 1}
    x.requires_grad_()
    y = F.max_pool2d(x, 3, 2, 1)
    assert y.grad_fn.saved_tensors[0].dtype == torch.int8
    wide = torch.randn(1, 1, 9, 16, device=device, requires_grad=True)
    y_wide = F.max_pool2d(wide, (9, 15))      # kept: a saved output is unpacked only while the output lives
    assert y_wide.grad_fn.saved_tensors[0].dtype == torch.int16
    with count_launches() as launches:
        y.sum().backward()
    assert launches.counts == {"_max_pool2d_bwd_kernel": 1}
    with torch.no_grad():
        assert F.max_pool2d(x, 3, 2, 1).grad_fn is None


def test_int64_offsets(device):
    """Inputs and output gradients whose element offsets pass 2**31 while every
    stride fits in int32 (n * stride overflows without int64 indices; storage
    is allocated lazily, only the touched pages are committed)."""
    stride = 2**30 + 8
    x = huge_view((3, 2, 5, 6), (stride, 30, 6, 1), torch.float16, device)
    assert needs_int64(x)
    y, idx = F.max_pool2d(x.requires_grad_(), 3, 2, 1, return_indices=True)
    expected = TF.max_pool2d(x.detach().cpu().float(), 3, 2, 1, return_indices=True)
    assert torch.equal(idx.cpu(), expected[1])
    assert_close(y, expected[0], torch.float16, "elementwise")
    g = huge_view(y.shape, (stride, 9, 3, 1), torch.float16, device)
    ref_x = x.detach().cpu().double().requires_grad_()
    expected_grad = torch.autograd.grad(TF.max_pool2d(ref_x, 3, 2, 1), ref_x, g.cpu().double())[0]
    for out in (y, F.max_pool2d(x, 3, 2, 1)):
        assert_close(torch.autograd.grad(out, x, g)[0], expected_grad, torch.float16, "elementwise")


def test_module(device):
    x = make_input((2, 4, 10, 9), torch.float32, device, "channels_last", requires_grad=True)
    ours = nnlib.MaxPool2d((3, 2), stride=2, padding=1, ceil_mode=True)
    theirs = torch.nn.MaxPool2d((3, 2), stride=2, padding=1, ceil_mode=True)
    assert isinstance(ours, torch.nn.MaxPool2d)
    assert repr(ours) == repr(theirs) and ours.state_dict() == {}
    check_op(ours, theirs, [x], "elementwise")
    check_op(nnlib.MaxPool2d(3, 1, 1, return_indices=True, activation="relu"),
             lambda t: tuple(f(v) for f, v in zip((TF.relu, lambda i: i),
                                                    torch.nn.MaxPool2d(3, 1, 1, return_indices=True)(t))),
             [x], "elementwise")
    assert "activation='relu'" in repr(nnlib.MaxPool2d(2, activation="relu"))
    with pytest.raises(TypeError):
        nnlib.MaxPool2d(2, 2, 0, 1, False, False, "relu")      # activation is keyword-only
    with pytest.raises(ValueError, match="activation"):
        nnlib.MaxPool2d(2, activation="leaky_relu")


def test_max_pool2d_with_indices(device):
    """Always (output, indices), whatever return_indices says, as torch."""
    x = make_input((2, 3, 7, 8), torch.float16, device, "channels_last", requires_grad=True)
    for return_indices in (False, True):
        check_op(lambda t: F.max_pool2d_with_indices(t, 3, 2, 1, 1, True, return_indices),
                 lambda t: TF.max_pool2d_with_indices(t, 3, 2, 1, 1, True, return_indices), [x], "elementwise")


def test_torch_path(device):
    """float64 and integer inputs take torch's own max_pool2d (the fused relu too),
    which on CUDA has no integer kernel (NotImplementedError, as torch's)."""
    integers = torch.randint(-5, 5, (2, 3, 7, 8), device=device)
    if integers.is_cuda:
        with count_launches() as launches, pytest.raises(NotImplementedError):
            F.max_pool2d(integers, 3, 2, 1, return_indices=True, activation="relu")
        assert launches.total == 0
    for x in [torch.randn(2, 3, 7, 8, dtype=torch.float64, device=device)] + [integers] * (not integers.is_cuda):
        with count_launches() as launches:
            y, idx = F.max_pool2d(x, 3, 2, 1, return_indices=True, activation="relu")
            y2 = F.max_pool2d_with_indices(x, 2)
            y3 = F.max_pool2d(x, 3, 2, 1, activation="relu")
        assert launches.total == 0
        expected = TF.max_pool2d(x, 3, 2, 1, return_indices=True)
        assert torch.equal(y, TF.relu(expected[0])) and torch.equal(idx, expected[1])
        assert torch.equal(y3, TF.relu(expected[0]))
        assert torch.equal(y2[1], TF.max_pool2d_with_indices(x, 2)[1])


BAD = {  # name: (input shape, kwargs); torch raises for each
    "kernel-zero": ((2, 3, 8, 8), dict(kernel_size=0)),
    "kernel-pair-zero": ((2, 3, 8, 8), dict(kernel_size=(2, 0))),
    "kernel-negative": ((2, 3, 8, 8), dict(kernel_size=-1)),
    "stride-zero": ((2, 3, 8, 8), dict(kernel_size=2, stride=0)),
    "stride-negative": ((2, 3, 8, 8), dict(kernel_size=2, stride=-1)),
    "padding-over-half-kernel": ((2, 3, 8, 8), dict(kernel_size=3, padding=2)),
    "padding-negative": ((2, 3, 8, 8), dict(kernel_size=3, padding=-1)),
    "padding-over-half-kernel-width": ((2, 3, 8, 8), dict(kernel_size=(3, 1), padding=(1, 1))),
    "padding-over-half-kernel-dilated": ((2, 3, 8, 8), dict(kernel_size=2, padding=2, dilation=3)),
    "padding-over-half-odd-kernel-dilated": ((2, 3, 8, 8), dict(kernel_size=3, padding=2, dilation=2)),
    "dilation-zero": ((2, 3, 8, 8), dict(kernel_size=2, dilation=0)),
    "kernel-three-values": ((2, 3, 8, 8), dict(kernel_size=(1, 2, 3))),
    "kernel-empty": ((2, 3, 8, 8), dict(kernel_size=())),
    "stride-three-values": ((2, 3, 8, 8), dict(kernel_size=2, stride=(1, 2, 3))),
    "padding-three-values": ((2, 3, 8, 8), dict(kernel_size=2, padding=(1, 2, 3))),
    "dilation-three-values": ((2, 3, 8, 8), dict(kernel_size=2, dilation=(1, 2, 3))),
    "kernel-over-input": ((2, 3, 8, 8), dict(kernel_size=9)),
    "dilated-kernel-over-input": ((2, 3, 8, 8), dict(kernel_size=3, dilation=4)),
    "kernel-float": ((2, 3, 8, 8), dict(kernel_size=2.5)),
    "kernel-pair-float": ((2, 3, 8, 8), dict(kernel_size=(2, 2.0))),
    "padding-string": ((2, 3, 8, 8), dict(kernel_size=2, padding="same")),
    "stride-string": ((2, 3, 8, 8), dict(kernel_size=2, stride="2")),
    "input-2d": ((8, 8), dict(kernel_size=2)),
    "input-5d": ((1, 2, 3, 8, 8), dict(kernel_size=2)),
    "input-zero-channels": ((2, 0, 8, 8), dict(kernel_size=2)),
    "input-zero-height": ((2, 3, 0, 8), dict(kernel_size=2)),
    "unbatched-zero-channels": ((0, 8, 8), dict(kernel_size=2)),
    "types-before-lengths": ((2, 3, 8, 8), dict(kernel_size=(1, 2, 3), stride=True)),   # as torch's parser
    "ceil-mode-int": ((2, 3, 8, 8), dict(kernel_size=2, ceil_mode=1)),
    "ceil-mode-none": ((2, 3, 8, 8), dict(kernel_size=2, ceil_mode=None)),
    "kernel-past-int64": ((2, 3, 8, 8), dict(kernel_size=2**63)),                      # ValueError, as torch's
    "kernel-pair-past-int64": ((2, 3, 8, 8), dict(kernel_size=(2, 2**63))),            # TypeError in a sequence
    "padding-below-int64": ((2, 3, 8, 8), dict(kernel_size=2, padding=-2**63 - 1)),
}


@pytest.mark.parametrize("name", list(BAD))
@pytest.mark.parametrize("return_indices", [False, True], ids=["values", "indices"])
def test_bad_arguments(name, return_indices, device):
    shape, kwargs = BAD[name]
    check_raises_like_torch(F.max_pool2d, TF.max_pool2d, (torch.randn(shape, device=device),),
                            {**kwargs, "return_indices": return_indices})


def test_checks_after_a_good_call_of_the_same_shapes(device):
    """max_pool2d's checks run once per call signature (``checks_once``): after a
    good call, calls on the same input that differ in an argument's value or type
    (an int where a bool goes, a bool leading a tuple, a float) are still refused
    with torch's class, and the good calls still pass."""
    x = torch.randn(2, 3, 8, 8, device=device)
    good = [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(3, 3), stride=[2, 2], padding=1, dilation=1),
            dict(kernel_size=2, ceil_mode=True)]
    bad = [dict(kernel_size=3, stride=0, padding=1), dict(kernel_size=3, stride=2, padding=2),
           dict(kernel_size=2, ceil_mode=1), dict(kernel_size=(True, 3)), dict(kernel_size=3.0),
           dict(kernel_size=(3, 3), stride=[2, 2], padding=1, dilation=0), dict(kernel_size=(3, 3, 3))]
    for _ in range(2):
        for kwargs in good:
            F.max_pool2d(x, **kwargs)
        for kwargs in bad:
            check_raises_like_torch(F.max_pool2d, TF.max_pool2d, (x,), kwargs)
        check_raises_like_torch(F.max_pool2d, TF.max_pool2d, (x[0, 0],), good[0])


def test_bad_messages_name_the_argument(device):
    x = torch.randn(2, 3, 8, 8, device=device)
    for kwargs, word in [(dict(kernel_size=2, stride=0), "stride"), (dict(kernel_size=3, padding=2), "pad"),
                         (dict(kernel_size=-1), "kernel size should"),
                         (dict(kernel_size=(2, -1)), "kernel size should"),
                         (dict(kernel_size=2, dilation=0), "dilation"), (dict(kernel_size=2.5), "kernel_size"),
                         (dict(kernel_size=9), "output size")]:
        with pytest.raises((RuntimeError, TypeError), match=word):
            F.max_pool2d(x, **kwargs)
    with pytest.raises(TypeError, match="input"):
        F.max_pool2d(x.tolist(), 2)
    with pytest.raises(ValueError, match="activation"):
        F.max_pool2d(x, 2, activation="gelu")
    with pytest.raises(NotImplementedError):
        F.max_pool2d(x > 0, 2)
    assert pool.output_shape(7, 2, 3, 1, 1, True) == 3   # torch's last-window rule
