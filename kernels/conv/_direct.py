"""Direct convolution kernels for few channels per group (channel multipliers,
Kg or Cg < 16: too narrow for ``tl.dot``; depthwise kernels wider than
``_depthwise`` takes), and the backward epilogue (activation gradient and
bias-gradient partials).

A program owns a (pixels, channels) tile spanning any number of groups: each
column reads its own group's channels, so a tile of narrow groups covers BLOCK_N
channels at once. Multiply-adds are fp32 outer products; every tensor is
addressed through its strides. The forward and input gradient walk the taps,
and within a tap the channels they reduce over from that tap's pointers and
mask, one stride a step. Shapes as in ``_gemm``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..activation import activation_grad
from .._reduce import sum_splits
from ._gemm import _in_range, _offsets, _planar_rows, _split_steps, _store_output, _stride_phase


@triton.jit
def _conv_fwd_direct_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        N, H, W, P, Q, K, Cg, Kg, R, S,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_wk, stride_wc, stride_wr, stride_ws,
        stride_yn, stride_yc, stride_yh, stride_yw,
        negative_slope,
        HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """x: (N, C, H, W); w: (K, Cg, R, S); b: (K,); y: (N, K, P, Q); strides.
    Program (m, n): y = act(conv + b) over BLOCK_M output pixels and BLOCK_N
    output channels k, each reading input channels (k // Kg)*Cg + c."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < N * P * Q
    mask_n = offs_n < K
    n = offs_m // (P * Q)
    p = (offs_m % (P * Q)) // Q
    q = offs_m % Q
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_rows = x_ptr + n.to(tl.int64) * stride_xn                              # [BLOCK_M]
    x_cols = (offs_n // Kg * Cg).to(tl.int64) * stride_xc                    # [BLOCK_N]
    w_cols = w_ptr + offs_n.to(tl.int64) * stride_wk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(0, R * S):         # per tap: its rows' pointers and mask; then Cg steps of one stride
        r = tap // S
        s = tap % S
        ih = ih0 + r * dil_h
        iw = iw0 + s * dil_w
        mask = (mask_m & _in_range(ih, H) & _in_range(iw, W))[:, None] & mask_n[None, :]
        x_ptrs = (x_rows + ih.to(tl.int64) * stride_xh + iw.to(tl.int64) * stride_xw)[:, None] + x_cols[None, :]
        w_ptrs = w_cols + r * stride_wr + s * stride_ws
        for _ in range(0, Cg):
            xv = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
            wv = tl.load(w_ptrs, mask=mask_n, other=0.0).to(tl.float32)
            acc += xv * wv[None, :]
            x_ptrs += stride_xc
            w_ptrs += stride_wc
    _store_output(acc, b_ptr, y_ptr, offs_m, offs_n, N * P * Q, P, Q, K,
                  stride_yn, stride_yc, stride_yh, stride_yw, negative_slope, HAS_BIAS, ACTIVATION, 1, 0)


@triton.jit
def _conv_dgrad_direct_kernel(
        dy_ptr, w_ptr, dx_ptr,
        N, H, W, P, Q, C, Cg, Kg, R, S,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, step_r, step_s, phases_w,
        stride_dyn, stride_dyk, stride_dyp, stride_dyq,
        stride_wk, stride_wc, stride_wr, stride_ws,
        stride_dxn, stride_dxc, stride_dxh, stride_dxw,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dy: (N, K, P, Q); w: (K, Cg, R, S); dx: (N, C, H, W); strides.
    Program (m, n, phase), min(stride_h, H) * phases_w phases (phases_w =
    min(stride_w, W)): dx over BLOCK_M input pixels of one stride phase and
    BLOCK_N input channels c, summing dy[(c // Cg)*Kg + kk] over kk < Kg and the
    taps that reach the phase (see ``_gemm._stride_phase``)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    first_h, Hp, r0, n_r, dp0, dstep_h = _stride_phase((phase // phases_w + pad_h) % stride_h, H, pad_h, stride_h,
                                                       dil_h, R, step_r)
    first_w, Wp, s0, n_s, dq0, dstep_w = _stride_phase((phase % phases_w + pad_w) % stride_w, W, pad_w, stride_w,
                                                       dil_w, S, step_s)
    M = N * Hp * Wp
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < C
    HWp = tl.maximum(Hp * Wp, 1)
    n = offs_m // HWp
    i = (offs_m % HWp) // tl.maximum(Wp, 1)
    j = offs_m % tl.maximum(Wp, 1)
    col = tl.minimum(offs_n, C - 1)          # columns past C read column C - 1 (not stored): no column mask
    k_first = (col // Cg * Kg).to(tl.int64)                                  # [BLOCK_N]
    dy_rows = dy_ptr + n.to(tl.int64) * stride_dyn
    dy_cols = k_first * stride_dyk
    w_cols = w_ptr + k_first * stride_wk + (col % Cg).to(tl.int64) * stride_wc

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(0, tl.where(pid_m * BLOCK_M < M, n_r * n_s, 0)):     # per tap as the forward, Kg steps each
        tr = tap // n_s
        ts = tap % n_s
        p = i + (dp0 - tr * dstep_h)
        q = j + (dq0 - ts * dstep_w)
        mask = (mask_m & _in_range(p, P) & _in_range(q, Q))[:, None]
        dy_ptrs = (dy_rows + p.to(tl.int64) * stride_dyp + q.to(tl.int64) * stride_dyq)[:, None] + dy_cols[None, :]
        w_ptrs = w_cols + (r0 + tr * step_r) * stride_wr + (s0 + ts * step_s) * stride_ws
        tap_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)    # a tap's sum, then the taps': Kg + taps
        for kk in range(0, Kg):                                     # terms in a row, not Kg * taps
            dyv = tl.load(dy_ptrs, mask=mask, other=0.0).to(tl.float32)
            wv = tl.load(w_ptrs + kk * stride_wk).to(tl.float32)
            tap_acc += dyv * wv[None, :]
            dy_ptrs += stride_dyk
        acc += tap_acc
    ih = first_h + i * stride_h
    iw = first_w + j * stride_w
    dx_rows = n.to(tl.int64) * stride_dxn + ih.to(tl.int64) * stride_dxh + iw.to(tl.int64) * stride_dxw
    dx_ptrs = dx_ptr + dx_rows[:, None] + offs_n[None, :].to(tl.int64) * stride_dxc
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _conv_wgrad_direct_kernel(
        dy_ptr, x_ptr, dw_ptr, part_ptr, ticket_ptr,
        N, H, W, P, Q, K, Cg, Kg, R, S,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        stride_dyn, stride_dyk, stride_dyp, stride_dyq,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_dwk, stride_dwc, stride_dwr, stride_dws,
        TAPS: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CHUNK: tl.constexpr):
    """dy: (N, K, P, Q); x: (N, C, H, W); dw: (K, Cg, R, S) in the weight dtype;
    strides; part / ticket: the split workspace (``sum_splits``, CHUNK). Program
    (c * k_tiles + k_tile, 0, split): dw[k, c, r, s] for BLOCK_N output channels k
    and every tap (TAPS >= R*S, a power of two), summed over the N*P*Q pixels
    BLOCK_M at a time, the pixels split over grid axis 2. Each block of dy is read
    once for all taps; the taps' blocks of x overlap (cache hits). A tap's offset
    in x's padded image is int32, int64 with INDEX_64 (``_image_needs_int64``)."""
    pid = tl.program_id(0)
    k_tiles = tl.cdiv(K, BLOCK_N)
    c = pid // k_tiles
    offs_n = (pid % k_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < K
    taps = tl.arange(0, TAPS)
    dy_cols = offs_n.to(tl.int64) * stride_dyk
    x_cols = (offs_n // Kg * Cg + c).to(tl.int64) * stride_xc
    PQ = P * Q
    first, end = _split_steps(tl.cdiv(N * PQ, BLOCK_M))
    acc = tl.zeros((TAPS, BLOCK_N), dtype=tl.float32)
    for step in range(first, end):
        offs_m = step * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N * PQ
        n = offs_m // PQ
        p = (offs_m % PQ) // Q
        q = offs_m % Q
        dy_rows = n.to(tl.int64) * stride_dyn + p.to(tl.int64) * stride_dyp + q.to(tl.int64) * stride_dyq
        dyv = tl.load(dy_ptr + dy_rows[:, None] + dy_cols[None, :],
                      mask=mask_m[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        ih0 = p * stride_h - pad_h
        iw0 = q * stride_w - pad_w
        x_rows = x_ptr + n.to(tl.int64) * stride_xn + ih0.to(tl.int64) * stride_xh + iw0.to(tl.int64) * stride_xw
        for tap in range(0, R * S):
            r = tap // S
            s = tap % S
            ih = ih0 + r * dil_h
            iw = iw0 + s * dil_w
            mask_x = mask_m & _in_range(ih, H) & _in_range(iw, W)
            tap_offset = _offsets(r * dil_h, stride_xh, INDEX_64) + _offsets(s * dil_w, stride_xw, INDEX_64)
            xv = tl.load(x_rows[:, None] + tap_offset + x_cols[None, :],
                         mask=mask_x[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
            acc += tl.where(taps[:, None] == tap, tl.sum(dyv * xv, axis=0)[None, :], 0.0)
    done = tl.num_programs(2) == 1
    if not done:
        acc, done = sum_splits(acc, part_ptr, ticket_ptr, TAPS, BLOCK_N, CHUNK)
    if done:
        dw_ptrs = dw_ptr + offs_n[None, :].to(tl.int64) * stride_dwk \
            + (c * stride_dwc + taps // S * stride_dwr + taps % S * stride_dws)[:, None]
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=(taps < R * S)[:, None] & mask_n[None, :])


@triton.jit
def _conv_bwd_epilogue_kernel(
        dy_ptr, y_ptr, g_ptr, db_ptr, part_ptr, ticket_ptr,
        N, K, P, Q, negative_slope,
        stride_dyn, stride_dyk, stride_dyp, stride_dyq,
        stride_yn, stride_yk, stride_yp, stride_yq,
        stride_gn, stride_gk, stride_gp, stride_gq,
        ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, PIXEL_VEC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    """dy, y (the saved output), g: (N, K, P, Q) through strides; db: (K,) in the
    bias dtype; part / ticket: the split workspace (``sum_splits``, CHUNK). Program
    (k_tile, 0, split), over its split of the N*P*Q pixels: g = dy * act'(y) when
    ACTIVATION, and when HAS_BIAS db[k] = sum of g (fp32, in a fixed order).
    PIXEL_VEC > 0: every tensor has its pixels at stride 1 (NCHW; ``_planar_rows``),
    so that the tiles run along them, in 16-byte vectors when PIXEL_VEC > 1."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < K
    PQ = P * Q
    first, end = _split_steps(tl.cdiv(N * PQ, BLOCK_M))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k = offs_n.to(tl.int64)[None, :]
    for step in range(first, end):
        offs_m = step * BLOCK_M + tl.arange(0, BLOCK_M)
        if PIXEL_VEC > 0:
            mask = (offs_m < N * PQ // PIXEL_VEC * PIXEL_VEC)[:, None] & mask_n[None, :]
            dy_ptrs = _planar_rows(dy_ptr, offs_m, PQ, stride_dyn, PIXEL_VEC)[:, None] + k * stride_dyk
            y_ptrs = _planar_rows(y_ptr, offs_m, PQ, stride_yn, PIXEL_VEC)[:, None] + k * stride_yk
            g_ptrs = _planar_rows(g_ptr, offs_m, PQ, stride_gn, PIXEL_VEC)[:, None] + k * stride_gk
        else:
            mask = (offs_m < N * PQ)[:, None] & mask_n[None, :]
            n = (offs_m // PQ).to(tl.int64)[:, None]
            p = ((offs_m % PQ) // Q).to(tl.int64)[:, None]
            q = (offs_m % Q).to(tl.int64)[:, None]
            dy_ptrs = dy_ptr + n * stride_dyn + k * stride_dyk + p * stride_dyp + q * stride_dyq
            y_ptrs = y_ptr + n * stride_yn + k * stride_yk + p * stride_yp + q * stride_yq
            g_ptrs = g_ptr + n * stride_gn + k * stride_gk + p * stride_gp + q * stride_gq
        grad = tl.load(dy_ptrs, mask=mask, other=0.0).to(tl.float32)
        if ACTIVATION != 0:
            y = tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
            grad = activation_grad(grad, y, ACTIVATION, negative_slope)
            tl.store(g_ptrs, grad.to(g_ptr.dtype.element_ty), mask=mask)
        if HAS_BIAS:
            acc += grad                       # masked lanes hold 0
    if HAS_BIAS:
        total = tl.sum(acc, axis=0)[None, :]
        done = tl.num_programs(2) == 1
        if not done:
            total, done = sum_splits(total, part_ptr, ticket_ptr, 1, BLOCK_N, CHUNK)
        if done:
            tl.store(db_ptr + offs_n[None, :], total.to(db_ptr.dtype.element_ty), mask=mask_n[None, :])
