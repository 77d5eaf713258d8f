"""Host side of the norms: the primitives (launchers that take only schema
types: tensors, ints, floats, bools), the registered operators built on them,
and the four entry points.

Primitives (each one launch unless it says otherwise):

* ``norm_statistics``: fp32 mean / rstd of the batch, running statistics and
  ``num_batches_tracked`` updated in place, in the kernel.
* ``norm_apply``: y = act((x - mean) * rstd * w + b [+ residual]) from given statistics.
* ``norm_apply_running``: the same from running statistics (eval), returning the
  fp32 mean / rstd it used.
* ``norm_single_read``: statistics and normalization of per-sample sets that fit
  in registers (``single_read_fits``).
* ``norm_per_sample``: per-sample statistics and normalization, ``norm_single_read``
  where the sets fit, else ``norm_statistics`` and ``norm_apply`` (two launches).
* ``norm_moments`` / ``norm_merge_moments``: one process's (count, mean, M2) and
  the merge of every process's (SyncBatchNorm, with an all_gather in between).
* ``norm_backward``: (dx, dweight, dbias, g) in at most two launches, made of
  ``norm_backward_reduce`` and ``norm_backward_dx`` for the looped path
  (SyncBatchNorm all-reduces the sums between them).

Each primitive runs a launch plan ("Launch plans" below): what it does for a
call's layouts, flags and scalar arguments, decided once and cached.

Arguments are checked by the caller (nnlib.functional). Tensors the kernels
cannot read as (N, C, S) through strides are copied once (by ``_norm``,
before the operators see them).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as TF

from .._library import Operator
from .._reduce import sum_partials, tickets
from .._runtime import bind, cdiv, empty_like_strides, interpreting, next_power_of_2, plan_float
from ..activation import ACT_LEAKY_RELU, ACT_NONE, ACT_RELU
from ._kernels import (_bwd_dx_kernel, _bwd_reduce_kernel, _merge_kernel, _normalize_kernel, _set_bwd_kernel,
                       _set_fwd_kernel, _stats_kernel)
from ._plan import (MERGE_CHANNELS, MERGE_TILE, Geometry, by_layout, empty_output, fits_single_read, loop_launch,
                    mergeable, output_stride, running_stride, set_launch)

__all__ = ["norm_statistics", "norm_moments", "norm_merge_moments", "norm_apply", "norm_apply_running",
           "norm_single_read", "norm_per_sample", "single_read_fits", "norm_backward", "norm_backward_reduce",
           "norm_backward_dx", "norm_gradients", "norm_statistics_op", "norm_apply_op", "norm_apply_running_op",
           "norm_per_sample_op",
           "norm_gradients_op", "batch_norm", "instance_norm", "group_norm", "layer_norm"]


def _vector(t, placeholder):
    """weight / bias as the C consecutive elements the kernels read (one copy when
    strided), or ``placeholder`` for None (a pointer the kernel does not read)."""
    return placeholder if t is None else t.contiguous()


def _stats_options(x):
    return {"device": x.device, "dtype": torch.float32}


def _fp32(size, device) -> torch.Tensor:
    return torch.empty(size, device=device, dtype=torch.float32)


def _like(layout):
    """The layout ``torch.empty_like`` gives a tensor of ``layout`` (None for None)."""
    return None if layout is None else (layout[0], empty_like_strides(*layout))


def _allocator(layout):
    """new(dtype=, device=): a tensor of exactly ``layout``."""
    return functools.partial(torch.empty_strided, *layout)


# ---------------------------------------------------------------------------
# Launch plans. What a primitive does for one call is decided once per layout and
# argument values (``by_layout``): its tiling, the buffers it allocates, and its
# launches, bound with every argument but the tensors (``kernels._runtime.bind``).
# A primitive looks up its plan and runs it on the call's tensors.

_STATS_POINTERS = ("x_ptr", "part_ptr", "mean_ptr", "rstd_ptr", "moments_ptr", "rm_ptr", "rv_ptr", "nbt_ptr",
                   "ticket_ptr")
_MERGE_POINTERS = ("part_ptr", "mean_ptr", "rstd_ptr", "count_ptr", "rm_ptr", "rv_ptr", "nbt_ptr", "ticket_ptr")
_NORMALIZE_POINTERS = ("x_ptr", "y_ptr", "res_ptr", "mean_ptr", "rstd_ptr", "rm_ptr", "rv_ptr", "w_ptr", "b_ptr")
_SET_FWD_POINTERS = ("x_ptr", "y_ptr", "mean_ptr", "rstd_ptr", "w_ptr", "b_ptr")
_REDUCE_POINTERS = ("x_ptr", "dy_ptr", "res_ptr", "mean_ptr", "rstd_ptr", "w_ptr", "b_ptr", "g_ptr", "dx_ptr",
                    "part_ptr", "dw_ptr", "db_ptr", "sums_ptr", "ticket_ptr")
_DX_POINTERS = ("x_ptr", "dy_ptr", "res_ptr", "g_ptr", "mean_ptr", "rstd_ptr", "w_ptr", "b_ptr", "sums_ptr", "dx_ptr",
                "count_ptr")
_SET_BWD_POINTERS = ("x_ptr", "dy_ptr", "mean_ptr", "rstd_ptr", "w_ptr", "b_ptr", "dx_ptr", "dwb_ptr")


@by_layout
def _statistics_plan(layouts, geom: Geometry, track: bool, moments_out: bool, momentum: float, cumulative: bool,
                     eps: float, interpreter: bool):
    """run(x, running_mean, running_var, num_batches_tracked) of a non-empty x (layouts:
    x, running_mean, running_var): (mean, rstd) (num_stats,) fp32, or with
    ``moments_out`` the (3, G) moments (``norm_moments``)."""
    planned = loop_launch.of_layouts(layouts, ("x",), True, geom, "statistics", interpreter)
    plan = planned.tiling
    running = layouts[1] is not None
    num_stats, chunks = plan.num_stats(geom.per_sample), plan.chunks(geom.per_sample)
    part_size = 3 * num_stats * chunks + (num_stats if running and geom.per_sample else 0)
    num_tickets = planned.tickets
    statistics = bind(_stats_kernel, planned.grid, _STATS_POINTERS, **planned.args, momentum=momentum, eps=eps,
                      PER_SAMPLE=geom.per_sample, MOMENTS_OUT=moments_out, RUNNING=running, CUMULATIVE=cumulative,
                      TRACK=track)

    def run(x, running_mean, running_var, num_batches_tracked):
        device = x.device
        part, counters = _fp32(part_size, device), tickets(device, num_tickets)
        if moments_out:
            moments = _fp32((3, geom.groups), device)
            mean = rstd = moments[1]
        else:
            moments = mean = _fp32(num_stats, device)
            rstd = _fp32(num_stats, device)
        statistics(x, part, mean, rstd, moments, running_mean if running else mean, running_var if running else rstd,
                   num_batches_tracked if track else counters, counters)
        return moments if moments_out else (mean, rstd)
    return run


@by_layout
def _merge_plan(layouts, track: bool, momentum: float, cumulative: bool, eps: float):
    """run(moments, running_mean, running_var, num_batches_tracked) -> (mean, rstd, count)
    (C,) fp32 of (P, 3, C) moments (layouts: moments, running_mean, running_var)."""
    (P, _, C), _ = layouts[0]
    running = layouts[1] is not None
    block_c = min(next_power_of_2(C), MERGE_CHANNELS)
    stride_rm, stride_rv = (running_stride(layout) if running else 0 for layout in layouts[1:])
    merge = bind(_merge_kernel, (cdiv(C, block_c),), _MERGE_POINTERS, num_warps=4, C=C, num_parts=P,
                 stride_rm=stride_rm, stride_rv=stride_rv, momentum=momentum, eps=eps, RUNNING=running,
                 CUMULATIVE=cumulative, TRACK=track, BLOCK_C=block_c, BLOCK_K=max(1, MERGE_TILE // block_c))

    def run(moments, running_mean, running_var, num_batches_tracked):
        device = moments.device
        mean, rstd, count, counters = _fp32(C, device), _fp32(C, device), _fp32(C, device), tickets(device, 1)
        merge(moments.contiguous(), mean, rstd, count, running_mean if running else mean,
              running_var if running else rstd, num_batches_tracked if track else counters, counters)
        return mean, rstd, count
    return run


@by_layout
def _normalize_plan(layouts, geom: Geometry, has_weight: bool, has_bias: bool, eps: float, activation: int,
                    negative_slope: float, interpreter: bool):
    """run(x, residual, mean, rstd, running_mean, running_var, weight, bias, dtype) -> y of
    ``dtype`` in torch's layout (``empty_output``); the statistics come from running_mean /
    running_var when they are given (layouts: x, residual, running_mean, running_var)."""
    x_layout, r_layout, rm_layout, rv_layout = layouts
    y_layout = (x_layout[0], output_stride.of_layouts((x_layout,), geom.keep_format, geom.per_sample))
    new_output = _allocator(y_layout)
    if 0 in x_layout[0]:
        return lambda x, *args: new_output(dtype=args[-1], device=x.device)
    planned = loop_launch.of_layouts((x_layout, y_layout, r_layout, rm_layout, rv_layout), ("x", "y", "r"), True,
                                     geom, "", interpreter)
    running = rm_layout is not None
    normalize = bind(_normalize_kernel, planned.grid, _NORMALIZE_POINTERS, **planned.args, eps=eps,
                     negative_slope=negative_slope, STATS_PER_SAMPLE=geom.per_sample, FROM_RUNNING=running,
                     HAS_WEIGHT=has_weight, HAS_BIAS=has_bias, HAS_RESIDUAL=r_layout is not None,
                     ACTIVATION=activation)

    def run(x, residual, mean, rstd, running_mean, running_var, weight, bias, dtype):
        y = new_output(dtype=dtype, device=x.device)
        normalize(x, y, x if residual is None else residual, mean, rstd, running_mean if running else mean,
                  running_var if running else rstd, _vector(weight, mean), _vector(bias, mean))
        return y
    return run


@by_layout
def _single_read_plan(layouts, geom: Geometry, has_weight: bool, has_bias: bool, eps: float, activation: int,
                      negative_slope: float, interpreter: bool):
    """run(x, weight, bias, dtype) -> (y, mean, rstd) of ``norm_single_read`` (layouts: x)."""
    x_layout, = layouts
    y_layout = (x_layout[0], output_stride.of_layouts((x_layout,), geom.keep_format, geom.per_sample))
    new_output = _allocator(y_layout)
    planned = set_launch.of_layouts((x_layout, y_layout), ("x", "y"), geom, interpreter)
    num_stats = planned.tiling.N * geom.groups
    single_read = bind(_set_fwd_kernel, planned.grid, _SET_FWD_POINTERS, **planned.args, eps=eps,
                       negative_slope=negative_slope, HAS_WEIGHT=has_weight, HAS_BIAS=has_bias,
                       ACTIVATION=activation)

    def run(x, weight, bias, dtype):
        device = x.device
        y, mean, rstd = new_output(dtype=dtype, device=device), _fp32(num_stats, device), _fp32(num_stats, device)
        single_read(x, y, mean, rstd, _vector(weight, mean), _vector(bias, mean))
        return y, mean, rstd
    return run


@by_layout
def _reduce_plan(layouts, geom: Geometry, batch_stats: bool, has_weight: bool, has_bias: bool, activation: int,
                 negative_slope: float, mask_from_output: bool, need_x: bool, need_weight: bool, need_bias: bool,
                 need_g: bool, interpreter: bool):
    """run(dy, x, weight, bias, residual, mean, rstd) -> (dx, dweight, dbias, sums, g) of
    ``norm_backward_reduce`` (layouts: dy, x, residual)."""
    dy_layout, x_layout, r_layout = layouts
    write_g = need_g and activation != ACT_NONE.value
    stat_sums = batch_stats and need_x
    g_layout = _like(r_layout) if write_g else None
    dx_layout = _like(x_layout) if need_x and not batch_stats else None
    if not (need_weight or need_bias or stat_sums or write_g or dx_layout):
        return lambda *_: (None,) * 5
    planned = loop_launch.of_layouts((x_layout, dy_layout, r_layout, g_layout, dx_layout), ("x", "dy", "r", "g", "dx"),
                                     False, geom, "channels", interpreter)
    plan = planned.tiling
    num_stats, chunks = plan.num_stats(geom.per_sample), plan.chunks(geom.per_sample)
    part_size = (2 * plan.num_n_chunks * plan.num_s_chunks * plan.C * (need_weight or need_bias)
                 + 2 * num_stats * chunks * stat_sums)
    num_tickets = planned.tickets
    new_g, new_dx = (None if layout is None else _allocator(layout) for layout in (g_layout, dx_layout))
    reduce = bind(_bwd_reduce_kernel, planned.grid, _REDUCE_POINTERS, **planned.args, negative_slope=negative_slope,
                  STATS_PER_SAMPLE=geom.per_sample, STAT_SUMS=stat_sums, WRITE_DW=need_weight, WRITE_DB=need_bias,
                  WRITE_G=write_g, WRITE_DX=dx_layout is not None, HAS_WEIGHT=has_weight, HAS_BIAS=has_bias,
                  HAS_RESIDUAL=r_layout is not None, MASK_FROM_OUTPUT=mask_from_output, ACTIVATION=activation)

    def run(dy, x, weight, bias, residual, mean, rstd):
        device = x.device
        g = new_g(dtype=residual.dtype, device=device) if write_g else None
        dx = new_dx(dtype=x.dtype, device=device) if new_dx else None
        dw = torch.empty(weight.shape, dtype=weight.dtype, device=device) if need_weight else None
        db = torch.empty(bias.shape, dtype=bias.dtype, device=device) if need_bias else None
        sums = _fp32((2, num_stats), device) if stat_sums else None
        reduce(x, dy, x if residual is None else residual, mean, rstd, _vector(weight, mean),
               _vector(bias if has_bias else None, mean),
               x if g is None else g, x if dx is None else dx, _fp32(part_size, device), mean if dw is None else dw,
               mean if db is None else db, mean if sums is None else sums, tickets(device, num_tickets))
        return dx, dw, db, sums, g
    return run


@by_layout
def _dx_plan(layouts, geom: Geometry, has_weight: bool, has_bias: bool, activation: int, negative_slope: float,
             mask_from_output: bool, device_count: bool, interpreter: bool):
    """run(dy, x, g, weight, bias, residual, mean, rstd, sums, count) -> dx of
    ``norm_backward_dx`` (layouts: dy, x, residual, g)."""
    dy_layout, x_layout, r_layout, g_layout = layouts
    dx_layout = _like(x_layout)
    new_dx = _allocator(dx_layout)
    planned = loop_launch.of_layouts((x_layout, dy_layout, r_layout, g_layout, dx_layout), ("x", "dy", "r", "g", "dx"),
                                     False, geom, "", interpreter)
    plan = planned.tiling
    input_grad = bind(_bwd_dx_kernel, planned.grid, _DX_POINTERS, **planned.args, negative_slope=negative_slope,
                      inv_count=1.0 / ((1 if geom.per_sample else plan.N) * plan.Cg * plan.S),
                      STATS_PER_SAMPLE=geom.per_sample, READ_G=g_layout is not None, DEVICE_COUNT=device_count,
                      HAS_WEIGHT=has_weight, HAS_BIAS=has_bias, HAS_RESIDUAL=r_layout is not None,
                      MASK_FROM_OUTPUT=mask_from_output, ACTIVATION=activation)

    def run(dy, x, g, weight, bias, residual, mean, rstd, sums, count):
        dx = new_dx(dtype=x.dtype, device=x.device)
        input_grad(x, dy, x if residual is None else residual, x if g is None else g, mean, rstd,
                   _vector(weight, mean), _vector(bias if has_bias else None, mean), sums.contiguous(), dx,
                   mean if count is None else count)
        return dx
    return run


def _single_read_backward_plan(planned, dx_layout, has_weight: bool, has_bias: bool, need_weight: bool,
                               need_bias: bool, activation: int, negative_slope: float):
    """run(dy, x, weight, bias, residual, mean, rstd) -> (dx, dweight, dbias, None) of the
    single-read backward (``planned``: its set_launch plan). dweight and dbias are
    views of one buffer that the kernel fills when it runs on one program per channel
    block, else a column sum of its partials (a second launch)."""
    plan = planned.tiling
    C, rows = plan.C, plan.num_n_chunks
    new_dx = _allocator(dx_layout)
    need_param = need_weight or need_bias
    single_read = bind(_set_bwd_kernel, planned.grid, _SET_BWD_POINTERS, **planned.args,
                       negative_slope=negative_slope, HAS_WEIGHT=has_weight, HAS_BIAS=has_bias, ACTIVATION=activation)

    def run(dy, x, weight, bias, residual, mean, rstd):
        device = x.device
        dx = new_dx(dtype=x.dtype, device=device)
        param = (weight if need_weight else bias) if need_param else None
        if param is not None and rows == 1:
            dwb = torch.empty(2 * C, dtype=param.dtype, device=device)
        else:
            dwb = _fp32((rows, 2 * C), device)
        single_read(x, dy, mean, rstd, _vector(weight, mean), _vector(bias if has_bias else None, mean), dx, dwb)
        if param is None:
            return dx, None, None, None
        if rows > 1:
            dwb = sum_partials(dwb, param.dtype)
        dw = dwb[:C].view(weight.shape) if need_weight else None
        return dx, dw, dwb[C:].view(bias.shape) if need_bias else None, None
    return run


@by_layout
def _backward_plan(layouts, geom: Geometry, batch_stats: bool, has_weight: bool, has_bias: bool, activation: int,
                   negative_slope: float, mask_from_output: bool, need_x: bool, need_weight: bool, need_bias: bool,
                   need_g: bool, interpreter: bool):
    """run(dy, x, weight, bias, residual, mean, rstd) -> (dx, dweight, dbias, g) of
    ``norm_backward`` for a non-empty x (layouts: dy, x, residual)."""
    dy_layout, x_layout, r_layout = layouts
    if need_x and batch_stats and geom.per_sample and r_layout is None:
        dx_layout = _like(x_layout)
        planned = set_launch.of_layouts((x_layout, dy_layout, dx_layout), ("x", "dy", "dx"), geom, interpreter)
        if planned is not None:
            return _single_read_backward_plan(planned, dx_layout, has_weight, has_bias, need_weight, need_bias,
                                              activation, negative_slope)
    flags = (has_weight, has_bias, activation, negative_slope, mask_from_output)
    reduce = _reduce_plan.of_layouts(layouts, geom, batch_stats, *flags, need_x, need_weight, need_bias, need_g,
                                     interpreter)
    if not (need_x and batch_stats):
        def run(dy, x, weight, bias, residual, mean, rstd):
            dx, dw, db, _, g = reduce(dy, x, weight, bias, residual, mean, rstd)
            return dx, dw, db, g
        return run
    write_g = need_g and activation != ACT_NONE.value
    input_grad = _dx_plan.of_layouts((dy_layout, x_layout, r_layout, _like(r_layout) if write_g else None), geom,
                                     *flags, False, interpreter)

    def run(dy, x, weight, bias, residual, mean, rstd):
        _, dw, db, sums, g = reduce(dy, x, weight, bias, residual, mean, rstd)
        return input_grad(dy, x, g, weight, bias, residual, mean, rstd, sums, None), dw, db, g
    return run


# ---------------------------------------------------------------------------
# Forward primitives

def norm_statistics(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                    num_batches_tracked: torch.Tensor | None, lead: int, chan: int, groups: int, per_sample: bool,
                    momentum: float, cumulative: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (mean, rstd = 1 / sqrt(biased var + eps)) of x's statistics, (N * groups,)
    per sample or (groups,), in one launch. Running statistics (C,), when given,
    move toward the batch mean and unbiased variance (per sample: averaged over n,
    one channel per group) by ``momentum``, or by 1 / (num_batches_tracked + 1) with
    ``cumulative`` (read on the device: no host synchronisation);
    ``num_batches_tracked``, when given, gains 1. x: dims [0, lead) are n, the next
    ``chan`` the channels (one stride each)."""
    if x.numel() == 0:
        num_stats = math.prod(x.shape[:lead]) * groups if per_sample else groups
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        return _fp32(num_stats, x.device), _fp32(num_stats, x.device)
    plan = _statistics_plan((x, running_mean, running_var), Geometry(lead, chan, groups, per_sample, False),
                            num_batches_tracked is not None, False, plan_float(momentum), cumulative,
                            plan_float(eps), interpreting())
    return plan(x, running_mean, running_var, num_batches_tracked)


def norm_moments(x: torch.Tensor, lead: int, chan: int, groups: int) -> torch.Tensor:
    """(count, mean, M2) of x's batch statistics (per group over n and S) as a (3,
    groups) fp32 tensor, in one launch (zeros for an empty x): one process's share,
    which ``norm_merge_moments`` merges with the other processes'."""
    if x.numel() == 0:
        return torch.zeros((3, groups), **_stats_options(x))
    plan = _statistics_plan((x, None, None), Geometry(lead, chan, groups, False, False), False, True, 0.0, False, 0.0,
                            interpreting())
    return plan(x, None, None, None)


def norm_merge_moments(moments: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                       num_batches_tracked: torch.Tensor | None, momentum: float, cumulative: bool,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch statistics of several processes: ``moments`` (P, 3, C) fp32, each process's
    ``norm_moments`` (as all_gather stacks them), merged in process order into fp32
    (mean, rstd, count) (C,) in one launch, count being the elements over all
    processes; running statistics and num_batches_tracked as ``norm_statistics``."""
    plan = _merge_plan((moments, running_mean, running_var), num_batches_tracked is not None, plan_float(momentum),
                       cumulative, plan_float(eps))
    return plan(moments, running_mean, running_var, num_batches_tracked)


def norm_apply(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor | None,
               bias: torch.Tensor | None, residual: torch.Tensor | None, lead: int, chan: int, groups: int,
               per_sample: bool, keep_format: bool, activation: int, negative_slope: float,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = act((x - mean) * rstd * weight + bias [+ residual]) in torch's output
    layout, statistics as ``norm_statistics`` returns them; one launch. y has
    ``dtype`` (None: x's; float32 of a float16 / bfloat16 x is a float32 norm under
    CUDA autocast, run on x as it is)."""
    plan = _normalize_plan((x, residual, None, None), Geometry(lead, chan, groups, per_sample, keep_format),
                           weight is not None, bias is not None, 0.0, activation, plan_float(negative_slope),
                           interpreting())
    return plan(x, residual, mean, rstd, None, None, weight, bias, x.dtype if dtype is None else dtype)


def norm_apply_running(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                       weight: torch.Tensor | None, bias: torch.Tensor | None, residual: torch.Tensor | None,
                       lead: int, chan: int, keep_format: bool, eps: float, activation: int,
                       negative_slope: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``norm_apply`` with mean = running_mean, rstd = 1 / sqrt(running_var + eps) per
    channel; also returns those fp32 (mean, rstd) (C,) for the backward. One launch."""
    C = math.prod(x.shape[lead:lead + chan])
    mean, rstd = _fp32(C, x.device), _fp32(C, x.device)
    plan = _normalize_plan((x, residual, running_mean, running_var), Geometry(lead, chan, C, False, keep_format),
                           weight is not None, bias is not None, plan_float(eps), activation,
                           plan_float(negative_slope), interpreting())
    return plan(x, residual, mean, rstd, running_mean, running_var, weight, bias, x.dtype), mean, rstd


def single_read_fits(x: torch.Tensor, lead: int, chan: int, groups: int) -> bool:
    """True when each per-sample statistic's set of x (or of its contiguous copy, when
    the kernels cannot read x through strides) fits the single-read kernels."""
    return x.numel() > 0 and fits_single_read((x,), Geometry(lead, chan, groups, True, False), interpreting())


def norm_single_read(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, lead: int, chan: int,
                     groups: int, keep_format: bool, eps: float, activation: int, negative_slope: float,
                     dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample statistics and normalization in one launch reading x once:
    (y, mean, rstd), mean / rstd (N * groups,) fp32, y of ``dtype`` as ``norm_apply``.
    Needs ``single_read_fits``."""
    plan = _single_read_plan((x,), Geometry(lead, chan, groups, True, keep_format), weight is not None,
                             bias is not None, plan_float(eps), activation, plan_float(negative_slope), interpreting())
    return plan(x, weight, bias, x.dtype if dtype is None else dtype)


def norm_per_sample(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, lead: int, chan: int,
                    groups: int, keep_format: bool, eps: float, activation: int, negative_slope: float,
                    dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample statistics of x and the normalization, (y, mean, rstd) as
    ``norm_single_read``: its one launch where the sets fit (``single_read_fits``),
    else ``norm_statistics`` and ``norm_apply``. Decided here, from the sizes at
    each call, so that a traced graph holds this one operator for every size."""
    if single_read_fits(x, lead, chan, groups):
        return norm_single_read(x, weight, bias, lead, chan, groups, keep_format, eps, activation, negative_slope,
                                dtype)
    mean, rstd = norm_statistics(x, None, None, None, lead, chan, groups, True, 0.0, False, eps)
    return norm_apply(x, mean, rstd, weight, bias, None, lead, chan, groups, True, keep_format, activation,
                      negative_slope, dtype), mean, rstd


# ---------------------------------------------------------------------------
# Backward primitives

def _reads_bias(bias: torch.Tensor | None, activation: int) -> bool:
    """Whether a backward kernel reads the bias: only to recompute a fused activation's
    input (its other derivatives do not depend on it; ``kept_bias``)."""
    return bias is not None and activation != ACT_NONE.value


def norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                  residual: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor, lead: int, chan: int,
                  groups: int, per_sample: bool, batch_stats: bool, activation: int, negative_slope: float,
                  mask_from_output: bool, need_x: bool, need_weight: bool, need_bias: bool, need_g: bool):
    """(dx, dweight, dbias, g) of the norm, each None unless asked for; g = dy through
    the activation (the residual's gradient; None without an activation, where it
    is dy). ``mask_from_output``: ``residual`` is the forward's relu output instead,
    positive or NaN where its input is (``mask_source``). ``batch_stats``: mean / rstd
    came from x (their gradient flows), else they are constants (eval). At most two
    launches: the single-read kernel (plus a column sum when it ran on several
    programs), or ``norm_backward_reduce`` and, for dx of batch statistics,
    ``norm_backward_dx``."""
    if x.numel() == 0:
        return (torch.empty_like(x) if need_x else None, torch.zeros_like(weight) if need_weight else None,
                torch.zeros_like(bias) if need_bias else None,
                torch.empty_like(residual) if need_g and activation != ACT_NONE.value else None)
    plan = _backward_plan((dy, x, residual), Geometry(lead, chan, groups, per_sample, False), batch_stats,
                          weight is not None, _reads_bias(bias, activation), activation, plan_float(negative_slope),
                          mask_from_output, need_x, need_weight, need_bias, need_g, interpreting())
    return plan(dy, x, weight, bias, residual, mean, rstd)


def norm_backward_reduce(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         residual: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor, lead: int, chan: int,
                         groups: int, per_sample: bool, batch_stats: bool, activation: int, negative_slope: float,
                         mask_from_output: bool, need_x: bool, need_weight: bool, need_bias: bool, need_g: bool):
    """The looped reduction pass (one launch, none when nothing is asked): returns
    (dx, dweight, dbias, sums, g). dx only for constant statistics (eval: written in
    this pass); sums (2, num_stats) fp32 = (sum(w g), sum(w g xhat)) per statistic when
    dx of batch statistics is asked (``norm_backward_dx`` reads them; SyncBatchNorm
    all-reduces them first); g as ``norm_backward``."""
    plan = _reduce_plan((dy, x, residual), Geometry(lead, chan, groups, per_sample, False), batch_stats,
                        weight is not None, _reads_bias(bias, activation), activation, plan_float(negative_slope),
                        mask_from_output, need_x, need_weight, need_bias, need_g, interpreting())
    return plan(dy, x, weight, bias, residual, mean, rstd)


def norm_backward_dx(dy: torch.Tensor, x: torch.Tensor, g: torch.Tensor | None, weight: torch.Tensor | None,
                     bias: torch.Tensor | None, residual: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor,
                     sums: torch.Tensor, count: torch.Tensor | None, lead: int, chan: int, groups: int,
                     per_sample: bool, activation: int, negative_slope: float,
                     mask_from_output: bool) -> torch.Tensor:
    """dx of batch statistics, one launch: rstd (w g - (s1 + xhat s2) / count), g read
    when given (the reduction pass wrote it) else recomputed from dy; sums (2,
    num_stats) as ``norm_backward_reduce`` returns them (the kernel reads one
    contiguous buffer: another layout is copied); ``count`` (a
    device tensor: SyncBatchNorm's count over all processes) or, when None, the
    elements per statistic of x."""
    plan = _dx_plan((dy, x, residual, g), Geometry(lead, chan, groups, per_sample, False), weight is not None,
                    _reads_bias(bias, activation), activation, plan_float(negative_slope), mask_from_output,
                    count is not None, interpreting())
    return plan(dy, x, g, weight, bias, residual, mean, rstd, sums, count)


# ---------------------------------------------------------------------------
# Operators (kernels/_library.py)
#
# The statistics update running buffers in place, so ``norm_statistics`` is a
# mutable operator with no autograd formula. The normalizations are functional:
# ``norm_apply`` (the statistics of x that norm_statistics gave: its x gradient
# includes theirs), ``norm_apply_running`` (constant statistics) and
# ``norm_per_sample`` (per-sample statistics and normalization). They share
# one formula whose backward is the ``norm_gradients`` operator; that one's own
# backward (second derivatives, a gradient penalty through a norm) differentiates
# ``_reference_forward``, the same forward in torch ops, twice (higher
# derivatives go on through those torch ops). ``eps`` reaches the operators
# that do not launch with it for that.

def _readable(t, geom: Geometry):
    """t, or one contiguous copy when the kernels cannot read it through strides."""
    return t if t is None or mergeable(t, geom) else t.contiguous()


def _readable_at(positions: tuple, lead_at: int):
    """An operator's ``prepare``: its tensors at ``positions`` as ``_readable`` makes
    them, lead and chan at ``lead_at`` and ``lead_at + 1`` (a graph calls the operator
    with the layouts it meets at run time; an eager call's are readable already)."""
    def prepare(args):
        geom = Geometry(args[lead_at], args[lead_at + 1], 1, False, False)
        return tuple(_readable(a, geom) if i in positions else a for i, a in enumerate(args))
    return prepare


def _channels(x, lead: int, chan: int) -> int:
    return math.prod(x.shape[lead:lead + chan])


def _apply(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor | None,
           bias: torch.Tensor | None, residual: torch.Tensor | None, lead: int, chan: int, groups: int,
           per_sample: bool, keep_format: bool, eps: float, activation: int, negative_slope: float,
           dtype: torch.dtype | None = None) -> torch.Tensor:
    """``norm_apply`` with mean / rstd the statistics of x (eps: theirs)."""
    return norm_apply(x, mean, rstd, weight, bias, residual, lead, chan, groups, per_sample, keep_format, activation,
                      negative_slope, dtype)


def norm_gradients(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   residual: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor, lead: int, chan: int,
                   groups: int, per_sample: bool, batch_stats: bool, eps: float, activation: int,
                   negative_slope: float, mask_from_output: bool, need_x: bool, need_weight: bool, need_bias: bool,
                   need_g: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``norm_backward`` with an empty tensor for each gradient not asked, and for g
    without an activation (where the residual's gradient is dy itself)."""
    grads = norm_backward(dy, x, weight, bias, residual, mean, rstd, lead, chan, groups, per_sample, batch_stats,
                          activation, negative_slope, mask_from_output, need_x, need_weight, need_bias, need_g)
    return tuple(dy.new_empty(0) if t is None else t for t in grads)


def mask_source(residual: torch.Tensor | None, y: torch.Tensor, activation: int) -> tuple[torch.Tensor | None, bool]:
    """What a backward reads in the residual's place, and whether it is the output y:
    nothing without a residual or an activation (g is dy, or the activation's input
    is recomputed from x alone); after a relu, y (positive or NaN where its input
    is, in y's dtype, as for torch's relu of that dtype), which the next layer
    keeps anyway where a downsampling ResNet block's shortcut is kept by nothing
    else, and which torch's relu saves too (so an in-place change of y raises in
    the backward in both); else (leaky ReLU: torch's saves its input) the
    residual."""
    if residual is None or activation == ACT_NONE.value:
        return None, False
    if activation == ACT_RELU.value:
        return y, True
    return residual, False


def kept_bias(ctx, bias: torch.Tensor | None, activation: int) -> torch.Tensor | None:
    """What a backward keeps of the bias: the bias where it recomputes a fused
    activation's input; else nothing (no gradient reads it, so that changing it in
    place between the forward and the backward is allowed, as torch's batch, group
    and instance norms allow), its shape and dtype kept in ``ctx.bias_like``."""
    ctx.bias_like = None
    if bias is None or activation != ACT_NONE.value:
        return bias
    ctx.bias_like = (bias.shape, bias.dtype)
    return None


def saved_bias(ctx, bias: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """The bias a backward passes on (``kept_bias``): the one kept, or a stand-in of
    the bias's shape and dtype (its gradient's), uninitialised: no kernel reads it."""
    if ctx.bias_like is None:
        return bias
    shape, dtype = ctx.bias_like
    return torch.empty_strided(shape, (0,) * len(shape), dtype=dtype, device=device)


def _save(ctx, x, weight, bias, residual, y, mean, rstd, *args):
    """args: (lead, chan, groups, per_sample, batch_stats, eps, activation, negative_slope);
    ``mask_source`` decides what is kept of the residual and y, ``kept_bias`` of the bias."""
    kept, from_output = mask_source(residual, y, args[-2])
    ctx.save_for_backward(x, weight, kept_bias(ctx, bias, args[-2]), kept, mean, rstd)
    ctx.args = (*args, from_output)


def _apply_setup(ctx, inputs, output):
    x, mean, rstd, weight, bias, residual, lead, chan, groups, per_sample, _, eps, act, slope, _ = inputs
    _save(ctx, x, weight, bias, residual, output, mean, rstd, lead, chan, groups, per_sample, True, eps, act, slope)


def _apply_running_setup(ctx, inputs, output):
    x, _, _, weight, bias, residual, lead, chan, _, eps, act, slope = inputs
    y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    _save(ctx, x, weight, bias, residual, y, mean, rstd, lead, chan, _channels(x, lead, chan), False, False, eps,
          act, slope)


def _per_sample_setup(ctx, inputs, output):
    x, weight, bias, lead, chan, groups, _, eps, act, slope, _ = inputs
    y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    _save(ctx, x, weight, bias, None, y, mean, rstd, lead, chan, groups, True, True, eps, act, slope)


def _gradients(ctx, dy, need_x, need_weight, need_bias, need_residual):
    """(dx, dweight, dbias, dresidual) of a normalization, None where not needed."""
    x, weight, bias, residual, mean, rstd = ctx.saved_tensors
    bias = saved_bias(ctx, bias, x.device)
    lead, chan, groups, per_sample, _, _, activation, _, _ = ctx.args
    geom = Geometry(lead, chan, groups, per_sample, False)
    # dy: any layout autograd hands us; x and the residual: a graph's call (``_readable_at``)
    dy, x, residual = _readable(dy, geom), _readable(x, geom), _readable(residual, geom)
    need_g = need_residual and activation != ACT_NONE.value
    grads = norm_gradients_op(dy, x, weight, bias, residual, mean, rstd, *ctx.args, need_x, need_weight, need_bias,
                              need_g)
    dx, dw, db, g = (t if need else None for t, need in zip(grads, (need_x, need_weight, need_bias, need_g)))
    return dx, dw, db, (g if need_g else dy) if need_residual else None


def _apply_backward(ctx, dy):
    need = ctx.needs_input_grad
    dx, dw, db, dr = _gradients(ctx, dy, need[0], need[3], need[4], need[5])
    return dx, None, None, dw, db, dr, *([None] * 9)


def _apply_running_backward(ctx, dy, _mean, _rstd):
    need = ctx.needs_input_grad
    dx, dw, db, dr = _gradients(ctx, dy, need[0], need[3], need[4], need[5])
    return dx, None, None, dw, db, dr, *([None] * 6)


def _per_sample_backward(ctx, dy, _mean, _rstd):
    need = ctx.needs_input_grad
    dx, dw, db, _ = _gradients(ctx, dy, need[0], need[1], need[2], False)
    return dx, dw, db, *([None] * 8)


def _gradients_setup(ctx, inputs, output):
    dy, x, weight, bias, residual, mean, rstd, *args = inputs
    ctx.save_for_backward(dy, x, weight, bias, residual, mean, rstd)
    ctx.args, ctx.needs = args[:9], args[9:]


def _gradients_backward(ctx, *grad_grads):
    """Second derivatives: the first derivatives of _reference_forward,
    differentiated again against the incoming gradients of (dx, dw, db, g).
    Both are torch.func transforms of torch ops on the saved tensors, so under
    create_graph derivatives of any higher order follow through torch's autograd
    (autograd.grad would also follow dy back into x where dy depends on x)."""
    saved = ctx.saved_tensors
    mean, rstd = saved[5:]
    *args, mask_from_output = ctx.args
    operands = saved[1:5]       # x, weight, bias (without an activation maybe ``saved_bias``'s stand-in, whose
                                # values reach the forward below but no derivative), residual
    wanted = [i for i, (t, g, need) in enumerate(zip(operands, grad_grads, ctx.needs))
              if need and t is not None and g is not None]
    if not wanted:
        return (None,) * (7 + 13)
    present = [i for i, t in enumerate(saved[:5]) if t is not None]    # of dy, x, weight, bias, residual

    def first_derivatives(*tensors):
        """(dy, x, weight, bias, residual), those present -> the wanted gradients."""
        full = [None] * 5
        for i, t in zip(present, tensors):
            full[i] = t
        dy, *inputs = full
        mask = None
        if mask_from_output:    # the residual's slot holds the relu's output: its mask (NaN passes, as
            mask, inputs[3] = ~(inputs[3] <= 0), torch.zeros_like(inputs[3])   # torch's), a residual of any value

        def forward(*variables):
            operands = list(inputs)
            for i, t in zip(wanted, variables):
                operands[i] = t
            return _reference_forward(*operands, mean, rstd, *args, mask)
        y, pullback = torch.func.vjp(forward, *(inputs[i] for i in wanted))
        return pullback(dy.to(y.dtype))

    _, pullback = torch.func.vjp(first_derivatives, *(saved[i] for i in present))
    second = iter(pullback(tuple(grad_grads[i] for i in wanted)))
    grads = [next(second) if t is not None else None for t in saved[:5]]
    # Without an activation no first derivative reads the bias, only dx reads the weight,
    # and with constant statistics only dw reads x: None there, as torch (vjp's zeros
    # would count as a gradient, for an optimizer's weight decay too). The output (read
    # for its mask) gets vjp's zeros: torch's relu gives its input zeros, which reach the
    # residual.
    _, _, _, _, batch_stats, _, activation, _ = args
    if activation == ACT_NONE.value:
        grads[3] = None
        if 0 not in wanted:
            grads[2] = None
        if not batch_stats and 1 not in wanted:
            grads[1] = None
    return *grads, *([None] * 15)


def _statistics_fake(x, running_mean, running_var, num_batches_tracked, lead, chan, groups, per_sample, *_):
    num_stats = math.prod(x.shape[:lead]) * groups if per_sample else groups
    return tuple(torch.empty(num_stats, **_stats_options(x)) for _ in range(2))


def _apply_fake(x, mean, rstd, weight, bias, residual, lead, chan, groups, per_sample, keep_format, eps, activation,
                negative_slope, dtype=None):
    return empty_output(x, Geometry(lead, chan, groups, per_sample, keep_format), dtype)


def _apply_running_fake(x, running_mean, running_var, weight, bias, residual, lead, chan, keep_format, *_):
    C = _channels(x, lead, chan)
    return (empty_output(x, Geometry(lead, chan, C, False, keep_format), None),
            *(torch.empty(C, **_stats_options(x)) for _ in range(2)))


def _per_sample_fake(x, weight, bias, lead, chan, groups, keep_format, eps, activation, negative_slope, dtype=None):
    num_stats = math.prod(x.shape[:lead]) * groups
    return (empty_output(x, Geometry(lead, chan, groups, True, keep_format), dtype),
            *(torch.empty(num_stats, **_stats_options(x)) for _ in range(2)))


def _gradients_fake(dy, x, weight, bias, residual, mean, rstd, lead, chan, groups, per_sample, batch_stats, eps,
                    activation, negative_slope, mask_from_output, need_x, need_weight, need_bias, need_g):
    def activation_sized(t, need):
        return torch.empty_like(t) if need else dy.new_empty(0)

    def parameter_sized(t, need):
        return torch.empty(t.shape, dtype=t.dtype, device=x.device) if need else dy.new_empty(0)
    return (activation_sized(x, need_x), parameter_sized(weight, need_weight), parameter_sized(bias, need_bias),
            activation_sized(residual, need_g and activation != ACT_NONE.value))


norm_statistics_op = Operator("norm_statistics", norm_statistics, fake=_statistics_fake,
                              mutates_args=("running_mean", "running_var", "num_batches_tracked"),
                              prepare=_readable_at((0,), 4))
norm_apply_op = Operator("norm_apply", _apply, fake=_apply_fake, setup_context=_apply_setup,
                         backward=_apply_backward, prepare=_readable_at((0, 5), 6))
norm_apply_running_op = Operator("norm_apply_running", norm_apply_running, fake=_apply_running_fake,
                                 setup_context=_apply_running_setup, backward=_apply_running_backward,
                                 prepare=_readable_at((0, 5), 6))
norm_per_sample_op = Operator("norm_per_sample", norm_per_sample, fake=_per_sample_fake,
                              setup_context=_per_sample_setup, backward=_per_sample_backward,
                              prepare=_readable_at((0,), 3))
norm_gradients_op = Operator("norm_gradients", norm_gradients, fake=_gradients_fake, setup_context=_gradients_setup,
                             backward=_gradients_backward, prepare=_readable_at((0, 1, 4), 7))


def _norm(x, weight, bias, residual, running_mean, running_var, num_batches_tracked, geom: Geometry, eps: float,
          activation: int, negative_slope: float, momentum, use_input_stats: bool,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = act((x - mean) * rstd * weight + bias [+ residual]).

    x: any shape that ``geom`` describes as (N, C, S); weight, bias: C elements (any
    shape, as torch allows) or None; residual: x's shape or None. With
    ``use_input_stats`` the statistics come from x (and update the running stats
    and num_batches_tracked in place when given; momentum None: cumulative
    average); otherwise from the running stats, one per channel. y has ``dtype``
    (None: x's; per-sample statistics only: layer and group norm under CUDA autocast)."""
    eps, negative_slope = float(eps), float(negative_slope)
    lead, chan = geom.lead, geom.chan
    x, residual = _readable(x, geom), _readable(residual, geom)
    if not use_input_stats:
        return norm_apply_running_op(x, running_mean, running_var, weight, bias, residual, lead, chan,
                                     geom.keep_format, eps, activation, negative_slope)[0]
    if geom.per_sample and running_mean is None:
        return norm_per_sample_op(x, weight, bias, lead, chan, geom.groups, geom.keep_format, eps, activation,
                                  negative_slope, dtype)[0]
    mean, rstd = norm_statistics_op(x.detach(), running_mean, running_var, num_batches_tracked, lead, chan,
                                    geom.groups, geom.per_sample, 0.0 if momentum is None else float(momentum),
                                    momentum is None, eps)
    return norm_apply_op(x, mean, rstd, weight, bias, residual, lead, chan, geom.groups, geom.per_sample,
                         geom.keep_format, eps, activation, negative_slope, dtype)


def _reference_forward(x, weight, bias, residual, mean, rstd, lead, chan, groups, per_sample, batch_stats, eps,
                       activation, negative_slope, mask=None):
    """A normalization's forward in torch ops (fp32) on x seen as (N, G, Cg * S):
    statistics from x when ``batch_stats``, else the given per-group mean / rstd;
    a relu's mask (where its input is positive or NaN) computed, or ``mask``.
    Used only to differentiate the backward."""
    shape = x.shape
    N = math.prod(shape[:lead])
    C = _channels(x, lead, chan)
    G = groups
    xg = x.float().reshape(N, G, -1)
    if batch_stats:
        dims = (2,) if per_sample else (0, 2)
        var, mu = torch.var_mean(xg, dims, correction=0, keepdim=True)
        xhat = (xg - mu) * torch.rsqrt(var + eps)
    else:
        xhat = (xg - mean.view(1, G, 1)) * rstd.view(1, G, 1)
    v = xhat.reshape(N, C, -1)
    if weight is not None:
        v = v * weight.reshape(1, C, 1)
    if bias is not None:
        v = v + bias.reshape(1, C, 1)
    if residual is not None:
        v = v + residual.reshape(N, C, -1)
    if mask is not None:        # a relu's
        v = v * mask.reshape(N, C, -1)
    elif activation == ACT_RELU.value:
        v = torch.relu(v)
    elif activation == ACT_LEAKY_RELU.value:
        v = TF.leaky_relu(v, negative_slope)
    return v.reshape(shape)


# ---------------------------------------------------------------------------
# The four norms: which axes they reduce. Arguments are checked by the caller
# (nnlib.functional); ``activation`` is the kernels' code (ACTIVATIONS).

def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, activation=ACT_NONE.value,
               negative_slope=0.01, residual=None, num_batches_tracked=None):
    """x: (N, C, *) of rank >= 2; statistics per channel over (N, *). ``momentum``
    None: the cumulative average, 1 / (num_batches_tracked + 1); ``num_batches_tracked``
    (training with running statistics) gains 1 in the statistics kernel."""
    geom = Geometry(1, 1, x.shape[1] if x.dim() > 1 else 1, per_sample=False, keep_format=True)
    return _norm(x, weight, bias, residual, running_mean, running_var, num_batches_tracked, geom, eps,
                 activation, negative_slope, momentum, training)


def instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                  activation=ACT_NONE.value, negative_slope=0.01):
    """x: (N, C, *); statistics per (n, channel) over *; running stats per channel."""
    geom = Geometry(1, 1, x.shape[1], per_sample=True, keep_format=False)
    return _norm(x, weight, bias, None, running_mean, running_var, None, geom, eps, activation,
                 negative_slope, momentum, use_input_stats)


def group_norm(x, num_groups, weight, bias, eps, activation=ACT_NONE.value, negative_slope=0.01, dtype=None):
    """x: (N, C, *); statistics per (n, group of C / num_groups channels); y of
    ``dtype`` (None: x's)."""
    geom = Geometry(1, 1, num_groups, per_sample=True, keep_format=True)
    return _norm(x, weight, bias, None, None, None, None, geom, eps, activation, negative_slope, 0.0, True, dtype)


def layer_norm(x, normalized_shape, weight, bias, eps, activation=ACT_NONE.value, negative_slope=0.01, dtype=None):
    """x: (*, *normalized_shape); statistics per leading index over the trailing
    dims; weight, bias elementwise over normalized_shape (its "channels"); y of
    ``dtype`` (None: x's)."""
    k = len(normalized_shape)
    geom = Geometry(x.dim() - k, k, 1, per_sample=True, keep_format=False)
    return _norm(x, weight, bias, None, None, None, None, geom, eps, activation, negative_slope, 0.0, True, dtype)
