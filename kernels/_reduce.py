"""The deterministic second pass shared by every cross-program reduction.

Kernels that reduce over many programs write fp32 partials of shape
(num_chunks, C) and this pass sums each column in a fixed order. No float
atomics, so results are bitwise reproducible.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._runtime import CompileCase, interpreting, launch

__all__ = ["sum_partials", "COMPILE_CASES"]


@triton.jit
def _sum_partials_kernel(partials_ptr, out_ptr, num_chunks, C,
                         BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """partials: (num_chunks, C) fp32, contiguous; out: (C,) of any float dtype
    (the fp32 sums cast once)."""
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


def sum_partials(partials: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Column sums of fp32 ``partials`` (num_chunks, C), returned as (C,) of ``dtype``."""
    num_chunks, C = partials.shape
    out = torch.empty(C, dtype=dtype, device=partials.device)
    if C == 0:
        return out
    if num_chunks == 0:
        return out.zero_()
    BLOCK_C = 1024 if interpreting() else 64     # the interpreter pays per program
    launch(_sum_partials_kernel, (triton.cdiv(C, BLOCK_C),),
           partials.contiguous(), out, num_chunks, C, BLOCK_S=32, BLOCK_C=BLOCK_C)
    return out


COMPILE_CASES = [
    CompileCase(_sum_partials_kernel,
                {"partials_ptr": "*fp32", "out_ptr": "*fp32", "num_chunks": "i32", "C": "i32"},
                {"BLOCK_S": 32, "BLOCK_C": 64}),
]
