"""conv2d in Triton: implicit-GEMM forward, input gradient and weight gradient,
direct kernels for few channels per group, fused bias + activation epilogue.

* ``_gemm``: the ``tl.dot`` kernels (forward, dgrad by stride phase, wgrad), all
  but the planar forward / input gradient with an in-kernel split of the
  reduction for small grids.
* ``_depthwise``: register-blocked depthwise kernels (one channel per group; the
  rows kernels stream rows).
* ``_direct``: small-channel kernels and the backward epilogue.
* ``ops``: path choice, launchers, the operators (``conv2d_op`` and its gradients) and ``conv2d``.
"""
from __future__ import annotations

import math

import torch

from .._reduce import split_chunk
from .._runtime import CompileCase, next_power_of_2
from ..activation import ACT_LEAKY_RELU, ACT_RELU
from ._depthwise import (_conv_depthwise_rows_kernel, _conv_dgrad_depthwise_kernel, _conv_dgrad_depthwise_rows_kernel,
                         _conv_fwd_depthwise_kernel, _conv_wgrad_depthwise_kernel, _conv_wgrad_depthwise_rows_kernel)
from ._direct import (_conv_bwd_epilogue_kernel, _conv_dgrad_direct_kernel, _conv_fwd_direct_kernel,
                      _conv_wgrad_direct_kernel)
from ._gemm import (_pad_channels_kernel, conv_dgrad_gemm, conv_fwd_flat, conv_fwd_gemm, conv_planar_dgrad,
                    conv_planar_fwd, conv_planar_wgrad, conv_pointwise_dgrad, conv_pointwise_fwd,
                    conv_pointwise_wgrad, conv_wgrad_flat, conv_wgrad_gemm)
from .ops import ConvGeometry, _depthwise_row_tiles, _depthwise_tiles, conv2d, conv2d_op, conv_paths, output_size

__all__ = ["conv2d", "conv2d_op", "ConvGeometry", "conv_paths", "output_size", "COMPILE_CASES"]


def _ints(*names):
    return {name: "i32" for name in names}


_DIMS = ("N", "H", "W", "P", "Q")
_CONV = ("stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w")
# What a launch specialises (integer arguments equal to 1 become constants, except
# those a kernel declares do_not_specialize): a 3x3 convolution padded by 1 of stride
# 2 and of stride 1, the 7x7 stride-2 stem padded by 3 and a 1x1 convolution.
_3X3_STRIDE_2 = dict(pad_h=1, pad_w=1, dil_h=1, dil_w=1)
_3X3_STRIDE_1 = dict(stride_h=1, stride_w=1, **_3X3_STRIDE_2)
_STEM_7X7 = dict(dil_h=1, dil_w=1)
_1X1 = dict(R=1, S=1, stride_h=1, stride_w=1, dil_h=1, dil_w=1)      # unpadded: pad 0, divisible


def _strides(prefix, axes):
    return tuple(f"stride_{prefix}{a}" for a in axes)


def _unit_strides(prefix, axes, unit):
    """A depthwise launch's strides of one tensor: (the runtime ones as i32, the one
    ending in ``unit`` (the contiguous axis) as the constant 1, the runtime ones'
    names, which a launch makes multiples of 16)."""
    names = _strides(prefix, axes)
    runtime = tuple(n for n in names if not n.endswith(unit))
    return {n: "i32" for n in runtime}, {n: 1 for n in names if n.endswith(unit)}, runtime


def _param_grad(dt):
    """The pointer type of the weight's and bias's gradients for operands of
    ``dt``: bf16 stands for training under autocast, whose gradients of the fp32
    weight and bias the kernels write in fp32 (``ops._forward_backward``); fp16
    and fp32 keep their own. (The forward reads autocast's bf16 copy of the bias:
    an fp32 bias in the epilogue spills the 128x128 tile at 128 registers.)"""
    return "*fp32" if dt == "bf16" else f"*{dt}"


# SASS budgets of the largest tile of the 16-bit aligned GEMM cases on sm_90
# (config 0: 128x128x64, 8 warps; FLAT forward: 128x64x32): two programs fit an
# SM (<= 128 registers) and the main loop's instructions per warp per HGMMA
# (4 HGMMA per 64-deep k-step). Measured 2026-11-28, triton 3.9 / 3.6, per 4
# HGMMA: forward 143 / 140 as a 3x3 stride-1 launch (the tap and channel-block
# steps hoisted out of the loop, and each tap mask one unsigned compare per axis,
# ``_in_range``; 185 / 178 before either), input gradient 184 / 175 as a stride-2
# launch (198 / 189 with signed compares; hoisting there spilled 8 bytes at 128
# registers under 3.9), weight gradient 258 / 253, stem 164 / 210 per 2 (scalar
# loads of x and w), 102 / 102 per 2 from the zero-padded copies of x and w
# (PAD_C 4: cp.async of 8 bytes, 111 / 112 registers; 160 / 254 unpadded); the
# stem's weight gradient, its pixels walked by whole rows (the lanes' tap
# coordinates fixed, a k-step moving scalars; 8/7 as many k-steps at Q = 112),
# 183 / 179 per 2 from the padded copy of x (122 / 128 registers; 226 / 222
# walked by carries), 457 / 365 unpadded (238 / 182 registers; 738 / 345 by
# carries).
_GEMM_EXPECT = {
    "forward": {"max_registers": 128, "max_loop_instructions_per_hgmma": 38},
    "stem": {"max_loop_instructions_per_hgmma": 150},      # FLAT forward: 3x the forward's budget
    "input_grad": {"max_registers": 128, "max_loop_instructions_per_hgmma": 47},
    "weight_grad": {"max_registers": 128, "max_loop_instructions_per_hgmma": 67},
    # NCHW outputs written in place (PIXEL_VEC 8): 16-byte stores along the pixels (24
    # STG.128 with the split partials'; scalar stores would leave 16). Forward 142 / 140
    # as a stride-2 launch, input gradient 184 / 175 as a stride-1 one.
    "nchw_forward": {"max_registers": 128, "max_loop_instructions_per_hgmma": 38, "stg128_at_least": 24},
    "nchw_stem": {"max_loop_instructions_per_hgmma": 150, "stg128_at_least": 12},
    "nchw_padded_stem": {"max_registers": 128, "max_loop_instructions_per_hgmma": 55, "ldgsts64_at_least": 12,
                         "stg128_at_least": 12},
    "padded_stem_weight_grad": {"max_registers": 128, "max_loop_instructions_per_hgmma": 95,
                                "ldgsts64_at_least": 12},
    "flat_weight_grad": {"max_loop_instructions_per_hgmma": 235},     # unpadded: scalar gathers
    "nchw_input_grad": {"max_registers": 128, "max_loop_instructions_per_hgmma": 47, "stg128_at_least": 24},
    "pointwise_forward": {"max_registers": 128, "max_loop_instructions_per_hgmma": 41},  # 158 / 140 per 4
    # 1x1 channels_last through tensor descriptors (UTMALDG, no address arithmetic): forward 72 / 72,
    # input gradient 71 / 72, weight gradient 76 / 76 per 4
    "descriptor_forward": {"max_registers": 128, "max_loop_instructions_per_hgmma": 22, "utmaldg_at_least": 2},
    "descriptor_input_grad": {"max_registers": 128, "max_loop_instructions_per_hgmma": 22, "utmaldg_at_least": 2},
    "descriptor_weight_grad": {"max_registers": 128, "max_loop_instructions_per_hgmma": 22, "utmaldg_at_least": 2},
    "planar_forward": {"max_registers": 128, "max_loop_instructions_per_hgmma": 40},     # measured 35 / 33
    "planar_input_grad": {"max_registers": 128, "max_loop_instructions_per_hgmma": 36},  # 31.5 / 29
    "planar_weight_grad": {"max_registers": 128, "max_loop_instructions_per_hgmma": 42},  # 38 / 37
}


def _gemm_variants():
    """(label, dtype, ALLOW_TF32, VEC) of the GEMM specialisations compiled: each
    config list once per arch and triton. fp16 and bf16 compile alike, so bf16
    takes the aligned lists (VEC 8, with the SASS budgets) and fp16 the VEC = 1
    lists; fp32 compiles apart for tf32 (wgmma) and exact fp32 (FMA), aligned
    (VEC 4), and its VEC = 1 list once, exact."""
    return [("bf16", "bf16", True, 8), ("fp16,vec1", "fp16", True, 1), ("fp32,tf32", "fp32", True, 4),
            ("fp32,ieee", "fp32", False, 4), ("fp32,ieee,vec1", "fp32", False, 1)]


def _compile_cases():
    """Every conv kernel. GEMM cases are the GPU path's specialisation:
    channels_last operands and outputs (channel strides of 1), channel counts and
    strides divisible by 16 when aligned (``_gemm_variants``). Direct kernels
    compute in fp32 whatever the storage, so one storage dtype (bf16) stands
    for the three."""
    cases = []
    for label, dt, tf32, vec in _gemm_variants():
        mma = dict(ALLOW_TF32=tf32, DOT_UPCAST=False)
        half = dt != "fp32"

        def gemm_case(tuned, sig, constexprs, divisible, pass_name, case_label):
            kernel = tuned.half if half else tuned.fp32
            if constexprs.get("FLAT"):      # the stem's budgets
                pass_name = {"forward": "stem", "weight_grad": "flat_weight_grad"}.get(pass_name, pass_name)
            main = vec > 1 and half and pass_name is not None
            return CompileCase(kernel, sig, {**constexprs, **mma}, tensor_cores=tf32, label=case_label,
                               divisible=divisible if vec > 1 else (),
                               expect={"per_config": {0: _GEMM_EXPECT[pass_name]}} if main else {})
        for flat in (False, True):
            sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "y_ptr": f"*{dt}",
                   "part_ptr": "*fp32", "ticket_ptr": "*i32",
                   **_ints(*_DIMS, "Cg", "Kg", "R", "S", *_CONV),
                   **_ints(*_strides("x", "nhw"), *_strides("w", "krs"), *_strides("y", "nhw")),
                   "negative_slope": "fp32"}
            divisible = ("Kg", *_strides("y", "nhw")) + (() if flat else ("Cg", *_strides("x", "nhw"),
                                                                          *_strides("w", "krs")))
            # INDEX_64: offsets inside x's padded image past int32 (no budgets of their own)
            for index_64 in (False, True) if vec > 1 and half else (False,):
                cases.append(gemm_case(conv_fwd_flat if flat else conv_fwd_gemm, sig,
                                       dict(HAS_BIAS=True, ACTIVATION=ACT_RELU.value, FLAT=flat, VEC=vec,
                                            PIXEL_VEC=0, PAD_C=0, INDEX_64=index_64, stride_xc=1, stride_wc=1,
                                            stride_yc=1, **(_STEM_7X7 if flat else _3X3_STRIDE_1)),
                                       divisible, None if index_64 else "forward",
                                       f"{label},flat={int(flat)}" + (",index_64" if index_64 else "")))
            if flat:    # a stem read as 4 zero-padded channels (its budgets: the NCHW-y case below)
                cases.append(gemm_case(conv_fwd_flat, sig,
                                       dict(HAS_BIAS=True, ACTIVATION=ACT_RELU.value, FLAT=True, VEC=vec,
                                            PIXEL_VEC=0, PAD_C=4, INDEX_64=False, stride_xc=1, stride_wc=1,
                                            stride_yc=1,
                                            **_STEM_7X7),
                                       divisible, None, f"{label},flat=1,pad_c=4"))
            if not flat:                # the most frequent launch: ResNets' 1x1 convolutions
                cases.append(gemm_case(conv_fwd_gemm, sig,
                                       dict(HAS_BIAS=True, ACTIVATION=ACT_RELU.value, FLAT=False, VEC=vec,
                                            PIXEL_VEC=0, PAD_C=0, INDEX_64=False, stride_xc=1, stride_wc=1,
                                            stride_yc=1, **_1X1),
                                       divisible + ("pad_h", "pad_w"), "pointwise_forward",
                                       f"{label},flat=0,1x1"))
            if vec > 1 and half:        # y NCHW, written in place: pixel stride 1, 16-byte pixel runs
                planar_sig = {k: v for k, v in sig.items() if k != "stride_yw"}
                planar_sig["stride_yc"] = "i32"
                for pad_c in (0, 4) if flat else (0,):     # a stem read as it is; padded copies
                    cases.append(gemm_case(conv_fwd_flat if flat else conv_fwd_gemm, planar_sig,
                                           dict(HAS_BIAS=True, ACTIVATION=ACT_RELU.value, FLAT=flat,
                                                VEC=1 if flat else vec, PIXEL_VEC=8, PAD_C=pad_c, INDEX_64=False,
                                                stride_xc=1,
                                                stride_wc=1, stride_yw=1, **(_STEM_7X7 if flat else _3X3_STRIDE_2)),
                                           tuple(d for d in divisible if d != "stride_yw") + ("stride_yc",),
                                           "nchw_padded_stem" if pad_c else "nchw_stem" if flat else "nchw_forward",
                                           f"{label},flat={int(flat)},nchw" + (",pad_c=4" if pad_c else "")))
            sig = {"dy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "dw_ptr": _param_grad(dt), "part_ptr": "*fp32",
                   "ticket_ptr": "*i32",
                   **_ints(*_DIMS, "Cg", "Kg", "R", "S", *_CONV),
                   **_ints("stride_dym", *_strides("x", "nhw"), *_strides("dw", "kcrs"))}
            divisible = ("Kg", "stride_dym") + (() if flat else ("Cg", *_strides("x", "nhw")))
            for pad_c in (0, 4) if flat else (0,):     # a stem's x: copied to 4 zero-padded channels
                cases.append(gemm_case(conv_wgrad_flat if flat else conv_wgrad_gemm, sig,
                                       dict(FLAT=flat, VEC=vec, PAD_C=pad_c, INDEX_64=False, stride_dyk=1,
                                            stride_xc=1, **(_STEM_7X7 if flat else _3X3_STRIDE_1)),
                                       divisible, "padded_stem_weight_grad" if pad_c else "weight_grad",
                                       f"{label},flat={int(flat)}" + (",pad_c=4" if pad_c else "")))
            if not flat and dt == "bf16":      # bf16 weights (a bf16 model; second derivatives): dw in bf16
                cases.append(gemm_case(conv_wgrad_gemm, {**sig, "dw_ptr": "*bf16"},
                                       dict(FLAT=False, VEC=vec, PAD_C=0, INDEX_64=False, stride_dyk=1, stride_xc=1,
                                            **_3X3_STRIDE_1),
                                       divisible, None, f"{label},flat=0,dw=bf16"))
            if vec > 1 and half:           # offsets inside an image of x past int32
                cases.append(gemm_case(conv_wgrad_flat if flat else conv_wgrad_gemm, sig,
                                       dict(FLAT=flat, VEC=vec, PAD_C=0, INDEX_64=True, stride_dyk=1, stride_xc=1,
                                            **(_STEM_7X7 if flat else _3X3_STRIDE_1)),
                                       divisible, None, f"{label},flat={int(flat)},index_64"))
        sig = {"dy_ptr": f"*{dt}", "w_ptr": f"*{dt}", "dx_ptr": f"*{dt}", "part_ptr": "*fp32", "ticket_ptr": "*i32",
               **_ints(*_DIMS, "Cg", "Kg", "R", "S", *_CONV, "step_r", "step_s", "phases_h", "phases_w"),
               **_ints(*_strides("dy", "npq"), *_strides("w", "krs"), *_strides("dx", "nhw"))}
        divisible = ("Cg", "Kg", *_strides("dy", "npq"), *_strides("w", "krs"), *_strides("dx", "nhw"))
        cases.append(gemm_case(conv_dgrad_gemm, sig,
                               dict(VEC=vec, PIXEL_VEC=0, stride_dyk=1, stride_wc=1, stride_dxc=1, **_3X3_STRIDE_2),
                               divisible, "input_grad", label))
        if vec > 1 and half:            # dx NCHW (stride 1), written in place
            planar_sig = {k: v for k, v in sig.items() if k != "stride_dxw"}
            planar_sig["stride_dxc"] = "i32"
            cases.append(gemm_case(conv_dgrad_gemm, planar_sig,
                                   dict(VEC=vec, PIXEL_VEC=8, stride_dyk=1, stride_wc=1, stride_dxw=1, **_3X3_STRIDE_1,
                                        step_r=1, step_s=1, phases_h=1, phases_w=1),
                                   tuple(d for d in divisible if d != "stride_dxw") + ("stride_dxc",),
                                   "nchw_input_grad", f"{label},nchw"))
        if vec > 1 and tf32:            # 1x1 channels_last through tensor descriptors (tensor cores only)
            sig = {"a_ptr": f"*{dt}", "w_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "out_ptr": f"*{dt}",
                   "part_ptr": "*fp32", "ticket_ptr": "*i32", **_ints("M", "P", "Q", "Cg", "Kg", "stride_am",
                                                                   "stride_wk", *_strides("o", "nhw")),
                   "negative_slope": "fp32"}
            divisible = ("Cg", "Kg", "stride_am", "stride_wk", *_strides("o", "nhw"))
            for tuned, forward, pass_name in ((conv_pointwise_fwd, True, "descriptor_forward"),
                                              (conv_pointwise_dgrad, False, "descriptor_input_grad")):
                cases.append(gemm_case(tuned, sig, dict(FORWARD=forward, HAS_BIAS=forward,
                                                        ACTIVATION=ACT_RELU.value if forward else 0, VEC=vec,
                                                        PIXEL_VEC=0, stride_oc=1),
                                       divisible, pass_name, f"{label},{pass_name.split('_', 1)[1]}"))
            sig = {"dy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "dw_ptr": _param_grad(dt), "part_ptr": "*fp32",
                   "ticket_ptr": "*i32", **_ints("M", "Cg", "Kg", "stride_dym", "stride_xm", "stride_dwk")}
            cases.append(gemm_case(conv_pointwise_wgrad, sig, dict(VEC=vec, stride_dwc=1),
                                   ("Cg", "Kg", "stride_dym", "stride_xm", "stride_dwk"), "descriptor_weight_grad",
                                   f"{label},weight_grad"))
        # Planar 1x1 (NCHW: pixel strides 1): the forward reads w along its input
        # channels (stride_ak 1), the input gradient reads w transposed (stride_am 1).
        planar_ints = ("HW", "Mg", "Kr", "G", "stride_ag", "stride_am", "stride_ak", "stride_bn", "stride_bc",
                       "stride_on", "stride_oc")
        for tuned, pass_name, unit_stride, case_label in (
                (conv_planar_fwd, "planar_forward", "stride_ak", f"{label},forward"),
                (conv_planar_dgrad, "planar_input_grad", "stride_am", f"{label},input_grad")):
            ints = tuple(name for name in planar_ints if name != unit_stride)
            sig = {"a_ptr": f"*{dt}", "b_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "out_ptr": f"*{dt}", **_ints(*ints),
                   "negative_slope": "fp32"}
            cases.append(gemm_case(tuned, sig, dict(HAS_BIAS=tuned is conv_planar_fwd, ACTIVATION=ACT_RELU.value,
                                                    VEC=vec, stride_bp=1, stride_op=1, **{unit_stride: 1}),
                                   tuple(name for name in ints if name != "G"), pass_name, case_label))
        sig = {"dy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "dw_ptr": _param_grad(dt), "part_ptr": "*fp32",
               "ticket_ptr": "*i32",
               **_ints("N", "HW", "Cg", "Kg", "stride_dyn", "stride_dyk", "stride_xn", "stride_xc", "stride_dwk")}
        cases.append(gemm_case(conv_planar_wgrad, sig, dict(VEC=vec, stride_dyp=1, stride_xp=1, stride_dwc=1),
                               ("HW", "Cg", "Kg", "stride_dyn", "stride_dyk", "stride_xn", "stride_xc", "stride_dwk"),
                               "planar_weight_grad", label))
    for dt, store in (("bf16", "stg64_at_least"), ("fp32", "stg128_at_least")):
        # the FLAT forward's zero-padded channels_last copy of an NCHW x (pixel stride 1)
        cases.append(CompileCase(_pad_channels_kernel,
                                 {"src_ptr": f"*{dt}", "dst_ptr": f"*{dt}",
                                  **_ints("HW", "C", "W", "stride_n", "stride_c", "stride_h")},
                                 dict(PAD_C=4, BLOCK=512, stride_w=1), label=dt, expect={store: 1}))
    cases += _depthwise_cases() + _depthwise_rows_cases()
    cases += _direct_cases()
    for dt in ("bf16",):
        # The backward epilogue as a launch specialises it: channels_last (channel strides 1)
        # and NCHW (pixel strides 1, PIXEL_VEC 8), 16-byte vectors of dy, y and g either way.
        for layout, unit, pixel_vec in (("channels_last", "k", 0), ("nchw", "q", 8)):
            names = [*_strides("dy", "nkpq"), *_strides("y", "nkpq"), *_strides("g", "nkpq")]
            sig = {"dy_ptr": f"*{dt}", "y_ptr": f"*{dt}", "g_ptr": f"*{dt}", "db_ptr": _param_grad(dt),
                   "part_ptr": "*fp32", "ticket_ptr": "*i32", **_ints("N", "K", "P", "Q"), "negative_slope": "fp32",
                   **_ints(*(n for n in names if not n.endswith(unit)))}
            cases.append(CompileCase(_conv_bwd_epilogue_kernel, sig,
                                     dict(ACTIVATION=ACT_LEAKY_RELU.value, HAS_BIAS=True, PIXEL_VEC=pixel_vec,
                                          BLOCK_M=32, BLOCK_N=32, CHUNK=split_chunk(32),
                                          **{n: 1 for n in names if n.endswith(unit)}),
                                     label=f"{dt},{layout}", divisible=("K", *(n for n in names if not n.endswith(unit))),
                                     expect={"ldg128_at_least": 2, "stg128_at_least": 1}))
    return cases


# SASS budgets of the depthwise kernels on sm_90, instructions per FFMA in the main
# loop (the direct kernels, which ran depthwise before, take 16.5 forward, 17.0 input
# gradient, 22.9 weight gradient when specialised as a depthwise channels_last
# launch), under triton 3.6 and 3.9; channels_last
# cases also load x (and dy) as 16-byte vectors. Measured 2026-11-28 (3.9 / 3.6):
# forward 4.6 / 4.5, input gradient 5.9 / 6.0, weight gradient 7.1 / 8.9; 7x7 5.5 /
# 5.5, 7.5 / 7.7, 5.7 / 6.3; NCHW (scalar loads: the taps' shifts leave them
# unaligned) 8.5 / 9.7, 12.7 / 13.5, 17.0 / 16.3. Every FFMA counted is useful: the
# 3x3 weight gradient's ninth tap has its own accumulator (16 tap lanes, 7 of them
# padding, took 8.4 / 14.2 instructions per useful FFMA in channels_last, 19.2 /
# 22.2 in NCHW). The channels_last weight gradients' tiles narrowed from 64 channels
# to 16 (2026-11-30, so that a layer's channels make enough tiles for its splits:
# ``ops._direct_splits``): 3x3 7.7 / 9.0, 7x7 5.7 / 7.7; their 128-bit loads: 8 and
# 39 / 40, half of the 3x3's in the last program's sum of the splits.
_DEPTHWISE_EXPECT = {
    ("forward", "channels_last", 3): {"max_loop_instructions_per_ffma": 5.5, "ldg128_at_least": 12},
    ("input_grad", "channels_last", 3): {"max_loop_instructions_per_ffma": 7, "ldg128_at_least": 12},
    ("weight_grad", "channels_last", 3): {"max_loop_instructions_per_ffma": 10, "ldg128_at_least": 8},
    ("forward", "channels_last", 7): {"max_loop_instructions_per_ffma": 6.5, "ldg128_at_least": 12},
    ("input_grad", "channels_last", 7): {"max_loop_instructions_per_ffma": 8.5, "ldg128_at_least": 12},
    ("weight_grad", "channels_last", 7): {"max_loop_instructions_per_ffma": 8, "ldg128_at_least": 20},
    ("forward", "nchw", 3): {"max_loop_instructions_per_ffma": 10.5},
    ("input_grad", "nchw", 3): {"max_loop_instructions_per_ffma": 14.5},
    ("weight_grad", "nchw", 3): {"max_loop_instructions_per_ffma": 19.5},
}


# SASS budgets of the depthwise rows kernels on sm_90 (bf16, int32 offsets): instructions per
# FFMA in the loop over input rows and registers (6 programs of 4 warps an SM at 80).
# Measured 2026-11-30 (3.9 / 3.6), channels_last: forward (bias, relu) 2.89 / 2.83,
# input gradient 2.56 / 2.47, 80 registers; fp32 2.47 / 2.33, 86 / 87; int64 offsets
# 3.17 / 3.06. Weight gradient 2.83 / 2.83, 84 / 80 registers (the patch kernel: 7.67 /
# 9.0, 119 / 91); fp32 2.28, int64 3.08. Row stride 2 (two rows loaded an output row):
# forward 3.78 / 3.75, 80 registers; weight gradient 3.89 / 3.89, 95 / 96 (the patch
# kernels' figures hold for any stride). NCHW (scalar loads and stores: the column
# shifts leave them unaligned): forward 3.78 / 4.06, 67 / 80 registers; input
# gradient 3.39 / 3.69, 64 / 72; weight gradient 4.72 / 4.11, 117 / 114 (the patch
# kernels: 8.5 / 9.7, 12.7 / 13.5, 17.0 / 16.3). Stride 1, channels_last, one element a
# thread (7x7, ConvNeXt-T's 192 channels at 28x28): forward 2.35 / 2.35, input gradient
# 2.29 / 2.29, 96 registers (the patch kernel's 7x7: 5.5 / 5.5 forward, 7.5 / 7.7 input
# gradient, 186 registers forward); two a thread (5x5, EfficientNet-B0's 240 channels):
# 2.28 / 2.30 and 2.16 / 2.18, 96 / 95. Measured 2026-12-01 (3.9 / 3.6), the weight
# gradient of those: 7x7 2.53 / 2.51, 114 / 116 registers (its 49 sums a thread; the
# patch kernel: 5.69 / 7.67, 130 / 136); 5x5 2.42 / 2.44, 107 / 109; EfficientNet-B0's
# 5x5 of stride 2 (144 channels, 56x56 in): forward 3.22 / 3.20, 101 / 102, weight
# gradient 3.32 / 3.32, 109, input gradient (by units of 2x2 dx pixels) 2.52 / 2.50,
# 96; the 3x3's input gradient at stride 2 by those units 3.06 / 3.06, 72 (the pairs
# kernel they replace: 2.94). A 3x3 of dilation 2 (DeepLab-v3's MobileNet-v2: 960
# channels at 33x33, two row sets): forward 3.03 / 2.94, input gradient 2.67 / 2.56,
# 80 / 79 registers, weight gradient 2.92 / 2.89, 94. A 3x3 of stride 2 and dilation 2
# (one row set of row stride 1): forward 3.00 / 2.86, 80 registers, weight gradient 2.89 /
# 2.86, 89 / 92, input gradient by units 3.64 / 3.64, 96 (three dy rows of three shifts
# kept; three of a unit's four dx pixels get no tap). Keyed by pass, layout and stride
# (the other cases: "7x", "5x", "3x", "/2" for stride 2, "d2" for dilation 2).
_DEPTHWISE_ROWS_EXPECT = {
    ("forward", "channels_last", 1): {"max_loop_instructions_per_ffma": 3.2, "max_registers": 96,
                                      "ldg64_at_least": 3, "stg64_at_least": 1},
    ("input_grad", "channels_last", 1): {"max_loop_instructions_per_ffma": 2.8, "max_registers": 96,
                                         "ldg64_at_least": 3, "stg64_at_least": 1},
    ("weight_grad", "channels_last", 1): {"max_loop_instructions_per_ffma": 3.2, "max_registers": 96,
                                          "ldg64_at_least": 4},
    ("forward", "channels_last", 2): {"max_loop_instructions_per_ffma": 4.0, "max_registers": 96,
                                      "ldg64_at_least": 6, "stg64_at_least": 1},
    ("weight_grad", "channels_last", 2): {"max_loop_instructions_per_ffma": 4.2, "max_registers": 104,
                                          "ldg64_at_least": 7},
    ("input_grad", "channels_last", 2): {"max_loop_instructions_per_ffma": 3.2, "max_registers": 96,
                                         "ldg64_at_least": 2, "stg64_at_least": 2},
    ("forward", "nchw", 1): {"max_loop_instructions_per_ffma": 4.3, "max_registers": 96},
    ("input_grad", "nchw", 1): {"max_loop_instructions_per_ffma": 4.0, "max_registers": 96},
    ("weight_grad", "nchw", 1): {"max_loop_instructions_per_ffma": 5.0, "max_registers": 128},
    ("forward", "channels_last", "7x"): {"max_loop_instructions_per_ffma": 2.6, "max_registers": 104},
    ("input_grad", "channels_last", "7x"): {"max_loop_instructions_per_ffma": 2.6, "max_registers": 104},
    ("forward", "channels_last", "5x"): {"max_loop_instructions_per_ffma": 2.6, "max_registers": 104},
    ("input_grad", "channels_last", "5x"): {"max_loop_instructions_per_ffma": 2.5, "max_registers": 104},
    ("weight_grad", "channels_last", "7x"): {"max_loop_instructions_per_ffma": 2.8, "max_registers": 128},
    ("weight_grad", "channels_last", "5x"): {"max_loop_instructions_per_ffma": 2.7, "max_registers": 128},
    ("forward", "channels_last", "5x/2"): {"max_loop_instructions_per_ffma": 3.5, "max_registers": 112},
    ("weight_grad", "channels_last", "5x/2"): {"max_loop_instructions_per_ffma": 3.7, "max_registers": 120},
    ("input_grad", "channels_last", "5x/2"): {"max_loop_instructions_per_ffma": 2.8, "max_registers": 104},
    ("forward", "channels_last", "3xd2"): {"max_loop_instructions_per_ffma": 3.3, "max_registers": 96},
    ("input_grad", "channels_last", "3xd2"): {"max_loop_instructions_per_ffma": 2.9, "max_registers": 96},
    ("weight_grad", "channels_last", "3xd2"): {"max_loop_instructions_per_ffma": 3.2, "max_registers": 104},
    ("forward", "channels_last", "3x/2d2"): {"max_loop_instructions_per_ffma": 3.2, "max_registers": 96},
    ("input_grad", "channels_last", "3x/2d2"): {"max_loop_instructions_per_ffma": 3.9, "max_registers": 104},
    ("weight_grad", "channels_last", "3x/2d2"): {"max_loop_instructions_per_ffma": 3.2, "max_registers": 104},
}


def _depthwise_rows_cases():
    """The depthwise rows kernels as a GPU launch specialises them. The 3x3 for a
    MobileNet layer (144 channels, 56x56, padding 1): in bf16 channels_last
    (channel strides 1) the forward (bias, relu), input gradient (FLIP) and
    weight gradient at stride 1, the three at stride 2 (the input gradient by
    units); the three at stride 1 in NCHW (column strides 1); the forward and the
    weight gradient in fp32 and with int64 offsets. In bf16 channels_last the
    three passes of the 7x7 and 5x5 at stride 1, the 5x5 at stride 2 and 3x3s
    of dilation 2 at strides 1 and 2 (their integers other than 1 as a launch
    passes them)."""
    cases = []
    for dt, layout, stride, index_64 in (("bf16", "channels_last", 1, False), ("bf16", "channels_last", 2, False),
                                         ("bf16", "nchw", 1, False), ("fp32", "channels_last", 1, False),
                                         ("bf16", "channels_last", 1, True)):
        contiguous = layout == "channels_last"
        unit = "c" if contiguous else "w"            # the stride a launch specialises to 1
        _, tile_q, block_c = _depthwise_row_tiles(32, 56 // stride, 56 // stride, 144, torch.device("cpu"),
                                                  contiguous, interpreter=False)
        budgets = dt == "bf16" and not index_64
        label = f"{dt},{layout}" + (",stride2" if stride == 2 else "") + (",int64" if index_64 else "")

        (xs, x1, xd), (ys, y1, yd), (dys, dy1, dyd) = (_unit_strides(name, axes, unit) for name, axes in
                                                       (("x", "nchw"), ("y", "nchw"), ("dy", "ncpq")))
        geometry = dict(stride_h=stride, stride_w=stride, pad_h=1, pad_w=1, dil_h=1, dil_w=1, row_step=1,
                        TILE_Q=tile_q, BLOCK_C=block_c, INDEX_64=index_64)
        for flip in (False, True) if stride == 1 and dt == "bf16" and not index_64 else (False,):
            sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "y_ptr": f"*{dt}",
                   **_ints("H", "W", "P", "Q", "C", "ROWS"), **xs, **_ints(*_strides("w", "crs")), **ys,
                   "negative_slope": "fp32"}
            constexprs = dict(R=3, S=3, STRIDE_H=stride, FLIP=flip, HAS_BIAS=not flip,
                              ACTIVATION=0 if flip else ACT_RELU.value, **x1, **y1, **geometry)
            pass_name = "input_grad" if flip else "forward"
            cases.append(CompileCase(_conv_depthwise_rows_kernel, sig, constexprs, label=f"{label},{pass_name}",
                                     divisible=("C", *xd, *yd),
                                     expect=_DEPTHWISE_ROWS_EXPECT[(pass_name, layout, stride)] if budgets else {}))
        if stride == 2:
            (dxs, dx1, dxd) = _unit_strides("dx", "nchw", unit)
            sig = {"dy_ptr": f"*{dt}", "w_ptr": f"*{dt}", "dx_ptr": f"*{dt}",
                   **_ints("H", "W", "P", "Q", "C", "ROWS", "pad_h", "pad_w"), **dys, **_ints(*_strides("w", "crs")),
                   **dxs}
            cases.append(CompileCase(_conv_dgrad_depthwise_rows_kernel, sig,
                                     dict(R=3, S=3, STRIDE_H=2, STRIDE_W=2, DIL_H=1, DIL_W=1, **dy1, **dx1,
                                          TILE_Q=tile_q, BLOCK_C=block_c, INDEX_64=index_64),
                                     label=f"{label},input_grad", divisible=("C", *dyd, *dxd),
                                     expect=_DEPTHWISE_ROWS_EXPECT[("input_grad", layout, stride)] if budgets else {}))
        sig = {"dy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "dw_ptr": _param_grad(dt), "part_ptr": "*fp32",
               "ticket_ptr": "*i32", **_ints("N", "H", "W", "P", "Q", "C", "ROWS"), **dys, **xs,
               **_ints(*_strides("dw", "crs"))}
        cases.append(CompileCase(_conv_wgrad_depthwise_rows_kernel, sig,
                                 dict(R=3, S=3, TAPS=16, STRIDE_H=stride, **dy1, **x1, **geometry,
                                      CHUNK=split_chunk(16 * block_c)),
                                 label=f"{label},weight_grad", divisible=("C", *dyd, *xd),
                                 expect=_DEPTHWISE_ROWS_EXPECT[("weight_grad", layout, stride)] if budgets else {}))
    for kernel_size, channels, size, stride, dilation in ((7, 192, 28, 1, 1), (5, 240, 28, 1, 1), (5, 144, 56, 2, 1),
                                                          (3, 960, 33, 1, 2), (3, 144, 56, 2, 2)):
        # ConvNeXt-T's, EfficientNet-B0's (its stride-2 5x5: 144 channels from 56x56), DeepLab-v3's MobileNet-v2
        # (dilation 2: two row sets of 17 and 16 rows), a 3x3 of stride 2 and dilation 2 (one row set of row
        # stride 1; the input gradient by units, three dy rows kept)
        row_step, sub_stride = dilation // math.gcd(stride, dilation), stride // math.gcd(stride, dilation)
        _, tile_q, block_c = _depthwise_row_tiles(32 * row_step, -(-size // stride // row_step), size // stride,
                                                  channels, torch.device("cpu"), True, kernel_size * kernel_size,
                                                  interpreter=False)
        (xs, x1, xd), (ys, y1, yd), (dys, dy1, dyd) = (_unit_strides(name, axes, "c") for name, axes in
                                                       (("x", "nchw"), ("y", "nchw"), ("dy", "ncpq")))
        label = f"bf16,channels_last,{kernel_size}x{kernel_size}" + (",stride2" if stride == 2 else "") + (
            ",dilation2" if dilation == 2 else "")
        key = f"{kernel_size}x" + ("/2" if stride == 2 else "") + ("d2" if dilation == 2 else "")
        values = dict(stride_h=stride, stride_w=stride, pad_h=kernel_size // 2 * dilation,
                      pad_w=kernel_size // 2 * dilation, dil_h=dilation, dil_w=dilation, row_step=row_step)
        runtime = _ints(*(name for name, value in values.items() if value != 1))     # a launch makes 1s constants
        geometry = dict(TILE_Q=tile_q, BLOCK_C=block_c, INDEX_64=False,
                        **{name: 1 for name, value in values.items() if value == 1})
        sig = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "y_ptr": "*bf16",
               **_ints("H", "W", "P", "Q", "C", "ROWS"), **runtime, **xs, **_ints(*_strides("w", "crs")), **ys,
               "negative_slope": "fp32"}
        for flip in (False, True) if stride == 1 else (False,):
            pass_name = "input_grad" if flip else "forward"
            constexprs = dict(R=kernel_size, S=kernel_size, STRIDE_H=sub_stride, FLIP=flip, HAS_BIAS=not flip,
                              ACTIVATION=0 if flip else ACT_RELU.value, **geometry, **x1, **y1)
            cases.append(CompileCase(_conv_depthwise_rows_kernel, sig, constexprs, label=f"{label},{pass_name}",
                                     divisible=("C", *xd, *yd),
                                     expect=_DEPTHWISE_ROWS_EXPECT[(pass_name, "channels_last", key)]))
        if stride == 2:
            (dxs, dx1, dxd) = _unit_strides("dx", "nchw", "c")
            sig = {"dy_ptr": "*bf16", "w_ptr": "*bf16", "dx_ptr": "*bf16",
                   **_ints("H", "W", "P", "Q", "C", "ROWS", "pad_h", "pad_w"), **dys, **_ints(*_strides("w", "crs")),
                   **dxs}
            cases.append(CompileCase(_conv_dgrad_depthwise_rows_kernel, sig,
                                     dict(R=kernel_size, S=kernel_size, STRIDE_H=2, STRIDE_W=2, DIL_H=dilation,
                                          DIL_W=dilation, **dy1, **dx1, TILE_Q=tile_q, BLOCK_C=block_c,
                                          INDEX_64=False),
                                     label=f"{label},input_grad", divisible=("C", *dyd, *dxd),
                                     expect=_DEPTHWISE_ROWS_EXPECT[("input_grad", "channels_last", key)]))
        taps = next_power_of_2(kernel_size * kernel_size)
        sig = {"dy_ptr": "*bf16", "x_ptr": "*bf16", "dw_ptr": _param_grad("bf16"), "part_ptr": "*fp32",
               "ticket_ptr": "*i32", **_ints("N", "H", "W", "P", "Q", "C", "ROWS"), **runtime, **dys, **xs,
               **_ints(*_strides("dw", "crs"))}
        cases.append(CompileCase(_conv_wgrad_depthwise_rows_kernel, sig,
                                 dict(R=kernel_size, S=kernel_size, TAPS=taps, STRIDE_H=sub_stride, **dy1, **x1,
                                      **geometry, CHUNK=split_chunk(taps * block_c)),
                                 label=f"{label},weight_grad", divisible=("C", *dyd, *xd),
                                 expect=_DEPTHWISE_ROWS_EXPECT[("weight_grad", "channels_last", key)]))
    return cases


def _depthwise_cases():
    """The depthwise kernels as a GPU launch specialises them, for a MobileNet layer
    (144 channels, 56x56, 3x3) in bf16, channels_last (channel stride 1, the others
    multiples of 16) and NCHW (pixel stride 1); a 7x7 (ConvNeXt; the widest kernel
    of the path) in channels_last; the NCHW 3x3 with int64 offsets; and fp32
    channels_last (four-channel vectors: more registers per element)."""
    cases = []
    for dt, layout, kernel_size, index_64 in (("bf16", "channels_last", 3, False), ("bf16", "nchw", 3, False),
                                              ("bf16", "channels_last", 7, False), ("bf16", "nchw", 3, True),
                                              ("fp32", "channels_last", 3, False)):
        contiguous = layout == "channels_last"
        unit = "c" if contiguous else "w"            # the stride a launch specialises to 1
        label = f"{dt},{layout},{kernel_size}x{kernel_size}" + (",int64" if index_64 else "")

        def expect(pass_name):                       # budgets for the bf16 int32 cases
            return _DEPTHWISE_EXPECT[(pass_name, layout, kernel_size)] if dt == "bf16" and not index_64 else {}

        (xs, x1, xd), (ys, y1, yd), (dys, dy1, dyd) = (_unit_strides(name, axes, unit) for name, axes in
                                                       (("x", "nchw"), ("y", "nchw"), ("dy", "ncpq")))
        (dxs, dx1, dxd), ws = _unit_strides("dx", "nchw", unit), _ints(*_strides("w", "crs"))
        geometry = dict(R=kernel_size, S=kernel_size, INDEX_64=index_64)
        tile_p, tile_q, block_c = _depthwise_tiles(56, 56, 144, contiguous, kernel_size, 4 if dt == "fp32" else 2,
                                                   interpreter=False)
        tiles = dict(TILE_P=tile_p, TILE_Q=tile_q, BLOCK_C=block_c)
        sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "y_ptr": f"*{dt}",
               **_ints("H", "W", "P", "Q", "C", *_CONV), **xs, **ws, **ys, "negative_slope": "fp32"}
        cases.append(CompileCase(_conv_fwd_depthwise_kernel, sig,
                                 dict(HAS_BIAS=True, ACTIVATION=ACT_RELU.value, **x1, **y1, **geometry, **tiles),
                                 label=label, divisible=("C", *xd, *yd),
                                 expect=expect("forward")))
        sig = {"dy_ptr": f"*{dt}", "w_ptr": f"*{dt}", "dx_ptr": f"*{dt}",
               **_ints("H", "W", "P", "Q", "C", *_CONV, "phases_h", "phases_w"), **dys, **ws, **dxs}
        cases.append(CompileCase(_conv_dgrad_depthwise_kernel, sig, dict(**dy1, **dx1, **geometry, **tiles),
                                 label=label, divisible=("C", *dyd, *dxd),
                                 expect=expect("input_grad")))
        wtaps = 16 if kernel_size == 3 else 64         # R*S rounded up to a power of two
        tile_p, tile_q, block_c = _depthwise_tiles(56, 56, 144, contiguous, kernel_size, 4 if dt == "fp32" else 2,
                                                   wtaps, interpreter=False)
        sig = {"dy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "dw_ptr": _param_grad(dt), "part_ptr": "*fp32",
               "ticket_ptr": "*i32",
               **_ints("N", "H", "W", "P", "Q", "C", *_CONV), **dys, **xs, **_ints(*_strides("dw", "crs"))}
        tiles = dict(TILE_P=tile_p, TILE_Q=tile_q, BLOCK_C=block_c)
        cases.append(CompileCase(_conv_wgrad_depthwise_kernel, sig,
                                 dict(TAPS=wtaps, CHUNK=split_chunk(wtaps * block_c), **tiles, **dy1, **x1, **geometry),
                                 label=label, divisible=("C", *dyd, *xd),
                                 expect=expect("weight_grad")))
    return cases


# SASS budgets of the direct kernels on sm_90 (bf16), instructions per FFMA in the
# main loop, as a 3x3 stride-1 launch specialises them. Measured 2026-11-29 (3.9 /
# 3.6; 32x32 and 256x4 tiles): forward 7.6 / 13.1 and 7.6 / 9.9 in channels_last,
# 10.4 / 17.0 and 10.4 / 12.5 in NCHW; input gradient 8.0 / 11.9 and 8.0 / 8.4,
# 9.6 / 11.9 and 9.6 / 10.1; weight gradient 35 / 23 and 34 / 41 (one cross-thread
# sum per tap and pixel block; 41 / 42 at 256x4 since its splits' sum loads several
# a round, 2026-11-30). The forward and input gradient took 35 / 29 and 36 / 29
# (runtime arguments) before each tap's pointers and mask left the channel loop.
_DIRECT_EXPECT = {"forward": 17.5, "input_grad": 12.5, "weight_grad": 43}


def _direct_cases():
    """The direct kernels (few channels per group) as a 3x3 stride-1 launch
    specialises them, channels_last (channel strides 1) and NCHW (column strides
    1), at the two GPU tiles of ``ops._direct_tiles`` (32 and 4 channels wide): bf16
    with the SASS budgets, fp32 (tiles of half the elements) spill-free."""
    cases = []
    for layout, units in (("channels_last", dict(x="c", y="c", w="c", dy="k", dx="c", dw="c")),
                          ("nchw", dict(x="w", y="w", w="s", dy="q", dx="w", dw="s"))):
        def strides(prefix, axes):             # (runtime strides, the unit one as a constant)
            names = _strides(prefix, axes)
            return ({n: "i32" for n in names if not n.endswith(units[prefix])},
                    {n: 1 for n in names if n.endswith(units[prefix])})
        (xs, x1), (ys, y1), (ws, w1) = strides("x", "nchw"), strides("y", "nchw"), strides("w", "kcrs")
        (dys, dy1), (dxs, dx1), (dws, dw1) = strides("dy", "nkpq"), strides("dx", "nchw"), strides("dw", "kcrs")
        for dt, block_m, block_n in (("bf16", 32, 32), ("bf16", 256, 4), ("fp32", 16, 32), ("fp32", 128, 4)):
            direct = dict(BLOCK_M=block_m, BLOCK_N=block_n, **_3X3_STRIDE_1)
            label = f"{dt},{layout},{block_m}x{block_n}"
            expect = {name: {"max_loop_instructions_per_ffma": budget} if dt == "bf16" else {}
                      for name, budget in _DIRECT_EXPECT.items()}
            sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "y_ptr": f"*{dt}",
                   **_ints(*_DIMS, "K", "Cg", "Kg", "R", "S"), **xs, **ws, **ys, "negative_slope": "fp32"}
            cases.append(CompileCase(_conv_fwd_direct_kernel, sig,
                                     dict(HAS_BIAS=True, ACTIVATION=ACT_LEAKY_RELU.value, **x1, **w1, **y1, **direct),
                                     label=label, expect=expect["forward"]))
            sig = {"dy_ptr": f"*{dt}", "w_ptr": f"*{dt}", "dx_ptr": f"*{dt}",
                   **_ints(*_DIMS, "C", "Cg", "Kg", "R", "S"), **dys, **ws, **dxs}
            cases.append(CompileCase(_conv_dgrad_direct_kernel, sig,
                                     dict(step_r=1, step_s=1, phases_w=1, **dy1, **w1, **dx1, **direct), label=label,
                                     expect=expect["input_grad"]))
            sig = {"dy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "dw_ptr": _param_grad(dt), "part_ptr": "*fp32",
                   "ticket_ptr": "*i32",
                   **_ints(*_DIMS, "K", "Cg", "Kg", "R", "S"), **dys, **xs, **dws}
            for index_64 in (False, True) if dt == "bf16" and block_n == 32 else (False,):
                cases.append(CompileCase(_conv_wgrad_direct_kernel, sig,
                                         dict(TAPS=16, INDEX_64=index_64, CHUNK=split_chunk(16 * block_n), **dy1,
                                              **x1, **dw1, **direct),
                                         label=label + (",int64" if index_64 else ""),
                                         expect={} if index_64 else expect["weight_grad"]))
    return cases


COMPILE_CASES = _compile_cases()
