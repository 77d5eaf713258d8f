"""conv2d against cuDNN: forward, input gradient and weight gradient.

Sets: the 23 distinct convolutions of ResNet-50 (batch 32, 224x224 input; the
first is the 7x7 stride-2 RGB stem), the stems alone (ResNet-50's and VGG-16's
3-channel first layers), VGG-16's 3x3 convolutions (batch 16), dilated 3x3
(dilation 2, 4, 8; 256 channels at 64x64 and 512 at 32x32, batch 8),
MobileNet-v2's depthwise 3x3, ConvNeXt-T's depthwise 7x7 and EfficientNet-B0's
depthwise 5x5 (batch 32), DeepLab-v3's dilated depthwise 3x3 (batch 8), and
conv + bias + ReLU fused against torch's conv followed by relu. NCHW and channels_last (input and weight), fp32
(same tf32 policy on both sides: torch.backends.cudnn.allow_tf32), fp16, bf16.
``flops`` is 2*N*K*P*Q*(C/groups)*R*S for every pass, so the report gives
TFLOP/s and % of the bf16 matmul rate measured in the same run, and the
speedup against cuDNN (torch with cudnn.benchmark). Targets on an H100 (issue
11): geomean >= 0.9x cuDNN forward, >= 0.7x input and weight gradient, >= 1.5x
on dilated and depthwise.

Layouts "nchw-in-place" and "channels_last-in-place" (quick run only):
operands that the implicit-GEMM passes read as they are (``read_in_place``)
instead of copying NCHW ones to channels_last and a stem's to 4 zero-padded
channels, against the same cuDNN call: beside the "contiguous" and
"channels_last" rows of one shape they say what the copies cost and what
reading in place would (issue 11's open choices).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as TF

import nnlib.functional as F
from bench.core import Case
from kernels.conv.ops import read_in_place

# (C, H, K, kernel, stride, padding): square images and kernels.
RESNET50 = [
    (3, 224, 64, 7, 2, 3),
    (64, 56, 64, 1, 1, 0), (64, 56, 64, 3, 1, 1), (64, 56, 256, 1, 1, 0), (256, 56, 64, 1, 1, 0),
    (256, 56, 128, 1, 1, 0), (128, 56, 128, 3, 2, 1), (128, 28, 512, 1, 1, 0), (256, 56, 512, 1, 2, 0),
    (512, 28, 128, 1, 1, 0), (128, 28, 128, 3, 1, 1),
    (512, 28, 256, 1, 1, 0), (256, 28, 256, 3, 2, 1), (256, 14, 1024, 1, 1, 0), (512, 28, 1024, 1, 2, 0),
    (1024, 14, 256, 1, 1, 0), (256, 14, 256, 3, 1, 1),
    (1024, 14, 512, 1, 1, 0), (512, 14, 512, 3, 2, 1), (512, 7, 2048, 1, 1, 0), (1024, 14, 2048, 1, 2, 0),
    (2048, 7, 512, 1, 1, 0), (512, 7, 512, 3, 1, 1),
]
VGG16 = [(3, 224, 64), (64, 224, 64), (64, 112, 128), (128, 112, 128), (128, 56, 256), (256, 56, 256),
         (256, 28, 512), (512, 28, 512), (512, 14, 512)]
DILATED = [(256, 64), (512, 32)]
STEMS = [(3, 224, 64, 7, 2, 3), (3, 224, 64, 3, 1, 1)]      # ResNet-50's, VGG-16's
# ConvNeXt-T depthwise 7x7, padding 3: (channels, input size).
DEPTHWISE_7X7 = [(96, 56), (192, 28), (384, 14), (768, 7)]
# MobileNet-v2 depthwise 3x3: (channels, input size, stride).
DEPTHWISE = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2),
             (384, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1)]
# EfficientNet-B0 depthwise 5x5, padding 2: (channels, input size, stride).
DEPTHWISE_5X5 = [(144, 56, 2), (240, 28, 1), (672, 14, 1), (672, 14, 2), (1152, 7, 1)]
# DeepLab-v3's MobileNet-v2 at output stride 16 (513x513 in): depthwise 3x3 of dilation 2, padding 2.
DEPTHWISE_DILATED = [(576, 33), (960, 33)]
FUSED = [(64, 56, 64), (128, 28, 128), (256, 14, 256), (512, 7, 512)]

PASSES = ("forward", "input_grad", "weight_grad")


class Spec:
    """One convolution: batch, input channels, image, output channels, kernel,
    stride, padding, dilation, groups, bias, fused relu."""

    def __init__(self, N, C, H, K, kernel, stride=1, padding=0, dilation=1, groups=1, bias=False, relu=False):
        self.N, self.C, self.H, self.K, self.kernel = N, C, H, K, kernel
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.bias, self.relu = bias, relu
        self.P = (H + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1

    @property
    def shape(self):
        return (self.N, self.C, self.H, self.H, self.K, self.kernel, self.kernel, self.stride, self.padding,
                self.dilation, self.groups)

    @property
    def flops(self) -> int:
        return 2 * self.N * self.K * self.P * self.P * (self.C // self.groups) * self.kernel ** 2


def _setup(spec: Spec, dtype, layout, device, pass_name):
    def setup():
        fan_in = spec.C // spec.groups * spec.kernel ** 2
        x = torch.randn(spec.N, spec.C, spec.H, spec.H, device=device, dtype=dtype)
        w = (torch.randn(spec.K, spec.C // spec.groups, spec.kernel, spec.kernel, device=device)
             / fan_in ** 0.5).to(dtype)
        b = torch.randn(spec.K, device=device, dtype=dtype) if spec.bias else None
        if layout.startswith("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
            w = w.contiguous(memory_format=torch.channels_last)
        args = (spec.stride, spec.padding, spec.dilation, spec.groups)
        reading = read_in_place if layout.endswith("-in-place") else contextlib.nullcontext

        def ours():
            with reading():
                return F.conv2d(x, w, b, *args, activation="relu" if spec.relu else None)

        def baseline():
            y = TF.conv2d(x, w, b, *args)
            return TF.relu(y) if spec.relu else y
        if pass_name == "forward":
            return ours, baseline
        wrt = x if pass_name == "input_grad" else w
        wrt.requires_grad_(True)
        y_ours, y_torch = ours(), baseline()
        g = torch.randn_like(y_torch)
        if pass_name == "weight_grad":       # keep the weight gradient O(1): it sums N*P*Q terms
            g = g / (spec.N * spec.P * spec.P) ** 0.5

        def ours_grad():
            with reading():
                return torch.autograd.grad(y_ours, wrt, g, retain_graph=True)
        return ours_grad, (lambda: torch.autograd.grad(y_torch, wrt, g, retain_graph=True))
    return setup


def _gpu_specs():
    specs = [("resnet50", Spec(32, c, h, k, r, s, p)) for c, h, k, r, s, p in RESNET50]
    specs += [("stem", Spec(32, c, h, k, r, s, p)) for c, h, k, r, s, p in STEMS]
    specs += [("vgg16", Spec(16, c, h, k, 3, 1, 1)) for c, h, k in VGG16]
    specs += [("dilated", Spec(8, c, h, c, 3, 1, d, d)) for c, h in DILATED for d in (2, 4, 8)]
    specs += [("depthwise", Spec(32, c, h, c, 3, s, 1, groups=c)) for c, h, s in DEPTHWISE]
    specs += [("depthwise-7x7", Spec(32, c, h, c, 7, 1, 3, groups=c)) for c, h in DEPTHWISE_7X7]
    specs += [("depthwise-5x5", Spec(32, c, h, c, 5, s, 2, groups=c)) for c, h, s in DEPTHWISE_5X5]
    specs += [("depthwise-dilated", Spec(8, c, h, c, 3, 1, 2, 2, groups=c)) for c, h in DEPTHWISE_DILATED]
    specs += [("fused-bias-relu", Spec(32, c, h, k, 3, 1, 1, bias=True, relu=True)) for c, h, k in FUSED]
    return specs


# --quick: bf16, a few shapes per set and pass (43 cases), channels_last unless marked NCHW
# ("contiguous": ResNet-50's 1x1 at 56x56 runs the planar GEMMs there, MobileNet-v2's depthwise 3x3 its rows
# kernel) or read in place (a 3x3's three passes, two more 3x3 forwards, the stem's forward and weight gradient,
# each beside its copied layouts: the stem's forward reads zero-padded copies of x, channels_last included).
QUICK = [("resnet50", 2, "forward"), ("resnet50", 4, "forward"), ("resnet50", 6, "forward"),
         ("resnet50", 22, "forward"), ("resnet50", 10, "forward", "contiguous"), ("stem", 0, "forward"),
         ("stem", 0, "forward", "channels_last-in-place"),
         ("resnet50", 10, "forward"), ("resnet50", 10, "forward", "nchw-in-place"),
         ("stem", 0, "forward", "nchw-in-place"), ("stem", 0, "forward", "contiguous"),
         ("resnet50", 1, "forward", "contiguous"), ("resnet50", 1, "weight_grad", "contiguous"),
         ("dilated", 0, "forward"), ("dilated", 4, "forward"), ("depthwise", 2, "forward"),
         ("depthwise", 2, "forward", "contiguous"), ("depthwise", 3, "forward"), ("depthwise", 3, "input_grad"),
         ("depthwise", 3, "weight_grad"),
         ("depthwise-7x7", 1, "forward"), ("depthwise-7x7", 1, "weight_grad"), ("depthwise-5x5", 0, "input_grad"),
         ("depthwise-dilated", 1, "forward"), ("fused-bias-relu", 2, "forward"),
         ("resnet50", 2, "input_grad"), ("resnet50", 22, "input_grad"), ("dilated", 0, "input_grad"),
         ("depthwise", 2, "input_grad"),
         ("resnet50", 2, "weight_grad"), ("resnet50", 15, "weight_grad"), ("resnet50", 22, "weight_grad"),
         ("stem", 0, "weight_grad"), ("stem", 0, "weight_grad", "channels_last-in-place"),
         ("depthwise", 2, "weight_grad"),
         ("resnet50", 10, "input_grad", "contiguous"), ("resnet50", 10, "input_grad", "nchw-in-place"),
         ("resnet50", 10, "weight_grad", "contiguous"), ("resnet50", 10, "weight_grad", "nchw-in-place"),
         ("resnet50", 2, "forward", "contiguous"), ("resnet50", 2, "forward", "nchw-in-place"),
         ("resnet50", 16, "forward", "contiguous"), ("resnet50", 16, "forward", "nchw-in-place")]


def _cpu_specs():
    """(set, spec, every pass?) on small shapes for the interpreter check."""
    return [("resnet50", Spec(2, 16, 9, 20, 3, 1, 1), True), ("stem", Spec(2, 3, 11, 16, 5, 2, 2), True),
            ("dilated", Spec(1, 16, 10, 16, 3, 1, 2, 2), False),
            ("depthwise", Spec(2, 8, 9, 8, 3, 2, 1, groups=8), True),
            ("fused-bias-relu", Spec(2, 16, 7, 16, 3, 1, 1, bias=True, relu=True), False)]


def _case(set_name, spec, dtype, layout, pass_name, device):
    tol = {torch.float32: 1e-2, torch.float16: 1e-2, torch.bfloat16: 3e-2}[dtype]
    extra = {"alternative": True} if layout.endswith("-in-place") else {}
    note = "bias and relu in our conv's epilogue; torch: conv with bias, then relu" if spec.relu else ""
    return Case("conv2d", set_name, spec.shape, dtype, layout, pass_name, _setup(spec, dtype, layout, device, pass_name),
                flops=spec.flops, atol=tol, rtol=tol, note=note, extra=extra)


def cases(device: str, quick: bool) -> list[Case]:
    if device != "cuda":
        return [_case(s, spec, torch.float32, "contiguous" if i % 2 else "channels_last", p, device)
                for i, (s, spec, every_pass) in enumerate(_cpu_specs()) for p in PASSES if p == "forward" or every_pass]
    specs = _gpu_specs()
    if quick:
        by_set: dict = {}
        for name, spec in specs:
            by_set.setdefault(name, []).append(spec)
        return [_case(name, by_set[name][i], torch.bfloat16, (*layout, "channels_last")[0], p, device)
                for name, i, p, *layout in QUICK]
    return [_case(name, spec, dtype, layout, p, device)
            for name, spec in specs for p in PASSES
            for dtype in (torch.float32, torch.float16, torch.bfloat16)
            for layout in ("contiguous", "channels_last")
            if not (spec.relu and p != "forward")]
