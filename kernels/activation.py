"""ReLU, leaky ReLU and PReLU: the activation epilogue every kernel shares, the
elementwise kernels, and their registered operators (``kernels._library``).

``apply_activation`` / ``activation_grad`` are the package's single definition of
the activation math; conv and norm kernels call them in their epilogues with
``ACTIVATION`` one of ``ACT_NONE``, ``ACT_RELU``, ``ACT_LEAKY_RELU``.

Layouts: relu / leaky_relu run over the flat storage of any dense tensor
(contiguous, channels_last, any dim permutation) without a copy; a non-dense
view is copied once, into the memory format torch gives its output. PReLU reads its input as (outer, C, inner)
through strides, so most views need no copy; one whose dims cannot be merged
that way is copied once.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ._reduce import sum_partials
from ._library import Operator, tracing
from ._runtime import (CompileCase, bind, cdiv, interpreting, is_dense, kernel_parameters, next_power_of_2,
                       plan_cache, view_3d)

# The activation codes, one definition: constexpr globals for the kernels; host
# code uses their ``.value`` (plain ints; ``ACTIVATIONS`` maps the names).
ACT_NONE: tl.constexpr = tl.constexpr(0)
ACT_RELU: tl.constexpr = tl.constexpr(1)
ACT_LEAKY_RELU: tl.constexpr = tl.constexpr(2)

ACTIVATIONS = {None: ACT_NONE.value, "relu": ACT_RELU.value, "leaky_relu": ACT_LEAKY_RELU.value}


def activation_code(activation: str | None, op: str) -> int:
    """Map the ``activation=`` keyword of the fused ops to the kernels' constexpr."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}(): activation must be None, 'relu' or 'leaky_relu', got {activation!r}")
    return ACTIVATIONS[activation]


@triton.jit
def apply_activation(x, ACTIVATION: tl.constexpr, negative_slope):
    """Activation of ``x`` (fp32; relu: any dtype, integers kept exact): identity,
    relu, or leaky relu with ``negative_slope``. NaN propagates, as in torch."""
    if ACTIVATION == ACT_RELU:
        x = tl.where(x < 0, 0, x)
    elif ACTIVATION == ACT_LEAKY_RELU:
        x = tl.where(x > 0, x, x * negative_slope)     # torch's: 0 * a non-finite slope is NaN
    return x


@triton.jit
def activation_grad(grad, v, ACTIVATION: tl.constexpr, negative_slope):
    """Gradient through the activation. ``v`` is its input, or its output when the
    slope is >= 0 (same sign). Matches torch: relu passes the gradient where
    ``v > 0`` or NaN, leaky relu scales it by the slope where ``v <= 0`` or NaN."""
    if ACTIVATION == ACT_RELU:
        grad = tl.where(v <= 0, 0.0, grad)
    elif ACTIVATION == ACT_LEAKY_RELU:
        grad = tl.where(v > 0, grad, grad * negative_slope)
    return grad


# ---------------------------------------------------------------------------
# Kernels

@triton.jit
def _activation_fwd_kernel(x_ptr, y_ptr, negative_slope, n_elements,
                           ACTIVATION: tl.constexpr, BLOCK: tl.constexpr):
    """x, y: flat dense storage of n_elements. y = act(x), computed in fp32
    (integer x for relu stays integer). Full blocks go unmasked, so that their
    loads and stores are 16-byte vectors whatever n_elements; the last block masked."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n_elements:
        _activation_fwd_block(x_ptr, y_ptr, offs, None, negative_slope, ACTIVATION)
    else:
        _activation_fwd_block(x_ptr, y_ptr, offs, offs < n_elements, negative_slope, ACTIVATION)


@triton.jit
def _activation_fwd_block(x_ptr, y_ptr, offs, mask, negative_slope, ACTIVATION: tl.constexpr):
    x = tl.load(x_ptr + offs, mask=mask)
    if x.dtype.is_floating():
        y = apply_activation(x.to(tl.float32), ACTIVATION, negative_slope)
    else:
        y = apply_activation(x, ACTIVATION, negative_slope)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _activation_bwd_kernel(grad_ptr, v_ptr, grad_in_ptr, negative_slope, n_elements,
                           ACTIVATION: tl.constexpr, BLOCK: tl.constexpr):
    """grad, v, grad_in: flat dense storage of n_elements, one layout.
    grad_in = grad * act'(v), v the saved input (or output); blocks as in the forward."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n_elements:
        _activation_bwd_block(grad_ptr, v_ptr, grad_in_ptr, offs, None, negative_slope, ACTIVATION)
    else:
        _activation_bwd_block(grad_ptr, v_ptr, grad_in_ptr, offs, offs < n_elements, negative_slope, ACTIVATION)


@triton.jit
def _activation_bwd_block(grad_ptr, v_ptr, grad_in_ptr, offs, mask, negative_slope, ACTIVATION: tl.constexpr):
    grad = tl.load(grad_ptr + offs, mask=mask).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask).to(tl.float32)
    grad_in = activation_grad(grad, v, ACTIVATION, negative_slope)
    tl.store(grad_in_ptr + offs, grad_in.to(grad_in_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _prelu_fwd_kernel(x_ptr, weight_ptr, y_ptr, outer, C, inner,
                      stride_xo, stride_xc, stride_xi, stride_yo, stride_yc, stride_yi,
                      W_STRIDE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """x, y: (outer, C, inner) through strides; weight: C contiguous slopes
    (W_STRIDE 1) or one shared by every channel (W_STRIDE 0). Program (r, c)
    covers BLOCK_R positions of outer*inner and BLOCK_C channels."""
    pid_r = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask = (offs_r[:, None] < outer * inner) & mask_c[None, :]
    offs_o = offs_r // inner
    offs_i = offs_r % inner
    x_offs = offs_o[:, None] * stride_xo + offs_c[None, :].to(tl.int64) * stride_xc + offs_i[:, None] * stride_xi
    y_offs = offs_o[:, None] * stride_yo + offs_c[None, :].to(tl.int64) * stride_yc + offs_i[:, None] * stride_yi
    x = tl.load(x_ptr + x_offs, mask=mask).to(tl.float32)
    w = tl.load(weight_ptr + offs_c * W_STRIDE, mask=mask_c).to(tl.float32)
    y = tl.where(x > 0, x, x * w[None, :])
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _prelu_bwd_kernel(grad_ptr, x_ptr, weight_ptr, grad_x_ptr, partial_ptr, outer, C, inner,
                      stride_go, stride_gc, stride_gi, stride_xo, stride_xc, stride_xi,
                      stride_dxo, stride_dxc, stride_dxi, rows_per_chunk,
                      W_STRIDE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """grad, x, grad_x: (outer, C, inner) through strides; weight as the forward's;
    partial: (num_chunks, C) fp32. Program (chunk, c) writes grad_x over its
    rows_per_chunk positions of outer*inner (a multiple of BLOCK_R) and its fp32 partial sum of the
    weight gradient x * grad over x <= 0 (NaN included, as torch)."""
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    w = tl.load(weight_ptr + offs_c * W_STRIDE, mask=mask_c).to(tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    n_rows = outer * inner
    chunk_start = pid_s.to(tl.int64) * rows_per_chunk
    for start in range(0, rows_per_chunk, BLOCK_R):
        offs_r = chunk_start + start + tl.arange(0, BLOCK_R)
        mask = (offs_r[:, None] < n_rows) & mask_c[None, :]
        offs_o = offs_r[:, None] // inner
        offs_i = offs_r[:, None] % inner
        offs_cc = offs_c[None, :].to(tl.int64)
        g = tl.load(grad_ptr + offs_o * stride_go + offs_cc * stride_gc + offs_i * stride_gi,
                    mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs_o * stride_xo + offs_cc * stride_xc + offs_i * stride_xi,
                    mask=mask, other=0.0).to(tl.float32)
        positive = x > 0
        grad_x = tl.where(positive, g, g * w[None, :])
        tl.store(grad_x_ptr + offs_o * stride_dxo + offs_cc * stride_dxc + offs_i * stride_dxi,
                 grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
        acc += tl.where(positive, 0.0, x * g)     # masked lanes load 0
    tl.store(partial_ptr + pid_s.to(tl.int64) * C + offs_c, tl.sum(acc, axis=0), mask=mask_c)


# ---------------------------------------------------------------------------
# Host launchers (each one a registered operator below)

_BLOCK = 1024


def _flat_block(n: int) -> int:
    # The interpreter pays per program, so it gets one large block.
    return max(_BLOCK, min(next_power_of_2(n), 1 << 16)) if interpreting() else _BLOCK


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t itself when its storage is dense (any dim order), else a dense copy in the
    memory format torch gives its output (channels_last for channels_last strides)."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) or is_dense(t):
        return t
    return torch.empty_like(t).copy_(t)


def _output_like(t: torch.Tensor) -> torch.Tensor:
    """An output for an elementwise op of dense ``t``, in the strides torch's
    elementwise ops give it (TensorIterator's fast setup): contiguous where t is
    (the strides of its size-1 dims aside), else channels_last where t is, else
    t's own. The same memory order as t in every case (a size-1 dim's stride
    moves no element), so that the kernels walk both flat."""
    if t.is_contiguous():
        return torch.empty(t.shape, dtype=t.dtype, device=t.device)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.empty_like(t, memory_format=torch.channels_last)
    return torch.empty_like(t)


def _same_order(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Dense a and b (same shape) hold their elements in the same memory order: equal
    strides but in size-1 dims."""
    return all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


@plan_cache
def _flat_launch(kernel, n: int, activation: int):
    """``run(*tensors, negative_slope)``: ``kernel`` (the forward or backward) over n
    elements, bound once per (n, activation); its leading arguments are the tensors
    and the slope (a float, which a kernel's specialisation ignores)."""
    block = _flat_block(n)
    names = list(kernel_parameters(kernel))
    leading = tuple(names[:names.index("negative_slope") + 1])
    return bind(kernel, (cdiv(n, block),), leading, 4, n_elements=n, ACTIVATION=activation, BLOCK=block)


def _launch_activation(src: torch.Tensor, dst: torch.Tensor, activation: int, negative_slope: float) -> None:
    """dst = act(src), both dense in the same memory order (``_output_like``)."""
    n = src.numel()
    if n:
        _flat_launch(_activation_fwd_kernel, n, activation)(src, dst, float(negative_slope))


def activation_forward(x: torch.Tensor, activation: int, negative_slope: float, inplace: bool = False) -> torch.Tensor:
    """act(x) in x's layout where x is dense (``_output_like``; else contiguous).
    ``inplace``: the caller writes the result into x (an in-place call, traced), so
    that the backward reads the output, as torch's in-place ops do (read by
    ``_activation_setup`` only)."""
    src = _dense(x)
    dst = _output_like(src)
    _launch_activation(src, dst, activation, negative_slope)
    return dst


def activation_forward_(x: torch.Tensor, activation: int, negative_slope: float) -> None:
    """x = act(x) in place (through one contiguous copy when x is not dense). x's
    version is left to the caller, which makes torch's one bump."""
    if _dense(x) is x:
        _launch_activation(x, x, activation, negative_slope)
        return
    y = activation_forward(x, activation, negative_slope)
    with contextlib.nullcontext() if x.is_inference() else torch.autograd._unsafe_preserve_version_counter(x):
        x.copy_(y)


def activation_backward(grad: torch.Tensor, saved: torch.Tensor, activation: int,
                        negative_slope: float) -> torch.Tensor:
    """grad * act'(saved); the result has saved's layout (``_output_like``; contiguous
    when saved is not dense)."""
    dense = _dense(saved)
    if dense is not saved or (grad.stride() != dense.stride() and not _same_order(grad, dense)):
        saved = dense
        grad = torch.empty_like(saved).copy_(grad)
    grad_in = _output_like(saved)
    n = saved.numel()
    if n:
        _flat_launch(_activation_bwd_kernel, n, activation)(grad, saved, grad_in, float(negative_slope))
    return grad_in


def _as_3d(t: torch.Tensor):
    """``t`` as (outer, C, inner) with C = t.shape[1] (one channel below rank 2):
    returns (tensor, shape, strides), copying only when dims cannot be merged."""
    if t.dim() < 2:
        t = t.reshape(1, 1, -1)
    described = view_3d(t, 1)
    if described is None:
        # An empty t counts as contiguous whatever its strides: give it contiguous ones.
        t = t.contiguous() if t.numel() else t.new_empty(t.shape)
        described = view_3d(t, 1)
    return t, described[0], described[1]


def _prelu_tiles(C: int, interpreter: bool = False):
    """(BLOCK_C, BLOCK_R): 1024-element tiles on a GPU, 16x larger under the interpreter."""
    block_c = min(next_power_of_2(C), 32)
    return block_c, max(32, 1024 // block_c) * (16 if interpreter else 1)


def _slopes(weight: torch.Tensor) -> torch.Tensor:
    """weight as the prelu kernels read it: its elements contiguous (one slope, or
    C; a kernel reads one shared slope with W_STRIDE 0)."""
    return weight if weight.is_contiguous() else weight.contiguous()


_AS_IS, _RESHAPED, _COPIED = 0, 1, 2      # how ``_read_3d`` reads a tensor as (outer, C, inner)


def _layout_3d(shape: tuple, strides: tuple):
    """(how, (outer, C, inner), strides) of ``_as_3d`` for a tensor of this layout:
    read as it is, reshaped (rank below 2) or through a contiguous copy."""
    t = torch.empty_strided(shape, strides, device="meta")
    t3, dims, strides3 = _as_3d(t)
    how = _AS_IS if t3 is t else _RESHAPED if len(shape) < 2 and t3._base is t else _COPIED
    return how, dims, strides3


def _read_3d(t: torch.Tensor, how: int) -> torch.Tensor:
    """``_as_3d(t)[0]`` as ``_layout_3d`` found it."""
    return t if how == _AS_IS else t.reshape(1, 1, -1) if how == _RESHAPED else t.contiguous()


@plan_cache
def _prelu_forward_plan(shape: tuple, strides: tuple, shared: bool):
    """run(x, weight) -> y of x's layout (``shared``: one slope for every channel):
    how x and y are read, the bound launch."""
    x_how, (outer, C, inner), x_strides = _layout_3d(shape, strides)
    y_like = torch.empty_like(torch.empty_strided(shape, strides, device="meta"))
    y_how, _, y_strides = _layout_3d(y_like.shape, y_like.stride())
    block_c, block_r = _prelu_tiles(C, interpreting())
    forward = bind(_prelu_fwd_kernel, (cdiv(outer * inner, block_r), cdiv(C, block_c)),
                   ("x_ptr", "weight_ptr", "y_ptr"), 4, outer=outer, C=C, inner=inner,
                   **dict(zip(("stride_xo", "stride_xc", "stride_xi", "stride_yo", "stride_yc", "stride_yi"),
                              (*x_strides, *y_strides))), W_STRIDE=0 if shared else 1, BLOCK_R=block_r,
                   BLOCK_C=block_c)
    empty = outer * C * inner == 0

    def run(x, weight):
        y = torch.empty_like(x)
        if empty:
            return y
        y3 = _read_3d(y, y_how)
        forward(_read_3d(x, x_how), _slopes(weight), y3)
        return _written(y, y3)
    return run


def prelu_forward(x: torch.Tensor, weight: torch.Tensor, master_weight: torch.Tensor | None) -> torch.Tensor:
    """x: any shape, C = x.shape[1] (1 below rank 2); weight: (1,) or (C,).
    The output has ``torch.empty_like(x)``'s layout, as torch's. ``master_weight``:
    the weight that autocast's cast, made outside autograd, turned into ``weight``
    (read by nothing here): the weight gradient goes to it, in its dtype."""
    return _prelu_forward_plan(x.shape, x.stride(), weight.numel() == 1)(x, weight)


def _written(out: torch.Tensor, out3: torch.Tensor) -> torch.Tensor:
    """``out``, which a kernel wrote through ``out3 = _as_3d(out)[0]``: out itself or a
    view of it, else (dims that do not merge) a copy, copied back. Not a view: a
    caller may write the result in place, as torch's."""
    if out3.untyped_storage().data_ptr() != out.untyped_storage().data_ptr():
        out.copy_(out3)
    return out


@plan_cache
def _prelu_backward_plan(shape: tuple, grad_strides: tuple, x_strides: tuple, shared: bool):
    """run(grad, x, weight) -> (grad_x, grad_weight) for these layouts (``shared``:
    one slope for every channel): how each tensor is read, the chunks, the bound
    launch."""
    g_how, _, g_strides = _layout_3d(shape, grad_strides)
    x_how, (outer, C, inner), x3_strides = _layout_3d(shape, x_strides)
    dx_like = torch.empty_like(torch.empty_strided(shape, x_strides, device="meta"))
    dx_how, _, dx_strides = _layout_3d(dx_like.shape, dx_like.stride())
    n_rows = outer * inner
    block_c, block_r = _prelu_tiles(C, interpreting())
    c_blocks = cdiv(C, block_c)
    # Enough chunks to fill a GPU, each a whole number of row blocks.
    num_chunks = max(1, min(cdiv(n_rows, block_r), 1024 // max(c_blocks, 1)))
    rows_per_chunk = cdiv(cdiv(max(n_rows, 1), num_chunks), block_r) * block_r
    num_chunks = cdiv(n_rows, rows_per_chunk)     # 0 without rows: the sums are then 0
    strides = dict(zip(("stride_go", "stride_gc", "stride_gi", "stride_xo", "stride_xc", "stride_xi",
                        "stride_dxo", "stride_dxc", "stride_dxi"), (*g_strides, *x3_strides, *dx_strides)))
    pointers = ("grad_ptr", "x_ptr", "weight_ptr", "grad_x_ptr", "partial_ptr")
    backward = bind(_prelu_bwd_kernel, (num_chunks, c_blocks), pointers, 8, outer=outer, C=C, inner=inner,
                    **strides, rows_per_chunk=rows_per_chunk, W_STRIDE=0 if shared else 1, BLOCK_R=block_r,
                    BLOCK_C=block_c)
    launched = n_rows > 0 and C > 0

    def run(grad, x, weight, dtype):
        grad_x = torch.empty_like(x)
        dx3 = _read_3d(grad_x, dx_how)
        partials = torch.empty((num_chunks, C), dtype=torch.float32, device=x.device)
        if launched:
            backward(_read_3d(grad, g_how), _read_3d(x, x_how), _slopes(weight), dx3, partials)
        # one slope: the sum over every channel too
        grad_w = sum_partials(partials.view(-1, 1) if shared else partials, dtype, weight.shape)
        return _written(grad_x, dx3), grad_w
    return run


def prelu_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                   dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight). The weight gradient is reduced in two deterministic
    passes: fp32 partials per (chunk, channel), then ``sum_partials`` (over the
    channels too for one shared slope), rounded once to ``dtype`` (None: weight's)."""
    return _prelu_backward_plan(x.shape, grad.stride(), x.stride(), weight.numel() == 1)(grad, x, weight,
                                                                                          dtype or weight.dtype)


# ---------------------------------------------------------------------------
# Operators (kernels/_library.py): relu / leaky_relu, in place or not, prelu,
# and their gradients, which are operators too so that double backward runs
# the same kernels.

def _activation_setup(ctx, inputs, output):
    x, activation, negative_slope = inputs[:3]
    inplace = len(inputs) > 3 and inputs[3]       # passed by a traced in-place call only
    # The output is saved in place of the input where the sign test agrees (relu), or
    # where the input is overwritten by it (in place, as torch's leaky_relu_).
    ctx.save_for_backward(output if activation == ACT_RELU.value or inplace else x)
    ctx.activation, ctx.negative_slope, ctx.inplace = activation, negative_slope, inplace


def _activation_backward(ctx, grad):
    if ctx.inplace and ctx.activation == ACT_LEAKY_RELU.value and not ctx.negative_slope >= 0:     # NaN too
        raise RuntimeError(
            "In-place leakyReLu backward calculation is triggered with a negative slope which is "
            "not supported. This is caused by calling in-place forward function with a negative "
            "slope, please call out-of-place version instead.")     # torch's words
    (saved,) = ctx.saved_tensors
    return activation_grad_op(grad, saved, ctx.activation, ctx.negative_slope), None, None, None


def _activation_grad_setup(ctx, inputs, output):
    _, saved, ctx.activation, ctx.negative_slope = inputs
    ctx.save_for_backward(saved)


def _activation_grad_backward(ctx, grad_grad):
    """Linear in grad; act' is piecewise constant, so saved gets a gradient of
    zeros (as from torch's threshold_backward and leaky_relu_backward: zeros, not
    none, so what saved came from gets zero gradients, not none, as in torch)."""
    (saved,) = ctx.saved_tensors
    zeros = torch.zeros_like(saved) if ctx.needs_input_grad[1] else None
    return activation_grad_op(grad_grad, saved, ctx.activation, ctx.negative_slope), zeros, None, None


activation_op = Operator("activation", activation_forward,
                         fake=lambda x, a, s, inplace=False: _output_like(_dense(x)),
                         setup_context=_activation_setup, backward=_activation_backward)
activation_inplace_op = Operator("activation_", activation_forward_, fake=lambda x, a, s: None,
                                 mutates_args=("x",))
activation_grad_op = Operator("activation_backward", activation_backward,
                              fake=lambda g, saved, a, s: _output_like(_dense(saved)),
                              setup_context=_activation_grad_setup, backward=_activation_grad_backward)


class _InplaceActivation(torch.autograd.Function):
    """relu_ / leaky_relu_ in eager mode: writes x, marks it dirty, saves the
    output (whose sign is the input's) for the backward."""

    @staticmethod
    def forward(ctx, x, activation, negative_slope):
        activation_forward_(x, activation, negative_slope)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.activation, ctx.negative_slope, ctx.inplace = activation, negative_slope, True
        ctx.set_materialize_grads(False)    # as the operators (kernels._library._as_torchs)
        return x

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return None, None, None
        return _activation_backward(ctx, grad)[:3]


def activation_(x: torch.Tensor, activation: int, negative_slope: float) -> torch.Tensor:
    """x = act(x) in place; returns x. Recorded by autograd through
    _InplaceActivation, else one version bump (as torch's in-place ops); the
    launcher runs directly, under a dispatch mode too: a mode that caches ops
    (selective checkpointing) would replay the in-place operator's empty result
    and skip its write. Traced with autograd as torch's in-place ops are
    functionalized: the functional operator (its backward reading the output, which
    the copy does not change), then a copy into x."""
    if not tracing(x):
        if torch.is_grad_enabled() and x.requires_grad:
            return _InplaceActivation.apply(x, activation, negative_slope)
        activation_forward_(x, activation, negative_slope)
        torch.autograd.graph.increment_version(x)
        return x
    if torch.is_grad_enabled() and x.requires_grad:
        return x.copy_(activation_op(x, activation, negative_slope, True))
    activation_inplace_op(x, activation, negative_slope)
    return x


def _prelu_setup(ctx, inputs, output):
    """Saves x, weight and, when x takes a gradient, the master weight (read only by
    a create_graph input gradient: see ``_prelu_backward``)."""
    x, weight, master = inputs
    ctx.save_for_backward(x, weight, master if ctx.needs_input_grad[0] else None)
    ctx.master_dtype = None if master is None else master.dtype


def _prelu_backward(ctx, grad):
    """With a master weight (autocast), the weight gradient is written in its dtype
    and goes to it; under create_graph the gradients read the master's cast, made
    again in the graph, so that second derivatives reach the master."""
    x, weight, master = ctx.saved_tensors
    need_x, need_w, to_master = ctx.needs_input_grad
    if to_master and need_x and torch.is_grad_enabled():
        weight = master.to(weight.dtype)
    grad_x, grad_w = prelu_grad_op(grad, x, weight, ctx.master_dtype if to_master else None)
    return (grad_x if need_x else None, grad_w if need_w and not to_master else None,
            grad_w if to_master else None)


def _prelu_grad_setup(ctx, inputs, output):
    grad, x, weight, dtype = inputs
    ctx.save_for_backward(grad, x, weight)


def _prelu_grad_backward(ctx, grad_grad_x, grad_grad_w):
    """Second derivatives of prelu in torch elementwise ops and per-channel sums,
    which torch can differentiate further."""
    grad, x, weight = ctx.saved_tensors
    if grad_grad_w is not None:         # in a master weight's dtype under autocast
        grad_grad_w = grad_grad_w.to(weight.dtype)
    channel_shape = [1] * x.dim()
    if x.dim() >= 2 and weight.numel() > 1:
        channel_shape[1] = -1
    # torch's second-derivative formulas take x >= 0 as the positive side (its first
    # derivative counts x == 0 as negative; NaN is negative in both); follow them.
    negative = ~(x >= 0)
    d_grad = None
    # Without the other incoming gradient, x and weight get zeros, not none (torch's formulas)
    d_x = torch.zeros_like(x) if grad_grad_w is None and ctx.needs_input_grad[1] else None
    d_w = torch.zeros_like(weight) if grad_grad_x is None and ctx.needs_input_grad[2] else None
    if grad_grad_x is not None:
        d_grad = grad_grad_x * torch.where(negative, weight.reshape(channel_shape), 1)
        dims = [d for d in range(x.dim()) if d != 1 or weight.numel() == 1]
        d_w = torch.where(negative, grad_grad_x * grad, 0).sum(dims).reshape(weight.shape)
    if grad_grad_w is not None:
        spread = grad_grad_w.reshape(channel_shape)
        d_x = torch.where(negative, spread * grad, 0)
        from_w = torch.where(negative, spread * x, 0)
        d_grad = from_w if d_grad is None else d_grad + from_w
    return d_grad, d_x, d_w, None


prelu_op = Operator("prelu", prelu_forward, fake=lambda x, w, master: torch.empty_like(x),
                    setup_context=_prelu_setup, backward=_prelu_backward)
prelu_grad_op = Operator("prelu_backward", prelu_backward,
                         fake=lambda g, x, w, dtype: (torch.empty_like(x),
                                                       torch.empty(w.shape, dtype=dtype or w.dtype, device=w.device)),
                         setup_context=_prelu_grad_setup, backward=_prelu_grad_backward)


# ---------------------------------------------------------------------------
# Compile cases

def _compile_cases():
    """The flat kernels with an element count of unknown divisibility (a launch's, when
    it is not a multiple of 16): full blocks still move 16-byte vectors (the SASS
    expectation; the masked last block is scalar). The PReLU kernels with every stride
    a runtime value."""
    cases = []
    for dt in ("fp32", "fp16", "bf16"):
        vectors = 2 if dt == "fp32" else 1          # 16-byte vectors per thread of a 1024-element block (4 warps)
        for act in (ACT_RELU.value, ACT_LEAKY_RELU.value):
            cases.append(CompileCase(
                _activation_fwd_kernel,
                {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}", "n_elements": "i64", "negative_slope": "fp32"},
                {"ACTIVATION": act, "BLOCK": _BLOCK}, label=f"{dt},act={act}",
                expect={"ldg128_at_least": vectors, "stg128_at_least": vectors}))
            cases.append(CompileCase(
                _activation_bwd_kernel,
                {"grad_ptr": f"*{dt}", "v_ptr": f"*{dt}", "grad_in_ptr": f"*{dt}", "n_elements": "i64",
                 "negative_slope": "fp32"},
                {"ACTIVATION": act, "BLOCK": _BLOCK}, label=f"{dt},act={act}",
                expect={"ldg128_at_least": 2 * vectors, "stg128_at_least": vectors}))
        strides = {f"stride_{t}{a}": "i64" for t in ("x", "y") for a in "oci"}
        for block_c, w_stride in ((1, 0), (32, 0), (32, 1)):      # C = 1 has one slope
            _, block_r = _prelu_tiles(block_c)
            label = f"{dt},C={block_c},W_STRIDE={w_stride}"
            cases.append(CompileCase(
                _prelu_fwd_kernel,
                {"x_ptr": f"*{dt}", "weight_ptr": f"*{dt}", "y_ptr": f"*{dt}", "outer": "i64", "C": "i32",
                 "inner": "i64", **strides},
                {"W_STRIDE": w_stride, "BLOCK_R": block_r, "BLOCK_C": block_c}, label=label))
            cases.append(CompileCase(
                _prelu_bwd_kernel,
                {"grad_ptr": f"*{dt}", "x_ptr": f"*{dt}", "weight_ptr": f"*{dt}", "grad_x_ptr": f"*{dt}",
                 "partial_ptr": "*fp32", "outer": "i64", "C": "i32", "inner": "i64",
                 **{f"stride_{t}{a}": "i64" for t in ("g", "x", "dx") for a in "oci"},
                 "rows_per_chunk": "i64"},
                {"W_STRIDE": w_stride, "BLOCK_R": block_r, "BLOCK_C": block_c}, num_warps=8, label=label))
    return cases


COMPILE_CASES = _compile_cases()
