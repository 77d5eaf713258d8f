"""Hypothesis strategies for tests/test_fuzz.py: random calls of every op of
``nnlib.functional``, each a ``Case`` that renders itself as a self-contained
Python program (the reproducer). The test runs exactly that program, so a
failure's printed reproducer is what failed.

* ``*_drafts`` draw valid calls of one op family: small awkward shapes (odd
  sizes, C = 1 and 3, batch 1, unbatched, N = 0 where torch allows it), fp32 /
  fp16 / bf16, input and parameter layouts (contiguous, channels_last,
  transposed, sliced, expanded), the arguments' values, nnlib's keyword-only
  extras; ``calls`` then draws their form (int or pair, list or tuple,
  positional or keyword, defaults omitted).
* ``value_cases`` checks a valid call against float64 torch; ``bad_cases`` makes
  one or two of its arguments wrong (types, lengths, ranks, sizes, dtypes,
  devices, values, bools for ints, ...) and checks the error against torch's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from hypothesis import assume
from hypothesis import strategies as st

from tests.reference import FLOAT_DTYPES

HALF_DTYPES = (torch.float16, torch.bfloat16)

# Short names for the tensors of a call, by parameter name.
_TENSOR_NAMES = {"input": "x", "weight": "w", "bias": "b", "running_mean": "rm", "running_var": "rv",
                 "residual": "r"}

_HEADER = """\
# nnlib fuzz reproducer: run from the repository root, python - < this_file.py
import os
import numpy as np
import torch
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"   # the kernels in Triton's interpreter, before triton is imported
import torch.nn.functional as TF
import nnlib.functional as F
from tests.test_fuzz import {check}, epilogue
device = "cuda" if torch.cuda.is_available() else "cpu"
"""


# ---------------------------------------------------------------------------
# Tensors and calls as code

@dataclass(frozen=True)
class TensorSpec:
    """A tensor as one line of code (drawn from torch's RNG after the case's seed).

    layout: "contiguous", "channels_last" (rank 4), "channels_last_sliced" (rank
    4: every other channel of a channels_last tensor), "transposed" (last two
    dims swapped, rank >= 2), "sliced" (every other element of the last dim),
    "expanded" (the first dim broadcast, stride 0). values: "randn",
    "positive" (rand + 0.5: variances), "ties" (integers in [-2, 2]: many ties),
    "special" (0, -0, +-1, NaN, +-inf), or a number (every element equal).
    ``clone``: passed as ``name.clone()``, for an in-place op on a leaf that
    requires grad."""
    shape: tuple
    dtype: torch.dtype = torch.float32
    layout: str = "contiguous"
    values: object = "randn"
    grad: bool = False
    device: str = "device"          # the variable of the tests' device, or a literal device string
    clone: bool = False

    def code(self) -> str:
        shape = list(self.shape)
        suffix = ""
        layout = self.layout
        if layout == "channels_last":
            suffix = ".contiguous(memory_format=torch.channels_last)"
        elif layout == "channels_last_sliced":
            shape[1] *= 2
            suffix = ".contiguous(memory_format=torch.channels_last)[:, ::2]"
        elif layout == "transposed":
            shape[-1], shape[-2] = shape[-2], shape[-1]
            suffix = ".transpose(-1, -2)"
        elif layout == "sliced":
            shape[-1] *= 2
            suffix = "[..., ::2]"
        elif layout == "expanded":
            suffix = f".expand{render(tuple(self.shape))}"
            shape[0] = 1
        else:
            assert layout == "contiguous", layout
        dims = render(tuple(shape))
        source = {"randn": f"torch.randn({dims})", "positive": f"(torch.rand({dims}) + 0.5)",
                  "ties": f"torch.randint(-2, 3, {dims}).float()",
                  "special": f"torch.tensor(SPECIAL)[torch.randint(0, {len(SPECIAL)}, {dims})]"}
        text = source[self.values] if isinstance(self.values, str) else f"torch.full({dims}, {render(self.values)})"
        device = self.device if self.device == "device" else repr(self.device)
        text += f".to({device}, {self.dtype}){suffix}"
        return text + (".requires_grad_()" if self.grad else "")


SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.5, float("nan"), float("inf"), float("-inf")]


def render(value) -> str:
    """Python source for an argument value."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float('{value}')"
    if isinstance(value, np.generic):
        return f"np.{type(value).__name__}({value.item()!r})"
    if isinstance(value, torch.Size):
        return f"torch.Size([{', '.join(map(render, value))}])"
    if isinstance(value, tuple):
        return f"({', '.join(map(render, value))}{',' if len(value) == 1 else ''})"
    if isinstance(value, list):
        return f"[{', '.join(map(render, value))}]"
    return repr(value)


@dataclass(frozen=True)
class Call:
    """One call of ``op`` (a name in both nnlib.functional and
    torch.nn.functional): ``args`` are (parameter name, value) in signature
    order, a TensorSpec for a tensor; the first ``positional`` are passed by
    position, the rest by keyword; ``extras`` are nnlib's keyword-only
    extensions (activation, negative_slope, residual), emulated by ``epilogue``
    on torch's side. ``kind`` is the tolerance table's row."""
    op: str
    args: tuple
    positional: int
    kind: str
    extras: tuple = ()

    def tensors(self) -> dict:
        """name -> TensorSpec of every tensor argument, in call order."""
        found = {}
        for param, value in self.args + self.extras:
            if isinstance(value, TensorSpec):
                found[_TENSOR_NAMES.get(param, param)] = value
        return found

    @staticmethod
    def _text(param: str, value) -> str:
        if isinstance(value, TensorSpec):
            name = _TENSOR_NAMES.get(param, param)
            return f"{name}.clone()" if value.clone else name
        return render(value)

    def _arguments(self, params, positional: int) -> str:
        return ", ".join(self._text(p, v) if i < positional else f"{p}={self._text(p, v)}"
                         for i, (p, v) in enumerate(params))

    def ours(self) -> str:
        return f"F.{self.op}({self._arguments(self.args + self.extras, self.positional)})"

    def reference(self) -> str:
        call = f"TF.{self.op}({self._arguments(self.args, self.positional)})"
        return f"epilogue({call}, {self._arguments(self.extras, 0)})" if self.extras else call


@dataclass(frozen=True)
class Case:
    """A call, the seed of its tensors, and the check it goes through:
    ``check`` is "check_values" or "check_errors" (tests/test_fuzz.py), with
    ``options`` (keyword arguments of the check)."""
    seed: int
    call: Call
    check: str
    options: tuple = ()

    def program(self) -> str:
        """The self-contained reproducer: imports, tensors, one check."""
        tensors = self.call.tensors()
        names = ", ".join(tensors)
        lines = [_HEADER.format(check=self.check), f"SPECIAL = {render(SPECIAL)}",
                 f"torch.manual_seed({self.seed})"]
        lines += [f"{name} = {spec.code()}" for name, spec in tensors.items()]
        options = "".join(f", {k}={render(v)}" for k, v in self.options)
        lines.append(f"{self.check}(lambda {names}: {self.call.ours()},\n"
                     f"    lambda {names}: {self.call.reference()},\n"
                     f"    [{names}], {self.call.kind!r}{options})")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Drafts: a call before its argument form is drawn

REQUIRED = object()       # the default of a parameter that has none


@dataclass(frozen=True)
class Draft:
    """A valid call of ``op``: ``args`` are (parameter name, value, default) in
    signature order (``REQUIRED`` for no default), the first ``required`` always
    passed by position; ``extras`` and ``kind`` as in ``Call``."""
    op: str
    args: tuple
    kind: str
    extras: tuple = ()
    required: int = 1

    def value(self, name: str):
        return next(v for n, v, _ in self.args if n == name)

    def with_arg(self, name: str, value) -> "Draft":
        return replace(self, args=tuple((n, value if n == name else v, d) for n, v, d in self.args))


@st.composite
def calls(draw, draft: Draft, extras: bool = True) -> Call:
    """``draft`` as a Call: a drawn number of positional arguments, and past them
    keyword arguments, those equal to their default sometimes omitted."""
    positional = draw(ints(draft.required, len(draft.args)))
    kept = []
    for i, (name, value, default) in enumerate(draft.args):
        if i >= positional and default is not REQUIRED and _same(value, default) and draw(st.booleans()):
            continue
        kept.append((name, value))
    chosen = tuple((k, v) for k, v in draft.extras if v is not None) if extras else ()
    return Call(draft.op, tuple(kept), positional, draft.kind, chosen)


def _same(value, default) -> bool:
    return type(value) is type(default) and value == default


# ---------------------------------------------------------------------------
# Building blocks

def ints(lo: int, hi: int):
    return st.integers(lo, hi)


@st.composite
def pair_form(draw, h: int, w: int):
    """An (h, w) argument as torch takes it: an int when h == w, a tuple or a list."""
    forms = [(h, w), [h, w]]
    if h == w:
        forms.insert(0, h)
    return draw(st.sampled_from(forms))


@st.composite
def input_layouts(draw, rank: int):
    """A layout a tensor of ``rank`` can take."""
    layouts = ["contiguous"]
    if rank >= 1:
        layouts.append("sliced")
    if rank >= 2:
        layouts.append("transposed")
    if rank == 4:
        layouts += ["channels_last", "channels_last_sliced"]
    return draw(st.sampled_from(layouts))


@st.composite
def parameters(draw, shape, dtype, values: str = "randn", grad: bool | None = None, written: bool = False):
    """A weight / bias / running stat of ``shape``: contiguous, sliced or expanded
    (not when ``written``: torch writes overlapping memory unchecked), transposed
    when 2-D or more; ``grad`` drawn when None."""
    layouts = ["contiguous"] + (["sliced"] if shape else []) + (["expanded"] if shape and not written else []) \
        + (["transposed"] if len(shape) >= 2 else [])
    grad = draw(st.booleans()) if grad is None else grad
    return TensorSpec(tuple(shape), dtype, draw(st.sampled_from(layouts)), values, grad)


@st.composite
def slopes(draw, allow_negative: bool = True):
    lo = -2.0 if allow_negative else 0.0
    fixed = [0.01, 0.2, 0.0, 1.0] + ([-0.5] if allow_negative else [])
    return draw(st.one_of(st.sampled_from(fixed), st.floats(lo, 2.0, width=32)))


@st.composite
def activation_extras(draw) -> tuple:
    """nnlib's fused activation: (("activation", ...), ("negative_slope", ...))."""
    activation = draw(st.sampled_from([None, "relu", "leaky_relu"]))
    slope = draw(slopes()) if activation == "leaky_relu" else None
    return (("activation", activation), ("negative_slope", slope))


def input_dtypes():
    return st.sampled_from(FLOAT_DTYPES)


@st.composite
def param_dtypes(draw, dtype):
    """Parameters in input's dtype or, for fp16 / bf16 input, float32 (mixed precision)."""
    return draw(st.sampled_from([dtype, torch.float32])) if dtype in HALF_DTYPES else dtype


@st.composite
def sizes(draw, count: int, choices=(3, 1, 2, 5, 7)):
    """``count`` sizes, odd ones first (what shrinking goes to)."""
    return tuple(draw(st.lists(st.sampled_from(choices), min_size=count, max_size=count)))


def _grad(draw) -> bool:
    return draw(st.integers(0, 3)) > 0


# ---------------------------------------------------------------------------
# Valid calls, one strategy per op family

def _activation_input(draw, integer: bool, grad: bool, clone: bool) -> TensorSpec:
    """An activation's input: rank 0 to 5, sizes 0 to 9 and 33 (two such dims pass a
    GPU block), any layout; NaN, infinities, signed zeros and ties."""
    rank = draw(ints(0, 5))
    shape = draw(sizes(rank, (3, 1, 2, 5, 7, 0, 9, 33)))
    dtype = torch.int32 if integer else draw(input_dtypes())
    values = "randn" if integer else draw(st.sampled_from(["randn", "special", "ties"]))
    return TensorSpec(shape, dtype, draw(input_layouts(rank)), values, grad, clone=clone)


@st.composite
def relu_drafts(draw):
    """relu / relu_ / leaky_relu / leaky_relu_, in place on non-dense views and on
    non-leaves under autograd; relu on integers."""
    op = draw(st.sampled_from(["relu", "leaky_relu", "relu_", "leaky_relu_"]))
    integer = op.startswith("relu") and draw(ints(0, 5)) == 0
    inplace = op.endswith("_") or draw(st.booleans())
    grad = not integer and not op.endswith("_") and _grad(draw)
    args = [("input", _activation_input(draw, integer, grad, clone=inplace and grad), REQUIRED)]
    if op.startswith("leaky"):
        # torch refuses a negative slope in place under autograd (documented, tested elsewhere).
        args.append(("negative_slope", draw(slopes(allow_negative=not (inplace and grad))), 0.01))
    if not op.endswith("_"):
        args.append(("inplace", inplace, False))
    return Draft(op, tuple(args), "elementwise")


@st.composite
def prelu_drafts(draw):
    """prelu with one slope (shape (1,) or ()) or one per channel (dim 1, or the
    only channel below rank 2)."""
    x = _activation_input(draw, integer=False, grad=_grad(draw), clone=False)
    channels = x.shape[1] if len(x.shape) >= 2 else 1
    weight_shape = draw(st.sampled_from([(channels,), (1,), ()] if channels != 1 else [(1,), ()]))
    w = draw(parameters(weight_shape, x.dtype, draw(st.sampled_from(["randn", "positive"]))))
    return Draft("prelu", (("input", x, REQUIRED), ("weight", w, REQUIRED)), "reduction", required=2)


@st.composite
def conv2d_drafts(draw):
    """conv2d on every kernel path (few / many channels per group, depthwise),
    stride, dilation, padding as ints, pairs, 'same' and 'valid', groups, bias
    None, weight and bias layouts, unbatched and N = 0, the fused activation.
    (No C = 0: a documented difference, README.)"""
    dtype = draw(input_dtypes())
    groups = draw(st.sampled_from([1, 2, 3]))
    cg = draw(st.sampled_from([1, 3, 2, 5, 16, 17]))
    kg = draw(st.sampled_from([1, 2, 3, 4, 16, 19]))
    kernel = (draw(ints(1, 4)), draw(ints(1, 4)))
    dilation = (draw(ints(1, 3)), draw(ints(1, 3)))
    padding_mode = draw(st.sampled_from(["ints", "ints", "same", "valid"]))
    stride = (1, 1) if padding_mode == "same" else (draw(ints(1, 3)), draw(ints(1, 3)))
    if padding_mode == "ints":
        padding = tuple(draw(ints(0, (d * (k - 1) + 1) // 2 + 1)) for k, d in zip(kernel, dilation))
        padded = [2 * p for p in padding]
        padding = draw(pair_form(*padding))
    else:
        padding = padding_mode
        padded = [d * (k - 1) if padding_mode == "same" else 0 for k, d in zip(kernel, dilation)]
    H, W = (max(1, d * (k - 1) + 1 - p) + draw(ints(0, 5)) for k, d, p in zip(kernel, dilation, padded))
    batch = draw(st.sampled_from([2, 1, 3, None, 0]))        # None: unbatched
    shape = (groups * cg, H, W) if batch is None else (batch, groups * cg, H, W)
    x = TensorSpec(shape, dtype, draw(input_layouts(len(shape))), "randn", _grad(draw))
    w = TensorSpec((groups * kg, cg, *kernel), dtype,
                   draw(st.sampled_from(["contiguous", "channels_last", "sliced", "transposed"])),
                   grad=draw(st.booleans()))
    b = draw(st.one_of(st.none(), parameters((groups * kg,), dtype)))
    args = (("input", x, REQUIRED), ("weight", w, REQUIRED), ("bias", b, None),
            ("stride", draw(pair_form(*stride)), 1), ("padding", padding, 0),
            ("dilation", draw(pair_form(*dilation)), 1), ("groups", groups, 1))
    draft = Draft("conv2d", args, "conv", draw(activation_extras()), required=2)
    assume(not torch_cpu_conv_crashes(draft))
    return draft


def _width_of(pair) -> int | None:
    """The width (second) entry of a conv int-or-pair argument, None when not an int."""
    value = pair[1] if isinstance(pair, (tuple, list)) and len(pair) == 2 else pair
    return value if type(value) is int else None


def torch_cpu_conv_crashes(draft: Draft) -> bool:
    """Whether torch's CPU conv2d (oneDNN, torch 2.13) may die of a segmentation fault
    on ``draft``, killing the tests' process: bfloat16 with a channels_last input or
    weight (its channels_last path), and either stride and dilation above 1 and
    padding along the width (found by make fuzz on inputs of width 1 and 2), or a
    dilation of 2**31 with padding 'same' (found by make fuzz); reproduced outside
    nnlib, 2026-11-29."""
    x, w = draft.value("input"), draft.value("weight")
    if torch.cuda.is_available() or not isinstance(x, TensorSpec) or len(x.shape) not in (3, 4):
        return False
    channels_last = x.layout.startswith("channels_last") or (isinstance(w, TensorSpec) and w.layout == "channels_last")
    if x.dtype != torch.bfloat16 or not channels_last:
        return False
    dilations = draft.value("dilation")
    dilations = dilations if isinstance(dilations, (tuple, list)) else (dilations,)
    if any(type(d) is int and d >= 2**31 for d in dilations):
        return True
    stride, dilation, padding = (_width_of(draft.value(n)) for n in ("stride", "dilation", "padding"))
    return None not in (stride, dilation, padding) and stride > 1 and dilation > 1 and padding > 0


def pool_output_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling output size (a last window must start inside input or left padding)."""
    span = n + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def window_in_padding(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> bool:
    """Whether some pooling window along one axis has every tap in the padding."""
    return any(all(not 0 <= o * s - p + i * d < n for i in range(k))
               for o in range(pool_output_size(n, k, s, p, d, ceil_mode)))


@st.composite
def max_pool2d_drafts(draw):
    """max_pool2d / max_pool2d_with_indices: kernel, stride (default too), padding up
    to half the (dilated) kernel, dilation, ceil_mode, return_indices, the fused
    relu; ties, NaN and infinities; unbatched and N = 0."""
    kernel = (draw(ints(1, 4)), draw(ints(1, 4)))
    dilation = (draw(ints(1, 3)), draw(ints(1, 3)))
    padding = tuple(draw(ints(0, min(k // 2, ((k - 1) * d + 1) // 2))) for k, d in zip(kernel, dilation))
    default_stride = draw(st.booleans())
    stride = kernel if default_stride else (draw(ints(1, 3)), draw(ints(1, 3)))
    ceil_mode = draw(st.booleans())
    H, W = (max(1, d * (k - 1) + 1 - 2 * p) + draw(ints(0, 6)) for k, d, p in zip(kernel, dilation, padding))
    batch = draw(st.sampled_from([2, 1, 3, None, 0]))
    C = draw(st.sampled_from([3, 1, 2, 5, 4]))
    shape = (C, H, W) if batch is None else (batch, C, H, W)
    dtype = draw(input_dtypes())
    # A window wholly in the padding gets its gradient nowhere in nnlib, at an index
    # outside the window in torch: a documented difference (README), so no gradient.
    empty_window = any(window_in_padding(n, *g, ceil_mode) for n, g in
                       zip((H, W), zip(kernel, stride, padding, dilation)))
    x = TensorSpec(shape, dtype, draw(input_layouts(len(shape))), draw(st.sampled_from(["randn", "ties", "special"])),
                   grad=not empty_window and _grad(draw))
    op = draw(st.sampled_from(["max_pool2d", "max_pool2d_with_indices"]))
    stride_arg = draw(st.sampled_from([None, ()])) if default_stride else draw(pair_form(*stride))
    args = (("input", x, REQUIRED), ("kernel_size", draw(pair_form(*kernel)), REQUIRED), ("stride", stride_arg, None),
            ("padding", draw(pair_form(*padding)), 0), ("dilation", draw(pair_form(*dilation)), 1),
            ("ceil_mode", ceil_mode, False), ("return_indices", draw(st.booleans()), False))
    return Draft(op, args, "elementwise", (("activation", draw(st.sampled_from([None, "relu"]))),), required=2)


@st.composite
def _norm_input(draw, min_rank: int, max_rank: int, batches=(2, 1, 3, 0), channels=(3, 1, 2, 5, 6)):
    rank = draw(ints(min_rank, max_rank))
    shape = (draw(st.sampled_from(batches)), draw(st.sampled_from(channels)), *draw(sizes(rank - 2)))
    return shape


def _input_spec(draw, shape, dtype):
    return TensorSpec(shape, dtype, draw(input_layouts(len(shape))), "randn", _grad(draw))


def _momentum_eps(draw):
    momentum = draw(st.one_of(st.sampled_from([0.1, 0.0, 1.0]), st.floats(0.0, 1.0)))
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    return ("momentum", momentum, 0.1), ("eps", eps, 1e-5)


@st.composite
def _affine(draw, shape, dtype):
    """(weight, bias), each None or a parameter of ``shape``."""
    weight = draw(st.one_of(st.none(), parameters(shape, dtype, "positive")))
    bias = draw(st.one_of(st.none(), parameters(shape, dtype)))
    return weight, bias


@st.composite
def _running_stats(draw, C: int, dtype, written: bool):
    """(running_mean, running_var); ``written``: the call updates them."""
    return (draw(parameters((C,), dtype, grad=False, written=written)),
            draw(parameters((C,), dtype, "positive", grad=False, written=written)))


@st.composite
def batch_norm_drafts(draw):
    """batch_norm, rank 2 to 5, training / eval, running stats None, momentum, eps,
    affine parts None, mixed-precision parameters, residual= and activation=."""
    shape = draw(_norm_input(2, 5))
    dtype = draw(input_dtypes())
    training = draw(st.booleans())
    if training and shape[0] * math.prod(shape[2:]) == 1:
        shape = (2, *shape[1:])                     # one value per channel: torch's ValueError
    params = draw(param_dtypes(dtype))
    stats = draw(_running_stats(shape[1], params, training)) if not training or draw(st.booleans()) else (None, None)
    weight, bias = draw(_affine((shape[1],), params))
    residual = _input_spec(draw, shape, dtype) if draw(st.booleans()) else None
    args = (("input", _input_spec(draw, shape, dtype), REQUIRED), ("running_mean", stats[0], REQUIRED),
            ("running_var", stats[1], REQUIRED), ("weight", weight, None), ("bias", bias, None),
            ("training", training, False), *_momentum_eps(draw))
    return Draft("batch_norm", args, "reduction", draw(activation_extras()) + (("residual", residual),), required=3)


@st.composite
def instance_norm_drafts(draw):
    """instance_norm, rank 3 to 5, use_input_stats or not, running stats of any
    floating dtype (torch's instance_norm takes any), affine parts None."""
    use_input_stats = draw(st.booleans())
    with_stats = not use_input_stats or draw(st.booleans())
    shape = draw(_norm_input(3, 5))
    if use_input_stats and math.prod(shape[2:]) == 1:
        shape = (*shape[:2], 2, *shape[3:])         # one value per instance: torch's ValueError
    dtype = draw(input_dtypes())
    params = draw(param_dtypes(dtype))
    stats = draw(_running_stats(shape[1], draw(st.sampled_from([*FLOAT_DTYPES, torch.float64])), use_input_stats)) \
        if with_stats else (None, None)
    # torch's instance_norm repeats weight and bias N times and fails for N = 0 (IndexError).
    weight, bias = draw(_affine((shape[1],), params)) if shape[0] else (None, None)
    if weight is None and bias is not None and bias.dtype != dtype:
        # torch's CPU kernel refuses half input with a float32 bias and no weight;
        # nnlib accepts it (a documented difference, README).
        bias = replace(bias, dtype=dtype)
    args = (("input", _input_spec(draw, shape, dtype), REQUIRED), ("running_mean", stats[0], None),
            ("running_var", stats[1], None), ("weight", weight, None), ("bias", bias, None),
            ("use_input_stats", use_input_stats, True), *_momentum_eps(draw))
    return Draft("instance_norm", args, "reduction", draw(activation_extras()))


@st.composite
def layer_norm_drafts(draw):
    """layer_norm over 1 to rank trailing dims of a rank 1 to 4 input, given as a
    list, tuple or torch.Size; affine parts None; any parameter layout."""
    rank = draw(ints(1, 4))
    shape = draw(sizes(rank, (3, 1, 2, 5, 7, 0))) if rank > 1 else draw(sizes(1))
    dims = draw(ints(1, rank))
    normalized = shape[rank - dims:]
    if 0 in normalized:
        shape = tuple(n or 3 for n in shape)
        normalized = shape[rank - dims:]
    dtype = draw(input_dtypes())
    weight, bias = draw(_affine(normalized, draw(param_dtypes(dtype))))
    form = draw(st.sampled_from([list, tuple, torch.Size]))
    args = (("input", _input_spec(draw, shape, dtype), REQUIRED), ("normalized_shape", form(normalized), REQUIRED),
            ("weight", weight, None), ("bias", bias, None), ("eps", draw(st.sampled_from([1e-5, 1e-3, 0.1])), 1e-5))
    return Draft("layer_norm", args, "reduction", draw(activation_extras()), required=2)


@st.composite
def group_norm_drafts(draw):
    """group_norm, rank 2 to 5, every num_groups dividing C (1, C, and between)."""
    shape = draw(_norm_input(2, 5, channels=(6, 1, 3, 4, 5, 12)))
    C = shape[1]
    groups = draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]))
    if shape[0] * C // groups * math.prod(shape[2:]) == 1:
        shape = (2, *shape[1:])                     # one value per group: torch's ValueError
    dtype = draw(input_dtypes())
    weight, bias = draw(_affine((C,), draw(param_dtypes(dtype))))
    if weight is None and bias is not None:
        bias = replace(bias, grad=False)    # torch's backward fails there ("tensor does not have a device")
    x = _input_spec(draw, shape, dtype)
    if x.layout.startswith("channels_last") and not x.grad:
        # torch 2.13's CPU backward crashes (SIGSEGV) on the parameters' gradients alone of a channels_last input
        weight, bias = (None if t is None else replace(t, grad=False) for t in (weight, bias))
    args = (("input", x, REQUIRED), ("num_groups", groups, REQUIRED),
            ("weight", weight, None), ("bias", bias, None), ("eps", draw(st.sampled_from([1e-5, 1e-3, 0.1])), 1e-5))
    return Draft("group_norm", args, "reduction", draw(activation_extras()), required=2)


DRAFTS = {"relu": relu_drafts(), "prelu": prelu_drafts(), "conv2d": conv2d_drafts(), "max_pool2d": max_pool2d_drafts(),
          "batch_norm": batch_norm_drafts(), "instance_norm": instance_norm_drafts(),
          "layer_norm": layer_norm_drafts(), "group_norm": group_norm_drafts()}


# ---------------------------------------------------------------------------
# Cases: a call, its seed and its check

SECOND_ORDER = {"conv2d": "kernels", "max_pool2d": "kernels", "relu": "kernels", "leaky_relu": "kernels",
                "prelu": "torch-ops", "batch_norm": "torch-ops", "instance_norm": "torch-ops",
                "layer_norm": "torch-ops", "group_norm": "torch-ops"}


@st.composite
def value_cases(draw, drafts):
    """A valid call checked against float64 torch (``check_values``); second
    derivatives on a share of the fp32 calls with a single output."""
    call = draw(calls(draw(drafts)))
    tensors = call.tensors()
    x = tensors["x"]
    args = dict(call.args)
    options = []
    if not math.prod(x.shape):
        options.append(("expect_launch", False))
    elif [name for name, t in tensors.items() if t.grad] == ["r"] and dict(call.extras).get("activation") is None:
        options.append(("backward_launch", False))      # the residual's gradient is the output's: nothing to run
    written = tuple(i for i, name in enumerate(tensors) if name in ("rm", "rv"))
    if written:
        options.append(("written", written))
    if (call.op.endswith("_") or args.get("inplace")) and not x.clone:
        options.append(("inplace", True))
    if dict(call.extras).get("activation") is not None:
        options.append(("fused_activation", True))
    slope = dict(call.extras).get("negative_slope")
    if call.op == "conv2d" and slope is not None and x.dtype in HALF_DTYPES:
        # The leaky relu's gradient dy * slope is stored in fp16 / bf16 before the
        # convolution's gradient sums it (as torch's autograd stores it); the
        # reference keeps it exact. Its rounding grows with the slope.
        options.append(("grad_scale", 4 * max(1.0, abs(slope))))
    single_output = call.op in SECOND_ORDER and not args.get("return_indices")
    # torch's own second derivatives are wrong for a norm with a bias and no weight
    # (none w.r.t. the output gradient; group_norm raises): no reference for them.
    torch_wrong = call.op.endswith("norm") and "b" in tensors and "w" not in tensors
    if (single_output and not torch_wrong and math.prod(x.shape) and any(t.grad for t in tensors.values())
            and all(t.dtype == torch.float32 for t in tensors.values() if t.dtype.is_floating_point)
            and draw(ints(0, 2)) == 0):
        options.append(("double_backward", SECOND_ORDER[call.op]))
        if call.op == "max_pool2d":     # its second derivative reaches the output gradient only (README)
            options.append(("connected", False))
    return Case(draw(st.integers(0, 2**16)), call, "check_values", tuple(options))


# ---------------------------------------------------------------------------
# Bad arguments: a valid call with one or two arguments made wrong

ARGUMENT_KINDS = {
    "input": "tensor", "weight": "tensor", "bias": "tensor", "running_mean": "tensor", "running_var": "tensor",
    "kernel_size": "pair", "stride": "pair", "padding": "pair", "dilation": "pair",
    "groups": "int", "num_groups": "int",
    "inplace": "bool", "ceil_mode": "bool", "return_indices": "bool", "training": "bool", "use_input_stats": "bool",
    "negative_slope": "float", "momentum": "float", "eps": "float",
    "normalized_shape": "shape",
}
WRONG_DTYPES = [torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool, torch.float16, torch.bfloat16,
                torch.float32, torch.complex64]


def _fit_layout(spec: TensorSpec) -> TensorSpec:
    """spec with its layout reset to contiguous where its rank no longer allows it."""
    rank = len(spec.shape)
    fits = {"channels_last": rank == 4, "channels_last_sliced": rank == 4, "transposed": rank >= 2,
            "sliced": rank >= 1, "expanded": rank >= 1}.get(spec.layout, True)
    return spec if fits else replace(spec, layout="contiguous")


# A device other than the tests' for a parameter: the CPU when the tests run on CUDA.
# (On a CPU-only machine there is none: torch runs a call that mixes the meta
# device with the CPU on the meta device, checking nothing.)
OTHER_DEVICE = "cpu" if torch.cuda.is_available() else None


@st.composite
def bad_tensors(draw, spec: TensorSpec | None, like: tuple, other_device: bool = True):
    """A tensor argument made wrong: another dtype, device (``OTHER_DEVICE``, not
    for the input), rank or size, requiring grad, expanded (overlapping), or not a
    tensor; an absent one (None) is given, of shape ``like``, and maybe made wrong
    as well."""
    if not isinstance(spec, TensorSpec):
        spec = TensorSpec(like)
        if draw(st.booleans()):
            return spec
    how = draw(st.sampled_from(["dtype", "rank", "size", "grad", "expanded", "other"]
                               + (["device"] if other_device and OTHER_DEVICE else [])))
    shape = spec.shape
    if how == "dtype":
        return replace(spec, dtype=draw(st.sampled_from(WRONG_DTYPES)), grad=False, clone=False)
    if how == "device":
        return replace(spec, device=OTHER_DEVICE)
    if how == "rank":
        shapes = [(1, *shape), (*shape, 1)] + ([shape[1:], shape[:-1]] if shape else [])
        return _fit_layout(replace(spec, shape=draw(st.sampled_from(shapes))))
    if how == "size" and shape:
        dim = draw(ints(0, len(shape) - 1))
        size = draw(st.sampled_from(sorted({shape[dim] + 1, max(shape[dim] - 1, 0), 0, 1, 2} - {shape[dim]})))
        return replace(spec, shape=shape[:dim] + (size,) + shape[dim + 1:])
    if how == "grad" and spec.dtype.is_floating_point:
        return replace(spec, grad=True)
    if how == "expanded" and shape:
        return replace(spec, layout="expanded")
    return draw(st.sampled_from([None, 1.0, [1.0, 2.0], "x", 3]))


def _scalar(value, dtype) -> TensorSpec:
    """A 0-d tensor holding ``value``."""
    return TensorSpec((), dtype, values=value)


def _int_lists():
    return st.lists(ints(-2, 6), max_size=3).flatmap(lambda v: st.sampled_from([tuple(v), v]))


BAD_VALUES = {
    "pair": st.one_of(ints(-2, 6), _int_lists(), st.sampled_from(
        [1.5, (2, 2.0), (1, False), (False, 1), True, False, None, "same", "valid", "full", "2", torch.Size([2, 2]),
         2**31, (2**31, 1), (np.int64(2), 1), _scalar(2, torch.int64), _scalar(2.0, torch.float32)])),
    "int": st.one_of(ints(-2, 7), st.sampled_from([True, False, 2.0, None, "2", (2,), 2**31, np.int64(2),
                                                   _scalar(2, torch.int64), _scalar(2.0, torch.float32)])),
    "bool": st.sampled_from([True, False, 0, 1, None, "True", 1.0, np.bool_(True), _scalar(True, torch.bool)]),
    "float": st.one_of(st.floats(-1.0, 2.0), st.sampled_from(
        [0.0, -1e-5, float("nan"), float("inf"), float("-inf"), 0, 2, True, False, None, "0.1", 1j, np.float32(0.5),
         _scalar(0.5, torch.float32), TensorSpec((1,), values=0.5), TensorSpec((2,), values=0.5)])),
}


@st.composite
def bad_shapes(draw, shape):
    """A wrong ``normalized_shape`` for layer_norm (``shape`` maybe already wrong)."""
    shape = list(shape) if isinstance(shape, (list, tuple)) and shape and all(type(n) is int for n in shape) else [3]
    return draw(st.sampled_from([shape[-1], shape[1:], [1, *shape], [*shape[:-1], shape[-1] + 1], [], None,
                                 [float(shape[-1])], [-1], [True], "x"]))


def _like(draft: Draft, name: str) -> tuple:
    """The right shape of parameter ``name`` (weight, bias, running stats) for
    draft, as far as its (maybe already wrong) other arguments tell."""
    if draft.op == "layer_norm":
        shape = draft.value("normalized_shape")
        return tuple(shape) if isinstance(shape, (list, tuple)) and all(type(n) is int and n >= 0 for n in shape) \
            else (1,)
    source, dim = (draft.value("weight"), 0) if draft.op == "conv2d" else (draft.value("input"), 1)
    return (source.shape[dim],) if isinstance(source, TensorSpec) and len(source.shape) > dim else (1,)


@st.composite
def bad_value(draw, draft: Draft, name: str):
    """A wrong (or sometimes, by chance, right) value for argument ``name``."""
    kind = ARGUMENT_KINDS[name]
    if kind == "tensor":
        return draw(bad_tensors(draft.value(name), _like(draft, name), other_device=name != "input"))
    if kind == "shape":
        return draw(bad_shapes(draft.value(name)))
    value = draw(BAD_VALUES[kind])
    if name == "padding" and draft.op == "conv2d" and not isinstance(value, (str, TensorSpec)) and \
            2**31 in (value if isinstance(value, (tuple, list)) else (value,)):
        return 1                  # torch would allocate a 2**31-wide output
    return value


@st.composite
def bad_cases(draw, drafts):
    """A valid call (no gradients, no extras) with one or two arguments made wrong,
    checked by ``check_errors``."""
    draft = draw(drafts)
    draft = replace(draft, args=tuple((n, replace(v, grad=False, clone=False) if isinstance(v, TensorSpec) else v, d)
                                      for n, v, d in draft.args))
    for _ in range(draw(ints(1, 2))):
        name = draw(st.sampled_from([n for n, _, _ in draft.args]))
        draft = draft.with_arg(name, draw(bad_value(draft, name)))
    assume(draft.op != "conv2d" or not torch_cpu_conv_crashes(draft))
    return Case(draw(st.integers(0, 2**16)), draw(calls(draft, extras=False)), "check_errors")
