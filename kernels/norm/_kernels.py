"""The Triton kernels of the four norms (see the package docstring for the bytes
each moves). Every kernel sees its tensors as (N, C, S) through strides and
normalizes over statistics of G groups of Cg = C / G consecutive channels,
per sample (statistic n * G + g) or over the batch (statistic g).

Looped path (any size): a program covers one channel block (GPB whole groups,
or one BLOCK_C slice of a group when BPG > 1), a range of n and a range of S,
looping over [BLOCK_S, BLOCK_C] tiles. Cross-program results (statistics,
parameter gradients) go through fp32 partials; the last program to take an
integer ticket for a set of partials merges them in a fixed order, so the
result does not depend on which program came last (no float atomics).

Single-read path (a statistic's whole set fits in one tile): a program holds
each set in registers, so x is read once forward and x, dy once backward.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..activation import ACT_NONE, activation_grad, apply_activation


# ---------------------------------------------------------------------------
# Shared pieces

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
def _block_channels(pid_c, C, Cg, GPB, BPG, group_width, BLOCK_C: tl.constexpr, FULL_BLOCKS: tl.constexpr):
    """Channel block pid_c: the group_width = GPB * Cg channels of GPB whole groups
    (BPG == 1) or one BLOCK_C slice of a group (BPG slices per group). Its first
    channel is group_block * group_width + slice * BLOCK_C, so that the compiler
    sees it aligned whenever group_width is (a launch specialises integers
    divisible by 16). FULL_BLOCKS: every block has exactly BLOCK_C channels (no
    channel mask to carry). Returns (channels, mask, group of each channel counted
    from the block's first group, first group)."""
    group_block = pid_c // BPG
    start = (pid_c % BPG) * BLOCK_C
    c0 = group_block * group_width + start
    offs_j = tl.arange(0, BLOCK_C)
    if FULL_BLOCKS:
        mask_c = offs_j < BLOCK_C
    else:
        mask_c = offs_j < tl.minimum(group_width - start, C - c0)
    return c0 + offs_j, mask_c, (start + offs_j) // Cg, group_block * GPB


@triton.jit
def _program_block(N, C, S, Cg, GPB, BPG, group_width, n_per_prog, num_n_chunks, s_per_prog, num_s_chunks,
                   BLOCK_C: tl.constexpr, FULL_BLOCKS: tl.constexpr):
    """A looped-path program's share: _program_range, then _block_channels of its
    channel block."""
    pid_c, pid_n, pid_s, n_start, n_end, s_start, s_end = _program_range(
        N, S, n_per_prog, num_n_chunks, s_per_prog, num_s_chunks)
    offs_c, mask_c, local_group, first_group = _block_channels(pid_c, C, Cg, GPB, BPG, group_width, BLOCK_C,
                                                               FULL_BLOCKS)
    return pid_c, pid_n, pid_s, n_start, n_end, s_start, s_end, offs_c, mask_c, local_group, first_group


@triton.jit
def _group_mask(first_group, G, GPB, mask_c, GROUPED: tl.constexpr, BLOCK_G: tl.constexpr,
                FULL_BLOCKS: tl.constexpr):
    """Which of the BLOCK_G group slots of the block exist (BLOCK_G == BLOCK_C when
    every group is one channel; all of them in full blocks)."""
    offs_g = tl.arange(0, BLOCK_G)
    if FULL_BLOCKS:
        return offs_g < BLOCK_G
    elif GROUPED:
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
def _group_gather(values, local_group, GROUPED: tl.constexpr, BLOCK_G: tl.constexpr):
    """Per-group ``values`` [BLOCK_G] back to the channels of the block -> [BLOCK_C]."""
    if GROUPED and BLOCK_G == 1:
        return tl.zeros(local_group.shape, tl.float32) + values
    elif GROUPED:
        onehot = local_group[None, :] == tl.arange(0, BLOCK_G)[:, None]
        return tl.sum(tl.where(onehot, values[:, None], 0.0), axis=0)
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
def _group_welford(count, mean, m2, local_group, mask_c, GROUPED: tl.constexpr, BLOCK_G: tl.constexpr):
    """Per-channel Welford triples [BLOCK_C] merged over each group of the block -> [BLOCK_G]."""
    if GROUPED and BLOCK_G == 1:
        return _welford_combine(tl.where(mask_c, count, 0.0), mean, m2, 0)
    elif GROUPED:
        onehot = (local_group[:, None] == tl.arange(0, BLOCK_G)[None, :]) & mask_c[:, None]
        return _welford_combine(tl.where(onehot, count[:, None], 0.0), tl.where(onehot, mean[:, None], 0.0),
                                tl.where(onehot, m2[:, None], 0.0), 0)
    else:
        return count, mean, m2


@triton.jit
def _partial_layout(pid_c, pid_n, pid_s, N, G, BPG, num_n_chunks, num_s_chunks, PER_SAMPLE: tl.constexpr):
    """Where a program's partial statistics go, stat-major: (partials per statistic,
    this program's chunk, partials per field, the ticket of its statistics). Per
    sample a statistic (n, g) has the BPG slices x S chunks of its group, and a ticket
    per (group block, n chunk); over the batch also the n chunks, and a ticket per
    group block. Every ticket is taken by ``chunks`` programs."""
    group_block = pid_c // BPG
    part = pid_c % BPG
    if PER_SAMPLE:
        chunks = BPG * num_s_chunks
        chunk = part * num_s_chunks + pid_s
        size = N * G * chunks
        key = group_block * num_n_chunks + pid_n
    else:
        chunks = BPG * num_s_chunks * num_n_chunks
        chunk = (part * num_s_chunks + pid_s) * num_n_chunks + pid_n
        size = G * chunks
        key = group_block
    return chunks, chunk, size, key


@triton.jit
def _take_ticket(ticket_ptr, key, arrivals):
    """True in the one program that arrives last at counter ``key`` of ``arrivals``
    (which then finds every earlier program's stores visible, and resets the counter
    to zero for the next launch). The CTA barrier orders all threads' partial stores
    before the release."""
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr + key, 1, sem="acq_rel", scope="gpu")
    last = ticket == arrivals - 1
    if last:
        tl.store(ticket_ptr + key, 0)
    return last


@triton.jit
def _sum_chunks(part_ptr, stats, mask_g, chunks, BLOCK_K: tl.constexpr):
    """Sum of the ``chunks`` fp32 partials of each statistic (stat-major rows of
    ``part``), in chunk order -> [BLOCK_G]. Reads around L1 (other programs wrote them)."""
    acc = tl.zeros((BLOCK_K, stats.shape[0]), dtype=tl.float32)
    for k0 in range(0, chunks, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = (offs_k < chunks)[:, None] & mask_g[None, :]
        acc += tl.load(part_ptr + stats.to(tl.int64)[None, :] * chunks + offs_k[:, None], mask=mask, other=0.0,
                       cache_modifier=".cg")
    return tl.sum(acc, axis=0)


@triton.jit
def _merge_moments(part_ptr, stats, mask_g, chunks, stride_stat, stride_chunk, stride_field, BLOCK_K: tl.constexpr):
    """(count, mean, M2) [BLOCK_G] of each statistic from its ``chunks`` partials, merged
    in chunk order (Chan): field f (count, mean, M2) of chunk k of statistic s at
    part[s * stride_stat + k * stride_chunk + f * stride_field]. The mean is carried
    relative to the first chunk's, and rounded at its full size once, at the end (data
    far from zero: one rounding of 1e4 per tile of chunks cost a few ulps). Reads
    around L1."""
    stat_offs = stats.to(tl.int64) * stride_stat
    # The first chunk's mean (chunks >= 1), but 0 where it is not finite (every later delta would be NaN)
    # or comes from no data (-3e38 or NaN, ``_welford_combine`` / ``_store_moments`` of a count of 0).
    ref = tl.load(part_ptr + stride_field + stat_offs, mask=mask_g, other=0.0, cache_modifier=".cg")
    ref = tl.where(tl.abs(ref) < 1.0e38, ref, 0.0)
    total = tl.zeros(stats.shape, dtype=tl.float32)
    shifted = tl.zeros(stats.shape, dtype=tl.float32)      # mean - ref
    m2 = tl.zeros(stats.shape, dtype=tl.float32)
    for k0 in range(0, chunks, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = (offs_k < chunks)[:, None] & mask_g[None, :]
        offs = stat_offs[None, :] + offs_k.to(tl.int64)[:, None] * stride_chunk
        b_count, b_mean, b_m2 = _welford_combine(
            tl.load(part_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg"),
            tl.load(part_ptr + stride_field + offs, mask=mask, other=0.0, cache_modifier=".cg"),
            tl.load(part_ptr + 2 * stride_field + offs, mask=mask, other=0.0, cache_modifier=".cg"), 0)
        new_total = total + b_count
        delta = tl.where(b_count > 0, (b_mean - ref) - shifted, 0.0)
        frac = b_count / tl.maximum(new_total, 1.0)
        shifted += delta * frac
        m2 += b_m2 + (delta * total) * (delta * frac)    # (not delta * delta first: inf * 0 at the first chunk)
        total = new_total
    return total, ref + shifted, m2


@triton.jit
def _store_batch_stats(mean_ptr, rstd_ptr, rm_ptr, rv_ptr, nbt_ptr, stride_rm, stride_rv, channels, mask, count,
                       mean, m2, momentum, eps, RUNNING: tl.constexpr, CUMULATIVE: tl.constexpr):
    """Batch statistics of ``channels`` from their merged (count, mean, M2): mean and
    rstd stored; RUNNING moves the running statistics toward mean and the unbiased
    variance by momentum, or by 1 / (num_batches_tracked + 1) with CUMULATIVE."""
    tl.store(mean_ptr + channels, mean, mask=mask)
    tl.store(rstd_ptr + channels, 1.0 / tl.sqrt(m2 / tl.maximum(count, 1.0) + eps), mask=mask)
    if RUNNING:
        factor = momentum
        if CUMULATIVE:
            factor = 1.0 / (tl.load(nbt_ptr).to(tl.float32) + 1.0)
        _moving_average(rm_ptr, stride_rm, channels, mask, mean, factor)
        _moving_average(rv_ptr, stride_rv, channels, mask, m2 / tl.maximum(count - 1.0, 1.0), factor)


@triton.jit
def _moving_average(ptr, stride, offs, mask, value, factor):
    """ptr[offs * stride] = (1 - factor) * ptr[...] + factor * value (fp32 math, stored
    in the buffer's dtype). ``factor`` is cast to fp32 first: the interpreter passes a
    float argument as a Python float, and one below fp32's normal range (a momentum of
    1e-40) would reach this arithmetic as fp64, whose cast to bf16 comes out 0."""
    factor = tl.cast(factor, tl.float32)
    old = tl.load(ptr + offs * stride, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptr + offs * stride, (old * (1.0 - factor) + value * factor).to(ptr.dtype.element_ty), mask=mask)


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
def _affine(x, mean, scale, b):
    """(x - mean) * scale + b per channel (scale = rstd * w): one expression for the
    forward's value and the backward's recomputed activation input."""
    return (x - mean[None, :]) * scale[None, :] + b[None, :]


@triton.jit
def _load_stats(mean_ptr, rstd_ptr, stat0, local_group, mask_c, GROUPED: tl.constexpr, BLOCK_G: tl.constexpr):
    """Two fp32 statistics (mean and rstd, or s1 and s2) of each channel of the block:
    those of its group, stat0 + local group (a scalar load when the block lies in
    one group)."""
    if GROUPED and BLOCK_G == 1:
        zero = tl.zeros(mask_c.shape, tl.float32)
        return zero + tl.load(mean_ptr + stat0), zero + tl.load(rstd_ptr + stat0)
    else:
        stat = stat0 + local_group
        return tl.load(mean_ptr + stat, mask=mask_c, other=0.0), tl.load(rstd_ptr + stat, mask=mask_c, other=0.0)


# ---------------------------------------------------------------------------
# Looped path: statistics (one launch: moments, merge, running statistics)

@triton.jit
def _tile_mean(x_base, offs_s, s_end, c_offs, mask_c, stride_xs):
    """Column means [BLOCK_C] of the tile of rows offs_s (< s_end): the shift that keeps
    the program's moment sums small (data far from zero lose no precision)."""
    mask = (offs_s < s_end)[:, None] & mask_c[None, :]
    x = tl.load(x_base + offs_s[:, None] * stride_xs + c_offs, mask=mask, other=0.0).to(tl.float32)
    rows = tl.sum(tl.where(offs_s < s_end, 1.0, 0.0), axis=0)
    return tl.sum(x, axis=0) / rows


@triton.jit
def _store_moments(acc1, acc2, shift, count, stat0, chunk, chunks, part_size, part_ptr, local_group, mask_c,
                   first_group, G, GPB, GROUPED: tl.constexpr, BLOCK_G: tl.constexpr, FULL_BLOCKS: tl.constexpr):
    """Shifted sums per lane (acc1 = sum(x - shift), acc2 = sum((x - shift)^2) over
    ``count`` values per channel) -> (count, mean, M2) per group of the block, stored
    as partial ``chunk`` of statistics stat0 + group."""
    sum1 = tl.sum(acc1, axis=0)
    sum2 = tl.sum(acc2, axis=0)
    n = count.to(tl.float32)
    mean = shift + sum1 / n
    m2 = tl.maximum(sum2 - sum1 * (sum1 / n), 0.0, propagate_nan=tl.PropagateNan.ALL)    # NaN stays NaN
    g_count, g_mean, g_m2 = _group_welford(tl.where(mask_c, n, 0.0), mean, m2, local_group, mask_c, GROUPED,
                                           BLOCK_G)
    offs = (stat0 + tl.arange(0, BLOCK_G)).to(tl.int64) * chunks + chunk
    mask_g = _group_mask(first_group, G, GPB, mask_c, GROUPED, BLOCK_G, FULL_BLOCKS)
    tl.store(part_ptr + offs, g_count, mask=mask_g)
    tl.store(part_ptr + part_size + offs, g_mean, mask=mask_g)
    tl.store(part_ptr + 2 * part_size + offs, g_m2, mask=mask_g)


@triton.jit
def _stats_kernel(x_ptr, part_ptr, mean_ptr, rstd_ptr, moments_ptr, rm_ptr, rv_ptr, nbt_ptr, ticket_ptr,
                  N, C, S, G, Cg, GPB, BPG, group_width, stride_xn, stride_xc, stride_xs, stride_rm, stride_rv,
                  n_per_prog, num_n_chunks, s_per_prog, num_s_chunks, momentum, eps,
                  PER_SAMPLE: tl.constexpr, GROUPED: tl.constexpr, MOMENTS_OUT: tl.constexpr, RUNNING: tl.constexpr,
                  CUMULATIVE: tl.constexpr, TRACK: tl.constexpr, INDEX_64: tl.constexpr, FULL_BLOCKS: tl.constexpr,
                  BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_KG: tl.constexpr):
    """Statistics in one launch. x: (N, C, S) through strides. Writes mean, rstd =
    1 / sqrt(biased var + eps): (num_stats,) fp32, num_stats = N * G (PER_SAMPLE) or G.
    RUNNING moves running_mean / running_var (C,) (strides stride_rm / stride_rv, any
    float dtype) toward the batch mean and unbiased variance (per sample: their average
    over n) by ``momentum``, or by 1 / (num_batches_tracked + 1) with CUMULATIVE; TRACK
    adds 1 to num_batches_tracked (int64 scalar) once all statistics are merged.
    MOMENTS_OUT (batch statistics, for SyncBatchNorm): writes the merged (count, mean,
    M2) to moments (3, G) fp32 instead, for a merge across processes (_merge_kernel).

    Each program sums x - shift and (x - shift)^2 per lane (shift: its first tile's
    column means; no division per element) and stores (count, mean, M2) partials, part:
    (3, num_stats, chunks) fp32 (+ num_stats unbiased variances when RUNNING and
    PER_SAMPLE). The last program of each ticket (ticket: int32 counters, zero on entry
    and on exit) merges the partials of its statistics in chunk order. Moves 1T (reads x)."""
    pid_c, pid_n, pid_s, n_start, n_end, s_start, s_end, offs_c, mask_c, local_group, first_group = _program_block(
        N, C, S, Cg, GPB, BPG, group_width, n_per_prog, num_n_chunks, s_per_prog, num_s_chunks, BLOCK_C, FULL_BLOCKS)
    rows = _index(tl.arange(0, BLOCK_S), INDEX_64)
    c_offs = _index(offs_c, INDEX_64)[None, :] * stride_xc
    group_block = pid_c // BPG
    num_group_blocks = tl.cdiv(G, GPB)
    chunks, chunk, part_size, key = _partial_layout(pid_c, pid_n, pid_s, N, G, BPG, num_n_chunks, num_s_chunks,
                                                    PER_SAMPLE)
    shift = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if not PER_SAMPLE:
        shift = _tile_mean(x_ptr + _index(n_start, INDEX_64) * stride_xn, s_start + rows, s_end, c_offs, mask_c,
                           stride_xs)
    acc1 = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    for n in range(n_start, n_end):
        x_base = x_ptr + _index(n, INDEX_64) * stride_xn
        if PER_SAMPLE:
            shift = _tile_mean(x_base, s_start + rows, s_end, c_offs, mask_c, stride_xs)
            acc1 = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
            acc2 = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
        for s0 in range(s_start, s_end, BLOCK_S):
            offs_s = s0 + rows
            mask = (offs_s < s_end)[:, None] & mask_c[None, :]
            x = tl.load(x_base + offs_s[:, None] * stride_xs + c_offs, mask=mask, other=0.0).to(tl.float32)
            d = tl.where(mask, x - shift[None, :], 0.0)
            acc1 += d
            acc2 += d * d
        if PER_SAMPLE:
            _store_moments(acc1, acc2, shift, s_end - s_start, n * G + first_group, chunk, chunks, part_size, part_ptr,
                           local_group, mask_c, first_group, G, GPB, GROUPED, BLOCK_G, FULL_BLOCKS)
    if not PER_SAMPLE:
        _store_moments(acc1, acc2, shift, (n_end - n_start) * (s_end - s_start), first_group, chunk, chunks,
                       part_size, part_ptr, local_group, mask_c, first_group, G, GPB, GROUPED, BLOCK_G, FULL_BLOCKS)

    if _take_ticket(ticket_ptr, key, chunks):
        groups = first_group + tl.arange(0, BLOCK_G)
        mask_g = _group_mask(first_group, G, GPB, mask_c, GROUPED, BLOCK_G, FULL_BLOCKS)
        if PER_SAMPLE:
            for n in range(n_start, n_end):
                stats = n * G + groups
                count, mean, m2 = _merge_moments(part_ptr, stats, mask_g, chunks, chunks, 1, part_size, BLOCK_KG)
                tl.store(mean_ptr + stats, mean, mask=mask_g)
                tl.store(rstd_ptr + stats, 1.0 / tl.sqrt(m2 / tl.maximum(count, 1.0) + eps), mask=mask_g)
                if RUNNING:
                    tl.store(part_ptr + 3 * part_size + stats, m2 / tl.maximum(count - 1.0, 1.0), mask=mask_g)
        else:
            count, mean, m2 = _merge_moments(part_ptr, groups, mask_g, chunks, chunks, 1, part_size, BLOCK_KG)
            if MOMENTS_OUT:     # this process's share, for a merge across processes
                tl.store(moments_ptr + groups, count, mask=mask_g)
                tl.store(moments_ptr + G + groups, mean, mask=mask_g)
                tl.store(moments_ptr + 2 * G + groups, m2, mask=mask_g)
            else:               # one channel per group
                _store_batch_stats(mean_ptr, rstd_ptr, rm_ptr, rv_ptr, nbt_ptr, stride_rm, stride_rv, groups, mask_g,
                                   count, mean, m2, momentum, eps, RUNNING, CUMULATIVE)
        # Ticket 2, after the merges it waits for: per group block per sample (running
        # statistics averaged over n), one for the batch (num_batches_tracked).
        if (PER_SAMPLE and RUNNING) or TRACK:
            if PER_SAMPLE:
                done = _take_ticket(ticket_ptr, num_group_blocks * num_n_chunks + group_block, num_n_chunks)
            else:
                done = _take_ticket(ticket_ptr, num_group_blocks, num_group_blocks)
            if done:
                if PER_SAMPLE:      # instance norm: one channel per group
                    sum_mean = tl.zeros((BLOCK_G,), dtype=tl.float32)
                    sum_var = tl.zeros((BLOCK_G,), dtype=tl.float32)
                    for n in range(0, N):
                        sum_mean += tl.load(mean_ptr + n * G + groups, mask=mask_g, other=0.0, cache_modifier=".cg")
                        sum_var += tl.load(part_ptr + 3 * part_size + n * G + groups, mask=mask_g, other=0.0,
                                           cache_modifier=".cg")
                    _moving_average(rm_ptr, stride_rm, groups, mask_g, sum_mean / N, momentum)
                    _moving_average(rv_ptr, stride_rv, groups, mask_g, sum_var / N, momentum)
                if TRACK:
                    tl.store(nbt_ptr, tl.load(nbt_ptr) + 1)


@triton.jit
def _merge_kernel(part_ptr, mean_ptr, rstd_ptr, count_ptr, rm_ptr, rv_ptr, nbt_ptr, ticket_ptr,
                  C, num_parts, stride_rm, stride_rv, momentum, eps,
                  RUNNING: tl.constexpr, CUMULATIVE: tl.constexpr, TRACK: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """Batch statistics from several processes' moments. part: (num_parts, 3, C) fp32,
    (count, mean, M2) per channel of each part, as all_gather lays them out; merged in
    part order into mean, rstd and count (C,) fp32; running statistics and
    num_batches_tracked as in _stats_kernel (the last program adds the 1). Moves
    3 * num_parts * C floats, nothing activation-sized."""
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = channels < C
    count, mean, m2 = _merge_moments(part_ptr, channels, mask, num_parts, 1, 3 * C, C, BLOCK_K)
    tl.store(count_ptr + channels, count, mask=mask)
    _store_batch_stats(mean_ptr, rstd_ptr, rm_ptr, rv_ptr, nbt_ptr, stride_rm, stride_rv, channels, mask, count,
                       mean, m2, momentum, eps, RUNNING, CUMULATIVE)
    if TRACK:
        if _take_ticket(ticket_ptr, 0, tl.num_programs(0)):
            tl.store(nbt_ptr, tl.load(nbt_ptr) + 1)


# ---------------------------------------------------------------------------
# Looped path: normalize

@triton.jit
def _normalize_kernel(x_ptr, y_ptr, res_ptr, mean_ptr, rstd_ptr, rm_ptr, rv_ptr, w_ptr, b_ptr,
                      N, C, S, G, Cg, GPB, BPG, group_width,
                      stride_xn, stride_xc, stride_xs, stride_yn, stride_yc, stride_ys, stride_rn, stride_rc, stride_rs,
                      stride_rm, stride_rv, n_per_prog, num_n_chunks, s_per_prog, num_s_chunks, eps, negative_slope,
                      STATS_PER_SAMPLE: tl.constexpr, FROM_RUNNING: tl.constexpr, GROUPED: tl.constexpr,
                      HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                      ACTIVATION: tl.constexpr, INDEX_64: tl.constexpr, FULL_BLOCKS: tl.constexpr,
                      BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    """y = act((x - mean) * rstd * w + b [+ residual]). x, y, residual: (N, C, S)
    through strides; w, b: (C,). mean, rstd: fp32 per statistic (n * G + g when
    STATS_PER_SAMPLE, else g); with FROM_RUNNING (G == C) they come from running_mean
    and running_var (strides stride_rm / stride_rv) as mean = running_mean, rstd =
    1 / sqrt(running_var + eps), and the first program of each channel block writes
    them to mean, rstd (C,) fp32 for the backward. Moves 2T (3T with the residual)."""
    pid_c, pid_n, pid_s, n_start, n_end, s_start, s_end, offs_c, mask_c, local_group, first_group = _program_block(
        N, C, S, Cg, GPB, BPG, group_width, n_per_prog, num_n_chunks, s_per_prog, num_s_chunks, BLOCK_C, FULL_BLOCKS)
    rows = _index(tl.arange(0, BLOCK_S), INDEX_64)
    offs_cc = _index(offs_c, INDEX_64)[None, :]
    w, b = _load_affine(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT, HAS_BIAS)
    if FROM_RUNNING:
        mean = tl.load(rm_ptr + offs_c * stride_rm, mask=mask_c, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.load(rv_ptr + offs_c * stride_rv, mask=mask_c, other=1.0).to(tl.float32) + eps)
        if (pid_n == 0) & (pid_s == 0):
            tl.store(mean_ptr + offs_c, mean, mask=mask_c)
            tl.store(rstd_ptr + offs_c, rstd, mask=mask_c)
    else:
        mean, rstd = _load_stats(mean_ptr, rstd_ptr, first_group, local_group, mask_c, GROUPED, BLOCK_G)
    for n in range(n_start, n_end):
        if STATS_PER_SAMPLE:
            mean, rstd = _load_stats(mean_ptr, rstd_ptr, n * G + first_group, local_group, mask_c, GROUPED, BLOCK_G)
        scale = rstd * w
        n_idx = _index(n, INDEX_64)
        for s0 in range(s_start, s_end, BLOCK_S):
            offs_ss = (s0 + rows)[:, None]
            mask = (offs_ss < s_end) & mask_c[None, :]
            x = tl.load(x_ptr + n_idx * stride_xn + offs_ss * stride_xs + offs_cc * stride_xc,
                        mask=mask, other=0.0).to(tl.float32)
            v = _affine(x, mean, scale, b)
            if HAS_RESIDUAL:
                v += tl.load(res_ptr + n_idx * stride_rn + offs_ss * stride_rs + offs_cc * stride_rc,
                             mask=mask, other=0.0).to(tl.float32)
            y = apply_activation(v, ACTIVATION, negative_slope)
            tl.store(y_ptr + n_idx * stride_yn + offs_ss * stride_ys + offs_cc * stride_yc,
                     y.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Looped path: backward

@triton.jit
def _load_x_and_grad(x_ptr, dy_ptr, res_ptr, n_idx, offs_ss, offs_cc, mask, mean, scale, b,
                     stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys,
                     stride_rn, stride_rc, stride_rs, negative_slope,
                     HAS_RESIDUAL: tl.constexpr, MASK_FROM_OUTPUT: tl.constexpr, ACTIVATION: tl.constexpr):
    """fp32 tiles (x, g) of sample n_idx: g = dy through the activation, whose input
    is recomputed from x (and the residual), or (MASK_FROM_OUTPUT: res_ptr holds
    the forward's relu output, positive or NaN exactly where its input is) read
    as its output. Masked lanes hold 0."""
    x = tl.load(x_ptr + n_idx * stride_xn + offs_ss * stride_xs + offs_cc * stride_xc,
                mask=mask, other=0.0).to(tl.float32)
    g = tl.load(dy_ptr + n_idx * stride_dyn + offs_ss * stride_dys + offs_cc * stride_dyc,
                mask=mask, other=0.0).to(tl.float32)
    if ACTIVATION != ACT_NONE:
        if MASK_FROM_OUTPUT:
            v = tl.load(res_ptr + n_idx * stride_rn + offs_ss * stride_rs + offs_cc * stride_rc,
                        mask=mask, other=0.0).to(tl.float32)
        else:
            v = _affine(x, mean, scale, b)
            if HAS_RESIDUAL:
                v += tl.load(res_ptr + n_idx * stride_rn + offs_ss * stride_rs + offs_cc * stride_rc,
                             mask=mask, other=0.0).to(tl.float32)
        g = activation_grad(g, v, ACTIVATION, negative_slope)
    return x, g


@triton.jit
def _store_stat_sums(stat_part, stat_size, s1_ptr, s2_ptr, stats, mask_g, chunks, BLOCK_K: tl.constexpr):
    """s1, s2 of ``stats``: their partials summed in chunk order."""
    tl.store(s1_ptr + stats, _sum_chunks(stat_part, stats, mask_g, chunks, BLOCK_K), mask=mask_g)
    tl.store(s2_ptr + stats, _sum_chunks(stat_part + stat_size, stats, mask_g, chunks, BLOCK_K), mask=mask_g)


@triton.jit
def _bwd_reduce_kernel(x_ptr, dy_ptr, res_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr,
                       g_ptr, dx_ptr, part_ptr, dw_ptr, db_ptr, sums_ptr, ticket_ptr,
                       N, C, S, G, Cg, GPB, BPG, group_width,
                       stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys,
                       stride_rn, stride_rc, stride_rs, stride_gn, stride_gc, stride_gs,
                       stride_dxn, stride_dxc, stride_dxs,
                       n_per_prog, num_n_chunks, s_per_prog, num_s_chunks, negative_slope,
                       STATS_PER_SAMPLE: tl.constexpr, GROUPED: tl.constexpr, STAT_SUMS: tl.constexpr,
                       WRITE_DW: tl.constexpr, WRITE_DB: tl.constexpr, WRITE_G: tl.constexpr, WRITE_DX: tl.constexpr,
                       HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                       MASK_FROM_OUTPUT: tl.constexpr, ACTIVATION: tl.constexpr, INDEX_64: tl.constexpr,
                       FULL_BLOCKS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr,
                       BLOCK_K: tl.constexpr, BLOCK_KG: tl.constexpr):
    """The reduction pass. x, dy, residual, g, dx: (N, C, S) through strides; mean,
    rstd per statistic as in the forward. g = dy through the activation (its input
    recomputed from x and the residual, or its mask read from the output in
    res_ptr: ``_load_x_and_grad``), xhat = (x - mean) * rstd.
    WRITE_DW / WRITE_DB: dw = sum(g * xhat), db = sum(g) per channel, in their dtype (C,).
    STAT_SUMS: sums (2, num_stats) fp32, s1 = sum(w g) then s2 = sum(w g xhat) per statistic.
    WRITE_G: g (the residual's gradient); WRITE_DX (statistics that are constants,
    eval mode): dx = rstd * w * g.
    part: fp32 partials, (2, C, num_n_chunks * num_s_chunks) for dw, db (either asked)
    then (2, num_stats, chunks) for s1, s2 (STAT_SUMS); the last program per channel block (dw, db) and
    per statistic set (s1, s2) merges them in a fixed order (tickets as in the
    statistics kernel). Moves 2T (x, dy), +1T for the residual (or the output) when
    the activation's mask needs it, +1T to write g, +1T to write dx."""
    pid_c, pid_n, pid_s, n_start, n_end, s_start, s_end, offs_c, mask_c, local_group, first_group = _program_block(
        N, C, S, Cg, GPB, BPG, group_width, n_per_prog, num_n_chunks, s_per_prog, num_s_chunks, BLOCK_C, FULL_BLOCKS)
    rows = _index(tl.arange(0, BLOCK_S), INDEX_64)
    offs_cc = _index(offs_c, INDEX_64)[None, :]
    w, b = _load_affine(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT, HAS_BIAS)
    num_cblocks = tl.cdiv(G, GPB) * BPG
    param_rows = num_n_chunks * num_s_chunks
    chunks, chunk, stat_size, stat_key = _partial_layout(pid_c, pid_n, pid_s, N, G, BPG, num_n_chunks,
                                                         num_s_chunks, STATS_PER_SAMPLE)
    stat_part = part_ptr
    if WRITE_DW or WRITE_DB:
        stat_part += 2 * param_rows * C
    mask_g = _group_mask(first_group, G, GPB, mask_c, GROUPED, BLOCK_G, FULL_BLOCKS)
    mean, rstd = _load_stats(mean_ptr, rstd_ptr, first_group, local_group, mask_c, GROUPED, BLOCK_G)
    sum_g = tl.zeros((BLOCK_C,), dtype=tl.float32)
    sum_gx = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for n in range(n_start, n_end):
        if STATS_PER_SAMPLE:
            mean, rstd = _load_stats(mean_ptr, rstd_ptr, n * G + first_group, local_group, mask_c, GROUPED, BLOCK_G)
        scale = rstd * w
        n_idx = _index(n, INDEX_64)
        acc_g = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
        acc_gx = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
        for s0 in range(s_start, s_end, BLOCK_S):
            offs_ss = (s0 + rows)[:, None]
            mask = (offs_ss < s_end) & mask_c[None, :]
            x, g = _load_x_and_grad(x_ptr, dy_ptr, res_ptr, n_idx, offs_ss, offs_cc, mask, mean, scale, b,
                                    stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys,
                                    stride_rn, stride_rc, stride_rs, negative_slope, HAS_RESIDUAL, MASK_FROM_OUTPUT,
                                    ACTIVATION)
            if WRITE_G:
                tl.store(g_ptr + n_idx * stride_gn + offs_ss * stride_gs + offs_cc * stride_gc,
                         g.to(g_ptr.dtype.element_ty), mask=mask)
            if WRITE_DX:
                tl.store(dx_ptr + n_idx * stride_dxn + offs_ss * stride_dxs + offs_cc * stride_dxc,
                         (scale[None, :] * g).to(dx_ptr.dtype.element_ty), mask=mask)
            acc_g += g
            acc_gx += g * ((x - mean[None, :]) * rstd[None, :])
        col_g = tl.sum(acc_g, axis=0)
        col_gx = tl.sum(acc_gx, axis=0)
        sum_g += col_g
        sum_gx += col_gx
        if STATS_PER_SAMPLE and STAT_SUMS:
            offs = (n * G + first_group + tl.arange(0, BLOCK_G)).to(tl.int64) * chunks + chunk
            tl.store(stat_part + offs, _group_sums(w * col_g, local_group, mask_c, GROUPED, BLOCK_G), mask=mask_g)
            tl.store(stat_part + stat_size + offs, _group_sums(w * col_gx, local_group, mask_c, GROUPED, BLOCK_G),
                     mask=mask_g)
    if STAT_SUMS and not STATS_PER_SAMPLE:
        # w read again: held across the loop, which need not read it (the activation's mask
        # read from the output, no dx), triton 3.6 made ptxas spill it
        w, _ = _load_affine(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT, False)
        offs = (first_group + tl.arange(0, BLOCK_G)).to(tl.int64) * chunks + chunk
        tl.store(stat_part + offs, _group_sums(w * sum_g, local_group, mask_c, GROUPED, BLOCK_G), mask=mask_g)
        tl.store(stat_part + stat_size + offs, _group_sums(w * sum_gx, local_group, mask_c, GROUPED, BLOCK_G),
                 mask=mask_g)
    if WRITE_DW or WRITE_DB:
        # Channel-major rows: channel c's partials are part[c * param_rows + row].
        row = pid_n * num_s_chunks + pid_s
        offs_p = offs_c.to(tl.int64) * param_rows + row
        tl.store(part_ptr + offs_p, sum_gx, mask=mask_c)
        tl.store(part_ptr + param_rows * C + offs_p, sum_g, mask=mask_c)
        if _take_ticket(ticket_ptr, pid_c, param_rows):
            dw = _sum_chunks(part_ptr, offs_c, mask_c, param_rows, BLOCK_K)
            db = _sum_chunks(part_ptr + param_rows * C, offs_c, mask_c, param_rows, BLOCK_K)
            if WRITE_DW:
                tl.store(dw_ptr + offs_c, dw.to(dw_ptr.dtype.element_ty), mask=mask_c)
            if WRITE_DB:
                tl.store(db_ptr + offs_c, db.to(db_ptr.dtype.element_ty), mask=mask_c)
    if STAT_SUMS:
        if _take_ticket(ticket_ptr, num_cblocks + stat_key, chunks):
            groups = first_group + tl.arange(0, BLOCK_G)
            if STATS_PER_SAMPLE:
                s2_ptr = sums_ptr + N * G
                for n in range(n_start, n_end):
                    _store_stat_sums(stat_part, stat_size, sums_ptr, s2_ptr, n * G + groups, mask_g, chunks, BLOCK_KG)
            else:
                _store_stat_sums(stat_part, stat_size, sums_ptr, sums_ptr + G, groups, mask_g, chunks, BLOCK_KG)


@triton.jit
def _bwd_dx_kernel(x_ptr, dy_ptr, res_ptr, g_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, sums_ptr, dx_ptr, count_ptr,
                   N, C, S, G, Cg, GPB, BPG, group_width,
                   stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys,
                   stride_rn, stride_rc, stride_rs, stride_gn, stride_gc, stride_gs,
                   stride_dxn, stride_dxc, stride_dxs,
                   n_per_prog, num_n_chunks, s_per_prog, num_s_chunks, negative_slope, inv_count,
                   STATS_PER_SAMPLE: tl.constexpr, GROUPED: tl.constexpr, READ_G: tl.constexpr,
                   DEVICE_COUNT: tl.constexpr,
                   HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                   MASK_FROM_OUTPUT: tl.constexpr, ACTIVATION: tl.constexpr, INDEX_64: tl.constexpr,
                   FULL_BLOCKS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    """The input gradient of batch statistics. x, dy, residual, g, dx: (N, C, S)
    through strides; mean, rstd per statistic; sums (2, num_stats): s1 = sum(w g) then
    s2 = sum(w g xhat) per statistic;
    inv_count = 1 / elements per statistic, or (DEVICE_COUNT: SyncBatchNorm's count over
    every process) 1 / count[0].
    dx = rstd * (w g - (s1 + xhat s2) * inv_count), g read (READ_G: the reduction
    pass wrote it) or recomputed from dy through the activation (as the reduction pass).
    Moves 3T (x, g or dy, dx), +1T for the residual (or the output) when g is recomputed."""
    pid_c, pid_n, pid_s, n_start, n_end, s_start, s_end, offs_c, mask_c, local_group, first_group = _program_block(
        N, C, S, Cg, GPB, BPG, group_width, n_per_prog, num_n_chunks, s_per_prog, num_s_chunks, BLOCK_C, FULL_BLOCKS)
    rows = _index(tl.arange(0, BLOCK_S), INDEX_64)
    offs_cc = _index(offs_c, INDEX_64)[None, :]
    w, b = _load_affine(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT, HAS_BIAS)
    mean, rstd = _load_stats(mean_ptr, rstd_ptr, first_group, local_group, mask_c, GROUPED, BLOCK_G)
    s1_ptr = sums_ptr
    if STATS_PER_SAMPLE:
        s2_ptr = sums_ptr + N * G
    else:
        s2_ptr = sums_ptr + G
    s1, s2 = _load_stats(s1_ptr, s2_ptr, first_group, local_group, mask_c, GROUPED, BLOCK_G)
    if DEVICE_COUNT:
        inv_count = 1.0 / tl.load(count_ptr)
    for n in range(n_start, n_end):
        if STATS_PER_SAMPLE:
            mean, rstd = _load_stats(mean_ptr, rstd_ptr, n * G + first_group, local_group, mask_c, GROUPED, BLOCK_G)
            s1, s2 = _load_stats(s1_ptr, s2_ptr, n * G + first_group, local_group, mask_c, GROUPED, BLOCK_G)
        scale = rstd * w
        k1 = -rstd * s1 * inv_count
        k2 = -rstd * s2 * inv_count
        n_idx = _index(n, INDEX_64)
        for s0 in range(s_start, s_end, BLOCK_S):
            offs_ss = (s0 + rows)[:, None]
            mask = (offs_ss < s_end) & mask_c[None, :]
            if READ_G:
                x = tl.load(x_ptr + n_idx * stride_xn + offs_ss * stride_xs + offs_cc * stride_xc,
                            mask=mask, other=0.0).to(tl.float32)
                g = tl.load(g_ptr + n_idx * stride_gn + offs_ss * stride_gs + offs_cc * stride_gc,
                            mask=mask, other=0.0).to(tl.float32)
            else:
                x, g = _load_x_and_grad(x_ptr, dy_ptr, res_ptr, n_idx, offs_ss, offs_cc, mask, mean, scale, b,
                                        stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys,
                                        stride_rn, stride_rc, stride_rs, negative_slope, HAS_RESIDUAL,
                                        MASK_FROM_OUTPUT, ACTIVATION)
            xhat = (x - mean[None, :]) * rstd[None, :]
            dx = scale[None, :] * g + k1[None, :] + k2[None, :] * xhat
            tl.store(dx_ptr + n_idx * stride_dxn + offs_ss * stride_dxs + offs_cc * stride_dxc,
                     dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Single-read path: every set in one tile
#
# ROWS (layer norm, S == 1, one group): the tile is BLOCK_M rows of n by the
# BLOCK_C channels of a row, and each row is a statistic. Otherwise the tile is
# all S positions (BLOCK_M >= S) of one sample n by a block of GPB whole groups,
# and each group is a statistic.

@triton.jit
def _set_program(N, C, G, Cg, GPB, group_width, n_per_prog, num_n_chunks, w_ptr, b_ptr, GROUPED: tl.constexpr,
                 FULL_BLOCKS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    """A single-read program's share: (n chunk, n_start, n_end, channels, channel mask,
    group of each channel, first group, group mask, weight, bias) of its channel block."""
    pid = tl.program_id(0)
    pid_n = pid % num_n_chunks
    offs_c, mask_c, local_group, first_group = _block_channels(pid // num_n_chunks, C, Cg, GPB, 1, group_width,
                                                               BLOCK_C, FULL_BLOCKS)
    n_start = pid_n * n_per_prog
    mask_g = _group_mask(first_group, G, GPB, mask_c, GROUPED, BLOCK_G, FULL_BLOCKS)
    w, b = _load_affine(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT, HAS_BIAS)
    return pid_n, n_start, tl.minimum(n_start + n_per_prog, N), offs_c, mask_c, local_group, first_group, mask_g, w, b


@triton.jit
def _set_tile(m0, n_end, S, offs_m, offs_c, mask_c, stride_n, stride_c, stride_s, INDEX_64: tl.constexpr,
              ROWS: tl.constexpr):
    """(offsets, mask) of the tile at m0: rows m0 + offs_m (ROWS), or sample m0."""
    if ROWS:
        rows = m0 + offs_m
        mask = (rows < n_end)[:, None] & mask_c[None, :]
        offs = _index(rows, INDEX_64)[:, None] * stride_n + _index(offs_c, INDEX_64)[None, :] * stride_c
    else:
        mask = (offs_m < S)[:, None] & mask_c[None, :]
        offs = (_index(m0, INDEX_64) * stride_n + _index(offs_m, INDEX_64)[:, None] * stride_s
                + _index(offs_c, INDEX_64)[None, :] * stride_c)
    return offs, mask


@triton.jit
def _set_sums(v, local_group, mask_c, ROWS: tl.constexpr, GROUPED: tl.constexpr, BLOCK_G: tl.constexpr):
    """Sum of the tile ``v`` over each statistic: per row [BLOCK_M] (ROWS), else per group
    of the block [BLOCK_G] (over the rows and the group's channels)."""
    if ROWS:
        return tl.sum(v, axis=1)
    else:
        return _group_sums(tl.sum(v, axis=0), local_group, mask_c, GROUPED, BLOCK_G)


@triton.jit
def _per_element(stat, local_group, ROWS: tl.constexpr, GROUPED: tl.constexpr, BLOCK_G: tl.constexpr):
    """A per-statistic vector broadcast against the tile: [BLOCK_M, 1] (ROWS) or [1, BLOCK_C]."""
    if ROWS:
        return stat[:, None]
    else:
        return _group_gather(stat, local_group, GROUPED, BLOCK_G)[None, :]


@triton.jit
def _set_stats(m0, n_end, offs_m, first_group, G, mask_g, ROWS: tl.constexpr, BLOCK_G: tl.constexpr):
    """(indices, mask) of the statistics of the tile at m0 (row n: n; sample n, group g: n * G + g)."""
    if ROWS:
        return m0 + offs_m, m0 + offs_m < n_end
    else:
        return m0 * G + first_group + tl.arange(0, BLOCK_G), mask_g


@triton.jit
def _set_fwd_kernel(x_ptr, y_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr,
                    N, C, S, G, Cg, GPB, group_width, stride_xn, stride_xc, stride_xs, stride_yn, stride_yc, stride_ys,
                    n_per_prog, num_n_chunks, eps, negative_slope,
                    ROWS: tl.constexpr, GROUPED: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                    ACTIVATION: tl.constexpr, INDEX_64: tl.constexpr, FULL_BLOCKS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    """Statistics and normalization of whole sets held in registers. x, y: (N, C, S)
    through strides; w, b: (C,). Writes y = act((x - mean) * rstd * w + b) and mean,
    rstd: (N * G,) fp32 (two passes over the registers: exact). A program covers one
    channel block of n_per_prog samples (rows). Moves 2T."""
    pid_n, n_start, n_end, offs_c, mask_c, local_group, first_group, mask_g, w, b = _set_program(
        N, C, G, Cg, GPB, group_width, n_per_prog, num_n_chunks, w_ptr, b_ptr, GROUPED, FULL_BLOCKS, HAS_WEIGHT,
        HAS_BIAS, BLOCK_C, BLOCK_G)
    offs_m = tl.arange(0, BLOCK_M)
    count = tl.cast(Cg * S, tl.float32)
    for m0 in range(n_start, n_end, BLOCK_M if ROWS else 1):     # ROWS: BLOCK_M rows, else one sample
        offs, mask = _set_tile(m0, n_end, S, offs_m, offs_c, mask_c, stride_xn, stride_xc, stride_xs, INDEX_64, ROWS)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        # Two passes over the registers; the second corrects the first mean's rounding
        # (a sum of values far from zero) by the mean deviation from it.
        mean = _set_sums(x, local_group, mask_c, ROWS, GROUPED, BLOCK_G) / count
        d = tl.where(mask, x - _per_element(mean, local_group, ROWS, GROUPED, BLOCK_G), 0.0)
        shift = _set_sums(d, local_group, mask_c, ROWS, GROUPED, BLOCK_G) / count
        var = tl.maximum(_set_sums(d * d, local_group, mask_c, ROWS, GROUPED, BLOCK_G) / count - shift * shift, 0.0,
                         propagate_nan=tl.PropagateNan.ALL)
        rstd = 1.0 / tl.sqrt(var + eps)
        mean += shift
        d = tl.where(mask, x - _per_element(mean, local_group, ROWS, GROUPED, BLOCK_G), 0.0)
        stats, mask_s = _set_stats(m0, n_end, offs_m, first_group, G, mask_g, ROWS, BLOCK_G)
        tl.store(mean_ptr + stats, mean, mask=mask_s)
        tl.store(rstd_ptr + stats, rstd, mask=mask_s)
        v = d * (_per_element(rstd, local_group, ROWS, GROUPED, BLOCK_G) * w[None, :]) + b[None, :]
        y_offs, _ = _set_tile(m0, n_end, S, offs_m, offs_c, mask_c, stride_yn, stride_yc, stride_ys, INDEX_64, ROWS)
        tl.store(y_ptr + y_offs, apply_activation(v, ACTIVATION, negative_slope).to(y_ptr.dtype.element_ty),
                 mask=mask)


@triton.jit
def _set_bwd_kernel(x_ptr, dy_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, dx_ptr, dwb_ptr,
                    N, C, S, G, Cg, GPB, group_width, stride_xn, stride_xc, stride_xs,
                    stride_dyn, stride_dyc, stride_dys, stride_dxn, stride_dxc, stride_dxs,
                    n_per_prog, num_n_chunks, negative_slope,
                    ROWS: tl.constexpr, GROUPED: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                    ACTIVATION: tl.constexpr, INDEX_64: tl.constexpr, FULL_BLOCKS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    """Backward of _set_fwd_kernel with whole sets in registers. x, dy, dx: (N, C, S)
    through strides; mean, rstd: (N * G,) fp32. g = dy through the activation (input
    recomputed from x), xhat = (x - mean) * rstd;
    dx = rstd (w g - (sum(w g) + xhat sum(w g xhat)) / count) per set, and dwb row
    pid_n of (num_n_chunks, 2, C): this program's sum(g * xhat), sum(g) per channel,
    in dwb's dtype (the parameter gradients themselves when num_n_chunks == 1).
    Moves 3T."""
    pid_n, n_start, n_end, offs_c, mask_c, local_group, first_group, mask_g, w, b = _set_program(
        N, C, G, Cg, GPB, group_width, n_per_prog, num_n_chunks, w_ptr, b_ptr, GROUPED, FULL_BLOCKS, HAS_WEIGHT,
        HAS_BIAS, BLOCK_C, BLOCK_G)
    offs_m = tl.arange(0, BLOCK_M)
    inv_count = 1.0 / tl.cast(Cg * S, tl.float32)
    sum_g = tl.zeros((BLOCK_C,), dtype=tl.float32)
    sum_gx = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for m0 in range(n_start, n_end, BLOCK_M if ROWS else 1):     # ROWS: BLOCK_M rows, else one sample
        offs, mask = _set_tile(m0, n_end, S, offs_m, offs_c, mask_c, stride_xn, stride_xc, stride_xs, INDEX_64, ROWS)
        stats, mask_s = _set_stats(m0, n_end, offs_m, first_group, G, mask_g, ROWS, BLOCK_G)
        mean = _per_element(tl.load(mean_ptr + stats, mask=mask_s, other=0.0), local_group, ROWS, GROUPED, BLOCK_G)
        rstd = _per_element(tl.load(rstd_ptr + stats, mask=mask_s, other=0.0), local_group, ROWS, GROUPED, BLOCK_G)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy_offs, _ = _set_tile(m0, n_end, S, offs_m, offs_c, mask_c, stride_dyn, stride_dyc, stride_dys, INDEX_64,
                               ROWS)
        g = tl.load(dy_ptr + dy_offs, mask=mask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        if ACTIVATION != ACT_NONE:     # the forward's expression for the activation's input
            g = activation_grad(g, (x - mean) * (rstd * w[None, :]) + b[None, :], ACTIVATION, negative_slope)
        wg = g * w[None, :]
        s1 = _per_element(_set_sums(wg, local_group, mask_c, ROWS, GROUPED, BLOCK_G), local_group, ROWS, GROUPED,
                          BLOCK_G)
        s2 = _per_element(_set_sums(wg * xhat, local_group, mask_c, ROWS, GROUPED, BLOCK_G), local_group, ROWS,
                          GROUPED, BLOCK_G)
        dx = rstd * (wg - (s1 + xhat * s2) * inv_count)
        dx_offs, _ = _set_tile(m0, n_end, S, offs_m, offs_c, mask_c, stride_dxn, stride_dxc, stride_dxs, INDEX_64,
                               ROWS)
        tl.store(dx_ptr + dx_offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        sum_g += tl.sum(g, axis=0)
        sum_gx += tl.sum(g * xhat, axis=0)
    row = pid_n.to(tl.int64) * 2 * C
    tl.store(dwb_ptr + row + offs_c, sum_gx.to(dwb_ptr.dtype.element_ty), mask=mask_c)
    tl.store(dwb_ptr + row + C + offs_c, sum_g.to(dwb_ptr.dtype.element_ty), mask=mask_c)
