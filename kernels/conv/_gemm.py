"""Implicit-GEMM convolution kernels: forward, input gradient (dgrad) and weight
gradient (wgrad), all on ``tl.dot`` with an fp32 accumulator.

Every tensor is read and written through its four strides, so NCHW,
channels_last and strided views need no copy here (the host side may still
make one channels_last copy on a GPU for coalesced loads; see ``ops.py``).
Shapes use one letter per axis: input x (N, C, H, W), weight w (K, C/G, R, S),
output y (N, K, P, Q); G groups, Cg = C/G and Kg = K/G channels per group.

* forward: M = N*P*Q output pixels, N = Kg output channels, reduction over
  (r, s, c). Blocked mode walks taps (r, s) and blocks of BLOCK_K channels
  (Cg >= 16); ``FLAT`` mode decodes (r, s, c) per column so a handful of input
  channels (the RGB stem) fill the tiles.
* dgrad: dx(h, w) gathers dy(p, q) with p = (h + pad - r*dil) / stride. The
  pixels of one stride phase (h + pad = a mod stride) see the same taps r,
  every ``step = stride / gcd(stride, dil)``-th starting at r0, so a program
  walks only the taps that reach its phase: no zero-inserted gradient, no
  wasted multiply-adds.
* wgrad: M = Kg, N = Cg per tap (or Cg*R*S in ``FLAT`` mode), reduction over
  one split of the N*P*Q pixels, written as fp32 partials (split, K, Cg, R, S)
  that ``kernels._reduce.sum_partials`` sums in a fixed order.

Each kernel is autotuned with three config lists (``_tuned``): fp16 / bf16
tiles up to 128x256x64, fp32 tiles (twice the bytes, exact-fp32 FMA dots when
tf32 is off) and FLAT tiles (element-wise gathers), each with smaller tiles
for ``VEC`` = 1: every config compiles for sm_90 and sm_80 without register
spills. ``VEC`` > 1 is the host's promise of 16-byte aligned channel rows, the
hints that turn the gathers into cp.async vectors; without it every gather is
scalar and the large tiles would spill.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._runtime import autotune
from ..activation import apply_activation


@triton.jit
def _tile_ids(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Grouped ordering: GROUP_M row tiles share their column tiles in L2."""
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def _mma(a, b, acc, ALLOW_TF32: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """acc + a @ b on tensor cores (tf32 for fp32 operands when ALLOW_TF32, exact
    fp32 otherwise). DOT_UPCAST: fp32 operands for the interpreter's bf16 dot."""
    if DOT_UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if ALLOW_TF32:
        acc = tl.dot(a, b, acc, input_precision="tf32")
    else:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc


@triton.jit
def _stride_phase(residue, size, pad, stride, dil, taps, step):
    """The input pixels h with (h + pad) % stride == residue and the taps that reach
    them. Returns (first pixel, count, first tap r0, number of taps, d0, dstep):
    pixel first + i*stride, tap r0 + t*step, meets output row i + d0 - t*dstep."""
    first = ((residue - pad) % stride + stride) % stride
    count = tl.cdiv(size - first, stride)
    r0 = taps
    for t in range(0, step):                     # one t in [0, step) solves t*dil = residue (mod stride)
        r0 = tl.where((residue - t * dil) % stride == 0, t, r0)
    n_taps = tl.maximum(tl.cdiv(taps - r0, step), 0)
    d0 = (first + pad - r0 * dil) // stride      # exact whenever n_taps > 0
    dstep = step * dil // stride
    return first, count, r0, n_taps, d0, dstep


@triton.jit
def _aligned(base, offsets, VEC: tl.constexpr):
    """``base + offsets``: 1-D row or column starts of a channel-contiguous operand,
    promised 16-byte aligned when the host proved it (VEC > 1) so that loads and
    stores vectorize (a scalar layout would give each thread dozens of rows). The
    add happens here: the hint must sit on an op, not on a function argument."""
    ptrs = base + offsets
    if VEC > 1:
        ptrs = tl.multiple_of(ptrs, 16)
    return ptrs


@triton.jit
def _store_output(acc, b_ptr, y_ptr, offs_m, offs_k, M, P, Q, K_end,
                  stride_yn, stride_yc, stride_yh, stride_yw, negative_slope,
                  HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, VEC: tl.constexpr):
    """The forward epilogue: y[n, k, p, q] = act(acc + b[k]) for the tile of output
    pixels ``offs_m`` (< M) and channels ``offs_k`` (< K_end). The pixel decode is
    redone here, on 2-D indices, so that nothing per row stays live across the
    main loop."""
    mask_k = offs_k < K_end
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)[None, :]
    acc = apply_activation(acc, ACTIVATION, negative_slope)
    m = offs_m[:, None]
    y_rows = y_ptr + ((m // (P * Q)).to(tl.int64) * stride_yn + ((m % (P * Q)) // Q).to(tl.int64) * stride_yh
                      + (m % Q).to(tl.int64) * stride_yw)
    if VEC > 1:
        y_rows = tl.multiple_of(y_rows, [16, 1])
    tl.store(y_rows + offs_k[None, :].to(tl.int64) * stride_yc, acc.to(y_ptr.dtype.element_ty),
             mask=(m < M) & mask_k[None, :])


# ---------------------------------------------------------------------------
# Autotune configs: H100-sized tiles (wgmma wants BLOCK_M 64/128 per warpgroup),
# 3-4 stages of cp.async pipelining; the interpreter gets one large tile.

def _cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                         num_warps=warps, num_stages=stages)


FWD_CONFIGS = [
    _cfg(128, 128, 64, 8, 3),
    _cfg(128, 128, 32, 4, 4),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4),
    _cfg(64, 64, 64, 4, 4),
    _cfg(128, 256, 64, 8, 3),
]
DGRAD_CONFIGS = [
    _cfg(128, 128, 64, 8, 3),
    _cfg(128, 128, 32, 4, 4),
    _cfg(128, 64, 64, 8, 4),       # 4 warps spill on sm_80 (the phase bookkeeping)
    _cfg(64, 128, 64, 4, 4),
    _cfg(64, 64, 64, 4, 4),
]
WGRAD_CONFIGS = [
    _cfg(128, 128, 64, 8, 3),
    _cfg(128, 128, 32, 4, 4),
    _cfg(64, 128, 64, 4, 4),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 64, 64, 4, 4),
]
# FLAT mode gathers one element at a time: smaller reduction blocks and more warps.
FLAT_CONFIGS = [
    _cfg(128, 128, 32, 8, 3),
    _cfg(128, 64, 32, 8, 3),
    _cfg(64, 64, 32, 4, 3),
    _cfg(64, 64, 16, 4, 4),
]
# fp32 tiles take twice the shared memory and registers (and exact fp32, FMA dots).
FP32_CONFIGS = [
    _cfg(128, 128, 16, 8, 3),
    _cfg(128, 64, 32, 8, 3),
    _cfg(64, 64, 32, 8, 3),
]
FP32_FLAT_CONFIGS = [
    _cfg(128, 128, 16, 8, 3),
    _cfg(128, 64, 16, 8, 3),
    _cfg(64, 64, 16, 4, 4),
]
# VEC = 1 (channel rows not 16-byte aligned: channel counts that are not a
# multiple of 8 for fp16 / bf16, of 4 for fp32): every gather is scalar, and the
# large tiles above spill; these compile without spills on sm_80 and sm_90 (and
# keep BLOCK_M >= 64, which wgmma needs).
UNALIGNED_CONFIGS = [
    _cfg(128, 64, 32, 8, 3),
    _cfg(64, 128, 32, 8, 3),
    _cfg(64, 64, 32, 8, 3),
    _cfg(64, 64, 32, 4, 3),
]
FP32_UNALIGNED_CONFIGS = [_cfg(64, 64, 32, 8, 3)]
FLAT_UNALIGNED_CONFIGS = FLAT_CONFIGS[1:]
FP32_FLAT_UNALIGNED_CONFIGS = FP32_FLAT_CONFIGS[1:]
FWD_INTERPRETER = _cfg(128, 64, 64, 4, 1)
DGRAD_INTERPRETER = _cfg(128, 64, 64, 4, 1)
WGRAD_INTERPRETER = _cfg(64, 64, 128, 4, 1)
FLAT_INTERPRETER = _cfg(128, 64, 64, 4, 1)


# ---------------------------------------------------------------------------
# Forward

@triton.jit
def _conv_fwd_gemm_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        N, H, W, P, Q, Cg, Kg, R, S,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_wk, stride_wc, stride_wr, stride_ws,
        stride_yn, stride_yc, stride_yh, stride_yw,
        negative_slope,
        HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, FLAT: tl.constexpr, VEC: tl.constexpr,
        ALLOW_TF32: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """x: (N, G*Cg, H, W); w: (G*Kg, Cg, R, S); b: (G*Kg,); y: (N, G*Kg, P, Q);
    all through strides. Program (tile, g): y = act(conv + b) over BLOCK_M output
    pixels and BLOCK_N output channels of group g; pad_h / pad_w are the top /
    left padding (the bottom / right padding only shows in P / Q). VEC > 1: the
    host proved x, w, y channel-contiguous with rows, Cg and Kg multiples of
    VEC elements (16 bytes) on 16-byte aligned pointers."""
    pid = tl.program_id(0)
    g = tl.program_id(1)
    M = N * P * Q
    # == Cg, Kg; written so that the compiler sees their divisibility (Cg: blocked mode only)
    Cb = Cg if FLAT else Cg // VEC * VEC
    Kb = Kg // VEC * VEC
    pid_m, pid_n = _tile_ids(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(Kg, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < Kb
    n = offs_m // (P * Q)
    p = (offs_m % (P * Q)) // Q
    q = offs_m % Q
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_rows = n.to(tl.int64) * stride_xn + (g * Cb).to(tl.int64) * stride_xc                # [BLOCK_M]
    offs_k_glob = g * Kb + offs_n
    if FLAT:        # VEC covers y only: FLAT weight rows (R*S*Cg) are rarely 16-byte multiples
        w_cols = w_ptr + offs_k_glob.to(tl.int64) * stride_wk                              # [BLOCK_N]
    else:
        w_cols = _aligned(w_ptr, offs_k_glob.to(tl.int64) * stride_wk, VEC)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT:
        # Reduction index f = (r*S + s)*Cg + c, decoded per column: a gather, no vectors.
        RSC = R * S * Cg
        for f0 in range(0, RSC, BLOCK_K):
            offs_f = f0 + tl.arange(0, BLOCK_K)
            mask_f = offs_f < RSC
            c = offs_f % Cg
            r = offs_f // Cg // S
            s = (offs_f // Cg) % S
            # Loaded as A^T (BLOCK_K, BLOCK_M): with no contiguity to exploit, the lanes then run
            # along the pixels and each thread keeps few rows of per-pixel state.
            ih = ih0[None, :] + (r * dil_h)[:, None]
            iw = iw0[None, :] + (s * dil_w)[:, None]
            mask_a = (mask_m[None, :] & mask_f[:, None] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
            a = tl.load(x_ptr + x_rows[None, :] + c[:, None].to(tl.int64) * stride_xc
                        + ih.to(tl.int64) * stride_xh + iw.to(tl.int64) * stride_xw, mask=mask_a, other=0.0)
            a = tl.trans(a)
            w_rows = c.to(tl.int64) * stride_wc + r * stride_wr + s * stride_ws
            b = tl.load(w_cols[None, :] + w_rows[:, None], mask=mask_f[:, None] & mask_n[None, :], other=0.0)
            acc = _mma(a, b, acc, ALLOW_TF32, DOT_UPCAST)
    else:
        n_cb = tl.cdiv(Cg, BLOCK_K)
        for t in range(0, R * S * n_cb):
            cb = t % n_cb
            r = t // n_cb // S
            s = (t // n_cb) % S
            ih = ih0 + r * dil_h
            iw = iw0 + s * dil_w
            mask_rows = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            offs_c = cb * BLOCK_K + tl.arange(0, BLOCK_K)
            mask_c = offs_c < Cb
            a_rows = _aligned(x_ptr, x_rows + ih.to(tl.int64) * stride_xh + iw.to(tl.int64) * stride_xw, VEC)
            a = tl.load(a_rows[:, None] + offs_c[None, :].to(tl.int64) * stride_xc,
                        mask=mask_rows[:, None] & mask_c[None, :], other=0.0)
            w_rows = offs_c.to(tl.int64) * stride_wc + (r * stride_wr + s * stride_ws) // VEC * VEC
            b = tl.load(w_cols[None, :] + w_rows[:, None], mask=mask_c[:, None] & mask_n[None, :], other=0.0)
            acc = _mma(a, b, acc, ALLOW_TF32, DOT_UPCAST)

    _store_output(acc, b_ptr, y_ptr, pid_m * BLOCK_M + tl.arange(0, BLOCK_M), offs_k_glob, M, P, Q, g * Kb + Kb,
                  stride_yn, stride_yc, stride_yh, stride_yw, negative_slope, HAS_BIAS, ACTIVATION, VEC)


def _tuned(kernel, configs, fp32_configs, key, interpreter_config, flat=False):
    """(autotuned kernel for fp16 / bf16, autotuned kernel for fp32): one JIT kernel,
    two config lists (each with its VEC = 1 alternative), indexed by
    ``dtype == torch.float32``."""
    unaligned = (FLAT_UNALIGNED_CONFIGS, FP32_FLAT_UNALIGNED_CONFIGS) if flat else \
        (UNALIGNED_CONFIGS, FP32_UNALIGNED_CONFIGS)
    return tuple(autotune(c, key, interpreter_config, alternatives=("VEC", {1: u}))(kernel)
                 for c, u in zip((configs, fp32_configs), unaligned))


_FWD_KEY = ["N", "P", "Q", "Cg", "Kg", "R", "S", "VEC"]
conv_fwd_gemm = _tuned(_conv_fwd_gemm_kernel, FWD_CONFIGS, FP32_CONFIGS, _FWD_KEY, FWD_INTERPRETER)
conv_fwd_flat = _tuned(_conv_fwd_gemm_kernel, FLAT_CONFIGS, FP32_FLAT_CONFIGS, _FWD_KEY, FLAT_INTERPRETER, flat=True)


# ---------------------------------------------------------------------------
# Input gradient

@triton.jit
def _conv_dgrad_gemm_kernel(
        dy_ptr, w_ptr, dx_ptr,
        N, H, W, P, Q, Cg, Kg, R, S,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, step_r, step_s,
        stride_dyn, stride_dyk, stride_dyp, stride_dyq,
        stride_wk, stride_wc, stride_wr, stride_ws,
        stride_dxn, stride_dxc, stride_dxh, stride_dxw,
        VEC: tl.constexpr, ALLOW_TF32: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """dy: (N, G*Kg, P, Q); w: (G*Kg, Cg, R, S); dx: (N, G*Cg, H, W); all through
    strides. Program (tile, g*stride_h*stride_w + phase): dx over BLOCK_M input
    pixels of one stride phase and BLOCK_N input channels of group g, a GEMM over
    (tap, output channel) with only the taps that reach the phase. step_r /
    step_s: stride / gcd(stride, dilation) per axis. VEC as in the forward."""
    pid = tl.program_id(0)
    pid_z = tl.program_id(1)
    num_phases = stride_h * stride_w
    g = pid_z // num_phases
    phase = pid_z % num_phases
    Cb = Cg // VEC * VEC
    Kb = Kg // VEC * VEC
    h0, Hp, r0, n_r, dp0, dstep_h = _stride_phase(phase // stride_w, H, pad_h, stride_h, dil_h, R, step_r)
    w0, Wp, s0, n_s, dq0, dstep_w = _stride_phase(phase % stride_w, W, pad_w, stride_w, dil_w, S, step_s)
    M = N * Hp * Wp
    num_m = tl.cdiv(N * tl.cdiv(H, stride_h) * tl.cdiv(W, stride_w), BLOCK_M)   # the largest phase
    pid_m, pid_n = _tile_ids(pid, num_m, tl.cdiv(Cg, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < Cb
    HWp = tl.maximum(Hp * Wp, 1)
    n = offs_m // HWp
    i = (offs_m % HWp) // tl.maximum(Wp, 1)
    j = offs_m % tl.maximum(Wp, 1)
    dy_rows = n.to(tl.int64) * stride_dyn + (g * Kb).to(tl.int64) * stride_dyk                   # [BLOCK_M]
    w_cols = _aligned(w_ptr, (g * Kb).to(tl.int64) * stride_wk + offs_n.to(tl.int64) * stride_wc, VEC)

    n_kb = tl.cdiv(Kg, BLOCK_K)
    n_iter = tl.where(pid_m * BLOCK_M < M, n_r * n_s * n_kb, 0)   # tiles past this phase's pixels skip the loop
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, n_iter):
        kb = t % n_kb
        tr = t // n_kb // n_s
        ts = (t // n_kb) % n_s
        p = i + (dp0 - tr * dstep_h)
        q = j + (dq0 - ts * dstep_w)
        r = r0 + tr * step_r
        s = s0 + ts * step_s
        mask_rows = mask_m & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < Kb
        a_rows = _aligned(dy_ptr, dy_rows + p.to(tl.int64) * stride_dyp + q.to(tl.int64) * stride_dyq, VEC)
        a = tl.load(a_rows[:, None] + offs_k[None, :].to(tl.int64) * stride_dyk,
                    mask=mask_rows[:, None] & mask_k[None, :], other=0.0)
        # (x // VEC * VEC == x here: it shows the compiler that each weight row starts aligned)
        w_rows = offs_k.to(tl.int64) * (stride_wk // VEC * VEC) + (r * stride_wr + s * stride_ws) // VEC * VEC
        b = tl.load(w_cols[None, :] + w_rows[:, None], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32, DOT_UPCAST)

    # Epilogue: the pixel decode again, on 2-D indices (nothing per row lives across the loop).
    m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
    h = h0 + ((m % HWp) // tl.maximum(Wp, 1)) * stride_h
    w = w0 + (m % tl.maximum(Wp, 1)) * stride_w
    dx_rows = dx_ptr + ((m // HWp).to(tl.int64) * stride_dxn + h.to(tl.int64) * stride_dxh
                        + w.to(tl.int64) * stride_dxw)
    if VEC > 1:
        dx_rows = tl.multiple_of(dx_rows, [16, 1])
    dx_ptrs = dx_rows + (g * Cb + offs_n)[None, :].to(tl.int64) * stride_dxc
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=(m < M) & mask_n[None, :])


conv_dgrad_gemm = _tuned(_conv_dgrad_gemm_kernel, DGRAD_CONFIGS, FP32_CONFIGS,
                         ["N", "H", "W", "Cg", "Kg", "R", "S", "stride_h", "stride_w", "VEC"], DGRAD_INTERPRETER)


# ---------------------------------------------------------------------------
# Weight gradient

@triton.jit
def _conv_wgrad_gemm_kernel(
        dy_ptr, x_ptr, part_ptr,
        N, H, W, P, Q, Cg, Kg, R, S,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, chunk,
        stride_dyn, stride_dyk, stride_dyp, stride_dyq,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_ps, stride_pk, stride_pc, stride_pr, stride_pt,
        FLAT: tl.constexpr, VEC: tl.constexpr, ALLOW_TF32: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """dy: (N, G*Kg, P, Q); x: (N, G*Cg, H, W); part: (splits, G*Kg, Cg, R, S) fp32;
    all through strides. Program (tile, g*R*S + tap, split) (FLAT: (tile, g, split)):
    part[split] = sum over pixels [split*chunk, (split+1)*chunk) of N*P*Q of
    dy[k] * x[c shifted by the tap], for BLOCK_M output channels k and BLOCK_N
    input channels c (FLAT: BLOCK_N (r, s, c) columns). VEC > 1: dy and x
    channel-contiguous and 16-byte aligned, as in the forward."""
    pid = tl.program_id(0)
    pid_z = tl.program_id(1)
    split = tl.program_id(2)
    Cb = Cg if FLAT else Cg // VEC * VEC
    Kb = Kg // VEC * VEC
    if FLAT:
        g = pid_z
        n_cols = R * S * Cg
    else:
        g = pid_z // (R * S)
        n_cols = Cb
    pid_m, pid_n = _tile_ids(pid, tl.cdiv(Kg, BLOCK_M), tl.cdiv(n_cols, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < Kb
    mask_n = offs_n < n_cols
    if FLAT:
        c = offs_n % Cg
        r = offs_n // Cg // S
        s = (offs_n // Cg) % S
    else:
        c = offs_n
        r = (pid_z % (R * S)) // S
        s = pid_z % S
    dh = r * dil_h - pad_h
    dw = s * dil_w - pad_w
    # x offset of (group, column): per column in FLAT mode, per row (with the tap) otherwise.
    x_shift = (g * Cb).to(tl.int64) * stride_xc + dh.to(tl.int64) * stride_xh + dw.to(tl.int64) * stride_xw

    PQ = P * Q
    start = split * chunk
    end = tl.minimum(start + chunk, N * PQ)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(start, end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < end
        n = offs_k // PQ
        p = (offs_k % PQ) // Q
        q = offs_k % Q
        dy_cols = _aligned(dy_ptr, (n.to(tl.int64) * stride_dyn + p.to(tl.int64) * stride_dyp
                                     + q.to(tl.int64) * stride_dyq + (g * Kb).to(tl.int64) * stride_dyk), VEC)
        a = tl.load(dy_cols[None, :] + offs_m[:, None].to(tl.int64) * stride_dyk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        ph = p * stride_h
        pw = q * stride_w
        x_rows = n.to(tl.int64) * stride_xn + ph.to(tl.int64) * stride_xh + pw.to(tl.int64) * stride_xw
        if FLAT:
            ih = ph[:, None] + dh[None, :]
            iw = pw[:, None] + dw[None, :]
            mask_b = mask_k[:, None] & mask_n[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            b = tl.load(x_ptr + x_rows[:, None] + (x_shift + c.to(tl.int64) * stride_xc)[None, :],
                        mask=mask_b, other=0.0)
        else:
            ih = ph + dh
            iw = pw + dw
            mask_rows = mask_k & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            b_rows = _aligned(x_ptr, x_rows + x_shift, VEC)
            b = tl.load(b_rows[:, None] + c[None, :].to(tl.int64) * stride_xc,
                        mask=mask_rows[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32, DOT_UPCAST)

    part_rows = part_ptr + (split.to(tl.int64) * stride_ps + (g * Kb + offs_m).to(tl.int64) * stride_pk)
    if FLAT:
        part_cols = c.to(tl.int64) * stride_pc + r * stride_pr + s * stride_pt
    else:
        part_rows = _aligned(part_rows, r * stride_pr + s * stride_pt, VEC)
        part_cols = c.to(tl.int64) * stride_pc
    tl.store(part_rows[:, None] + part_cols[None, :], acc, mask=mask_m[:, None] & mask_n[None, :])


_WGRAD_KEY = ["N", "P", "Q", "Cg", "Kg", "R", "S", "chunk", "VEC"]
conv_wgrad_gemm = _tuned(_conv_wgrad_gemm_kernel, WGRAD_CONFIGS, FP32_CONFIGS, _WGRAD_KEY, WGRAD_INTERPRETER)
conv_wgrad_flat = _tuned(_conv_wgrad_gemm_kernel, FLAT_CONFIGS, FP32_FLAT_CONFIGS, _WGRAD_KEY, FLAT_INTERPRETER,
                         flat=True)
