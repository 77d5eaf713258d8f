"""relu / leaky_relu / prelu against the float64 torch reference."""

import decimal
import fractions

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from bench import host
import nnlib
import nnlib.functional as F
from kernels._runtime import count_launches, needs_int64
from tests.reference import (FLOAT_DTYPES, assert_close, check_double_backward, check_op, check_raises_like_torch,
                             device_ops, huge_view, make_input)

LAYOUTS = ["contiguous", "channels_last", "transposed", "sliced"]
SHAPES = [(3, 5, 7, 9), (1, 1, 1, 1), (2, 3, 1, 300)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", ["relu", "leaky_relu"])
def test_elementwise_matches_reference(op, shape, layout, dtype, device):
    x = make_input(shape, dtype, device, layout, requires_grad=True)
    ours = {"relu": lambda t: F.relu(t), "leaky_relu": lambda t: F.leaky_relu(t, 0.2)}[op]
    ref = {"relu": lambda t: TF.relu(t), "leaky_relu": lambda t: TF.leaky_relu(t, 0.2)}[op]
    out, _ = check_op(ours, ref, [x], "elementwise")
    if layout in ("contiguous", "channels_last"):
        assert out.stride() == x.stride(), "dense layouts are kept"


def test_any_dense_layout_is_read_as_it_is(device):
    """A dense tensor of permuted dims (neither contiguous nor channels_last) is read
    and written in place: one launch and no copy, forward, backward and in place;
    output strides as torch's."""
    for op, reference in ((F.relu, TF.relu), (F.relu_, TF.relu_),
                          (lambda t: F.leaky_relu(t, 0.2), lambda t: TF.leaky_relu(t, 0.2))):
        x = torch.randn(2, 3, 4, 5, device=device).permute(2, 0, 3, 1)
        want = reference(x.clone())
        with count_launches() as launches, device_ops() as ops:
            got = op(x)
        assert launches.total == 1 and not ops, ops
        assert torch.equal(got, want) and got.stride() == want.stride()
    x = torch.randn(2, 3, 4, 5, device=device).permute(2, 0, 3, 1).requires_grad_()
    y = F.leaky_relu(x, 0.2)
    dy = torch.randn_like(y)
    with count_launches() as launches, device_ops() as ops:
        (dx,) = torch.autograd.grad(y, x, dy)
    assert launches.total == 1 and not ops, ops
    assert torch.equal(dx, torch.autograd.grad(TF.leaky_relu(x, 0.2), x, dy)[0])


# Dense layouts whose size-1 dims make them ambiguous: (shape, dims in memory order, outermost first, the
# strides of the size-1 dims replaced), where torch's elementwise ops normalise the output's strides.
AMBIGUOUS_LAYOUTS = [((2, 1, 4, 4), (0, 2, 3, 1), None), ((2, 3, 1, 1), (0, 2, 3, 1), None),
                     ((1, 3, 4, 4), (2, 3, 0, 1), None), ((2, 3, 1, 4), (0, 1, 2, 3), {2: 7}),
                     ((2, 1, 3, 2, 2), (0, 2, 3, 4, 1), None)]


@pytest.mark.parametrize("shape,order,size1_strides", AMBIGUOUS_LAYOUTS,
                         ids=["channels_last-C1", "channels_last-1x1", "hwnc-N1", "odd-size1-stride", "cl3d-C1"])
def test_output_strides_of_ambiguous_layouts_are_torchs(shape, order, size1_strides, device):
    """relu / leaky_relu outputs and input gradients take the strides torch's give
    (contiguous where the input is, the size-1 dims' strides aside, else
    channels_last where it is, else the input's): a conv after them then picks the
    memory format it picks after torch's. One launch each, no copy."""
    base = torch.randn([shape[d] for d in order], device=device).permute(*[order.index(d) for d in range(len(shape))])
    strides = list(base.stride())
    for dim, stride in (size1_strides or {}).items():
        strides[dim] = stride
    x = base.as_strided(shape, strides).requires_grad_()
    for ours, theirs in ((F.relu, TF.relu), (lambda t: F.leaky_relu(t, 0.2), lambda t: TF.leaky_relu(t, 0.2))):
        with count_launches() as launches:
            y = ours(x)
        want = theirs(x)
        assert launches.total == 1 and y.stride() == want.stride() and torch.equal(y, want)
        dy = torch.randn_like(want)
        with count_launches() as launches, device_ops() as ops:
            (dx,) = torch.autograd.grad(y, x, dy)
        (want_dx,) = torch.autograd.grad(want, x, dy)
        assert launches.total == 1 and not ops, ops
        assert dx.stride() == want_dx.stride() and torch.equal(dx, want_dx)


@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 0, 3), (70001,), (2, 3, 4, 5, 6)])
def test_elementwise_ranks_and_empty(shape, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    check_op(lambda t: F.leaky_relu(t, 0.3), lambda t: TF.leaky_relu(t, 0.3), [x], "elementwise",
             expect_launch=x.numel() > 0)


def test_gradient_at_zero_and_nan(device):
    values = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), -1.0, 2.0]
    for ours, ref in [(F.relu, TF.relu), (lambda t: F.leaky_relu(t, 0.1), lambda t: TF.leaky_relu(t, 0.1)),
                      (lambda t: F.prelu(t, torch.tensor([0.25], device=device)),
                       lambda t: TF.prelu(t, torch.tensor([0.25], dtype=t.dtype)))]:
        x = torch.tensor(values, device=device, requires_grad=True)
        check_op(ours, ref, [x], "elementwise")


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.int64])
def test_relu_integer_and_bool(dtype, device):
    """Integers stay exact (past float32's 2**24 as well)."""
    big = torch.iinfo(dtype).max
    values = [-3, 0, 5, big, -big, 2**24 + 1 if big > 2**24 else 7]
    x = torch.tensor(values, dtype=dtype, device=device)
    with count_launches() as launches:
        assert torch.equal(F.relu(x).cpu(), TF.relu(x.cpu()))
    assert launches.total == 1
    with pytest.raises(RuntimeError, match="Boolean"):
        F.relu(torch.tensor([True], device=device))
    with pytest.raises(NotImplementedError, match="input"):
        F.leaky_relu(torch.tensor([1, -2], device=device))
    with pytest.raises(NotImplementedError, match="input"):
        F.prelu(torch.tensor([1, -2], device=device), torch.ones(1, dtype=torch.long, device=device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("op", ["relu", "leaky_relu"])
def test_inplace(op, layout, device):
    base = make_input((2, 3, 5, 7), torch.float32, device, layout)
    expected = TF.relu(base) if op == "relu" else TF.leaky_relu(base, 0.1)
    version = base._version
    out = F.relu_(base) if op == "relu" else F.leaky_relu_(base, 0.1)
    assert out is base
    assert base._version == version + 1          # torch's one bump (a sliced tensor's copy-back makes none)
    assert_close(base, expected, torch.float32, "elementwise")


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
def test_inplace_without_recording_returns_the_input(layout, mode, device):
    """Under no_grad / inference_mode an in-place activation of a tensor that
    requires grad (a Parameter) writes it and returns that same object."""
    param = torch.nn.Parameter(make_input((3, 8), torch.float32, device, layout))
    expected, version = TF.relu(param.detach()), param._version
    with getattr(torch, mode)():
        out = F.relu_(param)
        module_out = nnlib.LeakyReLU(0.1, inplace=True)(param)
    assert out is param and module_out is param and param.requires_grad
    assert param._version == version + 2
    assert_close(param.detach(), expected, torch.float32, "elementwise")


VIEWS_AUTOGRAD_WILL_NOT_REBASE = {
    "unbind": lambda t: t.unbind(0)[0],
    "split": lambda t: t.split(1)[0],
    "no_grad": lambda t: _taken_without_grad(t),
    "custom-function": lambda t: _ViewOf.apply(t),
}


def _taken_without_grad(t):
    with torch.no_grad():
        return t[0]


class _ViewOf(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return grad


@pytest.mark.parametrize("view", list(VIEWS_AUTOGRAD_WILL_NOT_REBASE))
@pytest.mark.parametrize("op", ["relu_", "leaky_relu_"])
def test_inplace_on_a_view_autograd_refuses_writes_nothing(op, view, device):
    """torch refuses these in-place before writing (RuntimeError); so do we, naming
    where the view comes from (a view made under no_grad is a leaf that requires
    grad too: its origin comes first, as in torch)."""
    base = torch.tensor([[-1.0, 2.0], [-3.0, 4.0]], device=device, requires_grad=True) * 1
    before = base.detach().clone()
    make_view = VIEWS_AUTOGRAD_WILL_NOT_REBASE[view]
    with pytest.raises(RuntimeError):
        getattr(TF, op)(make_view(base))
    with count_launches() as launches, pytest.raises(RuntimeError, match=rf"{op.rstrip('_')}\(\): the view comes"):
        getattr(F, op)(make_view(base))
    assert launches.total == 0 and torch.equal(base, before)


INPLACE_ACTIVATIONS = {
    "relu_": (F.relu_, TF.relu_),
    "leaky_relu_": (lambda t: F.leaky_relu_(t, 0.1), lambda t: TF.leaky_relu_(t, 0.1)),
    "ReLU-inplace": (nnlib.ReLU(inplace=True), torch.nn.ReLU(inplace=True)),
    "LeakyReLU-inplace": (nnlib.LeakyReLU(0.1, inplace=True), torch.nn.LeakyReLU(0.1, inplace=True)),
}


@pytest.mark.parametrize("op", list(INPLACE_ACTIVATIONS))
def test_inplace_on_an_inference_tensor_only_inside_inference_mode(op, device):
    """An inference tensor may not be written in place outside inference mode:
    torch refuses (RuntimeError; on the CPU after its kernel wrote it), nnlib
    refuses before launching. Inside inference mode both write it."""
    ours, theirs = INPLACE_ACTIVATIONS[op]

    def inference_tensor():
        with torch.inference_mode():
            return torch.tensor([[-1.0, 2.0, -3.0]], device=device)
    with pytest.raises(RuntimeError):
        theirs(inference_tensor())
    x = inference_tensor()
    before = x.clone()
    with count_launches() as launches, pytest.raises(RuntimeError, match="inference tensor"):
        ours(x)
    assert launches.total == 0 and torch.equal(x, before)
    expected = inference_tensor()
    with torch.inference_mode(), count_launches() as launches:
        out = ours(x)
        theirs(expected)
    assert out is x and launches.total == 1 and torch.equal(x, expected)


@pytest.mark.parametrize("op", ["relu", "leaky_relu"])
def test_inplace_under_autograd(op, device):
    leaf = torch.randn(4, 6, device=device, requires_grad=True)
    ours = (lambda t: F.relu(t * 2, inplace=True)) if op == "relu" else (lambda t: F.leaky_relu(t * 2, 0.1, True))
    ref = (lambda t: TF.relu(t * 2, inplace=True)) if op == "relu" else (lambda t: TF.leaky_relu(t * 2, 0.1, True))
    check_op(ours, ref, [leaf], "elementwise")
    with pytest.raises(RuntimeError, match="leaf Variable"):
        F.relu(leaf, inplace=True)


def test_inplace_leaky_negative_slope_raises_in_backward(device):
    x = torch.randn(5, device=device, requires_grad=True)
    y = F.leaky_relu(x * 1, -0.5, inplace=True)
    with pytest.raises(RuntimeError, match="negative slope"):
        y.sum().backward()
    y = F.leaky_relu(x * 1, float("nan"), inplace=True)      # torch's test is slope >= 0
    with pytest.raises(RuntimeError, match="negative slope"):
        y.sum().backward()
    # Out of place, a negative slope is fine.
    check_op(lambda t: F.leaky_relu(t, -0.5), lambda t: TF.leaky_relu(t, -0.5), [x], "elementwise")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("num_parameters", ["one", "channels"])
def test_prelu_matches_reference(num_parameters, layout, dtype, device):
    shape = (3, 40, 17, 19)                     # 2 channel blocks, several row chunks
    x = make_input(shape, dtype, device, layout, requires_grad=True)
    C = 1 if num_parameters == "one" else shape[1]
    w = (torch.rand(C) * 0.5).to(dtype).to(device).requires_grad_(True)
    out, _ = check_op(F.prelu, TF.prelu, [x, w], "reduction", grad_scale=30.0)
    if layout != "sliced":     # dense inputs: torch's output keeps their strides
        assert out.stride() == x.stride()


@pytest.mark.parametrize("shape,C", [((), 1), ((7,), 1), ((4, 6), 6), ((2, 3, 11), 3), ((2, 3, 11), 1),
                                     ((2, 3, 2, 4, 5), 3), ((0, 3, 4), 3), ((2, 3, 0), 3)])
def test_prelu_ranks(shape, C, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    w = torch.rand(C, device=device, requires_grad=True)
    check_op(F.prelu, TF.prelu, [x, w], "reduction", expect_launch=x.numel() > 0)


def test_prelu_scalar_weight(device):
    x = torch.randn(2, 3, 4, device=device, requires_grad=True)
    w = torch.tensor(0.2, device=device, requires_grad=True)
    check_op(F.prelu, TF.prelu, [x, w], "reduction")


def test_prelu_weight_grad_is_deterministic(device):
    x = torch.randn(4, 33, 31, 17, device=device, requires_grad=True)
    w = torch.rand(33, device=device, requires_grad=True)
    g = torch.randn_like(x)
    first = torch.autograd.grad(F.prelu(x, w), w, g)[0]
    second = torch.autograd.grad(F.prelu(x, w), w, g)[0]
    assert torch.equal(first, second)


@pytest.mark.parametrize("op", ["relu", "leaky_relu", "leaky_relu_inplace"])
def test_double_backward(op, device):
    """Gradients of gradients go through the Triton backward kernel again (the
    gradient is linear in the output gradient; the slope's own derivative is 0)."""
    x = torch.randn(3, 5, 7, device=device, requires_grad=True)
    ours = {"relu": lambda t: F.relu(t * 1), "leaky_relu": lambda t: F.leaky_relu(t, 0.2),
            "leaky_relu_inplace": lambda t: F.leaky_relu(t * 1, 0.2, inplace=True)}[op]
    reference = TF.relu if op == "relu" else lambda t: TF.leaky_relu(t, 0.2)
    check_double_backward(ours, reference, [x], "elementwise")


@pytest.mark.parametrize("shape,C", [((3, 6, 5, 4), 6), ((3, 6, 5, 4), 1), ((7,), 1), ((4, 5), 5)])
def test_prelu_double_backward(shape, C, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    w = (torch.rand(C) * 0.5).to(device).requires_grad_(True)
    # The second backward is torch elementwise ops and sums (see PReLUGradFunction).
    check_double_backward(F.prelu, TF.prelu, [x, w], "reduction", expect_launch=False)


@pytest.mark.parametrize("layout", ["contiguous", "hw-transposed", "rank-1", "0-d-weight"])
def test_prelu_results_can_be_written_in_place(layout, device):
    """prelu's output and its gradients taken with create_graph are tensors of their
    own, not views of a buffer made inside the operator, so a caller may write them
    in place (a view would raise there), as torch's; layout and values as torch's
    (a transposed x's dims do not merge: the kernel writes a copy)."""
    for ops in (F, TF):
        torch.manual_seed(0)
        x = torch.randn(7, device=device) if layout == "rank-1" else torch.randn(3, 4, 5, 6, device=device)
        x = (x.transpose(2, 3) if layout == "hw-transposed" else x).requires_grad_()
        w = torch.rand({"rank-1": (1,), "0-d-weight": ()}.get(layout, (4,)), device=device, requires_grad=True)
        gx, gw = torch.autograd.grad(ops.prelu(x, w).square().sum(), (x, w), create_graph=True)
        y = ops.prelu(x, w)
        for t in (y, gx, gw):
            t.mul_(2)
        (y.sum() + gx.sum() + gw.sum()).backward()
        if ops is F:
            ours = (y, gx, gw, x.grad, w.grad)
    for a, b in zip(ours, (y, gx, gw, x.grad, w.grad)):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b)


def test_prelu_double_backward_at_zero(device):
    """torch's second derivatives count x == 0 as positive, its first as negative."""
    x = torch.tensor([[0.0, -1.0, 2.0], [0.0, 3.0, 0.0]], device=device, requires_grad=True)
    w = torch.tensor([0.25, 0.5, 0.75], device=device, requires_grad=True)
    check_double_backward(F.prelu, TF.prelu, [x, w], "reduction", expect_launch=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prelu_autocast(dtype, device):
    """torch.autocast runs prelu in its lower-precision dtype (CPU and CUDA); relu keeps the input's."""
    x = torch.randn(2, 4, 3, 5, device=device)
    w = torch.rand(4, device=device)
    with torch.autocast(device, dtype=dtype):
        expected, expected_relu = TF.prelu(x, w), TF.relu(x)
        with count_launches() as launches:
            out, out_relu = F.prelu(x, w), F.relu(x)
    assert out.dtype == expected.dtype == dtype and out_relu.dtype == expected_relu.dtype
    assert launches.total == 2
    assert_close(out, expected, dtype, "elementwise")


@pytest.mark.parametrize("weight_shape", [(), (4,)])
def test_prelu_autocast_writes_the_slopes_gradient_in_their_dtype(weight_shape, device):
    """Under bf16 autocast prelu's slope gradient is written in the fp32 slopes'
    dtype from its fp32 sums (torch's is rounded to bf16, then cast): fp32-exact
    against float64 on the bf16 input, no cast of it in the backward (x's only),
    one gradient per slope tensor under compiled autograd, and gradient penalties'
    derivatives (on x's gradient and on the slopes') as torch's autocast ones."""
    x = torch.randn(2, 4, 3, 5, device=device, requires_grad=True)
    w = (torch.rand(weight_shape, device=device) * 0.3).requires_grad_()

    def forward(prelu=F.prelu):
        with torch.autocast(device, dtype=torch.bfloat16):
            return prelu(x, w)
    g = torch.randn(2, 4, 3, 5, device=device).bfloat16()
    forward().backward(g)
    xb = x.detach().bfloat16().double()
    ref = torch.where(xb > 0, 0, xb * g.double()).sum((0, 2, 3) if w.dim() else None)
    assert w.grad.dtype == torch.float32
    assert_close(w.grad, ref.reshape(w.shape), torch.float32, "reduction")
    counts = host.count_ops(lambda: forward().backward(g))
    assert counts.ops["_to_copy"] == 2 + 1, counts     # forward: x, w; backward: x
    with torch._dynamo.config.patch(compiled_autograd=True):
        w.grad = None
        torch._dynamo.reset()
        torch.compile(lambda loss: loss.backward(), backend="eager")(forward().float().square().sum())
    torch._dynamo.reset()
    assert w.grad.dtype == torch.float32

    def penalties(prelu):
        results = []
        for penalised in (x, w):
            x.grad = w.grad = None
            (first,) = torch.autograd.grad(forward(prelu).float().square().sum(), penalised, create_graph=True)
            first.float().square().sum().backward()
            results += [first, x.grad, w.grad]
        return results
    for ours, theirs in zip(penalties(F.prelu), penalties(TF.prelu)):
        assert ours.dtype == theirs.dtype
        assert_close(ours, theirs, torch.bfloat16, "reduction", scale=theirs.abs().max().item())


@pytest.mark.parametrize("slope", [1e39, -1e39, 10**40, np.float32(0.2), np.int64(2), torch.tensor(0.3), True,
                                   0.2 + 0j, 0.2 + 1j, "0.2", None],
                         ids=["1e39", "-1e39", "int-past-int64", "np.float32", "np.int64", "0-d-tensor", "True",
                              "complex-real", "complex", "str", "None"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_slopes_are_taken_as_leaky_relu_takes_them(slope, dtype, device):
    """A fused leaky slope (conv2d, the norms) is parsed as leaky_relu parses it for
    the input's dtype (float64 takes slopes past float32's range): what torch's
    leaky_relu refuses raises its class before any launch, and what it takes gives
    its result."""
    x = torch.randn(2, 4, 3, 3, device=device, dtype=dtype)
    w = torch.randn(4, 4, 1, 1, device=device, dtype=dtype)
    fused = [(lambda: F.conv2d(x, w, activation="leaky_relu", negative_slope=slope), lambda: TF.conv2d(x, w)),
             (lambda: F.batch_norm(x, None, None, training=True, activation="leaky_relu", negative_slope=slope),
              lambda: TF.batch_norm(x, None, None, training=True)),
             (lambda: F.instance_norm(x, activation="leaky_relu", negative_slope=slope), lambda: TF.instance_norm(x)),
             (lambda: F.group_norm(x, 2, activation="leaky_relu", negative_slope=slope), lambda: TF.group_norm(x, 2)),
             (lambda: F.layer_norm(x, (3,), activation="leaky_relu", negative_slope=slope),
              lambda: TF.layer_norm(x, (3,)))]
    try:
        TF.leaky_relu(x, slope)
    except Exception as error:      # noqa: BLE001 (the class is what is compared)
        for call, _ in fused:
            with count_launches() as launches, pytest.raises(type(error)):
                call()
            assert launches.total == 0
        return
    for call, unfused in fused:
        torch.testing.assert_close(call(), TF.leaky_relu(unfused(), slope), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weight_shape", [(), (1,), (5,)])
def test_prelu_reads_its_slopes_in_place(weight_shape, device):
    """prelu's forward is one launch and its backward two (the kernel, the weight
    gradient's sum), with no other device op: one slope shared by every channel
    (nn.PReLU's default) is read where it is, not expanded to C copies."""
    x = torch.randn(2, 5, 3, 4, device=device, requires_grad=True)
    w = torch.rand(weight_shape, device=device, requires_grad=True)
    counts = host.count_ops(lambda: F.prelu(x, w))
    assert (counts.launches, counts.device_ops) == (1, 0), counts
    counts = host.count_ops(lambda: F.prelu(x, w).backward(torch.ones_like(x)))
    assert (counts.launches, dict(counts.ops)) == (3, {"ones_like": 1}), counts


def test_prelu_bad_messages_name_the_argument(device):
    x = torch.randn(2, 3, 4, device=device)
    with pytest.raises(RuntimeError, match="weight"):
        F.prelu(x, torch.rand(4, device=device))
    with pytest.raises(RuntimeError, match="weight"):
        F.prelu(x, torch.rand(1, 3, device=device))
    with pytest.raises(RuntimeError, match="weight"):
        F.prelu(x.half(), torch.rand(3, device=device))
    with pytest.raises(TypeError, match="weight"):
        F.prelu(x, [0.25])
    with pytest.raises(RuntimeError, match="device"):
        F.prelu(x, torch.rand(3, device="meta"))


BAD = {  # name: (functional name, args); torch raises for each
    # prelu checks as torch: dtypes must agree, then shapes, then floating point.
    "prelu-int-input-float-weight": ("prelu", lambda d: (torch.arange(4, device=d), torch.tensor([0.25], device=d))),
    "prelu-int-weight-too-long": ("prelu", lambda d: (torch.arange(4, device=d).view(2, 2),
                                                      torch.tensor([1, 2, 3], device=d))),
    "prelu-bool": ("prelu", lambda d: (torch.tensor([True, False], device=d), torch.tensor([True], device=d))),
    "prelu-weight-too-long": ("prelu", lambda d: (torch.randn(2, 3, 4, device=d), torch.rand(4, device=d))),
    "prelu-weight-2d": ("prelu", lambda d: (torch.randn(2, 3, 4, device=d), torch.rand(1, 3, device=d))),
    "prelu-weight-dtype": ("prelu", lambda d: (torch.randn(2, 3, 4, device=d).half(), torch.rand(3, device=d))),
    "prelu-weight-list": ("prelu", lambda d: (torch.randn(2, 3, 4, device=d), [0.25])),
    "relu-bool": ("relu", lambda d: (torch.tensor([True, False], device=d),)),
    "relu-list": ("relu", lambda d: ([1.0, -1.0],)),
    "leaky-relu-bool": ("leaky_relu", lambda d: (torch.tensor([True, False], device=d),)),
    "leaky-relu-inplace-bool": ("leaky_relu_", lambda d: (torch.tensor([True, False], device=d),)),
    "leaky-relu-int": ("leaky_relu", lambda d: (torch.arange(3, device=d),)),
    "leaky-relu-fraction-slope": ("leaky_relu", lambda d: (torch.randn(3, device=d), fractions.Fraction(1, 4))),
    "leaky-relu-decimal-slope": ("leaky_relu", lambda d: (torch.randn(3, device=d), decimal.Decimal("0.25"))),
    "leaky-relu-numpy-uint64-slope": ("leaky_relu", lambda d: (torch.randn(3, device=d), np.uint64(2**63))),
    "leaky-relu-slope-past-uint64": ("leaky_relu", lambda d: (torch.randn(3, device=d), 2**64)),
}


@pytest.mark.parametrize("slope", [np.bool_(True), np.float16(0.5), np.int8(-2), np.uint64(3), 2**63, -2**63,
                                   torch.tensor(0.25)], ids=repr)
def test_leaky_relu_slopes_torch_parses(slope, device):
    """Every Scalar torch's parser takes: numpy bools, ints and floats, ints up
    to uint64's range, 0-d tensors."""
    x = torch.randn(2, 5, device=device)
    assert torch.equal(F.leaky_relu(x, slope), TF.leaky_relu(x, slope))


def test_sparse_and_quantized_take_torchs_path(device):
    """No kernel reads a sparse layout or quantized data: torch's ops run them."""
    sparse = torch.tensor([[-1.0, 0.0], [0.0, 2.0]], device=device).to_sparse()
    quantized = torch.quantize_per_tensor(torch.tensor([-1.0, 0.5, 2.0]), 0.1, 10, torch.quint8)
    assert nnlib.backend(sparse) == nnlib.backend(quantized) == "torch"
    with count_launches() as launches:
        assert torch.equal(F.relu(sparse).to_dense(), TF.relu(sparse).to_dense())
        assert torch.equal(F.relu(quantized).dequantize(), TF.relu(quantized).dequantize())
        assert torch.equal(F.leaky_relu(quantized, 0.1).dequantize(), TF.leaky_relu(quantized, 0.1).dequantize())
    assert launches.total == 0


@pytest.mark.parametrize("name", list(BAD))
def test_bad_arguments(name, device):
    op, args = BAD[name]
    check_raises_like_torch(getattr(F, op), getattr(TF, op), args(device))


def test_int64_offsets(device):
    """A view whose element offsets pass 2**31: PReLU reads it through strides
    (the storage is allocated lazily; only the touched pages are committed)."""
    x = huge_view((2, 3, 4), (2**31 + 8, 4, 1), torch.float16, device)
    assert needs_int64(x)
    w = torch.rand(3, dtype=torch.float16, device=device)
    x_ref = x.detach().cpu().double()
    y = F.prelu(x, w)
    assert_close(y, TF.prelu(x_ref, w.cpu().double()), torch.float16, "elementwise")
    grad_x, grad_w = torch.autograd.grad(F.prelu(x.requires_grad_(), w.requires_grad_()), (x, w), torch.ones_like(y))
    x_ref.requires_grad_()
    w_ref = w.detach().cpu().double().requires_grad_()
    ref = torch.autograd.grad(TF.prelu(x_ref, w_ref), (x_ref, w_ref), torch.ones(2, 3, 4, dtype=torch.float64))
    assert_close(grad_x, ref[0], torch.float16, "elementwise")
    assert_close(grad_w, ref[1], torch.float16, "reduction")


@pytest.mark.parametrize("module,twin,args", [("ReLU", torch.nn.ReLU, ()), ("LeakyReLU", torch.nn.LeakyReLU, (0.2,)),
                                               ("PReLU", torch.nn.PReLU, (5,))])
def test_modules(module, twin, args, device):
    ours = getattr(nnlib, module)(*args).to(device)
    ref = twin(*args).to(device)
    assert isinstance(ours, twin)
    ours.load_state_dict(ref.state_dict())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    assert repr(ours) == repr(ref)
    x = torch.randn(2, 5, 3, 3, device=device)
    with count_launches() as launches:
        out = ours(x)
    assert launches.total > 0
    assert_close(out, ref(x), torch.float32, "elementwise")
