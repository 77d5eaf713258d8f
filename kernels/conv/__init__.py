"""conv2d in Triton: implicit-GEMM forward, input gradient and weight gradient,
direct kernels for few channels per group, fused bias + activation epilogue.

* ``_gemm``: the ``tl.dot`` kernels (forward, dgrad by stride phase, split-K wgrad).
* ``_direct``: depthwise / small-channel kernels and the backward epilogue.
* ``ops``: path choice, launchers, ``Conv2dFunction`` and ``conv2d``.
"""
from __future__ import annotations

from .._runtime import CompileCase
from ..activation import ACT_LEAKY_RELU, ACT_RELU
from ._direct import (_conv_bwd_epilogue_kernel, _conv_dgrad_direct_kernel, _conv_fwd_direct_kernel,
                      _conv_wgrad_direct_kernel)
from ._gemm import conv_dgrad_gemm, conv_fwd_flat, conv_fwd_gemm, conv_wgrad_flat, conv_wgrad_gemm
from .ops import Conv2dFunction, ConvGeometry, conv2d, conv_paths, output_size

__all__ = ["conv2d", "Conv2dFunction", "ConvGeometry", "conv_paths", "output_size", "COMPILE_CASES"]


def _ints(*names):
    return {name: "i32" for name in names}


_DIMS = ("N", "H", "W", "P", "Q")
_CONV = ("stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w")


def _strides(prefix, axes):
    return tuple(f"stride_{prefix}{a}" for a in axes)


def _compile_cases():
    """Every conv kernel, fp16 / bf16 / fp32 (tf32 and exact). GEMM cases are the
    GPU path's specialisation: channels_last operands and outputs (channel strides
    of 1), with 16-byte aligned channel counts (VEC 8 / 4) and, for fp16 and fp32,
    without (VEC 1, which tunes over its own smaller tiles)."""
    cases = []
    # (dtype, ALLOW_TF32): fp32 runs on tf32 tensor cores or exact FMA per cudnn.allow_tf32.
    gemm_variants = [(dt, tf32, vec) for dt, tf32 in (("fp16", True), ("bf16", True), ("fp32", True), ("fp32", False))
                     for vec in ((4 if dt == "fp32" else 8),) + ((1,) if dt != "bf16" else ())]
    for dt, tf32, vec in gemm_variants:
        label = dt + ("" if dt != "fp32" else ",tf32" if tf32 else ",ieee") + (",vec1" if vec == 1 else "")
        mma = dict(ALLOW_TF32=tf32, DOT_UPCAST=False)
        for flat in (False, True):
            sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "y_ptr": f"*{dt}",
                   **_ints(*_DIMS, "Cg", "Kg", "R", "S", *_CONV),
                   **_ints(*_strides("x", "nhw"), *_strides("w", "krs"), *_strides("y", "nhw")),
                   "negative_slope": "fp32"}
            cases.append(CompileCase((conv_fwd_flat if flat else conv_fwd_gemm)[dt == "fp32"], sig,
                                     dict(HAS_BIAS=True, ACTIVATION=ACT_RELU.value, FLAT=flat, VEC=vec,
                                          stride_xc=1, stride_wc=1, stride_yc=1, **mma),
                                     tensor_cores=tf32, label=f"{label},flat={int(flat)}"))
            sig = {"dy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "part_ptr": "*fp32",
                   **_ints(*_DIMS, "Cg", "Kg", "R", "S", *_CONV, "chunk"),
                   **_ints(*_strides("dy", "npq"), *_strides("x", "nhw"), *_strides("p", "skrt"))}
            cases.append(CompileCase((conv_wgrad_flat if flat else conv_wgrad_gemm)[dt == "fp32"], sig,
                                     dict(FLAT=flat, VEC=vec, stride_dyk=1, stride_xc=1, stride_pc=1, **mma),
                                     tensor_cores=tf32, label=f"{label},flat={int(flat)}"))
        sig = {"dy_ptr": f"*{dt}", "w_ptr": f"*{dt}", "dx_ptr": f"*{dt}",
               **_ints(*_DIMS, "Cg", "Kg", "R", "S", *_CONV, "step_r", "step_s"),
               **_ints(*_strides("dy", "npq"), *_strides("w", "krs"), *_strides("dx", "nhw"))}
        cases.append(CompileCase(conv_dgrad_gemm[dt == "fp32"], sig,
                                 dict(VEC=vec, stride_dyk=1, stride_wc=1, stride_dxc=1, **mma),
                                 tensor_cores=tf32, label=label))
    for dt in ("fp16", "bf16", "fp32"):
        for block_m, block_n in ((32, 32), (256, 4)):      # the GPU tiles of ops._direct_tiles
            direct = dict(BLOCK_M=block_m, BLOCK_N=block_n)
            tile = f"{dt},{block_m}x{block_n}"
            sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "y_ptr": f"*{dt}",
                   **_ints(*_DIMS, "K", "Cg", "Kg", "R", "S", *_CONV),
                   **_ints(*_strides("x", "nchw"), *_strides("w", "kcrs"), *_strides("y", "nchw")),
                   "negative_slope": "fp32"}
            cases.append(CompileCase(_conv_fwd_direct_kernel, sig, dict(HAS_BIAS=True, ACTIVATION=ACT_LEAKY_RELU.value, **direct),
                                     label=tile))
            sig = {"dy_ptr": f"*{dt}", "w_ptr": f"*{dt}", "dx_ptr": f"*{dt}",
                   **_ints(*_DIMS, "C", "Cg", "Kg", "R", "S", *_CONV, "step_r", "step_s"),
                   **_ints(*_strides("dy", "nkpq"), *_strides("w", "kcrs"), *_strides("dx", "nchw"))}
            cases.append(CompileCase(_conv_dgrad_direct_kernel, sig, direct, label=tile))
            sig = {"dy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "part_ptr": "*fp32",
                   **_ints(*_DIMS, "K", "Cg", "Kg", "R", "S", *_CONV, "chunk"),
                   **_ints(*_strides("dy", "nkpq"), *_strides("x", "nchw"), *_strides("p", "skcrt"))}
            cases.append(CompileCase(_conv_wgrad_direct_kernel, sig, direct, label=tile))
        sig = {"dy_ptr": f"*{dt}", "y_ptr": f"*{dt}", "g_ptr": f"*{dt}", "part_ptr": "*fp32",
               **_ints("N", "K", "P", "Q", "chunk"), "negative_slope": "fp32",
               **_ints(*_strides("dy", "nkpq"), *_strides("y", "nkpq"), *_strides("g", "nkpq"))}
        cases.append(CompileCase(_conv_bwd_epilogue_kernel, sig,
                                 dict(ACTIVATION=ACT_LEAKY_RELU.value, HAS_BIAS=True, BLOCK_M=32, BLOCK_N=32), label=dt))
    return cases


COMPILE_CASES = _compile_cases()
