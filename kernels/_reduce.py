"""Deterministic cross-program reductions, two ways.

* ``sum_partials``: kernels that reduce over many programs write fp32 partials
  of shape (num_chunks, C) and this second pass sums each column in a fixed
  order.
* ``sum_splits`` (in-kernel, one launch): programs that split one tile's
  reduction over grid axis 2 each write their fp32 tile to a workspace and take
  an integer ticket; the program with the tile's last ticket sums the splits in
  a fixed order (a small tile's splits several at a time: ``split_chunk``) and
  finishes the tile. ``tickets`` gives the ticket buffer.

No float atomics either way, so results are bitwise reproducible.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._runtime import CompileCase, bind, cdiv, interpreting, persistent, plan_cache

__all__ = ["sum_partials", "sum_splits", "split_chunk", "tickets", "COMPILE_CASES"]


@triton.jit
def _sum_partials_kernel(partials_ptr, out_ptr, num_chunks, C,
                         BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """partials: (num_chunks, C) fp32, contiguous; out: (C,), any float dtype
    (the sums are rounded to it once)."""
    pid_c = tl.program_id(0)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    acc = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    for start in range(0, num_chunks, BLOCK_S):
        offs_s = start + tl.arange(0, BLOCK_S)
        mask = (offs_s[:, None] < num_chunks) & mask_c[None, :]
        ptrs = partials_ptr + offs_s[:, None].to(tl.int64) * C + offs_c[None, :]
        acc += tl.load(ptrs, mask=mask, other=0.0)
    tl.store(out_ptr + offs_c, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def sum_splits(acc, part_ptr, ticket_ptr, TILE_M: tl.constexpr, TILE_N: tl.constexpr, CHUNK: tl.constexpr = 1):
    """The fixed-order sum of a (TILE_M, TILE_N) fp32 tile ``acc`` whose reduction is
    split over ``tl.num_programs(2)`` programs. part: (tiles, splits, TILE_M*TILE_N)
    fp32 workspace; ticket: (tiles,) int32 (``tickets``), zero between launches;
    tile = program_id(1) * num_programs(0) + program_id(0). Each split writes its
    tile, then takes a ticket; the program with the last ticket sums the splits,
    CHUNK of them per load (``split_chunk``: a small tile's many splits in a few
    rounds; lane j of a round sums the splits j, j + CHUNK, ... in order, then the
    lanes are summed), resets the ticket and returns (sum, True); the others return
    (acc, False)."""
    tile = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    splits = tl.num_programs(2)
    offs = tl.arange(0, TILE_M)[:, None] * TILE_N + tl.arange(0, TILE_N)[None, :]
    tile_part = part_ptr + tile.to(tl.int64) * splits * (TILE_M * TILE_N)
    tl.store(tile_part + tl.program_id(2) * (TILE_M * TILE_N) + offs, acc)
    tl.debug_barrier()                           # every thread's partial is written before the ticket
    last = tl.atomic_add(ticket_ptr + tile, 1, sem="acq_rel") == splits - 1
    if last:
        if CHUNK == 1:
            acc = tl.load(tile_part + offs, cache_modifier=".cg")
            for split in range(1, splits):
                acc += tl.load(tile_part + split * (TILE_M * TILE_N) + offs, cache_modifier=".cg")
        else:
            lanes = tl.arange(0, CHUNK)
            flat = tl.arange(0, TILE_M * TILE_N)
            sums = tl.zeros((CHUNK, TILE_M * TILE_N), dtype=tl.float32)
            for first in range(0, splits, CHUNK):
                split = first + lanes
                sums += tl.load(tile_part + (split * (TILE_M * TILE_N))[:, None] + flat[None, :],
                                mask=(split < splits)[:, None], other=0.0, cache_modifier=".cg")
            acc = tl.reshape(tl.sum(sums, axis=0), (TILE_M, TILE_N))
        tl.atomic_xchg(ticket_ptr + tile, 0)
    return acc, last


CHUNK_ELEMENTS = 2048       # fp32 values a round of ``sum_splits`` loads (16 a thread at 4 warps)


def split_chunk(tile_elements: int) -> int:
    """``sum_splits``' CHUNK for a tile of ``tile_elements`` (a power of two): the
    splits whose tiles make CHUNK_ELEMENTS, at least 1 (a GEMM's 128x128 tile: 1)."""
    return max(1, CHUNK_ELEMENTS // tile_elements)


_TICKETS: dict = {}
_OUTGROWN: list = []    # ticket buffers replaced by larger ones, kept alive (see ``tickets``)


def tickets(device: torch.device, count: int) -> torch.Tensor:
    """At least ``count`` int32 ticket counters (``sum_splits``, the norms' merges),
    zero between launches: the last program of each ticket resets the counter it
    used. One buffer per device and stream (launches on one stream run in order, so
    two never share counters at once), zero-filled once when it is created or
    grown, never per call, outside CUDA graph pools (``persistent``). A buffer
    outgrown is kept, not freed: a CUDA graph captured before the growth still
    launches on it."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        key = (index, torch._C._cuda_getCurrentStream(index)[0])    # (stream id, device index, device type)
    else:
        key = device
    buf = _TICKETS.get(key)
    if buf is None or buf.numel() < count:
        if buf is not None:
            _OUTGROWN.append(buf)
        size = max(count, 4096, 2 * (0 if buf is None else buf.numel()))
        buf = persistent(lambda: torch.zeros(size, dtype=torch.int32, device=device), device)
        _TICKETS[key] = buf
    return buf


def sum_partials(partials: torch.Tensor, dtype: torch.dtype = torch.float32,
                 shape: tuple | None = None) -> torch.Tensor:
    """Column sums of fp32 ``partials`` (num_chunks, C) as a (C,) tensor of ``dtype``
    (or of ``shape``, C elements)."""
    num_chunks, C = partials.shape
    out = torch.empty(C if shape is None else shape, dtype=dtype, device=partials.device)
    if C == 0:
        return out
    _sum_launch(num_chunks, C)(partials.contiguous(), out)
    return out


@plan_cache
def _sum_launch(num_chunks: int, C: int):
    """``run(partials, out)``: the column sums' launch, bound once per size."""
    block_c = 1024 if interpreting() else 64     # the interpreter pays per program
    return bind(_sum_partials_kernel, (cdiv(C, block_c),), ("partials_ptr", "out_ptr"), 4, num_chunks=num_chunks,
                C=C, BLOCK_S=32, BLOCK_C=block_c)


COMPILE_CASES = [
    CompileCase(_sum_partials_kernel,
                {"partials_ptr": "*fp32", "out_ptr": f"*{dt}", "num_chunks": "i32", "C": "i32"},
                {"BLOCK_S": 32, "BLOCK_C": 64}, label=dt)
    for dt in ("fp32", "bf16")
]
