"""One statistics core for batch, layer, instance and group norm, forward and backward.

Every norm sees its input as ``(N, C, S)`` through strides (no copy unless the
dims cannot be merged that way, then one contiguous copy) and normalizes over
statistics of ``G`` groups of ``C // G`` consecutive channels:

=============  ============================  ======  ===========  ==========
norm           (N, C, S)                     G       per sample   affine on
=============  ============================  ======  ===========  ==========
batch norm     (batch, channels, spatial)    C       no           channel
instance norm  (batch, channels, spatial)    C       yes          channel
group norm     (batch, channels, spatial)    groups  yes          channel
layer norm     (leading, normalized, 1)      1       yes          "channel"
=============  ============================  ======  ===========  ==========

A statistic is per (n, group) when "per sample", else per group over all n.
channels_last is other strides. The kernels, all on the same tiling:

* ``_stats_kernel``: fp32 per-lane Welford over a tile [BLOCK_S, BLOCK_C] looping
  over blocks; each program covers one channel block, a range of n and a range
  of S (the split), and writes (count, mean, M2) partials per (chunk, statistic).
* ``_merge_stats_kernel``: merges the chunks of each statistic in a fixed order
  (Chan's formula): mean, rstd and the unbiased variance, fp32.
* ``_norm_fwd_kernel``: y = act((x - mean) * rstd * w + b [+ residual]).
* ``_norm_bwd_reduce_kernel``: fp32 partials of sum(g) and sum(g * xhat) per
  channel (the bias and weight gradients) and of sum(w g), sum(w g xhat) per
  statistic, g the gradient through the activation; ``sum_partials`` reduces them.
* ``_norm_bwd_dx_kernel``: dx = rstd (w g - (sum(w g) + xhat sum(w g xhat)) / M),
  and the residual's gradient g.

No float atomics: every cross-program reduction goes through partial buffers
and a fixed-order second pass.

Second derivatives: ``NormFunction``'s backward is ``NormBackwardFunction``
(the kernels above), whose own backward differentiates ``_reference_forward``,
the same forward in torch ops, twice. Third derivatives raise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._reduce import sum_partials
from ._runtime import CompileCase, interpreting, launch, merge_dims, needs_int64, suggest_memory_format
from .activation import ACT_LEAKY_RELU, ACT_NONE, ACT_RELU, activation_grad, apply_activation

__all__ = ["Geometry", "NormFunction", "batch_norm", "instance_norm", "group_norm", "layer_norm",
           "COMPILE_CASES"]

# Tiling. A GPU tile holds TILE elements; the interpreter, which pays per program
# and per loop iteration, gets INTERPRETER_TILE. When channels are innermost
# (channels_last) a tile is at most CHANNELS_LAST_WIDTH channels wide. The
# reduction over (n, S) is split until about TARGET_PROGRAMS programs run, none
# with fewer than MIN_PROGRAM_ELEMENTS elements. Tests lower these to force
# loops and splits on small shapes. The merge pass reads BLOCK_K chunks of
# BLOCK_T statistics at a time.
TILE = 2048
BACKWARD_TILE = 1024          # the backward kernels hold five tensors' tiles
INTERPRETER_TILE = 1 << 14
CHANNELS_LAST_WIDTH = 64
TARGET_PROGRAMS = 1024
INTERPRETER_TARGET_PROGRAMS = 1
MIN_PROGRAM_ELEMENTS = 4096
MERGE_BLOCKS = {"BLOCK_K": 32, "BLOCK_T": 64}
INTERPRETER_MERGE_BLOCKS = {"BLOCK_K": 256, "BLOCK_T": 128}
NUM_WARPS = 8


# ---------------------------------------------------------------------------
# Kernels

@triton.jit
def _index(v, INDEX_64: tl.constexpr):
    """Offsets in int64 when some tensor of the call passes 2**31 elements, else int32."""
    if INDEX_64:
        return tl.cast(v, tl.int64)
    else:
        return v


@triton.jit
def _program_range(N, S, n_per_prog, num_n_chunks, s_per_prog, num_s_chunks):
    """(channel block, n chunk, s chunk, n_start, n_end, s_start, s_end) of this program."""
    pid = tl.program_id(0)
    pid_s = pid % num_s_chunks
    pid_n = (pid // num_s_chunks) % num_n_chunks
    pid_c = pid // (num_s_chunks * num_n_chunks)
    n_start = pid_n * n_per_prog
    n_end = tl.minimum(n_start + n_per_prog, N)
    s_start = pid_s * s_per_prog
    s_end = tl.minimum(s_start + s_per_prog, S)
    return pid_c, pid_n, pid_s, n_start, n_end, s_start, s_end


@triton.jit
def _block_channels(pid_c, C, Cg, GPB, BPG, BLOCK_C: tl.constexpr):
    """Channel block pid_c: GPB whole groups (BPG == 1) or one BLOCK_C slice of a
    group (BPG slices per group). Returns (channels, mask, group of each channel
    counted from the first group, first group, slice)."""
    first_group = (pid_c // BPG) * GPB
    part = pid_c % BPG
    start = part * BLOCK_C
    offs_j = tl.arange(0, BLOCK_C)
    offs_c = first_group * Cg + start + offs_j
    valid = tl.minimum(GPB * Cg - start, C - first_group * Cg - start)
    mask_c = offs_j < valid
    local_group = (start + offs_j) // Cg
    return offs_c, mask_c, local_group, first_group, part


@triton.jit
def _affine(x, mean, scale, b):
    """(x - mean) * scale + b per channel (scale = rstd * w): one expression for the
    forward's value and the backward's recomputed activation input."""
    return (x - mean[None, :]) * scale[None, :] + b[None, :]


@triton.jit
def _group_mask(first_group, G, GPB, mask_c, GROUPED: tl.constexpr, BLOCK_G: tl.constexpr):
    """Which of the BLOCK_G group slots of the block exist (BLOCK_G == BLOCK_C when
    every group is one channel)."""
    if GROUPED:
        offs_g = tl.arange(0, BLOCK_G)
        return (offs_g < GPB) & (first_group + offs_g < G)
    else:
        return mask_c


@triton.jit
def _group_sums(values, local_group, mask_c, GROUPED: tl.constexpr, BLOCK_G: tl.constexpr):
    """Sum per-channel ``values`` [BLOCK_C] over each group of the block -> [BLOCK_G]
    (identity when every group is one channel)."""
    if GROUPED and BLOCK_G == 1:     # the block is (part of) one group
        return tl.sum(tl.where(mask_c, values, 0.0), axis=0)
    elif GROUPED:
        onehot = (local_group[None, :] == tl.arange(0, BLOCK_G)[:, None]) & mask_c[None, :]
        return tl.sum(tl.where(onehot, values[None, :], 0.0), axis=1)
    else:
        return values


@triton.jit
def _welford_combine(count, mean, m2, AXIS: tl.constexpr):
    """Combine Welford triples (count, mean, M2) along AXIS (Chan et al.). Means are
    summed relative to the largest one, so that data far from zero (mean 1e3, unit
    spread) keep their variance in fp32."""
    ref = tl.max(tl.where(count > 0, mean, -3.0e38), axis=AXIS)     # finite when no lane has data
    total = tl.sum(count, axis=AXIS)
    shifted = tl.where(count > 0, mean - tl.expand_dims(ref, AXIS), 0.0)
    mean_out = ref + tl.sum(count * shifted, axis=AXIS) / tl.maximum(total, 1.0)
    dev = tl.where(count > 0, mean - tl.expand_dims(mean_out, AXIS), 0.0)
    return total, mean_out, tl.sum(m2 + count * dev * dev, axis=AXIS)


@triton.jit
def _store_welford(count, mean, m2, local_group, mask_c, first_group, G, GPB, part_base,
                   count_ptr, mean_ptr, m2_ptr, GROUPED: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_G: tl.constexpr):
    """Merge per-lane Welford tiles [BLOCK_S, BLOCK_C] into one (count, mean, M2) per
    group of the block and store them at ``part_base + group``."""
    g_count, g_mean, g_m2 = _welford_combine(count, mean, m2, 0)
    if GROUPED and BLOCK_G == 1:     # the block is (part of) one group
        g_count, g_mean, g_m2 = _welford_combine(tl.where(mask_c, g_count, 0.0), g_mean, g_m2, 0)
    elif GROUPED:
        onehot = (local_group[:, None] == tl.arange(0, BLOCK_G)[None, :]) & mask_c[:, None]
        g_count, g_mean, g_m2 = _welford_combine(tl.where(onehot, g_count[:, None], 0.0),
                                                 tl.where(onehot, g_mean[:, None], 0.0),
                                                 tl.where(onehot, g_m2[:, None], 0.0), 0)
    offs = part_base + tl.arange(0, BLOCK_G)
    mask_g = _group_mask(first_group, G, GPB, mask_c, GROUPED, BLOCK_G)
    tl.store(count_ptr + offs, g_count, mask=mask_g)
    tl.store(mean_ptr + offs, g_mean, mask=mask_g)
    tl.store(m2_ptr + offs, g_m2, mask=mask_g)


@triton.jit
def _stats_kernel(x_ptr, count_ptr, mean_ptr, m2_ptr,
                  N, C, S, G, Cg, stride_xn, stride_xc, stride_xs,
                  n_per_prog, num_n_chunks, s_per_prog, num_s_chunks, GPB, BPG,
                  PER_SAMPLE: tl.constexpr, GROUPED: tl.constexpr, INDEX_64: tl.constexpr,
                  BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    """x: (N, C, S) through strides. count, mean, m2: (num_chunks, num_stats) fp32
    partials, num_stats = N * G (PER_SAMPLE) or G; statistic (n, g) is n * G + g.
    The chunk of a partial is (slice, s chunk) per sample, (slice, s chunk, n chunk)
    over the batch."""
    pid_c, pid_n, pid_s, n_start, n_end, s_start, s_end = _program_range(
        N, S, n_per_prog, num_n_chunks, s_per_prog, num_s_chunks)
    offs_c, mask_c, local_group, first_group, part = _block_channels(pid_c, C, Cg, GPB, BPG, BLOCK_C)
    rows = _index(tl.arange(0, BLOCK_S), INDEX_64)
    c_offs = _index(offs_c, INDEX_64)[None, :] * stride_xc
    chunk = part * num_s_chunks + pid_s
    count = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    mean = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    for n in range(n_start, n_end):
        if PER_SAMPLE:
            count = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
            mean = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
            m2 = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
        x_base = x_ptr + _index(n, INDEX_64) * stride_xn
        for s0 in range(s_start, s_end, BLOCK_S):
            offs_s = s0 + rows
            mask = (offs_s < s_end)[:, None] & mask_c[None, :]
            x = tl.load(x_base + offs_s[:, None] * stride_xs + c_offs,
                        mask=mask, other=0.0).to(tl.float32)
            count += tl.where(mask, 1.0, 0.0)
            delta = x - mean
            mean += tl.where(mask, delta / tl.maximum(count, 1.0), 0.0)
            m2 += tl.where(mask, delta * (x - mean), 0.0)
        if PER_SAMPLE:
            part_base = (chunk.to(tl.int64) * N + n) * G + first_group
            _store_welford(count, mean, m2, local_group, mask_c, first_group, G, GPB, part_base,
                           count_ptr, mean_ptr, m2_ptr, GROUPED, BLOCK_C, BLOCK_G)
    if not PER_SAMPLE:
        part_base = (chunk.to(tl.int64) * num_n_chunks + pid_n) * G + first_group
        _store_welford(count, mean, m2, local_group, mask_c, first_group, G, GPB, part_base,
                       count_ptr, mean_ptr, m2_ptr, GROUPED, BLOCK_C, BLOCK_G)


@triton.jit
def _merge_stats_kernel(count_ptr, mean_ptr, m2_ptr, mean_out_ptr, rstd_out_ptr, var_out_ptr,
                        num_chunks, num_stats, eps,
                        BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr):
    """count, mean, m2: (num_chunks, num_stats) fp32 partials. Merges each column in
    chunk order into mean_out, rstd_out = 1 / sqrt(biased var + eps) and var_out =
    the unbiased variance, all (num_stats,) fp32."""
    pid = tl.program_id(0)
    offs_t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < num_stats
    total = tl.zeros((BLOCK_T,), dtype=tl.float32)
    mean = tl.zeros((BLOCK_T,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for k0 in range(0, num_chunks, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = (offs_k < num_chunks)[:, None] & mask_t[None, :]
        offs = offs_k.to(tl.int64)[:, None] * num_stats + offs_t[None, :]
        b_count, b_mean, b_m2 = _welford_combine(tl.load(count_ptr + offs, mask=mask, other=0.0),
                                                 tl.load(mean_ptr + offs, mask=mask, other=0.0),
                                                 tl.load(m2_ptr + offs, mask=mask, other=0.0), 0)
        new_total = total + b_count
        delta = tl.where(b_count > 0, b_mean - mean, 0.0)
        frac = b_count / tl.maximum(new_total, 1.0)
        mean += delta * frac
        m2 += b_m2 + delta * delta * total * frac
        total = new_total
    var = m2 / tl.maximum(total, 1.0)
    tl.store(mean_out_ptr + offs_t, mean, mask=mask_t)
    tl.store(rstd_out_ptr + offs_t, 1.0 / tl.sqrt(var + eps), mask=mask_t)
    tl.store(var_out_ptr + offs_t, m2 / tl.maximum(total - 1.0, 1.0), mask=mask_t)


@triton.jit
def _load_affine(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """fp32 weight and bias of the block's channels (1 and 0 when absent)."""
    if HAS_WEIGHT:
        w = tl.load(w_ptr + offs_c, mask=mask_c, other=1.0).to(tl.float32)
    else:
        w = tl.full(offs_c.shape, 1.0, tl.float32)
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    else:
        b = tl.zeros(offs_c.shape, tl.float32)
    return w, b


@triton.jit
def _norm_fwd_kernel(x_ptr, y_ptr, res_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr,
                     N, C, S, G, Cg, stride_xn, stride_xc, stride_xs, stride_yn, stride_yc, stride_ys,
                     stride_rn, stride_rc, stride_rs,
                     n_per_prog, num_n_chunks, s_per_prog, num_s_chunks, GPB, BPG, negative_slope,
                     STATS_PER_SAMPLE: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr, INDEX_64: tl.constexpr,
                     BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """x, y, residual: (N, C, S) through strides; mean, rstd: fp32 per statistic
    (n * G + g when STATS_PER_SAMPLE, else g); w, b: (C,).
    y = act((x - mean) * rstd * w + b [+ residual])."""
    pid_c, pid_n, pid_s, n_start, n_end, s_start, s_end = _program_range(
        N, S, n_per_prog, num_n_chunks, s_per_prog, num_s_chunks)
    offs_c, mask_c, local_group, first_group, part = _block_channels(pid_c, C, Cg, GPB, BPG, BLOCK_C)
    rows = _index(tl.arange(0, BLOCK_S), INDEX_64)
    offs_cc = _index(offs_c, INDEX_64)[None, :]
    w, b = _load_affine(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT, HAS_BIAS)
    for n in range(n_start, n_end):
        stat = first_group + local_group
        if STATS_PER_SAMPLE:
            stat += n * G
        mean = tl.load(mean_ptr + stat, mask=mask_c, other=0.0)
        rstd = tl.load(rstd_ptr + stat, mask=mask_c, other=0.0)
        scale = rstd * w
        n_idx = _index(n, INDEX_64)
        for s0 in range(s_start, s_end, BLOCK_S):
            offs_s = s0 + rows
            offs_ss = offs_s[:, None]
            mask = (offs_s < s_end)[:, None] & mask_c[None, :]
            x = tl.load(x_ptr + n_idx * stride_xn + offs_ss * stride_xs + offs_cc * stride_xc,
                        mask=mask, other=0.0).to(tl.float32)
            v = _affine(x, mean, scale, b)
            if HAS_RESIDUAL:
                v += tl.load(res_ptr + n_idx * stride_rn + offs_ss * stride_rs + offs_cc * stride_rc,
                             mask=mask, other=0.0).to(tl.float32)
            y = apply_activation(v, ACTIVATION, negative_slope)
            tl.store(y_ptr + n_idx * stride_yn + offs_ss * stride_ys + offs_cc * stride_yc,
                     y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_x_and_grad(x_ptr, dy_ptr, res_ptr, n_idx, offs_ss, offs_cc, mask, mean, scale, b,
                     stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys,
                     stride_rn, stride_rc, stride_rs, negative_slope,
                     HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr):
    """fp32 tiles (x, g) of sample n_idx for both backward kernels: g = dy through
    the activation, whose input is recomputed from x (and the residual)."""
    x = tl.load(x_ptr + n_idx * stride_xn + offs_ss * stride_xs + offs_cc * stride_xc,
                mask=mask, other=0.0).to(tl.float32)
    g = tl.load(dy_ptr + n_idx * stride_dyn + offs_ss * stride_dys + offs_cc * stride_dyc,
                mask=mask, other=0.0).to(tl.float32)
    if ACTIVATION != ACT_NONE:
        v = _affine(x, mean, scale, b)
        if HAS_RESIDUAL:
            v += tl.load(res_ptr + n_idx * stride_rn + offs_ss * stride_rs + offs_cc * stride_rc,
                         mask=mask, other=0.0).to(tl.float32)
        g = activation_grad(g, v, ACTIVATION, negative_slope)
    return x, g


@triton.jit
def _norm_bwd_reduce_kernel(x_ptr, dy_ptr, res_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr,
                            dw_part_ptr, db_part_ptr, s1_part_ptr, s2_part_ptr,
                            N, C, S, G, Cg, stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys,
                            stride_rn, stride_rc, stride_rs,
                            n_per_prog, num_n_chunks, s_per_prog, num_s_chunks, GPB, BPG, negative_slope,
                            PER_SAMPLE: tl.constexpr, GROUPED: tl.constexpr, STAT_SUMS: tl.constexpr,
                            HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                            ACTIVATION: tl.constexpr, INDEX_64: tl.constexpr,
                            BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    """x, dy, residual: (N, C, S) through strides; mean, rstd per statistic as in
    the forward. g = dy through the activation (its input recomputed from x), xhat =
    (x - mean) * rstd. Writes fp32 partials: dw_part, db_part (num_n_chunks *
    num_s_chunks, C) of sum(g * xhat), sum(g); with STAT_SUMS, s1_part, s2_part
    (num_chunks, num_stats) of sum(w * g), sum(w * g * xhat), chunks as in
    _stats_kernel."""
    pid_c, pid_n, pid_s, n_start, n_end, s_start, s_end = _program_range(
        N, S, n_per_prog, num_n_chunks, s_per_prog, num_s_chunks)
    offs_c, mask_c, local_group, first_group, part = _block_channels(pid_c, C, Cg, GPB, BPG, BLOCK_C)
    rows = _index(tl.arange(0, BLOCK_S), INDEX_64)
    offs_cc = _index(offs_c, INDEX_64)[None, :]
    w, b = _load_affine(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT, HAS_BIAS)
    chunk = part * num_s_chunks + pid_s
    sum_g = tl.zeros((BLOCK_C,), dtype=tl.float32)
    sum_gx = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for n in range(n_start, n_end):
        stat = first_group + local_group
        if PER_SAMPLE:
            stat += n * G
        mean = tl.load(mean_ptr + stat, mask=mask_c, other=0.0)
        rstd = tl.load(rstd_ptr + stat, mask=mask_c, other=0.0)
        scale = rstd * w
        n_idx = _index(n, INDEX_64)
        acc_g = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
        acc_gx = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
        for s0 in range(s_start, s_end, BLOCK_S):
            offs_s = s0 + rows
            offs_ss = offs_s[:, None]
            mask = (offs_s < s_end)[:, None] & mask_c[None, :]
            x, g = _load_x_and_grad(x_ptr, dy_ptr, res_ptr, n_idx, offs_ss, offs_cc, mask, mean, scale, b,
                                    stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys,
                                    stride_rn, stride_rc, stride_rs, negative_slope, HAS_RESIDUAL, ACTIVATION)
            xhat = (x - mean[None, :]) * rstd[None, :]
            acc_g += g
            acc_gx += tl.where(mask, g * xhat, 0.0)
        col_g = tl.sum(acc_g, axis=0)
        col_gx = tl.sum(acc_gx, axis=0)
        sum_g += col_g
        sum_gx += col_gx
        if PER_SAMPLE and STAT_SUMS:
            offs_g = (chunk.to(tl.int64) * N + n) * G + first_group + tl.arange(0, BLOCK_G)
            mask_g = _group_mask(first_group, G, GPB, mask_c, GROUPED, BLOCK_G)
            tl.store(s1_part_ptr + offs_g, _group_sums(w * col_g, local_group, mask_c, GROUPED, BLOCK_G), mask=mask_g)
            tl.store(s2_part_ptr + offs_g, _group_sums(w * col_gx, local_group, mask_c, GROUPED, BLOCK_G),
                     mask=mask_g)
    if STAT_SUMS and not PER_SAMPLE:
        offs_g = (chunk.to(tl.int64) * num_n_chunks + pid_n) * G + first_group + tl.arange(0, BLOCK_G)
        mask_g = _group_mask(first_group, G, GPB, mask_c, GROUPED, BLOCK_G)
        tl.store(s1_part_ptr + offs_g, _group_sums(w * sum_g, local_group, mask_c, GROUPED, BLOCK_G), mask=mask_g)
        tl.store(s2_part_ptr + offs_g, _group_sums(w * sum_gx, local_group, mask_c, GROUPED, BLOCK_G), mask=mask_g)
    row = (pid_n * num_s_chunks + pid_s).to(tl.int64) * C
    tl.store(dw_part_ptr + row + offs_c, sum_gx, mask=mask_c)
    tl.store(db_part_ptr + row + offs_c, sum_g, mask=mask_c)


@triton.jit
def _norm_bwd_dx_kernel(x_ptr, dy_ptr, res_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s1_ptr, s2_ptr,
                        dx_ptr, dres_ptr,
                        N, C, S, G, Cg, stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys,
                        stride_rn, stride_rc, stride_rs, stride_dxn, stride_dxc, stride_dxs,
                        stride_drn, stride_drc, stride_drs,
                        n_per_prog, num_n_chunks, s_per_prog, num_s_chunks, GPB, BPG, negative_slope, inv_count,
                        STATS_PER_SAMPLE: tl.constexpr, BATCH_STATS: tl.constexpr,
                        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                        WRITE_DRES: tl.constexpr, ACTIVATION: tl.constexpr, INDEX_64: tl.constexpr,
                        BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """x, dy, residual, dx, dres: (N, C, S) through strides; mean, rstd, s1 = sum(w g),
    s2 = sum(w g xhat) per statistic; inv_count = 1 / elements per statistic.
    dx = rstd * (w g - (s1 + xhat s2) * inv_count) when the statistics came from x
    (BATCH_STATS), else rstd * w * g; dres = g."""
    pid_c, pid_n, pid_s, n_start, n_end, s_start, s_end = _program_range(
        N, S, n_per_prog, num_n_chunks, s_per_prog, num_s_chunks)
    offs_c, mask_c, local_group, first_group, part = _block_channels(pid_c, C, Cg, GPB, BPG, BLOCK_C)
    rows = _index(tl.arange(0, BLOCK_S), INDEX_64)
    offs_cc = _index(offs_c, INDEX_64)[None, :]
    w, b = _load_affine(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT, HAS_BIAS)
    for n in range(n_start, n_end):
        stat = first_group + local_group
        if STATS_PER_SAMPLE:
            stat += n * G
        mean = tl.load(mean_ptr + stat, mask=mask_c, other=0.0)
        rstd = tl.load(rstd_ptr + stat, mask=mask_c, other=0.0)
        scale = rstd * w
        if BATCH_STATS:
            k1 = -rstd * tl.load(s1_ptr + stat, mask=mask_c, other=0.0) * inv_count
            k2 = -rstd * tl.load(s2_ptr + stat, mask=mask_c, other=0.0) * inv_count
        n_idx = _index(n, INDEX_64)
        for s0 in range(s_start, s_end, BLOCK_S):
            offs_s = s0 + rows
            offs_ss = offs_s[:, None]
            mask = (offs_s < s_end)[:, None] & mask_c[None, :]
            x, g = _load_x_and_grad(x_ptr, dy_ptr, res_ptr, n_idx, offs_ss, offs_cc, mask, mean, scale, b,
                                    stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys,
                                    stride_rn, stride_rc, stride_rs, negative_slope, HAS_RESIDUAL, ACTIVATION)
            if WRITE_DRES:
                tl.store(dres_ptr + n_idx * stride_drn + offs_ss * stride_drs + offs_cc * stride_drc,
                         g.to(dres_ptr.dtype.element_ty), mask=mask)
            dx = scale[None, :] * g
            if BATCH_STATS:
                xhat = (x - mean[None, :]) * rstd[None, :]
                dx += k1[None, :] + k2[None, :] * xhat
            tl.store(dx_ptr + n_idx * stride_dxn + offs_ss * stride_dxs + offs_cc * stride_dxc,
                     dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Host side: views, tiling, launches

@dataclass(frozen=True)
class Geometry:
    """How a norm reads its input. Dims [0, lead) form n, [lead, lead + chan) the
    channels, the rest S, each merged through strides. Statistics cover ``groups``
    groups of consecutive channels, per sample (``per_sample``) or over the whole
    batch; the output keeps a channels_last input's memory format when
    ``keep_format``, else it is contiguous (as torch)."""
    lead: int
    chan: int
    groups: int
    per_sample: bool
    keep_format: bool


def _describe(t: torch.Tensor, geom: Geometry):
    """((N, C, S), (stride_n, stride_c, stride_s)) of ``t``, or None when a part's dims
    cannot be merged into one stride."""
    bounds = (0, geom.lead, geom.lead + geom.chan, t.dim())
    sizes, strides = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        merged = merge_dims(t.shape[lo:hi], t.stride()[lo:hi])
        if merged is None:
            return None
        sizes.append(merged[0])
        strides.append(merged[1])
    return tuple(sizes), tuple(strides)


def _ncs_views(tensors, geom: Geometry):
    """Describe tensors of one shape (None allowed) as (N, C, S): returns (tensors,
    (N, C, S), strides per tensor). A tensor whose dims cannot be merged is copied
    to contiguous once. Batch statistics fold n into S, (1, C, N * S), where every
    tensor allows it (channels_last)."""
    views, strides, sizes = [], [], None
    for t in tensors:
        if t is None:
            views.append(None)
            strides.append((0, 0, 0))
            continue
        described = _describe(t, geom)
        if described is None:
            t = t.contiguous()
            described = _describe(t, geom)
        views.append(t)
        sizes = described[0]
        strides.append(described[1])
    N, C, S = sizes
    if not geom.per_sample and N > 1:
        merged = [None if t is None else merge_dims((N, S), (st[0], st[2])) for t, st in zip(views, strides)]
        if all(m is not None for t, m in zip(views, merged) if t is not None):
            sizes = (1, C, N * S)
            strides = [st if m is None else (0, st[1], m[1]) for st, m in zip(strides, merged)]
    return views, sizes, strides


def _empty_output(x: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """torch.empty in torch's layout: layer / instance norm contiguous; group norm
    the memory format torch suggests for x; batch norm that, or channels_last
    whenever x is a non-contiguous channels_last-dense tensor (torch's kernel
    tests that first)."""
    fmt = torch.contiguous_format
    if geom.keep_format:
        fmt = suggest_memory_format(x)
        channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
        if (not geom.per_sample and channels_last is not None and not x.is_contiguous()
                and x.is_contiguous(memory_format=channels_last)):
            fmt = channels_last
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)


@dataclass(frozen=True)
class _Plan:
    """The tiling every kernel of one call shares. A channel block is GPB whole
    groups (BPG == 1) or 1 / BPG of a group; a program covers one channel block,
    n_per_prog samples and s_per_prog positions (a multiple of BLOCK_S)."""
    N: int
    C: int
    S: int
    G: int
    BLOCK_S: int
    BLOCK_C: int
    BLOCK_G: int
    GPB: int
    BPG: int
    n_per_prog: int
    num_n_chunks: int
    s_per_prog: int
    num_s_chunks: int

    @property
    def Cg(self) -> int:
        return self.C // self.G

    @property
    def grid(self):
        return (triton.cdiv(self.G, self.GPB) * self.BPG * self.num_n_chunks * self.num_s_chunks,)

    def num_chunks(self, per_sample: bool) -> int:
        """Partials per statistic."""
        return self.BPG * self.num_s_chunks * (1 if per_sample else self.num_n_chunks)

    def args(self):
        return (self.N, self.C, self.S, self.G, self.Cg)

    def range_args(self):
        return (self.n_per_prog, self.num_n_chunks, self.s_per_prog, self.num_s_chunks, self.GPB, self.BPG)

    def blocks(self, grouped: bool = False):
        out = {"BLOCK_S": self.BLOCK_S, "BLOCK_C": self.BLOCK_C}
        if grouped:
            out["BLOCK_G"] = self.BLOCK_G
        return out


def _plan(sizes, G: int, stride_c: int, stride_s: int, interpreter: bool, tile: int = TILE) -> _Plan:
    N, C, S = sizes
    tile = INTERPRETER_TILE if interpreter else tile
    Cg = C // G
    if stride_c == 1 and stride_s != 1 and S > 1 and C > 1:
        # Channels innermost: a tile is a few positions of many channels.
        width = min(tile, CHANNELS_LAST_WIDTH * max(1, tile // TILE))
    else:
        # Positions innermost: long rows of few channels (at most 16 on a GPU, to
        # bound the per-channel vectors each thread holds); one position (layer
        # norm): a row of channels.
        width = max(1, tile // triton.next_power_of_2(S))
        if S > 1 and not interpreter:
            width = min(width, 16)
    if Cg >= width:
        bpg, gpb, block_c = triton.cdiv(Cg, width), 1, width
    else:
        bpg, gpb = 1, min(width // Cg, G)
        block_c = triton.next_power_of_2(gpb * Cg)
    block_g = triton.next_power_of_2(gpb) if Cg > 1 else block_c
    block_s = min(triton.next_power_of_2(S), max(1, tile // block_c))
    # Split (n, S) until the grid is large enough, keeping programs busy.
    num_cblocks = triton.cdiv(G, gpb) * bpg
    s_blocks = triton.cdiv(S, block_s)
    per_block = max(1, (INTERPRETER_TARGET_PROGRAMS if interpreter else TARGET_PROGRAMS) // num_cblocks)
    per_block = min(per_block, max(1, N * s_blocks * block_s * block_c // MIN_PROGRAM_ELEMENTS))
    num_n_chunks = min(N, per_block)
    n_per_prog = triton.cdiv(N, num_n_chunks)
    num_n_chunks = triton.cdiv(N, n_per_prog)
    num_s_chunks = min(s_blocks, max(1, per_block // num_n_chunks))
    s_per_prog = triton.cdiv(s_blocks, num_s_chunks) * block_s
    num_s_chunks = triton.cdiv(S, s_per_prog)
    return _Plan(N, C, S, G, block_s, block_c, block_g, gpb, bpg, n_per_prog, num_n_chunks, s_per_prog,
                 num_s_chunks)


def _merge_blocks(interpreter: bool):
    """Chunks x statistics per tile of the merge (tests shrink the interpreter's)."""
    return dict(INTERPRETER_MERGE_BLOCKS if interpreter else MERGE_BLOCKS)


def _batch_stats(xk, strides, plan: _Plan, per_sample: bool, eps: float, index_64: bool):
    """fp32 (mean, rstd, unbiased var) per statistic of xk, described by ``plan``."""
    num_stats = (plan.N if per_sample else 1) * plan.G
    chunks = plan.num_chunks(per_sample)
    opts = {"device": xk.device, "dtype": torch.float32}
    count, mean_p, m2_p = (torch.empty((chunks, num_stats), **opts) for _ in range(3))
    launch(_stats_kernel, plan.grid, xk, count, mean_p, m2_p, *plan.args(), *strides, *plan.range_args(),
           PER_SAMPLE=per_sample, GROUPED=plan.Cg > 1, INDEX_64=index_64, **plan.blocks(grouped=True),
           num_warps=NUM_WARPS)
    mean, rstd, var = (torch.empty(num_stats, **opts) for _ in range(3))
    blocks = _merge_blocks(interpreting())
    launch(_merge_stats_kernel, (triton.cdiv(num_stats, blocks["BLOCK_T"]),), count, mean_p, m2_p,
           mean, rstd, var, chunks, num_stats, float(eps), **blocks)
    return mean, rstd, var


def _update_running(running_mean, running_var, mean, var, momentum: float, groups: int) -> None:
    """running = (1 - momentum) * running + momentum * batch value (O(C) host math);
    per-sample statistics (instance norm) are averaged over the batch first, as torch."""
    mean = mean.view(-1, groups).mean(0)
    var = var.view(-1, groups).mean(0)
    running_mean.copy_(running_mean.float() * (1.0 - momentum) + mean * momentum)
    running_var.copy_(running_var.float() * (1.0 - momentum) + var * momentum)


def _column_sums(partials: torch.Tensor) -> torch.Tensor:
    """sum_partials, or the only row when there is one."""
    return partials[0] if partials.shape[0] == 1 else sum_partials(partials)


def _param(t):
    """weight / bias as the C consecutive elements the kernels read (one copy when strided)."""
    return None if t is None else t.reshape(-1).contiguous()


class NormFunction(torch.autograd.Function):
    """The four norms: y = act((x - mean) * rstd * weight + bias [+ residual]).

    x: any shape that ``geom`` describes as (N, C, S); weight, bias: C elements
    (any shape, as torch allows) or None; residual: x's shape or None. With
    ``use_input_stats`` the statistics come from x (and update the running stats
    in place when given); otherwise from the running stats, one per group.
    Inputs whose dims cannot be merged into (N, C, S) strides are copied once."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, geom: Geometry, eps: float, activation: int,
                negative_slope: float, running_mean, running_var, momentum: float, use_input_stats: bool):
        y = _empty_output(x, geom)
        ctx.spec = _Spec(geom, float(eps), activation, float(negative_slope), use_input_stats)
        if x.numel() == 0:
            ctx.save_for_backward(x, weight, bias, residual, None, None)
            return y
        (xk, yk, rk), sizes, strides = _ncs_views([x, y, residual], geom)
        assert yk is y
        plan = _plan(sizes, geom.groups, strides[0][1], strides[0][2], interpreting())
        index_64 = needs_int64(xk, y, rk)
        if use_input_stats:
            mean, rstd, var = _batch_stats(xk, strides[0], plan, geom.per_sample, eps, index_64)
            if running_mean is not None:
                _update_running(running_mean, running_var, mean, var, momentum, geom.groups)
        else:
            mean = running_mean.reshape(-1).to(torch.float32, copy=True)   # not the buffer itself
            rstd = torch.rsqrt(running_var.reshape(-1).float() + eps)
        w, b = _param(weight), _param(bias)
        launch(_norm_fwd_kernel, plan.grid, xk, y, rk if rk is not None else xk, mean, rstd,
               w if w is not None else mean, b if b is not None else mean,
               *plan.args(), *strides[0], *strides[1], *strides[2], *plan.range_args(), float(negative_slope),
               STATS_PER_SAMPLE=ctx.spec.stats_per_sample, HAS_WEIGHT=w is not None, HAS_BIAS=b is not None,
               HAS_RESIDUAL=rk is not None, ACTIVATION=activation, INDEX_64=index_64, **plan.blocks(),
               num_warps=NUM_WARPS)
        # The caller's x and residual, not the copies a layout may have needed: the
        # second derivatives must reach them (the backward copies again if it must).
        ctx.save_for_backward(x, weight, bias, residual, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, residual, mean, rstd = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:4])
        grads = NormBackwardFunction.apply(dy, x, weight, bias, residual, mean, rstd, ctx.spec, needs)
        return *grads, *([None] * 8)


class _Spec(NamedTuple):
    """What a norm call computed, beyond its tensors."""
    geom: Geometry
    eps: float
    activation: int
    negative_slope: float
    use_input_stats: bool

    @property
    def stats_per_sample(self) -> bool:
        return self.use_input_stats and self.geom.per_sample


class NormBackwardFunction(torch.autograd.Function):
    """(dx, dweight, dbias, dresidual) of NormFunction from the Triton kernels
    (None where ``needs`` says so). Its own backward, the second derivatives (a
    gradient penalty through a norm), differentiates a torch-ops statement of the
    same forward (``_reference_forward``) twice; third derivatives raise."""

    @staticmethod
    def forward(ctx, dy, xk, weight, bias, rk, mean, rstd, spec: _Spec, needs):
        ctx.save_for_backward(dy, xk, weight, bias, rk, mean, rstd)
        ctx.spec = spec
        return _norm_backward(dy, xk, weight, bias, rk, mean, rstd, spec, needs)

    @staticmethod
    def backward(ctx, *grad_grads):
        if torch.is_grad_enabled():
            raise RuntimeError("nnlib's norms support first and second derivatives, not third "
                               "(create_graph=True through a second derivative)")
        saved = ctx.saved_tensors
        dy, xk, weight, bias, rk = (None if t is None else t.detach().requires_grad_() for t in saved[:5])
        with torch.enable_grad():
            y = _reference_forward(xk, weight, bias, rk, saved[5], saved[6], ctx.spec)
            inputs = [(t, g) for t, g in zip((xk, weight, bias, rk), grad_grads) if t is not None and g is not None]
            first = torch.autograd.grad(y, [t for t, _ in inputs], dy, create_graph=True)
            wrt = [t for t in (dy, xk, weight, bias, rk) if t is not None]
            second = iter(torch.autograd.grad(first, wrt, [g for _, g in inputs], allow_unused=True))
        return *(None if t is None else next(second) for t in (dy, xk, weight, bias, rk)), None, None, None, None


def _reference_forward(x, weight, bias, residual, mean, rstd, spec: _Spec):
    """NormFunction's forward in torch ops (fp32) on x seen as (N, G, Cg * S):
    statistics from x when ``spec.use_input_stats``, else the given per-group
    mean / rstd. Used only to differentiate the backward."""
    geom = spec.geom
    shape = x.shape
    N = math.prod(shape[:geom.lead])
    C = math.prod(shape[geom.lead:geom.lead + geom.chan])
    G = geom.groups
    xg = x.float().reshape(N, G, -1)
    if spec.use_input_stats:
        dims = (2,) if geom.per_sample else (0, 2)
        var, mu = torch.var_mean(xg, dims, correction=0, keepdim=True)
        xhat = (xg - mu) * torch.rsqrt(var + spec.eps)
    else:
        xhat = (xg - mean.view(1, G, 1)) * rstd.view(1, G, 1)
    v = xhat.reshape(N, C, -1)
    if weight is not None:
        v = v * weight.reshape(1, C, 1)
    if bias is not None:
        v = v + bias.reshape(1, C, 1)
    if residual is not None:
        v = v + residual.reshape(N, C, -1)
    if spec.activation == ACT_RELU.value:
        v = torch.relu(v)
    elif spec.activation == ACT_LEAKY_RELU.value:
        v = torch.nn.functional.leaky_relu(v, spec.negative_slope)
    return v.reshape(shape)


def _norm_backward(dy, xk, weight, bias, rk, mean, rstd, spec: _Spec, needs):
    """The Triton backward: (dx, dw, db, dres), each None unless ``needs`` asks."""
    need_x, need_w, need_b, need_r = needs
    geom = spec.geom
    dw = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device) if need_w else None
    db = torch.zeros(bias.shape, dtype=bias.dtype, device=bias.device) if need_b else None
    dx = torch.empty_like(xk) if need_x or need_r else None
    dres = torch.empty_like(rk) if need_r else None
    if xk.numel() == 0:
        return dx if need_x else None, dw, db, dres
    (xk, dyk, rk, dx, dres), sizes, strides = _ncs_views([xk, dy, rk, dx, dres], geom)
    plan = _plan(sizes, geom.groups, strides[0][1], strides[0][2], interpreting(), BACKWARD_TILE)
    w, b = _param(weight), _param(bias)
    common = dict(HAS_WEIGHT=w is not None, HAS_BIAS=b is not None, HAS_RESIDUAL=rk is not None,
                  ACTIVATION=spec.activation, INDEX_64=needs_int64(xk, dyk, rk, dx, dres))
    ptrs = (xk, dyk, rk if rk is not None else xk, mean, rstd,
            w if w is not None else mean, b if b is not None else mean)
    stat_sums = spec.use_input_stats and need_x
    s1 = s2 = mean
    if need_w or need_b or stat_sums:
        opts = {"device": xk.device, "dtype": torch.float32}
        dw_part, db_part = (torch.empty((plan.num_n_chunks * plan.num_s_chunks, plan.C), **opts)
                            for _ in range(2))
        s1_part = s2_part = dw_part
        if stat_sums:
            shape = (plan.num_chunks(geom.per_sample), mean.numel())
            s1_part, s2_part = torch.empty(shape, **opts), torch.empty(shape, **opts)
        launch(_norm_bwd_reduce_kernel, plan.grid, *ptrs, dw_part, db_part, s1_part, s2_part,
               *plan.args(), *strides[0], *strides[1], *strides[2], *plan.range_args(), spec.negative_slope,
               PER_SAMPLE=spec.stats_per_sample, GROUPED=plan.Cg > 1, STAT_SUMS=stat_sums, **common,
               **plan.blocks(grouped=True), num_warps=NUM_WARPS)
        if need_w:
            dw = _column_sums(dw_part).to(weight.dtype).reshape(weight.shape)
        if need_b:
            db = _column_sums(db_part).to(bias.dtype).reshape(bias.shape)
        if stat_sums:
            s1, s2 = _column_sums(s1_part), _column_sums(s2_part)
    if dx is not None:
        N, C, S = sizes
        per_stat = (1 if geom.per_sample else N) * (C // geom.groups) * S
        launch(_norm_bwd_dx_kernel, plan.grid, *ptrs, s1, s2, dx, dres if dres is not None else dx,
               *plan.args(), *strides[0], *strides[1], *strides[2], *strides[3], *strides[4],
               *plan.range_args(), spec.negative_slope, 1.0 / per_stat,
               STATS_PER_SAMPLE=spec.stats_per_sample, BATCH_STATS=stat_sums, WRITE_DRES=dres is not None,
               **common, **plan.blocks(), num_warps=NUM_WARPS)
    return dx if need_x else None, dw, db, dres


# ---------------------------------------------------------------------------
# The four norms: which axes they reduce. Arguments are checked by the caller
# (nnlib.functional); ``activation`` is the kernels' code (0 none, 1 relu, 2 leaky relu).

def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, activation=0,
               negative_slope=0.01, residual=None):
    """x: (N, C, *) of rank >= 2; statistics per channel over (N, *)."""
    geom = Geometry(1, 1, x.shape[1], per_sample=False, keep_format=True)
    return NormFunction.apply(x, weight, bias, residual, geom, eps, activation, negative_slope,
                              running_mean, running_var, momentum, training)


def instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, activation=0,
                  negative_slope=0.01):
    """x: (N, C, *); statistics per (n, channel) over *; running stats per channel."""
    geom = Geometry(1, 1, x.shape[1], per_sample=True, keep_format=False)
    return NormFunction.apply(x, weight, bias, None, geom, eps, activation, negative_slope,
                              running_mean, running_var, momentum, use_input_stats)


def group_norm(x, num_groups, weight, bias, eps, activation=0, negative_slope=0.01):
    """x: (N, C, *); statistics per (n, group of C / num_groups channels)."""
    geom = Geometry(1, 1, num_groups, per_sample=True, keep_format=True)
    return NormFunction.apply(x, weight, bias, None, geom, eps, activation, negative_slope,
                              None, None, 0.0, True)


def layer_norm(x, normalized_shape, weight, bias, eps, activation=0, negative_slope=0.01):
    """x: (*, *normalized_shape); statistics per leading index over the trailing
    dims; weight, bias elementwise over normalized_shape (its "channels")."""
    k = len(normalized_shape)
    geom = Geometry(x.dim() - k, k, 1, per_sample=True, keep_format=False)
    return NormFunction.apply(x, weight, bias, None, geom, eps, activation, negative_slope,
                              None, None, 0.0, True)


# ---------------------------------------------------------------------------
# Compile cases: every kernel for fp32 / fp16 / bf16 inputs, on the tiles the
# GPU plan picks for ResNet-50 shapes (the unit stride as the constexpr 1 that
# Triton specializes).

def _compile_cases():
    layouts = {
        # label: (sizes, groups, per_sample, stride_c, stride_s)
        "bn-nchw": ((32, 64, 12544), 64, False, 12544, 1),
        "bn-nhwc": ((1, 64, 32 * 12544), 64, False, 1, 64),
        "gn-nchw": ((32, 256, 3136), 32, True, 3136, 1),
        "gn-nhwc": ((32, 256, 3136), 32, True, 1, 256),
        "in-nchw-7x7": ((32, 2048, 49), 2048, True, 49, 1),
        "ln-chw": ((32, 64 * 112 * 112, 1), 1, True, 1, 1),
    }
    # (activation, residual, int64 offsets): the full epilogue everywhere, the plain
    # one for fp32, leaky relu and int64 offsets on two layouts.
    none, relu, leaky = ACT_NONE.value, ACT_RELU.value, ACT_LEAKY_RELU.value
    extra = {("fp32", None): [(none, False, False)], ("fp16", "bn-nhwc"): [(leaky, False, True)],
             ("bf16", "ln-chw"): [(none, False, True)]}
    dims = {"N": "i32", "C": "i32", "S": "i32", "G": "i32", "Cg": "i32"}
    ranges = {"n_per_prog": "i32", "num_n_chunks": "i32", "s_per_prog": "i32", "num_s_chunks": "i32",
              "GPB": "i32", "BPG": "i32", "negative_slope": "fp32"}

    def strided(sig, const, prefixes, stride_c, stride_s):
        for prefix in prefixes:
            for axis, value in (("n", None), ("c", stride_c), ("s", stride_s)):
                if value == 1:
                    const[f"stride_{prefix}{axis}"] = 1
                else:
                    sig[f"stride_{prefix}{axis}"] = "i32"
        return sig, const

    cases = []
    for label, (sizes, groups, per_sample, stride_c, stride_s) in layouts.items():
        fwd = _plan(sizes, groups, stride_c, stride_s, interpreter=False)
        bwd = _plan(sizes, groups, stride_c, stride_s, interpreter=False, tile=BACKWARD_TILE)
        grouped = fwd.Cg > 1
        for dt in ("fp32", "fp16", "bf16"):
            pdt = "fp32" if dt != "fp32" and label.startswith("bn") else dt   # mixed precision parameters
            sig, const = strided({"x_ptr": f"*{dt}", "count_ptr": "*fp32", "mean_ptr": "*fp32", "m2_ptr": "*fp32",
                                  **dims, **{k: v for k, v in ranges.items() if k != "negative_slope"}},
                                 {"PER_SAMPLE": per_sample, "GROUPED": grouped, "INDEX_64": False,
                                  **fwd.blocks(grouped=True)}, "x", stride_c, stride_s)
            cases.append(CompileCase(_stats_kernel, sig, const, num_warps=NUM_WARPS, label=f"{label},{dt}"))
            variants = [(relu, True, False)] + extra.get((dt, None), []) + extra.get((dt, label), [])
            for act, residual, index_64 in variants:
                tag = f"{label},{dt},act={act},res={residual},i64={index_64}"
                common = {"HAS_WEIGHT": True, "HAS_BIAS": True, "HAS_RESIDUAL": residual, "ACTIVATION": act,
                          "INDEX_64": index_64}
                params = {"mean_ptr": "*fp32", "rstd_ptr": "*fp32", "w_ptr": f"*{pdt}", "b_ptr": f"*{pdt}",
                          **dims, **ranges}
                sig, const = strided({"x_ptr": f"*{dt}", "y_ptr": f"*{dt}", "res_ptr": f"*{dt}", **params},
                                     {"STATS_PER_SAMPLE": per_sample, **common, **fwd.blocks()},
                                     ("x", "y", "r"), stride_c, stride_s)
                cases.append(CompileCase(_norm_fwd_kernel, sig, const, num_warps=NUM_WARPS, label=tag))
                sig, const = strided({"x_ptr": f"*{dt}", "dy_ptr": f"*{dt}", "res_ptr": f"*{dt}", **params,
                                      **{f"{k}_part_ptr": "*fp32" for k in ("dw", "db", "s1", "s2")}},
                                     {"PER_SAMPLE": per_sample, "GROUPED": grouped, "STAT_SUMS": True, **common,
                                      **bwd.blocks(grouped=True)}, ("x", "dy", "r"), stride_c, stride_s)
                cases.append(CompileCase(_norm_bwd_reduce_kernel, sig, const, num_warps=NUM_WARPS, label=tag))
                sig, const = strided({"x_ptr": f"*{dt}", "dy_ptr": f"*{dt}", "res_ptr": f"*{dt}", **params,
                                      "s1_ptr": "*fp32", "s2_ptr": "*fp32", "dx_ptr": f"*{dt}",
                                      "dres_ptr": f"*{dt}", "inv_count": "fp32"},
                                     {"STATS_PER_SAMPLE": per_sample, "BATCH_STATS": True, "WRITE_DRES": residual,
                                      **common, **bwd.blocks()}, ("x", "dy", "r", "dx", "dr"), stride_c, stride_s)
                cases.append(CompileCase(_norm_bwd_dx_kernel, sig, const, num_warps=NUM_WARPS, label=tag))
    cases.append(CompileCase(
        _merge_stats_kernel,
        {"count_ptr": "*fp32", "mean_ptr": "*fp32", "m2_ptr": "*fp32", "mean_out_ptr": "*fp32",
         "rstd_out_ptr": "*fp32", "var_out_ptr": "*fp32", "num_chunks": "i32", "num_stats": "i32", "eps": "fp32"},
        _merge_blocks(interpreter=False)))
    return cases


COMPILE_CASES = _compile_cases()
