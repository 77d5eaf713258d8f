"""batch / layer / instance / group norm against the float64 torch reference:
outputs, every gradient and the running stats after the call, in every mode,
rank, layout and dtype; group counts that are not powers of two; reductions
larger than a block and split across programs (the looped path) and sets read
once (the single-read path); the fused activation and residual; N = 0; the
launch and device-op budgets of every mode; bad arguments (torch's exception
class, running stats left untouched); the modules against their torch twins."""
import functools
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as TF
import triton
import triton.language as tl

import nnlib
import nnlib.functional as F
from kernels.norm import _plan as norm_plan
from kernels._reduce import tickets
from kernels._runtime import clear_plan_caches, count_launches, needs_int64
from kernels.activation import activation_code
from tests.reference import (FLOAT_DTYPES, assert_close, check_double_backward, check_op, check_raises_like_torch,
                             device_ops, epilogue, exact_copy, make_input, rel_err)


def _params(C, dtype, device, affine=True, bias=True, shape=None):
    """weight / bias leaves (requires_grad) of C elements (or ``shape``), or None."""
    if not affine:
        return None, None
    shape = shape or (C,)
    w = (torch.rand(shape) + 0.5).to(dtype).to(device).requires_grad_()
    b = torch.randn(shape).to(dtype).to(device).requires_grad_() if bias else None
    return w, b


def _running(C, dtype, device):
    return (torch.randn(C).to(dtype).to(device), (torch.rand(C) + 0.5).to(dtype).to(device))


def _check_running(ours, ref, dtype):
    for got, want, name in zip(ours, ref, ("running_mean", "running_var")):
        assert got.dtype == want.dtype or want.dtype == torch.float64
        assert_close(got, want, dtype, "reduction", name)


def _check_batch_norm(x, w, b, running, training, momentum=0.1, eps=1e-5, activation=None, slope=0.01,
                      residual=None, kind="reduction"):
    """F.batch_norm against torch on float64 copies, running stats included."""
    rm, rv = running if running is not None else (None, None)
    ref_rm, ref_rv = (None, None) if running is None else (rm.detach().cpu().double(), rv.detach().cpu().double())
    inputs = [x, w, b, residual]
    out, _ = check_op(
        lambda x_, w_, b_, r_: F.batch_norm(x_, rm, rv, w_, b_, training, momentum, eps, activation=activation,
                                            negative_slope=slope, residual=r_),
        lambda x_, w_, b_, r_: epilogue(TF.batch_norm(x_, ref_rm, ref_rv, w_, b_, training, momentum, eps),
                                         activation, slope, r_),
        inputs, kind, dtype=x.dtype)
    if running is not None:
        _check_running((rm, rv), (ref_rm, ref_rv), x.dtype)
    return out


# ---------------------------------------------------------------------------
# Batch norm

BN_SHAPES = [(5, 3), (2, 3, 7), (3, 5, 7, 9), (2, 3, 3, 4, 5)]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mode", ["train", "train-no-running-stats", "eval"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=[f"rank{len(s)}" for s in BN_SHAPES])
def test_batch_norm_modes(shape, mode, affine, device):
    C = shape[1]
    x = make_input(shape, torch.float32, device, requires_grad=True)
    w, b = _params(C, torch.float32, device, affine)
    running = None if mode == "train-no-running-stats" else _running(C, torch.float32, device)
    _check_batch_norm(x, w, b, running, training=mode != "eval", momentum=0.3)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_batch_norm_layouts_and_dtypes(layout, dtype, device):
    x = make_input((3, 5, 7, 9), dtype, device, layout, requires_grad=True)
    w, b = _params(5, dtype, device)
    out = _check_batch_norm(x, w, b, _running(5, dtype, device), training=True)
    # As torch: channels_last stays channels_last, other layouts give a contiguous output.
    assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                             else torch.contiguous_format)


def test_batch_norm_weight_without_bias_and_bias_without_weight(device):
    x = make_input((4, 3, 5), torch.float32, device, requires_grad=True)
    w = torch.rand(3, device=device, requires_grad=True)
    _check_batch_norm(x, w, None, None, training=True)
    _check_batch_norm(x, None, w, None, training=True)


def test_batch_norm_batch_one(device):
    """(1, C) in training has one value per channel: ValueError, as torch; (1, C, L)
    and eval mode are fine."""
    rm, rv = _running(3, torch.float32, device)
    saved = rm.clone(), rv.clone()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(torch.randn(1, 3, device=device), rm, rv, training=True)
    assert torch.equal(rm, saved[0]) and torch.equal(rv, saved[1])
    x = make_input((1, 3, 5), torch.float32, device, requires_grad=True)
    _check_batch_norm(x, None, None, _running(3, torch.float32, device), training=True)
    x = make_input((1, 3), torch.float32, device, requires_grad=True)
    _check_batch_norm(x, *_params(3, torch.float32, device), _running(3, torch.float32, device), training=False)


@pytest.mark.parametrize("activation,slope", [("relu", 0.01), ("leaky_relu", 0.2), ("leaky_relu", -0.5)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_fused_residual_activation(layout, activation, slope, device):
    """relu(bn(x) + identity) in one pass: gradients of x, weight, bias and the
    residual (the gradient before the residual add, through the activation)."""
    x = make_input((3, 4, 5, 7), torch.float32, device, layout, requires_grad=True)
    residual = make_input((3, 4, 5, 7), torch.float32, device, "sliced", requires_grad=True)
    _check_batch_norm(x, *_params(4, torch.float32, device), _running(4, torch.float32, device), training=True,
                      activation=activation, slope=slope, residual=residual)
    _check_batch_norm(x, *_params(4, torch.float32, device), _running(4, torch.float32, device), training=False,
                      activation=activation, slope=slope, residual=residual)


@pytest.mark.parametrize("sync", [False, True], ids=["batch_norm", "sync_batch_norm"])
@pytest.mark.parametrize("activation,slope,residual_kept", [
    (None, 0.0, False), ("relu", 0.0, False), ("leaky_relu", 0.2, True), ("leaky_relu", -0.3, True)])
def test_fused_residual_is_not_kept_for_the_backward(activation, slope, residual_kept, sync, device, monkeypatch):
    """A fused residual is kept for the backward only where the activation's mask
    needs it: without an activation nothing reads it, and after a relu the backward
    reads the output, as torch's relu does, which the next layer keeps anyway (a
    downsampling ResNet block's shortcut is kept by nothing else); torch's
    leaky_relu keeps its input, so ours keeps the residual. Gradients stay torch's."""
    from kernels.norm import sync as sync_norm
    if sync:        # SyncNormFunction in one process: its gathers and all-reduce are the identity
        monkeypatch.setattr(sync_norm, "_gather", lambda moments, group, world: moments[None])
        monkeypatch.setattr(sync_norm.dist, "all_reduce", lambda tensor, group=None: None)
    x = make_input((3, 4, 5, 7), torch.float32, device, "channels_last", requires_grad=True)
    residual = make_input((3, 4, 5, 7), torch.float32, device, "channels_last", requires_grad=True)
    w, b = _params(4, torch.float32, device)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        if sync:
            y = sync_norm.SyncNormFunction.apply(x, w, b, residual, None, None, None, 1e-5, 0.1,
                                                 activation_code(activation, "batch_norm"), slope, None, 1)
        else:
            y = F.batch_norm(x, None, None, w, b, True, activation=activation, negative_slope=slope,
                             residual=residual)
    kept = {t.untyped_storage().data_ptr() for t in saved}
    assert (residual.untyped_storage().data_ptr() in kept) == residual_kept
    assert (y.untyped_storage().data_ptr() in kept) == (activation is not None and not residual_kept)
    reference = epilogue(TF.batch_norm(x.double(), None, None, w.double(), b.double(), True) + residual.double(),
                         activation, slope)
    probe = torch.randn_like(y)
    for ours, theirs in zip(torch.autograd.grad(y, (x, w, b, residual), probe),
                            torch.autograd.grad(reference, (x, w, b, residual), probe.double())):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_fused_relu_residual_second_derivatives_as_torchs(device):
    """After a fused relu the backward reads the mask from the output (the residual
    is not kept): a gradient penalty differentiated with respect to the residual
    gives torch's zeros, and a NaN that reaches the relu passes the gradient, in the
    first and second derivatives, as torch's relu does."""
    def run(f):
        torch.manual_seed(0)
        x = torch.randn(2, 3, 4, device=device, requires_grad=True)
        w, b = torch.randn(3, device=device, requires_grad=True), torch.randn(3, device=device)
        r = torch.randn(2, 3, 4, device=device)
        r[0, 1, 2] = float("nan")
        r.requires_grad_()
        y = f(x, w, b, r)
        gx, = torch.autograd.grad(y, x, torch.randn_like(y), create_graph=True)
        return (gx[1], *torch.autograd.grad((gx[1] ** 2).sum(), (w, r)))      # sample 1 has no NaN
    ours = run(lambda x, w, b, r: F.batch_norm(x, None, None, w, b, True, activation="relu", residual=r))
    theirs = run(lambda x, w, b, r: TF.relu(TF.batch_norm(x, None, None, w, b, True) + r))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# Group norm

GN_CASES = [(6, 1), (6, 6), (6, 3), (12, 4), (6, 2), (5, 5)]   # (C, G): one group, C groups, C / G odd


def _check_group_norm(x, G, w, b, eps=1e-5, activation=None, slope=0.01):
    return check_op(
        lambda x_, w_, b_: F.group_norm(x_, G, w_, b_, eps, activation=activation, negative_slope=slope),
        lambda x_, w_, b_: epilogue(TF.group_norm(x_, G, w_, b_, eps), activation, slope),
        [x, w, b], "reduction", dtype=x.dtype)[0]


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("C,G", GN_CASES)
def test_group_norm_groups_and_ranks(C, G, rank, device):
    shape = {2: (4, C), 3: (3, C, 7), 4: (2, C, 5, 7), 5: (2, C, 3, 4, 5)}[rank]
    x = make_input(shape, torch.float32, device, requires_grad=True)
    _check_group_norm(x, G, *_params(C, torch.float32, device, affine=rank != 3))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_group_norm_layouts_and_dtypes(layout, dtype, device):
    x = make_input((2, 12, 5, 7), dtype, device, layout, requires_grad=True)
    out = _check_group_norm(x, 4, *_params(12, dtype, device))
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------
# Layer norm

def _check_layer_norm(x, shape, w, b, eps=1e-5, activation=None, slope=0.01):
    return check_op(
        lambda x_, w_, b_: F.layer_norm(x_, shape, w_, b_, eps, activation=activation, negative_slope=slope),
        lambda x_, w_, b_: epilogue(TF.layer_norm(x_, shape, w_, b_, eps), activation, slope),
        [x, w, b], "reduction", dtype=x.dtype)[0]


def test_strided_parameters_and_running_stats(device):
    """Sliced / expanded weight, bias and running stats are read through their
    strides (one small copy), not as if contiguous."""
    x = make_input((2, 4, 5, 3), torch.float32, device, requires_grad=True)
    w = (torch.rand(8) + 0.5).to(device)[::2].requires_grad_()
    b = torch.tensor(0.5, device=device).expand(4)
    _check_batch_norm(x, w, b, None, True)
    rm, rv = torch.randn(8, device=device)[::2], (torch.rand(8, device=device) + 0.5)[::2]
    _check_batch_norm(x, w, b, (rm, rv), False)
    _check_batch_norm(x, w, b, (rm, rv), True)      # updated in place through their strides
    _check_group_norm(x, 2, w, b)
    lw = (torch.rand(5, 6) + 0.5).to(device)[:, ::2].requires_grad_()
    lb = torch.randn(10, 3).to(device)[::2].requires_grad_()
    _check_layer_norm(x, (5, 3), lw, lb)


@pytest.mark.parametrize("affine", ["weight+bias", "weight", "none"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_layer_norm_trailing_dims(dims, affine, device):
    x = make_input((2, 6, 5, 7), torch.float32, device, requires_grad=True)
    shape = x.shape[4 - dims:]
    w, b = _params(0, torch.float32, device, affine != "none", affine == "weight+bias", shape=tuple(shape))
    _check_layer_norm(x, shape, w, b)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_layer_norm_layouts_and_dtypes(layout, dtype, device):
    x = make_input((3, 4, 5, 7), dtype, device, layout, requires_grad=True)
    for dims in (1, 3):
        shape = tuple(x.shape[4 - dims:])
        out = _check_layer_norm(x, shape, *_params(0, dtype, device, shape=shape))
        assert out.is_contiguous()     # as torch


@pytest.mark.parametrize("name", ["layer", "group", "batch"])
def test_upstream_gradient_in_any_layout(name, device):
    """The gradient autograd hands the backward may have any layout (here
    channels_last, or transposed, where the output is contiguous): the backward
    reads it through strides or copies it, as it does x."""
    x = make_input((2, 6, 4, 5), torch.float32, device, "channels_last", requires_grad=True)
    ours = {"layer": lambda t: F.layer_norm(t, t.shape[1:]), "group": lambda t: F.group_norm(t, 3),
            "batch": lambda t: F.batch_norm(t, None, None, training=True)}[name]
    theirs = {"layer": lambda t: TF.layer_norm(t, t.shape[1:]), "group": lambda t: TF.group_norm(t, 3),
              "batch": lambda t: TF.batch_norm(t, None, None, training=True)}[name]
    for layout in ("channels_last", "transposed"):
        dy = make_input((2, 6, 4, 5), torch.float32, device, layout)
        (dx,) = torch.autograd.grad(ours(x), x, dy)
        xr = x.detach().double().cpu().requires_grad_()
        (ref,) = torch.autograd.grad(theirs(xr), xr, dy.double().cpu())
        assert_close(dx, ref, torch.float32, "reduction", f"dx ({layout} dy)")


def test_layer_norm_rows(device):
    """A transformer-style (rows, features) input and a 1-D input."""
    x = make_input((37, 48), torch.float32, device, requires_grad=True)
    _check_layer_norm(x, (48,), *_params(0, torch.float32, device, shape=(48,)))
    x = make_input((9,), torch.float32, device, requires_grad=True)
    _check_layer_norm(x, [9], *_params(0, torch.float32, device, shape=(9,)))


# ---------------------------------------------------------------------------
# Instance norm

def _check_instance_norm(x, w, b, running, use_input_stats, momentum=0.1, eps=1e-5, activation=None, slope=0.01):
    rm, rv = running if running is not None else (None, None)
    ref_rm, ref_rv = (None, None) if running is None else (rm.detach().cpu().double(), rv.detach().cpu().double())
    out, _ = check_op(
        lambda x_, w_, b_: F.instance_norm(x_, rm, rv, w_, b_, use_input_stats, momentum, eps,
                                           activation=activation, negative_slope=slope),
        lambda x_, w_, b_: epilogue(TF.instance_norm(x_, ref_rm, ref_rv, w_, b_, use_input_stats, momentum, eps),
                                     activation, slope),
        [x, w, b], "reduction", dtype=x.dtype)
    if running is not None:
        _check_running((rm, rv), (ref_rm, ref_rv), x.dtype)
    return out


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mode", ["input-stats", "input-stats+running", "running"])
@pytest.mark.parametrize("shape", [(3, 4, 9), (2, 3, 5, 7), (2, 3, 3, 4, 5)], ids=["rank3", "rank4", "rank5"])
def test_instance_norm_modes(shape, mode, affine, device):
    C = shape[1]
    x = make_input(shape, torch.float32, device, requires_grad=True)
    running = None if mode == "input-stats" else _running(C, torch.float32, device)
    _check_instance_norm(x, *_params(C, torch.float32, device, affine), running, mode != "running", momentum=0.3)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_instance_norm_channels_last(dtype, device):
    x = make_input((2, 5, 6, 7), dtype, device, "channels_last", requires_grad=True)
    out = _check_instance_norm(x, *_params(5, dtype, device), _running(5, dtype, device), True)
    assert out.is_contiguous()         # as torch


# ---------------------------------------------------------------------------
# Every norm: fused activation, mixed precision, large and split reductions, N = 0

def _norm_call(name, x, dtype, device, activation=None, slope=0.01):
    """Run one norm on x through check_op with parameters of ``dtype``."""
    C = x.shape[1]
    if name == "batch_norm":
        return _check_batch_norm(x, *_params(C, dtype, device), _running(C, dtype, device), True,
                                 activation=activation, slope=slope)
    if name == "group_norm":
        return _check_group_norm(x, 3 if C % 3 == 0 else 1, *_params(C, dtype, device), activation=activation,
                                 slope=slope)
    if name == "instance_norm":
        return _check_instance_norm(x, *_params(C, dtype, device), _running(C, dtype, device), True,
                                    activation=activation, slope=slope)
    shape = tuple(x.shape[1:])
    return _check_layer_norm(x, shape, *_params(0, dtype, device, shape=shape), activation=activation, slope=slope)


NORMS = ["batch_norm", "group_norm", "instance_norm", "layer_norm"]


@pytest.mark.parametrize("activation,slope", [("relu", 0.01), ("leaky_relu", -0.3)])
@pytest.mark.parametrize("name", ["group_norm", "instance_norm", "layer_norm"])
def test_fused_activation(name, activation, slope, device):
    x = make_input((2, 6, 5, 3), torch.float32, device, requires_grad=True)
    _norm_call(name, x, torch.float32, device, activation, slope)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NORMS)
def test_mixed_precision_parameters(name, dtype, device):
    """fp16 / bf16 input with fp32 weight, bias and running stats (autocast style):
    the output keeps the input's dtype, parameter gradients their fp32 dtype."""
    x = make_input((3, 6, 5, 7), dtype, device, requires_grad=True)
    out = _norm_call(name, x, torch.float32, device)
    assert out.dtype == dtype


@pytest.fixture
def plans(monkeypatch):
    """Records the looped and single-read plans that the calls use (the plan caches
    cleared before and after, so that the calls plan under the test's constants)."""
    recorded = []

    def recording(planner):
        def plan(*args, **kwargs):
            recorded.append(planner(*args, **kwargs))
            return recorded[-1]
        return plan
    for name in ("loop_plan", "set_plan"):
        monkeypatch.setattr(norm_plan, name, recording(getattr(norm_plan, name)))
    clear_plan_caches()
    yield recorded
    clear_plan_caches()


@pytest.mark.parametrize("name", NORMS)
def test_reduction_larger_than_a_block(name, plans, device):
    """H * W = 131 * 129: more than a tile, so the looped kernels run (a set of group
    norm, instance norm and layer norm too large for the single-read path) and
    their loop over blocks runs more than once."""
    x = make_input((2, 3, 131, 129), torch.float16, device, requires_grad=True)
    with count_launches() as launches:
        _norm_call(name, x, torch.float16, device)
    assert launches.counts["_stats_kernel"] == 1 and not launches.counts["_set_fwd_kernel"]
    loops = [p for p in plans if isinstance(p, norm_plan.LoopPlan)]
    assert loops and all(p.s_per_prog > p.BLOCK_S or p.n_per_prog > 1 for p in loops)


@pytest.fixture
def split(monkeypatch, plans):
    """Small tiles and a large program target, so that every reduction is split over
    n, over S and over channel slices of a group, and merged over several tiles of
    chunks, and the looped path runs for every norm; records the plans used."""
    for name, value in (("INTERPRETER_TILE", 64), ("TILE", 64), ("INTERPRETER_TARGET_PROGRAMS", 64),
                        ("TARGET_PROGRAMS", 64), ("MIN_PROGRAM_ELEMENTS", 1), ("MERGE_TILE", 64),
                        ("STAT_MERGE_TILE", 16), ("SET_LIMIT", 0)):
        monkeypatch.setattr(norm_plan, name, value)
    return plans


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", NORMS)
def test_split_reductions(name, layout, split, device):
    x = make_input((2, 6, 9, 11), torch.float32, device, layout, requires_grad=True)
    _norm_call(name, x, torch.float32, device, "leaky_relu", 0.1)
    split = [p for p in split if isinstance(p, norm_plan.LoopPlan)]
    if name != "layer_norm":                               # layer norm's S is 1
        assert max(p.num_s_chunks for p in split) > 1
    if name != "batch_norm" or layout == "contiguous":     # channels_last batch norm folds n into S
        assert max(p.num_n_chunks for p in split) > 1
    if name == "layer_norm" or (name == "group_norm" and layout == "contiguous"):
        assert max(p.BPG for p in split) > 1, "a group spans several channel slices"


def test_split_batch_norm_residual(split, device):
    """The fused tail's backward across programs: the reduction pass writes g, the dx pass reads it."""
    x = make_input((2, 6, 9, 11), torch.float16, device, requires_grad=True)
    residual = make_input((2, 6, 9, 11), torch.float16, device, requires_grad=True)
    _check_batch_norm(x, *_params(6, torch.float32, device), _running(6, torch.float32, device), True,
                      activation="relu", residual=residual)
    assert max(p.num_n_chunks * p.num_s_chunks for p in split) >= 4


def test_split_merge_far_from_zero(split, monkeypatch, device):
    """Batch statistics merged from many partials, in several tiles of chunks, of data
    far from zero (mean 1e4, unit spread): the mean is rounded at its size once (it
    was once per tile: up to 1.3 ulps of 1e4 off here), within an ulp of float64's."""
    for prefix in ("", "INTERPRETER_"):
        monkeypatch.setattr(norm_plan, f"{prefix}TARGET_PROGRAMS", 256)
    ulp = 2.0 ** -10            # float32's spacing at 1e4
    for seed in range(3):
        torch.manual_seed(seed)
        x = (torch.randn(4, 8, 16, 16, device=device) + 1e4).contiguous(memory_format=torch.channels_last)
        running_mean, running_var = torch.zeros(8, device=device), torch.ones(8, device=device)
        F.batch_norm(x, running_mean, running_var, training=True, momentum=1.0)
        assert (running_mean.double() - x.double().mean((0, 2, 3))).abs().max() <= ulp, seed
        torch.testing.assert_close(running_var.double(), x.double().var((0, 2, 3)), atol=0, rtol=1e-4)
    merged = [p for p in split if isinstance(p, norm_plan.LoopPlan)]
    assert max(p.chunks(False) for p in merged) >= 8 * merged[0].blocks("statistics")["BLOCK_KG"]   # 8 tiles


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("name", ["BatchNorm2d", "InstanceNorm2d"])
def test_split_running_statistics_move_once(name, momentum, split, device):
    """Running statistics and num_batches_tracked over several programs (channel
    blocks, chunks of n and S): the last program of each set moves them, once per
    call, as torch's modules do over two training calls (momentum=None: the
    cumulative average reads the count)."""
    kwargs = {"momentum": momentum} if name == "BatchNorm2d" else {"momentum": momentum, "track_running_stats": True}
    ours, twin = getattr(nnlib, name)(6, **kwargs).to(device), getattr(torch.nn, name)(6, **kwargs).to(device)
    for _ in range(2):
        x = torch.randn(2, 6, 9, 11, device=device)
        assert_close(ours(x), twin(x), torch.float32, "reduction", "output")
    for key, value in twin.state_dict().items():     # num_batches_tracked: 2 (instance norm's stays 0)
        assert_close(ours.state_dict()[key], value, torch.float32, "reduction", key)
    assert max(p.num_group_blocks for p in split if isinstance(p, norm_plan.LoopPlan)) > 1


@pytest.mark.parametrize("name,shape", [("layer_norm", (7, 3, 5)), ("group_norm", (7, 6, 5))])
def test_single_read_on_several_programs(name, shape, plans, monkeypatch, device):
    """The single-read path with its samples spread over several programs: the
    parameter gradients are a column sum of per-program partials (second launch)."""
    for prefix in ("INTERPRETER_", ""):        # the interpreter's tiling and a GPU's
        monkeypatch.setattr(norm_plan, f"{prefix}TARGET_PROGRAMS", 64)
    for name_of_tile in ("INTERPRETER_TILE", "SET_TILE"):
        monkeypatch.setattr(norm_plan, name_of_tile, 16)
    x = make_input(shape, torch.float32, device, requires_grad=True)
    with count_launches() as launches:
        _norm_call(name, x, torch.float32, device, "relu")
    assert launches.counts["_set_fwd_kernel"] == 1 and launches.counts["_set_bwd_kernel"] == 1
    assert launches.counts["_sum_partials_kernel"] == 1 and launches.total == 3
    assert max(p.num_n_chunks for p in plans if isinstance(p, norm_plan.SetPlan)) > 1


def test_launch_plans_cached_per_layout(plans, device):
    """Launch plans are cached by layout: one shape in two layouts plans twice and
    is right both times (its strides are in the key); a repeated call plans nothing."""
    w, b = _params(6, torch.float32, device)
    planned = []
    for layout in ("contiguous", "channels_last", "contiguous"):
        x = make_input((3, 6, 5, 7), torch.float32, device, layout, requires_grad=True)
        _check_batch_norm(x, w, b, _running(6, torch.float32, device), True)
        planned.append(len(plans) - sum(planned))
    assert planned[0] and planned[1] and not planned[2], planned


def test_launch_plans_follow_their_arguments(device):
    """A plan binds its scalar arguments and flags (momentum, eps, slope, which
    parameters and gradients there are): calls of one layout that differ in only one
    of them each get their own plan, and each is right against torch."""
    shape = (3, 6, 5, 7)
    x = make_input(shape, torch.float32, device, "channels_last", requires_grad=True)
    residual = make_input(shape, torch.float32, device, "channels_last", requires_grad=True)
    w, b = _params(6, torch.float32, device)
    for momentum, eps, slope in ((0.1, 1e-5, 0.1), (0.5, 1e-5, 0.1), (0.1, 0.5, 0.1), (0.1, 1e-5, 0.4)):
        _check_batch_norm(x, w, b, _running(6, torch.float32, device), True, momentum, eps, "leaky_relu", slope,
                          residual)
        _check_batch_norm(x, w, b, _running(6, torch.float32, device), False, momentum, eps, "leaky_relu", slope,
                          residual)
    for weight, bias in ((w, b), (w, None), (None, None)):
        _check_batch_norm(x, weight, bias, None, True)
        _check_group_norm(x, 3, weight, bias, eps=0.5)
    x.requires_grad_(False)
    _check_batch_norm(x, w, b, None, True)      # parameter gradients only


@triton.jit
def _store_scalar(out_ptr, value):
    tl.store(out_ptr, value)


def _float_arguments_keep_their_sign(device) -> bool:
    """False where a kernel receives a float argument of -0.0 as 0.0: triton 3.6's
    interpreter folds a zero scalar into a null constant; compiled kernels get its bits."""
    out = torch.zeros(1, device=device)
    _store_scalar[(1,)](out, -0.0)
    return bool(torch.signbit(out))


def test_launch_plans_tell_negative_zero_from_zero(device):
    """A plan that binds a float is keyed by its sign too (-0.0 == 0.0 as floats):
    a momentum of -0.0 after 0.0 moves a -0.0 running mean as torch does, and a
    fused slope of -0.0 after 0.0 gives the signs of zero torch's leaky_relu gives."""
    if not _float_arguments_keep_their_sign(device):
        pytest.skip("this triton's interpreter passes a float argument of -0.0 as 0.0")
    x = torch.ones(2, 3, 4, device=device)
    x[:, :, 0] = 2.0

    def running_signs(f, momentum):
        rm, rv = torch.full((3,), -0.0, device=device), torch.ones(3, device=device)
        f(x, rm, rv, None, None, True, momentum, 1e-5)
        return torch.signbit(rm).tolist()
    for momentum in (0.0, -0.0, 0.0):
        assert running_signs(F.batch_norm, momentum) == running_signs(TF.batch_norm, momentum), momentum
    for slope in (0.0, -0.0, 0.0):
        ours = F.group_norm(x, 3, activation="leaky_relu", negative_slope=slope)
        assert torch.equal(torch.signbit(ours), torch.signbit(TF.leaky_relu(TF.group_norm(x, 3), slope))), slope


@pytest.mark.parametrize("momentum", [6.4e-233, 1e-40, 1e-3])
def test_running_stats_of_a_tiny_momentum(momentum, device):
    """bf16 running statistics moved by a momentum below fp32's normal range (the
    kernels compute in fp32) stay what torch leaves them."""
    x = make_input((4, 3, 5), torch.bfloat16, device, requires_grad=True)
    _check_batch_norm(x, None, None, _running(3, torch.bfloat16, device), True, momentum)
    _check_instance_norm(x, None, None, _running(3, torch.bfloat16, device), True, momentum)


def test_output_strides_as_torch(device):
    """Output strides (cached per layout) are torch's CPU kernels' in every layout
    (on every device: torch's CUDA group norm gives a contiguous output where its
    CPU one keeps channels_last), batch norm's rule included: a non-contiguous
    channels_last-dense input whose suggested memory format is contiguous still
    gives a channels_last output."""
    ambiguous = torch.randn(4, device=device).as_strided((1, 2, 1, 2), (4, 1, 1, 2))
    inputs = [make_input((2, 4, 3, 5), torch.float32, device, layout)
              for layout in ("contiguous", "channels_last", "transposed", "sliced")] + [ambiguous]
    inputs += [torch.randn(shape, device=device) for shape in ((2, 4, 1, 1), (2, 1, 3, 5))]    # both formats at once
    for x in inputs:
        cpu = exact_copy(x, cpu=True)
        pairs = [(F.batch_norm(x, None, None, training=True), TF.batch_norm(cpu, None, None, training=True)),
                 (F.group_norm(x, 1), TF.group_norm(cpu, 1))]
        if x[0, 0].numel() > 1:         # instance norm needs more than one value per instance
            pairs.append((F.instance_norm(x), TF.instance_norm(cpu)))
        for ours, theirs in pairs:
            assert ours.stride() == theirs.stride(), (x.shape, x.stride())


@pytest.mark.parametrize("shape", [(32, 64, 112, 112), (32, 256, 56, 56), (32, 2048, 7, 7)])
def test_gpu_plan_splits_resnet_batch_norm(shape):
    """The GPU tiling at ResNet-50 sizes: batch norm runs on many more programs than
    C, each looping over tiles of at most TILE elements (NCHW and channels_last)."""
    N, C, H, W = shape
    for stride_c, stride_s, sizes in ((H * W, 1, (N, C, H * W)), (1, C, (1, C, N * H * W))):
        plan = norm_plan.loop_plan(sizes, C, stride_c, stride_s, interpreter=False)
        assert plan.num_n_chunks * plan.num_s_chunks > 1, "the reduction over (N, H, W) is split"
        assert plan.grid[0] >= max(norm_plan.TARGET_PROGRAMS // 2, 4 * C // plan.BLOCK_C)
        assert plan.BLOCK_S * plan.BLOCK_C <= norm_plan.TILE


def test_split_is_deterministic(split, device):
    """Partials and a fixed-order merge: two runs give bitwise equal results."""
    x = make_input((2, 6, 9, 11), torch.float32, device, "channels_last", requires_grad=True)
    w, b = _params(6, torch.float32, device)
    results = []
    for _ in range(2):
        y = F.batch_norm(x, None, None, w, b, True, activation="relu")
        results.append((y, *torch.autograd.grad(y, (x, w, b), torch.ones_like(y))))
    for first, second in zip(*results):
        assert torch.equal(first, second)


def test_statistics_of_offset_data(device):
    """Values around 1e3 with unit spread: fp32 sums of squares would cancel
    catastrophically; Welford merges keep the variance."""
    x = (1000.0 + make_input((4, 3, 33, 31), torch.float32, device)).requires_grad_()
    w, b = (t.detach() for t in _params(3, torch.float32, device))   # their gradients carry fp32's 6e-5 ulp at 1e3
    _check_batch_norm(x, w, b, _running(3, torch.float32, device), True)
    _check_group_norm(x, 1, w, b)


def test_statistics_of_data_whose_squares_overflow(split, device):
    """Values around 2e19 (their squares pass fp32's range; the variance does not),
    each statistic merged from several chunks: outputs and running variance as
    float64's, not NaN (the merge once took 0 * inf at its first chunk)."""
    x = 2e19 * (1 + 0.01 * make_input((2, 6, 5, 7), torch.float32, device))
    rm, rv = torch.zeros(6, device=device), torch.ones(6, device=device)
    y = F.batch_norm(x, rm, rv, training=True, momentum=1.0)
    torch.testing.assert_close(y.double(), TF.batch_norm(x.double(), None, None, training=True), atol=1e-4, rtol=0)
    torch.testing.assert_close(rv.double(), x.double().var((0, 2, 3)), atol=0, rtol=1e-4)
    for ours, theirs in ((F.group_norm(x, 3), TF.group_norm(x.double(), 3)),
                         (F.instance_norm(x), TF.instance_norm(x.double())),
                         (F.layer_norm(x, x.shape[1:]), TF.layer_norm(x.double(), x.shape[1:]))):
        torch.testing.assert_close(ours.double(), theirs, atol=1e-4, rtol=0)


def test_variance_of_a_set_holding_nan_is_nan(device):
    """A NaN in a set makes its variance NaN, as torch's (Triton's maximum, which
    clamps the variance at 0, drops a NaN unless told to keep it): the running
    variance of a batch norm (the looped statistics) and the rstd of the
    single-read kernel."""
    from kernels.norm import ops
    x = torch.randn(2, 3, 5, device=device)
    x[0, 1, 2] = float("nan")
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    F.batch_norm(x, rm, rv, training=True, momentum=1.0)
    assert rv[1].isnan() and not rv[[0, 2]].isnan().any()
    _, _, rstd = ops.norm_single_read(x, None, None, 1, 1, 3, False, 1e-5, 0, 0.0)
    assert rstd.view(2, 3)[0, 1].isnan() and not rstd.view(2, 3)[1].isnan().any()


# ---------------------------------------------------------------------------
# Launch and device-op budgets


def _budget_calls(device):
    """name: (forward launches, backward launches, call(x, w, b, r) -> y, x's shape, channels_last)."""
    C = 6

    def running():
        return torch.zeros(C, device=device), torch.ones(C, device=device)
    rm, rv = running()
    rc, vc = running()
    ri, vi = running()
    tracked = torch.zeros((), dtype=torch.long, device=device)
    # A GPU spreads a single read's samples over programs, whose parameter-gradient
    # partials a column sum adds up (a second launch); the interpreter runs one program.
    single_read_backward = 1 if torch.device(device).type == "cpu" else 2
    return {
        "batch-train-running": (2, 2, lambda x, w, b, r: F.batch_norm(x, rm, rv, w, b, True), (4, C, 5, 7), False),
        "batch-cumulative-average": (2, 2, lambda x, w, b, r: F.batch_norm(x, rc, vc, w, b, True, None,
                                                                         num_batches_tracked=tracked),
                                     (4, C, 5, 7), True),
        "batch-eval": (1, 1, lambda x, w, b, r: F.batch_norm(x, rm, rv, w, b, False), (4, C, 5, 7), True),
        "batch-residual-relu": (2, 2, lambda x, w, b, r: F.batch_norm(x, rm, rv, w, b, True, activation="relu",
                                                                     residual=r), (4, C, 5, 7), True),
        "batch-eval-residual-leaky": (1, 1, lambda x, w, b, r: F.batch_norm(
            x, rm, rv, w, b, False, activation="leaky_relu", negative_slope=-0.5, residual=r), (4, C, 5, 7), False),
        "instance-running": (2, single_read_backward, lambda x, w, b, r: F.instance_norm(x, ri, vi, w, b, True), (4, C, 5, 7), False),
        "group-single-read": (1, single_read_backward, lambda x, w, b, r: F.group_norm(x, 3, w, b, activation="relu"), (4, C, 5, 7),
                              True),
        "layer-single-read": (1, 1, lambda x, w, b, r: F.layer_norm(x, (C,), w, b), (4, 5, C), False),
        "layer-looped": (2, 2, lambda x, w, b, r: F.layer_norm(x, (C,), w, b), (4, 5, C), False),
    }


@pytest.mark.parametrize("name", list(_budget_calls("cpu")))
def test_launch_and_device_op_budgets(name, monkeypatch, device):
    """Forward and backward of every mode in at most the launches the design
    promises and no other device op beyond allocating outputs and gradients
    (running statistics, num_batches_tracked and the cumulative average,
    parameter-gradient sums and casts all inside the kernels); the ticket
    counters are back at zero after each launch."""
    if name == "layer-looped":
        monkeypatch.setattr(norm_plan, "SET_LIMIT", 0)
        clear_plan_caches()
    fwd_budget, bwd_budget, call, shape, channels_last = _budget_calls(device)[name]
    C = 6
    x = make_input(shape, torch.float32, device, "channels_last" if channels_last else "contiguous",
                   requires_grad=True)
    w, b = _params(C, torch.float32, device)
    r = make_input(shape, torch.float32, device, requires_grad=True)
    inputs = [x, w, b] + ([r] if "residual" in name else [])
    warm = call(x, w, b, r)     # the ticket counters' first (one-time) allocation
    torch.autograd.grad(warm, inputs, torch.ones_like(warm))
    with count_launches() as forward, device_ops() as forward_ops:
        y = call(x, w, b, r)
    dy = torch.randn_like(y)
    with count_launches() as backward, device_ops() as backward_ops:
        torch.autograd.grad(y, inputs, dy)
    assert forward.total == fwd_budget and not forward_ops, (forward, forward_ops)
    assert backward.total == bwd_budget and not backward_ops, (backward, backward_ops)
    assert not tickets(x.device, 1).any(), "a ticket counter was left non-zero"
    clear_plan_caches()


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_empty_1d(training, device):
    """An empty 1-D input (running stats of shape (0,)) returns an empty tensor, as torch."""
    x = torch.randn(0, device=device, requires_grad=True)
    rm, rv = torch.zeros(0, device=device), torch.ones(0, device=device)
    with count_launches() as launches:
        y = F.batch_norm(x, rm, rv, training=training)
    expected = TF.batch_norm(x.detach().cpu(), rm.cpu(), rv.cpu(), training=training)
    assert y.shape == expected.shape == (0,) and launches.total == 0
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert grad.shape == (0,)


@pytest.mark.parametrize("name", NORMS)
def test_empty_batch(name, device):
    """N = 0, which torch accepts: empty output, zero parameter gradients, running
    stats untouched, no kernel."""
    x = torch.randn(0, 6, 4, 3, device=device, requires_grad=True)
    w, b = _params(6, torch.float32, device) if name != "layer_norm" else _params(0, torch.float32, device,
                                                                                   shape=(6, 4, 3))
    rm, rv = _running(6, torch.float32, device)
    saved = rm.clone(), rv.clone()
    call = {"batch_norm": lambda: F.batch_norm(x, rm, rv, w, b, True),
            "group_norm": lambda: F.group_norm(x, 3, w, b),
            "instance_norm": lambda: F.instance_norm(x, None, None, w, b),   # torch fails with running stats
            "layer_norm": lambda: F.layer_norm(x, (6, 4, 3), w, b)}[name]
    with count_launches() as launches:
        y = call()
    assert y.shape == x.shape and launches.total == 0
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
    assert gx.shape == x.shape and not gw.abs().sum() and not gb.abs().sum()
    assert torch.equal(rm, saved[0]) and torch.equal(rv, saved[1])


def test_int64_offsets(device):
    """A view whose offsets pass 2**31 (storage committed lazily): int64 indexing."""
    stride = 2**31 + 8
    base = torch.empty(stride + 64, dtype=torch.float16, device=device)
    x = base.as_strided((2, 3, 5), (stride, 5, 1))
    x.copy_(torch.randn(2, 3, 5, dtype=torch.float16))
    assert needs_int64(x)
    x.requires_grad_()
    _check_batch_norm(x, *_params(3, torch.float32, device), None, True)
    _check_group_norm(x, 3, *_params(3, torch.float16, device))


DOUBLE_BACKWARD = {
    "batch-train-relu-residual": (
        (3, 4, 5, 3), lambda x, w, b, r, rm, rv: F.batch_norm(x, rm, rv, w, b, True, activation="relu", residual=r),
        lambda x, w, b, r, rm, rv: TF.relu(TF.batch_norm(x, rm, rv, w, b, True) + r)),
    "batch-eval-leaky": (
        (3, 4, 5), lambda x, w, b, r, rm, rv: F.batch_norm(x, rm, rv, w, b, False, activation="leaky_relu",
                                                           negative_slope=0.2),
        lambda x, w, b, r, rm, rv: TF.leaky_relu(TF.batch_norm(x, rm, rv, w, b, False), 0.2)),
    "batch-train-leaky-residual": (         # the residual kept for the activation's mask
        (3, 4, 5, 3), lambda x, w, b, r, rm, rv: F.batch_norm(x, rm, rv, w, b, True, activation="leaky_relu",
                                                              negative_slope=0.2, residual=r),
        lambda x, w, b, r, rm, rv: TF.leaky_relu(TF.batch_norm(x, rm, rv, w, b, True) + r, 0.2)),
    "batch-eval-negative-leaky-residual": (
        (3, 4, 5), lambda x, w, b, r, rm, rv: F.batch_norm(x, rm, rv, w, b, False, activation="leaky_relu",
                                                           negative_slope=-0.3, residual=r),
        lambda x, w, b, r, rm, rv: TF.leaky_relu(TF.batch_norm(x, rm, rv, w, b, False) + r, -0.3)),
    "layer-chw": ((2, 4, 3, 5), lambda x, w, b, r, rm, rv: F.layer_norm(x, (4, 3, 5), w, b),
                  lambda x, w, b, r, rm, rv: TF.layer_norm(x, (4, 3, 5), w, b)),
    "instance": ((2, 4, 6, 5), lambda x, w, b, r, rm, rv: F.instance_norm(x, weight=w, bias=b),
                 lambda x, w, b, r, rm, rv: TF.instance_norm(x, weight=w, bias=b)),
    "group-3-of-6": ((2, 6, 7), lambda x, w, b, r, rm, rv: F.group_norm(x, 3, w, b),
                     lambda x, w, b, r, rm, rv: TF.group_norm(x, 3, w, b)),
}


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("name", list(DOUBLE_BACKWARD))
def test_double_backward(name, layout, device):
    """Second derivatives (create_graph=True, a gradient penalty) of x, weight,
    bias, residual and the output gradient match torch's: the first derivatives
    come from the Triton kernels, the second from the norm_gradients operator's formula. A
    transposed x is copied for the kernels; its second derivatives must still
    reach x."""
    shape, ours, reference = DOUBLE_BACKWARD[name]
    C = shape[-1] if name.startswith("layer") else shape[1]
    layer = name.startswith("layer")
    x = make_input(shape, torch.float32, device, layout, requires_grad=True)
    w = (torch.rand(shape[1:] if layer else (C,)) + 0.5).to(device).requires_grad_()
    b = torch.randn(shape[1:] if layer else (C,)).to(device).requires_grad_()
    r = make_input(shape, torch.float32, device, layout, requires_grad=True) if "residual" in name else None
    rm, rv = (torch.randn(C, device=device), torch.rand(C, device=device) + 0.5) if "eval" in name else (None, None)
    inputs = [x, w, b, r, rm, rv]
    check_double_backward(ours, reference, inputs, "reduction", expect_launch=False)


PENALTY = {
    "batch-train": lambda F, x, w, b: F.batch_norm(x, None, None, w, b, True),
    "batch-eval": lambda F, x, w, b: F.batch_norm(x, torch.zeros(6, device=x.device),
                                                  torch.ones(6, device=x.device), w, b, False),
    "layer": lambda F, x, w, b: F.layer_norm(x, (5,), w[:5], b[:5]),
    "instance": lambda F, x, w, b: F.instance_norm(x, weight=w, bias=b),
    "group": lambda F, x, w, b: F.group_norm(x, 2, w, b),
}


@pytest.mark.parametrize("activation", [None, "leaky_relu", "prelu"])
@pytest.mark.parametrize("name", list(PENALTY))
def test_gradient_penalty_gradients_and_nones_as_torchs(name, activation, device):
    """A gradient penalty through a norm, alone or followed by a separate
    activation (a WGAN-GP critic): gradients as torch's, None where torch's are.
    Alone, no first derivative reads the bias (nor x, with constant statistics),
    so their .grad stays None (zeros would be a gradient to an optimizer's weight
    decay); after an activation, its second derivative gives the norm's output
    zeros, as torch's, which the norm passes on (it raised)."""
    grads = {}
    for tag, ops in (("ours", F), ("torch", TF)):
        torch.manual_seed(0)
        x = torch.randn(4, 6, 5, 5, device=device, requires_grad=True)
        w = (torch.rand(6) + 0.5).to(device).requires_grad_()
        b = torch.randn(6, device=device, requires_grad=True)
        slope = torch.full((6,), 0.25, device=device, requires_grad=True)
        y = PENALTY[name](ops, x, w, b)
        if activation:
            y = ops.leaky_relu(y, 0.2) if activation == "leaky_relu" else ops.prelu(y, slope)
        (gx,) = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), device=device).view_as(y)).sum(), x,
                                    create_graph=True)
        gx.pow(2).sum().backward()
        grads[tag] = [t.grad for t in (x, w, b, slope)]
    for ours, theirs in zip(grads["ours"], grads["torch"]):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def _normalized(x, dims, groups=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) in plain torch ops: statistics over ``dims``, or
    per sample and channel group of ``groups``."""
    xs = x.reshape(x.shape[0], groups, -1) if groups else x
    var, mean = torch.var_mean(xs, -1 if groups else dims, correction=0, keepdim=True)
    return ((xs - mean) * torch.rsqrt(var + eps)).reshape(x.shape)


def _per_channel(t, x):
    return t.reshape(1, -1, *([1] * (x.dim() - 2)))


# The forwards of DOUBLE_BACKWARD composed of plain torch ops: torch's fused
# batch / layer / instance norms give wrong third derivatives in training
# (pytorch/pytorch#186256, #175754: their double backward treats the saved
# statistics as constants), so they cannot be the reference past second order.
COMPOSED = {
    "batch-train-relu-residual": lambda x, w, b, r, rm, rv: TF.relu(
        _normalized(x, (0, 2, 3)) * _per_channel(w, x) + _per_channel(b, x) + r),
    "batch-eval-leaky": lambda x, w, b, r, rm, rv: TF.leaky_relu(
        (x - _per_channel(rm, x)) * _per_channel(torch.rsqrt(rv + 1e-5) * w, x) + _per_channel(b, x), 0.2),
    "batch-train-leaky-residual": lambda x, w, b, r, rm, rv: TF.leaky_relu(
        _normalized(x, (0, 2, 3)) * _per_channel(w, x) + _per_channel(b, x) + r, 0.2),
    "batch-eval-negative-leaky-residual": lambda x, w, b, r, rm, rv: TF.leaky_relu(
        (x - _per_channel(rm, x)) * _per_channel(torch.rsqrt(rv + 1e-5) * w, x) + _per_channel(b, x) + r, -0.3),
    "layer-chw": lambda x, w, b, r, rm, rv: _normalized(x, (1, 2, 3)) * w + b,
    "instance": lambda x, w, b, r, rm, rv: _normalized(x, (2, 3)) * _per_channel(w, x) + _per_channel(b, x),
    "group-3-of-6": lambda x, w, b, r, rm, rv: _normalized(x, None, groups=3) * _per_channel(w, x)
    + _per_channel(b, x),
}


@pytest.mark.parametrize("name", list(DOUBLE_BACKWARD))
def test_third_derivatives(name, device):
    """Derivatives past the second (create_graph=True through a second derivative)
    follow the norm_gradients operator's torch-ops formula: third derivatives of
    a nonlinear function of the output, with respect to every input, match the
    float64 composed forward. The output gradient depends on x here, which an
    autograd.grad of the formula would count twice."""
    shape, ours, reference = DOUBLE_BACKWARD[name]
    C = shape[-1] if name.startswith("layer") else shape[1]
    param_shape = shape[1:] if name.startswith("layer") else (C,)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    w, b = torch.rand(param_shape, generator=gen) + 0.5, torch.randn(param_shape, generator=gen)
    r = torch.randn(shape, generator=gen) if "residual" in name else None
    rm, rv = (torch.randn(C, generator=gen), torch.rand(C, generator=gen) + 0.5) if "eval" in name else (None, None)
    leaves = [x, w, b, r]
    probes = [torch.randn(t.shape, generator=gen) for t in leaves if t is not None]
    results = []
    for fn, dtype in ((ours, torch.float32), (COMPOSED[name], torch.float64)):
        inputs = [None if t is None else t.to(device, dtype).requires_grad_(i < 4) for i, t in
                  enumerate(leaves + [rm, rv])]
        wrt = [t for t in inputs[:4] if t is not None]
        out = fn(*inputs)
        if dtype == torch.float64:                  # the composed forward is torch's
            torch.testing.assert_close(out, reference(*inputs))
        scalar = out.pow(3).sum()
        for order in range(3):
            grads = torch.autograd.grad(scalar, wrt, create_graph=order < 2, allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]
            scalar = sum((g.pow(2) * p.to(g)).sum() for g, p in zip(grads, probes))
        results.append(grads)
    for i, (g, ref) in enumerate(zip(*results)):
        assert rel_err(g, ref) < 1e-4, f"third derivative of input {i}: relative error {rel_err(g, ref):.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_follows_torch(dtype, device):
    """Under torch.autocast each norm returns torch's dtype: CUDA autocast runs
    layer_norm and group_norm in float32; batch / instance norm (and every norm
    under CPU autocast) keep the input's dtype."""
    x = torch.randn(2, 6, 5, 4, device=device).to(dtype)
    w, b = torch.rand(6, device=device) + 0.5, torch.randn(6, device=device)
    lw, lb = torch.rand(5, 4, device=device) + 0.5, torch.randn(5, 4, device=device)
    calls = [(F.layer_norm, TF.layer_norm, ((5, 4), lw, lb)), (F.group_norm, TF.group_norm, (3, w, b)),
             (F.batch_norm, TF.batch_norm, (None, None, w, b, True)),
             (F.instance_norm, TF.instance_norm, (None, None, w, b))]
    for ours, reference, args in calls:
        with torch.autocast(device, dtype=dtype):
            expected = reference(x, *args)
            with count_launches() as launches:
                out = ours(x, *args)
        assert out.dtype == expected.dtype, ours.__name__
        assert launches.total > 0
        assert_close(out, expected, out.dtype if out.dtype != torch.float32 else dtype, "reduction",
                     ours.__name__)


@pytest.mark.parametrize("path", ["single-read", "looped"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["layer_norm", "group_norm"])
def test_float32_autocast_norm_reads_its_input_as_it_is(name, dtype, path, monkeypatch, device):
    """CUDA autocast runs layer_norm and group_norm in float32 (here on any device:
    ``_autocast_dtype`` answers as on CUDA). The kernels read the fp16 / bf16 input itself
    and write a float32 output, and the input's gradient in the input's dtype: no
    device op besides the kernels, forward or backward (torch casts x to float32 and
    its gradient back). Output and parameter gradients at float32's tolerance
    against float64, the input gradient at its dtype's."""
    autocast_dtype = F._autocast_dtype

    def as_on_cuda(policy, input):
        if policy == F._FLOAT32_ON_CUDA and torch.is_autocast_enabled(input.device.type):
            return torch.float32
        return autocast_dtype(policy, input)
    monkeypatch.setattr(F, "_autocast_dtype", as_on_cuda)
    if path == "looped":
        monkeypatch.setattr(norm_plan, "SET_LIMIT", 0)
    clear_plan_caches()
    if name == "layer_norm":
        x = make_input((3, 4, 5, 6), dtype, device, requires_grad=True)
        w, b = _params(0, torch.float32, device, shape=(5, 6))

        def ours(x, w, b):
            return F.layer_norm(x, (5, 6), w, b)

        def theirs(x, w, b):
            return TF.layer_norm(x, (5, 6), w, b)
    else:
        x = make_input((3, 6, 5, 4), dtype, device, "channels_last", requires_grad=True)
        w, b = _params(6, torch.float32, device)

        def ours(x, w, b):
            return F.group_norm(x, 3, w, b, activation="leaky_relu", negative_slope=0.2)

        def theirs(x, w, b):
            return TF.leaky_relu(TF.group_norm(x, 3, w, b), 0.2)
    with torch.autocast(torch.device(device).type, dtype=dtype):
        ours(x, w, b)       # the ticket counters' first (one-time) allocation
        with count_launches() as forward, device_ops() as forward_ops:
            y = ours(x, w, b)
    dy = torch.randn_like(y)
    with count_launches() as backward, device_ops() as backward_ops:
        grads = torch.autograd.grad(y, (x, w, b), dy)
    assert y.dtype == torch.float32 and [g.dtype for g in grads] == [dtype, torch.float32, torch.float32]
    kernel = "_set_fwd_kernel" if path == "single-read" else "_normalize_kernel"
    assert forward.counts[kernel] == 1 and backward.total > 0
    assert not forward_ops and not backward_ops, (forward_ops, backward_ops)
    refs = [t.detach().cpu().double().requires_grad_() for t in (x, w, b)]
    want = theirs(*refs)
    assert_close(y, want, torch.float32, "reduction", "output")
    ref_grads = torch.autograd.grad(want, refs, dy.cpu().double())
    for got, ref, tol, what in zip(grads, ref_grads, (dtype, torch.float32, torch.float32), ("x", "w", "b")):
        assert_close(got, ref, tol, "reduction", f"gradient of {what}")
    clear_plan_caches()


@pytest.mark.parametrize("stats_dtype", [torch.float16, torch.float64])
def test_instance_norm_running_stats_of_another_dtype(stats_dtype, device):
    """torch's instance_norm takes running stats of any floating dtype (it repeats
    them and copies the update back); so does nnlib's, and momentum=True is a number."""
    x = torch.randn(2, 3, 5, 4, device=device)
    for use_input_stats in (True, False):
        ours = [torch.randn(3).to(stats_dtype).to(device), (torch.rand(3) + 0.5).to(stats_dtype).to(device)]
        theirs = [t.clone().cpu() for t in ours]
        out = F.instance_norm(x, *ours, use_input_stats=use_input_stats, momentum=True)
        expected = TF.instance_norm(x.cpu(), *theirs, use_input_stats=use_input_stats, momentum=True)
        assert_close(out, expected, torch.float32, "reduction")
        for mine, ref in zip(ours, theirs):
            assert mine.dtype == stats_dtype
            assert_close(mine, ref, torch.float16, "reduction")


def test_torch_fallback_for_float64(device):
    x = torch.randn(2, 4, 5, 3, dtype=torch.float64, device=device)
    r = torch.randn_like(x)
    with count_launches() as launches:
        y = F.batch_norm(x, None, None, training=True, activation="relu", residual=r)
        z = F.group_norm(x, 2, activation="leaky_relu", negative_slope=0.2)
    assert launches.total == 0
    assert torch.equal(y, TF.relu(TF.batch_norm(x, None, None, training=True) + r))
    assert torch.equal(z, TF.leaky_relu(TF.group_norm(x, 2), 0.2))
    ours, twin = nnlib.BatchNorm2d(4, momentum=None).double().to(device), torch.nn.BatchNorm2d(4, momentum=None)
    twin = twin.double().to(device)
    for _ in range(2):          # the module's count and cumulative average on torch's path
        assert torch.equal(ours(x), twin(x))
    assert int(ours.num_batches_tracked) == 2 and torch.equal(ours.running_var, twin.running_var)


# ---------------------------------------------------------------------------
# Bad arguments: torch's exception class, nothing written

def _bad_calls(device):
    """name -> (call(functional module, running_mean, running_var), nnlib_only); each
    call raises. nnlib_only is None where torch.nn.functional raises too: the test
    expects torch's class for the same call on CPU. For nnlib's extras that torch
    lacks (residual, activation) it is the class expected of nnlib, hard-coded."""
    x = torch.randn(2, 6, 4, 5, device=device)
    w6 = torch.ones(6, device=device)

    def ones(n):
        return torch.ones(n, device=device)
    return {
        "batch_norm-weight-of-4-for-6-channels": (lambda f, rm, rv: f.batch_norm(x, rm, rv, ones(4), None, True), None),
        "batch_norm-bias-of-5": (lambda f, rm, rv: f.batch_norm(x, rm, rv, w6, ones(5), True), None),
        "batch_norm-5-channels-running-stats-of-6":
            (lambda f, rm, rv: f.batch_norm(torch.randn(2, 5, 4, device=device), rm, rv, None, None, True), None),
        "batch_norm-half-weight": (lambda f, rm, rv: f.batch_norm(x, rm, rv, w6.half(), None, True), None),
        "batch_norm-integer-input": (lambda f, rm, rv: f.batch_norm(x.long(), rm, rv, w6, w6, True), None),
        "batch_norm-eval-integer-input": (lambda f, rm, rv: f.batch_norm(x.long(), rm, rv, w6, w6, False), None),
        "batch_norm-integer-input-weight-of-4":
            (lambda f, rm, rv: f.batch_norm(x.long(), rm, rv, ones(4), None, True), None),
        "instance_norm-integer-input": (lambda f, rm, rv: f.instance_norm(x.long(), rm, rv, w6, w6), None),
        # float8: no norm of torch's takes it, whatever its parameters' dtype (NotImplementedError first)
        "batch_norm-float8-input": (lambda f, rm, rv: f.batch_norm(x.to(torch.float8_e4m3fn), rm, rv, w6, w6, True),
                                    None),
        "instance_norm-float8-input":
            (lambda f, rm, rv: f.instance_norm(x.to(torch.float8_e5m2), rm, rv, w6.half()), None),
        "group_norm-float8-input": (lambda f, rm, rv: f.group_norm(x.to(torch.float8_e4m3fn), 2, w6, w6), None),
        "layer_norm-float8-input": (lambda f, rm, rv: f.layer_norm(x.to(torch.float8_e4m3fn), (5,), ones(5)), None),
        "batch_norm-running-var-missing": (lambda f, rm, rv: f.batch_norm(x, rm, None, None, None, True), None),
        "batch_norm-running-stats-2d":
            (lambda f, rm, rv: f.batch_norm(x, rm.view(6, 1), rv.view(6, 1), None, None, True), None),
        "batch_norm-eval-running-stats-2d":
            (lambda f, rm, rv: f.batch_norm(x, rm.view(6, 1), rv.view(6, 1), None, None, False), None),
        "instance_norm-running-stats-2d": (lambda f, rm, rv: f.instance_norm(x, rm.view(6, 1), rv.view(6, 1)), None),
        "instance_norm-running-stats-0d":
            (lambda f, rm, rv: f.instance_norm(x[:, :1], rm[0], rv[0]), None),
        "batch_norm-eval-running-var-missing": (lambda f, rm, rv: f.batch_norm(x, rm, None, None, None, False), None),
        "batch_norm-eps-zero": (lambda f, rm, rv: f.batch_norm(x, rm, rv, None, None, True, eps=0.0), None),
        "batch_norm-one-value-per-channel":
            (lambda f, rm, rv: f.batch_norm(x[:1, :, :1, :1], rm, rv, None, None, True), None),
        "batch_norm-momentum-none": (lambda f, rm, rv: f.batch_norm(x, rm, rv, None, None, True, None), None),
        "batch_norm-input-1d": (lambda f, rm, rv: f.batch_norm(w6, None, None, None, None, True), None),
        "batch_norm-input-1d-with-running-stats": (lambda f, rm, rv: f.batch_norm(w6, rm, rv, None, None, True), None),
        "batch_norm-input-1d-with-weight": (lambda f, rm, rv: f.batch_norm(w6, None, None, w6, None, True), None),
        "batch_norm-running-mean-requires-grad":
            (lambda f, rm, rv: f.batch_norm(x, rm.clone().requires_grad_(), rv, None, None, True), None),
        "batch_norm-eval-running-var-requires-grad":
            (lambda f, rm, rv: f.batch_norm(x, rm, rv.clone().requires_grad_(), None, None, False), None),
        "instance_norm-running-mean-requires-grad":
            (lambda f, rm, rv: f.instance_norm(x, rm.clone().requires_grad_(), rv), None),
        "batch_norm-residual-of-3-channels":
            (lambda f, rm, rv: f.batch_norm(x, rm, rv, None, None, True, residual=x[:, :3]), RuntimeError),
        "batch_norm-residual-of-another-dtype":
            (lambda f, rm, rv: f.batch_norm(x, rm, rv, None, None, True, residual=x.half()), RuntimeError),
        "batch_norm-activation-gelu":
            (lambda f, rm, rv: f.batch_norm(x, rm, rv, None, None, True, activation="gelu"), ValueError),
        "instance_norm-weight-of-4": (lambda f, rm, rv: f.instance_norm(x, rm, rv, ones(4)), None),
        "instance_norm-5-channels-running-stats-of-6":
            (lambda f, rm, rv: f.instance_norm(torch.randn(2, 5, 4, device=device), rm, rv), None),
        "instance_norm-one-value-per-channel": (lambda f, rm, rv: f.instance_norm(x[:, :, :1, :1], rm, rv), None),
        "instance_norm-running-var-missing": (lambda f, rm, rv: f.instance_norm(x, rm, None), None),
        "instance_norm-no-input-stats-nor-running-stats":
            (lambda f, rm, rv: f.instance_norm(x, None, None, use_input_stats=False), None),
        "group_norm-groups-not-dividing": (lambda f, rm, rv: f.group_norm(x, 4), None),
        "group_norm-negative-groups": (lambda f, rm, rv: f.group_norm(x, -2), None),
        "group_norm-zero-groups": (lambda f, rm, rv: f.group_norm(x, 0), None),
        "group_norm-weight-of-3": (lambda f, rm, rv: f.group_norm(x, 3, ones(3)), None),
        "group_norm-bias-of-3": (lambda f, rm, rv: f.group_norm(x, 3, w6, ones(3)), None),
        "group_norm-input-1d": (lambda f, rm, rv: f.group_norm(x[0, 0, 0], 1), None),
        "group_norm-one-value-per-group": (lambda f, rm, rv: f.group_norm(x[:1, :3, :1, :1], 3), None),
        "layer_norm-shape-not-trailing": (lambda f, rm, rv: f.layer_norm(x, (4, 6)), None),
        "layer_norm-shape-empty": (lambda f, rm, rv: f.layer_norm(x, ()), None),
        "layer_norm-shape-int": (lambda f, rm, rv: f.layer_norm(x, 5), None),
        "group_norm-groups-false": (lambda f, rm, rv: f.group_norm(x, False), None),
        "group_norm-groups-float-tensor": (lambda f, rm, rv: f.group_norm(x, torch.tensor(3.0)), None),
        "group_norm-groups-none": (lambda f, rm, rv: f.group_norm(x, None), None),
        "layer_norm-shape-bool-first": (lambda f, rm, rv: f.layer_norm(x[..., :1], (True,)), None),
        "layer_norm-shape-float-item": (lambda f, rm, rv: f.layer_norm(x, (4, 5.0)), None),
        "layer_norm-weight-of-5-for-4x5": (lambda f, rm, rv: f.layer_norm(x, (4, 5), ones(5)), None),
        "layer_norm-bias-of-4": (lambda f, rm, rv: f.layer_norm(x, (5,), ones(5), ones(4)), None),
        "layer_norm-int-input": (lambda f, rm, rv: f.layer_norm(x.long(), (5,)), None),
        "group_norm-input-list": (lambda f, rm, rv: f.group_norm([1.0], 1), None),
        "batch_norm-input-list": (lambda f, rm, rv: f.batch_norm([1.0], rm, rv, None, None, True), None),
        "layer_norm-input-list": (lambda f, rm, rv: f.layer_norm([1.0], (1,)), None),
        "batch_norm-input-0d":
            (lambda f, rm, rv: f.batch_norm(torch.tensor(1.0, device=device), None, None, None, None, True), None),
        "batch_norm-input-of-one-value":
            (lambda f, rm, rv: f.batch_norm(torch.ones(1, device=device), None, None, None, None, True), None),
        "batch_norm-input-empty-1d-with-weight":
            (lambda f, rm, rv: f.batch_norm(torch.ones(0, device=device), None, None, torch.ones(0, device=device),
                                            None, True), None),
        "batch_norm-training-int": (lambda f, rm, rv: f.batch_norm(x, rm, rv, None, None, 1), None),
        "instance_norm-use-input-stats-none":
            (lambda f, rm, rv: f.instance_norm(x, rm, rv, use_input_stats=None), None),
        "group_norm-eps-string": (lambda f, rm, rv: f.group_norm(x, 3, eps="1e-5"), None),
        "group_norm-groups-bool": (lambda f, rm, rv: f.group_norm(x, True), None),
        "layer_norm-int-input-float-weight":
            (lambda f, rm, rv: f.layer_norm(x.long(), (5,), torch.ones(5, device=device)), None),
        "group_norm-int-input-groups-not-dividing": (lambda f, rm, rv: f.group_norm(x.long(), 4), None),
        "instance_norm-weight-2d":
            (lambda f, rm, rv: f.instance_norm(x, rm, rv, torch.ones(6, 1, device=device)), None),
        # torch's argument parser refuses a non-tensor (TypeError) before its ops check anything
        "batch_norm-running-mean-float-var-missing":
            (lambda f, rm, rv: f.batch_norm(x, 1.0, None, None, None, True), None),
        "batch_norm-eval-running-mean-float": (lambda f, rm, rv: f.batch_norm(x, 1.0, None, None, None, False), None),
        "batch_norm-input-1d-bias-only": (lambda f, rm, rv: f.batch_norm(w6, None, None, None, ones(6), True), None),
        "batch_norm-input-1d-empty-parameters":
            (lambda f, rm, rv: f.batch_norm(w6, None, None, ones(0), ones(0), True), None),
        "batch_norm-eval-input-0d-empty-running-stats":
            (lambda f, rm, rv: f.batch_norm(w6[0], ones(0), ones(0), None, None, False), None),
        "batch_norm-eval-input-1d-empty-running-stats":
            (lambda f, rm, rv: f.batch_norm(w6, ones(0), ones(0), None, None, False), None),
        # ... but batch_norm's Python checks eps before it calls the parser (ValueError)
        "batch_norm-running-mean-float-eps-negative":
            (lambda f, rm, rv: f.batch_norm(x, 1.0, None, None, None, True, 0.0, -1.0), None),
        "batch_norm-eval-weight-float-eps-negative":
            (lambda f, rm, rv: f.batch_norm(x, rm, rv, 1.0, None, False, 0.1, -1.0), None),
        "batch_norm-eval-input-none-eps-negative":
            (lambda f, rm, rv: f.batch_norm(None, rm, rv, None, None, False, 0.1, -1.0), None),
        "batch_norm-training-int-eps-zero": (lambda f, rm, rv: f.batch_norm(x, rm, rv, None, None, 1, 0.1, 0.0), None),
        "batch_norm-eps-string": (lambda f, rm, rv: f.batch_norm(None, rm, rv, None, None, False, 0.1, "1"), None),
        "batch_norm-eps-two-elements":
            (lambda f, rm, rv: f.batch_norm(x, rm, rv, None, None, False, 0.1, ones(2)), None),
        "instance_norm-running-mean-float-var-missing": (lambda f, rm, rv: f.instance_norm(x, 1.0, None), None),
        "layer_norm-weight-float-shape-empty": (lambda f, rm, rv: f.layer_norm(x, (), 1.0), None),
        "group_norm-bias-float-negative-groups": (lambda f, rm, rv: f.group_norm(x, -2, None, 1.0), None),
        "instance_norm-input-1d-running-stats":
            (lambda f, rm, rv: f.instance_norm(w6, rm, rv, use_input_stats=False), None),
        "instance_norm-input-1d-no-running-stats":
            (lambda f, rm, rv: f.instance_norm(w6, None, None, use_input_stats=False), None),
        # torch copies the update back into the running stats: one element stored for several raises
        "instance_norm-running-mean-expanded": (lambda f, rm, rv: f.instance_norm(x, rm[:1].expand(6), rv), None),
    }


def _weight_only_calls():
    """name -> (ours(x, w), torch's(x, w), the weight's shape) for x (2, 6, 3, 4)."""
    def running(x):         # on x's device: the float64 reference runs on the CPU
        return torch.zeros(6, dtype=x.dtype, device=x.device), torch.ones(6, dtype=x.dtype, device=x.device)
    return {
        "batch_norm": (lambda x, w: F.batch_norm(x, None, None, w, None, True),
                       lambda x, w: TF.batch_norm(x, None, None, w, None, True), (6,)),
        "batch_norm-eval": (lambda x, w: F.batch_norm(x, *running(x), w, None, False),
                            lambda x, w: TF.batch_norm(x, *running(x), w, None, False), (6,)),
        "instance_norm": (lambda x, w: F.instance_norm(x, weight=w), lambda x, w: TF.instance_norm(x, weight=w), (6,)),
        "group_norm": (lambda x, w: F.group_norm(x, 3, w), lambda x, w: TF.group_norm(x, 3, w), (6,)),
        "layer_norm": (lambda x, w: F.layer_norm(x, (3, 4), w), lambda x, w: TF.layer_norm(x, (3, 4), w), (3, 4)),
    }


@pytest.mark.parametrize("name", list(_weight_only_calls()))
def test_second_derivative_of_the_weight_alone_is_none(name, device):
    """Without an activation only dx reads the weight: where x takes no gradient, the
    weight's gradient does not depend on the weight, and its second derivative is
    None, as torch's (zeros would count as a gradient: an optimizer's weight decay
    would move the weight)."""
    ours, theirs, shape = _weight_only_calls()[name]
    x = torch.randn(2, 6, 3, 4, device=device)
    w = (torch.rand(shape, device=device) + 0.5).requires_grad_()
    check_double_backward(ours, theirs, [x, w], "reduction", expect_launch=False)


BIAS_NORMS = {
    "BatchNorm2d": lambda lib: lib.BatchNorm2d(6),
    "BatchNorm2d-eval": lambda lib: lib.BatchNorm2d(6).eval(),
    "GroupNorm": lambda lib: lib.GroupNorm(3, 6),
    "InstanceNorm2d": lambda lib: lib.InstanceNorm2d(6, affine=True),
}


@pytest.mark.parametrize("name", list(BIAS_NORMS))
def test_bias_changed_in_place_before_the_backward(name, device):
    """Without a fused activation no gradient reads the bias and no norm keeps it:
    changing it in place between the forward and the backward is allowed, as in
    torch, and the gradients (x's, the weight's, the bias's: its shape and dtype
    kept) are torch's in float64; second derivatives through such a backward too."""
    ours, theirs = (BIAS_NORMS[name](lib).to(device) for lib in (nnlib, torch.nn))
    theirs.load_state_dict(ours.state_dict())
    theirs.double()
    x32, dy, ddx, ddw = (torch.randn(shape, device=device) for shape in ((2, 6, 3, 4), (2, 6, 3, 4), (2, 6, 3, 4),
                                                                           (6,)))
    results = []
    for module, cast in ((ours, torch.Tensor.clone), (theirs, torch.Tensor.double)):
        x = cast(x32.detach()).requires_grad_(True)
        y = module(x)
        with torch.no_grad():
            module.bias.add_(0.5)
        dx, dw, db = torch.autograd.grad(y, (x, module.weight, module.bias), cast(dy), create_graph=True)
        ((dx * cast(ddx)).sum() + (dw * cast(ddw)).sum()).backward()
        results.append((dx, dw, db, x.grad, module.weight.grad))
    for name_, ours_t, theirs_t in zip(("dx", "dw", "db", "x's second", "w's second"), *results):
        assert_close(ours_t, theirs_t, torch.float32, "reduction", name_)


INFERENCE_MODE_NORMS = {
    "BatchNorm2d": lambda lib: lib.BatchNorm2d(3),
    "BatchNorm2d-cumulative": lambda lib: lib.BatchNorm2d(3, momentum=None),
    "InstanceNorm2d-tracking": lambda lib: lib.InstanceNorm2d(3, track_running_stats=True),
}


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("name", list(INFERENCE_MODE_NORMS))
def test_norm_built_in_inference_mode_trains_only_inside_it(name, grad, device):
    """A norm module built under torch.inference_mode() holds inference tensors,
    which nothing may update in place outside inference mode: torch refuses
    (RuntimeError, on the CPU after writing some of them), nnlib refuses before
    launching anything, its buffers unchanged. Inside inference mode both train."""
    x = torch.randn(2, 3, 4, 5, device=device)
    with torch.inference_mode():
        ours, theirs = (INFERENCE_MODE_NORMS[name](lib).to(device) for lib in (nnlib, torch.nn))
    with torch.set_grad_enabled(grad):
        with pytest.raises(RuntimeError):
            theirs(x)
        before = {k: v.clone() for k, v in ours.state_dict().items()}
        with count_launches() as launches, pytest.raises(RuntimeError, match="inference tensor"):
            ours(x)
    assert launches.total == 0
    for key, value in ours.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} written before the error"
    with torch.inference_mode():
        ours, theirs = (INFERENCE_MODE_NORMS[name](lib).to(device) for lib in (nnlib, torch.nn))
        with count_launches() as launches:
            out = ours(x)
        assert_close(out, theirs(x), torch.float32, "reduction")
        assert launches.total > 0
        for key, value in theirs.state_dict().items():
            assert_close(ours.state_dict()[key], value, torch.float32, "reduction", key)


@pytest.mark.parametrize("name", list(_bad_calls("cpu")))
def test_bad_arguments_raise_and_write_nothing(name, device):
    """torch's class (nnlib's own for its extras), no kernel launched, running stats unchanged."""
    call, nnlib_only = _bad_calls(device)[name]
    if nnlib_only is None:
        theirs = functools.partial(_bad_calls("cpu")[name][0], TF)
    else:
        def theirs(rm, rv):   # stands for torch, which lacks the argument
            raise nnlib_only
    rm, rv = _running(6, torch.float32, device)
    check_raises_like_torch(functools.partial(call, F), theirs, (rm, rv), unchanged=(rm, rv))


def test_checks_after_a_good_call_of_the_same_shapes(device):
    """Each norm's checks run once per call signature (``checks_once``): after a
    good call, a call that differs from it in anything a check reads (a dtype, a
    parameter's size, running stats that require grad in grad mode, a flag's type,
    a value, the extras) is still refused with torch's class (nnlib's for its
    extras), and the good call still passes, under no_grad too."""
    x = torch.randn(2, 6, 5, device=device)
    ones = functools.partial(torch.ones, device=device)
    w, b = ones(6), ones(6)
    rm, rv = _running(6, torch.float32, device)
    good = dict(input=x, running_mean=rm, running_var=rv, weight=w, bias=b, training=True, momentum=0.1, eps=1e-5)
    torch_calls = {"running_mean": rm.clone().requires_grad_(True), "weight": w.double(), "bias": ones(5),
                   "training": 1, "momentum": "0.1", "eps": -1.0, "input": x.int()}
    nnlib_calls = {"activation": ("gelu", ValueError), "residual": (ones(2, 6, 4), RuntimeError),
                   "num_batches_tracked": (torch.zeros(2, dtype=torch.long, device=device), TypeError)}
    with torch.no_grad():       # running stats that require grad: taken under no_grad, refused in grad mode, as torch
        F.batch_norm(**{**good, "running_mean": torch_calls["running_mean"]})
    for _ in range(2):
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                F.batch_norm(**good)
        for name, value in torch_calls.items():
            call = {**good, name: value}
            check_raises_like_torch(lambda **kw: F.batch_norm(**kw), lambda **kw: TF.batch_norm(**kw), (), call,
                                    unchanged=(rm, rv))
        for name, (value, error) in nnlib_calls.items():
            with pytest.raises(error):
                F.batch_norm(**{**good, name: value})
        with pytest.raises(TypeError):
            F.batch_norm(**good, activation="leaky_relu", negative_slope="0.1")
    good = dict(input=x, running_mean=rm, running_var=rv, weight=w, bias=b, use_input_stats=True, momentum=0.1,
                eps=1e-5)
    for _ in range(2):
        F.instance_norm(**good)
        for name, value in {"use_input_stats": 1, "weight": w.double(), "momentum": "0.1", "running_var": None,
                            "input": x.int()}.items():
            check_raises_like_torch(lambda **kw: F.instance_norm(**kw), lambda **kw: TF.instance_norm(**kw), (),
                                    {**good, name: value}, unchanged=(rm, rv))
    w2 = ones(6, 5)
    for norm, good, bad in [
            ("group_norm", dict(input=x, num_groups=3, weight=w, bias=b, eps=1e-5),
             dict(num_groups=True, eps="x", weight=w.double(), bias=ones(5), input=x.int())),
            ("layer_norm", dict(input=x, normalized_shape=(6, 5), weight=w2, bias=w2, eps=1e-5),
             dict(normalized_shape=[6, 4], eps="x", weight=w2.double(), bias=ones(5), input=x.int()))]:
        for _ in range(2):
            getattr(F, norm)(**good)
            for name, value in bad.items():
                check_raises_like_torch(lambda **kw: getattr(F, norm)(**kw), lambda **kw: getattr(TF, norm)(**kw), (),
                                        {**good, name: value})


def test_cached_checks_keep_the_sign_of_zero():
    """The checks' cache tells -0.0 from 0.0 (it returns the momentum it parsed):
    momentum -0.0 after 0.0 updates a -0.0 running mean as torch does (float64:
    torch's path, after nnlib's checks)."""
    def signbit(f, momentum):
        x = torch.ones(2, 1, 3, dtype=torch.float64)
        rm, rv = torch.tensor([-0.0], dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        f(x, rm, rv, None, None, True, momentum, 1e-5)
        return torch.signbit(rm).item()
    for momentum in (0.0, -0.0, 0.0):
        assert signbit(F.batch_norm, momentum) == signbit(TF.batch_norm, momentum), momentum


def test_symbolic_sizes_are_checked_without_the_cache():
    """A traced call whose tensors have symbolic sizes (vmap under make_fx's
    symbolic tracing) is checked without the checks' cache (a SymInt does not
    hash) and traces as torch's."""
    from torch.fx.experimental.proxy_tensor import make_fx
    x = torch.randn(3, 2, 4, 5)
    for norm in (lambda xi: F.batch_norm(xi, None, None, None, None, True), F.instance_norm):
        traced = make_fx(lambda x: torch.vmap(norm)(x), tracing_mode="symbolic")(x)
        assert_close(traced(x), torch.vmap(norm)(x.double()), torch.float32, "reduction")


def test_check_cache_is_thread_safe(monkeypatch):
    """checks_once drops its oldest entry under a lock: threads storing at once
    (a two-entry cache, switching threads every microsecond) raise nothing."""
    import sys
    import threading

    from nnlib import _checks
    monkeypatch.setattr(_checks, "PLAN_CACHE_SIZE", 2)
    checked = _checks.checks_once(lambda first, second: (first, second))
    errors = []

    def store(offset):
        try:
            for i in range(5000):
                checked((), (offset * 10**6 + i, 0))
        except Exception as error:      # any error fails the test
            errors.append(error)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=store, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]


def test_instance_norm_eval_takes_0d_running_stats_of_one_channel(device):
    """torch's instance norm repeats its running stats, so in eval 0-D ones serve
    one channel (training copies back into them: refused, a bad call above)."""
    x = torch.randn(2, 1, 5, device=device)
    mean, var = torch.tensor(0.5, device=device), torch.tensor(2.0, device=device)
    assert_close(F.instance_norm(x, mean, var, use_input_stats=False),
                 TF.instance_norm(x.double(), mean.double(), var.double(), use_input_stats=False), torch.float32,
                 "reduction")


def test_type_errors_name_the_type_as_torch():
    """A wrong-typed argument's TypeError names its type as torch's parser does:
    a numpy scalar by its full name (a bare "bool" read "must be bool, not bool")."""
    import numpy as np
    x = torch.randn(2, 3, 4)
    for f in (F, TF):
        with pytest.raises(TypeError, match="must be bool, not numpy.bool$"):
            f.batch_norm(x, None, None, training=np.bool_(True))
        with pytest.raises(TypeError, match="must be bool, not numpy.bool$"):
            f.instance_norm(x, use_input_stats=np.bool_(False))


FLOAT_ARGUMENTS = [0.25, 1, True, "np.float32", "np.int64", "np.bool_", "np.complex64", "0-d", "0-d int", "1-d",
                   "0-d grad", "0-d complex", 0.25j, "Fraction", "0-d array"]


def _float_argument(form):
    """A float argument in one of the forms torch's parser takes or refuses."""
    import fractions

    import numpy as np
    forms = {"np.float32": np.float32(0.25), "np.int64": np.int64(1), "np.bool_": np.bool_(True),
             "np.complex64": np.complex64(0.25), "0-d": torch.tensor(0.25), "0-d int": torch.tensor(1),
             "1-d": torch.tensor([0.25]), "0-d complex": torch.tensor(0.25 + 1j), "0-d grad": torch.tensor(0.25, requires_grad=True),
             "Fraction": fractions.Fraction(1, 4), "0-d array": np.array(0.25)}
    return forms.get(form, form) if isinstance(form, str) else form


@pytest.mark.parametrize("form", FLOAT_ARGUMENTS, ids=str)
def test_eps_and_momentum_parsed_as_torch(form, device):
    """eps and momentum of every norm accept what torch's parser takes as a float
    (Python and numpy numbers, 0-d tensors without grad) with torch's result, and
    refuse the rest with TypeError."""
    value = _float_argument(form)
    x = torch.randn(2, 3, 4, 5, device=device)
    calls = {"batch_norm eps": lambda f, rm, rv: f.batch_norm(x, rm, rv, training=True, eps=value),
             "batch_norm momentum": lambda f, rm, rv: f.batch_norm(x, rm, rv, training=True, momentum=value),
             "instance_norm momentum": lambda f, rm, rv: f.instance_norm(x, rm, rv, momentum=value),
             "instance_norm eps": lambda f, rm, rv: f.instance_norm(x, eps=value),
             "layer_norm eps": lambda f, rm, rv: f.layer_norm(x, (5,), eps=value),
             "group_norm eps": lambda f, rm, rv: f.group_norm(x, 3, eps=value)}
    def outcome(functional, call):
        torch.manual_seed(0)
        rm, rv = _running(3, torch.float32, device)
        try:
            return (call(functional, rm, rv), rm, rv), None
        except Exception as e:  # noqa: BLE001 -- compared with torch's
            return None, type(e)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # numpy's ComplexWarning, as torch takes the real part
        for name, call in calls.items():
            (ours, raised), (theirs, expected) = outcome(F, call), outcome(TF, call)
            assert raised is expected, f"{name}: torch {expected}, nnlib {raised}"
            if theirs is not None:
                for got, want in zip(ours, theirs):
                    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)


# ---------------------------------------------------------------------------
# Modules against their torch twins

MODULES = [
    ("BatchNorm1d", (4,), {}, (5, 4, 7)),
    ("BatchNorm1d", (4,), {"momentum": None}, (6, 4)),
    ("BatchNorm2d", (4,), {"affine": False}, (3, 4, 5, 6)),
    ("BatchNorm2d", (4,), {"track_running_stats": False}, (3, 4, 5, 6)),
    ("BatchNorm2d", (4,), {"momentum": None, "bias": False}, (3, 4, 5, 6)),
    ("BatchNorm3d", (3,), {"eps": 0.5}, (2, 3, 3, 4, 5)),
    ("InstanceNorm1d", (4,), {"affine": True}, (3, 4, 7)),
    ("InstanceNorm1d", (4,), {"track_running_stats": True, "momentum": None}, (4, 7)),
    ("InstanceNorm2d", (4,), {"affine": True, "track_running_stats": True}, (3, 4, 5, 6)),
    ("InstanceNorm3d", (3,), {"eps": 0.5}, (2, 3, 3, 4, 5)),
    ("LayerNorm", ((5, 6),), {"eps": 0.5}, (3, 4, 5, 6)),
    ("LayerNorm", (6,), {"elementwise_affine": False}, (2, 3, 6)),
    ("LayerNorm", ([4, 5, 6],), {"bias": False}, (2, 4, 5, 6)),
    ("GroupNorm", (3, 6), {"eps": 0.5}, (2, 6, 5, 7)),
    ("GroupNorm", (2, 6), {"affine": False}, (2, 6, 9)),
]


@pytest.mark.parametrize("name,args,kwargs,shape", MODULES,
                         ids=[f"{m[0]}-{'-'.join(f'{k}={v}' for k, v in m[2].items())}" for m in MODULES])
def test_modules_match_torch(name, args, kwargs, shape, device):
    """Same parameters, buffers and state_dict keys; three training steps and one
    eval step give the same outputs, gradients and buffers (num_batches_tracked,
    cumulative average for momentum=None)."""
    taken = inspect.signature(getattr(torch.nn, name)).parameters
    if not set(kwargs) <= set(taken):
        pytest.skip(f"this torch's {name} takes no {sorted(set(kwargs) - set(taken))}")
    ours = getattr(nnlib, name)(*args, **kwargs).to(device)
    twin = getattr(torch.nn, name)(*args, **kwargs).to(device)
    assert isinstance(ours, getattr(torch.nn, name))
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    twin.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(twin.state_dict())
    for step in range(4):
        if step == 3:
            ours.eval()
            twin.eval()
        x = torch.randn(shape, device=device).requires_grad_()
        x_twin = x.detach().clone().requires_grad_()
        y, y_twin = ours(x), twin(x_twin)
        assert_close(y, y_twin, torch.float32, "reduction", f"step {step} output")
        g = torch.randn_like(y)
        y.backward(g)
        y_twin.backward(g)
        assert_close(x.grad, x_twin.grad, torch.float32, "reduction", f"step {step} input grad")
    for (key, value), twin_value in zip(ours.state_dict().items(), twin.state_dict().values()):
        assert_close(value, twin_value, torch.float32, "reduction", key)
    for p, p_twin in zip(ours.parameters(), twin.parameters()):
        assert_close(p.grad, p_twin.grad, torch.float32, "reduction", "parameter grad")


def test_module_extras_and_checks(device):
    bn = nnlib.BatchNorm2d(4, activation="relu").to(device)
    assert "activation='relu'" in repr(bn)
    assert "activation='leaky_relu', negative_slope=0.2" in repr(nnlib.GroupNorm(2, 4, activation="leaky_relu",
                                                                                negative_slope=0.2))
    x = torch.randn(2, 4, 3, 5, device=device)
    residual = torch.randn_like(x)
    torch.testing.assert_close(bn(x, residual), TF.relu(torch.nn.BatchNorm2d(4).to(device)(x) + residual),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expected 4D input"):
        bn(torch.randn(2, 4, 3, device=device))
    with pytest.raises(ValueError):
        nnlib.GroupNorm(2, 6, activation="tanh")


@pytest.mark.parametrize("name,args", [("BatchNorm2d", (4,)), ("LayerNorm", ((4, 3),)), ("GroupNorm", (2, 4)),
                                       ("InstanceNorm2d", (4,)), ("SyncBatchNorm", (4,))])
def test_norm_modules_take_parametrizations(name, args, device):
    """torch.nn.utils.parametrize's subclass of a module (made in torch.nn) is not
    mistaken for the torch twin (its signature took activation twice: ValueError);
    the parametrized weight reaches the kernels."""
    kwargs = {"affine": True} if name == "InstanceNorm2d" else {}
    ours, twin = (getattr(lib, name)(*args, **kwargs).to(device) for lib in (nnlib, torch.nn))
    twin.load_state_dict(ours.state_dict())
    for m in (ours, twin):
        torch.nn.utils.parametrizations.weight_norm(m, "weight", dim=0)
        torch.nn.utils.parametrize.register_parametrization(m, "bias", _Doubled())
        m.eval()
    assert "activation" in inspect.signature(type(ours)).parameters
    x = torch.randn(2, 4, 4, 3, device=device)
    assert_close(ours(x), twin(x), torch.float32, "reduction")


class _Doubled(torch.nn.Module):
    def forward(self, t):
        return 2 * t


def _outcome(call):
    """call()'s (exception class and message or None, [(warning class, message)], result)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result, error = call(), None
        except Exception as e:
            result, error = None, (type(e), str(e))
    return error, [(w.category, str(w.message)) for w in caught], result


def test_instance_norm_module_forward(device):
    """nnlib's InstanceNormNd.forward (its own copy of torch's checks, no private
    torch method): the fused activation on batched and unbatched input; torch's
    exception, message, warning and result for each bad input, with and without
    affine."""
    for shape in ((2, 3, 4, 5), (3, 4, 5)):
        x = torch.randn(shape, device=device)
        ours = nnlib.InstanceNorm2d(3, activation="leaky_relu", negative_slope=0.2).to(device)
        expected = TF.leaky_relu(torch.nn.InstanceNorm2d(3).to(device)(x), 0.2)
        assert_close(ours(x), expected, torch.float32, "reduction", f"shape {shape}")
    bad_inputs = [torch.randn(3, 4), torch.randn(1, 3, 2, 4, 5), [1.0],
                  torch.randn(2, 4, 3, 3), torch.randn(4, 3, 3)]     # rank, rank, not a tensor, C = 4, C = 4
    for affine in (False, True):
        ours = nnlib.InstanceNorm2d(3, affine=affine).to(device)
        twin = torch.nn.InstanceNorm2d(3, affine=affine).to(device)
        for bad in bad_inputs:
            bad = bad.to(device) if isinstance(bad, torch.Tensor) else bad
            error, warned, result = _outcome(lambda: ours(bad))
            twin_error, twin_warned, twin_result = _outcome(lambda: twin(bad))
            assert (error, warned) == (twin_error, twin_warned), (affine, bad)
            if result is not None:
                assert_close(result, twin_result, torch.float32, "reduction", "mismatched channels")


@pytest.mark.parametrize("name", ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d",
                                  "InstanceNorm3d", "LayerNorm", "GroupNorm", "SyncBatchNorm"])
def test_module_signatures_are_torchs(name):
    """inspect.signature of a norm class is its torch twin's plus the keyword-only
    extras (tools that read constructors see torch's names and defaults); an
    instance's is still its call's."""
    ours, theirs = inspect.signature(getattr(nnlib, name)), inspect.signature(getattr(torch.nn, name))
    extras = [p for p in ours.parameters.values() if p.name in ("activation", "negative_slope")]
    assert [p.kind for p in extras] == [inspect.Parameter.KEYWORD_ONLY] * 2
    assert [p for p in ours.parameters.values() if p not in extras] == list(theirs.parameters.values())
    assert str(inspect.signature(nnlib.GroupNorm(2, 4))) == str(inspect.signature(torch.nn.GroupNorm(2, 4)))

    class Own(getattr(nnlib, name)):         # a subclass's own __init__ is its signature
        def __init__(self, channels, scale=2.0):
            super().__init__(channels)
    assert list(inspect.signature(Own).parameters) == ["channels", "scale"]


def test_module_failed_call_leaves_buffers(device):
    """A wrong channel count raises before num_batches_tracked or the running stats move."""
    bn = nnlib.BatchNorm2d(4, momentum=None).to(device)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(RuntimeError):
        bn(torch.randn(2, 3, 5, 5, device=device))
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
