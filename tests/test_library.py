"""nnlib's registered operators (kernels/_library.py) and torch.compile / export.

* ``torch.library.opcheck`` on every operator (schema, fake implementation
  against the real one, autograd registration, AOT dispatch with static and
  dynamic shapes), over samples that cover each argument mode; every
  registered operator must have samples here.
* ``torch.compile(..., fullgraph=True)`` of the functional ops (aot_eager and
  inductor) and of a model of every family traces one graph with no break; for
  the functional ops and the "step" models (the ResNets, a converted torch
  ResNet, the norm zoo, the digits CNN: train and eval) outputs, gradients and
  buffers equal eager mode; ``torch.export`` of an eval model.
* Eager calls do not go through the dispatcher (the direct path) unless a
  TorchDispatchMode is active (it sees our operators then: selective
  checkpointing saves them), nor through the autograd.Function where autograd
  records nothing; every launcher runs on its first tensor's GPU.
* On CUDA: inductor for models, and its CUDA graphs (``mode="reduce-overhead"``).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as TF
from torch.utils._python_dispatch import TorchDispatchMode

import nnlib
import nnlib.functional as F
from kernels import _reduce
from kernels import activation as act
from kernels import pool
from kernels.conv import ops as conv
from kernels._library import OPERATORS, LaunchersInSight
from kernels._runtime import count_launches
from tests.reference import assert_close, make_input

RELU, LEAKY = act.ACT_RELU.value, act.ACT_LEAKY_RELU.value
WINDOW = ([3, 3], [2, 2], [1, 1], [1, 1])


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"     # conftest's device


def _t(shape, layout="contiguous", dtype=torch.float32, grad=True):
    return make_input(shape, dtype, DEVICE, layout, requires_grad=grad)


def _samples():
    """name -> list of (id, args) for opcheck, on the test device."""
    x, xt = _t((2, 3, 5, 7), "channels_last"), _t((2, 3, 5, 7), "transposed")
    xh = _t((2, 5, 7), dtype=torch.float16, grad=False)
    codes = pool.max_pool2d_op(x.detach(), *WINDOW, False, pool.INDEX_LOCAL, RELU)[1]
    flat = pool.max_pool2d_op(x.detach(), *WINDOW, True, pool.INDEX_FLAT, 0)[1]
    return {
        "activation": [("relu-cl", (x, RELU, 0.0)), ("leaky-transposed", (xt, LEAKY, 0.2)),
                       ("leaky-negative-fp16", (xh, LEAKY, -0.5)),
                       ("leaky-in-place-traced", (x, LEAKY, 0.2, True))],     # the backward reads the output
        "activation_": [("relu", (x.detach().clone(), RELU, 0.0)),
                        ("leaky-sliced", (_t((4, 9), "sliced", grad=False), LEAKY, 0.1))],
        "activation_backward": [("relu-same-layout", (_t((2, 3, 5, 7), "channels_last"), x, RELU, 0.0)),
                                ("leaky-other-layout", (_t((2, 3, 5, 7)), xt, LEAKY, 0.3))],
        "prelu": [("channels", (x, _t((3,)), None)), ("shared-1d", (_t((11,)), _t((1,)), None)),
                  ("fp16-transposed", (_t((2, 3, 4, 5), "transposed", torch.float16), _t((3,), dtype=torch.float16),
                                       None)),
                  ("bf16-master", (_t((2, 3, 4, 5), dtype=torch.bfloat16), _t((3,), dtype=torch.bfloat16, grad=False),
                                   _t((3,))))],
        "prelu_backward": [("channels", (_t((2, 3, 5, 7)), x, _t((3,)), None)),
                           ("shared", (_t((4, 6)), _t((4, 6)), _t((1,)), None)),
                           ("bf16-in-float32", (_t((4, 6), dtype=torch.bfloat16), _t((4, 6), dtype=torch.bfloat16),
                                                _t((6,), dtype=torch.bfloat16), torch.float32))],
        "max_pool2d": [("local-relu", (x, *WINDOW, False, pool.INDEX_LOCAL, RELU)),
                       ("flat-ceil", (xt, [2, 3], [2, 1], [1, 0], [1, 2], True, pool.INDEX_FLAT, 0)),
                       ("none-unbatched-fp16", (xh, [2, 2], [2, 2], [0, 0], [1, 1], False, pool.INDEX_NONE, 0))],
        "max_pool2d_backward": [("local", (_t(codes.shape), codes, [2, 3, 5, 7], *WINDOW, True)),
                                ("flat", (_t(flat.shape), flat, [2, 3, 5, 7], *WINDOW, False))],
        "max_pool2d_gather": [("local", (x, codes, *WINDOW)), ("flat", (_t((2, 3, 5, 7)), flat, *WINDOW))],
        **_conv_samples(),
        **_norm_samples(),
    }


def _conv_samples():
    """The GEMM paths (16 channels), the direct ones (3), groups, stride, dilation,
    asymmetric padding, bias None, fused activations, layouts."""
    gemm = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    strided = ([2, 1], [0, 1, 2, 1], [1, 2], 2)
    x16, w16 = _t((2, 16, 6, 7), "channels_last"), _t((16, 16, 3, 3))
    x3, w3 = _t((2, 3, 7, 6), "transposed"), _t((4, 3, 3, 3), "channels_last")
    xg, wg = _t((1, 4, 5, 6)), _t((6, 2, 3, 2))
    y16 = conv.conv2d_op(x16.detach(), w16.detach(), None, *gemm, RELU, 0.0, None, None)
    xb, wb, master = _t((2, 16, 6, 7), dtype=torch.bfloat16), _t((16, 16, 3, 3), dtype=torch.bfloat16), _t(w16.shape)
    return {
        "conv2d": [("gemm-relu", (x16, w16, _t((16,)), *gemm, RELU, 0.0, None, None)),
                   ("direct-no-bias", (x3, w3, None, *gemm, 0, 0.0, None, None)),
                   ("grouped-strided-leaky", (xg, wg, _t((6,)), *strided, LEAKY, 0.1, None, None)),
                   ("bf16-master-weight", (xb, wb, None, *gemm, 0, 0.0, master, None)),
                   ("bf16-master-bias", (xb, wb, _t((16,), dtype=torch.bfloat16), *gemm, RELU, 0.0, None,
                                         _t((16,))))],
        "conv2d_input_grad": [("gemm", (_t(y16.shape), w16, x16, *gemm)),
                              ("grouped-strided", (_t((1, 6, 3, 6)), wg, xg, *strided))],
        "conv2d_weight_grad": [("gemm", (_t(y16.shape), x16, w16, *gemm, None)),
                               ("direct", (_t((2, 4, 7, 6)), x3, w3, *gemm, None)),
                               ("bf16-in-float32", (_t(y16.shape, dtype=torch.bfloat16), xb, wb, *gemm,
                                                    torch.float32))],
        "conv2d_output_grad": [("relu-bias", (_t(y16.shape), y16, RELU, 0.0, torch.float32)),
                               ("bias-only", (_t((2, 4, 3, 5), "channels_last"), None, 0, 0.0, torch.float32)),
                               ("bf16-bias-in-float32", (_t((2, 4, 3, 5), dtype=torch.bfloat16), None, 0, 0.0,
                                                         torch.float32))],
    }


def _norm_samples():
    """Batch statistics with running buffers (momentum and cumulative), per-sample
    groups, layer norm over two dims, eval, the single-read path, the fused
    residual and activations, each gradient asked alone or together. Layouts the
    kernels read through strides (others are copied before the operators)."""
    from kernels.norm import ops as norm
    x4 = _t((2, 4, 5, 3), "channels_last")
    xg, xl = _t((2, 6, 7)), _t((3, 2, 4, 5))
    w, b, r = _t((4,)), _t((4,)), _t((2, 4, 5, 3), "channels_last")
    wl, bl = _t((4, 5)), _t((4, 5))
    running = [torch.zeros(4, device=DEVICE), torch.ones(4, device=DEVICE),
               torch.zeros((), dtype=torch.long, device=DEVICE)]
    batch = (1, 1, 4, False)
    mean, rstd = norm.norm_statistics(x4.detach(), None, None, None, *batch, 0.0, False, 1e-5)
    gmean, grstd = norm.norm_statistics(xg.detach(), None, None, None, 1, 1, 3, True, 0.0, False, 1e-5)
    rmean, rrstd = norm.norm_apply_running(x4.detach(), *running[:2], None, None, None, 1, 1, True, 1e-3, 0, 0.0)[1:]
    return {
        "norm_statistics": [("batch-momentum", (x4.detach(), *[t.clone() for t in running], *batch, 0.1, False, 1e-5)),
                            ("batch-cumulative", (x4.detach(), *[t.clone() for t in running], *batch, 0.0, True, 0.1)),
                            ("groups-per-sample", (xg.detach(), None, None, None, 1, 1, 3, True, 0.0, False, 1e-5)),
                            ("layer-two-dims", (xl.detach(), None, None, None, 2, 2, 1, True, 0.0, False, 1e-5))],
        "norm_apply": [("batch-residual-relu", (x4, mean, rstd, w, b, r, *batch, True, 1e-5, RELU, 0.0)),
                       ("groups-leaky-no-affine", (xg, gmean, grstd, None, None, None, 1, 1, 3, True, True, 1e-5,
                                                   LEAKY, 0.2)),
                       ("groups-bf16-in-float32", (_t(xg.shape, dtype=torch.bfloat16), gmean, grstd, _t((6,)), None,
                                                   None, 1, 1, 3, True, True, 1e-5, 0, 0.0, torch.float32))],
        "norm_apply_running": [("eval-residual-leaky", (x4, *running[:2], w, b, r, 1, 1, True, 1e-3, LEAKY, 0.1)),
                               ("eval-weight-only", (xg, _t((6,)), _t((6,)).abs() + 0.5, _t((6,)), None, None,
                                                     1, 1, False, 1e-5, 0, 0.0))],
        "norm_per_sample": [("layer-relu", (xl, wl, bl, 2, 2, 1, False, 1e-5, RELU, 0.0)),
                            ("groups-no-affine", (xg, None, None, 1, 1, 3, True, 1e-5, 0, 0.0)),
                            ("layer-bf16-in-float32", (_t(xl.shape, dtype=torch.bfloat16), wl, bl, 2, 2, 1, False,
                                                       1e-5, RELU, 0.0, torch.float32)),
                            ("layer-set-too-large", (_t((2, 4100)), _t((4100,)), None, 1, 1, 1, False, 1e-5, LEAKY,
                                                     0.1))],     # statistics and normalize: two launches
        "norm_gradients": [
            ("batch-residual-relu", (_t(x4.shape), x4, w, b, r, mean, rstd, *batch, True, 1e-5, RELU, 0.0, False,
                                     True, True, True, True)),
            ("batch-output-mask-relu", (_t(x4.shape), x4, w, b, r.relu(), mean, rstd, *batch, True, 1e-5, RELU,
                                        0.0, True, True, True, True, True)),    # in r's place a relu's output
            ("batch-weight-only", (_t(x4.shape), x4, w, b, None, mean, rstd, *batch, True, 1e-5, 0, 0.0, False,
                                   False, True, False, False)),
            ("eval", (_t(x4.shape), x4, w, None, None, rmean, rrstd, *batch, False, 1e-3, LEAKY, 0.1, False,
                      True, True, False, False)),
            ("per-sample-groups", (_t(xg.shape), xg, None, None, None, gmean, grstd, 1, 1, 3, True, True, 1e-5, 0,
                                   0.0, False, True, False, False, False))],
    }


SAMPLES = _samples()


def test_every_operator_has_samples():
    assert set(OPERATORS) == set(SAMPLES), "operators without opcheck samples (or samples without operators)"


@pytest.mark.parametrize("name,args", [pytest.param(n, a, id=f"{n}-{i}") for n, cases in SAMPLES.items()
                                       for i, a in cases])
def test_opcheck(name, args, device):
    torch.library.opcheck(OPERATORS[name].op, args)


class _Seen(TorchDispatchMode):
    """Records the namespace of every op it sees."""

    def __init__(self):
        super().__init__()
        self.namespaces = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.namespaces.append(func.namespace)
        return func(*args, **(kwargs or {}))


def _pool_relu_step(x):
    with count_launches() as launches:
        out = F.max_pool2d(F.relu(x), 2)
        (grad,) = torch.autograd.grad(out.square().sum(), (x,))
    assert launches.total == 4
    return out, grad


class _SeenLaunchers(LaunchersInSight, _Seen):
    """_Seen, looking at the eager path."""


def test_dispatch_modes_see_our_operators(device):
    """Under a TorchDispatchMode (a user's, FlopCounterMode, selective
    checkpointing) a call goes through the dispatcher, forward and backward, so
    the mode sees nnlib's operators as it sees torch's, and the kernels still
    run, with eager mode's values; without a mode, and under modes that are all
    ``LaunchersInSight`` (the tools that count the eager path's torch ops), no
    nnlib:: op reaches the dispatcher."""
    x = _t((2, 3, 5, 7))
    out, grad = _pool_relu_step(x)
    seen = _Seen()
    with seen:
        out_seen, grad_seen = _pool_relu_step(x)
    assert seen.namespaces.count("nnlib") == 4          # activation, max_pool2d and their backwards
    assert torch.equal(out_seen, out) and torch.equal(grad_seen, grad)
    inner = _SeenLaunchers()
    with _SeenLaunchers(), inner:
        _pool_relu_step(x)
    assert inner.namespaces and "nnlib" not in inner.namespaces
    with _Seen() as outer, _SeenLaunchers():            # one mode that is not: the operators
        _pool_relu_step(x)
    assert outer.namespaces.count("nnlib") == 4


@pytest.mark.parametrize("slope", [None, 0.2, -0.5], ids=["relu", "leaky", "negative-slope"])
def test_inplace_activation_under_a_dispatch_mode(slope, device):
    """relu_ / leaky_relu_ under a mode: the launcher, directly (a caching mode
    would replay the in-place operator's empty result), recorded by autograd as
    without a mode (the input's storage written, the output saved, one version
    bump), values and gradients as eager; a negative slope's backward raises as
    torch's; the checks before a write still raise first."""
    def inplace(t):
        return F.relu_(t) if slope is None else F.leaky_relu_(t, slope)
    base = _t((3, 4), grad=False)
    x = base.clone()
    with _Seen() as seen:
        assert inplace(x) is x and x._version == 1
        with pytest.raises(RuntimeError, match="leaf Variable"):
            inplace(_t((3, 4)))
    expected = TF.relu(base) if slope is None else TF.leaky_relu(base, slope)
    assert torch.equal(x, expected) and "nnlib" not in seen.namespaces
    leaf = _t((3, 4))
    with _Seen():
        y = leaf * 2
        out = inplace(y)
        assert out is y and y._version == 1
        if slope is not None and slope < 0:
            with pytest.raises(RuntimeError, match="negative slope"):
                torch.autograd.grad(out.sum(), (leaf,))
            return
        (grad,) = torch.autograd.grad(out.sum(), (leaf,))
    (expected,) = torch.autograd.grad(inplace(leaf * 2).sum(), (leaf,))
    assert torch.equal(grad, expected)


def test_running_stats_versions_under_a_dispatch_mode(device):
    """A training batch / instance norm under a mode writes the running stats
    without bumping their version counters, as the direct path and torch's batch
    norm (its instance norm bumps them, and fails below): a checkpointed
    function that takes them as arguments still runs its backward (under
    selective checkpointing, or any mode)."""
    import functools

    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    def recompute(ctx, op, *args, **kwargs):
        return CheckpointPolicy.PREFER_RECOMPUTE
    for norm in (F.batch_norm, F.instance_norm):
        x, rm, rv = _t((2, 4, 3, 3)), torch.zeros(4, device=DEVICE), torch.ones(4, device=DEVICE)
        with _Seen():
            norm(x, rm, rv, None, None, True)
        assert rm._version == rv._version == 0 and rm.abs().sum() > 0
        out = checkpoint(norm, x, rm, rv, None, None, True, use_reentrant=False,
                         context_fn=functools.partial(create_selective_checkpoint_contexts, recompute))
        out.square().sum().backward()
        assert x.grad is not None and rm._version == rv._version == 0


def test_selective_checkpointing_saves_our_operators(device):
    """torch.utils.checkpoint with a selective policy that saves nnlib's conv2d:
    the backward recomputes the batch norm and relu but not the convolution, and
    the gradients equal the plain ones."""
    import functools

    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts
    x, w = _t((2, 16, 6, 6)), _t((16, 16, 3, 3))

    def block(x):
        return F.relu(F.batch_norm(F.conv2d(x, w, padding=1), None, None, training=True))

    def policy(ctx, op, *args, **kwargs):
        return (CheckpointPolicy.MUST_SAVE if op == torch.ops.nnlib.conv2d.default
                else CheckpointPolicy.PREFER_RECOMPUTE)
    expected = torch.autograd.grad(block(x).square().sum(), (x, w))
    out = checkpoint(block, x, use_reentrant=False,
                     context_fn=functools.partial(create_selective_checkpoint_contexts, policy))
    with count_launches() as backward:
        grads = torch.autograd.grad(out.square().sum(), (x, w))
    recomputed = {name for name in backward.counts if "fwd" in name or "stats" in name or "normalize" in name}
    assert recomputed and not any(name.startswith("_conv_fwd") for name in recomputed), backward
    for g, e in zip(grads, expected):
        assert torch.equal(g, e)


def test_selective_checkpointing_saving_every_operator(device):
    """A policy that saves every nnlib operator but the norms' on a conv, batch
    norm, in-place relu, conv block: the gradients equal the plain ones (the
    in-place relu is never cached, so its recomputation writes)."""
    import functools

    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    def policy(ctx, op, *args, **kwargs):
        return (CheckpointPolicy.MUST_SAVE if op.namespace == "nnlib" and "norm" not in op.name()
                else CheckpointPolicy.PREFER_RECOMPUTE)
    torch.manual_seed(0)
    block = torch.nn.Sequential(nnlib.Conv2d(3, 16, 3, padding=1), nnlib.BatchNorm2d(16), nnlib.ReLU(inplace=True),
                                nnlib.Conv2d(16, 16, 3, padding=1)).to(DEVICE)
    x = _t((2, 3, 6, 6))
    leaves = [x, *block.parameters()]
    expected = torch.autograd.grad(block(x).square().sum(), leaves)
    out = checkpoint(block, x, use_reentrant=False,
                     context_fn=functools.partial(create_selective_checkpoint_contexts, policy))
    for g, e in zip(torch.autograd.grad(out.square().sum(), leaves), expected):
        assert_close(g, e, torch.float32, "conv")


def test_unrecorded_calls_skip_the_autograd_function(monkeypatch, device):
    """A call autograd does not see (no_grad, a backward pass without create_graph,
    no input that requires grad) runs the bare launcher, not the
    autograd.Function; one that needs a graph goes through it, and so does an
    operator called under forward AD, which raises as the Function does (no jvp
    rule) instead of dropping tangents (nnlib.functional takes torch's path there:
    ``test_functorch_transforms_and_forward_ad_take_torchs_path``)."""
    import torch.autograd.forward_ad as fwAD
    applied = []
    for op in OPERATORS.values():
        if op.function is not None:
            monkeypatch.setattr(op, "record",
                                lambda *args, _record=op.record, _name=op.name: applied.append(_name) or _record(*args))
    x = _t((2, 3, 5, 7))
    w = _t((4, 3, 3, 3))
    with torch.no_grad():
        F.relu(x)
        F.conv2d(x, w)
    F.conv2d(x.detach(), w.detach())
    with torch.inference_mode(), torch.enable_grad():       # records nothing, as torch's ops there
        assert F.conv2d(x, w).grad_fn is None and not F.relu(x).requires_grad
    assert applied == []
    F.conv2d(x, w).sum().backward()         # the backward's input and weight gradients: not recorded
    assert applied == ["conv2d"]
    torch.autograd.grad(F.conv2d(x, w).sum(), (x, w), create_graph=True)
    assert applied[1:] == ["conv2d", "conv2d_input_grad", "conv2d_weight_grad"]
    for mode in (contextlib.nullcontext, _Seen):        # a dispatch mode does not take the call past it
        with mode(), fwAD.dual_level(), torch.no_grad(), pytest.raises(NotImplementedError, match="jvp"):
            OPERATORS["activation"](fwAD.make_dual(x.detach(), torch.ones_like(x)), RELU, 0.0)


def test_functorch_transforms_and_forward_ad_take_torchs_path(monkeypatch, device):
    """Under a torch.func transform or forward-mode AD, nnlib.functional runs
    torch's ops, which have batching and forward-derivative rules (a custom
    operator's tangent would silently be zero, and its grad raises): the values,
    gradients and tangents of torch, no launch. An operator called directly under
    a transform runs the registered operator, so the launchers never see a
    wrapped tensor: a batch norm's statistics (which allocate buffers kept across
    calls) under vmap raise, and leave eager calls working."""
    import torch.autograd.forward_ad as fwAD
    x = _t((2, 3, 5, 7), grad=False)
    w = _t((4, 3, 3, 3), grad=False)
    v = torch.randn_like(x)
    pairs = ((F.relu, TF.relu), (lambda t: F.conv2d(t, w), lambda t: TF.conv2d(t, w)),
             (lambda t: F.max_pool2d(t, 2), lambda t: TF.max_pool2d(t, 2)),
             (lambda t: F.batch_norm(t, None, None, training=True), lambda t: TF.batch_norm(t, None, None,
                                                                                           training=True)),
             (lambda t: F.group_norm(t, 3), lambda t: TF.group_norm(t, 3)))
    for ours, theirs in pairs:
        with count_launches() as launches:
            results = [torch.func.vmap(ours)(x[:, None]), torch.func.grad(lambda t: ours(t).square().sum())(x),
                       torch.func.jvp(ours, (x,), (v,))[1]]
            with fwAD.dual_level():
                results.append(fwAD.unpack_dual(ours(fwAD.make_dual(x, v))).tangent)
        assert launches.total == 0
        expected = [torch.func.vmap(theirs)(x[:, None]), torch.func.grad(lambda t: theirs(t).square().sum())(x),
                    torch.func.jvp(theirs, (x,), (v,))[1]]
        for got, want in zip(results, expected + expected[-1:]):
            torch.testing.assert_close(got, want)
    monkeypatch.setattr(_reduce, "_TICKETS", {})              # allocated first under the transform
    with pytest.raises(RuntimeError, match="[Bb]atching rule"):
        torch.func.vmap(lambda t: OPERATORS["norm_statistics"](t, None, None, None, 1, 1, 3, False, 0.1, False,
                                                               1e-5))(x[:, None])
    torch.testing.assert_close(F.batch_norm(x, None, None, training=True), TF.batch_norm(x, None, None, training=True))


def test_dead_transform_wrappers_are_unwrapped(device):
    """A tensor that escaped a finished torch.func transform (a dead wrapper, without
    storage) reaches the recorded call unwrapped, as torch's Function.apply unwraps
    it: the launchers read its data."""
    leaked = []
    torch.func.grad(lambda t: leaked.append(t) or t.sum())(_t((1, 2, 5, 5)).detach())
    x, w = leaked[0], _t((3, 2, 3, 3))
    assert torch._C._functorch.is_functorch_wrapped_tensor(x)
    y = F.conv2d(x, w)
    torch.testing.assert_close(y, TF.conv2d(x, w), atol=1e-2, rtol=1e-2)     # tf32 on a GPU
    y.sum().backward()
    assert w.grad is not None


def test_launchers_run_on_their_tensors_gpu(monkeypatch):
    """Triton launches on the current device: an operator given tensors on another
    GPU makes theirs current while its launcher runs, and leaves it alone
    otherwise (a fake cuda:1 tensor stands for one; no GPU needed); so does
    SyncBatchNorm's Function, whose launchers are not operators."""
    from torch._subclasses import fake_tensor
    from kernels._library import _on_own_device
    from kernels.norm import sync
    current, seen = [0], []
    # a fake tensor on a CUDA device initialises that device where CUDA is present: one GPU has no cuda:1
    monkeypatch.setattr(fake_tensor, "init_gpu_context", lambda device: None)

    class Guard:                        # torch.cuda.device, recorded
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            self.saved, current[0] = current[0], self.index

        def __exit__(self, *exc):
            current[0] = self.saved
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", Guard)
    launcher = _on_own_device(lambda x, scale: seen.append((current[0], scale)))
    with fake_tensor.FakeTensorMode():
        on_1, on_0 = torch.empty(2, device="cuda:1"), torch.empty(2, device="cuda:0")
    launcher(on_1, 2.0)
    launcher(on_0, 3.0)
    launcher(torch.empty(2), 4.0)
    assert seen == [(1, 2.0), (0, 3.0), (0, 4.0)] and current[0] == 0
    assert all(op.impl.__qualname__.startswith("_on_own_device") for op in OPERATORS.values())
    monkeypatch.setattr(sync, "backend", lambda x: "triton")
    monkeypatch.setattr(sync.SyncNormFunction, "apply", lambda x, *args: seen.append((current[0], "sync")))
    sync.sync_batch_norm(on_1, None, None, None, None, 0.1, 1e-5, None, 2)
    assert seen[-1] == (1, "sync") and current[0] == 0


def _functional_chain(x, w):
    y = F.leaky_relu(F.relu(x), 0.2)
    y = F.prelu(y, w)
    y, idx = F.max_pool2d(y, 3, 2, 1, return_indices=True)
    z = F.max_pool2d(y, 2, ceil_mode=True) * 2 - 1
    F.leaky_relu(z, 0.1, inplace=True)      # its backward reads the output, which is z now
    u = z * -1
    F.relu_(u)
    return z + u, idx


def test_compile_after_a_float_argument_changes(device):
    """A module's float attribute changed after a compiled call (a leaky ReLU's
    slope) gives the new value's result under fullgraph=True: the graph guards the
    value instead of baking in the first one."""
    from nnlib import layers
    module = layers.LeakyReLU(0.2)
    compiled = torch.compile(module, backend="eager", fullgraph=True)
    x = _t((4, 5), grad=False)
    for slope in (0.2, 0.5):
        module.negative_slope = slope
        torch.testing.assert_close(compiled(x), TF.leaky_relu(x, slope))


def test_import_leaves_dynamo_unloaded():
    """import nnlib does not import torch._dynamo (about a second of every process's
    start): SyncBatchNorm's eager region is marked by torch's lazy decorator."""
    import subprocess
    import sys
    code = "import sys, nnlib; print('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_compile_warns_about_no_cache(device):
    """Dynamo traces the host code around the operators: the plan caches there are
    bypassed while it does, so it does not warn about an lru_cache it traces through."""
    import warnings

    from nnlib import layers
    x = _t((2, 4, 6, 6), grad=False)
    for module in (layers.BatchNorm2d(4), layers.LayerNorm(6), layers.GroupNorm(2, 4), layers.Conv2d(4, 4, 3)):
        torch._dynamo.reset()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.compile(module.to(device), backend="eager", fullgraph=True)(x)
        assert not [w for w in caught if "lru_cache" in str(w.message)], type(module).__name__


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_functional_fullgraph(backend, device):
    torch._dynamo.reset()
    x, w = _t((2, 3, 9, 9), "channels_last"), _t((3,))
    explained = torch._dynamo.explain(_functional_chain)(x, w)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(_functional_chain, backend=backend, fullgraph=True)
    (out, idx), (ref, ref_idx) = compiled(x, w), _functional_chain(x, w)
    torch.testing.assert_close(out, ref)
    assert torch.equal(idx, ref_idx)
    grads, ref_grads = (torch.autograd.grad(o.square().sum(), (x, w)) for o in (out, ref))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


# ---------------------------------------------------------------------------
# Whole models under torch.compile and torch.export

def _norm_zoo():
    """Every layer kind but batch norm (the ResNets have it): conv (grouped, strided,
    fused activation), group / instance (with running statistics) / layer norm,
    PReLU, max pooling, leaky ReLU."""
    import nnlib
    return torch.nn.Sequential(
        nnlib.Conv2d(3, 8, 3, padding=1, activation="relu"),
        nnlib.GroupNorm(2, 8, activation="leaky_relu", negative_slope=0.1),
        nnlib.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
        nnlib.InstanceNorm2d(8, affine=True, track_running_stats=True),
        nnlib.PReLU(8),
        nnlib.MaxPool2d(2, ceil_mode=True),
        nnlib.LayerNorm([8, 2, 2]),
        nnlib.LeakyReLU(0.2),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 5))


def _models():
    """name -> (builder, input shape, layout, check): every model family of
    nnlib.models and a converted torch model, small, so that the interpreter is
    quick. check "step": a compiled training step and eval against eager; "trace":
    the interpreter is slow on these (few channels: the direct kernels), so only
    their graph is checked, one graph and no break."""
    import nnlib
    from nnlib import models
    from nnlib.models import reference

    def converted_resnet():
        return nnlib.convert(reference.ResNet(reference.BasicBlock, [1], 5, width=4, small_input=True))
    return {
        "resnet-basic": (lambda: models.ResNet(models.resnet.BasicBlock, [1, 1], 5, width=4, small_input=True),
                         (2, 3, 8, 8), "channels_last", "step"),
        "resnet-bottleneck": (lambda: models.ResNet(models.resnet.Bottleneck, [1], 5, width=4, small_input=True),
                              (2, 3, 8, 8), "contiguous", "step"),
        "converted-torch-resnet": (converted_resnet, (2, 3, 8, 8), "contiguous", "step"),
        "norm-zoo": (_norm_zoo, (2, 3, 8, 8), "contiguous", "step"),
        "digits_cnn": (lambda: models.digits_cnn(width=4), (2, 1, 8, 8), "channels_last", "step"),
        "lenet5": (lambda: models.lenet5(), (2, 1, 32, 32), "contiguous", "trace"),
        "vgg11_bn": (lambda: models.vgg11_bn(5, width=2, hidden=8, pool_size=1, dropout=0.0), (2, 3, 32, 32),
                     "channels_last", "trace"),
        "drn_c26": (lambda: models.drn_c26(3, width=2), (1, 3, 16, 16), "contiguous", "trace"),
        "nf_resnet": (lambda: models.NFResNet([1], 5, width=4), (2, 3, 16, 16), "contiguous", "trace"),
    }


MODELS = _models()


def _build(name, device):
    build, shape, fmt, _ = MODELS[name]
    torch.manual_seed(0)
    model = build().to(device)
    if fmt == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    return model, make_input(shape, torch.float32, device, fmt)


def _train_step(model, x):
    out = model(x)
    out.square().mean().backward()
    return out


@pytest.mark.parametrize("name", [n for n, spec in MODELS.items() if spec[3] == "step"])
def test_compile_model_fullgraph(name, device):
    """One graph for a training step's forward (batch statistics, running buffers
    updated) and for eval; outputs, gradients and buffers equal eager mode's (to
    fp32 conv tolerance: AOTAutograd may hand the backward another gradient
    layout, and so another summation order)."""
    import copy
    torch._dynamo.reset()
    eager, x = _build(name, device)
    traced = copy.deepcopy(eager)
    compiled = torch.compile(traced, backend="aot_eager", fullgraph=True)
    tol = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_train_step(compiled, x), _train_step(eager, x), **tol)
    for (key, a), b in zip(traced.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, **tol, msg=f"buffer or parameter {key}")
    for (key, a), b in zip(traced.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, **tol, msg=f"gradient of {key}")
    traced.eval(), eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), **tol)


@pytest.mark.parametrize("name", [n for n, spec in MODELS.items() if spec[3] == "trace"])
def test_model_traces_as_one_graph(name, device):
    torch._dynamo.reset()
    model, x = _build(name, device)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def test_export_eval_model(device):
    """torch.export of an eval-mode model: our operators appear in the exported
    program, which runs and matches eager mode."""
    model, x = _build("resnet-basic", device)
    model.eval()
    exported = torch.export.export(model, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert {"nnlib.conv2d.default", "nnlib.norm_apply_running.default"} <= targets, targets
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_exported_norms_take_other_layouts(device):
    """An exported program checks shapes, not strides: run on an input laid out
    otherwise than its example (channels_last, H and W transposed), the norm
    operators copy what their kernels cannot read through strides, as the eager path
    does before the call (they raised TypeError); values, gradients and running
    statistics equal torch's."""
    import nnlib
    x = torch.randn(2, 4, 6, 5, device=device)
    inputs = [x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)]
    for build in (lambda ns: ns.LayerNorm([4, 6, 5]), lambda ns: ns.GroupNorm(2, 4),
                  lambda ns: ns.InstanceNorm2d(4, affine=True), lambda ns: ns.BatchNorm2d(4),
                  lambda ns: ns.BatchNorm2d(4).eval()):
        ours, theirs = build(nnlib).to(device), build(torch.nn).to(device)
        program = torch.export.export(ours, (x,)).module()          # exported with a contiguous example
        for x_other in inputs:
            a, b = x_other.clone().requires_grad_(), x_other.clone().requires_grad_()
            torch.testing.assert_close(program(a), theirs(b), atol=1e-5, rtol=1e-5)
            program(a).square().sum().backward()
            theirs(b).square().sum().backward()
            torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)
        for name, buffer in theirs.named_buffers():
            torch.testing.assert_close(program.get_buffer(name), buffer, msg=name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor with CUDA graphs needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_inductor_on_cuda(mode):
    """inductor (and its CUDA graphs) around our kernels: a few training steps, eval,
    and training again (graphs recorded for one mode replayed after the other's
    warm-up: the ticket counters and other buffers our launchers keep across calls
    must survive cudagraph trees' memory pool) equal eager mode's, outputs and
    every step's gradients. Each step starts with the gradients set to None, as
    cudagraph trees need (a .grad made inside their pool and accumulated into
    across replays is not supported; on an H200, 2026-11-30, this test accumulated
    three steps' and its backward met "accessing tensor output of CUDAGraphs that
    has been overwritten", likely from that)."""
    import copy
    torch._dynamo.reset()
    eager, x = _build("resnet-basic", "cuda")
    shape = x.shape
    traced = copy.deepcopy(eager)
    compiled = torch.compile(traced, mode=mode, fullgraph=True)

    def steps(count):
        for _ in range(count):
            x = torch.randn(shape, device="cuda")
            traced.zero_grad(set_to_none=True), eager.zero_grad(set_to_none=True)
            torch.testing.assert_close(_train_step(compiled, x), _train_step(eager, x))
            for (key, a), b in zip(traced.named_parameters(), eager.parameters()):
                torch.testing.assert_close(a.grad, b.grad, msg=f"gradient of {key}")
        return x
    x = steps(3)
    traced.eval(), eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x))
    traced.train(), eager.train()
    steps(2)
    for (key, a), b in zip(traced.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"buffer or parameter {key}")


class _Recorder(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


class _Tagged(torch.Tensor):
    """A subclass whose __torch_function__ counts the calls it is given."""
    calls = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(func)
        return super().__torch_function__(func, types, args, kwargs)


def test_torch_function_protocol(device):
    """Every nnlib.functional op follows torch's __torch_function__ protocol, as
    torch.nn.functional's do: a TorchFunctionMode and a tensor subclass see the
    calls (nnlib's layers included) and what they return is the result, and
    torch.fx traces a module that calls them into call_function nodes whose
    GraphModule runs our kernels."""
    x = _t((2, 4, 6, 6), grad=False)
    w, ones = _t((4, 4, 3, 3), grad=False), torch.ones(4, device=device)
    calls = {F.relu: (x,), F.leaky_relu: (x, 0.2), F.prelu: (x, ones), F.conv2d: (x, w),
             F.max_pool2d: (x, 2), F.max_pool2d_with_indices: (x, 2),
             F.batch_norm: (x, None, None, ones, ones, True), F.instance_norm: (x,),
             F.layer_norm: (x, (6, 6)), F.group_norm: (x, 2, ones)}
    layers = nnlib.convert(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4),
                                               torch.nn.ReLU())).to(device)
    with _Recorder() as mode:
        for fn, args in calls.items():
            fn(*args)
        layers(x)
    assert [f for f in mode.seen if getattr(f, "__module__", None) == F.__name__] == [*calls, F.conv2d, F.batch_norm,
                                                                                    F.relu]
    _Tagged.calls.clear()
    out = F.group_norm(x.as_subclass(_Tagged), 2, ones)
    assert _Tagged.calls[0] is F.group_norm and type(out) is _Tagged

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(w.clone())

        def forward(self, t):
            t = F.conv2d(t, self.weight, padding=1, activation="relu")
            return F.group_norm(F.max_pool2d(t, 2), 2)
    block = Block()
    graph_module = torch.fx.symbolic_trace(block)
    targets = [n.target for n in graph_module.graph.nodes if n.op == "call_function"]
    assert targets == [F.conv2d, F.max_pool2d, F.group_norm]
    with count_launches() as launches:
        torch.testing.assert_close(graph_module(x), block(x))
    assert launches.total > 0


class _NoGradient(torch.autograd.Function):
    """Passes y on and gives it no gradient (None), as some later op may."""

    @staticmethod
    def forward(ctx, y):
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        return None


NO_GRADIENT_CALLS = {
    "group_norm": lambda ops, x, w: ops.group_norm(x, 2, w),
    "layer_norm": lambda ops, x, w: ops.layer_norm(x, (3, 3)),
    "batch_norm-eval": lambda ops, x, w: ops.batch_norm(x, torch.zeros(4, device=x.device),
                                                        torch.ones(4, device=x.device), w, None, False),
    "batch_norm-train": lambda ops, x, w: ops.batch_norm(x, None, None, w, None, True),
    "instance_norm": lambda ops, x, w: ops.instance_norm(x, weight=w),
    "max_pool2d": lambda ops, x, w: ops.max_pool2d(x, 2),
    "conv2d": lambda ops, x, w: ops.conv2d(x, w.view(4, 1, 1, 1).expand(4, 4, 1, 1), groups=1),
    "leaky_relu": lambda ops, x, w: ops.leaky_relu(x, 0.1),
    "relu_": lambda ops, x, w: ops.relu(x * 1, inplace=True),
    "prelu": lambda ops, x, w: ops.prelu(x, w),
}


@pytest.mark.parametrize("name", list(NO_GRADIENT_CALLS))
def test_no_gradient_in_no_gradient_out(name, device):
    """When a later op gives an nnlib op's output no gradient (None), its inputs get
    none either, as from torch's ops (an autograd.Function would pass zeros on: a
    gradient to an optimizer's weight decay, and launches on zeros)."""
    grads = {}
    for tag, ops in (("ours", F), ("torch", TF)):
        x = torch.randn(2, 4, 3, 3, device=device, requires_grad=True)
        w = torch.ones(4, device=device, requires_grad=True)
        y = NO_GRADIENT_CALLS[name](ops, x, w)
        with count_launches() as launches:
            (_NoGradient.apply(y) + x).sum().backward()
        grads[tag] = (x.grad, w.grad)
        if tag == "ours":
            assert launches.total == 0, launches
    for ours, theirs in zip(*grads.values()):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            torch.testing.assert_close(ours, theirs)


BATCHED_GRADIENT_CALLS = {
    "conv2d-bias-relu": lambda x, p: F.conv2d(x, p["w"], p["b"], padding=1, activation="relu"),
    "conv2d-depthwise": lambda x, p: F.conv2d(x, p["dw"], stride=2, padding=1, groups=4),
    "relu": lambda x, p: F.relu(x * 1),
    "leaky_relu": lambda x, p: F.leaky_relu(x, 0.1),
    "prelu": lambda x, p: F.prelu(x, p["c"]),
    "max_pool2d": lambda x, p: F.max_pool2d(x, 2),
    "batch_norm-residual-relu": lambda x, p: F.batch_norm(x, None, None, p["c"], p["c2"], True, residual=x * 2,
                                                          activation="relu"),
    "group_norm": lambda x, p: F.group_norm(x, 2, p["c"], p["c2"]),
    "layer_norm": lambda x, p: F.layer_norm(x, (5, 5)),
    "instance_norm": lambda x, p: F.instance_norm(x),
}


@pytest.mark.parametrize("name", list(BATCHED_GRADIENT_CALLS))
def test_gradients_batched_by_autograd(name, device):
    """``torch.autograd.grad(..., is_grads_batched=True)`` (vectorized Jacobians):
    the backward's gradients are batched by autograd's own vmap, which the
    launchers cannot read; the operators run once per sample through its fallback,
    giving the gradients a loop over the samples gives, Triton kernels included."""
    x = torch.randn(2, 4, 5, 5, device=device, requires_grad=True)
    params = {"w": torch.randn(6, 4, 3, 3), "b": torch.randn(6), "dw": torch.randn(4, 1, 3, 3),
              "c": torch.rand(4) + 0.5, "c2": torch.randn(4)}
    params = {k: v.to(device).requires_grad_() for k, v in params.items()}
    y = BATCHED_GRADIENT_CALLS[name](x, params)
    leaves = [x, *params.values()]
    vs = torch.randn(3, *y.shape, device=device)
    with count_launches() as launches:
        batched = torch.autograd.grad(y, leaves, vs, is_grads_batched=True, retain_graph=True, allow_unused=True)
    assert launches.total > 0
    for i, v in enumerate(vs):
        one = torch.autograd.grad(y, leaves, v, retain_graph=True, allow_unused=True)
        for got, want in zip(batched, one):
            assert (got is None) == (want is None)
            if want is not None:
                torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)


def test_functional_replaces_torchs_wholesale():
    """nnlib.functional has every public name of torch.nn.functional: its own for
    the ops it implements (__all__, each a torch.nn.functional name), torch's
    object for the rest; other names raise AttributeError."""
    import torch.nn.functional as TF
    import nnlib.functional as F
    public = [name for name in dir(TF) if not name.startswith("_")]
    assert set(F.__all__) <= set(public)
    for name in public:
        ours = getattr(F, name)
        if name in F.__all__:
            assert ours is not getattr(TF, name) and ours.__module__ == "nnlib.functional", name
        else:
            assert ours is getattr(TF, name), name
    x = torch.randn(2, 3)
    torch.testing.assert_close(F.softmax(x, 1), TF.softmax(x, 1))
    for missing in ("no_such_function", "__wrapped__"):
        with pytest.raises(AttributeError, match=missing):
            getattr(F, missing)


def test_compile_norms_once_for_every_size(device):
    """torch.compile(dynamic=True) of layer and group norm compiles once for batch and
    spatial sizes that vary, the sets past the single-read limit included: the
    per-sample operator decides its launches at run time (sizes decided in Python at
    trace time were baked into the graph, one compile per size, as torch.export's
    dynamic dims refused). Values equal eager mode's."""
    import nnlib
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward
    torch.manual_seed(0)
    cases = [(nnlib.LayerNorm(4), [(2, 4), (3, 4), (7, 4)]),
             (nnlib.GroupNorm(2, 4, activation="relu"), [(2, 4, 5, 6), (3, 4, 7, 9), (2, 4, 50, 51)])]
    for module, shapes in cases:
        module = module.to(device)
        torch._dynamo.reset()
        graphs.clear()
        compiled = torch.compile(module, backend=backend, dynamic=True, fullgraph=True)
        for shape in shapes:
            x = torch.randn(shape, device=device)
            torch.testing.assert_close(compiled(x), module(x))
        assert len(graphs) == 1, f"{type(module).__name__}: {len(graphs)} compiles for {len(shapes)} sizes"


def test_compile_shape_derived_int_arguments(device):
    """Int arguments Dynamo makes symbolic (a size, ``x.shape[1:]``; an int argument that
    changed between calls) pass the argument checks without a graph break:
    ``fullgraph=True`` compiles as often as for torch.nn.functional (layer norm's
    normalized_shape and group norm's num_groups stay symbolic: one graph for every
    size), with torch's values."""
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward
    torch.manual_seed(0)
    w = torch.randn(4, 4, 3, 3, device=device)
    cases = [("layer_norm", lambda m, x, k: m.layer_norm(x, x.shape[1:]), True),
             ("group_norm", lambda m, x, k: m.group_norm(x, x.shape[1] // 2), True),
             ("conv2d", lambda m, x, k: m.conv2d(x, w, padding=k), None)]     # k: automatically dynamic
    for name, call, dynamic in cases:
        compiles = []
        for functional in (TF, F):
            torch._dynamo.reset()
            graphs.clear()
            compiled = torch.compile(lambda x, k: call(functional, x, k), backend=backend, dynamic=dynamic,
                                     fullgraph=True)
            for shape, k in (((2, 4, 6, 5), 1), ((3, 4, 7, 6), 2), ((2, 4, 5, 9), 3)):
                x = torch.randn(shape, device=device)
                torch.testing.assert_close(compiled(x, k), call(TF, x, k), atol=1e-4, rtol=1e-4)
            compiles.append(len(graphs))
        assert compiles[1] == compiles[0] == (1 if dynamic else 2), f"{name}: compiles (torch, nnlib) {compiles}"
